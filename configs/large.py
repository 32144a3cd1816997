"""Shared pieces of the 7B-class configs: encoder shapes of released checkpoints and pod/GPU meshes."""

import os
import runpy

import ml_collections

# Chips per slice and the mesh degrees used for them (data, fsdp, tensor).
MESHES = {
    'v5p-64': {'data': 1, 'fsdp': 32, 'tensor': 1},   # TPU v5p-64: 32 chips, one slice
    '8xh100': {'data': 1, 'fsdp': 8, 'tensor': 1},    # one node of 8 H100 GPUs
    '1xh100': {'data': 1, 'fsdp': 1, 'tensor': 1},    # one 80 GB GPU, with the single-GPU recipe below
}
SINGLE_GPU_MICROBATCHES = 16  # 64 examples a step in passes of 4


def demo_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config (configs/demo.py), the base every config overrides."""
  return runpy.run_path(os.path.join(os.path.dirname(__file__), 'demo.py'))['get_config'](arg)


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
  if mesh == '1xh100':
    single_gpu_recipe(c)
  return c


def single_gpu_recipe(c: ml_collections.ConfigDict) -> None:
  """AffectGPT's one-card recipe: LLM and encoders frozen in bf16, LoRA rank 16 on all seven projections,
  full remat, and gradient accumulation to the 8-GPU global batch."""
  for part in (c.model.llm, c.model.audio, c.model.vision):
    part.param_dtype = 'bfloat16'
  c.model.lora.update(rank=16, alpha=32.0, targets=('q', 'k', 'v', 'o', 'gate', 'up', 'down'))
  c.train.trainable = ('fusion', 'valence_head')
  c.train.microbatches = SINGLE_GPU_MICROBATCHES


def mesh_option(arg: str | None, default: str) -> str:
  """The value of 'mesh=NAME' in a config argument, else `default`."""
  options = dict(part.split('=', 1) for part in (arg or '').split(',') if part)
  unknown = set(options) - {'mesh'}
  if unknown:
    raise ValueError(f'unknown config options {sorted(unknown)}; valid: mesh')
  return options.get('mesh', default)


def backbone_config(arg: str | None, fusion_kind: str, llm: dict) -> ml_collections.ConfigDict:
  """large_config for the mesh named in `arg` (default 8xh100) with this fusion and LLM shape."""
  c = large_config(mesh_option(arg, '8xh100'))
  c.model.fusion.kind = fusion_kind
  c.model.llm.update(llm)
  return c

