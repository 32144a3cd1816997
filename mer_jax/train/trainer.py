"""The training loop: sharded steps, clu metrics to TensorBoard, progress, Orbax checkpoints; periodic work as hooks.

The loop stops cleanly on SIGTERM or Ctrl-C (checkpoint at the end of the step, exit 0), skips
steps that are not finite and stops after train.max_bad_steps of them in a row, and holds the
workdir's lock so that one trainer at a time writes to it.
"""

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import flax.struct
import jax
from clu import metrics as clu_metrics

from mer_jax.data import pipeline
from mer_jax.train import run
from mer_jax.train.checkpoint import Checkpointer, failure_reason
from mer_jax.train.experiment import Experiment
from mer_jax.train.optim import learning_rate_schedule, parameter_counts

# Errors a failing read of the training data or a failing checkpoint write raise (I/O, tensorstore, Riegeli).
IO_ERRORS = (OSError, ValueError, RuntimeError)


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Running averages of the applied steps' outputs between log lines."""

  loss: clu_metrics.Average.from_output('loss')
  lm_loss: clu_metrics.Average.from_output('lm_loss')
  valence_mse: clu_metrics.Average.from_output('valence_mse')
  grad_norm: clu_metrics.Average.from_output('grad_norm')


@dataclasses.dataclass(frozen=True)
class Hook:
  """Periodic work: run(step, state) after every `every`-th step and after the last; returns TensorBoard scalars."""

  every: int
  run: Callable[[int, dict], dict[str, float]]


# Builds a run's hooks once its Experiment exists (so that hooks can compile against its model and mesh).
HookFactory = Callable[[Experiment], Sequence[Hook]]


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


class StopSignals:
  """SIGTERM, and a first Ctrl-C, ask the loop to stop at the end of the current step; a second Ctrl-C stops at once.

  In a multi-process job JAX's preemption service receives SIGTERM, and Orbax's preemption sync
  point gives every process the same step to stop at.
  """

  def __init__(self, multiprocess: bool):
    self.multiprocess = multiprocess
    self.received: str | None = None
    self.previous: dict[int, Any] = {}

  def __enter__(self) -> 'StopSignals':
    if not self.multiprocess and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self.previous[signum] = signal.signal(signum, self.handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)

  def handle(self, signum: int, frame: Any) -> None:
    """Records the signal; a second Ctrl-C raises KeyboardInterrupt."""
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and self.received == name:
      raise KeyboardInterrupt
    self.received = name
    print(f'\n{name} received: stopping at the end of this step with a checkpoint'
          f'{" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""}', flush=True)

  def stop_requested(self, step: int, checkpointer: Checkpointer) -> bool:
    """Whether to stop after `step`: a signal here, or (multi-process) the agreed preemption step."""
    if self.multiprocess and checkpointer.manager.reached_preemption(step):
      self.received = 'preemption notice'
    return self.received is not None


class BadSteps:
  """Steps whose loss or gradients were not finite (not applied); the run stops after `limit` in a row."""

  def __init__(self, limit: int):
    self.limit = limit
    self.in_row: list[tuple[int, float, float]] = []
    self.since_log = 0

  def record(self, step: int, metrics: dict) -> bool:
    """Counts the step if it was skipped (reported on its own line); returns whether it was."""
    if not float(metrics['skipped']):
      self.in_row = []
      return False
    loss, grad_norm = float(metrics['loss']), float(metrics['grad_norm'])
    self.in_row.append((step, loss, grad_norm))
    self.since_log += 1
    if jax.process_index() == 0:
      print(f'step {step} not applied: loss {loss}, gradient norm {grad_norm} '
            f'({len(self.in_row)} in a row; train.max_bad_steps={self.limit})', flush=True)
    return True

  def limit_reached(self) -> bool:
    """Whether the last `limit` steps were all skipped."""
    return len(self.in_row) >= self.limit

  def check(self, checkpointer: Checkpointer) -> None:
    """Raises RunError with a report once `limit` steps in a row were skipped."""
    if not self.limit_reached():
      return
    first, last = self.in_row[0][0], self.in_row[-1][0]
    values = ', '.join(f'step {s}: loss {l}, grad norm {g}' for s, l, g in self.in_row[-3:])
    latest = checkpointer.latest_step()
    where = f'{checkpointer.directory}/{latest}' if latest is not None else 'none yet'
    raise run.RunError(f'training diverged: steps {first}..{last} ({len(self.in_row)} in a row) had a loss or '
                       f'gradients that were not finite and were not applied ({values}); the parameters are '
                       f'those after step {first - 1}; last good checkpoint: {where}. Lower train.learning_rate '
                       'or check the data, then run the same command to resume from it')


