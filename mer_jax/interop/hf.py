"""Hugging Face checkpoints in and out: LLaMA/Qwen2 LLMs, Whisper and CLIP encoders (safetensors directories).

Loading reads each tensor through a memory map and builds one (layer-stacked) parameter at a time
straight onto its target sharding: every device's slice is cut from the mapped file, so host
memory stays near the size of one parameter plus the pages being read, never a second copy of the
checkpoint. bfloat16 files are read as raw bytes (numpy has no bfloat16; jax's ml_dtypes does).
"""

import dataclasses
import functools
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from flax import nnx, traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mer_jax.models import layers
from mer_jax.models.audio import AudioEncoder, sinusoids
from mer_jax.models.llm import LLM
from mer_jax.models.vision import VisionEncoder

LLM_ARCHITECTURES = {'LlamaForCausalLM': 'llama', 'Qwen2ForCausalLM': 'qwen2'}
ROPE_TYPES = {'default': 'none', 'linear': 'linear', 'llama3': 'llama3'}
VISION_ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
                      'gelu_new': 'gelu_tanh'}
# CLIPVisionConfig's defaults: a CLIPModel config.json may leave them out of its vision_config.
CLIP_VISION_DEFAULTS = {'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
                        'num_attention_heads': 12, 'image_size': 224, 'patch_size': 32,
                        'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5, 'num_channels': 3}
COMPONENTS = ('llm', 'audio', 'vision')
DTYPES = {'F64': jnp.float64, 'F32': jnp.float32, 'F16': jnp.float16, 'BF16': jnp.bfloat16}
DTYPE_CODES = {jnp.dtype(dtype): code for code, dtype in DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lies: its file, safetensors dtype code, shape and absolute byte offset."""

  path: str
  dtype: str
  shape: tuple[int, ...]
  offset: int


def read_header(path: str) -> dict[str, TensorInfo]:
  """The tensors listed in the header of safetensors file `path`."""
  try:
    with open(path, 'rb') as f:
      size = struct.unpack('<Q', f.read(8))[0]
      header = json.loads(f.read(size))
  except (struct.error, ValueError) as e:
    raise ValueError(f'{path} is not a readable safetensors file: {e}') from e
  header.pop('__metadata__', None)
  return {name: TensorInfo(path, meta['dtype'], tuple(meta['shape']), 8 + size + meta['data_offsets'][0])
          for name, meta in header.items()}


class Checkpoint:
  """The tensors of a safetensors checkpoint directory (one file, or the shards its index names)."""

  def __init__(self, hf_dir: str):
    index = os.path.join(hf_dir, 'model.safetensors.index.json')
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
      missing = [name for name in files if not os.path.exists(os.path.join(hf_dir, name))]
      if missing:
        raise FileNotFoundError(f'{hf_dir}: shard file(s) {", ".join(missing)} named in '
                                f'model.safetensors.index.json are missing')
    else:
      files = sorted(name for name in os.listdir(hf_dir) if name.endswith('.safetensors'))
      if not files:
        raise FileNotFoundError(f'no *.safetensors file in {hf_dir}')
    self.dir = hf_dir
    self.files = files
    self.tensors: dict[str, TensorInfo] = {}
    for name in files:
      self.tensors.update(read_header(os.path.join(hf_dir, name)))

  def info(self, name: str) -> TensorInfo:
    """The tensor `name`; fails naming it and the files searched when it is absent."""
    if name not in self.tensors:
      raise ValueError(f'tensor {name!r} is missing from {self.dir} (files: {", ".join(self.files)})')
    info = self.tensors[name]
    if info.dtype not in DTYPES:
      raise ValueError(f'tensor {name!r} in {info.path} has dtype {info.dtype}; supported: {sorted(DTYPES)}')
    return info

  def check(self, name: str, shape: tuple[int, ...]) -> None:
    """Fails naming tensor `name` and its file unless it exists with `shape`."""
    info = self.info(name)
    if info.shape != shape:
      raise ValueError(f'tensor {name!r} in {info.path} has shape {info.shape}, the config needs {shape}')

  def read(self, name: str) -> np.ndarray:
    """A read-only memory map of tensor `name`: only the pages that are used get read."""
    info = self.info(name)
    return np.memmap(info.path, dtype=DTYPES[info.dtype], mode='r', offset=info.offset, shape=info.shape)

  def dtype(self) -> str:
    """'bfloat16' or 'float16' when all its tensors are stored so (as most published LLMs are), else 'float32'."""
    codes = sorted({info.dtype for info in self.tensors.values()})
    if codes == ['BF16'] or codes == ['F16']:
      return jnp.dtype(DTYPES[codes[0]]).name
    return 'float32'

  def prefix(self, suffix: str) -> str:
    """The shortest prefix under which a tensor named `suffix` lies ('model.encoder.' for 'conv1.weight')."""
    found = sorted((name[:-len(suffix)] for name in self.tensors if name.endswith(suffix)), key=len)
    if not found:
      raise ValueError(f'no tensor named *{suffix} in {self.dir}: not the expected kind of checkpoint')
    return found[0]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How an HF tensor maps onto one of our (per-layer) parameter shapes.

  kind: 'same'; 'flat' (HF keeps it 1-D); 'linear' (HF [out, in] vs our kernel [*in, *out] with
  `num_in` input axes); 'conv' (HF [out, in, width] vs ours [width, in, out]); 'patch' (HF conv
  [out, 3, P, P] vs our patch kernel [P * P * 3, out], patches flattened as (P, P, 3)).
  """

  kind: str
  num_in: int = 1

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape for our parameter shape."""
    if self.kind == 'flat':
      return (math.prod(shape),)
    if self.kind == 'linear':
      return (math.prod(shape[self.num_in:]), math.prod(shape[:self.num_in]))
    if self.kind == 'conv':
      return shape[::-1]
    if self.kind == 'patch':
      patch = math.isqrt(shape[0] // 3)
      return (shape[1], 3, patch, patch)
    return shape

  def to_ours(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout (a view of x where the layouts allow)."""
    if self.kind == 'linear':
      num_out = len(shape) - self.num_in
      x = x.reshape(shape[self.num_in:] + shape[:self.num_in])
      return x.transpose(tuple(range(num_out, len(shape))) + tuple(range(num_out)))
    if self.kind == 'conv':
      return x.transpose(2, 1, 0)
    if self.kind == 'patch':
      return x.transpose(2, 3, 1, 0).reshape(shape)
    return x.reshape(shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    """Our layout -> HF tensor."""
    shape = self.hf_shape(x.shape)
    if self.kind == 'linear':
      x = x.transpose(tuple(range(self.num_in, x.ndim)) + tuple(range(self.num_in)))
    elif self.kind == 'conv':
      x = x.transpose(2, 1, 0)
    elif self.kind == 'patch':
      x = x.reshape(shape[2], shape[3], 3, shape[0]).transpose(3, 2, 0, 1)
    return x.reshape(shape)


SAME, FLAT, CONV, PATCH = Layout('same'), Layout('flat'), Layout('conv'), Layout('patch')
LINEAR, LINEAR_FROM_HEADS = Layout('linear'), Layout('linear', num_in=2)
# Our parameter path (dotted; 'layers.*' are stacked) -> (HF tensor name, '{i}' = layer index, layout).
Spec = dict[str, tuple[str, Layout]]


def attention_spec(hf: str, out_proj: str) -> Spec:
  """Our scanned Attention's kernels and biases from HF `{hf}{q,k,v}_proj` and `{hf}{out_proj}`."""
  spec = {}
  for ours, theirs in (('q', 'q_proj'), ('k', 'k_proj'), ('v', 'v_proj'), ('o', out_proj)):
    kernel = LINEAR_FROM_HEADS if ours == 'o' else LINEAR
    spec[f'layers.blocks.attn.{ours}.kernel'] = (f'{hf}{theirs}.weight', kernel)
    spec[f'layers.blocks.attn.{ours}.bias'] = (f'{hf}{theirs}.bias', FLAT)
  return spec


def norm_spec(ours: str, hf: str) -> Spec:
  """Scale (and bias, for LayerNorm) of our norm `ours` from HF `{hf}.weight` / `{hf}.bias`."""
  return {f'{ours}.scale': (f'{hf}.weight', SAME), f'{ours}.bias': (f'{hf}.bias', SAME)}


def mlp_spec(hf: str) -> Spec:
  """Our scanned two-layer MLP from HF `{hf}fc1` and `{hf}fc2`."""
  return {f'layers.blocks.mlp.{fc}.{p}': (f'{hf}{fc}.{hf_p}', layout) for fc in ('fc1', 'fc2')
          for p, hf_p, layout in (('kernel', 'weight', LINEAR), ('bias', 'bias', SAME))}


def llm_spec() -> Spec:
  """LlamaForCausalLM / Qwen2ForCausalLM tensor names for our LLM."""
  layer = 'model.layers.{i}.'
  return {
    'embed.embedding': ('model.embed_tokens.weight', SAME),
    **attention_spec(layer + 'self_attn.', 'o_proj'),
    **norm_spec('layers.blocks.attn_norm', layer + 'input_layernorm'),
    **norm_spec('layers.blocks.mlp_norm', layer + 'post_attention_layernorm'),
    **{f'layers.blocks.mlp.{p}.kernel': (f'{layer}mlp.{p}_proj.weight', LINEAR)
       for p in ('gate', 'up', 'down')},
    **norm_spec('norm', 'model.norm'),
    'lm_head.kernel': ('lm_head.weight', LINEAR),
  }


def whisper_spec(prefix: str) -> Spec:
  """Whisper encoder tensor names (under `prefix`, e.g. 'model.encoder.') for our AudioEncoder."""
  layer = prefix + 'layers.{i}.'
  return {
    **{f'{conv}.{p}': (f'{prefix}{conv}.{hf_p}', layout) for conv in ('conv1', 'conv2')
       for p, hf_p, layout in (('kernel', 'weight', CONV), ('bias', 'bias', SAME))},
    **attention_spec(layer + 'self_attn.', 'out_proj'),
    **norm_spec('layers.blocks.attn_norm', layer + 'self_attn_layer_norm'),
    **norm_spec('layers.blocks.mlp_norm', layer + 'final_layer_norm'),
    **mlp_spec(layer),
    **norm_spec('norm', prefix + 'layer_norm'),
  }


def clip_spec(prefix: str) -> Spec:
  """CLIP vision tower tensor names (under `prefix`, e.g. 'vision_model.') for our VisionEncoder."""
  layer = prefix + 'encoder.layers.{i}.'
  return {
    'class_embed': (prefix + 'embeddings.class_embedding', SAME),
    'patch_embed.kernel': (prefix + 'embeddings.patch_embedding.weight', PATCH),
    'positions': (prefix + 'embeddings.position_embedding.weight', SAME),
    **norm_spec('pre_norm', prefix + 'pre_layrnorm'),
    **attention_spec(layer + 'self_attn.', 'out_proj'),
    **norm_spec('layers.blocks.attn_norm', layer + 'layer_norm1'),
    **norm_spec('layers.blocks.mlp_norm', layer + 'layer_norm2'),
    **mlp_spec(layer + 'mlp.'),
    **norm_spec('post_norm', prefix + 'post_layernorm'),
  }


def place(ckpt: Checkpoint, names: list[str], layout: Layout, shape: tuple[int, ...], stacked: bool,
          target: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding) -> jax.Array:
  """One parameter as a global array; each device's slice is read from the mapped tensors on its own."""

  def read(index: tuple[slice, ...]) -> np.ndarray:
    if not stacked:
      return np.asarray(layout.to_ours(ckpt.read(names[0]), shape)[index], target.dtype)
    out = np.empty([len(range(*s.indices(n))) for s, n in zip(index, target.shape)], target.dtype)
    for row, name in enumerate(names[index[0]]):  # each layer's file mapping is released after its copy
      out[row] = layout.to_ours(ckpt.read(name), shape)[index[1:]]
    return out

  return jax.make_array_from_callback(target.shape, sharding, read)


def read_params(ckpt: Checkpoint, spec: Spec, abstract: Mapping, shardings: Mapping) -> dict:
  """A pure-dict param tree shaped like `abstract` (ShapeDtypeStructs), each leaf placed with its sharding.

  Every tensor is checked (present, right shape) before anything is read.
  """
  targets = traverse_util.flatten_dict(abstract, sep='.')
  places = traverse_util.flatten_dict(shardings, sep='.')
  plans = {}
  for path, target in targets.items():
    if path not in spec:
      raise ValueError(f'no checkpoint tensor maps to parameter {path!r}')
    name, layout = spec[path]
    stacked = path.startswith('layers.')
    shape = tuple(target.shape[1:] if stacked else target.shape)
    names = [name.format(i=i) for i in range(target.shape[0])] if stacked else [name]
    for hf_name in names:
      ckpt.check(hf_name, layout.hf_shape(shape))
    plans[path] = names, layout, shape, stacked
  placed = {path: place(ckpt, *plans[path], targets[path], places[path]) for path in targets}
  return traverse_util.unflatten_dict(placed, sep='.')


def check_whisper_positions(ckpt: Checkpoint, name: str) -> None:
  """Fails unless Whisper's position table `name` holds the sinusoids our AudioEncoder computes."""
  table = ckpt.read(name)
  diff = float(np.max(np.abs(np.asarray(table, np.float32) - sinusoids(*table.shape))))
  if diff > 1e-3 + float(jnp.finfo(table.dtype).eps):
    raise ValueError(f'tensor {name!r} differs from Whisper\'s sinusoids by up to {diff:.3g}; our '
                     f'AudioEncoder uses fixed sinusoidal positions')


def load_component(kind: str, hf_dir: str, abstract: Mapping, shardings: Mapping) -> dict:
  """Params of our `kind` module ('llm', 'audio', 'vision') from hf_dir, like `abstract`, on `shardings`."""
  ckpt = Checkpoint(hf_dir)
  if kind == 'llm':
    spec = llm_spec()
  elif kind == 'audio':
    prefix = ckpt.prefix('conv1.weight')
    check_whisper_positions(ckpt, prefix + 'embed_positions.weight')
    spec = whisper_spec(prefix)
  elif kind == 'vision':
    spec = clip_spec(ckpt.prefix('embeddings.patch_embedding.weight'))
  else:
    raise ValueError(f'unknown component {kind!r}; choose from {COMPONENTS}')
  return read_params(ckpt, spec, abstract, shardings)


def read_config(hf_dir: str, name: str = 'config.json') -> dict:
  """The JSON file `name` of a Hugging Face checkpoint directory."""
  path = os.path.join(hf_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {hf_dir} is not a Hugging Face checkpoint directory')
  with open(path) as f:
    return json.load(f)


def require(config: Mapping, what: str, **supported: Any) -> None:
  """Fails naming each config.json key whose value we cannot reproduce (absent keys count as supported)."""
  bad = {key: config[key] for key, value in supported.items() if config.get(key, value) != value}
  if bad:
    raise ValueError(f'unsupported {what} settings in config.json: {bad}; supported: {supported}')


def llm_config(config: Mapping) -> ml_collections.ConfigDict:
  """config.model.llm keys (and vocab_size) for an HF LLaMA/Qwen2 config.json."""
  architectures = list(config.get('architectures') or [])
  model_type = config.get('model_type')
  if model_type not in LLM_ARCHITECTURES.values() or any(a not in LLM_ARCHITECTURES for a in architectures):
    supported = ', '.join(f'{a} (model_type {t})' for a, t in LLM_ARCHITECTURES.items())
    raise ValueError(f'unsupported architecture {", ".join(architectures) or model_type!r} '
                     f'(model_type {model_type!r}) in config.json; supported: {supported}')
  require(config, model_type, attention_bias=False, mlp_bias=False, hidden_act='silu',
          use_sliding_window=False)
  rope = dict(config.get('rope_parameters') or config.get('rope_scaling') or {})
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  if rope_type not in ROPE_TYPES or rope.get('partial_rotary_factor', 1.0) != 1.0:
    raise ValueError(f'unsupported rope settings {rope} in config.json; supported rope types: '
                     f'{sorted(ROPE_TYPES)} over the full head')
  defaults = layers.RopeScaling()
  scaling = layers.RopeScaling(
    type=ROPE_TYPES[rope_type], factor=float(rope.get('factor', defaults.factor)),
    low_freq_factor=float(rope.get('low_freq_factor', defaults.low_freq_factor)),
    high_freq_factor=float(rope.get('high_freq_factor', defaults.high_freq_factor)),
    original_max_position_embeddings=int(rope.get('original_max_position_embeddings',
                                                  defaults.original_max_position_embeddings)))
  width, heads = config['hidden_size'], config['num_attention_heads']
  head_dim = config.get('head_dim') or width // heads
  return ml_collections.ConfigDict(dict(
    vocab_size=config['vocab_size'], width=width, layers=config['num_hidden_layers'], heads=heads,
    kv_heads=config.get('num_key_value_heads') or heads,
    head_dim=0 if head_dim * heads == width else head_dim, mlp=config['intermediate_size'],
    rope_theta=float(rope.get('rope_theta', config.get('rope_theta', 10000.0))),
    rope_scaling=dataclasses.asdict(scaling), norm_eps=float(config['rms_norm_eps']),
    qkv_bias=model_type == 'qwen2', tie_embeddings=bool(config.get('tie_word_embeddings', False))))


def whisper_config(hf_dir: str) -> dict[str, Any]:
  """config.model.audio keys that a Whisper checkpoint directory determines."""
  config = read_config(hf_dir)
  if config.get('model_type') != 'whisper':
    raise ValueError(f'unsupported model_type {config.get("model_type")!r} in {hf_dir}/config.json; '
                     f'an audio encoder loads from a Whisper checkpoint (model_type whisper)')
  require(config, 'Whisper', activation_function='gelu')
  features = {}
  if os.path.exists(os.path.join(hf_dir, 'preprocessor_config.json')):
    features = read_config(hf_dir, 'preprocessor_config.json')
  return dict(sample_rate=features.get('sampling_rate', 16000), n_fft=features.get('n_fft', 400),
              hop_length=features.get('hop_length', 160), n_mels=config['num_mel_bins'],
              width=config['d_model'], layers=config['encoder_layers'],
              heads=config['encoder_attention_heads'], mlp=config['encoder_ffn_dim'],
              max_frames=config['max_source_positions'])


def clip_config(hf_dir: str) -> dict[str, Any]:
  """config.model.vision keys that a CLIP (or CLIP vision) checkpoint directory determines."""
  config = read_config(hf_dir)
  model_type = config.get('model_type')
  if model_type == 'clip':
    config = config.get('vision_config') or {}
  elif model_type != 'clip_vision_model':
    raise ValueError(f'unsupported model_type {model_type!r} in {hf_dir}/config.json; a vision encoder loads '
                     f'from a CLIP checkpoint (model_type clip or clip_vision_model)')
  config = {**CLIP_VISION_DEFAULTS, **config}
  require(config, 'CLIP vision', layer_norm_eps=1e-5, num_channels=3)
  if config['hidden_act'] not in VISION_ACTIVATIONS:
    raise ValueError(f'unsupported hidden_act {config["hidden_act"]!r} in {hf_dir}/config.json; '
                     f'supported: {sorted(VISION_ACTIVATIONS)}')
  return dict(image_size=config['image_size'], patch_size=config['patch_size'], width=config['hidden_size'],
              layers=config['num_hidden_layers'], heads=config['num_attention_heads'],
              mlp=config['intermediate_size'], act=VISION_ACTIVATIONS[config['hidden_act']])


def checkpoint_config(kind: str, hf_dir: str) -> dict[str, Any]:
  """The config.model.<kind> keys that the checkpoint in hf_dir fixes (the LLM's vocab_size aside)."""
  if kind == 'llm':
    cfg = llm_config(read_config(hf_dir)).to_dict()
    del cfg['vocab_size']
    return cfg
  if kind == 'audio':
    return whisper_config(hf_dir)
  if kind == 'vision':
    return clip_config(hf_dir)
  raise ValueError(f'unknown component {kind!r}; choose from {COMPONENTS}')


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh | None, rules: Any) -> dict:
  """Target shardings of a module's params: by their logical axes on `mesh`, or one device without a mesh."""
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: device, nnx.to_pure_dict(state))
  rules = rules if rules is not None else nn.get_logical_axis_rules()
  if not rules:
    raise ValueError('loading onto a mesh needs the logical-axis rules: pass rules= or load inside '
                     'nnx.logical_axis_rules(...)')
  with nnx.logical_axis_rules(()):  # get_partition_spec would map the names by any active rules itself
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def load_module(factory: Callable[[], nnx.Module], kind: str, hf_dir: str, mesh: jax.sharding.Mesh | None,
                rules: Any) -> Any:
  """The module `factory` builds, traced abstractly, with its params read from hf_dir onto their shardings."""
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  loaded = load_component(kind, hf_dir, nnx.to_pure_dict(state), param_shardings(state, mesh, rules))
  nnx.replace_by_pure_dict(state, loaded)
  return nnx.merge(graphdef, state)


def load_llm(hf_dir: str, *, dtype: str = 'float32', mesh: jax.sharding.Mesh | None = None,
             rules: Any = None) -> LLM:
  """Our LLM with the weights of a Hugging Face LLaMA/Qwen2 directory, in `dtype` (params and compute).

  `model(input_ids)` gives logits [batch, length, vocab]. With a mesh, params land on their
  logical-axis shardings under `rules` (default: the active nnx.logical_axis_rules).
  """
  cfg = llm_config(read_config(hf_dir))
  return load_module(lambda: LLM(cfg, cfg.vocab_size, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
                     'llm', hf_dir, mesh, rules)


def load_whisper_encoder(hf_dir: str, *, num_soft_tokens: int = 4, dtype: str = 'float32',
                         mesh: jax.sharding.Mesh | None = None, rules: Any = None) -> AudioEncoder:
  """Our AudioEncoder with the encoder of a Hugging Face Whisper checkpoint directory.

  Outputs match Whisper's at its full input (2 * max_source_positions mel frames, 30 s for the
  released models). Whisper pads every clip to that length; our encoder takes a shorter clip as
  it is: its frames take the first positions of the table and attend only to each other.
  """
  cfg = ml_collections.ConfigDict(dict(whisper_config(hf_dir), num_soft_tokens=num_soft_tokens))
  return load_module(lambda: AudioEncoder(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
                     'audio', hf_dir, mesh, rules)


def load_clip_vision(hf_dir: str, *, num_soft_tokens: int = 4, dtype: str = 'float32',
                     mesh: jax.sharding.Mesh | None = None, rules: Any = None) -> VisionEncoder:
  """Our VisionEncoder with the vision tower of a Hugging Face CLIP (or CLIPVisionModel) directory."""
  cfg = ml_collections.ConfigDict(dict(clip_config(hf_dir), num_soft_tokens=num_soft_tokens))
  return load_module(lambda: VisionEncoder(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)),
                     'vision', hf_dir, mesh, rules)


def hf_llm_config(model: LLM, params: Mapping[str, jax.Array], dtype: str,
                  max_position_embeddings: int) -> dict[str, Any]:
  """The config.json of `model` as LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v have biases."""
  num_layers, width, heads, head_dim = params['layers.blocks.attn.q.kernel'].shape
  qwen = 'layers.blocks.attn.q.bias' in params
  scaling = model.rope_scaling
  rope_scaling = {'rope_type': scaling.type, 'factor': scaling.factor}
  if scaling.type == 'llama3':
    rope_scaling.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                        original_max_position_embeddings=scaling.original_max_position_embeddings)
  config = {
    'architectures': ['Qwen2ForCausalLM' if qwen else 'LlamaForCausalLM'],
    'model_type': 'qwen2' if qwen else 'llama',
    'vocab_size': params['embed.embedding'].shape[0],
    'hidden_size': width,
    'intermediate_size': params['layers.blocks.mlp.gate.kernel'].shape[-1],
    'num_hidden_layers': num_layers,
    'num_attention_heads': heads,
    'num_key_value_heads': params['layers.blocks.attn.k.kernel'].shape[2],
    'head_dim': head_dim,
    'hidden_act': 'silu',
    'rms_norm_eps': model.norm.eps,
    'rope_theta': model.rope_theta,
    'rope_scaling': None if scaling.type == 'none' else rope_scaling,
    'tie_word_embeddings': model.lm_head is None,
    'max_position_embeddings': max_position_embeddings,
    'torch_dtype': dtype,
  }
  if not qwen:
    config.update(attention_bias=False, mlp_bias=False)
  return config


def export_tensor(value: jax.Array, layer: int | None, layout: Layout) -> np.ndarray:
  """Our parameter (one layer of it when `layer` is set) on the host, in the HF layout."""
  return layout.to_hf(np.asarray(value if layer is None else value[layer]))


def write_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                      dtype: jnp.dtype) -> None:
  """Writes (name, shape, make) tensors to a safetensors file in `dtype`, making one at a time."""
  code = DTYPE_CODES[dtype]
  header: dict[str, Any] = {'__metadata__': {'format': 'pt'}}
  offset = 0
  for name, shape, _ in tensors:
    size = math.prod(shape) * dtype.itemsize
    header[name] = {'dtype': code, 'shape': list(shape), 'data_offsets': [offset, offset + size]}
    offset += size
  blob = json.dumps(header).encode()
  blob += b' ' * (-len(blob) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for name, shape, make in tensors:
      array = np.ascontiguousarray(make(), dtype)
      if array.shape != shape:
        raise ValueError(f'tensor {name}: made shape {array.shape}, header says {shape}')
      f.write(array.reshape(-1).view(np.uint8).data)


def save_llm(model: LLM, out_dir: str, *, dtype: str = 'float32',
             max_position_embeddings: int = 4096) -> None:
  """Writes `model` as a Hugging Face directory (config.json, model.safetensors in `dtype`) for transformers.

  The directory is written under a temporary name beside out_dir and renamed when complete, so
  a failed export leaves nothing half-written; out_dir must not exist yet.
  """
  write_directory(out_dir, lambda tmp: write_llm(model, tmp, dtype=dtype,
                                                 max_position_embeddings=max_position_embeddings))


def write_llm(model: LLM, directory: str, *, dtype: str = 'float32', max_position_embeddings: int = 4096) -> None:
  """Writes `model`'s config.json and model.safetensors (in `dtype`) into an existing `directory`."""
  target = jnp.dtype(dtype)
  if target not in DTYPE_CODES:
    raise ValueError(f'unsupported export dtype {dtype!r}; choose from {sorted(str(d) for d in DTYPE_CODES)}')
  params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), sep='.')
  spec = llm_spec()
  tensors = []
  for path, value in params.items():
    name, layout = spec[path]
    if path.startswith('layers.'):
      tensors += [(name.format(i=i), layout.hf_shape(value.shape[1:]),
                   functools.partial(export_tensor, value, i, layout)) for i in range(value.shape[0])]
    else:
      tensors.append((name, layout.hf_shape(value.shape),
                      functools.partial(export_tensor, value, None, layout)))

  write_safetensors(os.path.join(directory, 'model.safetensors'), tensors, target)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf_llm_config(model, params, str(target), max_position_embeddings), f, indent=2)


def _umask() -> int:
  """The process's file-mode creation mask."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


def refuse_existing(out_dir: str) -> None:
  """Fails when out_dir exists: outputs are written whole into a new directory, never over an old one."""
  if os.path.exists(out_dir):
    raise FileExistsError(f'{out_dir} already exists; remove it or write into a new directory')


def write_directory(out_dir: str, write: Callable[[str], None]) -> None:
  """Runs write(tmp) on a temporary directory beside out_dir, then renames it to out_dir.

  A failed write leaves nothing behind; out_dir must not exist yet.
  """
  refuse_existing(out_dir)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(out_dir))}.', dir=parent)
  try:
    write(tmp)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result gets a normal directory's mode
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
