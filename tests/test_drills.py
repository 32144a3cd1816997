"""Drills on the tiny config: SIGTERM and kill -9 then resume bitwise, changed width refused, NaN steps skipped and
stopped, a second trainer refused, predict from elsewhere with the dataset moved away, damaged checkpoints."""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from mer_jax.data import pipeline
from mer_jax.train import checkpoint, run
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import train

from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
# A trainer in a subprocess, slowed by a sleeping hook so that signals arrive mid-run.
SLOW_TRAINER = """
import sys, time
from configs import demo
from mer_jax.train.trainer import Hook, train
config = demo.get_config('variant=tiny')
config.data.dir, config.train.steps, config.train.checkpoint_every = sys.argv[1], int(sys.argv[3]), 5
config.train.eval_every = 0
train(config, sys.argv[2], hooks=lambda experiment: [Hook(1, lambda step, state: time.sleep(0.1) or {})])
"""


def tiny_config(data_dir: str, steps: int = STEPS):
  config = demo.get_config('variant=tiny')
  config.data.dir = data_dir
  config.train.steps = steps
  config.train.checkpoint_every = 5
  config.train.eval_every = 0
  return config


def start_slow_trainer(data_dir: str, workdir: str) -> subprocess.Popen:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_COMPILATION_CACHE_DIR': os.path.join(ROOT, '.pytest_cache', 'jax'),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  return subprocess.Popen([sys.executable, '-c', SLOW_TRAINER, data_dir, workdir, str(STEPS)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(process: subprocess.Popen, step: int) -> list[str]:
  """Reads the trainer's stdout until its log line for `step`; returns the lines read."""
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith(f'step {step}/'):
      return lines
  raise AssertionError(f'trainer ended before step {step}: {"".join(lines)} {process.stderr.read()[-2000:]}')


def final_state(workdir: str, config) -> tuple[int, dict]:
  checkpointer = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  step, state, _ = checkpointer.restore_latest(Experiment(config).abstract_state())
  checkpointer.close()
  return step, state


