"""Decoding: KV-cache decoding equals full recomputation on padded prompts; sampling filters; stop tokens."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from mer_jax.eval import bench
from mer_jax.eval.generate import Sampling, jit_generate
from mer_jax.models.mer import MERModel

VOCAB = 64
SEQ = 24
NEW = 6
PAD = 0
STARTS = (10, 14, 17)  # each prompt ends at its own answer_start; answer_start + NEW <= SEQ
# Tiny programs run as fast at XLA's lowest backend optimisation level and compile several times faster.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def tiny_model_config():
  return demo.get_config('variant=tiny').model


@pytest.fixture(scope='module')
def model() -> tuple[nnx.GraphDef, nnx.State]:
  """The tiny MER model with random weights large enough that greedy choices have clear margins."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: MERModel(tiny_model_config(), VOCAB, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(0)
  state = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.ones(x.shape, x.dtype) if path[-2].key == 'scale'
    else jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), state)
  return graphdef, state


@pytest.fixture(scope='module')
def batch() -> dict[str, jax.Array]:
  """Three prompts of different lengths, right-padded with random tokens (which must not matter)."""
  cfg = tiny_model_config()
  rng = np.random.RandomState(1)
  num_soft = cfg.audio.num_soft_tokens + cfg.vision.num_soft_tokens
  size = cfg.vision.image_size
  return {
    'tokens': jnp.asarray(rng.randint(1, VOCAB, (3, SEQ)), jnp.int32),
    'soft_positions': jnp.asarray(np.broadcast_to(np.arange(1, 1 + num_soft), (3, num_soft)), jnp.int32),
    'answer_start': jnp.asarray(STARTS, jnp.int32),
    'audio': jnp.asarray(rng.randint(-8000, 8000, (3, 3200)), jnp.int16),
    'frames': jnp.asarray(rng.randint(0, 256, (3, 4, size, size, 3)), jnp.uint8),
  }


@pytest.fixture(scope='module')
def decode(model, batch):
  """decode(key, sampling, inputs, **static options) -> numpy outputs; one compile per static option set."""
  compiled = {}

  def run(key=None, sampling=Sampling(), inputs=None, **options):
    options = {'max_new_tokens': NEW, 'stop_ids': (), 'pad_id': PAD, **options}
    name = tuple(sorted(options.items()))
    if name not in compiled:
      compiled[name] = jit_generate(model[0], compiler_options=FAST_COMPILE, **options)
    return jax.tree.map(np.asarray, compiled[name]((model[1],), inputs or batch, key, sampling))

  return run


@pytest.fixture(scope='module')
def teacher_forced(model, batch):
  """Logits [B, NEW, vocab] of one full forward with `tokens` [B, NEW] written after each prompt."""
  forward = jax.jit(lambda state, b: nnx.merge(model[0], state)(b), compiler_options=FAST_COMPILE)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    full = np.asarray(batch['tokens']).copy()
    for row, start in enumerate(STARTS):
      full[row, start:start + NEW] = tokens[row]
    logits, valence = forward(model[1], dict(batch, tokens=jnp.asarray(full)))
    at = np.asarray(STARTS)[:, None] - 1 + np.arange(NEW)[None]
    return np.take_along_axis(np.asarray(logits), at[..., None], axis=1), np.asarray(valence)

  return run


def test_cached_decoding_equals_full_recomputation(decode, teacher_forced):
  cached, full = decode(), decode(use_cache=False)
  np.testing.assert_array_equal(cached['tokens'], full['tokens'])
  np.testing.assert_array_equal(cached['num_tokens'], NEW)
  # Greedy means each token is the argmax of the whole-sequence forward pass given the ones before.
  logits, valence = teacher_forced(cached['tokens'])
  np.testing.assert_array_equal(logits.argmax(-1), cached['tokens'])
  np.testing.assert_allclose(cached['valence'], valence, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(full['valence'], valence, rtol=1e-4, atol=1e-5)
  assert len(np.unique(cached['tokens'])) > 3


def test_padding_after_the_prompt_is_ignored(decode, batch):
  after = jnp.arange(SEQ)[None] >= batch['answer_start'][:, None]
  other = dict(batch, tokens=jnp.where(after, 5, batch['tokens']))
  np.testing.assert_array_equal(decode(inputs=other)['tokens'], decode()['tokens'])


def test_top_k_one_and_tiny_top_p_equal_greedy(decode):
  greedy = decode()['tokens']
  key = jax.random.key(3)
  np.testing.assert_array_equal(decode(key, Sampling(temperature=1.0, top_k=1))['tokens'], greedy)
  np.testing.assert_array_equal(decode(key, Sampling(temperature=1.0, top_p=1e-6))['tokens'], greedy)


def test_sampling_stays_in_the_top_k_set(decode, teacher_forced):
  sampling = Sampling(temperature=5.0, top_k=3)
  greedy = decode()['tokens']
  differs = 0
  for seed in range(4):
    tokens = decode(jax.random.key(seed), sampling)['tokens']
    logits, _ = teacher_forced(tokens)
    top3 = np.argsort(-logits, axis=-1)[..., :3]
    assert (top3 == tokens[..., None]).any(-1).all()
    differs += int((tokens != greedy).sum())
  assert differs > 0


def test_sampling_needs_a_key_and_valid_values(decode):
  with pytest.raises(ValueError, match='needs a key'):
    decode(None, Sampling(temperature=1.0))
  with pytest.raises(ValueError, match='0 < top_p <= 1'):
    decode(jax.random.key(0), Sampling(temperature=1.0, top_p=0.0))


def test_stop_token_ends_one_example_while_others_continue(decode):
  greedy = decode()['tokens']
  stop, at = next((int(greedy[0, i]), i) for i in range(1, NEW)
                  if greedy[0, i] not in greedy[0, :i] and greedy[0, i] not in greedy[1:])
  out = decode(stop_ids=(stop,))
  np.testing.assert_array_equal(out['tokens'][0, :at + 1], greedy[0, :at + 1])
  np.testing.assert_array_equal(out['tokens'][0, at + 1:], PAD)
  np.testing.assert_array_equal(out['tokens'][1:], greedy[1:])
  assert out['num_tokens'].tolist() == [at + 1, NEW, NEW]


def test_decode_benchmark_reports_positive_numbers():
  config = demo.get_config('variant=tiny,modalities=text')
  config.model.llm.vocab_size = VOCAB
  rows = bench.bench_decode(config, batch_size=1, iterations=2, max_new_tokens=2)
  assert [(row['kv_cache'], row['batch_size']) for row in rows] == [(True, 1), (False, 1)]
  for row in rows:
    assert min(row['tokens_per_s'], row['ms_per_batch'], row['ms_per_clip'], row['prefill_ms']) > 0
  assert '| KV cache |' in bench.format_table(rows)
