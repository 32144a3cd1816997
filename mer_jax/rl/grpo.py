"""The GRPO loop: sample G answers per clip, score them, update the policy against a frozen reference; resumable."""

import contextlib
import time
from typing import Any, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from mer_jax.eval import wheel
from mer_jax.eval.generate import Sampling
from mer_jax.rl import history, objective, rewards, rollout, update
from mer_jax.train import init_run
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import (HookFactory, StopSignals, Hook, end_of_step, format_duration, next_batch,
                                   open_run, train)


def check_config(config: ConfigDict) -> list[tuple[str, rewards.Reward, float]]:
  """Refuses, before anything is built, an rl section GRPO cannot run; returns the chosen rewards."""
  rl = config.rl
  if not init_run.source_run(config):
    raise ValueError(f'{init_run.KEY} is empty: GRPO starts from a supervised run; name its workdir')
  if rl.group_size < 2:
    raise ValueError(f'config.rl.group_size={rl.group_size}: group advantages need at least 2 samples per clip')
  if not rl.temperature > 0:
    raise ValueError(f'config.rl.temperature={rl.temperature}: rollouts sample, so it must be > 0')
  Sampling(rl.temperature, rl.top_k, rl.top_p).validate()
  if rl.updates_per_batch < 1 or rl.max_new_tokens < 1 or rl.clip_eps <= 0 or rl.kl_coef < 0:
    raise ValueError('need config.rl.updates_per_batch >= 1, rl.max_new_tokens >= 1, rl.clip_eps > 0 and '
                     f'rl.kl_coef >= 0; got {rl.updates_per_batch}, {rl.max_new_tokens}, {rl.clip_eps}, {rl.kl_coef}')
  return rewards.resolve_all(tuple(rl.rewards), tuple(rl.reward_weights))


def train_grpo(config: ConfigDict, workdir: str, stop_at: int | None = None,
               hooks: HookFactory | None = None) -> dict[str, float]:
  """Runs (or resumes) GRPO in `workdir` to config.train.steps, starting from config.init.run's parameters."""
  check_config(config)
  return train(config, workdir, stop_at, hooks, loop=grpo_loop)


