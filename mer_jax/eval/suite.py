"""One run evaluated on several prepared datasets, one table across them (as MER-UniBench reports it)."""

import dataclasses
import json
import os
from typing import Any

from ml_collections import ConfigDict

from mer_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
  """One dataset of a suite: a name for the table, a prepared dataset directory and a split expression."""

  name: str
  data_dir: str
  split: str


def read_suite(path: str) -> list[SuiteEntry]:
  """A suite file: a JSON list of {"name", "data", "split"}; relative data paths are relative to the file."""
  path = os.path.abspath(path)
  try:
    with open(path) as f:
      items = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(items, list) or not items:
    raise ValueError(f'{path}: expected a non-empty JSON list of {{"name", "data", "split"}} objects')
  entries = []
  for index, item in enumerate(items):
    missing = [key for key in ('data', 'split') if not isinstance(item, dict) or not item.get(key)]
    if missing:
      raise ValueError(f'{path}: entry {index} lacks {missing}; each entry needs "data" and "split" ("name" optional)')
    data_dir = os.path.join(os.path.dirname(path), item['data'])
    if not os.path.isdir(data_dir):
      raise ValueError(f'{path}: entry {index}: prepared dataset {os.path.abspath(data_dir)} does not exist')
    entries.append(SuiteEntry(item.get('name') or os.path.basename(os.path.normpath(data_dir)),
                              os.path.abspath(data_dir), item['split']))
  names = [entry.name for entry in entries]
  if len(set(names)) != len(names):
    raise ValueError(f'{path}: entry names must differ; got {names}')
  return entries


def config_on(config: ConfigDict, data_dir: str) -> ConfigDict:
  """A run's config pointed at another prepared dataset; the run's own tokenizer stays, the mixture goes."""
  moved = ConfigDict(config.to_dict())
  moved.data.tokenizer = os.path.abspath(pipeline.tokenizer_path(config))
  moved.data.dir = os.path.abspath(data_dir)
  if 'mixture' in moved.data:
    moved.data.mixture = ''
  return moved


def headline(report: dict[str, Any], info: dict, split: str) -> tuple[str, float]:
  """A dataset's metric: closed-set WAF (scored); for a split with open-vocabulary references, their set F
  ('fscore', the mean over levels and wheels, with --wheels; 'f1' under the grouping file)."""
  with_openset = sum(info['splits'][name].get('with_openset', 0) for name in pipeline.split_names(split))
  if with_openset or report['scored'] is None:
    scores = report['open_vocabulary']
    key = 'fscore' if 'fscore' in scores else 'f1'
    return f'open-vocabulary {key}', float(scores[key])
  return 'waf', float(report['scored']['waf'])


def suite_rows(results: list[tuple[SuiteEntry, dict, dict]]) -> list[dict[str, Any]]:
  """One row per (entry, report, dataset info): name, split, clips, metric, value, WAF and ACC (scored)."""
  rows = []
  for entry, report, info in results:
    metric, value = headline(report, info, entry.split)
    scored = report['scored'] or {}
    rows.append({'name': entry.name, 'data': entry.data_dir, 'split': entry.split, 'count': report['count'],
                 'metric': metric, 'value': value, 'waf': scored.get('waf'), 'accuracy': scored.get('accuracy')})
  return rows


def suite_table(rows: list[dict[str, Any]]) -> str:
  """The suite as markdown: one line per dataset, then the mean of their metrics."""
  def cell(value: float | None) -> str:
    return '' if value is None else f'{value:.4f}'

  lines = ['| dataset | split | n | metric | value | WAF | ACC |', '|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append(f"| {row['name']} | {row['split']} | {row['count']} | {row['metric']} | {cell(row['value'])} | "
                 f"{cell(row['waf'])} | {cell(row['accuracy'])} |")
  mean = sum(row['value'] for row in rows) / len(rows)
  lines.append(f'| mean | | | | {mean:.4f} | | |')
  return '\n'.join(lines)


def write_suite(rows: list[dict[str, Any]], out_dir: str) -> str:
  """Writes suite.json and suite.md to `out_dir`; returns the markdown table."""
  os.makedirs(out_dir, exist_ok=True)
  table = suite_table(rows)
  mean = sum(row['value'] for row in rows) / len(rows)
  with open(os.path.join(out_dir, 'suite.json'), 'w') as f:
    json.dump({'rows': rows, 'mean': mean}, f, indent=2)
  with open(os.path.join(out_dir, 'suite.md'), 'w') as f:
    f.write(table + '\n')
  return table


def evaluate_suite(config: ConfigDict, params: Any, entries: list[SuiteEntry], out_dir: str,
                   wheels: Any = None) -> str:
  """Evaluates `params` of a run on every entry (reports in out_dir/<name>/), writes the suite table; returns it."""
  from mer_jax.eval.evaluate import evaluate
  from mer_jax.train.experiment import Experiment
  results = []
  for entry in entries:
    experiment = Experiment(config_on(config, entry.data_dir))
    report = evaluate(experiment, params, entry.split, os.path.join(out_dir, entry.name), wheels=wheels)
    results.append((entry, report, experiment.info))
  return write_suite(suite_rows(results), out_dir)


def data_name(data_dir: str) -> str:
  """A folder name for reports on a prepared dataset: its directory's last two components joined by '-'."""
  parent, base = os.path.split(os.path.normpath(os.path.abspath(data_dir)))
  return f'{os.path.basename(parent)}-{base}' if parent else base
