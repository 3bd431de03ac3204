"""The op families. Importing this package defines every ``torch.ops.qkernels`` op
(schemas in ``schemas.py``) with its fake and CPU reference implementations."""
from __future__ import annotations

import importlib

from . import _registry  # noqa: F401  (defines the schemas first)

# Family name -> module in this package. Each module exposes ``OPS`` (its op names).
# w4a16_hopper (the sm90 large-M W4A16 path) is compiled with the w4a16 build family.
FAMILIES = ("quant", "scaled_mm", "w4a16", "w4a16_hopper", "sparse24", "fp8_block")

_modules = {}
for _fam in FAMILIES:
    try:
        _modules[_fam] = importlib.import_module(f".{_fam}", __name__)
    except ModuleNotFoundError as e:  # a family still being written
        if e.name != f"{__name__}.{_fam}":
            raise


def family_ops() -> dict:
    """{family: tuple of op names} for the families present in this install."""
    return {f: tuple(m.OPS) for f, m in _modules.items()}


def python_cuda_ops() -> frozenset:
    """Ops whose CUDA implementation is registered from Python (a family's ``PYTHON_CUDA_OPS``,
    e.g. a Triton kernel), not by the compiled library."""
    return frozenset(n for m in _modules.values() for n in getattr(m, "PYTHON_CUDA_OPS", ()))


quant = _modules["quant"]
