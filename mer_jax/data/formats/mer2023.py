"""Reads the MER2023 layout: <split>-label.csv (name,discrete[,valence][,reason]), transcription.csv, reason.csv, clips.

The release keeps each split's clips in a folder named after it (`train/`, `test1/`, `test3/`);
copies and the synthetic demo keep them all in `video/`. Files are found by name anywhere under
the raw directory, the split's folder first. A label file without a valence column (MER2023's
`test3-label.csv`) or an empty valence cell records the valence as missing. A clip's reason (an
EMER/MERR-style description of its emotional cues) comes from an optional `reason` column of
its label CSV or from an optional reason.csv (name,reason); a clip may have it in one place, not
both.
"""

import logging
import os

from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions
from mer_jax.data.formats.common import (FileIndex, FormatError, check_label, check_unique, parse_valence,
                                         read_csv)

LABELS = ('neutral', 'angry', 'happy', 'sad', 'worried', 'surprise')
LABEL_COLUMNS = ('name', 'discrete')
TRANSCRIPT_FILE = 'transcription.csv'
TRANSCRIPT_COLUMNS = ('name', 'sentence')
REASON_FILE = 'reason.csv'
REASON_COLUMNS = ('name', 'reason')
LABEL_SUFFIX = '-label.csv'

logger = logging.getLogger(__name__)


def _parse_label_csv(path: str) -> list[tuple[str, str, float | None, str]]:
  """(name, label, valence, reason) rows of one label CSV, validated; reason is '' without a reason column."""
  rows, seen = [], set()
  for line, row in read_csv(path, LABEL_COLUMNS):
    check_unique(row['name'], seen, path, line)
    label = check_label(row['discrete'], LABELS, path, line)
    rows.append((row['name'], label, parse_valence(row.get('valence', ''), path, line), row.get('reason', '')))
  return rows


def _sentences(files: FileIndex) -> dict[str, str]:
  """name -> transcript sentence from transcription.csv; empty (with a warning) when the file is missing."""
  if not files.files(TRANSCRIPT_FILE):
    logger.warning('%s not found under %s: all transcripts will be empty', TRANSCRIPT_FILE, files.root)
    return {}
  path = files.file(TRANSCRIPT_FILE, 'MER2023')
  return {row['name']: row['sentence'] for _, row in read_csv(path, TRANSCRIPT_COLUMNS)}


def _reasons(files: FileIndex, label_reasons: dict[str, str]) -> dict[str, str]:
  """name -> reason from reason.csv ({} without the file); each name must be labelled and have no reason column value."""
  if not files.files(REASON_FILE):
    return {}
  path = files.file(REASON_FILE, 'MER2023')
  reasons: dict[str, str] = {}
  for line, row in read_csv(path, REASON_COLUMNS):
    name = row['name']
    if name not in label_reasons:
      raise FormatError(f'{path}, line {line}: name {name!r} is in no *{LABEL_SUFFIX} file')
    if name in reasons:
      raise FormatError(f'{path}, line {line}: duplicate name {name!r}')
    if label_reasons[name] and row['reason']:
      raise FormatError(f"{path}, line {line}: {name!r} also has a reason in its label CSV's reason column")
    reasons[name] = row['reason']
  return reasons


def _label_files(files: FileIndex) -> dict[str, str]:
  """split -> its label CSV, for every *-label.csv under the raw directory (one per split)."""
  found: dict[str, str] = {}
  for name in sorted(files.by_name):
    if name.endswith(LABEL_SUFFIX):
      found[name[:-len(LABEL_SUFFIX)]] = files.file(name, 'MER2023')
  if not found:
    raise FormatError(f'no *{LABEL_SUFFIX} files under {files.root}: is it a MER2023 dataset (check --format)?')
  return found


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """All labelled clips of a MER2023-layout directory, sorted by (split, name); every CSV is checked first."""
  raw_dir = os.path.abspath(raw_dir)
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f'raw dataset directory {raw_dir} does not exist')
  files = FileIndex(raw_dir)
  splits = {split: _parse_label_csv(path) for split, path in _label_files(files).items()}
  sentences = _sentences(files)
  label_reasons = {row[0]: row[3] for rows in splits.values() for row in rows}
  reasons = _reasons(files, label_reasons)
  records = []
  without_sentence = 0
  for split, rows in sorted(splits.items()):
    for name, label, valence, reason in sorted(rows):
      if sentences and name not in sentences:
        without_sentence += 1
      records.append(ClipRecord(split=split, name=name, media_path=files.media(name, (split, 'video')),
                                sentence=sentences.get(name, ''), label=label, valence=valence,
                                reason=reason or reasons.get(name, '')))
  if without_sentence:
    logger.warning('%d clips have no row in %s: their transcripts are empty', without_sentence, TRANSCRIPT_FILE)
  return RawDataset(labels=LABELS, records=records)
