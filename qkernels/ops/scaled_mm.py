"""W8A8 scaled GEMM, INT8 and FP8 e4m3: ``out = a_scales * (b_scales * (a @ b)) + bias``.

The kernels (``csrc/scaled_mm``; layouts and dispatch table in its README):

========  =====================================  ==================================
arch      INT8 (+ azp)                           FP8 e4m3
========  =====================================  ==================================
sm75      CUTLASS 2.x tensor op (m8n8k16)        --
sm80-88   CUTLASS 2.x tensor op, multistage      --
sm89      the sm80 kernels                       CUTLASS 2.x tensor op (m16n8k32)
sm90      CUTLASS 3.x TMA warp-specialized       CUTLASS 3.x TMA warp-specialized
========  =====================================  ==================================

Conventions follow vLLM's ``cutlass_scaled_mm`` so engines can swap it in: ``a [M, K]``
row-major; ``b [K, N]`` column-major, i.e. ``weight.t()`` of a row-major ``[N, K]``
weight; float32 scales, per tensor (1 value) or per token (M values) for ``a``, per
tensor or per output channel (N values) for ``b``; optional ``bias [N]`` in the output
dtype (bfloat16 or float16). Scales, bias and the azp correction are applied in the GEMM
epilogue (no extra pass), accumulation is int32 (INT8) or float32 (FP8).

Requirements: ``K > 0``, ``K % 16 == 0``, ``N % 16 == 0`` (16-byte aligned rows for the
vectorised / TMA loads and stores); any ``M >= 0``. ``a``'s row stride and ``b``'s
column stride must be multiples of 16 elements (a sliced view usually is).

Every op has a fake implementation (``torch.compile``), a CPU implementation (the
reference, ``qkernels.reference.scaled_mm``) and, when built, CUDA kernels that
neither synchronise with the host nor allocate outside torch's caching allocator
(CUDA-graph safe). :func:`supports` tells whether this install runs a dtype on a GPU.
Set ``QKERNELS_FORCE_ARCH`` (e.g. ``80``) to run an older arch's kernels on a newer
GPU for testing (needs a ``QKERNELS_PTX=1`` build that includes that arch).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import scaled_mm as ref
from . import _checks as C
from ._registry import op, register_composite, register_fake, register_reference

FP8_DTYPE = ref.FP8_DTYPE
INPUT_DTYPES = ref.INPUT_DTYPES
OUT_DTYPES = ref.OUT_DTYPES
K_MULTIPLE = 16
INT8_MAX_K = 1 << 17  # INT8: the int32 sums are exact for K * 128^2 < 2^31 (the reference's domain)
N_MULTIPLE = 16
_PAD_HINT = "Pad the weight (and the activations' K) with zeros to a multiple of 16."


# ---------------------------------------------------------------- checks (Python side)
def _check_operands(name: str, a, b, a_scales, b_scales, out_dtype, bias):
    C.check_dtype(name, "a", a, INPUT_DTYPES,
                  hint="Quantise activations with qkernels.scaled_int8_quant / scaled_fp8_quant.")
    if b.dtype != a.dtype:
        C.fail(name, f"a is {str(a.dtype).replace('torch.', '')} but b is {str(b.dtype).replace('torch.', '')}: "
                     "both operands must have the same dtype (int8 x int8 or float8_e4m3fn x float8_e4m3fn).")
    m, k, n = C.check_gemm_operands(name, a, b)
    if k == 0:
        C.fail(name, "K = 0: the GEMM needs at least one input feature.")
    C.check_multiple(name, "K", k, K_MULTIPLE, _PAD_HINT)
    C.check_multiple(name, "N", n, N_MULTIPLE, _PAD_HINT)
    if a.dtype == torch.int8 and k >= INT8_MAX_K:
        C.fail(name, f"K = {k} is too deep for INT8: the int32 accumulator is exact only for K < {INT8_MAX_K} "
                     "(2^31 / 128^2); split K and add the outputs.")
    if a.stride(1) != 1 or (m > 1 and (a.stride(0) % 16 != 0 or a.stride(0) < k)):
        C.fail(name, f"a (shape {tuple(a.shape)}, strides {a.stride()}) must be row-major with a row stride >= K "
                     "that is a multiple of 16 elements: call a.contiguous().")
    if b.stride(0) != 1 or (n > 1 and (b.stride(1) % 16 != 0 or b.stride(1) < k)):
        C.fail(name, f"b (shape {tuple(b.shape)}, strides {b.stride()}) must be column-major (the .t() view of a "
                     "row-major [N, K] weight) with a column stride >= K that is a multiple of 16: pass w.t() of a "
                     "contiguous w.")
    C.check_scale(name, "a_scales", a_scales, (1, m), f"1 (per tensor) or M = {m} (per token) values")
    C.check_scale(name, "b_scales", b_scales, (1, n), f"1 (per tensor) or N = {n} (per channel) values")
    C.check_contiguous(name, "a_scales", a_scales)
    C.check_contiguous(name, "b_scales", b_scales)
    C.check_out_dtype(name, out_dtype, OUT_DTYPES)
    C.check_bias(name, bias, n, out_dtype)
    C.check_same_device(name, a=a, b=b, a_scales=a_scales, b_scales=b_scales, bias=bias)


def _check_azp(name: str, a, b, azp_adj, azp):
    if a.dtype != torch.int8:
        C.fail(name, f"the azp GEMM is for int8 activations; got {str(a.dtype).replace('torch.', '')}. FP8 "
                     "activations are symmetric: use scaled_mm.")
    n, m = b.size(1), a.size(0)
    C.check_dtype(name, "azp_adj", azp_adj, (torch.int32,), hint="azp_adj is int32: see qkernels.ops.scaled_mm.azp_adj.")
    if azp_adj.numel() != n:
        C.fail(name, f"azp_adj has shape {tuple(azp_adj.shape)}; expected [{n}] (one value per output channel).")
    C.check_contiguous(name, "azp_adj", azp_adj)
    if azp is not None:
        C.check_dtype(name, "azp", azp, (torch.int32,))
        if azp.numel() != m:
            C.fail(name, f"azp has shape {tuple(azp.shape)}; expected M = {m} per-token zero points. A per-tensor "
                         "zero point is folded into azp_adj (azp_adj(b, azp)) and azp is then None.")
        C.check_contiguous(name, "azp", azp)
    C.check_same_device(name, a=a, azp_adj=azp_adj, azp=azp)


def _check_out(name: str, out, a, b):
    want = (a.size(0), b.size(1))
    if tuple(out.shape) != want:
        C.fail(name, f"out has shape {tuple(out.shape)}; expected {want}.")
    C.check_contiguous(name, "out", out)
    C.check_same_device(name, a=a, out=out)


# ---------------------------------------------------------------- scaled_mm
@register_fake("scaled_mm")
def _(a, b, a_scales, b_scales, out_dtype, bias=None):
    _check_operands("scaled_mm", a, b, a_scales, b_scales, out_dtype, bias)
    return a.new_empty((a.size(0), b.size(1)), dtype=out_dtype)


@register_reference("scaled_mm")
def _(a, b, a_scales, b_scales, out_dtype, bias=None):
    _check_operands("scaled_mm", a, b, a_scales, b_scales, out_dtype, bias)
    return ref.scaled_mm(a, b, a_scales, b_scales, out_dtype, bias)


@register_fake("scaled_mm_out")
def _(out, a, b, a_scales, b_scales, bias=None):
    _check_operands("scaled_mm_out", a, b, a_scales, b_scales, out.dtype, bias)
    _check_out("scaled_mm_out", out, a, b)


@register_reference("scaled_mm_out")
def _(out, a, b, a_scales, b_scales, bias=None):
    _check_operands("scaled_mm_out", a, b, a_scales, b_scales, out.dtype, bias)
    _check_out("scaled_mm_out", out, a, b)
    out.copy_(ref.scaled_mm(a, b, a_scales, b_scales, out.dtype, bias))


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out [M, N] = a_scales * (b_scales * (a @ b)) + bias``, INT8 or FP8 operands.

    * ``a``: int8 or float8_e4m3fn ``[M, K]``, row-major; ``b``: the same dtype, ``[K, N]``
      column-major (``weight.t()``).
    * ``a_scales``: float32 ``[1]`` (per tensor) or ``[M, 1]`` / ``[M]`` (per token).
    * ``b_scales``: float32 ``[1]`` or per channel ``[1, N]`` / ``[N]`` / ``[N, 1]``.
    * ``out_dtype``: bfloat16 or float16; ``bias``: optional ``[N]`` of ``out_dtype``.
    * ``out``: optional preallocated ``[M, N]`` output (its dtype is the output dtype).

    ``K`` and ``N`` must be multiples of 16. Returns ``out``.
    """
    if out is None:
        return op("scaled_mm")(a, b, a_scales, b_scales, out_dtype, bias)
    if out.dtype != out_dtype:
        C.fail("scaled_mm", f"out has dtype {out.dtype} but out_dtype is {out_dtype}.")
    op("scaled_mm_out")(out, a, b, a_scales, b_scales, bias)
    return out


