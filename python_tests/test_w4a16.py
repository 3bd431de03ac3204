"""W4A16: packing vs compressed-tensors, reference vs float64 math, repack, act-order, opcheck,
errors, and GPU kernels vs the reference."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels.ops import w4a16 as W
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import w4a16 as ref
from qkernels.testing.numerics import assert_close_rel, poison_

ACT_DTYPES = (torch.float16, torch.bfloat16)
OPS = qkernels.ops.family_ops()["w4a16"]


# ----------------------------------------------------------------- checkpoint-like inputs
def _ct():
    """compressed-tensors' own packing and compressor (the `test` extra; the GPU machine may lack it)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return PackedQuantizationCompressor, pack_to_int32, QuantizationArgs, QuantizationScheme


def _checkpoint(n, k, group_size, asym, act_order=False, device="cpu"):
    """Random compressed-tensors `pack-quantized` tensors. Packed with our reference packer, which
    test_unpack_matches_compressed_tensors_bit_exact proves bit-identical to compressed-tensors'
    (so the GPU tests run without that package)."""
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    groups = 1 if group_size == -1 else k // group_size
    scale = (torch.rand(n, groups) * 0.02 + 0.005).to(torch.bfloat16)
    zp_q = torch.randint(-8, 8, (n, groups), dtype=torch.int8)
    zp = ref.pack_int4((zp_q.int() + 8).t()).t().contiguous() if asym else None  # packed along N
    g_idx = None
    if act_order:
        g_idx = ref.default_g_idx(k, group_size)[torch.randperm(k)].contiguous()
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(ref.pack_int4(q.int() + 8)), to(scale), to(zp), to(g_idx)


def _x(shape, dtype, device="cpu"):
    return torch.randn(shape, device=device).to(dtype)


# ----------------------------------------------------------------- packing: compressed-tensors vs ours
def test_pack_check_value():
    PackedQuantizationCompressor, pack_to_int32, QuantizationArgs, QuantizationScheme = _ct()
    q = torch.tensor([[-8, -7, 0, 1, 2, 3, 7, -1]], dtype=torch.int8)
    assert pack_to_int32(q, 4).item() & 0xFFFFFFFF == 0x7FBA9810
    assert ref.pack_int4(q.int() + 8).item() & 0xFFFFFFFF == 0x7FBA9810
    assert ref.unpack_weight(torch.tensor([[0x7FBA9810]], dtype=torch.int32)).tolist() == q.tolist()


@pytest.mark.parametrize("n,k", [(64, 128), (72, 200), (5, 8)])
def test_unpack_matches_compressed_tensors_bit_exact(n, k, seed):
    PackedQuantizationCompressor, pack_to_int32, QuantizationArgs, QuantizationScheme = _ct()
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    assert torch.equal(ref.unpack_weight(pack_to_int32(q, 4), k), q.int())
    zp = torch.randint(-8, 8, (n, 3), dtype=torch.int8)  # zero points: packed along N
    assert torch.equal(ref.unpack_zero_points(pack_to_int32(zp, 4, packed_dim=0), n), zp.int() + 8)
    # the packing _checkpoint uses for zero points (along N) is compressed-tensors' too
    assert torch.equal(ref.pack_int4((zp.int() + 8).t()).t(), pack_to_int32(zp, 4, packed_dim=0))
    assert torch.equal(ref.pack_int4(q.int() + 8), pack_to_int32(q, 4))


