"""mer-jax pseudo-label: a trained run labels a prepared split; the kept labels go to a CSV and a summary JSON."""

import json
import os
from typing import Any

import jax

from mer_jax.data import pipeline, pseudo_labels
from mer_jax.eval import pseudo
from mer_jax.eval.evaluate import Predictor
from mer_jax.train import run


def summary_path(out: str) -> str:
  """The summary JSON written beside the CSV `out`: labels.csv -> labels.summary.json."""
  return os.path.splitext(out)[0] + '.summary.json'


def check_split(data_config: Any, info: dict, split: str, hide_labels: bool) -> None:
  """Refuses a split the dataset lacks, and one that has labels unless they are to be hidden."""
  for name in pipeline.split_names(data_config.train_split if split == 'val' else split):
    if name not in info['splits']:
      raise ValueError(f'--split {split}: split {name!r} is not in {data_config.dir}; known splits: '
                       f'{sorted(info["splits"])}')
    entry = info['splits'][name]
    if entry['labelled'] and not hide_labels:
      raise ValueError(f"--split {split}: split {name!r} of {data_config.dir} has labels ({entry['labelled']} of "
                       f"{entry['count']} clips); pseudo-label an unlabelled split, or pass --hide_labels to label "
                       'it as if it had none (the summary then scores the hidden labels)')


def split_probabilities(workdir: str, data_dir: str, split: str) -> tuple[Any, list[str], Any, Any]:
  """A run's experiment, and the clip names, label probabilities and true labels it gives `split` of `data_dir`."""
  experiment, _, params = run.restore_run(workdir, data_dir, jax.devices())
  return (experiment, *pseudo.split_probabilities(Predictor(experiment, params), split))


def pseudo_label(workdir: str, split: str, out: str, threshold: float = 0.9, per_class: int | None = None,
                 agree: str | None = None, hide_labels: bool = False) -> dict[str, Any]:
  """Labels `split` of the run's dataset and writes `out` (id, label, confidence) and its summary JSON; returns it."""
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'--threshold={threshold} is not a probability in [0, 1]')
  if per_class is not None and per_class < 1:
    raise ValueError(f'--per_class={per_class} must be at least 1')
  config = run.load_config(workdir)
  check_split(config.data, pipeline.load_info(config.data.dir), split, hide_labels)
  experiment, names, probs, true = split_probabilities(workdir, config.data.dir, split)
  other = None
  if agree:
    other_experiment, _, other, _ = split_probabilities(agree, config.data.dir, split)
    if other_experiment.labels != experiment.labels:
      raise ValueError(f'--agree {agree} predicts the labels {other_experiment.labels}, '
                       f'{workdir} predicts {experiment.labels}')
  kept, labels, confidence = pseudo.select(probs, threshold, per_class, other)
  pseudo_labels.write_csv(out, [pseudo_labels.PseudoLabel(names[i], experiment.labels[label], float(c))
                                for i, label, c in zip(kept, labels, confidence)])
  summary = {'run': os.path.abspath(workdir), 'split': split, 'data': config.data.dir, 'threshold': threshold,
             'per_class_cap': per_class, 'agree': os.path.abspath(agree) if agree else None,
             **pseudo.summary(experiment.labels, labels, len(names), true, kept, probs, hide_labels)}
  with open(summary_path(out), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary
