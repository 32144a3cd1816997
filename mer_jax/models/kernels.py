"""Hand-differentiated kernels: dense products, einsum attention (whole or by causal query blocks), the SwiGLU gate."""

import functools
import math

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from mer_jax.models import cpu_ffi

ATTENTION_KINDS = ('xla', 'einsum', 'flash', 'cudnn')
# Query positions per block of causal_block_attention, which 'einsum' uses for causal self-attention
# over a multiple of this many positions (fastest on a 2-core CPU at sequences 512 to 1024).
CAUSAL_BLOCK = 256
# Rows of x from which row_major_dense multiplies float32 by cpu_ffi's packed products.
PACKED_MIN_ROWS = 64
# The name of `dense` outputs, for remat policies that keep matmul results.
DENSE_OUTPUT = 'dense_output'


def check_attention(kind: str) -> str:
  """Returns `kind` if it is an attention implementation this backend runs; a clear error otherwise."""
  if kind not in ATTENTION_KINDS:
    raise ValueError(f'unknown config.model.llm.attention {kind!r}; choose from {ATTENTION_KINDS}')
  if kind == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError(f"config.model.llm.attention 'cudnn' needs a GPU; this backend is {jax.default_backend()!r}: "
                     "use 'xla' or 'einsum'")
  if kind == 'flash':
    if jax.default_backend() != 'cpu':
      raise ValueError(f"config.model.llm.attention 'flash' is a CPU kernel; this backend is "
                       f"{jax.default_backend()!r}: use 'cudnn' on a GPU, else 'xla' or 'einsum'")
    try:
      cpu_ffi.register()
    except (RuntimeError, OSError) as error:
      raise ValueError(f"config.model.llm.attention 'flash' cannot be built here ({error}); use 'einsum'") from error
  return kind


def _heads_major(x: jax.Array, kv_heads: int) -> jax.Array:
  """x [B, T, N, H] -> [B, K, N / K * T, H]: per key/value head, the rows of the N / K heads that share it."""
  batch, length, heads, head_dim = x.shape
  grouped = x.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
  return jnp.transpose(grouped, (0, 2, 3, 1, 4)).reshape(batch, kv_heads, -1, head_dim)


