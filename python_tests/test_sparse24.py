"""2:4 sparse FP8: reference format vs independent math, opcheck, errors, GPU kernels vs reference."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels.ops import sparse24 as S
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import sparse24 as ref
from qkernels.testing.numerics import assert_close_rel, poison_

FP8 = torch.float8_e4m3fn
OPS = qkernels.ops.family_ops()["sparse24"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- helpers (independent of the reference)
def random_24(n: int, k: int, device="cpu", keep_pattern: str = "random") -> torch.Tensor:
    """A random 2:4 fp8 weight [n, k]: in every group of 4, 0, 1 or 2 non-zeros at random
    positions (``keep_pattern="two"``: exactly 2). Non-zero values are never +-0 and
    dropped positions are +0, so the round trip must be bit-exact."""
    g = k // 4
    scores = torch.rand(n, g, 4, device=device)
    kept = torch.zeros(n, g, 4, dtype=torch.bool, device=device).scatter_(2, scores.topk(2, -1).indices, True)
    if keep_pattern == "random":  # drop 0, 1 or 2 of the kept ones: groups with 3 or 4 zeros
        kept &= torch.rand(n, g, 4, device=device) > 0.25
    mag = torch.rand(n, g, 4, device=device) * 3 + 0.05  # |v| >= 0.05: never rounds to 0 in e4m3
    sign = torch.where(torch.rand(n, g, 4, device=device) > 0.5, 1.0, -1.0)
    w = torch.where(kept, mag * sign, torch.zeros((), device=device))
    return w.reshape(n, k).to(FP8)


def dense_scaled_mm(a, w, a_s, b_s, out_dtype, bias=None):
    """The dense GEMM, written independently: float64 accumulation, scales applied after."""
    acc = a.double() @ w.double().t()
    out = acc * a_s.double().reshape(-1, 1) * b_s.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


def fp8_acts(m, k, device="cpu"):
    return (torch.randn(m, k, device=device) * 2).to(FP8)


def scales(m, n, per_token, per_channel, device="cpu"):
    a_s = torch.rand(m, 1, device=device) + 0.5 if per_token else torch.tensor([0.7], device=device)
    b_s = torch.rand(n, device=device) * 0.02 + 0.01 if per_channel else torch.tensor([0.013], device=device)
    return a_s, b_s


def u8(t):
    return t.contiguous().view(torch.uint8)


# ----------------------------------------------------------------- 2:4 checks
def test_is_24_and_group_counts():
    w = torch.zeros(8, 8)
    assert S.is_24(w)
    w[3, 4:7] = 1.0  # 3 non-zeros in row 3, group 1
    assert not S.is_24(w)
    assert ref.group_nonzeros(w).tolist()[3] == [0, 3]
    assert not S.is_24(torch.zeros(8, 6))  # K not a multiple of 4
    assert S.is_24(random_24(16, 128))


def test_negative_zero_counts_as_zero():
    w = torch.tensor([[-0.0, -0.0, 1.0, 2.0] * 32] * 8).to(FP8)
    assert S.is_24(w)
    sw = S.compress(w)
    assert torch.equal(S.decompress(sw).float(), w.float())  # numerically equal; the dropped -0 becomes +0


def test_check_24_names_rows_and_groups():
    w = random_24(16, 128)
    wb = w.view(torch.uint8)
    wb[5, 8:12] = torch.tensor([0x38, 0x38, 0x38, 0x00], dtype=torch.uint8)  # 1.0 x3: group 2 of row 5
    wb[9, 124:128] = 0x40  # 2.0 x4: group 31 of row 9
    with pytest.raises(QKernelsInputError) as e:
        S.check_24(w, "layer.weight")
    msg = str(e.value)
    assert "layer.weight (16, 128) is not 2:4 sparse" in msg
    assert "2 group(s) of 4 in 2 row(s)" in msg
    assert "row 5 group 2 (K 8..11: 3 non-zeros)" in msg and "row 9 group 31 (K 124..127: 4 non-zeros)" in msg
    assert "never pruned" in msg
    with pytest.raises(QKernelsInputError, match="is not 2:4 sparse"):
        S.compress(w)


def test_check_24_lists_at_most_a_few_examples():
    with pytest.raises(QKernelsInputError) as e:
        S.check_24(torch.ones(64, 128))
    assert "2048 group(s) of 4 in 64 row(s)" in str(e.value)
    assert str(e.value).count("non-zeros)") == 5


# ----------------------------------------------------------------- format: reference vs independent math
@pytest.mark.parametrize("n,k", [(8, 128), (64, 256), (72, 384), (200, 128)])
def test_round_trip_bit_exact(n, k, seed):
    w = random_24(n, k)
    sw = S.compress(w)
    assert sw.values.shape == (n, k // 2) and sw.values.dtype == FP8
    assert sw.meta.shape == (k // 128, -(-n // 64), 64, 16) and sw.meta.dtype == torch.uint8
    assert (sw.size_n, sw.size_k) == (n, k)
    assert torch.equal(u8(S.decompress(sw)), u8(w))


def test_special_groups_metadata():
    """Kept positions per group pattern, decoded by hand from the CUTLASS layout."""
    x = 0x38  # 1.0
    patterns = {  # group bytes -> (kept positions, kept values)
        (0, 0, 0, 0): ((0, 1), (0, 0)),
        (x, 0, 0, 0): ((0, 1), (x, 0)),
        (0, x, 0, 0): ((0, 1), (0, x)),
        (0, 0, x, 0): ((0, 2), (0, x)),
        (0, 0, 0, x): ((0, 3), (0, x)),
        (x, 0, 0, x + 1): ((0, 3), (x, x + 1)),
        (0, x, x + 1, 0): ((1, 2), (x, x + 1)),
        (0, 0, x, x + 1): ((2, 3), (x, x + 1)),
        (0x80, 0, x, 0): ((0, 2), (0x80, x)),  # -0 is a zero; kept as a filler it keeps its bits
    }
    groups = list(patterns)
    row = torch.tensor([b for gr in groups for b in gr] + [0] * (128 - 4 * len(groups)), dtype=torch.uint8)
    w = row.repeat(8, 1).view(FP8)
    sw = S.compress(w)
    meta_row = sw.meta[0, 0, 3]  # row 3: K block 0, row block 0, row-in-block 3, 16 bytes
    vals = sw.values[3].view(torch.uint8)
    for gi, gr in enumerate(groups):
        nib = (meta_row[gi // 2].item() >> (4 * (gi % 2))) & 0xF
        (i0, i1), (v0, v1) = patterns[gr]
        assert nib == i0 | (i1 << 2), (gr, bin(nib))
        assert vals[2 * gi: 2 * gi + 2].tolist() == [v0, v1], gr
    # the all-zero tail groups and the padding rows: kept (0, 1) -> 0x44
    assert torch.all(meta_row[len(groups) // 2 + 1:] == 0x44)
    assert torch.all(sw.meta[:, 0, 8:] == 0x44)


def test_meta_layout_blocks():
    """Byte j of row n sits at meta[j // 16, n // 64, n % 64, j % 16]: mark one group per (row, K block)."""
    n, k = 136, 384
    w = torch.zeros(n, k, dtype=torch.uint8)
    for r, kk in [(0, 0), (63, 120), (64, 128), (135, 380), (100, 256 + 40)]:
        w[r, kk] = 0x38  # one non-zero at position kk % 4 of its group
    sw = S.compress(w.view(FP8))
    for r, kk in [(0, 0), (63, 120), (64, 128), (135, 380), (100, 256 + 40)]:
        j = kk // 8
        byte = sw.meta[j // 16, r // 64, r % 64, j % 16].item()
        nib = (byte >> (4 * ((kk // 4) % 2))) & 0xF
        pos = kk % 4
        expect = (0 | (1 << 2)) if pos in (0, 1) else (0 | (pos << 2))
        assert nib == expect, (r, kk, hex(byte))


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("per_token,per_channel", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_reference_gemm_equals_dense(m, per_token, per_channel, out_dtype, seed):
    n, k = 72, 256
    w = random_24(n, k)
    sw = S.compress(w)
    a = fp8_acts(m, k)
    a_s, b_s = scales(m, n, per_token, per_channel)
    bias = torch.randn(n).to(out_dtype)
    out = S.scaled_mm(a, sw, a_s, b_s, out_dtype, bias)
    expect = dense_scaled_mm(a, w, a_s, b_s, out_dtype, bias)
    assert out.shape == (m, n) and out.dtype == out_dtype
    assert_close_rel(out, expect, 1e-2, "reference sparse vs dense")
    assert_close_rel(S.scaled_mm(a, sw, a_s, b_s, out_dtype), dense_scaled_mm(a, w, a_s, b_s, out_dtype), 1e-2, "no bias")


@pytest.mark.parametrize("shape", [(1, 128), (128, 1), (1, 1)])
def test_b_scales_shapes_accepted(shape, seed):
    n = 128
    w, a = random_24(n, 128), fp8_acts(2, 128)
    b_s = torch.rand(shape) + 0.5
    out = S.scaled_mm(a, S.compress(w), torch.tensor([1.0]), b_s, torch.bfloat16)
    assert_close_rel(out, dense_scaled_mm(a, w, torch.tensor([1.0]), b_s, torch.bfloat16), 1e-2, str(shape))


def test_m_zero():
    sw = S.compress(random_24(8, 128))
    out = S.scaled_mm(torch.empty(0, 128, dtype=FP8), sw, torch.tensor([1.0]), torch.tensor([1.0]), torch.float16)
    assert out.shape == (0, 8)


# ----------------------------------------------------------------- opcheck (fakes + schemas)
def _mm_args(device="cpu", m=5, n=64, k=256, bias=True):
    sw = S.compress(random_24(n, k, device))
    a_s, b_s = scales(m, n, True, True, device)
    b = torch.randn(n, device=device).to(torch.bfloat16) if bias else None
    return (fp8_acts(m, k, device), sw.values, sw.meta, a_s.reshape(-1), b_s, torch.bfloat16, b)


# opcheck's test_schema compares inputs with torch.allclose, which has no fp8 kernel: the
# schema's "no input is mutated" promise is checked bitwise by _opcheck below instead.
OPCHECK_UTILS = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


def _opcheck(op, args):
    before = [u8(x).clone() if isinstance(x, torch.Tensor) else x for x in args]
    opcheck(op, args, test_utils=OPCHECK_UTILS)
    op(*args)
    for b, x in zip(before, args):
        if isinstance(x, torch.Tensor):
            assert torch.equal(b, u8(x)), "an input was mutated"


def test_opcheck_compress():
    _opcheck(torch.ops.qkernels.sparse24_compress.default, (random_24(64, 256),))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_scaled_mm(bias, seed):
    _opcheck(torch.ops.qkernels.sparse24_scaled_mm.default, _mm_args(bias=bias))


def test_opcheck_supported():
    opcheck(torch.ops.qkernels.sparse24_supported.default, (90,), test_utils=("test_schema",))


def test_supported_op():
    assert torch.ops.qkernels.sparse24_supported(80) is False
    assert S.supported(89) is False and S.supported(100) is False
    from qkernels import _loader

    sm90_built = _loader.library_path is not None and "SM90" in _loader.build_info.get("groups", {}).get("sparse24", {})
    assert S.supported(90) is sm90_built


def test_every_op_listed():
    assert set(OPS) == {"sparse24_compress", "sparse24_scaled_mm", "sparse24_supported"}


def test_compiles_with_torch_compile_cpu(seed):
    args = _mm_args()
    f = torch.compile(lambda *x: torch.ops.qkernels.sparse24_scaled_mm(*x), fullgraph=True, backend="eager")
    assert torch.equal(f(*args), torch.ops.qkernels.sparse24_scaled_mm(*args))


# ----------------------------------------------------------------- errors
def test_compress_errors():
    with pytest.raises(QKernelsInputError, match=r"w has dtype bfloat16; supported: float8_e4m3fn"):
        S.compress(torch.zeros(8, 128, dtype=torch.bfloat16))
    with pytest.raises(QKernelsInputError, match=r"K\) = 96 must be a multiple of 128.*dense FP8"):
        S.compress(torch.zeros(8, 96, dtype=FP8))
    with pytest.raises(QKernelsInputError, match=r"N\) = 12 must be a multiple of 8"):
        S.compress(torch.zeros(12, 128, dtype=FP8))
    with pytest.raises(QKernelsInputError, match="must be 2-D"):
        S.compress(torch.zeros(2, 8, 128, dtype=FP8))
    with pytest.raises(QKernelsInputError, match="contiguous"):
        S.compress(torch.zeros(128, 8, dtype=FP8).t())
    with pytest.raises(QKernelsInputError, match="not 2:4 sparse"):  # the op itself never prunes either
        torch.ops.qkernels.sparse24_compress(torch.ones(8, 128).to(FP8))


def test_scaled_mm_errors():
    a, values, meta, a_s, b_s, dt, bias = _mm_args()
    mm = torch.ops.qkernels.sparse24_scaled_mm
    with pytest.raises(QKernelsInputError, match="a has dtype bfloat16"):
        mm(a.to(torch.bfloat16), values, meta, a_s, b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match="a_scales has dtype float16; supported: float32"):
        mm(a, values, meta, a_s.half(), b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match=r"a_scales has shape \(3,\).*expected 1 \(per tensor\) or M = 5"):
        mm(a, values, meta, a_s[:3], b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match=r"b_scales has shape \(7,\).*N = 64"):
        mm(a, values, meta, a_s, b_s[:7], dt, bias)
    with pytest.raises(QKernelsInputError, match="out_dtype torch.float32 is not supported"):
        mm(a, values, meta, a_s, b_s, torch.float32, None)
    with pytest.raises(QKernelsInputError, match="bias has dtype float16"):
        mm(a, values, meta, a_s, b_s, dt, bias.half())
    with pytest.raises(QKernelsInputError, match=r"a \(5, 128\) has K = 128; the compressed weight has K = 256"):
        mm(a[:, :128].contiguous(), values, meta, a_s, b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match="meta has shape .* pass what sparse24_compress returned"):
        mm(a, values, meta[:1], a_s, b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match=r"K \(a.shape\[1\]\) = 192 must be a multiple of 128"):
        mm(fp8_acts(5, 192), values[:, :96].contiguous(), meta, a_s, b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match="row stride 264 must be >= K and a multiple of 16"):
        mm(fp8_acts(5, 264)[:, :256], values, meta, a_s, b_s, dt, bias)
    with pytest.raises(QKernelsInputError, match="row stride 128 must be >= K"):  # overlapping rows
        mm(fp8_acts(6, 128).view(-1)[:5 * 128 + 256].as_strided((5, 256), (128, 1)), values, meta, a_s, b_s, dt, bias)


# ----------------------------------------------------------------- GPU (H100 / H200)
gpu = pytest.mark.gpu
needs_sm90 = pytest.mark.skipif(
    not (torch.cuda.is_available() and S.supported(10 * torch.cuda.get_device_capability()[0]
                                                   + torch.cuda.get_device_capability()[1])),
    reason="needs an sm_90 GPU and the SM90 sparse24 kernels built",
)


@gpu
@needs_sm90
@pytest.mark.parametrize("n,k", [(64, 128), (200, 384), (4096, 4096), (1024, 14336)])
def test_gpu_compress_matches_reference_bytes(n, k, seed):
    w = random_24(n, k, "cuda")
    v_gpu, m_gpu = torch.ops.qkernels.sparse24_compress(w)
    v_ref, m_ref = ref.compress(w.cpu())
    assert torch.equal(u8(m_gpu).cpu(), u8(m_ref)), "metadata bytes differ from the reference"
    assert torch.equal(u8(v_gpu).cpu(), u8(v_ref)), "values differ from the reference"
    assert torch.equal(u8(ref.decompress(v_gpu, m_gpu)), u8(w))


@gpu
@needs_sm90
def test_gpu_compress_rejects_non_24():
    w = random_24(64, 256, "cuda").view(torch.uint8)
    w[7, 0:4] = 0x38
    with pytest.raises(RuntimeError, match="1 group\\(s\\) of 4 have more than 2 non-zeros"):
        torch.ops.qkernels.sparse24_compress(w.view(FP8))


# M across every bucket edge (32, 128) and odd sizes; Llama-like N, K
GPU_MS = [1, 2, 7, 16, 31, 32, 33, 100, 128, 129, 255, 1000, 2048, 4097, 8192]


@gpu
@needs_sm90
@pytest.mark.parametrize("m", GPU_MS)
@pytest.mark.parametrize("per_token,per_channel", list(itertools.product([False, True], repeat=2)))
def test_gpu_gemm_vs_dense_reference(m, per_token, per_channel, seed):
    n, k = 1024, 4096
    w = random_24(n, k, "cuda")
    sw = S.compress(w)
    a = fp8_acts(m, k, "cuda")
    a_s, b_s = scales(m, n, per_token, per_channel, "cuda")
    for out_dtype in (torch.bfloat16, torch.float16):
        for bias in (None, torch.randn(n, device="cuda").to(out_dtype)):
            out = S.scaled_mm(a, sw, a_s, b_s, out_dtype, bias)
            expect = dense_scaled_mm(a, w, a_s, b_s, out_dtype, bias)
            assert_close_rel(out, expect, 1e-2, f"m={m} tok={per_token} ch={per_channel} {out_dtype} bias={bias is not None}")


@gpu
@needs_sm90
@pytest.mark.parametrize("n,k", [(8, 128), (72, 256), (6144, 4096), (4096, 14336), (28672, 8192)])
def test_gpu_gemm_shapes(n, k, seed):
    for m in (1, 77, 300):
        w, a = random_24(n, k, "cuda"), fp8_acts(m, k, "cuda")
        a_s, b_s = scales(m, n, True, True, "cuda")
        out = S.scaled_mm(a, S.compress(w), a_s, b_s, torch.bfloat16)
        assert_close_rel(out, dense_scaled_mm(a, w, a_s, b_s, torch.bfloat16), 1e-2, f"{m}x{n}x{k}")


@gpu
@needs_sm90
def test_gpu_matches_cpu_reference_op(seed):
    args = _mm_args("cuda", m=33, n=256, k=512)
    out = torch.ops.qkernels.sparse24_scaled_mm(*args)
    expect = torch.ops.qkernels.sparse24_scaled_mm(*[x.cpu() if isinstance(x, torch.Tensor) else x for x in args])
    assert_close_rel(out, expect, 1e-2, "CUDA vs CPU reference op")


@gpu
@needs_sm90
def test_gpu_strided_activations(seed):
    w, big = random_24(128, 256, "cuda"), fp8_acts(9, 512, "cuda")
    a = big[:, :256]  # row stride 512
    one = torch.tensor([1.0], device="cuda")
    out = S.scaled_mm(a, S.compress(w), one, one, torch.bfloat16)
    assert_close_rel(out, dense_scaled_mm(a, w, one, one, torch.bfloat16), 1e-2, "strided a")


@gpu
@needs_sm90
def test_gpu_opcheck(seed):
    _opcheck(torch.ops.qkernels.sparse24_scaled_mm.default, _mm_args("cuda"))
    _opcheck(torch.ops.qkernels.sparse24_compress.default, (random_24(64, 256, "cuda"),))


@gpu
@needs_sm90
def test_gpu_cuda_graph(seed):
    n, k, m = 512, 1024, 16
    sw = S.compress(random_24(n, k, "cuda"))
    a = fp8_acts(m, k, "cuda")
    a_s, b_s = scales(m, n, True, True, "cuda")
    out = poison_(torch.empty(m, n, device="cuda", dtype=torch.bfloat16))
    S.scaled_mm(a, sw, a_s, b_s, torch.bfloat16)  # warm up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(S.scaled_mm(a, sw, a_s, b_s, torch.bfloat16))
    a.copy_(fp8_acts(m, k, "cuda"))  # new inputs, same buffers
    g.replay()
    torch.cuda.synchronize()
    assert_close_rel(out, dense_scaled_mm(a, S.decompress(sw), a_s, b_s, torch.bfloat16), 1e-2, "graph replay")


@gpu
@needs_sm90
def test_gpu_torch_compile(seed):
    n, k = 256, 512
    sw = S.compress(random_24(n, k, "cuda"))
    a_s, b_s = scales(1, n, False, True, "cuda")
    f = torch.compile(lambda x: S.scaled_mm(x, sw, a_s, b_s, torch.bfloat16), fullgraph=True, dynamic=True)
    for m in (3, 64, 300):
        a = fp8_acts(m, k, "cuda")
        assert_close_rel(f(a), dense_scaled_mm(a, S.decompress(sw), a_s, b_s, torch.bfloat16), 1e-2, f"compile m={m}")


@gpu
def test_gpu_wrong_arch_error_names_dense_path():
    """On a GPU other than sm_90 (forced here), the op says what to use instead."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    code = (
        "import torch, qkernels; from qkernels.ops import sparse24 as S;"
        "a = torch.zeros(4, 128, device='cuda', dtype=torch.float8_e4m3fn);"
        "v = torch.zeros(8, 64, device='cuda', dtype=torch.float8_e4m3fn);"
        "m = torch.zeros(1, 1, 64, 16, device='cuda', dtype=torch.uint8);"
        "one = torch.ones(1, device='cuda');"
        "torch.ops.qkernels.sparse24_scaled_mm(a, v, m, one, one, torch.bfloat16)"
    )
    env = dict(os.environ, QKERNELS_FORCE_ARCH="80", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "sm_80" in r.stderr and "dense FP8 GEMM (qkernels.ops.scaled_mm)" in r.stderr, r.stderr[-2000:]
