#!/usr/bin/env bash
# The GPU session, on the GPU machine (no package registry there): build for its arch, run the
# GPU tests (once plainly, once a reduced set under compute-sanitizer memcheck), then the
# benchmarks. Logs go to $OUT (default ./gpu_out); the benchmark's files are packed into one
# $OUT/bench_results.tar.gz (the device tool brings back at most 8 files).
#
# Prerequisites, prepared on the CPU machine (README "Validating on a GPU"):
#   bash scripts/fetch_gpu_wheels.sh   -> .whl/ (CUTLASS headers, compressed-tensors + deps);
#   name .whl in the device call's `carry`; set QKERNELS_GIT_COMMIT=<sha> (the copy has no .git).
# Switches:
#   STEPS     comma list of build,test,memcheck,bench (default: all). One device call is limited
#             to 10 minutes: run "build,test" in a first call and "memcheck" / "bench" in later
#             ones (the build folder build/gpu stays on the machine while it is warm).
#   ARCHS     default "75;80;89;90a" with PTX, so the sm75/sm80/sm89 paths can be forced on the
#             H100 with QKERNELS_FORCE_ARCH (the tests do it); "90a" alone builds 3x faster.
#   FAMILIES  default all;  TEST_K  a pytest -k filter (e.g. "scaled_mm"), combined with the
#             memcheck step's own filter;  TEST_ARGS  other pytest arguments;
#   BENCH_ARGS default "--quick".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
STEPS=",${STEPS:-build,test,memcheck,bench},"
export PYTHONUNBUFFERED=1
step() { [[ "$STEPS" == *",$1,"* ]]; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
[ -n "${QKERNELS_GIT_COMMIT:-}" ] || echo "warning: QKERNELS_GIT_COMMIT is not set: results will carry no commit" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

if step build; then
  cmake_v=$(cmake --version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+' | head -n1)
  if [ -z "$cmake_v" ] || ! python3 -c "import sys; v=tuple(map(int,'$cmake_v'.split('.'))); sys.exit(v < (3, 26))"; then
    echo "CMake ${cmake_v:-missing} is older than 3.26: carry a cmake wheel (WITH_CMAKE=1 bash scripts/fetch_gpu_wheels.sh)" >&2
    exit 1
  fi
  t0=$(date +%s)
  QKERNELS_CUDA_ARCHS=${ARCHS:-"75;80;89;90a"} QKERNELS_PTX=${PTX:-1} QKERNELS_FAMILIES=${FAMILIES:-all} \
    QKERNELS_BUILD_DIR=$PWD/build/gpu MAX_JOBS=${MAX_JOBS:-16} \
    python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
  rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
  if [ $rc -ne 0 ] || grep -q C7510 "$OUT/build.log"; then tail -n 80 "$OUT/build.log"; exit 1; fi
fi
python3 -m qkernels info | tee "$OUT/info.txt"
# Without a loaded library every GPU test would skip: stop here instead.
python3 -c "import sys; from qkernels import _loader as L; sys.exit(L.library_path is None or not L.build_info.get('built'))" \
  || { echo "the CUDA library is not built / not loaded (see info above and $OUT/build.log)" >&2; exit 1; }

if step test; then
  t0=$(date +%s)
  # the registry / build-info tests (CPU-fast) check what was built against what loaded
  python3 -m pytest python_tests/test_registry.py -q -p no:cacheprovider 2>&1 | tee "$OUT/registry_tests.log" | tail -n 3
  python3 -m pytest python_tests -m gpu -q -ra -p no:cacheprovider --timeout 300 --durations=15 \
    ${TEST_K:+-k "$TEST_K"} ${TEST_ARGS:-} 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 60
  echo "tests rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s"
fi
if step memcheck; then
  # No caching allocator here: an overrun into a neighbouring tensor is then a reported error.
  QKERNELS_TEST_REDUCED=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 -m pytest python_tests -m gpu -q -p no:cacheprovider --timeout 500 \
    -k "not compile and not graph${TEST_K:+ and ($TEST_K)}" ${TEST_ARGS:-} > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; tail -n 15 "$OUT/memcheck.log"
fi
if step bench; then
  rm -rf /tmp/qk_bench && mkdir -p /tmp/qk_bench
  python3 -m qkernels bench ${BENCH_ARGS:---quick} --out-dir /tmp/qk_bench 2>&1 | tee "$OUT/bench.log" | tail -n 60
  tar -czf "$OUT/bench_results.tar.gz" -C /tmp/qk_bench .
  ls -la /tmp/qk_bench
fi
