#!/usr/bin/env bash
# The GPU window: ONE command on the GPU machine, from the repository root, with the folder that
# scripts/gpu_prebuild.sh made (.gpu-carry) carried along. Compiles nothing. In 400 s at most
# (the machine's start makes it 9): the carried library loads and registers every expected kernel;
# the GPU tests of every test file; a randomized sweep per family against the references;
# compute-sanitizer memcheck; qkernels tune --quick; qkernels bench --quick with the tuned config.
# Each step has its own time cap, each test file and family its own process. It always ends with
# $OUT/summary.md (+ summary.json, evidence.tar.gz, logs.tar.gz, window.log: 5 files), rewritten
# after every step, so a crash, a hang or a kill from outside still returns what happened and where.
#
#   device call:  run(command="bash scripts/gpu_window.sh", carry=[".gpu-carry"], timeout_s=480)
#   here:         bash scripts/gpu_window.sh --dry-run      (the plan: every step, cap and command)
# Options (scripts/gpu_window.py --help): --steps tests,sweep  --tests scaled_mm,w4a16  --budget 200
#   --caps tests=200  --sweep-cases 200  --reduced  --carry DIR  --allow-no-gpu ...
# Environment: OUT (default ./gpu_out), PYTHON (python3), QK_CARRY (.gpu-carry), QK_WINDOW_BUDGET (400).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OUT
mkdir -p "$OUT"
console=$(mktemp /tmp/qk_window_console.XXXXXX)
set -o pipefail
"$PY" scripts/gpu_window.py run --out "$OUT" --python "$PY" "$@" 2>&1 | tee "$console"
rc=${PIPESTATUS[0]}
case " $* " in *" --dry-run "*|*" -h "*|*" --help "*) rm -f "$console"; exit "$rc" ;; esac
if [ ! -s "$OUT/summary.md" ]; then
  # The orchestrator died before writing any summary (no python3? a syntax error?): say so.
  {
    echo "# GPU window: FAIL (the orchestrator exited with code $rc before writing a summary)"
    echo
    echo "python: $(command -v "$PY" || echo "'$PY' not found"); $("$PY" --version 2>&1)"
    echo
    echo '```'
    tail -n 80 "$console"
    echo '```'
  } > "$OUT/summary.md"
  cp "$console" "$OUT/window.log"
  W=${QK_WINDOW_WORK:-/tmp/qk_window}; w=$(basename "$W")
  [ -d "$W" ] && tar -czf "$OUT/logs.tar.gz" -C "$(dirname "$W")" --exclude="$w/lib" --exclude="$w/site" "$w" 2>/dev/null
  cat "$OUT/summary.md"  # the last lines of the output: the device tool's output tail shows them
fi
rm -f "$console"
exit "$rc"
