"""MER2024 reader: a small copy of the release's layout with real clips, its quirks, and bad inputs."""

import csv
import os
import shutil

import av
import numpy as np
import pytest

from mer_jax.data.formats import ClipRecord, ReaderOptions, get_reader
from mer_jax.data.formats.common import FormatError
from mer_jax.data.prepare import prepare_dataset

SAMPLE_RATE = 16000


def write_clip(path: str) -> str:
  """Writes a 0.5 s 32x32 H.264 mp4 with a mono AAC track."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, 'w', format='mp4') as container:
    video = container.add_stream('libx264', rate=10)
    video.width = video.height = 32
    video.pix_fmt = 'yuv420p'
    sound = container.add_stream('aac', rate=SAMPLE_RATE, layout='mono')
    for i in range(5):
      frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format='rgb24')
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None, :], format='fltp', layout='mono')
    frame.sample_rate, frame.pts = SAMPLE_RATE, 0
    container.mux(sound.encode(frame))
    container.mux(sound.encode(None))
  return path


def copy_clip(source: str, path: str, num_bytes: int | None = None) -> str:
  """Copies a clip to `path`, only its first `num_bytes` when given (a truncated, undecodable clip)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(source, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:num_bytes])
  return path


def write_csv(path: str, header: list[str], rows: list[list[str]]) -> str:
  """Writes a UTF-8 CSV as pandas' to_csv does (quotes only where needed, '\\n' line ends)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
  return path


REASON_1 = ('The smile widens as she speaks.', '她说话时笑容越来越大。')
REASON_3 = ('His voice drops and he looks away.', '他声音低沉，目光躲闪。')
REASON_POOL = ('A sudden gasp and raised brows.', '突然倒吸一口气，眉毛上扬。')


def write_layout(root: str, clip: str) -> dict[str, str]:
  """A MER2024 copy under `root` (nested one level, as unpacked); returns the clip paths by name."""
  top = os.path.join(root, 'mer2024-dataset')
  labeled, pool = os.path.join(top, 'video-labeled'), os.path.join(top, 'video-unlabeled-with-test2noise')
  paths = {
      'sample_00000001': copy_clip(clip, os.path.join(labeled, 'sample_00000001.mp4')),
      'sample_00000002': copy_clip(clip, os.path.join(labeled, 'sample_00000002.mp4'), num_bytes=300),
      'sample_00000004': copy_clip(clip, os.path.join(labeled, 'sample_00000004.mp4')),
      'sample_00010001': copy_clip(clip, os.path.join(pool, 'sample_00010001.mp4')),
      'sample_00010002': copy_clip(clip, os.path.join(pool, 'sample_00010002.mp4')),
  }
  copy_clip(clip, os.path.join(labeled, 'sample_00000099.mp4'))  # listed by no row: ignored
  copy_clip(clip, os.path.join(pool, 'sample_00000004.mp4'))  # a labelled clip also in the pool
  with open(os.path.join(labeled, '._sample_00000001.mp4'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07 resource fork')
  write_csv(os.path.join(top, 'label-disdim.csv'), ['name', 'discrete', 'valence'], [
      ['sample_00000001', 'happy', '2.5'], ['sample_00000002', 'worried', '-1.0'],
      ['sample_00000003', 'sad', '-3.5'], ['sample_00000004', 'neutral', '0.0']])
  write_csv(os.path.join(top, 'label-transcription.csv'), ['name', 'chinese', 'english'], [
      ['sample_00000001', '我今天特别开心，真的。', 'I am really happy today, truly.'],
      ['sample_00000002', '我不知道会怎么样。', ''],
      ['sample_00000003', '它去哪儿了？', 'Where did it go?']])
  write_csv(os.path.join(top, 'final-openset-english.csv'), ['name', 'openset'], [
      ['sample_00000001', "['happy', 'relaxed']"], ['sample_00000002', '[]'],
      ['sample_00010001', "['surprised']"]])
  write_csv(os.path.join(top, 'final-EMER-reason.csv'), ['name', 'chinese', 'english'], [
      ['sample_00000001', REASON_1[1], REASON_1[0]], ['sample_00000003', REASON_3[1], REASON_3[0]],
      ['sample_00010002', REASON_POOL[1], REASON_POOL[0]], ['sample_00020000', REASON_POOL[1], REASON_POOL[0]]])
  return paths


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> str:
  """One real clip, copied wherever a layout needs one."""
  return write_clip(str(tmp_path_factory.mktemp('clip') / 'clip.mp4'))


@pytest.fixture(scope='module')
def layout(tmp_path_factory, clip) -> tuple[str, dict[str, str]]:
  """(raw directory, clip path by name) of the MER2024 copy."""
  root = str(tmp_path_factory.mktemp('mer2024'))
  return root, write_layout(root, clip)


def test_reads_train_and_unlabeled_pool_with_english_text(layout):
  """label-disdim rows are 'train', the pool 'unlabeled'; transcripts, sets and reasons join by name."""
  root, paths = layout
  raw = get_reader('mer2024').read(root)
  assert raw.labels == ('neutral', 'angry', 'happy', 'sad', 'worried', 'surprise')
  assert raw.dropped == []
  assert raw.records == [
      ClipRecord('train', 'sample_00000001', paths['sample_00000001'], 'I am really happy today, truly.', 'happy',
                 2.5, reason=REASON_1[0], openset=('happy', 'relaxed')),
      ClipRecord('train', 'sample_00000002', paths['sample_00000002'], '', 'worried', -1.0),
      ClipRecord('train', 'sample_00000003', '', 'Where did it go?', 'sad', -3.5, reason=REASON_3[0]),
      ClipRecord('train', 'sample_00000004', paths['sample_00000004'], '', 'neutral', 0.0),
      ClipRecord('unlabeled', 'sample_00010001', paths['sample_00010001'], '', '', None, openset=('surprised',)),
      ClipRecord('unlabeled', 'sample_00010002', paths['sample_00010002'], '', '', None, reason=REASON_POOL[0]),
      ClipRecord('unlabeled', 'sample_00020000', '', '', '', None, reason=REASON_POOL[0]),
  ]


def test_chinese_language_picks_chinese_transcripts_and_reasons(layout):
  """language='chinese' reads the chinese columns; the open-vocabulary sets stay English."""
  root, _ = layout
  records = {r.name: r for r in get_reader('mer2024').read(root, ReaderOptions(language='chinese')).records}
  assert records['sample_00000001'].sentence == '我今天特别开心，真的。'
  assert records['sample_00000001'].reason == REASON_1[1]
  assert records['sample_00000001'].openset == ('happy', 'relaxed')
  assert records['sample_00000002'].sentence == '我不知道会怎么样。'
  assert records['sample_00010002'].reason == REASON_POOL[1]


def test_prepare_skips_broken_clips_with_reasons(layout, tmp_path):
  """End to end: the truncated and the missing clip are skipped and reported; the rest are prepared."""
  root, _ = layout
  info = prepare_dataset('mer2024', root, str(tmp_path / 'data'), num_frames=2, frame_size=32, duration_s=0.5,
                         workers=1)
  assert info['splits']['train']['count'] == 2
  assert info['splits']['unlabeled']['count'] == 2
  skipped = {s['name']: s['reason'] for split in info['splits'].values() for s in split['skipped']}
  assert skipped.keys() == {'sample_00000002', 'sample_00000003', 'sample_00020000'}
  assert skipped['sample_00000002'].startswith('cannot decode')
  assert skipped['sample_00000003'] == skipped['sample_00020000'] == 'clip not found'


def write_labels_only(root: str, label_rows: list[list[str]], openset_rows: list[list[str]] = ()) -> str:
  """A MER2024 copy without clips: label-disdim.csv (header first) and, when given, an open-vocabulary file."""
  write_csv(os.path.join(root, 'label-disdim.csv'), label_rows[0], label_rows[1:])
  if openset_rows:
    write_csv(os.path.join(root, 'final-openset-english.csv'), ['name', 'openset'], openset_rows)
  return root


def test_wrong_folder_names_the_missing_label_file(tmp_path):
  """A MER2023 folder read as MER2024 fails naming label-disdim.csv."""
  write_csv(str(tmp_path / 'train-label.csv'), ['name', 'discrete', 'valence'], [['sample_1', 'happy', '1.0']])
  with pytest.raises(FormatError, match=r'no label-disdim\.csv under .*MER2024'):
    get_reader('mer2024').read(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    get_reader('mer2024').read(str(tmp_path / 'absent'))


def test_label_outside_the_six_names_file_line_and_value(tmp_path):
  """A discrete label outside MER's six fails naming the file, the line and the label."""
  rows = [['name', 'discrete', 'valence'], ['s1', 'happy', '1'], ['s2', 'excited', '2']]
  root = write_labels_only(str(tmp_path), rows)
  with pytest.raises(FormatError, match=r"label-disdim\.csv, line 3: unknown label 'excited'"):
    get_reader('mer2024').read(root)


