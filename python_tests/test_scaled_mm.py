"""W8A8 scaled GEMM (INT8, FP8): reference vs independent math, quantise -> GEMM round trips,
fakes / opcheck / torch.compile, error messages, the capability query, the kernel list, and
(on a GPU) every arch path's kernels against the reference."""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.library import opcheck

import qkernels
from qkernels import _loader
from qkernels.ops import scaled_mm as S
from qkernels.ops._checks import QKernelsInputError
from qkernels.reference import scaled_mm as ref
from qkernels.testing.numerics import assert_close_rel, poison_

FP8 = torch.float8_e4m3fn
INT8 = torch.int8
OUT_DTYPES = (torch.bfloat16, torch.float16)
OPS = qkernels.ops.family_ops()["scaled_mm"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "csrc", "scaled_mm")
REDUCED = os.environ.get("QKERNELS_TEST_REDUCED") == "1"


# ----------------------------------------------------------------- inputs (independent of the reference)
def operand(rows, k, dtype, device="cpu"):
    """A random int8 / fp8 [rows, k] tensor (fp8 values of magnitude ~1, never NaN)."""
    if dtype == INT8:
        return torch.randint(-128, 128, (rows, k), dtype=INT8, device=device)
    return (torch.randn(rows, k, device=device) * 1.5).to(FP8)


def scales(m, n, per_token, per_channel, device="cpu"):
    a_s = torch.rand(m, 1, device=device) * 0.02 + 0.005 if per_token else torch.tensor([0.011], device=device)
    b_s = torch.rand(1, n, device=device) * 0.02 + 0.005 if per_channel else torch.tensor([0.017], device=device)
    return a_s, b_s


def dense(a, w, a_s, b_s, out_dtype, bias=None, azp=None):
    """The GEMM written independently of the reference: float64 throughout, zero point
    subtracted from the activations before the product. ``w`` is the row-major [N, K] weight."""
    x = a.double()
    if azp is not None:
        x = x - azp.double().reshape(-1, 1)
    out = (x @ w.double().t()) * a_s.double().reshape(-1, 1) * b_s.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


# ----------------------------------------------------------------- reference (CPU)
@pytest.mark.parametrize("dtype", (INT8, FP8))
@pytest.mark.parametrize("per_token,per_channel", list(itertools.product((False, True), repeat=2)))
def test_reference_matches_independent_math(dtype, per_token, per_channel, seed):
    m, n, k = 7, 48, 64
    a, w = operand(m, k, dtype), operand(n, k, dtype)
    a_s, b_s = scales(m, n, per_token, per_channel)
    for out_dtype in OUT_DTYPES:
        for bias in (None, torch.randn(n).to(out_dtype)):
            out = S.scaled_mm(a, w.t(), a_s, b_s, out_dtype, bias)
            assert out.dtype == out_dtype and out.shape == (m, n)
            # float64 vs the float32 epilogue of the spec: rounding-level differences only
            assert_close_rel(out, dense(a, w, a_s, b_s, out_dtype, bias), 4e-3, f"{dtype} {out_dtype}")


def test_reference_int8_accumulation_is_exact(seed):
    """Large K, extreme values: the int8 product must not lose a single unit before scaling."""
    k = 8192
    a = torch.full((2, k), -128, dtype=INT8)
    w = torch.full((16, k), -128, dtype=INT8)
    w[1] = 127
    one = torch.ones(1)
    out = ref.scaled_mm(a, w.t(), one, one, torch.float16)
    assert out[0, 0].item() == float(torch.tensor(128 * 128 * k, dtype=torch.float32).half())
    acc = ref._exact_acc(a, w.t())
    assert acc[0, 0].item() == 128 * 128 * k and acc[0, 1].item() == -128 * 127 * k


