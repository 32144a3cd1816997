"""Training checkpoint -> inference bundle for one host, or Hugging Face directory of the LLM backbone.

A bundle is a directory with all that inference needs, without the run's workdir or dataset:

  model.safetensors   every parameter under its path in the model ('llm.layers.blocks.attn.q.kernel'),
                      in bfloat16 or float32, LoRA adapters merged into their kernels
  config.json         the run's resolved config, changed where the bundle differs: no adapters
                      (model.lora.rank=0), params in the bundle's dtype, no init_from, the bundle's
                      tokenizer (data.tokenizer, relative to the bundle), one host's devices (mesh.fsdp=-1)
  tokenizer.json      the run's tokenizer, with its tokenizer_config.json / chat_template.jinja if any
  preprocessing.json  labels, audio and frame settings of `prepare`, the training split's mean valence
  bundle.json         the checkpoint step, the dtype and the run the bundle comes from

`load_bundle(dir)` gives a Predictor that scores labels, generates answers and predicts valence.
Merging the adapters makes the bundle a plain model (one matmul per projection); its outputs
differ from the unmerged model's by float rounding only.
"""

import functools
import json
import os

from flax import nnx, traverse_util
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from mer_jax.data import chat, pipeline, prepare
from mer_jax.eval.evaluate import Predictor
from mer_jax.interop import hf
from mer_jax.models import lora
from mer_jax.models.llm import LLM
from mer_jax.train import run
from mer_jax.train.experiment import Experiment
from mer_jax.train.run import PREPROCESSING_KEYS, read_json, write_json

DTYPES = ('bfloat16', 'float32')
FORMATS = ('bundle', 'hf')
WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
PREPROCESSING_FILE = run.PREPROCESSING_FILE
BUNDLE_FILE = 'bundle.json'


def check_dtype(dtype: str) -> None:
  """Refuses an export dtype other than DTYPES."""
  if dtype not in DTYPES:
    raise ValueError(f'unsupported export dtype {dtype!r}; choose from {DTYPES}')


def stored_layout(shape: tuple[int, ...]) -> hf.Layout:
  """How a param of `shape` lies in model.safetensors: as it is, a scalar as one-element vector."""
  return hf.SAME if shape else hf.FLAT


def write_params(path: str, params: dict, dtype: str) -> None:
  """Writes a param tree to a safetensors file, one tensor per leaf named by its dotted path."""
  tensors = []
  for name, value in traverse_util.flatten_dict(params, sep='.').items():
    layout = stored_layout(value.shape)
    tensors.append((name, layout.hf_shape(value.shape), functools.partial(hf.export_tensor, value, None, layout)))
  hf.write_safetensors(path, tensors, jnp.dtype(dtype))


def describe_export(workdir: str, step: int, dtype: str, config: ConfigDict) -> dict:
  """Where an export comes from: the run, its checkpoint step, the dtype, and whether adapters were merged."""
  return {'step': step, 'dtype': dtype, 'source': os.path.abspath(workdir), 'lora_merged': config.model.lora.rank > 0}


def bundle_config(config: ConfigDict, dtype: str) -> dict:
  """The bundle's config.json: the one-host run config with merged adapters, `dtype` params and its own tokenizer."""
  config = ConfigDict(json.loads(config.to_json()))
  config.model.lora.rank = 0
  config.model.param_dtype = dtype
  config.data.tokenizer = prepare.TOKENIZER_FILE
  return json.loads(config.to_json())


def export_bundle(workdir: str, out: str, dtype: str = 'bfloat16') -> dict:
  """Writes the run's newest checkpoint as an inference bundle in `out` (see the module docstring); returns bundle.json.

  Needs only the workdir (its inference/ files), not the run's dataset. `out` must not exist; it appears
  complete or not at all.
  """
  check_dtype(dtype)
  hf.refuse_existing(out)  # before the checkpoint is read
  experiment, step, params = run.restore_run(workdir)
  config = experiment.config
  manifest = describe_export(workdir, step, dtype, config)

  def write(tmp: str) -> None:
    write_params(os.path.join(tmp, WEIGHTS_FILE), lora.merge_adapters(params, config.model.lora), dtype)
    write_json(os.path.join(tmp, CONFIG_FILE), bundle_config(config, dtype))
    write_json(os.path.join(tmp, PREPROCESSING_FILE), experiment.info)
    write_json(os.path.join(tmp, BUNDLE_FILE), manifest)
    chat.copy_tokenizer(config.data.tokenizer, tmp)

  hf.write_directory(out, write)
  return manifest


