"""Training-step benchmark of the LLM alone at given dimensions: tokens/s and MFU, beside PyTorch's if asked."""

from collections.abc import Callable
import dataclasses
import os
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mer_jax.models.llm import LLM
from mer_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Shape:
  """A LLaMA-shaped LLM and its training batch: dimensions, compute dtype, attention and loss chunking."""

  width: int = 512
  layers: int = 4
  heads: int = 8
  kv_heads: int = 8
  seq: int = 512
  batch: int = 4
  vocab: int = 8192
  dtype: str = 'float32'
  attention: str = 'einsum'
  loss_chunk: int = 0

  @property
  def head_dim(self) -> int:
    """Per-head width."""
    return self.width // self.heads

  @property
  def mlp(self) -> int:
    """The SwiGLU hidden width: 8/3 of the width rounded up to a multiple of 256, as LLaMA sizes it."""
    return 256 * -(-8 * self.width // (3 * 256))

  @property
  def tokens(self) -> int:
    """Tokens per training step."""
    return self.batch * self.seq


def llm_config(shape: Shape) -> ml_collections.ConfigDict:
  """config.model.llm for `shape` (untied embeddings, rotary theta 10000, no biases)."""
  return ml_collections.ConfigDict(dict(
      width=shape.width, layers=shape.layers, heads=shape.heads, kv_heads=shape.kv_heads, head_dim=0,
      mlp=shape.mlp, rope_theta=10000.0, rope_scaling=dict(type='none'), norm_eps=1e-5, qkv_bias=False,
      tie_embeddings=False, attention=shape.attention, vocab_size=shape.vocab))


def matmul_params(shape: Shape) -> int:
  """Weights that multiply every token: attention and MLP projections of every layer, and the LM head."""
  attn = shape.width * shape.head_dim * (2 * shape.heads + 2 * shape.kv_heads)
  return shape.layers * (attn + 3 * shape.width * shape.mlp) + shape.width * shape.vocab


def train_flops(shape: Shape) -> int:
  """Model FLOPs of one training step: 6 per matmul weight per token, plus the attention scores and mixing.

  Forward attention is 2 matmuls of 2 * seq * head_dim FLOPs per token and head over the whole
  sequence (the causal half is counted too, as PaLM's MFU does); backward is twice the forward.
  """
  attention = shape.layers * 2 * 2 * shape.seq * shape.heads * shape.head_dim
  return 3 * shape.tokens * (2 * matmul_params(shape) + attention)


# Dense (no sparsity) bfloat16 tensor-core peaks from the vendors' data sheets, FLOP/s, by a part of the
# device name; the first key found in jax's device_kind wins.
DENSE_BF16_PEAKS = {'H100 PCIe': 756e12, 'GH200': 989e12, 'H200': 989e12, 'H100': 989e12, 'B200': 2250e12,
                    'A100': 312e12, 'L40S': 362e12, 'L4': 121e12, 'A10G': 70e12}


def spec_peak(device_kind: str, dtype: str) -> float | None:
  """The data-sheet dense bfloat16 peak of a device named `device_kind`; None if unknown or dtype is not bfloat16."""
  if dtype != 'bfloat16':
    return None
  return next((peak for name, peak in DENSE_BF16_PEAKS.items() if name in device_kind), None)


def matmul_peak(dtype: str, size: int = 0, repeats: int = 10) -> float:
  """FLOP/s of the fastest of `repeats` jitted [size, size] @ [size, size] products in `dtype` on this device.

  size 0: 2048 on a CPU, 8192 on an accelerator (large enough to saturate it).
  """
  size = size or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  best = float('inf')
  for _ in range(repeats):
    began = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - began)
  return 2 * size ** 3 / best


