"""Reads IEMOCAP_full_release: per-dialogue emotion summaries, transcripts, utterance wavs and the dialogue's avi.

Per session (`SessionN/`), `dialog/EmoEvaluation/<dialog>.txt` holds one summary line per
utterance, `[start - end]<TAB>utterance<TAB>code<TAB>[V, A, D]`, each followed by evaluator
lines (`C-E1:`, `A-F1:`, ...), which are ignored, as are the per-annotator files in its
subfolders (`Categorical/`, `Attribute/`, `Self-evaluation/`). Transcripts come from
`dialog/transcriptions/<dialog>.txt` (`<utterance> [start-end]: text`; other lines are skipped),
audio from `sentences/wav/<dialog>/<utterance>.wav`, and video from the dialogue's
`dialog/avi/DivX/<dialog>.avi`, cut to the summary line's start..end and cropped to the
speaker's half: both actors sit side by side, the one whose gender letter matches the
dialogue's (the letter after the session number, `Ses01F_...`) on the left. The speaker's
letter is the one before the utterance's 3-digit index (`Ses01F_impro01_M013` -> M).
Dialogue names have two parts (`Ses01F_impro01`) or three (`Ses05F_script03_1`).

Splits are the sessions (`session1` .. `session5`). The category code is mapped by a label map
(`iemocap4`, the default, or `iemocap6`); utterances whose code the map leaves out are dropped
and reported. The valence is the V of [V, A, D] on IEMOCAP's own 1-5 scale, kept as given.
"""

import logging
import os
import re

from mer_jax.data.formats import ClipRecord, RawDataset, ReaderOptions
from mer_jax.data.formats.common import FileIndex, FormatError, check_unique, read_text

CODES = ('neu', 'fru', 'sad', 'sur', 'ang', 'hap', 'exc', 'fea', 'dis', 'oth', 'xxx')
LABELS_4 = ('happy', 'sad', 'neutral', 'angry')
LABELS_6 = ('happy', 'sad', 'neutral', 'angry', 'excited', 'frustrated')
# Label map name -> (labels, category code -> label); codes left out are dropped.
LABEL_MAPS = {
    'iemocap4': (LABELS_4, {'hap': 'happy', 'exc': 'happy', 'sad': 'sad', 'neu': 'neutral', 'ang': 'angry'}),
    'iemocap6': (LABELS_6, {'hap': 'happy', 'sad': 'sad', 'neu': 'neutral', 'ang': 'angry', 'exc': 'excited',
                            'fru': 'frustrated'}),
}
DEFAULT_LABEL_MAP = 'iemocap4'
LAYOUT = 'IEMOCAP_full_release'

DIALOG = re.compile(r'Ses(?P<session>\d{2})(?P<letter>[FM])_\w+')
SUMMARY = re.compile(r'\[(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\]\s+(?P<name>\S+)\s+(?P<code>\S+)\s+'
                     r'\[(?P<v>\d+(?:\.\d*)?),\s*(?P<a>\d+(?:\.\d*)?),\s*(?P<d>\d+(?:\.\d*)?)\]')
TRANSCRIPT = re.compile(r'(?P<name>\S+) \[(?P<start>[\d.]+)-(?P<end>[\d.]+)\]:(?P<text>.*)')

logger = logging.getLogger(__name__)


def _check_label_map(name: str) -> str:
  """The label map's name ('' = the default); FormatError for an unknown one."""
  name = name or DEFAULT_LABEL_MAP
  if name not in LABEL_MAPS:
    raise FormatError(f'unknown IEMOCAP label map {name!r}; valid label maps: {sorted(LABEL_MAPS)}')
  return name


def _in_folder(files: FileIndex, name: str, folder: str) -> list[str]:
  """Paths of the files named `name` whose parent folder is named `folder`."""
  return [path for path in files.files(name) if os.path.basename(os.path.dirname(path)) == folder]


def _evaluation_files(files: FileIndex) -> dict[str, str]:
  """dialogue -> its `EmoEvaluation/<dialogue>.txt` summary file (subfolders' per-annotator files are not these)."""
  found: dict[str, str] = {}
  for name in sorted(files.by_name):
    stem, ext = os.path.splitext(name)
    paths = _in_folder(files, name, 'EmoEvaluation') if ext == '.txt' and DIALOG.fullmatch(stem) else []
    if not paths:
      continue
    if len(paths) > 1:
      raise FormatError(f'{len(paths)} EmoEvaluation files named {name} under {files.root}: {paths}; keep one')
    found[stem] = paths[0]
  if not found:
    raise FormatError(f'no <session>/dialog/EmoEvaluation/Ses*.txt files under {files.root}: '
                      f'is it {LAYOUT} (check --format)?')
  return found


