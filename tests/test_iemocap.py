"""Tests the IEMOCAP reader on a small IEMOCAP_full_release copy: records, label maps, dropped rows, cut media."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mer_jax.data.formats import ClipRecord, ReaderOptions, iemocap
from mer_jax.data.formats.common import FormatError
from mer_jax.data.media import MediaError, decode_clip
from mer_jax.data.prepare import prepare_dataset
from tests.test_media_window import RATE, brightness, write_media

RELEASE = 'IEMOCAP_full_release'
HEADER = '% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n'
# dialogue -> (session, avi seconds or None for no avi, [(start, end, utterance, code, V, transcript or None)])
DIALOGS = {
    'Ses01F_impro01': (1, 4.0, [
        (0.5, 1.5, 'Ses01F_impro01_F000', 'neu', 2.5, 'Excuse me.'),
        (1.6, 2.6, 'Ses01F_impro01_M000', 'exc', 4.0, 'Do you have your forms?'),
        (2.5, 3.5, 'Ses01F_impro01_F001', 'fru', 2.0, 'Yeah.'),
        (3.0, 3.9, 'Ses01F_impro01_M001', 'xxx', 2.0, None),
    ]),
    'Ses05M_script03_1': (5, 3.0, [
        (0.25, 1.05, 'Ses05M_script03_1_F000', 'ang', 1.5, 'You knew there was nothing.'),
        (1.0, 2.0, 'Ses05M_script03_1_M000', 'sad', 1.5, "I didn't."),
        (2.15, 2.95, 'Ses05M_script03_1_M001', 'hap', 4.5, "Oh, that's wonderful!"),
    ]),
    'Ses05M_impro02': (5, None, [(1.0, 2.0, 'Ses05M_impro02_F000', 'neu', 3.0, None)]),
}
MISSING_WAV = 'Ses05M_script03_1_M000'


def write(path: str, text: str) -> str:
  """Writes a text file, making its folders."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return path


def summary_block(start: float, end: float, name: str, code: str, valence: float) -> str:
  """A summary line with its evaluator lines, as EmoEvaluation files hold them."""
  return (f'[{start:.4f} - {end:.4f}]\t{name}\t{code}\t[{valence:.4f}, 3.0000, 3.5000]\n'
          'C-E2:\tNeutral;\t()\nC-E3:\tAnger;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n')


def transcript_line(start: float, end: float, name: str, text: str) -> str:
  """A transcript line `<utterance> [start-end]: text`."""
  return f'{name} [{start:08.4f}-{end:08.4f}]: {text}\n'


def utterance_wav(start: float, end: float) -> np.ndarray:
  """An utterance's samples: one nonzero value for end - start seconds."""
  return np.full(int(round(RATE * (end - start))), 1000 + int(start * 100))


def write_dialog(root: str, dialog: str, session: int, avi_seconds: float | None, rows: list) -> None:
  """One dialogue's EmoEvaluation, transcript, utterance wavs and side-by-side avi."""
  session_dir = os.path.join(root, f'Session{session}')
  write(os.path.join(session_dir, 'dialog', 'EmoEvaluation', f'{dialog}.txt'),
        HEADER + ''.join(summary_block(*row[:5]) for row in rows))
  lines = [transcript_line(*row[:3], row[5]) for row in rows if row[5] is not None]
  if lines:
    write(os.path.join(session_dir, 'dialog', 'transcriptions', f'{dialog}.txt'),
          lines[0] + 'M: [BREATHING]\n' + ''.join(lines[1:]) + transcript_line(3.95, 4.0, f'{dialog}_MXX0', 'Hmm.'))
  for start, end, name, *_ in rows:
    if name != MISSING_WAV:
      write_media(os.path.join(session_dir, 'sentences', 'wav', dialog, f'{name}.wav'), seconds=end - start,
                  audio=utterance_wav(start, end))
  if avi_seconds:
    write_media(os.path.join(session_dir, 'dialog', 'avi', 'DivX', f'{dialog}.avi'), seconds=avi_seconds,
                video='mpeg4')


