"""AffectGPT-class model: Qwen2.5-7B-shaped backbone, Whisper-large and CLIP-ViT-L encoders, Q-Former fusion.

Usage: --config configs/affectgpt.py:mesh=v5p-64 (or mesh=8xh100).
"""

import importlib.util
import os

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Qwen2.5-7B: 28 layers, width 3584, 28 query / 4 key-value heads, MLP 18944, q/k/v bias, untied."""
  spec = importlib.util.spec_from_file_location('mer_jax_large_config', os.path.join(os.path.dirname(__file__), 'large.py'))
  large = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(large)
  c = large.large_config(large.mesh_option(arg, '8xh100'))
  c.model.fusion.kind = 'qformer'
  c.model.fusion.qformer_heads = 28
  c.model.llm.update(dict(vocab_size=152064, width=3584, layers=28, heads=28, kv_heads=4, mlp=18944,
                          rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, tie_embeddings=False))
  return c
