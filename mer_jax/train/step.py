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


def chunked_token_log_probs(hidden: jax.Array, logits_fn: Callable[[jax.Array], jax.Array], tokens: jax.Array,
                            loss_mask: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
  """answer_token_log_probs from final-normed hidden [B, L, D], `chunk` positions at a time.

  logits_fn maps hidden [B, chunk, D] to float32 logits [B, chunk, vocab]; each chunk's logits are
  made, reduced and dropped (and made again in the backward pass), so float32 logits for the
  whole sequence never exist at once.
  """
  hidden, targets, mask = hidden[:, :-1], tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  batch, length = targets.shape
  count = -(-length // chunk)
  pad = count * chunk - length
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets, mask = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(mask, ((0, 0), (0, pad)))
  to_chunks = lambda x: jnp.moveaxis(x.reshape(batch, count, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_sum(total: jax.Array, inputs: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
    h, t, m = inputs
    logits = logits_fn(h).astype(jnp.float32)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    return total + jnp.sum((picked - jax.nn.logsumexp(logits, axis=-1)) * m, axis=-1), None

  total, _ = jax.lax.scan(chunk_sum, jnp.zeros([batch], jnp.float32),
                          (to_chunks(hidden), to_chunks(targets), to_chunks(mask)))
  return total, jnp.sum(mask, axis=-1)


def loss_sums(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None,
              loss_chunk: int = 0) -> dict[str, jax.Array]:
  """Sums over the batch: answer-token negative log-likelihood, answer tokens, valence squared error.

  Examples whose valence is missing (NaN: the dataset gives none) add no valence error. With
  `loss_chunk` > 0 the cross-entropy is computed that many positions at a time from the hidden
  states (chunked_token_log_probs); 0 makes the whole sequence's logits at once.
  """
  if loss_chunk:
    hidden, valence = model.hidden_states(batch, rngs=rngs)
    log_prob_sum, count = chunked_token_log_probs(hidden, model.llm.logits, batch['tokens'], batch['loss_mask'],
                                                  loss_chunk)
  else:
    logits, valence = model(batch, rngs=rngs)
    log_prob_sum, count = answer_token_log_probs(logits, batch['tokens'], batch['loss_mask'])
  known = jnp.isfinite(batch['valence'])
  error = jnp.where(known, valence - jnp.where(known, batch['valence'], 0.0), 0.0)
  return {'nll': -jnp.sum(log_prob_sum), 'tokens': jnp.sum(count), 'valence_sq_error': jnp.sum(error ** 2)}


def for_compute(params: Any, dtype: Any, shardings: Any) -> Any:
  """Matrices (2+ dims) of a wider float dtype than `dtype`, cast to it where they lie.

  Every layer casts its weights to the compute dtype anyway; casting them first, each shard on its
  own device, makes the FSDP all-gathers move compute-dtype bytes (half of float32's for bf16).
  """
  def cast(param: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
    wider = (param.ndim >= 2 and jnp.issubdtype(param.dtype, jnp.floating)
             and jnp.finfo(param.dtype).bits > jnp.finfo(dtype).bits)
    return jax.lax.with_sharding_constraint(param.astype(dtype), sharding) if wider else param

  return jax.tree.map(cast, params, shardings)


def split_trainable(params: Any, trainable: Any) -> tuple[Any, Any]:
  """(trainable, frozen) copies of a params tree, each with None where the other holds the leaf."""
  pick = lambda keep: jax.tree.map(lambda p, t: p if t == keep else None, params, trainable)
  return pick(True), pick(False)


def merge_trainable(first: Any, second: Any) -> Any:
  """The params tree whose leaves come from `first`, or from `second` where `first` holds None."""
  return jax.tree.map(lambda a, b: b if a is None else a, first, second, is_leaf=lambda x: x is None)


def split_microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
  """Reshapes every [B, ...] array to [count, B / count, ...]."""
  size = batch['tokens'].shape[0]
  if size % count:
    raise ValueError(f'batch of {size} does not split into train.microbatches={count}')
  return {k: v.reshape(count, size // count, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation, seed: int,
                    valence_weight: float, microbatches: int = 1, compute_dtype: Any = jnp.float32,
                    param_shardings: Any = None, trainable: Any = None, loss_chunk: int = 0
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """A pure train step: dropout keyed by (seed, step), so a resumed run repeats the same randomness.

  With `param_shardings`, weights enter the model cast to `compute_dtype` (see for_compute).
  `trainable` (a tree of bools like the params; None: all) limits differentiation to the parameters
  that train: frozen ones get zero gradients without any gradient buffer or backward pass of their own.

  With `microbatches` > 1 the gradient is accumulated by a `lax.scan` over equal slices of the
  batch. Every slice's loss is normalised by the whole batch's answer-token and example counts, so
  the summed gradient equals the one-big-batch gradient however the answer lengths are spread.
  `loss_chunk` (config.train.loss_chunk) > 0 computes the cross-entropy in chunks of that many positions.
  The valence error is averaged over the examples that have a valence. A step whose loss or
  gradient norm is not finite leaves params and optimizer state as they were (metric 'skipped' = 1).
  """

  if not isinstance(loss_chunk, int) or loss_chunk < 0:
    raise ValueError(f'config.train.loss_chunk must be an int >= 0 (0: whole sequence), got {loss_chunk!r}')

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(seed), state['step'])
    total_tokens = jnp.maximum(jnp.sum(batch['loss_mask'][:, 1:]), 1.0)
    total_examples = jnp.maximum(jnp.sum(jnp.isfinite(batch['valence'])), 1)

    def slice_loss(train_params, frozen_params, micro, micro_key):
      params = merge_trainable(train_params, frozen_params)
      if param_shardings is not None:
        params = for_compute(params, compute_dtype, param_shardings)
      sums = loss_sums(nnx.merge(graphdef, params, rest), micro, nnx.Rngs(dropout=micro_key), loss_chunk)
      loss = sums['nll'] / total_tokens + valence_weight * sums['valence_sq_error'] / total_examples
      return loss, sums

    mask = jax.tree.map(lambda _: True, state['params']) if trainable is None else trainable
    train_params, frozen_params = split_trainable(state['params'], mask)
    grad_fn = jax.grad(slice_loss, has_aux=True)
    if microbatches == 1:
      grads, sums = grad_fn(train_params, frozen_params, batch, key)
    else:
      def accumulate(carry, inputs):
        index, micro = inputs
        grads, sums = grad_fn(train_params, frozen_params, micro, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, (train_params, {'nll': 0.0, 'tokens': 0.0, 'valence_sq_error': 0.0}))
      (grads, sums), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
    grads = merge_trainable(grads, jax.tree.map(jnp.zeros_like, frozen_params))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    lm_loss = sums['nll'] / total_tokens
    valence_mse = sums['valence_sq_error'] / total_examples
    loss = lm_loss + valence_weight * valence_mse
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state['params'], state['opt_state']))
    metrics = {'loss': loss, 'lm_loss': lm_loss, 'valence_mse': valence_mse, 'grad_norm': grad_norm,
               'skipped': 1.0 - finite.astype(jnp.float32)}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return train_step


def make_forward(graphdef: nnx.GraphDef, rest: Any, compute_dtype: Any = jnp.float32,
                 param_shardings: Any = None) -> Callable[[Any, dict], tuple[jax.Array, jax.Array]]:
  """Logits and valence for a batch, without dropout (weights cast as in make_train_step)."""

  def forward(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    if param_shardings is not None:
      params = for_compute(params, compute_dtype, param_shardings)
    return nnx.merge(graphdef, params, rest)(batch)

  return forward
