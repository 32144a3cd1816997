"""The optax chain built from config: warmup + cosine schedule, clipping, AdamW with decay on matrices."""

from typing import Any

import jax
import numpy as np
import optax

from mer_jax.models import lora

# Top-level parameter groups that config.train.trainable may name.
PARAM_GROUPS = ('audio', 'vision', 'fusion', 'llm', 'valence_head')


def learning_rate_schedule(train_config: Any) -> optax.Schedule:
  """Linear warmup to the peak rate, then cosine decay to a tenth of it at the last step."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=train_config.learning_rate,
      warmup_steps=train_config.warmup_steps,
      decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
      end_value=train_config.learning_rate * 0.1,
  )


def trainable_labels(train_config: Any, params: Any) -> dict:
  """Labels 'train' or 'freeze' per parameter.

  A parameter trains when its top-level group is in config.train.trainable, and LoRA adapter
  parameters always train: leaving 'llm' out while config.model.lora.rank > 0 trains the adapters on
  a frozen LLM.
  """
  trainable = tuple(train_config.trainable)
  unknown = [name for name in trainable if name not in PARAM_GROUPS]
  if unknown:
    raise ValueError(f'config.train.trainable names unknown parameter groups {unknown}; valid: {PARAM_GROUPS}')
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'train' if path[0].key in trainable or lora.is_adapter_path(path) else 'freeze', params)


def parameter_counts(train_config: Any, params: Any) -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  labels = jax.tree.leaves(trainable_labels(train_config, params))
  sizes = [int(np.prod(p.shape)) for p in jax.tree.leaves(params)]
  return sum(s for s, label in zip(sizes, labels) if label == 'train'), sum(sizes)


def make_optimizer(train_config: Any, params: Any) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW on the trainable params; weight decay on tensors of rank >= 2 only.

  Frozen params get zero updates and no optimizer state. When everything trains the chain is used
  unwrapped, so its state keeps the same structure as without freezing.
  """
  decay_mask = lambda tree: jax.tree.map(lambda p: p.ndim >= 2, tree)
  chain = optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip),
      optax.adamw(learning_rate_schedule(train_config), b1=0.9, b2=0.98,
                  weight_decay=train_config.weight_decay, mask=decay_mask),
  )
  labels = trainable_labels(train_config, params)
  if all(label == 'train' for label in jax.tree.leaves(labels)):
    return chain
  return optax.multi_transform({'train': chain, 'freeze': optax.set_to_zero()}, labels)
