"""Block-scaled FP8 (W8A8-FP8_BLOCK): per-token-group quantisation and the blockwise-scaled GEMM.

CPU: the references against independent math (and against the quant family's ops where the two
coincide), the order of operations of the GEMM spec written out scalar by scalar, scale layouts,
fakes / opcheck / torch.compile, error messages, the capability query, the kernel list.
GPU (marked ``gpu``): the quant kernel bit for bit, every compiled sm90 kernel (forced by name)
and the sm89 Triton path against the reference, CUDA graphs, torch.compile, determinism.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels import _loader, configs
from qkernels.ops import fp8_block as F
from qkernels.ops import quant as Q
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import fp8_block as ref
from qkernels.testing.numerics import assert_close_rel, poison_

FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)
IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
OPS = qkernels.ops.family_ops()["fp8_block"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "csrc", "fp8_block")
REDUCED = os.environ.get("QKERNELS_TEST_REDUCED") == "1"


# ----------------------------------------------------------------- inputs (independent of the reference)
def fp8_operand(rows, k, device="cpu"):
    """A random float8_e4m3fn [rows, k] tensor (magnitudes ~1, never NaN)."""
    return (torch.randn(rows, k, device=device) * 1.5).to(FP8)


def block_scales(n, k, device="cpu"):
    """Positive float32 weight scales [ceil(n/128), k/128]."""
    return torch.rand(-(-n // 128), k // 128, device=device) * 0.02 + 0.005


def token_scales(m, k, device="cpu", column_major=False):
    """Positive float32 activation scales [m, k/128], row-major or column-major (TMA-aligned)."""
    s = torch.rand(m, k // 128, device=device) * 0.02 + 0.005
    if not column_major:
        return s
    ld = (m + 3) // 4 * 4
    buf = torch.full((k // 128 * ld,), float("nan"), device=device)  # padding never read
    out = buf.as_strided((m, k // 128), (1, ld))
    out.copy_(s)
    return out


def quantize_weight_blocks(w):
    """Independent 128x128-block FP8 quantisation of a float weight [N, K] (K % 128 == 0)."""
    n, k = w.shape
    nb = -(-n // 128)
    pad = torch.zeros(nb * 128, k, dtype=torch.float32)
    pad[:n] = w.float()
    blocks = pad.reshape(nb, 128, k // 128, 128).abs().amax(dim=(1, 3))
    s = (blocks / 448).clamp(min=1e-8)
    full = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
    return (w.float() / full).to(FP8), s


def dense(a, a_s, w, w_s, out_dtype, bias=None):
    """The GEMM in float64 throughout: dequantised operands, one product."""
    m, k = a.shape
    n = w.shape[0]
    x = a.double() * a_s.double().repeat_interleave(128, 1)
    wd = w.double() * w_s.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
    out = x @ wd.t()
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


# ----------------------------------------------------------------- quantisation: reference (CPU)
def _quant_independent(x, g, ue8m0=False):
    """Per group, in numpy float32: the reference's operations, written another way."""
    xf = x.float().numpy().reshape(-1, g)
    absmax = np.abs(xf).max(axis=1)
    s = np.maximum(absmax / np.float32(448.0), np.float32(1.0 / (448.0 * 512.0))).astype(np.float32)
    if ue8m0:
        mant, exp = np.frexp(s)                       # s = mant * 2**exp, mant in [0.5, 1)
        s = np.where(mant == 0.5, s, np.ldexp(np.float32(1.0), exp)).astype(np.float32)
    inv = (np.float32(1.0) / s).astype(np.float32)
    y = np.clip(xf * inv[:, None], -448, 448).astype(np.float32)
    q = torch.from_numpy(y).to(FP8).reshape(x.shape)
    return q, torch.from_numpy(s).reshape(*x.shape[:-1], x.shape[-1] // g)


@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("g", (64, 128))
@pytest.mark.parametrize("ue8m0", (False, True))
def test_quant_matches_independent_math(dtype, g, ue8m0, seed):
    x = (torch.randn(3, 5, 4 * g) * torch.logspace(-3, 3, 4 * g)).to(dtype)
    x[0, 0, :g] = 0  # an all-zero group: the scale floor
    q, s = F.per_token_group_quant(x, g, scale_ue8m0=ue8m0)
    q2, s2 = _quant_independent(x, g, ue8m0)
    assert q.shape == x.shape and q.dtype == FP8 and s.shape == (3, 5, 4) and s.is_contiguous()
    assert torch.equal(s, s2)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8))
    assert s[0, 0, 0].item() == pytest.approx(1 / (448 * 512) if not ue8m0 else 2.0 ** -17, rel=1e-6)


def test_quant_equals_per_token_op_when_the_group_is_the_row(seed):
    """K == group_size: per-token-group quantisation is the quant family's per-token FP8."""
    x = torch.randn(7, 128, dtype=torch.bfloat16) * 3
    q, s = F.per_token_group_quant(x, 128)
    q2, s2 = Q.scaled_fp8_quant(x, per_token=True)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


