#!/usr/bin/env bash
# Runs one mer-jax command on every worker of a Cloud TPU slice, or of every slice of a multislice job.
#
#   launch/tpu_pod.sh --name my-pod --zone us-east5-a --setup train --config configs/demo.py --workdir /mnt/runs/x
#
#   --name NAME            the TPU VM (one slice), or the queued resource of a multislice job
#   --zone ZONE            and --project PROJECT: passed to gcloud
#   --slices N             multislice: the job's slices are the TPU VMs PREFIX-0 ... PREFIX-<N-1>
#   --node-prefix PREFIX   their name prefix (default NAME, as `queued-resources create` names them)
#   --internal-ip          reach the workers at their internal addresses (run from a VM in their network)
#   --env KEY=VALUE        an environment variable for mer-jax on the workers (repeat it), e.g. LIBTPU_INIT_ARGS
#   --setup                first install this checkout on every worker; --setup alone only installs
#   --wheels DIR           what --setup installs from (default build/wheelhouse-tpu, which launch/wheelhouse.sh
#                          builds here when missing): the workers need no internet
#   --log-dir DIR          where each worker's output goes (default $TMPDIR/mer_jax-logs/NAME-DATE-TIME)
#   --dry-run              print the commands instead of running them (or DRY_RUN=1)
# Options also take the --option=VALUE form.
#
# --setup copies the committed tree (git archive HEAD) and the wheelhouse to every worker, unpacks the tree
# into ~/$REMOTE_DIR and installs it into a fresh ~/$REMOTE_DIR/.venv from the wheelhouse's Python and
# pinned wheels (launch/tpu_worker.sh install), so every worker runs the same versions. A run first stops
# stale trainers and removes /tmp/libtpu_lockfile on every worker, then starts the command on all workers
# of all slices at once: one `gcloud compute tpus tpu-vm ssh SLICE --worker=all` per slice, in parallel
# (`queued-resources ssh` works through 64 workers at a time, each batch to its end, which a job of more
# hosts never reaches). Worker W of SLICE writes LOG_DIR/SLICE-worker-W.log; the first slice's worker 0 is
# also printed here. When a worker fails, or on Ctrl-C, the command is stopped on every worker.
# Environment: REMOTE_DIR (the checkout on the workers, relative to the home directory; default mer_jax),
# TMPDIR (for the archives and the logs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
source "$here/common.sh"
usage="usage: $0 --name NAME --zone ZONE [--project P] [--slices N [--node-prefix P]] [--internal-ip] \
[--env KEY=VALUE]... [--setup [--wheels DIR]] [--log-dir DIR] [--dry-run] [COMMAND FLAGS...]"
name='' zone='' project='' slices=1 prefix='' internal_ip=0 setup=0 wheels=$repo/build/wheelhouse-tpu log_dir=''
environment=()
while [ $# -gt 0 ]; do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --slices) need_value "$@"; slices=$2; shift 2 ;;
    --node-prefix) need_value "$@"; prefix=$2; shift 2 ;;
    --internal-ip) internal_ip=1; shift ;;
    --env) need_value "$@"; environment+=("$2"); shift 2 ;;
    --setup) setup=1; shift ;;
    --wheels) need_value "$@"; wheels=$2; shift 2 ;;
    --log-dir) need_value "$@"; log_dir=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -*) usage_error "unknown option $1" ;;
    *) break ;;
  esac
done
if [ -z "$name" ] || [ -z "$zone" ]; then
  usage_error "--name and --zone are required"