class Stepper:
  """A jitted training step with its state and batch; `run(n)` takes n steps and returns seconds per step."""

  def __init__(self, step: Callable[[Any, Any], tuple[Any, Any]], state: Any, batch: Any):
    self.step, self.state, self.batch = step, state, batch
    self.state, self.metrics = jax.block_until_ready(self.step(self.state, self.batch))  # compiles

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` steps (the last step's outputs are awaited)."""
    began = time.perf_counter()
    for _ in range(steps):
      self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready(self.state)
    return (time.perf_counter() - began) / steps


def llm_stepper(shape: Shape, seed: int = 0) -> Stepper:
  """The LLM of `shape` (float32 parameters, compute in shape.dtype) with a jitted AdamW step on random tokens.

  The loss is the mean next-token cross-entropy over every position (chunked by shape.loss_chunk).
  """
  model = LLM(llm_config(shape), shape.vocab, dtype=shape.dtype, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(1e-4, weight_decay=0.01)
  tokens = jax.random.randint(jax.random.key(seed + 1), (shape.batch, shape.seq), 0, shape.vocab)
  mask = jnp.ones(tokens.shape, jnp.float32)

  def loss(params: Any) -> jax.Array:
    llm = nnx.merge(graphdef, params)
    if shape.loss_chunk:
      hidden = llm.hidden(llm.embed_tokens(tokens))
      total, count = step_lib.chunked_token_log_probs(hidden, llm.logits, tokens, mask, shape.loss_chunk)
    else:
      total, count = step_lib.answer_token_log_probs(llm(tokens), tokens, mask)
    return -jnp.sum(total) / jnp.sum(count)

  def train_step(state: tuple, batch: jax.Array) -> tuple[tuple, jax.Array]:
    params, opt_state = state
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  return Stepper(jax.jit(train_step, donate_argnums=(0,)), (params, tx.init(params)), tokens)


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
  """The median of each list of seconds per step."""
  return {name: float(np.median(seconds)) for name, seconds in runs.items()}


def alternate(steppers: dict[str, Any], steps: int, repeats: int) -> dict[str, list[float]]:
  """Seconds per step of each stepper over `repeats` rounds, the steppers taking turns within each round."""
  runs: dict[str, list[float]] = {name: [] for name in steppers}
  for _ in range(repeats):
    for name, stepper in steppers.items():
      runs[name].append(stepper.run(steps))
  return runs


def load_average() -> str:
  """The 1-minute load average and the CPU count: how busy the machine was while it measured."""
  return f'load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs' if hasattr(os, 'getloadavg') else 'load unknown'


def describe(shape: Shape) -> str:
  """The shape in words (its attention kind aside)."""
  return (f'width {shape.width}, {shape.layers} layers, {shape.heads} heads ({shape.kv_heads} kv), mlp {shape.mlp}, '
          f'sequence {shape.seq}, batch {shape.batch}, vocab {shape.vocab}, {shape.dtype}, loss chunk {shape.loss_chunk}')


def bench_llm(shape: Shape, attentions: list[str], torch_threads: int | None, steps: int,
              repeats: int) -> str:
  """Markdown table of the LLM's train step per attention kind (and PyTorch's when torch_threads is set).

  The steppers take turns for `repeats` rounds of `steps` steps; each row gives the median step
  time, tokens/s, MFU against this device's matmul peak in shape.dtype (the better of a measurement
  before and one after the runs, since a busy moment lowers it), and each round's time.
  """
  peak_before = matmul_peak(shape.dtype)
  steppers: dict[str, Any] = {f'jax, {kind} attention': llm_stepper(dataclasses.replace(shape, attention=kind))
                              for kind in attentions}
  if torch_threads:
    from mer_jax.eval.bench_torch import TorchStepper  # pylint: disable=import-outside-toplevel  (torch is optional)
    steppers[f'torch, {torch_threads} threads'] = TorchStepper(shape, torch_threads)
  runs = alternate(steppers, steps, repeats)
  peak = max(peak_before, matmul_peak(shape.dtype))
  flops = train_flops(shape)
  device = jax.devices()[0].device_kind
  sheet = spec_peak(device, shape.dtype)
  lines = [f'{device}, {describe(shape)}: {flops / 1e9:.1f} GFLOP per step, measured matmul peak '
           f'{peak / 1e9:.1f} GFLOP/s ({shape.dtype})'
           + (f', data-sheet dense peak {sheet / 1e12:.0f} TFLOP/s' if sheet else '')
           + f', {load_average()}; medians of {repeats} alternating runs of {steps} step(s)', '',
           '| implementation | ms / step | tokens/s | MFU | MFU vs data sheet | runs (ms / step) |',
           '|---|---|---|---|---|---|']
  for name, seconds in medians(runs).items():
    each = ', '.join(f'{1000 * s:.0f}' for s in runs[name])
    vs_sheet = f'{100 * flops / seconds / sheet:.1f}%' if sheet else '-'
    lines.append(f'| {name} | {1000 * seconds:.0f} | {shape.tokens / seconds:.0f} | '
                 f'{100 * flops / seconds / peak:.1f}% | {vs_sheet} | {each} |')
  if torch_threads:
    torch_s = medians(runs)[f'torch, {torch_threads} threads']
    lines += [''] + [f'{name} / torch tokens/s: {torch_s / seconds:.2f}x'
                     for name, seconds in medians(runs).items() if name.startswith('jax')]
  return '\n'.join(lines)
