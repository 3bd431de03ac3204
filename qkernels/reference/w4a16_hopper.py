"""W4A16 Hopper path (sm90a CUTLASS mixed-input GEMM): the executable spec, pure torch.

The checkpoint format is the one of :mod:`qkernels.reference.w4a16` (compressed-tensors
``pack-quantized``, 4 bits: ``weight_packed`` int32 ``[N, K/8]`` with nibbles ``u = q + 8``,
``weight_scale [N, G]``, ``weight_zero_point`` int32 ``[ceil(N/8), G]`` packed along N,
``g_idx [K]``). Act-order is handled as on the Marlin path: ``perm = argsort(g_idx)``, the weight's
K is reordered at load time and the GEMM gathers ``A[:, perm]``. Group sizes: -1 (per channel),
64, 128 (:data:`GROUP_SIZES`; group 32 runs on the Marlin path only: the CUTLASS mainloop reads one
scale per 64-wide k tile).

Prepacked weight (``prepack``), int32 ``[K/16, N/16, 32]``: the weight ``[N, K]`` (K in sorted
order) cut into 16 x 16 atoms, atom ``(kb, nb)`` (rows ``16 nb ..``, columns ``16 kb ..``) at
``b[kb, nb]``; element ``(r, c)`` of an atom is nibble ``i`` (bits ``4i .. 4i+3``) of word ``lane``:

    lane = 4 (r % 8) + (c % 8) // 2,      i = r // 8 + 2 (c // 8) + 4 (c % 2)

and holds ``q`` as two's-complement int4 (``u ^ 8``). Word ``lane`` is exactly the 8 values lane
``lane`` of a warp feeds to one ``wgmma m64k16`` A fragment (rows ``r``, ``r + 8``; columns
``2t, 2t+1, 2t+8, 2t+9``), in the nibble order CUTLASS's fast int4 converter expects
(csrc/w4a16/kernels/sm90_w4a16_layout.cuh proves the CuTe layout of the kernel equals this).

Scales ``[G, N]`` (``G = K / group_size``, 1 per channel) in the activation dtype, contiguous: the
transpose of the checkpoint's ``[N, G]`` (the same tensor the Marlin path uses). Zeros (asymmetric
only) ``[G, N]`` in the activation dtype hold the *additive* term of CUTLASS's "scale with zero"
mode, derived from the checkpoint's zero-point nibble ``z``:

    value = (u - z) s = q s + (8 - z) s           =>  z' = act((8 - z) s)   (one rounding)

(``s`` the activation-dtype scale the kernel multiplies by, as on the Marlin path.)

Kernel dequantisation, per element, in the activation dtype (``act()`` = round to nearest even):

    symmetric:   w = act(q s)                     -- bit-exact with the checkpoint's act((u - 8) s)
    asymmetric:  w = act(act(q s) + z')

(the CUDA kernel passes ``z' = 0`` for symmetric weights, which rounds identically). The
asymmetric form differs from the checkpoint's single rounding ``act((u - z) s)`` by at most
``ulp(z')/2 + ulp(q s)/2`` before the final rounding (both terms are at most ``8 |s|``): within
1.5 ulp of ``8 |s|`` in the worst case, 0 whenever ``z = 8``. ptxas may contract the mul + add
into one fma (``act(q s + z')``), which is never further from the exact value.

GEMM:  out[m, n] = act( sum_k float32(A[m, perm[k]]) * float32(W[k, n])  (+ bias[n]) )
with float32 accumulation (the kernel accumulates in float32 too, in its own order).
"""
from __future__ import annotations

from typing import Optional

import torch

from .w4a16 import PACK_FACTOR, SYM_ZERO, pack_int4, unpack_int4, unpack_zero_points

__all__ = [
    "ATOM", "WORDS_PER_ATOM", "N_MULTIPLE", "K_MULTIPLE", "GROUP_SIZES", "atom_coords", "prepack", "unprepack",
    "hopper_zeros", "dequantize_prepacked", "gemm",
]

GROUP_SIZES = (-1, 64, 128)  # group sizes the kernel runs: multiples of its k tile (64), or per channel
ATOM = 16  # rows and columns of one layout atom
WORDS_PER_ATOM = 32  # 256 nibbles
N_MULTIPLE = 64  # N % 64 == 0 (the Marlin path's constraint too: one padded layer serves both)
K_MULTIPLE = 128  # K % 128 == 0


