"""Several datasets: a mixture in training, a run evaluated on another dataset, and one suite table across them."""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest

from mer_jax.data import pipeline, prepare, synthetic
from mer_jax.eval import suite
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import train

from tests.test_train import tiny_config as train_config


def drop_valence(label_csv: str) -> None:
  """Rewrites a MER2023 label file without its valence column (as MER2023's test3-label.csv comes)."""
  with open(label_csv, newline='') as f:
    rows = list(csv.DictReader(f))
  with open(label_csv, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['name', 'discrete'])
    writer.writerows([row['name'], row['discrete']] for row in rows)


@pytest.fixture(scope='module')
def second_dataset(tmp_path_factory) -> str:
  """A 24-clip synthetic dataset in the release layout (clips in per-split folders) without any valence."""
  root = tmp_path_factory.mktemp('second')
  raw = str(root / 'raw')
  synthetic.write_dataset(raw, num_clips=24, seed=11, workers=1)
  for split in ('train', 'test'):
    drop_valence(os.path.join(raw, f'{split}-label.csv'))
    os.makedirs(os.path.join(raw, split))
    with open(os.path.join(raw, f'{split}-label.csv')) as f:
      for row in csv.DictReader(f):
        shutil.move(os.path.join(raw, 'video', row['name'] + '.mp4'), os.path.join(raw, split))
  os.rmdir(os.path.join(raw, 'video'))
  data = str(root / 'data')
  prepare.prepare_dataset('mer2023', raw, data, num_frames=4, frame_size=32, workers=1)
  return data


def tiny_config(data_dir: str):
  """The end-to-end tests' tiny config, trained 2 steps without validation."""
  config = train_config(data_dir)
  config.data.val_fraction = 0.0
  config.train.steps = config.train.checkpoint_every = 2
  config.train.eval_every = 100
  return config


def test_release_layout_without_valence_is_prepared(second_dataset):
  info = pipeline.load_info(second_dataset)
  assert {split: entry['count'] for split, entry in info['splits'].items()} == {'test': 6, 'train': 18}
  assert all(entry['valence_mean'] is None and entry['with_valence'] == 0 for entry in info['splits'].values())
  assert pipeline.train_valence_mean(info, 'train') == 0.0


def test_mixture_draws_each_dataset_by_weight(prepared_tiny, second_dataset):
  config = tiny_config(prepared_tiny)
  config.data.mixture = f'{second_dataset}@train[:50%]=0.5'
  info = pipeline.load_info(prepared_tiny)
  batches = iter(pipeline.train_dataset(config, info, batch_size=6))
  valences = np.concatenate([next(batches)['valence'] for _ in range(5)])
  # Weights 1 : 0.5: one example in three comes from the second dataset, whose valence is missing (NaN).
  assert np.isnan(valences).sum() == 10
  assert np.isfinite(valences).sum() == 20


@pytest.mark.parametrize('spec, error', [
    ('some/dir=0', "weight '0' is not a positive number"),
    ('some/dir=heavy', "weight 'heavy'"),
])
def test_bad_mixture_is_refused(spec, error):
  with pytest.raises(ValueError, match=error):
    pipeline.parse_mixture(spec)


def test_joined_and_sliced_training_splits(prepared_tiny):
  info = pipeline.load_info(prepared_tiny)
  config = tiny_config(prepared_tiny)
  joined = pipeline.open_split(config.data, info, 'train+test')
  assert len(joined) == info['splits']['train']['count'] + info['splits']['test']['count']
  assert len(pipeline.open_split(config.data, info, 'train[:50%]')) == info['splits']['train']['count'] // 2
  with pytest.raises(ValueError, match="split 'session9' is not in"):
    pipeline.open_split(config.data, info, 'train+session9')


