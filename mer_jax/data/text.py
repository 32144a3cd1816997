"""Tokenizer wrapper and the prompt/answer template that reserves soft-token spans by position."""

import dataclasses
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mer_jax.data import chat

PAD, BOS, EOS, UNK = '<pad>', '<bos>', '<eos>', '<unk>'
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Names pretrained tokenizers use for the same roles, tried in order.
_ROLE_ALIASES = {
    'pad': (PAD, '<|endoftext|>', '<|finetune_right_pad_id|>', '<unk>', '</s>', '<|end_of_text|>'),
    'bos': (BOS, '<s>', '<|begin_of_text|>', '<|im_start|>', '<|endoftext|>'),
    'eos': (EOS, '</s>', '<|end_of_text|>', '<|im_end|>', '<|endoftext|>'),
}

AUDIO_HEADER = 'Audio:'
VIDEO_HEADER = ' Video:'
TRANSCRIPT_HEADER = ' Transcript:'
QUESTION = ' Question: Which emotion does the person express? Answer:'
# Instruction templates (config.augment.prompt_variety samples one per training example); evaluation uses the first.
QUESTIONS = (QUESTION,
             ' Question: What emotion does this person show? Answer:',
             ' Question: How does the person feel? Answer:',
             ' Question: Name the emotion of the speaker. Answer:')
MISSING = ' missing'  # fills a missing modality's slots: 'Audio: missing'
LABEL_END = '.'  # with explanations on, ends the answer's label and precedes the reason


def build_tokenizer(texts: list[str], out_path: str, vocab_size: int = 800) -> None:
  """Trains a byte-level BPE tokenizer on `texts` plus the prompt template and saves tokenizer.json."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  template = [AUDIO_HEADER, VIDEO_HEADER, TRANSCRIPT_HEADER, QUESTION]
  tokenizer.train_from_iterator(list(texts) + template * 50, trainer=trainer)
  tokenizer.save(out_path)


class TextTokenizer:
  """A tokenizer.json with the pad/bos/eos ids the templates need."""

  def __init__(self, path: str):
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:
      raise ValueError(f'cannot read tokenizer file {path}: {e}') from e
    self.path = path
    named = chat.special_tokens(os.path.dirname(os.path.abspath(path)))
    self.pad_id = self._role_id('pad', named.get('pad'))
    self.bos_id = self._role_id('bos', named.get('bos'))
    self.eos_id = self._role_id('eos', named.get('eos'))

  def _role_id(self, role: str, named: str | None) -> int:
    """The id of the token tokenizer_config.json names for `role`, else of the first known alias present."""
    candidates = ((named,) if named else ()) + _ROLE_ALIASES[role]
    for name in candidates:
      token_id = self.tokenizer.token_to_id(name)
      if token_id is not None:
        return token_id
    raise ValueError(f'tokenizer {self.path} has no {role} token (tried {candidates})')

  @property
  def vocab_size(self) -> int:
    """Number of ids the embedding table must cover."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: list[int]) -> str:
    """Text of `ids`, special tokens dropped."""
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclasses.dataclass(frozen=True)
class PromptLayout:
  """Which modalities the prompt carries and how many soft tokens each reserves."""

  modalities: tuple[str, ...]
  num_audio_tokens: int
  num_video_tokens: int
  max_transcript_tokens: int
  seq_len: int