def next_batch(iterator: Iterator, data_dir: str) -> dict:
  """The next host batch; a failing read is a RunError naming the dataset."""
  try:
    return next(iterator)
  except IO_ERRORS as error:
    raise run.RunError(f'reading training examples from {data_dir} failed ({failure_reason(error)})') from error


def save_checkpoint(checkpointer: Checkpointer, step: int, state: dict, data_state: dict, wait: bool = False) -> None:
  """Saves `step` (waiting when asked); a failing write is a RunError naming the directory and the newest good step."""
  try:
    checkpointer.save(step, state, data_state)
    if wait:
      checkpointer.wait()
  except IO_ERRORS as error:
    kept = checkpointer.committed_steps()
    raise run.RunError(f'writing checkpoint {checkpointer.directory}/{step} failed ({failure_reason(error)}); '
                       f'newest good checkpoint: {kept[-1] if kept else "none"}') from error


def restore_or_init(experiment: Experiment, checkpointer: Checkpointer, iterator: Any) -> tuple[dict, int]:
  """(train state, step) of the newest usable checkpoint, the iterator moved to it; a fresh state at step 0."""
  restored = checkpointer.restore_latest(experiment.abstract_state())
  if restored is None:
    return experiment.init_state(), 0
  start_step, state, data_state = restored
  iterator.set_state(data_state)
  print(f'resumed from {checkpointer.directory}/{start_step} (step {start_step})')
  return state, start_step


# A loop over a run's steps: (experiment, workdir, signals, stop_at, hooks) -> the hooks' last scalars.
Loop = Callable[[Experiment, str, StopSignals, int | None, Sequence[Hook]], dict[str, float]]


