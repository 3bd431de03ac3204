"""W4A16 (INT4 weights x FP16/BF16 activations): the executable spec, pure torch.

Checkpoint layout (compressed-tensors ``pack-quantized``, ``num_bits`` 4), weight ``[N, K]``:

* ``weight_packed`` int32 ``[N, K/8]``: eight 4-bit values along K per word, element ``8w + i``
  in bits ``[4i, 4i + 4)`` of word ``w`` (element ``8w`` in the low nibble). A stored nibble is
  ``u = q + 8`` for the signed value ``q`` in ``[-8, 7]``.
* ``weight_scale`` ``[N, G]``: ``G = K / group_size`` (``[N, 1]`` per channel, group_size -1).
* ``weight_zero_point`` int32 ``[ceil(N/8), G]`` (asymmetric only): the same packing along N.
* ``g_idx`` int32 ``[K]`` (act-order): the group of input column ``k`` (default ``k // group_size``).

Dequantisation (u = stored nibble, z = stored zero-point nibble, 8 when symmetric):
    W[n, k] = act((u[n, k] - z[n, g]) * s[n, g]),  g = g_idx[k]
``act()`` rounds the exact product once to the activation dtype: the kernel dequantises into
fp16/bf16 registers, and so does this reference.

GEMM:  out[m, n] = act( sum_k float32(A[m, k]) * float32(W[n, k])  (+ bias[n]) )
accumulated in float32 (the kernel accumulates in float32 too, in a different order).

Kernel layout (what ``prepare_weight`` produces, see csrc/w4a16/README.md):

* act-order is removed at load time: ``perm = argsort(g_idx, stable)``, weight row ``k`` of the
  kernel is input column ``perm[k]`` of the checkpoint, and the GEMM gathers ``A[:, perm]``.
  Every group must then hold exactly ``group_size`` columns (GPTQ's ``desc_act`` does), so the
  group of sorted column ``k`` is ``k // group_size`` again.
* ``qweight`` int32 ``[K/16, 2N]`` (``repack``): row ``kt`` holds the 16 x N block of k rows
  ``16kt .. 16kt+15``, as ``N/64`` tiles of 128 words; word ``w*32 + l`` of a tile is what lane
  ``l`` of warp ``w`` feeds to two ``mma.m16n8k16`` B fragments (columns ``16w .. 16w+15`` of the
  tile). With ``t = l % 4``, ``r = l // 4``, nibble ``i`` of that word holds
  ``k = 16kt + 2t + (i >> 2) + 8 (i & 1)``, ``n = 64 nt + 16w + r + 8 ((i >> 1) & 1)``.
  Nibbles ``i`` and ``i + 4`` are the two k-consecutive halves of one fragment register, which is
  what the lop3 magic-number dequantisation extracts in one instruction.
* ``scales`` ``[G, N]`` and ``zeros`` ``[G, N]`` (the zero-point *nibble* ``z``, 0..15, as a
  float), both in the activation dtype, contiguous (``G = 1`` per channel).
"""
from __future__ import annotations

from typing import Optional

import torch

PACK_FACTOR = 8  # 4-bit values per int32 word
SYM_ZERO = 8  # the implicit zero-point nibble of symmetric (uint4b8) weights
TILE_N = 64  # kernel tile: N must be a multiple of it
TILE_K = 128  # kernel pipeline stage along K: K must be a multiple of it
GROUP_SIZES = (-1, 32, 64, 128)


# ----------------------------------------------------------------- compressed-tensors packing
def _nibble_shifts(device) -> torch.Tensor:
    return torch.arange(0, 32, 4, dtype=torch.int32, device=device)


