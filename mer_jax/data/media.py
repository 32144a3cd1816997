"""Decodes a clip with PyAV: 16 kHz mono int16 audio of a fixed duration and N evenly spaced square frames."""

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

CROPS = ('left', 'right')

_local = threading.local()


class MediaError(ValueError):
  """A media file that cannot be used; the message names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class _Window:
  """A span of a file in its streams' seconds (the file's start time included)."""

  start: float
  end: float


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 RGB [H, W, 3] -> [size, size, 3] as transformers' CLIPImageProcessor does it (before rescaling).

  The shortest edge is resized to `size` (the other to int(size * long / short)) with PIL's bicubic
  filter, then the centre size x size is cropped, its offsets rounded down.
  """
  height, width = image.shape[:2]
  short, long = min(height, width), max(height, width)
  new_long = int(size * long / short)
  new_height, new_width = (size, new_long) if height <= width else (new_long, size)
  if (new_height, new_width) != (height, width):
    image = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BICUBIC))
  top, left = (new_height - size) // 2, (new_width - size) // 2
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def _half(image: np.ndarray, crop: str | None) -> np.ndarray:
  """The left or right half of an image [H, W, C] (the whole image for crop=None)."""
  if crop is None:
    return image
  middle = image.shape[1] // 2
  return image[:, :middle] if crop == 'left' else image[:, middle:]


def _square_rgb(frame: av.VideoFrame, size: int, crop: str | None) -> np.ndarray:
  """The frame (or its `crop` half) as RGB, resized and centre-cropped to size x size like CLIP's image processor."""
  if not hasattr(_local, 'reformatter'):
    _local.reformatter = VideoReformatter()
  return resize_and_crop(_half(_local.reformatter.reformat(frame, format='rgb24').to_ndarray(), crop), size)


def _video_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
  """The video stream's duration in seconds (from the container's end if the stream has none), or None."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if not container.duration:
    return None
  end = ((container.start_time or 0) + container.duration) / av.time_base
  start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  return end - start


def _seconds(value: float) -> str:
  """Seconds for a message, to the millisecond (12.0, 6.29)."""
  return repr(round(value, 3))


def _window(path: str, container: av.container.InputContainer, start_s: float | None,
            end_s: float | None) -> _Window | None:
  """The span start_s..end_s (seconds from the file's start; None: its start or end) clipped to the file.

  None when neither is given (the whole file).
  """
  if start_s is None and end_s is None:
    return None
  if not container.duration:
    raise MediaError(path, 'the file has no known duration, so no window can be cut from it')
  duration = container.duration / av.time_base
  start = start_s or 0.0
  end = duration if end_s is None else end_s
  if start < 0 or end <= start:
    raise MediaError(path, f'window {_seconds(start)}-{_seconds(end)} s is empty')
  if start >= duration:
    raise MediaError(path, f'window {_seconds(start)}-{_seconds(end)} s is past the end ({_seconds(duration)} s)')
  origin = (container.start_time or 0) / av.time_base
  return _Window(origin + start, origin + min(end, duration))


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, window: _Window | None) -> None:
  """Moves the demuxer to the last keyframe of `stream` at or before the window's start."""
  if window is not None and window.start > 0:
    container.seek(int(window.start / stream.time_base), stream=stream)


def _time(path: str, frame: av.frame.Frame) -> float:
  """A decoded frame's time in seconds (its decoding time when it has no presentation time); windows need it."""
  if frame.time is not None:
    return frame.time
  if frame.dts is None or not frame.time_base:
    raise MediaError(path, 'frames carry no timestamps, so no window can be cut from the file')
  return float(frame.dts * frame.time_base)


def _read_audio(path: str, sample_rate: int, start_s: float | None, end_s: float | None) -> np.ndarray:
  """int16 mono samples at `sample_rate` of the file's first audio track: all of it, or the window start_s..end_s."""
  with av.open(path) as container:
    if not container.streams.audio:
      raise MediaError(path, 'no audio track')
    stream = container.streams.audio[0]
    window = _window(path, container, start_s, end_s)
    _seek(container, stream, window)
    resampler = av.AudioResampler(format='s16', layout='mono', rate=sample_rate)
    chunks: list[np.ndarray] = []
    first = None
    for frame in container.decode(stream):
      if window is not None:
        if _time(path, frame) >= window.end:
          break
        first = frame.time if first is None else first
      chunks.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(frame))
    chunks.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(None))
  if not any(len(chunk) for chunk in chunks):
    raise MediaError(path, 'no audio samples')
  samples = np.concatenate(chunks)
  if window is None:
    return samples
  skip = max(0, int(round((window.start - first) * sample_rate)))
  return samples[skip:skip + int(round((window.end - window.start) * sample_rate))]


