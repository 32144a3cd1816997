"""CLIP-ViT-style vision encoder: uint8 frames -> patches -> pre-LN transformer -> one token per frame."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mer_jax.models import layers

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """Splits images [M, S, S, C] into [M, (S / P) ** 2, P * P * C] patches (row-major; each patch P, P, C)."""
  m, size, _, channels = images.shape
  grid = size // patch_size
  x = images.reshape(m, grid, patch_size, grid, patch_size, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(m, grid * grid, patch_size * patch_size * channels)


class VisionEncoder(nnx.Module):
  """CLIP-ViT-shaped encoder; `cfg` is config.model.vision. Call: uint8 [B, N, H, W, 3] -> [B, N, width]."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype: str = 'float32',
               param_dtype: str = 'float32', dropout: float = 0.0, remat: str = 'none',
               rngs: nnx.Rngs):
    if cfg.image_size % cfg.patch_size:
      raise ValueError(f'image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}')
    dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype)
    num_positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
    self.patch_embed = layers.Dense(cfg.patch_size * cfg.patch_size * 3, cfg.width,
                                    ('patch', 'vision_embed'), use_bias=False, **common, rngs=rngs)
    init = nnx.initializers.normal(0.02)
    self.class_embed = nnx.Param(layers.partitioned(init, ('vision_embed',))(
      rngs.params(), (cfg.width,), param_dtype))
    self.positions = nnx.Param(layers.partitioned(init, ('positions', 'vision_embed'))(
      rngs.params(), (num_positions, cfg.width), param_dtype))
    self.pre_norm = layers.LayerNorm(cfg.width, ('vision_embed',), **common, rngs=rngs)
    self.layers = layers.Stack(
      lambda r: layers.EncoderBlock(cfg.width, cfg.heads, cfg.mlp, embed_name='vision_embed',
                                    attn_bias='qkvo', act=cfg.act,
                                    dropout_rate=dropout, **common, rngs=r),
      cfg.layers, remat=remat, rngs=rngs)
    self.post_norm = layers.LayerNorm(cfg.width, ('vision_embed',), **common, rngs=rngs)
    self.image_size = cfg.image_size
    self.patch_size = cfg.patch_size
    self.num_soft_tokens = cfg.num_soft_tokens
    self.dtype = dtype

  def preprocess(self, frames: jax.Array) -> jax.Array:
    """uint8 frames [M, H, W, 3] -> CLIP-normalised float32 [M, image_size, image_size, 3]."""
    x = frames.astype(jnp.float32) / 255.0
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, 3), 'bilinear')
    return (x - CLIP_MEAN) / CLIP_STD

  def __call__(self, frames: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Encodes uint8 frames [B, N, H, W, 3] -> per-frame class-token features [B, N, width]."""
    batch, num_frames = frames.shape[:2]
    x = self.preprocess(frames.reshape(batch * num_frames, *frames.shape[2:]))
    return layers.constrain(self.encode(x, rngs=rngs).reshape(batch, num_frames, -1), layers.HIDDEN)

  def encode(self, pixels: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Encodes normalised pixels [M, image_size, image_size, 3] -> post-normed class tokens [M, width]."""
    x = layers.constrain(self.patch_embed(patchify(pixels.astype(self.dtype), self.patch_size)), layers.HIDDEN)
    cls = jnp.broadcast_to(self.class_embed[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positions[...].astype(self.dtype)
    x = self.layers(self.pre_norm(x), rngs=rngs)
    return self.post_norm(x[:, 0])

  def pool(self, tokens: jax.Array) -> jax.Array:
    """Mean-pools frame tokens [B, N, D] over equal chunks of frames -> [B, num_soft_tokens, D]."""
    return layers.chunk_mean(tokens, self.num_soft_tokens)
