"""TFDS builders of prepared datasets: one GeneratorBasedBuilder per raw layout, writing array_record files."""

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from mer_jax.data.formats import FORMATS, ClipRecord, RawDataset, ReaderOptions, get_reader
from mer_jax.data.formats.common import FormatError
from mer_jax.data.media import MediaError, decode_clip

VERSION = '2.0.0'
SKIP_SUFFIX = '.skip'
AUDIO_ONLY_EXTENSIONS = ('.wav', '.flac', '.mp3', '.m4a', '.ogg', '.opus')

logger = logging.getLogger(__name__)


def decode_settings(num_frames: int, frame_size: int, duration_s: float, sample_rate: int) -> dict[str, Any]:
  """The decoding settings every clip of a prepared dataset shares."""
  return {'sample_rate': sample_rate, 'duration_s': duration_s, 'num_frames': num_frames, 'frame_size': frame_size}


def _decode_arguments(clip: ClipRecord) -> dict[str, Any]:
  """decode_clip's per-clip keyword arguments: only those the clip sets."""
  arguments: dict[str, Any] = {'audio_path': clip.audio_path or None, 'start_s': clip.start_s,
                               'end_s': clip.end_s, 'crop': clip.crop or None}
  if clip.media_path.lower().endswith(AUDIO_ONLY_EXTENSIONS):
    arguments['allow_audio_only'] = True
  return {k: v for k, v in arguments.items() if v is not None}


def _decode(job: tuple[ClipRecord, dict, str]) -> None:
  """Decodes one clip into its cache file (arrays), or writes why it cannot be used beside it (.skip)."""
  clip, settings, cache_path = job
  try:
    if not clip.media_path:
      raise MediaError(clip.name, 'clip not found')
    audio, frames = decode_clip(clip.media_path, **_decode_arguments(clip), **settings)
  except MediaError as e:
    with open(cache_path + SKIP_SUFFIX + '.partial', 'w') as f:
      f.write(e.reason if e.path in (clip.media_path, clip.name) else f'{e.path}: {e.reason}')
    os.replace(cache_path + SKIP_SUFFIX + '.partial', cache_path + SKIP_SUFFIX)
    return
  has_video = frames is not None
  if frames is None:
    size = settings['frame_size']
    frames = np.zeros([settings['num_frames'], size, size, 3], np.uint8)
  partial = cache_path + '.partial.npz'
  np.savez(partial, audio=audio, frames=frames, has_video=has_video)
  os.replace(partial, cache_path)


def _file_stamp(path: str) -> list:
  """(path, size, mtime) of a file, so that a changed file is decoded again; [path] when absent."""
  try:
    stat = os.stat(path)
  except OSError:
    return [path]
  return [path, stat.st_size, stat.st_mtime_ns]


def cache_key(clip: ClipRecord, settings: dict) -> str:
  """A name for a clip's decoded arrays that changes whenever its files, window, crop or settings do."""
  key = [_file_stamp(clip.media_path), _file_stamp(clip.audio_path) if clip.audio_path else None,
         clip.start_s, clip.end_s, clip.crop, settings]
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


class DecodeCache:
  """Decoded clips kept as .npz files, so that an interrupted prepare resumes without decoding them again."""

  def __init__(self, directory: str, settings: dict):
    self.directory, self.settings = directory, settings
    os.makedirs(directory, exist_ok=True)

  def path(self, clip: ClipRecord) -> str:
    """The cache file of a clip."""
    return os.path.join(self.directory, cache_key(clip, self.settings) + '.npz')

  def _done(self, clip: ClipRecord) -> bool:
    """Whether a clip was decoded, or found unusable, by an earlier call."""
    path = self.path(clip)
    return os.path.exists(path) or os.path.exists(path + SKIP_SUFFIX)

  def fill(self, clips: list[ClipRecord], workers: int, desc: str) -> dict[str, str]:
    """Decodes every clip not cached yet (in `workers` processes); returns 'split/name' -> reason for unusable ones."""
    jobs = [(clip, self.settings, self.path(clip)) for clip in clips if not self._done(clip)]
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'))
            if workers > 1 and len(jobs) > 1 else None)
    try:
      results = pool.map(_decode, jobs, chunksize=4) if pool else map(_decode, jobs)
      for _ in tqdm(results, total=len(clips), initial=len(clips) - len(jobs), desc=desc, unit='clip'):
        pass
    finally:
      if pool:
        pool.shutdown(cancel_futures=True)
    failures: dict[str, str] = {}
    for clip in clips:
      skip_file = self.path(clip) + SKIP_SUFFIX
      if os.path.exists(skip_file):
        with open(skip_file) as f:
          failures[clip.split + '/' + clip.name] = f.read()
        logger.info('skipping %s: %s', clip.media_path or clip.name, failures[clip.split + '/' + clip.name])
    return failures

  def load(self, clip: ClipRecord) -> dict[str, np.ndarray]:
    """A cached clip's audio, frames and has_video."""
    with np.load(self.path(clip)) as arrays:
      return {key: arrays[key] for key in arrays.files}


