"""Shared pieces of the 7B-class configs: encoder shapes of released checkpoints and pod/GPU meshes."""

import importlib.util
import os

import ml_collections

# Chips per slice and the mesh degrees used for them (data, fsdp, tensor).
MESHES = {
    'v5p-64': {'data': 1, 'fsdp': 32, 'tensor': 1},   # TPU v5p-64: 32 chips, one slice
    '8xh100': {'data': 1, 'fsdp': 8, 'tensor': 1},    # one node of 8 H100 GPUs
}


def demo_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config (configs/demo.py), the base every config overrides."""
  spec = importlib.util.spec_from_file_location('mer_jax_demo_config', os.path.join(os.path.dirname(__file__), 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def large_config(mesh: str) -> ml_collections.ConfigDict:
  """Whisper-large-v3-shaped audio and CLIP-ViT-L/14-shaped vision encoders, bf16 compute, `mesh` degrees."""
  if mesh not in MESHES:
    raise ValueError(f'unknown mesh {mesh!r}; choose from {sorted(MESHES)}')
  c = demo_config()
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full'
  audio = c.model.audio
  audio.n_mels, audio.width, audio.layers, audio.heads, audio.mlp = 128, 1280, 32, 20, 5120
  audio.num_soft_tokens = 32
  vision = c.model.vision
  vision.image_size, vision.patch_size, vision.width, vision.layers, vision.heads, vision.mlp = 224, 14, 1024, 24, 16, 4096
  vision.num_soft_tokens = 32
  c.data.seq_len = 512
  c.data.max_transcript_tokens = 256
  c.train.batch_size = 256 if mesh == 'v5p-64' else 64
  c.train.learning_rate = 1e-4
  c.train.steps = 10000
  c.train.warmup_steps = 500
  c.mesh.update(MESHES[mesh])
  return c


def mesh_option(arg: str | None, default: str) -> str:
  """The value of 'mesh=NAME' in a config argument, else `default`."""
  options = dict(part.split('=', 1) for part in (arg or '').split(',') if part)
  unknown = set(options) - {'mesh'}
  if unknown:
    raise ValueError(f'unknown config options {sorted(unknown)}; valid: mesh')
  return options.get('mesh', default)
