"""Benchmarks of a config's whole model: its train step's examples/s, the loader against it, evaluate's clips/s."""

import time
from typing import Any

import jax
import numpy as np

from mer_jax.data import pipeline
from mer_jax.eval.bench_train import Stepper, alternate, load_average, medians
from mer_jax.eval.evaluate import Predictor, predict_split
from mer_jax.train.experiment import Experiment, ModelSetup
from mer_jax.train.random_batch import random_batch


def model_stepper(config: Any, vocab_size: int, batch_size: int) -> Stepper:
  """The whole multimodal model of `config` with its configured optimizer and step, on one random batch."""
  setup = ModelSetup(config, vocab_size)
  batch = setup.global_batch(random_batch(config, batch_size, vocab_size))
  return Stepper(setup.train_step(), setup.init_state(), batch)


def bench_model(config: Any, vocab_size: int, steps: int, repeats: int) -> str:
  """Markdown table of the whole multimodal model's train step for `config` on random batches: examples/s."""
  batch_size = config.train.batch_size
  runs = alternate({'model': model_stepper(config, vocab_size, batch_size)}, steps, repeats)
  seconds = medians(runs)['model']
  return '\n'.join([
      f'{jax.devices()[0].device_kind}, whole model, batch {batch_size}, sequence {config.data.seq_len}, '
      f'vocab {vocab_size}, attention {config.model.llm.get("attention", "xla")}, {load_average()}; medians of '
      f'{repeats} runs of {steps} step(s)', '',
      '| ms / step | examples/s | tokens/s | runs (ms / step) |', '|---|---|---|---|',
      f'| {1000 * seconds:.0f} | {batch_size / seconds:.1f} | {batch_size * config.data.seq_len / seconds:.0f} | '
      f'{", ".join(f"{1000 * s:.0f}" for s in runs["model"])} |'])


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
