"""Tests for mer_jax.interop.hf: transformers parity on tiny random checkpoints, export, errors, init_from."""

import functools
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from mer_jax.eval import bench
from mer_jax.interop import hf, weights
from mer_jax.models import layers
from mer_jax.models.audio import log_mel
from mer_jax.train import sharding, state as state_lib
from mer_jax.train.optim import make_optimizer

VOCAB = 96
IDS = np.random.RandomState(0).randint(0, VOCAB, (2, 24))
TOLERANCE = 1e-4
FAST_COMPILE = {'xla_backend_optimization_level': 0}
LLM_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
LLAMA3_ROPE = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
               'original_max_position_embeddings': 64}
LLMS = {
  'llama2': (transformers.LlamaForCausalLM, transformers.LlamaConfig(**LLM_COMMON, rms_norm_eps=1e-5)),
  'llama3': (transformers.LlamaForCausalLM, transformers.LlamaConfig(
    **LLM_COMMON, head_dim=16, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)),
  'qwen2_tied': (transformers.Qwen2ForCausalLM,
                 transformers.Qwen2Config(**LLM_COMMON, tie_word_embeddings=True)),
  'qwen2_untied': (transformers.Qwen2ForCausalLM,
                   transformers.Qwen2Config(**LLM_COMMON, tie_word_embeddings=False)),
}


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
  """Adds noise to every weight, so norms and biases differ from their init; Whisper's fixed positions stay."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'embed_positions' not in name:
        param.add_(0.02 * torch.randn(param.shape, generator=generator))
  return model.eval()


def save(model: torch.nn.Module, path: pathlib.Path, **kwargs) -> str:
  """save_pretrained into `path`; returns it as a string."""
  model.save_pretrained(str(path), **kwargs)
  return str(path)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def forward(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array) -> jax.Array:
  """Our LLM's logits, compiled once per architecture."""
  return nnx.merge(graphdef, state)(ids)


def our_logits(model: nnx.Module) -> np.ndarray:
  """Logits of our LLM on IDS."""
  return np.asarray(forward(*nnx.split(model), jnp.asarray(IDS)))


