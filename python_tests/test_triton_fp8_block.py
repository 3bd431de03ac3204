"""The Triton block-FP8 GEMM (``qkernels/triton_kernels/fp8_block.py``): CPU through Triton's
interpreter against ``qkernels.reference.fp8_block.scaled_mm``, config heuristics, errors, the
benchmark entry's Triton row; on a GPU (marked ``gpu``), autotuned and fixed configs against the
reference, split-K determinism and CUDA-graph capture.

The interpreter runs in one child process (``qkernels.testing.triton_interpreter``): this
process builds the cases, the child runs every kernel case, the assertions are made here.
Covered there: M = 0, 1, odd, several M tiles; N below 128, N with a partial last 128-block,
N a multiple of 128, N not a multiple of the tile; K = 128 .. 1024; both ``b_scales`` paths of
the kernel (an N tile inside one 128-block: one scale; a 256-wide tile: a vector); split-K
(uneven K-block shares) and its reduce kernel; bias; bfloat16 and float16 out; a_scales
row-major, column-major TMA-aligned (padded stride) and arbitrary strides; power-of-two (UE8M0)
scales from the reference quantiser; a row-major ``b``; a strided ``a``; the heuristic's choice
and every tile of the tuning table. Not covered without a GPU: compilation for a real arch,
autotuning, speed.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import fp8_block as ref
from qkernels.testing.triton_interpreter import run_interpreted
from qkernels.triton_kernels import fp8_block as T

FP8 = torch.float8_e4m3fn
B = 128
SCALAR_B_SCALE = dict(BLOCK_M=16, BLOCK_N=32)   # 4 N tiles per 128-block: one b scale per K block
VECTOR_B_SCALE = dict(BLOCK_M=16, BLOCK_N=256)  # one tile spans two 128-blocks: a vector of b scales
SPLIT_K = dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=3)  # K blocks shared 1/1/2 (K=512) or 1/1/1 (K=384)
CONFIGS = {"scalar": SCALAR_B_SCALE, "vector": VECTOR_B_SCALE, "split-k": SPLIT_K}
SHAPES = [(1, 48, 384), (5, 200, 512), (20, 256, 384), (17, 392, 384)]
H100 = dict(sms=132, smem_limit=227 * 1024)
ADA = dict(sms=142, smem_limit=99 * 1024)  # RTX 4090 / L40S: 99 KiB of shared memory per block


# ------------------------------------------------------------------ inputs (independent of the kernel)
def _fp8(shape, g):
    """e4m3 values with magnitudes spread over 2^-8 .. 2^6 (products of very different sizes)."""
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 5, shape, generator=g).float())
    return x.clamp(-448, 448).to(FP8)


def _a_scales(M, kb, layout, g, pow2=False):
    s = 0.5 + torch.rand(M, kb, generator=g)
    if pow2:
        s = torch.exp2(torch.randint(-3, 3, (M, kb), generator=g).float())
    if layout == "row":
        return s
    if layout == "col-aligned":  # what per_token_group_quant(..., column_major_scales=True) returns
        out = ref.empty_scales(torch.empty(M, kb * B), B, column_major=True)
        return out.copy_(s)
    # "strided": every other column of a wider buffer
    buf = torch.zeros(M, 2 * kb)
    buf[:, ::2] = s
    return buf[:, ::2]


def _case(name, M, N, K, g, config, out_dtype=torch.bfloat16, bias=False, layout="row", b_row_major=False,
          a_strided=False, pow2=False, repeat=False):
    kb, nb = K // B, -(-N // B)
    a = _fp8((M, K), g)
    if a_strided:
        a = _fp8((M, K + 64), g)[:, 32:K + 32]
    b = _fp8((K, N), g) if b_row_major else _fp8((N, K), g).t()
    b_s = 0.5 + torch.rand(nb, kb, generator=g)
    if pow2:
        b_s = torch.exp2(torch.randint(-3, 3, (nb, kb), generator=g).float())
    bias_t = torch.randn(N, generator=g).to(out_dtype) if bias else None
    return dict(name=name, a=a, b=b, a_s=_a_scales(M, kb, layout, g, pow2), b_s=b_s, out_dtype=out_dtype,
                bias=bias_t, config=config, repeat=repeat)


def _quantized_case(name, M, N, K, g, config, ue8m0):
    """Activations and weight quantised like a real layer: the reference quantisers (UE8M0 optional)."""
    from qkernels.bench.entries.fp8_block import quantize_weight_blockwise

    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
    a, a_s = ref.per_token_group_quant(x, B, column_major_scales=True, scale_ue8m0=ue8m0)
    w, w_s = quantize_weight_blockwise((torch.randn(N, K, generator=g) * 0.02).to(torch.bfloat16), ue8m0)
    return dict(name=name, a=a, b=w.t(), a_s=a_s, b_s=w_s, out_dtype=torch.bfloat16, bias=None, config=config,
                repeat=False)


def _tiles():
    """Every tile of the tuning table, as a fixed config with its stage count on an H100."""
    tiles = sorted({t for _, ts in T._TILES for t in ts})
    return [T._tile_config(bm, bn, 1, H100["smem_limit"]) for bm, bn in tiles]


def _cases():
    g = torch.Generator().manual_seed(0)
    cases = []
    # (config) x (out dtype) x (bias), cycling through the shapes and the a_scales layouts.
    combos = itertools.product(CONFIGS, (torch.bfloat16, torch.float16), (False, True))
    layouts = ("row", "col-aligned", "strided")
    for i, (cfg, od, bias) in enumerate(combos):
        M, N, K = SHAPES[i % len(SHAPES)]
        layout = layouts[i % len(layouts)]
        cases.append(_case(f"{cfg} M{M} N{N} K{K} {str(od)[6:]}{' bias' if bias else ''} a_scales {layout}",
                           M, N, K, g, CONFIGS[cfg], od, bias, layout))
    cases += [
        _case("M=1 N=16 K=128 (one K block, N < tile)", 1, 16, 128, g, SCALAR_B_SCALE, bias=True),
        _case("b row-major", 33, 200, 256, g, SCALAR_B_SCALE, b_row_major=True),
        _case("a strided (row stride K+64)", 5, 200, 256, g, VECTOR_B_SCALE, a_strided=True, bias=True),
        _case("power-of-two scales, split-k 4", 5, 136, 1024, g, dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=4), pow2=True,
              layout="col-aligned"),
        _case("split-k twice (deterministic)", 17, 200, 768, g, dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=5), bias=True,
              repeat=True),
        _case("heuristic (config=None)", 5, 200, 1024, g, None, bias=True, layout="col-aligned"),
        _case("M=0", 0, 200, 256, g, SCALAR_B_SCALE),
        _quantized_case("reference quantisers, ue8m0", 9, 208, 512, g, VECTOR_B_SCALE, ue8m0=True),
        _quantized_case("reference quantisers", 9, 208, 512, g, SPLIT_K, ue8m0=False),
    ]
    for cfg in _tiles():
        cases.append(_case(f"tile {cfg.label}", 33, 200, 256, g, cfg, bias=True, layout="col-aligned"))
    return cases


CHILD = """
    import torch
    from qkernels.triton_kernels import fp8_block as T
    assert T.available() is None and T.interpreting(), "TRITON_INTERPRET=1 did not take effect"
    cases = torch.load(__IN__, weights_only=False)
    outs = []
    for c in cases:
        try:
            run = lambda: T.triton_fp8_block_mm(c["a"], c["b"], c["a_s"], c["b_s"], c["out_dtype"], c["bias"],
                                                config=c["config"])
            out = run()
            outs.append((out, run() if c["repeat"] else None))
        except Exception as e:
            outs.append(f"{type(e).__name__}: {str(e)[:800]}")
    torch.save(outs, __OUT__)
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """[(case, (output, repeated output or None) or error string)], run through the interpreter."""
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    d = tmp_path_factory.mktemp("triton_fp8_block")
    cases = _cases()
    torch.save(cases, d / "in.pt")
    p = run_interpreted(CHILD.replace("__IN__", repr(str(d / "in.pt"))).replace("__OUT__", repr(str(d / "out.pt"))))
    assert p.returncode == 0, f"interpreter child failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    outs = torch.load(d / "out.pt", weights_only=False)
    assert len(outs) == len(cases)
    return list(zip(cases, outs))


