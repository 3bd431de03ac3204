"""Activation quantisation: reference vs independent math, opcheck, errors, GPU vs reference."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels.ops import quant
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import quant as ref

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# hidden sizes: aligned (vector path), odd (scalar path), tiny
SHAPES = ((1, 64), (7, 37), (3, 5, 256), (16, 4095), (2, 8))
OPS = qkernels.ops.family_ops()["quant"]


def _x(shape, dtype, device="cpu", scale=3.0):
    return (torch.randn(shape, device=device) * scale).to(dtype)


# ----------------------------------------------------------------- reference vs independent math
def _np_rint(v):
    return np.rint(v)  # numpy rounds half to even, like the spec


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_per_token_matches_numpy(dtype, seed):
    x = _x((5, 37), dtype)
    q, s = ref.dynamic_per_token_scaled_fp8_quant(x)
    xf = x.float().numpy().astype(np.float64)
    absmax = np.abs(xf).max(-1, keepdims=True)
    s_np = np.maximum(absmax / 448.0, 1 / (448 * 512))
    np.testing.assert_allclose(s.numpy(), s_np, rtol=1e-6)
    # the dequantised value is within half an fp8 ulp (2^-3 relative for e4m3) of x
    deq = q.float().numpy() * s.numpy()
    assert np.all(np.abs(deq - xf) <= np.abs(xf) * 2**-4 + s_np * 2**-9 + 1e-12)
    assert q.float().abs().max() <= 448


def test_fp8_saturates_and_keeps_zero():
    x = torch.tensor([[0.0, 1e6, -1e6, 1.0]])
    q = ref.static_scaled_fp8_quant(x, torch.tensor([1.0]))
    assert q.float().tolist() == [[0.0, 448.0, -448.0, 1.0]]


def test_fp8_scale_ub_bounds_scale():
    x = torch.tensor([[1000.0, 1.0], [0.5, 0.25]])
    _, s = ref.dynamic_per_token_scaled_fp8_quant(x, torch.tensor([448.0]))
    assert s[0].item() == pytest.approx(1.0)  # min(1000, 448) / 448
    assert s[1].item() == pytest.approx(0.5 / 448)


def test_fp8_dynamic_tensor_zero_input_has_positive_scale():
    q, s = ref.dynamic_scaled_fp8_quant(torch.zeros(4, 8))
    assert s.item() == pytest.approx(1 / (448 * 512))
    assert torch.all(q.float() == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_per_token_sym_matches_numpy(dtype, seed):
    x = _x((6, 33), dtype)
    q, s = ref.dynamic_scaled_int8_quant(x)
    xf = x.float().numpy()
    absmax = np.abs(xf).max(-1, keepdims=True)
    np.testing.assert_allclose(s.numpy(), absmax / 127.0, rtol=1e-6)
    q_np = np.clip(_np_rint(xf.astype(np.float32) * (np.float32(127.0) / absmax.astype(np.float32))), -128, 127)
    np.testing.assert_array_equal(q.numpy(), q_np.astype(np.int8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_per_token_asym_roundtrip(dtype, seed):
    x = _x((6, 41), dtype) + 2.0  # shifted: asymmetric range
    q, s, azp = ref.dynamic_scaled_int8_quant_azp(x)
    deq = (q.float() - azp.float()) * s
    # error of an asymmetric 8-bit quantiser: at most half a step (+ rounding of azp)
    assert torch.all((deq - x.float()).abs() <= s * 1.0 + 1e-6)
    assert q.min() >= -128 and q.max() <= 127


def test_int8_asym_constant_and_zero_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [-3.0, -3.0, -3.0]])
    q, s, azp = ref.dynamic_scaled_int8_quant_azp(x)
    deq = (q.float() - azp.float()) * s
    torch.testing.assert_close(deq, x, atol=0.02, rtol=0)


def test_int8_static_with_azp_matches_numpy(seed):
    x = _x((4, 19), torch.float32)
    scale, azp = torch.tensor([0.03]), torch.tensor([5], dtype=torch.int32)
    q = ref.static_scaled_int8_quant(x, scale, azp)
    q_np = np.clip(_np_rint(x.numpy() / np.float32(0.03)) + 5, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(q.numpy(), q_np)


def test_int8_round_half_even():
    q = ref.static_scaled_int8_quant(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5]), torch.tensor([1.0]))
    assert q.tolist() == [0, 2, 2, 0, -2]


# ----------------------------------------------------------------- wrappers and leading dims
def test_wrappers_route_to_the_right_op(seed):
    x = _x((2, 3, 64), torch.bfloat16)
    q, s = qkernels.scaled_fp8_quant(x, per_token=True)
    assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn and s.shape == (2, 3, 1)
    q, s = qkernels.scaled_fp8_quant(x)
    assert s.shape == (1,)
    q, s, azp = qkernels.scaled_int8_quant(x, symmetric=False)
    assert q.dtype == torch.int8 and azp.dtype == torch.int32 and azp.shape == (2, 3, 1)
    q, s, azp = qkernels.scaled_int8_quant(x)
    assert azp is None and s.shape == (2, 3, 1)


# ----------------------------------------------------------------- opcheck (CPU; CUDA below)
def _op_args(name, x):
    one = torch.tensor([0.05], device=x.device)
    return {
        "static_scaled_fp8_quant": (x, one),
        "dynamic_scaled_fp8_quant": (x,),
        "dynamic_per_token_scaled_fp8_quant": (x, torch.tensor([2.0], device=x.device)),
        "static_scaled_int8_quant": (x, one, torch.tensor([3], dtype=torch.int32, device=x.device)),
        "dynamic_scaled_int8_quant": (x,),
        "dynamic_scaled_int8_quant_azp": (x,),
    }[name]


@pytest.mark.parametrize("name", OPS)
def test_opcheck_cpu(name, seed):
    x = _x((3, 4, 40), torch.bfloat16)
    opcheck(getattr(torch.ops.qkernels, name), _op_args(name, x))


# ----------------------------------------------------------------- errors
def test_error_wrong_dtype():
    with pytest.raises(QKernelsInputError, match=r"input has dtype int32; supported: float16, bfloat16, float32"):
        qkernels.scaled_fp8_quant(torch.ones(2, 8, dtype=torch.int32))


def test_error_non_contiguous():
    with pytest.raises(QKernelsInputError, match=r"must be contiguous: call .contiguous\(\)"):
        qkernels.scaled_int8_quant(torch.randn(8, 4).t())


def test_error_scale_shape_and_dtype():
    with pytest.raises(QKernelsInputError, match=r"scale has shape \(2,\).*one per-tensor scale"):
        quant.scaled_fp8_quant(torch.randn(2, 8), scale=torch.ones(2))
    with pytest.raises(QKernelsInputError, match=r"scale has dtype float16.*float32"):
        quant.scaled_int8_quant(torch.randn(2, 8), scale=torch.ones(1, dtype=torch.float16))


@pytest.mark.parametrize("fn", [lambda x: qkernels.scaled_fp8_quant(x, per_token=True),
                                lambda x: qkernels.scaled_int8_quant(x),
                                lambda x: qkernels.scaled_int8_quant(x, symmetric=False)],
                         ids=["fp8-token", "int8-token", "int8-token-azp"])
def test_error_per_token_needs_a_non_empty_last_dim(fn):
    with pytest.raises(QKernelsInputError, match=r"input has shape \(4, 0\): per-token scales need a non-empty"):
        fn(torch.zeros(4, 0))


def test_error_conflicting_arguments():
    with pytest.raises(QKernelsInputError, match="excludes per_token"):
        quant.scaled_fp8_quant(torch.randn(2, 8), scale=torch.ones(1), per_token=True)
    with pytest.raises(QKernelsInputError, match="static `azp` needs a static `scale`"):
        quant.scaled_int8_quant(torch.randn(2, 8), azp=torch.zeros(1, dtype=torch.int32))


# ----------------------------------------------------------------- GPU: CUDA kernels vs reference
def _gpu_cases():
    return itertools.product(DTYPES, SHAPES + ((1, 8192), (4096, 8192), (33, 14336)))


def _cuda_op_available(name):
    from qkernels import _loader

    return _loader.has_cuda_kernel(name)


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_gpu_matches_reference_bitwise(name):
    if not _cuda_op_available(name):
        pytest.skip(f"qkernels::{name} has no CUDA kernel in this build")
    op = getattr(torch.ops.qkernels, name)
    for dtype, shape in _gpu_cases():
        x = _x(shape, dtype, device="cuda")
        args = _op_args(name, x)
        out = op(*args)
        exp = op(*[a.cpu() for a in args])
        out = out if isinstance(out, tuple) else (out,)
        exp = exp if isinstance(exp, tuple) else (exp,)
        for o, e in zip(out, exp):
            assert o.dtype == e.dtype and o.shape == e.shape, (name, dtype, shape)
            # bit-exact: the kernels do the reference's float32 operations in its order
            assert torch.equal(o.cpu().view(torch.uint8) if o.element_size() == 1 else o.cpu(),
                               e.view(torch.uint8) if e.element_size() == 1 else e), (name, dtype, shape)


@pytest.mark.gpu
def test_gpu_unaligned_base_pointer_takes_scalar_path():
    x = _x((4, 4096 + 8), torch.bfloat16, device="cuda")[:, 1:4097].contiguous()
    base = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")
    xu = base[1:].view_as(x).copy_(x)  # 2-byte aligned, not 16
    q, s = torch.ops.qkernels.dynamic_per_token_scaled_fp8_quant(xu, None)
    qr, sr = torch.ops.qkernels.dynamic_per_token_scaled_fp8_quant(xu.cpu(), None)
    assert torch.equal(s.cpu(), sr) and torch.equal(q.cpu().view(torch.uint8), qr.view(torch.uint8))


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_opcheck_cuda(name):
    if not _cuda_op_available(name):
        pytest.skip(f"qkernels::{name} has no CUDA kernel in this build")
    x = _x((3, 4, 40), torch.bfloat16, device="cuda")
    opcheck(getattr(torch.ops.qkernels, name), _op_args(name, x))


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile():
    if not _cuda_op_available("dynamic_per_token_scaled_fp8_quant"):
        pytest.skip("no CUDA kernel in this build")
    x = _x((64, 4096), torch.bfloat16, device="cuda")
    f = lambda t: (qkernels.scaled_fp8_quant(t, per_token=True), qkernels.scaled_int8_quant(t, symmetric=False))
    eager = f(x)
    g = torch.cuda.CUDAGraph()
    static_x = x.clone()
    f(static_x)  # warm-up outside capture
    with torch.cuda.graph(g):
        graphed = f(static_x)
    static_x.copy_(x * 2)
    g.replay()
    again = f(x * 2)
    assert torch.equal(graphed[0][1], again[0][1]) and torch.equal(graphed[1][0], again[1][0])
    compiled = torch.compile(f, fullgraph=True)(x)
    assert torch.equal(compiled[0][1], eager[0][1]) and torch.equal(compiled[1][2], eager[1][2])


# ----------------------------------------------------------------- NaN / inf policy (qkernels.reference.quant)
NAN, INF = float("nan"), float("inf")


def _rows_with(values, cols=16, rows=3, seed=0):
    """[rows, cols] float32 Gaussian rows; row 1 gets ``values`` at its first positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 3
    x[1, :len(values)] = torch.tensor(values)
    return x


