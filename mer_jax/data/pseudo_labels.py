"""Pseudo-label files (CSV: id, label, confidence) and the relabelled training examples they name."""

import csv
import dataclasses
import math
import os
from typing import Any

import grain
import numpy as np

from mer_jax.data import weighted

COLUMNS = ('id', 'label', 'confidence')
KEY = 'config.data.pseudo_labels'


@dataclasses.dataclass(frozen=True)
class PseudoLabel:
  """One clip of a prepared dataset, the label a model gave it and the model's confidence in it."""

  id: str
  label: str
  confidence: float


@dataclasses.dataclass(frozen=True)
class PseudoLabelFile:
  """One pseudo-label file mixed into training and its sampling weight (relative to the train split's 1)."""

  path: str
  weight: float


def parse_spec(spec: str) -> list[PseudoLabelFile]:
  """config.data.pseudo_labels: comma-separated `FILE.csv[=WEIGHT]` (weight 1.0 by default), paths made absolute."""
  return [PseudoLabelFile(os.path.abspath(path), weight) for path, weight in weighted.parse_weighted(spec, KEY)]


def write_csv(path: str, rows: list[PseudoLabel]) -> None:
  """Writes `rows` as a CSV with the header id,label,confidence."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    writer.writerows((row.id, row.label, f'{row.confidence:.6f}') for row in rows)


def read_csv(path: str, labels: list[str]) -> list[PseudoLabel]:
  """The rows of a pseudo-label CSV; ValueError naming the file and the row for a bad header, label, confidence or id."""
  if not os.path.isfile(path):
    raise ValueError(f'{KEY}: {path} does not exist')
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f'{KEY}: {path} lacks column(s) {missing}; a pseudo-label file has columns {list(COLUMNS)}')
    rows, seen = [], set()
    for line, row in enumerate(reader, start=2):
      clip, label = row['id'], row['label']
      if not clip:
        raise ValueError(f'{KEY}: {path} line {line} has an empty id')
      if clip in seen:
        raise ValueError(f'{KEY}: {path} line {line}: id {clip!r} appears twice')
      if label not in labels:
        raise ValueError(f'{KEY}: {path} line {line}: label {label!r} of id {clip!r} is not one of the '
                         f'dataset\'s labels {labels}')
      try:
        confidence = float(row['confidence'])
      except (TypeError, ValueError):
        confidence = math.nan
      if not 0.0 <= confidence <= 1.0:
        raise ValueError(f'{KEY}: {path} line {line}: confidence {row["confidence"]!r} of id {clip!r} is not a '
                         'number in [0, 1]')
      seen.add(clip)
      rows.append(PseudoLabel(clip, label, confidence))
  if not rows:
    raise ValueError(f'{KEY}: {path} has no rows')
  return rows


class RelabelledSource(grain.sources.RandomAccessDataSource):
  """Prepared examples picked by id, each with its pseudo-label and without its reason and valence.

  The reason and the valence belong to the clip's true label, which a pseudo-labelled clip does
  not have: the answer is the label alone and the valence adds no error (NaN).
  """

  def __init__(self, picks: list[tuple[Any, int, str]]):
    self.picks = picks  # (source, index in it, label)

  def __len__(self) -> int:
    return len(self.picks)

  def __getitem__(self, index: int) -> dict[str, Any]:
    source, position, label = self.picks[int(index)]
    record = dict(source[position])
    record.update(label=label.encode('utf-8'), reason=b'', valence=np.float32(np.nan))
    return record


def relabelled_source(path: str, rows: list[PseudoLabel], sources: dict[str, Any]) -> RelabelledSource:
  """The examples of `sources` (split name -> source) whose name is an id of `rows`, relabelled.

  ValueError naming the file and the first id no split holds.
  """
  wanted = {row.id: row.label for row in rows}
  found: dict[str, tuple[Any, int]] = {}
  for source in sources.values():
    for position in range(len(source)):
      name = source[position]['name']
      name = name.decode('utf-8') if isinstance(name, bytes) else str(name)
      if name in wanted and name not in found:
        found[name] = (source, position)
  unknown = [row.id for row in rows if row.id not in found]
  if unknown:
    raise ValueError(f'{KEY}: {path}: id {unknown[0]!r} is not a clip of the prepared dataset '
                     f'({len(unknown)} unknown id(s) of {len(rows)}; splits searched: {sorted(sources)})')
  return RelabelledSource([(*found[row.id], row.label) for row in rows])
