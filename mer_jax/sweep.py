"""Config sweeps: a config file's get_hyper(h) gives points of overrides; run them, print launches, tabulate."""

import csv
import itertools
import json
import math
import os
import re
import shlex
from typing import Any, Callable, Sequence

from ml_collections import ConfigDict

from mer_jax import config_check

Point = dict[str, Any]
METRICS_FILE = 'sweep_metrics.json'


class Hyper:
  """The `h` handed to get_hyper(h): each method returns a list of points, {'config.a.b': value, ...}."""

  @staticmethod
  def sweep(key: str, values: Sequence[Any]) -> list[Point]:
    """One point per value of `key`."""
    return [{key: value} for value in values]

  @staticmethod
  def product(sweeps: Sequence[list[Point]]) -> list[Point]:
    """Every combination of the sweeps' points; the first sweep varies slowest."""
    return [merge(combination) for combination in itertools.product(*sweeps)]

  @staticmethod
  def zip(sweeps: Sequence[list[Point]]) -> list[Point]:
    """The i-th points of all sweeps merged; the sweeps must have the same length."""
    lengths = sorted({len(s) for s in sweeps})
    if len(lengths) > 1:
      raise ValueError(f'h.zip needs sweeps of one length; got lengths {lengths}')
    return [merge(points) for points in zip(*sweeps)]

  @staticmethod
  def chain(sweeps: Sequence[list[Point]]) -> list[Point]:
    """The sweeps' points one after another."""
    return [point for s in sweeps for point in s]


def merge(points: Sequence[Point]) -> Point:
  """One point from several that set different keys."""
  merged: Point = {}
  for point in points:
    twice = sorted(merged.keys() & point.keys())
    if twice:
      raise ValueError(f'a sweep sets {", ".join(twice)} twice in one point')
    merged.update(point)
  return merged


def load_points(config_spec: str) -> list[Point]:
  """Calls get_hyper(Hyper()) of the config file named by 'path.py[:arg]'."""
  path = config_spec.partition(':')[0]
  module = config_check.load_module(path)
  if not hasattr(module, 'get_hyper'):
    raise ValueError(f'{path} defines no get_hyper(h)')
  points = list(module.get_hyper(Hyper()))
  if not points:
    raise ValueError(f'get_hyper in {path} returned no points')
  return points


def problems(config: ConfigDict, points: Sequence[Point]) -> list[str]:
  """Messages for override keys that are not 'config.<an existing key path>', then for values of the wrong type."""
  keys = sorted({key for point in points for key in point})
  unknown = [f"sweep key {key!r} does not start with 'config.'" for key in keys if not key.startswith('config.')]
  unknown += config_check.unknown_override_keys(config, [f'--{key}=' for key in keys if key.startswith('config.')])
  if unknown:
    return unknown
  wrong = []
  for point in points:
    try:
      apply(config, point)
    except ValueError as error:
      wrong.append(str(error))
  return wrong


def apply(config: ConfigDict, point: Point) -> ConfigDict:
  """A copy of `config` with the point's overrides set."""
  config = config.copy_and_resolve_references()
  for key, value in point.items():
    *parents, leaf = key.split('.')[1:]
    node = config
    for part in parents:
      node = node[part]
    try:
      node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
    except TypeError as error:
      raise ValueError(f'sweep key {key!r} = {value!r}: {error}') from error
  return config


def point_name(index: int, point: Point) -> str:
  """A directory name for a point, e.g. '01_learning_rate=0.003_kind=qformer'."""
  parts = [f'{key.rsplit(".", 1)[-1]}={value}' for key, value in point.items()]
  return re.sub(r'[^A-Za-z0-9._=-]', '-', '_'.join([f'{index:02d}', *parts]))


def override_text(value: Any) -> str:
  """A value as the command line's --config.key=VALUE writes it."""
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def launch_commands(config_spec: str, overrides: dict[str, Any], workdir: str,
                    points: Sequence[Point]) -> list[str]:
  """One `mer-jax train` command line per point, with the sweep's own overrides first."""
  lines = []
  for index, point in enumerate(points):
    flags = [f'--config.{key}={override_text(value)}' for key, value in overrides.items()]
    flags += [f'--{key}={override_text(value)}' for key, value in point.items()]
    args = ['mer-jax', 'train', '--config', config_spec, '--workdir',
            os.path.join(workdir, point_name(index, point)), *flags]
    lines.append(shlex.join(args))
  return lines


def final_metrics(report: dict[str, Any], point_dir: str) -> dict[str, float]:
  """The validation numbers of a finished point; a run already complete reuses those it saved."""
  from mer_jax.train.trainer import validation_scalars
  path = os.path.join(point_dir, METRICS_FILE)
  if report:
    metrics = validation_scalars(report)
    with open(path, 'w') as f:
      json.dump(metrics, f, indent=2)
    return metrics
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def run_points(config: ConfigDict, points: Sequence[Point], workdir: str,
               run_point: Callable[[ConfigDict, str], dict[str, Any]]) -> list[dict[str, Any]]:
  """Runs every point with run_point(config, point_dir) in turn; returns one table row per point."""
  configs = [apply(config, point) for point in points]
  rows = []
  for index, (point, point_config) in enumerate(zip(points, configs)):
    name = point_name(index, point)
    point_dir = os.path.join(workdir, name)
    print(f'sweep point {index + 1}/{len(points)}: {name}', flush=True)
    report = run_point(point_config, point_dir)
    rows.append({'point': name, **point, **final_metrics(report, point_dir)})
  return rows


def write_results(rows: Sequence[dict[str, Any]], workdir: str) -> str:
  """Writes workdir/sweep.{csv,md,png}; returns the markdown table."""
  columns = list(dict.fromkeys(key for row in rows for key in row))
  with open(os.path.join(workdir, 'sweep.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, restval='')
    writer.writeheader()
    writer.writerows(rows)
  table = '\n'.join(['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)] +
                    ['| ' + ' | '.join(cell(row.get(c, '')) for c in columns) + ' |' for row in rows])
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(table + '\n')
  plot(rows, [c for c in columns if c.startswith('val/')], os.path.join(workdir, 'sweep.png'))
  return table


def cell(value: Any) -> str:
  """A table cell: floats to 4 decimals."""
  return f'{value:.4f}' if isinstance(value, float) and not math.isnan(value) else str(value)


def plot(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: str) -> None:
  """One bar chart per metric, one bar per point."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = [row['point'] for row in rows]
  panels = max(len(metrics), 1)
  fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 1.5 + 0.4 * len(rows)), sharey=True, squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    ax.barh(names, [row.get(metric, math.nan) for row in rows])
    ax.set_title(metric)
  axes[0][0].invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
