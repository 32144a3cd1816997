"""Joins the processes of a multi-host job through jax.distributed, or says why this process cannot."""

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping
from typing import Any


class LaunchError(ValueError):
  """This process cannot join the job that its environment or flags describe."""


@dataclasses.dataclass(frozen=True)
class Join:
  """How this process joins its job: the job's kind and the arguments for jax.distributed.initialize."""
  cluster: str
  arguments: dict[str, Any]


def tpu_chip_count(dev_dir: str = '/dev') -> int:
  """TPU chips attached to this host: /dev/accel<N> (TPU v4 and older) or /dev/vfio/<N> (v5e, v5p, v6e)."""
  return len(glob.glob(os.path.join(dev_dir, 'accel*'))) + len(glob.glob(os.path.join(dev_dir, 'vfio', '[0-9]*')))


def on_tpu_vm(environ: Mapping[str, str], dev_dir: str = '/dev') -> bool:
  """True on a Cloud TPU VM that runs on its TPU: libtpu importable, chips attached, JAX_PLATFORMS allowing tpu."""
  if 'tpu' not in environ.get('JAX_PLATFORMS', 'tpu'):
    return False
  return importlib.util.find_spec('libtpu') is not None and tpu_chip_count(dev_dir) > 0


def count(environ: Mapping[str, str], *names: str) -> int:
  """The first of the integer variables that is set (1 when none is)."""
  return next((int(environ[name]) for name in names if environ.get(name, '').isdigit()), 1)