def assert_same_state(a: dict, b: dict) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_digest(directory: str) -> dict[str, str]:
  """Relative path -> sha256 of every file under `directory`."""
  digests = {}
  for path in sorted(glob.glob(os.path.join(directory, '**', '*'), recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


@pytest.fixture(scope='module')
def drills(prepared_tiny, tmp_path_factory):
  """A straight run; one SIGTERMed at step 3 and one killed -9 at step 7 (both in subprocesses), then resumed."""
  root = tmp_path_factory.mktemp('drills')
  config = tiny_config(prepared_tiny)
  workdirs = {name: str(root / name) for name in ('straight', 'sigterm', 'killed')}
  term, killed = start_slow_trainer(prepared_tiny, workdirs['sigterm']), start_slow_trainer(prepared_tiny,
                                                                                            workdirs['killed'])
  wait_for_step(term, 3)
  signalled = time.perf_counter()
  term.send_signal(signal.SIGTERM)
  term_out, term_err = term.communicate(timeout=120)
  exit_seconds = time.perf_counter() - signalled
  wait_for_step(killed, 7)
  killed.kill()
  killed.wait()
  killed_steps = sorted(int(n) for n in os.listdir(os.path.join(workdirs['killed'], 'checkpoints')) if n.isdigit())
  train(config, workdirs['straight'])
  train(config, workdirs['sigterm'])
  train(config, workdirs['killed'])
  return {'config': config, 'root': root, **workdirs, 'term_rc': term.returncode, 'term_out': term_out,
          'term_err': term_err, 'exit_seconds': exit_seconds, 'killed_steps': killed_steps}


def test_sigterm_saves_the_current_step_and_exits_zero(drills):
  assert drills['term_rc'] == 0, drills['term_err'][-2000:]
  stop_line = [line for line in drills['term_out'].splitlines() if line.startswith('stopped by SIGTERM')]
  assert len(stop_line) == 1
  stopped_at = int(stop_line[0].split('after step ')[1].split('/')[0])
  last_logged = max(int(line.split()[1].split('/')[0]) for line in drills['term_out'].splitlines()
                    if line.startswith('step '))
  assert stopped_at == last_logged and 3 <= stopped_at < STEPS  # no step lost
  assert f"{drills['sigterm']}/checkpoints/{stopped_at}" in stop_line[0]
  print(f'SIGTERM: stopped at step {stopped_at}, 0 steps lost, {drills["exit_seconds"]:.2f} s from signal to exit')


def test_resume_after_sigterm_is_bitwise(drills):
  step_a, state_a = final_state(drills['straight'], drills['config'])
  step_b, state_b = final_state(drills['sigterm'], drills['config'])
  assert step_a == step_b == STEPS
  assert_same_state(state_a, state_b)


def test_resume_after_kill_is_bitwise_and_leaves_no_temporary_directory(drills):
  assert max(drills['killed_steps'], default=0) < STEPS
  step_a, state_a = final_state(drills['straight'], drills['config'])
  step_b, state_b = final_state(drills['killed'], drills['config'])
  assert step_a == step_b == STEPS
  assert_same_state(state_a, state_b)
  leftovers = [n for n in os.listdir(os.path.join(drills['killed'], 'checkpoints')) if not n.isdigit()]
  assert leftovers == []


def test_changed_width_is_refused_and_nothing_changes(drills):
  workdir = drills['straight']
  before = tree_digest(workdir + '/checkpoints')
  with open(os.path.join(workdir, 'config.json')) as f:
    config_before = f.read()
  wider = tiny_config(drills['config'].data.dir)
  wider.model.llm.width = 48
  with pytest.raises(checkpoint.CheckpointMismatch, match=r'params/.*checkpoint \(.*32.*\).*config \(.*48.*\)'):
    train(wider, workdir)
  assert tree_digest(workdir + '/checkpoints') == before
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == config_before
  with pytest.raises(checkpoint.CheckpointMismatch):
    run.restore_params(workdir, Experiment(wider))
  assert tree_digest(workdir + '/checkpoints') == before


def test_damaged_bytes_are_set_aside_by_train_only(drills):
  workdir = str(drills['root'] / 'damaged')
  shutil.copytree(drills['straight'], workdir)
  newest = os.path.join(workdir, 'checkpoints', str(STEPS))
  data_files = [p for p in glob.glob(os.path.join(newest, 'state', '**', 'd', '*'), recursive=True)
                if os.path.isfile(p)]
  target = max(data_files, key=os.path.getsize)
  with open(target, 'r+b') as f:  # 4 KiB of random bytes at three places of the largest array file
    for fraction in (0.6, 0.75, 0.9):
      f.seek(int(os.path.getsize(target) * fraction))
      f.write(np.random.default_rng(0).bytes(4096))
  experiment = Experiment(drills['config'])
  # Read-only and params only: whether the bytes hit a parameter or optimizer state, nothing moves.
  step, _ = run.restore_params(workdir, experiment)
  assert step in (STEPS, STEPS - 5) and os.path.isdir(newest)
  step, _ = final_state(workdir, drills['config'])
  assert step == STEPS - 5
  assert not os.path.exists(newest) and os.path.isdir(newest + '.damaged')


def test_checksums_see_a_changed_or_moved_value():
  tree = {'a': jax.numpy.arange(12, dtype=jax.numpy.float32).reshape(3, 4), 'b': jax.numpy.ones(3, jax.numpy.bfloat16)}
  sums = checkpoint.checksums(tree)
  assert set(sums) == {'a', 'b'}
  checkpoint.verify(tree, sums)
  changed = {**tree, 'a': tree['a'].at[2, 3].set(11.000001)}
  with pytest.raises(checkpoint.CheckpointDamaged, match='a'):
    checkpoint.verify(changed, sums)
  swapped = {**tree, 'a': tree['a'][::-1]}
  with pytest.raises(checkpoint.CheckpointDamaged):
    checkpoint.verify(swapped, sums)


def test_non_finite_step_is_not_applied(drills):
  experiment = Experiment(drills['config'])
  state = experiment.init_state()
  state['params']['valence_head'] = jax.tree.map(lambda x: x * np.nan, state['params']['valence_head'])
  before = jax.tree.map(np.asarray, state)
  batch = next(iter(pipeline.train_dataset(drills['config'], experiment.info, 4, builder=experiment.builder)))
  after, metrics = experiment.train_step()(state, experiment.global_batch(batch))
  assert float(metrics['skipped']) == 1.0 and not np.isfinite(float(metrics['loss']))
  assert int(after['step']) == 1
  assert_same_state({'p': before['params'], 'o': before['opt_state']}, {'p': after['params'], 'o': after['opt_state']})


def test_diverging_run_is_counted_and_stopped(drills):
  config = tiny_config(drills['config'].data.dir, steps=30)
  config.train.learning_rate = 1e30
  config.train.max_bad_steps = 3
  config.train.log_every = 1
  workdir = str(drills['root'] / 'diverged')
  with pytest.raises(run.RunError, match=r'training diverged: steps \d+\.\.\d+ \(3 in a row\).*last good checkpoint'):
    train(config, workdir)
  events = EventAccumulator(workdir)
  events.Reload()
  skipped = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors('train/skipped_steps')]
  assert sum(skipped) >= 3 and skipped[-1] == 1.0


def test_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
  workdir = str(tmp_path / 'locked')
  with run.trainer_lock(workdir):
    with pytest.raises(run.RunError, match=rf'in use by another trainer \(host .*, pid {os.getpid()},'):
      with run.trainer_lock(workdir):
        pass
  with open(os.path.join(workdir, run.LOCK_FILE), 'w') as f:
    json.dump({'host': 'gone', 'pid': 12345, 'since': 'yesterday'}, f)
  with run.trainer_lock(workdir):
    with open(os.path.join(workdir, run.LOCK_FILE)) as f:
      assert json.load(f)['pid'] == os.getpid()
  assert 'left by a trainer that is no longer running (host gone, pid 12345)' in capsys.readouterr().err


def test_missing_dataset_fails_before_the_workdir_is_written(tmp_path):
  workdir = str(tmp_path / 'never')
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere')):
    train(tiny_config(str(tmp_path / 'nowhere')), workdir)
  assert not os.path.exists(workdir)


def test_predict_from_elsewhere_with_the_dataset_moved(prepared_tiny, tmp_path):
  data = str(tmp_path / 'data')
  shutil.copytree(prepared_tiny, data)
  workdir = str(tmp_path / 'run')
  train(tiny_config(data, steps=2), workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['dir'] == data
  assert sorted(os.listdir(os.path.join(workdir, run.INFERENCE_DIR))) == ['config.json', 'preprocessing.json',
                                                                          'tokenizer.json']
  shutil.move(data, str(tmp_path / 'moved'))
  video = os.path.join(os.path.dirname(prepared_tiny), 'raw', 'video')
  clip = os.path.join(video, sorted(os.listdir(video))[0])
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  result = subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', 'predict', clip,
                           '--workdir', os.path.relpath(workdir, elsewhere), '--json'], cwd=elsewhere,
                          env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  document = json.loads(result.stdout)
  labels = pipeline.load_info(prepared_tiny)['labels']
  assert document[0]['file'] == clip and document[0]['label'] in labels
