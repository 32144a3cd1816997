# Helpers sourced by the launch scripts: quoting, dry runs, option errors, and process groups that fail fast.
# Written for bash 3.2 as well (macOS): no `wait -n`, and empty arrays expanded as ${a[@]+"${a[@]}"}.

# Prints the arguments as one shell command line, single-quoting the words that need it.
shell_line() {
  local words=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}

# True when the script only prints its commands (--dry-run or DRY_RUN=1).
dry_run() {
  [ "${DRY_RUN:-0}" = 1 ]
}

# Runs the command, or prints it when DRY_RUN=1.
run_or_print() {
  if dry_run; then
    shell_line "$@"
  else
    "$@"
  fi
}

# Exits with status 2 after printing the message and the caller's $usage.
usage_error() {
  echo "$*" >&2
  echo "$usage" >&2
  exit 2
}

# Fails with a usage error unless option $1 is followed by a non-empty value.
need_value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then
    usage_error "$1 needs a value"
  fi
}

# Starts the command in the background as a process group of its own (stopped whole); its pid goes to `started`.
start_group() {
  set -m
  "$@" &
  started=$!
  set +m
}

# Ends the process groups led by the pids.
stop_groups() {
  local pid
  for pid in "$@"; do
    kill -TERM -- "-$pid" 2> /dev/null || true
  done
  for pid in "$@"; do
    wait "$pid" 2> /dev/null || true
  done
}

# Waits for the process groups led by the pids. When one fails, ends all of them (what is left of the failed
# one too) and returns its status, with its pid in `failed_pid`.
wait_all() {
  local pending=("$@") running pid status
  failed_pid=''
  while [ ${#pending[@]} -gt 0 ]; do
    running=()
    for pid in "${pending[@]}"; do
      if kill -0 "$pid" 2> /dev/null; then
        running+=("$pid")
        continue
      fi
      status=0
      wait "$pid" || status=$?
      if [ $status != 0 ]; then
        failed_pid=$pid
        stop_groups "${pending[@]}"
        return $status
      fi
    done
    pending=(${running[@]+"${running[@]}"})
    if [ ${#pending[@]} -gt 0 ]; then
      sleep 1
    fi
  done
}