def unpack_int4(packed: torch.Tensor, size: int) -> torch.Tensor:
    """Nibbles ``u`` (int32, 0..15) of int32 words packed along the last dim: ``[..., W] -> [..., size]``."""
    u = (packed.to(torch.int32).unsqueeze(-1) >> _nibble_shifts(packed.device)) & 0xF
    return u.flatten(-2)[..., :size]


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unpack_int4`: nibbles ``[..., S]`` -> int32 words ``[..., ceil(S/8)]``."""
    pad = (-u.shape[-1]) % PACK_FACTOR
    u = torch.nn.functional.pad(u.to(torch.int64), (0, pad)).unflatten(-1, (-1, PACK_FACTOR))
    words = (u << _nibble_shifts(u.device).to(torch.int64)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits as uint32


def unpack_weight(weight_packed: torch.Tensor, size_k: Optional[int] = None) -> torch.Tensor:
    """Signed 4-bit values ``q = u - 8`` (int32 ``[N, K]``) of a ``weight_packed [N, K/8]``."""
    size_k = weight_packed.shape[-1] * PACK_FACTOR if size_k is None else size_k
    return unpack_int4(weight_packed, size_k) - SYM_ZERO


def unpack_zero_points(weight_zero_point: torch.Tensor, size_n: int) -> torch.Tensor:
    """Zero-point nibbles ``z`` (int32 ``[N, G]``, 0..15) of a ``weight_zero_point`` packed along N."""
    return unpack_int4(weight_zero_point.t(), size_n).t()


def default_g_idx(size_k: int, group_size: int, device=None) -> torch.Tensor:
    """``k // group_size`` (all zeros per channel): the groups of a checkpoint without act-order."""
    k = torch.arange(size_k, dtype=torch.int32, device=device)
    return torch.zeros_like(k) if group_size == -1 else k // group_size


def dequantize(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: Optional[torch.Tensor] = None,
    g_idx: Optional[torch.Tensor] = None,
    group_size: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The dense weight ``[N, K]`` of a checkpoint (compressed-tensors layout):
    ``(u - z) * s`` computed exactly in float64, then rounded once to ``dtype``."""
    n = weight_packed.shape[0]
    u = unpack_int4(weight_packed, weight_packed.shape[1] * PACK_FACTOR)
    g = (g_idx if g_idx is not None else default_g_idx(u.shape[1], group_size, u.device)).long()
    z = unpack_zero_points(weight_zero_point, n)[:, g] if weight_zero_point is not None else SYM_ZERO
    s = weight_scale.double()[:, g]
    return ((u - z).double() * s).to(dtype)


# ----------------------------------------------------------------- act-order
def act_order_perm(g_idx: torch.Tensor, group_size: int) -> Optional[torch.Tensor]:
    """``argsort(g_idx)`` (stable, int32) or None when ``g_idx`` is the trivial ``k // group_size``.

    Raises ValueError if a group does not hold exactly ``group_size`` columns (the kernel needs
    contiguous groups of that size after sorting)."""
    size_k = g_idx.numel()
    if torch.equal(g_idx.to(torch.int32), default_g_idx(size_k, group_size, g_idx.device)):
        return None
    if group_size == -1:
        raise ValueError("g_idx is given with group_size -1 (per channel); act-order needs groups.")
    counts = torch.bincount(g_idx.long(), minlength=size_k // group_size)
    if counts.numel() != size_k // group_size or not torch.all(counts == group_size):
        raise ValueError(
            f"g_idx must put exactly group_size={group_size} columns in each of the {size_k // group_size} "
            f"groups; got group sizes {counts.tolist()[:8]}..."
        )
    return torch.argsort(g_idx.long(), stable=True).to(torch.int32)


# ----------------------------------------------------------------- kernel layout
def _tile_coords(size_k: int, size_n: int, device):
    """(k, n) of every nibble of the tiled layout, both int64 ``[K/16, 2N, 8]``."""
    kt = torch.arange(size_k // 16, device=device).view(-1, 1, 1)
    word = torch.arange(2 * size_n, device=device).view(1, -1, 1)
    i = torch.arange(PACK_FACTOR, device=device).view(1, 1, -1)
    nt, w, lane = word // 128, (word // 32) % 4, word % 32
    t, r = lane % 4, lane // 4
    k = 16 * kt + 2 * t + (i >> 2) + 8 * (i & 1)
    n = TILE_N * nt + 16 * w + r + 8 * ((i >> 1) & 1)
    return k, n


def repack(weight_packed: torch.Tensor, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """compressed-tensors ``weight_packed [N, K/8]`` (+ act-order ``perm [K]``) -> ``qweight [K/16, 2N]``."""
    size_n, size_k = weight_packed.shape[0], weight_packed.shape[1] * PACK_FACTOR
    u = unpack_int4(weight_packed, size_k)  # [N, K]
    if perm is not None:
        u = u[:, perm.long()]
    k, n = _tile_coords(size_k, size_n, u.device)
    return pack_int4(u[n, k]).squeeze(-1)


def unrepack(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`repack` without the permutation: ``qweight [K/16, 2N]`` -> nibbles ``u [N, K]``
    (int32, in the kernel's sorted-k order)."""
    size_k, size_n = qweight.shape[0] * 16, qweight.shape[1] // 2
    k, n = _tile_coords(size_k, size_n, qweight.device)
    u = torch.empty(size_n, size_k, dtype=torch.int32, device=qweight.device)
    u[n, k] = unpack_int4(qweight, 2 * size_n * PACK_FACTOR).view(k.shape)
    return u


def kernel_scales(weight_scale: torch.Tensor, act_dtype: torch.dtype) -> torch.Tensor:
    """``weight_scale [N, G]`` -> the kernel's ``scales [G, N]`` (activation dtype, contiguous)."""
    return weight_scale.t().to(act_dtype).contiguous()


def kernel_zeros(weight_zero_point: torch.Tensor, size_n: int, act_dtype: torch.dtype) -> torch.Tensor:
    """Packed ``weight_zero_point [ceil(N/8), G]`` -> the kernel's ``zeros [G, N]`` (nibbles as act dtype)."""
    return unpack_zero_points(weight_zero_point, size_n).t().to(act_dtype).contiguous()


def dequantize_kernel_layout(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], group_size: int
) -> torch.Tensor:
    """The kernel-layout weight ``W_sorted [K, N]`` in the activation dtype (rows in sorted-k order)."""
    u = unrepack(qweight).t()  # [K, N]
    size_k = u.shape[0]
    g = (torch.arange(size_k, device=u.device) // (size_k if group_size == -1 else group_size))
    z = zeros.float()[g] if zeros is not None else float(SYM_ZERO)
    return ((u.float() - z) * scales.float()[g]).to(scales.dtype)


def gemm(
    a: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    perm: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    group_size: int,
) -> torch.Tensor:
    """``out [..., N] = A[..., perm] @ W_sorted (+ bias)``, float32 accumulation, output in ``a.dtype``."""
    w = dequantize_kernel_layout(qweight, scales, zeros, group_size)
    if perm is not None:
        a = a.index_select(-1, perm.long())
    out = a.float() @ w.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(a.dtype)
