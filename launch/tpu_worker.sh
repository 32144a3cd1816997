#!/usr/bin/env bash
# Runs on each TPU VM worker (launch/tpu_pod.sh calls it over ssh): install offline, stop stale trainers, run.
#
#   tpu_worker.sh install WHEELHOUSE.tar   fresh .venv from the shipped Python and wheels (no internet needed)
#   tpu_worker.sh stop                     kills processes holding the TPU and this checkout's trainers,
#                                          then removes /tmp/libtpu_lockfile
#   tpu_worker.sh run [KEY=VALUE...] -- COMMAND [FLAGS...]
#                                          runs .venv/bin/mer-jax with the variables set; every output line
#                                          is prefixed `W|` and the last line is `W!STATUS` (W: the worker number)
#
# The worker number comes from TPU_WORKER_ID, else from the VM's metadata (agent-worker-number).
set -euo pipefail
code_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: $0 install WHEELHOUSE.tar | stop | run [KEY=VALUE...] -- COMMAND [FLAGS...]"

# Runs the command as root: directly when already root, else through passwordless sudo.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

install() {
  local archive
  archive=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  cd "$code_dir"
  rm -rf .wheelhouse .venv
  mkdir .wheelhouse
  tar -xf "$archive" -C .wheelhouse
  .wheelhouse/python/bin/python3 -m venv .venv
  .venv/bin/pip install --quiet --no-index --find-links .wheelhouse/wheels -r .wheelhouse/requirements.lock
  .venv/bin/pip install --quiet --no-index --no-deps --no-build-isolation -e .
  echo "$(hostname): installed mer_jax and $(wc -l < .wheelhouse/requirements.lock) pinned packages into" \
    "$code_dir/.venv"
}

stop() {
  local pids pid
  pids=$(
    { as_root lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true
      pgrep -f -- "$code_dir/[.]venv/bin/mer-jax" || true; } | sort -u)
  for pid in $pids; do
    as_root kill -9 "$pid" 2>/dev/null || true
  done
  for pid in $pids; do
    while [[ $(ps -o stat= -p "$pid") == [^Z]* ]]; do
      sleep 0.2
    done
  done
  as_root rm -f /tmp/libtpu_lockfile
  echo "$(hostname): stopped $(echo "$pids" | wc -w) stale process(es); TPU lock file removed"
}

worker_number() {
  if [ -n "${TPU_WORKER_ID:-}" ]; then
    echo "$TPU_WORKER_ID"
  else
    curl -sSf -H 'Metadata-Flavor: Google' \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number
  fi
}

run() {
  local environment=(PYTHONUNBUFFERED=1) worker status
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    if ! [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
      echo "not a KEY=VALUE environment setting: $1" >&2
      exit 2
    fi
    environment+=("$1")
    shift
  done
  if [ $# -lt 2 ]; then
    echo "$usage" >&2
    exit 2
  fi
  shift
  worker=$(worker_number)
  cd "$code_dir"
  status=0
  env "${environment[@]}" "$code_dir/.venv/bin/mer-jax" "$@" 2>&1 < /dev/null | sed -u "s/^/$worker|/" ||
    status=${PIPESTATUS[0]}
  echo "$worker!$status"
  # gcloud takes 255 for a failed ssh connection and runs the command again.
  exit $((status == 255 ? 254 : status))
}

case ${1:-} in
  install) [ $# = 2 ] || { echo "$usage" >&2; exit 2; }; install "$2" ;;
  stop) stop ;;
  run) shift; run "$@" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