@pytest.mark.parametrize("asym,group_size", list(itertools.product((False, True), (-1, 32, 128))))
def test_dequantize_matches_compressed_tensors_decompress(asym, group_size, seed):
    PackedQuantizationCompressor, pack_to_int32, QuantizationArgs, QuantizationScheme = _ct()
    n, k = 72, 256
    strategy = "channel" if group_size == -1 else "group"
    args = QuantizationArgs(num_bits=4, type="int", symmetric=not asym, strategy=strategy,
                            group_size=None if group_size == -1 else group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    groups = 1 if group_size == -1 else k // group_size
    state = {"weight": torch.randn(n, k), "weight_scale": torch.rand(n, groups) * 0.1 + 0.01}
    if asym:
        state["weight_zero_point"] = torch.randint(-8, 8, (n, groups), dtype=torch.int8)
    packed = PackedQuantizationCompressor.compress(state, scheme)
    theirs = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    ours = ref.dequantize(packed["weight_packed"], packed["weight_scale"], packed.get("weight_zero_point"),
                          group_size=group_size, dtype=torch.float32)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- repack
@pytest.mark.parametrize("act_order", (False, True))
def test_repack_round_trip(act_order, seed):
    wp, _, _, g_idx = _checkpoint(192, 384, 128, asym=False, act_order=act_order)
    perm = ref.act_order_perm(g_idx, 128) if act_order else None
    qweight = torch.ops.qkernels.w4a16_repack(wp, perm)
    assert qweight.shape == (384 // 16, 2 * 192) and qweight.dtype == torch.int32
    u = ref.unpack_int4(wp, 384)
    assert torch.equal(ref.unrepack(qweight), u[:, perm.long()] if act_order else u)


def test_repack_layout_matches_the_documented_fragment_map():
    """Word (k-tile kt, column tile nt, warp w, lane l): nibble i holds (k, n) as the README says."""
    n, k = 128, 256
    kk, nn = torch.meshgrid(torch.arange(k), torch.arange(n), indexing="xy")
    u = (kk * 7 + nn * 3) % 16  # [N, K], position-dependent nibbles
    qweight = ref.repack(ref.pack_int4(u))
    for kt, nt, w, lane in [(0, 0, 0, 0), (1, 1, 2, 13), (15, 1, 3, 31)]:
        word = qweight[kt, nt * 128 + w * 32 + lane].item() & 0xFFFFFFFF
        t, r = lane % 4, lane // 4
        expect = [(16 * kt + 2 * t + 8 * (i & 1) + (i >> 2), 64 * nt + 16 * w + r + 8 * ((i >> 1) & 1)) for i in range(8)]
        got = [(word >> (4 * i)) & 0xF for i in range(8)]
        assert got == [int(u[nq, kq]) for kq, nq in expect], (kt, nt, w, lane)


# ----------------------------------------------------------------- reference GEMM vs float64 math
def _check_gemm_vs_float64(x, wp, scale, zp, g_idx, group_size, bias=None):
    w = W.prepare_weight(wp, scale, zp, g_idx, group_size, act_dtype=x.dtype)
    out = W.gemm(x, w, bias)
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], wp.shape[0])
    # exact math on the act-dtype weights the kernel multiplies: only the output rounding differs
    w64 = ref.dequantize(wp, scale, zp, g_idx, group_size, dtype=x.dtype).double()
    exp = x.double() @ w64.t() + (bias.double() if bias is not None else 0.0)
    assert_close_rel(out, exp, 4e-3 if x.dtype == torch.bfloat16 else 1e-3, "gemm vs float64 (act-dtype weights)")
    # and close to the unrounded checkpoint weights
    exact = x.double() @ ref.dequantize(wp, scale, zp, g_idx, group_size, dtype=torch.float64).t()
    assert_close_rel(out - (bias if bias is not None else 0), exact, 1e-2, "gemm vs float64 (exact weights)")


@pytest.mark.parametrize("dtype,asym,group_size", list(itertools.product(ACT_DTYPES, (False, True), ref.GROUP_SIZES)))
def test_reference_gemm_vs_float64(dtype, asym, group_size, seed):
    wp, scale, zp, _ = _checkpoint(128, 256, group_size, asym)
    _check_gemm_vs_float64(_x((5, 256), dtype), wp, scale, zp, None, group_size)


@pytest.mark.parametrize("dtype,asym", list(itertools.product(ACT_DTYPES, (False, True))))
def test_reference_gemm_act_order_and_bias(dtype, asym, seed):
    wp, scale, zp, g_idx = _checkpoint(64, 512, 64, asym, act_order=True)
    assert ref.act_order_perm(g_idx, 64) is not None
    _check_gemm_vs_float64(_x((2, 3, 512), dtype), wp, scale, zp, g_idx, 64, bias=_x((64,), dtype))