def test_ue8m0_scales_are_the_next_power_of_two(seed):
    x = torch.randn(64, 512) * torch.rand(64, 1) * 100
    s_plain = F.per_token_group_quant(x, 128)[1]
    s = F.per_token_group_quant(x, 128, scale_ue8m0=True)[1]
    log2 = torch.log2(s.double())
    assert torch.equal(log2, log2.round()), "UE8M0 scales must be powers of two"
    assert (s >= s_plain).all() and (s < 2 * s_plain).all()
    exact = torch.tensor([[448.0 * 4] * 128])  # absmax / 448 = 4: already a power of two, kept
    assert F.per_token_group_quant(exact, 128, scale_ue8m0=True)[1].item() == 4.0
    assert ref.ue8m0(torch.tensor([4.0000005, 0.75, 1.0])).tolist() == [8.0, 1.0, 1.0]


def test_static_scales(seed):
    x = torch.randn(6, 256, dtype=torch.float16)
    per_tensor = torch.tensor([0.013])
    q, s = F.per_token_group_quant(x, 128, scale=per_tensor)
    assert torch.equal(s, torch.full((6, 2), 0.013)), "a static scale is broadcast to every token and group"
    q_ref = Q.scaled_fp8_quant(x, per_tensor)[0]  # the quant family's static FP8 op
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    per_group = torch.tensor([0.01, 0.02])
    q, s = F.per_token_group_quant(x, 128, scale=per_group, column_major_scales=True)
    assert torch.equal(s, per_group.expand(6, 2))
    assert torch.equal(q[:, 128:].view(torch.uint8), Q.scaled_fp8_quant(x[:, 128:].contiguous(),
                                                                         per_group[1:])[0].view(torch.uint8))


