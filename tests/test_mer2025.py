"""MER2025 reader: a small copy of the release's layout with real clips, its quirks, and bad inputs."""

import os

import pytest

from mer_jax.data.formats import ClipRecord, ReaderOptions, get_reader
from mer_jax.data.formats.common import FormatError
from mer_jax.data.prepare import prepare_dataset
from tests.test_mer2024 import copy_clip, write_clip, write_csv

REASON_1 = 'She frowns and raises her voice at the end.'
REASON_5 = 'A calm face and an even tone.'
REASON_6 = 'He laughs softly while speaking.'
REASON_9 = 'Her shoulders slump and she sighs.'


def write_layout(root: str, clip: str) -> dict[str, str]:
  """A MER2025 copy under `root` (nested one level, as unpacked); returns the clip paths by name."""
  top = os.path.join(root, 'mer2025-dataset')
  video = os.path.join(top, 'video')
  paths = {name: copy_clip(clip, os.path.join(video, f'{name}.mp4'))
           for name in ('sample_00000001', 'sample_00000005', 'sample_00000006', 'sample_00000007')}
  paths['sample_00000002'] = copy_clip(clip, os.path.join(video, 'sample_00000002.mp4'), num_bytes=300)
  paths['sample_00000008'] = copy_clip(clip, os.path.join(video, 'sample_00000008.mp4'), num_bytes=0)
  copy_clip(clip, os.path.join(video, 'sample_00000099.mp4'))  # listed by no file: ignored
  for name in ('sample_00000001', 'sample_00000003'):  # the release's pre-extracted audio is no clip
    copy_clip(clip, os.path.join(top, 'audio', f'{name}.wav'))
  with open(os.path.join(video, '._sample_00000001.mp4'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07 resource fork')
  write_csv(os.path.join(top, 'track1_train_disdim.csv'), ['name', 'discrete', 'valence'], [
      ['sample_00000001', 'angry', '-2.0'], ['sample_00000002', 'surprise', '1.5'], ['sample_00000003', 'sad', '-3.0']])
  write_csv(os.path.join(top, 'subtitle_chieng.csv'), ['name', 'chinese', 'english'], [
      ['sample_00000001', '你为什么又迟到了？', 'Why are you late again?'],
      ['sample_00000002', '哇，真的吗？', ''],
      ['sample_00000005', '好的，我知道了。', 'Okay, I see.'],
      ['sample_00000007', '明天见。', 'See you tomorrow.']])
  write_csv(os.path.join(top, 'track2_train_ovmerd.csv'), ['name', 'openset'], [
      ['sample_00000001', "['angry', 'impatient']"], ['sample_00000005', '[]']])
  write_csv(os.path.join(top, 'track3_train_ovmerd.csv'), ['name', 'reason'], [
      ['sample_00000001', REASON_1], ['sample_00000005', REASON_5]])
  write_csv(os.path.join(top, 'track2_train_mercaptionplus.csv'), ['name', 'openset'], [
      ['sample_00000006', "['amused', 'relaxed']"]])
  write_csv(os.path.join(top, 'track3_train_mercaptionplus.csv'), ['name', 'reason'], [
      ['sample_00000006', REASON_6], ['sample_00000009', REASON_9]])
  write_csv(os.path.join(top, 'track_all_candidates.csv'), ['name'], [['sample_00000007'], ['sample_00000008']])
  return paths


@pytest.fixture(scope='module')
def layout(tmp_path_factory) -> tuple[str, dict[str, str]]:
  """(raw directory, clip path by name) of the MER2025 copy."""
  root = tmp_path_factory.mktemp('mer2025')
  return str(root), write_layout(str(root), write_clip(str(root / 'clip.mp4')))


def test_reads_each_track_into_its_own_split(layout):
  """Track 1 rows are 'train', each Track 2/3 source a split, the candidates a split; transcripts join by name."""
  root, paths = layout
  raw = get_reader('mer2025').read(root)
  assert raw.labels == ('neutral', 'angry', 'happy', 'sad', 'worried', 'surprise')
  assert raw.dropped == []
  assert raw.records == [
      ClipRecord('candidates', 'sample_00000007', paths['sample_00000007'], 'See you tomorrow.', '', None),
      ClipRecord('candidates', 'sample_00000008', paths['sample_00000008'], '', '', None),
      ClipRecord('mercaptionplus', 'sample_00000006', paths['sample_00000006'], '', '', None, reason=REASON_6,
                 openset=('amused', 'relaxed')),
      ClipRecord('mercaptionplus', 'sample_00000009', '', '', '', None, reason=REASON_9),
      ClipRecord('ovmerd', 'sample_00000001', paths['sample_00000001'], 'Why are you late again?', '', None,
                 reason=REASON_1, openset=('angry', 'impatient')),
      ClipRecord('ovmerd', 'sample_00000005', paths['sample_00000005'], 'Okay, I see.', '', None, reason=REASON_5),
      ClipRecord('train', 'sample_00000001', paths['sample_00000001'], 'Why are you late again?', 'angry', -2.0),
      ClipRecord('train', 'sample_00000002', paths['sample_00000002'], '', 'surprise', 1.5),
      ClipRecord('train', 'sample_00000003', '', '', 'sad', -3.0),
  ]


def test_chinese_language_picks_chinese_subtitles(layout):
  """language='chinese' reads subtitle_chieng.csv's chinese column (the English cell of sample 2 is empty)."""
  raw = get_reader('mer2025').read(layout[0], ReaderOptions(language='chinese'))
  records = {(r.split, r.name): r for r in raw.records}
  assert records['train', 'sample_00000001'].sentence == '你为什么又迟到了？'
  assert records['train', 'sample_00000002'].sentence == '哇，真的吗？'
  assert records['candidates', 'sample_00000007'].sentence == '明天见。'


def test_prepare_skips_broken_clips_with_reasons(layout, tmp_path):
  """End to end: truncated, empty and missing clips are skipped and reported per split; the rest are prepared."""
  info = prepare_dataset('mer2025', layout[0], str(tmp_path / 'data'), num_frames=2, frame_size=32, duration_s=0.5,
                         workers=1)
  assert {split: s['count'] for split, s in info['splits'].items()} == {
      'candidates': 1, 'mercaptionplus': 1, 'ovmerd': 2, 'train': 1}
  skipped = {(split, s['name']): s['reason'] for split, summary in info['splits'].items() for s in summary['skipped']}
  assert skipped.keys() == {('candidates', 'sample_00000008'), ('mercaptionplus', 'sample_00000009'),
                            ('train', 'sample_00000002'), ('train', 'sample_00000003')}
  assert skipped['candidates', 'sample_00000008'] == 'empty file (0 bytes)'
  assert skipped['train', 'sample_00000002'].startswith('cannot decode')
  assert skipped['train', 'sample_00000003'] == skipped['mercaptionplus', 'sample_00000009'] == 'clip not found'


def test_wrong_folder_names_the_missing_label_file(tmp_path):
  """A MER2024 folder read as MER2025 fails naming track1_train_disdim.csv."""
  write_csv(str(tmp_path / 'label-disdim.csv'), ['name', 'discrete', 'valence'], [['s1', 'happy', '1.0']])
  with pytest.raises(FormatError, match=r'no track1_train_disdim\.csv under .*MER2025'):
    get_reader('mer2025').read(str(tmp_path))


def test_label_outside_the_six_names_file_line_and_value(tmp_path):
  """A discrete label outside MER's six fails naming the file, the line and the label."""
  write_csv(str(tmp_path / 'track1_train_disdim.csv'), ['name', 'discrete', 'valence'], [['s1', 'contempt', '0']])
  with pytest.raises(FormatError, match=r"track1_train_disdim\.csv, line 2: unknown label 'contempt'"):
    get_reader('mer2025').read(str(tmp_path))


@pytest.mark.parametrize('file, header', [('track3_train_ovmerd.csv', ['name', 'description']),
                                          ('subtitle_chieng.csv', ['name', 'chinese']),
                                          ('track_all_candidates.csv', ['id'])])
def test_missing_column_is_named(tmp_path, file, header):
  """A missing column of any of the release's CSVs fails naming the file and the column."""
  write_csv(str(tmp_path / 'track1_train_disdim.csv'), ['name', 'discrete', 'valence'], [['s1', 'happy', '0']])
  write_csv(str(tmp_path / file), header, [['s1'] + [''] * (len(header) - 1)])
  with pytest.raises(FormatError, match=rf'{file}: missing required column'):
    get_reader('mer2025').read(str(tmp_path))


def test_malformed_openset_names_file_line_and_value(tmp_path):
  """An open-vocabulary cell that is not a Python list literal fails naming the file, the line and the cell."""
  write_csv(str(tmp_path / 'track1_train_disdim.csv'), ['name', 'discrete', 'valence'], [['s1', 'happy', '0']])
  write_csv(str(tmp_path / 'track2_train_ovmerd.csv'), ['name', 'openset'], [['s1', '[]'], ['s2', "['calm', 'tired"]])
  with pytest.raises(FormatError, match=r"track2_train_ovmerd\.csv, line 3: open-vocabulary set \"\['calm', 'tired\""):
    get_reader('mer2025').read(str(tmp_path))