def test_trivial_g_idx_needs_no_permutation(seed):
    wp, scale, _, _ = _checkpoint(64, 256, 128, asym=False)
    w = W.prepare_weight(wp, scale, g_idx=ref.default_g_idx(256, 128), group_size=128)
    assert w.perm is None and not w.has_zp and w.scales.shape == (2, 64) and w.scales.dtype == torch.bfloat16


def test_prepare_weight_layout(seed):
    wp, scale, zp, _ = _checkpoint(128, 256, 32, asym=True)
    w = W.prepare_weight(wp, scale, zp, group_size=32, act_dtype=torch.float16)
    assert (w.size_n, w.size_k, w.group_size, w.has_zp) == (128, 256, 32, True)
    assert w.qweight.shape == (16, 256) and w.scales.shape == w.zeros.shape == (8, 128)
    assert torch.equal(w.zeros.t().int(), ref.unpack_zero_points(zp, 128))
    assert torch.equal(w.scales.t(), scale.half())


# ----------------------------------------------------------------- opcheck (CPU; CUDA below)
def _op_cases(device="cpu", dtype=torch.bfloat16):
    wp, scale, zp, g_idx = _checkpoint(128, 256, 64, asym=True, act_order=True, device=device)
    w = W.prepare_weight(wp, scale, zp, g_idx, 64, act_dtype=dtype)
    x, bias = _x((3, 256), dtype, device), _x((128,), dtype, device)
    gemm = torch.ops.qkernels.w4a16_gemm
    return {
        "w4a16_repack": [(wp, None), (wp, w.perm)],
        "w4a16_gemm": [
            (x, w.qweight, w.scales, w.zeros, w.perm, bias, 128, 256, 64),
            (x[:1], w.qweight, w.scales, None, None, None, 128, 256, 64),
        ],
    }, gemm


@pytest.mark.parametrize("name", OPS)
def test_opcheck_cpu(name, seed):
    cases, _ = _op_cases()
    for args in cases[name]:
        opcheck(getattr(torch.ops.qkernels, name), args)


# ----------------------------------------------------------------- errors
def test_error_odd_n_and_k():
    with pytest.raises(QKernelsInputError, match=r"N \(output features\) = 96 must be a multiple of 64.*Pad"):
        W.prepare_weight(torch.zeros(96, 16, dtype=torch.int32), torch.ones(96, 1))
    with pytest.raises(QKernelsInputError, match=r"K \(input features\) = 200 must be a multiple of 128"):
        W.prepare_weight(torch.zeros(64, 25, dtype=torch.int32), torch.ones(64, 1))
    with pytest.raises(QKernelsInputError, match=r"K \(input features\) = 64 must be a multiple of 128"):
        torch.ops.qkernels.w4a16_repack(torch.zeros(64, 8, dtype=torch.int32))


def test_error_wrong_dtypes(seed):
    wp, scale, _, _ = _checkpoint(64, 128, -1, asym=False)
    with pytest.raises(QKernelsInputError, match="weight_packed has dtype int64; supported: int32"):
        W.prepare_weight(wp.long(), scale)
    with pytest.raises(QKernelsInputError, match="act_dtype = torch.float32; supported: float16, bfloat16"):
        W.prepare_weight(wp, scale, act_dtype=torch.float32)
    w = W.prepare_weight(wp, scale, act_dtype=torch.float16)
    with pytest.raises(QKernelsInputError, match="x has dtype torch.bfloat16 but the weight was prepared for"):
        W.gemm(torch.randn(2, 128, dtype=torch.bfloat16), w)
    with pytest.raises(QKernelsInputError, match="a has dtype float32; supported: float16, bfloat16"):
        torch.ops.qkernels.w4a16_gemm(torch.randn(2, 128), w.qweight, w.scales, None, None, None, 64, 128, -1)
    with pytest.raises(QKernelsInputError, match="scales has dtype bfloat16"):
        torch.ops.qkernels.w4a16_gemm(torch.randn(2, 128).half(), w.qweight, w.scales.bfloat16(), None, None, None,
                                      64, 128, -1)


