"""Reads the MER2025 layout: video/, track1_train_disdim.csv, subtitle_chieng.csv, track{2,3}_train_*.csv, candidates.

Splits follow the release's tracks, as MERTools' MER2025_Track1 and MER2025_Track23 code reads
them; every clip is looked for as `<name>.*` in `video/` first:

- 'train': the rows of `track1_train_disdim.csv` (`name,discrete,valence`), Track 1's labelled
  training set. An empty valence cell is recorded as missing.
- one split per source of `track2_train_<source>.csv` (`name,openset`: open-vocabulary sets) and
  `track3_train_<source>.csv` (`name,reason`: descriptions), named after the source (the release
  has 'ovmerd' and 'mercaptionplus'): the Track 2/3 training sets, with label '' and valence None.
- 'candidates': the names in `track_all_candidates.csv` (`name`), the unlabelled clips among
  which the test samples hide, with label '' and valence None.

Each split holds what its own files say: a name that several files list is a record in each of
their splits, and Track 1 labels are not copied onto Track 2/3 records nor their sets and
descriptions onto Track 1's. Transcripts come from `subtitle_chieng.csv` (`name,chinese,english`)
in ReaderOptions.language; an empty cell stays empty (no fallback to the other language).
Open-vocabulary cells are Python list literals ("['happy', 'relaxed']", "[]" for none). Only
track1_train_disdim.csv is required.
"""

from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions
from mer_jax.data.formats.common import FileIndex, check_unique, index_raw_dir, optional_file, read_csv
from mer_jax.data.formats.mer2023 import LABELS
from mer_jax.data.formats.mer_common import (VIDEO_EXTENSIONS, Annotations, check_language, read_column, read_labels,
                                             read_opensets, read_transcripts, warn_missing_transcripts)

LAYOUT = 'MER2025'
TRAIN_FILE = 'track1_train_disdim.csv'
SUBTITLE_FILE = 'subtitle_chieng.csv'
CANDIDATES_FILE = 'track_all_candidates.csv'
OPENSET_PREFIX = 'track2_train_'
REASON_PREFIX = 'track3_train_'
VIDEO_FOLDER = 'video'
TRAIN_SPLIT = 'train'
CANDIDATES_SPLIT = 'candidates'


def _clip(files: FileIndex, name: str) -> str:
  """The clip `<name>.*`, in video/ first; '' when there is none."""
  return files.media(name, (VIDEO_FOLDER,))


def _source_files(files: FileIndex, prefix: str) -> dict[str, str]:
  """source -> its `<prefix><source>.csv`, for every such file under the raw directory."""
  return {name[len(prefix):-len('.csv')]: files.file(name, LAYOUT)
          for name in sorted(files.by_name) if name.startswith(prefix) and name.endswith('.csv')}


def _source_records(files: FileIndex, sentences: dict[str, str]) -> list[ClipRecord]:
  """The records of every Track 2/3 source, in a split named after it, with their sets and descriptions."""
  opensets = {source: read_opensets(path) for source, path in _source_files(files, OPENSET_PREFIX).items()}
  reasons = {source: read_column(path, 'reason') for source, path in _source_files(files, REASON_PREFIX).items()}
  records = []
  for source in sorted(opensets.keys() | reasons.keys()):
    annotations = Annotations(sentences, opensets.get(source, {}), reasons.get(source, {}))
    for name in sorted(annotations.opensets.keys() | annotations.reasons.keys()):
      records.append(annotations.record(source, name, _clip(files, name)))
  return records


def _candidate_names(path: str) -> list[str]:
  """The names of track_all_candidates.csv, each once."""
  seen: set[str] = set()
  for line, row in read_csv(path, ('name',)):
    check_unique(row['name'], seen, path, line)
  return sorted(seen)


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """Track 1's clips, the Track 2/3 sources and the test candidates of a MER2025 directory, sorted by (split, name)."""
  language = check_language(options.language)
  files = index_raw_dir(raw_dir, VIDEO_EXTENSIONS)
  labels = read_labels(files.file(TRAIN_FILE, LAYOUT))
  transcripts = Annotations(read_transcripts(files, SUBTITLE_FILE, language, LAYOUT))
  candidates_path = optional_file(files, CANDIDATES_FILE, LAYOUT)
  records = [transcripts.record(TRAIN_SPLIT, name, _clip(files, name), label, valence)
             for name, (label, valence) in labels.items()]
  records += _source_records(files, transcripts.sentences)
  records += [transcripts.record(CANDIDATES_SPLIT, name, _clip(files, name))
              for name in (_candidate_names(candidates_path) if candidates_path else [])]
  warn_missing_transcripts(records, transcripts.sentences, SUBTITLE_FILE)
  return RawDataset(labels=LABELS, records=sorted(records, key=lambda record: (record.split, record.name)))
