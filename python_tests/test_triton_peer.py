"""The Triton benchmark peer (``qkernels/bench/triton_peer.py``) on CPU, through Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect if it is set before Triton is imported, and this
process may already have imported Triton (or may later need it compiled), so the kernel runs in
a child process: this process builds the cases (inputs saved with ``torch.save``), the child
runs :func:`triton_scaled_mm` on each and saves the outputs, and the assertions are made here
against :func:`qkernels.reference.scaled_mm.scaled_mm`. One child runs every kernel case (its
start-up, importing torch and Triton, is most of the cost).

Covered through the interpreter: INT8 and FP8 e4m3, every scale shape of the spec
(a: ``[1]``, ``[M, 1]``; b: ``[1]``, ``[1, N]``, ``[N]``, ``[N, 1]``), with and without bias,
bfloat16 and float16 out, M / N / K edges that are not multiples of the tile (masked), a
row-major ``b``, each autotune config's tile shape, and the benchmark entry's
``triton_scaled_mm`` row. Not covered (needs a GPU): autotuning, compilation for a real arch,
speed.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from qkernels.reference.scaled_mm import scaled_mm as ref_scaled_mm
from qkernels.testing.triton_interpreter import run_interpreted

FP8 = torch.float8_e4m3fn
# Small tiles, so the cases below have several M, N and K tiles and partial (masked) edges.
SMALL = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2)
SHAPES = [(M, N, K) for M in (1, 5, 33) for N in (32, 48) for K in (64, 80)]
A_SCALE_SHAPES = ("[1]", "[M,1]")
B_SCALE_SHAPES = ("[1]", "[1,N]", "[N]", "[N,1]")


_run_child = run_interpreted


# ------------------------------------------------------------------ inputs
def _operand(shape, dtype, g):
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    # FP8: magnitudes spread over 2^-10 .. 2^8 (subnormals included, clamped to +-448), so the
    # float32 accumulation has products of very different exponents to add.
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-10, 6, shape, generator=g).float())
    return x.clamp(-448, 448).to(FP8)


def _scales(shape_name, M, N, g, typical):
    n = {"[1]": 1, "[M,1]": M, "[1,N]": N, "[N]": N, "[N,1]": N}[shape_name]
    shape = {"[1]": (1,), "[M,1]": (M, 1), "[1,N]": (1, N), "[N]": (N,), "[N,1]": (N, 1)}[shape_name]
    return ((0.5 + torch.rand(n, generator=g)) * typical).reshape(shape)


def _case(name, dtype, M, N, K, a_shape, b_shape, out_dtype, with_bias, g, config=SMALL, b_row_major=False):
    a = _operand((M, K), dtype, g)
    b = _operand((K, N), dtype, g) if b_row_major else _operand((N, K), dtype, g).t()
    # Scales that make the outputs O(1): |acc| ~ sqrt(K) * E|a||b| (int8: ~ 64 * 64 each).
    typical = 1.0 / (64.0 * K**0.25) if dtype == torch.int8 else 1.0 / K**0.25
    bias = (torch.randn(N, generator=g)).to(out_dtype) if with_bias else None
    return dict(name=name, dtype=dtype, a=a, b=b, a_s=_scales(a_shape, M, N, g, typical),
                b_s=_scales(b_shape, M, N, g, typical), out_dtype=out_dtype, bias=bias, config=config)


def _cases():
    g = torch.Generator().manual_seed(0)
    cases = []
    for dtype in (torch.int8, FP8):
        dn = "int8" if dtype == torch.int8 else "fp8"
        # Every (a scale shape, b scale shape, bias, out dtype) combination, cycling through the
        # shapes so that each shape is met 2-3 times per dtype.
        combos = itertools.product(A_SCALE_SHAPES, B_SCALE_SHAPES, (False, True), (torch.bfloat16, torch.float16))
        for i, (sa, sb, bias, od) in enumerate(combos):
            M, N, K = SHAPES[i % len(SHAPES)]
            name = f"{dn} M{M} N{N} K{K} a{sa} b{sb} {'bias ' if bias else ''}{str(od)[6:]}"
            cases.append(_case(name, dtype, M, N, K, sa, sb, od, bias, g))
        cases.append(_case(f"{dn} b row-major", dtype, 33, 48, 80, "[M,1]", "[N]", torch.bfloat16, True, g,
                           b_row_major=True))
        # The autotune configs' tiles (larger than the problem: everything is an edge).
        for bm, bn, bk, gm, w, s in _configs():
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=w, num_stages=s)
            cases.append(_case(f"{dn} config {bm}x{bn}x{bk}", dtype, 33, 48, 80, "[M,1]", "[N,1]",
                               torch.bfloat16, True, g, config=cfg))
    return cases


def _configs():
    from qkernels.bench.triton_peer import CONFIGS

    return CONFIGS


CHILD = """
    import sys, torch
    from qkernels.bench.triton_peer import triton_scaled_mm, _interpreting
    assert _interpreting(), "TRITON_INTERPRET=1 did not take effect"
    cases = torch.load(sys.argv[1], weights_only=False)
    outs = []
    for c in cases:
        try:
            outs.append(triton_scaled_mm(c["a"], c["b"], c["a_s"], c["b_s"], c["out_dtype"], c["bias"],
                                         config=c["config"]))
        except Exception as e:
            outs.append(f"{type(e).__name__}: {str(e)[:800]}")
    torch.save(outs, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """[(case, output tensor or error string)] for every case, run through the interpreter."""
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    d = tmp_path_factory.mktemp("triton_peer")
    cases = _cases()
    torch.save(cases, d / "in.pt")
    code = CHILD.replace("sys.argv[1]", repr(str(d / "in.pt"))).replace("sys.argv[2]", repr(str(d / "out.pt")))
    p = _run_child(code)
    assert p.returncode == 0, f"interpreter child failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    outs = torch.load(d / "out.pt", weights_only=False)
    assert len(outs) == len(cases)
    return list(zip(cases, outs))


def _tolerance(c, ref):
    """Per-element bound on |kernel - reference| (see the comment in the body)."""
    # The reference sums a @ b exactly (float64), rounds it to float32, applies the scales and
    # bias in float32 and rounds once to out_dtype. The kernel does the same float32 epilogue in
    # the same order, so the only differences are:
    # 1. FP8 accumulation: the kernel sums the (exact) products in float32, in another order;
    #    the standard summation bound is K * 2^-24 * sum_k |a||b|, times the scales.
    #    INT8 accumulation is exact (int32), so this term is 0 for INT8.
    # 2. The rounding to out_dtype: two float32 values that differ by e round to values at most
    #    e + 1 ulp apart, and 1 ulp <= finfo(out_dtype).eps * |ref| (eps is the spacing at 1).
    #    This term is needed even for INT8 because Triton's interpreter converts float32 to
    #    bfloat16 by truncation (its cast has no rounding), the reference (torch) rounds to
    #    nearest even; on a GPU, FMA contraction of the epilogue has the same 1-ulp effect.
    # 3. A float32-level slack for the epilogue (4 roundings of ~2^-24 relative) and an absolute
    #    floor at the out dtype's smallest subnormal, for outputs that are (almost) zero.
    a_s = c["a_s"].float().reshape(-1, 1)
    b_s = c["b_s"].float().reshape(1, -1)
    scale = (a_s * b_s).double()
    if c["dtype"] == FP8:
        K = c["a"].shape[1]
        mag = c["a"].double().abs() @ c["b"].double().abs()
        acc_err = K * 2.0**-24 * scale * mag
    else:
        acc_err = torch.zeros_like(ref, dtype=torch.float64)
    fi = torch.finfo(c["out_dtype"])
    bias = c["bias"].double().abs().reshape(1, -1) if c["bias"] is not None else 0.0
    exact = scale * (c["a"].double() @ c["b"].double()).abs() + bias
    return fi.eps * ref.double().abs() + acc_err + 4 * 2.0**-24 * exact + fi.smallest_normal * fi.eps


def _check(results, dtype):
    checked, failures = 0, []
    for c, out in results:
        if c["dtype"] != dtype:
            continue
        if isinstance(out, str):
            failures.append(f"{c['name']}: raised {out}")
            continue
        ref = ref_scaled_mm(c["a"], c["b"], c["a_s"], c["b_s"], c["out_dtype"], c["bias"])
        assert out.shape == ref.shape and out.dtype == ref.dtype, c["name"]
        assert ref.float().abs().max() > 0.1, f"{c['name']}: degenerate case (reference is ~0)"
        diff = (out.double() - ref.double()).abs()
        tol = _tolerance(c, ref)
        if not bool((diff <= tol).all()):
            i = int((diff - tol).argmax())
            failures.append(f"{c['name']}: |diff| {diff.flatten()[i].item():.3g} > tol {tol.flatten()[i].item():.3g} "
                            f"at flat index {i} (out {out.flatten()[i].item()}, ref {ref.flatten()[i].item()})")
        # INT8 to float16: exact accumulation and the reference's float32 epilogue in the same
        # order, and the interpreter's float16 cast rounds to nearest even like torch: bit-exact.
        if dtype == torch.int8 and c["out_dtype"] == torch.float16 and not torch.equal(out, ref):
            failures.append(f"{c['name']}: int8 -> float16 not bit-exact ({int((out != ref).sum())} elements)")
        checked += 1
    assert not failures, "\n".join(failures)
    return checked


N_CASES_PER_DTYPE = len(A_SCALE_SHAPES) * len(B_SCALE_SHAPES) * 2 * 2 + 1 + 5


def test_int8_through_interpreter(interpreted):
    assert _check(interpreted, torch.int8) == N_CASES_PER_DTYPE


def test_fp8_through_interpreter(interpreted):
    assert _check(interpreted, FP8) == N_CASES_PER_DTYPE


def test_every_config_covered():
    assert N_CASES_PER_DTYPE == 2 * 4 * 2 * 2 + 1 + len(_configs())


def test_available_when_triton_imports():
    from qkernels.bench import triton_peer

    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        assert isinstance(triton_peer.available(), str) and "triton" in triton_peer.available()
        pytest.skip("triton is not importable here; available() correctly gives the reason")
    assert triton_peer.available() is None


def test_without_triton():
    """The module imports without Triton; available() says why and the launcher raises RuntimeError
    (what the benchmark's peer_rows logs and skips)."""
    p = _run_child("""
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from qkernels.bench import triton_peer
        why = triton_peer.available()
        assert isinstance(why, str) and "triton is not importable" in why, why
        a = torch.zeros(4, 32, dtype=torch.int8)
        try:
            triton_peer.triton_scaled_mm(a, a.t(), torch.ones(1), torch.ones(1), torch.bfloat16)
        except RuntimeError as e:
            assert str(e) == why
        else:
            raise AssertionError("no RuntimeError")
        print("OK", why)
    """, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("OK triton is not importable (")


def test_bench_entry_row():
    """qkernels/bench/entries/scaled_mm.py's run() adds a ``triton_scaled_mm`` peer row (FP8 and INT8) with the
    qkernels row's fields, and that row's kernel output matches the reference (interpreter, CPU)."""
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
    p = _run_child("""
        import torch
        from qkernels.bench.entries import scaled_mm as entry
        from qkernels.bench.triton_peer import triton_scaled_mm
        from qkernels.reference.scaled_mm import scaled_mm as ref
        from qkernels.bench.shapes import LinearShape
        from qkernels.bench.suite import BenchContext
        from qkernels.testing.timing import Timing

        class Timer:
            def time(self, fn):
                out = fn()
                Timer.outs.append(out)
                return Timing(1.0, 1.0, 1.0, "eager")
        Timer.outs = []

        torch.manual_seed(0)
        ctx = BenchContext(timer=Timer(), device=torch.device("cpu"))
        for variant in ("fp8 token x channel", "int8 tensor x tensor"):
            st = entry.prepare(ctx, LinearShape(48, 80), variant)
            Timer.outs.clear()
            rows = entry.run(ctx, st, 5)
            impls = [r["impl"] for r in rows]
            assert impls[:2] == ["qkernels", "triton_scaled_mm"], impls
            q, t = rows[0], rows[1]
            for k in ("family", "M", "N", "K", "variant", "dtypes", "tflops", "gbps"):
                assert t.get(k) == q.get(k), (k, t.get(k), q.get(k))
            ours, tri = Timer.outs[0], Timer.outs[1]
            assert tri.dtype == torch.bfloat16 and tri.shape == (5, 48)
            # Same inputs as the qkernels row (the CPU reference op here): within 2 bf16 ulps.
            assert torch.allclose(tri.float(), ours.float(), rtol=2 * 2**-7, atol=1e-6), variant
            print(variant, impls)
        print("OK")
    """)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    assert p.stdout.rstrip().endswith("OK"), p.stdout
