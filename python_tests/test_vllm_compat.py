"""``qkernels.vllm``: the calls vLLM's own kernel tests make, made against qkernels.

The calls below are written from vLLM's public kernel tests (``tests/kernels/quantization/``:
``test_cutlass_scaled_mm.py``, ``test_fp8_quant.py``, ``test_int8_quant.py``,
``test_cutlass_2of4_sparse.py``, ``test_marlin_gemm.py``, ``test_block_fp8.py``), with the same
argument shapes, dtypes, references and tolerances; vLLM itself is not needed. On the CPU they run
the qkernels references on small shapes; the ``gpu`` variants run vLLM's shapes on the kernels.
"""
from __future__ import annotations

import math

import pytest
import torch

from qkernels import vllm as ops
from qkernels.ops._checks import QKernelsInputError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def to_fp8(t):
    return t.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def to_int8(t):
    return torch.round(t.clamp(-128, 127)).to(torch.int8)


def _group_broadcast(s, shape):
    """vLLM's extended broadcast of a scale to ``shape``: a dim between 1 and the target is repeated in blocks."""
    s = s.float()
    if s.dim() < len(shape):
        s = s.reshape(*([1] * (len(shape) - s.dim())), *s.shape)
    for i, (have, want) in enumerate(zip(s.shape, shape)):
        if have not in (1, want):
            s = s.repeat_interleave(math.ceil(want / have), dim=i).narrow(i, 0, want)
    return s


def baseline_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias=None):
    """vLLM's tests/kernels/utils.py baseline: ``(scale_a * a) @ (scale_b * b)`` in float32."""
    out = (_group_broadcast(scale_a, a.shape) * a.float()) @ (_group_broadcast(scale_b, b.shape) * b.float())
    out = out.to(out_dtype)
    return out if bias is None else out + bias


def scale_shape(shape, group_shape):
    return tuple(math.ceil(d / (d if g < 0 else g)) for d, g in zip(shape, group_shape))


PER_TENSOR, PER_TOKEN, PER_CHANNEL = (-1, -1), (1, -1), (-1, 1)
MNK_CPU = [(1, 256, 128), (16, 256, 496), (33, 64, 1024), (64, 512, 496), (100, 128, 256)]
MNK_GPU = [(1, 256, 128), (1, 16384, 1024), (1, 24576, 496), (16, 256, 496), (16, 16384, 128), (16, 24576, 4096),
           (32, 8192, 4096), (33, 1024, 1024), (33, 8192, 128), (64, 2048, 496), (100, 8192, 496),
           (128, 32768, 4096), (256, 4096, 4096), (512, 256, 1024), (512, 24576, 128)]
UNALIGNED = [(32, 3420, 1280), (32, 1280, 6840), (1, 3420, 1280), (16, 100, 200), (33, 255, 513)]


def _mnk(device):
    return MNK_CPU if device == "cpu" else MNK_GPU


# ------------------------------------------------------------------ cutlass_scaled_mm (test_cutlass_scaled_mm.py)
def _gemm(m, n, k, a_group, b_group, use_bias, dtype, out_dtype, device, stack=()):
    if dtype == FP8:
        a = to_fp8(torch.randn((*stack, m, k), device=device))
        b = to_fp8(torch.randn((n, k), device=device).t())
    else:
        a = to_int8(torch.randn((*stack, m, k), device=device) * 5)
        b = to_int8(torch.randn((n, k), device=device).t() * 5)
    rows = m * math.prod(stack)  # per-token scales cover every row of the flattened [..., K] input
    scale_a = torch.randn(scale_shape((rows, k), a_group), device=device, dtype=torch.float32)
    scale_b = torch.randn(scale_shape(tuple(b.shape), b_group), device=device, dtype=torch.float32)
    scale_a = scale_a.t().contiguous().t()  # M-major for blockwise scales, no-op for 1-D ones
    scale_b = scale_b.t().contiguous().t()  # K-major for blockwise scales
    bias = torch.rand((n,), device=device, dtype=out_dtype) * 10 if use_bias else None
    out = ops.cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias)
    base = baseline_scaled_mm(a.reshape(-1, k), b, scale_a, scale_b, out_dtype, bias).reshape(out.shape)
    assert out.shape == (*stack, m, n) and out.dtype == out_dtype
    if dtype == FP8:
        torch.testing.assert_close(out, base, rtol=5e-1, atol=1.5e-1)
    else:
        torch.testing.assert_close(out, base, rtol=1e-1, atol=1e0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [FP8, torch.int8])
