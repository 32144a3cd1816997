"""Tests decode_clip's time windows, half-frame crops, separate audio files and audio-only files."""

import os

import av
import numpy as np
import pytest

from mer_jax.data.media import MediaError, decode_clip

FPS = 10
RATE = 16000


def side_by_side(i: int, width: int = 64, height: int = 32) -> np.ndarray:
  """Frame i: the left half red and the right half blue, both at brightness 20 + 5 * i."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:, :width // 2, 0] = 20 + 5 * i
  image[:, width // 2:, 2] = 20 + 5 * i
  return image


def write_media(path: str, *, seconds: float, video: str | None = None, audio: np.ndarray | None = None) -> str:
  """Writes `seconds` of side_by_side frames at 10 fps with codec `video` and/or int16 mono PCM `audio` at 16 kHz."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, 'w') as container:
    stream = container.add_stream(video, rate=FPS) if video else None
    sound = container.add_stream('pcm_s16le', rate=RATE, layout='mono') if audio is not None else None
    if stream is not None:
      stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 64, 32, 'yuv420p', 4_000_000
      for i in range(int(round(FPS * seconds))):
        frame = av.VideoFrame.from_ndarray(side_by_side(i), format='rgb24')
        frame.pts = i
        container.mux(stream.encode(frame))
      container.mux(stream.encode(None))
    if sound is not None:
      samples = av.AudioFrame.from_ndarray(audio.astype(np.int16)[None], format='s16', layout='mono')
      samples.sample_rate, samples.pts = RATE, 0
      container.mux(sound.encode(samples))
      container.mux(sound.encode(None))
  return path


def ramp(seconds: float) -> np.ndarray:
  """Samples whose value is the sample index // 16, so that a sample tells its time (value / 1000 s)."""
  return np.arange(int(RATE * seconds)) // 16


def brightness(frames: np.ndarray, channel: int) -> np.ndarray:
  """The mean of one colour channel of each frame."""
  return frames[..., channel].reshape(len(frames), -1).mean(1)


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, str]:
  """A 3 s mkv (H.264 + PCM ramp), a 3 s video-only avi (MPEG-4), and a 1.5 s wav ramp."""
  root = tmp_path_factory.mktemp('window')
  return {
      'mkv': write_media(str(root / 'both.mkv'), seconds=3.0, video='libx264', audio=ramp(3.0)),
      'avi': write_media(str(root / 'video.avi'), seconds=3.0, video='mpeg4'),
      'wav': write_media(str(root / 'voice.wav'), seconds=1.5, audio=ramp(1.5)),
  }


@pytest.mark.parametrize('start_s, end_s, shown', [
    (1.0, 2.0, [11, 13, 16, 18]),  # frames shown at 1.125, 1.375, 1.625 and 1.875 s
    (2.0, 5.0, [21, 23, 26, 28]),  # the window ends with the file (3 s)
    (2.0, None, [21, 23, 26, 28]),
    (None, 1.0, [1, 3, 6, 8]),
])
def test_window_frames_and_audio(files, start_s, end_s, shown):
  audio, frames = decode_clip(files['mkv'], start_s=start_s, end_s=end_s, num_frames=4, frame_size=16,
                              duration_s=1.0)
  np.testing.assert_allclose(brightness(frames, 0) * 2, 20 + 5 * np.array(shown), atol=6)
  first = int((start_s or 0.0) * 1000)
  np.testing.assert_array_equal(audio, first + np.arange(RATE) // 16)


@pytest.mark.parametrize('crop, red, blue', [('left', 1.0, 0.0), ('right', 0.0, 1.0), (None, 0.5, 0.5)])
def test_crop_keeps_one_half(files, crop, red, blue):
  _, frames = decode_clip(files['avi'], audio_path=files['wav'], start_s=1.0, end_s=2.0, crop=crop, frame_size=16)
  level = 20 + 5 * np.array([11, 13, 16, 18])
  np.testing.assert_allclose(brightness(frames, 0), red * level, atol=8)
  np.testing.assert_allclose(brightness(frames, 2), blue * level, atol=8)
  assert brightness(frames, 1).max() < 8


def test_audio_from_another_file_is_taken_whole(files):
  audio, frames = decode_clip(files['avi'], audio_path=files['wav'], start_s=2.0, end_s=3.0, num_frames=2,
                              frame_size=16, duration_s=2.0)
  np.testing.assert_array_equal(audio[:24000], ramp(1.5))
  assert not audio[24000:].any() and audio.shape == (32000,)
  np.testing.assert_allclose(brightness(frames, 0) * 2, 20 + 5 * np.array([22, 27]), atol=6)


def test_audio_only_files(files):
  audio, frames = decode_clip(files['wav'], allow_audio_only=True, start_s=0.5, end_s=1.0, duration_s=1.0)
  assert frames is None
  np.testing.assert_array_equal(audio[:8000], 500 + np.arange(8000) // 16)
  assert not audio[8000:].any()
  with pytest.raises(MediaError, match='no video stream'):
    decode_clip(files['wav'])


@pytest.mark.parametrize('window, reason', [
    ((12.0, 13.5), 'window 12.0-13.5 s is past the end (3.0 s)'),
    ((2.0, 1.5), 'window 2.0-1.5 s is empty'),
    ((-1.0, 1.0), 'window -1.0-1.0 s is empty'),
])
def test_bad_windows(files, window, reason):
  with pytest.raises(MediaError) as info:
    decode_clip(files['mkv'], start_s=window[0], end_s=window[1])
  assert info.value.path == files['mkv'] and info.value.reason == reason


def test_missing_audio_file_is_named(files, tmp_path):
  wav = str(tmp_path / 'absent.wav')
  with pytest.raises(MediaError, match='file not found') as info:
    decode_clip(files['avi'], audio_path=wav)
  assert info.value.path == wav


def test_video_without_audio_needs_an_audio_file(files):
  with pytest.raises(MediaError, match='no audio track'):
    decode_clip(files['avi'])


def test_unknown_crop(files):
  with pytest.raises(ValueError, match="crop must be one of \\('left', 'right'\\) or None, not 'top'"):
    decode_clip(files['mkv'], crop='top')
