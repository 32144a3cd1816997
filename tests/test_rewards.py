"""Rewards on crafted answers: right, wrong, malformed, empty, overlong; the registry and user rewards."""

import pytest

from mer_jax.rl import rewards
from mer_jax.rl.rewards import Completion

LABELS = ('happy', 'sad', 'angry', 'neutral')


def answer(text: str, truth: str = 'happy', *, num_tokens: int = 3, max_tokens: int = 8, finished: bool = True,
           explanations: bool = False, references: tuple[str, ...] = ()) -> Completion:
  return Completion(text=text, truth=truth, labels=LABELS, num_tokens=num_tokens, max_tokens=max_tokens,
                    finished=finished, explanations=explanations, references=references)


def user_reward(completion: Completion) -> float:
  """A reward defined outside the package: 2 for answers that mention 'happy'."""
  return 2.0 * ('happy' in completion.text)


@pytest.mark.parametrize('completion, expected', [
    (answer('happy'), 1.0),
    (answer('Happy'), 1.0),
    (answer('sad'), 0.0),
    (answer('happy sad !!'), 0.0),
    (answer(''), 0.0),
    (answer('happy. The voice rises.', explanations=True), 1.0),
    (answer('sad. The voice rises.', explanations=True), 0.0),
    (answer('<think>a smile</think><answer>happy</answer>'), 1.0),
    (answer('<think>a smile</think><answer>angry</answer>'), 0.0),
])
def test_closed_set_accuracy(completion, expected):
  assert rewards.accuracy(completion) == expected


def test_open_vocabulary_accuracy_is_the_set_score():
  assert rewards.accuracy(answer('happy, joyful', references=('happy', 'joyful'))) == pytest.approx(1.0)
  assert rewards.accuracy(answer('angry', references=('happy',))) == 0.0
  partial = rewards.accuracy(answer('happy, angry', references=('happy',)))
  assert 0.0 < partial < 1.0


@pytest.mark.parametrize('completion, expected', [
    (answer('happy'), 1.0),
    (answer('happy', finished=False), 0.0),
    (answer(''), 0.0),
    (answer('happy!!! ??'), 0.0),
    (answer('happy. The voice rises.', explanations=True), 1.0),
    (answer('happy the voice rises', explanations=True), 0.0),
    (answer('happy.', explanations=True), 1.0),
    (answer('happy!! sad. The voice rises.', explanations=True), 0.0),
    (answer('. The voice rises.', explanations=True), 0.0),
    (answer('<think>a smile</think><answer>happy</answer>'), 1.0),
    (answer('<think>a smile</think><answer></answer>'), 0.0),
    (answer('<think>a smile<answer>happy</answer>'), 0.0),
])
def test_format(completion, expected):
  assert rewards.format_reward(completion) == expected


@pytest.mark.parametrize('num_tokens, finished, expected', [
    (3, True, 0.0), (6, True, 0.0), (7, True, -0.5), (8, True, -1.0), (8, False, -1.0), (0, True, 0.0)])
def test_length_penalty(num_tokens, finished, expected):
  assert rewards.length_penalty(answer('happy', num_tokens=num_tokens, finished=finished)) == pytest.approx(expected)


def test_registry_resolves_built_in_and_user_rewards_and_weights_them():
  chosen = rewards.resolve_all(('accuracy', 'tests.test_rewards:user_reward'), (1.0, 0.5))
  values = rewards.score([answer('happy'), answer('sad')], chosen)
  assert values['accuracy'] == [1.0, 0.0]
  assert values['tests.test_rewards:user_reward'] == [2.0, 0.0]
  assert values['total'] == [2.0, 0.0]


@pytest.mark.parametrize('names, weights, message', [
    (('accuracy', 'kindness'), (1.0, 1.0), "unknown reward 'kindness'"),
    (('no_such_module_xyz:f',), (1.0,), 'cannot be imported'),
    (('tests.test_rewards:LABELS',), (1.0,), 'is not a function'),
    (('accuracy',), (1.0, 2.0), 'config.rl.reward_weights has 2'),
    ((), (), 'config.rl.rewards is empty'),
])
def test_bad_reward_configs_are_refused(names, weights, message):
  with pytest.raises(ValueError, match='config.rl') as error:
    rewards.resolve_all(names, weights)
  assert message in str(error.value)