def detect_cluster(environ: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> str | None:
  """The kind of multi-process job the environment shows, or None for a single process.

  One of 'open mpi', 'slurm', 'tpu', 'kubernetes' or 'JAX_COORDINATOR_ADDRESS', checked in jax's order.
  `tpu_vm` says whether this host is a TPU VM; by default it is looked up when `environ` is os.environ.
  """
  env = os.environ if environ is None else environ
  if tpu_vm is None:
    tpu_vm = environ is None and on_tpu_vm(env)
  if count(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return 'open mpi'
  if 'SLURM_JOB_ID' in env:
    in_step = 'SLURM_STEP_NODELIST' in env
    if count(env, 'SLURM_NTASKS') > 1 or (not in_step and count(env, 'SLURM_JOB_NUM_NODES', 'SLURM_NNODES') > 1):
      return 'slurm'
  hosts = env.get('TPU_PROCESS_ADDRESSES', env.get('TPU_WORKER_HOSTNAMES', ''))
  if ',' in hosts or 'MEGASCALE_COORDINATOR_ADDRESS' in env or tpu_vm:
    return 'tpu'
  if 'KUBERNETES_SERVICE_HOST' in env and 'JOB_COMPLETION_INDEX' in env:
    return 'kubernetes'
  if 'JAX_COORDINATOR_ADDRESS' in env:
    return 'JAX_COORDINATOR_ADDRESS'
  return None


def slurm_without_step(environ: Mapping[str, str]) -> str:
  """Why a SLURM allocation that is not a job step (salloc, or a batch script without srun) cannot be joined."""
  tasks = count(environ, 'SLURM_NTASKS')
  nodes = count(environ, 'SLURM_JOB_NUM_NODES', 'SLURM_NNODES')
  return (f'this runs inside SLURM job {environ["SLURM_JOB_ID"]} ({tasks} task(s) on {nodes} node(s)) but not '
          'in a job step started by srun, so jax cannot find the other processes (SLURM_STEP_NODELIST is unset): '
          'start the processes with srun, e.g. `srun mer-jax train ...` inside salloc or the batch script '
          '(launch/slurm.sh does this), or `srun --ntasks=1 ...` for one process')


def open_mpi_join(environ: Mapping[str, str]) -> Join:
  """Joins an Open MPI job; Open MPI 5 (PRRTE) sets no OMPI_MCA_orte_hnp_uri, which is all that jax reads."""
  if 'OMPI_MCA_orte_hnp_uri' in environ:
    return Join('open mpi', {})
  if 'JAX_COORDINATOR_ADDRESS' in environ:
    return Join('open mpi', {'num_processes': int(environ['OMPI_COMM_WORLD_SIZE']),
                             'process_id': int(environ.get('OMPI_COMM_WORLD_RANK', '0'))})
  if importlib.util.find_spec('mpi4py') is not None:
    return Join('open mpi', {'cluster_detection_method': 'mpi4py'})
  raise LaunchError('this is an Open MPI 5 job (no OMPI_MCA_orte_hnp_uri), which jax does not join by itself: '
                    'install mpi4py, or export JAX_COORDINATOR_ADDRESS=<host of rank 0>:<free port> to the ranks')


def plan_join(coordinator_address: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, environ: Mapping[str, str] | None = None,
              tpu_vm: bool | None = None, multi_process: bool = True) -> Join | None:
  """How this process joins its job: explicit flags first, then the environment; None for a single process.

  jax recognises Open MPI before 5, SLURM job steps, TPU VMs, GKE TPU pods and Kubernetes indexed Jobs by
  itself; a job it would not join (a SLURM allocation outside srun, Open MPI 5, JAX_COORDINATOR_ADDRESS
  alone) raises LaunchError here rather than leaving one single-process run per host. With `multi_process`
  False (a command that runs in one process), a SLURM allocation outside a job step is a single process.
  """
  env = os.environ if environ is None else environ
  if coordinator_address is not None or num_processes is not None or process_id is not None:
    if num_processes is None or process_id is None:
      raise LaunchError('--coordinator_address needs --num_processes and --process_id')
    address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
    if not address:
      raise LaunchError('--num_processes and --process_id need --coordinator_address (or JAX_COORDINATOR_ADDRESS)')
    return Join('explicit', {'coordinator_address': address, 'num_processes': num_processes,
                             'process_id': process_id})
  cluster = detect_cluster(environ, tpu_vm)
  if cluster == 'slurm' and 'SLURM_STEP_NODELIST' not in env:
    if multi_process:
      raise LaunchError(slurm_without_step(env))
    return None
  if cluster == 'open mpi':
    return open_mpi_join(env)
  if cluster == 'kubernetes' and importlib.util.find_spec('kubernetes') is None:
    raise LaunchError('this is a Kubernetes indexed Job, which jax joins through the kubernetes package: '
                      "install it (pip install 'jax[k8s]')")
  if cluster == 'JAX_COORDINATOR_ADDRESS':
    raise LaunchError(f'JAX_COORDINATOR_ADDRESS={env["JAX_COORDINATOR_ADDRESS"]} is set, but nothing gives the '
                      'process count and this process\'s index: add --num_processes N --process_id I')
  return None if cluster is None else Join(cluster, {})


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multi_process: bool = True) -> str:
  """Calls jax.distributed.initialize where the flags or the environment show a job; returns how it was joined.

  Explicit flags win (local multi-process runs; CPU collectives then use gloo).
  """
  join = plan_join(coordinator_address, num_processes, process_id, multi_process=multi_process)
  if join is None:
    return 'single process'
  import jax  # Imported here: single-process commands that never join need not load jax.
  if join.cluster == 'explicit':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**join.arguments)
  return join.cluster


def join_job(command: str, multi_process: bool, coordinator_address: str | None = None,
             num_processes: int | None = None, process_id: int | None = None) -> str:
  """Joins the job that runs `command`; unless `multi_process`, refuses a job of several processes."""
  joined = initialize(coordinator_address, num_processes, process_id, multi_process)
  if not multi_process and joined != 'single process':
    import jax
    if jax.process_count() > 1:
      raise LaunchError(f'mer-jax {command} runs in one process, and this job ({joined}) has '
                        f'{jax.process_count()}: run it once, on one host, without a launcher')
  return joined