def tolerance(a, b, a_s, b_s, bias, ref_out, block_unit=2.0**-24, split_k=1):
    """Per-element bound on |kernel - reference| (float64), from the reference's order of operations.

    The kernel computes each block's scale product ``sigma`` exactly as the reference does; it
    differs in (1) the block sums: float32 accumulation of 128 exact products, in another order,
    against the reference's exact sum rounded once: at most ``128 * block_unit * S_kb`` with
    ``S_kb = sum_k |a||b|`` over the block (block_unit 2^-24 for float32; larger for the
    tensor cores' unpromoted FP8 accumulation on sm90); (2) the float32 accumulation over the
    K/128 blocks and, with split-K, over the splits, plus the scale multiply and the bias add:
    at most ``(K/128 + split_k + 4) * 2^-24 * (sum_kb sigma_kb S_kb + |bias|)``; (3) the
    rounding to the output dtype: 1 ulp <= eps * |ref| (also covers the interpreter's
    truncating bfloat16 cast), and a floor at the smallest normal's ulp.
    """
    M, K = a.shape
    N = b.shape[1]
    kb = K // B
    bs_cols = b_s.double().repeat_interleave(B, dim=0)[:N]  # [N, kb]
    mag = torch.zeros(M, N, dtype=torch.float64)            # sum_kb sigma_kb * S_kb
    for k in range(kb):
        blk = slice(k * B, (k + 1) * B)
        sigma = a_s[:, k].double().reshape(M, 1) * bs_cols[:, k].reshape(1, N)
        mag += sigma * (a[:, blk].double().abs() @ b[blk, :].double().abs())
    bias_abs = bias.double().abs().reshape(1, N) if bias is not None else 0.0
    fi = torch.finfo(ref_out.dtype)
    return (fi.eps * ref_out.double().abs() + 128 * block_unit * mag + (kb + split_k + 4) * 2.0**-24 * (mag + bias_abs)
            + fi.smallest_normal * fi.eps)


