"""Provenance of a benchmark run: which GPU, software and commit produced the rows.

A results file without it is not evidence (see ``docs/bench-results.md``). The git
commit comes from ``QKERNELS_GIT_COMMIT`` when set (a copy of the tree without
``.git``, e.g. on a rented GPU machine), otherwise from ``git`` in the source tree;
``git_dirty`` is None when it cannot be known.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_state() -> Tuple[Optional[str], Optional[bool]]:
    """(full commit sha or None, dirty flag or None when unknown)."""
    env = os.environ.get("QKERNELS_GIT_COMMIT")
    if env:
        dirty = os.environ.get("QKERNELS_GIT_DIRTY")
        return env, (dirty == "1") if dirty in ("0", "1") else None
    sha = _git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


def _driver_version() -> Optional[str]:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def gpu_slug(name: str) -> str:
    """A folder name for a GPU: ``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``, ``NVIDIA H100 PCIe`` ->
    ``h100-pcie``, ``NVIDIA A100-SXM4-80GB`` -> ``a100-sxm``, ``NVIDIA H200`` -> ``h200``."""
    n = name.lower().replace("nvidia", " ")
    m = re.search(r"\b([a-z]+\d+[a-z]*)\b", n)
    if not m:
        return re.sub(r"[^a-z0-9]+", "-", n).strip("-") or "unknown-gpu"
    for marker, suffix in (("pcie", "-pcie"), ("nvl", "-nvl"), ("sxm", "-sxm"), ("hbm3", "-sxm")):
        if marker in n:
            return m.group(1) + suffix
    return m.group(1)


def collect(command: Optional[str] = None, measured_peaks: Optional[dict] = None,
            device: Optional[torch.device] = None, extra: Optional[dict] = None) -> dict:
    """The ``provenance`` object of a results file (fields as in ``docs/bench-results.md``)."""
    import qkernels

    sha, dirty = git_state()
    prov = {
        "gpu": None, "sm": None, "num_sms": None, "driver": _driver_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "qkernels": qkernels.__version__,
        "git_commit": sha, "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "measured_peaks": measured_peaks or {},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(device or torch.device("cuda"))
        prov.update(gpu=p.name, sm=f"{p.major}.{p.minor}", num_sms=p.multi_processor_count)
    if extra:
        prov.update(extra)
    return prov
