"""Shared fixtures: one tiny synthetic dataset, prepared once per test session."""

import os

# Tiny test programs compile about 3x faster without XLA's backend optimisations and run as fast.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from mer_jax.data import prepare, synthetic  # noqa: E402


def pytest_configure(config):
  """Reuse compiled XLA programs across the tests of a session."""
  cache_dir = os.path.join(str(config.rootpath), '.pytest_cache', 'jax')
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def prepared_tiny(tmp_path_factory) -> str:
  """A 40-clip synthetic dataset prepared with 32x32 frames (the tiny config's image size)."""
  root = tmp_path_factory.mktemp('tiny_dataset')
  raw, data = str(root / 'raw'), str(root / 'data')
  synthetic.write_dataset(raw, num_clips=40, seed=3)
  prepare.prepare_dataset('mer2023', raw, data, num_frames=4, frame_size=32)
  return data


def tiny_config(data_dir: str, modalities: str = 'audio,video,text'):
  """The tiny demo config on `data_dir`, trained 2 steps with a checkpoint at step 2."""
  from configs import demo
  config = demo.get_config(f'variant=tiny,modalities={modalities}')
  config.data.dir = data_dir
  config.train.steps = 2
  config.train.checkpoint_every = 2
  return config


@pytest.fixture(scope='session')
def tiny_run(prepared_tiny, tmp_path_factory) -> str:
  """A tiny run trained 2 steps on prepared_tiny: the run that later stages start from or label with."""
  from mer_jax.train.trainer import train
  workdir = str(tmp_path_factory.mktemp('tiny_run') / 'run')
  train(tiny_config(prepared_tiny), workdir)
  return workdir
