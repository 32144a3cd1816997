#!/usr/bin/env bash
# Starts N local processes of one mer-jax command joined by jax.distributed (gloo collectives on CPU).
#
#   launch/local.sh [--dry-run] N train --config configs/demo.py --workdir runs/local
#
# When one process fails, the others are stopped (they would wait for it forever) and its status is returned.
# Environment: PORT (coordinator port, default 12355), MER_JAX (the command, default mer-jax),
# DEVICES_PER_PROCESS (fake CPU devices per process, for testing), DRY_RUN=1 (like --dry-run: print the
# commands, run nothing).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
usage="usage: $0 [--dry-run] N COMMAND [FLAGS...]"
if [ "${1:-}" = --dry-run ]; then
  DRY_RUN=1
  shift
fi
if [ $# -lt 2 ]; then
  usage_error "give the number of processes and a mer-jax COMMAND"
fi
if ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  usage_error "N is a number of processes, not $1"
fi
num_processes=$1
shift
port=${PORT:-12355}
read -r -a mer_jax <<< "${MER_JAX:-mer-jax}"
xla_flags=${XLA_FLAGS:-}
if [ -n "${DEVICES_PER_PROCESS:-}" ]; then
  xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
environment=()
if [ -n "$xla_flags" ]; then
  environment=(env "XLA_FLAGS=$xla_flags")
fi
pids=()
trap 'stop_groups ${pids[@]+"${pids[@]}"}; exit 130' INT TERM
for ((i = 0; i < num_processes; i++)); do
  command=(${environment[@]+"${environment[@]}"} "${mer_jax[@]}" "$@" "--coordinator_address=localhost:$port"
           "--num_processes=$num_processes" "--process_id=$i")
  if dry_run; then
    shell_line "${command[@]}"
  else
    start_group "${command[@]}" < /dev/null
    pids+=("$started")
  fi
done
if ! dry_run; then
  wait_all "${pids[@]}"
fi
