"""Open-vocabulary scores under the MER2025 emotion wheels, computed as MERTools' OV-track (AffectGPT) evaluation does.

A wheels folder (MERTools `MER2025/MER2025_Track23/emotion_wheel/`) holds:

  wheel1.xlsx ... wheel5.xlsx  first sheet, header row `level1, level2, level3`; each row is one
                               level3 word, and an empty cell repeats the word above it
  synonym.xlsx                 columns `word_run1, synonym_run1, ..., word_run8, synonym_run8`:
                               a wheel word and its comma-separated synonyms, eight runs side by side
  format.csv                   columns `name, format`: a word of synonym.xlsx and its
                               comma-separated forms (plurals, adjectives, nouns, ...)

A word, lower-cased and stripped, is looked up in format.csv (form -> base words) and the base
words in synonym.xlsx (word or synonym -> wheel words). In each wheel, the alphabetically first of
those wheel words that the wheel lists gives the word's group: the level1 word above it (level1),
or its level2 word (level2; a level1 word goes to its alphabetically first level2 word). A word
that format.csv does not list, or whose wheel words the wheel does not list, is dropped.
"""

from collections.abc import Iterable, Sequence
import dataclasses
import os
import re
from typing import Any
import zipfile

import numpy as np
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from mer_jax.data.formats.common import FormatError, read_csv

WHEEL_NAMES = tuple(f'wheel{number}' for number in range(1, 6))
WHEEL_COLUMNS = ('level1', 'level2', 'level3')
LEVELS = WHEEL_COLUMNS[:2]  # the levels words are grouped at
SYNONYM_RUNS = tuple(f'run{number}' for number in range(1, 9))
SYNONYM_FILE = 'synonym.xlsx'
FORMAT_FILE = 'format.csv'
REQUIRED_FILES = (*(f'{name}.xlsx' for name in WHEEL_NAMES), SYNONYM_FILE, FORMAT_FILE)
RULE = f'emotion-wheel ({len(WHEEL_NAMES)} wheels)'

WheelTree = dict[str, dict[str, list[str]]]  # level1 word -> level2 word -> level3 words, in file order


def normalize(word: str) -> str:
  """A word as the official scoring compares it: lower-cased, surrounding whitespace removed."""
  return word.lower().strip()


def split_cell(text: str) -> list[str]:
  """The words of a list cell as MERTools' string_to_list reads it: outer brackets dropped, split at quotes and commas."""
  text = text[1:] if text.startswith('[') else text
  text = text[:-1] if text.endswith(']') else text
  return [item.strip() for item in re.split('[\'",]', text) if item.strip()]


def read_sheet(path: str, columns: Sequence[str]) -> list[tuple[int, dict[str, str | None]]]:
  """(row number, {column: text or None}) of an xlsx file's first sheet below its header; trailing empty rows dropped."""
  try:
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as error:
    raise FormatError(f'{path}: not a readable xlsx workbook ({error})') from error
  rows = list(workbook.worksheets[0].iter_rows(values_only=True))
  workbook.close()
  header = [str(cell).strip() if cell is not None else '' for cell in (rows[0] if rows else ())]
  missing = [column for column in columns if column not in header]
  if missing:
    raise FormatError(f'{path}: header row lacks column(s) {missing}; found {header}')
  while len(rows) > 1 and all(cell is None for cell in rows[-1]):
    rows.pop()
  table = []
  for number, row in enumerate(rows[1:], start=2):
    cells = dict(zip(header, row))
    for column in columns:
      value = cells.get(column)
      if value is not None and not isinstance(value, str):
        raise FormatError(f'{path}, row {number}, column {column}: {value!r} is not text')
    table.append((number, {column: cells.get(column) for column in columns}))
  return table