def backbone(model_config: ConfigDict, params: dict) -> LLM:
  """The LLM (config.model.llm, no adapters) holding `params`, a param tree without adapters."""
  vocab_size = params['embed']['embedding'].shape[0]
  graphdef, state = nnx.split(nnx.eval_shape(lambda: LLM(
      model_config.llm, vocab_size, dtype=model_config.dtype, param_dtype=model_config.param_dtype,
      rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def export_hf(workdir: str, out: str, dtype: str = 'bfloat16') -> dict:
  """Writes the run's LLM backbone, LoRA merged, as a Hugging Face directory with its tokenizer; returns its origin.

  transformers' AutoModelForCausalLM loads it (LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v
  biases). `out` must not exist; it appears complete or not at all.
  """
  check_dtype(dtype)
  hf.refuse_existing(out)  # before the checkpoint is read
  experiment, step, params = run.restore_run(workdir)
  config = experiment.config
  llm = backbone(config.model, lora.merge_adapters(params['llm'], config.model.lora))

  def write(tmp: str) -> None:
    hf.write_llm(llm, tmp, dtype=dtype)
    chat.copy_tokenizer(config.data.tokenizer, tmp)

  hf.write_directory(out, write)
  return describe_export(workdir, step, dtype, config)


def export(workdir: str, out: str, fmt: str, dtype: str = 'bfloat16') -> dict:
  """export_bundle or export_hf by `fmt` (one of FORMATS)."""
  if fmt not in FORMATS:
    raise ValueError(f'unknown export format {fmt!r}; choose from {FORMATS}')
  return (export_bundle if fmt == 'bundle' else export_hf)(workdir, out, dtype)


def directory_bytes(path: str) -> int:
  """The bytes of all files under `path`."""
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def read_bundle_json(path: str, name: str) -> dict:
  """The JSON file `name` of the bundle in `path`; fails naming it when absent or unreadable."""
  return read_json(os.path.join(path, name), f'{path} is not a bundle written by `mer-jax export`')


def read_preprocessing(path: str) -> dict:
  """A bundle's preprocessing.json: labels and the `prepare` settings its clips are decoded with."""
  return read_bundle_json(path, PREPROCESSING_FILE)


def read_bundle_config(path: str) -> ConfigDict:
  """A bundle's config.json, its tokenizer resolved to the bundle's own file."""
  config = ConfigDict(read_bundle_json(path, CONFIG_FILE))
  config.data.tokenizer = os.path.join(os.path.abspath(path), config.data.tokenizer)
  return config


def dataset_info_for(data_dir: str, path: str, expected: dict) -> dict:
  """data_dir's dataset info; fails naming each preprocessing entry that differs from the bundle's."""
  info = pipeline.load_info(data_dir)
  differing = [f'{key}={info.get(key)!r} (bundle: {expected[key]!r})' for key in PREPROCESSING_KEYS
               if info.get(key) != expected[key]]
  if differing:
    raise ValueError(f'{data_dir} was prepared differently from what bundle {path} expects: {"; ".join(differing)}')
  return info


class BundleSetup(Experiment):
  """An Experiment made from a bundle's files, on this host's devices; its info is the bundle's preprocessing.

  With `data_dir` (a prepared dataset with the same labels and preprocessing), its info is that
  dataset's instead, so its splits can be evaluated.
  """

  def __init__(self, path: str, data_dir: str | None = None, devices: list[jax.Device] | None = None):
    self.path = os.path.abspath(path)
    self.manifest = read_bundle_json(path, BUNDLE_FILE)
    self.step: int = self.manifest['step']
    self.preprocessing = read_preprocessing(path)
    config = read_bundle_config(path)
    info = self.preprocessing
    if data_dir is not None:
      config.data.dir = data_dir
      info = dataset_info_for(data_dir, path, self.preprocessing)
    super().__init__(config, devices if devices is not None else jax.local_devices(), info)

  @property
  def train_valence_mean(self) -> float:
    """The training split's mean valence, as recorded at export."""
    return float(self.preprocessing['train_valence_mean'])


def read_bundle_params(setup: BundleSetup) -> dict:
  """The bundle's params, each read from the mapped file straight onto its sharding in the config's dtype."""
  abstract = setup.parts.abstract_params
  spec = {name: (name, stored_layout(value.shape))
          for name, value in traverse_util.flatten_dict(abstract, sep='.').items()}
  return hf.read_params(hf.Checkpoint(setup.path), spec, abstract, setup.parts.param_shardings)


def load_bundle(path: str, data_dir: str | None = None, devices: list[jax.Device] | None = None) -> Predictor:
  """The bundle in `path` as a Predictor on this host (see BundleSetup for `data_dir`)."""
  setup = BundleSetup(path, data_dir, devices)
  return Predictor(setup, read_bundle_params(setup))


def bundle_predictor(path: str) -> tuple[Predictor, int]:
  """load_bundle(path) and the training step its weights come from."""
  predictor = load_bundle(path)
  return predictor, predictor.experiment.step