@pytest.mark.parametrize("per_token_azp", (False, True))
def test_azp_gemm_equals_gemm_on_shifted_activations(per_token_azp, seed):
    m, n, k = 9, 32, 128
    a, w = operand(m, k, INT8), operand(n, k, INT8)
    a_s, b_s = scales(m, n, True, True)
    bias = torch.randn(n).to(torch.bfloat16)
    if per_token_azp:
        azp = torch.randint(-20, 20, (m, 1), dtype=torch.int32)
        adj, azp_arg = S.azp_adj(w.t()), azp
    else:
        azp = torch.tensor([13], dtype=torch.int32)
        adj, azp_arg = S.azp_adj(w.t(), azp), None
    assert adj.dtype == torch.int32 and adj.shape == (n,)
    out = S.scaled_mm_azp(a, w.t(), a_s, b_s, torch.bfloat16, adj, azp_arg, bias)
    assert_close_rel(out, dense(a, w, a_s, b_s, torch.bfloat16, bias, azp), 4e-3, "azp")
    # and the plain GEMM differs (the correction is really applied)
    plain = S.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16, bias)
    assert (out.float() - plain.float()).abs().max() > 1e-2


@pytest.mark.parametrize("symmetric", (True, False))
def test_int8_quantise_then_gemm_approximates_float_gemm(symmetric, seed):
    """The W8A8 path end to end on CPU: qkernels' own quant op feeds the GEMM."""
    m, n, k = 16, 64, 256
    x = torch.randn(m, k) + (0.7 if not symmetric else 0.0)  # an offset makes the zero point matter
    w = torch.randn(n, k) * 0.05
    w_s = w.abs().amax(dim=1, keepdim=True) / 127
    wq = torch.round(w / w_s).clamp(-128, 127).to(INT8)
    q, s, azp = qkernels.scaled_int8_quant(x, symmetric=symmetric)
    if symmetric:
        out = S.scaled_mm(q, wq.t(), s, w_s.t().contiguous(), torch.float16)
    else:
        out = S.scaled_mm_azp(q, wq.t(), s, w_s.t().contiguous(), torch.float16, S.azp_adj(wq.t()), azp)
    assert_close_rel(out, (x @ w.t()).half(), 2e-2, f"int8 symmetric={symmetric}")


def test_fp8_quantise_then_gemm_approximates_float_gemm(seed):
    m, n, k = 16, 64, 256
    x, w = torch.randn(m, k), torch.randn(n, k) * 0.05
    q, s = qkernels.scaled_fp8_quant(x, per_token=True)
    wq, ws = qkernels.scaled_fp8_quant(w, per_token=True)  # per output channel
    out = S.scaled_mm(q, wq.t(), s, ws.t().contiguous(), torch.bfloat16)
    assert_close_rel(out, (x @ w.t()).bfloat16(), 6e-2, "fp8")


def test_out_variants_write_in_place(seed):
    m, n, k = 5, 32, 64
    a, w = operand(m, k, INT8), operand(n, k, INT8)
    a_s, b_s = scales(m, n, True, False)
    out = poison_(torch.empty(m, n, dtype=torch.float16))
    ret = S.scaled_mm(a, w.t(), a_s, b_s, torch.float16, out=out)
    assert ret is out and torch.equal(out, S.scaled_mm(a, w.t(), a_s, b_s, torch.float16))
    adj = S.azp_adj(w.t())
    azp = torch.randint(-5, 5, (m,), dtype=torch.int32)
    out2 = poison_(torch.empty(m, n, dtype=torch.float16))
    S.scaled_mm_azp(a, w.t(), a_s, b_s, torch.float16, adj, azp, out=out2)
    assert torch.equal(out2, S.scaled_mm_azp(a, w.t(), a_s, b_s, torch.float16, adj, azp))


def test_empty_m(seed):
    a, w = operand(0, 32, FP8), operand(16, 32, FP8)
    out = S.scaled_mm(a, w.t(), torch.ones(1), torch.ones(1), torch.bfloat16)
    assert out.shape == (0, 16)


