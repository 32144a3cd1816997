"""Host-side affective data augmentation of one example's audio, frames and transcript, seeded per example."""

import functools
from typing import Any

import numpy as np
import soundfile
from PIL import Image

from mer_jax.data.augment_config import Augment

# Letters an ASR system confuses (similar sounds), used by asr_errors.
_CONFUSIONS = {'b': 'p', 'p': 'b', 'd': 't', 't': 'd', 'g': 'k', 'k': 'g', 'v': 'f', 'f': 'v', 's': 'z', 'z': 's',
               'm': 'n', 'n': 'm', 'i': 'e', 'e': 'a', 'a': 'e', 'o': 'u', 'u': 'o'}


def example_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  """The generator of the example at `index` of a shuffled training stream (index = step * global batch + row)."""
  return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def power(signal: np.ndarray) -> float:
  """Mean square of a float signal."""
  return float(np.mean(np.square(signal, dtype=np.float64)))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
  """speech + noise scaled so that 10 log10(P_speech / P_noise) = snr_db (float arrays of equal length)."""
  noise_power = power(noise)
  if noise_power == 0.0:
    return speech
  scale = np.sqrt(power(speech) / (noise_power * 10.0 ** (snr_db / 10.0)))
  return speech + scale * noise


def coloured_noise(rng: np.random.Generator, length: int, exponent: float) -> np.ndarray:
  """Gaussian noise whose power falls as 1 / f**exponent (0 white, 1 pink, 2 brown), unit variance."""
  spectrum = np.fft.rfft(rng.standard_normal(length))
  freqs = np.fft.rfftfreq(length)
  freqs[0] = freqs[1] if length > 1 else 1.0
  noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n=length)
  return noise / max(np.std(noise), 1e-12)


