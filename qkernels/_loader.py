"""Loads the compiled CUDA library (if any) and records what it provides.

The library only *adds* CUDA implementations to ops already defined in Python.
A library that is missing is normal on a machine without nvcc; one that is
present but fails to load is reported with a warning naming the cause (never
silently): the ops then fall back to raising a clear error on CUDA tensors.

Where the library comes from: ``$QKERNELS_LIBRARY`` when set (a library built elsewhere,
e.g. carried to a GPU machine by ``scripts/gpu_prebuild.sh``; its ``_build_info.json``
must sit beside it), else the ``_qkernels_cuda*.so`` installed in this package.
``library_source`` says which; ``qkernels info`` prints it.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Optional

import torch

from .ops import _registry, family_ops, python_cuda_ops

_HERE = os.path.dirname(os.path.abspath(__file__))
LIB_GLOB = "_qkernels_cuda*.so"
LIBRARY_ENV = "QKERNELS_LIBRARY"

build_info: dict = {}
library_path: Optional[str] = None
library_source: str = "package"  # or "QKERNELS_LIBRARY"
load_error: Optional[str] = None
_cuda_ops: frozenset = frozenset()  # ops the library registered a CUDA kernel for


def _load() -> None:
    global build_info, library_path, library_source, load_error, _cuda_ops
    env_lib = os.environ.get(LIBRARY_ENV, "").strip()
    if env_lib:
        library_source = LIBRARY_ENV
        env_lib = os.path.abspath(env_lib)
        info_path = os.path.join(os.path.dirname(env_lib), "_build_info.json")
        libs = [env_lib] if os.path.isfile(env_lib) else []
    else:
        info_path = os.path.join(_HERE, "_build_info.json")
        libs = sorted(glob.glob(os.path.join(_HERE, LIB_GLOB)))
    if os.path.exists(info_path):
        with open(info_path) as f:
            build_info = json.load(f)
    elif libs and env_lib:
        warnings.warn(f"qkernels: {LIBRARY_ENV}={env_lib} has no _build_info.json beside it: what it was built "
                      "for is unknown (capability queries answer False).")
    if os.environ.get("QKERNELS_DISABLE_CUDA_LIB") == "1":
        load_error = "disabled by QKERNELS_DISABLE_CUDA_LIB=1"
    elif env_lib and not libs:
        load_error = f"{LIBRARY_ENV}={env_lib} does not exist (unset it to use the package's own library)"
        warnings.warn(f"qkernels: {load_error}. CUDA kernels are unavailable; CPU references still work.")
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
    py_ops = python_cuda_ops()  # CUDA impls registered from Python (Triton): neither ours nor missing
    if library_path is not None:  # before the "not built" fallbacks below, which are CUDA kernels too
        _cuda_ops = frozenset(n for names in family_ops().values() for n in names
                              if n not in py_ops
                              and torch._C._dispatch_has_kernel_for_dispatch_key(_registry.qualname(n), "CUDA"))
    for fam, names in family_ops().items():
        missing = [n for n in names if not has_cuda_kernel(n) and n not in py_ops]
        if missing:
            why = load_error or f"family '{fam}' was not compiled (see QKERNELS_FAMILIES at build time)"
            _registry.register_missing_cuda(missing, why)


def has_cuda_kernel(name: str) -> bool:
    """True if the compiled library registered a CUDA kernel for ``qkernels::name`` (the
    "not built" fallbacks registered for the other ops do not count)."""
    return library_path is not None and name in _cuda_ops


_load()
