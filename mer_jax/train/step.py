"""Loss and the jitted train/eval step functions over a functional train state."""

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


def compute_losses(model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs | None,
                   valence_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Answer-span next-token cross-entropy plus weighted valence MSE, and their parts."""
  logits, valence = model(batch, rngs=rngs)
  log_prob_sum, count = answer_token_log_probs(logits, batch['tokens'], batch['loss_mask'])
  lm_loss = -jnp.sum(log_prob_sum) / jnp.maximum(jnp.sum(count), 1.0)
  valence_loss = jnp.mean((valence - batch['valence']) ** 2)
  loss = lm_loss + valence_weight * valence_loss
  return loss, {'loss': loss, 'lm_loss': lm_loss, 'valence_mse': valence_loss}


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation,
                    seed: int, valence_weight: float) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """A pure train step: dropout keyed by (seed, step), so a resumed run repeats the same randomness."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(seed), state['step'])

    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest)
      return compute_losses(model, batch, nnx.Rngs(dropout=key), valence_weight)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return train_step


def make_forward(graphdef: nnx.GraphDef, rest: Any) -> Callable[[Any, dict], tuple[jax.Array, jax.Array]]:
  """Logits and valence for a batch, without dropout."""

  def forward(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return nnx.merge(graphdef, params, rest)(batch)

  return forward
