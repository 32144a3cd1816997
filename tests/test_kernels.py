"""The dense product, einsum attention, SwiGLU gate and chunked loss match the reference paths."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from mer_jax.models import kernels, layers
from mer_jax.models.llm import LLM
from mer_jax.models.mer import MERModel
from mer_jax.train import step
from mer_jax.train.random_batch import random_batch

VOCAB = 96


def qkv(batch: int = 2, length: int = 7, heads: int = 4, kv_heads: int = 2, head_dim: int = 8):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (batch, length, heads, head_dim)),
          jax.random.normal(keys[1], (batch, length, kv_heads, head_dim)),
          jax.random.normal(keys[2], (batch, length, kv_heads, head_dim)))


def value_and_grads(fn, *args):
  """fn's weighted sum and its gradients with respect to every argument."""
  weighted = lambda *a: jnp.sum(fn(*a) * jnp.cos(jnp.arange(fn(*a).size).reshape(fn(*a).shape)))
  return jax.value_and_grad(weighted, argnums=tuple(range(len(args))))(*args)


def assert_attention_matches_xla(fn, causal: bool, length: int) -> None:
  """fn(q, k, v) gives jax.nn.dot_product_attention's values and gradients (grouped heads, `length` positions)."""
  q, k, v = qkv(length=length)
  ref_value, ref_grads = value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
                                         q, k, v)
  value, grads = value_and_grads(fn, q, k, v)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert float(jnp.max(jnp.abs(want))) > 1e-2


@pytest.mark.parametrize('causal', [True, False])
def test_einsum_attention_matches_xla(causal):
  assert_attention_matches_xla(lambda q, k, v: kernels.attention(q, k, v, causal), causal, length=7)


@pytest.mark.parametrize('blocks', [2, 3, 6])
def test_causal_block_attention_matches_xla(blocks):
  assert_attention_matches_xla(lambda q, k, v: kernels.causal_block_attention(q, k, v, blocks), True, length=12)


def test_einsum_kind_uses_query_blocks_for_long_causal_self_attention(monkeypatch):
  q, k, v = qkv(length=12)
  used = []
  blockwise = kernels.causal_block_attention
  monkeypatch.setattr(kernels, 'CAUSAL_BLOCK', 4)
  monkeypatch.setattr(kernels, 'causal_block_attention', lambda *a: used.append(a[3]) or blockwise(*a))
  got = kernels.dot_product_attention(q, k, v, 'einsum', causal=True)
  np.testing.assert_allclose(got, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5)
  kernels.dot_product_attention(q[:, :10], k[:, :10], v[:, :10], 'einsum', causal=True)  # 10 is no multiple of 4
  kernels.dot_product_attention(q[:, :4], k[:, :4], v[:, :4], 'einsum', causal=True)  # a single block
  assert used == [3]


