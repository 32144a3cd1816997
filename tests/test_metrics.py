"""Metrics on hand-checked cases and against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as sk

from mer_jax.eval import metrics


def test_hand_checked_case():
  true = np.array([0, 0, 1, 1, 2, 2])
  pred = np.array([0, 1, 1, 1, 2, metrics.INVALID])
  assert metrics.accuracy(true, pred) == pytest.approx(4 / 6)
  # class 0: P=1 R=.5 F=2/3; class 1: P=2/3 R=1 F=.8; class 2: P=1 R=.5 F=2/3; equal supports.
  assert metrics.weighted_f1(true, pred, 3) == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)
  matrix = metrics.confusion_matrix(true, pred, 3)
  assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]


def test_invalid_is_never_a_label():
  true = np.array([0, 0, 0])
  pred = np.array([metrics.INVALID] * 3)
  assert metrics.accuracy(true, pred) == 0.0
  assert metrics.weighted_f1(true, pred, 2) == 0.0


def test_matches_scikit_learn_on_random_predictions():
  rng = np.random.default_rng(0)
  true = rng.integers(0, 6, 500)
  pred = np.where(rng.random(500) < 0.6, true, rng.integers(0, 6, 500))
  assert metrics.accuracy(true, pred) == pytest.approx(sk.accuracy_score(true, pred))
  assert metrics.weighted_f1(true, pred, 6) == pytest.approx(
      sk.f1_score(true, pred, average='weighted', labels=range(6), zero_division=0))
  scores = metrics.per_class_scores(true, pred, 6)
  np.testing.assert_allclose(scores['f1'], sk.f1_score(true, pred, average=None, labels=range(6)))
  valence_true, valence_pred = rng.normal(size=50), rng.normal(size=50)
  assert metrics.mse(valence_true, valence_pred) == pytest.approx(sk.mean_squared_error(valence_true, valence_pred))


def test_invalid_matches_scikit_learn_with_an_extra_class():
  rng = np.random.default_rng(1)
  true = rng.integers(0, 4, 200)
  pred = np.where(rng.random(200) < 0.3, metrics.INVALID, true)
  expected = sk.f1_score(true, pred, average='weighted', labels=range(4), zero_division=0)
  assert metrics.weighted_f1(true, pred, 4) == pytest.approx(expected)
