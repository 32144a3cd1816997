"""mer-jax seeds: mean ± std of several runs' reports."""

import json
import os
import subprocess
import sys

import pytest

from mer_jax.eval import seeds


def write_report(workdir, waf: float, valence: dict | None) -> None:
  """A report_test.json with the fields the summary reads."""
  os.makedirs(workdir / 'eval')
  report = {'scored': {'waf': waf, 'accuracy': waf + 0.01}, 'generated': {'waf': waf, 'invalid': 1},
            'valence': valence}
  (workdir / 'eval' / 'report_test.json').write_text(json.dumps(report))


def test_mean_and_population_std(tmp_path):
  for name, waf in (('s0', 0.9), ('s1', 0.8), ('s2', 0.7)):
    write_report(tmp_path / name, waf, {'mse': waf / 10, 'mean_predictor_mse': 0.27})
  row = seeds.summary_row(seeds.read_reports([str(tmp_path / n) for n in ('s0', 's1', 's2')], 'test'))
  assert row['WAF (scored)'] == pytest.approx((0.8, 0.0816497), abs=1e-6)
  assert row['ACC (scored)'][0] == pytest.approx(0.81) and row['invalid'] == (1.0, 0.0)
  assert row['mean-predictor MSE'] == pytest.approx((0.27, 0.0))
  table = seeds.format_row('s0', 3, row)
  assert table.splitlines()[2].startswith('| s0 (3 seeds) | 0.8000 ± 0.0816 | 0.8100 ± 0.0816 |')


def test_missing_valence_and_missing_report(tmp_path):
  write_report(tmp_path / 'a', 0.5, None)
  row = seeds.summary_row(seeds.read_reports([str(tmp_path / 'a')], 'test'))
  assert row['valence MSE'] is None and '| - |' in seeds.format_row('a', 1, row)
  result = subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', 'seeds', str(tmp_path / 'a'),
                           str(tmp_path / 'b')], capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and f"{tmp_path / 'b'}/eval/report_test.json not found" in result.stderr
