"""Turns a raw dataset into ArrayRecord shards, dataset_info.json and tokenizer.json (written atomically)."""

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm import tqdm

from mer_jax.data import chat, records
from mer_jax.data.formats import ClipRecord, get_reader
from mer_jax.data.media import MediaError, decode_clip

INFO_FILE = 'dataset_info.json'
TOKENIZER_FILE = chat.TOKENIZER_FILE
WRITER_OPTIONS = 'group_size:1'

# A decoded clip (audio, frames), or the reason its media cannot be used.
Decoded = tuple[np.ndarray, np.ndarray] | str

logger = logging.getLogger(__name__)


def _decode(job: tuple[str, dict]) -> Decoded:
  """Decoded (audio, frames) of one clip, or the reason it cannot be used."""
  path, options = job
  try:
    return decode_clip(path, **options)
  except MediaError as e:
    return e.reason


def _decoded(clips: list[ClipRecord], options: dict, workers: int) -> Iterator[Decoded]:
  """`_decode` results in clip order, computed by `workers` processes (1: in this process)."""
  jobs = [(clip.media_path, options) for clip in clips]
  if workers <= 1:
    yield from map(_decode, jobs)
    return
  pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'))
  try:
    yield from pool.map(_decode, jobs, chunksize=4)
  finally:
    pool.shutdown(cancel_futures=True)


class _SplitWriter:
  """Writes one split's records to shards of at most `per_shard` records, then names them -of-N."""

  def __init__(self, out_dir: str, split: str, labels: tuple[str, ...], per_shard: int):
    self.out_dir, self.split, self.per_shard = out_dir, split, per_shard
    self.paths: list[str] = []
    self.writer: ArrayRecordWriter | None = None
    self.count = 0
    self.label_counts = {label: 0 for label in labels}
    self.valence_sum = 0.0
    self.with_reason = 0
    self.skipped: list[dict[str, str]] = []

  def write(self, clip: ClipRecord, audio: np.ndarray, frames: np.ndarray) -> None:
    """Appends one example, opening a new shard when the current one is full."""
    if self.count % self.per_shard == 0:
      self._close_shard()
      self.paths.append(os.path.join(self.out_dir, f'{self.split}-{len(self.paths):05d}.partial'))
      self.writer = ArrayRecordWriter(self.paths[-1], WRITER_OPTIONS)
    self.writer.write(records.encode({
        'name': clip.name, 'label': clip.label, 'valence': clip.valence, 'sentence': clip.sentence,
        'reason': clip.reason, 'audio': audio, 'frames': frames}))
    self.count += 1
    self.label_counts[clip.label] += 1
    self.valence_sum += clip.valence
    self.with_reason += bool(clip.reason)

  def skip(self, clip: ClipRecord, reason: str) -> None:
    """Records a clip whose media cannot be used."""
    logger.warning('skipping %s: %s', clip.media_path, reason)
    self.skipped.append({'name': clip.name, 'file': clip.media_path, 'reason': reason})

  def _close_shard(self) -> None:
    """Closes the open shard, if any."""
    if self.writer is not None:
      self.writer.close()
      self.writer = None

  def finish(self) -> dict:
    """Closes and renames the shards; returns the split's entry of dataset_info.json."""
    self._close_shard()
    files = []
    for i, path in enumerate(self.paths):
      files.append(f'{self.split}-{i:05d}-of-{len(self.paths):05d}.array_record')
      os.rename(path, os.path.join(self.out_dir, files[-1]))
    return {
        'count': self.count,
        'files': files,
        'label_counts': self.label_counts,
        'valence_mean': self.valence_sum / self.count if self.count else None,
        'with_reason': self.with_reason,
        'skipped': self.skipped,
    }


