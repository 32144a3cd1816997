"""Compiles scaled-down copies of the 7B configs on 8 fake CPU devices; prints one JSON summary per config.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_pod_sharding.py does).
"""

import json
import math
import re
import sys

import jax
import numpy as np

from mer_jax.train import compile_check, sharding
from mer_jax.train.experiment import ModelSetup
from tests.test_describe import load_config

BATCH = 8
BF16_CONSTRAINT = re.compile(r'sdy\.sharding_constraint .*: tensor<([\dx]+)xbf16>')


def scaled_down(name: str):
  """The config at mesh=8xh100 with its widths and heads but one layer per stack and 8 examples a step."""
  config = load_config(name, 'mesh=8xh100')
  config.model.llm.layers = config.model.audio.layers = config.model.vision.layers = 1
  config.model.fusion.qformer_layers = 1
  config.train.batch_size = BATCH
  return config


def cast_weight_shapes(lowered_text: str) -> set[tuple[int, ...]]:
  """Shapes of the bf16 tensors the lowered step constrains (weights cast before their gathers, activations)."""
  return {tuple(int(d) for d in dims.split('x')) for dims in BF16_CONSTRAINT.findall(lowered_text)}


def summary(name: str) -> dict:
  """What the tests check of one compiled config."""
  config = scaled_down(name)
  vocab = config.model.llm.vocab_size
  result = compile_check.compile_train_step(config, vocab)
  setup = ModelSetup(config, vocab)
  matrices = [leaf for leaf in jax.tree.leaves(setup.parts.abstract_params)
              if leaf.ndim >= 2 and leaf.dtype == np.float32 and math.prod(leaf.shape) * 4 > 2 ** 20]
  cast = cast_weight_shapes(result['lowered_text'])
  batch = compile_check.abstract_batch(config, vocab, sharding.batch_sharding(setup.mesh, setup.rules))
  forward_text = setup.forward.lower(setup.abstract_state()['params'], batch).as_text()
  hidden_bytes = BATCH * config.data.seq_len * config.model.llm.width * 4
  return {
      'sharding_constraints': result['sharding_constraints'],
      'forward_constraints': forward_text.count('sharding_constraint'),
      'partition_efficiency': result['partition_efficiency'],
      'replicated': [path for path, _ in result['replicated_parameters']],
      'batch_collectives_over_hidden': [(c.kind, c.shapes, c.source) for c in result['batch_collectives']
                                        if c.bytes > hidden_bytes],
      'matrices': len(matrices),
      'matrices_cast_to_bf16': sum(tuple(leaf.shape) in cast for leaf in matrices),
      'peak_bytes': result['peak_bytes'],
  }


if __name__ == '__main__':
  print(json.dumps({name: summary(name) for name in sys.argv[1:]}))