def hf_logits(model: torch.nn.Module) -> np.ndarray:
  """Logits of a transformers causal LM on IDS."""
  with torch.no_grad():
    return model(torch.tensor(IDS)).logits.float().numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
  """Largest absolute difference."""
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def params(model: nnx.Module) -> dict:
  """A module's params as a pure dict."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope='module')
def llm_dirs(tmp_path_factory) -> dict[str, tuple[str, torch.nn.Module]]:
  """Each tiny LLM family saved in float32: name -> (directory, transformers model)."""
  out = {}
  for name, (model_class, config) in LLMS.items():
    model = perturbed(model_class(config))
    out[name] = save(model, tmp_path_factory.mktemp(name)), model
  return out


@pytest.fixture(scope='module')
def whisper_dir(tmp_path_factory) -> tuple[str, torch.nn.Module]:
  """A tiny WhisperModel (16 positions = 32 mel frames at full length) and its directory."""
  config = transformers.WhisperConfig(
    vocab_size=64, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
    decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80,
    max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    decoder_start_token_id=1)
  model = perturbed(transformers.WhisperModel(config))
  return save(model, tmp_path_factory.mktemp('whisper')), model


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory) -> tuple[str, torch.nn.Module]:
  """A tiny CLIPVisionModel (32x32 images, 8x8 patches) and its directory."""
  config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8)
  model = perturbed(transformers.CLIPVisionModel(config))
  return save(model, tmp_path_factory.mktemp('clip')), model


@pytest.mark.parametrize('name', list(LLMS))
def test_llm_logits_match_transformers(llm_dirs, name):
  path, model = llm_dirs[name]
  diff = max_diff(our_logits(hf.load_llm(path)), hf_logits(model))
  print(f'{name}: max abs logit difference {diff:.3g}')
  assert diff < TOLERANCE


def test_llama3_rope_scaling_matches_and_matters(llm_dirs):
  _, model = llm_dirs['llama3']
  ours = layers.rope_frequencies(16, 500000.0, layers.RopeScaling('llama3', 8.0, 1.0, 4.0, 64))
  np.testing.assert_allclose(ours, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
  ratio = layers.rope_frequencies(16, 500000.0) / ours
  kept, divided = np.isclose(ratio, 1.0), np.isclose(ratio, 8.0)
  assert kept.any() and divided.any() and not (kept | divided).all()


def test_rope_settings_read_from_old_and_new_config_formats():
  base = dict(architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=VOCAB, hidden_size=32,
              intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, rms_norm_eps=1e-5)
  old = hf.llm_config({**base, 'rope_theta': 500000.0, 'rope_scaling': {'type': 'linear', 'factor': 4.0}})
  assert (old.rope_theta, old.rope_scaling.type, old.rope_scaling.factor) == (500000.0, 'linear', 4.0)
  config = transformers.LlamaConfig(**LLM_COMMON, rope_theta=500000.0,
                                    rope_scaling={'rope_type': 'linear', 'factor': 4.0})
  new = hf.llm_config(config.to_dict())
  assert new.rope_scaling.to_dict() == old.rope_scaling.to_dict() and new.rope_theta == old.rope_theta
  ours = layers.rope_frequencies(8, new.rope_theta, layers.RopeScaling(**new.rope_scaling))
  expected = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config).inv_freq.numpy()
  np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_bfloat16_checkpoint_loads(tmp_path):
  model_class, config = LLMS['llama2']
  path = save(perturbed(model_class(config)).to(torch.bfloat16), tmp_path / 'bf16')
  assert {info.dtype for info in hf.Checkpoint(path).tensors.values()} == {'BF16'}
  reference = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  diff = max_diff(our_logits(hf.load_llm(path)), hf_logits(reference))
  print(f'llama2 saved in bfloat16, loaded in float32: max abs logit difference {diff:.3g}')
  assert diff < TOLERANCE
  embed = hf.load_llm(path, dtype='bfloat16').embed.embedding[...]
  assert embed.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(embed, np.float32),
                                reference.model.embed_tokens.weight.detach().numpy())


@pytest.fixture(scope='module')
def sharded_dir(llm_dirs, tmp_path_factory) -> str:
  """qwen2_untied saved as several shards with model.safetensors.index.json."""
  return save(llm_dirs['qwen2_untied'][1], tmp_path_factory.mktemp('sharded'), max_shard_size='20KB')


def test_sharded_checkpoint_loads(llm_dirs, sharded_dir):
  assert os.path.exists(os.path.join(sharded_dir, 'model.safetensors.index.json'))
  assert len(hf.Checkpoint(sharded_dir).files) > 2
  diff = max_diff(our_logits(hf.load_llm(sharded_dir)), hf_logits(llm_dirs['qwen2_untied'][1]))
  assert diff < TOLERANCE


@pytest.mark.parametrize('name', ['llama3', 'qwen2_tied'])
def test_round_trip_through_transformers(llm_dirs, tmp_path, name):
  ours = hf.load_llm(llm_dirs[name][0])
  hf.save_llm(ours, str(tmp_path / 'export'))
  assert sorted(os.listdir(tmp_path)) == ['export']
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'export')).eval()
  assert type(reloaded) is type(llm_dirs[name][1])
  diff = max_diff(hf_logits(reloaded), our_logits(ours))
  print(f'{name}: round trip max abs logit difference {diff:.3g}')
  assert diff < TOLERANCE


MESH_SCRIPT = """
import json, os, sys
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
from flax import nnx
import jax
import numpy as np
from mer_jax.interop import hf, weights
from mer_jax.train import sharding
path, converted, ids_path, out_path = sys.argv[1:]
mesh = sharding.build_mesh({'data': 1, 'fsdp': 2, 'tensor': 2})
with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
  model = hf.load_llm(path, mesh=mesh)
  logits = nnx.jit(lambda m, ids: m(ids))(model, np.load(ids_path))
