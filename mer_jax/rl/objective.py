"""The GRPO objective: group-normalised advantages, clipped ratio surrogate, k3 KL to the reference, token averaging."""

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
  """Rewards [N] (N = clips * group_size, a clip's samples adjacent) -> (r - group mean) / (group std + eps)."""
  groups = rewards.reshape(-1, group_size).astype(jnp.float32)
  mean = jnp.mean(groups, axis=1, keepdims=True)
  std = jnp.std(groups, axis=1, keepdims=True)
  return ((groups - mean) / (std + eps)).reshape(-1)


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log p of each next token [B, L-1], entropy of each next-token distribution [B, L-1]) from logits [B, L, V]."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return picked, entropy


def k3_kl(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - policy; >= 0, 0 iff equal."""
  delta = ref_log_probs - log_probs
  return jnp.exp(delta) - delta - 1.0


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over the tokens where mask is 1 (all sequences' tokens pooled: token-level averaging)."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def grpo_loss(log_probs: jax.Array, old_log_probs: jax.Array, ref_log_probs: jax.Array, advantages: jax.Array,
              mask: jax.Array, clip_eps: float, kl_coef: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss -(min(r A, clip(r, 1-eps, 1+eps) A) - kl_coef KL) averaged over answer tokens, and its parts.

  Per-token arrays are [B, T]; `advantages` [B] applies to every token of its sequence; r is
  exp(log_probs - old_log_probs). Returns (loss, {'kl', 'clip_fraction', 'surrogate'}).
  """
  ratio = jnp.exp(log_probs - old_log_probs)
  advantage = advantages[:, None]
  unclipped = ratio * advantage
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
  surrogate = jnp.minimum(unclipped, clipped)
  kl = k3_kl(log_probs, ref_log_probs)
  loss = masked_mean(-(surrogate - kl_coef * kl), mask)
  return loss, {'kl': masked_mean(kl, mask), 'clip_fraction': masked_mean((clipped < unclipped).astype(jnp.float32), mask),
                'surrogate': masked_mean(surrogate, mask)}