@pytest.mark.parametrize("shape", ((5, 256), (2, 3, 384), (1, 128), (0, 128), (256,)))
def test_column_major_scale_layout(shape, seed):
    x = torch.randn(shape)
    q_r, s_r = F.per_token_group_quant(x, 128)
    q_c, s_c = F.per_token_group_quant(x, 128, column_major_scales=True)
    m = ref.rows_of(shape)
    ld = (m + 3) // 4 * 4
    assert s_c.shape == s_r.shape == (*shape[:-1], shape[-1] // 128)
    assert s_c.stride(-1) == ld and ld % 4 == 0
    if len(shape) > 1 and m > 1:
        flat = s_c.reshape(m, -1) if s_c.dim() > 2 else s_c
        assert flat.stride(0) == 1, "tokens are contiguous in the column-major layout"
    assert torch.equal(s_c, s_r) and torch.equal(q_c.view(torch.uint8), q_r.view(torch.uint8))
    if len(shape) == 2:
        assert ref.is_column_major_aligned(s_c)
        assert s_c.untyped_storage().nbytes() == 4 * ld * (shape[-1] // 128)


NAN, INF = float("nan"), float("inf")


def _groups_with(values, g=64, dtype=torch.bfloat16):
    """[3, 2g]: Gaussian rows; row 1's first group gets ``values`` at its first positions."""
    x = torch.randn(3, 2 * g, generator=torch.Generator().manual_seed(1)) * 3
    x[1, :len(values)] = torch.tensor(values)
    return x.to(dtype)


@pytest.mark.parametrize("ue8m0", (False, True))
def test_quant_nan_only_touches_its_element(ue8m0):
    """The NaN policy of qkernels.reference.quant, per group: the scale ignores a NaN, so every other
    output equals that of the same input with the NaN set to 0; the NaN element itself is FP8 NaN."""
    x = _groups_with([NAN])
    q, s = ref.per_token_group_quant(x, 64, scale_ue8m0=ue8m0)
    x0 = x.clone()
    x0[1, 0] = 0
    q0, s0 = ref.per_token_group_quant(x0, 64, scale_ue8m0=ue8m0)
    assert torch.equal(s, s0) and torch.isfinite(s).all()
    assert torch.isnan(q.float()[1, 0])
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[1, 0] = False
    assert torch.equal(q.view(torch.uint8)[keep], q0.view(torch.uint8)[keep])


def test_quant_inf_makes_only_its_group_scale_inf():
    x = _groups_with([INF, 1.0, -INF])
    q, s = ref.per_token_group_quant(x, 64)
    assert torch.isinf(s[1, 0]) and torch.isfinite(s[1, 1]) and torch.isfinite(s[[0, 2]]).all()
    qf = q.float()
    assert torch.isnan(qf[1, [0, 2]]).all() and (qf[1, 1:2] == 0).all() and (qf[1, 3:64] == 0).all()
    qs, _ = ref.per_token_group_quant(x, 64, scale=torch.tensor([1.0]))
    assert qs.float()[1, :3].tolist() == [448.0, 1.0, -448.0]  # static: an inf saturates


def test_dequant_roundtrip_error(seed):
    x = torch.randn(33, 1024) * torch.logspace(-2, 2, 1024)
    for g in (64, 128):
        q, s = F.per_token_group_quant(x, g)
        assert_close_rel(ref.dequant_groups(q, s, g), x, 0.04, f"group {g}")


# ----------------------------------------------------------------- GEMM: reference (CPU)
def test_gemm_reference_follows_the_spec_scalar_by_scalar(seed):
    """The module docstring's order of operations, one (m, n) at a time in numpy float32."""
    m, n, k = 3, 144, 384  # N = 144: a partial last block of 16 columns
    a, w = fp8_operand(m, k), fp8_operand(n, k)
    a_s, w_s = token_scales(m, k), block_scales(n, k)
    bias = torch.randn(n).to(torch.bfloat16)
    out = ref.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16, bias)
    af, wf = a.double().numpy(), w.double().numpy()
    f32 = np.float32
    for mi in range(m):
        for ni in (0, 5, 127, 128, 143):
            acc = f32(0.0)
            for kb in range(k // 128):
                blk = slice(kb * 128, (kb + 1) * 128)
                p = f32(np.dot(af[mi, blk], wf[ni, blk]))  # exact in float64, one rounding
                sigma = f32(f32(a_s[mi, kb].item()) * f32(w_s[ni // 128, kb].item()))
                acc = f32(acc + f32(p * sigma))
            want = torch.tensor(float(f32(acc + f32(bias[ni].float().item())))).to(torch.bfloat16)
            assert out[mi, ni] == want, (mi, ni)


@pytest.mark.parametrize("n", (128, 144, 256))
def test_gemm_reference_matches_float64_math(n, seed):
    m, k = 9, 512
    a, w = fp8_operand(m, k), fp8_operand(n, k)
    a_s, w_s = token_scales(m, k), block_scales(n, k)
    for out_dtype in OUT_DTYPES:
        for bias in (None, torch.randn(n).to(out_dtype)):
            out = F.scaled_mm(a, w.t(), a_s, w_s, out_dtype, bias)
            assert out.dtype == out_dtype and out.shape == (m, n)
            assert_close_rel(out, dense(a, a_s, w, w_s, out_dtype, bias), 4e-3, f"{out_dtype} bias={bias is not None}")


def test_partial_last_block_uses_its_own_scale(seed):
    m, n, k = 4, 144, 256
    a, w = fp8_operand(m, k), fp8_operand(n, k)
    a_s = token_scales(m, k)
    w_s = torch.ones(2, 2)
    base = ref.scaled_mm(a, w.t(), a_s, w_s, torch.float16).float()
    w_s[1] = 2.0  # only the last (partial) block row
    doubled = ref.scaled_mm(a, w.t(), a_s, w_s, torch.float16).float()
    assert torch.equal(doubled[:, :128], base[:, :128])
    assert torch.equal(doubled[:, 128:], 2 * base[:, 128:])  # a power of two scales exactly


def test_every_a_scales_layout_gives_the_same_result(seed):
    m, n, k = 5, 64, 384
    a, w, w_s = fp8_operand(m, k), fp8_operand(n, k), block_scales(n, k)
    a_s = token_scales(m, k)
    want = F.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16)
    aligned = token_scales(m, k, column_major=True)  # stride(1) = 8: what the sm90 kernels read
    dense_cm = torch.empty(3, 5).t()                 # stride(1) = 5: copied by the CUDA op
    strided = torch.empty(m, 6)[:, ::2]              # neither
    for layout in (aligned, dense_cm, strided):
        layout.copy_(a_s)
        assert torch.equal(F.scaled_mm(a, w.t(), layout, w_s, torch.bfloat16), want), layout.stride()
    assert ref.is_column_major_aligned(aligned) and not ref.is_column_major_aligned(dense_cm)


def test_quantise_then_gemm_approximates_the_float_gemm(seed):
    m, n, k = 17, 272, 1024
    x = torch.randn(m, k)
    w = torch.randn(n, k) * 0.05
    wq, w_s = quantize_weight_blocks(w)
    for ue8m0 in (False, True):
        q, s = F.per_token_group_quant(x.to(torch.bfloat16), 128, column_major_scales=True, scale_ue8m0=ue8m0)
        out = F.scaled_mm(q, wq.t(), s, w_s, torch.bfloat16)
        assert_close_rel(out, x @ w.t(), 0.06, f"ue8m0={ue8m0}")
    assert_close_rel(ref.dequant_weight(wq, w_s), w, 0.05, "dequant_weight")


def test_empty_m(seed):
    w, w_s = fp8_operand(32, 128), block_scales(32, 128)
    out = F.scaled_mm(fp8_operand(0, 128), w.t(), token_scales(0, 128), w_s, torch.bfloat16)
    assert out.shape == (0, 32)


# ----------------------------------------------------------------- fakes, opcheck, torch.compile (CPU)
FP8_OPCHECK_UTILS = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


def _op_args(device="cpu"):
    m, n, k = 5, 144, 384
    a, w = fp8_operand(m, k, device), fp8_operand(n, k, device)
    w_s = block_scales(n, k, device)
    bias = torch.randn(n, device=device).to(torch.bfloat16)
    x = torch.randn(2, 3, 256, device=device, dtype=torch.bfloat16)
    gemm = [(a, w.t(), token_scales(m, k, device), w_s, torch.bfloat16, bias),
            (a, w.t(), token_scales(m, k, device, column_major=True), w_s, torch.float16, None)]
    return {
        "per_token_group_fp8_quant": [(x, 128, False, False, None), (x, 64, True, True, None),
                                      (x.float(), 128, True, False, torch.tensor([0.1, 0.2], device=device))],
        "fp8_block_scaled_mm": gemm,
        "fp8_block_scaled_mm_triton": gemm,
    }


def _opcheck(name, args):
    """opcheck's test_schema compares inputs with torch.allclose, which has no fp8 kernel: it runs
    only for ops without fp8 inputs; for the others "no input is mutated" is checked bitwise here."""
    op = getattr(torch.ops.qkernels, name).default
    if not any(isinstance(x, torch.Tensor) and x.dtype == FP8 for x in args):
        opcheck(op, args)
        return
    before = [x.view(torch.uint8).clone() if isinstance(x, torch.Tensor) and x.element_size() == 1 else
              (x.clone() if isinstance(x, torch.Tensor) else x) for x in args]
    opcheck(op, args, test_utils=FP8_OPCHECK_UTILS)
    op(*args)
    for i, (b, x) in enumerate(zip(before, args)):
        if isinstance(x, torch.Tensor):
            assert torch.equal(b, x.view(torch.uint8) if x.element_size() == 1 else x), f"input {i} was mutated"


@pytest.mark.parametrize("name", [n for n in OPS if n != "fp8_block_scaled_mm_supports"])
def test_opcheck_cpu(name, seed):
    for args in _op_args()[name]:
        _opcheck(name, args)


def test_fake_strides_match_the_reference(seed):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 7, 384)
    for cm in (False, True):
        q, s = F.per_token_group_quant(x, 128, column_major_scales=cm)
        with FakeTensorMode() as mode:
            fq, fs = F.per_token_group_quant(mode.from_tensor(x), 128, column_major_scales=cm)
        assert fs.shape == s.shape and fs.stride() == s.stride() and fq.shape == q.shape and fq.dtype == FP8


def test_compile_fullgraph_quant_then_gemm(seed):
    n, k = 64, 256
    w, w_s = fp8_operand(n, k), block_scales(n, k)

    def f(x):
        q, s = F.per_token_group_quant(x, 128, column_major_scales=True)
        return F.scaled_mm(q, w.t(), s, w_s, torch.bfloat16)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=True)
    for m in (3, 8):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        assert torch.equal(cf(x), f(x))


# ----------------------------------------------------------------- errors (CPU: the same checks run in the fakes)
def _err(fn, pattern):
    with pytest.raises(QKernelsInputError, match=pattern):
        fn()


def test_quant_errors(seed):
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    qq = F.per_token_group_quant
    _err(lambda: qq(x.to(torch.int8), 128), "input has dtype int8; supported: float16, bfloat16, float32")
    _err(lambda: qq(x, 32), "group_size = 32 is not supported; supported: 64, 128")
    _err(lambda: qq(torch.randn(4, 200), 128), r"K = 200 must be a positive multiple of group_size = 128. Pad K")
    _err(lambda: qq(torch.randn(4, 0), 64), "K = 0 must be a positive multiple")
    _err(lambda: qq(x.t(), 128), "must be contiguous")
    _err(lambda: qq(x[:, :128], 128), "must be contiguous")
    _err(lambda: qq(x, 128, scale=torch.tensor([0.1]), scale_ue8m0=True), "pass a power-of-two static scale")
    _err(lambda: qq(x, 128, scale=torch.tensor([0.1, 0.2, 0.3])), r"1 \(per tensor\) or K/group_size = 2")
    _err(lambda: qq(x, 128, scale=torch.tensor([0.1], dtype=torch.float64)), "scale has dtype float64")
    _err(lambda: qq(x, 128, scale=torch.tensor([0.1], device="meta")), "all tensors must be on one device")


def test_gemm_errors(seed):
    m, n, k = 4, 144, 256
    a, w = fp8_operand(m, k), fp8_operand(n, k)
    a_s, w_s = token_scales(m, k), block_scales(n, k)
    mm = F.scaled_mm
    bf = torch.bfloat16
    _err(lambda: mm(a.to(torch.int8), w.t(), a_s, w_s, bf), "a has dtype int8; supported: float8_e4m3fn")
    _err(lambda: mm(a, w.t().to(torch.bfloat16), a_s, w_s, bf), "b has dtype bfloat16; supported: float8_e4m3fn")
    _err(lambda: mm(a, w, a_s, w_s, bf), r"do not chain: b must be \[K, N\] = weight.t\(\)")
    a200, w200 = fp8_operand(m, 192), fp8_operand(n, 192)
    _err(lambda: mm(a200, w200.t(), a_s, w_s, bf), "K = 192 must be a positive multiple of 128")
    w_odd = fp8_operand(136, k)
    _err(lambda: mm(a, w_odd.t(), a_s, w_s, bf), "N = 136 must be a multiple of 16. N need not be a multiple of 128")
    _err(lambda: mm(a, w.t().contiguous(), a_s, w_s, bf), "b .* must be column-major")
    _err(lambda: mm(a.t().contiguous().t(), w.t(), a_s, w_s, bf), "a .* must be row-major")
    _err(lambda: mm(a, w.t(), a_s.double(), w_s, bf), "a_scales has dtype float64; supported: float32")
    _err(lambda: mm(a, w.t(), a_s[:, :1], w_s, bf), r"a_scales has shape \(4, 1\); expected \[M, K/128\] = \[4, 2\]")
    _err(lambda: mm(a, w.t(), a_s.reshape(-1), w_s, bf), r"a_scales has shape \(8,\)")
    _err(lambda: mm(a, w.t(), a_s, w_s.t().contiguous().t(), bf), "b_scales .* must be contiguous")
    a3, w3 = fp8_operand(m, 384), fp8_operand(n, 384)
    a3_s, w3_s = token_scales(m, 384), block_scales(n, 384)
    _err(lambda: mm(a3, w3.t(), a3_s, w3_s.t().contiguous(), bf),
         r"b_scales has shape \(3, 2\); expected \[ceil\(N/128\), K/128\] = \[2, 3\] .*not transposed")
    _err(lambda: mm(a, w.t(), a_s, w_s[:1], bf), r"b_scales has shape \(1, 2\); expected \[ceil\(N/128\), K/128\]")
    _err(lambda: mm(a, w.t(), a_s, w_s.half(), bf), "b_scales has dtype float16")
    _err(lambda: mm(a, w.t(), a_s, w_s, torch.float32), "out_dtype torch.float32 is not supported")
    _err(lambda: mm(a, w.t(), a_s, w_s, bf, torch.zeros(n)), "bias has dtype float32; supported: bfloat16")
    _err(lambda: mm(a, w.t(), a_s, w_s, bf, torch.zeros(n + 1, dtype=bf)), r"expected \[144\]")
    _err(lambda: mm(a, w.t(), a_s.to("meta"), w_s, bf), "all tensors must be on one device")
    _err(lambda: mm(a[:1].expand(m, k), w.t(), a_s, w_s, bf), "row stride >= K")


def test_triton_op_has_a_python_cuda_impl_and_the_loader_leaves_it_alone():
    dump = torch._C._dispatch_dump("qkernels::fp8_block_scaled_mm_triton")
    cuda_line = next(l for l in dump.splitlines() if l.startswith("CUDA"))
    assert "_registry.py" in cuda_line, cuda_line  # Python's library fragment, not the compiled library
    assert "fp8_block_scaled_mm_triton" in qkernels.ops.python_cuda_ops()
    assert not _loader.has_cuda_kernel("fp8_block_scaled_mm_triton")


# ----------------------------------------------------------------- capability query
def test_kernel_path_mapping():
    assert F.kernel_path(90) == "SM90" and F.kernel_path(89) == "TRITON"
    assert F.kernel_path(80) is None and F.kernel_path(100) is None and F.kernel_path(75) is None


def test_supports_follows_the_build(monkeypatch):
    monkeypatch.setattr(_loader, "library_path", "/fake/lib.so")
    groups = {"fp8_block": {"QUANT": ["75"], "SM90": ["90a"]}}
    monkeypatch.setattr(_loader, "build_info", {"built": True, "groups": groups})
    assert F.supports(90) and not F.supports(80) and not F.supports(100)
    monkeypatch.setattr(F, "_triton_importable", lambda: True)
    assert F.supports(89)
    monkeypatch.setattr(F, "_triton_importable", lambda: False)
    assert not F.supports(89), "sm89 needs Triton"
    monkeypatch.setattr(_loader, "build_info", {"built": True, "groups": {"fp8_block": {"QUANT": ["75"]}}})
    assert not F.supports(90), "sm90 needs the sm_90a kernels"
    monkeypatch.setattr(_loader, "library_path", None)
    assert not F.supports(90)


# ----------------------------------------------------------------- the kernel list is consistent
def _generate():
    """kernels/generate.py as a module of its own name (scaled_mm has a generate.py too)."""
    spec = importlib.util.spec_from_file_location("qk_fp8_block_generate", os.path.join(KERNEL_DIR, "kernels",
                                                                                      "generate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_kernel_files_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(KERNEL_DIR, "kernels", "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_header_glue_and_generator_name_the_same_kernels():
    gen = _generate()
    names = [e[0] for e in gen.KERNELS]
    assert len(set(names)) == len(names), "kernel names are unique within the dispatch key"
    inc = open(os.path.join(KERNEL_DIR, "kernels", "kernels.inc")).read()
    listed = re.findall(r"X\((\w+), (k\w+Params)\)", inc)
    assert [n for n, _ in listed] == names, f"kernels.inc vs generate.py: {listed}"
    assert all(gen.PARAMS_MASK[e[2]] == mask for e, (_, mask) in zip(gen.KERNELS, listed))
    header = open(os.path.join(KERNEL_DIR, "fp8_block.h")).read()
    assert f"{gen.MACRO}(QK_FP8_BLOCK_DECLARE)" in header, "fp8_block.h declares the generated list"
    glue = open(os.path.join(KERNEL_DIR, "fp8_block_torch.cpp")).read()
    assert f'"{gen.DISPATCH_KEY}"' in glue and gen.DISPATCH_KEY == F.DISPATCH_KEY
    assert f"{gen.MACRO}(QK_FP8B_CANDIDATE)" in glue, "the glue registers the generated list as the candidates"
    table = re.search(r"\{\{16, &sm90_fp8_block_m16\}.*?\}\}\);", glue, re.S)
    assert table, "the compiled-in default table starts with M <= 16 -> sm90_fp8_block_m16"
    bucketed = re.findall(r"\{(\d+|dispatch::kAnyM), &(sm90_\w+)\}", table.group(0))
    assert {k for _, k in bucketed} <= set(names), "the default table names kernels generate.py does not declare"
    maxes = [int(m) for m, _ in bucketed[:-1]]
    assert maxes == sorted(set(maxes)) and bucketed[-1][0] == "dispatch::kAnyM", \
        "buckets sorted by max M, the last one for any M"
    configs_cuh = open(os.path.join(KERNEL_DIR, "kernels", "sm90_configs.cuh")).read()
    for name, config, sched in gen.KERNELS:  # (each generated .cu also static_asserts this)
        decl = re.search(rf"struct {config} : Config<.*?, (true|false), (true|false)>", configs_cuh, re.S)
        assert decl and (decl.group(2) == "true") == (sched == "streamk"), (name, config, sched)


# ----------------------------------------------------------------- GPU
gpu = pytest.mark.gpu


def _native_arch():
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


@contextlib.contextmanager
def env(**kv):
    """Set environment variables for the C++ glue (read per call); None leaves one unset."""
    old = {k: os.environ.get(k) for k in kv}
    for k, v in kv.items():
        if v is not None:
            os.environ[k] = str(v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def forced(kernel, **params):
    """Within the block, the sm90 kernel ``kernel`` (a name of kernels/generate.py) serves every M
    (the dispatch key's table, forced; None: the table as it is)."""
    return contextlib.nullcontext() if kernel is None else configs.forced_kernel(F.DISPATCH_KEY, kernel, **params)


def _need_library():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    if not _loader.has_cuda_kernel("per_token_group_fp8_quant"):
        pytest.skip(f"the fp8_block family is not compiled here ({_loader.load_error or 'see qkernels info'})")


def _need_gemm(path):
    _need_library()
    if path == "SM90":
        if _native_arch() != 90 or not F.supports(90):
            pytest.skip("the sm90 kernels need an sm_90 GPU and a build with sm_90a")
    elif F.triton_unavailable_reason() is not None:
        pytest.skip(f"the Triton path cannot run here: {F.triton_unavailable_reason()}")


def _sm90_kernels():
    return [e[0] for e in _generate().KERNELS]


# (path, forced arch, forced kernel): every compiled sm90 kernel by name, the sm90 table, the Triton path
GEMM_PATHS = [("SM90", None, None)] + [("SM90", None, name) for name in _sm90_kernels()] + [("TRITON", 89, None)]
GPU_MS = [1, 3, 16, 17, 64, 65, 129, 2049] if REDUCED else \
    [1, 2, 7, 16, 17, 31, 32, 33, 64, 65, 127, 128, 129, 255, 1000, 2048, 2049, 4097]
GPU_NK = [(144, 256), (2112, 7168)] if REDUCED else [(144, 256), (512, 1024), (2112, 7168), (4096, 7168),
                                                       (7168, 2048), (576, 16384)]


def _check_gemm(m, n, k, out_dtype, bias_on, column_major=True, ue8m0=False, tol=1e-2):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    a, a_s = F.per_token_group_quant(x, 128, column_major_scales=column_major, scale_ue8m0=ue8m0)
    w, w_s = fp8_operand(n, k, "cuda"), block_scales(n, k, "cuda")
    bias = torch.randn(n, device="cuda").to(out_dtype) if bias_on else None
    out = F.scaled_mm(a, w.t(), a_s, w_s, out_dtype, bias)
    # The reference on the GPU: its float64 block sums are exact in any order (cuBLAS DGEMM) and its
    # float32 steps are separate elementwise ops, so it equals the CPU evaluation; just faster.
    expect = ref.scaled_mm(a, w.t(), a_s, w_s, out_dtype, bias)
    # FP8 wgmma / mma partial sums in float32 with truncated precision vs exact block sums; output rounding.
    assert_close_rel(out, expect, tol, f"M={m} N={n} K={k} {out_dtype} bias={bias_on} cm={column_major} ue8m0={ue8m0}")
    return out


@gpu
@pytest.mark.parametrize("dtype", IN_DTYPES)
@pytest.mark.parametrize("g", (64, 128))
def test_gpu_quant_bitwise(dtype, g, seed):
    _need_library()
    for shape in ((1, g), (3, 7, 4 * g), (1000, 7168), (33, 2 * g)):
        x = (torch.randn(shape) * torch.rand(shape[-1]) * 10).to(dtype)
        for cm, ue, static in itertools.product((False, True), (False, True), (None, "tensor", "group")):
            if static and ue:
                continue
            scale = None if static is None else (torch.tensor([0.02]) if static == "tensor" else
                                                 torch.rand(shape[-1] // g) * 0.05 + 0.01)
            q, s = F.per_token_group_quant(x.cuda(), g, column_major_scales=cm, scale_ue8m0=ue,
                                           scale=None if scale is None else scale.cuda())
            q2, s2 = F.per_token_group_quant(x, g, column_major_scales=cm, scale_ue8m0=ue, scale=scale)
            what = f"{dtype} g={g} {shape} cm={cm} ue8m0={ue} static={static}"
            assert s.stride() == s2.stride(), what
            assert torch.equal(s.cpu(), s2), what
            assert torch.equal(q.cpu().view(torch.uint8), q2.view(torch.uint8)), what


@gpu
@pytest.mark.parametrize("values", [[NAN], [INF], [-INF], [INF, NAN, -INF]])
def test_gpu_quant_nonfinite_matches_reference(values):
    """The kernel follows the reference's NaN / inf policy (NaN compared as NaN: its sign bit is not
    specified); row-major and column-major scales, dynamic and static."""
    _need_library()
    x = _groups_with(values, g=128)
    for cm, scale in itertools.product((False, True), (None, torch.tensor([0.05]))):
        q, s = F.per_token_group_quant(x.cuda(), 128, column_major_scales=cm,
                                       scale=None if scale is None else scale.cuda())
        q2, s2 = ref.per_token_group_quant(x, 128, column_major_scales=cm, scale=scale)
        torch.testing.assert_close(s.cpu(), s2, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(q.cpu().float(), q2.float(), rtol=0, atol=0, equal_nan=True)


@gpu
def test_gpu_references_are_device_agnostic(seed):
    """The references evaluated on CUDA tensors equal their CPU evaluation bit for bit (the GEMM
    tests and qkernels.testing.sweep rely on it for large shapes)."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    x = torch.randn(37, 1024, dtype=torch.bfloat16) * 5
    for ue in (False, True):
        q, s = ref.per_token_group_quant(x, 128, True, ue)
        qc, sc = ref.per_token_group_quant(x.cuda(), 128, True, ue)
        assert torch.equal(sc.cpu(), s) and torch.equal(qc.cpu().view(torch.uint8), q.view(torch.uint8))
    a, w = fp8_operand(37, 1024), fp8_operand(144, 1024)
    a_s, w_s, bias = token_scales(37, 1024), block_scales(144, 1024), torch.randn(144).to(torch.bfloat16)
    out = ref.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16, bias)
    out_c = ref.scaled_mm(a.cuda(), w.t().cuda(), a_s.cuda(), w_s.cuda(), torch.bfloat16, bias.cuda())
    assert torch.equal(out_c.cpu(), out)


@gpu
def test_gpu_quant_rejects_unaligned_input(seed):
    _need_library()
    x = torch.randn(128 * 9 + 1, device="cuda")[1:].reshape(9, 128)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        torch.ops.qkernels.per_token_group_fp8_quant(x, 128)


@gpu
@pytest.mark.parametrize("path,arch,kernel", GEMM_PATHS)
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_gemm_all_m_vs_reference(path, arch, kernel, m, seed):
    _need_gemm(path)
    with env(QKERNELS_FORCE_ARCH=arch), forced(kernel):
        for n, k in GPU_NK:
            if m * n * k > 4097 * 4096 * 7168:
                continue
            _check_gemm(m, n, k, torch.bfloat16, bias_on=m % 2 == 1)


@gpu
@pytest.mark.parametrize("path,arch", (("SM90", None), ("TRITON", 89)))
def test_gpu_gemm_dtypes_bias_layouts_ue8m0(path, arch, seed):
    _need_gemm(path)
    with env(QKERNELS_FORCE_ARCH=arch):
        for m in (1, 33, 300):
            for out_dtype, bias_on, cm, ue in itertools.product(OUT_DTYPES, (False, True), (False, True), (False, True)):
                _check_gemm(m, 256, 512, out_dtype, bias_on, column_major=cm, ue8m0=ue)


@gpu
def test_gpu_gemm_strided_views_and_large_k(seed):
    _need_gemm("SM90")
    _check_gemm(3, 128, 32768, torch.bfloat16, bias_on=True)
    big_a, big_w = fp8_operand(9, 512, "cuda"), fp8_operand(160, 512, "cuda")
    a, w = big_a[:, :256], big_w[:144, :256]  # row strides 512: not contiguous
    a_s, w_s = token_scales(9, 256, "cuda"), block_scales(144, 256, "cuda")
    out = F.scaled_mm(a, w.t(), a_s, w_s, torch.float16)
    assert_close_rel(out, ref.scaled_mm(a.cpu(), w.t().cpu(), a_s.cpu(), w_s.cpu(), torch.float16), 1e-2, "strided")


@gpu
@pytest.mark.parametrize("kernel", _sm90_kernels())
def test_gpu_output_fully_written_and_deterministic(kernel, seed):
    _need_gemm("SM90")
    n, k = 2112, 7168
    w, w_s = fp8_operand(n, k, "cuda"), block_scales(n, k, "cuda")
    with forced(kernel):
        for m in (1, 70, 300):
            a, a_s = fp8_operand(m, k, "cuda"), token_scales(m, k, "cuda", column_major=True)
            torch.cuda.empty_cache()
            poison_(torch.empty(m * n * 4, device="cuda", dtype=torch.float32))  # recycled memory holds NaN
            first = F.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16)
            assert torch.isfinite(first).all(), f"{kernel} M={m}: output not fully written"
            for _ in range(3):  # the stream-K reduction is deterministic
                assert torch.equal(F.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16), first), f"{kernel} M={m}"


@gpu
@pytest.mark.parametrize("kernel", _sm90_kernels())
def test_gpu_scheduler_params_vs_reference(kernel, seed):
    """Every non-default tile-scheduler setting ``qkernels tune`` tries for the kernel (raster order
    and swizzle; stream-K kernels: the K decomposition and the raster order), forced through the
    dispatch table, on DeepSeek-V3's 2112 x 7168 (a partial last N block, 56 k-tiles): output fully
    written, equal to the reference; a split K is reduced deterministically."""
    _need_gemm("SM90")
    from qkernels.bench import tune

    info = configs.library_tables()["keys"][F.DISPATCH_KEY]
    entry = next(k for k in info["kernels"] if k["name"] == kernel)
    n, k = 2112, 7168
    w, w_s = fp8_operand(n, k, "cuda"), block_scales(n, k, "cuda")
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    for params in tune.param_variants(entry, info, quick=False):
        with forced(kernel, **params):
            for m in (1, 37, 300):
                a, a_s = fp8_operand(m, k, "cuda"), token_scales(m, k, "cuda", column_major=True)
                poison_(torch.empty(m * n * 4, device="cuda", dtype=torch.float32))
                out = F.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16, bias)
                what = f"{kernel} {params} M={m}"
                assert torch.isfinite(out).all(), f"{what}: output not fully written"
                assert_close_rel(out, ref.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16, bias), 1e-2, what)
                assert torch.equal(F.scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16, bias), out), f"{what}: not deterministic"


@gpu
@pytest.mark.parametrize("name", [n for n in OPS if n != "fp8_block_scaled_mm_supports"])
def test_gpu_opcheck(name, seed):
    if name == "per_token_group_fp8_quant":
        _need_library()
    else:
        _need_gemm("TRITON" if name.endswith("_triton") else "SM90")
    for args in _op_args("cuda")[name]:
        _opcheck(name, args)


@gpu
@pytest.mark.parametrize("path,arch", (("SM90", None), ("TRITON", 89)))
def test_gpu_cuda_graph(path, arch, seed):
    _need_gemm(path)
    n, k = 2112, 7168
    w, w_s = fp8_operand(n, k, "cuda"), block_scales(n, k, "cuda")
    with env(QKERNELS_FORCE_ARCH=arch):
        for m in (4, 100, 3000):  # swapped stream-K, stream-K, large
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

            def step():
                q, s = F.per_token_group_quant(x, 128, column_major_scales=True)
                return F.scaled_mm(q, w.t(), s, w_s, torch.bfloat16)

            step()  # warm up (and let the Triton path tune) outside the capture
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = step()
            for _ in range(2):
                x.copy_(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
                g.replay()
                torch.cuda.synchronize()
                q, s = F.per_token_group_quant(x.cpu(), 128)
                expect = ref.scaled_mm(q, w.t().cpu(), s, w_s.cpu(), torch.bfloat16)
                assert_close_rel(out, expect, 1e-2, f"graph {path} m={m}")


@gpu
def test_gpu_torch_compile_fullgraph(seed):
    _need_gemm("SM90")
    n, k = 256, 512
    w, w_s = fp8_operand(n, k, "cuda"), block_scales(n, k, "cuda")

    def f(x):
        q, s = F.per_token_group_quant(x, 128, column_major_scales=True)
        return F.scaled_mm(q, w.t(), s, w_s, torch.bfloat16)

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for m in (3, 64, 300):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        assert_close_rel(cf(x), f(x), 1e-3, f"compile m={m}")


@gpu
def test_gpu_unsupported_arch_and_unknown_kernel_errors(seed):
    _need_library()
    a, w = fp8_operand(4, 128, "cuda"), fp8_operand(32, 128, "cuda")
    a_s, w_s = token_scales(4, 128, "cuda"), block_scales(32, 128, "cuda")
    with env(QKERNELS_FORCE_ARCH=80), pytest.raises(RuntimeError, match="sm_80, which has no FP8 tensor cores"):
        torch.ops.qkernels.fp8_block_scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16)
    with env(QKERNELS_FORCE_ARCH=100), pytest.raises(RuntimeError, match="QKERNELS_FORCE_ARCH=89 selects it"):
        torch.ops.qkernels.fp8_block_scaled_mm(a, w.t(), a_s, w_s, torch.bfloat16)
    if _native_arch() == 90 and F.supports(90):
        with pytest.raises(configs.ConfigError, match=r"kernel 'nope' \(bucket 0\) was not built into this library; "
                                                      r"built for this key: sm90_fp8_block_m16, "):
            with forced("nope"):
                pass

