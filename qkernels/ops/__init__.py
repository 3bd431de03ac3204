"""The op families. Importing this package defines every ``torch.ops.qkernels`` op
(schemas in ``schemas.py``) with its fake and CPU reference implementations."""
from __future__ import annotations

import importlib

from . import _registry  # noqa: F401  (defines the schemas first)

# Family name -> module in this package. Each module exposes ``OPS`` (its op names).
FAMILIES = ("quant", "scaled_mm", "w4a16", "sparse24")

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


quant = _modules["quant"]
