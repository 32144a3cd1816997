"""Freezing and LoRA: frozen parameters stay bitwise unchanged, hold no optimizer state; adapters start as no-ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from mer_jax.interop import hf, weights
from mer_jax.models import lora
from mer_jax.models.layers import Dense
from mer_jax.train.experiment import Experiment, ModelSetup
from mer_jax.train.optim import PARAM_GROUPS, make_optimizer, parameter_counts
from mer_jax.train.random_batch import random_batch
from tests.test_step import VOCAB, step_config


def size(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def adapters(tree):
  return {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)
          if lora.is_adapter_path(path)}


def two_steps(setup, batch_seed: int = 1):
  """Params before and after two steps (the first step's learning rate is zero: warmup)."""
  batch = setup.global_batch(random_batch(setup.config, 8, VOCAB, seed=batch_seed))
  step = setup.train_step()
  state = setup.init_state()
  before = jax.device_get(state['params'])
  for _ in range(2):
    state, _ = step(state, batch)
  return before, jax.device_get(state['params'])


def check_optimizer_holds_trainable_only(setup, trained: int):
  opt_state = jax.eval_shape(setup.tx.init, setup.parts.abstract_params)
  counters = sum(1 for x in jax.tree.leaves(opt_state) if np.issubdtype(x.dtype, np.integer) and x.shape == ())
  assert size(opt_state) == 2 * trained + counters


@pytest.mark.parametrize('trainable', [('llm', 'fusion'), ('valence_head',)])
def test_frozen_groups_unchanged_and_optimizer_holds_trainable_only(trainable):
  config = step_config()
  config.train.trainable = trainable
  setup = ModelSetup(config, VOCAB)
  params = setup.parts.abstract_params
  trained, total = parameter_counts(config.train, params)
  assert trained == size({g: params[g] for g in trainable}) and total == size(params)
  assert trained < total
  check_optimizer_holds_trainable_only(setup, trained)
  before, after = two_steps(setup)
  for group in params:
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[group]),
                                                         jax.tree.leaves(after[group]))]
    assert any(changed) if group in trainable else not any(changed), group
def test_everything_trains_by_default():
  config = step_config()
  assert set(config.train.trainable) == set(PARAM_GROUPS)
  params = ModelSetup(config, VOCAB).parts.abstract_params
  trained, total = parameter_counts(config.train, params)
  assert trained == total


def test_unknown_group_is_refused():
  config = step_config()
  config.train.trainable = ('llm', 'encoder')
  params = ModelSetup(step_config(), VOCAB).parts.abstract_params
  with pytest.raises(ValueError, match=r"unknown parameter groups \['encoder'\]; valid: \('audio'"):
    make_optimizer(config.train, params)


def lora_config(rank: int = 4, targets: tuple[str, ...] = ('q', 'v'), trainable: tuple[str, ...] = (),
                dropout: float = 0.0):
  config = step_config()
  config.model.lora.update(rank=rank, alpha=8.0, dropout=dropout, targets=targets)
  config.train.trainable = trainable
  return config


def test_lora_starts_as_a_no_op():
  config = lora_config(targets=tuple(lora.TARGETS))
  setup = ModelSetup(config, VOCAB)
  plain = ModelSetup(step_config(), VOCAB)
  params = jax.device_get(setup.init_state()['params'])
  assert adapters(params)
  batch = setup.global_batch(random_batch(config, 8, VOCAB, seed=2))
  for with_lora, without in zip(setup.forward(params, batch), plain.forward(lora.without_adapters(params), batch)):
    np.testing.assert_array_equal(with_lora, without)


@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory) -> tuple[str, torch.nn.Module]:
  """A random tiny LlamaForCausalLM shaped like step_config()'s LLM, and its save_pretrained directory."""
  llm = step_config().model.llm
  config = transformers.LlamaConfig(
    vocab_size=VOCAB, hidden_size=llm.width, intermediate_size=llm.mlp, num_hidden_layers=llm.layers,
    num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads, rms_norm_eps=llm.norm_eps)
  model = transformers.LlamaForCausalLM(config).eval()
  path = str(tmp_path_factory.mktemp('llama'))
  model.save_pretrained(path)
  return path, model


