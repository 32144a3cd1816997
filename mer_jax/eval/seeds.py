"""Mean ± std of the headline numbers of several runs' reports (the same config trained with other seeds)."""

import json
import os
from typing import Any

import numpy as np

# (column, path into a report) of the summary's columns.
COLUMNS = (
    ('WAF (scored)', ('scored', 'waf')),
    ('ACC (scored)', ('scored', 'accuracy')),
    ('WAF (generated)', ('generated', 'waf')),
    ('invalid', ('generated', 'invalid')),
    ('answer tokens', ('generated', 'answer_tokens')),
    ('valence MSE', ('valence', 'mse')),
    ('mean-predictor MSE', ('valence', 'mean_predictor_mse')),
)


def read_reports(workdirs: list[str], split: str, subdir: str = '') -> list[dict[str, Any]]:
  """Each run's eval/[subdir/]report_<split>.json; a missing one is named."""
  reports = []
  for workdir in workdirs:
    path = os.path.join(os.path.abspath(workdir), 'eval', subdir, f'report_{split}.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: run `mer-jax evaluate --workdir {workdir} --split {split}` first')
    with open(path) as f:
      reports.append(json.load(f))
  return reports


def value(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
  """The number at `path` of a report, None where a part is missing (a split without valence)."""
  for key in path:
    if not isinstance(report, dict) or report.get(key) is None:
      return None
    report = report[key]
  return float(report)


def summary_row(reports: list[dict[str, Any]]) -> dict[str, tuple[float, float] | None]:
  """Column -> (mean, population std) over the reports, None where some report lacks it."""
  row = {}
  for column, path in COLUMNS:
    values = [value(report, path) for report in reports]
    row[column] = None if None in values else (float(np.mean(values)), float(np.std(values)))
  return row


def format_row(name: str, count: int, row: dict[str, tuple[float, float] | None]) -> str:
  """The summary as a markdown table with a header."""
  cells = ['-' if stats is None else f'{stats[0]:.4f} ± {stats[1]:.4f}' for stats in row.values()]
  return '\n'.join([f"| runs | {' | '.join(row)} |", '|---|' + '---|' * len(row),
                    f"| {name} ({count} seeds) | {' | '.join(cells)} |"])
