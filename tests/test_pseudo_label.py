"""Pseudo-labelling: the file a tiny run writes, threshold, per-class cap, agreement, refusals, and mixing into training."""

import csv
import json
import math

import numpy as np
import pytest

from mer_jax import pseudo_label
from mer_jax.data import pipeline, pseudo_labels
from mer_jax.eval import pseudo
from mer_jax.train import run
from mer_jax.train.trainer import train

from conftest import tiny_config


def read_rows(path: str) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def runs(tiny_run, prepared_tiny, tmp_path_factory) -> tuple[str, str]:
  """The shared tiny run, and one of another seed trained 1 step (the second opinion)."""
  second = str(tmp_path_factory.mktemp('pseudo_runs') / 'second')
  config = tiny_config(prepared_tiny)
  config.seed, config.train.steps, config.train.checkpoint_every = 1, 1, 1
  train(config, second)
  return tiny_run, second


@pytest.fixture(scope='module')
def everything(runs, tmp_path_factory) -> tuple[str, dict]:
  """Every test clip pseudo-labelled by the first run (threshold 0), labels hidden: the CSV and its summary."""
  out = str(tmp_path_factory.mktemp('pseudo_out') / 'all.csv')
  return out, pseudo_label.pseudo_label(runs[0], 'test', out, threshold=0.0, hide_labels=True)


def test_the_file_has_one_row_per_clip_with_its_top_label(everything, prepared_tiny):
  out, summary = everything
  rows = read_rows(out)
  info = pipeline.load_info(prepared_tiny)
  total = info['splits']['test']['count']
  assert list(rows[0]) == ['id', 'label', 'confidence']
  assert len(rows) == summary['kept'] == summary['total'] == total
  assert len({row['id'] for row in rows}) == total
  assert all(row['label'] in info['labels'] for row in rows)
  confidences = [float(row['confidence']) for row in rows]
  assert confidences == sorted(confidences, reverse=True)
  assert all(1 / len(info['labels']) <= c <= 1 for c in confidences)  # a top probability is at least uniform
  assert sum(summary['per_class'].values()) == total
  with open(pseudo_label.summary_path(out)) as f:
    written = json.load(f)
  assert written['threshold'] == 0.0 and written['split'] == 'test' and written['kept'] == total
  accuracy = written['hidden_label_accuracy']
  assert 0.0 <= accuracy['kept'] <= 1.0 and accuracy['kept'] == accuracy['all']


def test_threshold_and_per_class_cap(runs, everything, tmp_path):
  rows = read_rows(everything[0])
  threshold = float(rows[len(rows) // 3]['confidence']) - 1e-6  # below the rounded value written
  out = str(tmp_path / 'kept.csv')
  summary = pseudo_label.pseudo_label(runs[0], 'test', out, threshold=threshold, per_class=2, hide_labels=True)
  kept = read_rows(out)
  confident = [row for row in rows if float(row['confidence']) >= threshold]
  expected: dict[str, list[str]] = {}
  for row in confident:  # most confident first, at most 2 per label
    if len(expected.setdefault(row['label'], [])) < 2:
      expected[row['label']].append(row['id'])
  assert sorted(row['id'] for row in kept) == sorted(sum(expected.values(), []))
  assert all(float(row['confidence']) >= threshold for row in kept)
  assert summary['per_class'] == {label: len(expected.get(label, [])) for label in summary['per_class']}


def test_agreement_keeps_the_clips_both_runs_label_alike(runs, everything, tmp_path):
  first = {row['id']: row for row in read_rows(everything[0])}
  second_out = str(tmp_path / 'second.csv')
  pseudo_label.pseudo_label(runs[1], 'test', second_out, threshold=0.0, hide_labels=True)
  second = {row['id']: row for row in read_rows(second_out)}
  out = str(tmp_path / 'agreed.csv')
  pseudo_label.pseudo_label(runs[0], 'test', out, threshold=0.0, agree=runs[1], hide_labels=True)
  agreed = {row['id']: row for row in read_rows(out)}
  both = {clip for clip in first if first[clip]['label'] == second[clip]['label']}
  assert len(both) < len(first)  # the two runs disagree on some clips, so the filter is exercised
  assert set(agreed) == both
  for clip, row in agreed.items():
    assert row['label'] == first[clip]['label']
    assert math.isclose(float(row['confidence']),
                        min(float(first[clip]['confidence']), float(second[clip]['confidence'])), abs_tol=2e-6)


def test_select_caps_and_agrees_on_given_probabilities():
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05], [0.5, 0.5]])
  indices, labels, confidence = pseudo.select(probs, threshold=0.6, per_class=2)
  assert indices.tolist() == [3, 0, 2] and labels.tolist() == [0, 0, 1]
  np.testing.assert_allclose(confidence, [0.95, 0.9, 0.7])
  other = np.array([[0.6, 0.4], [0.1, 0.9], [0.2, 0.8], [0.99, 0.01], [0.5, 0.5]])
  indices, labels, confidence = pseudo.select(probs, threshold=0.65, agree=other)
  assert indices.tolist() == [3, 2] and labels.tolist() == [0, 1]
  np.testing.assert_allclose(confidence, [0.95, 0.7])


