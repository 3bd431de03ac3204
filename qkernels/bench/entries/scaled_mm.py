"""W8A8 GEMM (``qkernels.ops.scaled_mm``), FP8 e4m3 and INT8, bf16 output.

``out[M, N] = a_scale * b_scale * (a[M, K] @ b[K, N])`` with ``b = weight.t()``
(column-major). Weights are quantised once per shape (per channel or per tensor),
activations per token or per tensor by the qkernels quant ops; only the GEMM is
timed (the quant family times the activation quantisation). Peers in the same
run: ``torch._scaled_mm`` (cuBLASLt FP8, same scales, ``use_fast_accum=True`` like our
sm90 FP8 kernels: its fastest mode), ``torch._int_mm``
(cuBLAS INT8 with int32 output and *no* scale epilogue, so it does less work;
PyTorch requires M > 16 for it) and ``triton_scaled_mm`` (``qkernels/bench/triton_peer.py``:
a tiled Triton ``tl.dot`` kernel with the same scales and epilogue, autotuned over a
few configs; FP8 and INT8; left out, with a message, where Triton is missing).
rel_err: against ``qkernels.reference.scaled_mm`` on the same quantised inputs
(first ``min(M, 256)`` rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from qkernels.bench.entries._common import FP8, dtype_name, quantize_activations, quantize_weight, random_weight, unavailable
from qkernels.bench.results import gemm_bytes
from qkernels.bench.shapes import LinearShape

NAME = "scaled_mm"
GEMM = True

VARIANTS = {  # name -> (row family, element dtype, per-token activations / per-channel weights)
    "fp8 token x channel": ("scaled_mm_fp8", FP8, True),
    "fp8 tensor x tensor": ("scaled_mm_fp8", FP8, False),
    "int8 token x channel": ("scaled_mm_int8", torch.int8, True),
    "int8 tensor x tensor": ("scaled_mm_int8", torch.int8, False),
}
QUICK_VARIANTS = ("fp8 token x channel", "int8 token x channel")


def available() -> Optional[str]:
    return unavailable("scaled_mm")


def variants(quick: bool) -> List[str]:
    names = QUICK_VARIANTS if quick else tuple(VARIANTS)
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        names = tuple(n for n in names if VARIANTS[n][1] != FP8)  # FP8 tensor cores: sm89+
    return list(names)


@dataclass
class _State:
    shape: LinearShape
    variant: str
    family: str
    dtype: torch.dtype
    per_channel: bool
    b: torch.Tensor  # [K, N] column-major view of the quantised weight
    b_scales: torch.Tensor  # float32 [N, 1] or [1]


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    family, dtype, per_channel = VARIANTS[variant]
    q, s = quantize_weight(random_weight(shape.N, shape.K, ctx.device), dtype, per_channel)
    return _State(shape, variant, family, dtype, per_channel, q.t(), s)


def run(ctx, st: _State, M: int) -> List[dict]:
    from qkernels.ops.scaled_mm import scaled_mm
    from qkernels.reference import scaled_mm as ref

    N, K = st.shape.N, st.shape.K
    a, a_s = quantize_activations(torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16), st.dtype, st.per_channel)
    gemm = lambda: scaled_mm(a, st.b, a_s, st.b_scales, torch.bfloat16)
    r = ctx.check_rows(M)
    ref_out = ref.scaled_mm(a[:r], st.b, a_s[:r] if st.per_channel else a_s, st.b_scales, torch.bfloat16)
    err = ctx.rel_err(gemm()[:r], ref_out)
    common = dict(family=st.family, shape=st.shape, M=M, variant=st.variant, flops=2.0 * M * N * K,
                  nbytes=gemm_bytes(M, N, K, 8, 8, 16))
    name = dtype_name(st.dtype)
    dtypes = {"a": name, "b": name, "out": "bfloat16"}
    rows = [ctx.row(impl="qkernels", dtypes=dtypes, timing=ctx.time(gemm), rel_err=err, **common)]
    if not ctx.peers:
        return rows
    from qkernels.bench.triton_peer import triton_scaled_mm

    tri = lambda: triton_scaled_mm(a, st.b, a_s, st.b_scales, torch.bfloat16)
    rows += ctx.peer_rows("triton_scaled_mm", tri, dtypes=dtypes, **common)
    if st.dtype == FP8:
        sa, sb = (a_s, st.b_scales.reshape(1, N)) if st.per_channel else (a_s.reshape(()), st.b_scales.reshape(()))
        peer = lambda: torch._scaled_mm(a, st.b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                       use_fast_accum=True)  # our sm90 FP8 kernels fast-accumulate too
        rows += ctx.peer_rows("torch_scaled_mm", peer, dtypes=dtypes, **common)
    elif M > 16:
        peer = lambda: torch._int_mm(a, st.b)
        common["nbytes"] = gemm_bytes(M, N, K, 8, 8, 32)
        rows += ctx.peer_rows("torch_int_mm", peer, dtypes={"a": "int8", "b": "int8", "out": "int32"}, **common)
    return rows
