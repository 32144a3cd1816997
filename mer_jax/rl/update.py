"""The jitted GRPO update: answer-token log-probabilities of policy and reference, loss, optax step, on the mesh."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mer_jax.models import lora
from mer_jax.rl import objective
from mer_jax.train import sharding
from mer_jax.train.experiment import ModelSetup
from mer_jax.train.step import merge_trainable, split_trainable


def without_adapter_effect(params: Any) -> Any:
  """The params with every LoRA adapter zeroed: the base model, computed in place of a second copy."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if lora.is_adapter_path(path) else x, params)


def make_score(setup: ModelSetup, reference: bool = False) -> sharding.OnMesh:
  """fn(params, sequences) -> log p of each next token [B, L-1]; `reference` scores the base without adapters."""

  def score(params: Any, sequences: dict[str, jax.Array]) -> jax.Array:
    params = without_adapter_effect(params) if reference else params
    logits, _ = setup.forward_fn(params, sequences)
    return objective.token_log_probs(logits, sequences['tokens'])[0]

  return setup.on_mesh(jax.jit(score))


def make_update(setup: ModelSetup, clip_eps: float, kl_coef: float) -> Callable:
  """fn(state, sequences, advantages [B], old_log_probs or None, ref_log_probs) -> (state, metrics), state donated.

  With old_log_probs None (one update per batch of samples) the ratio is exp(logp - stop_gradient(logp)) = 1.
  Frozen parameters (config.train.trainable) get zero gradients.
  """
  trainable = setup.trainable()

  def update(state: dict, sequences: dict[str, jax.Array], advantages: jax.Array, old_log_probs: Any,
             ref_log_probs: jax.Array) -> tuple[dict, dict[str, jax.Array]]:
    mask = sequences['loss_mask'][:, 1:]

    def loss_fn(train_params: Any, frozen_params: Any) -> tuple[jax.Array, dict]:
      logits, _ = setup.forward_fn(merge_trainable(train_params, frozen_params), sequences)
      log_probs, entropy = objective.token_log_probs(logits, sequences['tokens'])
      old = jax.lax.stop_gradient(log_probs) if old_log_probs is None else old_log_probs
      loss, parts = objective.grpo_loss(log_probs, old, ref_log_probs, advantages, mask, clip_eps, kl_coef)
      return loss, {**parts, 'entropy': objective.masked_mean(entropy, mask)}

    train_params, frozen_params = split_trainable(state['params'], trainable)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_params, frozen_params)
    grads = merge_trainable(grads, jax.tree.map(jnp.zeros_like, frozen_params))
    updates, opt_state = setup.tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **parts}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return setup.on_mesh(jax.jit(update, in_shardings=(setup.state_shardings, None, None, None, None),
                               out_shardings=(setup.state_shardings, None), donate_argnums=(0,)))