# ---------------------------------------------------------------- scaled_mm_azp
@register_fake("scaled_mm_azp")
def _(a, b, a_scales, b_scales, out_dtype, azp_adj, azp=None, bias=None):
    _check_operands("scaled_mm_azp", a, b, a_scales, b_scales, out_dtype, bias)
    _check_azp("scaled_mm_azp", a, b, azp_adj, azp)
    return a.new_empty((a.size(0), b.size(1)), dtype=out_dtype)


@register_reference("scaled_mm_azp")
def _(a, b, a_scales, b_scales, out_dtype, azp_adj, azp=None, bias=None):
    _check_operands("scaled_mm_azp", a, b, a_scales, b_scales, out_dtype, bias)
    _check_azp("scaled_mm_azp", a, b, azp_adj, azp)
    return ref.scaled_mm_azp(a, b, a_scales, b_scales, out_dtype, azp_adj, azp, bias)


@register_fake("scaled_mm_azp_out")
def _(out, a, b, a_scales, b_scales, azp_adj, azp=None, bias=None):
    _check_operands("scaled_mm_azp_out", a, b, a_scales, b_scales, out.dtype, bias)
    _check_azp("scaled_mm_azp_out", a, b, azp_adj, azp)
    _check_out("scaled_mm_azp_out", out, a, b)


