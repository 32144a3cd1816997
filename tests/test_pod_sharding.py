"""The 7B configs partition as FSDP should: compiled scaled-down on 8 fake devices, read from the program."""

import json
import os
import subprocess
import sys

import pytest

from mer_jax.train import compile_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('emotion_llama', 'affectgpt')


@pytest.fixture(scope='module')
def compiled() -> dict:
  xla_flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  env = {**os.environ, 'XLA_FLAGS': xla_flags, 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'pod_compile_check.py'), *CONFIGS], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


@pytest.mark.parametrize('name', CONFIGS)
def test_steps_are_traced_under_the_rules(compiled, name):
  # Encoders, fusion, splice, every block and the logits carry constraints in training and evaluation.
  assert compiled[name]['sharding_constraints'] >= 20
  assert compiled[name]['forward_constraints'] >= 15


@pytest.mark.parametrize('name', CONFIGS)
def test_no_device_repeats_another_devices_work(compiled, name):
  assert compiled[name]['partition_efficiency'] >= 0.97
  assert compiled[name]['batch_collectives_over_hidden'] == []


@pytest.mark.parametrize('name', CONFIGS)
def test_every_large_parameter_is_split_and_gathered_in_bf16(compiled, name):
  assert compiled[name]['replicated'] == []
  assert compiled[name]['matrices'] > 10
  assert compiled[name]['matrices_cast_to_bf16'] == compiled[name]['matrices']


def test_collectives_are_read_from_hlo_text():
  text = '\n'.join([
      '  %all-gather.3 = bf16[8,4096,11008]{2,1,0} all-gather(bf16[1,4096,11008]{2,1,0} %p), dimensions={0}, '
      'metadata={op_name="jit(train_step)/dot_general"}',
      '  ROOT %all-reduce.1 = (f32[16,512], f32[]) all-reduce(f32[16,512] %a, f32[] %b), to_apply=%add',
      '  %ags = (bf16[1,64], bf16[8,64]) all-gather-start(bf16[1,64] %x), dimensions={0}',
      '  %add.2 = f32[16,512]{1,0} add(f32[16,512] %a, f32[16,512] %a)',
  ])
  found = compile_check.parse_collectives(text)
  assert [(c.kind, c.shapes, c.bytes) for c in found] == [
      ('all-gather', (('bf16', (8, 4096, 11008)),), 2 * 8 * 4096 * 11008),
      ('all-reduce', (('f32', (16, 512)), ('f32', ())), 4 * 16 * 512 + 4),
      ('all-gather', (('bf16', (8, 64)),), 2 * 8 * 64)]
  assert found[0].source == 'jit(train_step)/dot_general'
  assert [compile_check.carries_batch(c, (16,)) for c in found] == [False, True, False]


def test_targets_name_what_misses():
  result = {'peak_bytes': 90 * 10 ** 9, 'partition_efficiency': 0.9, 'batch_collectives': [
      compile_check.Collective('all-reduce', (('f32', (256, 512, 18944)),), 4 * 256 * 512 * 18944, 'jit/dot')],
      'replicated_parameters': [("['fusion']['queries']", 3 * 2 ** 20)]}
  problems = compile_check.check(result, compile_check.resolve_hbm('v5p'))
  assert problems[0] == 'peak 83.8 GiB is over 85% of 95 GB'
  assert problems[1] == 'partition efficiency 0.900 is under 0.97'
  assert problems[2].startswith('1 collective(s) over 1 GiB carry the whole batch, the largest all-reduce')
  assert problems[3].endswith("the largest ['fusion']['queries'] (3.0 MiB)")
  assert compile_check.resolve_hbm('141') == 141.0
  with pytest.raises(ValueError, match="--hbm_gb='tpu': give GB or one of"):
    compile_check.resolve_hbm('tpu')


def test_describe_compile_exits_1_when_the_step_does_not_fit():
  result = subprocess.run(
      [sys.executable, '-c', 'from mer_jax.main import run; run()', 'describe', '--config',
       os.path.join(ROOT, 'configs', 'demo.py:variant=tiny'), '--config.mesh.data=2', '--config.model.llm.vocab_size=64',
       '--compile', '--hbm_gb=0.001'], cwd='/', capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'compiled train step on 2 devices' in result.stdout and 'partition efficiency' in result.stdout
  assert 'does not meet the targets: peak' in result.stderr and 'is over 85% of 0.001 GB' in result.stderr
