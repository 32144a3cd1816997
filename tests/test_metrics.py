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


def test_macro_f1_uar_war_hand_checked():
  true = np.array([0, 0, 1, 1, 2, 2, 2, 2])
  pred = np.array([0, 1, 1, 1, 2, 2, metrics.INVALID, 0])
  # F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=2/3 R=1 -> 4/5; class 2 P=1 R=1/2 -> 2/3.
  assert metrics.macro_f1(true, pred, 3) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
  assert metrics.uar(true, pred, 3) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
  assert metrics.war(true, pred) == pytest.approx(5 / 8) == metrics.accuracy(true, pred)
  # A class absent from the truth has no recall and does not dilute UAR; macro F1 counts it as 0.
  assert metrics.uar(true, pred, 4) == pytest.approx(metrics.uar(true, pred, 3))
  assert metrics.macro_f1(true, pred, 4) == pytest.approx(metrics.macro_f1(true, pred, 3) * 3 / 4)


@pytest.mark.filterwarnings('ignore:y_pred contains classes not in y_true')
def test_macro_f1_and_uar_match_scikit_learn():
  rng = np.random.default_rng(2)
  true = rng.integers(0, 6, 400)
  pred = np.where(rng.random(400) < 0.5, true, rng.integers(-1, 6, 400))
  assert metrics.macro_f1(true, pred, 6) == pytest.approx(
      sk.f1_score(true, pred, average='macro', labels=range(6), zero_division=0))
  assert metrics.uar(true, pred, 6) == pytest.approx(
      sk.recall_score(true, pred, average='macro', labels=range(6), zero_division=0))
  assert metrics.uar(true, pred, 6) == pytest.approx(sk.balanced_accuracy_score(true, pred))
  assert metrics.war(true, pred) == pytest.approx(
      sk.recall_score(true, pred, average='weighted', labels=range(6), zero_division=0))


def test_ccc_and_mer2023_score():
  true = np.array([1.0, 2.0, 3.0])
  assert metrics.ccc(true, true) == pytest.approx(1.0)
  # Mirrored: cov = -2/3, both variances 2/3, squared mean gap 16 -> -(4/3) / (52/3) = -1/13.
  assert metrics.ccc(true, -true) == pytest.approx(-1 / 13)
  # Shifted by 1: cov = var = 2/3, squared mean gap 1 -> 2 * (2/3) / (2/3 + 2/3 + 1) = 4/7.
  assert metrics.ccc(true, true + 1) == pytest.approx(4 / 7)
  assert metrics.ccc(np.ones(3), np.ones(3)) == 0.0
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=100), rng.normal(size=100)
  assert metrics.ccc(x, y) == pytest.approx(
      2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))
  assert metrics.mer2023_score(0.8, 0.4) == pytest.approx(0.7)


def test_grouping_file_and_word_splitting(tmp_path):
  grouping = metrics.EmotionGrouping.load()
  assert set(grouping.levels[1].values()) >= {'neutral', 'angry', 'happy', 'sad', 'worried', 'surprise'}
  assert grouping.groups(['Joyful', 'thrilled ', 'scared'], 0) == {'happy', 'excited', 'fearful'}
  assert grouping.groups(['Joyful', 'thrilled', 'scared'], 1) == {'happy', 'worried'}
  assert grouping.groups(['nostalgic'], 1) == {'nostalgic'}
  assert metrics.split_labels('Happy, excited and nervous; surprised.') == ['happy', 'excited', 'nervous', 'surprised']
  bad = tmp_path / 'bad.json'
  bad.write_text('{"levels": [{"a": ["x"], "b": ["x"]}]}')
  with pytest.raises(ValueError, match="'x' is in both 'a' and 'b'"):
    metrics.EmotionGrouping.load(str(bad))
  bad.write_text('{"groups": {}}')
  with pytest.raises(ValueError, match='expected'):
    metrics.EmotionGrouping.load(str(bad))


def test_open_vocabulary_set_scores_hand_checked():
  grouping = metrics.EmotionGrouping([{'happy': ['glad'], 'sad': [], 'angry': ['mad']},
                                      {'positive': ['happy', 'glad'], 'negative': ['sad', 'angry', 'mad']}])
  true = [['happy', 'sad'], ['angry'], [], ['sad']]
  pred = [['glad'], ['mad', 'happy'], ['happy'], []]
  # Level 0 (sample 3 skipped: empty truth): P = (1 + 1/2 + 0) / 3, R = (1/2 + 1 + 0) / 3.
  p0, r0 = 0.5, 0.5
  # Level 1: sample 1 {pos, neg} vs {pos}: P 1, R 1/2; sample 2 {neg} vs {neg, pos}: P 1/2, R 1; sample 4: 0, 0.
  p1, r1 = 0.5, 0.5
  scores = metrics.set_scores(true, pred, grouping)
  assert scores['precision'] == pytest.approx((p0 + p1) / 2)
  assert scores['recall'] == pytest.approx((r0 + r1) / 2)
  assert scores['f1'] == pytest.approx(0.5)
  only_coarse = metrics.set_scores([['sad']], [['angry', 'happy']], grouping, levels=[1])
  assert only_coarse == pytest.approx({'precision': 0.5, 'recall': 1.0, 'f1': 2 / 3})
  # F comes from the averaged P and R, not from averaging per-sample F.
  uneven = metrics.set_scores([['happy'], ['sad', 'angry']], [['happy', 'sad', 'angry'], ['sad']], grouping, [0])
  assert uneven['f1'] == pytest.approx(2 * (2 / 3) * (3 / 4) / (2 / 3 + 3 / 4))
  with pytest.raises(ValueError, match='2 true sets but 1 predicted'):
    metrics.set_scores([['a'], ['b']], [['a']], grouping)


