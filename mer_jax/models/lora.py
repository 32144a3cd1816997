"""Low-rank adapters (LoRA) on the LLM's projections: y = W x + (alpha / rank) * B (A dropout(x))."""

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

# Each projection config.model.lora.targets may name, and the decoder-block submodule holding it.
TARGETS: dict[str, str] = {'q': 'attn', 'k': 'attn', 'v': 'attn', 'o': 'attn',
                           'gate': 'mlp', 'up': 'mlp', 'down': 'mlp'}


def check_config(lora_config: Any) -> None:
  """Refuses unknown target projections, a negative rank or a dropout rate outside [0, 1)."""
  unknown = [t for t in lora_config.targets if t not in TARGETS]
  if unknown:
    raise ValueError(f'config.model.lora.targets names unknown projections {unknown}; '
                     f'valid: {tuple(TARGETS)}')
  if lora_config.rank < 0 or not 0.0 <= lora_config.dropout < 1.0:
    raise ValueError(f'config.model.lora needs rank >= 0 and 0 <= dropout < 1, got '
                     f'rank={lora_config.rank} dropout={lora_config.dropout}')


class LoRA(nnx.Module):
  """The low-rank update of one projection: A random (fan-in scaled), B zero, so it starts as a no-op."""

  def __init__(self, kernel: nnx.Param, num_in_axes: int, rank: int, alpha: float, dropout: float, *,
               dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    shape, names = kernel.shape, kernel.get_metadata()['out_sharding']
    in_shape, out_shape = shape[:num_in_axes], shape[num_in_axes:]
    init_a = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                               in_axis=tuple(range(num_in_axes)), out_axis=num_in_axes)
    init_b = nnx.initializers.zeros_init()
    a_names, b_names = (*names[:num_in_axes], 'lora_rank'), ('lora_rank', *names[num_in_axes:])
    self.a = nnx.Param(nnx.with_partitioning(init_a, a_names, eager_sharding=False)(
        rngs.params(), (*in_shape, rank), param_dtype))
    self.b = nnx.Param(nnx.with_partitioning(init_b, b_names, eager_sharding=False)(
        rngs.params(), (rank, *out_shape), param_dtype))
    self.scale = alpha / rank
    self.dropout = dropout
    self.num_in_axes = num_in_axes
    self.dtype = dtype

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """The update for x; dropout on the adapter's input applies only when a key is given."""
    x = x.astype(self.dtype)
    if key is not None and self.dropout > 0.0:
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(self.dtype)
    h = jnp.tensordot(x, self.a[...].astype(self.dtype), axes=self.num_in_axes)
    return self.scale * jnp.tensordot(h, self.b[...].astype(self.dtype), axes=1)


def add_adapters(block: nnx.Module, lora_config: Any, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs) -> None:
  """Attaches a LoRA to each targeted projection (a Dense with a `lora` slot) of a decoder block."""
  for target in lora_config.targets:
    dense = getattr(getattr(block, TARGETS[target]), target)
    dense.lora = LoRA(dense.kernel, dense.num_in_axes, lora_config.rank, lora_config.alpha,
                      lora_config.dropout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def is_adapter_path(path: tuple) -> bool:
  """Whether a parameter's key path lies inside a LoRA adapter."""
  return any(getattr(entry, 'key', entry) == 'lora' for entry in path)


def without_adapters(tree: Any) -> Any:
  """A nested param dict with its LoRA adapter subtrees left out."""
  if not isinstance(tree, dict):
    return tree
  return {k: without_adapters(v) for k, v in tree.items() if k != 'lora'}


def with_adapters(base: Any, full: Any) -> Any:
  """`base` (a tree without adapters) with the LoRA adapter subtrees of `full` put back in."""
  if not isinstance(full, dict):
    return base
  return {k: full[k] if k == 'lora' else with_adapters(base[k], full[k]) for k in full}


def merged_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """kernel + scale * A B in the kernel's dtype, computed in float32; leading (stacked-layer) axes are batched.

  kernel is [*lead, *in, *out], A [*lead, *in, rank] and B [*lead, rank, *out], as LoRA holds them.
  """
  lead = a.ndim + b.ndim - 2 - kernel.ndim
  lead_shape, rank = kernel.shape[:lead], a.shape[-1]
  a_matrix = a.astype(jnp.float32).reshape(*lead_shape, -1, rank)
  b_matrix = b.astype(jnp.float32).reshape(*lead_shape, rank, -1)
  update = jnp.matmul(a_matrix, b_matrix, precision=jax.lax.Precision.HIGHEST).reshape(kernel.shape)
  return (kernel.astype(jnp.float32) + scale * update).astype(kernel.dtype)


def merge_adapters(tree: Any, lora_config: Any) -> Any:
  """A nested param dict with every adapter folded into its projection's kernel (and removed).

  The merged model computes W x + (alpha / rank) * B (A x) as one projection, so it needs no
  adapters (config.model.lora.rank = 0); it differs from the unmerged one by float rounding only.
  """
  if not isinstance(tree, dict):
    return tree
  merged = {k: merge_adapters(v, lora_config) for k, v in tree.items() if k != 'lora'}
  if 'lora' in tree:
    scale = lora_config.alpha / lora_config.rank
    merged['kernel'] = merged_kernel(tree['kernel'], tree['lora']['a'], tree['lora']['b'], scale)
  return merged
