"""The optax chain built from config: warmup + cosine schedule, clipping, AdamW with decay on matrices."""

from typing import Any

import jax
import optax


def learning_rate_schedule(train_config: Any) -> optax.Schedule:
  """Linear warmup to the peak rate, then cosine decay to a tenth of it at the last step."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=train_config.learning_rate,
      warmup_steps=train_config.warmup_steps,
      decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
      end_value=train_config.learning_rate * 0.1,
  )


def make_optimizer(train_config: Any) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW; weight decay applies to tensors of rank >= 2 only."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip),
      optax.adamw(learning_rate_schedule(train_config), b1=0.9, b2=0.98,
                  weight_decay=train_config.weight_decay, mask=decay_mask),
  )
