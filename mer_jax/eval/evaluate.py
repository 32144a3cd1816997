"""Evaluation of a trained run on a split: label scoring, greedy generation, valence, and the report."""

import json
import os
from typing import Any

import jax
import numpy as np
import tqdm

from mer_jax.data import pipeline
from mer_jax.eval import metrics, report as report_lib
from mer_jax.eval.generate import greedy_answers
from mer_jax.train.experiment import Experiment
from mer_jax.train.step import answer_token_log_probs


def with_answer(batch: dict[str, np.ndarray], answer: list[int], pad_id: int) -> dict[str, np.ndarray]:
  """The batch with every example's answer replaced by `answer` (tokens and loss mask)."""
  tokens = batch['tokens'].copy()
  loss_mask = np.zeros_like(batch['loss_mask'])
  positions = np.arange(tokens.shape[1])[None, :]
  start = batch['answer_start'][:, None]
  tokens[positions >= start] = pad_id
  for offset, token in enumerate(answer):
    at = (positions == start + offset)
    tokens[at] = token
    loss_mask[at] = 1.0
  return {**batch, 'tokens': tokens, 'loss_mask': loss_mask}


class Predictor:
  """Jitted scoring and generation for one experiment's parameters."""

  def __init__(self, experiment: Experiment, params: Any):
    self.experiment = experiment
    self.params = params
    forward = experiment.forward

    def score(params: Any, batch: dict) -> tuple[jax.Array, jax.Array]:
      logits, valence = forward(params, batch)
      total, count = answer_token_log_probs(logits, batch['tokens'], batch['loss_mask'])
      return total / count, valence

    self.score = jax.jit(score)
    max_new = experiment.config.eval.max_new_tokens
    pad_id = experiment.builder.tokenizer.pad_id
    self.generate = jax.jit(lambda params, batch: greedy_answers(forward, params, batch, max_new, pad_id))

  def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Label scores [B, C] (mean answer log-likelihood), valence [B], generated tokens [B, T]."""
    exp = self.experiment
    pad_id = exp.builder.tokenizer.pad_id
    scores, valence = [], None
    for answer in exp.builder.answers:
      candidate = exp.global_batch(with_answer(batch, answer, pad_id))
      score, valence = self.score(self.params, candidate)
      scores.append(np.asarray(score))
    generated = self.generate(self.params, exp.global_batch(batch))
    return {'scores': np.stack(scores, axis=1), 'valence': np.asarray(valence),
            'generated': np.asarray(generated)}


def predict_split(predictor: Predictor, split: str, progress: bool = True) -> dict[str, Any]:
  """Predictions for every example of `split`, in order."""
  exp = predictor.experiment
  config = exp.config
  parts: dict[str, list] = {'true': [], 'scored': [], 'generated': [], 'texts': [], 'valence_true': [],
                            'valence_pred': []}
  batches = pipeline.eval_batches(config, exp.info, split, config.eval.batch_size)
  for batch, valid in tqdm.tqdm(batches, desc=f'evaluate {split}', disable=not progress, unit='batch'):
    out = predictor.predict(batch)
    parts['true'].extend(batch['label'][:valid])
    parts['scored'].extend(np.argmax(out['scores'][:valid], axis=1))
    parts['valence_true'].extend(batch['valence'][:valid])
    parts['valence_pred'].extend(out['valence'][:valid])
    for tokens in out['generated'][:valid]:
      label = exp.builder.parse_label(tokens.tolist())
      parts['generated'].append(metrics.INVALID if label is None else exp.labels.index(label))
      parts['texts'].append(exp.builder.answer_text(tokens.tolist()))
  return {k: np.asarray(v) for k, v in parts.items()}


def classification_report(true: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
  """Accuracy, WAF, per-class scores, invalid count and the confusion matrix for one prediction kind."""
  per_class = metrics.per_class_scores(true, pred, len(labels))
  return {
      'accuracy': metrics.accuracy(true, pred),
      'waf': metrics.weighted_f1(true, pred, len(labels)),
      'invalid': int(np.sum(pred == metrics.INVALID)),
      'per_class': {label: {k: float(v[i]) for k, v in per_class.items()} for i, label in enumerate(labels)},
      'confusion': metrics.confusion_matrix(true, pred, len(labels)).tolist(),
  }


def build_report(predictions: dict[str, np.ndarray], labels: list[str], train_valence_mean: float,
                 split: str) -> dict[str, Any]:
  """The evaluation report: scored (headline) and generated classification, and valence MSE."""
  return {
      'split': split,
      'count': int(len(predictions['true'])),
      'labels': labels,
      'scored': classification_report(predictions['true'], predictions['scored'], labels),
      'generated': classification_report(predictions['true'], predictions['generated'], labels),
      'valence': {
          'mse': metrics.mse(predictions['valence_true'], predictions['valence_pred']),
          'mean_predictor_mse': metrics.mse(predictions['valence_true'],
                                            np.full(len(predictions['valence_true']), train_valence_mean)),
          'train_mean': train_valence_mean,
      },
      'generated_samples': predictions['texts'][:10].tolist(),
  }


def evaluate(experiment: Experiment, params: Any, split: str, out_dir: str | None = None,
             progress: bool = True) -> dict[str, Any]:
  """Evaluates `params` on `split`; writes report.json, report.md and the confusion PNG to `out_dir`."""
  predictions = predict_split(Predictor(experiment, params), split, progress)
  train_mean = experiment.info['splits'][experiment.config.data.train_split]['valence_mean']
  report = build_report(predictions, experiment.labels, float(train_mean), split)
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'report_{split}.json'), 'w') as f:
      json.dump(report, f, indent=2)
    report_lib.write_markdown(report, os.path.join(out_dir, f'report_{split}.md'))
    report_lib.plot_confusion(report, os.path.join(out_dir, f'confusion_{split}.png'))
  return report
