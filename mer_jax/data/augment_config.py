"""config.augment: the augmentation switches and weights (all off by default), parsed and checked at start-up."""

import dataclasses
import os
from typing import Any

import ml_collections

AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg')  # what soundfile reads
MODALITIES = ('audio', 'video', 'text')


def default_config() -> ml_collections.ConfigDict:
  """The config.augment section: every probability 0, every mask count 0 (no augmentation)."""
  return ml_collections.ConfigDict(dict(
      noise_prob=0.0,        # audio: additive noise at an SNR drawn from noise_snr
      noise_snr='5,10,20',   # dB values to draw from (comma-separated)
      noise_dir='',          # a folder of noise recordings; '' = generated coloured noise, or babble (below)
      babble_prob=0.0,       # of the noisy examples, the fraction mixed with another clip's audio instead
      gain_prob=0.0,         # audio: gain drawn in [-gain_db, gain_db]
      gain_db=6.0,
      speed_prob=0.0,        # audio: speed (and pitch) changed by a factor drawn from speed
      speed='0.9,1.1',       # the factor's range (two comma-separated numbers)
      spec_time_masks=0,     # SpecAugment on the log-mel, on the device: masks per example and their widest
      spec_time_width=20,    # widths (in frames / mel bins)
      spec_freq_masks=0,
      spec_freq_width=10,
      blur_prob=0.0,         # video: downscale by a factor drawn from blur and scale back up
      blur='2,4',
      crop_prob=0.0,         # video: random resized crop keeping at least crop_scale of the area
      crop_scale=0.6,
      flip_prob=0.0,         # video: horizontal flip
      jitter_prob=0.0,       # video: brightness, contrast and saturation changed by up to +-jitter
      jitter=0.3,
      frame_drop_prob=0.0,   # video: each frame replaced by the previous kept one with this probability
      word_dropout=0.0,      # text: each transcript word dropped with this probability
      asr_prob=0.0,          # text: each word replaced by an ASR-like error with this probability
      drop_audio=0.0,        # modality dropout: probability that an example's audio is missing
      drop_video=0.0,
      drop_text=0.0,
      prompt_variety=False,  # sample one of several instruction templates per example (evaluation: the first)
  ))


def parse_floats(key: str, text: str) -> tuple[float, ...]:
  """A comma-separated list of numbers; an error names the key and the value."""
  try:
    values = tuple(float(part) for part in str(text).split(',') if part.strip())
  except ValueError:
    values = ()
  if not values:
    raise ValueError(f'config.augment.{key}={text!r} is not a comma-separated list of numbers')
  return values


def noise_files(directory: str) -> tuple[str, ...]:
  """The audio files of a noise folder, sorted; an error names a folder that is missing or holds none."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise ValueError(f'noise folder {directory} does not exist')
  files = tuple(sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                       if name.lower().endswith(AUDIO_EXTENSIONS)))
  if not files:
    raise ValueError(f'noise folder {directory} holds no audio files ({", ".join(AUDIO_EXTENSIONS)})')
  return files


@dataclasses.dataclass(frozen=True)
class Augment:
  """The checked config.augment values (see default_config for their meaning)."""

  noise_prob: float
  noise_snr: tuple[float, ...]
  noise_files: tuple[str, ...]
  babble_prob: float
  gain_prob: float
  gain_db: float
  speed_prob: float
  speed: tuple[float, float]
  spec_time_masks: int
  spec_time_width: int
  spec_freq_masks: int
  spec_freq_width: int
  blur_prob: float
  blur: tuple[int, ...]
  crop_prob: float
  crop_scale: float
  flip_prob: float
  jitter_prob: float
  jitter: float
  frame_drop_prob: float
  word_dropout: float
  asr_prob: float
  drop: dict[str, float]
  prompt_variety: bool

  @property
  def host_side(self) -> bool:
    """Whether any augmentation runs in the input pipeline."""
    probs = (self.noise_prob, self.gain_prob, self.speed_prob, self.blur_prob, self.crop_prob, self.flip_prob,
             self.jitter_prob, self.frame_drop_prob, self.word_dropout, self.asr_prob, *self.drop.values())
    return any(p > 0 for p in probs) or self.prompt_variety

  @property
  def spec_augment(self) -> tuple[int, int, int, int] | None:
    """(time masks, time width, freq masks, freq width) when SpecAugment is on, else None."""
    if not (self.spec_time_masks or self.spec_freq_masks):
      return None
    return self.spec_time_masks, self.spec_time_width, self.spec_freq_masks, self.spec_freq_width


def parse(section: Any) -> Augment:
  """Checks a config.augment section (None or missing keys: the defaults) and returns its values."""
  values = default_config().to_dict()
  given = dict(section or {})
  unknown = sorted(set(given) - set(values))
  if unknown:
    raise ValueError(f'unknown config.augment key(s) {unknown}; valid keys: {", ".join(sorted(values))}')
  values.update(given)
  probabilities = [k for k in values if k.endswith('_prob') or k.startswith('drop_') or k == 'word_dropout']
  for key in probabilities + ['crop_scale', 'jitter']:
    if not 0.0 <= float(values[key]) <= 1.0:
      raise ValueError(f'config.augment.{key}={values[key]!r} must lie in [0, 1]')
  for key in ('spec_time_masks', 'spec_time_width', 'spec_freq_masks', 'spec_freq_width', 'gain_db'):
    if values[key] < 0:
      raise ValueError(f'config.augment.{key}={values[key]!r} must not be negative')
  speed = parse_floats('speed', values['speed'])
  if len(speed) != 2 or not 0 < speed[0] <= speed[1]:
    raise ValueError(f"config.augment.speed={values['speed']!r} must be two positive numbers, low,high")
  blur = parse_floats('blur', values['blur'])
  if any(b < 1 or b != int(b) for b in blur):
    raise ValueError(f"config.augment.blur={values['blur']!r} must list whole factors >= 1")
  if values['drop_audio'] + values['drop_video'] + values['drop_text'] > 0 and all(
      values[f'drop_{m}'] >= 1.0 for m in MODALITIES):
    raise ValueError('config.augment.drop_audio, drop_video and drop_text are all 1: no example keeps a modality')
  return Augment(
      noise_prob=float(values['noise_prob']), noise_snr=parse_floats('noise_snr', values['noise_snr']),
      noise_files=noise_files(values['noise_dir']) if values['noise_dir'] else (),
      babble_prob=float(values['babble_prob']), gain_prob=float(values['gain_prob']),
      gain_db=float(values['gain_db']), speed_prob=float(values['speed_prob']), speed=(speed[0], speed[1]),
      spec_time_masks=int(values['spec_time_masks']), spec_time_width=int(values['spec_time_width']),
      spec_freq_masks=int(values['spec_freq_masks']), spec_freq_width=int(values['spec_freq_width']),
      blur_prob=float(values['blur_prob']), blur=tuple(int(b) for b in blur),
      crop_prob=float(values['crop_prob']), crop_scale=float(values['crop_scale']),
      flip_prob=float(values['flip_prob']), jitter_prob=float(values['jitter_prob']), jitter=float(values['jitter']),
      frame_drop_prob=float(values['frame_drop_prob']), word_dropout=float(values['word_dropout']),
      asr_prob=float(values['asr_prob']), drop={m: float(values[f'drop_{m}']) for m in MODALITIES},
      prompt_variety=bool(values['prompt_variety']))


def from_config(config: Any) -> Augment:
  """config.augment of a run's config (runs saved before the section existed: no augmentation)."""
  return parse(config.get('augment'))