fi
if [ $# -eq 0 ] && [ $setup = 0 ]; then
  usage_error "give a mer-jax COMMAND, --setup, or both"
fi
if ! [[ $slices =~ ^[1-9][0-9]*$ ]]; then
  usage_error "--slices takes a number of slices, not $slices"
fi
if [ -n "$prefix" ] && [ "$slices" = 1 ]; then
  usage_error "--node-prefix names the slices of a multislice job: give --slices N too"
fi
for setting in ${environment[@]+"${environment[@]}"}; do
  if ! [[ $setting =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    usage_error "--env takes KEY=VALUE, not $setting"
  fi
done

nodes=()
if [ "$slices" = 1 ]; then
  nodes=("$name")
else
  for ((i = 0; i < slices; i++)); do
    nodes+=("${prefix:-$name}-$i")
  done
fi
where=(--zone="$zone")
if [ -n "$project" ]; then
  where+=(--project="$project")
fi
if [ $internal_ip = 1 ]; then
  where+=(--internal-ip)
fi
remote_dir=${REMOTE_DIR:-mer_jax}
worker_script=$remote_dir/launch/tpu_worker.sh
log_dir=${log_dir:-${TMPDIR:-/tmp}/mer_jax-logs/$name-$(date +%Y%m%d-%H%M%S)}
code_archive=${TMPDIR:-/tmp}/mer_jax-code.tar.gz
wheel_archive=${TMPDIR:-/tmp}/mer_jax-wheelhouse.tar
running=()

# Runs the function with each node as its last argument: printed one after another in a dry run, otherwise
# all at once; fails as soon as one fails.
on_each_node() {
  local node
  running=()
  for node in "${nodes[@]}"; do
    if dry_run; then
      "$@" "$node"
    else
      start_group "$@" "$node"
      running+=("$started")
    fi
  done
  if ! dry_run; then
    wait_all "${running[@]}"
  fi
}

# Runs the command with its output appended to the log file, or prints it in a dry run.
run_logged() {
  local log=$1
  shift
  if dry_run; then
    shell_line "$@"
  else
    "$@" < /dev/null >> "$log" 2>&1
  fi
}

# Runs REMOTE on every worker of NODE (the last argument), its output in LOG_DIR/NODE.PHASE.log.
remote() {
  run_logged "$log_dir/$3.$1.log" gcloud compute tpus tpu-vm ssh "$3" "${where[@]}" --worker=all --command "$2"
}

copy_archives() {
  run_logged "$log_dir/$1.setup.log" gcloud compute tpus tpu-vm scp "$code_archive" "$wheel_archive" "$1:" \
    "${where[@]}" --worker=all
}

# Runs the mer-jax command on every worker of NODE, each worker's output in its log file. Returns as soon as
# a worker fails, without waiting for gcloud, which waits for all of NODE's workers.
run_command() {
  local node=$1 echo_worker=-1 command fifo gcloud_pid status=0
  command=$(shell_line bash "$worker_script" run ${environment[@]+"${environment[@]}"} -- "${mer_jax_args[@]}")
  if dry_run; then
    shell_line gcloud compute tpus tpu-vm ssh "$node" "${where[@]}" --worker=all --command "$command"
    return
  fi
  if [ "$node" = "${nodes[0]}" ]; then
    echo_worker=0
  fi
  fifo=$log_dir/.$node.output
  rm -f "$fifo"
  mkfifo "$fifo"
  gcloud compute tpus tpu-vm ssh "$node" "${where[@]}" --worker=all --command "$command" < /dev/null > "$fifo" 2>&1 &
  gcloud_pid=$!
  split_worker_output "$node" "$echo_worker" < "$fifo" || status=$?
  rm -f "$fifo"
  if [ $status = 0 ]; then
    wait "$gcloud_pid" || status=$?
  fi
  return $status
}

# Splits `W|line` records into LOG_DIR/NODE-worker-W.log and echoes worker ECHO's lines; when a `W!status`
# record is not 0, prints the end of W's log and returns that status. Other lines (gcloud's) go to a log.
split_worker_output() {
  local node=$1 echo_worker=$2 line worker log record='^([0-9]+)([|!])(.*)$'
  while IFS= read -r line; do
    if ! [[ $line =~ $record ]]; then
      printf '%s\n' "$line" >> "$log_dir/$node.gcloud.log"
      continue
    fi
    worker=${BASH_REMATCH[1]}
    log=$log_dir/$node-worker-$worker.log
    if [ "${BASH_REMATCH[2]}" = '|' ]; then
      printf '%s\n' "${BASH_REMATCH[3]}" >> "$log"
      if [ "$worker" = "$echo_worker" ]; then
        printf '%s\n' "${BASH_REMATCH[3]}"
      fi
    elif [ "${BASH_REMATCH[3]}" != 0 ]; then
      echo "mer-jax failed on $node worker $worker with exit status ${BASH_REMATCH[3]}; the end of $log:" >&2
      tail -n 20 "$log" | sed 's/^/  /' >&2
      return "${BASH_REMATCH[3]}"
    fi
  done
}

# Stops the command on every worker (stale trainers, the TPU lock file) and exits with the status.
stop_everywhere() {
  trap - INT TERM
  stop_groups ${running[@]+"${running[@]}"}
  echo "stopping mer-jax on every worker; logs in $log_dir" >&2
  on_each_node remote stop "$(shell_line bash "$worker_script" stop)" || true
  exit "$1"
}

# Runs FUNCTION on all nodes; when it fails on one, names it and its logs, stops everything and exits.
phase() {
  local what=$1 status=0 index
  shift
  on_each_node "$@" || status=$?
  if [ $status != 0 ]; then
    for index in "${!running[@]}"; do
      if [ "${running[$index]}" = "$failed_pid" ]; then
        echo "$what failed on ${nodes[$index]} (exit status $status); see $log_dir/${nodes[$index]}*.log" >&2
      fi
    done
    stop_everywhere $status
  fi
}

if ! dry_run; then
  mkdir -p "$log_dir"
  echo "logs in $log_dir"
  trap 'stop_everywhere 130' INT TERM
fi
if [ $setup = 1 ]; then
  if [ ! -f "$wheels/requirements.lock" ]; then
    run_or_print bash "$here/wheelhouse.sh" "$wheels" tpu
  fi
  run_or_print git -C "$repo" archive --format=tar.gz -o "$code_archive" HEAD
  run_or_print tar -cf "$wheel_archive" -C "$wheels" .
  phase "copying to the workers" copy_archives
  install="$(shell_line mkdir -p "$remote_dir") && $(shell_line tar -xzf "${code_archive##*/}" -C "$remote_dir")"
  install+=" && $(shell_line bash "$worker_script" install "${wheel_archive##*/}")"
  install+=" && $(shell_line rm -f "${code_archive##*/}" "${wheel_archive##*/}")"
  phase "installing" remote setup "$install"
fi
if [ $# -gt 0 ]; then
  mer_jax_args=("$@")
  phase "stopping stale trainers" remote stop "$(shell_line bash "$worker_script" stop)"
  phase "mer-jax" run_command
  if ! dry_run; then
    echo "done on all workers of ${nodes[*]}; logs in $log_dir"
  fi
fi
