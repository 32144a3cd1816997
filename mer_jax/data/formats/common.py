"""What every reader needs: CSV rows with line numbers, files found by name anywhere under a folder, values checked."""

import csv
import io
import math
import os

MEDIA_EXTENSIONS = ('mp4', 'avi', 'mkv', 'mov', 'webm', 'flv', 'm4v', 'mpg', 'mpeg', 'wav', 'flac', 'mp3', 'm4a')


class FormatError(ValueError):
  """A raw dataset that does not fit its layout: the message names the file, the line and the value."""


def read_text(path: str, fallback: str | None = None) -> str:
  """A text file as UTF-8 (a BOM is dropped), else as `fallback` when given; otherwise names the bad line."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    if fallback:
      try:
        return data.decode(fallback)
      except UnicodeDecodeError:
        pass
    line = data[:e.start].count(b'\n') + 1
    raise FormatError(f'{path}, line {line}: bytes {data[e.start:e.end + 8]!r} are not UTF-8'
                      + (f' nor {fallback}' if fallback else '') + '; save the file as UTF-8') from e


def read_csv(path: str, required: tuple[str, ...], fallback_encoding: str | None = None
             ) -> list[tuple[int, dict[str, str]]]:
  """(line number, row) pairs of a CSV with stripped header and cells; a missing required column raises FormatError."""
  return parse_csv(read_text(path, fallback_encoding), path, required)


def parse_csv(text: str, path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
  """read_csv on the already decoded `text` of the file `path` (for text that must be repaired first)."""
  reader = csv.DictReader(io.StringIO(text, newline=''))
  columns = [c.strip() for c in reader.fieldnames or []]
  missing = [c for c in required if c not in columns]
  if missing:
    raise FormatError(f'{path}: missing required column(s) {missing}; columns found: {columns}')
  reader.fieldnames = columns
  return [(reader.line_num, {k: (v or '').strip() for k, v in row.items() if k is not None})
          for row in reader]


def is_hidden(name: str) -> bool:
  """Files to ignore: macOS resource forks (`._x`), dot files."""
  return name.startswith('.')


class FileIndex:
  """Every file under a folder, found by stem or by name, whatever the nesting (hidden files ignored)."""

  def __init__(self, root: str, extensions: tuple[str, ...] = MEDIA_EXTENSIONS):
    self.root = os.path.abspath(root)
    self.by_stem: dict[str, list[str]] = {}
    self.by_name: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(self.root):
      dirs[:] = sorted(d for d in dirs if not is_hidden(d))
      for name in sorted(files):
        if is_hidden(name):
          continue
        path = os.path.join(folder, name)
        self.by_name.setdefault(name, []).append(path)
        stem, ext = os.path.splitext(name)
        if ext[1:].lower() in extensions:
          self.by_stem.setdefault(stem, []).append(path)

  def media(self, stem: str, prefer_dirs: tuple[str, ...] = ()) -> str:
    """The media file named `<stem>.<ext>`: in a folder named in `prefer_dirs` first (in that order); '' if none."""
    paths = self.by_stem.get(stem, [])
    for folder in prefer_dirs:
      for path in paths:
        if os.path.basename(os.path.dirname(path)) == folder:
          return path
    return paths[0] if paths else ''

  def files(self, name: str) -> list[str]:
    """All files named exactly `name`, sorted by path."""
    return sorted(self.by_name.get(name, []))

  def file(self, name: str, layout: str) -> str:
    """The one file named `name`; a FormatError says when there is none (naming the layout) or several."""
    paths = self.files(name)
    if not paths:
      raise FormatError(f'no {name} under {self.root}: is it a {layout} dataset (check --format)?')
    if len(paths) > 1:
      raise FormatError(f'{len(paths)} files named {name} under {self.root}: {paths}; keep one')
    return paths[0]


def parse_valence(text: str, path: str, line: int) -> float | None:
  """A valence cell: None when empty, else a finite number (FormatError otherwise)."""
  if not text:
    return None
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise FormatError(f'{path}, line {line}: valence {text!r} is not a finite number')
  return value


def check_label(label: str, labels: tuple[str, ...], path: str, line: int) -> str:
  """`label` lower-cased, when it is one of `labels` (FormatError naming the file, line and value otherwise)."""
  if label.lower() not in labels:
    raise FormatError(f'{path}, line {line}: unknown label {label!r}; valid labels: {list(labels)}')
  return label.lower()


def check_unique(name: str, seen: set[str], path: str, line: int) -> None:
  """Refuses an empty or repeated clip name."""
  if not name:
    raise FormatError(f'{path}, line {line}: empty name')
  if name in seen:
    raise FormatError(f'{path}, line {line}: duplicate name {name!r}')
  seen.add(name)


def index_raw_dir(raw_dir: str, extensions: tuple[str, ...] = MEDIA_EXTENSIONS) -> FileIndex:
  """The FileIndex of a raw dataset directory; FileNotFoundError when there is no such directory."""
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f'raw dataset directory {os.path.abspath(raw_dir)} does not exist')
  return FileIndex(raw_dir, extensions)


def optional_file(files: FileIndex, name: str, layout: str) -> str:
  """The one file named `name`, or '' when there is none (several raise FormatError, as FileIndex.file does)."""
  return files.file(name, layout) if files.files(name) else ''
