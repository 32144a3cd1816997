"""End to end on the tiny config: train, checkpoint, resume bit-exactly, damaged checkpoints, evaluate."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from mer_jax.eval.evaluate import Validation, evaluate
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import train

from configs import demo


def tiny_config(data_dir: str):
  config = demo.get_config('variant=tiny')
  config.data.dir = data_dir
  config.data.val_fraction = 0.25
  config.train.steps = 6
  config.train.checkpoint_every = 3
  config.train.eval_every = 3
  config.train.log_every = 1
  return config


def restore(workdir: str, config) -> tuple[int, dict]:
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  step, state, _ = checkpointer.restore_latest(Experiment(config).abstract_state())
  checkpointer.close()
  return step, state


@pytest.fixture(scope='module')
def runs(prepared_tiny, tmp_path_factory):
  """One run straight through 6 steps, one stopped after step 4 (mid-epoch) and resumed."""
  root = tmp_path_factory.mktemp('runs')
  config = tiny_config(prepared_tiny)
  straight, resumed = str(root / 'straight'), str(root / 'resumed')
  train(config, straight, hooks=Validation(config.train.eval_every).hooks)
  train(config, resumed, stop_at=4)
  stopped_step, _ = restore(resumed, config)
  train(config, resumed)
  return {'config': config, 'straight': straight, 'resumed': resumed, 'stopped_step': stopped_step}


def test_resume_is_bitwise_identical(runs):
  assert runs['stopped_step'] == 4
  step_a, state_a = restore(runs['straight'], runs['config'])
  step_b, state_b = restore(runs['resumed'], runs['config'])
  assert step_a == step_b == 6
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_changes_parameters(runs):
  experiment = Experiment(runs['config'])
  initial = experiment.init_state()
  _, trained = restore(runs['straight'], runs['config'])
  changed = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(initial['params']), jax.tree.leaves(trained['params']))]
  assert all(changed)


def test_checkpoints_are_kept_and_numbered(runs):
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(runs['straight'], 'checkpoints', '*'))
                 if os.path.basename(p).isdigit())
  assert steps == [3, 6]


def test_tensorboard_scalars_written(runs):
  events = EventAccumulator(runs['straight'])
  events.Reload()
  assert {'train/loss', 'train/learning_rate', 'val/waf', 'perf/steps_per_sec'} <= set(events.Tags()['tensors'])
  series = events.Tensors('train/loss')
  assert [e.step for e in series] == [1, 2, 3, 4, 5, 6]
  values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in series]
  assert all(np.isfinite(values)) and all(v > 0 for v in values)


def test_damaged_newest_checkpoint_falls_back(runs, tmp_path, capsys):
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(runs['straight'], workdir)
  for path in glob.glob(os.path.join(workdir, 'checkpoints', '6', 'state', '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'garbage')
  step, state = restore(workdir, runs['config'])
  assert step == 3
  assert 'is damaged' in capsys.readouterr().err and os.path.isdir(os.path.join(workdir, 'checkpoints', '6.damaged'))
  train(runs['config'], workdir)
  step_after, state_after = restore(workdir, runs['config'])
  _, reference = restore(runs['straight'], runs['config'])
  assert step_after == 6
  for a, b in zip(jax.tree.leaves(state_after), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_writes_report(runs, prepared_tiny, tmp_path):
  config = runs['config']
  _, state = restore(runs['straight'], config)
  out_dir = str(tmp_path / 'eval')
  report = evaluate(Experiment(config), state['params'], 'test', out_dir, progress=False)
  with open(os.path.join(prepared_tiny, 'dataset_info.json')) as f:
    info = json.load(f)
  assert report['count'] == info['splits']['test']['count']
  for kind in ('scored', 'generated'):
    confusion = np.asarray(report[kind]['confusion'])
    assert confusion.shape == (6, 7) and confusion.sum() == report['count']
    assert 0.0 <= report[kind]['waf'] <= 1.0
  assert np.asarray(report['scored']['confusion'])[:, 6].sum() == 0
  assert report['generated']['invalid'] == np.asarray(report['generated']['confusion'])[:, 6].sum()
  assert report['valence']['mean_predictor_mse'] > 0
  with open(os.path.join(out_dir, 'report_test.json')) as f:
    assert json.load(f)['count'] == report['count']
  assert os.path.getsize(os.path.join(out_dir, 'confusion_test.png')) > 1000
  assert '| test |' in open(os.path.join(out_dir, 'report_test.md')).read()
