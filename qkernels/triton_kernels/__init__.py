"""Triton kernels that are part of qkernels (not benchmark peers).

``fp8_block``: the block-scaled FP8 GEMM (W8A8-FP8_BLOCK) for sm89 (Ada), where there is no
CUTLASS path, and the Triton peer of the block-FP8 benchmark on every FP8 arch.

Triton is an optional dependency: these modules import without it; their ``available()`` says
why they cannot run and their launchers raise ``RuntimeError`` with that reason.
"""
from __future__ import annotations

import os
from typing import Optional

try:  # defensive: a missing or broken Triton only disables the Triton kernels
    import triton  # noqa: F401

    IMPORT_ERROR: Optional[str] = None
except Exception as _e:  # noqa: BLE001  (ImportError, or a Triton that fails while importing)
    triton = None
    IMPORT_ERROR = f"triton is not importable ({type(_e).__name__}: {_e})"


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1`` set before
    Triton was imported). False without Triton."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
