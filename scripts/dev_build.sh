#!/usr/bin/env bash
# Compile the CUDA library for some families into build-dev-<families>/ without pip.
# Usage: scripts/dev_build.sh <families, e.g. quant or "quant;scaled_mm"> [archs, default min] [ninja target...]
# Uses $PYTHON (default: python3) for torch / CUTLASS paths; output goes to build-dev-*/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
fams=${1:?families}; archs=${2:-min}; shift || true; shift || true
PY=${PYTHON:-python3}
dir="build-dev-${fams//;/_}-${archs//;/_}"
tdir=$($PY -c 'import torch,os; print(os.path.dirname(torch.__file__))')
cdir=$($PY -c 'import importlib.util as u,os; print(os.path.dirname(u.find_spec("cutlass_library").origin)+"/source")')
abi=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
cmake=$(dirname "$PY")/cmake; [ -x "$cmake" ] || cmake=cmake
"$cmake" -S . -B "$dir" -G Ninja -DQK_ARCHS="$archs" -DQK_FAMILIES="$fams" -DQK_CUTLASS_DIR="$cdir" \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCMAKE_MAKE_PROGRAM="$(dirname "$PY")/ninja" \
  -DQK_TORCH_INCLUDE_DIRS="$tdir/include;$tdir/include/torch/csrc/api/include" -DQK_TORCH_LIB_DIR="$tdir/lib" \
  -DQK_TORCH_CXX11_ABI="$abi" -DQK_OUTPUT_DIR="$PWD/$dir/out" >/dev/null
"$(dirname "$PY")/ninja" -C "$dir" -j"${MAX_JOBS:-1}" "$@"
