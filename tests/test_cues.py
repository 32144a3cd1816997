"""Tests the explanation scores: cue phrases found in text, cue accuracy on hand-made cases, token F1."""

import pytest

from mer_jax.data import synthetic
from mer_jax.data.descriptions import describe
from mer_jax.eval import cues

HAPPY = 'The voice is steady. The face shows a smile. The words name no emotion.'
ANGRY = 'The voice is loud and fast. The face shows a frown. The words name the emotion.'


def test_find_cues_reads_each_kind():
  assert cues.find_cues(HAPPY) == {'voice': {1}, 'face': {1}, 'text': {False}}
  assert cues.find_cues('the VOICE is  loud and fast, and the face shows a frown') == {
      'voice': {2}, 'face': {-1}, 'text': set()}
  assert cues.find_cues('The face shows a smile. The face shows a frown.')['face'] == {1, -1}
  assert cues.find_cues('The face shows a smiley sticker.')['face'] == set()


def test_descriptions_name_every_cue_once():
  for label in synthetic.LABELS:
    named = synthetic.EMOTION_SENTENCES[label][0]
    found = cues.find_cues(synthetic.planted_cues(label, named)['description'])
    assert found == {'voice': {synthetic.AROUSAL_LEVEL[label]}, 'face': {synthetic.FACE_GROUP[label]},
                     'text': {True}}
  assert describe(0, -1, False) == ('The voice is quiet and slow. The face shows a frown. '
                                    'The words name no emotion.')


def test_cue_accuracy_hand_checked():
  references = [HAPPY, HAPPY, ANGRY, ANGRY]
  generated = [
      HAPPY,                                                           # all right
      'The voice is loud and fast. The face shows a smile.',           # wrong voice, right face, no text cue
      # Right voice and text; two face phrases, so the face is wrong.
      'The voice is loud and fast. The face shows a frown. The face shows a smile. The words name the emotion.',
      '',                                                              # nothing named: all wrong
  ]
  scores = cues.cue_accuracy(references, generated)
  assert scores == {'voice': pytest.approx(2 / 4), 'face': pytest.approx(2 / 4), 'text': pytest.approx(2 / 4),
                    'all': pytest.approx(1 / 4), 'count': 4}


def test_cue_accuracy_counts_only_kinds_the_reference_names():
  scores = cues.cue_accuracy(['The face shows a smile.', 'She looks calm and speaks softly.'],
                             ['The face shows a smile. The voice is loud and fast.', 'calm'])
  assert scores == {'face': 1.0, 'all': 1.0, 'count': 1}
  assert cues.cue_accuracy(['She looks calm.'], ['She looks calm.']) is None
  with pytest.raises(ValueError, match='2 reference reasons but 1 generated'):
    cues.cue_accuracy([HAPPY, HAPPY], [HAPPY])


def test_token_f1_and_explanation_scores():
  assert cues.token_f1('the face shows a smile', 'The face shows a frown') == pytest.approx(0.8)
  # Shared words with multiplicity: 'a a b' vs 'a b b' share {a, b}: P = R = 2/3.
  assert cues.token_f1('a a b', 'a b b') == pytest.approx(2 / 3)
  assert cues.token_f1('smile', '') == 0.0
  scores = cues.explanation_scores([HAPPY, '', 'She looks calm.'], [HAPPY, 'anything', 'She looks tense.'])
  assert scores['count'] == 2
  assert scores['token_f1'] == pytest.approx((1.0 + 2 / 3) / 2)
  assert scores['cue_accuracy'] == {'voice': 1.0, 'face': 1.0, 'text': 1.0, 'all': 1.0, 'count': 1}
  assert cues.explanation_scores(['', ' '], ['a', 'b']) is None