class Stage:
  """One run's compiled rollout, scoring and update functions, rewards and reference parameters."""

  def __init__(self, experiment: Experiment):
    config, rl = experiment.config, experiment.config.rl
    self.experiment, self.rl = experiment, rl
    self.rewards = check_config(config)
    self.wheels = wheel.load(rl.wheels) if rl.wheels else None
    tokenizer = experiment.builder.tokenizer
    self.rollout = rollout.make_rollout(experiment, max_new_tokens=rl.max_new_tokens,
                                        stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    self.sampling = Sampling(float(rl.temperature), int(rl.top_k), float(rl.top_p))
    self.lora = config.model.lora.rank > 0
    self.score = update.make_score(experiment)
    self.score_reference = update.make_score(experiment, reference=True) if self.lora else self.score
    self.update = update.make_update(experiment, rl.clip_eps, rl.kl_coef)
    # The reference is the starting point: with LoRA the base without adapters (no copy), else the init.run params.
    self.reference = None if self.lora else experiment.init_state()['params']

  def step(self, state: dict, host_batch: dict[str, np.ndarray], step: int) -> tuple[dict, dict[str, float]]:
    """One GRPO step: rollouts, rewards, advantages, rl.updates_per_batch updates -> (state, scalars)."""
    exp, rl = self.experiment, self.rl
    clips = rollout.repeat_clips(host_batch, rl.group_size)
    key = jax.random.fold_in(jax.random.key(exp.config.seed), step)
    started = time.perf_counter()
    sequences, generated, num_tokens = self.rollout(state['params'], exp.global_batch(clips), key, self.sampling)
    generated, num_tokens = np.asarray(generated), np.asarray(num_tokens)
    rollout_sec = time.perf_counter() - started
    completions = rollout.completions(exp.builder, generated, num_tokens, clips['label'], self.wheels)
    values = rewards.score(completions, self.rewards)
    advantages = np.asarray(objective.group_advantages(np.asarray(values['total']), rl.group_size))
    started = time.perf_counter()
    reference = state['params'] if self.lora else self.reference
    ref_log_probs = self.score_reference(reference, sequences)
    old_log_probs = self.score(state['params'], sequences) if rl.updates_per_batch > 1 else None
    adv = exp.global_batch({'advantages': advantages.astype(np.float32)})['advantages']
    for _ in range(rl.updates_per_batch):
      state, metrics = self.update(state, sequences, adv, old_log_probs, ref_log_probs)
    metrics = {k: float(v) for k, v in metrics.items()}
    update_sec = (time.perf_counter() - started) / rl.updates_per_batch
    grouped = np.asarray(values['total']).reshape(-1, rl.group_size)
    scalars = {f'reward/{name}': float(np.mean(v)) for name, v in values.items()}
    scalars.update({f'rl/{k}': v for k, v in metrics.items()})
    scalars.update({
        'sample_accuracy': float(np.mean([rewards.parsed_label(c) == c.truth for c in completions])),
        'answer_tokens': float(np.mean(num_tokens)),
        'rl/group_reward_std': float(np.mean(np.std(grouped, axis=1))),
        'rl/groups_without_signal': float(np.mean(np.std(grouped, axis=1) == 0)),
        'perf/rollout_tokens_per_sec': float(np.sum(num_tokens)) / max(rollout_sec, 1e-9),
        'perf/update_sec': update_sec,
    })
    return state, scalars


def grpo_loop(experiment: Experiment, workdir: str, signals: StopSignals, stop_at: int | None,
              hooks: Sequence[Hook]) -> dict[str, float]:
  """The steps of train_grpo(): restore, roll out, reward, update, log, checkpoint, run hooks, stop on a signal."""
  config = experiment.config
  train_config = config.train
  is_chief = jax.process_index() == 0
  stage = Stage(experiment)
  hook_scalars: dict[str, float] = {}
  with contextlib.ExitStack() as cleanup:
    files = open_run(experiment, workdir, train_config.batch_size, cleanup)
    state = files.state
    if is_chief:
      history.truncate(workdir, files.start_step)
    last_step = train_config.steps if stop_at is None else min(stop_at, train_config.steps)
    started = time.perf_counter()
    for step in range(files.start_step + 1, last_step + 1):
      state, scalars = stage.step(state, next_batch(files.iterator, config.data.dir), step)
      files.writer.write_scalars(step, scalars)
      if is_chief:
        history.append(workdir, step, scalars)
        if step % train_config.log_every == 0 or step == last_step:
          print(log_line(step, train_config.steps, scalars, time.perf_counter() - started,
                         step - files.start_step), flush=True)
      stopping = signals.stop_requested(step, files.checkpointer)
      if end_of_step(files, train_config, step, last_step, state, hooks, hook_scalars, signals, stopping):
        break
    if is_chief and (path := history.plot(workdir)):
      print(f'reward curve: {path}')
  return hook_scalars


def log_line(step: int, total: int, scalars: dict[str, float], elapsed: float, done: int) -> str:
  """One progress line: rewards, sample accuracy, KL, clip fraction, answer length, entropy, speed, ETA."""
  rewards_text = '  '.join(f"{k.removeprefix('reward/')} {v:.3f}" for k, v in scalars.items() if k.startswith('reward/'))
  per_step = elapsed / max(done, 1)
  return (f"step {step}/{total}  {rewards_text}  acc {scalars['sample_accuracy']:.3f}  "
          f"kl {scalars['rl/kl']:.4f}  clip {scalars['rl/clip_fraction']:.3f}  len {scalars['answer_tokens']:.2f}  "
          f"entropy {scalars['rl/entropy']:.3f}  {scalars['perf/rollout_tokens_per_sec']:.0f} rollout tok/s  "
          f"update {scalars['perf/update_sec']:.2f} s  ETA {format_duration(per_step * (total - step))}")

