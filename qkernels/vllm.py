"""vLLM-compatible entry points: ``from qkernels import vllm as ops`` where an engine has
``from vllm import _custom_ops as ops``.

Each function has the name, argument order, layouts and return conventions of the function of the
same name in vLLM's ``vllm/_custom_ops.py`` (``per_token_group_quant_fp8``: vLLM's
``quantization/utils/fp8_utils.py``), and is a thin adapter over ``torch.ops.qkernels.*``: tensors
on CPU run the qkernels references, CUDA tensors the kernels. Every function is traceable by
``torch.compile`` and CUDA-graph safe (no host synchronisation) where the op it calls is, except
where noted below.

===================================  =============================================================
vLLM function                        qkernels op, and what differs
===================================  =============================================================
cutlass_scaled_mm                    scaled_mm (per tensor / token x per tensor / channel) or
                                     fp8_block_scaled_mm (a_scales [M, K/128], b_scales
                                     [K/128, N/128]: vLLM's blockwise form). [..., K] activations.
                                     K or N not a multiple of 16: vLLM falls back to a Triton
                                     kernel; here the operands are zero-padded to 16 per call
                                     (correct, but two copies per call: pad the weight once at
                                     load time, as vLLM's CutlassFP8ScaledMMLinearKernel does).
cutlass_scaled_mm_azp                scaled_mm_azp (azp_adj / azp / bias may be [1, N] / [M, 1]).
cutlass_scaled_mm_supports_fp8       scaled_mm_supports(capability, float8_e4m3fn)
cutlass_scaled_mm_supports_block_fp8 fp8_block_scaled_mm_supports
scaled_fp8_quant                     static / dynamic per tensor / dynamic per token (+ scale_ub),
                                     ``num_token_padding`` (padding rows are zero, with scale 0),
                                     ``output=`` (the result is copied into it: one extra copy of
                                     the 1-byte output; vLLM's ops write in place). Static scales
                                     that are not per tensor (per token / channel / group, with
                                     ``group_shape``): a composite of torch elementwise ops, same
                                     math as the kernel (``fp8(clamp(x * (1 / s)))``), not a
                                     fused kernel. ``scale_ub`` without ``use_per_token_if_dynamic``
                                     is ignored, as vLLM ignores it.
scaled_int8_quant                    static (+ azp) and dynamic symmetric: the qkernels ops.
                                     Dynamic asymmetric: vLLM's convention, each row's own
                                     [min, max] (scale = (max - min) / 255, azp = rint(-128 -
                                     min / scale)), computed by a torch composite (4 passes, not
                                     a fused kernel) because the native op widens the range to
                                     include 0 (see ``qkernels.reference.quant``: it keeps the
                                     zero point in int8 so the azp GEMM cannot overflow). A
                                     constant row, where vLLM divides by zero, gets scale 1 here.
cutlass_sparse_scaled_mm_supported   sparse24_supported
cutlass_sparse_compress              sparse24_compress. float8_e4m3fn only (vLLM also takes int8,
                                     float16, bfloat16: qkernels has no such sparse kernel), K a
                                     multiple of 128 (vLLM: 16) and N of 8. The metadata is
                                     qkernels' sm90 layout, returned as ``[N, K/8]`` uint8 (vLLM's
                                     shape) when N % 64 == 0, else as its native
                                     ``[K/128, ceil(N/64), 64, 16]``: opaque either way, only
                                     :func:`cutlass_scaled_sparse_mm` reads it.
cutlass_scaled_sparse_mm             sparse24_scaled_mm (float8_e4m3fn activations only).
gptq_marlin_repack                   w4a16_repack: 4-bit GPTQ ``b_q_weight [K/8, N]`` (+ act-order
                                     ``perm``) -> ``[K/16, 2N]`` int32, vLLM's shape; the tile
                                     layout is qkernels' own (opaque: only the GEMM below reads it).
gptq_marlin_gemm, marlin_gemm        w4a16_gemm for ``uint4b8`` (symmetric) and ``uint4`` (with
                                     zero points), fp16 / bf16 activations, groups -1/32/64/128,
                                     act-order. Scales are ``[G, N]`` in natural order: do NOT apply
                                     vLLM's ``marlin_permute_scales``; zero points are ``[G, N]``
                                     in the activations' dtype (the 0..15 nibble values), not
                                     vLLM's packed ``marlin_zero_points`` int32. ``workspace``,
                                     ``use_atomic_add`` and ``use_fp32_reduce`` are accepted and
                                     ignored (the reduction is always float32, its workspace comes
                                     from torch's allocator); ``is_k_full=False``, ``a_scales``,
                                     ``global_scale`` (W4A8 / FP4 / FP8 weights) and
                                     ``is_zp_float`` raise.
per_token_group_quant_fp8            per_token_group_fp8_quant (group 64 or 128). A group whose
                                     absmax is below 1/512 gets the floor scale 1/(448*512) (vLLM:
                                     max(absmax, eps) / 448); e4m3 being floating point, the
                                     dequantized values agree except below ~7e-8 (subnormals).
                                     ``eps`` other than vLLM's default and ``tma_aligned_scales``
                                     raise (``column_major_scales`` gives the sm90 GEMM's layout).
===================================  =============================================================

Not here (no qkernels kernel): the FP4 / MXFP / NVFP4 ops, Machete, AWQ-Marlin repack, the MoE and
grouped GEMMs, W4A8, the int8 / fp16 / bf16 2:4 GEMMs. Inputs: vLLM's quant ops read row-strided
activations; here a non-contiguous input is made contiguous first (a copy).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .ops import _checks as C
from .ops import quant as _quant
from .ops._registry import op as _op
from .ops import scaled_mm as _mm
from .ops import sparse24 as _sp24
from .reference import quant as _qref
from .reference import sparse24 as _sp24_ref

FP8 = torch.float8_e4m3fn
_ALIGN = 16


def _fp8_block():
    try:
        from .ops import fp8_block
    except ModuleNotFoundError as e:  # pragma: no cover - the family is part of this package
        raise NotImplementedError(f"qkernels.vllm: this install has no fp8_block family ({e}).") from None
    return fp8_block


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A scale / zero-point / bias given in any of vLLM's shapes ([X], [X, 1], [1, X]) as a contiguous [X]."""
    return t.reshape(-1).contiguous()


