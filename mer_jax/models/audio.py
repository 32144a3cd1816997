"""Whisper-style audio encoder: int16 waveform -> log-mel (in JAX) -> two convs -> pre-LN transformer."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mer_jax.models import layers


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney mel scale: linear below 1 kHz, logarithmic above."""
  hz = np.asarray(hz, np.float64)
  linear = hz * 3.0 / 200.0
  log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """Inverse of the Slaney mel scale."""
  mel = np.asarray(mel, np.float64)
  linear = mel * 200.0 / 3.0
  log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
  return np.where(mel >= 15.0, log, linear)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  """Slaney-normalised triangular mel filters [n_fft // 2 + 1, n_mels] (librosa's htk=False, norm='slaney')."""
  fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
  widths = np.diff(mel_freqs)
  ramps = mel_freqs[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
  return weights.T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
  """Whisper's fixed positional table [length, channels]: sin half then cos half."""
  increment = np.log(max_timescale) / (channels // 2 - 1)
  inv_timescales = np.exp(-increment * np.arange(channels // 2))
  scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def log_mel(audio: jax.Array, *, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
            n_mels: int = 80) -> jax.Array:
  """Whisper log-mel of int16 audio [B, T] -> float32 [B, T // hop_length, n_mels]."""
  wave = audio.astype(jnp.float32) / 32768.0
  pad = n_fft // 2
  wave = jnp.pad(wave, ((0, 0), (pad, pad)), mode='reflect')
  num_frames = audio.shape[1] // hop_length
  index = np.arange(num_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
  frames = wave[:, index] * window.astype(np.float32)
  power = jnp.square(jnp.abs(jnp.fft.rfft(frames, axis=-1)))
  mel = jnp.matmul(power, mel_filterbank(sample_rate, n_fft, n_mels), precision='highest')
  logs = jnp.log10(jnp.maximum(mel, 1e-10))
  logs = jnp.maximum(logs, jnp.max(logs, axis=(1, 2), keepdims=True) - 8.0)
  return (logs + 4.0) / 4.0


def mask_bands(features: jax.Array, key: jax.Array, count: int, width: int, axis: int) -> jax.Array:
  """Sets `count` bands of random width in [0, width] along `axis` (1 time, 2 mel) of [B, F, M] to 0, per example."""
  size = features.shape[axis]
  positions = jnp.arange(size)
  keep = jnp.ones((features.shape[0], size), bool)
  for k in jax.random.split(key, count):
    width_key, start_key = jax.random.split(k)
    widths = jax.random.randint(width_key, (features.shape[0], 1), 0, min(width, size) + 1)
    starts = jax.random.randint(start_key, (features.shape[0], 1), 0, size - widths + 1)
    keep &= (positions[None] < starts) | (positions[None] >= starts + widths)
  keep = keep[:, :, None] if axis == 1 else keep[:, None, :]
  return jnp.where(keep, features, 0.0)


def spec_augment(features: jax.Array, key: jax.Array, time_masks: int, time_width: int, freq_masks: int,
                 freq_width: int) -> jax.Array:
  """SpecAugment of a log-mel [B, F, M]: time and frequency bands masked to 0 (the normalised log-mel's mid level)."""
  time_key, freq_key = jax.random.split(key)
  if time_masks:
    features = mask_bands(features, time_key, time_masks, time_width, 1)
  if freq_masks:
    features = mask_bands(features, freq_key, freq_masks, freq_width, 2)
  return features


class AudioEncoder(nnx.Module):
  """Whisper-shaped encoder; `cfg` is config.model.audio. Call: int16 [B, T] -> tokens [B, T', width]."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype: str = 'float32',
               param_dtype: str = 'float32', dropout: float = 0.0, remat: str = 'none',
               spec_augment: tuple[int, int, int, int] | None = None, rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype)
    conv_names = ('conv_width', 'conv_in', 'audio_embed')
    self.conv1 = nnx.Conv(
      cfg.n_mels, cfg.width, kernel_size=3, padding=((1, 1),), **common, rngs=rngs,
      kernel_init=layers.partitioned(nnx.initializers.lecun_normal(), conv_names),
      bias_init=layers.partitioned(nnx.initializers.zeros_init(), ('audio_embed',)))
    self.conv2 = nnx.Conv(
      cfg.width, cfg.width, kernel_size=3, strides=2, padding=((1, 1),), **common, rngs=rngs,
      kernel_init=layers.partitioned(nnx.initializers.lecun_normal(), conv_names),
      bias_init=layers.partitioned(nnx.initializers.zeros_init(), ('audio_embed',)))
    self.layers = layers.Stack(
      lambda r: layers.EncoderBlock(cfg.width, cfg.heads, cfg.mlp, embed_name='audio_embed',
                                    attn_bias='qvo', act='gelu', dropout_rate=dropout, **common,
                                    rngs=r),
      cfg.layers, remat=remat, rngs=rngs)
    self.norm = layers.LayerNorm(cfg.width, ('audio_embed',), **common, rngs=rngs)
    self.sample_rate = cfg.sample_rate
    self.n_fft = cfg.n_fft
    self.hop_length = cfg.hop_length
    self.n_mels = cfg.n_mels
    self.max_frames = cfg.max_frames
    self.num_soft_tokens = cfg.num_soft_tokens
    self.dtype = dtype
    self.spec_augment = spec_augment  # (time masks, time width, freq masks, freq width), applied in training

  def log_mel(self, audio: jax.Array) -> jax.Array:
    """int16 audio [B, T] -> log-mel float32 [B, T // hop_length, n_mels]."""
    return log_mel(audio, sample_rate=self.sample_rate, n_fft=self.n_fft,
                   hop_length=self.hop_length, n_mels=self.n_mels)

  def __call__(self, audio: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Encodes int16 audio [B, T] -> tokens [B, ceil(T // hop_length / 2), width].

    In training (rngs given) with spec_augment set, the log-mel is masked first (see spec_augment).
    """
    features = self.log_mel(audio)
    if rngs is not None and self.spec_augment is not None:
      features = spec_augment(features, rngs.dropout(), *self.spec_augment)
    return self.encode(features, rngs=rngs)

  def encode(self, features: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Encodes log-mel [B, F, n_mels] -> tokens [B, ceil(F / 2), width].

    Whisper pads every clip to 30 s (F = 2 * max_frames); here a shorter clip takes the first
    ceil(F / 2) positions of the table and attends only to its own frames.
    """
    features = layers.constrain(features.astype(self.dtype), layers.HIDDEN)
    x = jax.nn.gelu(self.conv1(features), approximate=False)
    x = layers.constrain(jax.nn.gelu(self.conv2(x), approximate=False), layers.HIDDEN)
    if x.shape[1] > self.max_frames:
      raise ValueError(f'{x.shape[1]} audio frames exceed max_frames={self.max_frames}')
    x = x + sinusoids(self.max_frames, x.shape[-1])[:x.shape[1]].astype(self.dtype)
    return layers.constrain(self.norm(self.layers(x, rngs=rngs)), layers.HIDDEN)

  def pool(self, tokens: jax.Array) -> jax.Array:
    """Mean-pools tokens [B, T', D] over equal chunks -> [B, num_soft_tokens, D]."""
    return layers.chunk_mean(tokens, self.num_soft_tokens)
