"""Emotion-LLaMA-class model: LLaMA-2-7B-shaped backbone with Whisper-large and CLIP-ViT-L encoders.

Usage: --config configs/emotion_llama.py:mesh=v5p-64 (or mesh=8xh100).
"""

import importlib.util
import os

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """LLaMA-2-7B: 32 layers, width 4096, 32 heads, MLP 11008, vocabulary 32000, untied."""
  spec = importlib.util.spec_from_file_location('mer_jax_large_config', os.path.join(os.path.dirname(__file__), 'large.py'))
  large = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(large)
  c = large.large_config(large.mesh_option(arg, '8xh100'))
  c.model.fusion.kind = 'projector'
  c.model.llm.update(dict(vocab_size=32000, width=4096, layers=32, heads=32, kv_heads=32, mlp=11008,
                          rope_theta=10000.0, norm_eps=1e-5, qkv_bias=False, tie_embeddings=False))
  return c