@pytest.fixture(scope='module')
def run(prepared_tiny, second_dataset, tmp_path_factory) -> dict:
  """A 2-step run trained on the tiny dataset mixed with the second one, and its restored parameters."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_config(prepared_tiny)
  config.data.mixture = second_dataset
  train(config, workdir)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  _, state, _ = checkpointer.restore_latest(Experiment(config).abstract_state())
  checkpointer.close()
  return {'config': config, 'workdir': workdir, 'params': state['params']}


def test_suite_table_across_datasets(run, prepared_tiny, second_dataset, tmp_path):
  suite_file = tmp_path / 'suite.json'
  suite_file.write_text(json.dumps([
      {'name': 'demo', 'data': os.path.relpath(prepared_tiny, tmp_path), 'split': 'test'},
      {'name': 'no-valence', 'data': second_dataset, 'split': 'test'},
  ]))
  entries = suite.read_suite(str(suite_file))
  assert [(e.name, e.data_dir, e.split) for e in entries] == [
      ('demo', prepared_tiny, 'test'), ('no-valence', second_dataset, 'test')]
  out = str(tmp_path / 'out')
  table = suite.evaluate_suite(run['config'], run['params'], entries, out)
  with open(os.path.join(out, 'suite.json')) as f:
    written = json.load(f)
  rows = written['rows']
  assert [(r['name'], r['metric'], r['count']) for r in rows] == [('demo', 'waf', 6), ('no-valence', 'waf', 6)]
  for row in rows:
    with open(os.path.join(out, row['name'], 'report_test.json')) as f:
      report = json.load(f)
    assert row['value'] == report['scored']['waf'] and row['accuracy'] == report['scored']['accuracy']
  assert written['mean'] == pytest.approx((rows[0]['value'] + rows[1]['value']) / 2)
  with open(os.path.join(out, 'no-valence', 'report_test.json')) as f:
    assert json.load(f)['valence'] is None
  assert table.splitlines()[-1].startswith(f"| mean | | | | {written['mean']:.4f}")


def test_run_config_moved_to_another_dataset_keeps_its_tokenizer(run, second_dataset):
  moved = suite.config_on(run['config'], second_dataset)
  assert moved.data.dir == second_dataset and moved.data.mixture == ''
  assert moved.data.tokenizer == os.path.join(run['config'].data.dir, 'tokenizer.json')
  assert run['config'].data.mixture == second_dataset


@pytest.mark.parametrize('content, error', [
    ('not json', 'not valid JSON'),
    ('[]', 'non-empty JSON list'),
    ('[{"name": "a"}]', "entry 0 lacks \\['data', 'split'\\]"),
    ('[{"data": "nowhere", "split": "test"}]', 'nowhere does not exist'),
])
def test_bad_suite_file(tmp_path, content, error):
  path = tmp_path / 'suite.json'
  path.write_text(content)
  with pytest.raises(ValueError, match=error):
    suite.read_suite(str(path))


def test_missing_valence_adds_no_valence_loss():
  from mer_jax.train.step import loss_sums

  class Constant:
    def __call__(self, batch, rngs=None):
      size, length = batch['tokens'].shape
      return np.zeros((size, length, 4), np.float32), np.full([size], 0.5, np.float32)

  batch = {'tokens': np.zeros((3, 5), np.int32), 'loss_mask': np.ones((3, 5), np.float32),
           'valence': np.array([1.5, math.nan, -0.5], np.float32)}
  sums = loss_sums(Constant(), batch, None)
  assert float(sums['valence_sq_error']) == pytest.approx(1.0 + 1.0)


def test_report_scores_labelled_clips_open_sets_and_known_valences():
  from mer_jax.eval import metrics
  from mer_jax.eval.evaluate import build_report
  from mer_jax.eval.report import summary_table
  opensets = np.empty(4, object)
  opensets[:] = [(), ('sad', 'gloomy'), (), ()]
  predictions = {
      'true': np.array([0, -1, 1, -1]), 'scored': np.array([0, 1, 1, 0]),
      'generated': np.array([0, 1, 0, metrics.INVALID]),
      'valence_true': np.array([0.5, math.nan, math.nan, math.nan]), 'valence_pred': np.array([0.25, 0, 0, 0]),
      'texts': np.array(['happy', 'sad', 'happy', 'joyful']), 'label_texts': np.array(['happy', 'sad', 'happy', 'joyful']),
      'explanations': np.array(['', '', '', '']), 'names': np.array(['a', 'b', 'c', 'd']), 'opensets': opensets}
  report = build_report(predictions, ['happy', 'sad'], 0.0, 'test')
  assert report['count'] == 4 and report['labelled'] == 2
  assert report['scored']['accuracy'] == 1.0 and report['generated']['accuracy'] == 0.5
  assert report['valence'] == pytest.approx({'mse': 0.0625, 'ccc': 0.0, 'count': 1, 'mean_predictor_mse': 0.25,
                                             'train_mean': 0.0})
  # References: {happy} for a, {sad, gloomy} for b (its open set), {sad} for c; d has none and is left out.
  # Grouping file: gloomy is in sad's group, so b's reference is one group. P = R = 2/3 (c answers happy).
  open_vocabulary = report['open_vocabulary']
  assert open_vocabulary['precision'] == pytest.approx(2 / 3) and open_vocabulary['recall'] == pytest.approx(2 / 3)
  assert open_vocabulary['hit_rate'] is None
  assert '| test | 2 | scored | 1.0000 |' in summary_table(report)


def test_non_finite_scores_are_invalid_not_the_first_label():
  from mer_jax.eval import metrics
  scores = np.array([[0.1, 0.9], [math.nan, -1.0], [-2.0, -3.0]])
  assert metrics.scored_labels(scores).tolist() == [1, metrics.INVALID, 0]


def test_training_on_a_split_with_unlabelled_clips_is_refused(prepared_tiny):
  info = pipeline.load_info(prepared_tiny)
  info['splits']['train'] = {**info['splits']['train'], 'labelled': info['splits']['train']['count'] - 2}
  config = tiny_config(prepared_tiny)
  with pytest.raises(ValueError, match=f"split 'train' of {prepared_tiny} has 2 unlabelled clip"):
    pipeline.train_dataset(config, info, batch_size=4)
