"""Block-scaled FP8 (W8A8-FP8_BLOCK): the executable spec (pure torch, any device).

The scheme of DeepSeek-V3/R1, Qwen3-FP8 and llm-compressor's ``FP8_BLOCK``: the weight is
float8_e4m3fn with one float32 scale per 128 x 128 block, the activations are quantised
dynamically per token in groups of 128 (or 64) along K. The CUDA kernels in
``csrc/fp8_block/`` and the sm89 Triton kernel compute these functions; the GPU tests compare
against this module.

Per-token-group quantisation (``per_token_group_quant``)
    ``x [..., K]`` (float16 / bfloat16 / float32) viewed as rows ``r`` (tokens) of ``K/G`` groups
    ``g`` of ``G = group_size`` (64 or 128) contiguous elements; all arithmetic in float32:

        dynamic:   s[r, g] = max(absmax(x[r, gG:(g+1)G]) / 448, 1/(448*512))
                   s[r, g] = ue8m0(s[r, g])                   if scale_ue8m0
        static:    s[r, g] = scale[0] (per tensor) or scale[g] (one static scale per group column)
        q[r, k]    = fp8(clamp(x[r, k] * (1 / s[r, k // G]), -448, 448))   (round to nearest even)

    ``ue8m0(s)`` is the smallest power of two >= s (exact, on the float32 bits: a value with a
    non-zero mantissa gets exponent + 1 and mantissa 0). DeepGEMM's and DeepSeek-V3.1's "UE8M0"
    scales are such powers of two, kept here as float32 values.
    The 1/(448*512) floor (the one of ``qkernels.reference.quant``) keeps an all-zero group's scale
    positive. Domain: finite positive static scales. Non-finite inputs follow the NaN / inf policy
    of ``qkernels.reference.quant``, per group: a NaN is ignored by the absmax (the kernel's
    ``fmaxf``) and quantizes to FP8 NaN itself (its sign bit is not specified); an inf makes its
    group's dynamic scale inf, the group's finite elements 0 and the inf element NaN; static
    scales saturate an inf to +-448.

Scale layouts (float32, logical shape ``[*x.shape[:-1], K/G]``; ``M`` = number of rows)
    row-major (default):     element (r, g) at offset ``r * (K/G) + g`` (a contiguous tensor);
    column-major (``column_major_scales=True``, what the sm90 GEMM reads with TMA): element
        (r, g) at offset ``g * M_pad + r`` with ``M_pad = ceil(M / 4) * 4`` (each group column
        starts 16-byte aligned), i.e. the transposed view of a ``[K/G, M_pad]`` buffer cut to M
        rows: ``strides = (row-major strides of the leading dims, M_pad)``. Elements of the
        padding rows ``M <= r < M_pad`` are not part of the tensor and hold unspecified values.

Blockwise-scaled GEMM (``scaled_mm``), ``B = 128``
    a ``[M, K]`` float8_e4m3fn, a_scales float32 ``[M, K/B]`` (either layout above);
    b ``[K, N]`` float8_e4m3fn = ``w.t()`` of the row-major weight ``w [N, K]``;
    b_scales float32 ``[ceil(N/B), K/B]``: ``b_scales[j, kb]`` scales the block
        ``w[jB:(j+1)B, kb*B:(kb+1)B]`` (compressed-tensors ``weight_scale``, DeepSeek
        ``weight_scale_inv``); N need not be a multiple of B (the last block row is partial);
    K a multiple of B; bias optional ``[N]`` in out_dtype (bfloat16 / float16).

    The order of operations (the spec), for every (m, n), with ``j = n // B``:

        for kb = 0, 1, ..., K/B - 1 (in this order):
            P      = sum_{k in block kb} a[m, k] * b[k, n]         exact (float64: every e4m3
                                                                    product and every partial sum
                                                                    of 128 of them is exact)
            p      = fp32(P)                                        one rounding
            sigma  = fp32(a_scales[m, kb] * b_scales[j, kb])        one rounding
            acc    = fp32(acc + fp32(p * sigma))                    acc starts at 0.0
        out[m, n] = out_dtype(fp32(acc + fp32(bias[n])))            bias 0 when absent

    What the kernels do differently, and why the GPU tests compare with a tolerance: Hopper's
    FP8 wgmma sums a block in float32 with truncated intermediate precision, so ``p`` carries a
    small error; the kernels may fuse ``acc + p * sigma`` into one FMA (CUTLASS's blockwise
    mainloop does), and the Triton kernel scales in another order (``(p * sa) * sb``). Each is a
    few float32 ulps per block: far below the output's bfloat16/float16 rounding.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .quant import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE, _no_nan

BLOCK = 128                 # weight block (N and K) and the GEMM's activation group size
GROUP_SIZES = (64, 128)     # per-token-group quantisation group sizes
TMA_ALIGN = 4               # float32 elements per 16 bytes: the column-major scales' row padding
OUT_DTYPES = (torch.bfloat16, torch.float16)


# ---------------------------------------------------------------- layouts
def rows_of(shape: Sequence[int]) -> int:
    """Number of rows (tokens) of a ``[..., K]`` shape: prod(shape[:-1])."""
    n = 1
    for d in shape[:-1]:
        n *= int(d)
    return n


def tma_aligned_rows(m: int) -> int:
    """``ceil(m / 4) * 4``: the stride (in elements) between group columns of column-major scales."""
    return (int(m) + TMA_ALIGN - 1) // TMA_ALIGN * TMA_ALIGN


def scale_shape(x_shape: Sequence[int], group_size: int) -> Tuple[int, ...]:
    """Logical shape of the per-token-group scales of an ``x`` of shape ``x_shape``."""
    return (*[int(d) for d in x_shape[:-1]], int(x_shape[-1]) // group_size)


def scale_strides(x_shape: Sequence[int], group_size: int, column_major: bool) -> Tuple[int, ...]:
    """Strides of the scales in the row-major or the column-major (TMA-aligned) layout."""
    shape = scale_shape(x_shape, group_size)
    if not column_major:
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= max(d, 1)
        return tuple(reversed(strides))
    lead = shape[:-1]
    strides, acc = [], 1
    for d in reversed(lead):
        strides.append(acc)
        acc *= max(d, 1)
    return (*reversed(strides), tma_aligned_rows(rows_of(x_shape)))


def scale_storage_numel(x_shape: Sequence[int], group_size: int, column_major: bool) -> int:
    """Elements of the buffer behind the scales (the padding rows included when column-major)."""
    groups = int(x_shape[-1]) // group_size
    m = rows_of(x_shape)
    return groups * (tma_aligned_rows(m) if column_major else m)


def empty_scales(x: torch.Tensor, group_size: int, column_major: bool, zero_padding: bool = False) -> torch.Tensor:
    """A float32 scale tensor for ``x`` in the requested layout (same device), uninitialised; a
    view of a buffer of :func:`scale_storage_numel` elements (the CUDA op allocates the same)."""
    numel = scale_storage_numel(x.shape, group_size, column_major)
    buf = (torch.zeros if zero_padding else torch.empty)(numel, dtype=torch.float32, device=x.device)
    return buf.as_strided(scale_shape(x.shape, group_size), scale_strides(x.shape, group_size, column_major))


def is_column_major_aligned(s: torch.Tensor) -> bool:
    """True if the 2-D scales ``s [M, KB]`` are in the column-major layout the sm90 GEMM reads:
    ``stride(0) == 1`` and ``stride(1)`` a multiple of 4 that is ``>= M`` (size-1 dims excepted)."""
    if s.dim() != 2:
        return False
    m, kb = s.shape
    if m > 1 and s.stride(0) != 1:
        return False
    return kb <= 1 or (s.stride(1) >= m and s.stride(1) % TMA_ALIGN == 0)


# ---------------------------------------------------------------- quantisation
def ue8m0(s: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= s, for positive normal float32 ``s`` (exact, bitwise)."""
    bits = s.float().contiguous().view(torch.int32)
    mantissa = bits & 0x007FFFFF
    up = (bits & 0x7F800000) + 0x00800000  # exponent + 1, mantissa 0 (sign is 0)
    return torch.where(mantissa != 0, up, bits).view(torch.float32).reshape(s.shape)


