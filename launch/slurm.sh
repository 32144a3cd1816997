#!/usr/bin/env bash
# Submits launch/slurm_gpu.sbatch: one mer-jax command on N GPU nodes of a SLURM cluster.
#
#   launch/slurm.sh --nodes 2 --gpus-per-node h100:8 --qos high --time 24:00:00 train --config ... --workdir /shared/x
#
#   --nodes N, -N N            nodes (default 1)
#   --gpus-per-node [TYPE:]G   GPUs per node, typed as the cluster names them if it asks for that (default 8)
#   --tasks-per gpu|node       one process per GPU (default), or one per node that drives all the node's GPUs
#                              (JAX_LOCAL_DEVICE_IDS=0,...,G-1 is exported to the job)
#   --cpus-per-task C, -c C    CPUs of each process, for its input pipeline (default 8 per GPU it drives)
#   --dry-run                  print the sbatch command instead of running it (or DRY_RUN=1)
# These also take the --option=VALUE form. Every other option before COMMAND goes to sbatch as it is
# (--partition, --time, --account, --qos, --constraint, --mem, --exclusive, ...; --opt VALUE or --opt=VALUE).
# Put -- before COMMAND after an sbatch option unknown here that takes no value.
# Environment: MER_JAX (the command on the nodes, default mer-jax; sbatch exports it to the job).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
usage="usage: $0 [--nodes N] [--gpus-per-node [TYPE:]G] [--tasks-per gpu|node] [--cpus-per-task C] [--dry-run] \
[SBATCH OPTIONS...] [--] COMMAND [FLAGS...]"
nodes=1 gpus=8 tasks_per=gpu cpus_per_task='' sbatch_options=()
while [ $# -gt 0 ]; do
  case $1 in
    --nodes=* | --gpus-per-node=* | --tasks-per=* | --cpus-per-task=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -N?* | -c?*) set -- "${1:0:2}" "${1:2}" "${@:2}"; continue ;;
    --nodes | -N) need_value "$@"; nodes=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; gpus=$2; shift 2 ;;
    --tasks-per) need_value "$@"; tasks_per=$2; shift 2 ;;
    --cpus-per-task | -c) need_value "$@"; cpus_per_task=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    --*=* | -[HOsQvWk] | -[!-]?* | --contiguous | --exclusive | --external | --get-user-env | --hold \
      | --ignore-pbs | --nice | --no-kill | --no-requeue | --oom-kill-step | --overcommit | --oversubscribe \
      | --parsable | --propagate | --quiet | --reboot | --requeue | --resv-ports | --spread-job | --test-only \
      | --use-min-nodes | --verbose | --wait)
      sbatch_options+=("$1"); shift ;;
    --*) need_value "$@"; sbatch_options+=("$1=$2"); shift 2 ;;
    -?) need_value "$@"; sbatch_options+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  usage_error "no mer-jax COMMAND after the options"
fi
if ! [[ $nodes =~ ^[1-9][0-9]*$ ]]; then
  usage_error "--nodes takes a number of nodes, not $nodes"
fi
if ! [[ $gpus =~ ^([A-Za-z0-9_.-]+:)?[1-9][0-9]*$ ]]; then
  usage_error "--gpus-per-node takes [TYPE:]COUNT, e.g. 8 or h100:8, not $gpus"
fi
gpu_count=${gpus##*:}
environment=()
case $tasks_per in
  gpu) tasks=$gpu_count gpus_per_task=1 ;;
  node) tasks=1 gpus_per_task=$gpu_count environment=(env "JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpu_count - 1)))") ;;
  *) usage_error "--tasks-per is gpu or node, not $tasks_per" ;;
esac
cpus_per_task=${cpus_per_task:-$((8 * gpus_per_task))}
if ! [[ $cpus_per_task =~ ^[1-9][0-9]*$ ]]; then
  usage_error "--cpus-per-task takes a number of CPUs, not $cpus_per_task"
fi
run_or_print ${environment[@]+"${environment[@]}"} sbatch --nodes="$nodes" --gpus-per-node="$gpus" \
  --ntasks-per-node="$tasks" --cpus-per-task="$cpus_per_task" ${sbatch_options[@]+"${sbatch_options[@]}"} \
  "$here/slurm_gpu.sbatch" "$@"
