"""Rewards of sampled answers: plain functions of one Completion, chosen by name in config.rl.rewards.

A reward is any function `(completion: Completion) -> float`. The built-in ones are named
'accuracy', 'format' and 'length'; any other is given as 'package.module:function' and imported.
"""

import dataclasses
import importlib
import re
from typing import Any, Callable, Sequence

from mer_jax.eval import metrics

# Answers that reason first: '<think>...</think><answer>...</answer>' (the label is parsed from the answer part).
THINK_ANSWER = re.compile(r'^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$', re.DOTALL)
LABEL_END = '.'  # ends the label in the trained ' <label>. <reason>' structure
LABEL_WORDS = re.compile(r"[A-Za-z][A-Za-z' -]{0,39}")  # a label text: a few words, no punctuation
SOFT_LENGTH = 0.75  # answers longer than this share of the token budget lose reward linearly


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled answer and what it is judged against.

  `text` is the answer up to its EOS; `finished` whether it reached EOS within `max_tokens`;
  `num_tokens` counts its tokens with the EOS. `references` is the clip's open-vocabulary set
  (empty: closed set, judged against `truth`); `wheels` (eval/wheel.py) scores such sets as the
  MER2025 OV track does, None uses the default grouping file.
  """

  text: str
  truth: str
  labels: tuple[str, ...]
  num_tokens: int
  max_tokens: int
  finished: bool
  explanations: bool = False
  references: tuple[str, ...] = ()
  wheels: Any = None


Reward = Callable[[Completion], float]


def answer_part(completion: Completion) -> tuple[str, str]:
  """(label text, reason) of an answer: inside <answer> of a think/answer answer, else the trained structure."""
  matched = THINK_ANSWER.match(completion.text)
  text = matched.group(2).strip() if matched else completion.text.strip()
  if not completion.explanations and not matched:
    return text, ''
  label, _, reason = text.partition(LABEL_END)
  return label.strip(), reason.strip()


def parsed_label(completion: Completion) -> str | None:
  """The known label the answer names (lower-cased exact match of its label text), None otherwise."""
  label = answer_part(completion)[0].lower()
  return label if label in completion.labels else None


def accuracy(completion: Completion) -> float:
  """Closed set: 1 when the parsed label is the truth, else 0. Open vocabulary: the set F-score of its words."""
  if completion.references:
    words = metrics.split_labels(answer_part(completion)[0])
    scores = metrics.score_open_vocabulary([list(completion.references)], [words], completion.wheels)
    return float(scores['fscore'] if completion.wheels is not None else scores['f1'])
  return float(parsed_label(completion) is not None and parsed_label(completion) == completion.truth)


def format_reward(completion: Completion) -> float:
  """1 when the answer ends with EOS in the trained structure (' label' or ' label. reason') or as think/answer."""
  if not completion.finished:
    return 0.0
  label, _ = answer_part(completion)
  if LABEL_WORDS.fullmatch(label) is None:
    return 0.0
  if THINK_ANSWER.match(completion.text) or not completion.explanations:
    return 1.0
  return float(completion.text.strip().startswith(label + LABEL_END))


def length_penalty(completion: Completion) -> float:
  """0 up to SOFT_LENGTH of the token budget, falling linearly to -1 at the budget; -1 without an EOS."""
  if not completion.finished:
    return -1.0
  soft = SOFT_LENGTH * completion.max_tokens
  if completion.num_tokens <= soft:
    return 0.0
  return -min((completion.num_tokens - soft) / max(completion.max_tokens - soft, 1.0), 1.0)


REWARDS: dict[str, Reward] = {'accuracy': accuracy, 'format': format_reward, 'length': length_penalty}


def resolve(name: str) -> Reward:
  """The reward called `name`: a built-in one, or 'package.module:function'; ValueError naming the key otherwise."""
  if name in REWARDS:
    return REWARDS[name]
  module_name, _, function = name.partition(':')
  if not function:
    raise ValueError(f'config.rl.rewards: unknown reward {name!r}; built-in: {", ".join(REWARDS)}, '
                     "or 'package.module:function'")
  try:
    reward = getattr(importlib.import_module(module_name), function)
  except (ImportError, AttributeError) as error:
    raise ValueError(f'config.rl.rewards: reward {name!r} cannot be imported ({error})') from error
  if not callable(reward):
    raise ValueError(f'config.rl.rewards: {name!r} is not a function')
  return reward


def resolve_all(names: Sequence[str], weights: Sequence[float]) -> list[tuple[str, Reward, float]]:
  """(name, function, weight) per configured reward; refuses unknown names and a weight count that differs."""
  if not names:
    raise ValueError('config.rl.rewards is empty: name at least one reward')
  if len(names) != len(weights):
    raise ValueError(f'config.rl.reward_weights has {len(weights)} weight(s) for {len(names)} reward(s) '
                     f'in config.rl.rewards={tuple(names)}')
  return [(name, resolve(name), float(weight)) for name, weight in zip(names, weights)]


def score(completions: Sequence[Completion], chosen: Sequence[tuple[str, Reward, float]]) -> dict[str, list[float]]:
  """Each reward's value per completion, by name, and their weighted sum under 'total'."""
  values = {name: [float(reward(c)) for c in completions] for name, reward, _ in chosen}
  values['total'] = [sum(weight * values[name][i] for name, _, weight in chosen) for i in range(len(completions))]
  return values
