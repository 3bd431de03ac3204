#!/usr/bin/env bash
# The README's test command: install (editable, into .venv) and run the test suite.
# On a machine without a GPU the GPU tests are skipped with a reason; every CUDA
# source is still compiled (QKERNELS_CUDA_ARCHS defaults to 'min' there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
python -m qkernels info
set +e
python -m pytest python_tests -q -ra --durations=10 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit $rc
