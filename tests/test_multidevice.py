"""Sharded training on 8 fake CPU devices equals the 1-device run, and really splits the parameters."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def results() -> dict:
  xla_flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  env = {**os.environ, 'XLA_FLAGS': xla_flags, 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'multidevice_check.py')], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


@pytest.mark.parametrize('mesh', ['data=8', 'fsdp=8', 'tensor=8', '2x2x2'])
def test_same_losses_and_params_as_one_device(results, mesh):
  assert results[mesh]['max_loss_diff'] <= 1e-5, results[mesh]['losses']
  assert results[mesh]['max_param_diff'] <= 1e-5


def params(result: dict) -> dict:
  return {k: v for k, v in result['tensors'].items() if k.startswith("['params']")}


def is_small(path: str) -> bool:
  """Biases and norm scales: small tensors that may stay whole."""
  return path.endswith("['bias']") or path.endswith("['scale']")


def matrices(tensors: dict) -> dict:
  return {k: v for k, v in tensors.items() if v['ndim'] >= 2 and not is_small(k)}


@pytest.mark.parametrize('mesh', ['fsdp=8', '2x2x2'])
def test_every_weight_matrix_is_split(results, mesh):
  weights = matrices(params(results[mesh]))
  assert len(weights) > 20
  assert not [k for k, v in weights.items() if v['replicated']]


def test_tensor_parallel_splits_all_but_the_encoder_stems(results):
  weights = matrices(params(results['tensor=8']))
  replicated = {k for k, v in weights.items() if v['replicated']}
  stems = {"['params']['audio']['conv1']['kernel']", "['params']['audio']['conv2']['kernel']",
           "['params']['vision']['patch_embed']['kernel']", "['params']['vision']['positions']"}
  assert replicated <= stems
  assert [k for k in weights if "['llm']" in k] and not [k for k in replicated if "['llm']" in k]


def test_fsdp_holds_an_eighth_of_every_divisible_tensor(results):
  tensors = results['fsdp=8']['tensors']
  whole = [k for k, v in matrices(tensors).items() if v['device_bytes'] * 8 != v['bytes']]
  assert not whole, whole
  total = sum(v['bytes'] for v in tensors.values())
  per_device = sum(v['device_bytes'] for v in tensors.values())
  assert per_device < total / 6


def test_data_parallel_replicates_parameters(results):
  assert all(v['replicated'] for v in params(results['data=8']).values())


@pytest.mark.parametrize('target', ['1 device', 'fsdp=8'])
def test_checkpoint_from_2x2x2_restores_on_another_mesh(results, target):
  restored = results['restored from 2x2x2'][target]
  assert restored['step'] == 3 and restored['data_state'] == {'next_index': 3}
  assert restored['max_diff'] == 0.0
  if target == 'fsdp=8':
    assert restored['fsdp_sharded']