def group_scales(x: torch.Tensor, group_size: int, scale_ue8m0: bool = False) -> torch.Tensor:
    """The dynamic scales ``[*x.shape[:-1], K/G]`` (float32, contiguous)."""
    xf = x.float().reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    absmax = _no_nan(xf).abs().amax(dim=-1)  # NaN ignored, as the kernel's fmaxf reduction does
    # A tensor divisor, not a Python scalar: on CUDA torch turns `x / 448.0` into `x * (1/448)`,
    # which rounds differently; this way the spec is exact on any device.
    s = torch.clamp(absmax / torch.full_like(absmax, FP8_MAX), min=FP8_MIN_SCALE)
    return ue8m0(s) if scale_ue8m0 else s


def per_token_group_quant(
    x: torch.Tensor,
    group_size: int = 128,
    column_major_scales: bool = False,
    scale_ue8m0: bool = False,
    scale: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)``: ``q`` float8_e4m3fn with ``x``'s shape, ``s`` float32 ``[..., K/G]`` in the
    requested layout (see the module docstring). ``scale`` given: static quantisation with a
    float32 per-tensor ``[1]`` or per-group-column ``[K/G]`` scale (no UE8M0 rounding)."""
    groups = x.shape[-1] // group_size
    xf = x.float().reshape(*x.shape[:-1], groups, group_size)
    if scale is None:
        s = group_scales(x, group_size, scale_ue8m0)
    else:
        s = scale.float().reshape(-1).expand(*x.shape[:-1], groups) if scale.numel() == groups else \
            scale.float().reshape(()).expand(*x.shape[:-1], groups)
    inv = torch.reciprocal(s)
    q = (xf * inv.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(x.shape)
    out = empty_scales(x, group_size, column_major_scales, zero_padding=True)  # padding rows: 0 here
    out.copy_(s)
    return q, out


def dequant_groups(q: torch.Tensor, s: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 ``q * s`` with each scale broadcast over its group (any scale layout)."""
    return (q.float().reshape(*q.shape[:-1], s.shape[-1], group_size) * s.float().unsqueeze(-1)).reshape(q.shape)


