"""Decode benchmark: throughput (tokens/s) and latency per clip, with and without the KV cache."""

from collections.abc import Callable
import statistics
import time
from typing import Any

from flax import nnx
import jax
import numpy as np

from mer_jax.eval.generate import jit_generate
from mer_jax.models.mer import MERModel
from mer_jax.train.random_batch import random_batch

DEFAULT_VOCAB_SIZE = 800  # the size of the tokenizer `mer-jax prepare` trains for the demo


def timed(fn: Callable[[], Any], iterations: int) -> tuple[float, float, Any]:
  """(seconds of the first call, median seconds of `iterations` further calls, last output) of fn()."""
  began = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - began
  seconds = []
  for _ in range(iterations):
    began = time.perf_counter()
    out = jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - began)
  return first, statistics.median(seconds), out


def bench_decode(config: Any, *, batch_size: int | None = None, iterations: int = 10,
                 max_new_tokens: int | None = None, num_frames: int = 4, duration_s: float = 2.0) -> list[dict]:
  """Times jitted generation (prefill included, no stop tokens) of the configured model with random weights.

  Weights are drawn from N(0, 0.02) on the host (no init program to compile). One row per
  (KV cache on/off, batch size in {1, batch_size}): medians of `iterations` timed calls after a
  compiling first call. A row also times the prefill alone (encoders and the prompt pass into the
  cache), so ms per decoding step = (ms per batch - prefill ms) / (new tokens - 1). Defaults come
  from config.eval (batch_size, max_new_tokens).
  """
  batch_size = batch_size or config.eval.batch_size
  max_new_tokens = max_new_tokens or config.eval.max_new_tokens
  vocab_size = config.model.llm.vocab_size or DEFAULT_VOCAB_SIZE
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MERModel(config.model, vocab_size, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(config.seed)
  state = jax.tree.map(lambda x: jax.device_put((0.02 * rng.standard_normal(x.shape)).astype(x.dtype)), abstract)
  max_len = config.data.seq_len + max_new_tokens
  prefill = jax.jit(lambda state, batch: nnx.merge(graphdef, state).prefill(batch, max_len))
  batches = {size: jax.device_put(random_batch(config, size, vocab_size, duration_s=duration_s,
                                               num_frames=num_frames))
             for size in sorted({1, batch_size})}
  prefill_s = {size: timed(lambda: prefill(state, batch), iterations)[1] for size, batch in batches.items()}
  rows = []
  for use_cache in (True, False):
    run = jit_generate(graphdef, max_new_tokens=max_new_tokens, stop_ids=(), pad_id=0, use_cache=use_cache)
    for size, batch in batches.items():
      first_s, median_s, out = timed(lambda: run((state,), batch), iterations)
      rows.append({'kv_cache': use_cache, 'batch_size': size, 'new_tokens': max_new_tokens,
                   'prompt_len': config.data.seq_len, 'ms_per_batch': 1000 * median_s,
                   'ms_per_clip': 1000 * median_s / size, 'prefill_ms': 1000 * prefill_s[size],
                   'tokens_per_s': int(np.sum(out['num_tokens'])) / median_s, 'first_call_s': first_s})
  return rows


def format_table(rows: list[dict]) -> str:
  """The benchmark rows as a markdown table."""
  lines = ['| KV cache | batch | prompt len | new tokens | ms / batch | ms / clip | tokens/s | prefill ms '
           '| ms / step | first call (s) |', '|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    step_ms = (row['ms_per_batch'] - row['prefill_ms']) / max(row['new_tokens'] - 1, 1)
    lines.append(f"| {'yes' if row['kv_cache'] else 'no'} | {row['batch_size']} | {row['prompt_len']} | "
                 f"{row['new_tokens']} | {row['ms_per_batch']:.2f} | {row['ms_per_clip']:.2f} | "
                 f"{row['tokens_per_s']:.1f} | {row['prefill_ms']:.2f} | {step_ms:.2f} | {row['first_call_s']:.2f} |")
  return '\n'.join(lines)