def test_error_group_size(seed):
    wp, scale, _, _ = _checkpoint(64, 256, 128, asym=False)
    with pytest.raises(QKernelsInputError, match=r"group_size = 48; supported: -1, 32, 64, 128"):
        W.prepare_weight(wp, torch.ones(64, 5), group_size=48)
    with pytest.raises(QKernelsInputError, match=r"weight_scale is .* \(64, 2\); expected a float tensor \[N, G\] = \[64, 4\]"):
        W.prepare_weight(wp, scale, group_size=64)  # scales of group 128 do not fit group 64


def test_error_zero_points(seed):
    wp, scale, zp, _ = _checkpoint(64, 256, 128, asym=True)
    with pytest.raises(QKernelsInputError, match="asymmetric but weight_zero_point is None"):
        W.prepare_weight(wp, scale, None, group_size=128, symmetric=False)
    with pytest.raises(QKernelsInputError, match="symmetric but a weight_zero_point was given"):
        W.prepare_weight(wp, scale, zp, group_size=128, symmetric=True)
    with pytest.raises(QKernelsInputError, match=r"weight_zero_point has shape \(2, 8\); expected \[ceil\(N/8\), G\]"):
        W.prepare_weight(wp, scale, zp.t().contiguous(), group_size=128)
    w = W.prepare_weight(wp, scale, zp, group_size=128)
    w.zeros = None
    with pytest.raises(QKernelsInputError, match="has_zp = True but zeros is None"):
        W.gemm(torch.randn(1, 256, dtype=torch.bfloat16), w)


def test_error_g_idx(seed):
    wp, scale, _, g_idx = _checkpoint(64, 256, 64, asym=False, act_order=True)
    with pytest.raises(QKernelsInputError, match=r"g_idx has shape \(128,\); expected \[K\] = \[256\]"):
        W.prepare_weight(wp, scale, g_idx=g_idx[:128], group_size=64)
    uneven = g_idx.clone()
    uneven[(g_idx == 0).nonzero()[0]] = 1
    with pytest.raises(QKernelsInputError, match="exactly group_size=64 columns in each of the 4 groups"):
        W.prepare_weight(wp, scale, g_idx=uneven, group_size=64)


def test_error_shapes_of_kernel_tensors(seed):
    wp, scale, _, _ = _checkpoint(64, 256, 128, asym=False)
    w = W.prepare_weight(wp, scale, group_size=128)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    gemm = torch.ops.qkernels.w4a16_gemm
    with pytest.raises(QKernelsInputError, match=r"a has shape \(2, 128\); its last dim must be K = 256"):
        gemm(x[:, :128].contiguous(), w.qweight, w.scales, None, None, None, 64, 256, 128)
    with pytest.raises(QKernelsInputError, match=r"b_q has shape \(16, 64\); expected \[K/16, 2N\]"):
        gemm(x, w.qweight[:, :64].contiguous(), w.scales, None, None, None, 64, 256, 128)
    with pytest.raises(QKernelsInputError, match=r"scales has shape \(64, 2\); expected \[G, N\]"):
        gemm(x, w.qweight, w.scales.t().contiguous(), None, None, None, 64, 256, 128)
    with pytest.raises(QKernelsInputError, match=r"perm has shape \(255,\); expected \[K\]"):
        gemm(x, w.qweight, w.scales, None, torch.arange(255, dtype=torch.int32), None, 64, 256, 128)
    with pytest.raises(QKernelsInputError, match=r"bias has shape \(65,\); expected \[N\]"):
        gemm(x, w.qweight, w.scales, None, None, torch.zeros(65, dtype=torch.bfloat16), 64, 256, 128)
    strided = torch.arange(256, dtype=torch.int32).repeat_interleave(2)[::2]  # 0..K-1, a stride of 2
    with pytest.raises(QKernelsInputError, match=r"perm .*must be contiguous"):  # the repack kernel reads it raw
        torch.ops.qkernels.w4a16_repack(wp, strided)
    with pytest.raises(QKernelsInputError, match=r"perm .*must be contiguous"):
        gemm(x, w.qweight, w.scales, None, strided, None, 64, 256, 128)
    with pytest.raises(QKernelsInputError, match=r"bias .*contiguous"):  # as the CUDA glue requires
        gemm(x, w.qweight, w.scales, None, None, torch.zeros(128, dtype=torch.bfloat16)[::2], 64, 256, 128)


