"""The compiled CPU kernels match the XLA paths (flash attention, matmul, transpose); the build is cached, its errors
named."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.models import cpu_ffi, kernels


def random_qkv(batch: int, length: int, keys: int, heads: int, kv_heads: int, head_dim: int):
  """q [B, T, N, H], k and v [B, S, K, H], and cotangent weights shaped like the output."""
  parts = jax.random.split(jax.random.key(length * 7 + keys), 4)
  return (jax.random.normal(parts[0], (batch, length, heads, head_dim)),
          jax.random.normal(parts[1], (batch, keys, kv_heads, head_dim)),
          jax.random.normal(parts[2], (batch, keys, kv_heads, head_dim)),
          jax.random.normal(parts[3], (batch, length, heads, head_dim)))


def weighted_value_and_grads(attend, q, k, v, weights):
  """sum(attend(q, k, v) * weights) and its gradients with respect to q, k and v."""
  return jax.value_and_grad(lambda *a: jnp.sum(attend(*a).astype(jnp.float32) * weights), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize('batch, length, keys, heads, kv_heads, head_dim, causal', [
    (2, 70, 70, 4, 2, 16, True),     # a partial second tile of 64 queries and keys, grouped heads
    (1, 33, 50, 2, 1, 8, False),     # cross attention: more keys than queries, one key head
    (2, 130, 130, 2, 2, 64, True),   # three tiles each way
    (1, 40, 100, 4, 4, 24, True),    # causal with more keys than queries: aligned to the end
])
def test_flash_attention_matches_einsum_attention(batch, length, keys, heads, kv_heads, head_dim, causal):
  q, k, v, weights = random_qkv(batch, length, keys, heads, kv_heads, head_dim)
  flash = lambda q, k, v: cpu_ffi.flash_attention(q, k, v, causal)
  reference = lambda q, k, v: kernels.attention(q, k, v, causal)
  np.testing.assert_allclose(jax.jit(flash)(q, k, v), reference(q, k, v), atol=2e-6)
  got, got_grads = jax.jit(lambda *a: weighted_value_and_grads(flash, *a))(q, k, v, weights)
  want, want_grads = weighted_value_and_grads(reference, q, k, v, weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for name, g, w in zip('qkv', got_grads, want_grads):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, atol=5e-6, err_msg=name)


def test_flash_attention_takes_bfloat16_and_returns_it():
  q, k, v, weights = random_qkv(1, 20, 20, 2, 2, 8)
  q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
  out, grads = weighted_value_and_grads(lambda *a: cpu_ffi.flash_attention(*a, True), q, k, v, weights)
  q32, k32, v32 = (a.astype(jnp.float32) for a in (q, k, v))
  want, _ = weighted_value_and_grads(lambda *a: kernels.attention(*a, True), q32, k32, v32, weights)
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
  np.testing.assert_allclose(out, want, rtol=2e-2)


def test_flash_kind_dispatches_to_the_kernel_and_to_einsum_for_masks():
  q, k, v, _ = random_qkv(2, 9, 9, 4, 2, 8)
  np.testing.assert_allclose(kernels.dot_product_attention(q, k, v, 'flash', causal=True),
                             kernels.dot_product_attention(q, k, v, 'xla', causal=True), atol=2e-6)
  mask = jnp.arange(9)[None, None, :] < jnp.array([4, 9])[:, None, None]
  mask = jnp.broadcast_to(mask, (2, 9, 9))
  np.testing.assert_allclose(kernels.dot_product_attention(q, k, v, 'flash', mask=mask),
                             kernels.dot_product_attention(q, k, v, 'xla', mask=mask), atol=2e-6)
  assert 'mer_flash_attention_forward' in jax.jit(
      lambda *a: kernels.dot_product_attention(*a, 'flash', causal=True)).lower(q, k, v).as_text()
  assert not cpu_ffi.flash_supports(q[..., :6], k[..., :6], causal=False)  # head dim not a multiple of 8
  assert not cpu_ffi.flash_supports(q, k[:, :5], causal=True)  # fewer keys than queries


@pytest.mark.parametrize('shape', [(37, 13), (64, 8), (8, 8), (1, 9), (130, 72), (300, 1)])
def test_transpose_matches_numpy(shape):
  a = jax.random.normal(jax.random.key(shape[0]), shape)
  np.testing.assert_array_equal(jax.jit(cpu_ffi.transpose)(a), np.asarray(a).T)


@pytest.mark.parametrize('rows, depth, cols', [(13, 19, 37), (130, 700, 2100), (64, 8, 16), (7, 0, 5)])
def test_matmul_and_its_backward_match_numpy(rows, depth, cols):
  """Partial 6 x 16 tiles, several depth and column blocks (384 and 2048), and an empty contraction."""
  rng = np.random.default_rng(rows)
  x, w = rng.standard_normal((rows, depth), np.float32), rng.standard_normal((depth, cols), np.float32)
  dy = rng.standard_normal((rows, cols), np.float32)
  x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
  np.testing.assert_allclose(jax.jit(cpu_ffi.matmul)(x, w), x64 @ w64, rtol=1e-5, atol=1e-4)
  dx, dw = jax.jit(cpu_ffi.matmul_backward)(x, w, dy)
  np.testing.assert_allclose(dx, dy64 @ w64.T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw, x64.T @ dy64, rtol=1e-5, atol=1e-4)


def test_dense_uses_packed_products_for_float32_rows_only():
  def hlo(x, kernel):
    loss = lambda x, w: jnp.sum(kernels.row_major_dense(x, w, 2) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernel).as_text()
  kernel = jnp.ones((4, 2, 6))
  many = hlo(jnp.ones((3, kernels.PACKED_MIN_ROWS // 3 + 1, 4, 2)), kernel)
  assert 'mer_matmul(' in many and 'mer_matmul_backward(' in many
  few = hlo(jnp.ones((3, kernels.PACKED_MIN_ROWS // 3 - 1, 4, 2)), kernel)  # decoding-sized: XLA's dot
  assert 'mer_matmul' not in few
  half = hlo(jnp.ones((3, 40, 4, 2), jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert 'mer_matmul' not in half


def test_dense_gradients_use_the_transpose_kernel():
  x, kernel = jnp.ones((2, 16, 8)), jnp.ones((8, 4, 6))
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(kernels.row_major_dense(x, w, 1) ** 2), argnums=(0, 1)))
  assert 'mer_transpose' in grads.lower(x, kernel).as_text()


def test_library_is_built_once_per_source_into_the_cache(tmp_path, monkeypatch):
  source = tmp_path / 'tiny.cc'
  source.write_text('extern "C" int MerTiny() { return 7; }\n')
  monkeypatch.setattr(cpu_ffi, 'SOURCE', source)
  monkeypatch.setenv('MER_JAX_CACHE', str(tmp_path / 'cache'))
  built = cpu_ffi.library_path()
  assert built.parent == tmp_path / 'cache' and built.exists()
  stamp = built.stat().st_mtime_ns
  assert cpu_ffi.library_path() == built and built.stat().st_mtime_ns == stamp  # not rebuilt
  source.write_text('extern "C" int MerTiny() { return 8; }\n')
  assert cpu_ffi.library_path() != built
  assert sorted(p.suffix for p in (tmp_path / 'cache').iterdir()) == ['.so', '.so']  # no scratch left behind


def test_build_errors_name_the_source_and_the_missing_compiler(tmp_path, monkeypatch):
  source = tmp_path / 'broken.cc'
  source.write_text('this is not C++\n')
  monkeypatch.setattr(cpu_ffi, 'SOURCE', source)
  monkeypatch.setenv('MER_JAX_CACHE', str(tmp_path / 'cache'))
  with pytest.raises(RuntimeError, match=r'compiling .*broken\.cc failed'):
    cpu_ffi.library_path()
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(RuntimeError, match='no C\\+\\+ compiler'):
    cpu_ffi.library_path()


@pytest.fixture
def no_compiler(tmp_path, monkeypatch):
  """A process view with no C++ compiler and an empty kernel cache; the real registration is restored after."""
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setenv('PATH', str(tmp_path))
  monkeypatch.setenv('MER_JAX_CACHE', str(tmp_path / 'cache'))
  cpu_ffi.register.cache_clear()
  cpu_ffi._registered.cache_clear()  # pylint: disable=protected-access
  yield
  cpu_ffi.register.cache_clear()
  cpu_ffi._registered.cache_clear()  # pylint: disable=protected-access


def test_without_a_compiler_flash_is_refused_and_dense_falls_back_to_xla(no_compiler):
  del no_compiler
  with pytest.raises(ValueError, match=r"attention 'flash' cannot be built here .*no C\+\+ compiler.*use 'einsum'"):
    kernels.check_attention('flash')
  x, kernel = jax.random.normal(jax.random.key(0), (3, 30, 8)), jax.random.normal(jax.random.key(1), (8, 6))
  loss = lambda x, w: jnp.sum(jnp.sin(kernels.row_major_dense(x, w, 1)))
  with pytest.warns(RuntimeWarning, match='CPU kernels unavailable, using XLA ops instead'):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel)
  assert 'mer_transpose' not in lowered.as_text() and 'mer_matmul' not in lowered.as_text()
  got = lowered.compile()(x, kernel)
  want = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.tensordot(x, w, 1))), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_matmul_backward_on_one_thread_matches_numpy():
  """With one CPU thread for XLA the two gradient products run one after the other (a fresh process pinned to a core)."""
  script = textwrap.dedent('''
      import os
      os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
      import jax, numpy as np
      from mer_jax.models import cpu_ffi
      rng = np.random.default_rng(0)
      x, w, dy = (rng.standard_normal(s, np.float32) for s in ((70, 50), (50, 40), (70, 40)))
      dx, dw = jax.jit(cpu_ffi.matmul_backward)(x, w, dy)
      print(np.abs(np.asarray(dx) - dy @ w.T).max(), np.abs(np.asarray(dw) - x.T @ dy).max())
  ''')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True)
  assert max(float(e) for e in result.stdout.split()) < 1e-4, result.stdout
