#!/usr/bin/env bash
# Builds, on the CPU machine, everything the GPU window (scripts/gpu_window.sh) carries to the GPU
# machine, so that nothing is compiled there (README "Validating on a GPU"):
#   GPU_VENV      a venv with the GPU machine's torch (2.11.0+cu130), cmake, ninja, CUTLASS headers
#                 (5 GB, 6 min to make: kept outside the work tree, in ~/.cache/qkernels/, so a later
#                 session on the same machine reuses it)
#   .gpu-carry/   _qkernels_cuda.so.gz  the library, built against that torch:
#                                       sm_90a for the Hopper sources; the sm75/80/89 groups as sm_90
#                                       machine code from their own virtual arch (QKERNELS_SASS_FOR=90),
#                                       so QKERNELS_FORCE_ARCH tests run them on an H100 without PTX JIT
#                 _build_info.json      groups + archs, torch, commit, dirty flag, date, source digest,
#                                       sha256, NEEDED sonames, the ops it registers (load check below)
#                 wheels/*.whl          compressed-tensors and its dependencies (cp312)
# .gpu-carry is git-ignored; name it in the device call's `carry`. With ccache on PATH (CMakeLists.txt
# uses it when found; `apt-get install ccache`), a rebuild of sources compiled before, in any clone
# of the repo, comes from its cache (~/.cache/ccache) in a few minutes instead of 30-60.
#
# Usage: bash scripts/gpu_prebuild.sh [--dry-run]
#   --dry-run   print every step and its exact commands; run nothing
# Environment (defaults): GPU_TORCH (2.11.0), GPU_VENV (~/.cache/qkernels/gpu-venv-$GPU_TORCH),
#   CARRY (.gpu-carry),
#   BUILD_DIR (build/gpu-prebuild), QKERNELS_CUDA_ARCHS (90a), QKERNELS_SASS_FOR (90),
#   QKERNELS_FAMILIES (all), MAX_JOBS (2), NVCC (/usr/local/cuda/bin/nvcc), WHEELS (1: fetch them),
#   MAX_CARRY_MIB (56: the carry folder's size limit; the device call carries 64 MiB in all),
#   PYTHON (python3: creates the venv).
# The full build takes 30-60 minutes on the 2-core CPU machine; the CUDA objects are kept in
# BUILD_DIR, so a rebuild after a change recompiles only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_prebuild.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done
GPU_TORCH=${GPU_TORCH:-2.11.0}
VENV=${GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qkernels/gpu-venv-$GPU_TORCH}
CARRY=${CARRY:-.gpu-carry}
BUILD=${BUILD_DIR:-build/gpu-prebuild}
ARCHS=${QKERNELS_CUDA_ARCHS:-90a}
SASS_FOR=${QKERNELS_SASS_FOR:-90}
FAMILIES=${QKERNELS_FAMILIES:-all}
JOBS=${MAX_JOBS:-2}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
WHEELS=${WHEELS:-1}
MAX_CARRY_MIB=${MAX_CARRY_MIB:-56}
PY=${PYTHON:-python3}
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
VENV=$(abspath "$VENV"); BUILD=$(abspath "$BUILD"); CARRY=$(abspath "$CARRY")
VPY=$VENV/bin/python
LIB=$BUILD/out/_qkernels_cuda.so
TIMES=$BUILD/prebuild-times.json
STAGE=$CARRY.new

T_ALL=$(date +%s)
declare -A SECS=()
step() {  # step <name> <what>: prints the header; the caller's commands follow
  CUR=$1; T_STEP=$(date +%s); echo; echo "== [$1] $2"
}
done_step() { SECS[$CUR]=$(( $(date +%s) - T_STEP )); [ "$DRY" = 1 ] || echo "   ($CUR: ${SECS[$CUR]} s)"; }
run() {  # run <cmd...>: print the exact command, then (unless --dry-run) run it
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY" = 1 ] || "$@"
}
q() { [ "$DRY" = 1 ] && echo "<$2>" || "$VPY" -c "$1"; }  # a value read from the venv (a placeholder in a dry run)

echo "GPU prebuild: torch $GPU_TORCH in $VENV, archs $ARCHS + sm_$SASS_FOR machine code for the older groups,"
echo "families $FAMILIES, $JOBS jobs, build $BUILD, carry $CARRY$([ "$DRY" = 1 ] && echo ' (dry run: nothing is executed)')"

step venv "a venv with the GPU machine's torch ($GPU_TORCH) + build tools"
if [ -x "$VPY" ] && "$VPY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$GPU_TORCH')" 2>/dev/null; then
  echo "   $VENV already has torch $GPU_TORCH"
else
  run "$PY" -m venv "$VENV"
  run "$VPY" -m pip install -q "torch==$GPU_TORCH" "cmake>=3.26,<5" ninja nvidia-cutlass==4.2.0.0 numpy safetensors pytest setuptools
fi
done_step