def _split(c) -> int:
    cfg = c["config"]
    if cfg is None:
        return T.MAX_SPLIT_K
    return cfg.split_k if isinstance(cfg, T.Config) else cfg.get("SPLIT_K", 1)


def test_interpreter_vs_reference(interpreted):
    failures, checked = [], 0
    for c, res in interpreted:
        if isinstance(res, str):
            failures.append(f"{c['name']}: raised {res}")
            continue
        out, again = res
        want = ref.scaled_mm(c["a"], c["b"], c["a_s"], c["b_s"], c["out_dtype"], c["bias"])
        assert out.shape == want.shape and out.dtype == want.dtype, c["name"]
        if want.numel():
            assert want.float().abs().max() > 0.1, f"{c['name']}: degenerate case (reference is ~0)"
        diff = (out.double() - want.double()).abs()
        tol = tolerance(c["a"], c["b"], c["a_s"], c["b_s"], c["bias"], want, split_k=_split(c))
        if not bool((diff <= tol).all()):
            i = int((diff - tol).argmax())
            failures.append(f"{c['name']}: |diff| {diff.flatten()[i].item():.3g} > tol {tol.flatten()[i].item():.3g} "
                            f"at flat index {i} (out {out.flatten()[i].item()}, ref {want.flatten()[i].item()})")
        if again is not None and not torch.equal(out, again):
            failures.append(f"{c['name']}: two runs differ ({int((out != again).sum())} elements)")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked == len(_cases())


def test_tolerance_detects_a_wrong_scale():
    """The bound is tight enough to catch a kernel that used the neighbouring block's b scale."""
    g = torch.Generator().manual_seed(1)
    c = _case("probe", 5, 256, 512, g, None, bias=True)
    want = ref.scaled_mm(c["a"], c["b"], c["a_s"], c["b_s"], torch.bfloat16, c["bias"])
    wrong_bs = c["b_s"].roll(1, dims=0)
    wrong = ref.scaled_mm(c["a"], c["b"], c["a_s"], wrong_bs, torch.bfloat16, c["bias"])
    tol = tolerance(c["a"], c["b"], c["a_s"], c["b_s"], c["bias"], want)
    assert bool(((want.double() - want.double()).abs() <= tol).all())
    assert not bool(((wrong.double() - want.double()).abs() <= tol).all())


