"""Evaluation of a trained run on a split: label scoring, cached greedy generation, valence, and the report."""

import json
import os
from typing import Any

from flax import nnx
import jax
import numpy as np
import tqdm

from mer_jax.data import pipeline
from mer_jax.eval import cues, metrics, report as report_lib
from mer_jax.eval.generate import score_and_generate
from mer_jax.eval.wheel import Wheels
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import Hook, validation_scalars


def padded_answers(answers: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Candidate answers right-padded into int32 [C, longest] with their lengths [C]."""
  longest = max(len(answer) for answer in answers)
  ids = np.full([len(answers), longest], pad_id, np.int32)
  for row, answer in enumerate(answers):
    ids[row, :len(answer)] = answer
  return ids, np.asarray([len(answer) for answer in answers], np.int32)


class Predictor:
  """Jitted scoring and generation for one experiment's parameters: one prefill per batch serves both."""

  def __init__(self, experiment: Experiment, params: Any):
    self.experiment = experiment
    self.params = params
    tokenizer = experiment.builder.tokenizer
    self.answers = padded_answers(experiment.builder.answers, tokenizer.pad_id)
    graphdef = experiment.parts.graphdef

    def predict(states: tuple, batch: dict, answers: jax.Array, lengths: jax.Array,
                max_new_tokens: int) -> dict[str, jax.Array]:
      return score_and_generate(nnx.merge(graphdef, *states), batch, answers, lengths,
                                max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)

    self.run = experiment.on_mesh(jax.jit(predict, static_argnums=(4,)))

  def _outputs(self, batch: dict[str, np.ndarray], max_new_tokens: int) -> dict[str, jax.Array]:
    """score_and_generate on a host batch with these parameters."""
    exp = self.experiment
    return self.run((self.params, exp.parts.rest), exp.global_batch(batch), *self.answers, max_new_tokens)

  def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Label scores [B, C] (mean answer log-likelihood), valence [B], generated tokens [B, T]."""
    out = self._outputs(batch, self.experiment.config.eval.max_new_tokens)
    return {'scores': np.asarray(out['scores']), 'valence': np.asarray(out['valence']),
            'generated': np.asarray(out['tokens'])}

  def label_scores(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Label scores [B, C] (each label answer's mean log-likelihood) and valence [B], without decoding."""
    out = self._outputs(batch, 0)
    return np.asarray(out['scores']), np.asarray(out['valence'])


def answer_length(generated: list[int], eos_id: int) -> int:
  """Tokens of a generated answer before its first EOS (all of them when it has none)."""
  return generated.index(eos_id) if eos_id in generated else len(generated)


def predict_split(predictor: Predictor, split: str, progress: bool = True, drop: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
  """Predictions for every example of `split`, in order, with the clip names, open-vocabulary references and
  (for a model that explains, data.explanations) reference reasons; the split is read once. Modalities in
  `drop` are removed from every example (see pipeline.eval_batches)."""
  exp = predictor.experiment
  config = exp.config
  parts: dict[str, list] = {'true': [], 'scored': [], 'generated': [], 'texts': [], 'label_texts': [],
                            'explanations': [], 'valence_true': [], 'valence_pred': [], 'names': [],
                            'reasons': [], 'opensets': [], 'answer_tokens': []}
  unknown = [m for m in drop if m not in config.model.modalities]
  if unknown:
    raise ValueError(f'cannot drop {unknown[0]!r}: the model reads {tuple(config.model.modalities)}')
  batches = pipeline.eval_batches(config, exp.info, split, config.eval.batch_size, exp.builder, drop)
  for batch, fields in tqdm.tqdm(batches, desc=f'evaluate {split}', disable=not progress, unit='batch'):
    valid = len(fields)
    out = predictor.predict(batch)
    parts['true'].extend(batch['label'][:valid])
    parts['scored'].extend(metrics.scored_labels(out['scores'][:valid]))
    parts['valence_true'].extend(batch['valence'][:valid])
    parts['valence_pred'].extend(out['valence'][:valid])
    parts['names'].extend(f['name'] for f in fields)
    parts['reasons'].extend(f['reason'] for f in fields)
    parts['opensets'].extend(tuple(f['openset']) for f in fields)
    for tokens in out['generated'][:valid]:
      label = exp.builder.parse_label(tokens.tolist())
      parts['generated'].append(metrics.INVALID if label is None else exp.labels.index(label))
      parts['texts'].append(exp.builder.answer_text(tokens.tolist()))
      parts['answer_tokens'].append(answer_length(tokens.tolist(), exp.builder.tokenizer.eos_id))
      label_text, explanation = exp.builder.label_and_explanation(tokens.tolist())
      parts['label_texts'].append(label_text)
      parts['explanations'].append(explanation)
  if not exp.builder.explanations:
    del parts['reasons']
  opensets = np.empty(len(parts['opensets']), object)
  opensets[:] = parts.pop('opensets')
  return {**{k: np.asarray(v) for k, v in parts.items()}, 'opensets': opensets}


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


def open_vocabulary_report(true: np.ndarray, label_texts: np.ndarray, labels: list[str],
                           wheels: Wheels | None = None, opensets: np.ndarray | None = None) -> dict[str, Any] | None:
  """Open-vocabulary scores and hit rate of the generated answers' emotion words (metrics.score_open_vocabulary).

  Each clip's reference is its open-vocabulary set when the dataset gives one (`opensets`), else
  the set of its one label; clips with neither are left out (None when no clip has a reference).
  A generated answer's set is the words of its label
  text (metrics.split_labels: 'happy, surprised' is two), whether or not they are closed-set labels.
  Without `wheels` the default grouping file decides each word's group ('gloomy' is in 'sad'; an
  unlisted word is its own group and matches nothing); with them, the five emotion wheels do, as
  the MER2025 OV track scores (an unlisted word is dropped). An empty answer is the empty set (P = 0).
  """
  if opensets is None:
    opensets = [()] * len(true)
  pairs = [(list(words) if words else [labels[label]], metrics.split_labels(str(text)))
           for label, text, words in zip(true, label_texts, opensets) if words or label >= 0]
  if not pairs:
    return None
  return metrics.score_open_vocabulary([r for r, _ in pairs], [p for _, p in pairs], wheels)


def generated_samples(predictions: dict[str, np.ndarray], labels: list[str], count: int = 10) -> list[dict[str, str]]:
  """The first `count` examples' clip name, true label ('' when unlabelled) and generated answer."""
  rows = zip(predictions['names'][:count], predictions['true'][:count], predictions['texts'][:count])
  return [{'name': str(name), 'label': labels[true] if true >= 0 else '', 'generated': str(text)}
          for name, true, text in rows]


def valence_report(true: np.ndarray, pred: np.ndarray, train_mean: float) -> dict[str, float] | None:
  """MSE, CCC and the train-mean predictor's MSE over the clips that have a valence; None when none has."""
  known = np.isfinite(true)
  if not known.any():
    return None
  true, pred = true[known], pred[known]
  return {'mse': metrics.mse(true, pred), 'ccc': metrics.ccc(true, pred), 'count': int(known.sum()),
          'mean_predictor_mse': metrics.mse(true, np.full(len(true), train_mean)), 'train_mean': train_mean}


def build_report(predictions: dict[str, np.ndarray], labels: list[str], train_valence_mean: float,
                 split: str, wheels: Wheels | None = None) -> dict[str, Any]:
  """The report: scored (headline) and generated classification, valence, open vocabulary, explanations, samples.

  Each classification also carries the MER2023 combined score, its WAF - 0.25 * valence MSE; the
  generated one the mean answer length in tokens before EOS ('answer_tokens'). Invalid answers count as wrong.
  'explanations' (token F1 and cue accuracy, see eval/cues.py) is None unless `predictions` holds
  reference reasons (a model trained with data.explanations) and some are non-empty.
  """
  valence = valence_report(predictions['valence_true'], predictions['valence_pred'], train_valence_mean)
  labelled = predictions['true'] >= 0
  kinds = {kind: (classification_report(predictions['true'][labelled], predictions[kind][labelled], labels)
                  if labelled.any() else None) for kind in ('scored', 'generated')}
  for report in kinds.values():
    if report is not None and valence is not None:
      report['mer2023_score'] = metrics.mer2023_score(report['waf'], valence['mse'])
  if kinds['generated'] is not None and 'answer_tokens' in predictions:
    kinds['generated']['answer_tokens'] = float(np.mean(predictions['answer_tokens'][labelled]))
  return {
      'split': split,
      'count': int(len(predictions['true'])),
      'labels': labels,
      **kinds,
      'labelled': int(labelled.sum()),
      'valence': valence,
      'open_vocabulary': open_vocabulary_report(predictions['true'], predictions['label_texts'], labels, wheels,
                                                predictions.get('opensets')),
      'explanations': (cues.explanation_scores(predictions['reasons'].tolist(), predictions['explanations'].tolist())
                       if 'reasons' in predictions else None),
      'generated_samples': generated_samples(predictions, labels),
  }


def evaluate(experiment: Experiment, params: Any, split: str, out_dir: str | None = None,
             progress: bool = True, wheels: Wheels | None = None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
  """Evaluates `params` on `split`; writes report.json, report.md and the confusion PNG to `out_dir`.

  `wheels` (eval/wheel.py) scores the open-vocabulary answers as the MER2025 OV track does; None
  uses the default grouping file. Modalities in `drop` are missing from every example.
  """
  predictions = predict_split(Predictor(experiment, params), split, progress, drop)
  report = build_report(predictions, experiment.labels, experiment.train_valence_mean, split, wheels)
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'report_{split}.json'), 'w') as f:
      json.dump(report, f, indent=2)
    report_lib.write_markdown(report, os.path.join(out_dir, f'report_{split}.md'))
    report_lib.plot_confusion(report, os.path.join(out_dir, f'confusion_{split}.png'))
  return report


class Validation:
  """Periodic validation as trainer hooks: one Predictor compiled once per run, given each step's params."""

  def __init__(self, every: int, split: str = 'val'):
    self.every = every
    self.split = split
    self.report: dict[str, Any] = {}

  def hooks(self, experiment: Experiment) -> list[Hook]:
    """The validation hook for `experiment`; none when validation is off or the job has several processes."""
    if not self.every or experiment.config.data.val_fraction <= 0:
      return []
    if jax.process_count() > 1:
      print('periodic validation runs in single-process jobs only; evaluate checkpoints with `mer-jax evaluate`')
      return []
    predictor = Predictor(experiment, None)

    def validate(step: int, state: dict) -> dict[str, float]:
      predictor.params = state['params']
      self.report = build_report(predict_split(predictor, self.split, progress=False), experiment.labels,
                                 experiment.train_valence_mean, self.split)
      valence = self.report['valence']
      valence_text = f"valence MSE {valence['mse']:.4f}" if valence else 'no valence'
      print(f"  {self.split}  WAF {self.report['scored']['waf']:.4f}  ACC {self.report['scored']['accuracy']:.4f}  "
            f"{valence_text}", flush=True)
      return validation_scalars(self.report)

    return [Hook(self.every, validate)]