class PromptBuilder:
  """Builds fixed-length token sequences: prompt (with soft-token slots) + answer + padding.

  The answer is ' <label>' + EOS. With explanations on, the label comes first and the reason
  follows: ' <label>.' + ' <reason>' + EOS (' <label>.' + EOS for a clip without a reason), e.g.
  ' happy. The voice is steady. The face shows a smile. The words name no emotion.'.
  `answers` holds each label's scoring candidate, the ids that name it at the start of every
  answer (`label_answer`): ' <label>' + EOS, or ' <label>.' with explanations on. Because the
  label is the answer's first part, scoring a candidate right after the prompt is exactly what
  training teaches, with explanations on or off, and needs no generated explanation.
  """

  def __init__(self, tokenizer: TextTokenizer, layout: PromptLayout, labels: list[str],
               chat_template: chat.ChatTemplate | None = None, explanations: bool = False, num_questions: int = 1):
    self.tokenizer = tokenizer
    self.num_questions = num_questions  # the first num_questions of QUESTIONS may be asked
    self.layout = layout
    self.chat_template = chat_template
    self.explanations = explanations
    self.labels = list(labels)
    self.answers = [self.label_answer(label) for label in self.labels]
    longest = max(len(a) for a in self.answers)
    prompt = max(len(self.prompt_ids('', question=q)[0]) for q in range(num_questions))
    needed = prompt + layout.max_transcript_tokens + longest
    if needed > layout.seq_len:
      raise ValueError(
          f'data.seq_len={layout.seq_len} is too short: the prompt, {layout.max_transcript_tokens} '
          f'transcript tokens and the longest answer need {needed}')

  def for_labels(self, labels: list[str]) -> 'PromptBuilder':
    """The same tokenizer, layout and template with another dataset's labels."""
    return PromptBuilder(self.tokenizer, self.layout, labels, self.chat_template, self.explanations,
                         self.num_questions)

  def label_answer(self, label: str) -> list[int]:
    """The ids naming `label` first in every answer (its scoring candidate): ' <label>' + EOS, or ' <label>.'."""
    if self.explanations:
      return self.tokenizer.encode(f' {label}{LABEL_END}')
    return self.tokenizer.encode(' ' + label) + [self.tokenizer.eos_id]

  def answer_ids(self, label: str, reason: str = '') -> list[int]:
    """The training answer: `label_answer(label)`, then with explanations on ' <reason>' (if any) and EOS."""
    if not self.explanations:
      return self.label_answer(label)
    reason_ids = self.tokenizer.encode(' ' + reason.strip()) if reason.strip() else []
    return self.label_answer(label) + reason_ids + [self.tokenizer.eos_id]

  def prompt_ids(self, sentence: str, missing: tuple[str, ...] = (), question: int = 0
                 ) -> tuple[list[int], list[int]]:
    """Prompt ids (soft-token slots hold the pad id) and the soft-token positions, audio first.

    Without a chat template the prompt starts with BOS; with one, the template's text before and
    after a user turn wraps the prompt (its BOS, if any, is part of that text). A modality in
    `missing` reads 'missing' (its slots hold as many of the word's tokens as fit, the model keeps them there
    instead of soft tokens; a missing transcript is replaced by the word). `question` picks the
    instruction template of QUESTIONS.
    """
    tok, layout, template = self.tokenizer, self.layout, self.chat_template
    ids = tok.encode(template.prefix) if template else [tok.bos_id]
    soft_positions: list[int] = []

    def reserve(header: str, count: int, absent: bool) -> None:
      ids.extend(tok.encode(header))
      soft_positions.extend(range(len(ids), len(ids) + count))
      ids.extend(((tok.encode(MISSING) if absent else []) + [tok.pad_id] * count)[:count])

    if 'audio' in layout.modalities:
      reserve(AUDIO_HEADER, layout.num_audio_tokens, 'audio' in missing)
    if 'video' in layout.modalities:
      reserve(VIDEO_HEADER, layout.num_video_tokens, 'video' in missing)
    if 'text' in layout.modalities:
      ids.extend(tok.encode(TRANSCRIPT_HEADER))
      transcript = MISSING if 'text' in missing else ' ' + sentence.strip()
      ids.extend(tok.encode(transcript)[:layout.max_transcript_tokens])
    ids.extend(tok.encode(QUESTIONS[question]))
    if template:
      ids.extend(tok.encode(template.suffix))
    return ids, soft_positions

  def build(self, sentence: str, answer: list[int], missing: tuple[str, ...] = (), question: int = 0
            ) -> dict[str, np.ndarray]:
    """Fixed-shape arrays for one example: tokens, loss_mask, soft_positions, answer_start, and for each of
    audio and video that the layout has, `<modality>_present` (False when in `missing`)."""
    prompt, soft_positions = self.prompt_ids(sentence, missing, question)
    length = self.layout.seq_len
    tokens = np.full([length], self.tokenizer.pad_id, np.int32)
    loss_mask = np.zeros([length], np.float32)
    sequence = prompt + answer
    if len(sequence) > length:
      raise ValueError(f'sequence of {len(sequence)} tokens exceeds data.seq_len={length}')
    tokens[:len(sequence)] = sequence
    loss_mask[len(prompt):len(sequence)] = 1.0
    return {
        'tokens': tokens,
        'loss_mask': loss_mask,
        'soft_positions': np.asarray(soft_positions, np.int32),
        'answer_start': np.int32(len(prompt)),
        **{f'{m}_present': np.bool_(m not in missing) for m in ('audio', 'video') if m in self.layout.modalities},
    }

  def answer_text(self, generated: list[int]) -> str:
    """The generated answer's text up to the first EOS, stripped."""
    if self.tokenizer.eos_id in generated:
      generated = generated[:generated.index(self.tokenizer.eos_id)]
    return self.tokenizer.decode(generated).strip()

  def label_and_explanation(self, generated: list[int]) -> tuple[str, str]:
    """A generated answer's label text (the words it answers with, known label or not) and its explanation.

    The label text is the answer's text up to the first EOS, or with explanations on the part of it
    before the first '.'; the explanation is the rest, stripped ('' with explanations off).
    """
    text = self.answer_text(generated)
    if not self.explanations:
      return text, ''
    label, _, explanation = text.partition(LABEL_END)
    return label, explanation.strip()

  def parse_label(self, generated: list[int]) -> str | None:
    """The label a generated answer names, or None when it is no known label.

    Its label text (see label_and_explanation), stripped and lower-cased, must equal a label exactly.
    """
    label = self.label_and_explanation(generated)[0].strip().lower()
    return label if label in self.labels else None

