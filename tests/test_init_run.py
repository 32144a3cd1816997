"""config.init.run: a run starts from another run's parameters for the components both models have."""

import os

import jax
import numpy as np
import pytest

from mer_jax.train import checkpoint, run
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import train

from conftest import tiny_config


@pytest.fixture(scope='module')
def source(tiny_run) -> str:
  """A tiny run trained 2 steps: the run others start from."""
  return tiny_run


def source_params(workdir: str, config) -> dict:
  return run.restore_params(workdir, Experiment(config))[1]


def assert_equal_trees(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_shared_components_come_from_the_run_and_the_others_start_fresh(source, prepared_tiny):
  trained = source_params(source, tiny_config(prepared_tiny))
  config = tiny_config(prepared_tiny, 'audio,text')
  config.init.run = source
  params = Experiment(config).init_state()['params']
  fresh = Experiment(tiny_config(prepared_tiny, 'audio,text')).init_state()['params']
  assert 'vision' not in params
  for component in ('audio', 'llm', 'valence_head'):
    assert_equal_trees(params[component], trained[component])
  # Training moved the parameters away from the initialisation, so equality above is not a coincidence.
  assert not np.array_equal(np.asarray(fresh['llm']['embed']['embedding']),
                            np.asarray(trained['llm']['embed']['embedding']))


def test_lora_adapters_the_run_lacks_start_fresh(source, prepared_tiny):
  trained = source_params(source, tiny_config(prepared_tiny))
  config = tiny_config(prepared_tiny)
  config.model.lora.rank = 2
  config.init.run = source
  params = Experiment(config).init_state()['params']
  attention = params['llm']['layers']['blocks']['attn']
  assert float(np.abs(np.asarray(attention['q']['lora']['b'])).max()) == 0.0
  np.testing.assert_array_equal(np.asarray(attention['q']['kernel']),
                                np.asarray(trained['llm']['layers']['blocks']['attn']['q']['kernel']))


def test_training_starts_from_the_run(source, prepared_tiny, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(os.path.dirname(source))
  config = tiny_config(prepared_tiny)
  config.train.steps = 1
  config.init.run = os.path.basename(source)  # a relative path, resolved when given
  workdir = str(tmp_path / 'stage2')
  train(config, workdir)
  assert f'from {source}/checkpoints/2 (config.init.run); the other' in capsys.readouterr().out
  assert run.load_config(workdir).init.run == source
  assert run.inference_config(workdir).init.run == ''


def test_a_run_that_does_not_match_the_model_is_refused(source, prepared_tiny):
  config = tiny_config(prepared_tiny)
  config.model.llm.mlp = 48
  config.init.run = source
  with pytest.raises(checkpoint.CheckpointMismatch, match=r'config.init.run: .* llm/layers/blocks/mlp/.*model \(1, 32, 48\)'):
    Experiment(config)


@pytest.mark.parametrize('make_dir, message', [
    (lambda root: os.path.join(root, 'missing'), 'does not exist'),
    (lambda root: root, 'holds no checkpoints'),
])
def test_a_run_without_checkpoints_is_refused(prepared_tiny, tmp_path, make_dir, message):
  config = tiny_config(prepared_tiny)
  config.init.run = make_dir(str(tmp_path))
  with pytest.raises(ValueError, match=f'config.init.run=.* {message}'):
    Experiment(config)
