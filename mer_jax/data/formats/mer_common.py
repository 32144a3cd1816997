"""What the MER2024 and MER2025 readers share: label rows, transcripts by language, open-vocabulary sets."""

import ast
import dataclasses
import logging

from mer_jax.data.formats import ClipRecord
from mer_jax.data.formats.common import (FileIndex, FormatError, check_label, check_unique, optional_file,
                                         parse_valence, read_csv)
from mer_jax.data.formats.mer2023 import LABELS

LANGUAGES = ('english', 'chinese')
# A clip is a video: MER2025's pre-extracted audio/<name>.wav is never taken for one.
VIDEO_EXTENSIONS = ('mp4', 'avi', 'mkv', 'mov', 'webm', 'flv', 'm4v', 'mpg', 'mpeg')

logger = logging.getLogger(__name__)


def check_language(language: str) -> str:
  """`language` when the releases transcribe in it (a ValueError lists the valid ones otherwise)."""
  if language not in LANGUAGES:
    raise ValueError(f'unknown transcript language {language!r}; valid languages: {list(LANGUAGES)}')
  return language


def read_labels(path: str) -> dict[str, tuple[str, float | None]]:
  """name -> (label, valence) of a `name,discrete[,valence]` CSV; valence None when absent or empty."""
  labels: dict[str, tuple[str, float | None]] = {}
  seen: set[str] = set()
  for line, row in read_csv(path, ('name', 'discrete')):
    check_unique(row['name'], seen, path, line)
    labels[row['name']] = (check_label(row['discrete'], LABELS, path, line),
                           parse_valence(row.get('valence', ''), path, line))
  return labels


def read_column(path: str, column: str) -> dict[str, str]:
  """name -> the `column` cell of each row of a CSV (names unique)."""
  values: dict[str, str] = {}
  seen: set[str] = set()
  for line, row in read_csv(path, ('name', column)):
    check_unique(row['name'], seen, path, line)
    values[row['name']] = row[column]
  return values


def read_transcripts(files: FileIndex, name: str, language: str, layout: str) -> dict[str, str]:
  """name -> transcript in `language` from the CSV `name` (`name,chinese,english`); {} with a warning without it."""
  path = optional_file(files, name, layout)
  if not path:
    logger.warning('%s not found under %s: all transcripts will be empty', name, files.root)
    return {}
  return read_column(path, language)


def parse_openset(text: str, path: str, line: int) -> tuple[str, ...]:
  """The words of an open-vocabulary cell, a Python list literal such as "['happy', 'relaxed']" ('[]' or '' = none)."""
  try:
    words = ast.literal_eval(text) if text else []
  except (ValueError, SyntaxError):
    words = None
  if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
    raise FormatError(f'{path}, line {line}: open-vocabulary set {text!r} is not a Python list of words '
                      "such as ['happy', 'relaxed']")
  return tuple(word.strip() for word in words if word.strip())


def read_opensets(path: str) -> dict[str, tuple[str, ...]]:
  """name -> open-vocabulary set of a CSV whose first column is `name` and whose second holds the set."""
  opensets: dict[str, tuple[str, ...]] = {}
  seen: set[str] = set()
  for line, row in read_csv(path, ('name',)):
    if len(row) < 2:
      raise FormatError(f'{path}: needs a second column with the open-vocabulary sets; columns found: {list(row)}')
    check_unique(row['name'], seen, path, line)
    opensets[row['name']] = parse_openset(list(row.values())[1], path, line)
  return opensets


@dataclasses.dataclass(frozen=True)
class Annotations:
  """What a release says about clips, by name: joined onto each record that `record` makes."""

  sentences: dict[str, str]
  opensets: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)

  def record(self, split: str, name: str, media_path: str, label: str = '', valence: float | None = None
             ) -> ClipRecord:
    """The ClipRecord of clip `name` with its transcript, open-vocabulary set and reason (empty where none)."""
    return ClipRecord(split=split, name=name, media_path=media_path, sentence=self.sentences.get(name, ''),
                      label=label, valence=valence, reason=self.reasons.get(name, ''),
                      openset=self.opensets.get(name, ()))


def warn_missing_transcripts(records: list[ClipRecord], sentences: dict[str, str], transcript_file: str) -> None:
  """Warns how many records have no row in a transcript file that exists."""
  missing = sum(record.name not in sentences for record in records)
  if sentences and missing:
    logger.warning('%d clips have no row in %s: their transcripts are empty', missing, transcript_file)
