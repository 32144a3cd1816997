"""Fusion of encoder tokens into LLM-width soft tokens: per-modality projectors or a Q-Former."""

from flax import nnx
import jax
import jax.numpy as jnp

from mer_jax.models import layers

MODALITY_AXES = {'audio': 'audio_embed', 'video': 'vision_embed'}


class Projector(nnx.Module):
  """Per-modality Linear-GELU-Linear from pooled encoder tokens to the LLM width."""

  def __init__(self, in_widths: dict[str, int], width: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    """`in_widths` maps each enabled modality ('audio', 'video') to its encoder width, in span order."""
    self.modalities = tuple(in_widths)
    self.mlps = nnx.Dict({
      m: layers.MLP(w, width, width, (MODALITY_AXES[m], 'mlp', 'embed'), act='gelu',
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)
      for m, w in in_widths.items()})

  def __call__(self, features: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Maps pooled tokens {modality: [B, k_m, D_m]} -> soft tokens [B, sum k_m, width]."""
    del rngs
    return layers.constrain(jnp.concatenate([self.mlps[m](features[m]) for m in self.modalities], axis=1),
                            layers.HIDDEN)


class QFormerBlock(nnx.Module):
  """Pre-LN query block: self-attention over queries, cross-attention to encoder tokens, MLP."""

  def __init__(self, width: int, num_heads: int, *, dropout_rate: float = 0.0,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    names = ('fusion_embed',)
    self.self_norm = layers.LayerNorm(width, names, **common)
    self.self_attn = layers.Attention(width, num_heads, embed_name='fusion_embed', bias='qkvo', **common)
    self.cross_norm = layers.LayerNorm(width, names, **common)
    self.cross_attn = layers.Attention(width, num_heads, embed_name='fusion_embed', bias='qkvo', **common)
    self.mlp_norm = layers.LayerNorm(width, names, **common)
    self.mlp = layers.MLP(width, 4 * width, width, ('fusion_embed', 'mlp', 'fusion_embed'), **common)
    self.drop = nnx.Dropout(dropout_rate)

  def __call__(self, x: jax.Array, memory: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """Updates queries x [B, Q, W] given normalised encoder tokens memory [B, S, W]."""
    k1, k2, k3 = layers.split_key(key, 3)
    x = x + layers.dropout(self.drop, self.self_attn(self.self_norm(x)), k1)
    x = x + layers.dropout(self.drop, self.cross_attn(self.cross_norm(x), memory), k2)
    return layers.constrain(x + layers.dropout(self.drop, self.mlp(self.mlp_norm(x)), k3), layers.HIDDEN)


class QFormer(nnx.Module):
  """Learned queries cross-attending over all modalities' encoder tokens together, projected to the LLM."""

  def __init__(self, in_widths: dict[str, int], num_queries: int, width: int, out_width: int, *,
               num_heads: int, num_layers: int, dropout: float = 0.0, remat: str = 'none',
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    """`in_widths` maps each enabled modality to its encoder width; `width` is the Q-Former's own."""
    common = dict(dtype=dtype, param_dtype=param_dtype)
    self.modalities = tuple(in_widths)
    self.in_proj = nnx.Dict({
      m: layers.Dense(w, width, (MODALITY_AXES[m], 'fusion_embed'), **common, rngs=rngs)
      for m, w in in_widths.items()})
    init = layers.partitioned(nnx.initializers.normal(0.02), ('queries', 'fusion_embed'))
    self.queries = nnx.Param(init(rngs.params(), (num_queries, width), param_dtype))
    self.memory_norm = layers.LayerNorm(width, ('fusion_embed',), **common, rngs=rngs)
    self.layers = layers.Stack(
      lambda r: QFormerBlock(width, num_heads, dropout_rate=dropout, **common, rngs=r),
      num_layers, remat=remat, rngs=rngs)
    self.out_norm = layers.LayerNorm(width, ('fusion_embed',), **common, rngs=rngs)
    self.out_proj = layers.Dense(width, out_width, ('fusion_embed', 'embed'), **common, rngs=rngs)
    self.dtype = dtype

  def __call__(self, features: dict[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Maps encoder tokens {modality: [B, T_m, D_m]} -> soft tokens [B, num_queries, out_width]."""
    memory = jnp.concatenate([self.in_proj[m](features[m]) for m in self.modalities], axis=1)
    memory = layers.constrain(self.memory_norm(memory), layers.HIDDEN)
    queries = self.queries[...].astype(self.dtype)
    x = layers.constrain(jnp.broadcast_to(queries, (memory.shape[0], *queries.shape)), layers.HIDDEN)
    return layers.constrain(self.out_proj(self.out_norm(self.layers(x, memory, rngs=rngs))), layers.HIDDEN)
