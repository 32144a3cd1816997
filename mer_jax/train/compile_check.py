"""The train step compiled ahead of time on abstract devices: per-device memory, collectives and partitioning.

The step is lowered exactly as the trainer jits it (ModelSetup.train_step with the state's
shardings, traced under the mesh and logical-axis rules) from abstract state and batch, so nothing
is allocated. On fake CPU devices the figures are XLA:CPU's, an upper indication of a TPU's or
GPU's (their compilers fuse and schedule more aggressively).
"""

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np

from mer_jax.train import sharding

# Named accelerators -> memory per chip in GB (10**9 bytes), for --hbm_gb.
HBM_GB = {'v5p': 95.0, 'v6e': 32.0, 'h100': 80.0, 'h200': 141.0}
COLLECTIVE_KINDS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
               'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%[\w.-]+\s*=\s*(.+?)\s+(' + '|'.join(COLLECTIVE_KINDS) +
                          r')(?:-start)?\(')
_SHAPE = re.compile(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([\d,]*)\]')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
REPLICATED_LIMIT = 2 ** 20  # bytes: a larger parameter must not be whole on every device of an fsdp mesh


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of the compiled program: its kind, result shape(s), bytes and the operation it comes from."""

  kind: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]
  bytes: int
  source: str


def resolve_hbm(value: str) -> float:
  """Accelerator memory in GB from a number or a named chip (v5p, v6e, h100, h200)."""
  if value.lower() in HBM_GB:
    return HBM_GB[value.lower()]
  try:
    return float(value)
  except ValueError:
    raise ValueError(f'--hbm_gb={value!r}: give GB or one of {sorted(HBM_GB)}') from None


def use_fake_devices(count: int) -> None:
  """Makes this process see `count` CPU devices (before jax starts its backends)."""
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', count)


def mesh_device_count(config: Any) -> int:
  """How many devices config.mesh spans (inside times across slices); -1 degrees are not allowed here."""
  degrees = [int(config.mesh[axis]) * int(config.mesh.get(f'dcn_{axis}', 1)) for axis in sharding.MESH_AXES]
  if any(d < 1 for d in degrees):
    raise ValueError(f'config.mesh {dict(config.mesh)}: describe --compile needs every degree set (no -1)')
  return int(np.prod(degrees))


def parse_collectives(hlo_text: str) -> list[Collective]:
  """The collectives of an optimized HLO module's text, with the bytes of their results."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    shapes = tuple((dtype, tuple(int(d) for d in dims.split(',') if d))
                   for dtype, dims in _SHAPE.findall(match.group(1)))
    if match.group(2) in ('all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute') and len(shapes) > 1:
      shapes = shapes[-1:]  # async starts return (operand, result): the result is the last shape
    size = sum(DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in shapes)
    source = _OP_NAME.search(line)
    found.append(Collective(match.group(2), shapes, size, source.group(1) if source else ''))
  return found


def carries_batch(collective: Collective, batch_sizes: tuple[int, ...]) -> bool:
  """Whether a collective's result leads with a whole global batch dimension (activations lead with it)."""
  return any(dims and dims[0] in batch_sizes for _, dims in collective.shapes)


def replicated_parameters(abstract_params: Any, shardings: Any, limit: int = REPLICATED_LIMIT) -> list[tuple[str, int]]:
  """(path, bytes) of the parameters over `limit` bytes that every device holds whole."""
  found = []
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  for (path, leaf), leaf_sharding in zip(flat, jax.tree.leaves(shardings)):
    size = math.prod(leaf.shape) * leaf.dtype.itemsize
    if size > limit and leaf_sharding.is_fully_replicated:
      found.append((jax.tree_util.keystr(path), size))
  return sorted(found, key=lambda item: -item[1])


def abstract_batch(config: Any, vocab_size: int, batch_sharding: jax.sharding.NamedSharding) -> dict:
  """ShapeDtypeStructs of a global training batch, sharded along the batch axes."""
  from mer_jax.train.random_batch import random_batch
  batch = random_batch(config, 1, vocab_size)
  size = config.train.batch_size
  return {k: jax.ShapeDtypeStruct((size, *v.shape[1:]), v.dtype, sharding=batch_sharding) for k, v in batch.items()}