@pytest.fixture(scope='module')
def raw_dir(tmp_path_factory) -> str:
  """A small IEMOCAP_full_release: sessions 1 and 5, improvised and three-part scripted dialogues, with quirks."""
  root = str(tmp_path_factory.mktemp('iemocap') / RELEASE)
  for dialog, (session, avi_seconds, rows) in DIALOGS.items():
    write_dialog(root, dialog, session, avi_seconds, rows)
  evaluation = os.path.join(root, 'Session1', 'dialog', 'EmoEvaluation')
  write(os.path.join(evaluation, 'Categorical', 'Ses01F_impro01_e2_cat.txt'),
        '[0.5000 - 1.5000]\tSes01F_impro01_F000\tang\t[1.0, 1.0, 1.0]\nSes01F_impro01_F000 :Anger; ()\n')
  with open(os.path.join(evaluation, '._Ses01F_impro01.txt'), 'wb') as f:
    f.write(b'\x00\x05\x16\x07\xff\xfe')
  write_media(os.path.join(root, 'Session1', 'dialog', 'wav', 'Ses01F_impro01.wav'), seconds=0.5,
              audio=np.ones(8000))
  return root


def wav(raw_dir: str, name: str) -> str:
  """Where an utterance's wav lies (or would lie) in the copy."""
  dialog = name[:-5]
  return os.path.join(raw_dir, f'Session{DIALOGS[dialog][0]}', 'sentences', 'wav', dialog, f'{name}.wav')


def avi(raw_dir: str, dialog: str) -> str:
  """A dialogue's avi in the copy."""
  return os.path.join(raw_dir, f'Session{DIALOGS[dialog][0]}', 'dialog', 'avi', 'DivX', f'{dialog}.avi')


def expected(raw_dir: str, name: str, label: str) -> ClipRecord:
  """The record the reader should give for utterance `name` with `label`."""
  dialog = name[:-5]
  session, avi_seconds, rows = DIALOGS[dialog]
  start, end, _, _, valence, sentence = next(row for row in rows if row[2] == name)
  return ClipRecord(split=f'session{session}', name=name, media_path=avi(raw_dir, dialog) if avi_seconds else '',
                    sentence=sentence or '', label=label, valence=valence, audio_path=wav(raw_dir, name),
                    start_s=start, end_s=end, crop='left' if name[-4] == dialog[5] else 'right')


KEPT_4 = {
    'Ses01F_impro01_F000': 'neutral', 'Ses01F_impro01_M000': 'happy', 'Ses05M_impro02_F000': 'neutral',
    'Ses05M_script03_1_F000': 'angry', 'Ses05M_script03_1_M000': 'sad', 'Ses05M_script03_1_M001': 'happy',
}
KEPT_6 = {**KEPT_4, 'Ses01F_impro01_M000': 'excited', 'Ses01F_impro01_F001': 'frustrated'}


def dropped(raw_dir: str, codes: dict[str, str], label_map: str) -> list[dict[str, str]]:
  """The dropped rows the reader should report for utterance -> code under `label_map`."""
  path = os.path.join(raw_dir, 'Session1', 'dialog', 'EmoEvaluation', 'Ses01F_impro01.txt')
  return [{'split': 'session1', 'name': name, 'file': path, 'reason': f'label {code} not in {label_map}'}
          for name, code in codes.items()]


@pytest.mark.parametrize('label_map, kept, labels, codes', [
    ('', KEPT_4, iemocap.LABELS_4, {'Ses01F_impro01_F001': 'fru', 'Ses01F_impro01_M001': 'xxx'}),
    ('iemocap6', KEPT_6, iemocap.LABELS_6, {'Ses01F_impro01_M001': 'xxx'}),
])
def test_records_labels_and_dropped_rows(raw_dir, label_map, kept, labels, codes):
  raw = iemocap.read(raw_dir, ReaderOptions(label_map=label_map))
  assert raw.labels == labels
  assert raw.records == sorted((expected(raw_dir, name, label) for name, label in kept.items()),
                               key=lambda r: (r.split, r.name))
  assert raw.dropped == dropped(raw_dir, codes, label_map or 'iemocap4')


def test_speaker_halves_follow_the_dialogue_letter(raw_dir):
  crops = {r.name: r.crop for r in iemocap.read(raw_dir).records}
  assert crops == {'Ses01F_impro01_F000': 'left', 'Ses01F_impro01_M000': 'right', 'Ses05M_impro02_F000': 'right',
                   'Ses05M_script03_1_F000': 'right', 'Ses05M_script03_1_M000': 'left',
                   'Ses05M_script03_1_M001': 'left'}


def decode(record: ClipRecord) -> tuple[np.ndarray, np.ndarray]:
  """A record decoded as prepare decodes it (4 frames of 16x16, 2 s of audio)."""
  return decode_clip(record.media_path, audio_path=record.audio_path, start_s=record.start_s, end_s=record.end_s,
                     crop=record.crop, num_frames=4, frame_size=16)