np.save(out_path, np.asarray(logits))
gate = model.layers.blocks.mlp.gate.kernel[...]
loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
restored = weights.load_params('llm', converted, loaded, jax.tree.map(lambda x: x.sharding, loaded))
same = jax.tree.map(lambda a, b: a.sharding == b.sharding and bool((a == b).all()), restored, loaded)
print(json.dumps({'spec': [str(a) for a in gate.sharding.spec],
                  'shard': list(gate.addressable_shards[0].data.shape),
                  'converted_matches': all(jax.tree.leaves(same))}))
"""


def test_load_onto_a_mesh_shards_and_matches(llm_dirs, tmp_path):
  path, model = llm_dirs['qwen2_untied']
  np.save(tmp_path / 'ids.npy', IDS)
  weights.convert(path, str(tmp_path / 'converted'))
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  command = [sys.executable, '-c', MESH_SCRIPT, path, str(tmp_path / 'converted'), str(tmp_path / 'ids.npy'),
             str(tmp_path / 'logits.npy')]
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  placed = json.loads(result.stdout.strip().splitlines()[-1])
  assert placed == {'spec': ['None', 'fsdp', 'tensor'], 'shard': [2, 16, 32], 'converted_matches': True}
  assert max_diff(np.load(tmp_path / 'logits.npy'), hf_logits(model)) < TOLERANCE


def test_bfloat16_export_holds_rounded_params(llm_dirs, tmp_path):
  ours = hf.load_llm(llm_dirs['qwen2_untied'][0])
  out = str(tmp_path / 'bf16')
  hf.save_llm(ours, out, dtype='bfloat16')
  assert {info.dtype for info in hf.Checkpoint(out).tensors.values()} == {'BF16'}
  assert json.loads(pathlib.Path(out, 'config.json').read_text())['torch_dtype'] == 'bfloat16'
  expected = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), params(ours))
  jax.tree.map(np.testing.assert_array_equal, params(hf.load_llm(out, dtype='bfloat16')), expected)


def test_save_llm_refuses_existing_and_leaves_nothing_on_failure(llm_dirs, tmp_path, monkeypatch):
  ours = hf.load_llm(llm_dirs['llama2'][0])
  with pytest.raises(FileExistsError, match='already exists'):
    hf.save_llm(ours, str(tmp_path))

  def fail(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(hf, 'hf_llm_config', fail)
  with pytest.raises(OSError, match='disk full'):
    hf.save_llm(ours, str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == []


def test_whisper_encoder_matches_transformers(whisper_dir):
  path, model = whisper_dir
  features = np.random.RandomState(1).randn(2, 80, 32).astype(np.float32)
  with torch.no_grad():
    expected = model.encoder(torch.tensor(features)).last_hidden_state.numpy()
  encoder = hf.load_whisper_encoder(path)
  diff = max_diff(encoder.encode(jnp.asarray(features.transpose(0, 2, 1))), expected)
  print(f'whisper encoder: max abs difference {diff:.3g}')
  assert diff < TOLERANCE


def test_log_mel_matches_whisper_feature_extractor():
  extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
  wave = np.clip(np.random.RandomState(2).randn(16000) * 3000, -32768, 32767).astype(np.int16)
  expected = extractor(wave / 32768.0, sampling_rate=16000, return_tensors='np').input_features
  ours = np.asarray(log_mel(jnp.asarray(wave[None]))).transpose(0, 2, 1)
  assert ours.shape == expected.shape == (1, 80, 100)
  diff = max_diff(ours, expected)
  print(f'log-mel: max abs difference {diff:.3g}')
  assert diff < TOLERANCE
  # A half-length clip: Whisper zero-pads it to the full second; ours keeps its 50 frames, of which
  # all but the last (whose window reaches past the clip's end) equal the first frames of Whisper's.
  short = wave[:8000]
  expected = extractor(short / 32768.0, sampling_rate=16000, return_tensors='np').input_features
  ours = np.asarray(log_mel(jnp.asarray(short[None]))).transpose(0, 2, 1)
  assert ours.shape == (1, 80, 50)
  assert max_diff(ours[..., :49], expected[..., :49]) < TOLERANCE


def test_clip_vision_matches_transformers(clip_dir):
  path, model = clip_dir
  pixels = np.random.RandomState(3).randn(3, 3, 32, 32).astype(np.float32)
  with torch.no_grad():
    expected = model(pixel_values=torch.tensor(pixels)).pooler_output.numpy()
  diff = max_diff(hf.load_clip_vision(path).encode(jnp.asarray(pixels.transpose(0, 2, 3, 1))), expected)
  print(f'clip vision: max abs difference {diff:.3g}')
  assert diff < TOLERANCE


def rewrite(src: str, dst: pathlib.Path, edit) -> str:
  """Copies checkpoint `src` to `dst` with edit(tensors) applied to its single model.safetensors."""
  shutil.copytree(src, dst)
  path = str(dst / 'model.safetensors')
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path, metadata={'format': 'pt'})
  return str(dst)


def test_missing_shard_is_named(sharded_dir, tmp_path):
  broken = shutil.copytree(sharded_dir, tmp_path / 'broken')
  shard = hf.Checkpoint(sharded_dir).files[1]
  os.remove(broken / shard)
  with pytest.raises(FileNotFoundError, match=shard):
    hf.load_llm(str(broken))


def test_missing_tensor_is_named(llm_dirs, tmp_path):
  name = 'model.layers.1.mlp.up_proj.weight'
  path = rewrite(llm_dirs['llama2'][0], tmp_path / 'broken', lambda t: t.pop(name))
  with pytest.raises(ValueError, match=f'{name}.*missing'):
    hf.load_llm(path)


def test_wrong_shape_is_named(llm_dirs, tmp_path):
  name = 'model.layers.0.self_attn.k_proj.weight'
  path = rewrite(llm_dirs['llama2'][0], tmp_path / 'broken', lambda t: t.update({name: t[name][:8]}))
  with pytest.raises(ValueError, match=rf"{name}.*model\.safetensors has shape \(8, 32\).*\(16, 32\)"):
    hf.load_llm(path)


def test_unsupported_architecture_is_named(llm_dirs, whisper_dir, tmp_path):
  broken = shutil.copytree(llm_dirs['llama2'][0], tmp_path / 'mistral')
  config = json.loads((broken / 'config.json').read_text())
  config.update(architectures=['MistralForCausalLM'], model_type='mistral')
  (broken / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='MistralForCausalLM.*supported: LlamaForCausalLM'):
    hf.load_llm(str(broken))
  with pytest.raises(ValueError, match="model_type 'whisper'"):
    hf.load_llm(whisper_dir[0])
  with pytest.raises(ValueError, match="model_type 'llama'"):
    hf.load_whisper_encoder(llm_dirs['llama2'][0])


def demo_config() -> ml_collections.ConfigDict:
  """configs/demo.py:variant=tiny."""
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'demo.py'
  spec = importlib.util.spec_from_file_location('demo_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config('variant=tiny')


def init_from_config(sources: dict[str, str]) -> ml_collections.ConfigDict:
  """The tiny demo config with config.model.<name>.init_from = path (and the values it fixes) for each source."""
  config = demo_config()
  for name, path in sources.items():
    config.model[name].update(weights.checkpoint_config(name, path))
    config.model[name].init_from = path
  return config


def initial_state(config: ml_collections.ConfigDict, vocab_size: int = VOCAB) -> tuple[dict, dict]:
  """(the train state init_train_state creates for config, its shardings)."""
  mesh = sharding.build_mesh(config.mesh)
  rules = sharding.rules_from_config(config)
  parts = state_lib.build_model_parts(config, vocab_size, mesh, rules)
  tx = make_optimizer(config.train, parts.abstract_params)
  shardings = state_lib.train_state_shardings(parts, tx, mesh)
  return state_lib.init_train_state(parts, tx, shardings, mesh, rules), shardings


@pytest.fixture(scope='module')
def converted_dirs(llm_dirs, whisper_dir, clip_dir, tmp_path_factory) -> dict[str, str]:
  """`mer-jax convert` of the qwen2_tied LLM, the Whisper and the CLIP checkpoints: component -> directory."""
  out = tmp_path_factory.mktemp('converted')
  sources = {'llm': llm_dirs['qwen2_tied'][0], 'audio': whisper_dir[0], 'vision': clip_dir[0]}
  for name, path in sources.items():
    weights.convert(path, str(out / name), name)
  return {name: str(out / name) for name in sources}


@pytest.mark.parametrize('source', ['hf', 'converted'])
def test_init_from_replaces_params_keeping_shardings(llm_dirs, whisper_dir, clip_dir, converted_dirs, source):
  hf_dirs = {'llm': llm_dirs['qwen2_tied'][0], 'audio': whisper_dir[0], 'vision': clip_dir[0]}
  config = init_from_config(hf_dirs)
  if source == 'converted':
    for name, path in converted_dirs.items():
      config.model[name].init_from = path
  state, shardings = initial_state(config)
  expected = {'llm': hf.load_llm(llm_dirs['qwen2_tied'][0]), 'audio': hf.load_whisper_encoder(whisper_dir[0]),
              'vision': hf.load_clip_vision(clip_dir[0])}
  for name, module in expected.items():
    jax.tree.map(np.testing.assert_array_equal, state['params'][name], params(module))
    assert all(jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, state['params'][name],
                                            shardings['params'][name])))
  config.model.llm.rope_theta = 1234.0
  with pytest.raises(ValueError, match=r'config.model.llm.rope_theta=1234.0 \(checkpoint: 10000.0\)'):
    initial_state(config)


def test_converted_checkpoint_keeps_the_files_dtype_and_config(tmp_path):
  model_class, config = LLMS['llama2']
  path = save(perturbed(model_class(config)).to(torch.bfloat16), tmp_path / 'bf16')
  out = str(tmp_path / 'converted')
  info = weights.convert(path, out)
  assert weights.is_converted(out) and not weights.is_converted(path)
  assert info['dtype'] == 'bfloat16' and info['hf_config']['architectures'] == ['LlamaForCausalLM']
  assert weights.read_converted(out)['model_config'] == hf.checkpoint_config('llm', path)
  state, _ = initial_state(init_from_config({'llm': out}))
  jax.tree.map(np.testing.assert_array_equal, state['params']['llm'], params(hf.load_llm(path)))
  with pytest.raises(FileExistsError, match='already exists'):
    weights.convert(path, out)


def test_converted_checkpoint_mismatches_are_named(converted_dirs):
  llm = converted_dirs['llm']
  with pytest.raises(ValueError, match=rf"parameter 'embed.embedding' in {llm}/params has shape \(96, 32\), "
                                       r"the config needs \(97, 32\)"):
    initial_state(init_from_config({'llm': llm}), vocab_size=VOCAB + 1)
  config = init_from_config({'llm': llm})
  config.model.llm.init_from = converted_dirs['audio']
  with pytest.raises(ValueError, match="holds a converted 'audio' checkpoint, not 'llm'"):
    initial_state(config)


TINY_LLAMA_SHAPE = {'vocab_size': VOCAB, 'hidden_size': 32, 'intermediate_size': 64, 'num_attention_heads': 4,
                    'num_key_value_heads': 2}


def test_random_llama_is_a_sharded_checkpoint_transformers_loads(tmp_path):
  path = str(tmp_path / 'random')
  # 12 KB of vocab tables and norm plus 18.6 KB per layer: 70 KB makes 3 layers.
  config = bench.write_random_llama(path, 0.00007, shape=TINY_LLAMA_SHAPE, shard_gigabytes=0.00002)
  index = json.loads(pathlib.Path(path, 'model.safetensors.index.json').read_text())
  files = sorted(set(index['weight_map'].values()))
  assert len(files) > 2 and sorted(hf.Checkpoint(path).files) == files
  assert config['num_hidden_layers'] == 3 and hf.Checkpoint(path).dtype() == 'bfloat16'
  reference = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  assert max_diff(our_logits(hf.load_llm(path)), hf_logits(reference)) < TOLERANCE
  row = bench.bench_import(path, 'bfloat16')
  assert row['params_bytes'] == index['metadata']['total_size'] < row['disk_bytes']
  assert 0 < row['baseline_rss'] <= row['peak_rss']
  assert '| bfloat16 |' in bench.format_import(row)
