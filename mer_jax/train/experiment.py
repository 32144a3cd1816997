"""Everything a run builds from its config: dataset info, prompts, mesh, model parts, optimizer, state."""

from typing import Any

import jax
import optax

from mer_jax.data import pipeline
from mer_jax.train import sharding, state as state_lib
from mer_jax.train.optim import make_optimizer
from mer_jax.train.step import make_forward


class Experiment:
  """The pieces shared by training and evaluation of one config."""

  def __init__(self, config: Any, devices: list[jax.Device] | None = None):
    self.config = config
    self.info = pipeline.load_info(config.data.dir)
    self.builder = pipeline.prompt_builder(config, self.info)
    self.labels: list[str] = list(self.info['labels'])
    self.vocab_size = config.model.llm.vocab_size or self.builder.tokenizer.vocab_size
    if self.vocab_size < self.builder.tokenizer.vocab_size:
      raise ValueError(f'config.model.llm.vocab_size={self.vocab_size} is smaller than the tokenizer '
                       f'{self.builder.tokenizer.path} ({self.builder.tokenizer.vocab_size} ids)')
    self.mesh = sharding.build_mesh(config.mesh, devices)
    self.rules = sharding.rules_from_config(config)
    self.tx: optax.GradientTransformation = make_optimizer(config.train)
    self.parts = state_lib.build_model_parts(config, self.vocab_size, self.mesh, self.rules)
    self.state_shardings = state_lib.train_state_shardings(self.parts, self.tx, self.mesh)
    self.forward = jax.jit(make_forward(self.parts.graphdef, self.parts.rest))

  def init_state(self) -> dict:
    """A fresh train state, created sharded on the mesh."""
    return state_lib.init_train_state(self.parts, self.tx, self.state_shardings, self.mesh, self.rules)

  def abstract_state(self) -> Any:
    """The train state's shapes and shardings, for restoring."""
    return state_lib.abstract_train_state(self.parts, self.tx, self.state_shardings)

  def global_batch(self, batch: dict) -> dict[str, jax.Array]:
    """This host's batch as global arrays on the mesh."""
    return sharding.to_global_batch(batch, self.mesh, self.rules)

  def host_batch_size(self, global_batch_size: int) -> int:
    """The part of a global batch this host feeds."""
    if global_batch_size % jax.process_count():
      raise ValueError(f'batch size {global_batch_size} does not divide over {jax.process_count()} hosts')
    return global_batch_size // jax.process_count()