step configure "CMake: archs $ARCHS, QK_SASS_FOR=$SASS_FOR (no PTX)"
TDIR=$(q 'import torch, os; print(os.path.dirname(torch.__file__))' "torch folder of $VENV")
CDIR=$(q 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("cutlass_library").origin) + "/source")' "CUTLASS source of $VENV")
ABI=$(q 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' "torch C++11 ABI flag")
run "$VENV/bin/cmake" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" -DQK_ARCHS="$ARCHS" -DQK_SASS_FOR="$SASS_FOR" -DQK_PTX=OFF \
  -DQK_FAMILIES="$FAMILIES" -DQK_CUTLASS_DIR="$CDIR" \
  -DQK_TORCH_INCLUDE_DIRS="$TDIR/include;$TDIR/include/torch/csrc/api/include" -DQK_TORCH_LIB_DIR="$TDIR/lib" \
  -DQK_TORCH_CXX11_ABI="$ABI" -DQK_OUTPUT_DIR="$BUILD/out" -DQK_LIB_NAME=_qkernels_cuda
done_step

step build "ninja -j$JOBS (ptxas warnings are errors: C7510 fails the build)"
if [ "$DRY" = 1 ]; then
  run "$VENV/bin/ninja" -C "$BUILD" -j"$JOBS"
else
  printf '+ %q -C %q -j%q 2>&1 | tee %q\n' "$VENV/bin/ninja" "$BUILD" "$JOBS" "$BUILD/prebuild-build.log"
  "$VENV/bin/ninja" -C "$BUILD" -j"$JOBS" 2>&1 | tee "$BUILD/prebuild-build.log"
fi
done_step

step inspect "the library: size, NEEDED sonames, no Python C-API symbol (it must load under Python 3.12)"
run ls -l "$LIB"
if [ "$DRY" = 0 ]; then
  readelf -d "$LIB" | grep NEEDED
  npy=$(nm -D --undefined-only "$LIB" | grep -cE ' U _?Py[A-Z_]' || true)
  echo "   undefined Python C-API symbols: $npy"
  [ "$npy" = 0 ] || { echo "the library uses the Python C-API: it would not load under the GPU machine's Python 3.12" >&2; exit 1; }
else
  echo "+ readelf -d $LIB | grep NEEDED; nm -D --undefined-only $LIB | grep -cE ' U _?Py[A-Z_]'   (must be 0)"
fi
done_step

step load-check "load it under torch $GPU_TORCH (no GPU here): the ops it registers; the registry tests"
# _build_info.json must sit beside the library for QKERNELS_LIBRARY; a first one without the
# registered-kernel list, then the final one with it.
run "$VPY" scripts/gpu_window.py carry-info --cmake-build "$BUILD" --library "$LIB" --out "$BUILD/out/_build_info.json" --torch "$GPU_TORCH"
run env QKERNELS_LIBRARY="$LIB" "$VPY" scripts/gpu_window.py load-check --allow-no-gpu --json "$BUILD/load-check.json"
run env QKERNELS_LIBRARY="$LIB" "$VPY" -m pytest python_tests/test_registry.py -q -p no:cacheprovider
done_step

step stage "the carry folder: gzipped library, _build_info.json, wheels"
run rm -rf "$STAGE"
run mkdir -p "$STAGE"
if [ "$DRY" = 0 ]; then
  printf '{%s}\n' "$(for k in "${!SECS[@]}"; do printf '"%s": %s, ' "$k" "${SECS[$k]}"; done | sed 's/, $//')" > "$TIMES"
fi
run "$VPY" scripts/gpu_window.py carry-info --cmake-build "$BUILD" --library "$LIB" --out "$STAGE/_build_info.json" \
  --torch "$GPU_TORCH" --load-check "$BUILD/load-check.json" --times "$TIMES"
if [ "$DRY" = 1 ]; then
  echo "+ gzip -6 -c $LIB > $STAGE/_qkernels_cuda.so.gz"
else
  echo "+ gzip -6 -c $LIB > $STAGE/_qkernels_cuda.so.gz"
  gzip -6 -c "$LIB" > "$STAGE/_qkernels_cuda.so.gz"
fi
if [ "$WHEELS" = 1 ]; then
  run env WHL_DIR="$STAGE/wheels" PYTHON="$VPY" bash scripts/fetch_gpu_wheels.sh
fi
done_step

step size "the carry folder must stay under $MAX_CARRY_MIB MiB (the device call carries 64 MiB in all)"
if [ "$DRY" = 0 ]; then
  bytes=$(du -sb "$STAGE" | cut -f1)
  echo "   $STAGE: $((bytes / 1048576)) MiB ($bytes bytes); library $(( $(stat -c %s "$LIB") / 1048576 )) MiB unpacked"
  if [ "$bytes" -gt $((MAX_CARRY_MIB * 1048576)) ]; then
    echo "the carry folder is over $MAX_CARRY_MIB MiB: build fewer families (QKERNELS_FAMILIES) or leave the wheels out (WHEELS=0)" >&2
    exit 1
  fi
  rm -rf "$CARRY" && mv "$STAGE" "$CARRY"
else
  echo "+ du -sb $STAGE   (at most $MAX_CARRY_MIB MiB), then: rm -rf $CARRY && mv $STAGE $CARRY"
fi
done_step

echo
echo "prebuild done in $(( $(date +%s) - T_ALL )) s$([ "$DRY" = 1 ] && echo ' (dry run)'). Step times: $(for k in venv configure build inspect load-check stage size; do printf '%s %ss  ' "$k" "${SECS[$k]:-?}"; done)"
echo "Next, one device call (README \"Validating on a GPU\"):"
echo "  run(command=\"bash scripts/gpu_window.sh\", carry=[\"$(realpath --relative-to="$PWD" "$CARRY")\"], timeout_s=480)"
