"""2:4 sparse FP8 GEMM (``qkernels.ops.sparse24``), bf16 output, sm90.

The weight is pruned 2:4 along K (the 2 largest magnitudes of every 4 kept),
quantised to FP8 per channel or per tensor and compressed once per shape; only
the GEMM is timed. TFLOPS are dense-equivalent (2*M*N*K), so they compare
directly with the dense rows; bytes count the compressed weight (K/2 values +
2 bits of index per kept value). Peer: ``torch._scaled_mm`` on the same pruned
weight stored dense (what 2:4 sparsity must beat). rel_err: against
``qkernels.reference.scaled_mm`` with the dense pruned weight (first ``min(M, 256)`` rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from qkernels.bench.entries._common import FP8, prune_24, quantize_activations, quantize_weight, random_weight, unavailable
from qkernels.bench.results import gemm_bytes
from qkernels.bench.shapes import LinearShape

NAME = "sparse24"
GEMM = True
FAMILY = "sparse24_fp8"

VARIANTS = {"fp8 token x channel": True, "fp8 tensor x tensor": False}  # name -> per-token / per-channel
QUICK_VARIANTS = ("fp8 token x channel",)


def available() -> Optional[str]:
    return unavailable("sparse24", min_sm=(9, 0), max_sm=(9, 0))


def variants(quick: bool) -> List[str]:
    return list(QUICK_VARIANTS if quick else VARIANTS)


@dataclass
class _State:
    shape: LinearShape
    variant: str
    per_channel: bool
    sw: object  # what compress() returned
    b_dense: torch.Tensor  # [K, N] column-major view of the pruned fp8 weight
    b_scales: torch.Tensor


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    from qkernels.ops.sparse24 import compress

    per_channel = VARIANTS[variant]
    q, s = quantize_weight(prune_24(random_weight(shape.N, shape.K, ctx.device)), FP8, per_channel)
    return _State(shape, variant, per_channel, compress(q), q.t(), s)


def run(ctx, st: _State, M: int) -> List[dict]:
    from qkernels.ops.sparse24 import scaled_mm
    from qkernels.reference import scaled_mm as ref

    N, K = st.shape.N, st.shape.K
    a, a_s = quantize_activations(torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16), FP8, st.per_channel)
    gemm = lambda: scaled_mm(a, st.sw, a_s, st.b_scales, torch.bfloat16)
    r = ctx.check_rows(M)
    ref_out = ref.scaled_mm(a[:r], st.b_dense, a_s[:r] if st.per_channel else a_s, st.b_scales, torch.bfloat16)
    err = ctx.rel_err(gemm()[:r], ref_out)
    dtypes = {"a": "float8_e4m3fn", "b": "float8_e4m3fn (2:4)", "out": "bfloat16"}
    common = dict(family=FAMILY, shape=st.shape, M=M, variant=st.variant, flops=2.0 * M * N * K)
    rows = [ctx.row(impl="qkernels", dtypes=dtypes, timing=ctx.time(gemm), rel_err=err,
                    nbytes=gemm_bytes(M, N, K, 8, 4, 16, b_meta_bits=1), **common)]
    if ctx.peers:
        sa, sb = (a_s, st.b_scales.reshape(1, N)) if st.per_channel else (a_s.reshape(()), st.b_scales.reshape(()))
        peer = lambda: torch._scaled_mm(a, st.b_dense, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        rows += ctx.peer_rows("torch_scaled_mm", peer, nbytes=gemm_bytes(M, N, K, 8, 8, 16),
                              dtypes={"a": "float8_e4m3fn", "b": "float8_e4m3fn", "out": "bfloat16"}, **common)
    return rows