# ----------------------------------------------------------------- GPU: CUDA kernels vs reference
def _cuda_op_available(name):
    from qkernels import _loader

    return _loader.has_cuda_kernel(name)


def _need_cuda(*names):
    for name in names:
        if not _cuda_op_available(name):
            pytest.skip(f"qkernels::{name} has no CUDA kernel in this build")


# M: decode sizes, odd sizes, each M bucket edge (16/32/48/64), several row slices
GPU_MS = (1, 2, 7, 16, 17, 33, 48, 64, 65, 127, 200, 1024, 4096)
# (N, K): one column tile with a long K (every block shares the tile: the most pieces per tile),
# Llama-like shapes, N with more column tiles than SMs, K % 256 == 128 (a half last iteration
# for M <= 16), and the small MoE expert shapes of qwen3-30b-a3b (fewer tiles than SMs: split-K)
GPU_NK = ((64, 8192), (1024, 4096), (4096, 512), (14336, 256), (1024, 384), (2048, 768), (1536, 2048))


def _gpu_vs_reference(m, n, k, dtype, group_size, asym, act_order, bias=False):
    wp, scale, zp, g_idx = _checkpoint(n, k, group_size, asym, act_order, device="cuda")
    w = W.prepare_weight(wp, scale, zp, g_idx, group_size, act_dtype=dtype)
    x = _x((m, k), dtype, "cuda")
    b = _x((n,), dtype, "cuda") if bias else None
    out = W.gemm(x, w, b)
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    exp = torch.ops.qkernels.w4a16_gemm(x.cpu(), *map(cpu, (w.qweight, w.scales, w.zeros, w.perm, b)), n, k, group_size)
    what = f"M={m} N={n} K={k} {dtype} g={group_size} asym={asym} act_order={act_order}"
    # same act-dtype weights, fp32 accumulation in another order: output-rounding-level differences
    assert_close_rel(out, exp, 2e-3 if dtype == torch.float16 else 8e-3, what)
    return out, x, w, b


