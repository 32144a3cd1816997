"""Explanation scores: cue accuracy from the fixed cue phrases of mer_jax.data.descriptions, and token F1.

Cue accuracy compares, for each cue kind (voice, face, text), the phrases found in a generated
explanation with the one found in the reference reason. A kind counts for an example when its
reference names exactly one phrase of that kind (every synthetic description names one of each);
it is right when the generated explanation names that phrase and no other of its kind, so a wrong
phrase, two phrases or none are wrong. 'all' is the share of counted examples whose counted kinds
are all right. A phrase is found as whole words in the lower-cased text (whitespace collapsed),
without its final period.

Free-form reasons (real datasets) name none of these phrases: cue accuracy is then None and only
token F1 is reported, the SQuAD-style overlap of the lower-cased words of the generated
explanation and the reference reason.
"""

import collections
from collections.abc import Sequence
import re

import numpy as np

from mer_jax.data.descriptions import CUE_KINDS, CUE_PHRASES


def _normalize(text: str) -> str:
  """Lower-cased text with whitespace runs collapsed to one space."""
  return ' '.join(text.lower().split())


_PATTERNS = {kind: {value: re.compile(r'\b' + re.escape(_normalize(phrase).rstrip('.')) + r'\b')
                    for value, phrase in phrases.items()}
             for kind, phrases in CUE_PHRASES.items()}


def find_cues(text: str) -> dict[str, set]:
  """The cue values whose phrase `text` names, per kind, e.g. {'voice': {2}, 'face': {1}, 'text': set()}."""
  text = _normalize(text)
  return {kind: {value for value, pattern in patterns.items() if pattern.search(text)}
          for kind, patterns in _PATTERNS.items()}


def _check_lengths(references: Sequence[str], generated: Sequence[str]) -> None:
  """Fails unless there is one generated text per reference."""
  if len(references) != len(generated):
    raise ValueError(f'{len(references)} reference reasons but {len(generated)} generated explanations')


def cue_accuracy(references: Sequence[str], generated: Sequence[str]) -> dict[str, float] | None:
  """Per-kind and overall ('all') cue accuracy and the number of counted examples ('count').

  None when no reference names a cue phrase. A kind no reference names is left out.
  """
  _check_lengths(references, generated)
  right: dict[str, list[bool]] = {kind: [] for kind in CUE_KINDS}
  overall = []
  for reference, text in zip(references, generated):
    wanted, found = find_cues(reference), find_cues(text)
    kinds = [kind for kind in CUE_KINDS if len(wanted[kind]) == 1]
    for kind in kinds:
      right[kind].append(found[kind] == wanted[kind])
    if kinds:
      overall.append(all(right[kind][-1] for kind in kinds))
  if not overall:
    return None
  scores = {kind: float(np.mean(hits)) for kind, hits in right.items() if hits}
  return {**scores, 'all': float(np.mean(overall)), 'count': len(overall)}


def token_f1(reference: str, generated: str) -> float:
  """F1 of the shared lower-cased words (with multiplicity) of two texts; 0 when they share none."""
  ref_words, gen_words = re.findall(r'\w+', reference.lower()), re.findall(r'\w+', generated.lower())
  common = sum((collections.Counter(ref_words) & collections.Counter(gen_words)).values())
  if not common:
    return 0.0
  precision, recall = common / len(gen_words), common / len(ref_words)
  return 2 * precision * recall / (precision + recall)


def explanation_scores(references: Sequence[str], generated: Sequence[str]) -> dict | None:
  """Token F1 and cue accuracy over the examples with a reference reason; None when none has one."""
  _check_lengths(references, generated)
  pairs = [(reference, text) for reference, text in zip(references, generated) if reference.strip()]
  if not pairs:
    return None
  with_reason, texts = zip(*pairs)
  return {
      'count': len(pairs),
      'token_f1': float(np.mean([token_f1(r, g) for r, g in pairs])),
      'cue_accuracy': cue_accuracy(with_reason, texts),
  }