# ------------------------------------------------------------------ configs (pure functions)
@pytest.mark.parametrize("M", (1, 8, 16, 32, 64))
def test_heuristic_fills_the_sms_at_deepseek_small_n(M):
    """N=2112, K=7168 at M <= 64 is 17-33 output tiles: split-K brings the grid to >= 3/4 of the SMs."""
    cfg = T.heuristic_config(M, 2112, 7168, **H100)
    grid = -(-M // cfg.block_m) * -(-2112 // cfg.block_n) * cfg.split_k
    assert cfg.split_k > 1 and 0.75 * 132 <= grid <= 132, cfg
    assert (7168 // B) // cfg.split_k >= T.MIN_KB_PER_SPLIT


@pytest.mark.parametrize("M,N,K", [(4096, 7168, 2048), (8192, 24576, 1536), (128, 32768, 512), (1, 24576, 1536)])
def test_no_split_k_when_the_tiles_fill_the_gpu(M, N, K):
    assert T.heuristic_config(M, N, K, **H100).split_k == 1


@pytest.mark.parametrize("limits", (H100, ADA), ids=("h100", "ada"))
@pytest.mark.parametrize("M", (1, 7, 16, 33, 64, 100, 128, 129, 4096))
def test_candidates(limits, M):
    for N, K in ((2112, 7168), (7168, 16384), (32768, 512), (200, 256)):
        cands = T.candidates(M, N, K, **limits)
        assert cands, (M, N, K)
        assert len(set(cands)) == len(cands)
        for c in cands:
            assert 2 <= c.num_stages <= T.MAX_STAGES and c.smem_bytes() + T.SMEM_RESERVE <= limits["smem_limit"], c
            assert c.block_m <= max(16, T._next_pow2(M)), c  # no 128-row tiles for one token
            assert c.split_k == 1 or (K // B) // c.split_k >= T.MIN_KB_PER_SPLIT, c
        h = T.heuristic_config(M, N, K, **limits)
        assert h.smem_bytes() + T.SMEM_RESERVE <= limits["smem_limit"], h
    small_n = T.candidates(16, 2112, 7168, **limits)
    assert any(c.split_k > 1 for c in small_n) and any(c.split_k == 1 for c in small_n)


def test_ada_leaves_out_the_256_wide_tile():
    assert any(c.block_n == 256 for c in T.candidates(4096, 7168, 2048, **H100))
    assert not any(c.block_n == 256 for c in T.candidates(4096, 7168, 2048, **ADA))


def test_config_dict_and_errors():
    c = T._as_config(dict(BLOCK_M=32, BLOCK_N=64, SPLIT_K=2, num_warps=4, num_stages=3))
    assert c == T.Config(32, 64, split_k=2, num_warps=4, num_stages=3)
    assert "split-k 2" in c.label
    with pytest.raises(ValueError, match="unknown config keys"):
        T._as_config(dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64))
    with pytest.raises(ValueError, match="powers of two >= 16"):
        T._as_config(T.Config(8, 64))
    with pytest.raises(ValueError, match="split_k"):
        T._as_config(T.Config(16, 64, split_k=0))
    with pytest.raises(TypeError):
        T._as_config((16, 64))


# ------------------------------------------------------------------ errors, availability
def _args(M=4, N=256, K=256):
    a = torch.zeros(M, K, dtype=FP8)
    b = torch.zeros(N, K, dtype=FP8).t()
    return [a, b, torch.ones(M, K // B), torch.ones(-(-N // B), K // B), torch.bfloat16]


@pytest.mark.parametrize("mutate,match", [
    (lambda x: x.__setitem__(0, x[0].float()), r"a has dtype float32"),
    (lambda x: x.__setitem__(1, torch.zeros(128, 256, dtype=FP8)), r"do not chain"),
    (lambda x: x.__setitem__(slice(0, 4), _args(K=200)[:4]), r"K = 200 must be a multiple of 128"),
    (lambda x: x.__setitem__(2, torch.ones(4, 3)), r"a_scales has shape \(4, 3\); expected \[M, K/128\] = \[4, 2\]"),
    (lambda x: x.__setitem__(2, torch.ones(4, 2, dtype=torch.float64)), r"a_scales has dtype float64"),
    (lambda x: x.__setitem__(3, torch.ones(1, 2)),
     r"b_scales has shape \(1, 2\); expected \[ceil\(N/128\), K/128\] = \[2, 2\]"),
    (lambda x: x.__setitem__(4, torch.float32), r"out_dtype torch.float32 is not supported"),
    (lambda x: x.append(torch.zeros(255, dtype=torch.bfloat16)), r"bias has shape \(255,\); expected \[256\]"),
    (lambda x: x.append(torch.zeros(256, dtype=torch.float16)), r"bias has dtype float16"),
])
def test_input_errors(mutate, match):
    """Checked before anything runs (no interpreter or GPU needed): QKernelsInputError, a ValueError."""
    pytest.importorskip("triton", reason="triton is not installed")
    args = _args()
    mutate(args)
    with pytest.raises(QKernelsInputError, match=match):
        T.triton_fp8_block_mm(*args)


def test_partial_last_n_block_is_accepted_by_the_checks():
    """N = 200: b_scales has ceil(200/128) = 2 rows; the checks pass, and on CPU without the
    interpreter the launcher says where the kernel runs."""
    pytest.importorskip("triton", reason="triton is not installed")
    if T.interpreting():
        pytest.skip("this process runs Triton's interpreter")
    args = _args(N=200)
    with pytest.raises(RuntimeError, match="runs on a CUDA GPU .* or on CPU only through Triton's interpreter"):
        T.triton_fp8_block_mm(*args)


def test_split_k_workspace_must_fit_int32():
    """A fixed split-K config whose float32 workspace [split_k, M, N] exceeds int32 indexing is refused
    before anything runs; the tuning candidates and the heuristic never pick one."""
    pytest.importorskip("triton", reason="triton is not installed")
    M, N, K = 2**14, 2**13, 128
    args = [torch.zeros(M, K, dtype=FP8), torch.zeros(N, K, dtype=FP8).t(), torch.ones(M, 1), torch.ones(N // B, 1),
            torch.bfloat16]
    with pytest.raises(QKernelsInputError, match="split_k = 16 needs a workspace of 16 x 16384 x 8192"):
        T.triton_fp8_block_mm(*args, config=dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=16))
    assert not T._fits_int32(T.Config(16, 64, split_k=16), M, N) and T._fits_int32(T.Config(16, 64, split_k=15), M, N)
    assert T._fits_int32(T.Config(16, 64), 2**16, 2**15 - 1)


def test_without_triton():
    """The module imports without Triton; available() says why and the launcher raises RuntimeError."""
    p = run_interpreted("""
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from qkernels.triton_kernels import fp8_block as T
        why = T.available()
        assert isinstance(why, str) and "triton is not importable" in why, why
        a = torch.zeros(4, 128, dtype=torch.float8_e4m3fn)
        try:
            T.triton_fp8_block_mm(a, a.t(), torch.ones(4, 1), torch.ones(1, 1), torch.bfloat16)
        except RuntimeError as e:
            assert str(e) == why
        else:
            raise AssertionError("no RuntimeError")
        print("OK", why)
    """, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("OK triton is not importable (")


def test_available_here():
    why = T.available()
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        assert isinstance(why, str) and "triton" in why
        return
    if torch.cuda.is_available():
        sm = torch.cuda.get_device_capability()
        assert (why is None) == (sm >= (8, 9)), why
    else:
        assert why is not None and "no CUDA GPU" in why and "TRITON_INTERPRET=1" in why


# ------------------------------------------------------------------ the benchmark entry's Triton row
def test_bench_entry_triton_row():
    """qkernels/bench/entries/fp8_block.py's run(): a ``triton_fp8_block`` peer row with the qkernels
    row's fields and a rel_err, its output within 2 bf16 ulps of the qkernels op's (the CPU
    reference here), for both variants, through the interpreter."""
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    pytest.importorskip("qkernels.ops.fp8_block")
    p = run_interpreted("""
        import torch
        from qkernels.bench.entries import fp8_block as entry
        from qkernels.bench.shapes import LinearShape
        from qkernels.bench.suite import BenchContext
        from qkernels.testing.timing import Timing

        class Timer:
            outs = []
            def time(self, fn):
                Timer.outs.append(fn())
                return Timing(1.0, 1.0, 1.0, "eager")

        torch.manual_seed(0)
        ctx = BenchContext(timer=Timer(), device=torch.device("cpu"))
        for variant in entry.variants(False):
            st = entry.prepare(ctx, LinearShape(208, 384), variant)
            Timer.outs.clear()
            rows = entry.run(ctx, st, 5)
            impls = [r["impl"] for r in rows]
            assert impls == ["qkernels", "triton_fp8_block"], impls
            q, t = rows
            for k in ("family", "M", "N", "K", "variant", "dtypes", "tflops", "gbps"):
                assert t[k] == q[k], (k, t[k], q[k])
            assert q["rel_err"] == 0.0 and 0.0 <= t["rel_err"] < 2.0**-7, (q["rel_err"], t["rel_err"])
            ours, tri = Timer.outs
            assert tri.dtype == torch.bfloat16 and tri.shape == (5, 208)
            assert torch.allclose(tri.float(), ours.float(), rtol=2 * 2**-7, atol=1e-6), variant
        print("OK")
    """)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    assert p.stdout.rstrip().endswith("OK"), p.stdout


# ------------------------------------------------------------------ GPU
gpu = pytest.mark.gpu


def _gpu_or_skip():
    why = T.available()
    if why is not None:
        pytest.skip(why)


def _gpu_inputs(M, N, K, seed, layout="col-aligned", bias=True, out_dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    c = _case("gpu", M, N, K, g, None, out_dtype, bias, layout)
    dev = lambda t: None if t is None else t.cuda()
    a_s = c["a_s"]
    if layout == "col-aligned":  # keep the padded column-major strides on the device
        a_s = ref.empty_scales(torch.empty(M, K, device="cuda"), B, column_major=True).copy_(a_s)
    return c["a"].cuda(), c["b"].t().contiguous().cuda().t(), dev(a_s), dev(c["b_s"]), out_dtype, dev(c["bias"])


def _block_unit() -> float:
    # Hopper's FP8 tensor cores accumulate a block unpromoted (about 14 mantissa bits kept): a
    # documented-empirical unit, not a proof; Ada's FP8 mma accumulates in float32.
    return 2.0**-12 if torch.cuda.get_device_capability()[0] == 9 else 2.0**-24


def _check_gpu(args, out, split_k=T.MAX_SPLIT_K, what=""):
    a, b, a_s, b_s, od, bias = [t.cpu() if isinstance(t, torch.Tensor) else t for t in args]
    want = ref.scaled_mm(a, b, a_s, b_s, od, bias)
    diff = (out.cpu().double() - want.double()).abs()
    tol = tolerance(a, b, a_s, b_s, bias, want, block_unit=_block_unit(), split_k=split_k)
    assert bool((diff <= tol).all()), f"{what}: max |diff| - tol = {(diff - tol).max().item():.3g}"


@gpu
@pytest.mark.parametrize("M", (1, 7, 16, 64, 129, 512))
@pytest.mark.parametrize("N,K", ((2112, 7168), (200, 1024), (4096, 512)))
def test_gpu_autotuned_vs_reference(M, N, K):
    _gpu_or_skip()
    args = _gpu_inputs(M, N, K, seed=M + N)
    _check_gpu(args, T.triton_fp8_block_mm(*args), what=f"M={M} N={N} K={K}")


@gpu
@pytest.mark.parametrize("layout", ("row", "col-aligned", "strided"))
@pytest.mark.parametrize("out_dtype", (torch.bfloat16, torch.float16))
def test_gpu_every_candidate(layout, out_dtype):
    _gpu_or_skip()
    M, N, K = 33, 2112, 7168
    args = _gpu_inputs(M, N, K, seed=3, layout=layout, out_dtype=out_dtype)
    sms, smem = T._device_limits(torch.device("cuda"))
    for cfg in T.candidates(M, N, K, sms, smem) + [T.heuristic_config(M, N, K, sms, smem)]:
        _check_gpu(args, T.triton_fp8_block_mm(*args, config=cfg), split_k=cfg.split_k, what=cfg.label)


@gpu
def test_gpu_split_k_deterministic_and_graph_safe():
    _gpu_or_skip()
    args = _gpu_inputs(16, 2112, 7168, seed=5)
    cfg = T.Config(16, 64, split_k=4, num_warps=4, num_stages=3)
    first = T.triton_fp8_block_mm(*args, config=cfg)
    for _ in range(3):
        assert torch.equal(T.triton_fp8_block_mm(*args, config=cfg), first)
    # Capture: a fixed split-K config, the tuned choice, and an untuned key (heuristic under capture).
    T.triton_fp8_block_mm(*args)  # tunes outside the capture
    fresh = _gpu_inputs(24, 2112, 7168, seed=6)  # M bucket 32: not tuned yet
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        T.triton_fp8_block_mm(*args, config=cfg)  # compile outside the capture
        T.triton_fp8_block_mm(*fresh, autotune=False)
        with torch.cuda.graph(graph, stream=stream):
            outs = [T.triton_fp8_block_mm(*args, config=cfg), T.triton_fp8_block_mm(*args),
                    T.triton_fp8_block_mm(*fresh)]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(outs[0], first)
    _check_gpu(args, outs[1], what="tuned config, captured")
    _check_gpu(fresh, outs[2], what="heuristic under capture")
