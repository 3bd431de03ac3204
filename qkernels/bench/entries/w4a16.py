"""W4A16 GEMM (``qkernels.ops.w4a16``): INT4 weights in the compressed-tensors
``pack-quantized`` layout, bf16 activations and output.

Weights are random int4 values packed as the checkpoint stores them (``weight_packed``
int32 [N, K/8], ``weight_scale`` [N, G], asymmetric ``weight_zero_point`` int32
[N/8, G] packed along N, act-order ``g_idx`` [K]) and converted once per shape with
``prepare_weight``; only ``gemm`` is timed. rel_err: against ``x @ W.T`` in float32
with ``W`` dequantised by the format's formula ``(u_q - u_zp) * scale`` (first
``min(M, 256)`` rows). Peer: ``torch._weight_int4pack_mm`` (tinygemm, bf16,
symmetric groups only) when this PyTorch build provides it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import List, Optional

import torch

from qkernels.bench.entries._common import unavailable
from qkernels.bench.results import gemm_bytes
from qkernels.bench.shapes import LinearShape

NAME = "w4a16"
GEMM = True
FAMILY = "w4a16"

VARIANTS = {  # name -> (group size, symmetric, act-order)
    "g128 sym": (128, True, False),
    "g128 asym": (128, False, False),
    "g128 act-order": (128, True, True),
    "g64 sym": (64, True, False),
    "g32 sym": (32, True, False),
    "channel sym": (-1, True, False),
}
QUICK_VARIANTS = ("g128 sym",)


def available() -> Optional[str]:
    return unavailable("w4a16", min_sm=(8, 0))


def variants(quick: bool) -> List[str]:
    return list(QUICK_VARIANTS if quick else VARIANTS)


def pack_rows(u: torch.Tensor) -> torch.Tensor:
    """uint4 values [R, C] (0..15, C % 8 == 0) -> int32 [R, C/8]; element 8w+i at bits 4i of word w."""
    R, C = u.shape
    words = (u.to(torch.int64).reshape(R, C // 8, 8) << (4 * torch.arange(8, device=u.device))).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


@dataclass
class _State:
    shape: LinearShape
    variant: str
    w: object  # what prepare_weight returned
    w_deq: torch.Tensor  # float32 [N, K], for rel_err
    groups: int
    symmetric: bool
    tinygemm: Optional[tuple]  # (packed weight, scales_and_zeros, group size) for the peer


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    from qkernels.ops.w4a16 import prepare_weight

    N, K, dev = shape.N, shape.K, ctx.device
    g, symmetric, act_order = VARIANTS[variant]
    gs = K if g == -1 else g
    G = K // gs
    u = torch.randint(0, 16, (N, K), device=dev, dtype=torch.int32)
    scale = (torch.rand(N, G, device=dev) * 0.002 + 0.002).to(torch.bfloat16)
    u_zp = torch.full((N, G), 8, device=dev, dtype=torch.int32) if symmetric else torch.randint(5, 11, (N, G), device=dev, dtype=torch.int32)
    g_idx = (torch.randperm(K, device=dev) // gs).to(torch.int32) if act_order else None
    col_group = g_idx.long() if act_order else torch.arange(K, device=dev) // gs
    w_deq = (u - u_zp[:, col_group]).float() * scale.float()[:, col_group]
    w = prepare_weight(pack_rows(u), scale, None if symmetric else pack_rows(u_zp.t().contiguous()).t().contiguous(),
                       g_idx=g_idx, group_size=g, act_dtype=torch.bfloat16)
    return _State(shape, variant, w, w_deq, G, symmetric, _tinygemm(u, scale, gs) if symmetric and not act_order else None)


def _tinygemm(u: torch.Tensor, scale: torch.Tensor, gs: int) -> Optional[tuple]:
    """torch's int4 tinygemm weight for symmetric groups, or None if this build cannot make one."""
    if not hasattr(torch, "_weight_int4pack_mm") or gs not in (32, 64, 128, 256):
        return None
    try:
        u8 = (u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8)
        packed = torch._convert_weight_to_int4pack(u8.contiguous(), 8)
        # tinygemm dequantises (u - 8) * scale + zero; symmetric: zero = 0
        sz = torch.stack([scale.t(), torch.zeros_like(scale.t())], dim=-1).contiguous()
        return packed, sz, gs
    except RuntimeError as e:
        print(f"[w4a16] peer torch._weight_int4pack_mm unavailable: {str(e).splitlines()[0]}", file=sys.stderr)
        return None


def run(ctx, st: _State, M: int) -> List[dict]:
    from qkernels.ops.w4a16 import gemm

    N, K = st.shape.N, st.shape.K
    x = torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16)
    r = ctx.check_rows(M)
    err = ctx.rel_err(gemm(x, st.w)[:r], x[:r].float() @ st.w_deq.t())
    meta_bits = st.groups * 16 / K + (0 if st.symmetric else st.groups * 4 / K)  # scales (+ zero points) per weight
    common = dict(family=FAMILY, shape=st.shape, M=M, variant=st.variant, flops=2.0 * M * N * K,
                  nbytes=gemm_bytes(M, N, K, 16, 4, 16, b_meta_bits=meta_bits))
    dtypes = {"a": "bfloat16", "b": "int4", "out": "bfloat16"}
    rows = [ctx.row(impl="qkernels", dtypes=dtypes, timing=ctx.time(lambda: gemm(x, st.w)), rel_err=err, **common)]
    if ctx.peers and st.tinygemm is not None:
        packed, sz, gs = st.tinygemm
        peer = lambda: torch._weight_int4pack_mm(x, packed, gs, sz)
        rows += ctx.peer_rows("torch_int4pack_mm", peer, dtypes=dtypes, **common)
    return rows
