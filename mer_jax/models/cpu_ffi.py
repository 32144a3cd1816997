"""XLA:CPU kernels from cpu_kernels.cc (flash attention, matmul, transpose), compiled at first use, called by JAX FFI."""

from collections.abc import Callable
import ctypes
import functools
import hashlib
import os
from pathlib import Path
import platform
import shutil
import subprocess
import tempfile
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name('cpu_kernels.cc')
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC')
TARGETS = {'mer_flash_attention_forward': 'MerFlashAttentionForward',
           'mer_flash_attention_backward': 'MerFlashAttentionBackward', 'mer_transpose': 'MerTranspose',
           'mer_matmul': 'MerMatmul', 'mer_matmul_backward': 'MerMatmulBackward'}


def cache_dir() -> Path:
  """Where compiled kernels are kept: $MER_JAX_CACHE, else $XDG_CACHE_HOME/mer_jax, else ~/.cache/mer_jax."""
  if os.environ.get('MER_JAX_CACHE'):
    return Path(os.environ['MER_JAX_CACHE']).expanduser().resolve()
  return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache').expanduser().resolve() / 'mer_jax'


def compiler() -> str:
  """The C++ compiler: $CXX, else c++, g++ or clang++ on PATH; a RuntimeError naming the fix when there is none."""
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  raise RuntimeError(f'the CPU kernels in {SOURCE.name} are compiled at first use and no C++ compiler was found '
                     '($CXX, c++, g++ or clang++ on PATH): install one (e.g. apt install g++)')


def _cpu_signature() -> str:
  """This machine's architecture and CPU feature flags (the kernels are built with -march=native)."""
  cpuinfo = Path('/proc/cpuinfo')
  lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
  flags = next((line for line in lines if line.startswith(('flags', 'Features'))), '')
  return f'{platform.machine()} {flags}'


def library_path() -> Path:
  """The kernel library for this source, jaxlib, compiler and CPU, compiled into cache_dir() when missing.

  Each build goes to a private file first and is renamed into place, so processes that start
  together (test workers, hosts sharing a home directory) never load a half-written library.
  """
  cxx = compiler()
  key = hashlib.sha256('\n'.join([SOURCE.read_text(), jaxlib.__version__, cxx, ' '.join(FLAGS),
                                  _cpu_signature()]).encode()).hexdigest()[:16]
  target = cache_dir() / f'cpu_kernels-{key}.so'
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
    built = Path(scratch) / target.name
    command = [cxx, *FLAGS, '-I', jax.ffi.include_dir(), str(SOURCE), '-o', str(built)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      raise RuntimeError(f'compiling {SOURCE} failed ({" ".join(command)}):\n{result.stderr[-4000:]}')
    os.replace(built, target)
  return target


@functools.cache
def register() -> None:
  """Compiles (if needed), loads and registers the kernels with XLA:CPU, once per process; RuntimeError if it cannot."""
  library = ctypes.cdll.LoadLibrary(str(library_path()))
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')


@functools.cache
def _registered() -> bool:
  """register() succeeded; if it failed, one warning says why and the XLA paths are used."""
  try:
    register()
  except (RuntimeError, OSError) as error:
    warnings.warn(f'CPU kernels unavailable, using XLA ops instead: {error}', RuntimeWarning, stacklevel=3)
    return False
  return True


def usable() -> bool:
  """Whether the kernels run here: one CPU device (they do not split over a mesh) and a compiled library."""
  return jax.default_backend() == 'cpu' and jax.device_count() == 1 and _registered()


def _call(target: str, shapes: Any) -> Callable[..., Any]:
  """jax.ffi.ffi_call of one of TARGETS (registered first) returning `shapes`."""
  register()
  return jax.ffi.ffi_call(target, shapes, vmap_method='sequential')


def transpose(a: jax.Array) -> jax.Array:
  """The transpose [C, R] of a float32 matrix [R, C], by 8 x 8 register blocks over XLA's threads."""
  return _call('mer_transpose', jax.ShapeDtypeStruct(a.shape[::-1], a.dtype))(a)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """The float32 product x [M, K] w [K, N] by packed 6 x 16 register tiles over XLA's threads."""
  return _call('mer_matmul', jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32))(x, w)


def matmul_backward(x: jax.Array, w: jax.Array, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The gradients (dy w^T, x^T dy) of x [M, K] w [K, N] from dy [M, N], float32; on two threads, both at once."""
  shapes = (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct(w.shape, jnp.float32))
  return _call('mer_matmul_backward', shapes)(x, w, dy)


def flash_supports(q: jax.Array, k: jax.Array, causal: bool) -> bool:
  """Whether flash_attention takes these shapes: head dim a multiple of 8, and causal only with at least T keys."""
  return q.shape[-1] % 8 == 0 and (not causal or k.shape[1] >= q.shape[1])


def _scale(q: jax.Array) -> np.float32:
  return np.float32(q.shape[-1] ** -0.5)


def _f32(*arrays: jax.Array) -> list[jax.Array]:
  return [a.astype(jnp.float32) for a in arrays]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
  """Softmax attention of q [B, T, N, H] over k, v [B, S, K, H] (K divides N) by the flash kernels.

  Same result as kernels.attention within float32 rounding (scale 1/sqrt(H), causal aligned to the
  end); computed in float32, returned in q's dtype. The backward keeps only the output and one
  log-sum-exp per query and recomputes the probabilities tile by tile.
  """
  return _flash_fwd(q, k, v, causal)[0]


def _flash_fwd(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> tuple[jax.Array, tuple]:
  batch, length, heads, _ = q.shape
  shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((batch, heads, length), jnp.float32))
  out, lse = _call('mer_flash_attention_forward', shapes)(*_f32(q, k, v), causal=causal, scale=_scale(q))
  return out.astype(q.dtype), (q, k, v, out, lse)


def _flash_bwd(causal: bool, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  q, k, v, out, lse = residuals
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (q, k, v))
  call = _call('mer_flash_attention_backward', shapes)
  d_q, d_k, d_v = call(*_f32(q, k, v), out, lse, *_f32(d_out), causal=causal, scale=_scale(q))
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


flash_attention.defvjp(_flash_fwd, _flash_bwd)
