"""W4A16 Hopper path (``qkernels.ops.w4a16_hopper``, sm90 only): INT4 weights in the
compressed-tensors ``pack-quantized`` layout, bf16 activations and output.

The same random checkpoints as the ``w4a16`` entry (its helpers), converted once per shape with
``w4a16_hopper.prepare_weight``; only ``gemm`` is timed. rel_err: against ``x @ W.T`` in float32
with ``W`` dequantised by the format's formula (first ``min(M, 256)`` rows). Peer rows:
``qkernels_marlin``, the Marlin-style path on the same checkpoint, at every M, so one sweep shows
where the paths cross (``W4A16_HOPPER_MIN_M``, the per-GPU threshold). Group size 32 is not run:
the Hopper path does not support it (csrc/w4a16/README.md, "Hopper path").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from qkernels.bench.entries._common import unavailable
from qkernels.bench.entries import w4a16 as _marlin
from qkernels.bench.entries.w4a16 import pack_rows
from qkernels.bench.results import gemm_bytes
from qkernels.bench.shapes import LinearShape

NAME = "w4a16_hopper"
GEMM = True
FAMILY = "w4a16_hopper"

# The Marlin-style entry's variants but group 32 (the Hopper path does not take it).
VARIANTS = {name: v for name, v in _marlin.VARIANTS.items() if v[0] != 32}
QUICK_VARIANTS = _marlin.QUICK_VARIANTS


def available() -> Optional[str]:
    return unavailable("w4a16_hopper", min_sm=(9, 0), max_sm=(9, 0))


def variants(quick: bool) -> List[str]:
    return list(QUICK_VARIANTS if quick else VARIANTS)


@dataclass
class _State:
    shape: LinearShape
    variant: str
    w: object  # W4A16HopperWeight
    marlin: Optional[object]  # W4A16Weight of the same checkpoint (the peer), None if it cannot be built
    w_deq: torch.Tensor  # float32 [N, K], for rel_err
    groups: int
    symmetric: bool


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    from qkernels.ops import w4a16, w4a16_hopper

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
    args = (pack_rows(u), scale, None if symmetric else pack_rows(u_zp.t().contiguous()).t().contiguous(), g_idx, g)
    marlin = None
    if ctx.peers:
        marlin = w4a16.prepare_weight(*args, act_dtype=torch.bfloat16)
    w = w4a16_hopper.prepare_weight(*args, act_dtype=torch.bfloat16, scales=marlin.scales if marlin else None)
    return _State(shape, variant, w, marlin, w_deq, G, symmetric)


def run(ctx, st: _State, M: int) -> List[dict]:
    from qkernels.ops import w4a16, w4a16_hopper

    N, K = st.shape.N, st.shape.K
    x = torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16)
    r = ctx.check_rows(M)
    err = ctx.rel_err(w4a16_hopper.gemm(x, st.w)[:r], x[:r].float() @ st.w_deq.t())
    meta_bits = st.groups * 16 / K + (0 if st.symmetric else st.groups * 16 / K)  # scales (+ z' in bf16) per weight
    common = dict(family=FAMILY, shape=st.shape, M=M, variant=st.variant, flops=2.0 * M * N * K,
                  nbytes=gemm_bytes(M, N, K, 16, 4, 16, b_meta_bits=meta_bits))
    dtypes = {"a": "bfloat16", "b": "int4", "out": "bfloat16"}
    rows = [ctx.row(impl="qkernels", dtypes=dtypes, timing=ctx.time(lambda: w4a16_hopper.gemm(x, st.w)), rel_err=err,
                    **common)]
    if ctx.peers and st.marlin is not None:
        rows += ctx.peer_rows("qkernels_marlin", lambda: w4a16.gemm(x, st.marlin), dtypes=dtypes, **common)
    return rows
