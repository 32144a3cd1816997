"""AffectGPT-class model: Qwen2.5-7B-shaped backbone, Whisper-large and CLIP-ViT-L encoders, Q-Former fusion.

Usage: --config configs/affectgpt.py:mesh=v5p-64 (or mesh=8xh100).
"""

import os
import runpy

import ml_collections

large = runpy.run_path(os.path.join(os.path.dirname(__file__), 'large.py'))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Qwen2.5-7B: 28 layers, width 3584, 28 query / 4 key-value heads, MLP 18944, q/k/v bias, untied."""
  config = large['backbone_config'](arg, 'qformer', dict(
      vocab_size=152064, width=3584, layers=28, heads=28, kv_heads=4, mlp=18944, rope_theta=1000000.0,
      norm_eps=1e-6, qkv_bias=True, tie_embeddings=False))
  config.model.fusion.qformer_heads = 28
  return config
