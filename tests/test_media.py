"""Tests clip decoding: shapes, trimming and padding, frame choice, cropping, CLIP parity, and the MediaError cases."""

import os

import av
from flax import nnx
import ml_collections
import numpy as np
import pytest
import transformers

from mer_jax.data import media, synthetic
from mer_jax.data.media import MediaError, decode_clip
from mer_jax.models.vision import VisionEncoder

CLIP_TOLERANCE = 1e-5


def write_clip(path: str, *, width: int = 64, height: int = 64, fps: int = 10, seconds: float = 2.0,
               num_frames: int | None = None, first_pts: int = 0, audio: bool = True, frame=None) -> str:
  """Writes an mp4/mkv: H.264 frames frame(i) (num_frames=-1: no video stream) and maybe an AAC tone."""
  frame = frame or (lambda i: np.full((height, width, 3), 10 * i, np.uint8))
  num_frames = int(round(fps * seconds)) if num_frames is None else num_frames
  with av.open(path, 'w') as container:
    video = container.add_stream('libx264', rate=fps) if num_frames >= 0 else None
    if video is not None:
      video.width, video.height, video.pix_fmt = width, height, 'yuv420p'
    sound = container.add_stream('aac', rate=16000, layout='mono') if audio else None
    for i in range(max(num_frames, 0)):
      picture = av.VideoFrame.from_ndarray(frame(i), format='rgb24')
      picture.pts = first_pts + i
      container.mux(video.encode(picture))
    if video is not None:
      container.mux(video.encode(None))
    if sound is not None:
      t = np.arange(int(16000 * seconds)) / 16000
      samples = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format='fltp', layout='mono')
      samples.sample_rate, samples.pts = 16000, 0
      container.mux(sound.encode(samples))
      container.mux(sound.encode(None))
  return path


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> str:
  """One synthetic demo clip (96x96, 10 fps, 2 s, AAC audio)."""
  out = str(tmp_path_factory.mktemp('media'))
  synthetic.write_dataset(out, num_clips=1, workers=1)
  return os.path.join(out, 'video', 'sample_00001.mp4')


def test_decode_shapes_and_dtypes(clip):
  audio, frames = decode_clip(clip)
  assert audio.dtype == np.int16 and audio.shape == (32000,)
  assert frames.dtype == np.uint8 and frames.shape == (4, 48, 48, 3)
  assert np.abs(audio[:30000]).max() > 100
  assert frames.std() > 10


def test_decode_options(clip):
  audio, frames = decode_clip(clip, sample_rate=8000, duration_s=1.0, num_frames=6, frame_size=32)
  assert audio.shape == (8000,) and frames.shape == (6, 32, 32, 3)
  audio, _ = decode_clip(clip, duration_s=3.0)
  assert audio.shape == (48000,)
  assert not audio[32100:].any()


@pytest.mark.parametrize('name, first_pts', [('ramp.mp4', 0), ('late_start.mkv', 5)])
def test_frames_are_evenly_spaced(tmp_path, name, first_pts):
  path = write_clip(str(tmp_path / name), first_pts=first_pts)
  _, frames = decode_clip(path, num_frames=4, frame_size=64)
  # Frames shown at 0.25, 0.75, 1.25 and 1.75 s are numbers 2, 7, 12 and 17 (value 10 * i).
  np.testing.assert_allclose(frames.reshape(4, -1).mean(1), [20, 70, 120, 170], atol=3)


def test_center_crop(tmp_path):
  def bands(_):
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, :32, 0] = 255
    image[:, 32:96, 1] = 255
    image[:, 96:, 2] = 255
    return image

  path = write_clip(str(tmp_path / 'wide.mp4'), width=128, height=64, frame=bands)
  _, frames = decode_clip(path, frame_size=32)
  mean = frames[:, :, 2:-2].reshape(-1, 3).mean(0)
  assert mean[1] > 200 and mean[0] < 30 and mean[2] < 30


