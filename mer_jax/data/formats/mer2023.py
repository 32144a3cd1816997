"""Reads the MER2023 layout: <split>-label.csv (name,discrete,valence[,reason]), transcription.csv, reason.csv, video/.

A clip's reason (an EMER/MERR-style description of its emotional cues) comes from an optional
`reason` column of its label CSV or from an optional reason.csv (name,reason) beside the label
files; a clip may have it in one place, not both. Clips without one get an empty reason.
"""

import csv
import glob
import logging
import math
import os

from mer_jax.data.formats import ClipRecord

LABELS = ('neutral', 'angry', 'happy', 'sad', 'worried', 'surprise')
LABEL_COLUMNS = ('name', 'discrete', 'valence')
TRANSCRIPT_COLUMNS = ('name', 'sentence')
REASON_FILE = 'reason.csv'
REASON_COLUMNS = ('name', 'reason')
VIDEO_EXTENSIONS = ('mp4', 'avi', 'mkv', 'mov')
LABEL_SUFFIX = '-label.csv'

logger = logging.getLogger(__name__)


def read_csv(path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
  """(line number, row) pairs of a CSV with stripped cells; a missing required column raises ValueError."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
      raise ValueError(f'{path}: missing required column(s) {missing}; columns found: {columns}')
    reader.fieldnames = columns
    return [(reader.line_num, {k: (v or '').strip() for k, v in row.items() if k is not None})
            for row in reader]


def _parse_label_csv(path: str) -> list[tuple[str, str, float, str]]:
  """(name, label, valence, reason) rows of one label CSV, validated; reason is '' without a reason column."""
  rows, seen = [], set()
  for line, row in read_csv(path, LABEL_COLUMNS):
    name, label = row['name'], row['discrete'].lower()
    if not name:
      raise ValueError(f'{path}, line {line}: empty name')
    if name in seen:
      raise ValueError(f'{path}, line {line}: duplicate name {name!r}')
    if label not in LABELS:
      raise ValueError(
          f'{path}, line {line}: unknown label {row["discrete"]!r}; valid labels: {list(LABELS)}')
    try:
      valence = float(row['valence'])
    except ValueError:
      valence = math.nan
    if not math.isfinite(valence):
      raise ValueError(f'{path}, line {line}: valence {row["valence"]!r} is not a finite number')
    seen.add(name)
    rows.append((name, label, valence, row.get('reason', '')))
  return rows


def _sentences(raw_dir: str) -> dict[str, str]:
  """name -> transcript sentence from transcription.csv; empty (with a warning) when the file is missing."""
  path = os.path.join(raw_dir, 'transcription.csv')
  if not os.path.exists(path):
    logger.warning('%s not found: all transcripts will be empty', path)
    return {}
  return {row['name']: row['sentence'] for _, row in read_csv(path, TRANSCRIPT_COLUMNS)}


def _reasons(raw_dir: str, label_reasons: dict[str, str]) -> dict[str, str]:
  """name -> reason from reason.csv ({} without the file); each name must be labelled and have no reason column value."""
  path = os.path.join(raw_dir, REASON_FILE)
  if not os.path.exists(path):
    return {}
  reasons: dict[str, str] = {}
  for line, row in read_csv(path, REASON_COLUMNS):
    name = row['name']
    if name not in label_reasons:
      raise ValueError(f'{path}, line {line}: name {name!r} is in no *{LABEL_SUFFIX} file')
    if name in reasons:
      raise ValueError(f'{path}, line {line}: duplicate name {name!r}')
    if label_reasons[name] and row['reason']:
      raise ValueError(f"{path}, line {line}: {name!r} also has a reason in its label CSV's reason column")
    reasons[name] = row['reason']
  return reasons


def _media_path(raw_dir: str, name: str) -> str:
  """video/<name>.<ext> for the first extension that exists, else the .mp4 path (reported missing later)."""
  for ext in VIDEO_EXTENSIONS:
    path = os.path.join(raw_dir, 'video', f'{name}.{ext}')
    if os.path.exists(path):
      return path
  return os.path.join(raw_dir, 'video', f'{name}.{VIDEO_EXTENSIONS[0]}')


def read_records(raw_dir: str) -> list[ClipRecord]:
  """All labelled clips of a MER2023-layout directory, sorted by (split, name); every CSV is checked first."""
  raw_dir = os.path.abspath(raw_dir)
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f'raw dataset directory {raw_dir} does not exist')
  label_files = sorted(glob.glob(os.path.join(glob.escape(raw_dir), '*' + LABEL_SUFFIX)))
  if not label_files:
    raise ValueError(f'no *{LABEL_SUFFIX} files in {raw_dir}: is it in the MER2023 layout?')
  splits = {os.path.basename(p)[:-len(LABEL_SUFFIX)]: _parse_label_csv(p) for p in label_files}
  sentences = _sentences(raw_dir)
  label_reasons = {row[0]: row[3] for rows in splits.values() for row in rows}
  reasons = _reasons(raw_dir, label_reasons)
  records = []
  without_sentence = 0
  for split, rows in sorted(splits.items()):
    for name, label, valence, reason in sorted(rows):
      if sentences and name not in sentences:
        without_sentence += 1
      records.append(ClipRecord(split=split, name=name, media_path=_media_path(raw_dir, name),
                                sentence=sentences.get(name, ''), label=label, valence=valence,
                                reason=reason or reasons.get(name, '')))
  if without_sentence:
    logger.warning('%d clips have no row in transcription.csv: their transcripts are empty', without_sentence)
  return records
