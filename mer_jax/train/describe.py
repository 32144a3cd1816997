"""Parameter counts per component and per-device memory of a config on its mesh, without allocating.

Parameters, gradients and optimizer state come from their shardings on an abstract mesh of the
configured shape. Activations come from the compiled train step's memory analysis when the
devices of that mesh are present and the model is small enough to compile here; otherwise from
this formula for the LLM, which dominates (B = examples per device and microbatch, L = seq_len,
D = width, F = MLP width, H = query heads, V = vocabulary, b = bytes of the compute dtype):

  saved per layer: remat 'full' -> B*L*D*b (the layer input); 'dots' -> B*L*(2D + 2F)*b;
                   'none' -> B*L*(6D + 3F)*b + B*H*L*L*4 (attention probabilities)
  working set of one layer being recomputed: B*L*(4D + 3F)*b + B*H*L*L*4
  logits and their gradient: 2*B*L*V*4

plus the same saved-and-working-set terms for each encoder (its tokens per example in place of L:
audio frames after the convolutions, frames x patches for vision). Gradients count the trainable
parameters only; 'gathered weights' is two layers' weights of the widest stack, whole and in the
compute dtype (the one computing and the next being gathered). `mer-jax describe --compile`
measures the compiled step instead.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from mer_jax.train import sharding, state as state_lib
from mer_jax.train.optim import make_optimizer, trainable_labels

COMPILE_LIMIT = 200_000_000  # parameters; larger models use the formula


def device_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds of a tree of arrays placed with `shardings`."""
  total = 0
  for leaf, leaf_sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    total += int(np.prod(leaf_sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
  return total


def compute_bytes(config: Any) -> int:
  """Bytes per element of the compute dtype."""
  return 2 if config.model.dtype == 'bfloat16' else np.dtype(config.model.dtype).itemsize


def stack_activations(config: Any, part: Any, batch: float, length: int) -> float:
  """Saved activations of a stack of `part.layers` blocks plus one block's working set (module docstring)."""
  b, D, F, H = compute_bytes(config), part.width, part.mlp, part.heads
  scores = batch * H * length * length * 4
  saved = {'full': batch * length * D * b, 'dots': batch * length * (2 * D + 2 * F) * b,
           'none': batch * length * (6 * D + 3 * F) * b + scores}[config.model.remat]
  return part.layers * saved + batch * length * (4 * D + 3 * F) * b + scores


def encoder_lengths(config: Any, num_frames: int = 4, duration_s: float = 2.0) -> dict[str, tuple[float, int]]:
  """Per enabled encoder: (sequences per example, tokens per sequence)."""
  model, lengths = config.model, {}
  if 'audio' in model.modalities:
    lengths['audio'] = (1, -(-int(model.audio.sample_rate * duration_s) // model.audio.hop_length // 2))
  if 'video' in model.modalities:
    lengths['vision'] = (num_frames, (model.vision.image_size // model.vision.patch_size) ** 2 + 1)
  return lengths


def activation_formula(config: Any, batch_per_device: float) -> int:
  """Bytes of LLM and encoder activations per device for one microbatch (see the module docstring)."""
  llm, B = config.model.llm, batch_per_device
  total = stack_activations(config, llm, B, config.data.seq_len) + 2 * B * config.data.seq_len * llm.vocab_size * 4
  for name, (sequences, length) in encoder_lengths(config).items():
    total += stack_activations(config, config.model[name], B * sequences, length)
  return int(total)


def gathered_weight_bytes(config: Any, abstract_params: Any) -> int:
  """Two layers of the widest scanned stack, whole, in the compute dtype."""
  per_layer: dict[tuple, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    keys = [getattr(entry, 'key', None) for entry in path]
    if 'blocks' in keys:
      stack = tuple(keys[:keys.index('blocks')])
      per_layer[stack] = per_layer.get(stack, 0) + int(np.prod(leaf.shape[1:]))
  return 2 * max(per_layer.values(), default=0) * compute_bytes(config)


def describe(config: Any, vocab_size: int, num_devices: int | None = None) -> dict[str, Any]:
  """Counts and per-device bytes of parameters, gradients, optimizer state and activations."""
  degrees = [int(config.mesh[axis]) for axis in sharding.MESH_AXES]
  devices = num_devices or (int(np.prod(degrees)) if -1 not in degrees else jax.device_count())
  shape = sharding.mesh_shape(config.mesh, devices)
  mesh = AbstractMesh(shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))
  rules = sharding.rules_from_config(config)
  parts = state_lib.build_model_parts(config, vocab_size, mesh, rules)
  tx = make_optimizer(config.train, parts.abstract_params)
  shardings = state_lib.train_state_shardings(parts, tx, mesh)
  abstract_opt = jax.eval_shape(tx.init, parts.abstract_params)
  components = {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
                for name, tree in sorted(parts.abstract_params.items())}
  batch_axes = shape[0] * shape[1]
  batch_per_device = config.train.batch_size / batch_axes / config.train.microbatches
  params_bytes = device_bytes(parts.abstract_params, shardings['params'])
  labels = trainable_labels(config.train, parts.abstract_params)
  trainable = [(leaf, s) for leaf, s, label in zip(jax.tree.leaves(parts.abstract_params),
                                                   jax.tree.leaves(shardings['params']), jax.tree.leaves(labels))
               if label == 'train']
  report = {
      'mesh': dict(zip(sharding.MESH_AXES, shape)),
      'parameters': components, 'total_parameters': sum(components.values()),
      'per_device_bytes': {
          'parameters': params_bytes,
          'gradients': device_bytes([leaf for leaf, _ in trainable], [s for _, s in trainable]),
          'optimizer': device_bytes(abstract_opt, shardings['opt_state']),
          'gathered_weights': gathered_weight_bytes(config, parts.abstract_params),
      },
      'batch_per_device': batch_per_device,
  }
  if sum(components.values()) <= COMPILE_LIMIT and jax.device_count() == devices:
    report['per_device_bytes']['activations'] = compiled_temp_bytes(config, vocab_size)
    report['activations_from'] = 'compiled train step (temp buffers)'
  else:
    report['per_device_bytes']['activations'] = activation_formula(config, batch_per_device)
    report['activations_from'] = 'formula (mer_jax/train/describe.py)'
  report['per_device_bytes']['total'] = sum(report['per_device_bytes'].values())
  return report


def compiled_temp_bytes(config: Any, vocab_size: int) -> int:
  """Temporary bytes per device of the compiled train step on this process's devices."""
  from mer_jax.train.experiment import ModelSetup
  from mer_jax.train.random_batch import random_batch
  setup = ModelSetup(config, vocab_size)
  batch = setup.global_batch(random_batch(config, config.train.batch_size, vocab_size))
  compiled = setup.train_step().lower(setup.abstract_state(), batch).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def format_report(report: dict[str, Any]) -> str:
  """The report as aligned text tables."""
  gib = 2 ** 30
  lines = [f"mesh {report['mesh']}, {report['batch_per_device']:g} examples per device and microbatch", '',
           f"{'component':<14}{'parameters':>18}"]
  for name, count in report['parameters'].items():
    lines.append(f'{name:<14}{count:>18,}')
  lines += [f"{'total':<14}{report['total_parameters']:>18,}", '', f"{'per device':<14}{'GiB':>18}"]
  for name, value in report['per_device_bytes'].items():
    lines.append(f'{name:<14}{value / gib:>18.3f}')
  lines.append(f"(activations from {report['activations_from']})")
  return '\n'.join(lines)