def _dynamic(name, x):
    """(q as float, scale, azp or None) of a dynamic op on CPU."""
    out = getattr(torch.ops.qkernels, name)(x)
    q, s = out[0], out[1]
    return q.float(), s, (out[2] if len(out) > 2 else None)


@pytest.mark.parametrize("name", ["dynamic_scaled_fp8_quant", "dynamic_per_token_scaled_fp8_quant",
                                  "dynamic_scaled_int8_quant", "dynamic_scaled_int8_quant_azp"])
def test_nan_only_touches_its_element(name):
    """One NaN is ignored by the scale (and zero point) reductions: every other output equals the
    output for the same input with that element set to 0; the NaN element itself is FP8 NaN / int8 -128."""
    x = _rows_with([NAN])
    clean = x.clone()
    clean[1, 0] = 0.0
    q, s, azp = _dynamic(name, x)
    q0, s0, azp0 = _dynamic(name, clean)
    assert torch.equal(s, s0) and bool(torch.isfinite(s).all())
    if azp is not None:
        assert torch.equal(azp, azp0)
    other = torch.ones_like(q, dtype=torch.bool)
    other[1, 0] = False
    assert torch.equal(q[other], q0[other])
    if "fp8" in name:
        assert torch.isnan(q[1, 0])
    else:
        assert q[1, 0] == -128


