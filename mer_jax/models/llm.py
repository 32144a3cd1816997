"""LLaMA/Qwen2-style decoder LLM: token embedding, scanned pre-RMSNorm blocks, final norm, LM head."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from mer_jax.models import kernels, layers, lora


class LLM(nnx.Module):
  """Decoder-only LM; `cfg` is config.model.llm (width, layers, heads, kv_heads, head_dim, mlp, rope...)."""

  def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int, *, dtype: str = 'float32',
               param_dtype: str = 'float32', dropout: float = 0.0, remat: str = 'none',
               lora_config: ml_collections.ConfigDict | None = None, lora_param_dtype: str | None = None,
               rngs: nnx.Rngs):
    """`lora_config` is config.model.lora: adapters on each block's target projections when its rank > 0,
    their parameters in `lora_param_dtype` (default: `param_dtype`)."""
    if lora_config is not None:
      lora.check_config(lora_config)
    dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype)
    attention = kernels.check_attention(cfg.get('attention', 'xla'))  # run dirs made before the key: 'xla'
    self.embed = layers.Embed(vocab_size, cfg.width, **common, rngs=rngs)
    self.layers = layers.Stack(
      lambda r: layers.DecoderBlock(cfg.width, cfg.heads, cfg.kv_heads, cfg.mlp, head_dim=cfg.head_dim,
                                    norm_eps=cfg.norm_eps, qkv_bias=cfg.qkv_bias, attention=attention,
                                    dropout_rate=dropout, lora_config=lora_config, lora_param_dtype=lora_param_dtype, **common,
                                    rngs=r),
      cfg.layers, remat=remat, rngs=rngs)
    self.norm = layers.RMSNorm(cfg.width, eps=cfg.norm_eps, **common, rngs=rngs)
    if cfg.tie_embeddings:
      self.lm_head = nnx.data(None)
    else:
      self.lm_head = layers.Dense(cfg.width, vocab_size, ('embed', 'vocab'), use_bias=False, **common,
                                  rngs=rngs)
    self.head_dim = cfg.head_dim or cfg.width // cfg.heads
    self.kv_heads = cfg.kv_heads
    self.rope_theta = cfg.rope_theta
    self.rope_scaling = layers.RopeScaling(**cfg.rope_scaling)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """Embeds int tokens [B, L] -> [B, L, width] in the compute dtype."""
    return layers.constrain(self.embed(tokens), layers.HIDDEN)

  def forward(self, embeddings: jax.Array, *, positions: jax.Array | None = None,
              rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Runs input embeddings [B, L, D] -> (logits float32 [B, L, vocab], final-normed hidden [B, L, D])."""
    hidden = self.hidden(embeddings, positions=positions, rngs=rngs)
    return self.logits(hidden), hidden

  def hidden(self, embeddings: jax.Array, *, positions: jax.Array | None = None,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """Runs input embeddings [B, L, D] -> final-normed hidden [B, L, D], without the LM head."""
    batch, length = embeddings.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    sin, cos = self.rotary(positions)
    return self.norm(self.layers(layers.constrain(embeddings, layers.HIDDEN), sin, cos, rngs=rngs))

  def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rotary (sin, cos) tables for int positions [B, L]."""
    return layers.rotary_tables(positions, self.head_dim, self.rope_theta, self.rope_scaling)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """LM head: final-normed hidden [B, L, D] -> logits float32 [B, L, vocab]."""
    logits = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
    return layers.constrain(logits.astype(jnp.float32), ('activation_batch', 'activation_length', 'activation_vocab'))

  def init_cache(self, batch: int, max_len: int) -> layers.KVCache:
    """An empty KV cache for `batch` sequences of up to `max_len` positions, in the compute dtype."""
    return layers.KVCache.zeros(self.layers.num_layers, batch, max_len, self.kv_heads, self.head_dim,
                                self.embed.dtype)

  def extend(self, embeddings: jax.Array, cache: layers.KVCache) -> tuple[jax.Array, layers.KVCache]:
    """Appends embeddings [B, T, D] after each example's cached positions (no dropout).

    Example b's tokens take positions cache.lengths[b] + t. Returns (final-normed hidden [B, T, D],
    the cache with lengths + T); `logits` maps the hidden states that are needed.
    """
    positions = cache.lengths[:, None] + jnp.arange(embeddings.shape[1], dtype=jnp.int32)[None, :]
    sin, cos = self.rotary(positions)
    x, cache = self.layers.extend(layers.constrain(embeddings, layers.HIDDEN), cache, sin, cos)
    return self.norm(x), cache

  def __call__(self, tokens: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Maps int tokens [B, L] -> logits float32 [B, L, vocab]."""
    return self.forward(self.embed_tokens(tokens), rngs=rngs)[0]
