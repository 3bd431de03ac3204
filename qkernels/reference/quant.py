"""Activation quantisation: the executable spec (pure torch, runs on any device).

The CUDA kernels in ``csrc/quant/`` compute exactly these functions; tests compare
them bit for bit (same float32 operations in the same order).

Math, for an input ``x`` viewed as ``[M, K]`` rows (tokens), all in float32:

FP8 (e4m3, max 448)
    static:            q = fp8(clamp(x * (1/scale), -448, 448))
    dynamic tensor:    scale = max(absmax(x) / 448, 1/(448*512));   q as static
    dynamic per-token: scale_m = max(min(absmax(x_m), ub) / 448, 1/(448*512)); q as static per row
                       (``ub`` is the optional upper bound ``scale_ub``, a float32 [1] tensor)
INT8
    static:            q = sat8(rint(x / scale) + azp)              (azp = 0 if not given)
    dynamic symmetric: scale_m = absmax(x_m) / 127;  q = sat8(rint(x * (127 / absmax(x_m))))
                       (a row of zeros gets scale 0 and q = 0)
    dynamic asym:      lo = min(min(x_m), 0), hi = max(max(x_m), 0)  (the range always holds 0)
                       scale_m = (hi - lo) / 255  (1 if hi == lo)
                       azp_m = rint(-128 - lo / scale_m)             (int32)
                       q = sat8(rint(x / scale_m) + azp_m)
``rint`` rounds half to even; ``sat8`` clamps to [-128, 127].
Domain: finite inputs, finite positive static scales, and (int8 symmetric) rows whose absmax is
not below 127 / FLT_MAX. Outside it (NaN, inf, a zero static scale, denormal-only rows) the
kernels and this spec may differ: the kernels' reductions ignore NaN (as vLLM's do) where
torch's propagate it, and float-to-int conversions of NaN are not specified by C++. "Bit-exact"
means against this spec evaluated on the CPU (on CUDA tensors torch turns ``x / c`` by a Python
scalar into ``x * (1 / c)``).
Scales are float32 with shape ``[1]`` (per tensor) or ``[*x.shape[:-1], 1]`` (per token).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
INT8_MIN, INT8_MAX = -128, 127


def _to_fp8(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    return (x.float() * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def static_scaled_fp8_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    inv = torch.reciprocal(scale.float().reshape(()))
    return _to_fp8(x, inv)


def dynamic_scaled_fp8_quant(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    absmax = x.float().abs().amax() if x.numel() else torch.zeros((), device=x.device)
    scale = torch.clamp(absmax / FP8_MAX, min=FP8_MIN_SCALE).reshape(1)
    return _to_fp8(x, torch.reciprocal(scale)), scale


def dynamic_per_token_scaled_fp8_quant(
    x: torch.Tensor, scale_ub: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = xf.abs().amax(dim=-1, keepdim=True)
    if scale_ub is not None:
        absmax = torch.minimum(absmax, scale_ub.float().reshape(()))
    scale = torch.clamp(absmax / FP8_MAX, min=FP8_MIN_SCALE)
    return _to_fp8(xf, torch.reciprocal(scale)), scale


def _sat8(q: torch.Tensor) -> torch.Tensor:
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def static_scaled_int8_quant(
    x: torch.Tensor, scale: torch.Tensor, azp: Optional[torch.Tensor] = None
) -> torch.Tensor:
    q = torch.round(x.float() / scale.float().reshape(()))
    if azp is not None:
        q = q + azp.reshape(()).to(torch.float32)
    return _sat8(q)


def dynamic_scaled_int8_quant(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = xf.abs().amax(dim=-1, keepdim=True)
    scale = absmax / 127.0
    inv = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    return _sat8(torch.round(xf * inv)), scale


def dynamic_scaled_int8_quant_azp(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x.float()
    lo = torch.clamp(xf.amin(dim=-1, keepdim=True), max=0.0)
    hi = torch.clamp(xf.amax(dim=-1, keepdim=True), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    azp = torch.round(-128.0 - lo / scale)
    q = _sat8(torch.round(xf / scale) + azp)
    return q, scale, azp.to(torch.int32)
