"""Batched answer decoding under jit (KV-cache prefill + decode loop, or full recomputation; greedy or sampled)
and candidate-answer scoring from the same prefill."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

from mer_jax.models.layers import KVCache
from mer_jax.models.llm import LLM
from mer_jax.models.mer import MERModel


class Sampling(NamedTuple):
  """How each next token is chosen: greedy when temperature is 0, else sampled.

  Sampling divides the logits by `temperature`, keeps the `top_k` highest (0: all), then the
  smallest set of highest-probability tokens whose renormalised mass reaches `top_p` (1.0: all).
  The values are traced under jit, so changing them does not recompile.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self) -> None:
    """Fails on values out of range (call it on concrete values, outside jit)."""
    if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'need temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got {self}')


def sample_token(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """Chooses one token per row of logits [B, vocab] -> int32 [B]."""
  vocab = logits.shape[-1]

  def greedy() -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample() -> jax.Array:
    scaled = logits.astype(jnp.float32) / sampling.temperature
    ranked = jnp.sort(scaled, axis=-1)[:, ::-1]
    rank = jnp.arange(vocab)[None, :]
    in_top_k = rank < jnp.where(sampling.top_k > 0, sampling.top_k, vocab)
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)
    kept = in_top_k & (jnp.cumsum(probs, axis=-1) - probs < sampling.top_p)
    threshold = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

  return jax.lax.cond(sampling.temperature == 0, greedy, sample)