@pytest.mark.parametrize("a_group", [PER_TOKEN, PER_TENSOR])
@pytest.mark.parametrize("b_group", [PER_CHANNEL, PER_TENSOR])
@pytest.mark.parametrize("use_bias", [True, False])
def test_cutlass_gemm(device, dtype, a_group, b_group, use_bias):
    if device == "cuda" and dtype == FP8 and not ops.cutlass_scaled_mm_supports_fp8(
            torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1]):
        pytest.skip("FP8 is not supported on this GPU type.")
    torch.manual_seed(0)
    for m, n, k in _mnk(device):
        _gemm(m, n, k, a_group, b_group, use_bias, dtype, torch.bfloat16, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [FP8, torch.int8])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_cutlass_gemm_output_dtype_and_leading_dims(device, dtype, out_dtype):
    """vLLM's wrapper takes [..., K] activations; the output keeps the leading dims."""
    torch.manual_seed(1)
    _gemm(64, 64, 128, PER_TOKEN, PER_CHANNEL, True, dtype, out_dtype, device, stack=(3,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [FP8, torch.int8])
def test_cutlass_gemm_unaligned_n_k(device, dtype):
    """K or N not a multiple of 16 (vLLM: its Triton fallback): zero-padded to 16 here, same results."""
    torch.manual_seed(2)
    for m, n, k in UNALIGNED if device == "cuda" else UNALIGNED[3:]:
        for a_group, b_group in ((PER_TOKEN, PER_CHANNEL), (PER_TENSOR, PER_TENSOR)):
            _gemm(m, n, k, a_group, b_group, True, dtype, torch.bfloat16, device)


@pytest.mark.parametrize("device", DEVICES)
def test_cutlass_fp8_blockwise_scale_gemm(device):
    """a_scales [M, K/128] x b_scales [K/128, N/128] (vLLM's group-broadcast form) -> the fp8_block GEMM."""
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        if not ops.cutlass_scaled_mm_supports_block_fp8(cap[0] * 10 + cap[1]):
            pytest.skip("FP8 blockwise is not supported on this GPU type.")
    torch.manual_seed(3)
    for m, n, k in [s for s in _mnk(device) if s[1] % 128 == 0 and s[2] % 128 == 0] + [(512, 512, 512)]:
        _gemm(m, n, k, (1, 128), (128, 128), False, FP8, torch.bfloat16, device)
    for out_dtype in (torch.bfloat16, torch.float16):
        _gemm(128, 256, 384, (1, 128), (128, 128), False, FP8, out_dtype, device)
    with pytest.raises(QKernelsInputError, match=r"scale_b \[K/128, N/128\]"):
        ops.cutlass_scaled_mm(to_fp8(torch.randn(4, 256, device=device)), to_fp8(torch.randn(256, 256, device=device)).t(),
                              torch.ones(4, 2, device=device), torch.ones(2, 3, device=device), torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_cutlass_subset(device):
    """Slices of larger tensors (row stride > K) run without a copy of b."""
    big, m = (1024, 512) if device == "cuda" else (256, 128)
    whole_a = to_int8(torch.randn((big, big), device=device) * 5)
    whole_b = to_int8(torch.randn((big, big), device=device).t() * 5)
    a, b = whole_a[0:m, 0:m], whole_b[0:m, 0:m]
    scale_a = torch.randn((1, 1), device=device) / 10
    scale_b = torch.randn((1, 1), device=device) / 10
    out = ops.cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype=torch.bfloat16)
    torch.testing.assert_close(out, baseline_scaled_mm(a, b, scale_a, scale_b, torch.bfloat16), rtol=1e-1, atol=1e0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("azp_per_token", [True, False])
def test_cutlass_int8_azp(device, out_dtype, use_bias, azp_per_token):
    torch.manual_seed(4)
    for m, n, k in [(32, 16, 64), (64, 32, 128), (128, 64, 256)]:
        m_azp = m if azp_per_token else 1
        scale_a = torch.randn((m_azp, 1), device=device) / 10
        scale_b = torch.randn((1, n), device=device) / 10
        aq_i8 = to_int8(torch.rand((m, k), device=device) * 255 - 128)
        bq_i8 = to_int8(torch.rand((n, k), device=device) * 255 - 128).t()
        azp_a = torch.rand((m_azp, 1), device=device) * 10 + 1.5
        azp_aq_i8 = (azp_a / scale_a).to(torch.int8)
        a_dq = scale_a * (aq_i8.to(torch.int32) - azp_aq_i8).float()
        bias = (torch.rand((1, n), device=device, dtype=out_dtype) * 10 + 2.5 if use_bias
                else torch.zeros((1, n), device=device, dtype=out_dtype))
        baseline_dq = (torch.mm(a_dq, scale_b * bq_i8.float()) + bias).to(out_dtype)
        cq = (aq_i8.to(torch.int64) - azp_aq_i8).cpu() @ bq_i8.to(torch.int64).cpu()
        baseline_q = (scale_a * scale_b * cq.to(device).float() + bias).to(out_dtype)
        azp_adj = bq_i8.to(torch.int32).sum(dim=0, keepdim=True, dtype=torch.int32)
        azp_i32 = azp_aq_i8.to(torch.int32)
        if azp_per_token:
            out = ops.cutlass_scaled_mm_azp(aq_i8, bq_i8, scale_a, scale_b, out_dtype, azp_adj, azp_i32,
                                            bias if use_bias else None)
        else:
            out = ops.cutlass_scaled_mm_azp(aq_i8, bq_i8, scale_a, scale_b, out_dtype, azp_i32 * azp_adj, None,
                                            bias if use_bias else None)
        rtol = 1e-2 if out_dtype == torch.bfloat16 else 1e-3
        torch.testing.assert_close(out, baseline_dq, rtol=rtol, atol=1e-3)
        torch.testing.assert_close(out, baseline_q, rtol=rtol, atol=1e-3)


def test_support_queries_without_gpu_are_false():
    for cap in (75, 80, 89, 90):
        assert isinstance(ops.cutlass_scaled_mm_supports_fp8(cap), bool)
        assert isinstance(ops.cutlass_sparse_scaled_mm_supported(cap), bool)
        assert isinstance(ops.cutlass_scaled_mm_supports_block_fp8(cap), bool)
    assert not ops.cutlass_scaled_mm_supports_fp8(80) and not ops.cutlass_sparse_scaled_mm_supported(89)


# ------------------------------------------------------------------ scaled_fp8_quant (test_fp8_quant.py)
def ref_dynamic_per_token_quant(x, quant_dtype, scale_ub=None):
    """vLLM's tests/kernels/quant_utils.py reference (same float32 operations as the kernels)."""
    info = torch.iinfo(quant_dtype) if quant_dtype == torch.int8 else torch.finfo(quant_dtype)
    qmax = torch.tensor(float(info.max), device=x.device)
    x_max = x.abs().max(dim=-1).values.float()
    if scale_ub is not None:
        x_max = x_max.clamp(max=scale_ub)
    scales = (x_max / qmax)[:, None]
    if quant_dtype == FP8:
        scales = scales.clamp(min=1.0 / (qmax * 512.0))
    out = x.float() * (1.0 / scales)
    out = out.round() if quant_dtype == torch.int8 else out
    return out.clamp(info.min, info.max).to(quant_dtype), scales


def ref_dynamic_per_tensor_fp8_quant(x):
    scale = (x.abs().max().float() / FP8_MAX).reshape(1)
    return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _sizes(device):
    """(num_tokens, hidden_size) of vLLM's quant tests (fewer tokens and sizes on the CPU)."""
    tokens, hidden = (([1, 7, 64], [17, 1025, 4096]) if device == "cpu"
                      else ([1, 7, 4096], [17, 1024, 1025, 1026, 5137, 8193]))
    return [(t, h) for t in tokens for h in hidden]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float])
