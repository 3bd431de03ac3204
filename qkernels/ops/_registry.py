"""Defines the ``qkernels`` op namespace and helpers to attach implementations.

Every op gets, from its family module in ``qkernels/ops/``:
* a fake (meta) implementation (``register_fake``) -- used by ``torch.compile``;
* a CPU implementation that is the pure-torch reference (``register_reference``);
* a CUDA implementation from the compiled library, when it was built.
If the library was not built (no nvcc at install time) or failed to load, a CUDA
implementation that raises a clear error is registered instead, so that a call on
a CUDA tensor never dies with the dispatcher's generic "could not run" message.
"""
from __future__ import annotations

import torch

from .schemas import SCHEMAS

NAMESPACE = "qkernels"

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)

# A separate fragment for the Python-side implementations (CPU reference,
# CompositeExplicitAutograd helpers, the "not built" CUDA fallbacks).
_impl_lib = torch.library.Library(NAMESPACE, "FRAGMENT")


def qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def op(name: str):
    """The ``torch.ops.qkernels.<name>`` overload packet."""
    return getattr(torch.ops.qkernels, name)


def register_fake(name: str):
    """Decorator: the fake (meta) implementation of ``qkernels::name``."""
    return torch.library.register_fake(qualname(name), lib=_impl_lib)


# op name -> its pure-torch reference (the CPU implementation). Device-agnostic: called on CUDA
# tensors it runs the reference math there (qkernels.testing.sweep checks large GEMMs that way).
REFERENCES: dict = {}


def register_reference(name: str):
    """Decorator: register a pure-torch function as the CPU implementation."""

    def deco(fn):
        _impl_lib.impl(name, fn, "CPU")
        REFERENCES[name] = fn
        return fn

    return deco


def register_composite(name: str):
    """Decorator: an implementation for every backend (ops without tensor inputs)."""

    def deco(fn):
        _impl_lib.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return deco


def register_python_cuda(name: str):
    """Decorator: a CUDA implementation written in Python (e.g. a Triton kernel). The family lists
    the op in its ``PYTHON_CUDA_OPS`` so that the loader neither counts it as a compiled kernel nor
    registers a "not built" fallback over it."""

    def deco(fn):
        _impl_lib.impl(name, fn, "CUDA")
        return fn

    return deco


def missing_cuda_kernel(name: str, reason: str):
    """A CUDA implementation of ``qkernels::name`` that raises ``reason`` clearly."""

    def _raise(*args, **kwargs):
        raise RuntimeError(
            f"qkernels::{name} has no CUDA implementation in this install: {reason}. "
            "CPU tensors run the pure-torch reference; `qkernels info` shows what was built."
        )

    return _raise


def register_missing_cuda(names, reason: str) -> None:
    """Register CUDA implementations that raise ``reason`` for ops the library lacks."""
    for name in names:
        _impl_lib.impl(name, missing_cuda_kernel(name, reason), "CUDA")
