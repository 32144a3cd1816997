"""Tests for the manifest reader: a user's own clips listed in manifest.csv or manifest.jsonl."""

import json
import os

import av
import numpy as np
import pytest

from mer_jax.data.formats import ClipRecord
from mer_jax.data.formats.common import FormatError
from mer_jax.data.formats.manifest import read
from mer_jax.data.prepare import prepare_dataset

HEADER = ['path', 'label', 'transcript', 'valence', 'reason', 'split']
# The clips under the manifest's folder: relative path -> (container format, with video?).
MEDIA = {
    'clips/happy one.mp4': ('mp4', True),
    'clips/ünïcödé 音.mkv': ('matroska', True),
    'audio/voice.wav': ('wav', False),
    'clips/side.mov': ('mov', True),
    'a/take.mp4': ('mp4', True),
    'b/take.mp4': ('mp4', True),
}


def write_media(path: str, container_format: str, video: bool) -> None:
  """Writes a 0.5 s clip: 32x32 H.264 and AAC audio, or 16-bit PCM audio alone (wav)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  codec, sample_format, dtype = ('aac', 'fltp', np.float32) if video else ('pcm_s16le', 's16', np.int16)
  with av.open(path, 'w', format=container_format) as container:
    streams = [container.add_stream('libx264', rate=10)] if video else []
    sound = container.add_stream(codec, rate=16000, layout='mono')
    for stream in streams:
      stream.width = stream.height = 32
      stream.pix_fmt = 'yuv420p'
      for i in range(5):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format='rgb24')
        frame.pts = i
        container.mux(stream.encode(frame))
      container.mux(stream.encode(None))
    audio = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype), format=sample_format, layout='mono')
    audio.sample_rate, audio.pts = 16000, 0
    container.mux(sound.encode(audio))
    container.mux(sound.encode(None))


@pytest.fixture(scope='module')
def folders(tmp_path_factory) -> tuple[str, str]:
  """(the manifest's folder with its clips, a folder elsewhere holding one clip given by absolute path)."""
  root, far = str(tmp_path_factory.mktemp('mine')), str(tmp_path_factory.mktemp('elsewhere'))
  for path, (container_format, video) in MEDIA.items():
    write_media(os.path.join(root, path), container_format, video)
  write_media(os.path.join(far, 'far away.mp4'), 'mp4', True)
  open(os.path.join(root, 'clips', 'broken.mp4'), 'wb').close()
  write_media(os.path.join(root, 'clips', 'unlisted.mp4'), 'mp4', True)
  return root, far


def csv_manifest(root: str, far: str) -> str:
  """A manifest.csv saved as Excel does: a BOM and CRLF line ends, one cell with a line break."""
  lines = [
      ','.join(HEADER),
      'clips/happy one.mp4,happy,"Hello, world",0.5,"smiles,\r\nwide eyes",train',
      'clips/ünïcödé 音.mkv,sad,Ça va…,-0.25,,test',
      'audio/voice.wav,angry,,,,',
      f'{far}/far away.mp4,happy,,1,,',
      'a/take.mp4,,not labelled,,,',
      'b/take.mp4,neutral,,,,test',
      'clips/side.mov,angry,,,,test',
      'clips/missing.mp4,sad,,,,',
      'clips/broken.mp4,happy,,,,',
  ]
  path = os.path.join(root, 'manifest.csv')
  with open(path, 'wb') as f:
    f.write(('\ufeff' + '\r\n'.join(lines) + '\r\n').encode('utf-8'))
  return path


def jsonl_manifest(root: str, far: str) -> str:
  """A manifest.jsonl in a subfolder, with `labels` lists, a `label` string, an empty list and a blank line."""
  rows = [
      {'path': '../clips/happy one.mp4', 'labels': ['happy', 'excited', 'relieved'], 'transcript': 'Hello',
       'valence': 0.5, 'split': 'train'},
      {'path': '../clips/ünïcödé 音.mkv', 'label': 'sad', 'split': 'test'},
      {'path': '../audio/voice.wav', 'labels': [], 'transcript': None},
      {'path': f'{far}/far away.mp4', 'labels': ['calm'], 'valence': '0.75', 'reason': 'a slow voice'},
  ]
  path = os.path.join(root, 'lists', 'manifest.jsonl')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(json.dumps(row, ensure_ascii=False) for row in rows[:2]) + '\n\n')
    f.write('\n'.join(json.dumps(row, ensure_ascii=False) for row in rows[2:]) + '\n')
  return path


def test_csv_manifest(folders):
  root, far = folders
  dataset = read(csv_manifest(root, far))
  assert dataset.labels == ('angry', 'happy', 'neutral', 'sad')
  assert dataset.dropped == []
  assert dataset.records == [
      ClipRecord('test', 'b/take', f'{root}/b/take.mp4', '', 'neutral', None),
      ClipRecord('test', 'side', f'{root}/clips/side.mov', '', 'angry', None),
      ClipRecord('test', 'ünïcödé 音', f'{root}/clips/ünïcödé 音.mkv', 'Ça va…', 'sad', -0.25),
      ClipRecord('train', 'a/take', f'{root}/a/take.mp4', 'not labelled', '', None),
      ClipRecord('train', 'broken', f'{root}/clips/broken.mp4', '', 'happy', None),
      ClipRecord('train', 'far away', f'{far}/far away.mp4', '', 'happy', 1.0),
      ClipRecord('train', 'happy one', f'{root}/clips/happy one.mp4', 'Hello, world', 'happy', 0.5,
                 reason='smiles,\r\nwide eyes'),
      ClipRecord('train', 'missing', '', '', 'sad', None),
      ClipRecord('train', 'voice', f'{root}/audio/voice.wav', '', 'angry', None),
  ]