@pytest.mark.parametrize('case, reason', [
    ('missing', 'file not found'),
    ('empty', 'empty file'),
    ('truncated', 'cannot decode'),
    ('garbage', 'cannot decode'),
    ('video_only', 'no audio track'),
    ('audio_only', 'no video stream'),
])
def test_media_errors_name_the_file(tmp_path, clip, case, reason):
  path = str(tmp_path / f'{case}.mp4')
  if case == 'empty':
    open(path, 'wb').close()
  elif case == 'truncated':
    with open(clip, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:len(data) // 2])
  elif case == 'garbage':
    with open(path, 'wb') as f:
      f.write(os.urandom(4096))
  elif case == 'video_only':
    write_clip(path, audio=False)
  elif case == 'audio_only':
    write_clip(path, num_frames=-1)
  with pytest.raises(MediaError, match=reason) as info:
    decode_clip(path)
  assert isinstance(info.value, ValueError)
  assert info.value.path == path and path in str(info.value) and reason in info.value.reason


def test_no_video_frames(tmp_path):
  path = write_clip(str(tmp_path / 'no_frames.mkv'), num_frames=0)
  with pytest.raises(MediaError, match='no video frames') as info:
    decode_clip(path)
  assert path in str(info.value)


def test_frames_without_a_known_duration(tmp_path, monkeypatch):
  path = write_clip(str(tmp_path / 'ramp.mp4'))
  monkeypatch.setattr(media, '_video_duration', lambda container, stream: None)
  _, frames = decode_clip(path, num_frames=4, frame_size=64)
  np.testing.assert_allclose(frames.reshape(4, -1).mean(1), [20, 70, 120, 170], atol=3)


def clip_pixels(images: list[np.ndarray], size: int) -> np.ndarray:
  """transformers' (PIL) CLIPImageProcessor output for uint8 images, as NHWC."""
  processor = transformers.CLIPImageProcessorPil(size={'shortest_edge': size},
                                                 crop_size={'height': size, 'width': size})
  return processor(images=images, return_tensors='np').pixel_values.transpose(0, 2, 3, 1)


def our_pixels(frames: np.ndarray, size: int) -> np.ndarray:
  """The vision encoder's preprocessing of uint8 frames [M, size, size, 3]."""
  cfg = ml_collections.ConfigDict(dict(image_size=size, patch_size=size // 4, width=8, layers=1, heads=1,
                                       mlp=8, act='quick_gelu', num_soft_tokens=1))
  encoder = nnx.eval_shape(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)))
  return np.asarray(encoder.preprocess(frames))


@pytest.mark.parametrize('height, width, size', [(48, 64, 32), (90, 40, 32), (30, 50, 36)])
def test_frame_preprocessing_matches_clip_image_processor(height, width, size):
  images = list(np.random.RandomState(height).randint(0, 256, (2, height, width, 3), np.uint8))
  frames = np.stack([media.resize_and_crop(image, size) for image in images])
  expected = clip_pixels(images, size)
  diff = float(np.max(np.abs(our_pixels(frames, size) - expected)))
  print(f'{height}x{width} -> {size}: max abs difference from CLIPImageProcessor {diff:.3g}')
  assert frames.dtype == np.uint8 and frames.shape == (2, size, size, 3)
  assert diff < CLIP_TOLERANCE


def test_decoded_frames_match_clip_image_processor(tmp_path):
  picture = np.random.RandomState(5).randint(0, 256, (48, 80, 3), np.uint8)
  path = write_clip(str(tmp_path / 'still.mp4'), width=80, height=48, seconds=1.0, frame=lambda i: picture)
  with av.open(path) as container:
    decoded = [frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)]
  assert all(np.array_equal(image, decoded[0]) for image in decoded)
  _, frames = decode_clip(path, num_frames=2, frame_size=32, duration_s=1.0)
  diff = float(np.max(np.abs(our_pixels(frames, 32) - clip_pixels(decoded[:2], 32))))
  print(f'decoded 80x48 mp4 -> 32: max abs difference from CLIPImageProcessor {diff:.3g}')
  assert diff < CLIP_TOLERANCE