def test_inf_rows_per_token():
    """+inf in a per-token row: that row's scale is inf, its finite elements quantize to 0 (FP8,
    INT8 symmetric) or to the zero point -128 (asymmetric), the inf element to NaN / -128; the
    other rows are the same as without it. scale_ub bounds the scale and the inf saturates."""
    x = _rows_with([INF])
    finite = x.clone()
    finite[1] = 1.0
    for name, inf_elem, finite_elem in (("dynamic_per_token_scaled_fp8_quant", NAN, 0.0),
                                        ("dynamic_scaled_int8_quant", -128.0, 0.0),
                                        ("dynamic_scaled_int8_quant_azp", -128.0, -128.0)):
        q, s, azp = _dynamic(name, x)
        q0, s0, azp0 = _dynamic(name, finite)
        assert torch.isinf(s[1]).all() and torch.equal(s[[0, 2]], s0[[0, 2]]), name
        assert torch.equal(q[[0, 2]], q0[[0, 2]]), name
        assert (torch.isnan(q[1, 0]) if inf_elem != inf_elem else q[1, 0] == inf_elem), name
        assert bool((q[1, 1:] == finite_elem).all()), name
        if azp is not None:
            assert int(azp[1]) == -128 and torch.equal(azp[[0, 2]], azp0[[0, 2]])
    ub = torch.tensor([2.0])
    q, s = quant.scaled_fp8_quant(x, per_token=True, scale_ub=ub)
    assert float(s[1]) == pytest.approx(2.0 / 448) and float(q[1, 0].float()) == 448.0
    # a row holding -inf (asymmetric int8): zero point 0, every element -128
    q, s, azp = _dynamic("dynamic_scaled_int8_quant_azp", _rows_with([-INF]))
    assert int(azp[1]) == 0 and bool((q[1] == -128).all())


