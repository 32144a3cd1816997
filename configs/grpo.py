"""GRPO after supervised training: G sampled answers per clip, verifiable emotion rewards, KL to the start.

Usage: mer-jax train --config configs/grpo.py --workdir DIR --config.init.run=SFT_RUN
(options as configs/demo.py: configs/grpo.py:variant=tiny). train.batch_size is clips per step;
each step samples train.batch_size * rl.group_size answers.
"""

import os
import runpy

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo model (configs/demo.py with `arg`) trained by GRPO from config.init.run."""
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), 'demo.py'))['get_config'](arg)
  tiny = 'variant=tiny' in (arg or '')
  c.model.dropout = 0.0                  # the policy ratio compares the same function before and after updates
  c.train.steps = 40 if not tiny else 4
  c.train.batch_size = 8 if not tiny else 2  # clips per step
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 0
  c.train.log_every = 5 if not tiny else 1
  c.train.eval_every = 0
  c.train.checkpoint_every = 10 if not tiny else 2

  c.rl = ml_collections.ConfigDict()
  c.rl.group_size = 4                    # G: sampled answers per clip
  c.rl.max_new_tokens = c.eval.get_ref('max_new_tokens')
  c.rl.temperature = 1.0
  c.rl.top_k = 0
  c.rl.top_p = 1.0
  c.rl.clip_eps = 0.2
  c.rl.kl_coef = 0.04
  c.rl.updates_per_batch = 1             # optimizer steps on each batch of samples
  # Built-in rewards: accuracy, format, length; or 'package.module:function' taking a rl.rewards.Completion.
  c.rl.rewards = ('accuracy', 'format', 'length')
  c.rl.reward_weights = (1.0, 0.5, 0.5)
  c.rl.wheels = ''                       # emotion-wheel folder for open-vocabulary accuracy ('' = default grouping)
  return c
