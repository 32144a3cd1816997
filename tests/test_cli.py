"""The mer-jax command line: config errors at start-up, train then evaluate, convert through the CLI."""

import json
import os
import subprocess
import sys

from mer_jax.eval import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mer_jax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_unknown_config_key_is_refused_with_valid_keys(tmp_path):
  result = mer_jax('train', '--config', 'configs/demo.py', '--config.train.stepz=3', '--workdir', str(tmp_path))
  assert result.returncode != 0
  assert "unknown config key 'train.stepz'" in result.stderr
  assert 'steps' in result.stderr and 'learning_rate' in result.stderr
  assert not os.path.exists(tmp_path / 'config.json')


def test_unknown_config_option_is_refused(tmp_path):
  result = mer_jax('train', '--config', 'configs/demo.py:modalitis=audio', '--workdir', str(tmp_path))
  assert result.returncode != 0 and "unknown config options ['modalitis']" in result.stderr


def test_unknown_command_is_refused():
  result = mer_jax('fit')
  assert result.returncode != 0 and 'usage: mer-jax {synth,prepare,show,train,evaluate,bench,' in result.stderr
  assert 'predict' in result.stderr


def test_prepare_wrong_format_then_show(prepared_tiny, tmp_path):
  raw = os.path.join(os.path.dirname(prepared_tiny), 'raw')
  result = mer_jax('prepare', '--format', 'meld', '--raw', raw, '--out', str(tmp_path / 'out'))
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'error: no *_sent_emo.csv file' in result.stderr and f'under {raw}: is it a MELD dataset' in result.stderr
  assert not os.path.exists(tmp_path / 'out')
  result = mer_jax('show', '--data', prepared_tiny, '--split', 'test[:2]', '--json')
  rows = json.loads(result.stdout)
  assert [row['frames'] for row in rows] == [[4, 32, 32, 3]] * 2 and rows[0]['audio_s'] == 2.0
  assert rows[0]['name'] < rows[1]['name'] and rows[0]['label'] and rows[0]['sentence']
  lines = mer_jax('show', '--data', prepared_tiny, '--split', 'test', '--limit', '3').stdout.splitlines()
  assert len(lines) == 3 and lines[0].startswith(rows[0]['name'] + '\t' + rows[0]['label'])
  result = mer_jax('show', '--data', prepared_tiny, '--split', 'dev')
  assert result.returncode == 1 and "split 'dev' is not in" in result.stderr


def test_evaluate_without_a_run_says_so(tmp_path):
  result = mer_jax('evaluate', '--workdir', str(tmp_path))
  assert result.returncode != 0 and 'config.json not found' in result.stderr


def test_train_then_evaluate(prepared_tiny, tmp_path):
  workdir = str(tmp_path / 'run')
  train = mer_jax('train', '--config', 'configs/demo.py:variant=tiny,modalities=audio,text',
                  f'--config.data.dir={prepared_tiny}', '--config.train.steps=2',
                  '--config.train.eval_every=0', '--workdir', workdir)
  assert train.returncode == 0, train.stderr
  assert 'step 2/2' in train.stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['modalities'] == ['audio', 'text']
  evaluate = mer_jax('evaluate', '--workdir', workdir, '--split', 'test')
  assert evaluate.returncode == 0, evaluate.stderr
  assert 'checkpoint step 2' in evaluate.stdout and '| test |' in evaluate.stdout
  with open(os.path.join(workdir, 'eval', 'report_test.json')) as f:
    report = json.load(f)
  assert report['count'] > 0 and 0.0 <= report['scored']['waf'] <= 1.0


def test_convert_writes_a_checkpoint_init_from_accepts(tmp_path):
  hf_dir, out = str(tmp_path / 'hf'), str(tmp_path / 'converted')
  bench.write_random_llama(hf_dir, 0.0, shape={'vocab_size': 64, 'hidden_size': 16, 'intermediate_size': 32,
                                               'num_attention_heads': 2, 'num_key_value_heads': 1})
  result = mer_jax('convert', '--hf', hf_dir, '--out', out)
  assert result.returncode == 0, result.stderr
  assert 'set config.model.llm.init_from' in result.stdout
  with open(os.path.join(out, 'converted.json')) as f:
    info = json.load(f)
  assert info['component'] == 'llm' and info['dtype'] == 'bfloat16' and info['model_config']['width'] == 16
  again = mer_jax('convert', '--hf', hf_dir, '--out', out)
  assert again.returncode != 0 and 'already exists' in again.stderr
