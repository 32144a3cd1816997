# Helpers sourced by the launch scripts: shell quoting, and running or (DRY_RUN=1) printing a command.

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

# Runs the command, or prints it when DRY_RUN=1.
run_or_print() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    shell_line "$@"
  else
    "$@"
  fi
}
