#!/usr/bin/env bash
# Times the training step of a ~1B-parameter LLaMA-shaped LLM on one GPU and prints tokens/s and MFU.
#
#   launch/bench_gpu.sh [--vs torch] [more `mer-jax bench --what train` flags, which override the shape below]
#
# The shape is TinyLlama 1.1B's (width 2048, 22 layers, 32 query and 4 key/value heads, MLP 5632,
# vocabulary 32000) at sequence 2048, batch 8, bfloat16 compute with float32 parameters and AdamW,
# and cuDNN attention. MFU is printed against the GPU's measured bfloat16 matmul peak and against
# its data-sheet dense bfloat16 peak (mer_jax/eval/bench_train.py: DENSE_BF16_PEAKS).
#
# Installs this checkout without its dependencies into VENV (default .venv-gpu, made with the system's
# site packages so that a preinstalled CUDA jax, flax, optax and torch are used as they are), plus
# ml-collections and jax[cuda12] when missing; the benchmark needs neither TensorFlow nor the data stack.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$repo/.venv-gpu}
if ! command -v nvidia-smi > /dev/null; then
  echo "$0 needs an NVIDIA GPU (no nvidia-smi here)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/pip" install -q --no-deps -e "$repo"
"$venv/bin/python" -c 'import ml_collections, flax, optax' 2> /dev/null || "$venv/bin/pip" install -q ml-collections flax optax
if ! "$venv/bin/python" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2> /dev/null; then
  "$venv/bin/pip" install -q 'jax[cuda12]'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cd "$repo"
"$venv/bin/mer-jax" bench --what train --width 2048 --layers 22 --heads 32 --kv_heads 4 --seq 2048 --batch 8 \
  --vocab 32000 --dtype bfloat16 --attention cudnn --steps 5 --repeats 3 "$@"
