"""Tests the synthetic demo dataset: layout, determinism, and the planted cross-modal cue design."""

import csv
import itertools
import os

import numpy as np
import pytest

from mer_jax.data import synthetic
from mer_jax.data.descriptions import CUE_PHRASES
from mer_jax.data.formats.mer2023 import LABELS
from mer_jax.data.media import decode_clip

NUM_CLIPS = 36
FACE_PAIRS = (('happy', 'surprise'), ('neutral', 'worried'), ('angry', 'sad'))
VOICE_PAIRS = (('angry', 'surprise'), ('happy', 'worried'), ('neutral', 'sad'))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A 36-clip synthetic dataset, its summary and its rows (name -> dict with label, valence, sentence)."""
  out = str(tmp_path_factory.mktemp('synthetic'))
  summary = synthetic.write_dataset(out, num_clips=NUM_CLIPS, seed=3, workers=2)
  rows = {}
  for split in ('train', 'test'):
    for row in read_rows(os.path.join(out, f'{split}-label.csv')):
      rows[row['name']] = {**row, 'split': split}
  for row in read_rows(os.path.join(out, 'transcription.csv')):
    rows[row['name']]['sentence'] = row['sentence']
  for row in read_rows(os.path.join(out, 'reason.csv')):
    rows[row['name']]['reason'] = row['reason']
  return out, summary, rows


@pytest.fixture(scope='module')
def features(dataset):
  """name -> (face smile feature, voice energy in dB) from the decoded 48x48 frames and 16 kHz audio."""
  out, _, rows = dataset
  result = {}
  for name in rows:
    audio, frames = decode_clip(os.path.join(out, 'video', f'{name}.mp4'))
    result[name] = (face_smile(frames), voice_energy_db(audio))
  return result


def read_rows(path: str) -> list[dict[str, str]]:
  """The rows of a CSV file."""
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def face_smile(frames: np.ndarray) -> float:
  """Mouth curvature (> 0: corners above the centre) relative to mouth width, median over frames.

  The mouth is the dark red pixels (lips) around their median row; the curvature is the quadratic
  coefficient of its top edge.
  """
  values = []
  for frame in frames.astype(np.float32):
    red, green = frame[..., 0], frame[..., 1]
    luminance = frame @ np.array([0.299, 0.587, 0.114], np.float32)
    rows, cols = np.nonzero((luminance < 80) & (red > 1.8 * green))
    near_mouth = np.abs(rows - np.median(rows)) <= 8
    rows, cols = rows[near_mouth], cols[near_mouth]
    top_edge = {x: rows[cols == x].min() for x in np.unique(cols)}
    xs = np.array(list(top_edge), np.float32)
    half_width = max((xs.max() - xs.min()) / 2, 1.0)
    coefficient = np.polyfit((xs - xs.mean()) / half_width, list(top_edge.values()), 2)[0]
    values.append(-coefficient / half_width)
  return float(np.median(values))


def voice_energy_db(audio: np.ndarray) -> float:
  """Mean energy of an int16 waveform in dB relative to full scale."""
  x = audio.astype(np.float64) / 32768
  return float(10 * np.log10(np.mean(x ** 2) + 1e-12))


def values_by_label(rows: dict, features: dict, index: int) -> dict[str, np.ndarray]:
  """label -> array of one feature over that label's clips."""
  return {label: np.array([features[n][index] for n, r in rows.items() if r['discrete'] == label])
          for label in LABELS}


def pooled(by_label: dict[str, np.ndarray], labels: list[str]) -> np.ndarray:
  """One feature's values over the clips of several labels."""
  return np.concatenate([by_label[label] for label in labels])


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
  """Whether two samples' ranges intersect."""
  return a.max() > b.min() and b.max() > a.min()


