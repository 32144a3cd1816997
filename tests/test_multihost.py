"""Two local processes x 2 fake devices (jax.distributed, gloo) train exactly like one process x 4 devices.

The two-process run uses a hybrid mesh: data parallel 2 inside each process x 2 across them (DCN).

The learning rate is small for the same reason as in multidevice_check.py: Adam scales
reduction-order noise in near-zero gradients by the rate.
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import Experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MER_JAX = os.path.join(os.path.dirname(sys.executable), 'mer-jax')


def train_flags(data_dir: str, workdir: str) -> list[str]:
  return ['train', '--config', 'configs/demo.py:variant=tiny', f'--config.data.dir={data_dir}',
          '--config.train.steps=3', '--config.train.eval_every=0', '--config.model.dropout=0.0',
          '--config.train.learning_rate=1e-4',
          '--workdir', workdir]


def losses(stdout: str) -> list[float]:
  return [float(x) for x in re.findall(r'step \d+/3  loss ([0-9.]+)', stdout)]


@pytest.fixture(scope='module')
def runs(prepared_tiny, tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  base_env = {**os.environ, 'PYTHONPATH': ROOT}
  two = subprocess.run(
      ['bash', os.path.join(ROOT, 'launch', 'local.sh'), '2', *train_flags(prepared_tiny, str(root / 'two')),
       '--config.mesh.dcn_data=2'],
      env={**base_env, 'MER_JAX': MER_JAX, 'DEVICES_PER_PROCESS': '2', 'PORT': '12417'},
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert two.returncode == 0, two.stderr[-3000:]
  one = subprocess.run(
      [sys.executable, '-c', 'from mer_jax.main import run; run()', *train_flags(prepared_tiny, str(root / 'one'))],
      env={**base_env, 'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'},
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert one.returncode == 0, one.stderr[-3000:]
  return {'two': two.stdout, 'one': one.stdout, 'root': root, 'data': prepared_tiny}


def test_two_processes_report_four_devices(runs):
  assert '2 process(es) (explicit), 4 devices' in runs['two']
  assert '1 process(es) (single process), 4 devices' in runs['one']


def test_losses_equal_one_process(runs):
  two, one = losses(runs['two']), losses(runs['one'])
  assert len(two) == len(one) == 3
  np.testing.assert_allclose(two, one, atol=1e-4)


def test_final_parameters_equal_one_process(runs):
  config = demo.get_config('variant=tiny')
  config.data.dir = runs['data']
  config.model.dropout = 0.0
  config.train.learning_rate = 1e-4
  abstract = Experiment(config).abstract_state()
  states = []
  for name in ('two', 'one'):
    checkpointer = Checkpointer(os.path.join(runs['root'], name, 'checkpoints'), 3)
    step, state, _ = checkpointer.restore_latest(abstract)
    checkpointer.close()
    assert step == 3
    states.append(jax.device_get(state['params']))
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_allclose(a, b, atol=1e-5)
