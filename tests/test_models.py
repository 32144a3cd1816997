"""Tests for mer_jax.models: shapes, log-mel, soft-token splicing, causality, GQA, tying, axes, dropout, remat."""

import functools
import importlib.util
import math
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mer_jax.models import layers
from mer_jax.models.audio import AudioEncoder, log_mel, mel_filterbank
from mer_jax.models.llm import LLM
from mer_jax.models.mer import MERModel
from mer_jax.models.vision import VisionEncoder

VOCAB = 40
BATCH = 2
SEQ = 24
FIRST_SOFT = 2
NUM_SAMPLES = 3200
# Tiny programs run as fast at XLA's lowest backend optimisation level and compile ~3x faster.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """config.model of configs/demo.py:variant=tiny, with top-level model keys overridden."""
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'demo.py'
  spec = importlib.util.spec_from_file_location('demo_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config('variant=tiny').model
  for key, value in overrides.items():
    if key == 'fusion':
      cfg.fusion.kind = value
    else:
      cfg[key] = value
  return cfg


def make_batch(cfg: ml_collections.ConfigDict, seed: int = 0) -> dict[str, jax.Array]:
  """A model batch: audio span then video span of soft positions starting at FIRST_SOFT."""
  rng = np.random.RandomState(seed)
  batch = {'tokens': jnp.asarray(rng.randint(4, VOCAB, (BATCH, SEQ)), jnp.int32)}
  num_soft = 0
  if 'audio' in cfg.modalities:
    num_soft += cfg.audio.num_soft_tokens
    batch['audio'] = jnp.asarray(rng.randint(-8000, 8000, (BATCH, NUM_SAMPLES)), jnp.int16)
  if 'video' in cfg.modalities:
    num_soft += cfg.vision.num_soft_tokens
    batch['frames'] = jnp.asarray(rng.randint(0, 256, (BATCH, 4, 40, 40, 3)), jnp.uint8)
  positions = np.arange(FIRST_SOFT, FIRST_SOFT + num_soft, dtype=np.int32)
  batch['soft_positions'] = jnp.asarray(np.broadcast_to(positions, (BATCH, num_soft)))
  batch['tokens'] = batch['tokens'].at[:, positions].set(0)
  batch['answer_start'] = jnp.asarray([SEQ - 6, SEQ - 3], jnp.int32)
  return batch


def filled(make, seed: int = 0):
  """Builds a module abstractly and fills its params from numpy (no per-shape RNG compiles)."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  rng = np.random.RandomState(seed)

  def fill(path, x):
    if path[-2].key == 'scale':
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def fast_jit(fn):
  """Jits fn(model, *args) over the model's state with FAST_COMPILE (nnx.jit takes no compiler options)."""

  @functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
  def run(graphdef, state, *args):
    return fn(nnx.merge(graphdef, state), *args)

  return lambda model, *args: run(*nnx.split(model), *args)


def params_of(model: nnx.Module) -> dict[str, nnx.Param]:
  """Flat {'a/b/c': Param} of a model's params."""
  return {'/'.join(map(str, path)): v
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope='module')
def forward():
  """Jitted model forward; dropout iff a key is given (shared across tests)."""
  return fast_jit(lambda model, batch, key=None: model(
    batch, rngs=None if key is None else nnx.Rngs(dropout=key)))


@pytest.fixture(scope='module')
def mer_projector():
  """The tiny all-modalities model with projector fusion, and its batch."""
  cfg = tiny_config()
  return filled(lambda: MERModel(cfg, VOCAB, rngs=nnx.Rngs(0))), make_batch(cfg)


@pytest.fixture(scope='module')
def llm_forward():
  """Jitted LLM.forward -> (logits, hidden)."""
  return fast_jit(lambda model, tokens: model.forward(model.embed_tokens(tokens)))


@pytest.mark.parametrize('fusion', ['projector', 'qformer'])
@pytest.mark.parametrize('modalities', [('audio', 'text'), ('video', 'text'), ('text',),
                                        ('audio', 'video', 'text')])
def test_output_shapes(modalities, fusion):
  cfg = tiny_config(modalities=modalities, fusion=fusion)
  model = nnx.eval_shape(lambda: MERModel(cfg, VOCAB, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  batch = make_batch(cfg)
  logits, valence = jax.eval_shape(lambda s, b: nnx.merge(graphdef, s)(b), state, batch)
  assert (logits.shape, logits.dtype) == ((BATCH, SEQ, VOCAB), jnp.float32)
  assert (valence.shape, valence.dtype) == ((BATCH,), jnp.float32)
  assert model.num_soft_tokens == batch['soft_positions'].shape[1]
  assert (model.audio is not None, model.vision is not None) == ('audio' in modalities,
                                                                 'video' in modalities)


def test_encoders_standalone_shapes():
  cfg = tiny_config()
  audio = nnx.eval_shape(lambda: AudioEncoder(cfg.audio, rngs=nnx.Rngs(0)))
  vision = nnx.eval_shape(lambda: VisionEncoder(cfg.vision, rngs=nnx.Rngs(0)))
  wave = jax.ShapeDtypeStruct((3, 32000), jnp.int16)
  frames = jax.ShapeDtypeStruct((3, 6, 48, 48, 3), jnp.uint8)
  run = lambda m, x: jax.eval_shape(lambda s, x: nnx.merge(nnx.graphdef(m), s)(x), nnx.state(m), x)
  assert run(audio, wave).shape == (3, 100, cfg.audio.width)
  assert run(vision, frames).shape == (3, 6, cfg.vision.width)
  assert audio.pool(jnp.ones((3, 100, 8))).shape == (3, cfg.audio.num_soft_tokens, 8)
  assert vision.pool(jnp.ones((3, 6, 8))).shape == (3, cfg.vision.num_soft_tokens, 8)


def test_chunk_mean_is_adaptive_average_pooling():
  x = jnp.arange(6.0)[None, :, None]
  np.testing.assert_allclose(layers.chunk_mean(x, 3)[0, :, 0], [0.5, 2.5, 4.5])
  np.testing.assert_allclose(layers.chunk_mean(x, 4)[0, :, 0], [0.5, 1.5, 3.5, 4.5])
  np.testing.assert_allclose(layers.chunk_mean(x[:, :2], 4)[0, :, 0], [0.0, 0.0, 1.0, 1.0])


def test_log_mel_sine_peaks_in_1khz_bin():
  num_samples = 16000 + 77
  t = np.arange(num_samples) / 16000.0
  audio = (12000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)[None]
  mel = np.asarray(jax.jit(log_mel, compiler_options=FAST_COMPILE)(jnp.asarray(audio)))
  assert mel.shape == (1, num_samples // 160, 80)
  # Slaney scale: 1 kHz is mel 15; the 82 band edges are uniform in mel up to 8 kHz.
  top = 15.0 + 27.0 * math.log(8.0) / math.log(6.4)
  centers = np.linspace(0.0, top, 82)[1:-1]
  expected = int(np.argmin(np.abs(centers - 15.0)))
  assert expected == 26
  np.testing.assert_array_equal(mel[0, 2:-2].argmax(-1), expected)
  assert mel.max() == pytest.approx(mel[0, 50, expected])
  assert (mel[0, 50, expected] - np.median(mel[0, 50])) > 1.0


def test_log_mel_matches_transformers_whisper_features():
  audio_utils = pytest.importorskip('transformers.audio_utils')
  filters = audio_utils.mel_filter_bank(
    num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
    sampling_rate=16000, norm='slaney', mel_scale='slaney')
  np.testing.assert_allclose(mel_filterbank(16000, 400, 80), filters, atol=1e-7)
  rng = np.random.RandomState(1)
  t = np.arange(16077) / 16000.0
  audio = (3000 * np.sin(2 * np.pi * 440 * t) + rng.randint(-800, 800, t.size)).astype(np.int16)
  ref = audio_utils.spectrogram(
    audio.astype(np.float32) / 32768.0, audio_utils.window_function(400, 'hann'), frame_length=400,
    hop_length=160, power=2.0, mel_filters=filters, log_mel='log10', mel_floor=1e-10)[:, :-1]
  ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
  ours = np.asarray(jax.jit(log_mel, compiler_options=FAST_COMPILE)(jnp.asarray(audio[None])))[0]
  np.testing.assert_allclose(ours, ref.T, atol=2e-5)


def test_audio_changes_logits_only_from_first_soft_position(mer_projector, forward):
  model, batch = mer_projector
  logits, valence = forward(model, batch)
  changed = dict(batch, audio=batch['audio'][:, ::-1])
  logits2, valence2 = forward(model, changed)
  diff = np.abs(np.asarray(logits2 - logits)).max(axis=(0, 2))
  np.testing.assert_array_equal(diff[:FIRST_SOFT], 0.0)
  assert (diff[FIRST_SOFT:] > 1e-5).all()
  assert np.abs(np.asarray(valence2 - valence)).min() > 1e-6


def test_video_span_follows_audio_span(mer_projector, forward):
  model, batch = mer_projector
  logits, _ = forward(model, batch)
  changed = dict(batch, frames=255 - batch['frames'])
  diff = np.abs(np.asarray(forward(model, changed)[0] - logits)).max(axis=(0, 2))
  first_video = FIRST_SOFT + tiny_config().audio.num_soft_tokens
  np.testing.assert_array_equal(diff[:first_video], 0.0)
  assert (diff[first_video:] > 1e-5).all()


def test_tokens_at_soft_positions_are_overwritten(mer_projector, forward):
  model, batch = mer_projector
  logits, valence = forward(model, batch)
  positions = np.asarray(batch['soft_positions'][0])
  other = dict(batch, tokens=batch['tokens'].at[:, positions].set(VOCAB - 1))
  logits2, valence2 = forward(model, other)
  np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(valence2), np.asarray(valence))


def test_valence_reads_hidden_before_answer_start(mer_projector, forward):
  model, batch = mer_projector
  _, valence = forward(model, batch)
  later = np.asarray(batch['answer_start'])[:, None] <= np.arange(SEQ)[None]
  tokens = jnp.where(jnp.asarray(later), VOCAB - 2, batch['tokens'])
  _, valence2 = forward(model, dict(batch, tokens=tokens))
  np.testing.assert_array_equal(np.asarray(valence2), np.asarray(valence))
  earlier = dict(batch, tokens=batch['tokens'].at[:, SEQ - 7].set(VOCAB - 3))
  assert np.abs(np.asarray(forward(model, earlier)[1] - valence)).min() > 1e-6


def test_qformer_queries_attend_over_audio_and_video_together():
  cfg = tiny_config(fusion='qformer')
  model = filled(lambda: MERModel(cfg, VOCAB, rngs=nnx.Rngs(0)))
  batch = make_batch(cfg)
  encode = fast_jit(lambda m, b: m.encode_soft_tokens(b))
  soft = np.asarray(encode(model, batch))
  assert soft.shape == (BATCH, cfg.audio.num_soft_tokens + cfg.vision.num_soft_tokens, cfg.llm.width)
  changed = np.asarray(encode(model, dict(batch, frames=255 - batch['frames'])))
  per_token = np.abs(changed - soft).max(axis=(0, 2))
  assert (per_token > 1e-4).all()


def test_soft_position_count_mismatch_is_an_error(mer_projector):
  model, batch = mer_projector
  with pytest.raises(ValueError, match='soft_positions has 3 slots'):
    jax.eval_shape(lambda b: model(b), dict(batch, soft_positions=batch['soft_positions'][:, :3]))


def test_dropout_is_active_iff_rngs_and_keyed(mer_projector, forward):
  model, batch = mer_projector
  assert model.llm.layers.blocks.drop.rate == pytest.approx(0.1)
  plain = forward(model, batch)
  first = forward(model, batch, jax.random.key(1))
  again = forward(model, batch, jax.random.key(1))
  other = forward(model, batch, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))
  np.testing.assert_array_equal(np.asarray(first[1]), np.asarray(again[1]))
  assert np.abs(np.asarray(first[0] - plain[0])).max() > 1e-3
  assert np.abs(np.asarray(first[0] - other[0])).max() > 1e-3
  assert not jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))


