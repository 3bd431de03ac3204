#!/usr/bin/env bash
# The README's main job: install (editable, into .venv), then on a GPU a quick
# benchmark of every built family; without a GPU a clear message and a CPU demo of
# the compressed-tensors loader running on the reference ops.
#
# What is compiled: with an NVIDIA GPU visible, the CUDA sources for that GPU's arch
# only (setup.py's default, e.g. 90a on an H100); without one, nothing (QKERNELS_SKIP_CUDA=1:
# no kernel could run here, and compiling them all takes 20-50 minutes on 2 cores; the
# ops run on their CPU references). `bash scripts/test.sh` still compiles every source.
# Set QKERNELS_SKIP_CUDA / QKERNELS_CUDA_ARCHS yourself to override either choice.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e /dev/nvidiactl ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
  echo "[main] NVIDIA GPU visible: building the kernels for its arch"
  bash scripts/install.sh
else
  echo "[main] no NVIDIA GPU visible: installing without compiling CUDA (QKERNELS_SKIP_CUDA=1; the ops run on"
  echo "[main] their CPU references). bash scripts/test.sh compiles every CUDA source."
  QKERNELS_SKIP_CUDA=${QKERNELS_SKIP_CUDA:-1} bash scripts/install.sh
fi
. .venv/bin/activate
python -m qkernels info
python -m qkernels quickstart "$@"
