"""bench --what train: the hand FLOP count, the JAX and PyTorch steppers and the tables they fill, on tiny shapes."""

import re

import numpy as np

from configs import demo
from mer_jax.eval import bench_loop, bench_train
from mer_jax.eval.bench_torch import TorchStepper
from tests.test_cli import mer_jax

TINY = bench_train.Shape(width=64, layers=2, heads=4, kv_heads=2, seq=16, batch=2, vocab=100)


def test_flop_count_matches_a_hand_count():
  assert (TINY.head_dim, TINY.mlp, TINY.tokens) == (16, 256, 32)
  # Per layer: q and o 64 x (4 x 16) each, k and v 64 x (2 x 16) each, gate/up/down 64 x 256 each; LM head 64 x 100.
  weights = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256) + 64 * 100
  assert bench_train.matmul_params(TINY) == weights == 129280
  # Per token and layer, q.k over 16 positions and p.v: 2 matmuls x 2 FLOPs x 16 positions x 4 heads x 16 dims.
  attention = 2 * (2 * 2 * 16 * 4 * 16)
  forward = 32 * (2 * weights + attention)
  assert bench_train.train_flops(TINY) == 3 * forward == 25608192


def test_jax_stepper_learns_and_chunked_loss_agrees():
  whole = bench_train.llm_stepper(TINY)
  chunked = bench_train.llm_stepper(bench_train.Shape(**{**TINY.__dict__, 'loss_chunk': 6}))
  np.testing.assert_allclose(chunked.metrics, whole.metrics, rtol=1e-5)
  assert abs(float(whole.metrics) - np.log(TINY.vocab)) < 1.0  # random init: near uniform over the vocabulary
  first = float(whole.metrics)
  assert whole.run(3) > 0
  assert float(whole.metrics) < first


def test_torch_stepper_learns():
  stepper = TorchStepper(TINY, threads=1)
  first = stepper.step()
  assert abs(first - np.log(TINY.vocab)) < 0.5
  assert stepper.run(3) > 0
  assert stepper.step() < first


def test_llm_table_has_every_implementation_and_the_ratio():
  table = bench_train.bench_llm(TINY, ['xla', 'einsum'], torch_threads=1, steps=1, repeats=2)
  assert f'{bench_train.train_flops(TINY) / 1e9:.1f} GFLOP per step' in table
  rows = {m.group(1): [float(x) for x in m.groups()[1:]]
          for m in re.finditer(r'^\| (jax, \w+ attention|torch, 1 threads) \| (\d+) \| (\d+) \| ([\d.]+)% \|', table, re.M)}
  assert sorted(rows) == ['jax, einsum attention', 'jax, xla attention', 'torch, 1 threads']
  assert all(tokens_per_s > 0 and mfu > 0 for _, tokens_per_s, mfu in rows.values())
  ratios = re.findall(r'^jax, (\w+) attention / torch tokens/s: ([\d.]+)x$', table, re.M)
  assert [kind for kind, _ in ratios] == ['xla', 'einsum'] and all(float(r) > 0 for _, r in ratios)


def test_whole_model_table():
  config = demo.get_config('variant=tiny')
  config.data.seq_len = 32
  table = bench_loop.bench_model(config, 128, steps=1, repeats=1)
  row = re.search(r'^\| (\d+) \| ([\d.]+) \| (\d+) \|', table, re.M)
  assert row and float(row.group(2)) > 0 and int(row.group(3)) > 0
  assert 'batch 4, sequence 32, vocab 128' in table


def test_cli_refuses_an_unknown_attention_kind_and_torch_beside_a_config():
  result = mer_jax('bench', '--what', 'train', '--width', '32', '--layers', '1', '--heads', '2', '--kv_heads', '1',
                   '--seq', '8', '--batch', '1', '--vocab', '64', '--attention', 'splash,xla')
  assert result.returncode != 0 and "unknown config.model.llm.attention 'splash'" in result.stderr
  result = mer_jax('bench', '--what', 'train', '--config', 'configs/demo.py', '--vs', 'torch')
  assert result.returncode != 0 and '--vs torch times the LLM alone' in result.stderr
