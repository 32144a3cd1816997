"""Reads a user's own clips from one manifest file: manifest.csv or manifest.jsonl, one clip a row.

`--raw` names the manifest file (a folder holding one manifest.csv or manifest.jsonl works too).
A CSV (UTF-8, a BOM and CRLF line ends allowed) has the columns `path,label` and optionally
`transcript,valence,reason,split`. A JSONL file holds one object a line with `path`, `label` (a
string) or `labels` (a list: the first is the class, all of them are the clip's open-vocabulary
words), and optionally `transcript`, `valence` (a number), `reason`, `split`. Paths are relative
to the manifest's folder or absolute; any container PyAV opens will do (a wav row is audio-only).

- Labels: the sorted distinct non-empty classes of the manifest, as written. An empty label
  (or an empty `labels` list) makes the row unlabelled.
- Splits: a row without a split is in 'train'; split names are letters, digits, `_` and `-`.
- Names: the file's stem; files sharing a stem are named by their path relative to the manifest's
  folder (absolute when outside it) without, or if need be with, the extension.
- A file that does not exist gives a record without media (prepare reports it as not found).
"""

import collections
import json
import logging
import os
import re
from typing import Any, NamedTuple

from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions
from mer_jax.data.formats.common import FormatError, check_unique, parse_valence, read_csv, read_text

MANIFEST_NAMES = ('manifest.csv', 'manifest.jsonl')
REQUIRED_COLUMNS = ('path', 'label')
OPTIONAL_COLUMNS = ('transcript', 'valence', 'reason', 'split')
CSV_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
JSON_KEYS = ('path', 'label', 'labels') + OPTIONAL_COLUMNS
DEFAULT_SPLIT = 'train'
SPLIT_NAME = re.compile(r'[\w-]+')

logger = logging.getLogger(__name__)


class Row(NamedTuple):
  """One manifest row as read, before its path is resolved."""

  line: int
  path: str
  label: str
  openset: tuple[str, ...]
  transcript: str
  valence: float | None
  reason: str
  split: str


def _warn_ignored(path: str, keys: set[str], known: tuple[str, ...]) -> None:
  """Logs the columns or keys the reader does not use (a misspelt optional column shows up here)."""
  if keys - set(known):
    logger.warning('%s: ignoring %s; known: %s', path, sorted(keys - set(known)), list(known))


def _csv_rows(path: str) -> list[Row]:
  """The rows of a manifest.csv."""
  rows, found = [], set()
  for line, row in read_csv(path, REQUIRED_COLUMNS):
    found.update(row)
    rows.append(Row(line, row['path'], row['label'], (), row.get('transcript', ''),
                    parse_valence(row.get('valence', ''), path, line), row.get('reason', ''), row.get('split', '')))
  _warn_ignored(path, found, CSV_COLUMNS)
  return rows


def _json_text(item: dict[str, Any], key: str, path: str, line: int) -> str:
  """A string field of a JSON row, stripped ('' when absent or null; FormatError when not a string)."""
  value = item.get(key)
  if value is None:
    return ''
  if not isinstance(value, str):
    raise FormatError(f'{path}, line {line}: {key} {value!r} is not a string')
  return value.strip()


def _json_labels(item: dict[str, Any], path: str, line: int) -> tuple[str, tuple[str, ...]]:
  """The row's (class, open-vocabulary words): from `label` (no words) or from `labels` (the first is the class)."""
  if 'label' in item and 'labels' in item:
    raise FormatError(f'{path}, line {line}: give "label" or "labels", not both')
  if 'label' not in item and 'labels' not in item:
    raise FormatError(f'{path}, line {line}: missing "label" (a string) or "labels" (a list)')
  if 'label' in item:
    return _json_text(item, 'label', path, line), ()
  labels = item['labels']
  if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
    raise FormatError(f'{path}, line {line}: labels {labels!r} is not a list of strings')
  words = tuple(label.strip() for label in labels if label.strip())
  return (words[0] if words else ''), words


