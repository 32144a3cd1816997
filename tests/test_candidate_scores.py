"""Evaluation encodes once per batch: its label scores and answers equal one full forward pass per candidate."""

import jax
import numpy as np

from configs import demo
from mer_jax.data import pipeline
from mer_jax.eval.evaluate import Predictor
from mer_jax.eval.generate import jit_generate
from mer_jax.train.experiment import Experiment
from mer_jax.train.step import answer_token_log_probs


def with_answer(batch: dict[str, np.ndarray], answer: list[int], pad_id: int) -> dict[str, np.ndarray]:
  """The batch with every example's answer replaced by `answer` (tokens and loss mask), cut at the sequence end."""
  tokens, loss_mask = batch['tokens'].copy(), np.zeros_like(batch['loss_mask'])
  positions = np.arange(tokens.shape[1])[None, :]
  start = batch['answer_start'][:, None]
  tokens[positions >= start] = pad_id
  for offset, token in enumerate(answer):
    at = positions == start + offset
    tokens[at], loss_mask[at] = token, 1.0
  return {**batch, 'tokens': tokens, 'loss_mask': loss_mask}


def test_encode_once_scores_equal_per_candidate_forward(prepared_tiny):
  config = demo.get_config('variant=tiny')
  config.data.dir = prepared_tiny
  experiment = Experiment(config)
  params = experiment.init_state()['params']
  batch, _ = next(pipeline.eval_batches(config, experiment.info, 'test', config.eval.batch_size))
  # One example's answer starts one position before the end: only its candidates' first token is scored.
  batch['answer_start'][0] = batch['tokens'].shape[1] - 1
  out = Predictor(experiment, params).predict(batch)

  pad_id = experiment.builder.tokenizer.pad_id
  expected, valence = [], None
  for answer in experiment.builder.answers:
    assert len(answer) > 1
    candidate = experiment.global_batch(with_answer(batch, answer, pad_id))
    logits, valence = experiment.forward(params, candidate)
    total, count = answer_token_log_probs(logits, candidate['tokens'], candidate['loss_mask'])
    expected.append(np.asarray(total / count))
  expected = np.stack(expected, axis=1)
  assert out['scores'].shape == (config.eval.batch_size, len(experiment.labels))
  np.testing.assert_allclose(out['scores'], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['valence'], valence, rtol=1e-5, atol=1e-6)
  assert len(set(np.round(out['scores'][1], 4))) > 1  # the candidates differ

  generate = experiment.on_mesh(jit_generate(experiment.parts.graphdef, max_new_tokens=config.eval.max_new_tokens,
                                             stop_ids=(experiment.builder.tokenizer.eos_id,), pad_id=pad_id))
  tokens = generate((params, experiment.parts.rest), experiment.global_batch(batch))['tokens']
  np.testing.assert_array_equal(out['generated'], jax.device_get(tokens))
