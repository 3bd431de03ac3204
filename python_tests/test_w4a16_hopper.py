"""W4A16 Hopper path: prepacked layout vs the wgmma fragment map, zero-point derivation, dequantisation
rounding, reference GEMM vs float64 math, opcheck, errors; GPU kernel vs reference (marked gpu)."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels.ops import w4a16_hopper as H
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import w4a16 as ct
from qkernels.reference import w4a16_hopper as ref
from qkernels.testing.numerics import assert_close_rel, poison_

OPS = qkernels.ops.family_ops()["w4a16_hopper"]
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # vs the reference: fp32 sums in another order + output rounding


# ----------------------------------------------------------------- helpers (independent of the reference)
def _checkpoint(n, k, group_size, asym, act_order=False, device="cpu", scale_dtype=torch.bfloat16):
    """Random compressed-tensors `pack-quantized` tensors (nibbles u = q + 8 packed along K, zero
    points packed along N), built with explicit shifts rather than the reference packer."""
    u = torch.randint(0, 16, (n, k), dtype=torch.int64)
    groups = 1 if group_size == -1 else k // group_size
    scale = (torch.rand(n, groups) * 0.02 + 0.005).to(scale_dtype)
    zp = None
    if asym:
        z = torch.randint(0, 16, (n, groups), dtype=torch.int64)
        z[0] = 8  # a row with z = 8: exact like the symmetric case
        zpad = torch.nn.functional.pad(z, (0, 0, 0, (-n) % 8))  # [ceil(N/8)*8, G]
        zp = _pack_rows(zpad.t()).t().contiguous()  # packed along N
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k)].to(torch.int32)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(_pack_rows(u)), to(scale), to(zp), to(g_idx), u


def _pack_rows(u: torch.Tensor) -> torch.Tensor:
    """[R, 8W] nibbles -> int32 [R, W], element 8w + i in bits 4i.. of word w."""
    words = torch.zeros(u.shape[0], u.shape[1] // 8, dtype=torch.int64)
    for i in range(8):
        words |= u[:, i::8].long() << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_zp(zp: torch.Tensor, n: int) -> torch.Tensor:
    z = torch.stack([(zp.long() >> (4 * i)) & 0xF for i in range(8)], dim=1)  # [N/8, 8, G]
    return z.reshape(-1, zp.shape[1])[:n]


def _exact_weight(u, scale, z, g_idx, group_size):
    """The checkpoint's weight [N, K] in float64: (u - z[g]) * s[g]."""
    k = u.shape[1]
    g = (g_idx.long() if g_idx is not None else torch.arange(k) // (k if group_size == -1 else group_size))
    zz = z[:, g].double() if z is not None else 8.0
    return (u.double() - zz) * scale.double()[:, g]


def _x(shape, dtype, device="cpu"):
    return torch.randn(shape, device=device).to(dtype)


def _word(t: torch.Tensor, *idx) -> int:
    return t[idx].item() & 0xFFFFFFFF


# ----------------------------------------------------------------- layout: the wgmma fragment map
def test_atom_is_the_wgmma_fragment_in_cutlass_converter_order():
    """Independent derivation: the PTX ISA's m64k16 A fragment (16-bit types) gives lane l of a warp
    the values a0..a7 at rows l/4 (+8 for a2, a3, a6, a7) and columns 2(l%4) (+1 for odd a, +8 for
    a4..a7); CUTLASS's fast converter wants them as nibbles [a0 a2 a4 a6 a1 a3 a5 a7] of one word."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    r, c = ref.atom_coords()
    for lane in range(32):
        for nib, v in enumerate(order):
            row = lane // 4 + 8 * ((v >> 1) & 1)
            col = 2 * (lane % 4) + (v & 1) + 8 * ((v >> 2) & 1)
            assert (int(r[lane, nib]), int(c[lane, nib])) == (row, col), (lane, nib)
    # every (r, c) of the atom exactly once
    assert sorted(zip(r.flatten().tolist(), c.flatten().tolist())) == [(i, j) for i in range(16) for j in range(16)]


def test_converter_emulation_pairs_consecutive_k():
    """Emulate CUTLASS's int4 -> bf16 converter for this order (src >> 4j, lop3 with 0x000F000F and
    xor 0x43084308, minus 136): register j holds (nibble j, nibble j + 4), which must be the fragment's
    consecutive-k pair (a_{2j}, a_{2j+1}) of one row, and decode to q."""
    n, k = 64, 128
    u = (torch.arange(n).view(-1, 1) * 5 + torch.arange(k).view(1, -1) * 3) % 16
    b = ref.prepack(_pack_rows(u))
    r, c = ref.atom_coords()
    for kb, nb, lane in [(0, 0, 0), (3, 2, 17), (7, 3, 31)]:
        word = _word(b, kb, nb, lane)
        for j in range(4):
            x = (word >> (4 * j)) & 0x000F000F ^ 0x43084308  # each half: bf16 128 + (nib ^ 8) = 136 + q
            lo, hi = (x & 0xFFFF), (x >> 16)
            to_val = lambda h: torch.tensor([h], dtype=torch.int16).view(torch.bfloat16).item() - 136  # noqa: E731
            rows = (int(r[lane, j]), int(r[lane, j + 4]))
            cols = (int(c[lane, j]), int(c[lane, j + 4]))
            assert rows[0] == rows[1] and cols[1] == cols[0] + 1, (lane, j)
            n0, k0 = 16 * nb + rows[0], 16 * kb + cols[0]
            assert (to_val(lo), to_val(hi)) == (int(u[n0, k0]) - 8, int(u[n0, k0 + 1]) - 8)


def test_prepack_matches_the_documented_formula():
    """Forward map, written from the documentation: element (n, k) -> word [k/16, n/16, lane], nibble i."""
    n, k = 64, 256
    u = torch.randint(0, 16, (n, k))
    b = ref.prepack(_pack_rows(u))
    assert b.shape == (k // 16, n // 16, 32) and b.dtype == torch.int32
    for nn, kk in itertools.product(range(0, n, 7), range(0, k, 5)):
        rr, cc = nn % 16, kk % 16
        lane, i = 4 * (rr % 8) + (cc % 8) // 2, rr // 8 + 2 * (cc // 8) + 4 * (cc % 2)
        nib = (_word(b, kk // 16, nn // 16, lane) >> (4 * i)) & 0xF
        assert nib == int(u[nn, kk]) ^ 8, (nn, kk)  # two's complement of q = u - 8


@pytest.mark.parametrize("act_order", [False, True])
def test_prepack_round_trip(act_order, seed):
    wp, _, _, g_idx, u = _checkpoint(128, 256, 64, asym=False, act_order=act_order)
    perm = ct.act_order_perm(g_idx, 64) if act_order else None
    b = ref.prepack(wp, perm)
    assert torch.equal(ref.unprepack(b), (u[:, perm.long()] if act_order else u).int())
    # the same bytes as the Marlin layout's weight (N K / 2), a different arrangement
    assert b.numel() * 4 == 128 * 256 // 2


# ----------------------------------------------------------------- zero points and dequantisation
def test_hopper_zeros_is_the_additive_term():
    n, g = 72, 3  # N not a multiple of 8: the packed zero point has a padded last word
    z = torch.randint(0, 16, (n, g))
    zp = _pack_rows(torch.nn.functional.pad(z, (0, 0, 0, (-n) % 8)).t()).t().contiguous()
    for dtype in (torch.bfloat16, torch.float16):
        s = (torch.rand(g, n) * 0.05).to(dtype)  # the kernel's [G, N] scales
        zeros = ref.hopper_zeros(zp, s, n)
        assert zeros.shape == (g, n) and zeros.dtype == dtype and zeros.is_contiguous()
        assert torch.equal(zeros, ((8 - z).t().double() * s.double()).to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [-1, 64, 128])
def test_symmetric_dequant_is_bit_exact(dtype, group_size, seed):
    wp, scale, _, g_idx, u = _checkpoint(128, 256, group_size, asym=False, act_order=group_size != -1)
    w = H.prepare_weight(wp, scale, None, g_idx, group_size, act_dtype=dtype)
    got = ref.dequantize_prepacked(w.b, w.scales, None, group_size)  # [K, N] sorted
    exact = _exact_weight(u, scale, None, g_idx, group_size).to(dtype)  # one rounding of (u - 8) s
    perm = w.perm.long() if w.perm is not None else torch.arange(256)
    assert torch.equal(got, exact[:, perm].t())
    # the kernel's form with the shared zero buffer (z' = 0) rounds identically
    assert torch.equal(ref.dequantize_prepacked(w.b, w.scales, w.zeros, group_size), got)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_asymmetric_dequant_error_bound(dtype, seed):
    group_size = 64
    wp, scale, zp, g_idx, u = _checkpoint(128, 512, group_size, asym=True, scale_dtype=torch.float32)
    w = H.prepare_weight(wp, scale, zp, None, group_size, act_dtype=dtype)
    got = ref.dequantize_prepacked(w.b, w.scales, w.zeros, group_size).t().double()  # [N, K]
    # exact value for the scales the kernel sees (act-dtype s), then the documented bound
    s_act = w.scales.t().double()  # [N, G]
    z = _unpack_zp(zp, 128)
    exact = _exact_weight(u, s_act, z, None, group_size)
    g = torch.arange(512) // group_size
    ulp8s = torch.tensor(8.0, dtype=torch.float64) * s_act[:, g].abs() * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10)
    err = (got - exact).abs()
    assert (err <= 1.5 * ulp8s + 1e-30).all(), float((err / ulp8s).max())
    # z = 8 (row 0) -> z' = 0: exact single rounding
    assert torch.equal(got[0], exact[0].to(dtype).double())
    # and the error is real (the form is not the single rounding everywhere)
    assert (err > 0).any()


# ----------------------------------------------------------------- reference GEMM vs float64 math
@pytest.mark.parametrize("dtype,group_size,asym,act_order", [
    (torch.bfloat16, 128, False, False), (torch.float16, 64, True, False), (torch.bfloat16, 128, True, True),
    (torch.float16, -1, False, False), (torch.bfloat16, 64, False, True),
])
def test_reference_gemm_vs_float64(dtype, group_size, asym, act_order, seed):
    n, k = 128, 256
    wp, scale, zp, g_idx, u = _checkpoint(n, k, group_size, asym, act_order)
    w = H.prepare_weight(wp, scale, zp, g_idx, group_size, act_dtype=dtype)
    x, bias = _x((3, 5, k), dtype), _x((n,), dtype)
    out = H.gemm(x, w, bias)
    assert out.dtype == dtype and out.shape == (3, 5, n)
    z = _unpack_zp(zp, n) if asym else None
    exact = x.double() @ _exact_weight(u, scale, z, g_idx, group_size).t() + bias.double()
    assert_close_rel(out, exact, TOL[dtype], "reference gemm vs float64")
    # and it agrees with the Marlin path's reference on the same checkpoint
    from qkernels.ops import w4a16 as W

    marlin = W.gemm(x, W.prepare_weight(wp, scale, zp, g_idx, group_size, act_dtype=dtype), bias)
    assert_close_rel(out, marlin, TOL[dtype], "hopper vs marlin reference")


def test_gemm_m0_and_1d(seed):
    wp, scale, _, _, _ = _checkpoint(64, 128, -1, asym=False)
    w = H.prepare_weight(wp, scale)
    assert H.gemm(torch.empty(0, 128, dtype=torch.bfloat16), w).shape == (0, 64)
    assert H.gemm(_x((128,), torch.bfloat16), w).shape == (64,)


# ----------------------------------------------------------------- API: shared tensors, path choice
def test_prepare_weight_shares_scales_and_zero_buffer(seed):
    from qkernels.ops import w4a16 as W

    wp, scale, _, _, _ = _checkpoint(128, 256, 128, asym=False)
    marlin = W.prepare_weight(wp, scale, group_size=128)
    w1 = H.prepare_weight(wp, scale, group_size=128, scales=marlin.scales)
    assert w1.scales is marlin.scales and not w1.has_zp
    wp2, scale2, _, _, _ = _checkpoint(64, 512, 64, asym=False)
    w2 = H.prepare_weight(wp2, scale2, group_size=64)
    assert w1.zeros.untyped_storage().data_ptr() == w2.zeros.untyped_storage().data_ptr() or \
        w2.zeros.numel() > w1.zeros.numel()  # one buffer, grown when a larger layer comes
    assert not w1.zeros.any() and not w2.zeros.any()
    with pytest.raises(QKernelsInputError, match=r"scales has shape \(1, 128\); expected \[G, N\] = \[2, 128\]"):
        H.prepare_weight(wp, scale, group_size=128, scales=torch.ones(1, 128, dtype=torch.bfloat16))


def test_use_hopper_threshold_and_capability():
    assert H.W4A16_HOPPER_MIN_M > 1
    assert H.hopper_min_m() >= 1  # the per-GPU config's threshold (test_configs.py), else the default
    assert not H.use_hopper(10**6, 80)  # never off sm90
    assert not H.use_hopper(10**6, 89)
    assert not H.supported(100)
    assert H.supports_group_size(128) and H.supports_group_size(-1) and not H.supports_group_size(32)
    assert H.layer_unsupported(256, 512, 128) is None
    assert "group size 32 not supported" in H.layer_unsupported(256, 512, 32)
    assert "N % 64 == 0 and K % 128 == 0, layer is [96, 512]" in H.layer_unsupported(96, 512, 64)
    assert ">= 2^31" in H.layer_unsupported(2**16, 2**15, -1)
    if H.supported(90):  # an install with the sm90a kernels
        m = H.hopper_min_m()
        assert H.use_hopper(m, 90) and (m == 1 or not H.use_hopper(m - 1, 90))
        assert H.use_hopper(8, 90, min_m=8) and not H.use_hopper(10**6, 90, group_size=32)
    else:
        assert not H.use_hopper(10**6, 90)


def test_gemm_auto_picks_a_layout(seed):
    from qkernels.ops import w4a16 as W

    wp, scale, _, _, _ = _checkpoint(64, 128, 64, asym=False)
    hop = H.prepare_weight(wp, scale, group_size=64)
    mar = W.prepare_weight(wp, scale, group_size=64)
    x = _x((4, 128), torch.bfloat16)
    assert torch.equal(H.gemm_auto(x, hopper=hop), H.gemm(x, hop))
    assert torch.equal(H.gemm_auto(x, marlin=mar), W.gemm(x, mar))
    assert torch.equal(H.gemm_auto(x, marlin=mar, hopper=hop), W.gemm(x, mar))  # CPU tensors: not sm90
    with pytest.raises(QKernelsInputError, match="no weight given"):
        H.gemm_auto(x)


# ----------------------------------------------------------------- opcheck (schemas + fakes)
def _op_cases(device="cpu", dtype=torch.bfloat16):
    wp, scale, zp, g_idx, _ = _checkpoint(128, 256, 64, asym=True, act_order=True, device=device)
    w = H.prepare_weight(wp, scale, zp, g_idx, 64, act_dtype=dtype)
    x, bias = _x((3, 256), dtype, device), _x((128,), dtype, device)
    return {
        "w4a16_hopper_prepack": [(wp, None), (wp, w.perm)],
        "w4a16_hopper_gemm": [
            (x, w.b, w.scales, w.zeros, w.perm, bias, 128, 256, 64),
            (x[:1], w.b, w.scales, None, None, None, 128, 256, 64),
        ],
        "w4a16_hopper_supported": [(90,), (80,)],
    }


@pytest.mark.parametrize("name", OPS)
def test_opcheck_cpu(name, seed):
    utils = ("test_schema",) if name == "w4a16_hopper_supported" else None
    for args in _op_cases()[name]:
        if utils:
            opcheck(getattr(torch.ops.qkernels, name).default, args, test_utils=utils)
        else:
            opcheck(getattr(torch.ops.qkernels, name).default, args)


def test_ops_listed():
    assert set(OPS) == {"w4a16_hopper_prepack", "w4a16_hopper_gemm", "w4a16_hopper_supported"}
    assert torch.ops.qkernels.w4a16_hopper_supported(80) is False


# ----------------------------------------------------------------- errors
def test_error_shapes():
    with pytest.raises(QKernelsInputError, match=r"N \(output features\) = 96 must be a multiple of 64.*Pad"):
        H.prepare_weight(torch.zeros(96, 16, dtype=torch.int32), torch.ones(96, 1))
    with pytest.raises(QKernelsInputError, match=r"K \(input features\) = 64 must be a multiple of 128"):
        torch.ops.qkernels.w4a16_hopper_prepack(torch.zeros(64, 8, dtype=torch.int32))
    with pytest.raises(QKernelsInputError, match=r"group_size = 48; supported: -1, 64, 128 \(-1 = per channel\)\.$"):
        H.prepare_weight(torch.zeros(64, 16, dtype=torch.int32), torch.ones(64, 2), group_size=48)
    with pytest.raises(QKernelsInputError, match=r"group_size = 32; supported: -1, 64, 128.*Group size 32 runs on the "
                                                 r"Marlin-style path only: use the Marlin-style path \(qkernels.ops.w4a16\)"):
        H.prepare_weight(torch.zeros(64, 16, dtype=torch.int32), torch.ones(64, 4), group_size=32)
    with pytest.raises(QKernelsInputError, match=r"weight_scale is torch.float32 \(64, 1\); expected a float tensor "
                                                 r"\[N, G\] = \[64, 2\]"):
        H.prepare_weight(torch.zeros(64, 16, dtype=torch.int32), torch.ones(64, 1), group_size=64)


def test_error_marlin_layout_and_dtypes(seed):
    from qkernels.ops import w4a16 as W

    wp, scale, _, _, _ = _checkpoint(64, 128, -1, asym=False)
    w = H.prepare_weight(wp, scale)
    marlin = W.prepare_weight(wp, scale)
    x = _x((2, 128), torch.bfloat16)
    with pytest.raises(QKernelsInputError, match=r"b has shape \(8, 128\); expected \[K/16, N/16, 32\] = \[8, 4, 32\].*"
                                                 r"Marlin-layout weight"):
        torch.ops.qkernels.w4a16_hopper_gemm(x, marlin.qweight, w.scales, None, None, None, 64, 128, -1)
    with pytest.raises(QKernelsInputError, match="a has dtype float32; supported: float16, bfloat16"):
        torch.ops.qkernels.w4a16_hopper_gemm(x.float(), w.b, w.scales, None, None, None, 64, 128, -1)
    with pytest.raises(QKernelsInputError, match="scales has dtype float16; supported: bfloat16"):
        torch.ops.qkernels.w4a16_hopper_gemm(x, w.b, w.scales.half(), None, None, None, 64, 128, -1)
    with pytest.raises(QKernelsInputError, match="x has dtype torch.float16 but the weight was prepared for"):
        H.gemm(x.half(), w)
    with pytest.raises(QKernelsInputError, match=r"a has shape \(2, 64\); its last dim must be K = 128"):
        torch.ops.qkernels.w4a16_hopper_gemm(x[:, :64].contiguous(), w.b, w.scales, None, None, None, 64, 128, -1)
    with pytest.raises(QKernelsInputError, match=r"bias has shape \(32,\); expected \[N\] = \[64\]"):
        H.gemm(x, w, torch.zeros(32, dtype=torch.bfloat16))
    with pytest.raises(QKernelsInputError, match=r"perm has shape \(64,\); expected \[K\] = \[128\]"):
        torch.ops.qkernels.w4a16_hopper_gemm(x, w.b, w.scales, None, torch.arange(64, dtype=torch.int32), None,
                                             64, 128, -1)


def test_error_act_order_and_symmetry(seed):
    wp, scale, zp, g_idx, _ = _checkpoint(64, 256, 64, asym=True, act_order=True)
    with pytest.raises(QKernelsInputError, match="asymmetric but weight_zero_point is None"):
        H.prepare_weight(wp, scale, None, g_idx, 64, symmetric=False)
    with pytest.raises(QKernelsInputError, match="symmetric but a weight_zero_point was given"):
        H.prepare_weight(wp, scale, zp, g_idx, 64, symmetric=True)
    bad = g_idx.clone()
    bad[:3] = 0  # group 0 gets too many columns
    with pytest.raises(QKernelsInputError, match="exactly group_size=64 columns"):
        H.prepare_weight(wp, scale, zp, bad, 64)
    with pytest.raises(QKernelsInputError, match=r"perm holds column indices outside \[0, K = 256\)"):
        torch.ops.qkernels.w4a16_hopper_prepack(wp, torch.full((256,), 300, dtype=torch.int32))


# ----------------------------------------------------------------- benchmark entry (CPU reference ops)
def test_bench_entry_on_cpu_reference(tmp_path):
    """The benchmark entry on the CPU reference ops with a fake timer: a qkernels row per variant
    and M, a Marlin peer row beside it, the bf16 baseline; rel_err small (reference vs float32)."""
    from qkernels.bench import results as R
    from qkernels.bench.entries import w4a16_hopper as entry
    from qkernels.bench.shapes import LinearShape
    from qkernels.bench.suite import BenchContext, run_suite
    from qkernels.testing.timing import Timing

    class Timer:
        def time(self, fn):
            fn()
            return Timing(2.0, 1.0, 3.0, "eager")

    ctx = BenchContext(timer=Timer(), device=torch.device("cpu"))
    small = type("Small", (), {k: staticmethod(getattr(entry, k)) for k in ("available", "prepare", "run")})
    small.NAME, small.GEMM = entry.NAME, entry.GEMM
    small.variants = staticmethod(lambda quick: ["g128 asym", "channel sym"])
    prov = {"gpu": "NVIDIA H100 80GB HBM3", "sm": "9.0", "num_sms": 132, "driver": "580.1", "torch": "2.14",
            "cuda": "13.0", "qkernels": "0.1.0", "git_commit": "a" * 40, "git_dirty": False,
            "date": "2026-11-24T12:00:00Z", "command": "qkernels bench", "measured_peaks": {}}
    w = R.ResultsWriter(tmp_path, "w4a16_hopper", prov)
    with w:
        run_suite(ctx, [small], [LinearShape(128, 256, "m", "l")], [1, 3], w, log=open("/dev/null", "w"))
    rows = R.load(tmp_path / "w4a16_hopper.json")["rows"]
    impls = sorted({(r["impl"], r["variant"]) for r in rows}, key=str)
    assert ("qkernels", "g128 asym") in impls and ("qkernels_marlin", "channel sym") in impls
    assert ("torch_bf16", None) in impls
    q = [r for r in rows if r["impl"] == "qkernels"]
    assert len(q) == 4 and all(r["family"] == "w4a16_hopper" and r["rel_err"] < 1e-2 for r in q)
    assert "g32 sym" not in entry.VARIANTS  # not supported on this path


# ----------------------------------------------------------------- GPU: kernel vs reference
def _need_sm90():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cap = torch.cuda.get_device_capability()
    if not H.supported(10 * cap[0] + cap[1]):
        pytest.skip(f"the Hopper W4A16 kernels need sm_90 and an sm90a build (GPU sm_{cap[0]}{cap[1]}; "
                    f"supported: {H.supported(90)})")


@pytest.mark.gpu
@pytest.mark.parametrize("act_order", [False, True])
def test_gpu_prepack_bit_exact(act_order, seed):
    _need_sm90()
    wp, _, _, g_idx, _ = _checkpoint(192, 384, 128, asym=False, act_order=act_order)
    perm = ct.act_order_perm(g_idx, 128) if act_order else None
    got = torch.ops.qkernels.w4a16_hopper_prepack(wp.cuda(), None if perm is None else perm.cuda())
    assert torch.equal(got.cpu(), ref.prepack(wp, perm))


# M: 1, odd, around the config switch (kLargeMinM = 512 in w4a16_hopper.h) and a multi-tile large M.
GPU_CASES = [
    # (m, n, k, group_size, asym, act_order, dtype)
    (1, 256, 512, 128, False, False, torch.bfloat16),
    (7, 384, 1024, 64, True, False, torch.float16),
    (33, 256, 512, 64, False, True, torch.bfloat16),
    (129, 512, 1024, -1, False, False, torch.float16),
    (200, 256, 2048, 128, True, True, torch.bfloat16),
    (511, 640, 1024, 64, False, False, torch.bfloat16),
    (512, 640, 1024, 64, True, False, torch.float16),
    (1000, 1024, 2048, 64, True, True, torch.float16),
    (2049, 2048, 1024, 128, False, True, torch.bfloat16),
    (300, 256, 8192, 128, True, False, torch.bfloat16),  # large K
    # an odd number of 128-row weight tiles, the last one partial (N % 128 == 64): the 2x1 cluster's
    # second CTA gets an empty or half tile (CUTLASS example 55 runs 1x1 clusters only)
    (3, 64, 256, 128, True, False, torch.bfloat16),
    (70, 192, 512, 64, False, True, torch.float16),
    (700, 320, 1024, -1, True, False, torch.bfloat16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k,group_size,asym,act_order,dtype", GPU_CASES)
def test_gpu_gemm_vs_reference(m, n, k, group_size, asym, act_order, dtype, seed):
    _need_sm90()
    wp, scale, zp, g_idx, _ = _checkpoint(n, k, group_size, asym, act_order, device="cuda")
    w = H.prepare_weight(wp, scale, zp, g_idx, group_size, act_dtype=dtype)
    x, bias = _x((m, k), dtype, "cuda"), _x((n,), dtype, "cuda")
    for b in (None, bias):
        out = H.gemm(x, w, b)
        expect = ref.gemm(x, w.b, w.scales, w.zeros if asym else None, w.perm, b, group_size)
        assert_close_rel(out, expect, TOL[dtype], f"m={m} n={n} k={k} g={group_size} asym={asym} "
                                                  f"act_order={act_order} {dtype} bias={b is not None}")


@pytest.mark.gpu
def test_gpu_matches_cpu_op_and_marlin(seed):
    _need_sm90()
    from qkernels.ops import w4a16 as W

    wp, scale, zp, g_idx, _ = _checkpoint(512, 1024, 128, asym=True, act_order=True)
    x = _x((300, 1024), torch.bfloat16)
    cpu = H.gemm(x, H.prepare_weight(wp, scale, zp, g_idx, 128))
    gpu = H.gemm(x.cuda(), H.prepare_weight(wp.cuda(), scale.cuda(), zp.cuda(), g_idx.cuda(), 128))
    assert_close_rel(gpu, cpu, TOL[torch.bfloat16], "CUDA vs CPU reference op")
    marlin = W.gemm(x.cuda(), W.prepare_weight(wp.cuda(), scale.cuda(), zp.cuda(), g_idx.cuda(), 128))
    assert_close_rel(gpu, marlin, TOL[torch.bfloat16], "Hopper vs Marlin kernel")


@pytest.mark.gpu
def test_gpu_writes_every_output_element(seed):
    _need_sm90()
    wp, scale, _, _, _ = _checkpoint(640, 512, 128, asym=False, device="cuda")
    w = H.prepare_weight(wp, scale, group_size=128)
    for m in (3, 700):  # both configs, partial tiles in M and N
        junk = [poison_(torch.empty(m, 640, dtype=torch.bfloat16, device="cuda")) for _ in range(64)]
        del junk
        assert torch.isfinite(H.gemm(_x((m, 512), torch.bfloat16, "cuda"), w)).all(), m


@pytest.mark.gpu
def test_gpu_deterministic(seed):
    _need_sm90()
    wp, scale, zp, _, _ = _checkpoint(1024, 2048, 64, asym=True, device="cuda")
    w = H.prepare_weight(wp, scale, zp, None, 64)
    x = _x((777, 2048), torch.bfloat16, "cuda")
    first = H.gemm(x, w)
    assert all(torch.equal(first, H.gemm(x, w)) for _ in range(3))


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_gpu_opcheck(name, seed):
    _need_sm90()
    cases = _op_cases("cuda")
    utils = ("test_schema",) if name == "w4a16_hopper_supported" else None
    for args in cases[name]:
        if utils:
            opcheck(getattr(torch.ops.qkernels, name).default, args, test_utils=utils)
        else:
            opcheck(getattr(torch.ops.qkernels, name).default, args)


@pytest.mark.gpu
def test_gpu_other_arch_error_names_the_marlin_path(monkeypatch, seed):
    _need_sm90()
    wp, scale, _, _, _ = _checkpoint(64, 128, -1, asym=False, device="cuda")
    w = H.prepare_weight(wp, scale)
    monkeypatch.setenv("QKERNELS_FORCE_ARCH", "89")  # the glue dispatches as if on an sm_89 GPU
    with pytest.raises(RuntimeError, match=r"run on sm_90 \(H100/H200\) only; this GPU is sm_89: use the Marlin-style"):
        H.gemm(_x((4, 128), torch.bfloat16, "cuda"), w)


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile(seed):
    _need_sm90()
    wp, scale, zp, g_idx, _ = _checkpoint(1024, 1024, 128, asym=True, act_order=True, device="cuda")
    w = H.prepare_weight(wp, scale, zp, g_idx, 128, act_dtype=torch.bfloat16)
    for m in (200, 600):  # both configs
        x = _x((m, 1024), torch.bfloat16, "cuda")
        eager = H.gemm(x, w)
        static_x = x.clone()
        H.gemm(static_x, w)  # warm-up outside capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            graphed = H.gemm(static_x, w)
        for scale_x in (2.0, -0.5):
            static_x.copy_(x * scale_x)
            g.replay()
            assert torch.equal(graphed, H.gemm(x * scale_x, w))
        compiled = torch.compile(lambda t: H.gemm(t, w), fullgraph=True)(x)
        assert torch.equal(compiled, eager)