def pretrained_lora_config(path: str, trainable: tuple[str, ...] = (), dropout: float = 0.0):
  """lora_config() with config.model.llm.init_from = path (and the values that checkpoint fixes)."""
  config = lora_config(trainable=trainable, dropout=dropout)
  config.model.llm.update(hf.checkpoint_config('llm', path))
  config.model.llm.init_from = path
  return config


def test_lora_on_a_pretrained_llm_starts_as_the_pretrained_model(llama_dir):
  path, model = llama_dir
  setup = ModelSetup(pretrained_lora_config(path), VOCAB)
  params = setup.init_state()['params']
  expected = nnx.to_pure_dict(nnx.state(hf.load_llm(path), nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, lora.without_adapters(jax.device_get(params['llm'])), expected)
  found = adapters(params)
  assert found and all(not x.any() for name, x in found.items() if name.endswith("['b']"))
  ids = np.random.RandomState(0).randint(0, VOCAB, (2, 12))
  logits = nnx.merge(setup.parts.graphdef, params, setup.parts.rest).llm(jnp.asarray(ids))
  with torch.no_grad():
    reference = model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(logits, reference, atol=1e-4)


@pytest.mark.parametrize('pretrained', [False, True])
def test_only_adapters_train_on_a_frozen_llm(llama_dir, pretrained):
  config = pretrained_lora_config(llama_dir[0], dropout=0.1) if pretrained else lora_config(dropout=0.1)
  setup = ModelSetup(config, VOCAB)
  trained, _ = parameter_counts(config.train, setup.parts.abstract_params)
  assert trained == size(adapters(setup.parts.abstract_params)) > 0
  check_optimizer_holds_trainable_only(setup, trained)
  before, after = two_steps(setup)
  assert not any(np.array_equal(before_value, adapters(after)[name])
                 for name, before_value in adapters(before).items() if name.endswith("['b']"))
  jax.tree.map(np.testing.assert_array_equal, lora.without_adapters(before), lora.without_adapters(after))


@pytest.mark.parametrize('rank, targets', [(64, ('q', 'v')), (16, tuple(lora.TARGETS))])
def test_published_recipes(rank, targets):
  config = lora_config(rank, targets)
  params = ModelSetup(config, VOCAB).parts.abstract_params
  found = adapters(params)
  assert {name.split("['")[-3].rstrip("']") for name in found} == set(targets)
  layers = config.model.llm.layers
  for name, x in found.items():
    assert x.shape[0] == layers and rank in (x.shape[-1], x.shape[1]), name


def test_unknown_lora_target_is_refused():
  with pytest.raises(ValueError, match=r"unknown projections \['qkv'\]; valid: \('q', 'k'"):
    ModelSetup(lora_config(targets=('qkv',)), VOCAB)


def test_lora_dropout_applies_only_with_a_key():
  dense = Dense(8, 6, ('embed', 'mlp'), rngs=nnx.Rngs(0))
  adapter = lora.LoRA(dense.kernel, 1, 2, 4.0, 0.5, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(1))
  adapter.b[...] = jnp.ones_like(adapter.b[...])
  x = jnp.ones((3, 8))
  np.testing.assert_array_equal(adapter(x), adapter(x))
  assert not np.allclose(adapter(x), adapter(x, jax.random.key(0)))


def test_vocab_size_comes_from_the_pretrained_llm(llama_dir, tmp_path):
  config = pretrained_lora_config(llama_dir[0])
  config.model.llm.vocab_size = 0
  assert Experiment.pretrained_vocab_size(config) == VOCAB
  converted = str(tmp_path / 'converted')
  weights.convert(llama_dir[0], converted)
  assert weights.llm_vocab_size(converted) == VOCAB
  config.model.llm.init_from = ''
  assert Experiment.pretrained_vocab_size(config) == 0
