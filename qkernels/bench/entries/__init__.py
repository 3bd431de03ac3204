"""Benchmark entries, one module per kernel family (``qkernels/bench/entries/<family>.py``).

Run them with ``qkernels bench`` (or ``python -m qkernels.bench``); the sweep, timing,
baselines and output files live in ``qkernels.bench`` (see ``bench/README.md``).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Tuple

FAMILIES: Tuple[str, ...] = ("quant", "scaled_mm", "w4a16", "w4a16_hopper", "sparse24", "fp8_block")


def load(family: str) -> ModuleType:
    """The entry module of ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown benchmark family {family!r}: choose from {', '.join(FAMILIES)}.")
    return importlib.import_module(f"{__name__}.{family}")


def availability() -> Dict[str, str]:
    """{family: "" if it can run on this machine, else why not}."""
    return {f: load(f).available() or "" for f in FAMILIES}