def read_wheel(path: str) -> WheelTree:
  """A wheel file as level1 -> level2 -> level3 words (lower-cased, stripped), empty cells repeating the row above."""
  tree: WheelTree = {}
  current: dict[str, str | None] = dict.fromkeys(WHEEL_COLUMNS)
  for number, cells in read_sheet(path, WHEEL_COLUMNS):
    for column, value in cells.items():
      if value is not None:
        current[column] = value
      elif current[column] is None:
        raise FormatError(f'{path}, row {number}: empty {column} and no row above to take it from')
    level1, level2, level3 = (normalize(current[column]) for column in WHEEL_COLUMNS)
    tree.setdefault(level1, {}).setdefault(level2, []).append(level3)
  if not tree:
    raise FormatError(f'{path}: no rows below the header')
  return tree


def wheel_words(tree: WheelTree) -> set[str]:
  """Every word a wheel lists, at any level."""
  return {word for level1, branch in tree.items() for level2, leaves in branch.items()
          for word in (level1, level2, *leaves)}


def wheel_groups(tree: WheelTree, level: str) -> dict[str, str]:
  """Word -> its group at `level`; a word listed twice keeps the group met last, level1 words in order of first row."""
  groups: dict[str, str] = {}
  for level1, branch in tree.items():
    groups[level1] = level1 if level == 'level1' else sorted(branch)[0]
    for level2, leaves in branch.items():
      group = level1 if level == 'level1' else level2
      groups[level2] = group
      groups.update(dict.fromkeys(leaves, group))
  return groups


def read_synonyms(path: str, known: set[str]) -> dict[str, set[str]]:
  """Word or synonym -> the wheel words it stands for, merged over the eight runs; each wheel word stands for itself."""
  columns = [f'{kind}_{run}' for run in SYNONYM_RUNS for kind in ('word', 'synonym')]
  mapping: dict[str, set[str]] = {}
  for number, cells in read_sheet(path, columns):
    for run in SYNONYM_RUNS:
      word = cells[f'word_{run}']
      if word is None or normalize(word) not in known:
        raise FormatError(f'{path}, row {number}, column word_{run}: {word!r} is no word of {", ".join(WHEEL_NAMES)}')
      word = normalize(word)
      for synonym in [word, *map(normalize, split_cell(cells[f'synonym_{run}'] or ''))]:
        mapping.setdefault(synonym, set()).add(word)
  return mapping


def read_formats(path: str, synonyms: dict[str, set[str]]) -> dict[str, set[str]]:
  """Word form -> the synonym.xlsx words it is a form of; each listed word is a form of itself."""
  mapping: dict[str, set[str]] = {}
  for line, row in read_csv(path, ('name', 'format')):
    name = row['name']
    if name not in synonyms:
      raise FormatError(f'{path}, line {line}: name {name!r} is neither a word nor a synonym of {SYNONYM_FILE}')
    for form in [*split_cell(row['format']), name]:
      mapping.setdefault(form, set()).add(name)
  return mapping


@dataclasses.dataclass(frozen=True)
class Wheels:
  """A loaded wheels folder: each known word form's candidate wheel words, and each wheel's groups per level."""

  directory: str
  candidates: dict[str, tuple[str, ...]]  # word form -> its wheel words, sorted
  groups: dict[tuple[str, str], dict[str, str]]  # (wheel name, level) -> wheel word -> group

  def group(self, word: str, wheel: str, level: str) -> str:
    """The group of `word` in one wheel at one level; '' when the word is dropped there."""
    groups = self.groups[wheel, level]
    return next((groups[c] for c in self.candidates.get(normalize(word), ()) if c in groups), '')

  def group_set(self, words: Iterable[str], wheel: str, level: str) -> set[str]:
    """The groups of `words` in one wheel at one level, dropped words left out."""
    return {group for group in (self.group(word, wheel, level) for word in words) if group}


