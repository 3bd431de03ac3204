"""Sweep cases for the block-scaled FP8 ops: the per-token-group quantisation (bit-exact against
the reference, scale values and strides) and the blockwise-scaled GEMM (against the reference).

Quantisation: fp16 / bf16 / fp32 inputs of rank 1-3 (a few with no rows), K a multiple of the
group size up to 16384 (DeepSeek-V3's widths among them), group size 64 or 128, row- or
column-major (TMA-aligned) scales, dynamic scales with or without UE8M0 rounding, static per-tensor
or per-group-column scales; magnitudes 1e-3..1e3, some all-zero rows (the scale floor).
GEMM: M from 0 to 4096 across every bucket of the sm90 table (M = 1 and odd M often), N a
multiple of 16 up to 8192 (most N leave a partial last 128-block of b_scales; DeepSeek-V3's
shapes now and then), K a multiple of 128 up to 16384, bf16 / fp16 output, bias or none;
activations quantised by the reference (dynamic or UE8M0 scales), their scales column-major
TMA-aligned (what the kernels read), row-major or dense column-major (copied by the op), row
strides > K sometimes; a share of the cases calls the Triton op (the sm89 path; on sm90 too).
Tolerances are the GPU tests' (python_tests/test_fp8_block.py). Off sm89 / sm90 the GEMM cases
are skipped; the quantisation runs wherever the family was compiled.
"""
from __future__ import annotations

import random

import torch

from ...ops import fp8_block as F
from ...reference import fp8_block as ref
from ..sweep import Case, SweepContext
from . import fit_gemm, log_uniform, multiple, rand, randn, scalar, short

FP8 = F.FP8_DTYPE
DEEPSEEK_NK = ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048))
GEMM_TOL = 1e-2


def _with_strides(op_out, args) -> tuple:
    """The quant op's outputs plus the scales' strides (the layout is part of the contract)."""
    q, s = op_out
    return q, s, torch.tensor(s.stride(), dtype=torch.int64)


def _quant_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    g = rng.choice(F.GROUP_SIZES)
    budget = 1 << (15 if ctx.small else 21)
    k = rng.choice((7168, 2048, 1536, 16384)) if rng.random() < 0.25 else multiple(rng, g, 16384, g)
    k = max(g, min(k, budget) // g * g)
    rows = 0 if rng.random() < 0.03 else log_uniform(rng, 1, max(1, budget // k))
    rank = rng.choice((1, 2, 2, 2, 3)) if rows else 2
    shape = {1: (k,), 2: (rows, k)}.get(rank)
    if shape is None:
        lead = log_uniform(rng, 1, rows)
        shape = (lead, max(1, rows // lead), k)
    dtype = rng.choice(F.INPUT_DTYPES)
    mag = 10.0 ** rng.uniform(-3, 3)
    x = randn(shape, gen, mag)
    if x.numel() and rank > 1 and rng.random() < 0.15:
        x.view(-1, k)[:: rng.randint(2, 5)] = 0.0  # all-zero groups: the scale floor 1/(448*512)
    column_major = rng.random() < 0.5
    kind = rng.choices(("dynamic", "ue8m0", "static_tensor", "static_group"), (0.4, 0.3, 0.15, 0.15))[0]
    scale = None
    if kind == "static_tensor":
        scale = scalar(mag / 200.0, gen)
    elif kind == "static_group":
        scale = rand((k // g,), gen) * (mag / 100.0) + mag / 1000.0
    desc = f"quant x{tuple(shape)} {short(dtype)} |x|~{mag:.0e} g={g} {'col' if column_major else 'row'}-major {kind}"
    return Case("per_token_group_fp8_quant", (x.to(dtype), g, column_major, kind == "ue8m0", scale), desc, "exact",
                outputs=_with_strides)


def _gemm_skip(ctx: SweepContext, name: str):
    """Why the GEMM case cannot run on this GPU (None: it can, or CPU: the reference)."""
    if not ctx.on_gpu:
        return None
    if name == "fp8_block_scaled_mm_triton":
        if ctx.capability < 89:
            return f"the Triton FP8 GEMM needs FP8 tensor cores (sm_89+); this GPU is sm_{ctx.capability}"
        why = F.triton_unavailable_reason()
        return None if why is None else f"the Triton path cannot run here: {why}"
    if not F.supports(ctx.capability):
        return f"this install does not run the blockwise FP8 GEMM on sm_{ctx.capability}"
    return None


def _a_scales(s: torch.Tensor, layout: str) -> torch.Tensor:
    """``s [M, K/128]`` in another layout: row-major, or column-major without the TMA padding."""
    if layout == "row":
        return s.contiguous()
    if layout == "col-dense":
        return s.t().contiguous().t()
    return s  # "col-tma": as the reference's quantisation made it


def _gemm_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    name = "fp8_block_scaled_mm_triton" if rng.random() < 0.15 else "fp8_block_scaled_mm"
    small = ctx.small
    r = rng.random()
    m = 0 if r < 0.02 else 1 if r < 0.15 else log_uniform(rng, 1, 256 if small else 4096)
    if m > 2 and rng.random() < 0.3:
        m |= 1  # odd M: partial token tiles, the TMA-aligned scale padding
    if not small and rng.random() < 0.2:
        n, k = rng.choice(DEEPSEEK_NK)
    else:
        n = multiple(rng, 16, 1024 if small else 8192, 16)
        k = multiple(rng, 128, 2048 if small else 16384, 128)
    m, n, k = fit_gemm(m, n, k, (1 << 22) if small else (1 << 31), 16, 128, weight_budget=1 << 25)
    out_dtype = rng.choice(F.OUT_DTYPES)
    ue8m0 = rng.random() < 0.3
    x = randn((m, k), gen).to(torch.bfloat16)
    a, a_s = ref.per_token_group_quant(x, F.BLOCK, column_major_scales=True, scale_ue8m0=ue8m0)
    layout = rng.choices(("col-tma", "row", "col-dense"), (0.6, 0.25, 0.15))[0]
    a_s = _a_scales(a_s, layout)
    strided = m > 1 and rng.random() < 0.15
    if strided:  # a row stride > K (a multiple of 16 elements): a column slice of a wider tensor
        wide = torch.zeros((m, k + 16 * rng.randint(1, 8)), dtype=FP8, device=gen.device)
        wide[:, :k] = a
        a = wide[:, :k]
    w = (randn((n, k), gen) * 1.5).to(FP8)
    nb, kb = -(-n // F.BLOCK), k // F.BLOCK
    b_s = rand((nb, kb), gen) * 0.02 + 0.005
    if ue8m0:
        b_s = ref.ue8m0(b_s)
    bias = randn((n,), gen).to(out_dtype) if rng.random() < 0.4 else None
    desc = (f"{'triton ' if name.endswith('_triton') else ''}gemm {m}x{n}x{k} ->{short(out_dtype)} "
            f"partial-N={n % F.BLOCK != 0} a_s={layout}{' ue8m0' if ue8m0 else ''} bias={bias is not None}"
            f"{' strided-a' if strided else ''}")
    return Case(name, (a, w.t(), a_s, b_s, out_dtype, bias), desc, "rel", GEMM_TOL, ref_on="device",
                skip=_gemm_skip(ctx, name))


def make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case:
    if rng.random() < 0.4:
        return _quant_case(rng, gen, ctx)
    return _gemm_case(rng, gen, ctx)
