"""Turns a raw dataset into a TFDS dataset (array_record files), dataset_info.json and tokenizer.json.

OUT/dataset_info.json is the summary users and tools read (labels, counts per split, skipped
clips with reasons, prepare settings); OUT/tfds/<name>/<version>/ is the TFDS dataset, which
`tfds.builder_from_directory` and `tfds.data_source` open (split slicing such as `train[:10%]`
included). Decoded clips are cached beside OUT until prepare finishes, so that an interrupted
run, started again, does not decode them twice.
"""

import json
import math
import os
import shutil
import tempfile

import tensorflow_datasets as tfds

from mer_jax.data import builder, chat
from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions, check_options

INFO_FILE = 'dataset_info.json'
TOKENIZER_FILE = chat.TOKENIZER_FILE
TFDS_DIR = 'tfds'
INFO_VERSION = 2


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


def _write_tokenizer(out_dir: str, tokenizer_path: str | None, clips: list[ClipRecord],
                     labels: tuple[str, ...]) -> None:
  """Copies the given tokenizer.json (with the special tokens and chat template beside it), or trains one."""
  if tokenizer_path:
    chat.copy_tokenizer(tokenizer_path, out_dir)
    return
  from mer_jax.data.text import build_tokenizer
  sentences = [clip.sentence for clip in clips if clip.sentence]
  build_tokenizer(sentences + list(labels), os.path.join(out_dir, TOKENIZER_FILE))


def _split_summary(clips: list[ClipRecord], labels: tuple[str, ...], skipped: list[dict[str, str]]) -> dict:
  """A split's entry of dataset_info.json: counts, label counts, valence mean over clips that have one."""
  valences = [clip.valence for clip in clips if clip.valence is not None]
  label_counts = {label: 0 for label in labels}
  for clip in clips:
    if clip.label:
      label_counts[clip.label] += 1
  return {
      'count': len(clips),
      'labelled': sum(bool(clip.label) for clip in clips),
      'label_counts': label_counts,
      'valence_mean': math.fsum(valences) / len(valences) if valences else None,
      'with_valence': len(valences),
      'with_reason': sum(bool(clip.reason) for clip in clips),
      'with_openset': sum(bool(clip.openset) for clip in clips),
      'skipped': skipped,
  }


def summarize(raw: RawDataset, failures: dict[str, str]) -> dict[str, dict]:
  """Per split: the summary of the clips kept, and every clip skipped (by the reader or the decoder) with why."""
  splits: dict[str, tuple[list, list]] = {}
  for clip in sorted(raw.records, key=lambda c: (c.split, c.name)):
    kept, skipped = splits.setdefault(clip.split, ([], []))
    reason = failures.get(clip.split + '/' + clip.name)
    if reason is None:
      kept.append(clip)
    else:
      skipped.append({'name': clip.name, 'file': clip.media_path, 'reason': reason})
  for dropped in raw.dropped:
    splits.setdefault(dropped['split'], ([], []))[1].append(
        {k: dropped[k] for k in ('name', 'file', 'reason')})
  return {split: _split_summary(kept, raw.labels, skipped) for split, (kept, skipped) in sorted(splits.items())}


def prepare_dataset(fmt: str, raw_dir: str, out_dir: str, *, num_frames: int = 4, frame_size: int = 48,
                    duration_s: float = 2.0, sample_rate: int = 16000, tokenizer_path: str | None = None,
                    options: ReaderOptions = ReaderOptions(), workers: int = 2) -> dict:
  """Decodes a raw dataset into `out_dir` (TFDS dataset, info, tokenizer); returns the info.

  Every label file is read and checked before any clip is decoded. Work is kept in a hidden
  folder beside `out_dir` until the dataset is complete, so a failed or interrupted run leaves
  an earlier `out_dir` as it was and resumes from the clips it had decoded.
  """
  raw_dir, out_dir = os.path.abspath(raw_dir), os.path.abspath(out_dir)
  if not os.path.exists(raw_dir):
    raise FileNotFoundError(f'raw dataset {raw_dir} does not exist')
  if tokenizer_path and not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f'tokenizer file {tokenizer_path} not found')
  _check_destination(out_dir)
  tfds.disable_progress_bar()
  check_options(fmt, options)
  settings = builder.decode_settings(num_frames, frame_size, duration_s, sample_rate)
  parent, base = os.path.split(out_dir)
  work_dir = os.path.join(parent, f'.{base}.partial')
  os.makedirs(work_dir, exist_ok=True)
  build_dir = tempfile.mkdtemp(prefix='build-', dir=work_dir)
  try:
    dataset_builder = builder.builder_for(fmt, settings=settings, reader_options=options, workers=workers,
                                          cache_dir=os.path.join(work_dir, 'decoded'),
                                          data_dir=os.path.join(build_dir, TFDS_DIR), file_format='array_record')
    raw = dataset_builder.read_raw(raw_dir)
    manual_dir = raw_dir if os.path.isdir(raw_dir) else os.path.dirname(raw_dir)
    dataset_builder.download_and_prepare(download_dir=os.path.join(build_dir, 'downloads'),
                                         download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    shutil.rmtree(os.path.join(build_dir, 'downloads'), ignore_errors=True)
    _write_tokenizer(build_dir, tokenizer_path, raw.records, raw.labels)
    info = {
        'version': INFO_VERSION,
        'format': fmt,
        'source': raw_dir,
        'tfds': os.path.relpath(dataset_builder.data_dir, build_dir),
        'labels': list(raw.labels),
        'audio': {'sample_rate': sample_rate, 'num_samples': int(round(sample_rate * duration_s)),
                  'dtype': 'int16'},
        'frames': {'num_frames': num_frames, 'size': frame_size, 'dtype': 'uint8'},
        'duration_s': duration_s,
        'splits': summarize(raw, dataset_builder.failures),
        'tokenizer': TOKENIZER_FILE,
        'options': {**settings, 'workers': workers, 'label_map': options.label_map, 'language': options.language,
                    'tokenizer_path': os.path.abspath(tokenizer_path) if tokenizer_path else None},
    }
    with open(os.path.join(build_dir, INFO_FILE), 'w') as f:
      json.dump(info, f, indent=2, ensure_ascii=False)
    _replace_dir(build_dir, out_dir)
  except BaseException:
    shutil.rmtree(build_dir, ignore_errors=True)
    raise
  shutil.rmtree(work_dir, ignore_errors=True)
  return info


def tfds_dir(data_dir: str, info: dict) -> str:
  """The TFDS dataset directory of a prepared dataset (refuses datasets prepared before TFDS)."""
  if info.get('version', 1) < INFO_VERSION or 'tfds' not in info:
    raise ValueError(f'{data_dir} was prepared by an older mer-jax: run `mer-jax prepare` again')
  return os.path.join(os.path.abspath(data_dir), info['tfds'])
