"""The PyTorch reference for `bench --vs torch`: transformers' LlamaForCausalLM with torch.optim.AdamW at a Shape."""

import time
from typing import Any

from mer_jax.eval.bench_train import Shape

TORCH_DTYPES = ('float32', 'bfloat16')


def import_torch() -> tuple[Any, Any]:
  """(torch, transformers), or a RuntimeError saying how to install them."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise RuntimeError(f'bench --vs torch needs torch and transformers ({error}); install the test extra: '
                       "pip install -e '.[test]'") from error
  return torch, transformers


class TorchStepper:
  """LlamaForCausalLM of `shape` (weights in shape.dtype, SDPA attention) and an AdamW step on random tokens.

  It runs on the first CUDA device when torch sees one, else on the CPU with `threads` intra-op
  threads. `run(n)` takes n steps and returns seconds per step.
  """

  def __init__(self, shape: Shape, threads: int, seed: int = 0):
    if shape.dtype not in TORCH_DTYPES:
      raise ValueError(f'bench --vs torch runs dtype {TORCH_DTYPES}, got {shape.dtype!r}')
    torch, transformers = import_torch()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.width, intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.seq, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attn_implementation='sdpa')
    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.model = transformers.LlamaForCausalLM(config).to(self.device, getattr(torch, shape.dtype)).train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
    self.tokens = torch.randint(0, shape.vocab, (shape.batch, shape.seq), device=self.device)
    self.run(2)  # first-call allocations and kernel choices

  def step(self) -> float:
    """One training step; returns its loss."""
    loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` steps."""
    began = time.perf_counter()
    for _ in range(steps):
      self.step()  # float(loss) waits for the device
    return (time.perf_counter() - began) / steps
