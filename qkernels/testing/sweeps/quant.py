"""Sweep cases for the activation-quantisation ops (bit-exact against the reference).

Shapes: rank 1-3, last dim from 1 to 16384 (odd sizes, multiples of 8, model widths), a few empty
inputs; dtypes fp16 / bf16 / fp32; magnitudes 1e-3..1e3; value kinds: plain, zero rows, NaN / inf
entries (the reference's documented semantics), base pointers 16-byte aligned or not; static
scales, zero points and per-token upper bounds drawn at random.
"""
from __future__ import annotations

import random

import torch

from ...ops import quant as Q
from ..sweep import Case, SweepContext
from . import log_uniform, randint, randn, scalar, short

WIDTHS = (4096, 5120, 8192, 14336, 11008, 4095, 4097, 8)


def _input(rng: random.Random, gen: torch.Generator, ctx: SweepContext):
    budget = 1 << (15 if ctx.small else 20)
    last = rng.choice(WIDTHS) if rng.random() < 0.3 else log_uniform(rng, 1, 16384)
    last = min(last, budget)
    rows = 0 if rng.random() < 0.02 else log_uniform(rng, 1, max(1, budget // last))
    rank = rng.choice((1, 2, 2, 2, 3))
    if rank == 1:
        shape = (last,)
    elif rank == 2:
        shape = (rows, last)
    else:
        b = log_uniform(rng, 1, max(1, rows))
        shape = (b, max(0 if rows == 0 else 1, rows // b), last)
    dtype = rng.choice(Q.INPUT_DTYPES)
    mag = 10.0 ** rng.uniform(-3, 3)
    x = randn(shape, gen, mag)
    kind = rng.choices(("plain", "zero-rows", "nan", "inf"), (0.8, 0.1, 0.05, 0.05))[0]
    if x.numel() and kind != "plain":
        flat = x.view(-1, shape[-1])
        pick = randint(0, flat.size(0), (max(1, flat.size(0) // 8),), gen, torch.int64)
        if kind == "zero-rows":
            flat[pick] = 0.0
        else:
            col = randint(0, shape[-1], pick.shape, gen, torch.int64)
            flat[pick, col] = float("nan") if kind == "nan" else float("inf") * (1 if rng.random() < 0.5 else -1)
    return x.to(dtype), f"x{tuple(shape)} {short(dtype)} |x|~{mag:.0e} {kind}"


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    name = rng.choice(Q.OPS)
    x, desc = _input(rng, gen, ctx)
    scale = scalar(10.0 ** rng.uniform(-4, 1), gen)
    if name == "static_scaled_fp8_quant":
        args, extra = (x, scale), f" scale={scale.item():.3g}"
    elif name == "dynamic_per_token_scaled_fp8_quant":
        ub = None if rng.random() < 0.5 else scalar(10.0 ** rng.uniform(-3, 3), gen)
        args, extra = (x, ub), f" scale_ub={None if ub is None else round(ub.item(), 4)}"
    elif name == "static_scaled_int8_quant":
        azp = None if rng.random() < 0.5 else scalar(rng.randint(-128, 127), gen, torch.int32)
        args, extra = (x, scale, azp), f" scale={scale.item():.3g} azp={None if azp is None else azp.item()}"
    else:
        args, extra = (x,), ""
    misalign = x.numel() > 0 and rng.random() < 0.2
    return Case(name, args, desc + extra + (" misaligned" if misalign else ""), "exact", misalign=misalign)
