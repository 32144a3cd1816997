#!/usr/bin/env bash
# Builds, once and with internet, what workers without internet install from: Python, wheels and a lock.
#
#   launch/wheelhouse.sh OUT_DIR [JAX_EXTRA]      (JAX_EXTRA: tpu (default), cuda12 or cuda13)
#
# OUT_DIR/python is a relocatable CPython $PYTHON_VERSION (uv's python-build-standalone; TPU VM images
# ship an older Python), OUT_DIR/wheels holds a wheel for every dependency of this checkout and of
# jax[JAX_EXTRA] (source-only packages are built here once), and OUT_DIR/requirements.lock pins each to
# the one version in wheels/, so that every worker installs the same versions. Run it on Linux x86_64,
# the workers' platform. launch/tpu_pod.sh --setup ships OUT_DIR; launch/tpu_worker.sh install installs it.
# Environment: PYTHON_VERSION (default 3.11).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [JAX_EXTRA]" >&2
  exit 2
fi
out=$1 extra=${2:-tpu} version=${PYTHON_VERSION:-3.11}
if [ "$(uname -sm)" != 'Linux x86_64' ]; then
  echo "$0 builds wheels for the machine it runs on; run it on Linux x86_64 (the workers), not $(uname -sm)" >&2
  exit 2
fi
if ! command -v uv > /dev/null; then
  echo "$0 needs uv (https://docs.astral.sh/uv/) to fetch a relocatable Python" >&2
  exit 2
fi
uv python install "$version"
python=$(uv python find --python-preference only-managed "$version")
rm -rf "$out"
mkdir -p "$out/wheels"
cp -a "$(dirname "$(dirname "$python")")" "$out/python"
"$python" -m pip wheel --quiet --wheel-dir "$out/wheels" "$repo" "jax[$extra]" 'setuptools>=68'
rm -f "$out"/wheels/mer_jax-*.whl
for wheel in "$out"/wheels/*.whl; do
  IFS=- read -r package package_version _ <<< "$(basename "$wheel")"
  echo "$package==$package_version"
done > "$out/requirements.lock"
echo "$out: $(wc -l < "$out/requirements.lock") pinned wheels and Python $version for Linux x86_64"