def test_a_labelled_split_is_refused_without_hide_labels(runs, tmp_path):
  out = str(tmp_path / 'x.csv')
  with pytest.raises(ValueError, match=r"--split test: split 'test' of .* has labels \(\d+ of \d+ clips\).*--hide_labels"):
    pseudo_label.pseudo_label(runs[0], 'test', out)
  with pytest.raises(ValueError, match=r"--split unlabeled: split 'unlabeled' is not in .*known splits: \['test', 'train'\]"):
    pseudo_label.pseudo_label(runs[0], 'unlabeled', out, hide_labels=True)
  with pytest.raises(ValueError, match=r'--threshold=1.5'):
    pseudo_label.pseudo_label(runs[0], 'test', out, threshold=1.5, hide_labels=True)
  assert not (tmp_path / 'x.csv').exists()


def write_csv(path, rows) -> str:
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  return str(path)


def test_pseudo_labels_mix_the_named_clips_with_their_new_labels(runs, everything, prepared_tiny, tmp_path):
  rows = read_rows(everything[0])[:3]
  path = write_csv(tmp_path / 'sad.csv', [['id', 'label', 'confidence']] + [[r['id'], 'sad', '0.5'] for r in rows])
  config = tiny_config(prepared_tiny)
  info = pipeline.load_info(prepared_tiny)
  source = pipeline.pseudo_label_source(config.data, info, path)
  assert [source[i]['name'].decode() for i in range(len(source))] == [r['id'] for r in rows]
  assert all(source[i]['label'] == b'sad' and source[i]['reason'] == b'' and np.isnan(source[i]['valence'])
             for i in range(len(source)))
  config.data.pseudo_labels = f'{path}=3'
  batches = iter(pipeline.train_dataset(config, info, batch_size=8))
  batch = {k: np.concatenate([v, *(b[k] for b in [next(batches) for _ in range(3)])])
           for k, v in next(batches).items()}
  pseudo_rows = np.isnan(batch['valence'])
  assert np.isfinite(batch['valence'][~pseudo_rows]).all()  # the train split's clips all have a valence
  assert 16 <= pseudo_rows.sum() < 32  # weight 3 vs 1: about three quarters of 32 examples
  assert (batch['label'][pseudo_rows] == info['labels'].index('sad')).all()
  # A retrain from the first run with the file: the path is stored absolute and training reads it.
  config.init.run = runs[0]
  config.train.steps = 1
  workdir = str(tmp_path / 'retrain')
  train(config, workdir)
  assert run.load_config(workdir).data.pseudo_labels == f'{path}=3.0'


@pytest.mark.parametrize('rows, message', [
    ([['id', 'label', 'confidence'], ['nobody', 'sad', '0.9']], r"bad.csv: id 'nobody' is not a clip of the prepared"),
    ([['id', 'label', 'confidence'], ['{clip}', 'bored', '0.9']], r"bad.csv line 2: label 'bored' of id '.*' is not"),
    ([['id', 'label', 'confidence'], ['{clip}', 'sad', 'high']], r"bad.csv line 2: confidence 'high' of id"),
    ([['id', 'label', 'confidence'], ['{clip}', 'sad', '0.9'], ['{clip}', 'sad', '0.9']], r"line 3: id '.*' appears twice"),
    ([['name', 'label']], r"bad.csv lacks column\(s\) \['id', 'confidence'\]"),
])
def test_a_bad_pseudo_label_file_is_refused_naming_file_and_id(everything, prepared_tiny, tmp_path, rows, message):
  clip = read_rows(everything[0])[0]['id']
  path = write_csv(tmp_path / 'bad.csv', [[cell.format(clip=clip) for cell in row] for row in rows])
  config = tiny_config(prepared_tiny)
  with pytest.raises(ValueError, match=f'config.data.pseudo_labels: .*{message}'):
    pipeline.pseudo_label_source(config.data, pipeline.load_info(prepared_tiny), path)


def test_a_missing_file_or_bad_weight_is_refused(prepared_tiny, tmp_path):
  config = tiny_config(prepared_tiny)
  with pytest.raises(ValueError, match=r'config.data.pseudo_labels: .*missing.csv does not exist'):
    pipeline.pseudo_label_source(config.data, pipeline.load_info(prepared_tiny), str(tmp_path / 'missing.csv'))
  with pytest.raises(ValueError, match=r"config.data.pseudo_labels entry 'a.csv=x': weight 'x'"):
    pseudo_labels.parse_spec('a.csv=x')
