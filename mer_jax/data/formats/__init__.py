"""Registry of raw dataset layouts: each format module reads a layout into a list of ClipRecords."""

import dataclasses
import importlib
from types import ModuleType

# Format name -> module exposing `LABELS: tuple[str, ...]` and `read_records(raw_dir) -> list[ClipRecord]`.
FORMATS = {
    'mer2023': 'mer_jax.data.formats.mer2023',
}


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  """One labelled clip of a raw dataset, before decoding."""

  split: str
  name: str
  media_path: str
  sentence: str
  label: str
  valence: float
  reason: str = ''  # a description of the clip's emotional cues ('' when the dataset has none)


def get_reader(name: str) -> ModuleType:
  """The format module for `name` (with LABELS and read_records); unknown names list the known ones."""
  if name not in FORMATS:
    raise ValueError(f'unknown dataset format {name!r}; known formats: {sorted(FORMATS)}')
  return importlib.import_module(FORMATS[name])