# ---------------------------------------------------------------- capability queries
def cutlass_scaled_mm_supports_fp8(cuda_device_capability: int) -> bool:
    """True if :func:`cutlass_scaled_mm` runs FP8 on a GPU of that capability (e.g. 89, 90)."""
    return _mm.supports(cuda_device_capability, FP8)


def cutlass_scaled_mm_supports_block_fp8(cuda_device_capability: int) -> bool:
    """True if :func:`cutlass_scaled_mm` runs blockwise-scaled FP8 on a GPU of that capability."""
    return _fp8_block().supports(cuda_device_capability)


def cutlass_sparse_scaled_mm_supported(cuda_device_capability: int) -> bool:
    """True if :func:`cutlass_scaled_sparse_mm` runs on a GPU of that capability (sm90 only)."""
    return _sp24.supported(cuda_device_capability)


# ---------------------------------------------------------------- W8A8 GEMMs
def _is_blockwise(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> bool:
    """vLLM's rule: scales that are neither per tensor / token (a) nor per tensor / channel (b) are group scales."""
    return scale_a.numel() not in (1, a.size(0)) or scale_b.numel() not in (1, b.size(1))


def _blockwise_mm(a, b, scale_a, scale_b, out_dtype, bias):
    fb = _fp8_block()
    m, k = a.shape
    n = b.size(1)
    kb, nb = k // fb.BLOCK, -(-n // fb.BLOCK)
    if tuple(scale_a.shape) != (m, kb) or tuple(scale_b.shape) != (kb, nb):
        C.fail("vllm.cutlass_scaled_mm", f"group scales: scale_a {tuple(scale_a.shape)} and scale_b "
                                         f"{tuple(scale_b.shape)}; vLLM's blockwise form needs scale_a [M, K/128] = "
                                         f"[{m}, {kb}] and scale_b [K/128, N/128] = [{kb}, {nb}].")
    # vLLM's b scales are [K/128, N/128] (K-major in memory); the qkernels op reads [N/128, K/128] row-major.
    return fb.scaled_mm(a, b, scale_a, scale_b.t().contiguous(), out_dtype, bias)


def cutlass_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                      out_dtype: torch.dtype, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out [..., N] = (scale_a * a) @ (scale_b * b)`` in ``out_dtype`` (+ ``bias``), vLLM's conventions.

    ``a [..., K]`` int8 / float8_e4m3fn; ``b [K, N]`` column-major (``w.t()``); ``scale_a`` 1 or M
    values (or ``[M, K/128]`` with ``scale_b [K/128, N/128]``: blockwise FP8); ``scale_b`` 1 or N
    values; ``bias [N]`` of ``out_dtype`` (bfloat16 / float16). K, N need not be multiples of 16
    (zero-padded per call: see the module doc).
    """
    target = (*a.shape[:-1], b.size(1))
    a = a.reshape(-1, a.shape[-1])
    if _is_blockwise(a, b, scale_a, scale_b):
        return _blockwise_mm(a, b, scale_a, scale_b, out_dtype, bias).view(target)
    m, k = a.shape
    n = b.size(1)
    pk, pn = -k % _ALIGN, -n % _ALIGN
    if pk or pn:  # vLLM would take its Triton fallback here
        a = F.pad(a.view(torch.uint8) if a.dtype == FP8 else a, (0, pk)).view(a.dtype)
        w = b.t()
        w = F.pad(w.view(torch.uint8) if w.dtype == FP8 else w, (0, pk, 0, pn)).view(b.dtype)
        b = w.t()
        if scale_b.numel() > 1:
            scale_b = F.pad(_flat(scale_b), (0, pn), value=1.0)
        if bias is not None:
            bias = F.pad(_flat(bias), (0, pn))
    elif a.stride(-1) != 1 or (m > 1 and a.stride(0) % _ALIGN):
        a = a.contiguous()
    out = _mm.scaled_mm(a, b, _flat(scale_a), _flat(scale_b), out_dtype, None if bias is None else _flat(bias))
    if pn:
        out = out[:, :n]
    return out.reshape(target)


def cutlass_scaled_mm_azp(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                          out_dtype: torch.dtype, azp_adj: torch.Tensor, azp: Optional[torch.Tensor] = None,
                          bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """INT8 GEMM with asymmetric activations, vLLM's conventions: ``azp_adj`` int32 per channel
    (``colsum(b)``, times the zero point when it is per tensor), ``azp`` int32 per token or None.
    K and N must be multiples of 16 (vLLM asserts the same)."""
    target = (*a.shape[:-1], b.size(1))
    a = a.reshape(-1, a.shape[-1])
    out = _mm.scaled_mm_azp(a, b, _flat(scale_a), _flat(scale_b), out_dtype, _flat(azp_adj),
                            None if azp is None else _flat(azp), None if bias is None else _flat(bias))
    return out.reshape(target)


# ---------------------------------------------------------------- activation quantisation
def _group_scale(scale: torch.Tensor, shape: Sequence[int], group_shape: Optional[Tuple[int, int]]) -> torch.Tensor:
    """A static FP8 scale (vLLM's ``scaled_fp8_quant`` forms) broadcast to the input's ``[M, N]`` shape."""
    m, n = shape
    s = scale.float()
    if s.dim() == 1:
        if group_shape is None:
            C.fail("vllm.scaled_fp8_quant", f"a 1-D scale of {s.numel()} values needs group_shape: (1, -1) per token "
                                            "or (-1, 1) per channel.")
        s = s.reshape(-1, 1) if tuple(group_shape) == (1, -1) else s.reshape(1, -1)
    if s.dim() != 2:
        C.fail("vllm.scaled_fp8_quant", f"scale has shape {tuple(scale.shape)}; expected [1], [X] or [M/gm, N/gn].")
    gm, gn = (group_shape if group_shape is not None else (-(-m // s.size(0)), -(-n // s.size(1))))
    gm, gn = (m if gm == -1 else gm), (n if gn == -1 else gn)
    if s.size(0) != -(-m // gm) or s.size(1) != -(-n // gn):
        C.fail("vllm.scaled_fp8_quant", f"scale {tuple(scale.shape)} does not match input [{m}, {n}] with group shape "
                                        f"({gm}, {gn}).")
    return s.repeat_interleave(gm, 0)[:m].repeat_interleave(gn, 1)[:, :n]


def scaled_fp8_quant(input: torch.Tensor, scale: Optional[torch.Tensor] = None,
                     num_token_padding: Optional[int] = None, scale_ub: Optional[torch.Tensor] = None,
                     use_per_token_if_dynamic: bool = False, output: Optional[torch.Tensor] = None,
                     group_shape: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``scaled_fp8_quant``: ``input [M, N]`` -> ``(q float8_e4m3fn, scale)``.

    ``scale`` given: static (per tensor, or per token / channel / group with ``group_shape``);
    else dynamic per tensor (scale ``[1]``) or, with ``use_per_token_if_dynamic``, per token
    (scale ``[M, 1]``, bounded by ``scale_ub``). ``num_token_padding``: the output has at least
    that many rows (the extra rows are 0, their per-token scales 0). ``output``: written in place.
    """
    if input.dim() != 2:
        C.fail("vllm.scaled_fp8_quant", f"input has shape {tuple(input.shape)}; vLLM's scaled_fp8_quant takes 2-D "
                                        "[M, N] input (flatten the leading dims).")
    if output is not None and num_token_padding:
        C.fail("vllm.scaled_fp8_quant", "padding is not supported if output is passed in (as in vLLM).")
    x = input.contiguous()
    m = x.size(0)
    if scale is None:
        if use_per_token_if_dynamic:
            q, s = _quant.scaled_fp8_quant(x, per_token=True, scale_ub=None if scale_ub is None else _flat(scale_ub))
        else:
            q, s = _quant.scaled_fp8_quant(x)
    elif scale.numel() == 1 and group_shape in (None, (-1, -1)):
        q, s = _quant.scaled_fp8_quant(x, _flat(scale).float())[0], scale
    else:
        inv = torch.reciprocal(_group_scale(scale, x.shape, group_shape))
        q, s = (x.float() * inv).clamp(-_qref.FP8_MAX, _qref.FP8_MAX).to(FP8), scale
    rows = max(num_token_padding or 0, m)
    if output is None and rows == m:
        return q, s
    if output is None:
        output = torch.zeros((rows, x.size(1)), dtype=FP8, device=x.device)
        if scale is None and use_per_token_if_dynamic:
            s = torch.cat([s, s.new_zeros((rows - m, 1))])
    elif output.dtype != FP8 or tuple(output.shape[1:]) != tuple(x.shape[1:]) or output.size(0) < m:
        C.fail("vllm.scaled_fp8_quant", f"output is {output.dtype} {tuple(output.shape)}; expected float8_e4m3fn with "
                                        f"at least {m} rows of {x.size(1)}.")
    output[:m].copy_(q)
    return output, s


def _int8_azp_vllm(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic asymmetric per-token INT8 with vLLM's range: each row's own [min, max]."""
    xf = x.float().reshape(-1, x.shape[-1])
    lo = xf.amin(dim=-1, keepdim=True)
    hi = xf.amax(dim=-1, keepdim=True)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    azp = torch.round(-128.0 - lo / scale)
    q = (torch.round(xf / scale) + azp).clamp(-128, 127).to(torch.int8)
    return q.reshape(x.shape), scale, azp.to(torch.int32)


def scaled_int8_quant(input: torch.Tensor, scale: Optional[torch.Tensor] = None, azp: Optional[torch.Tensor] = None,
                      symmetric: bool = True) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """vLLM's ``scaled_int8_quant``: ``(q int8, scale, azp or None)``.

    ``scale`` given: static per tensor (``azp`` given iff not ``symmetric``); the very ``scale`` and
    ``azp`` objects are returned. Else dynamic per token: scales float32 ``[M, 1]`` (M = rows of the
    flattened input), and for ``symmetric=False`` int32 zero points ``[M, 1]`` (vLLM's row range).
    """
    if scale is not None:
        if symmetric != (azp is None):
            C.fail("vllm.scaled_int8_quant", "azp must only be provided for asymmetric quantization (as in vLLM).")
        q, _, _ = _quant.scaled_int8_quant(input.contiguous(), _flat(scale), None if azp is None else _flat(azp))
        return q, scale, azp
    x = input.contiguous()
    if not symmetric:
        return _int8_azp_vllm(x)
    q, s, _ = _quant.scaled_int8_quant(x)
    return q, s.reshape(-1, 1), None


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int, eps: float = 1e-10,
                              dtype: Optional[torch.dtype] = None, column_major_scales: bool = False,
                              tma_aligned_scales: bool = False, out_q: Optional[torch.Tensor] = None,
                              use_ue8m0: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``per_token_group_quant_fp8``: ``x [..., K]`` -> ``(q float8_e4m3fn, scales [..., K/group_size])``,
    one scale per token and group (``column_major_scales``: the layout the sm90 blockwise GEMM reads)."""
    if dtype not in (None, FP8):
        C.fail("vllm.per_token_group_quant_fp8", f"dtype {dtype}: only float8_e4m3fn is supported.")
    if eps != 1e-10:
        C.fail("vllm.per_token_group_quant_fp8", f"eps = {eps}: qkernels floors the scale at 1/(448*512) instead "
                                                 "(see qkernels.vllm); pass the default eps.")
    if tma_aligned_scales:
        C.fail("vllm.per_token_group_quant_fp8", "tma_aligned_scales (DeepGEMM's layout) is not supported; "
                                                 "column_major_scales=True gives the sm90 GEMM's 16-byte aligned layout.")
    q, s = _fp8_block().per_token_group_quant(x.contiguous(), group_size, column_major_scales=column_major_scales,
                                              scale_ue8m0=bool(use_ue8m0))
    if out_q is not None:
        out_q.copy_(q)
        q = out_q
    return q, s


# ---------------------------------------------------------------- 2:4 sparse
def cutlass_sparse_compress(a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``cutlass_sparse_compress``: a 2:4 sparse ``[N, K]`` weight (``b.t()``, contiguous) ->
    ``(nonzeros [N, K/2], metadata uint8)``. float8_e4m3fn only; see the module doc for the metadata."""
    if a.dtype != FP8:
        C.fail("vllm.cutlass_sparse_compress", f"a has dtype {a.dtype}; qkernels' 2:4 kernel is float8_e4m3fn only "
                                               "(vLLM also takes int8 / float16 / bfloat16). Quantize the weight to "
                                               "fp8, or use the dense GEMM for this layer.")
    sw = _sp24.compress(a)
    n, k = a.shape
    meta = sw.meta.view(n, k // 8) if n % 64 == 0 else sw.meta
    return sw.values, meta


def cutlass_scaled_sparse_mm(a: torch.Tensor, bt_nzs: torch.Tensor, bt_meta: torch.Tensor, scale_a: torch.Tensor,
                             scale_b: torch.Tensor, out_dtype: torch.dtype,
                             bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """vLLM's ``cutlass_scaled_sparse_mm``: ``out [M, N] = (scale_a * a) @ (scale_b * B)`` with ``B`` the
    2:4 weight compressed by :func:`cutlass_sparse_compress` (``bt_nzs``, ``bt_meta``)."""
    n, k = bt_nzs.size(0), bt_nzs.size(1) * 2
    meta = bt_meta.reshape(_sp24_ref.meta_shape(n, k)) if bt_meta.numel() == n * k // 8 else bt_meta
    sw = _sp24.Sparse24Weight(bt_nzs, meta, n, k)
    if a.stride(-1) != 1 or (a.size(0) > 1 and a.stride(0) % _ALIGN):
        a = a.contiguous()
    return _sp24.scaled_mm(a, sw, _flat(scale_a), _flat(scale_b), out_dtype, None if bias is None else _flat(bias))


# ---------------------------------------------------------------- W4A16 (Marlin-style)
_UINT4 = ("uint4b8", "uint4")


def _b_q_type_name(b_q_type) -> str:
    name = getattr(b_q_type, "name", None)
    name = name if isinstance(name, str) else str(b_q_type)
    if name not in _UINT4:
        C.fail("vllm.gptq_marlin_gemm", f"b_q_type {name!r} is not supported; supported: uint4b8 (symmetric 4-bit, "
                                        "GPTQ) and uint4 (4-bit with zero points).")
    return name


def _none_if_empty(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None or t.numel() == 0 else t


def gptq_marlin_repack(b_q_weight: torch.Tensor, perm: Optional[torch.Tensor], size_k: int, size_n: int,
                       num_bits: int, is_a_8bit: bool = False) -> torch.Tensor:
    """vLLM's ``gptq_marlin_repack``: a GPTQ 4-bit ``b_q_weight`` int32 ``[K/8, N]`` (packed along K) and
    the act-order ``perm`` (``argsort(g_idx)``, empty for none) -> the GEMM's int32 ``[K/16, 2N]``."""
    if num_bits != 4 or is_a_8bit:
        C.fail("vllm.gptq_marlin_repack", f"num_bits={num_bits}, is_a_8bit={is_a_8bit}: only 4-bit weights with "
                                          "16-bit activations have a qkernels kernel.")
    if tuple(b_q_weight.shape) != (size_k // 8, size_n):
        C.fail("vllm.gptq_marlin_repack", f"b_q_weight has shape {tuple(b_q_weight.shape)}; expected [K/8, N] = "
                                          f"[{size_k // 8}, {size_n}].")
    perm = _none_if_empty(perm)
    # GPTQ's [K/8, N] words are compressed-tensors' [N, K/8] words transposed (same nibble order).
    return _op("w4a16_repack")(b_q_weight.t().contiguous(), None if perm is None else perm.to(torch.int32).contiguous())


def gptq_marlin_gemm(a: torch.Tensor, c: Optional[torch.Tensor], b_q_weight: torch.Tensor,
                     b_bias: Optional[torch.Tensor], b_scales: torch.Tensor, a_scales: Optional[torch.Tensor],
                     global_scale: Optional[torch.Tensor], b_zeros: Optional[torch.Tensor],
                     g_idx: Optional[torch.Tensor], perm: Optional[torch.Tensor], workspace: Optional[torch.Tensor],
                     b_q_type, size_m: int, size_n: int, size_k: int, is_k_full: bool = True,
                     use_atomic_add: bool = False, use_fp32_reduce: bool = False,
                     is_zp_float: bool = False) -> torch.Tensor:
    """vLLM's ``gptq_marlin_gemm``: ``out [M, N] = a[:, perm] @ dequant(b_q_weight) (+ b_bias)`` in ``a``'s dtype.

    ``b_q_weight`` from :func:`gptq_marlin_repack` (with the same ``perm``); ``b_scales [G, N]`` in
    ``a``'s dtype, natural order (G = 1: per channel); ``b_zeros`` ``[G, N]`` in ``a``'s dtype for
    ``uint4``, None / empty for ``uint4b8``; ``g_idx`` / ``perm`` empty or None without act-order.
    ``c`` (optional): written with the result and returned.
    """
    name = _b_q_type_name(b_q_type)
    if a_scales is not None or global_scale is not None:
        C.fail("vllm.gptq_marlin_gemm", "a_scales / global_scale (8-bit activations, FP4 weights) have no qkernels "
                                        "kernel: pass None.")
    if is_zp_float:
        C.fail("vllm.gptq_marlin_gemm", "is_zp_float (HQQ float zero points) is not supported.")
    if not is_k_full:
        C.fail("vllm.gptq_marlin_gemm", "is_k_full=False (a row-parallel act-order shard) is not supported: the kernel "
                                        "needs every group of K; dequantize such a shard instead.")
    zeros = _none_if_empty(b_zeros)
    if (name == "uint4") != (zeros is not None):
        C.fail("vllm.gptq_marlin_gemm", f"b_q_type {name} {'needs' if name == 'uint4' else 'takes no'} b_zeros.")
    if zeros is not None and zeros.dtype != a.dtype:
        C.fail("vllm.gptq_marlin_gemm", f"b_zeros is {zeros.dtype} {tuple(zeros.shape)}; qkernels takes the zero "
                                        f"points unpacked, [G, N] in a's dtype ({a.dtype}), not vLLM's "
                                        "marlin_zero_points int32 packing.")
    perm = _none_if_empty(perm) if _none_if_empty(g_idx) is not None else None
    groups = b_scales.size(0)
    group_size = -1 if groups == 1 else size_k // groups
    x = a.reshape(-1, a.shape[-1])
    if x.size(0) != size_m or x.size(1) != size_k:
        C.fail("vllm.gptq_marlin_gemm", f"a has shape {tuple(a.shape)}; expected [size_m, size_k] = [{size_m}, "
                                        f"{size_k}].")
    out = _op("w4a16_gemm")(x.contiguous(), b_q_weight, b_scales.contiguous(),
                                  None if zeros is None else zeros.contiguous(),
                                  None if perm is None else perm.to(torch.int32).contiguous(), _none_if_empty(b_bias),
                                  size_n, size_k, group_size)
    if c is not None:
        c.copy_(out)
        return c
    return out


def marlin_gemm(a: torch.Tensor, c: Optional[torch.Tensor], b_q_weight: torch.Tensor, b_bias: Optional[torch.Tensor],
                b_scales: torch.Tensor, a_scales: Optional[torch.Tensor], global_scale: Optional[torch.Tensor],
                b_zeros: Optional[torch.Tensor], workspace: Optional[torch.Tensor], b_q_type, size_m: int,
                size_n: int, size_k: int, use_atomic_add: bool = False, use_fp32_reduce: bool = False,
                is_zp_float: bool = False) -> torch.Tensor:
    """vLLM's newer ``marlin_gemm`` (``gptq_marlin_gemm`` without act-order arguments)."""
    return gptq_marlin_gemm(a, c, b_q_weight, b_bias, b_scales, a_scales, global_scale, b_zeros, None, None,
                            workspace, b_q_type, size_m, size_n, size_k, True, use_atomic_add, use_fp32_reduce,
                            is_zp_float)


__all__ = [
    "cutlass_scaled_mm", "cutlass_scaled_mm_azp", "cutlass_scaled_mm_supports_fp8",
    "cutlass_scaled_mm_supports_block_fp8", "scaled_fp8_quant", "scaled_int8_quant", "per_token_group_quant_fp8",
    "cutlass_sparse_scaled_mm_supported", "cutlass_sparse_compress", "cutlass_scaled_sparse_mm",
    "gptq_marlin_repack", "gptq_marlin_gemm", "marlin_gemm",
]
