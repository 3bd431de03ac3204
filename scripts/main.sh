#!/usr/bin/env bash
# The README's main job: install (editable, into .venv), then on a GPU a quick
# benchmark of every built family; without a GPU a clear message and a CPU demo of
# the compressed-tensors loader running on the reference ops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
python -m qkernels info
python -m qkernels quickstart "$@"