def _json_object(text: str, path: str, line: int) -> dict[str, Any]:
  """One JSONL line parsed as an object (FormatError naming the file, line and problem otherwise)."""
  try:
    item = json.loads(text)
  except json.JSONDecodeError as e:
    raise FormatError(f'{path}, line {line}: invalid JSON ({e.msg} at column {e.colno}): {text[:80]!r}') from e
  if not isinstance(item, dict):
    raise FormatError(f'{path}, line {line}: expected a JSON object, got {text[:80]!r}')
  if 'path' not in item:
    raise FormatError(f'{path}, line {line}: missing "path"')
  return item


def _jsonl_rows(path: str) -> list[Row]:
  """The rows of a manifest.jsonl (blank lines skipped)."""
  rows, found = [], set()
  for line, text in enumerate(read_text(path).split('\n'), start=1):
    if not text.strip():
      continue
    item = _json_object(text, path, line)
    found.update(item)
    valence = item.get('valence')
    rows.append(Row(line, _json_text(item, 'path', path, line), *_json_labels(item, path, line),
                    _json_text(item, 'transcript', path, line),
                    parse_valence('' if valence is None else str(valence), path, line),
                    _json_text(item, 'reason', path, line), _json_text(item, 'split', path, line)))
  _warn_ignored(path, found, JSON_KEYS)
  return rows


def _manifest_file(raw: str) -> str:
  """The manifest file `raw` names: the file itself, or the one manifest.csv/.jsonl in the folder `raw`."""
  raw = os.path.abspath(raw)
  if os.path.isfile(raw):
    if not raw.endswith(('.csv', '.jsonl')):
      raise FormatError(f'{raw}: a manifest is a .csv or a .jsonl file')
    return raw
  if not os.path.isdir(raw):
    raise FileNotFoundError(f'manifest {raw} does not exist')
  found = [os.path.join(raw, name) for name in MANIFEST_NAMES if os.path.isfile(os.path.join(raw, name))]
  if len(found) != 1:
    raise FormatError(f'{raw} holds {"both" if found else "neither"} of {" and ".join(MANIFEST_NAMES)}: '
                      'give the manifest file with --raw (check --format)')
  return found[0]


def _name_choices(path: str, folder: str) -> tuple[str, str, str]:
  """A clip file's possible names: stem, then path (relative to `folder` if under it) without, then with, extension."""
  relative = os.path.relpath(path, folder)
  shown = path if relative.startswith(os.pardir + os.sep) else relative
  return os.path.splitext(os.path.basename(path))[0], os.path.splitext(shown)[0], shown


def _clip_names(paths: set[str], folder: str) -> dict[str, str]:
  """path -> name: the first of its name choices that no other path shares."""
  choices = {path: _name_choices(path, folder) for path in paths}
  counts = [collections.Counter(names[level] for names in choices.values()) for level in range(3)]
  return {path: next((names[level] for level in range(3) if counts[level][names[level]] == 1), names[2])
          for path, names in choices.items()}


def _split_name(text: str, path: str, line: int) -> str:
  """The row's split: 'train' when empty; FormatError for a name with characters a split name cannot hold."""
  split = text or DEFAULT_SPLIT
  if not SPLIT_NAME.fullmatch(split):
    raise FormatError(f'{path}, line {line}: split {split!r} may hold only letters, digits, "_" and "-"')
  return split


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """All clips a manifest file lists, sorted by (split, name); `raw_dir` is the manifest file (or its folder)."""
  path = _manifest_file(raw_dir)
  rows = _jsonl_rows(path) if path.endswith('.jsonl') else _csv_rows(path)
  folder = os.path.dirname(path)
  for row in rows:
    if not row.path:
      raise FormatError(f'{path}, line {row.line}: empty path')
  media = {row.line: os.path.normpath(os.path.join(folder, row.path)) for row in rows}
  names = _clip_names(set(media.values()), folder)
  records, seen = [], collections.defaultdict(set)
  for row in rows:
    split, name, clip = _split_name(row.split, path, row.line), names[media[row.line]], media[row.line]
    check_unique(name, seen[split], path, row.line)
    records.append(ClipRecord(split=split, name=name, media_path=clip if os.path.isfile(clip) else '',
                              sentence=row.transcript, label=row.label, valence=row.valence, reason=row.reason,
                              openset=row.openset))
  records.sort(key=lambda r: (r.split, r.name))
  return RawDataset(labels=tuple(sorted({r.label for r in records} - {''})), records=records)
