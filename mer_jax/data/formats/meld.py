"""Reads MELD.Raw: {train,dev,test}_sent_emo.csv (one row per utterance) and the clips dia{D}_utt{U}.mp4.

Each CSV row (`Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,
Episode,StartTime,EndTime`) is one clip named `dia{Dialogue_ID}_utt{Utterance_ID}`; the label is
its Emotion and its Sentiment is kept as the record's second field. Clip names repeat across
splits, so a split's clips are only looked for under its own folders (`train_splits/`,
`dev_splits_complete/`, `output_repeated_splits_test/` as released, or folders named after the
split), however deep they sit. StartTime/EndTime give the utterance's place in its episode, not
in the clip (the clips are already cut), so they are not read and a malformed time cannot fail a
read. The released CSVs carry cp1252 punctuation as C1 control characters, and copies in
circulation are saved as cp1252 or hold UTF-8 read as cp1252 (`â€™`): each CSV goes through
`repair_text` before its cells are read (stripping would take a trailing U+0085 for a space).
"""

import os
import re

from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions
from mer_jax.data.formats.common import (FileIndex, FormatError, check_label, check_unique, index_raw_dir,
                                         optional_file, parse_csv, read_text)

# The emotion order of the MELD README's one-hot encoding.
LABELS = ('neutral', 'surprise', 'fear', 'sadness', 'joy', 'disgust', 'anger')
SENTIMENTS = ('neutral', 'positive', 'negative')
COLUMNS = ('Utterance', 'Emotion', 'Sentiment', 'Dialogue_ID', 'Utterance_ID')
CSV_SUFFIX = '_sent_emo.csv'
# split -> the folders its clips may sit in, the release's name first.
SPLIT_FOLDERS = {
    'train': ('train_splits', 'train'),
    'dev': ('dev_splits_complete', 'dev_splits', 'dev'),
    'test': ('output_repeated_splits_test', 'test_splits', 'test'),
}


def _cp1252_bytes() -> dict[str, int]:
  """Character -> the byte cp1252 reads as it; Latin-1 for C1 controls and the bytes cp1252 leaves undefined."""
  table = {}
  for byte in range(0x80, 0x100):
    table[chr(byte)] = byte
    try:
      table[bytes([byte]).decode('cp1252')] = byte
    except UnicodeDecodeError:
      pass
  return table


CP1252_BYTES = _cp1252_bytes()


def _char_class(low: int, high: int) -> str:
  """A regex character class of the characters standing for the bytes low..high."""
  return '[' + ''.join(re.escape(c) for c, b in CP1252_BYTES.items() if low <= b <= high) + ']'


_CONT = _char_class(0x80, 0xBF)
# UTF-8 multi-byte sequences whose bytes were read one by one as cp1252 or Latin-1.
MOJIBAKE = re.compile(f'(?:{_char_class(0xC2, 0xDF)}{_CONT}|{_char_class(0xE0, 0xEF)}{_CONT}{{2}}'
                      f'|{_char_class(0xF0, 0xF4)}{_CONT}{{3}})+')
C1_CONTROLS = re.compile('[\u0080-\u009f]')


def _undo_mojibake(match: re.Match) -> str:
  """The UTF-8 text a mojibake run stands for (the run itself when its bytes are not valid UTF-8)."""
  text = match.group()
  try:
    return bytes(CP1252_BYTES[c] for c in text).decode('utf-8')
  except UnicodeDecodeError:
    return text


def _c1_to_cp1252(match: re.Match) -> str:
  """The cp1252 character a C1 control stands for ('' for the five bytes cp1252 leaves undefined)."""
  return bytes([ord(match.group())]).decode('cp1252', errors='ignore')


def repair_text(text: str) -> str:
  """`text` with cp1252 damage undone: mojibake like `â€™` (even doubled) and C1 controls like U+0092 -> ’."""
  while (fixed := MOJIBAKE.sub(_undo_mojibake, text)) != text:
    text = fixed
  return C1_CONTROLS.sub(_c1_to_cp1252, text)


def _number(row: dict[str, str], column: str, path: str, line: int) -> int:
  """A whole-number cell (FormatError naming the file, line and value otherwise)."""
  text = row[column]
  if not text.isdigit():
    raise FormatError(f'{path}, line {line}: {column} {text!r} is not a whole number')
  return int(text)


def _parse_csv(path: str) -> list[tuple[str, str, str, str]]:
  """(name, label, sentiment, utterance) rows of a *_sent_emo.csv (UTF-8 or cp1252), repaired, then validated."""
  rows, seen = [], set()
  for line, row in parse_csv(repair_text(read_text(path, fallback='cp1252')), path, COLUMNS):
    name = f"dia{_number(row, 'Dialogue_ID', path, line)}_utt{_number(row, 'Utterance_ID', path, line)}"
    check_unique(name, seen, path, line)
    label = check_label(row['Emotion'], LABELS, path, line)
    sentiment = check_label(row['Sentiment'], SENTIMENTS, path, line)
    rows.append((name, label, sentiment, row['Utterance']))
  return rows


def _split_csvs(files: FileIndex) -> dict[str, str]:
  """split -> its *_sent_emo.csv, for the splits that have one (at least one must)."""
  found = {split: path for split in SPLIT_FOLDERS if (path := optional_file(files, split + CSV_SUFFIX, 'MELD'))}
  if not found:
    names = [split + CSV_SUFFIX for split in SPLIT_FOLDERS]
    raise FormatError(f'no *{CSV_SUFFIX} file ({", ".join(names)}) under {files.root}: '
                      'is it a MELD dataset (check --format)?')
  return found


def _split_clip(files: FileIndex, name: str, split: str) -> str:
  """The clip `name`.* under one of the split's folders (the release's folder first); '' when there is none."""
  paths = files.by_stem.get(name, [])
  for folder in SPLIT_FOLDERS[split]:
    for path in paths:
      if folder in os.path.relpath(os.path.dirname(path), files.root).split(os.sep):
        return path
  return ''


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """All clips of a MELD.Raw directory, sorted by (split, name); every CSV is checked first."""
  files = index_raw_dir(os.path.abspath(raw_dir))
  splits = {split: _parse_csv(path) for split, path in _split_csvs(files).items()}
  records = [ClipRecord(split=split, name=name, media_path=_split_clip(files, name, split), sentence=utterance,
                        label=label, valence=None, sentiment=sentiment)
             for split, rows in sorted(splits.items()) for name, label, sentiment, utterance in sorted(rows)]
  return RawDataset(labels=LABELS, records=records)
