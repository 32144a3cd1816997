"""Mesh degrees, the rules table and host batches as global arrays."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from mer_jax.train import sharding


def mesh_config(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict({'data': data, 'fsdp': fsdp, 'tensor': tensor})


def test_minus_one_fills_the_remaining_devices():
  assert sharding.mesh_shape(mesh_config(), 8) == (8, 1, 1)
  assert sharding.mesh_shape(mesh_config(2, -1, 2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(mesh_config(1, 1, 1), 1) == (1, 1, 1)


@pytest.mark.parametrize('degrees,devices,message', [
    ((-1, -1, 1), 8, 'at most one axis may be -1'),
    ((3, -1, 1), 8, 'does not divide 8 devices'),
    ((2, 2, 1), 8, 'needs 4 devices, 8 are present'),
])
def test_bad_mesh_degrees_are_refused(degrees, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(mesh_config(*degrees), devices)


def test_rules_must_name_mesh_axes():
  config = ml_collections.ConfigDict({'sharding_rules': (('embed', 'model'),)})
  with pytest.raises(ValueError, match="sharding rule \\('embed', 'model'\\)"):
    sharding.rules_from_config(config)
  assert sharding.rules_from_config(ml_collections.ConfigDict({'sharding_rules': ()})) == sharding.DEFAULT_RULES


def test_every_logical_axis_of_the_model_has_a_default_rule():
  from mer_jax.models.layers import LOGICAL_AXES
  covered = {name for name, _ in sharding.DEFAULT_RULES}
  assert set(LOGICAL_AXES) <= covered


def test_missing_rule_names_the_axis():
  with pytest.raises(ValueError, match=r"logical axes \['mystery'\] have no rule"):
    sharding.check_rules_cover({'w': PartitionSpec('embed', 'mystery')}, sharding.DEFAULT_RULES)


def test_global_batch_is_sharded_on_the_batch_axes():
  mesh = sharding.build_mesh(mesh_config())
  batch = sharding.to_global_batch({'x': np.arange(8).reshape(4, 2)}, mesh, sharding.DEFAULT_RULES)
  assert batch['x'].sharding.spec == PartitionSpec(('data', 'fsdp'))
  np.testing.assert_array_equal(np.asarray(batch['x']), np.arange(8).reshape(4, 2))
  assert jax.device_count() == mesh.size


def test_single_host_reads_the_whole_batch():
  mesh = sharding.build_mesh(mesh_config())
  assert sharding.host_batch_shard(mesh, sharding.DEFAULT_RULES, 16) == (0, 1, 16)
