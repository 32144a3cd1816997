#!/usr/bin/env bash
# Runs one mer-jax command on every worker of a Cloud TPU VM pod, or of every slice of a multislice queued resource.
#
#   launch/tpu_pod.sh --name my-pod --zone us-east5-a --setup train --config configs/demo.py --workdir /mnt/runs/x
#
# --setup first copies this checkout's committed tree (git archive HEAD) to every worker, unpacks it into
# ~/$REMOTE_DIR and installs it with jax[tpu] into ~/$REMOTE_DIR/.venv (uv and its Python $PYTHON_VERSION;
# the venv is made once). The command then runs on all workers at once through `gcloud ... ssh --worker=all`;
# jax joins the workers by itself. --multislice: NAME is a queued resource created with --node-count, and
# gcloud's queued-resources scp/ssh reach all of its nodes (--node=all). --setup alone only installs.
# --project P is passed to gcloud. --dry-run (or DRY_RUN=1) prints the commands instead of running them.
# Environment: REMOTE_DIR (default mer_jax), PYTHON_VERSION (default 3.11), TMPDIR (for the archive).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
source "$here/common.sh"
usage="usage: $0 --name NAME --zone ZONE [--project P] [--multislice] [--setup] [--dry-run] [COMMAND FLAGS...]"
name='' zone='' project='' multislice=0 setup=0
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=${2:?$usage}; shift 2 ;;
    --zone) zone=${2:?$usage}; shift 2 ;;
    --project) project=${2:?$usage}; shift 2 ;;
    --multislice) multislice=1; shift ;;
    --setup) setup=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ -z "$name" ] || [ -z "$zone" ] || { [ $# -eq 0 ] && [ $setup = 0 ]; }; then
  echo "$usage" >&2
  exit 2
fi
if [ $multislice = 1 ]; then
  gcloud_tpu=(gcloud compute tpus queued-resources)
  workers=(--zone="$zone" --worker=all --node=all)
else
  gcloud_tpu=(gcloud compute tpus tpu-vm)
  workers=(--zone="$zone" --worker=all)
fi
if [ -n "$project" ]; then
  workers+=(--project="$project")
fi
remote_dir=${REMOTE_DIR:-mer_jax}

if [ $setup = 1 ]; then
  archive=${TMPDIR:-/tmp}/mer_jax.tar.gz
  install="mkdir -p $remote_dir && tar -xzf mer_jax.tar.gz -C $remote_dir && cd $remote_dir"
  install+=" && curl -LsSf https://astral.sh/uv/install.sh | sh && export PATH=\$HOME/.local/bin:\$PATH"
  install+=" && { [ -d .venv ] || uv venv --python ${PYTHON_VERSION:-3.11} .venv; }"
  install+=" && uv pip install --python .venv/bin/python -e . \"jax[tpu]\""
  run_or_print git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  run_or_print "${gcloud_tpu[@]}" scp "$archive" "$name:mer_jax.tar.gz" "${workers[@]}"
  run_or_print "${gcloud_tpu[@]}" ssh "$name" "${workers[@]}" --command "$install"
fi
if [ $# -gt 0 ]; then
  remote="cd $remote_dir && .venv/bin/mer-jax $(shell_line "$@")"
  run_or_print "${gcloud_tpu[@]}" ssh "$name" "${workers[@]}" --command "$remote"
fi
