"""Grain pipeline: validation carving, host shards, seeded shuffling, checkpointable position, eval padding."""

import numpy as np
import pytest

from configs import demo
from mer_jax.data import pipeline


@pytest.fixture(scope='module')
def config(prepared_tiny):
  config = demo.get_config('variant=tiny')
  config.data.dir = prepared_tiny
  config.data.val_fraction = 0.25
  return config


@pytest.fixture(scope='module')
def info(config):
  return pipeline.load_info(config.data.dir)


def test_validation_is_carved_from_train(config, info):
  train, val = pipeline.open_split(config.data, info, 'train'), pipeline.open_split(config.data, info, 'val')
  total = info['splits']['train']['count']
  assert len(val) == round(total * 0.25) and len(train) + len(val) == total
  assert not set(train.indices) & set(val.indices)
  again = pipeline.open_split(config.data, info, 'val')
  np.testing.assert_array_equal(val.indices, again.indices)


def test_unknown_split_names_the_known_ones(config, info):
  with pytest.raises(ValueError, match=r"split 'dev' is not in .*known splits: \['test', 'train', 'val'\]"):
    pipeline.open_split(config.data, info, 'dev')


def test_batches_have_fixed_shapes(config, info):
  iterator = iter(pipeline.train_dataset(config, info, batch_size=4))
  batch = next(iterator)
  assert batch['tokens'].shape == (4, config.data.seq_len) and batch['tokens'].dtype == np.int32
  assert batch['loss_mask'].shape == (4, config.data.seq_len)
  assert batch['soft_positions'].shape == (4, 8)
  assert batch['audio'].shape == (4, 32000) and batch['audio'].dtype == np.int16
  assert batch['frames'].shape == (4, 4, 32, 32, 3) and batch['frames'].dtype == np.uint8
  assert batch['label'].shape == (4,) and batch['valence'].dtype == np.float32
  rows = np.arange(4)
  assert np.all(batch['loss_mask'][rows, batch['answer_start']] == 1)
  assert np.all(batch['loss_mask'][rows, batch['answer_start'] - 1] == 0)


def test_modalities_select_inputs(config, info):
  text_only = config.copy_and_resolve_references()
  text_only.model.modalities = ('text',)
  batch = next(iter(pipeline.train_dataset(text_only, info, batch_size=2)))
  assert 'audio' not in batch and 'frames' not in batch
  assert batch['soft_positions'].shape == (2, 0)


def test_shuffle_is_seeded_and_resumable(config, info):
  def first_valences(cfg, count):
    iterator = iter(pipeline.train_dataset(cfg, info, batch_size=4))
    return [tuple(next(iterator)['valence']) for _ in range(count)], iterator

  a, _ = first_valences(config, 3)
  b, iterator = first_valences(config, 3)
  assert a == b
  reseeded = config.copy_and_resolve_references()
  reseeded.data.shuffle_seed = 7
  assert first_valences(reseeded, 3)[0] != a
  state = iterator.get_state()
  expected = next(iterator)['valence']
  restored = iter(pipeline.train_dataset(config, info, batch_size=4))
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)['valence'], expected)


def test_host_rows_rebuild_the_one_host_batches(config, info):
  one_host = iter(pipeline.train_dataset(config, info, batch_size=4))
  hosts = [iter(pipeline.train_dataset(config, info, batch_size=2, shard_index=i, shard_count=2)) for i in range(2)]
  four_hosts = [iter(pipeline.train_dataset(config, info, batch_size=1, shard_index=i, shard_count=4))
                for i in range(4)]
  for _ in range(8):
    expected = next(one_host)['valence']
    np.testing.assert_array_equal(np.concatenate([next(h)['valence'] for h in hosts]), expected)
    np.testing.assert_array_equal(np.concatenate([next(h)['valence'] for h in four_hosts]), expected)


def test_eval_batches_pad_the_last_batch(config, info):
  count = info['splits']['test']['count']
  batches = list(pipeline.eval_batches(config, info, 'test', batch_size=3))
  assert [len(fields) for _, fields in batches] == [3] * (count // 3) + ([count % 3] if count % 3 else [])
  names = [f['name'] for _, fields in batches for f in fields]
  assert names == sorted(names) and len(set(names)) == count
  assert all(batch['tokens'].shape[0] == 3 for batch, _ in batches)


def test_position_carries_over_to_a_different_host_count(config, info):
  one_host = iter(pipeline.train_dataset(config, info, batch_size=4))
  for _ in range(3):
    next(one_host)
  state = one_host.get_state()
  expected = [next(one_host)['valence'] for _ in range(2)]
  hosts = []
  for shard in range(2):
    host = iter(pipeline.train_dataset(config, info, batch_size=2, shard_index=shard, shard_count=2))
    host.set_state(state)
    hosts.append(host)
  for batch in expected:
    np.testing.assert_array_equal(np.concatenate([next(h)['valence'] for h in hosts]), batch)