Advance = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def decode_loop(first_logits: jax.Array, advance: Advance, state: Any, key: jax.Array, sampling: Sampling, *,
                max_new_tokens: int, stop_ids: Sequence[int], pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Chooses up to max_new_tokens per example with a lax.while_loop -> (tokens [B, N], num_tokens [B]).

  advance(state, tokens [B], step) feeds each example's token chosen at `step` and returns the
  next logits [B, vocab] and state. An example stops after a token in stop_ids (kept in the
  output; pad follows); the loop ends early once every example has stopped.
  """
  batch_size = first_logits.shape[0]
  stop = jnp.asarray(list(stop_ids), jnp.int32)
  keys = jax.random.split(key, max_new_tokens)

  def choose(logits: jax.Array, step: jax.Array, done: jax.Array) -> tuple[jax.Array, jax.Array]:
    token = jnp.where(done, pad_id, sample_token(logits, keys[step], sampling))
    return token, done | jnp.isin(token, stop)

  first, done = choose(first_logits, jnp.int32(0), jnp.zeros([batch_size], bool))
  tokens = jnp.full([batch_size, max_new_tokens], pad_id, jnp.int32).at[:, 0].set(first)
  count = jnp.ones([batch_size], jnp.int32)

  def cond(carry: tuple) -> jax.Array:
    step, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry: tuple) -> tuple:
    step, tokens, count, done, state = carry
    logits, state = advance(state, tokens[:, step - 1], step - 1)
    count = count + (~done).astype(jnp.int32)
    token, done = choose(logits, step, done)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    return step + 1, tokens, count, done, state

  _, tokens, count, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), tokens, count, done, state))
  return tokens, count


def generate(model: MERModel, batch: dict[str, jax.Array], key: jax.Array, sampling: Sampling, *,
             max_new_tokens: int, stop_ids: Sequence[int], pad_id: int,
             use_cache: bool = True) -> dict[str, jax.Array]:
  """Decodes the answer after each prompt -> {'tokens' [B, N], 'num_tokens' [B], 'valence' [B]}.

  Example b's prompt is batch['tokens'][b, :answer_start[b]] with its soft tokens spliced in
  (right-padded batches of different prompt lengths decode together). With `use_cache` the prompts
  fill a KV cache in one pass and each step runs only the new token; without it every step reruns
  the LLM over the whole sequence (soft tokens are still encoded once). Call it under jit.
  """
  batch_size, length = batch['tokens'].shape
  start = batch['answer_start'].astype(jnp.int32)
  rows = jnp.arange(batch_size)
  # NNX modules cannot cross into the loop body's trace: the LLM's weights travel in the loop state.
  if use_cache:
    logits, valence, cache = model.prefill(batch, length + max_new_tokens)
    tokens, count = decode_cached(model.llm, logits, cache, key, sampling, max_new_tokens=max_new_tokens,
                                  stop_ids=stop_ids, pad_id=pad_id)
  else:
    graphdef, weights = nnx.split(model.llm)
    embeddings = jnp.pad(model.embed_inputs(batch), ((0, 0), (0, max_new_tokens), (0, 0)))
    _, hidden = model.llm.forward(embeddings)
    last = hidden[rows, start - 1]
    logits, valence = model.llm.logits(last[:, None])[:, 0], model.valence_head(last)
    state = (weights, embeddings)

    def advance(state: Any, token: jax.Array, step: jax.Array) -> tuple[jax.Array, Any]:
      weights, embeddings = state
      llm = nnx.merge(graphdef, weights)
      at = start + step
      embeddings = embeddings.at[rows, at].set(llm.embed_tokens(token[:, None])[:, 0])
      logits, _ = llm.forward(embeddings)
      return logits[rows, at], (weights, embeddings)

    tokens, count = decode_loop(logits, advance, state, key, sampling, max_new_tokens=max_new_tokens,
                                stop_ids=stop_ids, pad_id=pad_id)
  return {'tokens': tokens, 'num_tokens': count, 'valence': valence}


def decode_cached(llm: LLM, first_logits: jax.Array, cache: KVCache, key: jax.Array, sampling: Sampling, *,
                  max_new_tokens: int, stop_ids: Sequence[int], pad_id: int) -> tuple[jax.Array, jax.Array]:
  """decode_loop from a prefilled cache: each step runs only the new token -> (tokens [B, N], num_tokens [B])."""
  # NNX modules cannot cross into the loop body's trace: the LLM's weights travel in the loop state.
  graphdef, weights = nnx.split(llm)

  def advance(state: Any, token: jax.Array, step: jax.Array) -> tuple[jax.Array, Any]:
    weights, cache = state
    llm = nnx.merge(graphdef, weights)
    hidden, cache = llm.extend(llm.embed_tokens(token[:, None]), cache)
    return llm.logits(hidden)[:, 0], (weights, cache)

  return decode_loop(first_logits, advance, (weights, cache), key, sampling, max_new_tokens=max_new_tokens,
                     stop_ids=stop_ids, pad_id=pad_id)


def candidate_scores(llm: LLM, first_logits: jax.Array, cache: KVCache, answers: jax.Array,
                     answer_lengths: jax.Array, seq_len: int) -> jax.Array:
  """Mean log-likelihood [B, C] of each of C candidate answers after each of B prefilled prompts.

  first_logits [B, vocab] and `cache` come from one prefill (MERModel.prefill; cache.lengths are
  the answer starts). answers [C, A] holds the candidates' ids right-padded to A, answer_lengths
  [C] their lengths. Every (prompt, candidate) pair extends its copy of the cache in one batched
  pass, so the encoders and the prompt run once. Answer positions at or past `seq_len` are not
  scored, as a training batch of that length would have cut them off.
  """
  batch, num_candidates = first_logits.shape[0], answers.shape[0]
  answer_len = answers.shape[1]
  tiled = KVCache(jnp.repeat(cache.k, num_candidates, axis=1), jnp.repeat(cache.v, num_candidates, axis=1),
                  jnp.repeat(cache.lengths, num_candidates))
  tokens = jnp.tile(answers, (batch, 1))
  hidden, _ = llm.extend(llm.embed_tokens(tokens), tiled)
  logits = jnp.concatenate([jnp.repeat(first_logits, num_candidates, axis=0)[:, None],
                            llm.logits(hidden[:, :answer_len - 1])], axis=1)
  picked = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[..., None], axis=-1)[..., 0]
  offsets = jnp.arange(answer_len)[None, :]
  scored = (offsets < jnp.tile(answer_lengths, batch)[:, None]) & (tiled.lengths[:, None] + offsets < seq_len)
  scores = jnp.sum(jnp.where(scored, picked, 0.0), axis=-1) / jnp.sum(scored, axis=-1)
  return scores.reshape(batch, num_candidates)


def score_and_generate(model: MERModel, batch: dict[str, jax.Array], answers: jax.Array, answer_lengths: jax.Array,
                       *, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int) -> dict[str, jax.Array]:
  """One prefill per batch, then candidate_scores and greedy decoding from it.

  -> {'scores' [B, C], 'valence' [B], 'tokens' [B, N], 'num_tokens' [B]}; with max_new_tokens 0
  nothing is decoded and only 'scores' and 'valence' come back. Call it under jit.
  """
  length = batch['tokens'].shape[1]
  logits, valence, cache = model.prefill(batch, length + max(max_new_tokens, answers.shape[1]))
  out = {'scores': candidate_scores(model.llm, logits, cache, answers, answer_lengths, length), 'valence': valence}
  if max_new_tokens:
    out['tokens'], out['num_tokens'] = decode_cached(model.llm, logits, cache, jax.random.key(0), Sampling(),
                                                     max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
  return out


def jit_generate(graphdef: nnx.GraphDef, *, compiler_options: dict[str, Any] | None = None,
                 **options: Any) -> Callable[..., dict[str, jax.Array]]:
  """Jitted `generate` over a split model: fn(states, batch, key=None, sampling=Sampling()).

  The model is nnx.merge(graphdef, *states). `options` are generate's static keyword arguments
  (max_new_tokens, stop_ids, pad_id, use_cache); sampling values and the key are traced.
  """

  def run(states: tuple, batch: dict[str, jax.Array], key: jax.Array, sampling: Sampling) -> dict[str, jax.Array]:
    return generate(nnx.merge(graphdef, *states), batch, key, sampling, **options)

  compiled = jax.jit(run, compiler_options=compiler_options)

  def call(states: tuple, batch: dict[str, jax.Array], key: jax.Array | None = None,
           sampling: Sampling = Sampling()) -> dict[str, jax.Array]:
    sampling.validate()
    if key is None and sampling.temperature > 0:
      raise ValueError('sampling with temperature > 0 needs a key')
    key = jax.random.key(0) if key is None else key
    return compiled(states, batch, key, Sampling(float(sampling.temperature), int(sampling.top_k),
                                                 float(sampling.top_p)))

  return call
