"""Activation quantisation (FP8 e4m3 / INT8, per-token-group FP8): GB/s against the measured copy bandwidth.

Input ``[M, K]`` bf16, one row per ``(M, K)``; K takes the distinct input widths of the
chosen shapes' layers (the activations each GEMM quantises) plus 8192, and M always
includes 8192, so the issue's goal (>= 80% of copy bandwidth at [8192, 8192] bf16)
is in every run. Bytes = input read once + quantised output written once + scales
(+ zero points). The peer ``torch_eager`` is the pure-torch reference run on the GPU
(unfused element-wise kernels). rel_err compares the dequantised outputs.

Row family ``quant_fp8_group``: ``qkernels.ops.fp8_block.per_token_group_quant`` (dynamic, one
float32 scale per token and group of 128 or 64 along K; row-major scales, or the column-major
TMA-aligned ones with power-of-two (UE8M0) values the sm90 block-FP8 GEMM reads), listed where
that family is part of the install (and, on a GPU, built for it: sm89+).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from qkernels.bench.entries._common import dtype_name, family_module, unavailable
from qkernels.bench.shapes import LinearShape

NAME = "quant"
GEMM = False


def _variants() -> Dict[str, Tuple]:
    """variant -> (row family, qkernels call, reference call[, group size])."""
    from qkernels.ops.quant import scaled_fp8_quant, scaled_int8_quant
    from qkernels.reference import quant as ref

    one = lambda x: torch.ones(1, device=x.device)  # static scale of 1 (the input is ~N(0,1))
    variants = {
        "fp8 static": ("quant_fp8", lambda x: scaled_fp8_quant(x, one(x)),
                       lambda x: (ref.static_scaled_fp8_quant(x, one(x)), one(x))),
        "fp8 dynamic tensor": ("quant_fp8", lambda x: scaled_fp8_quant(x), ref.dynamic_scaled_fp8_quant),
        "fp8 dynamic token": ("quant_fp8", lambda x: scaled_fp8_quant(x, per_token=True),
                              ref.dynamic_per_token_scaled_fp8_quant),
        "int8 static": ("quant_int8", lambda x: scaled_int8_quant(x, one(x) / 32)[:2],
                        lambda x: (ref.static_scaled_int8_quant(x, one(x) / 32), one(x) / 32)),
        "int8 dynamic token": ("quant_int8", lambda x: scaled_int8_quant(x)[:2], ref.dynamic_scaled_int8_quant),
        "int8 dynamic token azp": ("quant_int8", lambda x: scaled_int8_quant(x, symmetric=False),
                                   ref.dynamic_scaled_int8_quant_azp),
    }
    if _has_fp8_block():
        from qkernels.ops.fp8_block import per_token_group_quant
        from qkernels.reference import fp8_block as ref_fb

        for name, g, kw in (("fp8 dynamic group128", 128, {}),
                            ("fp8 dynamic group128 col-major ue8m0", 128,
                             dict(column_major_scales=True, scale_ue8m0=True)),
                            ("fp8 dynamic group64", 64, {})):
            variants[name] = ("quant_fp8_group", lambda x, g=g, kw=kw: per_token_group_quant(x, g, **kw),
                              lambda x, g=g, kw=kw: ref_fb.per_token_group_quant(x, g, **kw), g)
    return variants


def _has_fp8_block() -> bool:
    """Whether the per-token-group quantisation can be benchmarked here: its module is part of the
    install and, where a GPU is visible, its CUDA kernel is built."""
    if family_module("fp8_block")[0] is None:
        return False
    from qkernels import _loader

    return not torch.cuda.is_available() or _loader.has_cuda_kernel("per_token_group_fp8_quant")


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


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    family, fn, reference, *group = _variants()[variant]
    if group and shape.K % group[0] != 0:
        raise ValueError(f"K = {shape.K} is not a multiple of the group size {group[0]}")
    return _State(shape, variant, family, fn, reference)


def _dequant(outs) -> torch.Tensor:
    q, s = outs[0].float(), outs[1].float()
    zp = outs[2] if len(outs) > 2 and outs[2] is not None else 0
    if s.dim() == q.dim() and s.shape[-1] not in (1, q.shape[-1]):  # per-token-group scales [M, K/G]
        group = q.shape[-1] // s.shape[-1]
        return ((q - zp).reshape(*q.shape[:-1], s.shape[-1], group) * s.unsqueeze(-1)).reshape(q.shape)
    return (q - zp) * s


def run(ctx, st: _State, M: int) -> List[dict]:
    K = st.shape.K
    x = torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16)
    out = st.fn(x)
    err = ctx.rel_err(_dequant(out), _dequant(st.ref(x)))
    q_bits = 8
    extra = sum(t.numel() * t.element_size() for t in out[1:] if t is not None)  # scales (+ zero points)
    nbytes = M * K * x.element_size() + M * K * q_bits // 8 + extra
    dtypes = {"a": dtype_name(x.dtype), "out": dtype_name(out[0].dtype)}
    common = dict(family=st.family, shape=st.shape, M=M, dtypes=dtypes, variant=st.variant, flops=None, nbytes=nbytes)
    rows = [ctx.row(impl="qkernels", timing=ctx.time(lambda: st.fn(x)), rel_err=err, **common)]
    if ctx.peers:
        rows += ctx.peer_rows("torch_eager", lambda: st.ref(x), **common)
    return rows