def test_swiglu_module_with_stacked_kernels_matches_separate_products():
  mlp = layers.SwiGLU(16, 24, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (2, 5, 16))
  separate = lambda m, x: m.down(kernels.swiglu(m.gate(x), m.up(x)))
  weighted = lambda fn: lambda m, x: jnp.sum(fn(m, x) * jnp.cos(jnp.arange(2 * 5 * 16).reshape(2, 5, 16)))
  value, grads = nnx.value_and_grad(weighted(lambda m, x: m(x)), argnums=(0, 1))(mlp, x)
  ref_value, ref_grads = nnx.value_and_grad(weighted(separate), argnums=(0, 1))(mlp, x)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_masked_einsum_attention_matches_xla():
  q, k, v = qkv()
  mask = jax.random.bernoulli(jax.random.key(5), 0.6, (2, 7, 7)) | jnp.eye(7, dtype=bool)[None]
  got = kernels.dot_product_attention(q, k, v, 'einsum', mask=mask)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_swiglu_gradients_match_autodiff():
  gate, up = jax.random.normal(jax.random.key(1), (2, 3, 16)), jax.random.normal(jax.random.key(2), (2, 3, 16))
  ref_value, ref_grads = value_and_grads(lambda g, u: jax.nn.silu(g) * u, gate, up)
  value, grads = value_and_grads(kernels.swiglu, gate, up)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize('x_shape, kernel_shape, num_in_axes', [
  ((2, 5, 6), (6, 7), 1),        # a projection
  ((2, 5, 6), (6, 3, 4), 1),     # to heads
  ((2, 5, 3, 4), (3, 4, 6), 2),  # from heads (x wider than the output: no transposed copy of x)
  ((2, 5, 6), (6,), 1),          # to a scalar per position
  ((6,), (6, 7), 1),             # no leading axes
  ((4, 20, 6), (6, 3, 4), 1),    # 80 rows: cpu_ffi's packed products where they run
  ((2, 40, 3, 4), (3, 4, 6), 2),
  ((70, 6), (6,), 1),
])
def test_row_major_dense_matches_tensordot(x_shape, kernel_shape, num_in_axes):
  x = jax.random.normal(jax.random.key(6), x_shape)
  kernel = jax.random.normal(jax.random.key(7), kernel_shape)
  ref_value, ref_grads = value_and_grads(lambda a, b: jnp.tensordot(a, b, num_in_axes), x, kernel)
  value, grads = jax.jit(lambda a, b: value_and_grads(lambda a, b: kernels.row_major_dense(a, b, num_in_axes),
                                                      a, b))(x, kernel)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(kernels.dense(x, kernel, num_in_axes), jnp.tensordot(x, kernel, num_in_axes), rtol=1e-6,
                             atol=1e-6)


def test_attention_choice_is_checked():
  with pytest.raises(ValueError, match=r"config.model.llm.attention 'splash'"):
    kernels.check_attention('splash')
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
      kernels.check_attention('cudnn')


def llm_config(attention: str | None):
  cfg = demo.get_config('variant=tiny').model.llm
  cfg.heads, cfg.kv_heads, cfg.width = 4, 2, 32
  if attention is None:
    del cfg['attention']
  else:
    cfg.attention = attention
  return cfg


def test_llm_with_einsum_and_flash_attention_matches_xla_and_old_configs_load():
  tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, VOCAB)
  results = {}
  for attention in (None, 'xla', 'einsum', 'flash'):
    model = LLM(llm_config(attention), VOCAB, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    results[attention] = jax.value_and_grad(loss)(params)
  for attention in (None, 'einsum', 'flash'):
    np.testing.assert_allclose(results[attention][0], results['xla'][0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(results[attention][1]), jax.tree.leaves(results['xla'][1])):
      np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match='config.model.llm.attention'):
    LLM(llm_config('sdpa'), VOCAB, rngs=nnx.Rngs(0))


def test_chunked_loss_matches_whole_sequence():
  config = demo.get_config('variant=tiny')
  config.data.seq_len = 24
  model = MERModel(config.model, VOCAB, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = jax.tree.map(jnp.asarray, random_batch(config, 3, VOCAB, answer_lengths=(4, 9, 2)))
  results = {}
  for chunk in (0, 5, 23, 64):  # 23 positions are scored: chunks that do not divide them, one chunk, one larger
    sums = lambda p: step.loss_sums(nnx.merge(graphdef, p), batch, None, chunk)
    loss = lambda p: (sums(p)['nll'], sums(p))
    results[chunk] = jax.value_and_grad(loss, has_aux=True)(params)
  for chunk in (5, 23, 64):
    (nll, sums), grads = results[chunk]
    (ref_nll, ref_sums), ref_grads = results[0]
    np.testing.assert_allclose(nll, ref_nll, rtol=1e-5)
    assert float(sums['tokens']) == float(ref_sums['tokens']) == 15.0
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_loss_chunk_is_checked():
  with pytest.raises(ValueError, match='config.train.loss_chunk'):
    step.make_train_step(None, None, None, 0, 1.0, loss_chunk=-1)