def _speaker_letter(dialog: str, name: str, path: str, line: int) -> str:
  """The speaker's gender letter of an utterance `<dialog>_<F|M><3 digits>` (FormatError for other names)."""
  match = re.fullmatch(re.escape(dialog) + r'_([FM])\d{3}', name)
  if not match:
    raise FormatError(f'{path}, line {line}: utterance {name!r} is not named {dialog}_<F|M><3 digits>')
  return match.group(1)


def _summaries(path: str, dialog: str, seen: set[str]) -> list[tuple[re.Match, str]]:
  """(summary match, speaker letter) of each summary line (the lines starting with '[') of an EmoEvaluation file."""
  rows = []
  for line, text in enumerate(read_text(path, 'cp1252').splitlines(), 1):
    if not text.startswith('['):
      continue
    match = SUMMARY.fullmatch(text.strip())
    if not match:
      raise FormatError(f'{path}, line {line}: {text!r} is not a summary line '
                        '"[start - end]<TAB>utterance<TAB>code<TAB>[V, A, D]"')
    if match['code'] not in CODES:
      raise FormatError(f'{path}, line {line}: unknown IEMOCAP category {match["code"]!r}; '
                        f'valid codes: {list(CODES)}')
    check_unique(match['name'], seen, path, line)
    rows.append((match, _speaker_letter(dialog, match['name'], path, line)))
  return rows


def _sentences(files: FileIndex, dialog: str) -> dict[str, str]:
  """utterance -> text from the dialogue's transcript ({} with a warning when there is none)."""
  paths = _in_folder(files, f'{dialog}.txt', 'transcriptions')
  if not paths:
    logger.warning('no transcriptions/%s.txt under %s: its transcripts will be empty', dialog, files.root)
    return {}
  matches = (TRANSCRIPT.fullmatch(text.strip()) for text in read_text(paths[0], 'cp1252').splitlines())
  return {match['name']: match['text'].strip() for match in matches if match}


def _find(files: FileIndex, name: str, folder: str) -> str:
  """The file named `name`, in a folder named `folder` first; '' when there is none."""
  paths = _in_folder(files, name, folder) or files.files(name)
  return paths[0] if paths else ''


def _dialog_records(files: FileIndex, dialog: str, path: str, label_map: str,
                    seen: set[str]) -> tuple[list[ClipRecord], list[dict[str, str]]]:
  """The records of one dialogue's utterances whose code the label map keeps, and the dropped ones."""
  mapping = LABEL_MAPS[label_map][1]
  match = DIALOG.fullmatch(dialog)
  split, letter = f'session{int(match["session"])}', match['letter']
  session_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
  avi = _find(files, f'{dialog}.avi', 'DivX')
  sentences = _sentences(files, dialog)
  records, dropped = [], []
  for summary, speaker in _summaries(path, dialog, seen):
    name, code = summary['name'], summary['code']
    if code not in mapping:
      dropped.append({'split': split, 'name': name, 'file': path, 'reason': f'label {code} not in {label_map}'})
      continue
    wav = _find(files, f'{name}.wav', dialog) or os.path.join(session_dir, 'sentences', 'wav', dialog, f'{name}.wav')
    records.append(ClipRecord(split=split, name=name, media_path=avi, sentence=sentences.get(name, ''),
                              label=mapping[code], valence=float(summary['v']), audio_path=wav,
                              start_s=float(summary['start']), end_s=float(summary['end']),
                              crop='left' if speaker == letter else 'right'))
  return records, dropped


def read(raw_dir: str, options: ReaderOptions = ReaderOptions()) -> RawDataset:
  """All utterances of an IEMOCAP_full_release directory that the label map keeps, sorted by (split, name)."""
  raw_dir = os.path.abspath(raw_dir)
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f'raw dataset directory {raw_dir} does not exist')
  label_map = _check_label_map(options.label_map)
  files = FileIndex(raw_dir)
  records, dropped, seen = [], [], set()
  for dialog, path in _evaluation_files(files).items():
    kept, left_out = _dialog_records(files, dialog, path, label_map, seen)
    records += kept
    dropped += left_out
  return RawDataset(labels=LABEL_MAPS[label_map][0], records=sorted(records, key=lambda r: (r.split, r.name)),
                    dropped=sorted(dropped, key=lambda d: (d['split'], d['name'])))
