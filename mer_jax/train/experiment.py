"""Everything a run builds from its config: mesh, model parts, optimizer, sharded state, step; plus its data."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mer_jax.data import pipeline
from mer_jax.interop import weights
from mer_jax.train import sharding, state as state_lib
from mer_jax.train.optim import make_optimizer, trainable_labels
from mer_jax.train.step import make_forward, make_train_step


class ModelSetup:
  """The mesh, the model's parts, the optimizer and the train state's shardings for one config."""

  def __init__(self, config: Any, vocab_size: int, devices: list[jax.Device] | None = None):
    self.config = config
    self.vocab_size = vocab_size
    self.mesh = sharding.build_mesh(config.mesh, devices)
    self.rules = sharding.rules_from_config(config)
    self.parts = state_lib.build_model_parts(config, vocab_size, self.mesh, self.rules)
    self.tx: optax.GradientTransformation = make_optimizer(config.train, self.parts.abstract_params)
    self.state_shardings = state_lib.train_state_shardings(self.parts, self.tx, self.mesh)
    self.compute_dtype = jnp.dtype(config.model.dtype)
    # The pure forward (for use inside other jitted functions) and its own jitted, on-mesh form.
    self.forward_fn = make_forward(self.parts.graphdef, self.parts.rest, self.compute_dtype,
                                   self.parts.param_shardings)
    self.forward = self.on_mesh(jax.jit(self.forward_fn))

  def on_mesh(self, jitted: Callable) -> sharding.OnMesh:
    """`jitted` traced and run under this setup's mesh and logical-axis rules (see sharding.OnMesh)."""
    return sharding.OnMesh(jitted, self.mesh, self.rules)

  def init_state(self) -> dict:
    """A fresh train state, created sharded on the mesh."""
    return state_lib.init_train_state(self.parts, self.tx, self.state_shardings, self.mesh, self.rules)

  def abstract_state(self) -> Any:
    """The train state's shapes and shardings, for restoring."""
    return state_lib.abstract_train_state(self.parts, self.tx, self.state_shardings)

  def train_step(self) -> sharding.OnMesh:
    """The step jitted with explicit state shardings and the state donated, traced under the mesh and rules."""
    train = self.config.train
    step = make_train_step(self.parts.graphdef, self.parts.rest, self.tx, self.config.seed,
                           train.valence_loss_weight, train.microbatches, self.compute_dtype,
                           self.parts.param_shardings, self.trainable(), train.get('loss_chunk', 0))
    return self.on_mesh(jax.jit(step, in_shardings=(self.state_shardings, None),
                                out_shardings=(self.state_shardings, None), donate_argnums=(0,)))

  def trainable(self) -> Any:
    """True for each parameter that config.train.trainable (and LoRA) lets train, False for frozen ones."""
    labels = trainable_labels(self.config.train, self.parts.abstract_params)
    return jax.tree.map(lambda label: label == 'train', labels)

  def global_batch(self, batch: dict) -> dict[str, jax.Array]:
    """This host's batch as global arrays on the mesh."""
    return sharding.to_global_batch(batch, self.mesh, self.rules)


class Experiment(ModelSetup):
  """A model setup plus the prepared dataset, prompts and labels it trains and evaluates on."""

  def __init__(self, config: Any, devices: list[jax.Device] | None = None, info: dict | None = None):
    """`info` is the dataset info (labels, prepare settings, splits); default: config.data.dir's."""
    self.info = pipeline.load_info(config.data.dir) if info is None else info
    self.builder = pipeline.prompt_builder(config, self.info)
    self.labels: list[str] = list(self.info['labels'])
    tokenizer = self.builder.tokenizer
    vocab_size = config.model.llm.vocab_size or self.pretrained_vocab_size(config) or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
      source = (f'config.model.llm.init_from={config.model.llm.init_from}' if not config.model.llm.vocab_size
                else 'config.model.llm.vocab_size')
      raise ValueError(f'the LLM\'s vocabulary ({vocab_size} ids, {source}) is smaller than the tokenizer '
                       f'{tokenizer.path} ({tokenizer.vocab_size} ids)')
    super().__init__(config, vocab_size, devices)

  @property
  def train_valence_mean(self) -> float:
    """The mean valence of the training split: what a constant valence predictor would answer."""
    return pipeline.train_valence_mean(self.info, self.config.data.train_split)

  @staticmethod
  def pretrained_vocab_size(config: Any) -> int:
    """The vocabulary size of config.model.llm.init_from's checkpoint, 0 when the LLM starts fresh."""
    return weights.llm_vocab_size(config.model.llm.init_from) if config.model.llm.init_from else 0

  def host_shard(self, global_batch_size: int) -> tuple[int, int, int]:
    """(data shard index, shard count, examples per host) for this host's place on the mesh."""
    return sharding.host_batch_shard(self.mesh, self.rules, global_batch_size)