# ----------------------------------------------------------------- fakes, opcheck, torch.compile (CPU)
def _op_args(device="cpu", m=5, n=32, k=64):
    a, w = operand(m, k, INT8, device), operand(n, k, INT8, device)
    f, wf = operand(m, k, FP8, device), operand(n, k, FP8, device)
    a_s, b_s = scales(m, n, True, True, device)
    bias = torch.randn(n, device=device).to(torch.bfloat16)
    adj = ref.azp_adj(w.t())
    azp = torch.randint(-5, 5, (m,), dtype=torch.int32, device=device)
    out = torch.empty(m, n, dtype=torch.bfloat16, device=device)
    return {
        "scaled_mm": [(a, w.t(), a_s, b_s, torch.bfloat16, bias), (f, wf.t(), a_s[:1, 0], b_s, torch.float16, None)],
        "scaled_mm_out": [(out, a, w.t(), a_s, b_s, bias), (out, f, wf.t(), a_s, b_s, None)],
        "scaled_mm_azp": [(a, w.t(), a_s, b_s, torch.bfloat16, adj, azp, bias),
                          (a, w.t(), a_s, b_s, torch.float16, adj * 3, None, None)],
        "scaled_mm_azp_out": [(out, a, w.t(), a_s, b_s, adj, azp, bias)],
    }


# opcheck's test_schema compares inputs with torch.allclose, which has no fp8 kernel: for fp8
# arguments the schema's "only `out` is mutated" promise is checked bitwise here instead.
FP8_OPCHECK_UTILS = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


def _opcheck(name, args):
    op = getattr(torch.ops.qkernels, name).default
    if not any(isinstance(x, torch.Tensor) and x.dtype == FP8 for x in args):
        opcheck(op, args)
        return
    mutable = 0 if name.endswith("_out") else None
    before = [x.view(torch.uint8).clone() if isinstance(x, torch.Tensor) and x.element_size() == 1 else
              (x.clone() if isinstance(x, torch.Tensor) else x) for x in args]
    opcheck(op, args, test_utils=FP8_OPCHECK_UTILS)
    op(*args)
    for i, (b, x) in enumerate(zip(before, args)):
        if isinstance(x, torch.Tensor) and i != mutable:
            assert torch.equal(b, x.view(torch.uint8) if x.element_size() == 1 else x), f"input {i} was mutated"


@pytest.mark.parametrize("name", [n for n in OPS if n != "scaled_mm_supports"])
def test_opcheck_cpu(name, seed):
    for args in _op_args()[name]:
        _opcheck(name, args)


def test_fake_shapes_and_compile_fullgraph(seed):
    m, n, k = 6, 32, 64
    a, w = operand(m, k, FP8), operand(n, k, FP8)
    a_s, b_s = scales(m, n, True, True)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fa, fw = mode.from_tensor(a), mode.from_tensor(w)
        out = torch.ops.qkernels.scaled_mm(fa, fw.t(), mode.from_tensor(a_s), mode.from_tensor(b_s), torch.float16)
        assert out.shape == (m, n) and out.dtype == torch.float16
    f = torch.compile(lambda x: S.scaled_mm(x, w.t(), a_s, b_s, torch.bfloat16), fullgraph=True, backend="aot_eager")
    assert torch.equal(f(a), S.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16))


# ----------------------------------------------------------------- errors (CPU: the same checks run in the fakes)
def _err(fn, pattern):
    with pytest.raises(QKernelsInputError, match=pattern):
        fn()


