"""Builds the model and its train state directly on the mesh, with shardings from logical axis names."""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mer_jax.data import augment_config
from mer_jax.interop import weights
from mer_jax.models import lora
from mer_jax.models.mer import MERModel
from mer_jax.train import init_run, sharding

# Parts of the model that config.model.<name>.init_from can initialise from a Hugging Face checkpoint
# directory or a converted (Orbax) one.
PRETRAINED = ('llm', 'audio', 'vision')


@dataclasses.dataclass
class ModelParts:
  """The model's static structure, its non-trainable variables, and where its params live."""

  factory: Callable[[], MERModel]
  graphdef: nnx.GraphDef
  rest: Any
  param_shardings: Any
  abstract_params: Any
  pretrained: dict[str, str]
  init_run: str  # config.init.run: the run whose newest checkpoint starts the shared components ('' = none)


def model_factory(config: Any, vocab_size: int) -> Callable[[], MERModel]:
  """A function that builds the configured model with the config's seed."""
  spec = augment_config.from_config(config).spec_augment
  return lambda: MERModel(config.model, vocab_size, spec_augment=spec, rngs=nnx.Rngs(params=config.seed))


def build_model_parts(config: Any, vocab_size: int, mesh: jax.sharding.Mesh, rules: Any) -> ModelParts:
  """Traces the model abstractly (nothing allocated) and derives parameter shardings.

  Each set config.model.<name>.init_from (name in PRETRAINED), and config.init.run, is checked
  against the config here.
  """
  pretrained = {name: config.model[name].init_from for name in PRETRAINED if config.model[name].init_from}
  for name, path in pretrained.items():
    weights.check_config(name, path, config.model[name])
  factory = model_factory(config, vocab_size)
  graphdef, abstract_params, abstract_rest = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
  specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
  absent = [name for name in pretrained if name not in specs]
  if absent:
    raise ValueError(f'config.model.{absent[0]}.init_from is set but the model has no {absent[0]} '
                     f'(config.model.modalities={config.model.modalities})')
  sharding.check_rules_cover(specs, rules)
  param_shardings = sharding.logical_to_shardings(specs, mesh, rules)
  rest = abstract_rest
  if jax.tree.leaves(abstract_rest):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      rest = jax.jit(lambda: nnx.split(factory(), nnx.Param, ...)[2])()
  abstract_params = nnx.to_pure_dict(abstract_params)
  source = init_run.source_run(config)
  if source:
    init_run.check(source, abstract_params)
  return ModelParts(factory, graphdef, rest, param_shardings, abstract_params, pretrained, source)


def train_state_shardings(parts: ModelParts, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> dict:
  """Shardings of {'step', 'params', 'opt_state'}: optimizer moments follow their parameters.

  Frozen parameters' places in the state of a masked transformation stay empty (optax.MaskedNode).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt_state = jax.eval_shape(tx.init, parts.abstract_params)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_shardings = optax.tree_map_params(
      tx, lambda x, s: x if masked(x) else s, abstract_opt_state, parts.param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=masked)
  return {'step': replicated, 'params': parts.param_shardings, 'opt_state': opt_shardings}


def init_train_state(parts: ModelParts, tx: optax.GradientTransformation, shardings: dict,
                     mesh: jax.sharding.Mesh, rules: Any) -> dict:
  """Creates the train state already sharded (jit with out_shardings), never on one device first.

  Parts with a pretrained checkpoint then have their fresh params replaced, one parameter at a
  time, by the checkpoint's, placed with the same shardings; LoRA adapters keep their fresh values.
  Last, config.init.run's checkpoint replaces the components it shares with the model.
  """

  def init() -> dict:
    params = nnx.to_pure_dict(nnx.state(parts.factory(), nnx.Param))
    return {'step': jnp.zeros([], jnp.int32), 'params': params, 'opt_state': tx.init(params)}

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)()
  for name, path in parts.pretrained.items():
    loaded = weights.load_params(name, path, lora.without_adapters(parts.abstract_params[name]),
                                 lora.without_adapters(shardings['params'][name]))
    state['params'][name] = lora.with_adapters(loaded, state['params'][name])
  if parts.init_run:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            parts.abstract_params, shardings['params'])
    state['params'] = init_run.load(parts.init_run, state['params'], abstract)
  return state


def abstract_train_state(parts: ModelParts, tx: optax.GradientTransformation, shardings: dict) -> Any:
  """ShapeDtypeStructs with shardings, the target for restoring a checkpoint onto the mesh."""
  abstract = {
      'step': jax.ShapeDtypeStruct([], jnp.int32),
      'params': parts.abstract_params,
      'opt_state': jax.eval_shape(tx.init, parts.abstract_params),
  }
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