def compile_train_step(config: Any, vocab_size: int) -> dict[str, Any]:
  """Lowers and compiles the config's train step on this process's devices; returns what it measured."""
  from mer_jax.train.experiment import ModelSetup
  setup = ModelSetup(config, vocab_size)
  batch = abstract_batch(config, vocab_size, sharding.batch_sharding(setup.mesh, setup.rules))
  lowered = setup.train_step().lower(setup.abstract_state(), batch)
  compiled = lowered.compile()
  memory = compiled.memory_analysis()
  total_flops = float(lowered.cost_analysis().get('flops', 0.0))
  device_flops = float(compiled.cost_analysis().get('flops', 0.0))
  devices = setup.mesh.devices.size
  micro = config.train.batch_size // config.train.microbatches
  collectives = parse_collectives(compiled.as_text())
  live = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
          - memory.alias_size_in_bytes)
  peak = max(int(getattr(memory, 'peak_memory_in_bytes', 0)), live)
  fsdp = setup.mesh.shape['fsdp'] > 1
  return {
      'devices': devices,
      'mesh': dict(setup.mesh.shape),
      'argument_bytes': int(memory.argument_size_in_bytes),
      'output_bytes': int(memory.output_size_in_bytes),
      'alias_bytes': int(memory.alias_size_in_bytes),
      'temp_bytes': int(memory.temp_size_in_bytes),
      'peak_bytes': peak,
      'sharding_constraints': lowered.as_text().count('sharding_constraint'),  # one site may appear more than once
      'partition_efficiency': total_flops / (devices * device_flops) if device_flops else 0.0,
      'collectives': collectives,
      'batch_collectives': [c for c in collectives if carries_batch(c, (micro,))],
      'replicated_parameters': (replicated_parameters(setup.parts.abstract_params, setup.state_shardings['params'])
                                if fsdp else []),
      'lowered_text': lowered.as_text(),
  }


def check(result: dict[str, Any], hbm_gb: float, max_fraction: float = 0.85, min_efficiency: float = 0.97,
          max_batch_collective: int = 2 ** 30) -> list[str]:
  """The targets a compiled step misses: peak memory, partition efficiency, batch-sized collectives, replicas."""
  problems = []
  if result['peak_bytes'] > max_fraction * hbm_gb * 1e9:
    problems.append(f"peak {result['peak_bytes'] / 2 ** 30:.1f} GiB is over {max_fraction:.0%} of {hbm_gb:g} GB")
  if result['partition_efficiency'] < min_efficiency:
    problems.append(f"partition efficiency {result['partition_efficiency']:.3f} is under {min_efficiency}")
  large = [c for c in result['batch_collectives'] if c.bytes > max_batch_collective]
  if large:
    problems.append(f'{len(large)} collective(s) over {max_batch_collective / 2 ** 30:g} GiB carry the whole '
                    f'batch, the largest {large[0].kind} {large[0].shapes} from {large[0].source}')
  if result['replicated_parameters']:
    path, size = result['replicated_parameters'][0]
    problems.append(f"{len(result['replicated_parameters'])} parameter(s) over 1 MiB are replicated on the fsdp "
                    f'mesh, the largest {path} ({size / 2 ** 20:.1f} MiB)')
  return problems


def format_compile_report(result: dict[str, Any], hbm_gb: float, top: int = 8) -> str:
  """The compiled step's figures as text: memory against the chip, partitioning, the largest collectives."""
  gib = 2 ** 30
  lines = [f"compiled train step on {result['devices']} devices, mesh {result['mesh']} (per device):"]
  for name in ('argument', 'output', 'alias', 'temp', 'peak'):
    lines.append(f"  {name:<10}{result[name + '_bytes'] / gib:>10.2f} GiB")
  lines.append(f"  peak is {result['peak_bytes'] / (hbm_gb * 1e9):.0%} of {hbm_gb:g} GB")
  lines.append(f"  partition efficiency {result['partition_efficiency']:.3f}  "
               f"(unpartitioned FLOPs / (devices x per-device FLOPs))")
  lines.append(f"  sharding constraints in the lowered step: {result['sharding_constraints']}")
  batch_bytes = sum(c.bytes for c in result['batch_collectives'])
  lines.append(f"  collectives: {len(result['collectives'])}, "
               f"{sum(c.bytes for c in result['collectives']) / gib:.2f} GiB of results; "
               f"{len(result['batch_collectives'])} carry the whole batch ({batch_bytes / gib:.2f} GiB)")
  for c in sorted(result['collectives'], key=lambda c: -c.bytes)[:top]:
    shapes = ', '.join(f"{dtype}[{','.join(map(str, dims))}]" for dtype, dims in c.shapes)
    lines.append(f'    {c.bytes / 2 ** 20:>10.1f} MiB  {c.kind:<18} {shapes:<32} {c.source[-90:]}')
  for path, size in result['replicated_parameters'][:top]:
    lines.append(f'  replicated: {path} ({size / 2 ** 20:.1f} MiB)')
  return '\n'.join(lines)
