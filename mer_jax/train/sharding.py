"""Device mesh, the logical-axis rules table, and host batches turned into global arrays."""

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import nnx
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis name -> mesh axis (or axes); None keeps that dimension whole. Every logical name
# the model uses (mer_jax.models.layers.LOGICAL_AXES) needs a rule.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('activation_batch', ('data', 'fsdp')),
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_mlp', 'tensor'),
    ('activation_heads', 'tensor'),
    ('activation_kv_heads', 'tensor'),
    ('activation_head_dim', None),
    ('activation_vocab', 'tensor'),
    ('layers', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('audio_embed', 'fsdp'),
    ('vision_embed', 'fsdp'),
    ('fusion_embed', 'fsdp'),
    ('conv_width', None),
    ('conv_in', None),
    ('patch', None),
    ('positions', None),
    ('queries', None),
    ('lora_rank', None),
)


def rules_from_config(config: Any) -> tuple[tuple[str, Any], ...]:
  """The rules table: config.sharding_rules when given, else DEFAULT_RULES."""
  rules = tuple(tuple(rule) for rule in config.sharding_rules) or DEFAULT_RULES
  for rule in rules:
    axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    unknown = [a for a in axes if a is not None and a not in MESH_AXES]
    if len(rule) != 2 or unknown:
      raise ValueError(f'sharding rule {rule!r}: expected (logical_name, mesh axis or axes) '
                       f'with mesh axes from {MESH_AXES}')
  return rules


def check_rules_cover(specs: Any, rules: Any) -> None:
  """Fails naming any logical axis in `specs` that the rules table lacks."""
  covered = {name for name, _ in rules}
  used = {name for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
          for name in spec if name is not None}
  missing = sorted(used - covered)
  if missing:
    raise ValueError(f'logical axes {missing} have no rule in the sharding rules table '
                     f'(config.sharding_rules or DEFAULT_RULES); covered: {sorted(covered)}')


def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, ...]:
  """Resolves the per-axis degrees of config.mesh (-1 fills with the remaining devices)."""
  degrees = [int(mesh_config[axis]) for axis in MESH_AXES]
  if degrees.count(-1) > 1:
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, degrees))}: at most one axis may be -1')
  known = int(np.prod([d for d in degrees if d != -1]))
  if -1 in degrees:
    if num_devices % known:
      raise ValueError(f'config.mesh {dict(zip(MESH_AXES, degrees))} does not divide {num_devices} devices')
    degrees[degrees.index(-1)] = num_devices // known
  if int(np.prod(degrees)) != num_devices:
    raise ValueError(f'config.mesh {dict(zip(MESH_AXES, degrees))} needs {int(np.prod(degrees))} '
                     f'devices, {num_devices} are present')
  return tuple(degrees)


def dcn_shape(mesh_config: Any) -> tuple[int, ...]:
  """Per-axis degrees across slices or nodes (config.mesh.dcn_<axis>, default 1)."""
  return tuple(int(mesh_config.get(f'dcn_{axis}', 1)) for axis in MESH_AXES)


def build_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all).

  With DCN degrees above 1 the mesh is hybrid: config.mesh.<axis> is the degree inside a slice
  (or node) and dcn_<axis> the degree across them, so each axis spans both. Slices come from
  the devices' slice_index (TPU multislice) when they number as
  many as the DCN degrees, else each process counts as one (GPU nodes, local processes).
  """
  devices = list(devices if devices is not None else jax.devices())
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  across = dcn_shape(mesh_config)
  if all(d == 1 for d in across):
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  granules = int(np.prod(across))
  if len(devices) % granules:
    raise ValueError(f'DCN degrees {dict(zip(MESH_AXES, across))} do not divide {len(devices)} devices')
  inside = mesh_shape(mesh_config, len(devices) // granules)
  slices = {getattr(d, 'slice_index', None) for d in devices}
  device_array = mesh_utils.create_hybrid_device_mesh(inside, across, devices,
                                                      process_is_granule=len(slices) != granules)
  return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=axis_types)


class OnMesh:
  """A jitted function traced, lowered and called inside its mesh and logical-axis rules.

  Outside that context every activation constraint of the model is a silent no-op, and XLA is
  left to guess how activations are sharded (on an fsdp mesh: like the weights, so that every
  device computes the whole global batch).
  """

  def __init__(self, jitted: Callable, mesh: jax.sharding.Mesh, rules: Any):
    self.jitted, self.mesh, self.rules = jitted, mesh, rules

  @contextlib.contextmanager
  def context(self):
    """The mesh and rules context the function runs in."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def __call__(self, *args: Any) -> Any:
    with self.context():
      return self.jitted(*args)

  def lower(self, *args: Any) -> Any:
    """The function lowered for `args` (arrays or ShapeDtypeStructs) under the mesh and rules."""
    with self.context():
      return self.jitted.lower(*args)


def logical_to_shardings(specs: Any, mesh: jax.sharding.Mesh, rules: Any) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Any) -> NamedSharding:
  """Sharding of a batch's leading axis over the mesh's batch axes."""
  return nn.logical_to_mesh_sharding(PartitionSpec('batch'), mesh, rules)


def host_batch_shard(mesh: jax.sharding.Mesh, rules: Any, global_batch_size: int) -> tuple[int, int, int]:
  """(shard index, shard count, examples per host) of this host's slice of a global batch.

  The slice follows this host's devices' coordinates along the mesh's batch axes, so hosts that
  hold the same batch slice (tensor parallelism across hosts) read the same examples.
  """
  indices = batch_sharding(mesh, rules).addressable_devices_indices_map((global_batch_size,))
  starts = [index[0].start or 0 for index in indices.values()]
  stops = [global_batch_size if index[0].stop is None else index[0].stop for index in indices.values()]
  start, stop = min(starts), max(stops)
  size = stop - start
  if global_batch_size % size or start % size:
    raise ValueError(f'this host\'s devices hold batch rows {start}:{stop} of {global_batch_size}, '
                     'not one equal contiguous slice; order the mesh so each host owns whole batch slices')
  return start // size, global_batch_size // size, size


def to_global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, rules: Any) -> dict[str, jax.Array]:
  """Turns this host's part of a batch into global arrays sharded along the batch axes."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
