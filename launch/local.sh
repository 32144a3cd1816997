#!/usr/bin/env bash
# Starts N local processes of one mer-jax command joined by jax.distributed (gloo collectives on CPU).
#
#   launch/local.sh N train --config configs/demo.py --workdir runs/local
#
# Environment: PORT (coordinator port, default 12355), MER_JAX (the command, default mer-jax),
# DEVICES_PER_PROCESS (fake CPU devices per process, for testing), DRY_RUN=1 (print, run nothing).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N COMMAND [FLAGS...]" >&2
  exit 2
fi
num_processes=$1
shift
port=${PORT:-12355}
read -r -a mer_jax <<< "${MER_JAX:-mer-jax}"
xla_flags=${XLA_FLAGS:-}
if [ -n "${DEVICES_PER_PROCESS:-}" ]; then
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
pids=()
for ((i = 0; i < num_processes; i++)); do
  command=("${mer_jax[@]}" "$@" "--coordinator_address=localhost:$port" "--num_processes=$num_processes"
           "--process_id=$i")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "XLA_FLAGS='$xla_flags' ${command[*]}"
    continue
  fi
  XLA_FLAGS="$xla_flags" "${command[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
