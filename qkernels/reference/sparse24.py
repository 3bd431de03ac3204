"""2:4 sparse FP8 weights and the sparse scaled GEMM: the executable spec (pure torch).

The CUDA code in ``csrc/sparse24/`` computes exactly these functions: the GPU
compressor writes the same bytes as :func:`compress`, and the CUTLASS sm90 sparse
GEMM reads them.

2:4 sparsity
    A weight ``w [N, K]`` is 2:4 sparse when every *group* of 4 consecutive
    elements along K (``w[n, 4g:4g+4]``) holds at most 2 non-zeros. ``-0`` counts
    as zero (CUTLASS's compressor masks the sign bit too).

Compressed format (``values``, ``meta``), for ``K % 128 == 0``
    values ``[N, K/2]`` (the weight's dtype): for group ``g`` of row ``n``, the two
        *kept* elements in increasing K order at ``values[n, 2g:2g+2]``.
    kept positions: the group's non-zeros, completed with its lowest-index zeros
        when it has fewer than 2 (e.g. ``[0 0 0 x] -> (0, 3)``, ``[0 x 0 0] -> (0, 1)``,
        all zero ``-> (0, 1)``). Both kept indices are always distinct and increasing,
        so every metadata nibble is a valid sparse-MMA selector.
    nibble ``e[n, g] = i0 | i1 << 2`` (``i0 < i1`` the kept positions, 0..3).
    meta ``[K/128, Np/64, 64, 16]`` uint8, ``Np = ceil(N/64)*64``: byte ``j`` of row
        ``n`` covers K ``[8j, 8j+8)``, low nibble = group ``2j``, high = ``2j+1``; the
        bytes of a row are tiled in blocks of 64 rows x 16 bytes (128 K), blocks
        ordered M-block fastest, then K-block:
        ``meta[j // 16, n // 64, n % 64, j % 16]``.
        This is the physical layout of CUTLASS's ``Sm90GemmSparseConfig`` for 8-bit
        A with ``MinTileShapeK = 128`` (atom (64, 128) K-major, stacked along M then
        K). Rows ``N..Np-1`` are padding, compressed as all-zero rows.

Sparse scaled GEMM (``out [M, N]``, computed as ``out^T = W_sparse . a^T``)
    acc[m, n] = sum_k a[m, k] * w[n, k]      (float32; w = decompress(values, meta))
    out[m, n] = out_dtype(a_scale[m] * (b_scale[n] * acc[m, n]) + bias[n])
    ``a_scale``: float32 [1] (per tensor) or [M, 1] (per token); ``b_scale``:
    float32 [1] or N per-channel values; ``bias`` optional, [N], out dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
GROUP = 4  # logical elements per 2:4 group (one metadata nibble)
META_ROWS = 64  # rows of one metadata block (CUTLASS TensorEAtomM for 8-bit A)
META_K = 128  # logical K of one metadata block (TensorEAtomK); 16 bytes per row
_ALL_ZERO_NIBBLE = 0b0100  # kept positions (0, 1)


def _pad_rows(n: int) -> int:
    return -(-n // META_ROWS) * META_ROWS


def meta_shape(n: int, k: int) -> Tuple[int, int, int, int]:
    """Shape of the metadata tensor of an ``[n, k]`` weight (``k % 128 == 0``)."""
    return (k // META_K, _pad_rows(n) // META_ROWS, META_ROWS, META_K // 8)


def zero_mask(w: torch.Tensor) -> torch.Tensor:
    """Boolean ``w == 0`` (``-0`` included) for any dtype, FP8 included (compared bitwise)."""
    if w.element_size() == 1 and w.is_floating_point():
        return (w.view(torch.uint8) & 0x7F) == 0  # fp8: all bits but the sign are zero
    return w == 0


def group_nonzeros(w: torch.Tensor) -> torch.Tensor:
    """Number of non-zeros of each group of 4 along K: int ``[N, K/4]`` (needs ``K % 4 == 0``)."""
    n, k = w.shape
    return (~zero_mask(w)).view(n, k // GROUP, GROUP).sum(-1)


def _kept_positions(w_bytes: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
    """Kept positions ``[N, G, 2]`` (increasing): non-zeros first, then the lowest zeros."""
    pos = torch.arange(GROUP, device=w_bytes.device)
    key = (~nonzero).to(torch.int64) * GROUP + pos  # non-zeros sort before zeros, each by index
    first2 = torch.argsort(key, dim=-1)[..., :2]  # keys are distinct: no ties
    return first2.sort(dim=-1).values


def compress(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` (2:4 along K, ``K % 128 == 0``, 1-byte dtype) -> ``(values [N, K/2], meta)``.

    Never prunes: raises ``ValueError`` if a group has more than 2 non-zeros (the op
    layer reports which ones with ``qkernels.ops.sparse24.check_24`` first).
    """
    n, k = w.shape
    if k % META_K != 0:
        raise ValueError(f"compress: K = {k} must be a multiple of {META_K}")
    if bool((group_nonzeros(w) > 2).any()):
        raise ValueError("compress: the weight is not 2:4 sparse (a group of 4 has more than 2 non-zeros)")
    np_ = _pad_rows(n)
    g = k // GROUP
    wb = torch.zeros((np_, k), dtype=torch.uint8, device=w.device)
    wb[:n] = w.view(torch.uint8)
    wb = wb.view(np_, g, GROUP)
    nonzero = (wb & 0x7F) != 0 if w.is_floating_point() else wb != 0
    idx = _kept_positions(wb, nonzero)  # [Np, G, 2]
    values = torch.gather(wb, 2, idx).reshape(np_, k // 2)[:n].contiguous().view(w.dtype)
    nib = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)  # [Np, G]
    row_bytes = nib[:, 0::2] | (nib[:, 1::2] << 4)  # [Np, K/8]
    meta = row_bytes.view(np_ // META_ROWS, META_ROWS, k // META_K, META_K // 8).permute(2, 0, 1, 3).contiguous()
    return values, meta


def decompress(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`compress`: ``(values [N, K/2], meta) -> w [N, K]``.

    Bit-exact, except that zeros that were not kept come back as ``+0`` (a dropped
    ``-0`` loses its sign; numerically equal).
    """
    n, k = values.shape[0], values.shape[1] * 2
    kb, mb, rows, nbytes = meta.shape
    row_bytes = meta.permute(1, 2, 0, 3).reshape(mb * rows, kb * nbytes)[:n]  # [N, K/8]
    nib = torch.stack((row_bytes & 0xF, row_bytes >> 4), dim=-1).reshape(n, k // GROUP).to(torch.int64)
    idx = torch.stack((nib & 0b11, nib >> 2), dim=-1)  # [N, G, 2]
    out = torch.zeros((n, k // GROUP, GROUP), dtype=torch.uint8, device=values.device)
    out.scatter_(2, idx, values.contiguous().view(torch.uint8).view(n, k // GROUP, 2))
    return out.view(n, k).view(values.dtype)


def scaled_mm(
    a: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out [M, N] = a_scale * (b_scale * (a @ decompress(values, meta).T)) + bias``."""
    w = decompress(values, meta)
    acc = a.float() @ w.float().t()
    out = acc * b_scales.float().reshape(1, -1)
    out = out * a_scales.float().reshape(-1, 1)
    if bias is not None:
        out = out + bias.float().reshape(1, -1)
    return out.to(out_dtype)
