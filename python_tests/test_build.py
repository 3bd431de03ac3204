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
    """The source files of the checkout: tracked ones and new ones git does not ignore (a clean clone: the same)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith("python_tests/") or f.startswith("bench/results/") or not os.path.isfile(os.path.join(ROOT, f)):
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
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert info == {"built": False, "reason": "QKERNELS_SKIP_CUDA=1 at build time"}
    # the license as a PEP 639 SPDX expression (a TOML table is deprecated by setuptools)
    assert "License-Expression: Apache-2.0" in meta, meta[:1500]
    assert "qkernels/vllm.py" in names and "qkernels/bench/entries/quant.py" in names


# ------------------------------------------------------------------ `pip install .` (not editable) in a fresh venv
# test_cli's synthetic llama-3.1-8b results, written by the installed package's own writer
_LLAMA_RESULTS = ("import runpy, sys; runpy.run_path(sys.argv[2])['_write_llama_results'](sys.argv[1])")


def _run(cmd, cwd, env=None, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs a git checkout to copy the sources")
def test_pip_install_in_fresh_venv_runs_the_cli(tmp_path):
    """`pip install .` (not editable, QKERNELS_SKIP_CUDA=1) into a fresh venv, then, from outside the source
    tree: `qkernels --version`, `qkernels bench --help`, a CPU dry run of the whole suite (every family's
    benchmark entry ships in the package) and `qkernels advise` on a results file. The venv reuses this
    interpreter's packages (torch...) through a .pth line instead of downloading them."""
    src = tmp_path / "src"
    _tracked_copy(str(src))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = str(venv / "bin" / "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    # after the venv's own site-packages: this interpreter's packages (torch, pip, setuptools), without
    # running their .pth files (so the editable qkernels of a development venv is not visible)
    with open(os.path.join(site, "zz_parent_packages.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(os.environ, QKERNELS_SKIP_CUDA="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    rc, out = _run([vpy, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q", str(src)], tmp_path, env)
    assert rc == 0, out[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    rc, out = _run([vpy, "-c", "import qkernels, qkernels.vllm, qkernels.bench.entries as e; print(qkernels.__file__);"
                              "print(','.join(e.FAMILIES))"], work, env)
    assert rc == 0 and out.startswith(site), out[-3000:]  # the installed copy, not the source tree
    qk = [vpy, "-m", "qkernels"]
    rc, out = _run(qk + ["--version"], work, env)
    assert rc == 0 and out.strip() == "qkernels 0.1.0", out
    rc, out = _run(qk + ["bench", "--help"], work, env)
    assert rc == 0 and "--dry-run" in out and "--family" in out, out[-3000:]
    rc, out = _run(qk + ["bench", "--dry-run"], work, env)
    assert rc == 0 and "families ran on the CPU reference ops" in out, out[-3000:]
    assert "Failed" not in out and " 0 skipped" in out, out[-3000:]
    rc, out = _run(qk + ["bench", "--quick"], work, env)  # no GPU: the message, whose suggestions work here
    assert rc == 1 and "qkernels bench --dry-run" in out and "qkernels-results" in out, out[-3000:]
    rc, out = _run([vpy, "-c", _LLAMA_RESULTS, str(work / "r.json"), os.path.join(ROOT, "python_tests", "test_cli.py")],
                   work, env)
    assert rc == 0, out[-3000:]
    rc, out = _run(qk + ["advise", "--model", "llama-3.1-8b", "--results", str(work / "r.json"), "--batch", "1,64"],
                   work, env)
    assert rc == 0 and "| 64 |" in out, out[-3000:]
    rc, out = _run(qk + ["advise", "--model", "llama-3.1-8b"], work, env)  # no GPU, no results: says what to do
    assert rc == 2 and "name one with --gpu" in out and "Traceback" not in out, out[-3000:]
