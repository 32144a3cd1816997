"""mer-jax describe: published backbone sizes and per-device memory of the 7B-class configs."""

import importlib.util
import os

import pytest

from mer_jax.train.describe import activation_formula, describe, format_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f'config_{name}', os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize('name,backbone', [('emotion_llama', 6_738_415_616), ('affectgpt', 7_615_616_512)])
def test_backbones_have_the_published_sizes(name, backbone):
  report = describe(load_config(name, 'mesh=8xh100'), load_config(name, 'mesh=8xh100').model.llm.vocab_size)
  assert report['parameters']['llm'] == backbone
  assert {'audio', 'vision', 'fusion', 'valence_head'} <= set(report['parameters'])
  assert 'llm' in format_report(report) and f'{backbone:,}' in format_report(report)


def test_fsdp_divides_the_backbone_over_devices():
  config = load_config('emotion_llama', 'mesh=v5p-64')
  on_pod = describe(config, 32000)
  on_node = describe(load_config('emotion_llama', 'mesh=8xh100'), 32000)
  assert on_pod['mesh'] == {'data': 1, 'fsdp': 32, 'tensor': 1}
  total_bytes = on_pod['total_parameters'] * 4
  assert on_pod['per_device_bytes']['parameters'] == pytest.approx(total_bytes / 32, rel=0.01)
  assert on_node['per_device_bytes']['parameters'] == pytest.approx(total_bytes / 8, rel=0.01)
  assert on_pod['per_device_bytes']['optimizer'] == pytest.approx(2 * on_pod['per_device_bytes']['parameters'], rel=0.01)
  assert on_pod['activations_from'].startswith('formula')


def test_activation_formula_orders_remat_policies():
  config = load_config('emotion_llama', 'mesh=8xh100')
  sizes = {}
  for policy in ('full', 'dots', 'none'):
    config.model.remat = policy
    sizes[policy] = activation_formula(config, 8)
  assert sizes['full'] < sizes['dots'] < sizes['none']
