"""The build without CUDA: a machine without nvcc still installs, and says so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_copy(dst):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith("python_tests/") or f.startswith("bench/results/"):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs a git checkout to copy the tracked sources")
def test_wheel_without_cuda_builds_and_records_why(tmp_path):
    src = tmp_path / "src"
    _tracked_copy(str(src))
    env = dict(os.environ, QKERNELS_SKIP_CUDA="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = list((tmp_path / "dist").glob("qkernels-*.whl"))
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        assert not [n for n in names if n.endswith(".so")], names
        info = json.loads(z.read("qkernels/_build_info.json"))
    assert info == {"built": False, "reason": "QKERNELS_SKIP_CUDA=1 at build time"}
