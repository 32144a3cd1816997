"""Tests the MER2023 reader, the record format, and prepare (shards, info, skipped media, atomicity)."""

import csv
import json
import logging
import os
import shutil

import av
import numpy as np
import pytest

import tensorflow_datasets as tfds

from mer_jax.data import builder, synthetic
from mer_jax.data.formats import get_reader
from mer_jax.data.formats.mer2023 import LABELS, read
from mer_jax.data.prepare import prepare_dataset

BROKEN = {
    'sample_00002': 'empty file (0 bytes)',
    'sample_00003': 'cannot decode',
    'sample_00004': 'no audio track',
    'sample_00005': 'clip not found',
}


def write_video_only(path: str) -> None:
  """Writes a 1 s H.264 mp4 without an audio track."""
  with av.open(path, 'w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    for i in range(10):
      frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), format='rgb24')
      frame.pts = i
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_csv(path: str, header: list[str], rows: list[list]) -> str:
  """Writes a small CSV file."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def csv_rows(raw_dir: str) -> dict[str, dict[str, str]]:
  """name -> label row (with its split and sentence) of a synthetic raw dataset."""
  rows = {}
  for split in ('train', 'test'):
    with open(os.path.join(raw_dir, f'{split}-label.csv')) as f:
      rows.update({r['name']: {**r, 'split': split} for r in csv.DictReader(f)})
  with open(os.path.join(raw_dir, 'transcription.csv')) as f:
    for r in csv.DictReader(f):
      rows[r['name']]['sentence'] = r['sentence']
  return rows


def read_records(raw: str) -> list:
  """The clips the MER2023 reader keeps."""
  return read(raw).records


@pytest.fixture(scope='module')
def raw_dir(tmp_path_factory) -> str:
  """An 18-clip synthetic dataset with four broken clips (see BROKEN)."""
  raw = str(tmp_path_factory.mktemp('raw'))
  synthetic.write_dataset(raw, num_clips=18, seed=1, workers=1)
  video = os.path.join(raw, 'video')
  open(os.path.join(video, 'sample_00002.mp4'), 'wb').close()
  with open(os.path.join(video, 'sample_00003.mp4'), 'r+b') as f:
    f.truncate(os.path.getsize(f.name) // 2)
  write_video_only(os.path.join(video, 'sample_00004.mp4'))
  os.remove(os.path.join(video, 'sample_00005.mp4'))
  return raw


@pytest.fixture(scope='module')
def prepared(raw_dir, tmp_path_factory) -> tuple[str, dict]:
  """The raw dataset prepared with two worker processes."""
  out = str(tmp_path_factory.mktemp('prepared') / 'data')
  info = prepare_dataset('mer2023', raw_dir, out, workers=2)
  return out, info


def test_dataset_info(raw_dir, prepared):
  out, info = prepared
  with open(os.path.join(out, 'dataset_info.json')) as f:
    assert json.load(f) == info
  assert info['format'] == 'mer2023' and info['source'] == os.path.abspath(raw_dir)
  assert info['labels'] == list(LABELS)
  assert info['audio'] == {'sample_rate': 16000, 'num_samples': 32000, 'dtype': 'int16'}
  assert info['frames'] == {'num_frames': 4, 'size': 48, 'dtype': 'uint8'}
  assert info['duration_s'] == 2.0 and info['tokenizer'] == 'tokenizer.json'
  assert info['tfds'] == 'tfds/mer_jax_mer2023/2.0.0'
  assert info['options']['workers'] == 2 and info['options']['tokenizer_path'] is None
  rows = csv_rows(raw_dir)
  for split, entry in info['splits'].items():
    names = sorted(n for n, r in rows.items() if r['split'] == split and n not in BROKEN)
    assert entry['count'] == entry['labelled'] == entry['with_valence'] == len(names)
    assert sum(entry['label_counts'].values()) == entry['count']
    assert list(entry['label_counts']) == list(LABELS)
    valences = [float(rows[n]['valence']) for n in names]
    assert entry['valence_mean'] == pytest.approx(np.mean(valences))
    assert entry['with_reason'] == entry['count'] and entry['with_openset'] == 0
  assert sorted(os.listdir(out)) == ['dataset_info.json', 'tfds', 'tokenizer.json']
  assert os.listdir(os.path.dirname(out)) == ['data']


def test_broken_media_are_skipped_and_listed(raw_dir, prepared):
  _, info = prepared
  skipped = {s['name']: s for entry in info['splits'].values() for s in entry['skipped']}
  assert sorted(skipped) == sorted(BROKEN)
  for name, reason in BROKEN.items():
    expected = '' if reason == 'clip not found' else os.path.join(os.path.abspath(raw_dir), 'video', f'{name}.mp4')
    assert skipped[name]['file'] == expected
    assert skipped[name]['reason'].startswith(reason)
  assert sum(entry['count'] for entry in info['splits'].values()) == 18 - len(BROKEN)


def test_tfds_holds_the_clips_in_name_order(raw_dir, prepared):
  out, info = prepared
  rows = csv_rows(raw_dir)
  builder = tfds.builder_from_directory(os.path.join(out, info['tfds']))
  for split in info['splits']:
    examples = list(builder.as_data_source(split))
    assert [e['name'].decode() for e in examples] == sorted(
        n for n, r in rows.items() if r['split'] == split and n not in BROKEN)
    for e in examples:
      row = rows[e['name'].decode()]
      assert e['label'].decode() == row['discrete'] and e['sentence'].decode() == row['sentence']
      assert e['reason'].decode() == synthetic.planted_cues(row['discrete'], row['sentence'])['description']
      assert e['valence'] == pytest.approx(float(row['valence']))
      assert e['audio'].dtype == np.int16 and e['audio'].shape == (32000,)
      assert e['frames'].dtype == np.uint8 and e['frames'].shape == (4, 48, 48, 3)
      assert e['has_video']


def test_split_slicing_and_data_source(prepared):
  out, info = prepared
  count = info['splits']['train']['count']
  source = tfds.data_source('mer_jax_mer2023', split='train[:50%]', data_dir=os.path.join(out, 'tfds'))
  assert len(source) == count // 2
  full = tfds.builder_from_directory(os.path.join(out, info['tfds'])).as_data_source('train')
  assert source[0]['name'] == full[0]['name']


def test_tokenizer_copy_replaces_an_earlier_dataset(raw_dir, prepared, tmp_path):
  out, _ = prepared
  tokenizer = str(tmp_path / 'tokenizer.json')
  shutil.copyfile(os.path.join(out, 'tokenizer.json'), tokenizer)
  with open(tokenizer, 'a') as f:
    f.write('\n')
  target = str(tmp_path / 'again')
  prepare_dataset('mer2023', raw_dir, target, workers=1)
  info = prepare_dataset('mer2023', raw_dir, target, tokenizer_path=tokenizer, workers=1)
  with open(tokenizer, 'rb') as a, open(os.path.join(target, 'tokenizer.json'), 'rb') as b:
    assert a.read() == b.read()
  assert info['options']['tokenizer_path'] == tokenizer
  assert sorted(os.listdir(tmp_path)) == ['again', 'tokenizer.json']


def test_failed_prepare_keeps_decoded_clips_and_resumes(raw_dir, tmp_path, monkeypatch):
  from mer_jax.data import builder, text

  def fail(*args, **kwargs):
    raise RuntimeError('tokenizer training failed')

  with monkeypatch.context() as patch:
    patch.setattr(text, 'build_tokenizer', fail)
    with pytest.raises(RuntimeError, match='tokenizer training failed'):
      prepare_dataset('mer2023', raw_dir, str(tmp_path / 'data'), workers=1)
  assert os.listdir(tmp_path) == ['.data.partial']
  cached = os.listdir(tmp_path / '.data.partial' / 'decoded')
  assert sorted(os.path.splitext(name)[1] for name in cached) == ['.npz'] * (18 - len(BROKEN)) + ['.skip'] * len(BROKEN)

  def no_decoding(*args, **kwargs):
    raise AssertionError('a cached clip was decoded again')

  monkeypatch.setattr(builder, 'decode_clip', no_decoding)
  info = prepare_dataset('mer2023', raw_dir, str(tmp_path / 'data'), workers=1)
  assert sum(entry['count'] for entry in info['splits'].values()) == 18 - len(BROKEN)
  assert os.listdir(tmp_path) == ['data']


def test_refuses_to_replace_other_directories(raw_dir, tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='refusing to replace'):
    prepare_dataset('mer2023', raw_dir, str(tmp_path), workers=1)
  assert os.listdir(tmp_path) == ['notes.txt']


def test_missing_column_names_file_and_columns(tmp_path):
  path = write_csv(str(tmp_path / 'train-label.csv'), ['name', 'emotion', 'valence'], [['a', 'happy', '0.5']])
  with pytest.raises(ValueError) as info:
    read_records(str(tmp_path))
  message = str(info.value)
  assert path in message and "['discrete']" in message and "['name', 'emotion', 'valence']" in message


def test_bad_csv_fails_before_any_decoding(raw_dir, tmp_path, monkeypatch):
  raw = str(tmp_path / 'raw')
  shutil.copytree(raw_dir, raw)
  path = write_csv(os.path.join(raw, 'test1-label.csv'), ['name', 'discrete', 'valence'],
                   [['sample_00001', 'happy', '0.5'], ['sample_00006', 'Joyful', '0.2']])

  def no_decoding(*args, **kwargs):
    raise AssertionError('decoding started')

  monkeypatch.setattr(builder, 'decode_clip', no_decoding)
  with pytest.raises(ValueError) as info:
    prepare_dataset('mer2023', raw, str(tmp_path / 'out'), workers=1)
  message = str(info.value)
  assert path in message and 'line 3' in message and "'Joyful'" in message and 'neutral' in message
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('row, error', [
    (['sample_00009', 'happy', 'high'], "line 3: valence 'high'"),
    (['sample_00001', 'sad', '0.1'], "line 3: duplicate name 'sample_00001'"),
    (['', 'sad', '0.1'], 'line 3: empty name'),
])
def test_invalid_rows(tmp_path, row, error):
  write_csv(str(tmp_path / 'train-label.csv'), ['name', 'discrete', 'valence'],
            [['sample_00001', 'happy', '0.5'], row])
  with pytest.raises(ValueError, match=error):
    read_records(str(tmp_path))


def test_reader_splits_sentences_and_extensions(tmp_path, caplog):
  write_csv(str(tmp_path / 'train-label.csv'), ['name', 'discrete', 'valence'],
            [['b', 'Sad', '-0.5'], ['a', 'happy', '0.5']])
  write_csv(str(tmp_path / 'test1-label.csv'), ['name', 'discrete', 'valence'], [['c', 'worried', '-0.25']])
  os.makedirs(tmp_path / 'video')
  (tmp_path / 'video' / 'a.mov').write_bytes(b'x')
  with caplog.at_level(logging.WARNING):
    clips = read_records(str(tmp_path))
  assert 'transcription.csv not found under' in caplog.text
  assert [(c.split, c.name, c.label, c.valence, c.sentence) for c in clips] == [
      ('test1', 'c', 'worried', -0.25, ''), ('train', 'a', 'happy', 0.5, ''), ('train', 'b', 'sad', -0.5, '')]
  assert clips[1].media_path == str(tmp_path / 'video' / 'a.mov')
  assert clips[2].media_path == ''
  os.makedirs(tmp_path / 'train')
  (tmp_path / 'train' / 'b.mp4').write_bytes(b'x')
  (tmp_path / 'train' / '._b.mp4').write_bytes(b'x')
  assert read_records(str(tmp_path))[2].media_path == str(tmp_path / 'train' / 'b.mp4')
  write_csv(str(tmp_path / 'transcription.csv'), ['name', 'sentence'], [['a', 'Hello, there.']])
  assert [c.sentence for c in read_records(str(tmp_path))] == ['', 'Hello, there.', '']


def write_labels_with_reasons(raw: str) -> None:
  """A train label CSV with a reason column (one reason given, one empty) and a test label CSV without."""
  write_csv(os.path.join(raw, 'train-label.csv'), ['name', 'discrete', 'valence', 'reason'],
            [['a', 'happy', '0.5', 'She smiles warmly.'], ['b', 'sad', '-0.5', '']])
  write_csv(os.path.join(raw, 'test-label.csv'), ['name', 'discrete', 'valence'], [['c', 'angry', '-0.6']])


def test_reasons_from_label_column_and_reason_file(tmp_path):
  write_labels_with_reasons(str(tmp_path))
  assert [c.reason for c in read_records(str(tmp_path))] == ['', 'She smiles warmly.', '']
  write_csv(str(tmp_path / 'reason.csv'), ['name', 'reason'], [['c', ' He shouts. '], ['b', 'Her voice breaks.']])
  assert [(c.name, c.reason) for c in read_records(str(tmp_path))] == [
      ('c', 'He shouts.'), ('a', 'She smiles warmly.'), ('b', 'Her voice breaks.')]


@pytest.mark.parametrize('header, rows, error', [
    (['name', 'text'], [['a', 'x']], "reason.csv: missing required column\\(s\\) \\['reason'\\]"),
    (['name', 'reason'], [['b', 'x'], ['zzz', 'y']], "reason.csv, line 3: name 'zzz' is in no \\*-label.csv file"),
    (['name', 'reason'], [['b', 'x'], ['b', 'y']], "reason.csv, line 3: duplicate name 'b'"),
    (['name', 'reason'], [['a', 'x']], "reason.csv, line 2: 'a' also has a reason in its label CSV"),
])
def test_bad_reason_file(tmp_path, header, rows, error):
  write_labels_with_reasons(str(tmp_path))
  write_csv(str(tmp_path / 'reason.csv'), header, rows)
  with pytest.raises(ValueError, match=error):
    read_records(str(tmp_path))


def test_unknown_format_lists_known_ones():
  assert get_reader('mer2023').LABELS == LABELS
  with pytest.raises(ValueError, match="known formats: \\['iemocap', 'manifest', 'meld', 'mer2023', 'mer2024', 'mer2025'\\]"):
    get_reader('meld2')


def test_reader_options_only_for_formats_that_read_them(raw_dir, tmp_path):
  from mer_jax.data.formats import ReaderOptions
  with pytest.raises(ValueError, match='--label_map=iemocap6 applies to --format iemocap, not mer2023'):
    prepare_dataset('mer2023', raw_dir, str(tmp_path / 'out'), options=ReaderOptions(label_map='iemocap6'))
  with pytest.raises(ValueError, match='--language=chinese applies to --format mer2024/mer2025, not meld'):
    prepare_dataset('meld', raw_dir, str(tmp_path / 'out'), options=ReaderOptions(language='chinese'))
  assert not os.path.exists(tmp_path / 'out')


def test_truncated_shard_is_named_before_reading(prepared, tmp_path):
  from mer_jax.data import pipeline
  out, info = prepared
  copy = str(tmp_path / 'data')
  shutil.copytree(out, copy)
  shard = os.path.join(copy, info['tfds'], 'mer_jax_mer2023-train.array_record-00000-of-00001')
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(ValueError, match=f'{shard} cannot be read .*truncated or damaged'):
    pipeline.tfds_source(os.path.join(copy, info['tfds']), 'test+train')
  assert len(pipeline.tfds_source(os.path.join(copy, info['tfds']), 'test')) == info['splits']['test']['count']
