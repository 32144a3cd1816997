"""Shared NNX building blocks: dense, embedding, norms, rotary, attention, MLPs, blocks and scanned stacks."""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models import kernels, lora

# Logical axis names carried by every parameter and activation. The train part maps each to a mesh
# axis (or None) with one rules table; every name here needs a rule. Rules are applied in order and
# a mesh axis is used once per array, so a kernel carrying two widths (('audio_embed',
# 'fusion_embed') in the Q-Former's input projections) is split along the first that maps to it.
LOGICAL_AXES: dict[str, str] = {
  'layers': 'stacked axis of scanned transformer layers',
  'vocab': 'token vocabulary (embedding rows, LM head columns)',
  'embed': 'LLM model width',
  'mlp': 'hidden width of every MLP (LLM, encoders, fusion, valence head)',
  'heads': 'query attention heads',
  'kv_heads': 'key/value attention heads',
  'head_dim': 'per-head width',
  'audio_embed': 'audio encoder width',
  'vision_embed': 'vision encoder width',
  'fusion_embed': 'Q-Former width',
  'conv_width': 'temporal window of a 1-D convolution kernel',
  'conv_in': 'input channels of a convolution',
  'patch': 'flattened image-patch pixels (patch * patch * 3)',
  'positions': 'learned position table rows',
  'queries': 'learned query tokens',
  'lora_rank': 'rank of a LoRA adapter',
  'batch': 'input batches: examples',
  'activation_batch': 'activation: examples',
  'activation_length': 'activation: sequence positions (tokens, audio frames, patches, queries)',
  'activation_embed': 'activation: any model width (LLM, encoders, Q-Former)',
  'activation_mlp': 'activation: MLP hidden width',
  'activation_heads': 'activation: attention heads',
  'activation_kv_heads': 'activation: key/value heads',
  'activation_head_dim': 'activation: per-head width',
  'activation_vocab': 'activation: vocabulary (logits)',
}

# Activations carry names of their own (as in MaxText), so parameter rules never decide their sharding.
HIDDEN = ('activation_batch', 'activation_length', 'activation_embed')
KV = ('activation_batch', 'activation_length', 'activation_kv_heads', 'activation_head_dim')

Names = tuple[str, ...]
Initializer = Callable[..., jax.Array]

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
  'full': None,
  # Matmul outputs: XLA dots, and kernels.dense products (hand-differentiated, so named instead).
  'dots': jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    jax.checkpoint_policies.save_only_these_names(kernels.DENSE_OUTPUT)),
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'gelu': functools.partial(jax.nn.gelu, approximate=False),
  'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
  'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
  'silu': jax.nn.silu,
}


def partitioned(init: Initializer, names: Names) -> Initializer:
  """Annotates `init` with logical axis `names`; placement comes from the creator's out_shardings.

  Eager sharding stays off so that modules also build without a mesh (tests, tools, conversion).
  """
  return nnx.with_partitioning(init, names, eager_sharding=False)


def constrain(x: jax.Array, names: Names) -> jax.Array:
  """Constrains an activation to logical axis `names` (a no-op without a mesh and axis rules)."""
  return nn.with_logical_constraint(x, names)


