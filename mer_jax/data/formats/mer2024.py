"""Reads the MER2024 layout: label-disdim.csv, label-transcription.csv, video-labeled/, video-unlabeled-*/, OV, EMER.

Splits follow MERTools' MER2024 baseline (toolkit/preprocess/mer2024.py), which trains (with
five-fold cross-validation) on the rows of label-disdim.csv and predicts the clips of the
unlabelled pool:

- 'train': every row of `label-disdim.csv` (`name,discrete,valence`), its clip looked for in
  `video-labeled/` first. An empty valence cell is recorded as missing.
- 'unlabeled': every clip in a folder named `video-unlabeled*` (the release's
  `video-unlabeled-with-test2noise/`, from which the challenge's test samples were drawn), with
  label '' and valence None; a name that label-disdim.csv labels is not repeated here.

`label-transcription.csv` (`name,chinese,english`) gives the transcripts of the labelled clips in
ReaderOptions.language; an empty cell stays empty (no fallback to the other language).
`final-openset-english.csv` gives open-vocabulary labels: `name`, then a Python list literal in
the second column (e.g. "['happy', 'relaxed']", "[]" for none), whatever that column's header.
`final-EMER-reason.csv` (`name,chinese,english`) gives EMER descriptions in ReaderOptions.language.
Both are joined by name onto the clip's record; a name they list that is neither labelled nor in
the unlabelled pool becomes an 'unlabeled' record of its own (its clip found anywhere under the
raw directory, else reported missing). The transcript, open-vocabulary and reason files are
optional; label-disdim.csv is not.
"""

import os

from mer_jax.data.formats import RawDataset, ReaderOptions
from mer_jax.data.formats.common import FileIndex, index_raw_dir, optional_file
from mer_jax.data.formats.mer2023 import LABELS
from mer_jax.data.formats.mer_common import (VIDEO_EXTENSIONS, Annotations, check_language, read_column, read_labels,
                                             read_opensets, read_transcripts, warn_missing_transcripts)

LAYOUT = 'MER2024'
LABEL_FILE = 'label-disdim.csv'
TRANSCRIPT_FILE = 'label-transcription.csv'
OPENSET_FILE = 'final-openset-english.csv'
REASON_FILE = 'final-EMER-reason.csv'
LABELED_FOLDER = 'video-labeled'
UNLABELED_FOLDER_PREFIX = 'video-unlabeled'
TRAIN_SPLIT = 'train'
UNLABELED_SPLIT = 'unlabeled'


def _pool_clips(files: FileIndex) -> dict[str, str]:
  """name -> clip of every media file in a `video-unlabeled*` folder (the first by path when repeated)."""
  pool = {}
  for stem, paths in files.by_stem.items():
    pooled = sorted(p for p in paths if os.path.basename(os.path.dirname(p)).startswith(UNLABELED_FOLDER_PREFIX))
    if pooled:
      pool[stem] = pooled[0]
  return pool


def _annotations(files: FileIndex, language: str) -> Annotations:
  """Transcripts, open-vocabulary sets and EMER reasons by name ({} for a file the directory lacks)."""
  openset_path = optional_file(files, OPENSET_FILE, LAYOUT)
  reason_path = optional_file(files, REASON_FILE, LAYOUT)
  return Annotations(sentences=read_transcripts(files, TRANSCRIPT_FILE, language, LAYOUT),
                     opensets=read_opensets(openset_path) if openset_path else {},
                     reasons=read_column(reason_path, language) if reason_path else {})


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """The labelled clips and the unlabelled pool of a MER2024 directory, sorted by (split, name); CSVs checked first."""
  language = check_language(options.language)
  files = index_raw_dir(raw_dir, VIDEO_EXTENSIONS)
  labels = read_labels(files.file(LABEL_FILE, LAYOUT))
  annotations = _annotations(files, language)
  train = [annotations.record(TRAIN_SPLIT, name, files.media(name, (LABELED_FOLDER,)), label, valence)
           for name, (label, valence) in sorted(labels.items())]
  warn_missing_transcripts(train, annotations.sentences, TRANSCRIPT_FILE)
  unlabeled = {name: path for name, path in _pool_clips(files).items() if name not in labels}
  for name in (annotations.opensets.keys() | annotations.reasons.keys()) - labels.keys() - unlabeled.keys():
    unlabeled[name] = files.media(name)
  pool = [annotations.record(UNLABELED_SPLIT, name, path) for name, path in sorted(unlabeled.items())]
  return RawDataset(labels=LABELS, records=train + pool)