def test_llm_is_causal(llm_forward):
  cfg = tiny_config()
  model = filled(lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(0)))
  tokens = make_batch(cfg)['tokens']
  logits, _ = llm_forward(model, tokens)
  logits2, _ = llm_forward(model, tokens.at[:, 10].set(VOCAB - 1))
  diff = np.abs(np.asarray(logits2 - logits)).max(axis=(0, 2))
  np.testing.assert_array_equal(diff[:10], 0.0)
  assert (diff[10:] > 1e-5).all()


def test_gqa_matches_mha_with_repeated_kv_heads(llm_forward):
  cfg = tiny_config()
  assert cfg.llm.kv_heads < cfg.llm.heads
  gqa = filled(lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(0)))
  mha_cfg = ml_collections.ConfigDict(cfg.llm.to_dict())
  mha_cfg.kv_heads = cfg.llm.heads
  graphdef, state = nnx.split(nnx.eval_shape(lambda: LLM(mha_cfg, VOCAB, rngs=nnx.Rngs(0))))
  groups = cfg.llm.heads // cfg.llm.kv_heads
  repeated = jax.tree.map(
    lambda a, target: jnp.repeat(a, groups, axis=2) if a.shape != target.shape else a,
    nnx.state(gqa), state)
  mha = nnx.merge(graphdef, repeated)
  assert mha.layers.blocks.attn.k.kernel.shape[2] == cfg.llm.heads
  assert gqa.layers.blocks.attn.k.kernel.shape[2] == cfg.llm.kv_heads
  tokens = make_batch(cfg)['tokens']
  np.testing.assert_allclose(np.asarray(llm_forward(gqa, tokens)[0]),
                             np.asarray(llm_forward(mha, tokens)[0]), atol=1e-5)