def atom_coords(device=None):
    """``(r, c)``, both int64 ``[32, 8]``: the atom row and column held by nibble ``i`` of word ``lane``."""
    lane = torch.arange(WORDS_PER_ATOM, device=device).view(-1, 1)
    i = torch.arange(PACK_FACTOR, device=device).view(1, -1)
    r = lane // 4 + 8 * (i & 1)
    c = 2 * (lane % 4) + 8 * ((i >> 1) & 1) + ((i >> 2) & 1)
    return r, c


def _coords(size_n: int, size_k: int, device):
    """(n, k) of every nibble of the prepacked tensor, both int64 ``[K/16, N/16, 32, 8]``."""
    r, c = atom_coords(device)
    kb = torch.arange(size_k // ATOM, device=device).view(-1, 1, 1, 1)
    nb = torch.arange(size_n // ATOM, device=device).view(1, -1, 1, 1)
    return ATOM * nb + r, ATOM * kb + c


def prepack(weight_packed: torch.Tensor, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """compressed-tensors ``weight_packed [N, K/8]`` (+ act-order ``perm [K]``) -> ``b [K/16, N/16, 32]``."""
    size_n, size_k = weight_packed.shape[0], weight_packed.shape[1] * PACK_FACTOR
    u = unpack_int4(weight_packed, size_k)  # [N, K]
    if perm is not None:
        u = u[:, perm.long()]
    n, k = _coords(size_n, size_k, u.device)
    return pack_int4(u[n, k] ^ SYM_ZERO).squeeze(-1)  # u ^ 8 = q mod 16 (two's complement)


def unprepack(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`prepack` without the permutation: ``b [K/16, N/16, 32]`` -> nibbles ``u [N, K]``
    (int32, ``u = q + 8`` as in the checkpoint, K in the kernel's sorted order)."""
    size_k, size_n = b.shape[0] * ATOM, b.shape[1] * ATOM
    n, k = _coords(size_n, size_k, b.device)
    u = torch.empty(size_n, size_k, dtype=torch.int32, device=b.device)
    u[n, k] = unpack_int4(b, WORDS_PER_ATOM * PACK_FACTOR).view(*b.shape, PACK_FACTOR) ^ SYM_ZERO
    return u


def hopper_zeros(weight_zero_point: torch.Tensor, scales: torch.Tensor, size_n: int) -> torch.Tensor:
    """Checkpoint ``weight_zero_point [ceil(N/8), G]`` + the kernel's ``scales [G, N]`` (activation
    dtype) -> ``z' [G, N] = act((8 - z) s)``: exact product in float64, one rounding, contiguous.
    Derived from the scale the kernel multiplies by, so that ``q s + z'`` approximates the same
    ``(u - z) s`` as the Marlin path's reference."""
    z = unpack_zero_points(weight_zero_point, size_n).t()  # [G, N]
    return ((SYM_ZERO - z).double() * scales.double()).to(scales.dtype).contiguous()


def _group_of_k(size_k: int, group_size: int, device) -> torch.Tensor:
    return torch.arange(size_k, device=device) // (size_k if group_size == -1 else group_size)


def dequantize_prepacked(b: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                         group_size: int) -> torch.Tensor:
    """The weight ``W [K, N]`` (sorted k) in the activation dtype, rounded exactly as the kernel does.

    Both roundings are computed exactly in float32: ``q s`` has at most 4 + 11 significant bits,
    and ``act(q s) + z'`` adds two values within a factor 8 of ``|s|`` (or an exact 0)."""
    q = (unprepack(b) - SYM_ZERO).t().float()  # [K, N]
    g = _group_of_k(q.shape[0], group_size, q.device)
    w = (q * scales.float()[g]).to(scales.dtype)
    if zeros is not None:
        w = (w.float() + zeros.float()[g]).to(scales.dtype)
    return w


def gemm(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
         perm: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_size: int) -> torch.Tensor:
    """``out [..., N] = A[..., perm] @ W (+ bias)``, float32 accumulation, output in ``a.dtype``."""
    w = dequantize_prepacked(b, scales, zeros, group_size)
    if perm is not None:
        a = a.index_select(-1, perm.long())
    out = a.float() @ w.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(a.dtype)