def test_layout_labels_and_splits(dataset):
  out, summary, rows = dataset
  names = sorted(rows)
  assert names == [f'sample_{i:05d}' for i in range(1, NUM_CLIPS + 1)]
  assert sorted(os.listdir(os.path.join(out, 'video'))) == [f'{n}.mp4' for n in names]
  with open(os.path.join(out, 'train-label.csv')) as f:
    assert f.readline() == 'name,discrete,valence\n'
  with open(os.path.join(out, 'transcription.csv')) as f:
    assert f.readline() == 'name,sentence\n'
  counts = {label: sum(r['discrete'] == label for r in rows.values()) for label in LABELS}
  assert counts == {label: NUM_CLIPS // len(LABELS) for label in LABELS} == summary['label_counts']
  test_counts = {label: sum(r['discrete'] == label and r['split'] == 'test' for r in rows.values())
                 for label in LABELS}
  assert set(test_counts.values()) == {1}
  assert summary['splits'] == {'train': 30, 'test': 6}


def test_valence_follows_label_means(dataset):
  _, _, rows = dataset
  for label in LABELS:
    values = np.array([float(r['valence']) for r in rows.values() if r['discrete'] == label])
    assert np.all(np.abs(values) <= 1)
    assert abs(values.mean() - synthetic.VALENCE_MEANS[label]) < 0.12


def test_same_seed_same_files_and_media(dataset, tmp_path):
  out, _, rows = dataset
  again = str(tmp_path / 'again')
  synthetic.write_dataset(again, num_clips=NUM_CLIPS, seed=3, workers=1)
  for csv_name in ('train-label.csv', 'test-label.csv', 'transcription.csv', 'reason.csv'):
    with open(os.path.join(out, csv_name), 'rb') as a, open(os.path.join(again, csv_name), 'rb') as b:
      assert a.read() == b.read()
  for name in rows:
    audio_a, frames_a = decode_clip(os.path.join(out, 'video', f'{name}.mp4'))
    audio_b, frames_b = decode_clip(os.path.join(again, 'video', f'{name}.mp4'))
    np.testing.assert_array_equal(audio_a, audio_b)
    np.testing.assert_array_equal(frames_a, frames_b)


def test_other_seed_differs(dataset, tmp_path):
  out, _, _ = dataset
  other = str(tmp_path / 'other')
  synthetic.write_dataset(other, num_clips=6, seed=4, workers=1)
  audio_a, _ = decode_clip(os.path.join(out, 'video', 'sample_00001.mp4'))
  audio_b, _ = decode_clip(os.path.join(other, 'video', 'sample_00001.mp4'))
  assert not np.array_equal(audio_a, audio_b)


def test_each_modality_separates_its_groups(dataset, features):
  _, _, rows = dataset
  face = values_by_label(rows, features, 0)
  voice = values_by_label(rows, features, 1)
  assert pooled(face, ['angry', 'sad']).max() < pooled(face, ['neutral', 'worried']).min()
  assert pooled(face, ['neutral', 'worried']).max() < pooled(face, ['happy', 'surprise']).min()
  assert pooled(voice, ['neutral', 'sad']).max() < pooled(voice, ['happy', 'worried']).min()
  assert pooled(voice, ['happy', 'worried']).max() < pooled(voice, ['angry', 'surprise']).min()


def test_no_single_modality_determines_the_label(dataset, features):
  _, _, rows = dataset
  face = values_by_label(rows, features, 0)
  voice = values_by_label(rows, features, 1)
  for a, b in FACE_PAIRS:
    assert overlaps(face[a], face[b]), (a, b)
  for a, b in VOICE_PAIRS:
    assert overlaps(voice[a], voice[b]), (a, b)
  for a, b in itertools.combinations(LABELS, 2):
    assert not overlaps(face[a], face[b]) or not overlaps(voice[a], voice[b]), (a, b)


def test_mouth_curvature_tracks_valence_within_label(dataset, features):
  _, _, rows = dataset
  deviation, smile = [], []
  for label in LABELS:
    names = [n for n, r in rows.items() if r['discrete'] == label]
    values = np.array([features[n][0] for n in names])
    smile.extend(values - values.mean())
    deviation.extend(float(rows[n]['valence']) - synthetic.VALENCE_MEANS[label] for n in names)
  assert np.corrcoef(deviation, smile)[0, 1] > 0.3


def test_transcripts_name_the_label_for_a_minority(dataset):
  _, summary, rows = dataset
  named = [r['discrete'] in r['sentence'].lower() for r in rows.values()]
  assert 0.2 <= np.mean(named) <= 0.4
  assert summary['text_named_fraction'] == pytest.approx(np.mean(named))
  for sentence in synthetic.NEUTRAL_SENTENCES:
    assert not any(label in sentence.lower() for label in LABELS), sentence


def test_planted_cues():
  cues = synthetic.planted_cues('surprise', 'What a surprise this is.')
  assert cues['face'].startswith('smile') and cues['voice'].startswith('high arousal')
  assert 'names the emotion' in cues['text']
  plain = synthetic.planted_cues('sad', 'I took the bus to the station.')
  assert plain['text'] == 'transcript carries no emotion cue'
  assert {synthetic.planted_cues(label)['face'] for label in ('neutral', 'worried')} == {'flat mouth'}
  with pytest.raises(ValueError, match='valid labels'):
    synthetic.planted_cues('joyful')
  assert cues['description'] == 'The voice is loud and fast. The face shows a smile. The words name the emotion.'
  assert plain['description'] == 'The voice is quiet and slow. The face shows a frown. The words name no emotion.'


def test_descriptions_name_the_planted_cues(dataset, features):
  _, _, rows = dataset
  with open(os.path.join(dataset[0], 'reason.csv')) as f:
    assert f.readline() == 'name,reason\n'
  by_phrase: dict[str, list] = {}
  for name, row in rows.items():
    label, sentence = row['discrete'], row['sentence']
    voice, face, text = row['reason'].split('. ')
    assert voice == CUE_PHRASES['voice'][synthetic.AROUSAL_LEVEL[label]][:-1]
    assert face == CUE_PHRASES['face'][synthetic.FACE_GROUP[label]][:-1]
    assert text == CUE_PHRASES['text'][sentence in synthetic.EMOTION_SENTENCES[label]]
    by_phrase.setdefault(face, []).append(features[name][0])
    by_phrase.setdefault(voice, []).append(features[name][1])
  # The phrases describe what the media really show: measured smile and loudness order as the phrases say.
  smile = {group: np.mean(by_phrase[CUE_PHRASES['face'][group][:-1]]) for group in (-1, 0, 1)}
  loud = {level: np.mean(by_phrase[CUE_PHRASES['voice'][level][:-1]]) for level in (0, 1, 2)}
  assert smile[-1] < smile[0] < smile[1] and loud[0] < loud[1] < loud[2]
