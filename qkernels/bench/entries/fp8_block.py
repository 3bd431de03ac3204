"""Block-scaled FP8 GEMM (W8A8-FP8_BLOCK, ``qkernels.ops.fp8_block.scaled_mm``), bf16 output.

``out[M, N] = sum_kb a_scales[:, kb] * b_scales[n // 128, kb] * (a @ b)_kb`` with ``b = w.t()``
of a float8_e4m3fn ``[N, K]`` weight quantised once per shape with one float32 scale per 128x128
block (:func:`quantize_weight_blockwise`), and activations quantised per call, outside the timed
region, per token in groups of 128 by ``qkernels.ops.fp8_block.per_token_group_quant`` with
column-major scales (the layout the sm90 kernel reads; the Triton kernel reads either).

Variants: ``g128 dynamic`` (float32 scales) and ``g128 dynamic ue8m0`` (weight and activation
scales rounded up to powers of two, DeepSeek-V3.1 / DeepGEMM style: the same kernels, other
numerics). The qkernels row times the op as dispatched (CUTLASS on sm90, the Triton kernel
``qkernels/triton_kernels/fp8_block.py`` on sm89, where the qkernels and the Triton rows
therefore time the same kernel). Peers in the same run: ``triton_fp8_block`` (that Triton kernel,
autotuned, on every FP8 arch) and ``torch_scaled_mm`` (``torch._scaled_mm`` with 1x128 x 128x128
block scales: cuBLASLt's blockwise FP8 GEMM, sm90 with CUDA >= 12.9; left out, with a message,
where torch refuses it). BF16 cuBLAS at the same (M, N, K) is added by the suite.
rel_err, for the qkernels row and each peer (so a peer that reads the scales in another layout
shows it): against ``qkernels.reference.fp8_block.scaled_mm`` on the same quantised inputs
(first ``min(M, 256)`` rows). Bytes: a, b, their scales and the bf16 output, each once.

Shapes: the given ones (model presets, synthetic) whose K is a multiple of 128 and N of 16 (what
the op takes), plus
DeepSeek-V3's (``qkernels.bench.shapes.DEEPSEEK_V3_SHAPES``; ``--quick``: its 2112 x 7168 only).
The per-token-group quantisation op is timed by the quant entry (row family ``quant_fp8_group``,
GB/s against the measured copy bandwidth).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from qkernels.bench.entries._common import FP8, FP8_MAX, family_module, random_weight
from qkernels.bench.results import gemm_bytes
from qkernels.bench.shapes import DEEPSEEK_V3_SHAPES, LinearShape

NAME = "fp8_block"
GEMM = True
FAMILY = "fp8_block"
BLOCK = 128
N_MULTIPLE = 16  # the op's output rows are 16-byte aligned

VARIANTS = {"g128 dynamic": False, "g128 dynamic ue8m0": True}  # name -> power-of-two (UE8M0) scales
QUICK_VARIANTS = ("g128 dynamic",)
QUICK_SHAPES = 1  # --quick adds the first DeepSeek-V3 shape (2112 x 7168) only
DTYPES = {"a": "float8_e4m3fn", "b": "float8_e4m3fn", "out": "bfloat16"}


def available() -> Optional[str]:
    """Why the family cannot be benchmarked here: no GPU, the op module or the quant kernel missing,
    or the GEMM not run on this arch by this install (``qkernels.ops.fp8_block.supports``)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    mod, why = family_module("fp8_block")
    if mod is None:
        return why
    from qkernels import _loader

    if not _loader.has_cuda_kernel("per_token_group_fp8_quant"):
        return f"no CUDA kernel for per_token_group_fp8_quant ({_loader.load_error or 'family not compiled'})"
    major, minor = torch.cuda.get_device_capability()
    if not mod.supports(major * 10 + minor):
        return (f"this install does not run the block-FP8 GEMM on sm_{major}{minor} (sm90 needs its sm_90a kernels "
                "compiled, sm89 the family compiled and Triton importable; other archs have no path)")
    return None


def variants(quick: bool) -> List[str]:
    return list(QUICK_VARIANTS if quick else VARIANTS)


def select(shapes, ms, quick):
    """The given shapes with K a multiple of 128 and N of 16, plus DeepSeek-V3's (first occurrence of an
    (N, K) wins)."""
    extra = DEEPSEEK_V3_SHAPES[:QUICK_SHAPES] if quick else DEEPSEEK_V3_SHAPES
    seen, out = set(), []
    for s in list(shapes) + list(extra):
        if s.N is not None and s.K % BLOCK == 0 and s.N % N_MULTIPLE == 0 and (s.N, s.K) not in seen:
            seen.add((s.N, s.K))
            out.append(s)
    return out, ms