def test_hit_rate_hand_checked():
  grouping = metrics.EmotionGrouping([{'happy': ['glad'], 'sad': []},
                                      {'positive': ['happy', 'glad'], 'negative': ['sad', 'worried']}])
  true = ['happy', 'sad', 'sad', '']
  pred = [['glad', 'sad'], ['worried'], [], ['happy']]
  # Level 0: hit, miss, miss -> 1/3 (empty truth skipped); level 1: hit, hit (worried ~ negative), miss -> 2/3.
  assert metrics.hit_rate(true, pred, grouping) == pytest.approx(0.5)
  assert metrics.hit_rate(true, pred, grouping, levels=[1]) == pytest.approx(2 / 3)


def test_report_carries_closed_set_and_valence_metrics():
  from mer_jax.eval.evaluate import build_report
  from mer_jax.eval.report import summary_table
  true = np.array([0, 1, 2, 2])
  predictions = {'true': true, 'scored': np.array([0, 1, 2, 0]), 'generated': np.array([0, metrics.INVALID, 2, 2]),
                 'valence_true': np.array([0.5, -0.5, 1.0, 0.0]), 'valence_pred': np.array([0.4, -0.2, 0.6, 0.1]),
                 'texts': np.array(['a', 'x', 'c', 'c']), 'label_texts': np.array(['a', 'x', 'c', 'c']),
                 'names': np.array(['n1', 'n2', 'n3', 'n4'])}
  report = build_report(predictions, ['a', 'b', 'c'], 0.25, 'test')
  mse = metrics.mse(predictions['valence_true'], predictions['valence_pred'])
  assert report['valence']['ccc'] == pytest.approx(metrics.ccc(predictions['valence_true'], predictions['valence_pred']))
  for kind in ('scored', 'generated'):
    r = report[kind]
    assert r['macro_f1'] == pytest.approx(metrics.macro_f1(true, predictions[kind], 3))
    assert r['uar'] == pytest.approx(metrics.uar(true, predictions[kind], 3))
    assert r['war'] == r['accuracy']
    assert r['mer2023_score'] == pytest.approx(r['waf'] - 0.25 * mse)
  assert report['generated']['invalid'] == 1 and report['generated']['uar'] == pytest.approx(2 / 3)
  table = summary_table(report)
  assert '| test | 4 | generated | 0.7500 |' in table and 'macro F1' in table and 'valence CCC' in table
  assert report['generated_samples'][1] == {'name': 'n2', 'label': 'b', 'generated': 'x'}
  assert report['explanations'] is None and 'explanations' not in table


def test_report_open_vocabulary_and_explanations():
  from mer_jax.eval.evaluate import build_report
  from mer_jax.eval.report import summary_table
  labels = ['neutral', 'angry', 'happy', 'sad', 'worried', 'surprise']
  smile = 'The voice is steady. The face shows a smile. The words name no emotion.'
  frown = 'The voice is quiet and slow. The face shows a frown. The words name no emotion.'
  predictions = {
      'true': np.array([2, 3, 3, 1]), 'scored': np.array([2, 3, 3, 1]),
      'generated': np.array([2, 3, metrics.INVALID, 3]),
      'valence_true': np.zeros(4), 'valence_pred': np.zeros(4),
      'texts': np.array(['happy. ' + smile, 'sad. ' + frown, 'gloomy', 'sad. ' + smile]),
      'label_texts': np.array(['happy', 'sad', 'gloomy', 'sad']),
      'explanations': np.array([smile, frown, '', smile]),
      'reasons': np.array([smile, frown, frown, 'The face shows a frown.']),
      'names': np.array(['c1', 'c2', 'c3', 'c4'])}
  report = build_report(predictions, labels, 0.0, 'test')
  # 'gloomy' is no closed-set label (invalid there) but is in the wheel's 'sad' group: an open-vocabulary hit.
  # c4 answers sad for angry. P = R = 3/4 at both grouping levels.
  assert report['generated']['invalid'] == 1
  assert report['open_vocabulary'] == pytest.approx({'precision': 0.75, 'recall': 0.75, 'f1': 0.75, 'hit_rate': 0.75,
                                                     'rule': 'grouping file'})
  # c1, c2 right on every kind; c3 names nothing; c4's reference names only the face, and it is wrong.
  assert report['explanations']['cue_accuracy'] == pytest.approx(
      {'voice': 2 / 3, 'face': 2 / 4, 'text': 2 / 3, 'all': 2 / 4, 'count': 4})
  assert report['explanations']['count'] == 4
  table = summary_table(report)
  assert '| test | 0.7500 | 0.7500 | 0.7500 | 0.7500 |' in table
  assert '| test | 4 |' in table and '| 0.6667 | 0.5000 | 0.6667 | 0.5000 |' in table