def train(config: Any, workdir: str, stop_at: int | None = None, hooks: HookFactory | None = None,
          loop: Loop | None = None) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir` to config.train.steps; returns the hooks' last scalars.

  `stop_at` ends this invocation after that step (checkpointed) as a preempted job would; running
  again resumes exactly where it stopped. A missing dataset, a checkpoint that does not fit the
  config (checkpoint.CheckpointMismatch) or a workdir held by another trainer stop before anything
  in `workdir` changes. `loop` runs the steps (default: supervised training, train_loop).
  """
  config = run.absolute_paths(config)
  experiment = Experiment(config)
  multiprocess = jax.process_count() > 1
  lock = run.trainer_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, StopSignals(multiprocess) as signals:
    return (loop or train_loop)(experiment, workdir, signals, stop_at, hooks(experiment) if hooks else ())


@dataclasses.dataclass
class RunFiles:
  """What a loop over a workdir holds open: checkpointer, data iterator, TensorBoard writer, state and start step."""

  checkpointer: Checkpointer
  iterator: Any
  writer: Any
  state: dict
  start_step: int


def open_run(experiment: Experiment, workdir: str, batch_size: int, cleanup: contextlib.ExitStack) -> RunFiles:
  """Opens the checkpoints and this host's share of `batch_size` training examples, restores or initialises
  the state, records the run (chief) and opens the writer; `cleanup` closes them."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from clu import metric_writers  # imports TensorFlow: only where training writes events

  config = experiment.config
  is_chief = jax.process_index() == 0
  checkpointer = Checkpointer(f'{workdir}/{run.CHECKPOINT_DIR}', config.train.keep_checkpoints)
  shard_index, shard_count, host_batch = experiment.host_shard(batch_size)
  dataset = pipeline.train_dataset(config, experiment.info, host_batch, shard_index=shard_index,
                                   shard_count=shard_count, builder=experiment.builder)
  iterator = iter(dataset)
  cleanup.callback(close_quietly, checkpointer)
  state, start_step = restore_or_init(experiment, checkpointer, iterator)
  if is_chief:
    run.record_run(experiment, workdir)
    trainable, total = parameter_counts(config.train, experiment.parts.abstract_params)
    print(f'parameters: {trainable:,} trainable of {total:,} (train.trainable={tuple(config.train.trainable)})')
  if start_step >= config.train.steps:
    print(f'{workdir} already holds step {start_step} >= train.steps={config.train.steps}; nothing to train')
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=True)
  cleanup.callback(writer.close)
  return RunFiles(checkpointer, iterator, writer, state, start_step)


def end_of_step(files: RunFiles, train_config: Any, step: int, last_step: int, state: dict, hooks: Sequence[Hook],
                hook_scalars: dict[str, float], signals: StopSignals, stopping: bool) -> bool:
  """Checkpoints when due, runs the due hooks (their scalars into hook_scalars and TensorBoard); True to stop."""
  if step % train_config.checkpoint_every == 0 or step == last_step or stopping:
    save_checkpoint(files.checkpointer, step, state, files.iterator.get_state(), wait=stopping or step == last_step)
  for hook in hooks:
    if step % hook.every == 0 or step == train_config.steps:
      hook_scalars.update(hook.run(step, state))
      files.writer.write_scalars(step, hook_scalars)
  if stopping:
    print(f'stopped by {signals.received} after step {step}/{train_config.steps}; checkpoint '
          f'{files.checkpointer.directory}/{step} written; run the same command to resume', flush=True)
  return stopping


def train_loop(experiment: Experiment, workdir: str, signals: StopSignals, stop_at: int | None,
               hooks: Sequence[Hook]) -> dict[str, float]:
  """The steps of train(): restore, record the run, step, log, checkpoint, run hooks, stop on a signal."""
  config = experiment.config
  train_config = config.train
  is_chief = jax.process_index() == 0
  with contextlib.ExitStack() as cleanup:
    files = open_run(experiment, workdir, train_config.batch_size, cleanup)
    state, start_step, iterator, checkpointer, writer = (files.state, files.start_step, files.iterator,
                                                         files.checkpointer, files.writer)
    step_fn = experiment.train_step()
    schedule = learning_rate_schedule(train_config)
    progress = Progress(train_config.steps, train_config.batch_size, start_step)
    bad_steps = BadSteps(train_config.max_bad_steps)
    running: TrainMetrics | None = None
    hook_scalars: dict[str, float] = {}
    last_step = train_config.steps if stop_at is None else min(stop_at, train_config.steps)
    pending: list[tuple[int, dict]] = []  # steps dispatched whose metrics the host has not read yet

    def read_pending() -> None:
      """Reads the pending steps' metrics: counts skipped steps, adds the others to the running means."""
      nonlocal running
      for pending_step, metrics in pending:
        if not bad_steps.record(pending_step, metrics):
          update = TrainMetrics.single_from_model_output(**metrics)
          running = update if running is None else running.merge(update)
      pending.clear()

    for step in range(start_step + 1, last_step + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, step_metrics = step_fn(state, experiment.global_batch(next_batch(iterator, config.data.dir)))
      # The previous step's metrics are read while this one computes, so the host never waits on the
      # device between steps; steps with periodic work read their own at once.
      read_pending()
      pending.append((step, step_metrics))
      stopping = signals.stop_requested(step, checkpointer)
      periodic = (step % train_config.log_every == 0 or step % train_config.checkpoint_every == 0
                  or step == last_step or stopping or any(step % hook.every == 0 for hook in hooks))
      if periodic:
        read_pending()
      if step % train_config.log_every == 0 or step == train_config.steps or bad_steps.limit_reached():
        scalars = {f'train/{k}': float(v) for k, v in running.compute().items()} if running else {}
        scalars['train/skipped_steps'] = float(bad_steps.since_log)
        scalars['train/learning_rate'] = float(schedule(step - 1))
        rates = progress.update(step)
        scalars.update({f'perf/{k}': v for k, v in rates.items()})
        writer.write_scalars(step, scalars)
        if is_chief:
          print(log_line(step, train_config.steps, scalars, rates), flush=True)
        running, bad_steps.since_log = None, 0
      bad_steps.check(checkpointer)
      if end_of_step(files, train_config, step, last_step, state, hooks, hook_scalars, signals, stopping):
        break
    return hook_scalars


def close_quietly(checkpointer: Checkpointer) -> None:
  """Closes the checkpointer; a failed write was already reported by save_checkpoint."""
  with contextlib.suppress(*IO_ERRORS):
    checkpointer.close()


def log_line(step: int, total: int, scalars: dict[str, float], rates: dict[str, float]) -> str:
  """One progress line: losses (when some step since the last line was applied), skipped steps, speed, ETA."""
  losses = (f"loss {scalars['train/loss']:.4f}  lm {scalars['train/lm_loss']:.4f}  "
            f"valence {scalars['train/valence_mse']:.4f}  " if 'train/loss' in scalars else '')
  skipped = f"skipped {int(scalars['train/skipped_steps'])}  " if scalars['train/skipped_steps'] else ''
  return (f"step {step}/{total}  {losses}{skipped}{rates['steps_per_sec']:.2f} steps/s  "
          f"{rates['examples_per_sec']:.0f} ex/s  ETA {format_duration(rates['eta_sec'])}")


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