def test_errors_name_the_problem_and_the_fix(seed):
    m, n, k = 4, 32, 64
    a, w = operand(m, k, INT8), operand(n, k, INT8)
    f = operand(m, k, FP8)
    a_s, b_s = scales(m, n, True, True)
    mm = S.scaled_mm
    _err(lambda: mm(a.float(), w.t(), a_s, b_s, torch.bfloat16), "a has dtype float32; supported: int8, float8_e4m3fn")
    _err(lambda: mm(f, w.t(), a_s, b_s, torch.bfloat16), "a is float8_e4m3fn but b is int8")
    _err(lambda: mm(a, w, a_s, b_s, torch.bfloat16), r"do not chain: b must be \[K, N\] = weight.t\(\)")
    _err(lambda: mm(a, w.t(), a_s, b_s, torch.float32), "out_dtype torch.float32 is not supported")
    w24 = operand(24, k, INT8)
    _err(lambda: mm(a, w24.t(), a_s, b_s[:, :24], torch.bfloat16), "N = 24 must be a multiple of 16. Pad the weight")
    a40, w40 = operand(m, 40, INT8), operand(n, 40, INT8)
    _err(lambda: mm(a40, w40.t(), a_s, b_s, torch.bfloat16), "K = 40 must be a multiple of 16")
    _err(lambda: mm(a, w.t().contiguous(), a_s, b_s, torch.bfloat16), "b .* must be column-major")
    _err(lambda: mm(a.t().contiguous().t(), w.t(), a_s, b_s, torch.bfloat16), "a .* must be row-major")
    _err(lambda: mm(a, w.t(), a_s.double(), b_s, torch.bfloat16), "a_scales has dtype float64; supported: float32")
    _err(lambda: mm(a, w.t(), a_s[:3], b_s, torch.bfloat16), r"a_scales has shape \(3, 1\) .*1 \(per tensor\) or M = 4")
    _err(lambda: mm(a, w.t(), a_s, b_s[:, :5], torch.bfloat16), r"b_scales .* or N = 32 \(per channel\)")
    _err(lambda: mm(a, w.t(), a_s, b_s, torch.bfloat16, torch.zeros(n)), "bias has dtype float32; supported: bfloat16")
    _err(lambda: mm(a, w.t(), a_s, b_s, torch.bfloat16, torch.zeros(n + 1, dtype=torch.bfloat16)), r"expected \[32\]")
    _err(lambda: mm(a, w.t(), a_s.to("meta"), b_s, torch.bfloat16), "all tensors must be on one device")
    _err(lambda: mm(operand(m, 0, INT8), operand(n, 0, INT8).t(), a_s, b_s, torch.bfloat16), "K = 0")
    _err(lambda: mm(a[:1].expand(m, k), w.t(), a_s, b_s, torch.bfloat16), "row stride >= K")
    _err(lambda: mm(a, w[:1].expand(n, k).t(), a_s, b_s, torch.bfloat16), "column stride >= K")
    deep = 1 << 17  # INT8 sums of K * 128^2 no longer fit int32 (expanded views: no memory)
    _err(lambda: mm(a[:, :1].expand(m, deep), w[:, :1].expand(n, deep).t(), a_s, b_s, torch.bfloat16),
         "K = 131072 is too deep for INT8")
    out = torch.empty(m, n + 16, dtype=torch.bfloat16)
    _err(lambda: mm(a, w.t(), a_s, b_s, torch.bfloat16, out=out), r"out has shape \(4, 48\); expected \(4, 32\)")
    _err(lambda: mm(a, w.t(), a_s, b_s, torch.float16, out=out[:, :n]), "out has dtype")


def test_azp_errors(seed):
    m, n, k = 4, 32, 64
    a, w = operand(m, k, INT8), operand(n, k, INT8)
    f, wf = operand(m, k, FP8), operand(n, k, FP8)
    a_s, b_s = scales(m, n, True, True)
    adj = S.azp_adj(w.t())
    azp = S.scaled_mm_azp
    _err(lambda: azp(f, wf.t(), a_s, b_s, torch.bfloat16, adj), "the azp GEMM is for int8 activations")
    _err(lambda: azp(a, w.t(), a_s, b_s, torch.bfloat16, adj.float()), "azp_adj has dtype float32; supported: int32")
    _err(lambda: azp(a, w.t(), a_s, b_s, torch.bfloat16, adj[:8]), r"azp_adj has shape \(8,\); expected \[32\]")
    _err(lambda: azp(a, w.t(), a_s, b_s, torch.bfloat16, adj, torch.zeros(1, dtype=torch.int32)),
         "per-tensor zero point is folded into azp_adj")


