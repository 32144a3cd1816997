"""Tokenizer training and the prompt template: soft-token slots, answer span and label parsing."""

import numpy as np
import pytest

from mer_jax.data import text

LABELS = ['neutral', 'angry', 'happy', 'sad', 'worried', 'surprise']


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  text.build_tokenizer(['I am so happy today.', 'The weather is fine.', 'Leave me alone!'] + LABELS, path, 300)
  return text.TextTokenizer(path)


def layout(modalities=('audio', 'video', 'text'), seq_len=64):
  return text.PromptLayout(modalities, 4, 3, 12, seq_len)


def test_special_token_ids(tokenizer):
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  assert tokenizer.decode(tokenizer.encode(' happy')) == ' happy'


def test_build_reserves_soft_spans_and_masks_answer(tokenizer):
  builder = text.PromptBuilder(tokenizer, layout(), LABELS)
  example = builder.build('I am so happy today.', builder.answers[2])
  tokens, mask, soft = example['tokens'], example['loss_mask'], example['soft_positions']
  assert tokens.shape == (64,) and mask.shape == (64,)
  assert soft.shape == (7,)
  assert np.all(tokens[soft] == tokenizer.pad_id)
  assert np.all(np.diff(soft[:4]) == 1) and np.all(np.diff(soft[4:]) == 1) and soft[4] > soft[3] + 1
  start = int(example['answer_start'])
  answer = builder.answers[2]
  assert tokens[start:start + len(answer)].tolist() == answer
  assert answer[-1] == tokenizer.eos_id
  assert mask.sum() == len(answer) and mask[start:start + len(answer)].all()
  assert np.all(tokens[start + len(answer):] == tokenizer.pad_id)


def test_modalities_change_the_prompt(tokenizer):
  text_only = text.PromptBuilder(tokenizer, layout(('text',)), LABELS).build('Hello there', [5, 2])
  audio_only = text.PromptBuilder(tokenizer, layout(('audio',)), LABELS).build('Hello there', [5, 2])
  assert text_only['soft_positions'].shape == (0,)
  assert audio_only['soft_positions'].shape == (4,)
  assert 'Hello' in tokenizer.decode(text_only['tokens'].tolist())
  assert 'Hello' not in tokenizer.decode(audio_only['tokens'].tolist())


def test_transcript_is_truncated(tokenizer):
  builder = text.PromptBuilder(tokenizer, layout(('text',)), LABELS)
  short = builder.build('word', builder.answers[0])['answer_start']
  long = builder.build('word ' * 100, builder.answers[0])['answer_start']
  assert long - short <= 12


def test_too_short_sequence_is_refused(tokenizer):
  with pytest.raises(ValueError, match='seq_len=16 is too short'):
    text.PromptBuilder(tokenizer, layout(seq_len=16), LABELS)


def test_parse_label(tokenizer):
  builder = text.PromptBuilder(tokenizer, layout(), LABELS)
  assert builder.parse_label(builder.answers[3] + [7, 7]) == 'sad'
  assert builder.parse_label(tokenizer.encode(' Happy') + [tokenizer.eos_id]) == 'happy'
  assert builder.parse_label(tokenizer.encode(' joyful') + [tokenizer.eos_id]) is None
  assert builder.parse_label(tokenizer.encode(' happy sad')) is None


REASON = 'The voice is steady. The face shows a smile. The words name no emotion.'


def test_answer_round_trip_without_explanations(tokenizer):
  builder = text.PromptBuilder(tokenizer, layout(), LABELS)
  answer = builder.answer_ids('happy', REASON)
  assert answer == builder.answers[2] == tokenizer.encode(' happy') + [tokenizer.eos_id]
  example = builder.build('I am so happy today.', answer)
  generated = example['tokens'][int(example['answer_start']):].tolist()
  assert builder.answer_text(generated) == 'happy'
  assert builder.parse_label(generated) == 'happy'
  assert builder.label_and_explanation(generated) == ('happy', '')


def test_answer_round_trip_with_explanations(tokenizer):
  builder = text.PromptBuilder(tokenizer, layout(seq_len=128), LABELS, explanations=True)
  answer = builder.answer_ids('happy', REASON)
  # Label first: the scoring candidate is the exact prefix of the training answer, then the reason and EOS.
  assert builder.answers[2] == tokenizer.encode(' happy.')
  assert answer[:len(builder.answers[2])] == builder.answers[2] and answer[-1] == tokenizer.eos_id
  example = builder.build('I am so happy today.', answer)
  start = int(example['answer_start'])
  assert example['loss_mask'].sum() == len(answer)
  generated = example['tokens'][start:].tolist()
  assert builder.answer_text(generated) == 'happy. ' + REASON
  assert builder.parse_label(generated) == 'happy'
  assert builder.label_and_explanation(generated) == ('happy', REASON)
  assert builder.answer_ids('sad', '  ') == tokenizer.encode(' sad.') + [tokenizer.eos_id]


@pytest.mark.parametrize('answer, label, label_text, explanation', [
    (' Sad. The face shows a frown.', 'sad', 'Sad', 'The face shows a frown.'),
    (' happy', 'happy', 'happy', ''),
    (' The face shows a smile. happy.', None, 'The face shows a smile', 'happy.'),
    (' joyful. The voice is steady.', None, 'joyful', 'The voice is steady.'),
    (' happy sad. The voice is steady.', None, 'happy sad', 'The voice is steady.'),
    ('', None, '', ''),
])
def test_parse_label_with_explanations(tokenizer, answer, label, label_text, explanation):
  builder = text.PromptBuilder(tokenizer, layout(seq_len=128), LABELS, explanations=True)
  generated = tokenizer.encode(answer) + [tokenizer.eos_id] + tokenizer.encode(' angry.')
  assert builder.parse_label(generated) == label
  assert builder.label_and_explanation(generated) == (label_text, explanation)
