"""Sweep cases for the W8A8 scaled GEMMs (INT8 with and without zero points, FP8).

Every arch path this build runs on the GPU (the native one and, with a ``QKERNELS_SASS_FOR=90`` or
PTX build, the forced sm75 / sm80 / sm89 ones); M from 0 to 4096 across every dispatch bucket,
N and K multiples of 16 up to 8192 (bounded so the CPU reference stays cheap); per-tensor /
per-token / per-channel scales, bf16 / fp16 outputs, bias or none, strided activations, the
``*_out`` variants on poisoned outputs. Tolerances are the GPU tests' (test_scaled_mm.py).
"""
from __future__ import annotations

import random

import torch

from ...ops import scaled_mm as S
from ..numerics import poison_
from ..sweep import Case, SweepContext
from . import fit_gemm, log_uniform, multiple, rand, randint, randn, scalar, short

FP8, INT8 = S.FP8_DTYPE, torch.int8


def _runs(ctx: SweepContext, arch, dtype) -> bool:
    """Whether the (arch path, dtype) kernels run here: CPU always (reference)."""
    if not ctx.on_gpu:
        return True
    cap = arch or ctx.capability
    group = S.kernel_group(cap, dtype)
    if group is None:
        return False
    if arch is None:
        return S.supports(cap, dtype)
    # a forced path runs the group that serves (arch, dtype); it must run on this GPU
    return {"SM75": 75, "SM80": 80, "SM89": 89}.get(group) in ctx.forced_archs


def _operand(rows, k, dtype, gen):
    if dtype == INT8:
        return randint(-128, 128, (rows, k), gen, INT8)
    return (randn((rows, k), gen) * 1.5).to(FP8)


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    arch = rng.choice((None,) + tuple(ctx.forced_archs)) if ctx.on_gpu else None
    dtypes = [d for d in (INT8, FP8) if _runs(ctx, arch, d)] or [INT8]
    dtype = rng.choice(dtypes)
    skip = None if _runs(ctx, arch, dtype) else f"no {short(dtype)} kernels for the sm_{arch or ctx.capability} path here"
    ops = ("scaled_mm", "scaled_mm_out") + (("scaled_mm_azp", "scaled_mm_azp_out") if dtype == INT8 else ())
    name = rng.choice(ops)
    small = ctx.small
    m = 0 if rng.random() < 0.02 else log_uniform(rng, 1, 256 if small else 4096)
    n = multiple(rng, 16, 1024 if small else 8192, 16)
    k = multiple(rng, 16, 1024 if small else 8192, 16)
    m, n, k = fit_gemm(m, n, k, (1 << 22) if small else (1 << 31), 16, 16)
    out_dtype = rng.choice(S.OUT_DTYPES)
    per_token, per_channel = rng.random() < 0.5, rng.random() < 0.5
    a = _operand(m, k, dtype, gen)
    strided = m > 1 and rng.random() < 0.15
    if strided:  # a row stride > K (a multiple of 16 elements): a column slice of a wider tensor
        wide = _operand(m, k + 16 * rng.randint(1, 4), dtype, gen)
        wide[:, :k] = a
        a = wide[:, :k]
    w = _operand(n, k, dtype, gen)
    b = w.t()  # [K, N] column-major, as the op wants
    a_s = rand((m, 1), gen) * 0.02 + 0.005 if per_token else scalar(0.011, gen)
    b_s = rand((1, n), gen) * 0.02 + 0.005 if per_channel else scalar(0.017, gen)
    bias = randn((n,), gen).to(out_dtype) if rng.random() < 0.5 else None
    tol = (2e-3 if out_dtype == torch.float16 else 8e-3) if dtype == INT8 else 1.5e-2
    desc = (f"{m}x{n}x{k} {short(dtype)}->{short(out_dtype)} a_s={'token' if per_token else 'tensor'} "
            f"b_s={'channel' if per_channel else 'tensor'} bias={bias is not None}{' strided-a' if strided else ''} "
            f"arch={'native' if arch is None else f'sm{arch}'}")
    out = poison_(torch.empty((m, n), dtype=out_dtype, device=gen.device)) if name.endswith("_out") else None
    first = lambda r, args: (args[0],)  # noqa: E731  (the *_out ops return nothing: compare what they wrote)
    if name in ("scaled_mm", "scaled_mm_out"):
        args = (a, b, a_s, b_s, out_dtype, bias) if out is None else (out, a, b, a_s, b_s, bias)
    else:
        if rng.random() < 0.5:
            azp = randint(-30, 30, (m, 1), gen)
            adj, azp_arg, desc = S.azp_adj(b, None), azp, desc + " azp=token"
        else:
            azp = randint(-30, 30, (1,), gen)
            adj, azp_arg, desc = S.azp_adj(b, azp), None, desc + " azp=tensor"
        args = ((a, b, a_s, b_s, out_dtype, adj, azp_arg, bias) if out is None
                else (out, a, b, a_s, b_s, adj, azp_arg, bias))
    return Case(name, args, desc, "rel", tol, outputs=first if out is not None else None,
                forced_arch=arch, skip=skip, ref_on="device")
