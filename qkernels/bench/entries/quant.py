"""Activation quantisation (FP8 e4m3 / INT8): GB/s against the measured copy bandwidth.

Input ``[M, K]`` bf16, one row per ``(M, K)``; K takes the distinct input widths of the
chosen shapes' layers (the activations each GEMM quantises) plus 8192, and M always
includes 8192, so the issue's goal (>= 80% of copy bandwidth at [8192, 8192] bf16)
is in every run. Bytes = input read once + quantised output written once + scales
(+ zero points). The peer ``torch_eager`` is the pure-torch reference run on the GPU
(unfused element-wise kernels). rel_err compares the dequantised outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from qkernels.bench.entries._common import dtype_name, unavailable
from qkernels.bench.shapes import LinearShape

NAME = "quant"
GEMM = False


def _variants() -> Dict[str, Tuple[str, Callable, Callable, bool]]:
    """variant -> (row family, qkernels call, reference call, per-token scales)."""
    from qkernels.ops.quant import scaled_fp8_quant, scaled_int8_quant
    from qkernels.reference import quant as ref

    one = lambda x: torch.ones(1, device=x.device)  # static scale of 1 (the input is ~N(0,1))
    return {
        "fp8 static": ("quant_fp8", lambda x: scaled_fp8_quant(x, one(x)),
                       lambda x: (ref.static_scaled_fp8_quant(x, one(x)), one(x)), False),
        "fp8 dynamic tensor": ("quant_fp8", lambda x: scaled_fp8_quant(x), ref.dynamic_scaled_fp8_quant, False),
        "fp8 dynamic token": ("quant_fp8", lambda x: scaled_fp8_quant(x, per_token=True),
                              ref.dynamic_per_token_scaled_fp8_quant, True),
        "int8 static": ("quant_int8", lambda x: scaled_int8_quant(x, one(x) / 32)[:2],
                        lambda x: (ref.static_scaled_int8_quant(x, one(x) / 32), one(x) / 32), False),
        "int8 dynamic token": ("quant_int8", lambda x: scaled_int8_quant(x)[:2], ref.dynamic_scaled_int8_quant, True),
        "int8 dynamic token azp": ("quant_int8", lambda x: scaled_int8_quant(x, symmetric=False),
                                   ref.dynamic_scaled_int8_quant_azp, True),
    }


QUICK_VARIANTS = ("fp8 dynamic token", "int8 dynamic token")
GOAL = LinearShape(N=None, K=8192)
GOAL_M = 8192


def available() -> Optional[str]:
    return unavailable("quant")


def variants(quick: bool) -> List[str]:
    return list(QUICK_VARIANTS) if quick else list(_variants())


def select(shapes, ms, quick):
    """Distinct activation widths K of the shapes (N=None), plus the [8192, 8192] goal."""
    seen, out = set(), []
    for s in ([] if quick else list(shapes)) + [GOAL]:
        if s.K not in seen:
            seen.add(s.K)
            out.append(LinearShape(N=None, K=s.K, model=s.model, layer=s.layer))
    return out, sorted(set(ms) | {GOAL_M})


@dataclass
class _State:
    shape: LinearShape
    variant: str
    family: str
    fn: Callable
    ref: Callable
    per_token: bool


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    family, fn, reference, per_token = _variants()[variant]
    return _State(shape, variant, family, fn, reference, per_token)


def _dequant(outs) -> torch.Tensor:
    q, s = outs[0], outs[1]
    zp = outs[2] if len(outs) > 2 and outs[2] is not None else 0
    return (q.float() - zp) * s


def run(ctx, st: _State, M: int) -> List[dict]:
    K = st.shape.K
    x = torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16)
    out = st.fn(x)
    err = ctx.rel_err(_dequant(out), _dequant(st.ref(x)))
    q_bits = 8
    extra = (M if st.per_token else 1) * 4 * (len(out) - 1)  # float32 scales (+ int32 zero points)
    nbytes = M * K * x.element_size() + M * K * q_bits // 8 + extra
    dtypes = {"a": dtype_name(x.dtype), "out": dtype_name(out[0].dtype)}
    common = dict(family=st.family, shape=st.shape, M=M, dtypes=dtypes, variant=st.variant, flops=None, nbytes=nbytes)
    rows = [ctx.row(impl="qkernels", timing=ctx.time(lambda: st.fn(x)), rel_err=err, **common)]
    if ctx.peers:
        rows += ctx.peer_rows("torch_eager", lambda: st.ref(x), **common)
    return rows
