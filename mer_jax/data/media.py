"""Decodes a clip with PyAV: 16 kHz mono int16 audio of a fixed duration and N evenly spaced square frames."""

import os
import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

_local = threading.local()


class MediaError(ValueError):
  """A media file that cannot be used; the message names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason


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


def _square_rgb(frame: av.VideoFrame, size: int) -> np.ndarray:
  """The frame as RGB, resized and centre-cropped to size x size like CLIP's image processor."""
  if not hasattr(_local, 'reformatter'):
    _local.reformatter = VideoReformatter()
  return resize_and_crop(_local.reformatter.reformat(frame, format='rgb24').to_ndarray(), size)


def _video_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
  """The video stream's duration in seconds (from the container's end if the stream has none), or None."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if not container.duration:
    return None
  end = ((container.start_time or 0) + container.duration) / av.time_base
  start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  return end - start


def _decode(path: str, sample_rate: int, num_frames: int, frame_size: int,
            frame_count: int | None) -> tuple[list[np.ndarray], list[np.ndarray], int]:
  """Decodes the audio and the frames shown at the centres of `num_frames` equal segments.

  Segments are in seconds of the stream's duration (from its first frame), or in frame indices
  when `frame_count` is given; with neither known no frames are kept. Returns (audio chunks,
  frames, frames decoded).
  """
  with av.open(path) as container:
    if not container.streams.audio:
      raise MediaError(path, 'no audio track')
    if not container.streams.video:
      raise MediaError(path, 'no video stream')
    audio_stream, video_stream = container.streams.audio[0], container.streams.video[0]
    length = frame_count or _video_duration(container, video_stream)
    targets = (np.arange(num_frames) + 0.5) / num_frames * length if length else np.zeros([0])
    resampler = av.AudioResampler(format='s16', layout='mono', rate=sample_rate)
    audio: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    previous, origin = None, None
    count = 0
    for packet in container.demux(audio_stream, video_stream):
      for frame in packet.decode():
        if packet.stream.type == 'audio':
          audio.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(frame))
          continue
        if origin is None:
          origin = frame.time or 0.0
        position = count if frame_count or frame.time is None else frame.time - origin
        while len(frames) < len(targets) and targets[len(frames)] < position:
          frames.append(_square_rgb(frame if previous is None else previous, frame_size))
        previous = frame
        count += 1
    audio.extend(chunk.to_ndarray().reshape(-1) for chunk in resampler.resample(None))
    while previous is not None and len(frames) < len(targets):
      frames.append(_square_rgb(previous, frame_size))
  return audio, frames, count


def decode_clip(path: str, *, sample_rate: int = 16000, duration_s: float = 2.0, num_frames: int = 4,
                frame_size: int = 48) -> tuple[np.ndarray, np.ndarray]:
  """Audio int16 [sample_rate * duration_s] and frames uint8 [num_frames, frame_size, frame_size, 3].

  The audio is resampled to `sample_rate` mono and cut to its first `duration_s` seconds, or
  zero-padded when shorter (AAC decodes to slightly more than the clip's length). The frames are
  the ones shown at the centres of `num_frames` equal segments of the whole video, resized and
  centre-cropped to a square as CLIP's image processor does (see `resize_and_crop`). Raises
  MediaError (naming the file and the reason) for missing, empty or undecodable files, and files
  without an audio track, a video stream or frames.
  """
  if not os.path.exists(path):
    raise MediaError(path, 'file not found')
  if os.path.getsize(path) == 0:
    raise MediaError(path, 'empty file (0 bytes)')
  try:
    audio, frames, count = _decode(path, sample_rate, num_frames, frame_size, None)
    if count and not frames:
      audio, frames, count = _decode(path, sample_rate, num_frames, frame_size, count)
  except av.FFmpegError as e:
    raise MediaError(path, f'cannot decode: {e.strerror or e}') from e
  if count == 0:
    raise MediaError(path, 'no video frames')
  if not any(len(chunk) for chunk in audio):
    raise MediaError(path, 'no audio samples')
  num_samples = int(round(sample_rate * duration_s))
  samples = np.concatenate(audio)[:num_samples]
  samples = np.pad(samples, (0, num_samples - len(samples)))
  return samples.astype(np.int16), np.stack(frames).astype(np.uint8)
