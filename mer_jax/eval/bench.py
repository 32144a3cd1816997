"""Benchmarks: decode throughput and latency per clip (with and without the KV cache); host memory of an import."""

from collections.abc import Callable, Mapping
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.eval.generate import jit_generate
from mer_jax.interop import hf
from mer_jax.models.mer import MERModel
from mer_jax.train.random_batch import random_batch

DEFAULT_VOCAB_SIZE = 800  # the size of the tokenizer `mer-jax prepare` trains for the demo


def timed(fn: Callable[[], Any], iterations: int) -> tuple[float, float, Any]:
  """(seconds of the first call, median seconds of `iterations` further calls, last output) of fn()."""
  began = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - began
  seconds = []
  for _ in range(iterations):
    began = time.perf_counter()
    out = jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - began)
  return first, statistics.median(seconds), out


def bench_decode(config: Any, *, batch_size: int | None = None, iterations: int = 10,
                 max_new_tokens: int | None = None, num_frames: int = 4, duration_s: float = 2.0) -> list[dict]:
  """Times jitted generation (prefill included, no stop tokens) of the configured model with random weights.

  Weights are drawn from N(0, 0.02) on the host (no init program to compile). One row per
  (KV cache on/off, batch size in {1, batch_size}): medians of `iterations` timed calls after a
  compiling first call. A row also times the prefill alone (encoders and the prompt pass into the
  cache), so ms per decoding step = (ms per batch - prefill ms) / (new tokens - 1). Defaults come
  from config.eval (batch_size, max_new_tokens).
  """
  batch_size = batch_size or config.eval.batch_size
  max_new_tokens = max_new_tokens or config.eval.max_new_tokens
  vocab_size = config.model.llm.vocab_size or DEFAULT_VOCAB_SIZE
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MERModel(config.model, vocab_size, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(config.seed)
  state = jax.tree.map(lambda x: jax.device_put((0.02 * rng.standard_normal(x.shape)).astype(x.dtype)), abstract)
  max_len = config.data.seq_len + max_new_tokens
  prefill = jax.jit(lambda state, batch: nnx.merge(graphdef, state).prefill(batch, max_len))
  batches = {size: jax.device_put(random_batch(config, size, vocab_size, duration_s=duration_s,
                                               num_frames=num_frames))
             for size in sorted({1, batch_size})}
  prefill_s = {size: timed(lambda: prefill(state, batch), iterations)[1] for size, batch in batches.items()}
  rows = []
  for use_cache in (True, False):
    run = jit_generate(graphdef, max_new_tokens=max_new_tokens, stop_ids=(), pad_id=0, use_cache=use_cache)
    for size, batch in batches.items():
      first_s, median_s, out = timed(lambda: run((state,), batch), iterations)
      rows.append({'kv_cache': use_cache, 'batch_size': size, 'new_tokens': max_new_tokens,
                   'prompt_len': config.data.seq_len, 'ms_per_batch': 1000 * median_s,
                   'ms_per_clip': 1000 * median_s / size, 'prefill_ms': 1000 * prefill_s[size],
                   'tokens_per_s': int(np.sum(out['num_tokens'])) / median_s, 'first_call_s': first_s})
  return rows


def format_table(rows: list[dict]) -> str:
  """The benchmark rows as a markdown table."""
  lines = ['| KV cache | batch | prompt len | new tokens | ms / batch | ms / clip | tokens/s | prefill ms '
           '| ms / step | first call (s) |', '|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    step_ms = (row['ms_per_batch'] - row['prefill_ms']) / max(row['new_tokens'] - 1, 1)
    lines.append(f"| {'yes' if row['kv_cache'] else 'no'} | {row['batch_size']} | {row['prompt_len']} | "
                 f"{row['new_tokens']} | {row['ms_per_batch']:.2f} | {row['ms_per_clip']:.2f} | "
                 f"{row['tokens_per_s']:.1f} | {row['prefill_ms']:.2f} | {step_ms:.2f} | {row['first_call_s']:.2f} |")
  return '\n'.join(lines)


# A LLaMA of TinyLlama's shape: about 90 MB of bfloat16 per layer and 131 MB per vocab table.
LLAMA_SHAPE = {'vocab_size': 32000, 'hidden_size': 2048, 'intermediate_size': 5632, 'num_attention_heads': 16,
               'num_key_value_heads': 4}
IMPORT_SCRIPT = 'import sys, json; from mer_jax.eval import bench; print(json.dumps(bench.import_rss(*sys.argv[1:])))'
# (tensor name, shape) in file order.
TensorShapes = list[tuple[str, tuple[int, ...]]]


def llama_tensor_shapes(shape: Mapping[str, int], num_layers: int) -> TensorShapes:
  """(name, shape) of every tensor of an untied LlamaForCausalLM with config values `shape`, in file order."""
  width, mlp, vocab = shape['hidden_size'], shape['intermediate_size'], shape['vocab_size']
  head_dim = width // shape['num_attention_heads']
  kv_width = shape['num_key_value_heads'] * head_dim
  layer = {'self_attn.q_proj.weight': (width, width), 'self_attn.k_proj.weight': (kv_width, width),
           'self_attn.v_proj.weight': (kv_width, width), 'self_attn.o_proj.weight': (width, width),
           'mlp.gate_proj.weight': (mlp, width), 'mlp.up_proj.weight': (mlp, width),
           'mlp.down_proj.weight': (width, mlp), 'input_layernorm.weight': (width,),
           'post_attention_layernorm.weight': (width,)}
  return [('model.embed_tokens.weight', (vocab, width)),
          *[(f'model.layers.{i}.{name}', dims) for i in range(num_layers) for name, dims in layer.items()],
          ('model.norm.weight', (width,)), ('lm_head.weight', (vocab, width))]


def random_tensor(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Norm scales near 1 for 1-D shapes, N(0, 0.02) weights otherwise, in bfloat16."""
  values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
  return (values + 1.0 if len(shape) == 1 else values).astype(jnp.bfloat16)


def bfloat16_bytes(tensors: TensorShapes) -> int:
  """The bytes the tensors take in bfloat16."""
  return 2 * sum(math.prod(shape) for _, shape in tensors)


def shard_tensors(tensors: TensorShapes, shard_bytes: int) -> list[TensorShapes]:
  """Tensors split in order into groups of at most shard_bytes of bfloat16 (a larger tensor alone)."""
  shards: list[TensorShapes] = [[]]
  size = 0
  for name, shape in tensors:
    nbytes = bfloat16_bytes([(name, shape)])
    if shards[-1] and size + nbytes > shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((name, shape))
    size += nbytes
  return shards


def write_random_llama(out_dir: str, gigabytes: float, *, shape: Mapping[str, int] = LLAMA_SHAPE,
                       shard_gigabytes: float = 0.5, seed: int = 0) -> dict[str, Any]:
  """Writes a random LlamaForCausalLM of about `gigabytes` GB of bfloat16 to out_dir; returns its config.json.

  As published checkpoints are: config.json, model-0000i-of-0000n.safetensors shards of at most
  `shard_gigabytes` and model.safetensors.index.json. The number of layers is what brings the size
  nearest to `gigabytes` (at least one); tensors are made and written one at a time.
  """
  fixed = bfloat16_bytes(llama_tensor_shapes(shape, 0))
  per_layer = bfloat16_bytes(llama_tensor_shapes(shape, 1)) - fixed
  num_layers = max(1, round((gigabytes * 1e9 - fixed) / per_layer))
  shards = shard_tensors(llama_tensor_shapes(shape, num_layers), int(shard_gigabytes * 1e9))
  config = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', **shape, 'num_hidden_layers': num_layers,
            'hidden_act': 'silu', 'rms_norm_eps': 1e-5, 'rope_theta': 10000.0, 'tie_word_embeddings': False,
            'max_position_embeddings': 2048, 'torch_dtype': 'bfloat16'}
  rng = np.random.default_rng(seed)
  weight_map = {}

  def write(tmp: str) -> None:
    for i, tensors in enumerate(shards):
      file = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
      hf.write_safetensors(os.path.join(tmp, file),
                           [(name, dims, functools.partial(random_tensor, rng, dims)) for name, dims in tensors],
                           jnp.dtype(jnp.bfloat16))
      weight_map.update({name: file for name, _ in tensors})
    with open(os.path.join(tmp, 'model.safetensors.index.json'), 'w') as f:
      json.dump({'metadata': {'total_size': sum(map(bfloat16_bytes, shards))}, 'weight_map': weight_map}, f,
                indent=2)
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(config, f, indent=2)

  hf.write_directory(out_dir, write)
  return config


def peak_rss_bytes() -> int:
  """This process's peak resident set size so far, in bytes.

  Linux's VmHWM where there is one: ru_maxrss (KiB on Linux, bytes on macOS) keeps the peak of the
  parent process a child was forked from, even across exec.
  """
  if os.path.exists('/proc/self/status'):
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  scale = 1 if sys.platform == 'darwin' else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def import_rss(hf_dir: str, dtype: str) -> dict[str, int]:
  """Peak RSS in bytes of this process before (imports, jax's CPU client) and after load_llm(hf_dir, dtype)."""
  jax.devices()
  before = peak_rss_bytes()
  model = hf.load_llm(hf_dir, dtype=dtype)
  params = jax.block_until_ready(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  return {'baseline_rss': before, 'peak_rss': peak_rss_bytes(), 'params_bytes': sum(x.nbytes for x in params)}


def bench_import(hf_dir: str, dtype: str = 'bfloat16') -> dict[str, Any]:
  """Host memory of loading the LLM in hf_dir: peak RSS of a fresh process running load_llm, against the size on disk.

  On CPU the loaded params are host memory too, so the ideal peak is about the baseline plus the
  params (the size on disk for dtype bfloat16 from a bfloat16 checkpoint).
  """
  ckpt = hf.Checkpoint(hf_dir)
  disk = sum(os.path.getsize(os.path.join(hf_dir, name)) for name in ckpt.files)
  result = subprocess.run([sys.executable, '-c', IMPORT_SCRIPT, hf_dir, dtype], capture_output=True, text=True,
                          check=False)
  if result.returncode != 0:
    raise RuntimeError(f'loading {hf_dir} failed:\n{result.stderr[-3000:]}')
  row = json.loads(result.stdout.strip().splitlines()[-1])
  return {'dtype': dtype, 'disk_bytes': disk, **row, 'peak_over_disk': row['peak_rss'] / disk,
          'load_over_disk': (row['peak_rss'] - row['baseline_rss']) / disk}


def format_import(row: dict[str, Any]) -> str:
  """The import measurement as a markdown table (sizes in GB)."""
  gb = lambda key: f'{row[key] / 1e9:.2f}'
  return '\n'.join([
    '| dtype | on disk (GB) | params (GB) | RSS before load (GB) | peak RSS (GB) | peak / disk '
    '| (peak - before) / disk |',
    '|---|---|---|---|---|---|---|',
    f"| {row['dtype']} | {gb('disk_bytes')} | {gb('params_bytes')} | {gb('baseline_rss')} | {gb('peak_rss')} | "
    f"{row['peak_over_disk']:.2f} | {row['load_over_disk']:.2f} |"])
