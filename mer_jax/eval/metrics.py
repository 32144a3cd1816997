"""Emotion metrics: closed-set (ACC, WAF, macro F1, UAR/WAR), valence (MSE, CCC, MER2023), open-vocabulary sets.

Closed-set predictions are label indices; -1 (INVALID) marks an invalid prediction (no known
label), which counts as wrong for every class and is never mapped to any label.

Open-vocabulary metrics (MER2024/2025, AffectGPT) compare sets of emotion words after mapping
each word through a grouping file, JSON of the form

  {"description": "optional text",
   "levels": [{"happy": ["happiness", "glad", "joyful"], "excited": ["thrilled"], ...},
              {"happy": ["excited", "thrilled", "glad", ...], ...}]}

Each level maps every listed word (and each group name itself) to its group name; a word may
belong to at most one group per level, and a word a level does not list is its own group. Words
are compared lower-cased with surrounding whitespace and punctuation removed. The default file,
emotion_wheel.json beside this module, has a fine level (synonyms and word forms) and a coarse
level (the six MER2023 labels plus disgust). Given the MER2025 emotion-wheel folder instead,
score_open_vocabulary scores as the official code does (eval/wheel.py), which drops unlisted words.
"""

from collections.abc import Iterable, Sequence
import json
import os
import re
import string
from typing import Any

import numpy as np

from mer_jax.eval import wheel

INVALID = -1
DEFAULT_GROUPING = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'emotion_wheel.json')
GROUPING_RULE = 'grouping file'


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


def scored_labels(scores: np.ndarray) -> np.ndarray:
  """The best-scoring label of each row of [N, C] scores; INVALID for a row with a non-finite score."""
  scores = np.asarray(scores)
  finite = np.all(np.isfinite(scores), axis=-1)
  return np.where(finite, np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=-1), INVALID)


def mse(true: np.ndarray, pred: np.ndarray) -> float:
  """Mean squared error."""
  return float(np.mean((np.asarray(true, np.float64) - np.asarray(pred, np.float64)) ** 2))


