"""Random in-memory batches shaped like the pipeline's, for benchmarks, memory estimates and sharding checks."""

from typing import Any

import numpy as np


def random_batch(config: Any, batch_size: int, vocab_size: int, seed: int = 0,
                 answer_lengths: tuple[int, ...] = (2, 3), duration_s: float = 2.0,
                 num_frames: int = 4) -> dict[str, np.ndarray]:
  """A batch with random tokens and media; soft-token spans follow the prompt layout's order.

  Example i's answer has answer_lengths[i % len(answer_lengths)] tokens ending at a random point,
  so batches carry answers of different lengths.
  """
  rng = np.random.default_rng(seed)
  model, length = config.model, config.data.seq_len
  modalities = tuple(model.modalities)
  num_soft = (model.audio.num_soft_tokens if 'audio' in modalities else 0) + \
      (model.vision.num_soft_tokens if 'video' in modalities else 0)
  tokens = rng.integers(4, vocab_size, [batch_size, length]).astype(np.int32)
  loss_mask = np.zeros([batch_size, length], np.float32)
  answer_start = np.zeros([batch_size], np.int32)
  for i in range(batch_size):
    answer = answer_lengths[i % len(answer_lengths)]
    start = int(rng.integers(num_soft + 2, length - answer))
    answer_start[i] = start
    loss_mask[i, start:start + answer] = 1.0
  soft_positions = np.broadcast_to(np.arange(1, num_soft + 1, dtype=np.int32), (batch_size, num_soft)).copy()
  batch = {
      'tokens': tokens, 'loss_mask': loss_mask, 'soft_positions': soft_positions, 'answer_start': answer_start,
      'label': rng.integers(0, 6, [batch_size]).astype(np.int32),
      'valence': rng.uniform(-1, 1, [batch_size]).astype(np.float32),
  }
  if 'audio' in modalities:
    batch['audio'] = rng.integers(-8000, 8000, [batch_size, int(model.audio.sample_rate * duration_s)]).astype(np.int16)
  if 'video' in modalities:
    size = model.vision.image_size
    batch['frames'] = rng.integers(0, 256, [batch_size, num_frames, size, size, 3]).astype(np.uint8)
  return batch