def load(directory: str) -> Wheels:
  """Reads a wheels folder (layout in the module docstring); FormatError names the missing or malformed file."""
  if not os.path.isdir(directory):
    raise FormatError(f'emotion-wheel folder {os.path.abspath(directory)} does not exist')
  missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(directory, name))]
  if missing:
    raise FormatError(f'{os.path.abspath(directory)}: missing {", ".join(missing)}; an emotion-wheel folder holds '
                      f'{", ".join(REQUIRED_FILES)} (MERTools MER2025/MER2025_Track23/emotion_wheel)')
  trees = {name: read_wheel(os.path.join(directory, f'{name}.xlsx')) for name in WHEEL_NAMES}
  known = set().union(*map(wheel_words, trees.values()))
  synonyms = read_synonyms(os.path.join(directory, SYNONYM_FILE), known)
  formats = read_formats(os.path.join(directory, FORMAT_FILE), synonyms)
  candidates = {form: tuple(sorted(set().union(*(synonyms[name] for name in names))))
                for form, names in formats.items()}
  groups = {(name, level): wheel_groups(tree, level) for name, tree in trees.items() for level in LEVELS}
  return Wheels(os.path.abspath(directory), candidates, groups)


def _mean(values: Sequence[float]) -> float:
  """The mean, 0 for no values (MERTools' MER2026 guard)."""
  return float(np.mean(values)) if values else 0.0


def _check_lengths(references: Sequence[Any], predictions: Sequence[Any]) -> None:
  """Refuses reference and prediction lists of different lengths."""
  if len(references) != len(predictions):
    raise ValueError(f'{len(references)} references but {len(predictions)} predictions')


def overlap(references: Sequence[Iterable[str]], predictions: Sequence[Iterable[str]], wheels: Wheels, wheel: str,
            level: str) -> tuple[float, float]:
  """Mean precision and recall of the grouped sets in one wheel at one level.

  A sample whose reference keeps no word is skipped; an empty prediction scores P = R = 0.
  """
  precisions, recalls = [], []
  for reference, prediction in zip(references, predictions):
    true, pred = wheels.group_set(reference, wheel, level), wheels.group_set(prediction, wheel, level)
    if true:
      hits = len(true & pred)
      precisions.append(hits / len(pred) if pred else 0.0)
      recalls.append(hits / len(true))
  return _mean(precisions), _mean(recalls)


def level_scores(references: Sequence[Iterable[str]], predictions: Sequence[Iterable[str]], wheels: Wheels,
                 level: str) -> dict[str, float]:
  """F, precision and recall at one level, each averaged over the five wheels; F = 2PR / (P + R) per wheel."""
  per_wheel = []
  for wheel in WHEEL_NAMES:
    precision, recall = overlap(references, predictions, wheels, wheel, level)
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    per_wheel.append((fscore, precision, recall))
  fscore, precision, recall = np.mean(per_wheel, axis=0)
  return {'fscore': float(fscore), 'precision': float(precision), 'recall': float(recall)}


def set_scores(references: Sequence[Iterable[str]], predictions: Sequence[Iterable[str]],
               wheels: Wheels) -> dict[str, Any]:
  """The official scores: per level F, P and R over the five wheels, and 'fscore', the mean of the two levels' F."""
  _check_lengths(references, predictions)
  levels = {level: level_scores(references, predictions, wheels, level) for level in LEVELS}
  return {'fscore': _mean([scores['fscore'] for scores in levels.values()]), **levels}


def hit_rate(references: Sequence[str], predictions: Sequence[Iterable[str]], wheels: Wheels) -> float:
  """Share of samples whose reference word's level1 group is among the prediction's, averaged over the five wheels.

  As AffectGPT's hit rate for one-label datasets: a sample whose reference is dropped is skipped.
  """
  _check_lengths(references, predictions)
  rates = []
  for wheel in WHEEL_NAMES:
    hits = [bool(true & wheels.group_set(prediction, wheel, 'level1'))
            for reference, prediction in zip(references, predictions)
            if (true := wheels.group_set([reference], wheel, 'level1'))]
    rates.append(_mean(hits))
  return _mean(rates)