def test_inf_per_tensor_and_static():
    x = _rows_with([INF, -INF, NAN])
    q, s = quant.scaled_fp8_quant(x)  # dynamic per tensor: the scale is inf
    assert torch.isinf(s).all() and torch.isnan(q.float()[1, :3]).all()
    assert bool((q.float()[0] == 0).all())
    q = quant.scaled_fp8_quant(x, torch.tensor([0.5]))[0].float()  # static: saturates
    assert q[1, :2].tolist() == [448.0, -448.0] and torch.isnan(q[1, 2])
    q = quant.scaled_int8_quant(x, torch.tensor([0.5]))[0]
    assert q[1, :3].tolist() == [127, -128, -128]
    q = quant.scaled_int8_quant(x, torch.tensor([0.5]), torch.tensor([3], dtype=torch.int32), symmetric=False)[0]
    assert q[1, :3].tolist() == [127, -128, -128]


@pytest.mark.gpu
@pytest.mark.parametrize("values", [[NAN], [INF], [-INF], [INF, NAN, -INF]])
@pytest.mark.parametrize("name", ["dynamic_scaled_fp8_quant", "dynamic_per_token_scaled_fp8_quant",
                                  "dynamic_scaled_int8_quant", "dynamic_scaled_int8_quant_azp"])
def test_gpu_nonfinite_matches_reference(name, values):
    """The policy above is what the kernels do: CUDA outputs equal the CPU reference (NaN compared as
    NaN: its sign bit is not specified)."""
    x = _rows_with(values, cols=256)
    cpu = getattr(torch.ops.qkernels, name)(x)
    gpu = getattr(torch.ops.qkernels, name)(x.cuda())
    for a, b in zip(cpu, gpu):
        if a.dtype == torch.float8_e4m3fn:
            a, b = a.float(), b.float()
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=0, equal_nan=True)