def _heads_minor(x: jax.Array, heads: int) -> jax.Array:
  """The inverse of _heads_major: [B, K, N / K * T, H] -> [B, T, N, H]."""
  batch, kv_heads, rows, head_dim = x.shape
  group = heads // kv_heads
  grouped = x.reshape(batch, kv_heads, group, rows // group, head_dim)
  return jnp.transpose(grouped, (0, 3, 1, 2, 4)).reshape(batch, rows // group, heads, head_dim)


def _masked_scores(q: jax.Array, k: jax.Array, group: int, causal: bool,
                   mask: jax.Array | None = None) -> jax.Array:
  """Scaled float32 scores [B, K, G * T, S] of heads-major q against k [B, K, S, H] (G query heads per key head).

  causal: query t sees keys up to t + S - T (aligned to the end); mask [B, T, S]: True where visible.
  """
  scores = jnp.einsum('bkrh,bksh->bkrs', q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
  batch, kv_heads, rows, source = scores.shape
  scores = scores.reshape(batch, kv_heads, group, rows // group, source)
  if causal:
    length = rows // group
    visible = jnp.arange(source)[None, :] <= jnp.arange(length)[:, None] + (source - length)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
  if mask is not None:
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  return scores.reshape(batch, kv_heads, rows, source)


def _row_attention(q_rows: jax.Array, k_rows: jax.Array, v_rows: jax.Array, group: int, causal: bool,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(output rows [B, K, G * T, H], probabilities [B, K, G * T, S] in v's dtype) of heads-major softmax attention.

  Heads-major rows ([B, K, rows, H], each head's rows contiguous) are what XLA:CPU multiplies fastest:
  up to three times the speed of the same products in the [B, T, N, H] layout.
  """
  probs = jax.nn.softmax(_masked_scores(q_rows, k_rows, group, causal, mask), axis=-1).astype(v_rows.dtype)
  return jnp.einsum('bkrs,bksh->bkrh', probs, v_rows), probs


def _row_attention_bwd(q_rows: jax.Array, k_rows: jax.Array, v_rows: jax.Array, probs: jax.Array,
                       d_rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradients (q, k, v rows) of _row_attention from its probabilities: four einsums, one elementwise pass."""
  d_v = jnp.einsum('bkrs,bkrh->bksh', probs, d_rows)
  d_probs = jnp.einsum('bkrh,bksh->bkrs', d_rows, v_rows, preferred_element_type=jnp.float32)
  p32 = probs.astype(jnp.float32)
  d_scores = p32 * (d_probs - jnp.sum(d_probs * p32, axis=-1, keepdims=True)) * (q_rows.shape[-1] ** -0.5)
  d_scores = d_scores.astype(q_rows.dtype)
  return (jnp.einsum('bkrs,bksh->bkrh', d_scores, k_rows), jnp.einsum('bkrs,bkrh->bksh', d_scores, q_rows), d_v)


def _attention_forward(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool,
                       mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
  """(output [B, T, N, H], residuals for _attention_bwd) of softmax attention."""
  kv_heads = k.shape[2]
  q_rows, k_rows, v_rows = _heads_major(q, kv_heads), _heads_major(k, kv_heads), _heads_major(v, kv_heads)
  out_rows, probs = _row_attention(q_rows, k_rows, v_rows, q.shape[2] // kv_heads, causal, mask)
  return _heads_minor(out_rows, q.shape[2]), (q_rows, k_rows, v_rows, probs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
  """Softmax attention of q [B, T, N, H] over k, v [B, S, K, H] (K divides N), as plain einsums.

  Same result as jax.nn.dot_product_attention (scale 1/sqrt(H), causal aligned to the end). The
  backward keeps the probabilities (one array per layer, which a remat policy may drop and
  recompute) and forms every gradient with four einsums and one fused elementwise pass.
  """
  return _attention_forward(q, k, v, causal)[0]


def _attention_bwd(causal: bool, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  del causal  # the saved probabilities are already masked
  q_rows, k_rows, v_rows, probs = residuals
  heads, kv_heads = d_out.shape[2], k_rows.shape[1]
  d_q, d_k, d_v = _row_attention_bwd(q_rows, k_rows, v_rows, probs, _heads_major(d_out, kv_heads))
  return _heads_minor(d_q, heads), _heads_minor(d_k, kv_heads), _heads_minor(d_v, kv_heads)


attention.defvjp(_attention_forward, _attention_bwd)


def _query_blocks(length: int, blocks: int) -> list[slice]:
  """`blocks` equal slices of the query positions 0..length."""
  size = length // blocks
  return [slice(i * size, (i + 1) * size) for i in range(blocks)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_block_attention(q: jax.Array, k: jax.Array, v: jax.Array, blocks: int) -> jax.Array:
  """Causal self-attention (`attention` with causal=True, T == S) by query blocks that skip the masked keys.

  Query block i of T / blocks positions attends to the keys up to its end only, so the score and
  probability arrays, and the FLOPs they take, shrink to (blocks + 1) / (2 * blocks) of the full square.
  The blocks share one heads-major copy of the keys and values.
  """
  return _causal_block_fwd(q, k, v, blocks)[0]


def _causal_block_fwd(q: jax.Array, k: jax.Array, v: jax.Array, blocks: int) -> tuple[jax.Array, tuple]:
  kv_heads = k.shape[2]
  k_rows, v_rows = _heads_major(k, kv_heads), _heads_major(v, kv_heads)
  outs, block_residuals = [], []
  for rows in _query_blocks(q.shape[1], blocks):
    q_rows = _heads_major(q[:, rows], kv_heads)
    out_rows, probs = _row_attention(q_rows, k_rows[:, :, :rows.stop], v_rows[:, :, :rows.stop],
                                     q.shape[2] // kv_heads, causal=True)
    outs.append(_heads_minor(out_rows, q.shape[2]))
    block_residuals.append((q_rows, probs))
  return jnp.concatenate(outs, axis=1), (k_rows, v_rows, block_residuals)


def _causal_block_bwd(blocks: int, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  k_rows, v_rows, block_residuals = residuals
  heads, kv_heads, length = d_out.shape[2], k_rows.shape[1], d_out.shape[1]
  d_qs, d_k, d_v = [], 0.0, 0.0
  for rows, (q_rows, probs) in zip(_query_blocks(length, blocks), block_residuals):
    d_q_rows, d_k_rows, d_v_rows = _row_attention_bwd(q_rows, k_rows[:, :, :rows.stop], v_rows[:, :, :rows.stop],
                                                      probs, _heads_major(d_out[:, rows], kv_heads))
    tail = ((0, 0), (0, 0), (0, length - rows.stop), (0, 0))
    d_qs.append(_heads_minor(d_q_rows, heads))
    d_k, d_v = d_k + jnp.pad(d_k_rows, tail), d_v + jnp.pad(d_v_rows, tail)
  return jnp.concatenate(d_qs, axis=1), _heads_minor(d_k, kv_heads), _heads_minor(d_v, kv_heads)


causal_block_attention.defvjp(_causal_block_fwd, _causal_block_bwd)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with a boolean mask [B, T, S] (True: visible), as einsums; for decoding (no custom backward)."""
  return _attention_forward(q, k, v, causal=False, mask=mask)[0]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, kind: str, *, causal: bool = False,
                          mask: jax.Array | None = None) -> jax.Array:
  """Attention by implementation `kind` (ATTENTION_KINDS); mask [B, T, S] or causal, not both.

  'flash' runs the CPU flash kernels (cpu_ffi) where they apply: one device, no mask, head dim a
  multiple of 8. Elsewhere (a mesh of devices, decoding against a masked cache) it is 'einsum'.
  """
  if kind == 'flash' and mask is None and cpu_ffi.flash_supports(q, k, causal) and cpu_ffi.usable():
    return cpu_ffi.flash_attention(q, k, v, causal)
  if kind in ('einsum', 'flash'):
    if mask is not None:
      return masked_attention(q, k, v, mask)
    length = q.shape[1]
    if causal and length == k.shape[1] and length % CAUSAL_BLOCK == 0 and length > CAUSAL_BLOCK:
      return causal_block_attention(q, k, v, length // CAUSAL_BLOCK)
    return attention(q, k, v, causal)
  implementation = 'cudnn' if kind == 'cudnn' else None
  return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None], is_causal=causal,
                                      implementation=implementation)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) * up, elementwise, with a backward that reuses one sigmoid for both gradients."""
  return gate * jax.nn.sigmoid(gate) * up


def _swiglu_fwd(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals: tuple[jax.Array, jax.Array], d_out: jax.Array) -> tuple[jax.Array, jax.Array]:
  gate, up = residuals
  sig = jax.nn.sigmoid(gate)
  silu = gate * sig
  d_gate = d_out * up * (sig + silu * (1 - sig))
  return d_gate, d_out * silu


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def dense(x: jax.Array, kernel: jax.Array, num_in_axes: int) -> jax.Array:
  """x contracted on its trailing `num_in_axes` axes with the leading axes of kernel (jnp.tensordot).

  On CPU the backward is `row_major_dense`'s, whose products all take row-major operands; other
  backends lay out the gradient products themselves.
  """
  if jax.default_backend() == 'cpu':
    return checkpoint_name(row_major_dense(x, kernel, num_in_axes), DENSE_OUTPUT)
  return jnp.tensordot(x, kernel, axes=num_in_axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def row_major_dense(x: jax.Array, kernel: jax.Array, num_in_axes: int) -> jax.Array:
  """jnp.tensordot(x, kernel, num_in_axes) whose gradients multiply explicitly transposed operands.

  Where the CPU kernels run, float32 products of at least PACKED_MIN_ROWS rows are cpu_ffi.matmul
  and cpu_ffi.matmul_backward (packed register tiles; on two threads the two gradient products run
  at once, one per thread). Elsewhere XLA multiplies, and its CPU dot can run at half speed when an
  operand is contracted on its leading axes, as the kernel gradient x^T d_out is when d_out is much
  wider than x (an LM head's). So the input gradient multiplies by a transposed copy of the kernel,
  and the kernel gradient by a transposed copy of x when x is the smaller operand (otherwise the
  copy costs more than it saves). The copies are cpu_ffi.transpose calls where usable (XLA's own
  transposes run at a fraction of memory speed), else XLA transposes behind optimization barriers,
  which keep XLA from folding them back into the products.
  """
  if _packed_products(x, kernel, num_in_axes):
    lead, trail = x.shape[:x.ndim - num_in_axes], kernel.shape[num_in_axes:]
    return cpu_ffi.matmul(*_matrices(x, kernel, num_in_axes)).reshape(*lead, *trail)
  return jnp.tensordot(x, kernel, axes=num_in_axes)


def _packed_products(x: jax.Array, kernel: jax.Array, num_in_axes: int) -> bool:
  """Whether row_major_dense multiplies by cpu_ffi.matmul: float32 operands and at least PACKED_MIN_ROWS rows of x
  where the CPU kernels run (fewer rows, as in decoding, are matrix-vector work that packing does not pay for)."""
  rows = math.prod(x.shape[:x.ndim - num_in_axes])
  return x.dtype == kernel.dtype == jnp.float32 and rows >= PACKED_MIN_ROWS and cpu_ffi.usable()


def _matrices(x: jax.Array, kernel: jax.Array, num_in_axes: int) -> tuple[jax.Array, jax.Array]:
  """x as [rows, depth] and kernel as [depth, columns] for a product over x's trailing `num_in_axes` axes."""
  depth = math.prod(kernel.shape[:num_in_axes])
  return x.reshape(-1, depth), kernel.reshape(depth, -1)


def _row_major_dense_fwd(x: jax.Array, kernel: jax.Array, num_in_axes: int) -> tuple[jax.Array, tuple]:
  return row_major_dense(x, kernel, num_in_axes), (x, kernel)


def _moved(a: jax.Array, split: int) -> jax.Array:
  """a with its axes from `split` on moved to the front, as a materialised copy (cpu_ffi.transpose if usable)."""
  lead, trail = a.shape[:split], a.shape[split:]
  if a.dtype == jnp.float32 and cpu_ffi.usable():
    return cpu_ffi.transpose(a.reshape(math.prod(lead), math.prod(trail))).reshape(*trail, *lead)
  return jax.lax.optimization_barrier(jnp.transpose(a, (*range(split, a.ndim), *range(split))))


def _row_major_dense_bwd(num_in_axes: int, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, jax.Array]:
  x, kernel = residuals
  if _packed_products(x, kernel, num_in_axes) and d_out.dtype == jnp.float32:
    x_rows, kernel_rows = _matrices(x, kernel, num_in_axes)
    d_x, d_kernel = cpu_ffi.matmul_backward(x_rows, kernel_rows, d_out.reshape(x_rows.shape[0], -1))
    return d_x.reshape(x.shape), d_kernel.reshape(kernel.shape)
  num_lead = x.ndim - num_in_axes
  d_x = jnp.tensordot(d_out, _moved(kernel, num_in_axes), axes=kernel.ndim - num_in_axes)
  if x.size < d_out.size:
    d_kernel = jnp.tensordot(_moved(x, num_lead), d_out, axes=num_lead)
  else:
    d_kernel = jnp.tensordot(x, d_out, axes=(tuple(range(num_lead)), tuple(range(num_lead))))
  return d_x, d_kernel


row_major_dense.defvjp(_row_major_dense_fwd, _row_major_dense_bwd)
