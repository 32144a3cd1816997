"""Which job a process is in, from fabricated environments: what jax will join, and what stops with a message."""

import os
import subprocess
import sys

import pytest

from mer_jax.train import distributed
from mer_jax.train.distributed import Join, LaunchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'gpu[01-02]', 'SLURM_PROCID': '3', 'SLURM_LOCALID': '3'}
ALLOCATION = {'SLURM_JOB_ID': '7', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_NTASKS': '16', 'SLURM_NODELIST': 'gpu[01-02]'}


@pytest.fixture()
def importable(tmp_path, monkeypatch):
  """Makes empty packages of the given names importable, as if installed."""
  def install(*names: str) -> None:
    for name in names:
      (tmp_path / name).mkdir()
      (tmp_path / name / '__init__.py').write_text('')
    monkeypatch.syspath_prepend(str(tmp_path))
  return install


@pytest.mark.parametrize('environ,tpu_vm,expected', [
    ({}, False, None),
    ({'OMPI_COMM_WORLD_SIZE': '4', 'OMPI_COMM_WORLD_RANK': '1'}, False, 'open mpi'),
    ({'OMPI_COMM_WORLD_SIZE': '1'}, False, None),
    ({**STEP, 'SLURM_NTASKS': '16'}, False, 'slurm'),
    ({**STEP, 'SLURM_NTASKS': '1', 'SLURM_JOB_NUM_NODES': '2'}, False, None),
    (ALLOCATION, False, 'slurm'),
    ({'SLURM_JOB_ID': '7', 'SLURM_NNODES': '2'}, False, 'slurm'),
    ({'SLURM_JOB_ID': '7', 'SLURM_JOB_NUM_NODES': '1'}, False, None),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3', 'TPU_WORKER_ID': '2'}, False, 'tpu'),
    ({'TPU_PROCESS_ADDRESSES': 'w0:8476,w1:8476'}, False, 'tpu'),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, False, None),
    ({'MEGASCALE_COORDINATOR_ADDRESS': '10.0.0.2:8080'}, False, 'tpu'),
    ({}, True, 'tpu'),
    ({'KUBERNETES_SERVICE_HOST': '10.0.0.1', 'JOB_COMPLETION_INDEX': '0'}, False, 'kubernetes'),
    ({'KUBERNETES_SERVICE_HOST': '10.0.0.1'}, False, None),
    ({'JAX_COORDINATOR_ADDRESS': 'node0:1234'}, False, 'JAX_COORDINATOR_ADDRESS'),
])
def test_detect_cluster(environ, tpu_vm, expected):
  assert distributed.detect_cluster(environ, tpu_vm=tpu_vm) == expected


def test_tpu_chips_are_accel_devices_or_vfio_groups(tmp_path):
  assert distributed.tpu_chip_count(str(tmp_path)) == 0
  (tmp_path / 'vfio').mkdir()
  (tmp_path / 'vfio' / 'vfio').touch()  # the VFIO control device, on any host with the module loaded
  assert distributed.tpu_chip_count(str(tmp_path)) == 0
  for group in ('0', '1', '2', '3'):
    (tmp_path / 'vfio' / group).touch()
  assert distributed.tpu_chip_count(str(tmp_path)) == 4
  (tmp_path / 'accel0').touch()
  assert distributed.tpu_chip_count(str(tmp_path)) == 5


def test_an_importable_libtpu_without_chips_is_no_tpu_vm(tmp_path, importable):
  dev = tmp_path / 'dev'
  dev.mkdir()
  assert not distributed.on_tpu_vm({}, str(dev))
  importable('libtpu')
  assert not distributed.on_tpu_vm({}, str(dev))
  (dev / 'accel0').touch()
  assert distributed.on_tpu_vm({}, str(dev))
  assert not distributed.on_tpu_vm({'JAX_PLATFORMS': 'cpu'}, str(dev))
  assert distributed.on_tpu_vm({'JAX_PLATFORMS': 'tpu,cpu'}, str(dev))