def resample(signal: np.ndarray, factor: float) -> np.ndarray:
  """The signal played `factor` times faster (linear interpolation; length / factor samples)."""
  length = max(1, int(round(len(signal) / factor)))
  return np.interp(np.arange(length) * factor, np.arange(len(signal)), signal)


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
  """Cut to `length`, or repeated (tiled) up to it."""
  if len(signal) >= length:
    return signal[:length]
  return np.tile(signal, -(-length // max(len(signal), 1)))[:length]


@functools.lru_cache(maxsize=64)
def read_noise(path: str, sample_rate: int) -> np.ndarray:
  """A noise file as float mono at `sample_rate`; an error names the file."""
  try:
    data, rate = soundfile.read(path, dtype='float64', always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as error:
    raise ValueError(f'noise file {path} cannot be read: {error}') from error
  if data.size == 0:
    raise ValueError(f'noise file {path} holds no samples')
  return resample(data.mean(axis=1), rate / sample_rate)


def blur(frames: np.ndarray, factor: int) -> np.ndarray:
  """Frames [N, H, W, 3] downscaled by `factor` (box filter) and scaled back up (bilinear): MER-NOISE's blur."""
  if factor <= 1:
    return frames
  height, width = frames.shape[1:3]
  small = (max(1, width // factor), max(1, height // factor))
  return np.stack([np.asarray(Image.fromarray(f).resize(small, Image.BOX).resize((width, height), Image.BILINEAR))
                   for f in frames])


def resized_crop(frames: np.ndarray, rng: np.random.Generator, min_scale: float) -> np.ndarray:
  """One random square crop keeping an area fraction in [min_scale, 1], resized back, for every frame."""
  height, width = frames.shape[1:3]
  side = np.sqrt(rng.uniform(min_scale, 1.0))
  crop_h, crop_w = max(1, int(round(height * side))), max(1, int(round(width * side)))
  top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
  return np.stack([np.asarray(Image.fromarray(f[top:top + crop_h, left:left + crop_w]).resize(
      (width, height), Image.BILINEAR)) for f in frames])


def colour_jitter(frames: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Brightness, contrast and saturation each scaled by a factor drawn in [1 - strength, 1 + strength]."""
  brightness, contrast, saturation = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
  x = frames.astype(np.float32) * brightness
  x = (x - x.mean()) * contrast + x.mean()
  grey = x.mean(axis=-1, keepdims=True)
  x = (x - grey) * saturation + grey
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def drop_frames(frames: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
  """Each frame after the first replaced by the one before it with `probability` (a stalled or lossy stream)."""
  out = frames.copy()
  for i in range(1, len(out)):
    if rng.random() < probability:
      out[i] = out[i - 1]
  return out


def asr_error(word: str, rng: np.random.Generator) -> str:
  """The word as an ASR system might mishear it: one letter confused with a similar sound, dropped or doubled."""
  letters = [i for i, ch in enumerate(word) if ch.lower() in _CONFUSIONS]
  if not letters:
    return word
  i = int(rng.choice(letters))
  kind = rng.integers(3)
  if kind == 0:
    return word[:i] + _CONFUSIONS[word[i].lower()] + word[i + 1:]
  if kind == 1 and len(word) > 1:
    return word[:i] + word[i + 1:]
  return word[:i] + word[i] + word[i:]


def corrupt_text(sentence: str, rng: np.random.Generator, dropout: float, substitution: float) -> str:
  """Words dropped with probability `dropout`, the others misheard (asr_error) with probability `substitution`."""
  words = []
  for word in sentence.split():
    if rng.random() < dropout:
      continue
    words.append(asr_error(word, rng) if rng.random() < substitution else word)
  return ' '.join(words)


class Augmenter:
  """Applies config.augment's host-side augmentations to one example (audio int16 [T], frames uint8 [N,H,W,3])."""

  def __init__(self, augment: Augment, modalities: tuple[str, ...], sample_rate: int, num_questions: int,
               babble_source: Any = None):
    self.augment = augment
    self.modalities = modalities
    self.sample_rate = sample_rate
    self.num_questions = num_questions
    self.babble_source = babble_source

  def audio(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed, gain and additive noise, each by its probability."""
    a = self.augment
    x = audio.astype(np.float64)
    if rng.random() < a.speed_prob:
      x = fit_length(resample(x, rng.uniform(*a.speed)), len(x))
    if rng.random() < a.gain_prob:
      x = x * 10.0 ** (rng.uniform(-a.gain_db, a.gain_db) / 20.0)
    if rng.random() < a.noise_prob:
      x = mix_at_snr(x, self.noise(rng, len(x)), float(rng.choice(a.noise_snr)))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)

  def noise(self, rng: np.random.Generator, length: int) -> np.ndarray:
    """A noise signal: another clip's audio (babble_prob), else a noise file's random stretch, else coloured noise."""
    a = self.augment
    if self.babble_source is not None and rng.random() < a.babble_prob:
      other = self.babble_source[int(rng.integers(len(self.babble_source)))]['audio']
      return other.astype(np.float64)[:length]
    if a.noise_files:
      noise = read_noise(str(rng.choice(a.noise_files)), self.sample_rate)
      start = int(rng.integers(max(1, len(noise) - length + 1)))
      return fit_length(noise[start:], length)
    return coloured_noise(rng, length, float(rng.choice([0.0, 1.0, 2.0])))

  def frames(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, resized crop, flip, colour jitter and dropped frames, each by its probability."""
    a = self.augment
    if rng.random() < a.blur_prob:
      frames = blur(frames, int(rng.choice(a.blur)))
    if rng.random() < a.crop_prob:
      frames = resized_crop(frames, rng, a.crop_scale)
    if rng.random() < a.flip_prob:
      frames = frames[:, :, ::-1].copy()
    if rng.random() < a.jitter_prob:
      frames = colour_jitter(frames, rng, a.jitter)
    if a.frame_drop_prob > 0:
      frames = drop_frames(frames, rng, a.frame_drop_prob)
    return frames

  def missing(self, rng: np.random.Generator) -> tuple[str, ...]:
    """The modalities this example loses (modality dropout); at least one of the model's modalities stays."""
    missing = [m for m in self.modalities if rng.random() < self.augment.drop[m]]
    if len(missing) == len(self.modalities):
      missing.pop(int(rng.integers(len(missing))))
    return tuple(missing)

  def __call__(self, audio: np.ndarray | None, frames: np.ndarray | None, sentence: str,
               rng: np.random.Generator) -> dict[str, Any]:
    """{'audio', 'frames', 'sentence', 'missing' (modalities), 'question' (template index)} for one example."""
    a = self.augment
    if audio is not None:
      audio = self.audio(audio, rng)
    if frames is not None:
      frames = self.frames(frames, rng)
    if a.word_dropout > 0 or a.asr_prob > 0:
      sentence = corrupt_text(sentence, rng, a.word_dropout, a.asr_prob)
    question = int(rng.integers(self.num_questions)) if a.prompt_variety else 0
    return {'audio': audio, 'frames': frames, 'sentence': sentence, 'missing': self.missing(rng),
            'question': question}
