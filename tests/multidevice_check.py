"""Trains 3 steps of a small model on several meshes of 8 fake CPU devices; prints a JSON comparison.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_multidevice.py does).
"""

import json
import sys
import tempfile

import jax
import numpy as np

from configs import demo
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import ModelSetup
from mer_jax.train.random_batch import random_batch

VOCAB = 128
MESHES = {'data=8': (8, 1, 1), 'fsdp=8': (1, 8, 1), 'tensor=8': (1, 1, 8), '2x2x2': (2, 2, 2)}


def divisible_config(mesh: tuple[int, int, int]):
  """The tiny config widened so every sharded dimension divides by 8, float32, no dropout.

  The learning rate is small because Adam turns reduction-order noise in near-zero gradients into
  parameter differences proportional to the rate (about 1.5e-5 at 1e-3, 1.5e-6 at 1e-4).
  """
  config = demo.get_config('variant=tiny')
  config.model.dropout = 0.0
  config.train.learning_rate = 1e-4
  config.data.seq_len = 32
  config.train.batch_size = 8
  for encoder in (config.model.audio, config.model.vision):
    encoder.width, encoder.heads, encoder.mlp = 32, 8, 64
  llm = config.model.llm
  llm.width, llm.heads, llm.kv_heads, llm.mlp, llm.vocab_size = 64, 8, 8, 128, VOCAB
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  return config


def train_three_steps(mesh: tuple[int, int, int]) -> tuple[list[float], dict, dict]:
  """Losses, final params (host) and final state (on devices) after 3 steps."""
  devices = jax.devices()[:int(np.prod(mesh))]
  setup = ModelSetup(divisible_config(mesh), VOCAB, devices)
  state, step = setup.init_state(), setup.train_step()
  losses = []
  for i in range(3):
    state, metrics = step(state, setup.global_batch(random_batch(setup.config, 8, VOCAB, seed=i)))
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state['params']), state


def sharding_summary(state: dict) -> dict:
  """Per tensor: whether it is split, and the bytes one device holds against the whole."""
  summary = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if not hasattr(leaf, 'sharding') or leaf.ndim == 0:
      continue
    summary[jax.tree_util.keystr(path)] = {
        'ndim': leaf.ndim, 'shape': list(leaf.shape), 'bytes': int(leaf.nbytes),
        'device_bytes': int(leaf.addressable_shards[0].data.nbytes),
        'replicated': bool(leaf.sharding.is_fully_replicated)}
  return summary


def restore_elsewhere(state: dict) -> dict:
  """Saves `state` and restores it on 1 device and on fsdp=8; the largest difference for each."""
  differences = {}
  with tempfile.TemporaryDirectory() as directory:
    saver = Checkpointer(directory, keep=1)
    saver.save(3, state, {'next_index': 3})
    saver.close()
    for name, mesh in {'1 device': (1, 1, 1), 'fsdp=8': (1, 8, 1)}.items():
      setup = ModelSetup(divisible_config(mesh), VOCAB, jax.devices()[:int(np.prod(mesh))])
      loader = Checkpointer(directory, keep=1)
      step, restored, data_state = loader.restore_latest(setup.abstract_state())
      loader.close()
      fsdp_sharded = all(not leaf.sharding.is_fully_replicated
                         for path, leaf in jax.tree_util.tree_leaves_with_path(restored['params'])
                         if leaf.ndim >= 2 and path[-1].key not in ('bias', 'scale')) if mesh[1] > 1 else None
      differences[name] = {
          'step': step, 'data_state': data_state, 'fsdp_sharded': fsdp_sharded,
          'max_diff': max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                          for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(state))))}
  return differences


def main() -> None:
  """Prints {mesh: {losses, max_param_diff, loss_diff, tensors}} against the 1-device run."""
  assert jax.device_count() == 8, 'needs XLA_FLAGS=--xla_force_host_platform_device_count=8'
  reference_losses, reference_params, _ = train_three_steps((1, 1, 1))
  results = {'1 device': {'losses': reference_losses}}
  for name, mesh in MESHES.items():
    losses, params, state = train_three_steps(mesh)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params))]
    results[name] = {'losses': losses, 'max_param_diff': max(diffs),
                     'max_loss_diff': max(abs(a - b) for a, b in zip(losses, reference_losses)),
                     'tensors': sharding_summary(state)}
    if name == '2x2x2':
      results['restored from 2x2x2'] = restore_elsewhere(state)
  json.dump(results, sys.stdout)


if __name__ == '__main__':
  main()
