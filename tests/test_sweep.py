"""Sweeps: the h helper, the demo sweep, --print launch lines, unknown keys, and one real two-point run."""

import csv
import os
import subprocess
import sys

import pytest
from absl import flags

from configs import demo
from mer_jax import main
from mer_jax.sweep import Hyper, apply, load_points, point_name, problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
h = Hyper()


def mer_jax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_product_zip_and_chain():
  product = h.product([h.sweep('config.a', [1, 2]), h.sweep('config.b', ['x', 'y', 'z'])])
  assert product == [{'config.a': a, 'config.b': b} for a in (1, 2) for b in 'xyz']
  zipped = h.zip([h.sweep('config.a', [1, 2]), h.sweep('config.b', ['x', 'y'])])
  assert zipped == [{'config.a': 1, 'config.b': 'x'}, {'config.a': 2, 'config.b': 'y'}]
  nested = h.product([zipped, h.sweep('config.c', [0.1, 0.2])])
  assert len(nested) == 4 and nested[3] == {'config.a': 2, 'config.b': 'y', 'config.c': 0.2}
  assert h.chain([zipped, h.sweep('config.c', [5])]) == [*zipped, {'config.c': 5}]


def test_sweep_mistakes_are_refused():
  with pytest.raises(ValueError, match='one length; got lengths \\[2, 3\\]'):
    h.zip([h.sweep('config.a', [1, 2]), h.sweep('config.b', [1, 2, 3])])
  with pytest.raises(ValueError, match='config.a twice'):
    h.product([h.sweep('config.a', [1]), h.sweep('config.a', [2])])
  with pytest.raises(ValueError, match="'config.train.steps' = 'many'"):
    apply(demo.get_config(), {'config.train.steps': 'many'})
  assert problems(demo.get_config(), [{'train.steps': 2}, {'config.train.steps': 'many'}]) == [
      "sweep key 'train.steps' does not start with 'config.'"]
  assert 'config.train.steps' in problems(demo.get_config(), h.sweep('config.train.steps', [2, 'many']))[0]


def test_demo_sweep_is_learning_rate_by_fusion():
  points = load_points('configs/demo.py:variant=tiny')
  assert points == [{'config.train.learning_rate': lr, 'config.model.fusion.kind': kind}
                    for lr in (1e-3, 3e-3) for kind in ('projector', 'qformer')]
  config = demo.get_config('variant=tiny')
  assert problems(config, points) == []
  applied = apply(config, points[3])
  assert (applied.train.learning_rate, applied.model.fusion.kind) == (3e-3, 'qformer')
  assert (config.train.learning_rate, config.model.fusion.kind) == (1e-3, 'projector')
  assert point_name(3, points[3]) == '03_learning_rate=0.003_kind=qformer'


def test_print_gives_one_train_command_per_point(tmp_path):
  result = mer_jax('sweep', '--config', 'configs/demo.py:variant=tiny', '--config.train.steps=2',
                   '--workdir', str(tmp_path / 'sw'), '--print')
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'mer-jax train --config configs/demo.py:variant=tiny --workdir {tmp_path}/sw/{name} '
      f'--config.train.steps=2 --config.train.learning_rate={lr} --config.model.fusion.kind={kind}'
      for name, lr, kind in [('00_learning_rate=0.001_kind=projector', 0.001, 'projector'),
                             ('01_learning_rate=0.001_kind=qformer', 0.001, 'qformer'),
                             ('02_learning_rate=0.003_kind=projector', 0.003, 'projector'),
                             ('03_learning_rate=0.003_kind=qformer', 0.003, 'qformer')]]
  assert not os.path.exists(tmp_path / 'sw')


def test_unknown_sweep_key_fails_before_running(tmp_path):
  config_file = tmp_path / 'typo.py'
  config_file.write_text('from configs.demo import get_config\n\n\ndef get_hyper(h):\n'
                         "  return h.sweep('config.train.learning_rat', [1e-3, 3e-3])\n")
  result = mer_jax('sweep', '--config', str(config_file), '--workdir', str(tmp_path / 'sw'))
  assert result.returncode != 0
  assert "unknown config key 'train.learning_rat'" in result.stderr and 'learning_rate' in result.stderr
  assert not os.path.exists(tmp_path / 'sw')


def test_two_point_sweep_runs_and_tabulates(prepared_tiny, tmp_path, monkeypatch):
  """In-process, sharing compiled programs: the points differ in data order only."""
  config_file = tmp_path / 'seeds.py'
  config_file.write_text('from configs.demo import get_config\n\n\ndef get_hyper(h):\n'
                         "  return h.sweep('config.data.shuffle_seed', [0, 1])\n")
  workdir = tmp_path / 'sw'
  command = ['mer-jax', 'sweep', '--config', f'{config_file}:variant=tiny,modalities=audio,text',
             f'--config.data.dir={prepared_tiny}', '--config.train.steps=2', '--workdir', str(workdir)]
  monkeypatch.setattr(sys, 'argv', command)  # config_flags finds --config.* overrides in sys.argv
  try:
    main.main(main.parse_flags(command))
  finally:
    flags.FLAGS.unparse_flags()
  with open(workdir / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['point'] for row in rows] == ['00_shuffle_seed=0', '01_shuffle_seed=1']
  assert [row['config.data.shuffle_seed'] for row in rows] == ['0', '1']
  for row in rows:
    assert 0.0 <= float(row['val/waf']) <= 1.0 and 0.0 <= float(row['val/accuracy']) <= 1.0
    assert float(row['val/valence_mse']) >= 0.0
    assert os.path.exists(workdir / row['point'] / 'checkpoints' / '2')
  assert (workdir / 'sweep.md').read_text().startswith('| point | config.data.shuffle_seed | val/waf |')
  assert (workdir / 'sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
