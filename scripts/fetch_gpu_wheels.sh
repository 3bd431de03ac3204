#!/usr/bin/env bash
# Run on the CPU machine (PyPI reachable) before a GPU session: downloads into .whl/ the
# wheels the GPU machine lacks (it has torch, transformers, triton, cmake, ninja, pytest, but
# no package registry). scripts/gpu_validate.sh installs them there with --no-index.
#   nvidia-cutlass        the CUTLASS headers (the build needs them)
#   compressed-tensors    + pydantic, pydantic-core, annotated-types, typing-inspection, loguru:
#                         the loader's GPU tests write real checkpoints with it
# .whl/ is git-ignored (.gitignore), so it travels only when named in the device call's `carry`.
# Add WITH_CMAKE=1 if the GPU machine's CMake is older than 3.26 (`cmake --version` there).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
PY=${PYTHON:-python3}
pkgs=(nvidia-cutlass==4.2.0.0 compressed-tensors==0.20.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5 loguru==0.7.3 typing-extensions==4.16.0)
[ "${WITH_CMAKE:-0}" = 1 ] && pkgs+=("cmake>=3.26,<5")
# The GPU machine runs CPython 3.12 on x86-64 (KINDS.md in the device tool's notes).
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pkgs[@]}"
ls -la .whl; du -sh .whl
