"""Sweep cases for 2:4 sparse FP8 (the compressor, bit-exact; the GEMM, against the reference).

Random 2:4 fp8 weights (0, 1 or 2 non-zeros per group of 4), N a multiple of 8 and K of 128 up to
8192, M from 0 to 4096, per-tensor / per-token / per-channel scales, bf16 / fp16 outputs, bias or
none. sm_90 only: on other GPUs every case is recorded as skipped. Tolerance: the GPU tests' 1e-2.
"""
from __future__ import annotations

import random

import torch

from ...ops import sparse24 as S
from ...reference import sparse24 as ref
from ..sweep import Case, SweepContext
from . import fit_gemm, log_uniform, multiple, rand, randn, scalar, short

FP8 = S.FP8_DTYPE


def random_24(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """0, 1 or 2 non-zeros at random positions in every group of 4; non-zeros never round to 0."""
    g = k // 4
    scores = rand((n, g, 4), gen)
    kept = torch.zeros(n, g, 4, dtype=torch.bool, device=gen.device).scatter_(2, scores.topk(2, -1).indices, True)
    kept &= rand((n, g, 4), gen) > 0.25
    mag = rand((n, g, 4), gen) * 3 + 0.05
    sign = torch.where(rand((n, g, 4), gen) > 0.5, 1.0, -1.0)
    return torch.where(kept, mag * sign, torch.zeros((), device=gen.device)).reshape(n, k).to(FP8)


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    skip = None
    if ctx.on_gpu and not S.supported(ctx.capability):
        skip = f"sparse24 runs on sm_90 only with its kernels built (this GPU: sm_{ctx.capability})"
    small = ctx.small
    n = multiple(rng, S.N_MULTIPLE, 1024 if small else 8192, S.N_MULTIPLE)
    k = multiple(rng, S.K_MULTIPLE, 1024 if small else 8192, S.K_MULTIPLE)
    m = 0 if rng.random() < 0.02 else log_uniform(rng, 1, 256 if small else 4096)
    m, n, k = fit_gemm(m, n, k, (1 << 22) if small else (1 << 31), S.N_MULTIPLE, S.K_MULTIPLE)
    w = random_24(n, k, gen)
    if rng.random() < 0.2:
        return Case("sparse24_compress", (w,), f"compress N={n} K={k}", "exact", skip=skip)
    values, meta = ref.compress(w)  # the reference layout (the compress kernel has its own cases)
    per_token, per_channel = rng.random() < 0.5, rng.random() < 0.5
    out_dtype = rng.choice(S.OUT_DTYPES)
    a = (randn((m, k), gen) * 2).to(FP8)
    a_s = rand((m,), gen) + 0.5 if per_token else scalar(0.7, gen)
    b_s = rand((n,), gen) * 0.02 + 0.01 if per_channel else scalar(0.013, gen)
    bias = randn((n,), gen).to(out_dtype) if rng.random() < 0.5 else None
    desc = (f"{m}x{n}x{k} fp8->{short(out_dtype)} a_s={'token' if per_token else 'tensor'} "
            f"b_s={'channel' if per_channel else 'tensor'} bias={bias is not None}")
    return Case("sparse24_scaled_mm", (a, values, meta, a_s, b_s, out_dtype, bias), desc, "rel", 1e-2, skip=skip,
                ref_on="device")
