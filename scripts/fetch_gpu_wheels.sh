#!/usr/bin/env bash
# Run on the CPU machine (PyPI reachable) before a GPU session: downloads the wheels the GPU
# machine lacks (it has torch, transformers, triton, cmake, ninja, pytest, pytest-timeout, but
# no package registry) into a folder (default .whl/; scripts/gpu_prebuild.sh puts them into
# .gpu-carry/wheels/, which scripts/gpu_window.sh installs there with --no-index):
#   compressed-tensors    + pydantic, pydantic-core, annotated-types, typing-inspection, loguru:
#                         the loader's GPU tests write real checkpoints with it
#   nvidia-cutlass        the CUTLASS headers, only to compile on the GPU machine (WITH_CUTLASS=1)
# Usage: [WHL_DIR=dir] [WITH_CUTLASS=1] [WITH_CMAKE=1] bash scripts/fetch_gpu_wheels.sh
# The folder is git-ignored, so it travels only when named in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHL_DIR:-.whl}
rm -rf "$DEST" && mkdir -p "$DEST"
PY=${PYTHON:-python3}
pkgs=(compressed-tensors==0.20.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5 loguru==0.7.3 typing-extensions==4.16.0)
[ "${WITH_CUTLASS:-0}" = 1 ] && pkgs+=(nvidia-cutlass==4.2.0.0)
[ "${WITH_CMAKE:-0}" = 1 ] && pkgs+=("cmake>=3.26,<5")
# The GPU machine runs CPython 3.12 on x86-64 (KINDS.md in the device tool's notes).
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${pkgs[@]}"
ls -la "$DEST"; du -sh "$DEST"
