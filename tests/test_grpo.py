"""GRPO: objective numbers, a tiny run that checkpoints and resumes bitwise, reproducible sampling, refusals."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.data import pipeline
from mer_jax.eval.generate import Sampling
from mer_jax.rl import history, objective, rollout
from mer_jax.rl.grpo import train_grpo
from mer_jax.train import checkpoint, run
from mer_jax.train.experiment import Experiment

from configs import grpo
from conftest import tiny_config


def test_advantages_are_zero_when_a_group_agrees_and_normalised_otherwise():
  rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
  advantages = objective.group_advantages(rewards, group_size=3)
  np.testing.assert_allclose(advantages[:3], 0.0)
  np.testing.assert_allclose(advantages[3:], np.array([-1.0, 2.0, -1.0]) / np.sqrt(2.0), rtol=1e-5)


def test_policy_gradient_is_zero_apart_from_kl_when_rewards_are_equal():
  log_probs = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]))
  ref = jnp.log(jnp.array([[0.4, 0.3, 0.8], [0.3, 0.5, 0.2]]))
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  advantages = objective.group_advantages(jnp.array([0.7, 0.7]), group_size=2)

  def loss(lp, kl_coef):
    return objective.grpo_loss(lp, jax.lax.stop_gradient(lp), ref, advantages, mask, 0.2, kl_coef)[0]

  np.testing.assert_array_equal(jax.grad(loss)(log_probs, 0.0), 0.0)
  kl_only = jax.grad(lambda lp: 0.1 * objective.masked_mean(objective.k3_kl(lp, ref), mask))(log_probs)
  with_kl = jax.grad(loss)(log_probs, 0.1)
  assert np.abs(with_kl).max() > 0
  np.testing.assert_allclose(with_kl, kl_only, rtol=1e-6)


def test_k3_kl_is_zero_for_identical_policies_and_positive_otherwise():
  log_probs = jnp.log(jnp.array([0.5, 0.2, 0.9]))
  np.testing.assert_array_equal(objective.k3_kl(log_probs, log_probs), 0.0)
  other = jnp.log(jnp.array([0.4, 0.3, 0.9]))
  kl = objective.k3_kl(log_probs, other)
  assert kl[0] > 0 and kl[1] > 0 and kl[2] == 0
  # exp(d) - d - 1 with d = log(0.4 / 0.5)
  assert float(kl[0]) == pytest.approx(0.8 - np.log(0.8) - 1.0, rel=1e-5)


def test_clipped_objective_equals_a_hand_computation():
  old = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
  new = jnp.log(jnp.array([[0.75, 0.55], [0.25, 0.5]]))  # ratios 1.5, 1.1 | 0.5, 1.0
  advantages = jnp.array([1.0, -2.0])
  mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  loss, parts = objective.grpo_loss(new, old, new, advantages, mask, clip_eps=0.2, kl_coef=0.5)
  # min(r A, clip(r) A): 1.2 (clipped), 1.1 | min(-1.0, -1.6) = -1.6 (clipped); the masked token is left out.
  assert float(parts['surrogate']) == pytest.approx((1.2 + 1.1 - 1.6) / 3, rel=1e-5)
  assert float(loss) == pytest.approx(-(1.2 + 1.1 - 1.6) / 3, rel=1e-5)
  assert float(parts['clip_fraction']) == pytest.approx(2 / 3, rel=1e-5)
  assert float(parts['kl']) == 0.0


def tiny_grpo_config(data_dir: str, sft_run: str):
  config = grpo.get_config('variant=tiny')
  config.data.dir = data_dir
  config.init.run = sft_run
  return config


@pytest.fixture(scope='module')
def sft_run(tiny_run) -> str:
  """The shared tiny supervised run (2 steps): where GRPO starts."""
  return tiny_run


@pytest.fixture(scope='module')
def full_run(prepared_tiny, sft_run, tmp_path_factory) -> str:
  """GRPO on the tiny config, 4 steps in one go."""
  workdir = str(tmp_path_factory.mktemp('grpo') / 'full')
  train_grpo(tiny_grpo_config(prepared_tiny, sft_run), workdir)
  return workdir


def newest_params(workdir: str, config) -> dict:
  return run.restore_params(workdir, Experiment(config))[1]


def test_run_writes_rewards_history_curve_and_moves_the_policy(full_run, sft_run, prepared_tiny):
  rows = history.read(full_run)
  assert [row['step'] for row in rows] == [1, 2, 3, 4]
  for key in ('reward/accuracy', 'reward/format', 'reward/length', 'reward/total', 'rl/kl', 'rl/clip_fraction',
              'rl/entropy', 'answer_tokens', 'sample_accuracy', 'perf/rollout_tokens_per_sec', 'perf/update_sec'):
    assert all(np.isfinite(row[key]) for row in rows), key
  assert rows[0]['rl/kl'] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
  assert all(0 <= row['sample_accuracy'] <= 1 and 1 <= row['answer_tokens'] <= 6 for row in rows)
  assert os.path.getsize(os.path.join(full_run, history.PLOT)) > 0
  config = tiny_grpo_config(prepared_tiny, sft_run)
  with open(os.path.join(full_run, 'config.json')) as f:
    assert json.load(f)['rl']['group_size'] == 4
  after, before = newest_params(full_run, config), newest_params(sft_run, tiny_config(prepared_tiny))
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(after['llm']), jax.tree.leaves(before['llm']))]
  assert any(moved)


def test_a_run_resumed_from_its_checkpoint_repeats_the_same_steps_bitwise(full_run, sft_run, prepared_tiny, tmp_path):
  config = tiny_grpo_config(prepared_tiny, sft_run)
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(full_run, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))  # as if stopped after step 2's checkpoint
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).latest_step() == 2
  train_grpo(config, workdir)
  without_timing = lambda rows: [{k: v for k, v in row.items() if not k.startswith('perf/')} for row in rows]
  assert [row['step'] for row in history.read(workdir)] == [1, 2, 3, 4]
  assert without_timing(history.read(workdir)) == without_timing(history.read(full_run))
  for a, b in zip(jax.tree.leaves(newest_params(full_run, config)), jax.tree.leaves(newest_params(workdir, config))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampling_is_reproducible_for_a_seed(sft_run, prepared_tiny):
  experiment = Experiment(tiny_grpo_config(prepared_tiny, sft_run))
  tokenizer = experiment.builder.tokenizer
  sample = rollout.make_rollout(experiment, max_new_tokens=6, stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
  params = experiment.init_state()['params']
  batch, _ = next(pipeline.eval_batches(experiment.config, experiment.info, 'test', 2, experiment.builder))
  clips = experiment.global_batch(rollout.repeat_clips(batch, 4))
  sampling = Sampling(temperature=1.0)
  sequences, tokens, counts = sample(params, clips, jax.random.key(7), sampling)
  _, again, again_counts = sample(params, clips, jax.random.key(7), sampling)
  _, other, _ = sample(params, clips, jax.random.key(8), sampling)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(again))
  np.testing.assert_array_equal(np.asarray(counts), np.asarray(again_counts))
  assert not np.array_equal(np.asarray(tokens), np.asarray(other))
  # Each sequence holds its prompt, then exactly its generated tokens under the loss mask.
  start = int(batch['answer_start'][0])
  count = int(counts[0])
  np.testing.assert_array_equal(np.asarray(sequences['tokens'])[0, start:start + count], np.asarray(tokens)[0, :count])
  assert np.asarray(sequences['loss_mask'])[0].sum() == count


@pytest.mark.parametrize('change, message', [
    (lambda c: c.init.update(run=''), 'config.init.run is empty'),
    (lambda c: c.init.update(run='/no/such/run'), 'config.init.run=/no/such/run does not exist'),
    (lambda c: c.model.llm.update(mlp=48), 'config.init.run: checkpoint .* does not match the model'),
    (lambda c: c.rl.update(rewards=('accuracy', 'kindness'), reward_weights=(1.0, 1.0)),
     "config.rl.rewards: unknown reward 'kindness'"),
    (lambda c: c.rl.update(group_size=1), 'config.rl.group_size=1'),
])
def test_bad_settings_are_refused_before_the_workdir_is_written(change, message, sft_run, prepared_tiny, tmp_path):
  config = tiny_grpo_config(prepared_tiny, sft_run)
  change(config)
  workdir = str(tmp_path / 'refused')
  with pytest.raises(ValueError, match=message):
    train_grpo(config, workdir)
  assert not os.path.exists(workdir)


def test_the_lora_reference_is_the_base_without_adapters():
  from mer_jax.rl.update import without_adapter_effect
  params = {'llm': {'q': {'kernel': jnp.ones([2, 2]), 'lora': {'a': jnp.ones([2, 1]), 'b': jnp.ones([1, 2])}}}}
  reference = without_adapter_effect(params)
  np.testing.assert_array_equal(reference['llm']['q']['kernel'], 1.0)
  np.testing.assert_array_equal(reference['llm']['q']['lora']['b'], 0.0)
  np.testing.assert_array_equal(params['llm']['q']['lora']['b'], 1.0)


def test_evaluation_reports_the_generated_answer_length():
  from mer_jax.eval.evaluate import answer_length, build_report
  assert answer_length([5, 6, 2, 0], eos_id=2) == 2 and answer_length([5, 6, 7], eos_id=2) == 3
  predictions = {'true': np.array([0, 1, -1]), 'scored': np.array([0, 1, 0]), 'generated': np.array([0, -1, 0]),
                 'texts': np.array(['a', 'x y', 'a']), 'label_texts': np.array(['a', 'x y', 'a']),
                 'explanations': np.array(['', '', '']), 'valence_true': np.full(3, np.nan),
                 'valence_pred': np.zeros(3), 'names': np.array(['c0', 'c1', 'c2']),
                 'answer_tokens': np.array([1, 5, 9])}
  report = build_report(predictions, ['a', 'b'], 0.0, 'test')
  assert report['generated']['answer_tokens'] == 3.0  # the labelled clips' answers: (1 + 5) / 2
  assert report['generated']['invalid'] == 1 and report['generated']['accuracy'] == 0.5
