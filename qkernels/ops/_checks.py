"""Input checks with readable errors: what was given, what is supported, what to do.

These run in the Python wrappers, the fake implementations (so ``torch.compile``
reports them at trace time) and the CPU references. The CUDA implementations
repeat the checks that guard memory safety in C++ (``csrc/core/checks.h``).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import torch


class QKernelsInputError(ValueError):
    """A tensor argument of a qkernels op is not supported (dtype, shape, layout...)."""


def _fmt_dtypes(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def fail(op: str, msg: str) -> None:
    raise QKernelsInputError(f"qkernels.{op}: {msg}")


def check_dtype(op: str, name: str, t: torch.Tensor, allowed: Sequence[torch.dtype], hint: str = "") -> None:
    if t.dtype not in allowed:
        fail(
            op,
            f"{name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {_fmt_dtypes(allowed)}."
            + (f" {hint}" if hint else ""),
        )


def check_dim(op: str, name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        fail(op, f"{name} must be {ndim}-D; got shape {tuple(t.shape)}.")


def check_min_dim(op: str, name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() < ndim:
        fail(op, f"{name} must have at least {ndim} dims; got shape {tuple(t.shape)}.")


def check_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        fail(op, f"{name} (shape {tuple(t.shape)}, strides {t.stride()}) must be contiguous: call .contiguous() first.")


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.size(-1) > 1 and t.stride(-1) != 1:
        fail(op, f"{name} must be contiguous along its last dim; got strides {t.stride()}: call .contiguous() first.")


def check_gemm_operands(op: str, a: torch.Tensor, b: torch.Tensor) -> Tuple[int, int, int]:
    """``a`` [M, K] and ``b`` [K, N] (the weight's ``.t()``), both 2-D; returns ``(M, K, N)``."""
    check_dim(op, "a", a, 2)
    check_dim(op, "b", b, 2)
    m, k = a.shape
    if b.size(0) != k:
        fail(op, f"a {tuple(a.shape)} and b {tuple(b.shape)} do not chain: b must be [K, N] = weight.t() with K = {k}.")
    return m, k, b.size(1)


def check_multiple(op: str, what: str, value: int, multiple: int, hint: str = "") -> None:
    if value % multiple != 0:
        fail(op, f"{what} = {value} must be a multiple of {multiple}." + (f" {hint}" if hint else ""))


def check_same_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len({str(d) for d in devs.values()}) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        fail(op, f"all tensors must be on one device; got {desc}. Move them with .to(device).")


def check_scale(op: str, name: str, s: torch.Tensor, allowed_numel: Sequence[int], what: str) -> None:
    """A float32 scale tensor whose numel is one of ``allowed_numel`` (e.g. 1 or M)."""
    check_dtype(op, name, s, (torch.float32,), hint="Scales are float32: use .float().")
    if s.numel() not in allowed_numel:
        fail(op, f"{name} has shape {tuple(s.shape)} ({s.numel()} elements); expected {what}.")


def check_out_dtype(op: str, out_dtype: torch.dtype, allowed: Sequence[torch.dtype]) -> None:
    if out_dtype not in allowed:
        fail(op, f"out_dtype {out_dtype} is not supported; supported: {_fmt_dtypes(allowed)}.")


def check_bias(op: str, bias: Optional[torch.Tensor], n: int, dtype: torch.dtype) -> None:
    """An optional bias: contiguous ``[n]`` in the output dtype."""
    if bias is None:
        return
    check_dtype(op, "bias", bias, (dtype,), hint="The bias has the output dtype.")
    if bias.numel() != n:
        fail(op, f"bias has shape {tuple(bias.shape)}; expected [{n}].")
    check_contiguous(op, "bias", bias)


def rows(t: torch.Tensor) -> int:
    """Number of rows (tokens) of an input with any leading dims: prod(shape[:-1])."""
    n = 1
    for d in t.shape[:-1]:
        n *= d
    return n