def quantize_weight_blockwise(w: torch.Tensor, ue8m0: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` (K a multiple of 128) -> (float8_e4m3fn ``[N, K]``, float32 scales ``[ceil(N/128), K/128]``):
    ``scale = amax(|block|) / 448`` per 128x128 block (the last block row may be partial), rounded
    up to a power of two if ``ue8m0``, and ``q = fp8(clamp(w / scale, -448, 448))``."""
    from qkernels.reference.fp8_block import ue8m0 as round_ue8m0
    from qkernels.reference.quant import FP8_MIN_SCALE

    N, K = w.shape
    nb, kb = -(-N // BLOCK), K // BLOCK
    wf = torch.zeros(nb * BLOCK, K, dtype=torch.float32, device=w.device)
    wf[:N] = w.float()
    blocks = wf.reshape(nb, BLOCK, kb, BLOCK)
    s = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    if ue8m0:
        s = round_ue8m0(s)
    q = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(nb * BLOCK, K)[:N]
    return q.contiguous(), s.contiguous()


@dataclass
class _State:
    shape: LinearShape
    variant: str
    ue8m0: bool
    b: torch.Tensor  # [K, N] column-major view of the quantised weight
    b_scales: torch.Tensor  # float32 [ceil(N/128), K/128]


def prepare(ctx, shape: LinearShape, variant: str) -> _State:
    ue8m0 = VARIANTS[variant]
    q, s = quantize_weight_blockwise(random_weight(shape.N, shape.K, ctx.device), ue8m0)
    return _State(shape, variant, ue8m0, q.t(), s)


def _cublas_block_scales(a_s: torch.Tensor, b_s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scales in the layouts ``torch._scaled_mm`` wants for (BlockWise1x128, BlockWise128x128):
    a ``[M, K/128]`` with strides (1, M); b ``[K/128, ceil(N/128)]`` with strides (1, L4), L4 = K/128
    rounded up to a multiple of 4 (16-byte aligned columns)."""
    sa = a_s.t().contiguous().t()
    nb, kb = b_s.shape
    buf = torch.zeros(nb, -(-kb // 4) * 4, dtype=torch.float32, device=b_s.device)
    buf[:, :kb] = b_s
    return sa, buf[:, :kb].t()


def run(ctx, st: _State, M: int) -> List[dict]:
    from qkernels.ops.fp8_block import per_token_group_quant, scaled_mm
    from qkernels.reference import fp8_block as ref

    N, K = st.shape.N, st.shape.K
    x = torch.randn(M, K, device=ctx.device, dtype=torch.bfloat16)
    a, a_s = per_token_group_quant(x, BLOCK, column_major_scales=True, scale_ue8m0=st.ue8m0)
    gemm = lambda: scaled_mm(a, st.b, a_s, st.b_scales, torch.bfloat16)
    r = ctx.check_rows(M)
    ref_out = ref.scaled_mm(a[:r], st.b, a_s[:r], st.b_scales, torch.bfloat16)
    err = ctx.rel_err(gemm()[:r], ref_out)
    # a + its scales (one float32 per 128 values), b + its scales (one per 128x128), bf16 out.
    nbytes = gemm_bytes(M, N, K, 8 + 32 / BLOCK, 8, 16, b_meta_bits=32 / BLOCK**2)
    common = dict(family=FAMILY, shape=st.shape, M=M, variant=st.variant, flops=2.0 * M * N * K, nbytes=nbytes)
    rows = [ctx.row(impl="qkernels", dtypes=DTYPES, timing=ctx.time(gemm), rel_err=err, **common)]
    if not ctx.peers:
        return rows
    from qkernels.triton_kernels.fp8_block import triton_fp8_block_mm

    tri = lambda: triton_fp8_block_mm(a, st.b, a_s, st.b_scales, torch.bfloat16)
    rows += _peer(ctx, "triton_fp8_block", tri, ref_out, r, **common)
    if ctx.device.type == "cuda":
        sa, sb = _cublas_block_scales(a_s, st.b_scales)
        cublas = lambda: torch._scaled_mm(a, st.b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        rows += _peer(ctx, "torch_scaled_mm", cublas, ref_out, r, **common)
    return rows


def _peer(ctx, impl: str, fn, ref_out: torch.Tensor, r: int, **common) -> List[dict]:
    """The peer's row with its rel_err on the same inputs (so a peer that reads the scales in
    another layout shows it), or ``[]`` if the peer cannot run here (logged once by peer_rows)."""
    try:
        err = ctx.rel_err(fn()[:r], ref_out)
    except RuntimeError:
        err = None  # peer_rows below fails the same way and logs why
    return ctx.peer_rows(impl, fn, dtypes=DTYPES, rel_err=err, **common)
