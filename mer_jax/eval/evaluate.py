"""Evaluation of a trained run on a split: label scoring, cached greedy generation, valence, and the report."""

import json
import os
from typing import Any

import jax
import numpy as np
import tqdm

from mer_jax.data import pipeline
from mer_jax.eval import cues, metrics, report as report_lib
from mer_jax.eval.generate import jit_generate
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
    tokenizer = experiment.builder.tokenizer
    self.generate = jit_generate(experiment.parts.graphdef, max_new_tokens=experiment.config.eval.max_new_tokens,
                                 stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)

  def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Label scores [B, C] (mean answer log-likelihood), valence [B], generated tokens [B, T]."""
    exp = self.experiment
    pad_id = exp.builder.tokenizer.pad_id
    scores, valence = [], None
    for answer in exp.builder.answers:
      candidate = exp.global_batch(with_answer(batch, answer, pad_id))
      score, valence = self.score(self.params, candidate)
      scores.append(np.asarray(score))
    generated = self.generate((self.params, exp.parts.rest), exp.global_batch(batch))['tokens']
    return {'scores': np.stack(scores, axis=1), 'valence': np.asarray(valence),
            'generated': np.asarray(generated)}


def reference_fields(config: Any, info: dict, split: str, explanations: bool) -> dict[str, np.ndarray]:
  """The split's clip names and, for a model that explains (data.explanations), its reference reasons, in order."""
  fields = pipeline.split_fields(config, info, split)
  out = {'names': np.asarray([f['name'] for f in fields])}
  if explanations:
    out['reasons'] = np.asarray([f.get('reason', '') for f in fields])
  return out


def predict_split(predictor: Predictor, split: str, progress: bool = True) -> dict[str, Any]:
  """Predictions for every example of `split`, in order, with the clip names (and reasons, see reference_fields)."""
  exp = predictor.experiment
  config = exp.config
  parts: dict[str, list] = {'true': [], 'scored': [], 'generated': [], 'texts': [], 'label_texts': [],
                            'explanations': [], 'valence_true': [], 'valence_pred': []}
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
      label_text, explanation = exp.builder.label_and_explanation(tokens.tolist())
      parts['label_texts'].append(label_text)
      parts['explanations'].append(explanation)
  predictions = {k: np.asarray(v) for k, v in parts.items()}
  return {**predictions, **reference_fields(config, exp.info, split, exp.builder.explanations)}


def classification_report(true: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
  """ACC (= WAR), WAF, macro F1, UAR, per-class scores, invalid count and confusion matrix of one prediction kind."""
  per_class = metrics.per_class_scores(true, pred, len(labels))
  return {
      'accuracy': metrics.accuracy(true, pred),
      'waf': metrics.weighted_f1(true, pred, len(labels)),
      'macro_f1': metrics.macro_f1(true, pred, len(labels)),
      'uar': metrics.uar(true, pred, len(labels)),
      'war': metrics.war(true, pred),
      'invalid': int(np.sum(pred == metrics.INVALID)),
      'per_class': {label: {k: float(v[i]) for k, v in per_class.items()} for i, label in enumerate(labels)},
      'confusion': metrics.confusion_matrix(true, pred, len(labels)).tolist(),
  }


def open_vocabulary_report(true: np.ndarray, label_texts: np.ndarray, labels: list[str]) -> dict[str, float]:
  """Set precision, recall, F and hit rate of the generated answers' emotion words under the default grouping file.

  Each reference is the set of its one label. A generated answer's set is the words of its label
  text (metrics.split_labels: 'happy, surprised' is two), whether or not they are closed-set labels:
  the grouping file, not a fallback, decides which group each word is in ('gloomy' is in 'sad';
  an unlisted word is its own group and matches nothing). An empty answer is the empty set (P = 0).
  """
  grouping = metrics.EmotionGrouping.load()
  true_labels = [labels[i] for i in true]
  pred_sets = [metrics.split_labels(str(text)) for text in label_texts]
  return {**metrics.set_scores([[label] for label in true_labels], pred_sets, grouping),
          'hit_rate': metrics.hit_rate(true_labels, pred_sets, grouping)}


def generated_samples(predictions: dict[str, np.ndarray], labels: list[str], count: int = 10) -> list[dict[str, str]]:
  """The first `count` examples' clip name, true label and generated answer."""
  rows = zip(predictions['names'][:count], predictions['true'][:count], predictions['texts'][:count])
  return [{'name': str(name), 'label': labels[true], 'generated': str(text)} for name, true, text in rows]


def build_report(predictions: dict[str, np.ndarray], labels: list[str], train_valence_mean: float,
                 split: str) -> dict[str, Any]:
  """The report: scored (headline) and generated classification, valence, open vocabulary, explanations, samples.

  Each classification also carries the MER2023 combined score, its WAF - 0.25 * valence MSE.
  'explanations' (token F1 and cue accuracy, see eval/cues.py) is None unless `predictions` holds
  reference reasons (a model trained with data.explanations) and some are non-empty.
  """
  valence_mse = metrics.mse(predictions['valence_true'], predictions['valence_pred'])
  kinds = {kind: classification_report(predictions['true'], predictions[kind], labels)
           for kind in ('scored', 'generated')}
  for report in kinds.values():
    report['mer2023_score'] = metrics.mer2023_score(report['waf'], valence_mse)
  return {
      'split': split,
      'count': int(len(predictions['true'])),
      'labels': labels,
      **kinds,
      'valence': {
          'mse': valence_mse,
          'ccc': metrics.ccc(predictions['valence_true'], predictions['valence_pred']),
          'mean_predictor_mse': metrics.mse(predictions['valence_true'],
                                            np.full(len(predictions['valence_true']), train_valence_mean)),
          'train_mean': train_valence_mean,
      },
      'open_vocabulary': open_vocabulary_report(predictions['true'], predictions['label_texts'], labels),
      'explanations': (cues.explanation_scores(predictions['reasons'].tolist(), predictions['explanations'].tolist())
                       if 'reasons' in predictions else None),
      'generated_samples': generated_samples(predictions, labels),
  }


def evaluate(experiment: Experiment, params: Any, split: str, out_dir: str | None = None,
             progress: bool = True) -> dict[str, Any]:
  """Evaluates `params` on `split`; writes report.json, report.md and the confusion PNG to `out_dir`."""
  predictions = predict_split(Predictor(experiment, params), split, progress)
  report = build_report(predictions, experiment.labels, experiment.train_valence_mean, split)
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'report_{split}.json'), 'w') as f:
      json.dump(report, f, indent=2)
    report_lib.write_markdown(report, os.path.join(out_dir, f'report_{split}.md'))
    report_lib.plot_confusion(report, os.path.join(out_dir, f'confusion_{split}.png'))
  return report
