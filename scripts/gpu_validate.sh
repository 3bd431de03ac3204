#!/usr/bin/env bash
# One call on the GPU machine (no package registry there): build for its arch, run
# the GPU tests (once plainly, once a reduced set under compute-sanitizer memcheck),
# then the benchmarks. Logs and JSON go to $OUT (default: ./gpu_out).
#
# Prerequisites, prepared on the CPU machine (see README "Validating on a GPU"):
#   .whl/ holds nvidia-cutlass==4.2.0.0 (and any other wheel missing there), carried with
#   the call; QKERNELS_GIT_COMMIT names the commit being validated (the copy has no .git).
# Switches: ARCHS (default "75;80;89;90a" + PTX, so the sm75/sm80/sm89 paths can be forced with
# QKERNELS_FORCE_ARCH on the H100), FAMILIES (default all), SKIP_SANITIZER=1, SKIP_BENCH=1,
# BENCH_ARGS (default "--quick").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
QKERNELS_CUDA_ARCHS=${ARCHS:-"75;80;89;90a"} QKERNELS_PTX=${PTX:-1} QKERNELS_FAMILIES=${FAMILIES:-all} \
  QKERNELS_BUILD_DIR=$PWD/build/gpu MAX_JOBS=${MAX_JOBS:-16} \
  python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
if [ $rc -ne 0 ] || grep -q C7510 "$OUT/build.log"; then tail -n 80 "$OUT/build.log"; exit 1; fi
python3 -m qkernels info | tee "$OUT/info.txt"
python3 -m pytest python_tests -m gpu -q -ra -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 40
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  QKERNELS_TEST_REDUCED=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 -m pytest python_tests -m gpu -q -x -p no:cacheprovider -k "not compile and not graph" \
    > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; tail -n 15 "$OUT/memcheck.log"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 -m qkernels bench ${BENCH_ARGS:---quick} --out-dir "$OUT" 2>&1 | tail -n 60
fi