# ----------------------------------------------------------------- capability query
def test_kernel_group_mapping():
    assert S.kernel_group(90, FP8) == "SM90" and S.kernel_group(90, INT8) == "SM90"
    assert S.kernel_group(89, FP8) == "SM89" and S.kernel_group(89, INT8) == "SM80"
    assert S.kernel_group(86, FP8) is None and S.kernel_group(80, INT8) == "SM80"
    assert S.kernel_group(75, INT8) == "SM75" and S.kernel_group(70, INT8) is None


def test_supports_follows_the_build(monkeypatch):
    monkeypatch.setattr(_loader, "library_path", "/fake/lib.so")
    groups = {"scaled_mm": {"SM75": ["75"], "SM80": ["80"], "SM89": ["89"], "SM90": ["90a"]}}
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": False, "groups": groups})
    assert S.supports(90, FP8) and S.supports(90, INT8) and S.supports(89, FP8) and S.supports(86, INT8)
    assert not S.supports(80, FP8) and not S.supports(70, INT8)
    assert not S.supports(100, FP8), "sm_89 cubins do not run on sm_100 without PTX"
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": True, "groups": groups})
    assert S.supports(100, FP8) and S.supports(120, INT8)
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": False, "groups": {"scaled_mm": {"SM80": ["80"]}}})
    assert not S.supports(90, INT8) and S.supports(89, INT8) and not S.supports(89, FP8)
    monkeypatch.setattr(_loader, "library_path", None)
    assert not S.supports(80, INT8)


def test_forced_arch_paths_follow_the_build(monkeypatch):
    """Which older-arch paths the GPU tests force on an H100: the sm_90 code of a
    QKERNELS_SASS_FOR=90 build runs there (and only there); a plain sm_80 cubin does not; PTX does."""
    monkeypatch.setattr(_loader, "library_path", "/fake/lib.so")
    sass = {"groups": {"scaled_mm": {"SM80": ["90"], "SM90": ["90a"]}}, "retargeted": {"scaled_mm": {"SM80": "80"}}}
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": False, **sass})
    assert _group_runs_here("SM80", 90) and _group_runs_here("SM90", 90)
    assert not _group_runs_here("SM80", 80) and not _group_runs_here("SM90", 100) and not _group_runs_here("SM75", 90)
    assert not S.supports(80, INT8), "sm_90 machine code does not run on an sm_80 GPU"
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": False, "groups": {"scaled_mm": {"SM80": ["80"]}}})
    assert _group_runs_here("SM80", 86) and not _group_runs_here("SM80", 90)
    monkeypatch.setattr(_loader, "build_info", {"built": True, "ptx": True, "groups": {"scaled_mm": {"SM80": ["80"]}}})
    assert _group_runs_here("SM80", 90)
    monkeypatch.setattr(_loader, "library_path", None)
    assert not _group_runs_here("SM80", 90)


def test_supports_on_this_install():
    built = _loader.build_info.get("groups", {}).get("scaled_mm", {})
    assert S.supports(90, FP8) == ("SM90" in built and _loader.library_path is not None)