def test_jsonl_manifest(folders):
  root, far = folders
  dataset = read(jsonl_manifest(root, far))
  assert dataset.labels == ('calm', 'happy', 'sad')
  assert dataset.records == [
      ClipRecord('test', 'ünïcödé 音', f'{root}/clips/ünïcödé 音.mkv', '', 'sad', None),
      ClipRecord('train', 'far away', f'{far}/far away.mp4', '', 'calm', 0.75, reason='a slow voice',
                 openset=('calm',)),
      ClipRecord('train', 'happy one', f'{root}/clips/happy one.mp4', 'Hello', 'happy', 0.5,
                 openset=('happy', 'excited', 'relieved')),
      ClipRecord('train', 'voice', f'{root}/audio/voice.wav', '', '', None),
  ]


def test_prepare_skips_missing_and_broken_clips(folders, tmp_path):
  root, far = folders
  csv_manifest(root, far)
  info = prepare_dataset('manifest', root, str(tmp_path / 'data'), num_frames=2, frame_size=16,
                         duration_s=0.5, workers=1)
  assert info['labels'] == ['angry', 'happy', 'neutral', 'sad']
  assert {split: summary['count'] for split, summary in info['splits'].items()} == {'test': 3, 'train': 4}
  skipped = info['splits']['train']['skipped']
  assert [(s['name'], s['file']) for s in skipped] == [('broken', f'{root}/clips/broken.mp4'), ('missing', '')]
  assert skipped[1]['reason'] == 'clip not found'


def test_folder_holding_one_manifest(tmp_path):
  (tmp_path / 'manifest.jsonl').write_text('{"path": "x.mp4", "label": "joy"}\n')
  assert read(str(tmp_path)).records == [ClipRecord('train', 'x', '', '', 'joy', None)]
  (tmp_path / 'manifest.csv').write_text('path,label\nx.mp4,joy\n')
  with pytest.raises(FormatError, match='holds both of manifest.csv and manifest.jsonl'):
    read(str(tmp_path))


def test_folder_without_manifest(tmp_path):
  (tmp_path / 'train-label.csv').write_text('name,discrete\n')
  with pytest.raises(FormatError, match='holds neither of manifest.csv and manifest.jsonl: give the manifest file'):
    read(str(tmp_path))


def write_manifest(tmp_path, name: str, text: str) -> str:
  """A manifest file holding `text`; returns its path."""
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return str(path)


@pytest.mark.parametrize('text, error', [
    ('path,transcript\nx.mp4,hi\n', "missing required column\\(s\\) \\['label'\\]"),
    ('label\njoy\n', "missing required column\\(s\\) \\['path'\\]"),
    ('path,label,valence\nx.mp4,joy,high\n', "line 2: valence 'high' is not a finite number"),
    ('path,label\nx.mp4,joy\n,joy\n', 'line 3: empty path'),
    ('path,label,split\nx.mp4,joy,my split\n', "line 2: split 'my split' may hold only"),
    ('path,label\nx.mp4,joy\nx.mp4,sad\n', "line 3: duplicate name 'x'"),
])
def test_bad_csv(tmp_path, text, error):
  path = write_manifest(tmp_path, 'manifest.csv', text)
  with pytest.raises(FormatError, match=f'{path}(, |: ){error}'):
    read(path)


@pytest.mark.parametrize('line, error', [
    ('{"path": "y.mp4", "label": "joy"', 'line 2: invalid JSON'),
    ('["y.mp4", "joy"]', 'line 2: expected a JSON object'),
    ('{"label": "joy"}', 'line 2: missing "path"'),
    ('{"path": "y.mp4"}', 'line 2: missing "label" \\(a string\\) or "labels" \\(a list\\)'),
    ('{"path": "y.mp4", "label": "joy", "labels": ["joy"]}', 'line 2: give "label" or "labels", not both'),
    ('{"path": "y.mp4", "labels": "joy"}', "line 2: labels 'joy' is not a list of strings"),
    ('{"path": "y.mp4", "label": "joy", "valence": true}', "line 2: valence 'True' is not a finite number"),
    ('{"path": "y.mp4", "label": "joy", "transcript": 3}', 'line 2: transcript 3 is not a string'),
])
def test_bad_jsonl(tmp_path, line, error):
  path = write_manifest(tmp_path, 'manifest.jsonl', '{"path": "x.mp4", "label": "joy"}\n' + line + '\n')
  with pytest.raises(FormatError, match=f'{path}, {error}'):
    read(path)


def test_unreadable_encoding_and_extension(tmp_path):
  path = tmp_path / 'manifest.csv'
  path.write_bytes('path,label\nx.mp4,joy\ny.mp4,col\u00e8re\n'.encode('cp1252'))
  with pytest.raises(FormatError, match=f'{path}, line 3: .* are not UTF-8'):
    read(str(path))
  other = write_manifest(tmp_path, 'clips.txt', 'path,label\n')
  with pytest.raises(FormatError, match='a manifest is a .csv or a .jsonl file'):
    read(other)
