"""Sweep cases for W4A16 (the repack, bit-exact; the GEMM, against the reference).

Random compressed-tensors ``pack-quantized`` weights (symmetric / asymmetric, group sizes -1 / 32 /
64 / 128, act-order or not) put in the kernel's layout by the reference repack; N a multiple of 64 and K
of 128 up to 8192; M from 1 to 4096 (2-D or 3-D activations), fp16 / bf16, bias or none.
Tolerances are the GPU tests' (test_w4a16.py).
"""
from __future__ import annotations

import random

import torch

from ...ops import w4a16 as W
from ...reference import w4a16 as ref
from ..sweep import Case, SweepContext
from . import fit_gemm, log_uniform, multiple, rand, randint, randn, short


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    small = ctx.small
    n = multiple(rng, W.TILE_N, 1024 if small else 8192, W.TILE_N)
    k = multiple(rng, W.TILE_K, 1024 if small else 8192, W.TILE_K)
    m = log_uniform(rng, 1, 64 if small else 4096)
    m, n, k = fit_gemm(m, n, k, (1 << 22) if small else (1 << 31), W.TILE_N, W.TILE_K)
    group_size = rng.choice(W.GROUP_SIZES)
    asym = rng.random() < 0.5
    act_order = group_size != -1 and rng.random() < 0.25
    dtype = rng.choice(W.ACT_DTYPES)
    groups = 1 if group_size == -1 else k // group_size
    q = randint(-8, 8, (n, k), gen)
    wp = ref.pack_int4(q + 8)
    scale = (rand((n, groups), gen) * 0.02 + 0.005).to(torch.bfloat16)
    zp = ref.pack_int4((randint(-8, 8, (n, groups), gen) + 8).t()).t().contiguous() if asym else None
    g_idx = None
    if act_order:
        g_idx = ref.default_g_idx(k, group_size, gen.device)[torch.randperm(k, generator=gen, device=gen.device)]
    perm = ref.act_order_perm(g_idx.contiguous(), group_size) if g_idx is not None else None
    desc = f"N={n} K={k} g={group_size} {'asym' if asym else 'sym'}{' act-order' if act_order else ''}"
    if rng.random() < 0.15:
        return Case("w4a16_repack", (wp, perm), desc, "exact")
    # the kernel's layout, prepared by the reference (as qkernels.ops.w4a16.prepare_weight does)
    qweight = ref.repack(wp, perm)
    scales = ref.kernel_scales(scale, dtype)
    zeros = ref.kernel_zeros(zp, n, dtype) if asym else None
    lead = (m,) if rng.random() < 0.85 or m < 2 else (2, m // 2)
    x = randn((*lead, k), gen).to(dtype)
    bias = randn((n,), gen).to(dtype) if rng.random() < 0.3 else None
    desc = f"M={lead} {desc} {short(dtype)} bias={bias is not None}"
    return Case("w4a16_gemm", (x, qweight, scales, zeros, perm, bias, n, k, group_size), desc, "rel",
                2e-3 if dtype == torch.float16 else 8e-3, ref_on="device")
