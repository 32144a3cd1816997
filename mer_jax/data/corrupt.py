"""A corrupted copy of a raw dataset (MER-NOISE protocol): audio noise at a drawn SNR, video blurred by downscaling."""

import os
import shutil
import zlib
from fractions import Fraction

import av
import numpy as np
import soundfile

from mer_jax.data import augment
from mer_jax.data.augment_config import noise_files, parse_floats

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm')
AUDIO_EXTENSIONS = ('.wav', '.flac')


def parse_list(flag: str, text: str, whole: bool = False) -> tuple[float, ...]:
  """A comma-separated list of numbers given to --flag (whole numbers >= 1 when `whole`); errors name the flag."""
  try:
    values = parse_floats(flag, text)
  except ValueError:
    raise ValueError(f'--{flag}={text!r} is not a comma-separated list of numbers') from None
  if whole and any(v < 1 or v != int(v) for v in values):
    raise ValueError(f'--{flag}={text!r} must list whole factors >= 1')
  return values


class Corruptor:
  """Draws each clip's SNR, blur factor and noise from a generator seeded by the clip's relative path."""

  def __init__(self, snrs: tuple[float, ...], blurs: tuple[float, ...], noise: tuple[str, ...], seed: int):
    self.snrs, self.blurs, self.noise, self.seed = snrs, blurs, noise, seed

  def rng(self, relative: str) -> np.random.Generator:
    """The clip's generator."""
    return np.random.default_rng([self.seed, zlib.crc32(relative.encode('utf-8'))])

  def noisy(self, audio: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Float mono audio with noise at a drawn SNR (a noise file's stretch, or coloured noise)."""
    if self.noise:
      source = augment.read_noise(str(rng.choice(self.noise)), rate)
      start = int(rng.integers(max(1, len(source) - len(audio) + 1)))
      noise = augment.fit_length(source[start:], len(audio))
    else:
      noise = augment.coloured_noise(rng, len(audio), float(rng.choice([0.0, 1.0, 2.0])))
    return augment.mix_at_snr(audio, noise, float(rng.choice(self.snrs)))

  def video_file(self, src: str, dst: str, rng: np.random.Generator) -> None:
    """Decodes every frame and the audio of `src`, corrupts them and writes H.264 + AAC to `dst`."""
    with av.open(src) as container:
      if not container.streams.video:
        raise ValueError(f'{src} has no video stream')
      stream = container.streams.video[0]
      fps = stream.average_rate or Fraction(25)
      frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(stream)])
    audio, rate = None, None
    with av.open(src) as container:
      if container.streams.audio:
        rate = container.streams.audio[0].rate
        resampler = av.AudioResampler(format='flt', layout='mono', rate=rate)
        chunks = [c.to_ndarray().reshape(-1) for f in container.decode(container.streams.audio[0])
                  for c in resampler.resample(f)]
        chunks += [c.to_ndarray().reshape(-1) for c in resampler.resample(None)]
        audio = np.concatenate(chunks).astype(np.float64)
    frames = augment.blur(frames, int(rng.choice(self.blurs)))
    with av.open(dst, 'w', format='mp4') as out:
      video = out.add_stream('libx264', rate=fps)
      video.height, video.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
      video.pix_fmt = 'yuv420p'
      video.options = {'preset': 'veryfast', 'crf': '18'}
      video.codec_context.thread_count = 1
      sound = out.add_stream('aac', rate=rate, layout='mono') if audio is not None else None
      for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:video.height, :video.width]), format='rgb24')
        frame.pts = i
        out.mux(video.encode(frame))
      out.mux(video.encode(None))
      if sound is not None:
        noisy = np.clip(self.noisy(audio, rate, rng), -1.0, 1.0).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(noisy[None, :], format='fltp', layout='mono')
        frame.sample_rate, frame.pts = rate, 0
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))

  def audio_file(self, src: str, dst: str, rng: np.random.Generator) -> None:
    """Adds noise to an audio file (mono mix) and writes it in the same format."""
    data, rate = soundfile.read(src, dtype='float64', always_2d=True)
    soundfile.write(dst, np.clip(self.noisy(data.mean(axis=1), rate, rng), -1.0, 1.0), rate)


def corrupt_dataset(raw_dir: str, out_dir: str, snrs: str = '5,10', blurs: str = '1,2,4', noise_dir: str | None = None,
                    seed: int = 0) -> int:
  """Copies `raw_dir` to `out_dir` (same layout; label and text files copied), every clip corrupted; returns the clip count.

  Each video clip gets noise at an SNR drawn from `snrs` (dB) and a blur factor drawn from `blurs`;
  audio files get the noise. The noise comes from `noise_dir`'s audio files, else it is generated.
  """
  raw_dir, out_dir = os.path.abspath(raw_dir), os.path.abspath(out_dir)
  if not os.path.isdir(raw_dir):
    raise ValueError(f'raw dataset folder {raw_dir} does not exist')
  if out_dir == raw_dir or out_dir.startswith(raw_dir + os.sep):
    raise ValueError(f'--out {out_dir} must lie outside --raw {raw_dir}')
  corruptor = Corruptor(parse_list('snr', snrs), parse_list('blur', blurs, whole=True),
                        noise_files(noise_dir) if noise_dir else (), seed)
  count = 0
  for root, _, names in os.walk(raw_dir):
    target = os.path.join(out_dir, os.path.relpath(root, raw_dir))
    os.makedirs(target, exist_ok=True)
    for name in sorted(names):
      src, dst = os.path.join(root, name), os.path.join(target, name)
      relative = os.path.relpath(src, raw_dir)
      extension = os.path.splitext(name)[1].lower()
      try:
        if extension in VIDEO_EXTENSIONS:
          corruptor.video_file(src, dst, corruptor.rng(relative))
        elif extension in AUDIO_EXTENSIONS:
          corruptor.audio_file(src, dst, corruptor.rng(relative))
        else:
          shutil.copy2(src, dst)
          continue
      except (av.FFmpegError, RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f'{src} cannot be corrupted: {error}') from error
      count += 1
  return count
