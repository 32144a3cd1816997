"""Joins the processes of a multi-host job: explicit coordinator flags, SLURM, or a TPU pod."""

import importlib.util
import os

import jax


def detect_cluster(environ: dict[str, str] | None = None) -> str | None:
  """'slurm' or 'tpu' when the environment shows a job jax can join by itself (a TPU VM always)."""
  env = os.environ if environ is None else environ
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in env:
    return 'slurm'
  if ',' in env.get('TPU_WORKER_HOSTNAMES', '') or 'MEGASCALE_COORDINATOR_ADDRESS' in env:
    return 'tpu'
  if importlib.util.find_spec('libtpu') is not None and environ is None:
    return 'tpu'  # a TPU VM: jax finds the pod's workers through the metadata server
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Calls jax.distributed.initialize where needed; returns how the job was joined.

  Explicit flags win (local multi-process runs; CPU collectives then use gloo); otherwise SLURM
  and TPU pods are detected from their environment; otherwise the job is a single process.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return 'explicit'
  cluster = detect_cluster()
  if cluster is not None:
    jax.distributed.initialize()
    return cluster
  return 'single process'
