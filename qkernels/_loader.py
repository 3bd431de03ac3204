"""Loads the compiled CUDA library (if any) and records what it provides.

The library only *adds* CUDA implementations to ops already defined in Python.
A library that is missing is normal on a machine without nvcc; one that is
present but fails to load is reported with a warning naming the cause (never
silently): the ops then fall back to raising a clear error on CUDA tensors.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Optional

import torch

from .ops import _registry, family_ops

_HERE = os.path.dirname(os.path.abspath(__file__))
LIB_GLOB = "_qkernels_cuda*.so"

build_info: dict = {}
library_path: Optional[str] = None
load_error: Optional[str] = None


def _load() -> None:
    global build_info, library_path, load_error
    info_path = os.path.join(_HERE, "_build_info.json")
    if os.path.exists(info_path):
        with open(info_path) as f:
            build_info = json.load(f)
    libs = sorted(glob.glob(os.path.join(_HERE, LIB_GLOB)))
    if os.environ.get("QKERNELS_DISABLE_CUDA_LIB") == "1":
        load_error = "disabled by QKERNELS_DISABLE_CUDA_LIB=1"
    elif not libs:
        load_error = build_info.get("reason") or "the CUDA library was not built (no nvcc at install time?)"
    else:
        library_path = libs[-1]
        try:
            torch.ops.load_library(library_path)
        except (OSError, RuntimeError) as e:
            load_error = f"loading {library_path} failed: {e}"
            warnings.warn(f"qkernels: {load_error}. CUDA kernels are unavailable; CPU references still work.")
            library_path = None
    for fam, names in family_ops().items():
        missing = [n for n in names if not has_cuda_kernel(n)]
        if missing:
            why = load_error or f"family '{fam}' was not compiled (see QKERNELS_FAMILIES at build time)"
            _registry.register_missing_cuda(missing, why)


def has_cuda_kernel(name: str) -> bool:
    """True if the compiled library registered a CUDA kernel for ``qkernels::name``."""
    if library_path is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(_registry.qualname(name), "CUDA")


_load()