@pytest.mark.gpu
def test_gpu_repack_matches_reference_bit_exact(seed):
    _need_cuda("w4a16_repack")
    for act_order in (False, True):
        wp, _, _, g_idx = _checkpoint(4096, 1024, 128, asym=False, act_order=act_order, device="cuda")
        perm = ref.act_order_perm(g_idx, 128) if act_order else None
        out = torch.ops.qkernels.w4a16_repack(wp, perm)
        assert torch.equal(out.cpu(), ref.repack(wp.cpu(), None if perm is None else perm.cpu()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,asym,group_size", list(itertools.product(ACT_DTYPES, (False, True), ref.GROUP_SIZES)))
def test_gpu_formats_and_group_sizes(dtype, asym, group_size, seed):
    _need_cuda("w4a16_repack", "w4a16_gemm")
    for m in (1, 33, 200):
        _gpu_vs_reference(m, 1024, 1152, dtype, group_size, asym, act_order=False)  # K % 256 == 128


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,asym", list(itertools.product(ACT_DTYPES, (False, True))))
def test_gpu_act_order(dtype, asym, seed):
    _need_cuda("w4a16_repack", "w4a16_gemm")
    for m, group_size in ((1, 128), (17, 32), (65, 64)):
        _gpu_vs_reference(m, 1024, 2048, dtype, group_size, asym, act_order=True, bias=True)


@pytest.mark.gpu
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_all_m_and_shapes(m, seed):
    _need_cuda("w4a16_repack", "w4a16_gemm")
    for n, k in GPU_NK:
        if m * max(n, k) > 4096 * 4096:
            continue  # keep the CPU reference affordable
        _gpu_vs_reference(m, n, k, torch.bfloat16, 128, asym=False, act_order=False, bias=m % 2 == 1)


@pytest.mark.gpu
def test_gpu_deterministic_and_leading_dims(seed):
    """Shared tiles add their partial sums in piece order whichever block arrives last: repeated
    calls are bit-identical, in every M bucket and in the stream-K, split-K and data-parallel
    partitions (the schedule says which one each case uses)."""
    _need_cuda("w4a16_repack", "w4a16_gemm")
    out, x, w, b = _gpu_vs_reference(5, 64, 8192, torch.float16, 32, asym=True, act_order=True)
    for _ in range(3):
        assert torch.equal(W.gemm(x, w, b), out)
    out3 = W.gemm(x.view(5, 1, 8192), w, b)
    assert out3.shape == (5, 1, 64) and torch.equal(out3.view(5, 64), out)
    for m, n, k in ((1, 4096, 4096), (16, 28672, 1024), (33, 4096, 4096), (64, 1536, 2048), (100, 2048, 4096)):
        out, x, w, b = _gpu_vs_reference(m, n, k, torch.bfloat16, 128, asym=False, act_order=False, bias=True)
        for _ in range(5):
            assert torch.equal(W.gemm(x, w, b), out), (m, n, k)


@pytest.mark.gpu
def test_gpu_schedule_modes_match_reference(seed):
    """One case per partition mode on this GPU's SM count, found from the schedule itself."""
    _need_cuda("w4a16_repack", "w4a16_gemm")
    try:
        W.schedule(1, 64, 128, 1)
    except RuntimeError as e:
        pytest.skip(str(e))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    seen = set()
    for m in (1, 16, 40, 64, 130):
        for n, k in ((64, 8192), (1536, 2048), (4096, 4096), (28672, 1024), (2048, 768)):
            meta = W.schedule(m, n, k, sms).meta
            mode = "data-parallel" if meta["iters"] == meta["k_tiles"] else (
                "split-K" if meta["k_tiles"] % meta["iters"] == 0 else "stream-K")
            if (mode, meta["m_blocks"]) in seen:
                continue
            seen.add((mode, meta["m_blocks"]))
            _gpu_vs_reference(m, n, k, torch.float16, 64, asym=True, act_order=False, bias=True)
    assert {"data-parallel", "stream-K"} <= {mode for mode, _ in seen}, seen


@pytest.mark.gpu
def test_gpu_output_fully_written():
    _need_cuda("w4a16_repack", "w4a16_gemm")
    wp, scale, _, _ = _checkpoint(256, 512, 128, asym=False, device="cuda")
    w = W.prepare_weight(wp, scale, group_size=128)
    x = _x((70, 512), torch.bfloat16, "cuda")
    # Stale NaNs in blocks of the output's size (the caching allocator's small pool): freed just
    # before the call, so the output reuses one of them and any unwritten element stays NaN.
    junk = [poison_(torch.empty(70, 256, dtype=torch.bfloat16, device="cuda")) for _ in range(128)]
    del junk
    out = W.gemm(x, w)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_opcheck_cuda(name, seed):
    _need_cuda(*OPS)
    cases, _ = _op_cases("cuda")
    for args in cases[name]:
        opcheck(getattr(torch.ops.qkernels, name), args)


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile(seed):
    _need_cuda("w4a16_repack", "w4a16_gemm")
    wp, scale, zp, g_idx = _checkpoint(2048, 1024, 128, asym=True, act_order=True, device="cuda")
    w = W.prepare_weight(wp, scale, zp, g_idx, 128, act_dtype=torch.bfloat16)
    x = _x((8, 1024), torch.bfloat16, "cuda")
    eager = W.gemm(x, w)
    static_x = x.clone()
    W.gemm(static_x, w)  # warm-up outside capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graphed = W.gemm(static_x, w)
    for scale_x in (2.0, -0.5):
        static_x.copy_(x * scale_x)
        g.replay()
        assert torch.equal(graphed, W.gemm(x * scale_x, w))  # locks were left zero: replays stay exact
    compiled = torch.compile(lambda t: W.gemm(t, w), fullgraph=True)(x)
    assert torch.equal(compiled, eager)