def test_tied_embeddings_share_the_table(llm_forward):
  cfg = tiny_config()
  cfg.llm.tie_embeddings = True
  model = filled(lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(0)))
  untied = nnx.eval_shape(lambda: LLM(tiny_config().llm, VOCAB, rngs=nnx.Rngs(0)))
  assert not any(path.startswith('lm_head') for path in params_of(model))
  assert (sum(p.size for p in params_of(untied).values())
          - sum(p.size for p in params_of(model).values())) == VOCAB * cfg.llm.width
  logits, hidden = llm_forward(model, make_batch(cfg)['tokens'])
  np.testing.assert_allclose(np.asarray(logits), np.asarray(hidden @ model.embed.embedding[...].T),
                             rtol=1e-5, atol=1e-5)


def test_qkv_bias_adds_bias_params_only_on_qkv():
  cfg = tiny_config()
  cfg.llm.qkv_bias = True
  names = params_of(nnx.eval_shape(lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(0))))
  biases = sorted(n for n in names if n.endswith('bias'))
  assert biases == [f'layers/blocks/attn/{p}/bias' for p in 'kqv']


@pytest.mark.parametrize('fusion', ['projector', 'qformer'])
def test_every_param_has_logical_axes(fusion):
  cfg = tiny_config(fusion=fusion)
  model = nnx.eval_shape(lambda: MERModel(cfg, VOCAB, rngs=nnx.Rngs(0)))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat_specs = dict(nnx.to_flat_state(specs))
  scanned = 0
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    spec = tuple(flat_specs[path].get_value())
    name = '/'.join(map(str, path))
    assert len(spec) == param.ndim, name
    assert all(axis in layers.LOGICAL_AXES for axis in spec), (name, spec)
    assert len(set(spec)) == len(spec), (name, spec)
    if 'blocks' in path:
      scanned += 1
      assert spec[0] == 'layers', (name, spec)
      assert param.shape[0] == 1
    else:
      assert 'layers' not in spec, (name, spec)
  assert scanned > 30


