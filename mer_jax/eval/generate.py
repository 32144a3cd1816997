"""Greedy decoding of the answer after each prompt, recomputing the sequence at every step."""

from typing import Any, Callable

import jax
import jax.numpy as jnp


def greedy_answers(forward: Callable[[Any, dict], tuple[jax.Array, jax.Array]], params: Any,
                   batch: dict[str, jax.Array], max_new_tokens: int, pad_id: int) -> jax.Array:
  """Greedy tokens [B, max_new_tokens] written from each example's answer_start onward.

  The answer positions are cleared to padding first, so only the prompt conditions the output;
  causal attention means positions after the one being predicted do not matter.
  """
  tokens = batch['tokens']
  length = tokens.shape[1]
  positions = jnp.arange(length)[None, :]
  start = batch['answer_start'][:, None]
  tokens = jnp.where(positions >= start, pad_id, tokens)
  rows = jnp.arange(tokens.shape[0])

  def step(i: int, tokens: jax.Array) -> jax.Array:
    logits, _ = forward(params, {**batch, 'tokens': tokens})
    write_at = jnp.minimum(batch['answer_start'] + i, length - 1)
    next_token = jnp.argmax(logits[rows, write_at - 1], axis=-1).astype(tokens.dtype)
    return tokens.at[rows, write_at].set(next_token)

  tokens = jax.lax.fori_loop(0, max_new_tokens, step, tokens)
  gather_at = jnp.minimum(batch['answer_start'][:, None] + jnp.arange(max_new_tokens)[None, :], length - 1)
  return jnp.take_along_axis(tokens, gather_at, axis=1)