# ----------------------------------------------------------------- the kernel list is consistent
def _generate():
    sys.path.insert(0, os.path.join(KERNEL_DIR, "kernels"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    return generate


def test_generated_kernel_files_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(KERNEL_DIR, "kernels", "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_header_glue_and_generator_name_the_same_kernels():
    gen = _generate()
    names = {e[1] for e in gen.KERNELS}
    inc = open(os.path.join(KERNEL_DIR, "kernels", "kernels.inc")).read()
    listed = set(re.findall(r"X\((\w+), k\w+Params\)", inc))
    assert listed == names, f"kernels.inc vs generate.py: {listed ^ names}"
    header = open(os.path.join(KERNEL_DIR, "scaled_mm.h")).read()
    assert "QK_SCALED_MM_KERNELS_ALL(QK_SCALED_MM_DECLARE)" in header, "scaled_mm.h declares the generated list"
    glue = open(os.path.join(KERNEL_DIR, "scaled_mm_torch.cpp")).read()
    for key in gen.keys():  # each key registers the generated candidate list of its group
        assert f"{gen.macro(key)}(QK_SMM_CANDIDATE)" in glue, key
    defaults = set(re.findall(r"&(sm\d+_\w+)\}", glue))  # the compiled-in default tables
    assert defaults <= names, f"default tables name kernels generate.py does not declare: {defaults - names}"
    for key, entries in gen.keys().items():  # every key has a default; a default serves its own key
        mine = {e[1] for e in entries}
        assert defaults & mine, f"{key} has no compiled-in default"
    for group, name, *_ in gen.KERNELS:
        assert name.startswith(group.lower() + "_"), f"{name}: sources.cmake globs files by their group prefix"


# ----------------------------------------------------------------- GPU
gpu = pytest.mark.gpu


def _native_arch():
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _group_runs_here(group, native=None):
    """True if this build's ``group`` kernels can run on this GPU: machine code for it (a cubin
    of the same major arch and a minor <= this GPU's; ``sm_90a`` only on sm_90; the sm_90 code of a
    ``QKERNELS_SASS_FOR=90`` build), or PTX the driver can JIT (``QKERNELS_PTX=1``)."""
    archs = _loader.build_info.get("groups", {}).get("scaled_mm", {}).get(group, [])
    if not archs or _loader.library_path is None:
        return False
    if _loader.build_info.get("ptx"):
        return True
    native = native or _native_arch()
    for a in archs:
        num = int(a.rstrip("a"))
        if (num == native) if a.endswith("a") else (num // 10 == native // 10 and num <= native):
            return True
    return False


def _arch_paths():
    """(label, forced arch or None): the native path plus every older arch path this build
    can run on this GPU (QKERNELS_FORCE_ARCH; built with QKERNELS_SASS_FOR=90 or with PTX)."""
    paths = [("native", None)]
    if torch.cuda.is_available():
        for arch, group in ((75, "SM75"), (80, "SM80"), (89, "SM89")):
            if arch < _native_arch() and _group_runs_here(group):
                paths.append((f"sm{arch}", arch))
    return paths


@contextlib.contextmanager
def forced_arch(arch):
    """Dispatch as if the GPU were `arch` (the C++ glue reads QKERNELS_FORCE_ARCH per call)."""
    old = os.environ.get("QKERNELS_FORCE_ARCH")
    if arch is not None:
        os.environ["QKERNELS_FORCE_ARCH"] = str(arch)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QKERNELS_FORCE_ARCH", None)
        else:
            os.environ["QKERNELS_FORCE_ARCH"] = old


def _need(arch, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    if arch is None:
        if not S.supports(_native_arch(), dtype):
            pytest.skip(f"this build has no {dtype} kernels for sm_{_native_arch()} (`qkernels info`)")
        return
    group = S.kernel_group(arch, dtype)
    if group is None or not _group_runs_here(group):
        pytest.skip(f"this build has no {dtype} kernels of the sm_{arch} path that run on this GPU "
                    "(build with QKERNELS_SASS_FOR=90 or QKERNELS_PTX=1; `qkernels info`)")


ARCH_PATHS = _arch_paths() if torch.cuda.is_available() else [("native", None)]
# M across every bucket edge (16, 32, 64, 128, 1024) and odd sizes
GPU_MS = [1, 3, 16, 17, 64, 65, 129, 1000, 4097] if REDUCED else \
    [1, 2, 7, 16, 17, 31, 33, 64, 65, 127, 128, 129, 255, 1000, 1024, 1025, 2048, 4097, 8192]
GPU_NK = [(64, 128), (1024, 4096)] if REDUCED else [(16, 16), (64, 128), (1024, 4096), (6144, 4096), (4096, 14336)]


def _check_gpu(m, n, k, dtype, per_token, per_channel, out_dtype, bias_on, azp_mode=None):
    a, w = operand(m, k, dtype, "cuda"), operand(n, k, dtype, "cuda")
    a_s, b_s = scales(m, n, per_token, per_channel, "cuda")
    bias = torch.randn(n, device="cuda").to(out_dtype) if bias_on else None
    what = f"M={m} N={n} K={k} {dtype} tok={per_token} ch={per_channel} {out_dtype} bias={bias_on} azp={azp_mode}"
    if azp_mode is None:
        out = S.scaled_mm(a, w.t(), a_s, b_s, out_dtype, bias)
        expect = ref.scaled_mm(a, w.t(), a_s, b_s, out_dtype, bias)
    else:
        azp = torch.randint(-30, 30, (m, 1) if azp_mode == "token" else (1,), dtype=torch.int32, device="cuda")
        adj = S.azp_adj(w.t(), None if azp_mode == "token" else azp)
        azp_arg = azp if azp_mode == "token" else None
        out = S.scaled_mm_azp(a, w.t(), a_s, b_s, out_dtype, adj, azp_arg, bias)
        expect = ref.scaled_mm_azp(a, w.t(), a_s, b_s, out_dtype, adj, azp_arg, bias)
    # INT8: exact int32 sums, the same float32 epilogue (fma vs mul+add): output-rounding level.
    # FP8: float32 ("fast") accumulation in another order against an exact sum.
    tol = (2e-3 if out_dtype == torch.float16 else 8e-3) if dtype == INT8 else 1.5e-2
    assert_close_rel(out, expect, tol, what)
    return out


@gpu
@pytest.mark.parametrize("label,arch", ARCH_PATHS)
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
@pytest.mark.parametrize("m", GPU_MS)
def test_gpu_all_m_vs_reference(label, arch, dtype, m, seed):
    _need(arch, dtype)
    with forced_arch(arch):
        for n, k in GPU_NK:
            if m * n * k > 8192 * 4096 * 4096:
                continue
            _check_gpu(m, n, k, dtype, True, True, torch.bfloat16, bias_on=m % 2 == 1)


@gpu
@pytest.mark.parametrize("label,arch", ARCH_PATHS)
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
@pytest.mark.parametrize("per_token,per_channel", list(itertools.product((False, True), repeat=2)))
def test_gpu_scale_bias_dtype_combinations(label, arch, dtype, per_token, per_channel, seed):
    _need(arch, dtype)
    with forced_arch(arch):
        for m in (1, 33, 300):
            for out_dtype in OUT_DTYPES:
                for bias_on in (False, True):
                    _check_gpu(m, 256, 512, dtype, per_token, per_channel, out_dtype, bias_on)


@gpu
@pytest.mark.parametrize("label,arch", ARCH_PATHS)
@pytest.mark.parametrize("azp_mode", ("tensor", "token"))
def test_gpu_azp(label, arch, azp_mode, seed):
    _need(arch, INT8)
    with forced_arch(arch):
        for m in ((1, 17, 200) if REDUCED else (1, 16, 17, 64, 65, 200, 2049)):
            for out_dtype in OUT_DTYPES:
                _check_gpu(m, 512, 1024, INT8, True, True, out_dtype, bias_on=m % 2 == 1, azp_mode=azp_mode)


@gpu
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
def test_gpu_large_k_and_strided_views(dtype, seed):
    _need(None, dtype)
    _check_gpu(3, 128, 28672, dtype, True, True, torch.bfloat16, bias_on=True)
    big_a, big_w = operand(9, 512, dtype, "cuda"), operand(96, 512, dtype, "cuda")
    a, w = big_a[:, :256], big_w[:64, :256]  # row strides 512: not contiguous
    a_s, b_s = scales(9, 64, True, True, "cuda")
    out = S.scaled_mm(a, w.t(), a_s, b_s, torch.float16)
    assert_close_rel(out, ref.scaled_mm(a, w.t(), a_s, b_s, torch.float16), 1.5e-2, "strided")


@gpu
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
def test_gpu_output_fully_written_and_deterministic(dtype, seed):
    _need(None, dtype)
    m, n, k = 70, 256, 1024
    a, w = operand(m, k, dtype, "cuda"), operand(n, k, dtype, "cuda")
    a_s, b_s = scales(m, n, True, True, "cuda")
    out = poison_(torch.empty(m, n, device="cuda", dtype=torch.bfloat16))
    S.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16, out=out)
    assert torch.isfinite(out).all()
    for mm in (1, 8, 70):  # stream-K buckets included: the reduction order is fixed
        first = S.scaled_mm(a[:mm], w.t(), a_s[:mm], b_s, torch.bfloat16)
        for _ in range(3):
            assert torch.equal(S.scaled_mm(a[:mm], w.t(), a_s[:mm], b_s, torch.bfloat16), first)


@gpu
@pytest.mark.parametrize("name", [n for n in OPS if n != "scaled_mm_supports"])
def test_gpu_opcheck(name, seed):
    _need(None, INT8)
    _need(None, FP8)
    for args in _op_args("cuda")[name]:
        _opcheck(name, args)


@gpu
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
def test_gpu_cuda_graph(dtype, seed):
    _need(None, dtype)
    n, k = 512, 1024
    w = operand(n, k, dtype, "cuda")
    for m in (4, 100, 2000):  # a stream-K (workspace) bucket and two others
        a = operand(m, k, dtype, "cuda")
        a_s, b_s = scales(m, n, True, True, "cuda")
        S.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16)  # warm up outside the capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = S.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16)
        for _ in range(2):
            a.copy_(operand(m, k, dtype, "cuda"))  # new inputs, same buffers
            g.replay()
            torch.cuda.synchronize()
            assert_close_rel(out, ref.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16), 1.5e-2, f"graph m={m}")


@gpu
@pytest.mark.parametrize("dtype", (INT8, FP8), ids=("int8", "fp8"))
def test_gpu_torch_compile_fullgraph(dtype, seed):
    _need(None, dtype)
    n, k = 256, 512
    w = operand(n, k, dtype, "cuda")
    b_s = scales(1, n, False, True, "cuda")[1]
    f = torch.compile(lambda x, s: S.scaled_mm(x, w.t(), s, b_s, torch.bfloat16), fullgraph=True, dynamic=True)
    for m in (3, 64, 300):
        a, a_s = operand(m, k, dtype, "cuda"), scales(m, n, True, False, "cuda")[0]
        assert_close_rel(f(a, a_s), ref.scaled_mm(a, w.t(), a_s, b_s, torch.bfloat16), 1.5e-2, f"compile m={m}")


@gpu
def test_gpu_unsupported_arch_errors_say_what_runs_there(seed):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    a, w = operand(4, 64, FP8, "cuda"), operand(32, 64, FP8, "cuda")
    one = torch.ones(1, device="cuda")
    with forced_arch(80), pytest.raises(RuntimeError, match="FP8 GEMM needs FP8 tensor cores .* sm_80, where the INT8"):
        torch.ops.qkernels.scaled_mm(a, w.t(), one, one, torch.bfloat16)
    ai, wi = operand(4, 64, INT8, "cuda"), operand(32, 64, INT8, "cuda")
    with forced_arch(70), pytest.raises(RuntimeError, match="INT8 GEMM needs INT8 tensor cores of sm_75"):
        torch.ops.qkernels.scaled_mm(ai, wi.t(), one, one, torch.bfloat16)
