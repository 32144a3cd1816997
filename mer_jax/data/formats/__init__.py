"""Registry of raw dataset layouts: each format module reads a layout into a RawDataset of ClipRecords."""

import dataclasses
import importlib
from types import ModuleType

# Format name -> module exposing `read(raw_dir: str, options: ReaderOptions) -> RawDataset`.
FORMATS = {
    'iemocap': 'mer_jax.data.formats.iemocap',
    'manifest': 'mer_jax.data.formats.manifest',
    'meld': 'mer_jax.data.formats.meld',
    'mer2023': 'mer_jax.data.formats.mer2023',
    'mer2024': 'mer_jax.data.formats.mer2024',
    'mer2025': 'mer_jax.data.formats.mer2025',
}


@dataclasses.dataclass(frozen=True)
class ClipRecord:
  """One clip of a raw dataset, before decoding."""

  split: str
  name: str
  media_path: str  # the clip's file ('' when no file was found: prepare skips it as missing)
  sentence: str
  label: str  # one of the dataset's labels; '' for an unlabelled clip
  valence: float | None  # None when the dataset gives none for this clip
  reason: str = ''  # a description of the clip's emotional cues ('' when the dataset has none)
  openset: tuple[str, ...] = ()  # open-vocabulary emotion words, when the dataset has them
  sentiment: str = ''  # a second label field (MELD's sentiment), '' when absent
  audio_path: str = ''  # audio from this file instead of media_path (IEMOCAP's utterance wavs)
  start_s: float | None = None  # decode media_path from this second ...
  end_s: float | None = None  # ... to this one (None: the whole file)
  crop: str = ''  # keep only this half of each frame: 'left', 'right' or '' (whole frame)


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
  """Per-format choices a user makes on the command line."""

  label_map: str = ''  # iemocap: 'iemocap4' (default) or 'iemocap6'
  language: str = 'english'  # mer2024, mer2025: transcript language, 'english' or 'chinese'


# ReaderOptions field -> the formats that read it.
OPTION_FORMATS = {'label_map': ('iemocap',), 'language': ('mer2024', 'mer2025')}


def check_options(fmt: str, options: ReaderOptions) -> None:
  """Refuses a reader option set to other than its default for a format that does not read it."""
  for field in dataclasses.fields(ReaderOptions):
    value = getattr(options, field.name)
    if value != field.default and fmt not in OPTION_FORMATS[field.name]:
      raise ValueError(f'--{field.name}={value} applies to --format {"/".join(OPTION_FORMATS[field.name])}, '
                       f'not {fmt}')


@dataclasses.dataclass
class RawDataset:
  """What a reader found: the label vocabulary, the clips to decode, and the rows it dropped."""

  labels: tuple[str, ...]
  records: list[ClipRecord]
  dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {split, name, file, reason}


def get_reader(name: str) -> ModuleType:
  """The format module for `name` (with `read`); unknown names list the known ones."""
  if name not in FORMATS:
    raise ValueError(f'unknown dataset format {name!r}; known formats: {sorted(FORMATS)}')
  return importlib.import_module(FORMATS[name])