@pytest.mark.parametrize('name, channel, shown', [
    ('Ses01F_impro01_F000', 0, [6, 8, 11, 13]),  # left half (red), frames at 0.625 .. 1.375 s
    ('Ses01F_impro01_M000', 2, [17, 19, 22, 24]),  # right half (blue), frames at 1.725 .. 2.475 s
    ('Ses05M_script03_1_F000', 2, [3, 5, 7, 9]),  # the M dialogue's F actor sits right
    ('Ses05M_script03_1_M001', 0, [22, 24, 26, 28]),
])
def test_decoded_utterances_are_the_speakers_half_and_window(raw_dir, name, channel, shown):
  record = next(r for r in iemocap.read(raw_dir).records if r.name == name)
  audio, frames = decode(record)
  np.testing.assert_allclose(brightness(frames, channel), 20 + 5 * np.array(shown), atol=8)
  assert brightness(frames, 2 - channel).max() < 8
  assert np.count_nonzero(audio) == len(utterance_wav(record.start_s, record.end_s))
  assert audio.shape == (2 * RATE,) and set(np.unique(audio[audio != 0])) == {1000 + int(record.start_s * 100)}


def test_missing_wav_and_missing_avi(raw_dir):
  records = {r.name: r for r in iemocap.read(raw_dir).records}
  with pytest.raises(MediaError, match='file not found') as info:
    decode(records[MISSING_WAV])
  assert info.value.path == wav(raw_dir, MISSING_WAV) and not os.path.exists(info.value.path)
  assert records['Ses05M_impro02_F000'].media_path == ''


def test_prepare_end_to_end(raw_dir, tmp_path):
  info = prepare_dataset('iemocap', raw_dir, str(tmp_path / 'data'), workers=1, num_frames=2, frame_size=16)
  assert info['labels'] == list(iemocap.LABELS_4)
  splits = info['splits']
  assert {split: entry['count'] for split, entry in splits.items()} == {'session1': 2, 'session5': 2}
  skipped = {s['name']: s['reason'] for entry in splits.values() for s in entry['skipped']}
  assert skipped == {'Ses01F_impro01_F001': 'label fru not in iemocap4',
                     'Ses01F_impro01_M001': 'label xxx not in iemocap4',
                     'Ses05M_impro02_F000': 'clip not found',
                     MISSING_WAV: f'{wav(raw_dir, MISSING_WAV)}: file not found'}
  builder = tfds.builder_from_directory(os.path.join(str(tmp_path / 'data'), info['tfds']))
  examples = {e['name'].decode(): e for e in builder.as_data_source('session5')}
  assert sorted(examples) == ['Ses05M_script03_1_F000', 'Ses05M_script03_1_M001']
  example = examples['Ses05M_script03_1_M001']
  assert example['label'].decode() == 'happy' and example['sentence'].decode() == "Oh, that's wonderful!"
  assert example['valence'] == pytest.approx(4.5) and example['has_video']
  assert brightness(example['frames'], 0).min() > 100 and brightness(example['frames'], 2).max() < 8


def test_wrong_folder_is_not_iemocap(tmp_path):
  write(str(tmp_path / 'train-label.csv'), 'name,discrete,valence\n')
  with pytest.raises(FormatError, match=f'no <session>/dialog/EmoEvaluation/Ses\\*.txt files under {tmp_path}: '
                                        f'is it {RELEASE}'):
    iemocap.read(str(tmp_path))


def test_unknown_label_map(raw_dir):
  message = r"unknown IEMOCAP label map 'iemocap7'; valid label maps: \['iemocap4', 'iemocap6'\]"
  with pytest.raises(FormatError, match=message):
    iemocap.read(raw_dir, ReaderOptions(label_map='iemocap7'))


@pytest.mark.parametrize('line, message', [
    ('[1.0000 - 2.0000]\tSes02F_impro01_F000\thappy\t[3.0, 3.0, 3.0]', "line 3: unknown IEMOCAP category 'happy'"),
    ('[1.0000 - 2.0000]\tSes02F_impro01_F000\tneu', 'line 3: .* is not a summary line'),
    ('[1.0000 - 2.0000]\tSes02F_impro02_F000\tneu\t[3.0, 3.0, 3.0]',
     "line 3: utterance 'Ses02F_impro02_F000' is not named Ses02F_impro01_<F|M><3 digits>"),
])
def test_bad_summary_lines_name_file_line_and_value(tmp_path, line, message):
  path = write(str(tmp_path / 'Session2' / 'dialog' / 'EmoEvaluation' / 'Ses02F_impro01.txt'), HEADER + line + '\n')
  with pytest.raises(FormatError, match=f'{path}, {message}'):
    iemocap.read(str(tmp_path))