@register_reference("scaled_mm_azp_out")
def _(out, a, b, a_scales, b_scales, azp_adj, azp=None, bias=None):
    _check_operands("scaled_mm_azp_out", a, b, a_scales, b_scales, out.dtype, bias)
    _check_azp("scaled_mm_azp_out", a, b, azp_adj, azp)
    _check_out("scaled_mm_azp_out", out, a, b)
    out.copy_(ref.scaled_mm_azp(a, b, a_scales, b_scales, out.dtype, azp_adj, azp, bias))


def scaled_mm_azp(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    azp_adj: torch.Tensor,
    azp: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """INT8 GEMM with asymmetric activations ``x ≈ a_scales * (a - azp)``.

    ``out = a_scales * (b_scales * (a @ b - azp ⊗ azp_adj)) + bias`` with, per token,
    ``azp`` int32 ``[M]`` / ``[M, 1]`` and ``azp_adj = colsum(b)``; or, for a per-tensor zero
    point ``z``, ``azp=None`` and ``azp_adj = z * colsum(b)``. :func:`azp_adj` computes
    either (once, at load time). Other arguments as :func:`scaled_mm`.
    """
    if out is None:
        return op("scaled_mm_azp")(a, b, a_scales, b_scales, out_dtype, azp_adj, azp, bias)
    if out.dtype != out_dtype:
        C.fail("scaled_mm_azp", f"out has dtype {out.dtype} but out_dtype is {out_dtype}.")
    op("scaled_mm_azp_out")(out, a, b, a_scales, b_scales, azp_adj, azp, bias)
    return out


def azp_adj(b: torch.Tensor, azp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The int32 ``[N]`` ``azp_adj`` of an int8 weight ``b [K, N]`` (``weight.t()``).

    ``colsum(b)`` for per-token zero points, ``azp * colsum(b)`` for a per-tensor one.
    """
    C.check_dtype("azp_adj", "b", b, (torch.int8,))
    return ref.azp_adj(b, azp).contiguous()


# ---------------------------------------------------------------- capability
# Which compiled kernel group serves a (capability, dtype): the groups are declared in
# csrc/scaled_mm/sources.cmake and recorded in the build info. Mirrors the dispatch in
# csrc/scaled_mm/scaled_mm_torch.cpp.
def kernel_group(device_capability: int, dtype: torch.dtype) -> Optional[str]:
    """The kernel group (``SM75``, ``SM80``, ``SM89``, ``SM90``) that runs ``dtype`` on a GPU
    of that capability, or None if there is none (FP8 below sm89, anything below sm75)."""
    cap = int(device_capability)
    if cap == 90:
        return "SM90"
    if dtype == FP8_DTYPE:
        return "SM89" if cap >= 89 else None
    if dtype == torch.int8:
        return "SM80" if cap >= 80 else ("SM75" if cap >= 75 else None)
    return None


@register_composite("scaled_mm_supports")
def _(device_capability: int, dtype: torch.dtype) -> bool:
    from .. import _loader

    group = kernel_group(device_capability, dtype)
    if group is None or _loader.library_path is None:
        return False
    archs = _loader.build_info.get("groups", {}).get("scaled_mm", {}).get(group)
    if not archs:
        return False
    cap = int(device_capability)
    if cap == 90:
        return "90a" in archs
    # A cubin runs on its own major arch at >= its minor; PTX JITs on anything newer.
    same_major = any(a.isdigit() and int(a) // 10 == cap // 10 and int(a) <= cap for a in archs)
    return same_major or bool(_loader.build_info.get("ptx"))


def supports(device_capability: int, dtype: torch.dtype) -> bool:
    """True if this install runs :func:`scaled_mm` with ``dtype`` (int8 or float8_e4m3fn)
    operands on a GPU of that capability (``major*10+minor``, e.g. 90).

    INT8 needs sm75+, FP8 sm89+, and the matching kernels compiled (`qkernels info`).
    """
    return bool(op("scaled_mm_supports")(int(device_capability), dtype))


OPS = ("scaled_mm", "scaled_mm_out", "scaled_mm_azp", "scaled_mm_azp_out", "scaled_mm_supports")
