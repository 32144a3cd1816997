"""Tests for the MELD.Raw reader: a small copy of the release's layout and of the damaged CSVs in circulation."""

import os

import av
import numpy as np
import pytest

from mer_jax.data.formats import ClipRecord, get_reader
from mer_jax.data.formats.common import FormatError
from mer_jax.data.formats.meld import LABELS, read, repair_text
from mer_jax.data.prepare import prepare_dataset

HEADER = 'Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime'
# As released: cp1252 punctuation kept as C1 controls (U+0092 right quote, U+0085 ellipsis), CRLF line ends,
# times with and without a leading zero and one with two millisecond digits.
TRAIN_ROWS = [
    '1,I don\x92t know\x85,Ross,neutral,neutral,0,0,3,7,"0:05:01,100","0:05:02,900"',
    '2,"Well, he said ""no"".",Monica,Surprise,positive,0,1,3,7,"00:05:03,000","00:05:04,50"',
    '3,Could I BE any more tired?,Chandler,sadness,negative,1,0,3,8,"00:10:00,000","00:10:01,000"',
    '4,Hi.,Joey,joy,positive,2,0,3,8,"not a time",""',
]
# Saved as cp1252: the file is not valid UTF-8.
DEV_ROWS = [
    '1,It’s fine… really.,Rachel,anger,negative,0,0,4,1,"0:01:00,000","0:01:01,000"',
    '2,Café time.,Phoebe,fear,negative,0,1,4,1,"0:01:02,000","0:01:03,000"',
]
# UTF-8 that was once read as cp1252 and saved again as UTF-8.
TEST_ROWS = [
    '1,Don\u00e2\u20ac\u2122t go\u00e2\u20ac\u00a6,Ross,disgust,negative,0,0,5,2,"00:20:00,000","00:20:01,000"',
    '2,Fine.,Rachel,neutral,neutral,0,1,5,2,"00:20:02,000","00:20:03,000"',
]
FOLDERS = {'train': 'train/train_splits', 'dev': 'dev/dev_splits_complete', 'test': 'output_repeated_splits_test'}


def write_clip(path: str) -> None:
  """Writes a 0.5 s 32x32 H.264 + AAC mp4, as MELD's clips are."""
  with av.open(path, 'w', format='mp4') as container:
    video = container.add_stream('libx264', rate=10)
    video.width = video.height = 32
    video.pix_fmt = 'yuv420p'
    sound = container.add_stream('aac', rate=16000, layout='mono')
    for i in range(5):
      frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format='rgb24')
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    audio = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format='fltp', layout='mono')
    audio.sample_rate, audio.pts = 16000, 0
    container.mux(sound.encode(audio))
    container.mux(sound.encode(None))


def write_lines(path: str, lines: list[str], encoding: str) -> None:
  """Writes CSV lines with CRLF line ends in `encoding`."""
  with open(path, 'wb') as f:
    f.write(('\r\n'.join([HEADER] + lines) + '\r\n').encode(encoding))


