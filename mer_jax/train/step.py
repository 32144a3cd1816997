"""Loss and the jitted train step over a functional train state, with gradient accumulation."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

TrainState = dict[str, Any]  # {'step': int32 scalar, 'params': pure dict, 'opt_state': optax state}


def answer_token_log_probs(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example sum of answer-token log-probabilities and the number of answer tokens."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = tokens[:, 1:]
  mask = loss_mask[:, 1:]
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(picked * mask, axis=-1), jnp.sum(mask, axis=-1)


def loss_sums(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None) -> dict[str, jax.Array]:
  """Sums over the batch: answer-token negative log-likelihood, answer tokens, valence squared error.

  Examples whose valence is missing (NaN: the dataset gives none) add no valence error.
  """
  logits, valence = model(batch, rngs=rngs)
  log_prob_sum, count = answer_token_log_probs(logits, batch['tokens'], batch['loss_mask'])
  known = jnp.isfinite(batch['valence'])
  error = jnp.where(known, valence - jnp.where(known, batch['valence'], 0.0), 0.0)
  return {'nll': -jnp.sum(log_prob_sum), 'tokens': jnp.sum(count), 'valence_sq_error': jnp.sum(error ** 2)}


def split_microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
  """Reshapes every [B, ...] array to [count, B / count, ...]."""
  size = batch['tokens'].shape[0]
  if size % count:
    raise ValueError(f'batch of {size} does not split into train.microbatches={count}')
  return {k: v.reshape(count, size // count, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation, seed: int,
                    valence_weight: float, microbatches: int = 1) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """A pure train step: dropout keyed by (seed, step), so a resumed run repeats the same randomness.

  With `microbatches` > 1 the gradient is accumulated by a `lax.scan` over equal slices of the
  batch. Every slice's loss is normalised by the whole batch's answer-token and example counts, so
  the summed gradient equals the one-big-batch gradient however the answer lengths are spread.
  The valence error is averaged over the examples that have a valence.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(seed), state['step'])
    total_tokens = jnp.maximum(jnp.sum(batch['loss_mask'][:, 1:]), 1.0)
    total_examples = jnp.maximum(jnp.sum(jnp.isfinite(batch['valence'])), 1)

    def slice_loss(params, micro, micro_key):
      sums = loss_sums(nnx.merge(graphdef, params, rest), micro, nnx.Rngs(dropout=micro_key))
      loss = sums['nll'] / total_tokens + valence_weight * sums['valence_sq_error'] / total_examples
      return loss, sums

    grad_fn = jax.grad(slice_loss, has_aux=True)
    if microbatches == 1:
      grads, sums = grad_fn(state['params'], batch, key)
    else:
      def accumulate(carry, inputs):
        index, micro = inputs
        grads, sums = grad_fn(state['params'], micro, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, (state['params'], {'nll': 0.0, 'tokens': 0.0, 'valence_sq_error': 0.0}))
      (grads, sums), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    lm_loss = sums['nll'] / total_tokens
    valence_mse = sums['valence_sq_error'] / total_examples
    metrics = {'loss': lm_loss + valence_weight * valence_mse, 'lm_loss': lm_loss, 'valence_mse': valence_mse,
               'grad_norm': optax.tree.norm(grads)}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return train_step


def make_forward(graphdef: nnx.GraphDef, rest: Any) -> Callable[[Any, dict], tuple[jax.Array, jax.Array]]:
  """Logits and valence for a batch, without dropout."""

  def forward(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return nnx.merge(graphdef, params, rest)(batch)

  return forward