def chunk_mean(x: jax.Array, num_chunks: int) -> jax.Array:
  """Adaptive average pooling of [B, T, D] over axis 1 -> [B, num_chunks, D] (like AdaptiveAvgPool1d).

  Chunk i spans [floor(i T / n), ceil((i + 1) T / n)): equal chunks when n divides T, and every
  position is covered (some shared between neighbours) otherwise, including T < n.
  """
  length = x.shape[1]
  weights = np.zeros((num_chunks, length), np.float32)
  for i in range(num_chunks):
    start = (i * length) // num_chunks
    stop = -((-(i + 1) * length) // num_chunks)
    weights[i, start:stop] = 1.0 / (stop - start)
  return jnp.einsum('ct,btd->bcd', jnp.asarray(weights, x.dtype), x)


class Dense(nnx.Module):
  """Linear map contracting the trailing `in_shape` axes of x into `out_shape` axes."""

  def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], names: Names, *,
               use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
    if len(names) != len(in_shape) + len(out_shape):
      raise ValueError(f'{names=} does not match kernel shape {in_shape + out_shape}')
    n_in = len(in_shape)
    init = nnx.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=tuple(range(n_in)),
      out_axis=tuple(range(n_in, n_in + len(out_shape))))
    self.kernel = nnx.Param(partitioned(init, names)(rngs.params(), in_shape + out_shape, param_dtype))
    if use_bias:
      zeros = partitioned(nnx.initializers.zeros_init(), names[n_in:])
      self.bias = nnx.Param(zeros(rngs.params(), out_shape, param_dtype))
    else:
      self.bias = nnx.data(None)
    self.lora = nnx.data(None)
    self.num_in_axes = n_in
    self.dtype = dtype

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Applies the map to the trailing axes of x, plus its LoRA update if one is attached (key: its dropout)."""
    y = kernels.dense(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.num_in_axes)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None:
      y = y + self.lora(x, key)
    return y


class Embed(nnx.Module):
  """Token embedding table ('vocab', 'embed'); `attend` gives tied-embedding logits."""

  def __init__(self, num_embeddings: int, features: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    init = partitioned(nnx.initializers.normal(0.02), ('vocab', 'embed'))
    self.embedding = nnx.Param(init(rngs.params(), (num_embeddings, features), param_dtype))
    self.dtype = dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Looks up int ids [...] -> [..., features]."""
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Scores x [..., features] against every embedding row -> [..., num_embeddings]."""
    return jnp.einsum('...d,vd->...v', x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned scale (LLaMA); statistics in float32."""

  def __init__(self, features: int, names: Names = ('embed',), *, eps: float = 1e-5,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    init = partitioned(nnx.initializers.ones_init(), names)
    self.scale = nnx.Param(init(rngs.params(), (features,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises the last axis."""
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
  """Layer norm with learned scale and bias (Whisper, CLIP); statistics in float32."""

  def __init__(self, features: int, names: Names, *, eps: float = 1e-5,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.scale = nnx.Param(partitioned(nnx.initializers.ones_init(), names)(
      rngs.params(), (features,), param_dtype))
    self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), names)(
      rngs.params(), (features,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises the last axis."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (x * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


ROPE_SCALING_TYPES = ('none', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling as HF rope types: 'none', 'linear' (all / factor), 'llama3' (by wavelength)."""

  type: str = 'none'
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self) -> None:
    if self.type not in ROPE_SCALING_TYPES:
      raise ValueError(f'unknown rope scaling type {self.type!r}; choose from {ROPE_SCALING_TYPES}')


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
  """Rotary inverse frequencies float32 [head_dim // 2], scaled as HF's 'linear' and 'llama3' rope types."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if scaling.type == 'linear':
    inv_freq = inv_freq / scaling.factor
  elif scaling.type == 'llama3':
    context = scaling.original_max_position_embeddings
    wavelen = 2 * np.pi / inv_freq
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    inv_freq = np.where(wavelen > context / low, inv_freq / scaling.factor,
                        np.where(wavelen < context / high, inv_freq, smoothed))
  return inv_freq.astype(np.float32)


def rotary_tables(positions: jax.Array, head_dim: int, theta: float,
                  scaling: RopeScaling = RopeScaling()) -> tuple[jax.Array, jax.Array]:
  """Returns (sin, cos) [B, L, 1, head_dim // 2] for int positions [B, L] (LLaMA rotary)."""
  inv_freq = rope_frequencies(head_dim, theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotates x [B, L, N, head_dim] by position (rotate-half convention, as in HF LLaMA/Qwen2)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self/cross attention with grouped KV heads (kernels.dot_product_attention)."""

  def __init__(self, features: int, num_heads: int, num_kv_heads: int | None = None, *,
               head_dim: int = 0, embed_name: str = 'embed', bias: str = '', kind: str = 'xla',
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    """`bias` lists the projections that have a bias, any of 'qkvo' (Qwen2: 'qkv', Whisper: 'qvo').

    `head_dim` 0 means features // num_heads (which must then divide evenly); `kind` is the
    attention implementation (kernels.ATTENTION_KINDS).
    """
    num_kv_heads = num_kv_heads or num_heads
    if (not head_dim and features % num_heads) or num_heads % num_kv_heads:
      raise ValueError(f'need features % heads == 0 (or an explicit head_dim) and heads % kv_heads == 0, '
                       f'got {features=} {num_heads=} {num_kv_heads=}')
    head_dim = head_dim or features // num_heads
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Dense(features, (num_heads, head_dim), (embed_name, 'heads', 'head_dim'),
                   use_bias='q' in bias, **common)
    self.k = Dense(features, (num_kv_heads, head_dim), (embed_name, 'kv_heads', 'head_dim'),
                   use_bias='k' in bias, **common)
    self.v = Dense(features, (num_kv_heads, head_dim), (embed_name, 'kv_heads', 'head_dim'),
                   use_bias='v' in bias, **common)
    self.o = Dense((num_heads, head_dim), features, ('heads', 'head_dim', embed_name),
                   use_bias='o' in bias, **common)
    self.kind = kernels.check_attention(kind)

  def __call__(self, x: jax.Array, memory: jax.Array | None = None, *,
               rotary: tuple[jax.Array, jax.Array] | None = None, causal: bool = False,
               key: jax.Array | None = None) -> jax.Array:
    """Attends from x [B, T, D] to memory [B, S, D] (x itself when None); rotary = (sin, cos).

    `key` drives dropout inside LoRA adapters on the projections, if any.
    """
    source = x if memory is None else memory
    kq, kk, kv, ko = split_key(key, 4)
    q, k, v = self.q(x, kq), self.k(source, kk), self.v(source, kv)
    if rotary is not None:
      q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    return self.o(kernels.dot_product_attention(q, k, v, self.kind, causal=causal), ko)

  def extend(self, x: jax.Array, cache_k: jax.Array, cache_v: jax.Array, index: jax.Array, *,
             rotary: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal self-attention of x [B, T, D] appended to a KV cache at per-example offsets index [B].

    The keys and values of x are written at positions index[b] + t of cache_k/cache_v
    [B, max_len, kv_heads, head_dim]; query t sees cached positions up to index[b] + t, so entries
    beyond an example's length are never read. Returns (output [B, T, D], cache_k, cache_v).
    """
    q, k, v = self.q(x), self.k(x), self.v(x)
    q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    rows = jnp.arange(x.shape[0])[:, None]
    at = index[:, None] + jnp.arange(x.shape[1])[None, :]
    cache_k = constrain(cache_k.at[rows, at].set(k.astype(cache_k.dtype), mode='drop'), KV)
    cache_v = constrain(cache_v.at[rows, at].set(v.astype(cache_v.dtype), mode='drop'), KV)
    visible = jnp.arange(cache_k.shape[1])[None, None, :] <= at[:, :, None]
    out = kernels.dot_product_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype),
                                        'xla' if self.kind == 'cudnn' else self.kind, mask=visible)
    return self.o(out), cache_k, cache_v


class SwiGLU(nnx.Module):
  """LLaMA MLP: down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, features: int, hidden: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Dense(features, hidden, ('embed', 'mlp'), **common)
    self.up = Dense(features, hidden, ('embed', 'mlp'), **common)
    self.down = Dense(hidden, features, ('mlp', 'embed'), **common)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Applies the gated MLP; `key` drives dropout inside LoRA adapters on the projections, if any."""
    kg, ku, kd = split_key(key, 3)
    if self.gate.lora is None and self.up.lora is None:
      # One product against the two kernels stacked on a new axis: the 'mlp' axis keeps its sharding.
      kernel = jnp.stack([self.gate.kernel[...], self.up.kernel[...]], axis=1).astype(self.gate.dtype)
      gate, up = jnp.unstack(kernels.dense(x.astype(self.gate.dtype), kernel, 1), axis=-2)
    else:
      gate, up = self.gate(x, kg), self.up(x, ku)
    return self.down(kernels.swiglu(gate, up), kd)


class MLP(nnx.Module):
  """Two-layer MLP with biases: fc2(act(fc1(x))); axes = (in, hidden, out) logical names."""

  def __init__(self, features: int, hidden: int, out_features: int, axes: tuple[str, str, str], *,
               act: str = 'gelu', dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Dense(features, hidden, axes[:2], **common)
    self.fc2 = Dense(hidden, out_features, axes[1:], **common)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the MLP to the last axis."""
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


def split_key(key: jax.Array | None, num: int) -> list[jax.Array | None]:
  """Splits a dropout key into `num` keys; None (no dropout) stays None."""
  return [None] * num if key is None else list(jax.random.split(key, num))


def dropout(module: nnx.Dropout, x: jax.Array, key: jax.Array | None) -> jax.Array:
  """Applies `module` with `key`, or returns x unchanged when key is None."""
  return module(x, deterministic=key is None, rngs=key)


class DecoderBlock(nnx.Module):
  """LLaMA-style pre-RMSNorm block: causal GQA attention with rotary, then SwiGLU."""

  def __init__(self, features: int, num_heads: int, num_kv_heads: int, hidden: int, *,
               head_dim: int = 0, norm_eps: float = 1e-5, qkv_bias: bool = False, attention: str = 'xla',
               dropout_rate: float = 0.0, lora_config: Any = None, lora_param_dtype: Any = None,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    """`lora_config` (config.model.lora) with rank > 0 attaches LoRA adapters to its target projections,
    their parameters in `lora_param_dtype` (default: `param_dtype`); `attention` is its implementation."""
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = RMSNorm(features, eps=norm_eps, **common)
    self.attn = Attention(features, num_heads, num_kv_heads, head_dim=head_dim,
                          bias='qkv' if qkv_bias else '', kind=attention, **common)
    self.mlp_norm = RMSNorm(features, eps=norm_eps, **common)
    self.mlp = SwiGLU(features, hidden, **common)
    self.drop = nnx.Dropout(dropout_rate)
    if lora_config is not None and lora_config.rank > 0:
      lora.add_adapters(self, lora_config, dtype=dtype, param_dtype=jnp.dtype(lora_param_dtype or param_dtype),
                        rngs=rngs)

  def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, *,
               key: jax.Array | None = None) -> jax.Array:
    """Applies the block to x [B, L, D] with rotary tables (sin, cos)."""
    k1, k2 = split_key(key, 2)
    lora_attn, lora_mlp = split_key(None if key is None else jax.random.fold_in(key, 1), 2)
    x = x + dropout(self.drop, self.attn(self.attn_norm(x), rotary=(sin, cos), causal=True, key=lora_attn), k1)
    x = x + dropout(self.drop, self.mlp(self.mlp_norm(x), lora_mlp), k2)
    return constrain(x, HIDDEN)

  def extend(self, x: jax.Array, cache_k: jax.Array, cache_v: jax.Array, index: jax.Array,
             sin: jax.Array, cos: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Applies the block to x [B, T, D] appended to this layer's KV cache at offsets index [B] (no dropout)."""
    attended, cache_k, cache_v = self.attn.extend(self.attn_norm(x), cache_k, cache_v, index,
                                                  rotary=(sin, cos))
    x = x + attended
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, HIDDEN), cache_k, cache_v


class EncoderBlock(nnx.Module):
  """Pre-LayerNorm bidirectional transformer block (Whisper and CLIP encoders)."""

  def __init__(self, features: int, num_heads: int, hidden: int, *, embed_name: str,
               attn_bias: str = 'qkvo', act: str = 'gelu', norm_eps: float = 1e-5,
               dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = LayerNorm(features, (embed_name,), eps=norm_eps, **common)
    self.attn = Attention(features, num_heads, embed_name=embed_name, bias=attn_bias, **common)
    self.mlp_norm = LayerNorm(features, (embed_name,), eps=norm_eps, **common)
    self.mlp = MLP(features, hidden, features, (embed_name, 'mlp', embed_name), act=act, **common)
    self.drop = nnx.Dropout(dropout_rate)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """Applies the block to x [B, T, D]."""
    k1, k2 = split_key(key, 2)
    x = x + dropout(self.drop, self.attn(self.attn_norm(x)), k1)
    return constrain(x + dropout(self.drop, self.mlp(self.mlp_norm(x)), k2), HIDDEN)


class KVCache(NamedTuple):
  """Keys and values of a scanned decoder, each [layers, B, max_len, kv_heads, head_dim], and lengths [B].

  lengths[b] counts the positions of example b that hold valid entries; the next token of
  example b is written at position lengths[b] (and takes that rotary position).
  """

  k: jax.Array
  v: jax.Array
  lengths: jax.Array

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
            dtype: jnp.dtype) -> 'KVCache':
    """An empty cache (every length 0)."""
    shape = (num_layers, batch, max_len, kv_heads, head_dim)
    empty = constrain(jnp.zeros(shape, dtype), ('layers', *KV))
    return cls(empty, empty, jnp.zeros([batch], jnp.int32))


class Stack(nnx.Module):
  """`num_layers` blocks with params stacked on a leading 'layers' axis, applied by nnx.scan."""

  def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *,
               remat: str = 'none', rngs: nnx.Rngs):
    if remat != 'none' and remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat {remat!r}; choose from {['none', *REMAT_POLICIES]}")

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def create(rngs: nnx.Rngs) -> nnx.Module:
      return make_block(rngs)

    self.blocks = create(rngs)
    self.num_layers = num_layers
    self.remat = remat

  def __call__(self, x: jax.Array, *args: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Runs x through every block in order; `args` go unchanged to each block; dropout iff rngs."""
    keys = None if rngs is None else jax.random.split(rngs.dropout(), self.num_layers)

    def step(x: jax.Array, block: nnx.Module, key: jax.Array | None, args: tuple) -> jax.Array:
      return block(x, *args, key=key)

    if self.remat != 'none':
      step = nnx.remat(step, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    scan = nnx.scan(step, in_axes=(nnx.Carry, 0, 0, None), out_axes=nnx.Carry,
                    transform_metadata={nnx.PARTITION_NAME: 'layers'})
    return scan(x, self.blocks, keys, args)

  def extend(self, x: jax.Array, cache: KVCache, *args: jax.Array) -> tuple[jax.Array, KVCache]:
    """Runs x [B, T, D] through blocks that have `extend`, appending to the stacked cache at cache.lengths.

    Returns the output and the cache with every layer's new keys/values and lengths + T.
    """

    def step(x: jax.Array, block: nnx.Module, cache_k: jax.Array, cache_v: jax.Array,
             index: jax.Array, args: tuple) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
      x, cache_k, cache_v = block.extend(x, cache_k, cache_v, index, *args)
      return x, (cache_k, cache_v)

    scan = nnx.scan(step, in_axes=(nnx.Carry, 0, 0, 0, None, None), out_axes=(nnx.Carry, 0),
                    transform_metadata={nnx.PARTITION_NAME: 'layers'})
    x, (cache_k, cache_v) = scan(x, self.blocks, cache.k, cache.v, cache.lengths, args)
    return x, KVCache(cache_k, cache_v, cache.lengths + x.shape[1])
