#!/usr/bin/env bash
# Fills in launch/slurm_gpu.sbatch's options and submits it: one mer-jax command on N GPU nodes.
#
#   launch/slurm.sh --nodes 2 --gpus-per-node 8 train --config configs/demo.py --workdir /shared/runs/x
#
# --tasks-per gpu (default) starts one process per GPU; --tasks-per node starts one per node and exports
# JAX_LOCAL_DEVICE_IDS=0,...,G-1 so that each drives all its node's GPUs. --partition, --time, --account and
# --job-name are passed to sbatch. --dry-run (or DRY_RUN=1) prints the sbatch command instead of running it.
# Environment: MER_JAX (the command on the nodes, default mer-jax; sbatch exports it to the job).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
usage="usage: $0 [--nodes N] [--gpus-per-node G] [--tasks-per gpu|node] [--partition P] [--time T] [--account A] \
[--job-name J] [--dry-run] COMMAND [FLAGS...]"
nodes=1 gpus=8 tasks_per=gpu options=()
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=${2:?$usage}; shift 2 ;;
    --gpus-per-node) gpus=${2:?$usage}; shift 2 ;;
    --tasks-per) tasks_per=${2:?$usage}; shift 2 ;;
    --partition | --time | --account | --job-name) options+=("$1=${2:?$usage}"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "$usage" >&2
  exit 2
fi
case $tasks_per in
  gpu) tasks=$gpus environment=() ;;
  node) tasks=1 environment=(env "JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))") ;;
  *) echo "--tasks-per is gpu or node, not $tasks_per" >&2; exit 2 ;;
esac
run_or_print "${environment[@]}" sbatch --nodes="$nodes" --gpus-per-node="$gpus" --ntasks-per-node="$tasks" \
  "${options[@]}" "$here/slurm_gpu.sbatch" "$@"