@pytest.mark.parametrize("do_scale_ub", [True, False])
def test_dynamic_per_token_fp8_quant(device, dtype, do_scale_ub):
    torch.manual_seed(0)
    for t, h in _sizes(device):
        x = torch.rand(t, h, dtype=dtype, device=device) + 1e-6
        scale_ub = torch.mean(x).to(torch.float32) if do_scale_ub else None
        ref_out, ref_scales = ref_dynamic_per_token_quant(x, FP8, scale_ub)
        out, scales = ops.scaled_fp8_quant(x, scale_ub=scale_ub, use_per_token_if_dynamic=True)
        torch.testing.assert_close(scales, ref_scales)
        torch.testing.assert_close(out.float(), ref_out.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float])
def test_dynamic_per_tensor_fp8_quant(device, dtype):
    torch.manual_seed(0)
    for t, h in _sizes(device):
        x = torch.rand(t, h, dtype=dtype, device=device)
        ref_out, ref_scale = ref_dynamic_per_tensor_fp8_quant(x)
        out, scale = ops.scaled_fp8_quant(x)
        torch.testing.assert_close(scale, ref_scale)
        torch.testing.assert_close(out.float(), ref_out.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [8, 16])
def test_dynamic_per_tensor_fp8_quant_strided_input(device, pad):
    """vLLM's quant ops take row-strided activations: same bytes as the contiguous input (a copy here)."""
    full = torch.rand(64, 4096 + pad, dtype=torch.bfloat16, device=device)
    x = full[:, :4096]
    assert not x.is_contiguous()
    out, scale = ops.scaled_fp8_quant(x)
    flat_out, flat_scale = ops.scaled_fp8_quant(x.contiguous())
    assert torch.equal(scale, flat_scale) and torch.equal(out.view(torch.uint8), flat_out.view(torch.uint8))
    ref_out, ref_scale = ref_dynamic_per_tensor_fp8_quant(x)
    assert torch.equal(ref_scale, scale) and torch.equal(ref_out.view(torch.uint8), out.view(torch.uint8))


