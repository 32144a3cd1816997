"""Pretrained component weights: a Hugging Face directory, or the Orbax checkpoint `mer-jax convert` makes of one.

A converted directory holds `converted.json` (the component, the HF config.json it came from and
the config.model.<component> values it fixes), `params/` (an Orbax checkpoint of the component's
param tree in our layout, in the HF files' dtype) and the LLM's tokenizer files. Pod runs restore
it with Orbax straight onto the target shardings, each host reading only its own shards.
"""

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx, traverse_util
import jax
import ml_collections
import orbax.checkpoint as ocp

from mer_jax.data import chat
from mer_jax.interop import hf

CONVERTED_FILE = 'converted.json'
PARAMS_DIR = 'params'
LOADERS: dict[str, Callable[..., nnx.Module]] = {
  'llm': hf.load_llm, 'audio': hf.load_whisper_encoder, 'vision': hf.load_clip_vision}


def is_converted(path: str) -> bool:
  """Whether `path` is a directory written by `convert` (it holds converted.json)."""
  return os.path.isfile(os.path.join(path, CONVERTED_FILE))


def read_converted(path: str) -> dict[str, Any]:
  """The converted.json of a converted directory; fails naming the file when it is unreadable or incomplete."""
  file = os.path.join(path, CONVERTED_FILE)
  try:
    with open(file) as f:
      info = json.load(f)
  except ValueError as e:
    raise ValueError(f'{file} is not valid JSON: {e}') from e
  missing = [key for key in ('component', 'model_config') if key not in info]
  if missing:
    raise ValueError(f'{file} lacks {missing}: not written by `mer-jax convert`')
  return info


def convert(hf_dir: str, out_dir: str, component: str = 'llm') -> dict[str, Any]:
  """Reads the component's HF checkpoint once and writes it to out_dir as a converted directory; returns its info.

  Params keep the HF files' dtype (bfloat16 stays bfloat16). out_dir must not exist yet; a failed
  conversion leaves nothing behind.
  """
  if component not in LOADERS:
    raise ValueError(f'unknown component {component!r}; choose from {tuple(LOADERS)}')
  dtype = hf.Checkpoint(hf_dir).dtype()
  module = LOADERS[component](hf_dir, dtype=dtype)
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  info = {'component': component, 'source': os.path.abspath(hf_dir), 'dtype': dtype,
          'hf_config': hf.read_config(hf_dir), 'model_config': hf.checkpoint_config(component, hf_dir)}

  def write(tmp: str) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
    with open(os.path.join(tmp, CONVERTED_FILE), 'w') as f:
      json.dump(info, f, indent=2)
    tokenizer = os.path.join(hf_dir, chat.TOKENIZER_FILE)
    if component == 'llm' and os.path.exists(tokenizer):
      chat.copy_tokenizer(tokenizer, tmp)

  hf.write_directory(out_dir, write)
  return info


def component_info(kind: str, path: str) -> dict[str, Any]:
  """converted.json of `path`; fails unless it holds component `kind`."""
  info = read_converted(path)
  if info['component'] != kind:
    raise ValueError(f'config.model.{kind}.init_from={path} holds a converted {info["component"]!r} '
                     f'checkpoint, not {kind!r}')
  return info


def checkpoint_config(kind: str, path: str) -> dict[str, Any]:
  """The config.model.<kind> keys that checkpoint `path` (HF or converted) fixes (the LLM's vocab_size aside)."""
  if is_converted(path):
    return component_info(kind, path)['model_config']
  return hf.checkpoint_config(kind, path)


def llm_vocab_size(path: str) -> int:
  """The vocabulary size of the LLM checkpoint at `path` (HF or converted): its embedding table's rows."""
  config = component_info('llm', path)['hf_config'] if is_converted(path) else hf.read_config(path)
  return int(hf.llm_config(config).vocab_size)


def check_config(kind: str, path: str, cfg: ml_collections.ConfigDict) -> None:
  """Fails naming each config.model.<kind> key whose value differs from what checkpoint `path` needs."""
  bad = []
  for key, value in checkpoint_config(kind, path).items():
    ours = cfg[key].to_dict() if isinstance(cfg[key], ml_collections.ConfigDict) else cfg[key]
    if ours != value:
      bad.append(f'config.model.{kind}.{key}={ours!r} (checkpoint: {value!r})')
  if bad:
    raise ValueError(f'config.model.{kind}.init_from={path}: set {"; ".join(bad)}')


def check_shapes(path: str, stored: Mapping[str, Any], targets: Mapping[str, Any]) -> None:
  """Fails naming the first parameter missing from, extra in, or shaped differently in the converted checkpoint."""
  for name, target in targets.items():
    if name not in stored:
      raise ValueError(f'parameter {name!r} is missing from the converted checkpoint {path}')
    if tuple(stored[name].shape) != tuple(target.shape):
      raise ValueError(f'parameter {name!r} in {path} has shape {tuple(stored[name].shape)}, the config '
                       f'needs {tuple(target.shape)}')
  extra = sorted(stored.keys() - targets.keys())
  if extra:
    raise ValueError(f'the converted checkpoint {path} holds parameter(s) {extra} the configured model lacks')


def restore_converted(kind: str, path: str, abstract: Mapping, shardings: Mapping) -> dict:
  """Params of component `kind` from converted directory `path`, restored by Orbax straight onto `shardings`."""
  component_info(kind, path)
  params_dir = os.path.join(os.path.abspath(path), PARAMS_DIR)
  with ocp.StandardCheckpointer() as checkpointer:
    stored = checkpointer.metadata(params_dir).item_metadata.tree
    check_shapes(params_dir, traverse_util.flatten_dict(stored, sep='.'),
                 traverse_util.flatten_dict(abstract, sep='.'))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return checkpointer.restore(params_dir, target)


def load_params(kind: str, path: str, abstract: Mapping, shardings: Mapping) -> dict:
  """Params of component `kind` like `abstract`, placed on `shardings`, from an HF or a converted directory."""
  if is_converted(path):
    return restore_converted(kind, path, abstract, shardings)
  return hf.load_component(kind, path, abstract, shardings)
