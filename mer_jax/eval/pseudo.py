"""Pseudo-labelling: a run's label probabilities over a split, and the confident, agreed, class-capped selection."""

from typing import Any

import numpy as np

from mer_jax.data import pipeline
from mer_jax.eval.evaluate import Predictor
from mer_jax.eval.predict import normalised_scores


def split_probabilities(predictor: Predictor, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Clip names, label probabilities [N, C] (softmax of the label scores) and true label ids (-1: none) of `split`."""
  exp = predictor.experiment
  names: list[str] = []
  probs, true = [], []
  for batch, fields in pipeline.eval_batches(exp.config, exp.info, split, exp.config.eval.batch_size, exp.builder):
    valid = len(fields)
    scores, _ = predictor.label_scores(batch)
    probs.append(normalised_scores(scores[:valid]))
    true.append(batch['label'][:valid])
    names.extend(str(f['name']) for f in fields)
  return names, np.concatenate(probs), np.concatenate(true)


def select(probs: np.ndarray, threshold: float, per_class: int | None = None,
           agree: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The clips to keep: (indices in descending confidence, label ids, confidences).

  A clip's label is its most probable one and its confidence that probability; with `agree` (a
  second run's probabilities of the same clips) both runs must pick the same label and the
  confidence is the lower of their two probabilities of it. A clip is kept when its confidence is
  at least `threshold` (and finite); with `per_class`, at most that many per label, the most
  confident first.
  """
  labels = np.argmax(probs, axis=1)
  confidence = probs[np.arange(len(probs)), labels]
  keep = np.all(np.isfinite(probs), axis=1)
  if agree is not None:
    keep &= np.argmax(agree, axis=1) == labels
    confidence = np.minimum(confidence, agree[np.arange(len(agree)), labels])
  keep &= confidence >= threshold
  order = [i for i in np.argsort(-confidence, kind='stable') if keep[i]]
  if per_class is not None:
    taken: dict[int, int] = {}
    capped = []
    for i in order:
      if taken.get(int(labels[i]), 0) < per_class:
        taken[int(labels[i])] = taken.get(int(labels[i]), 0) + 1
        capped.append(i)
    order = capped
  indices = np.asarray(order, np.int64)
  return indices, labels[indices], confidence[indices]


def summary(label_names: list[str], kept_labels: np.ndarray, total: int, true: np.ndarray, kept: np.ndarray,
            probs: np.ndarray, hidden_labels: bool) -> dict[str, Any]:
  """Kept/total and counts per label; with hidden labels, the accuracy of the kept labels and of all clips' top labels."""
  out: dict[str, Any] = {
      'kept': int(len(kept)), 'total': int(total),
      'per_class': {name: int(np.sum(kept_labels == i)) for i, name in enumerate(label_names)},
  }
  if hidden_labels:
    known = true >= 0
    top = np.argmax(probs, axis=1)
    kept_known = kept[known[kept]]
    out['hidden_label_accuracy'] = {
        'kept': float(np.mean(top[kept_known] == true[kept_known])) if len(kept_known) else None,
        'all': float(np.mean(top[known] == true[known])) if known.any() else None,
    }
  return out