def _check_destination(out_dir: str) -> None:
  """Refuses to replace anything but a missing or empty directory or an earlier prepared dataset."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f'{out_dir} exists and is not a directory')
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, INFO_FILE)):
    raise FileExistsError(f'{out_dir} is not empty and holds no {INFO_FILE}; refusing to replace it')


def _replace_dir(new_dir: str, out_dir: str) -> None:
  """Moves `new_dir` to `out_dir`, replacing an existing `out_dir`."""
  if not os.path.exists(out_dir):
    os.rename(new_dir, out_dir)
    return
  old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.old-', dir=os.path.dirname(out_dir))
  os.rename(out_dir, os.path.join(old, 'data'))
  os.rename(new_dir, out_dir)
  shutil.rmtree(old)


def _write_tokenizer(path: str, tokenizer_path: str | None, clips: list[ClipRecord],
                     labels: tuple[str, ...]) -> None:
  """Copies the given tokenizer.json (with the special tokens and chat template beside it), or trains one."""
  if tokenizer_path:
    chat.copy_tokenizer(tokenizer_path, os.path.dirname(path))
    return
  from mer_jax.data.text import build_tokenizer
  build_tokenizer([clip.sentence for clip in clips if clip.sentence] + list(labels), path)


def prepare_dataset(fmt: str, raw_dir: str, out_dir: str, *, num_frames: int = 4, frame_size: int = 48,
                    duration_s: float = 2.0, sample_rate: int = 16000, tokenizer_path: str | None = None,
                    records_per_shard: int = 500, workers: int = 2) -> dict:
  """Decodes a raw dataset into `out_dir` (shards per split, info, tokenizer); returns the info."""
  reader = get_reader(fmt)
  raw_dir, out_dir = os.path.abspath(raw_dir), os.path.abspath(out_dir)
  clips = sorted(reader.read_records(raw_dir), key=lambda c: (c.split, c.name))
  if tokenizer_path and not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f'tokenizer file {tokenizer_path} not found')
  if records_per_shard < 1:
    raise ValueError(f'records_per_shard must be >= 1, got {records_per_shard}')
  _check_destination(out_dir)
  parent, base = os.path.split(out_dir)
  os.makedirs(parent, exist_ok=True)
  work_dir = os.path.join(parent, f'.{base}.partial-{uuid.uuid4().hex[:8]}')
  os.mkdir(work_dir)
  options = {'sample_rate': sample_rate, 'duration_s': duration_s, 'num_frames': num_frames,
             'frame_size': frame_size}
  try:
    writers = {split: _SplitWriter(work_dir, split, reader.LABELS, records_per_shard)
               for split in sorted({clip.split for clip in clips})}
    with contextlib.closing(_decoded(clips, options, workers)) as results:
      for clip, result in tqdm(zip(clips, results), total=len(clips), desc=f'prepare {fmt}', unit='clip'):
        if isinstance(result, str):
          writers[clip.split].skip(clip, result)
        else:
          writers[clip.split].write(clip, *result)
    _write_tokenizer(os.path.join(work_dir, TOKENIZER_FILE), tokenizer_path, clips, reader.LABELS)
    info = {
        'format': fmt,
        'source': raw_dir,
        'labels': list(reader.LABELS),
        'audio': {'sample_rate': sample_rate, 'num_samples': int(round(sample_rate * duration_s)),
                  'dtype': 'int16'},
        'frames': {'num_frames': num_frames, 'size': frame_size, 'dtype': 'uint8'},
        'duration_s': duration_s,
        'splits': {split: writer.finish() for split, writer in writers.items()},
        'tokenizer': TOKENIZER_FILE,
        'options': {**options, 'records_per_shard': records_per_shard, 'workers': workers,
                    'tokenizer_path': os.path.abspath(tokenizer_path) if tokenizer_path else None},
    }
    with open(os.path.join(work_dir, INFO_FILE), 'w') as f:
      json.dump(info, f, indent=2)
    _replace_dir(work_dir, out_dir)
  except BaseException:
    shutil.rmtree(work_dir, ignore_errors=True)
    raise
  return info


def split_files(data_dir: str, split: str) -> list[str]:
  """Absolute paths of a prepared split's ArrayRecord shards, in order."""
  with open(os.path.join(data_dir, INFO_FILE)) as f:
    splits = json.load(f)['splits']
  if split not in splits:
    raise ValueError(f'split {split!r} is not in {data_dir}; known splits: {sorted(splits)}')
  return [os.path.join(os.path.abspath(data_dir), name) for name in splits[split]['files']]


def read_split(data_dir: str, split: str) -> list[bytes]:
  """All serialized records of a prepared split, in order (decode each with records.decode)."""
  out = []
  for path in split_files(data_dir, split):
    reader = ArrayRecordReader(path)
    out.extend(reader.read_all())
    reader.close()
  return out
