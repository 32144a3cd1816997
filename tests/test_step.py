"""The train step: gradient accumulation equals one big batch; remat policies change compiled memory."""

import jax
import numpy as np
import pytest

from configs import demo
from mer_jax.train.experiment import ModelSetup
from mer_jax.train.random_batch import random_batch

VOCAB = 128


def step_config(microbatches: int = 1, remat: str = 'none', layers: int = 1):
  config = demo.get_config('variant=tiny')
  config.model.dropout = 0.0
  config.model.remat = remat
  config.model.llm.layers = layers
  config.data.seq_len = 32
  config.train.batch_size = 8
  config.train.microbatches = microbatches
  return config


@pytest.fixture(scope='module')
def uneven_batch():
  batch = random_batch(step_config(), 8, VOCAB, seed=1, answer_lengths=(1, 5, 2, 7))
  assert len(set(batch['loss_mask'].sum(axis=1))) == 4
  return batch


def one_step(config, batch):
  setup = ModelSetup(config, VOCAB)
  state, metrics = setup.train_step()(setup.init_state(), setup.global_batch(batch))
  return jax.device_get(state), jax.device_get(metrics)


def test_accumulation_matches_one_big_batch(uneven_batch):
  reference, reference_metrics = one_step(step_config(1), uneven_batch)
  for microbatches in (2, 4):
    state, metrics = one_step(step_config(microbatches), uneven_batch)
    np.testing.assert_allclose(metrics['loss'], reference_metrics['loss'], rtol=1e-6)
    np.testing.assert_allclose(metrics['grad_norm'], reference_metrics['grad_norm'], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state['params']), jax.tree.leaves(reference['params'])):
      np.testing.assert_allclose(a, b, atol=1e-6)


def test_batch_must_split_into_microbatches(uneven_batch):
  with pytest.raises(ValueError, match='does not split into train.microbatches=3'):
    one_step(step_config(3), uneven_batch)


def test_remat_policies_change_compiled_memory(uneven_batch):
  temp_bytes = {}
  for policy in ('none', 'full', 'dots'):
    setup = ModelSetup(step_config(remat=policy, layers=4), VOCAB)
    batch = setup.global_batch(uneven_batch)
    compiled = setup.train_step().lower(setup.abstract_state(), batch).compile()
    temp_bytes[policy] = compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes['full'] < temp_bytes['dots'] < temp_bytes['none'], temp_bytes
