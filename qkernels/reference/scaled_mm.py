"""W8A8 scaled GEMM (INT8 and FP8 e4m3): the executable spec (pure torch, any device).

The CUDA kernels in ``csrc/scaled_mm/`` (CUTLASS 2.x on sm75/80/89, CUTLASS 3.x on
sm90a) compute these functions; the GPU tests compare them against this module.

Operands (vLLM's ``cutlass_scaled_mm`` conventions)
    a ``[M, K]`` int8 or float8_e4m3fn, row-major (activations, quantised per token or
        per tensor);
    b ``[K, N]`` the same dtype, *column-major*: the transposed view ``w.t()`` of a
        row-major weight ``w [N, K]``;
    a_scales float32, 1 (per tensor) or M (per token) values;
    b_scales float32, 1 (per tensor) or N (per output channel) values;
    bias optional ``[N]`` in the output dtype (bfloat16 or float16).

Math
    acc[m, n] = sum_k a[m, k] * b[k, n]
        INT8: exact (int32 in the kernel; no overflow for K < 2^31 / 128^2 = 131072)
        FP8:  every product is exact in float32; the kernel sums in float32 (order and
              rounding differ from this spec, which sums exactly in float64)
    plain:             out = out_dtype(a_scale[m] * (b_scale[n] * float(acc)) + bias[n])
    azp, per tensor:   acc' = acc - azp_adj[n]             azp_adj = azp * colsum(b)
    azp, per token:    acc' = acc - azp[m] * azp_adj[n]     azp_adj = colsum(b)
                       out = out_dtype(a_scale[m] * (b_scale[n] * float(acc')) + bias[n])
    The azp ("activation zero point") variant serves INT8 asymmetric activations
    ``x ≈ a_scale * (q - azp)``: ``sum_k (q - azp) w = sum_k q w - azp * colsum(w)``.
    ``acc'`` is exact integer arithmetic (int32 in the kernel); the epilogue is float32
    with one rounding to the output dtype at the end.
"""
from __future__ import annotations

from typing import Optional

import torch

FP8_DTYPE = torch.float8_e4m3fn
INPUT_DTYPES = (torch.int8, FP8_DTYPE)
OUT_DTYPES = (torch.bfloat16, torch.float16)


def _exact_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` summed exactly (float64: int8 and e4m3 products and their sums fit in 53 bits
    for any K a Linear layer has)."""
    return a.double() @ b.double()


def azp_adj(b: torch.Tensor, azp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The int32 ``[N]`` correction term of the azp GEMM for an int8 ``b [K, N]``.

    ``azp`` None: ``colsum(b)`` (for per-token zero points, passed with ``azp`` to the GEMM);
    a per-tensor int32 zero point ``azp`` (one value): ``azp * colsum(b)``.
    """
    colsum = b.to(torch.int32).sum(dim=0, dtype=torch.int32)
    if azp is None:
        return colsum
    return colsum * azp.to(torch.int32).reshape(())


def _epilogue(acc, a_scales, b_scales, out_dtype, bias):
    out = a_scales.float().reshape(-1, 1) * (b_scales.float().reshape(1, -1) * acc.float())
    if bias is not None:
        out = out + bias.float().reshape(1, -1)
    return out.to(out_dtype)


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out [M, N] = a_scales * (b_scales * (a @ b)) + bias`` (see the module docstring)."""
    return _epilogue(_exact_acc(a, b), a_scales, b_scales, out_dtype, bias)


def scaled_mm_azp(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    azp_adj: torch.Tensor,
    azp: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The INT8 GEMM with asymmetric activations (see the module docstring)."""
    acc = _exact_acc(a, b)
    adj = azp_adj.double().reshape(1, -1)
    if azp is None:
        acc = acc - adj
    else:
        acc = acc - azp.double().reshape(-1, 1) * adj
    return _epilogue(acc, a_scales, b_scales, out_dtype, bias)