@pytest.fixture(scope='module')
def raw(tmp_path_factory) -> str:
  """A MELD.Raw copy: three CSVs, clips in the release's split folders, one missing, one corrupt, one unlisted."""
  root = str(tmp_path_factory.mktemp('meld') / 'MELD.Raw')
  for folder in FOLDERS.values():
    os.makedirs(os.path.join(root, folder))
  write_lines(os.path.join(root, 'train_sent_emo.csv'), TRAIN_ROWS, 'utf-8')
  write_lines(os.path.join(root, 'dev', 'dev_sent_emo.csv'), DEV_ROWS, 'cp1252')
  write_lines(os.path.join(root, 'test_sent_emo.csv'), TEST_ROWS, 'utf-8')
  clip = os.path.join(root, FOLDERS['train'], 'dia0_utt0.mp4')
  write_clip(clip)
  with open(clip, 'rb') as f:
    data = f.read()
  clips = {'train': ['dia0_utt1', 'dia2_utt0', 'dia9_utt9'], 'dev': ['dia0_utt0'], 'test': ['dia0_utt0', 'dia0_utt1']}
  for split, names in clips.items():
    for name in names:
      with open(os.path.join(root, FOLDERS[split], name + '.mp4'), 'wb') as f:
        f.write(data)
  with open(os.path.join(root, FOLDERS['train'], 'dia1_utt0.mp4'), 'wb') as f:
    f.write(data[:len(data) // 3])
  with open(os.path.join(root, FOLDERS['dev'], '._dia0_utt1.mp4'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07 resource fork')
  return root


def test_records(raw):
  with open(os.path.join(raw, 'dev', 'dev_sent_emo.csv'), 'rb') as f, pytest.raises(UnicodeDecodeError):
    f.read().decode('utf-8')
  dataset = read(raw)
  train, dev, test = (os.path.join(raw, folder) for folder in FOLDERS.values())
  assert dataset.labels == LABELS == ('neutral', 'surprise', 'fear', 'sadness', 'joy', 'disgust', 'anger')
  assert dataset.dropped == []
  assert dataset.records == [
      ClipRecord('dev', 'dia0_utt0', f'{dev}/dia0_utt0.mp4', 'It’s fine… really.', 'anger', None,
                 sentiment='negative'),
      ClipRecord('dev', 'dia0_utt1', '', 'Café time.', 'fear', None, sentiment='negative'),
      ClipRecord('test', 'dia0_utt0', f'{test}/dia0_utt0.mp4', 'Don’t go…', 'disgust', None, sentiment='negative'),
      ClipRecord('test', 'dia0_utt1', f'{test}/dia0_utt1.mp4', 'Fine.', 'neutral', None, sentiment='neutral'),
      ClipRecord('train', 'dia0_utt0', f'{train}/dia0_utt0.mp4', 'I don’t know…', 'neutral', None,
                 sentiment='neutral'),
      ClipRecord('train', 'dia0_utt1', f'{train}/dia0_utt1.mp4', 'Well, he said "no".', 'surprise', None,
                 sentiment='positive'),
      ClipRecord('train', 'dia1_utt0', f'{train}/dia1_utt0.mp4', 'Could I BE any more tired?', 'sadness', None,
                 sentiment='negative'),
      ClipRecord('train', 'dia2_utt0', f'{train}/dia2_utt0.mp4', 'Hi.', 'joy', None, sentiment='positive'),
  ]
  for record in dataset.records:
    assert not any(c == '\ufffd' or '\x80' <= c <= '\x9f' for c in record.sentence)


@pytest.mark.parametrize('damaged, text', [
    ('don\x92t\x85', 'don’t…'),
    ('don\u00e2\u20ac\u2122t', 'don’t'),
    ('\u00e2\x80\x9cquoted\u00e2\x80\x9d', '“quoted”'),
    ('\u00c3\u0192\u00c2\u00a9t\u00c3\u0192\u00c2\u00a9', 'été'),
    ('a\x81b', 'ab'),
    ('Café “quoted” — ok… €5', 'Café “quoted” — ok… €5'),
])
def test_repair_text(damaged, text):
  assert repair_text(damaged) == text


def test_prepare_skips_missing_and_corrupt_clips(raw, tmp_path):
  info = prepare_dataset('meld', raw, str(tmp_path / 'data'), num_frames=2, frame_size=16, duration_s=0.5,
                         workers=1)
  assert info['labels'] == list(LABELS)
  assert {split: summary['count'] for split, summary in info['splits'].items()} == {'dev': 1, 'test': 2, 'train': 3}
  dev_skipped, train_skipped = info['splits']['dev']['skipped'], info['splits']['train']['skipped']
  assert [(s['name'], s['file'], s['reason']) for s in dev_skipped] == [('dia0_utt1', '', 'clip not found')]
  assert [(s['name'], s['file']) for s in train_skipped] == [('dia1_utt0', f'{raw}/{FOLDERS["train"]}/dia1_utt0.mp4')]


def write_bad_csv(tmp_path, lines: list[str], header: str = HEADER) -> str:
  """A MELD folder with one train CSV; returns the CSV's path."""
  path = str(tmp_path / 'train_sent_emo.csv')
  with open(path, 'w', newline='') as f:
    f.write('\n'.join([header] + lines) + '\n')
  return path


@pytest.mark.parametrize('line, error', [
    ('1,Hi.,Ross,bored,neutral,0,0,1,1,"0:00:01,000","0:00:02,000"', "line 2: unknown label 'bored'"),
    ('1,Hi.,Ross,joy,happy,0,0,1,1,"0:00:01,000","0:00:02,000"', "line 2: unknown label 'happy'"),
    ('1,Hi.,Ross,joy,positive,x,0,1,1,"0:00:01,000","0:00:02,000"', "line 2: Dialogue_ID 'x' is not a whole number"),
])
def test_bad_rows_name_file_line_and_value(tmp_path, line, error):
  path = write_bad_csv(tmp_path, [line])
  with pytest.raises(FormatError, match=f'{path}, {error}'):
    read(str(tmp_path))


def test_repeated_utterance_is_refused(tmp_path):
  row = '1,Hi.,Ross,joy,positive,0,0,1,1,"0:00:01,000","0:00:02,000"'
  path = write_bad_csv(tmp_path, [row, row])
  with pytest.raises(FormatError, match=f"{path}, line 3: duplicate name 'dia0_utt0'"):
    read(str(tmp_path))


def test_missing_column(tmp_path):
  path = write_bad_csv(tmp_path, ['1,Hi.,Ross,0,0'], header='Sr No.,Utterance,Speaker,Dialogue_ID,Utterance_ID')
  with pytest.raises(FormatError, match=f"{path}: missing required column\\(s\\) \\['Emotion', 'Sentiment'\\]"):
    read(str(tmp_path))


def test_wrong_folder(tmp_path):
  (tmp_path / 'train-label.csv').write_text('name,discrete\n')
  with pytest.raises(FormatError, match='no \\*_sent_emo.csv file .* is it a MELD dataset'):
    get_reader('meld').read(str(tmp_path))
