"""Benchmarks of the loops around the train step: the data loader against the step's consumption, evaluate's clips/s."""

import time
from typing import Any

import numpy as np

from mer_jax.data import pipeline
from mer_jax.eval.bench_train import alternate, load_average, medians, model_stepper
from mer_jax.eval.evaluate import Predictor, predict_split
from mer_jax.train.experiment import Experiment


def loader_seconds(iterator: Any, batches: int) -> float:
  """Seconds per batch that `iterator` takes to hand over `batches` batches."""
  began = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return (time.perf_counter() - began) / batches


def bench_data(config: Any, steps: int, repeats: int) -> str:
  """Markdown table: the training loader's examples/s against the train step's, on config.data.dir.

  The loader is read alone (no step running beside it), as the trainer's prefetching thread
  would on an idle host; the loader keeps up when its rate is above the step's.
  """
  experiment = Experiment(config)
  batch_size = config.train.batch_size
  iterator = iter(pipeline.train_dataset(config, experiment.info, batch_size, builder=experiment.builder))
  next(iterator)  # starts the reader threads
  loader = [loader_seconds(iterator, steps) for _ in range(repeats)]
  step = alternate({'step': model_stepper(config, experiment.vocab_size, batch_size)}, steps, repeats)['step']
  loader_rate, step_rate = batch_size / float(np.median(loader)), batch_size / float(np.median(step))
  return '\n'.join([
      f'{config.data.dir}, batch {batch_size}, {load_average()}; medians of {repeats} runs of {steps} batch(es)', '',
      '| loader examples/s | train step examples/s | loader / step |', '|---|---|---|',
      f'| {loader_rate:.1f} | {step_rate:.1f} | {loader_rate / step_rate:.2f} |'])


def bench_eval(config: Any, split: str, repeats: int) -> str:
  """Markdown table: clips/s of evaluation's predictions (label scores, valence, answers) on `split`.

  The model has freshly initialised weights (the speed does not depend on them); the first pass
  over the split compiles and is not counted.
  """
  experiment = Experiment(config)
  predictor = Predictor(experiment, experiment.init_state()['params'])
  clips = len(predict_split(predictor, split, progress=False)['true'])
  runs = []
  for _ in range(repeats):
    began = time.perf_counter()
    predict_split(predictor, split, progress=False)
    runs.append(time.perf_counter() - began)
  seconds = medians({'eval': runs})['eval']
  return '\n'.join([
      f'{config.data.dir} split {split}: {clips} clips, eval batch {config.eval.batch_size}, '
      f'{len(experiment.labels)} candidate labels, {config.eval.max_new_tokens} new tokens, {load_average()}; '
      f'medians of {repeats} passes', '',
      '| clips/s | s / pass | passes (s) |', '|---|---|---|',
      f'| {clips / seconds:.1f} | {seconds:.2f} | {", ".join(f"{s:.2f}" for s in runs)} |'])