def dequant_weight(w: torch.Tensor, w_scales: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """float32 ``w [N, K] * scales`` broadcast over ``block x block`` tiles (the last row of blocks
    may be partial): what compressed-tensors' block-strategy decompression computes."""
    n, k = w.shape
    s = w_scales.float().repeat_interleave(block, dim=0)[:n].repeat_interleave(block, dim=1)[:, :k]
    return w.float() * s


# ---------------------------------------------------------------- GEMM
def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The blockwise-scaled GEMM, in the order of operations of the module docstring."""
    m, k = a.shape
    n = b.shape[1]
    kb_count = k // BLOCK
    # b_scales[j, kb] broadcast to each of the (up to) 128 columns n of block row j.
    bs_cols = b_scales.float().repeat_interleave(BLOCK, dim=0)[:n]          # [N, K/B]
    acc = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    for kb in range(kb_count):
        blk = slice(kb * BLOCK, (kb + 1) * BLOCK)
        p = (a[:, blk].double() @ b[blk, :].double()).float()              # exact sum, one rounding
        sigma = a_scales[:, kb].float().reshape(m, 1) * bs_cols[:, kb].reshape(1, n)
        acc = acc + p * sigma                                               # two roundings, no FMA
    if bias is not None:
        acc = acc + bias.float().reshape(1, n)
    return acc.to(out_dtype)
