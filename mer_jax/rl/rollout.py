"""Rollouts: G sampled answers per clip with the KV-cache sampler, under jit on the mesh, and their Completions."""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mer_jax.data.text import PromptBuilder
from mer_jax.eval.generate import Sampling, generate
from mer_jax.rl.rewards import Completion
from mer_jax.train import sharding
from mer_jax.train.experiment import ModelSetup
from mer_jax.train.step import for_compute


def repeat_clips(batch: dict[str, np.ndarray], group_size: int) -> dict[str, np.ndarray]:
  """Every example of a host batch repeated group_size times in a row (a clip's group stays adjacent)."""
  return {key: np.repeat(value, group_size, axis=0) for key, value in batch.items()}


def answer_sequences(batch: dict[str, jax.Array], generated: jax.Array, num_tokens: jax.Array,
                     pad_id: int) -> dict[str, jax.Array]:
  """The batch with each prompt followed by its generated answer: tokens and loss_mask [B, L + T].

  The dataset's own answer is removed; loss_mask is 1 on the generated tokens (EOS included).
  """
  batch_size, length = batch['tokens'].shape
  max_new = generated.shape[1]
  start = batch['answer_start'].astype(jnp.int32)[:, None]
  columns = jnp.arange(length + max_new)[None, :]
  tokens = jnp.pad(batch['tokens'], ((0, 0), (0, max_new)), constant_values=pad_id)
  tokens = jnp.where(columns >= start, pad_id, tokens)
  valid = jnp.arange(max_new)[None, :] < num_tokens[:, None]
  rows = jnp.arange(batch_size)[:, None]
  positions = start + jnp.arange(max_new)[None, :]
  tokens = tokens.at[rows, positions].set(jnp.where(valid, generated, pad_id))
  loss_mask = jnp.zeros(tokens.shape, jnp.float32).at[rows, positions].set(valid.astype(jnp.float32))
  return {**batch, 'tokens': tokens, 'loss_mask': loss_mask}


def make_rollout(setup: ModelSetup, *, max_new_tokens: int, stop_ids: Sequence[int],
                 pad_id: int) -> sharding.OnMesh:
  """fn(params, batch, key, sampling) -> (answer sequences, generated tokens [B, T], token counts [B]), on the mesh."""
  parts = setup.parts

  def rollout(params: Any, batch: dict[str, jax.Array], key: jax.Array,
              sampling: Sampling) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    params = for_compute(params, setup.compute_dtype, parts.param_shardings)
    model = nnx.merge(parts.graphdef, params, parts.rest)
    out = generate(model, batch, key, sampling, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
    return answer_sequences(batch, out['tokens'], out['num_tokens'], pad_id), out['tokens'], out['num_tokens']

  return setup.on_mesh(jax.jit(rollout))


def completions(builder: PromptBuilder, generated: np.ndarray, num_tokens: np.ndarray, truth: np.ndarray,
                wheels: Any = None) -> list[Completion]:
  """One Completion per generated row; truth holds label ids (-1: none)."""
  eos, max_tokens = builder.tokenizer.eos_id, generated.shape[1]
  labels = tuple(builder.labels)
  out = []
  for tokens, count, label in zip(generated.tolist(), num_tokens.tolist(), truth.tolist()):
    answer = tokens[:count]
    out.append(Completion(text=builder.answer_text(answer), truth=labels[label] if label >= 0 else '',
                          labels=labels, num_tokens=int(count), max_tokens=max_tokens,
                          finished=eos in answer, explanations=builder.explanations, wheels=wheels))
  return out
