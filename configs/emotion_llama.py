"""Emotion-LLaMA-class model: LLaMA-2-7B-shaped backbone with Whisper-large and CLIP-ViT-L encoders.

Usage: --config configs/emotion_llama.py:mesh=v5p-64 (or mesh=8xh100).
"""

import os
import runpy

import ml_collections

large = runpy.run_path(os.path.join(os.path.dirname(__file__), 'large.py'))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """LLaMA-2-7B: 32 layers, width 4096, 32 heads, MLP 11008, vocabulary 32000, untied; MLP projectors."""
  return large['backbone_config'](arg, 'projector', dict(
      vocab_size=32000, width=4096, layers=32, heads=32, kv_heads=32, mlp=11008, rope_theta=10000.0,
      norm_eps=1e-5, qkv_bias=False, tie_embeddings=False))