def test_real_init_splits_layers_and_keeps_no_rng_state():
  cfg = tiny_config()
  cfg.llm.layers = 2
  make = lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(params=0))
  state = jax.jit(lambda: nnx.state(make()), compiler_options=FAST_COMPILE)()
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(make)), state)
  q = np.asarray(model.layers.blocks.attn.q.kernel[...])
  assert q.shape == (2, cfg.llm.width, cfg.llm.heads, cfg.llm.width // cfg.llm.heads)
  assert np.abs(q[0] - q[1]).max() > 0.1
  assert q.std() == pytest.approx(1.0 / math.sqrt(cfg.llm.width), rel=0.2)
  np.testing.assert_array_equal(np.asarray(model.layers.blocks.attn_norm.scale[...]), 1.0)
  assert np.asarray(model.embed.embedding[...]).std() == pytest.approx(0.02, rel=0.2)
  assert not jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))


def test_bfloat16_compute_keeps_float32_params_and_outputs(llm_forward):
  cfg = tiny_config()
  model = filled(lambda: LLM(cfg.llm, VOCAB, dtype='bfloat16', rngs=nnx.Rngs(0)))
  reference = filled(lambda: LLM(cfg.llm, VOCAB, rngs=nnx.Rngs(0)))
  tokens = make_batch(cfg)['tokens']
  logits, hidden = llm_forward(model, tokens)
  assert model.embed.embedding[...].dtype == jnp.float32
  assert (logits.dtype, hidden.dtype) == (jnp.float32, jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(llm_forward(reference, tokens)[0]),
                             atol=0.1)


def test_remat_policies_give_same_loss_and_grads():
  results = {}
  for remat in ('none', 'full', 'dots'):
    cfg = tiny_config(modalities=('text',), remat=remat)
    cfg.llm.layers = 2
    model = filled(lambda: MERModel(cfg, VOCAB, rngs=nnx.Rngs(0)))
    batch = make_batch(cfg)

    def loss_fn(model):
      logits, valence = model(batch, rngs=nnx.Rngs(dropout=jax.random.key(0)))
      logp = jax.nn.log_softmax(logits[:, :-1])
      nll = -jnp.take_along_axis(logp, batch['tokens'][:, 1:, None], axis=-1).mean()
      return nll + jnp.mean(valence ** 2)

    results[remat] = fast_jit(nnx.value_and_grad(loss_fn))(model)
  loss, grads = results['none']
  assert np.isfinite(float(loss))
  for remat in ('full', 'dots'):
    assert float(results[remat][0]) == pytest.approx(float(loss), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
                 grads, results[remat][1])
  assert float(jnp.abs(grads['llm']['layers']['blocks']['attn']['q']['kernel'][...]).max()) > 0


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match="unknown remat 'some'"):
    nnx.eval_shape(lambda: MERModel(tiny_config(remat='some'), VOCAB, rngs=nnx.Rngs(0)))
