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
``rint`` rounds half to even; ``sat8`` clamps to [-128, 127] (and maps NaN to -128, see below).
"Bit-exact" means against this spec evaluated on the CPU (on CUDA tensors torch turns ``x / c``
by a Python scalar into ``x * (1 / c)``).
Scales are float32 with shape ``[1]`` (per tensor) or ``[*x.shape[:-1], 1]`` (per token).

INT8 scale convention: ``absmax / 127`` (as vLLM's kernels): the row's largest magnitude maps
exactly to +-127, nothing clips. compressed-tensors' fake quantization (``calculate_qparams``,
what llm-compressor calibrates with) divides by 127.5 (= 255 / 2) instead: its scales are
127.5 / 127 = 1.0039x smaller, so its values are 0.39% finer and its absmax element rounds to
127.5 -> clamped to 127. The two differ by at most one step per element and are equally accurate
(measured on Gaussian rows of K = 4096: 0.870% vs 0.866% rms relative error); the loader uses these
ops, so an INT8 checkpoint's activations are quantized the vLLM way. Dynamic asymmetric INT8 widens the row's range to contain 0 (compressed-tensors'
convention too), which keeps 0 exact and the zero point in [-128, 127], so that the azp GEMM's
int32 correction ``azp * colsum(w)`` cannot overflow (|azp * colsum| <= 128 * 127 * K < 2^31 for
K < 131072). vLLM uses each row's own [min, max] instead (up to 2x finer on rows of one sign,
with unbounded zero points); :func:`qkernels.vllm.scaled_int8_quant` reproduces that convention.

Non-finite inputs (the NaN / inf policy; no op raises, since detecting them would need a host
synchronisation per call; check ``torch.isfinite`` yourself where it matters):

* NaN: ignored by every scale / zero-point reduction (absmax, min, max: the kernels' ``fmaxf`` /
  ``fminf`` semantics, as vLLM's kernels), so one NaN does not change the scale or any other
  output. The NaN element itself quantizes to FP8 NaN, or to -128 in INT8.
* +-inf: FP8 static saturates it to +-448; INT8 static to 127 / -128. In a dynamic scale it is
  the absmax: the scale of its row (per token) or of the tensor (per tensor) becomes inf, the
  finite elements there quantize to 0 (FP8, INT8 symmetric) or to the zero point -128 (INT8
  asymmetric), and the inf element to NaN (FP8) / -128 (INT8); an INT8 asymmetric row holding
  -inf gets zero point 0 and every element -128. Other rows are unaffected. ``scale_ub`` (FP8
  per token) bounds the scale: the inf element then saturates to +-448 instead.
* A zero, negative or non-finite static scale, and rows whose absmax is below 127 / FLT_MAX
  (INT8 symmetric), are outside the domain: the result is not specified.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
INT8_MIN, INT8_MAX = -128, 127


def _no_nan(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """``x`` with NaN replaced by ``value`` (infinities kept): what a reduction that ignores NaN sees,
    when ``value`` is the reduction's start value (0 for absmax and the zero-anchored min / max)."""
    return torch.where(torch.isnan(x), torch.full_like(x, value), x)


def _to_fp8(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    return (x.float() * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def static_scaled_fp8_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    inv = torch.reciprocal(scale.float().reshape(()))
    return _to_fp8(x, inv)


def dynamic_scaled_fp8_quant(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    absmax = _no_nan(x.float().abs()).amax() if x.numel() else torch.zeros((), device=x.device)
    scale = torch.clamp(absmax / FP8_MAX, min=FP8_MIN_SCALE).reshape(1)
    return _to_fp8(x, torch.reciprocal(scale)), scale


def dynamic_per_token_scaled_fp8_quant(
    x: torch.Tensor, scale_ub: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = _no_nan(xf.abs()).amax(dim=-1, keepdim=True)
    if scale_ub is not None:
        absmax = torch.minimum(absmax, scale_ub.float().reshape(()))
    scale = torch.clamp(absmax / FP8_MAX, min=FP8_MIN_SCALE)
    return _to_fp8(xf, torch.reciprocal(scale)), scale


def _sat8(q: torch.Tensor) -> torch.Tensor:
    # the kernels' fminf(fmaxf(q, -128), 127): fmaxf(NaN, -128) is -128
    return _no_nan(q, INT8_MIN).clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def static_scaled_int8_quant(
    x: torch.Tensor, scale: torch.Tensor, azp: Optional[torch.Tensor] = None
) -> torch.Tensor:
    q = torch.round(x.float() / scale.float().reshape(()))
    if azp is not None:
        q = q + azp.reshape(()).to(torch.float32)
    return _sat8(q)


def dynamic_scaled_int8_quant(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    absmax = _no_nan(xf.abs()).amax(dim=-1, keepdim=True)
    scale = absmax / 127.0
    inv = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    return _sat8(torch.round(xf * inv)), scale


def dynamic_scaled_int8_quant_azp(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x.float()
    finite_or_inf = _no_nan(xf)  # NaN -> 0: ignored, since the range always holds 0
    lo = torch.clamp(finite_or_inf.amin(dim=-1, keepdim=True), max=0.0)
    hi = torch.clamp(finite_or_inf.amax(dim=-1, keepdim=True), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(-128.0 - lo / scale)  # NaN only for a row holding -inf (-inf / inf)
    q = _sat8(torch.round(xf / scale) + zp)
    return q, scale, _no_nan(zp).to(torch.int32)  # the kernel's float -> int32 conversion turns NaN into 0