def test_missing_column_is_named(tmp_path):
  """A label file without its `discrete` column fails naming the file and the column."""
  root = write_labels_only(str(tmp_path), [['name', 'valence'], ['s1', '1']])
  with pytest.raises(FormatError, match=r"label-disdim\.csv: missing required column\(s\) \['discrete'\]"):
    get_reader('mer2024').read(root)


@pytest.mark.parametrize('cell', ["['happy', 'sad'", 'happy, sad', "[1, 'sad']", "__import__('os')"])
def test_malformed_openset_names_file_line_and_value(tmp_path, cell):
  """An open-vocabulary cell that is not a list literal of words fails naming the file, the line and the cell."""
  root = write_labels_only(str(tmp_path), [['name', 'discrete'], ['s1', 'happy']],
                           [['s1', "['happy']"], ['s2', cell]])
  with pytest.raises(FormatError, match=r'final-openset-english\.csv, line 3: open-vocabulary set ') as error:
    get_reader('mer2024').read(root)
  assert repr(cell) in str(error.value)


def test_unknown_language_is_refused(layout):
  """Only english and chinese transcripts exist."""
  with pytest.raises(ValueError, match="unknown transcript language 'french'"):
    get_reader('mer2024').read(layout[0], ReaderOptions(language='french'))


def test_only_the_label_file_is_required(tmp_path, clip):
  """Without the optional files, texts, sets and reasons are empty; a label's case and an empty valence are read."""
  root = write_labels_only(str(tmp_path), [['name', 'discrete', 'valence'], ['sample_1', 'Sad', '']])
  path = copy_clip(clip, str(tmp_path / 'video-labeled' / 'sample_1.mp4'))
  shutil.copy(path, str(tmp_path / 'video-labeled' / 'sample_2.mp4'))
  assert get_reader('mer2024').read(root).records == [ClipRecord('train', 'sample_1', path, '', 'sad', None)]
