"""Classification and regression metrics: accuracy, weighted-average F1 (WAF), per-class scores, MSE.

Predictions are label indices; -1 marks an invalid prediction (no known label), which counts as
wrong for every class and never as any label.
"""

import numpy as np

INVALID = -1


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [true class, predicted class]; invalid predictions go to an extra last column."""
  matrix = np.zeros([num_classes, num_classes + 1], np.int64)
  columns = np.where(np.asarray(pred) == INVALID, num_classes, pred)
  np.add.at(matrix, (np.asarray(true), columns), 1)
  return matrix


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
  """Share of exact matches; invalid predictions are wrong."""
  true, pred = np.asarray(true), np.asarray(pred)
  return float(np.mean(true == pred)) if len(true) else 0.0


def per_class_scores(true: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn's zero_division=0)."""
  matrix = confusion_matrix(true, pred, num_classes)
  hits = np.diag(matrix[:, :num_classes]).astype(np.float64)
  support = matrix.sum(axis=1).astype(np.float64)
  predicted = matrix[:, :num_classes].sum(axis=0).astype(np.float64)
  precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
  recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(hits), where=denominator > 0)
  return {'precision': precision, 'recall': recall, 'f1': f1, 'support': support}


def weighted_f1(true: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
  """Weighted-average F1 (WAF): per-class F1 weighted by each class's true count."""
  scores = per_class_scores(true, pred, num_classes)
  total = scores['support'].sum()
  return float(np.sum(scores['f1'] * scores['support']) / total) if total else 0.0


def mse(true: np.ndarray, pred: np.ndarray) -> float:
  """Mean squared error."""
  return float(np.mean((np.asarray(true, np.float64) - np.asarray(pred, np.float64)) ** 2))
