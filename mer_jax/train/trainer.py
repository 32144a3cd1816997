"""The training loop: sharded steps, clu metrics to TensorBoard, progress, validation, Orbax checkpoints."""

import os
import time
from typing import Any

import flax.struct
import jax
from clu import metric_writers
from clu import metrics as clu_metrics

from mer_jax.data import pipeline
from mer_jax.eval.evaluate import evaluate
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import Experiment
from mer_jax.train.optim import learning_rate_schedule, parameter_counts


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Running averages of the step's outputs between log lines."""

  loss: clu_metrics.Average.from_output('loss')
  lm_loss: clu_metrics.Average.from_output('lm_loss')
  valence_mse: clu_metrics.Average.from_output('valence_mse')
  grad_norm: clu_metrics.Average.from_output('grad_norm')


def format_duration(seconds: float) -> str:
  """Seconds as '1h02m03s', '2m03s' or '3s'."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


class Progress:
  """Steps/s, examples/s and ETA between two log points."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    """Rates since the previous call."""
    now = time.perf_counter()
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    return {'steps_per_sec': steps_per_sec, 'examples_per_sec': steps_per_sec * self.batch_size,
            'eta_sec': (self.total_steps - step) / max(steps_per_sec, 1e-9)}


def train(config: Any, workdir: str, stop_at: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir` to config.train.steps; returns the last validation report.

  `stop_at` ends this invocation after that step (checkpointed) as a preempted job would; running
  again resumes exactly where it stopped.
  """
  train_config = config.train
  experiment = Experiment(config)
  is_chief = jax.process_index() == 0
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), train_config.keep_checkpoints)
  shard_index, shard_count, host_batch = experiment.host_shard(train_config.batch_size)
  dataset = pipeline.train_dataset(config, experiment.info, host_batch, shard_index=shard_index,
                                   shard_count=shard_count, builder=experiment.builder)
  iterator = iter(dataset)

  restored = checkpointer.restore_latest(experiment.abstract_state())
  if restored is None:
    state, start_step = experiment.init_state(), 0
  else:
    start_step, state, data_state = restored
    iterator.set_state(data_state)
    print(f'resumed from {checkpointer.directory}/{start_step} (step {start_step})')
  if start_step >= train_config.steps:
    print(f'{workdir} already holds step {start_step} >= train.steps={train_config.steps}; nothing to train')

  if is_chief:
    trainable, total = parameter_counts(train_config, experiment.parts.abstract_params)
    print(f'parameters: {trainable:,} trainable of {total:,} (train.trainable={tuple(train_config.trainable)})')
  step_fn = experiment.train_step()
  schedule = learning_rate_schedule(train_config)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=True)
  progress = Progress(train_config.steps, train_config.batch_size, start_step)
  running: TrainMetrics | None = None
  val_report: dict[str, Any] = {}
  evaluate_during_training = bool(train_config.eval_every) and config.data.val_fraction > 0
  if evaluate_during_training and jax.process_count() > 1:
    print('periodic validation runs in single-process jobs only; evaluate checkpoints with `mer-jax evaluate`')
    evaluate_during_training = False
  last_step = train_config.steps if stop_at is None else min(stop_at, train_config.steps)
  for step in range(start_step + 1, last_step + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      batch = experiment.global_batch(next(iterator))
      state, step_metrics = step_fn(state, batch)
    update = TrainMetrics.single_from_model_output(**step_metrics)
    running = update if running is None else running.merge(update)
    if step % train_config.log_every == 0 or step == train_config.steps:
      scalars = {f'train/{k}': float(v) for k, v in running.compute().items()}
      scalars['train/learning_rate'] = float(schedule(step - 1))
      rates = progress.update(step)
      scalars.update({f'perf/{k}': v for k, v in rates.items()})
      writer.write_scalars(step, scalars)
      running = None
      if is_chief:
        print(f"step {step}/{train_config.steps}  loss {scalars['train/loss']:.4f}  "
              f"lm {scalars['train/lm_loss']:.4f}  valence {scalars['train/valence_mse']:.4f}  "
              f"{rates['steps_per_sec']:.2f} steps/s  {rates['examples_per_sec']:.0f} ex/s  "
              f"ETA {format_duration(rates['eta_sec'])}", flush=True)
    if step % train_config.checkpoint_every == 0 or step == last_step:
      checkpointer.save(step, state, iterator.get_state())
    if evaluate_during_training and (step % train_config.eval_every == 0 or step == train_config.steps):
      val_report = evaluate(experiment, state['params'], 'val', progress=False)
      writer.write_scalars(step, validation_scalars(val_report))
      if is_chief:
        valence = val_report['valence']
        valence_text = f"valence MSE {valence['mse']:.4f}" if valence else 'no valence'
        print(f"  val  WAF {val_report['scored']['waf']:.4f}  ACC {val_report['scored']['accuracy']:.4f}  "
              f"{valence_text}", flush=True)
  checkpointer.close()
  writer.flush()
  writer.close()
  return val_report


def validation_scalars(report: dict[str, Any]) -> dict[str, float]:
  """The validation numbers written to TensorBoard (valence only when the split has some)."""
  scalars = {
      'val/waf': report['scored']['waf'],
      'val/accuracy': report['scored']['accuracy'],
      'val/generated_waf': report['generated']['waf'],
      'val/invalid': float(report['generated']['invalid']),
  }
  if report['valence']:
    scalars['val/valence_mse'] = report['valence']['mse']
  return scalars