def features(settings: dict) -> tfds.features.FeaturesDict:
  """The features of every prepared example (text fields are UTF-8; valence is NaN when missing)."""
  size, samples = settings['frame_size'], int(round(settings['sample_rate'] * settings['duration_s']))
  raw_bytes = tfds.features.Encoding.BYTES
  return tfds.features.FeaturesDict({
      'name': tfds.features.Text(),
      'label': tfds.features.Text(doc="One of the dataset's labels; '' for an unlabelled clip."),
      'openset': tfds.features.Sequence(tfds.features.Text(), doc='Open-vocabulary emotion words.'),
      'sentiment': tfds.features.Text(),
      'valence': tfds.features.Scalar(np.float32, doc='NaN when the dataset gives none.'),
      'sentence': tfds.features.Text(doc='The transcript.'),
      'reason': tfds.features.Text(doc="A description of the clip's emotional cues."),
      'has_video': tfds.features.Scalar(np.bool_, doc='False for audio-only clips (frames are zeros).'),
      'audio': tfds.features.Tensor(shape=(samples,), dtype=np.int16, encoding=raw_bytes),
      'frames': tfds.features.Tensor(shape=(settings['num_frames'], size, size, 3), dtype=np.uint8,
                                     encoding=raw_bytes),
  })


def example(clip: ClipRecord, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """The TFDS example of a decoded clip."""
  return {
      'name': clip.name, 'label': clip.label, 'openset': list(clip.openset), 'sentiment': clip.sentiment,
      'valence': np.nan if clip.valence is None else clip.valence, 'sentence': clip.sentence,
      'reason': clip.reason, 'has_video': bool(arrays['has_video']), 'audio': arrays['audio'],
      'frames': arrays['frames'],
  }


class PreparedDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A raw dataset of one layout (the manual dir), decoded into fixed-shape audio and frames."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {'2.0.0': 'TFDS builder: openset, sentiment, has_video, missing valence as NaN.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass the raw dataset (or the manifest file) as the manual dir (--raw).'
  FORMAT = ''

  def __init__(self, *, settings: dict, reader_options: ReaderOptions = ReaderOptions(), cache_dir: str = '',
               workers: int = 2, **kwargs):
    self.settings, self.reader_options, self.workers = settings, reader_options, workers
    self.cache_dir = cache_dir
    self.raw: RawDataset | None = None
    self.raw_path = ''
    self.failures: dict[str, str] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=f'{self.FORMAT} clips prepared by mer-jax',
                                 features=features(self.settings), disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(settings=self.settings))

  def read_raw(self, raw_dir: str) -> RawDataset:
    """The reader's records (every label file checked before any decoding), kept for the summary.

    `raw_dir` is a folder, or a file for the manifest format; prepare reads it before building.
    """
    if self.raw is None:
      self.raw = get_reader(self.FORMAT).read(raw_dir, self.reader_options)
      self.raw_path = os.path.abspath(raw_dir)
    return self.raw

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    raw = self.raw if self.raw is not None else self.read_raw(os.fspath(dl_manager.manual_dir))
    raw_dir = self.raw_path
    clips = sorted(raw.records, key=lambda c: (c.split, c.name))
    cache = DecodeCache(self.cache_dir or os.path.join(self.data_dir, 'decoded'), self.settings)
    self.failures = cache.fill(clips, self.workers, f'prepare {self.FORMAT}')
    if not clips:
      raise FormatError(f'no clips listed in {raw_dir}')
    kept: dict[str, list[ClipRecord]] = {}
    for clip in clips:
      kept.setdefault(clip.split, [])
      if clip.split + '/' + clip.name not in self.failures:
        kept[clip.split].append(clip)
    empty = [split for split, split_clips in kept.items() if not split_clips]
    if empty:
      raise FormatError(f'split(s) {empty} of {raw_dir} have no usable clip: every clip was '
                        f'skipped; first reasons: {list(self.failures.items())[:5]}')
    return {split: self._generate_examples(split_clips, cache) for split, split_clips in kept.items()}

  def _log_download_bytes(self) -> None:
    """Silent: prepare shows its own progress bar and summary."""

  def _log_download_done(self) -> None:
    """Silent: prepare shows its own progress bar and summary."""

  def _generate_examples(self, clips: list[ClipRecord], cache: DecodeCache) -> Iterator[tuple[str, dict]]:
    for index, clip in enumerate(clips):
      yield f'{index:09d}', example(clip, cache.load(clip))


def _builder_class(fmt: str) -> type[PreparedDataset]:
  """The registered builder class of one format (TFDS name `mer_jax_<fmt>`)."""
  name = ''.join(part.capitalize() for part in f'mer_jax_{fmt}'.split('_'))
  return type(name, (PreparedDataset,), {'FORMAT': fmt, '__doc__': f'The {fmt} layout, prepared by mer-jax.',
                                          '__module__': __name__})


# Not registered by name: `tfds.data_source(name, data_dir=...)` then reads what prepare wrote from its files.
with tfds.core.registered.skip_registration():
  BUILDERS: dict[str, type[PreparedDataset]] = {fmt: _builder_class(fmt) for fmt in FORMATS}


def builder_for(fmt: str, **kwargs) -> PreparedDataset:
  """A builder of format `fmt` (unknown formats list the known ones)."""
  get_reader(fmt)
  return BUILDERS[fmt](**kwargs)
