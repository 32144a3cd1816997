"""Human-readable views of an evaluation report: a markdown table and a confusion-matrix PNG."""

from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mer_jax.data.descriptions import CUE_KINDS  # noqa: E402
from mer_jax.eval import wheel  # noqa: E402


def _score(value: float | None) -> str:
  """A score with 4 decimals, or '-' when it is missing."""
  return '-' if value is None else f'{value:.4f}'


def _open_vocabulary_rows(report: dict[str, Any]) -> list[str]:
  """Open-vocabulary scores of the generated labels and the rule that grouped their words, when the report has them."""
  scores = report.get('open_vocabulary')
  if not scores:
    return []
  if scores['rule'] == wheel.RULE:
    header = [f'{level} {name}' for level in wheel.LEVELS for name in ('precision', 'recall', 'F')] + ['mean F']
    values = [scores[level][key] for level in wheel.LEVELS for key in ('precision', 'recall', 'fscore')]
    values.append(scores['fscore'])
  else:
    header = ['set precision', 'set recall', 'set F']
    values = [scores[key] for key in ('precision', 'recall', 'f1')]
  cells = ' | '.join(_score(value) for value in (*values, scores['hit_rate']))
  return ['', f"| open vocabulary (generated) | {' | '.join(header)} | hit rate | rule |",
          '|---|' + '---|' * (len(header) + 2), f"| {report['split']} | {cells} | {scores['rule']} |"]


def _explanation_rows(report: dict[str, Any]) -> list[str]:
  """Token F1 and cue accuracy of the generated explanations, when the report has them."""
  scores = report.get('explanations')
  if not scores:
    return []
  accuracy = scores['cue_accuracy'] or {}
  header = ' | '.join(f'cue {kind}' for kind in CUE_KINDS)
  cells = ' | '.join(_score(accuracy.get(kind)) for kind in (*CUE_KINDS, 'all'))
  return ['', f'| explanations | n | token F1 | {header} | all cues |', '|---|---|---|' + '---|' * (len(CUE_KINDS) + 1),
          f"| {report['split']} | {scores['count']} | {_score(scores['token_f1'])} | {cells} |"]


def summary_table(report: dict[str, Any]) -> str:
  """The headline numbers as markdown tables: prediction kinds, valence, then open vocabulary and explanations."""
  valence = report['valence']
  rows = ['| split | n | predictions | ACC (= WAR) | WAF | macro F1 | UAR | invalid | MER2023 score |',
          '|---|---|---|---|---|---|---|---|---|']
  for kind in ('scored', 'generated'):
    r = report[kind]
    if r is None:
      rows.append(f"| {report['split']} | {report['count']} | {kind} | no labelled clip | | | | | |")
      continue
    combined = f"{r['mer2023_score']:.4f}" if 'mer2023_score' in r else 'n/a'
    rows.append(f"| {report['split']} | {report.get('labelled', report['count'])} | {kind} | {r['accuracy']:.4f} | "
                f"{r['waf']:.4f} | {r['macro_f1']:.4f} | {r['uar']:.4f} | {r['invalid']} | {combined} |")
  rows += ['', '| valence MSE | valence CCC | mean-predictor MSE |', '|---|---|---|',
           f"| {valence['mse']:.4f} | {valence['ccc']:.4f} | {valence['mean_predictor_mse']:.4f} |"
           if valence else '| no valence in this split | | |']
  return '\n'.join(rows + _open_vocabulary_rows(report) + _explanation_rows(report))


def _sample_rows(report: dict[str, Any]) -> list[str]:
  """The report's sample answers as a markdown table."""
  rows = ['', '## Sample generated answers', '', '| clip | true label | generated |', '|---|---|---|']
  for sample in report['generated_samples']:
    generated = sample['generated'].replace('|', '\\|')
    rows.append(f"| {sample['name']} | {sample['label']} | {generated} |")
  return rows


def write_markdown(report: dict[str, Any], path: str) -> None:
  """Writes the summary tables, per-class scores (scored predictions) and sample answers as markdown."""
  lines = [f"# Evaluation on split `{report['split']}`", '', summary_table(report), '',
           'Scored: each label ranked by length-normalised answer log-likelihood (headline). '
           'Generated: greedy decoding; an answer that is no known label is invalid and counts as wrong. '
           'MER2023 score: WAF - 0.25 x valence MSE. '
           'Open vocabulary: set scores and hit rate of the emotion words each generated answer gives (closed-set '
           'label or not), grouped by the rule the table names: the grouping file (an unlisted word is its own '
           'group) or the MER2025 emotion wheels (an unlisted word is dropped; scores averaged over the five '
           'wheels, mean F over both levels); an empty answer is the empty set. '
           'Explanations: word-overlap F1 with the reference reason, and the share of clips whose explanation names '
           'the planted cue phrase of each kind (all cues: every kind right).',
           '', '| label | precision | recall | F1 | support |', '|---|---|---|---|---|']
  for label, scores in (report['scored'] or {'per_class': {}})['per_class'].items():
    lines.append(f"| {label} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
                 f"{int(scores['support'])} |")
  lines += _sample_rows(report)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def plot_confusion(report: dict[str, Any], path: str) -> None:
  """Saves the scored and generated confusion matrices side by side as a PNG (none for an unlabelled split)."""
  if report['scored'] is None:
    return
  labels = report['labels']
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for ax, kind in zip(axes, ('scored', 'generated')):
    matrix = np.asarray(report[kind]['confusion'])
    ax.imshow(matrix, cmap='Blues')
    columns = labels + ['invalid']
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha='right')
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(f"{kind}: WAF {report[kind]['waf']:.3f}")
    for (i, j), count in np.ndenumerate(matrix):
      ax.text(j, i, str(count), ha='center', va='center', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
