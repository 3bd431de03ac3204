"""Sweep cases for the W4A16 Hopper path (the prepack, bit-exact; the GEMM, against the reference).

Random compressed-tensors ``pack-quantized`` weights (symmetric / asymmetric, group sizes -1 / 64 /
128, act-order or not) put in the Hopper layout by the reference prepack; N a multiple of 64 and K
of 128 up to 8192; M from 1 to 4096 (both tile configs; 2-D or 3-D activations), fp16 / bf16, bias
or none; symmetric cases pass ``zeros=None`` or a zero tensor (both must give the same result).
Tolerances are the GPU tests' (test_w4a16_hopper.py). Off sm_90 every case is skipped.
"""
from __future__ import annotations

import random

import torch

from ...ops import w4a16_hopper as H
from ...reference import w4a16 as ct
from ...reference import w4a16_hopper as ref
from ..sweep import Case, SweepContext
from . import fit_gemm, log_uniform, multiple, rand, randint, randn, short


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    small = ctx.small
    n = multiple(rng, H.N_MULTIPLE, 1024 if small else 8192, H.N_MULTIPLE)
    k = multiple(rng, H.K_MULTIPLE, 1024 if small else 8192, H.K_MULTIPLE)
    m = log_uniform(rng, 1, 64 if small else 4096)
    m, n, k = fit_gemm(m, n, k, (1 << 22) if small else (1 << 31), H.N_MULTIPLE, H.K_MULTIPLE)
    group_size = rng.choice(H.GROUP_SIZES)
    asym = rng.random() < 0.5
    act_order = group_size != -1 and rng.random() < 0.25
    dtype = rng.choice(H.ACT_DTYPES)
    groups = 1 if group_size == -1 else k // group_size
    wp = ct.pack_int4(randint(0, 16, (n, k), gen))
    scale = (rand((n, groups), gen) * 0.02 + 0.005).to(torch.bfloat16)
    zp = ct.pack_int4(randint(0, 16, (n, groups), gen).t()).t().contiguous() if asym else None
    perm = None
    if act_order:
        g_idx = ct.default_g_idx(k, group_size, gen.device)[torch.randperm(k, generator=gen, device=gen.device)]
        perm = ct.act_order_perm(g_idx.contiguous(), group_size)
    skip = None
    if ctx.on_gpu and ctx.capability != 90:
        skip = f"the Hopper W4A16 path runs on sm_90 only (this GPU: sm_{ctx.capability})"
    desc = f"N={n} K={k} g={group_size} {'asym' if asym else 'sym'}{' act-order' if act_order else ''}"
    if rng.random() < 0.15:
        return Case("w4a16_hopper_prepack", (wp, perm), desc, "exact", skip=skip)
    # the Hopper layout, prepared by the reference (as qkernels.ops.w4a16_hopper.prepare_weight does)
    b = ref.prepack(wp, perm)
    scales = ct.kernel_scales(scale, dtype)
    if asym:
        zeros = ref.hopper_zeros(zp, scales, n)
    else:
        zeros = None if rng.random() < 0.5 else torch.zeros(groups, n, dtype=dtype, device=gen.device)
    lead = (m,) if rng.random() < 0.85 or m < 2 else (2, m // 2)
    x = randn((*lead, k), gen).to(dtype)
    bias = randn((n,), gen).to(dtype) if rng.random() < 0.3 else None
    desc = f"M={lead} {desc} {short(dtype)} zeros={'z' if asym else ('0' if zeros is not None else 'None')} " \
           f"bias={bias is not None}"
    return Case("w4a16_hopper_gemm", (x, b, scales, zeros, perm, bias, n, k, group_size), desc, "rel",
                2e-3 if dtype == torch.float16 else 8e-3, ref_on="device", skip=skip)