def _scaled_quantize(x, group_shape):
    """vLLM's scaled_quantize (quant_utils): one scale per group = absmax / 448, q = x / scale."""
    m, n = x.shape
    gm, gn = (m if group_shape[0] == -1 else group_shape[0]), (n if group_shape[1] == -1 else group_shape[1])
    g = x.float().reshape(m // gm, gm, n // gn, gn)
    scale = (g.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (g / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(m, n)
    return q, scale


GROUP_SHAPES_2D = [(-1, -1), (-1, 1), (1, -1), (-1, 128), (1, 128), (128, 128), (1, 64), (1, 16), (4, 256)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group_shape", GROUP_SHAPES_2D)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float])
def test_static_fp8_quant_group_2d(device, group_shape, dtype):
    """Static scales per tensor / channel / token / group (vLLM's group_shape): the composite path."""
    torch.manual_seed(0)
    for tokens, hidden in [(128, 256), (512, 1024)] if device == "cuda" else [(128, 256)]:
        x = torch.rand(tokens, hidden, dtype=dtype, device=device)
        ref_out, scale = _scaled_quantize(x, group_shape)
        out, out_scale = ops.scaled_fp8_quant(x, scale=scale, group_shape=group_shape)
        assert out_scale is scale
        torch.testing.assert_close(ref_out.float(), out.float(), rtol=1.2e-1, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group_shape", [PER_TOKEN, PER_CHANNEL])
def test_static_fp8_quant_1d_scale(device, group_shape):
    x = torch.rand(128, 256, device=device)
    ref_out, scale_2d = _scaled_quantize(x, group_shape)
    scale_1d = scale_2d.flatten()
    out, out_scale = ops.scaled_fp8_quant(x, scale=scale_1d, group_shape=group_shape)
    assert out_scale is scale_1d
    torch.testing.assert_close(ref_out.float(), out.float(), rtol=0.12, atol=0.0)
    with pytest.raises(QKernelsInputError, match="needs group_shape"):
        ops.scaled_fp8_quant(x, scale=scale_1d)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_quant_padding_and_output(device):
    x = torch.randn(5, 64, device=device)
    q, s = ops.scaled_fp8_quant(x, num_token_padding=16, use_per_token_if_dynamic=True)
    q0, s0 = ops.scaled_fp8_quant(x, use_per_token_if_dynamic=True)
    assert q.shape == (16, 64) and s.shape == (16, 1)
    assert torch.equal(q[:5].view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s[:5], s0)
    assert not bool(q[5:].float().any()) and not bool(s[5:].any())
    q, s = ops.scaled_fp8_quant(x, num_token_padding=16)
    assert q.shape == (16, 64) and s.shape == (1,)
    out = torch.empty(5, 64, dtype=FP8, device=device)
    q, _ = ops.scaled_fp8_quant(x, output=out)
    assert q is out and torch.equal(out.view(torch.uint8), ops.scaled_fp8_quant(x)[0].view(torch.uint8))
    with pytest.raises(QKernelsInputError, match="2-D"):
        ops.scaled_fp8_quant(x.reshape(1, 5, 64))


# ------------------------------------------------------------------ scaled_int8_quant (test_int8_quant.py)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float])
def test_dynamic_scaled_int8_quant(device, dtype):
    torch.manual_seed(0)
    for t, h in _sizes(device):
        x = torch.rand(t, h, dtype=dtype, device=device) * 1000
        ref_out, ref_scales = ref_dynamic_per_token_quant(x, torch.int8)
        out, scales, azp = ops.scaled_int8_quant(x)
        assert azp is None
        torch.testing.assert_close(scales, ref_scales)
        torch.testing.assert_close(out, ref_out, atol=1, rtol=0.0)


def _vllm_azp_reference(x):
    xf = x.float()
    mx, mn = xf.max(dim=1, keepdim=True).values, xf.min(dim=1, keepdim=True).values
    scales = (mx - mn) / torch.tensor(255.0)
    azps = torch.round(torch.tensor(-128.0) - mn / scales).to(torch.int32)
    out = ((xf / scales).round() + azps).clamp(-128, 127).to(torch.int8)
    return out, scales, azps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float])
def test_dynamic_scaled_int8_azp_quant(device, dtype):
    torch.manual_seed(0)
    for t, h in _sizes(device):
        x = torch.rand(t, h, dtype=dtype, device=device) * 1000 - 300
        ref_out, ref_scales, ref_azps = _vllm_azp_reference(x)
        out, scales, azps = ops.scaled_int8_quant(x, symmetric=False)
        torch.testing.assert_close(scales, ref_scales)
        torch.testing.assert_close(azps, ref_azps, atol=1, rtol=0.0)
        torch.testing.assert_close(out, ref_out, atol=2, rtol=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_int8_azp_convention_rows_of_one_sign(device):
    """Rows of one sign: vLLM's scale is (max - min) / 255 of the row itself; the native qkernels op
    widens the range to 0 (coarser scale, zero point within int8). The vllm module reproduces vLLM."""
    x = torch.rand(4, 256, device=device) * 100 + 200  # all in [200, 300]
    _, s_v, z_v = ops.scaled_int8_quant(x, symmetric=False)
    _, s_ref, z_ref = _vllm_azp_reference(x)
    torch.testing.assert_close(s_v, s_ref)
    assert torch.equal(z_v, z_ref) and bool((z_v < -128).all())  # vLLM's zero point leaves int8 here
    from qkernels.ops.quant import scaled_int8_quant as native

    _, s_n, z_n = native(x, symmetric=False)
    assert bool((s_n > 2.5 * s_v).all()) and bool((z_n >= -128).all() and (z_n <= 127).all())
    # both dequantize to the input within half a step of their own scale
    for q, s, z in (ops.scaled_int8_quant(x, symmetric=False), native(x, symmetric=False)):
        err = ((q.float() - z.float()) * s - x).abs()
        assert bool((err <= 0.5 * s + 1e-4).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [0.1, 2.1])
@pytest.mark.parametrize("azp", [None, -255, 54])
def test_static_scaled_int8_quant(device, scale, azp):
    torch.manual_seed(0)
    x = torch.rand(7, 1025, device=device) * 1000 - (300 if azp is not None else 0)
    scale_arg = torch.tensor([scale], dtype=torch.float32, device=device)
    ref = ((x / scale_arg).round() + (azp or 0)).clamp(-128, 127).to(torch.int8)
    azp_arg = None if azp is None else torch.tensor([azp], dtype=torch.int32, device=device)
    out, scale2, azp2 = ops.scaled_int8_quant(x, scale_arg, azp_arg, symmetric=azp is None)
    assert scale2 is scale_arg and azp2 is azp_arg
    torch.testing.assert_close(out, ref, atol=1, rtol=0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("is_max", [True, False])
def test_static_scaled_int8_azp_quant_saturating_cast(device, is_max):
    from numpy import inf, nextafter

    val = float(torch.iinfo(torch.int32).max if is_max else torch.iinfo(torch.int32).min)
    x = torch.tensor([[nextafter(val, inf), val + 1, val, val - 1, nextafter(val, -inf)]], dtype=torch.float32,
                     device=device)
    scale = torch.scalar_tensor(1.0, dtype=torch.float32, device=device)
    azp = torch.scalar_tensor(0, dtype=torch.int32, device=device)
    out, _, _ = ops.scaled_int8_quant(x, scale, azp, symmetric=False)
    expected = torch.full((1, 5), 127 if is_max else -128, dtype=torch.int8, device=device)
    torch.testing.assert_close(expected, out, atol=0, rtol=0)


# ------------------------------------------------------------------ 2:4 sparse (test_cutlass_2of4_sparse.py)
def prune_to_2_4(tensor):
    shape = tensor.shape
    g = tensor.reshape(-1, 4)
    _, idx = torch.topk(torch.abs(g), k=2, dim=1)
    mask = torch.zeros_like(g).scatter_(1, idx, torch.ones_like(idx, dtype=g.dtype))
    pruned = g * mask
    pruned[pruned == -0.0] = 0.0
    return pruned.reshape(shape)


def make_rand_sparse_tensors(m, n, k, device):
    a = to_fp8(torch.randn((m, k), device=device))
    b = to_fp8(prune_to_2_4(torch.randn((n, k), device=device))).t()  # [K, N], the .t() of the pruned weight
    b_compressed, e = ops.cutlass_sparse_compress(b.t())
    # compress / decompress invariance: the identity times the compressed weight is the weight
    eye = torch.eye(b.shape[0], device=device, dtype=FP8)
    one = torch.ones(1, device=device)
    torch.testing.assert_close(b.to(torch.bfloat16), ops.cutlass_scaled_sparse_mm(eye, b_compressed, e, one, one,
                                                                                  out_dtype=torch.bfloat16))
    return b_compressed, e, a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_cutlass_sparse_fp8_gemm(device, use_bias):
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        if not ops.cutlass_sparse_scaled_mm_supported(cap[0] * 10 + cap[1]):
            pytest.skip("Sparse CUTLASS is not supported on this GPU type.")
    torch.manual_seed(5)
    shapes = ([(1, 256, 128), (16, 256, 512), (33, 1024, 1024), (100, 8192, 512), (512, 24576, 128)]
              if device == "cuda" else [(1, 256, 128), (33, 64, 256), (16, 72, 128)])
    for m, n, k in shapes:
        b_comp, e, a, b = make_rand_sparse_tensors(m, n, k, device)
        assert e.shape == ((n, k // 8) if n % 64 == 0 else e.shape)
        scale_a = torch.randn((1, 1), device=device)
        scale_b = torch.randn((1, 1), device=device)
        bias = torch.rand((n,), device=device, dtype=torch.bfloat16) * 10 if use_bias else None
        out = ops.cutlass_scaled_sparse_mm(a, b_comp, e, scale_a, scale_b, out_dtype=torch.bfloat16, bias=bias)
        base = baseline_scaled_mm(a, b, scale_a, scale_b, torch.bfloat16, bias)
        torch.testing.assert_close(out, base, rtol=1e-2, atol=3e-1)


def test_cutlass_sparse_other_dtypes_say_so():
    w = prune_to_2_4(torch.randn(64, 128)).to(torch.bfloat16)
    with pytest.raises(QKernelsInputError, match="float8_e4m3fn only"):
        ops.cutlass_sparse_compress(w)


# ------------------------------------------------------------------ Marlin-style W4A16 (test_marlin_gemm.py)
def _gptq_quantize(k, n, group_size, act_order, asym, dtype, device):
    """GPTQ-style 4-bit weights ``[K, N]``: (w_ref, qweight [K/8, N] int32, scales [G, N], zeros [G, N] or None,
    g_idx, sort_indices), as vLLM's marlin_quantize makes them but with scales / zeros in natural order."""
    w = torch.randn(k, n, device=device) * 0.05
    gs = k if group_size == -1 else group_size
    g_idx = (torch.arange(k, device=device) // gs).to(torch.int32)
    if act_order:
        g_idx = g_idx[torch.randperm(k, device=device)]
    groups = k // gs
    amax = torch.stack([w[g_idx == g].abs().amax(0) for g in range(groups)])
    if asym:
        lo = torch.stack([w[g_idx == g].amin(0) for g in range(groups)])
        hi = torch.stack([w[g_idx == g].amax(0) for g in range(groups)])
        scales = ((hi - lo) / 15).clamp(min=1e-6)
        zeros = torch.round(-lo / scales).clamp(0, 15)
        q = (torch.round(w / scales[g_idx.long()]) + zeros[g_idx.long()]).clamp(0, 15)
        w_ref = (q - zeros[g_idx.long()]) * scales[g_idx.long()]
    else:
        scales, zeros = amax / 7, None
        q = torch.round(w / scales[g_idx.long()]).clamp(-8, 7) + 8
        w_ref = (q - 8) * scales[g_idx.long()]
    qi = q.to(torch.int64).reshape(k // 8, 8, n)
    packed = (qi << (4 * torch.arange(8, device=device)).reshape(1, 8, 1)).sum(1)
    qweight = (packed - (packed >= 2**31).to(torch.int64) * 2**32).to(torch.int32)
    sort_indices = torch.argsort(g_idx, stable=True).to(torch.int32) if act_order else torch.empty(0, dtype=torch.int32,
                                                                                                 device=device)
    scales = scales.to(dtype)
    return (w_ref.to(dtype), qweight, scales, None if zeros is None else zeros.to(dtype),
            g_idx if act_order else torch.empty(0, dtype=torch.int32, device=device), sort_indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b_type", ["uint4b8", "uint4"])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gptq_marlin_gemm(device, b_type, group_size, act_order, dtype):
    if act_order and group_size == -1:
        pytest.skip("act-order needs groups (as in vLLM's test)")
    torch.manual_seed(6)
    shapes = [(1, 256, 128), (16, 1024, 512), (67, 4096, 256)] if device == "cuda" else [(1, 256, 128), (5, 128, 256)]
    for m, k, n in shapes:
        w_ref, qweight, scales, zeros, g_idx, sort_indices = _gptq_quantize(k, n, group_size, act_order,
                                                                            b_type == "uint4", dtype, device)
        marlin_q_w = ops.gptq_marlin_repack(qweight, sort_indices, k, n, 4)
        assert marlin_q_w.shape == (k // 16, 2 * n) and marlin_q_w.dtype == torch.int32
        a = torch.randn(m, k, dtype=dtype, device=device)
        empty = torch.empty(0, dtype=torch.int32, device=device)
        output = torch.empty((m, n), dtype=dtype, device=device)
        out = ops.gptq_marlin_gemm(a, output, marlin_q_w, None, scales, None, None,
                                   zeros if zeros is not None else empty, g_idx, sort_indices, None, b_type,
                                   m, n, k, is_k_full=True, use_atomic_add=False, use_fp32_reduce=True)
        assert out is output
        ref = torch.matmul(a.float(), w_ref.float())
        max_diff = torch.mean(torch.abs(out.float() - ref)) / torch.mean(torch.abs(ref))
        assert max_diff < 0.04, (m, k, n, float(max_diff))
        if not act_order:  # the newer name, same call without g_idx / perm
            out2 = ops.marlin_gemm(a, None, marlin_q_w, None, scales, None, None, zeros, None, b_type, m, n, k)
            torch.testing.assert_close(out2, output, rtol=0, atol=0)


def test_marlin_unsupported_arguments_say_so():
    k, n = 128, 128
    _, qweight, scales, _, g_idx, perm = _gptq_quantize(k, n, 128, False, False, torch.float16, "cpu")
    b = ops.gptq_marlin_repack(qweight, perm, k, n, 4)
    a = torch.randn(2, k, dtype=torch.float16)
    call = lambda **kw: ops.gptq_marlin_gemm(**{**dict(  # noqa: E731
        a=a, c=None, b_q_weight=b, b_bias=None, b_scales=scales, a_scales=None, global_scale=None, b_zeros=None,
        g_idx=g_idx, perm=perm, workspace=None, b_q_type="uint4b8", size_m=2, size_n=n, size_k=k), **kw})
    with pytest.raises(QKernelsInputError, match="b_q_type 'float4_e2m1f' is not supported"):
        call(b_q_type="float4_e2m1f")
    with pytest.raises(QKernelsInputError, match="is_k_full=False"):
        call(is_k_full=False)
    with pytest.raises(QKernelsInputError, match="a_scales / global_scale"):
        call(a_scales=torch.ones(2))
    with pytest.raises(QKernelsInputError, match="not vLLM's marlin_zero_points"):
        call(b_q_type="uint4", b_zeros=torch.zeros(1, n // 8, dtype=torch.int32))
    with pytest.raises(QKernelsInputError, match="only 4-bit"):
        ops.gptq_marlin_repack(qweight, perm, k, n, 8)


# ------------------------------------------------------------------ per_token_group_quant_fp8 (test_block_fp8.py)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("column_major", [False, True])
def test_per_token_group_quant_fp8(device, group_size, column_major):
    torch.manual_seed(7)
    x = torch.randn(33, 512, dtype=torch.bfloat16, device=device) * 4
    q, s = ops.per_token_group_quant_fp8(x, group_size, column_major_scales=column_major)
    g = x.float().reshape(33, -1, group_size)
    ref_s = (g.abs().amax(-1).clamp(min=1e-10) / FP8_MAX)
    ref_q = (g / ref_s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(33, 512)
    assert s.shape == (33, 512 // group_size) and s.is_contiguous() != column_major
    torch.testing.assert_close(s, ref_s)
    torch.testing.assert_close(q.float(), ref_q.float(), rtol=0.13, atol=0)
    _, s8 = ops.per_token_group_quant_fp8(x, group_size, use_ue8m0=True)
    assert bool((torch.log2(s8) == torch.round(torch.log2(s8))).all()) and bool((s8 >= ref_s).all())
    with pytest.raises(QKernelsInputError, match="tma_aligned_scales"):
        ops.per_token_group_quant_fp8(x, group_size, tma_aligned_scales=True)


# ------------------------------------------------------------------ torch.compile / CUDA graphs
@pytest.mark.parametrize("device", DEVICES)
def test_adapters_trace_with_torch_compile(device):
    """An engine compiles its forward: the adapters trace into a single graph (fullgraph)."""
    torch._dynamo.reset()
    w = to_fp8(torch.randn(256, 128, device=device))
    w_s = torch.rand(1, 256, device=device) + 0.5

    def layer(x):
        q, s = ops.scaled_fp8_quant(x, use_per_token_if_dynamic=True)
        return ops.cutlass_scaled_mm(q, w.t(), s, w_s, torch.bfloat16)

    x = torch.randn(7, 128, device=device, dtype=torch.bfloat16)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@pytest.mark.gpu
def test_cutlass_cuda_graph():
    """vLLM's test_cutlass_cuda_graph: the int8 GEMM captured in a CUDA graph and replayed."""
    m = n = k = 512
    a = to_int8(torch.randn((m, k), device="cuda"))
    b = to_int8(torch.randn((n, k), device="cuda").t())
    scale_a = torch.randn((m, 1), device="cuda") / 10
    scale_b = torch.randn((1, n), device="cuda") / 10
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = ops.cutlass_scaled_mm(a, b, scale_a, scale_b, torch.bfloat16)
    out.zero_()
    g.replay()
    torch.cuda.synchronize()
    base = torch.mm(scale_a * a.float(), scale_b * b.float()).to(torch.bfloat16)
    torch.testing.assert_close(out, base, rtol=1e-1, atol=1e0)