def macro_f1(true: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
  """Unweighted mean of the per-class F1 over all `num_classes` classes (scikit-learn's average='macro')."""
  return float(np.mean(per_class_scores(true, pred, num_classes)['f1']))


def uar(true: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
  """Unweighted average recall: mean recall over the classes present in `true`."""
  scores = per_class_scores(true, pred, num_classes)
  present = scores['support'] > 0
  return float(np.mean(scores['recall'][present])) if present.any() else 0.0


def war(true: np.ndarray, pred: np.ndarray) -> float:
  """Weighted average recall: recall weighted by class support, which equals accuracy."""
  return accuracy(true, pred)


def ccc(true: np.ndarray, pred: np.ndarray) -> float:
  """Concordance correlation coefficient (population moments); 0 when both series are constant."""
  true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
  covariance = np.mean((true - true.mean()) * (pred - pred.mean()))
  denominator = true.var() + pred.var() + (true.mean() - pred.mean()) ** 2
  return float(2 * covariance / denominator) if denominator > 0 else 0.0


def mer2023_score(waf: float, valence_mse: float) -> float:
  """The MER2023 combined score: WAF - 0.25 * valence MSE."""
  return waf - 0.25 * valence_mse


def normalize_word(word: str) -> str:
  """Lower-cased, inner whitespace collapsed, surrounding whitespace and punctuation removed."""
  return ' '.join(word.lower().split()).strip(string.punctuation + ' ')


def split_labels(text: str) -> list[str]:
  """The emotion words of an open-vocabulary answer: split at commas, semicolons, slashes, newlines and 'and'."""
  words = (normalize_word(part) for part in re.split(r'[,;/\n]|\band\b', text.lower()))
  return [word for word in words if word]


class EmotionGrouping:
  """Word -> group maps, one per level of a grouping file (format in the module docstring)."""

  def __init__(self, levels: Sequence[dict[str, Sequence[str]]]):
    self.levels: list[dict[str, str]] = []
    for number, level in enumerate(levels):
      mapping: dict[str, str] = {}
      for group, words in level.items():
        for word in map(normalize_word, [group, *words]):
          if mapping.setdefault(word, group) != group:
            raise ValueError(f'grouping level {number}: {word!r} is in both {mapping[word]!r} and {group!r}')
      self.levels.append(mapping)
    if not self.levels:
      raise ValueError('a grouping needs at least one level')

  @classmethod
  def load(cls, path: str | None = None) -> 'EmotionGrouping':
    """Reads a grouping file; None reads the default emotion_wheel.json."""
    path = path or DEFAULT_GROUPING
    with open(path) as f:
      data = json.load(f)
    levels = data.get('levels') if isinstance(data, dict) else None
    if not isinstance(levels, list) or not all(
        isinstance(level, dict) and all(isinstance(words, list) for words in level.values()) for level in levels):
      raise ValueError(f'{path}: expected {{"levels": [{{"group": ["word", ...], ...}}, ...]}}')
    return cls(levels)

  def groups(self, words: Iterable[str], level: int) -> set[str]:
    """The groups of `words` at `level`; an unlisted word is its own group; empty words are dropped."""
    mapping = self.levels[level]
    return {mapping.get(word, word) for word in map(normalize_word, words) if word}


def _levels(grouping: EmotionGrouping, levels: Sequence[int] | None) -> Sequence[int]:
  """The given levels, or every level of the grouping."""
  return range(len(grouping.levels)) if levels is None else levels


def set_scores(true_sets: Sequence[Iterable[str]], pred_sets: Sequence[Iterable[str]], grouping: EmotionGrouping,
               levels: Sequence[int] | None = None) -> dict[str, float]:
  """Open-vocabulary precision, recall and F (MER2024/2025, AffectGPT), each averaged over grouping levels.

  At each level both sets are mapped to groups; per sample P = |Y & Y'| / |Y'| (0 for an empty
  prediction) and R = |Y & Y'| / |Y|; samples with an empty true set are skipped. P and R are
  averaged over samples and F = 2PR / (P + R) is computed from those averages.
  """
  if len(true_sets) != len(pred_sets):
    raise ValueError(f'{len(true_sets)} true sets but {len(pred_sets)} predicted sets')
  per_level = []
  for level in _levels(grouping, levels):
    precisions, recalls = [], []
    for true, pred in zip(true_sets, pred_sets):
      true, pred = grouping.groups(true, level), grouping.groups(pred, level)
      if true:
        hits = len(true & pred)
        precisions.append(hits / len(pred) if pred else 0.0)
        recalls.append(hits / len(true))
    precision = float(np.mean(precisions)) if precisions else 0.0
    recall = float(np.mean(recalls)) if recalls else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    per_level.append((precision, recall, f1))
  precision, recall, f1 = np.mean(per_level, axis=0)
  return {'precision': float(precision), 'recall': float(recall), 'f1': float(f1)}


def hit_rate(true_labels: Sequence[str], pred_sets: Sequence[Iterable[str]], grouping: EmotionGrouping,
             levels: Sequence[int] | None = None) -> float:
  """Share of samples whose true label's group is among the predicted words' groups, averaged over levels.

  Samples with an empty true label are skipped.
  """
  if len(true_labels) != len(pred_sets):
    raise ValueError(f'{len(true_labels)} true labels but {len(pred_sets)} predicted sets')
  rates = []
  for level in _levels(grouping, levels):
    hits = [grouping.groups([true], level) <= grouping.groups(pred, level)
            for true, pred in zip(true_labels, pred_sets) if normalize_word(true)]
    rates.append(float(np.mean(hits)) if hits else 0.0)
  return float(np.mean(rates))


def score_open_vocabulary(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]],
                          wheels: wheel.Wheels | None) -> dict[str, Any]:
  """Open-vocabulary scores of predicted word sets against reference word sets; 'rule' names how words were grouped.

  With `wheels`: the official emotion-wheel scores (wheel.set_scores: 'fscore', 'level1', 'level2').
  Without: set_scores under the default grouping file ('precision', 'recall', 'f1'). 'hit_rate' is
  given when every reference is one word (a closed-set label), else None.
  """
  one_word = all(len(reference) == 1 for reference in references)
  labels = [reference[0] for reference in references] if one_word else []
  if wheels is not None:
    return {'rule': wheel.RULE, **wheel.set_scores(references, predictions, wheels),
            'hit_rate': wheel.hit_rate(labels, predictions, wheels) if one_word else None}
  grouping = EmotionGrouping.load()
  return {'rule': GROUPING_RULE, **set_scores(references, predictions, grouping),
          'hit_rate': hit_rate(labels, predictions, grouping) if one_word else None}