def test_explicit_flags_win_and_take_the_address_from_the_environment():
  assert distributed.plan_join('h:1', 2, 1, environ=STEP) == Join(
      'explicit', {'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1})
  assert distributed.plan_join(None, 4, 3, environ={'JAX_COORDINATOR_ADDRESS': 'node0:9'}) == Join(
      'explicit', {'coordinator_address': 'node0:9', 'num_processes': 4, 'process_id': 3})


@pytest.mark.parametrize('flags,message', [
    (('h:1', None, 0), '--coordinator_address needs --num_processes and --process_id'),
    ((None, 2, None), '--coordinator_address needs --num_processes and --process_id'),
    ((None, 2, 0), r'--num_processes and --process_id need --coordinator_address \(or JAX_COORDINATOR_ADDRESS\)'),
])
def test_incomplete_flags_are_refused(flags, message):
  with pytest.raises(LaunchError, match=message):
    distributed.plan_join(*flags, environ={})


def test_a_slurm_allocation_without_srun_stops_multi_process_commands_only():
  with pytest.raises(LaunchError) as error:
    distributed.plan_join(environ=ALLOCATION)
  assert str(error.value).startswith('this runs inside SLURM job 7 (16 task(s) on 2 node(s)) but not in a job step '
                                     'started by srun')
  assert '`srun mer-jax train ...`' in str(error.value)
  assert distributed.plan_join(environ=ALLOCATION, multi_process=False) is None
  assert distributed.plan_join(environ={**STEP, 'SLURM_NTASKS': '16'}) == Join('slurm', {})


def test_open_mpi_5_joins_through_the_coordinator_address_or_mpi4py(importable):
  size = {'OMPI_COMM_WORLD_SIZE': '4', 'OMPI_COMM_WORLD_RANK': '2'}
  assert distributed.plan_join(environ={**size, 'OMPI_MCA_orte_hnp_uri': '1.0;tcp://10.0.0.1:5'}) == Join(
      'open mpi', {})
  assert distributed.plan_join(environ={**size, 'JAX_COORDINATOR_ADDRESS': 'n0:9'}) == Join(
      'open mpi', {'num_processes': 4, 'process_id': 2})
  with pytest.raises(LaunchError, match='Open MPI 5 .* install mpi4py, or export JAX_COORDINATOR_ADDRESS'):
    distributed.plan_join(environ=size)
  importable('mpi4py')
  assert distributed.plan_join(environ=size) == Join('open mpi', {'cluster_detection_method': 'mpi4py'})


def test_kubernetes_jobs_need_the_kubernetes_package(importable):
  job = {'KUBERNETES_SERVICE_HOST': '10.0.0.1', 'JOB_COMPLETION_INDEX': '1'}
  with pytest.raises(LaunchError, match=r"install it \(pip install 'jax\[k8s\]'\)"):
    distributed.plan_join(environ=job)
  importable('kubernetes')
  assert distributed.plan_join(environ=job) == Join('kubernetes', {})


def test_a_coordinator_address_alone_is_not_a_job():
  with pytest.raises(LaunchError, match=r'JAX_COORDINATOR_ADDRESS=n0:9 is set, but nothing gives the process count'):
    distributed.plan_join(environ={'JAX_COORDINATOR_ADDRESS': 'n0:9'})
  assert distributed.plan_join(environ={}) is None
  assert distributed.plan_join(environ={'TPU_WORKER_HOSTNAMES': 'a,b'}) == Join('tpu', {})


def mer_jax(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', *args],
                        env={**os.environ, 'PYTHONPATH': ROOT, **env}, cwd=ROOT, capture_output=True, text=True,
                        timeout=120)


def test_train_inside_salloc_without_srun_says_to_use_srun():
  result = mer_jax('train', '--config', 'configs/demo.py:variant=tiny', '--workdir', '/nonexistent/run',
                   env=ALLOCATION)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith('error: this runs inside SLURM job 7 (16 task(s) on 2 node(s))')


def test_single_process_commands_run_inside_salloc():
  result = mer_jax('evaluate', env=ALLOCATION)
  assert 'SLURM' not in result.stderr
  assert 'mer-jax evaluate needs exactly one of --workdir DIR and --bundle DIR' in result.stderr


def test_single_process_commands_refuse_a_job_of_several_processes():
  """Both processes of a real 2-process job (jax.distributed on CPU) join, then refuse together."""
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local.sh'), '2', 'export', '--workdir', 'w',
                           '--out', 'o'],
                          env={**os.environ, 'PYTHONPATH': ROOT, 'PORT': '12431',
                               'MER_JAX': os.path.join(os.path.dirname(sys.executable), 'mer-jax')},
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert ('error: mer-jax export runs in one process, and this job (explicit) has 2: run it once, on one host, '
          'without a launcher') in result.stderr
