#!/usr/bin/env bash
# Creates .venv (if missing) and installs qkernels into it, editable, with the build
# and test dependencies. Honours the build switches (README "Build switches").
# The compile log is kept in build/build.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
. .venv/bin/activate
echo "[install] dependencies (torch, CUTLASS headers, cmake, ninja, test tools)"
pip install -q --disable-pip-version-check "torch>=2.10" "cmake>=3.26" ninja "nvidia-cutlass==4.2.0.0" \
  "setuptools>=77" wheel numpy safetensors pytest "compressed-tensors>=0.19" "transformers>=4.45" matplotlib \
  2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
mkdir -p build
export QKERNELS_BUILD_DIR=${QKERNELS_BUILD_DIR:-$PWD/build/cmake}
echo "[install] building qkernels (log: build/build.log; MAX_JOBS=${MAX_JOBS:-$(nproc)})"
set -o pipefail
pip install --disable-pip-version-check --no-build-isolation --no-deps -v -e . 2>&1 | tee build/build.log \
  | grep -E --line-buffered '^\[qkernels build\]|Building (CUDA|CXX) object|Linking|-- qkernels:|error|warning C7510' || true
if grep -q "C7510" build/build.log; then
  echo "[install] ptxas warning C7510 (wgmma serialized) found: the build must use -DNDEBUG" >&2; exit 1
fi
if ! grep -q "Successfully installed qkernels" build/build.log; then
  echo "[install] the build failed; the end of build/build.log:" >&2; tail -n 60 build/build.log >&2; exit 1
fi
python scripts/check_build.py "$QKERNELS_BUILD_DIR"