def _decode_frames(path: str, num_frames: int, frame_size: int, start_s: float | None, end_s: float | None,
                   crop: str | None, frame_count: int | None) -> tuple[list[np.ndarray], int] | None:
  """The frames shown at the centres of `num_frames` equal segments of the window or the whole video.

  Segments are in seconds of the window start_s..end_s, or of the stream's duration (from its
  first frame), or in frame indices when `frame_count` is given; with none known no frames are
  kept. Returns (frames, frames decoded), or None when the file has no video stream.
  """
  with av.open(path) as container:
    if not container.streams.video:
      return None
    stream = container.streams.video[0]
    window = _window(path, container, start_s, end_s)
    _seek(container, stream, window)
    if window is not None:
      first, length = window.start, window.end - window.start
    else:
      first, length = 0.0, frame_count or _video_duration(container, stream)
    targets = first + (np.arange(num_frames) + 0.5) / num_frames * length if length else np.zeros([0])
    frames: list[np.ndarray] = []
    previous, origin = None, None
    count = 0
    for frame in container.decode(stream):
      if window is not None:
        position = _time(path, frame)
      else:
        origin = (frame.time or 0.0) if origin is None else origin
        position = count if frame_count or frame.time is None else frame.time - origin
      while len(frames) < len(targets) and targets[len(frames)] < position:
        frames.append(_square_rgb(frame if previous is None else previous, frame_size, crop))
      previous = frame
      count += 1
      if len(targets) and len(frames) == len(targets):
        break
    while previous is not None and len(frames) < len(targets):
      frames.append(_square_rgb(previous, frame_size, crop))
  return frames, count


def _read_frames(path: str, num_frames: int, frame_size: int, start_s: float | None, end_s: float | None,
                 crop: str | None, allow_audio_only: bool) -> np.ndarray | None:
  """uint8 frames [num_frames, frame_size, frame_size, 3] of the file's video (None: it has none, as allowed)."""
  decoded = _decode_frames(path, num_frames, frame_size, start_s, end_s, crop, None)
  if decoded is None:
    if allow_audio_only:
      return None
    raise MediaError(path, 'no video stream')
  frames, count = decoded
  if count and not frames:
    frames, count = _decode_frames(path, num_frames, frame_size, start_s, end_s, crop, count)
  if count == 0:
    raise MediaError(path, 'no video frames')
  return np.stack(frames).astype(np.uint8)


def has_audio(path: str) -> bool:
  """Whether a media file has an audio track."""
  with _decoding(path), av.open(path) as container:
    return bool(container.streams.audio)


def _check_file(path: str) -> None:
  """Refuses a missing or empty file."""
  if not os.path.exists(path):
    raise MediaError(path, 'file not found')
  if os.path.getsize(path) == 0:
    raise MediaError(path, 'empty file (0 bytes)')


@contextlib.contextmanager
def _decoding(path: str) -> Iterator[None]:
  """Turns PyAV's decoding errors inside the block into a MediaError naming `path`."""
  try:
    yield
  except av.FFmpegError as e:
    raise MediaError(path, f'cannot decode: {e.strerror or e}') from e


def decode_clip(path: str, *, sample_rate: int = 16000, duration_s: float = 2.0, num_frames: int = 4,
                frame_size: int = 48, audio_path: str | None = None, start_s: float | None = None,
                end_s: float | None = None, crop: str | None = None,
                allow_audio_only: bool = False, allow_video_only: bool = False
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Audio int16 [sample_rate * duration_s] and frames uint8 [num_frames, frame_size, frame_size, 3] (or None).

  The audio comes from `path`, or from `audio_path` when given (then `path` needs no audio
  track). It is resampled to `sample_rate` mono and cut to its first `duration_s` seconds, or
  zero-padded when shorter (AAC decodes to slightly more than the clip's length). With
  `start_s`/`end_s` (seconds from the file's start; either may be None for the file's start or
  end) only that window of `path` is decoded: its frames, and its audio unless the audio comes
  from `audio_path` (which is taken whole). The frames are the ones shown at the centres of
  `num_frames` equal segments of the window or of the whole video; `crop` ('left' or 'right')
  keeps that half of each frame, which is then resized and centre-cropped to a square as CLIP's
  image processor does (see `resize_and_crop`). A file without a video stream gives frames=None
  when `allow_audio_only`; one without an audio track gives audio=None when `allow_video_only`. Raises MediaError (naming the file and the reason) for missing, empty
  or undecodable files, files without an audio track, a video stream or frames, and windows
  that are empty or past the file's end.
  """
  if crop is not None and crop not in CROPS:
    raise ValueError(f'crop must be one of {CROPS} or None, not {crop!r}')
  for file in (path, audio_path):
    if file is not None:
      _check_file(file)
  with _decoding(audio_path or path):
    if audio_path is None:
      audio = None if allow_video_only and not has_audio(path) else _read_audio(path, sample_rate, start_s, end_s)
    else:
      audio = _read_audio(audio_path, sample_rate, None, None)
  with _decoding(path):
    frames = _read_frames(path, num_frames, frame_size, start_s, end_s, crop, allow_audio_only)
  if audio is None:
    return None, frames
  num_samples = int(round(sample_rate * duration_s))
  samples = np.pad(audio[:num_samples], (0, max(0, num_samples - len(audio))))
  return samples.astype(np.int16), frames
