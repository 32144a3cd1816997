"""How a multi-process job is recognised before jax.distributed joins it."""

import pytest

from mer_jax.train import distributed


@pytest.mark.parametrize('environ,expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, 'slurm'),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, 'tpu'),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, None),
    ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2:8080'}, 'tpu'),
])
def test_detect_cluster(environ, expected):
  assert distributed.detect_cluster(environ) == expected


def test_coordinator_needs_the_process_count_and_id():
  with pytest.raises(ValueError, match='needs --num_processes and --process_id'):
    distributed.initialize('localhost:1234', None, 0)
