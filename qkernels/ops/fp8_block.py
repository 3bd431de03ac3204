"""Block-scaled FP8 (W8A8-FP8_BLOCK): per-token-group FP8 quantisation and the blockwise-scaled GEMM.

The scheme of DeepSeek-V3/R1, Qwen3-FP8 and llm-compressor's ``FP8_BLOCK``: weights float8_e4m3fn
with one float32 scale per 128 x 128 block, activations quantised dynamically per token in
groups of 128 along K. The math, the order of operations and the scale layouts are specified in
``qkernels.reference.fp8_block`` (the executable spec); layouts and kernels in
``csrc/fp8_block/README.md``.

Ops (``torch.ops.qkernels.*``)
    ``per_token_group_fp8_quant(input, group_size, column_major_scales, scale_ue8m0, scale)``
        -> (q, s). CUDA kernel on sm75+ (plain CUDA, G*sizeof(x)/16 lanes per group of G).
    ``fp8_block_scaled_mm(a, b, a_scales, b_scales, out_dtype, bias)`` -> out. Its CUDA
        implementation is the C++ glue (``csrc/fp8_block/fp8_block_torch.cpp``), which dispatches
        on the GPU's arch: sm90 runs the CUTLASS 3.x blockwise-scaled kernels (sm_90a), sm89 calls
        ``fp8_block_scaled_mm_triton`` (below); other archs get an error naming what runs there.
    ``fp8_block_scaled_mm_triton(...)`` (same arguments): the Ada (sm89) path, a Triton kernel
        (``qkernels.triton_kernels.fp8_block.triton_fp8_block_mm``). Its CUDA implementation is
        registered from Python here (Triton is imported on first use), not by the library.
    ``fp8_block_scaled_mm_supports(device_capability)`` -> bool: whether this install runs the
        GEMM on a GPU of that capability.

Every op has a fake (``torch.compile``) and a CPU implementation (the reference). The CUDA paths
neither synchronise with the host nor allocate outside torch's caching allocator (CUDA-graph safe).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..reference import fp8_block as ref
from . import _checks as C
from ._registry import op, register_composite, register_fake, register_python_cuda, register_reference

FP8_DTYPE = ref.FP8_DTYPE
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
OUT_DTYPES = ref.OUT_DTYPES
BLOCK = ref.BLOCK
GROUP_SIZES = ref.GROUP_SIZES
N_MULTIPLE = 16   # 16-byte aligned output rows (TMA stores) and bias
K_MULTIPLE = BLOCK

_FP8_NAME = "float8_e4m3fn"


def _dt(t: torch.dtype) -> str:
    return str(t).replace("torch.", "")


# ---------------------------------------------------------------- per-token-group quantisation
def _check_quant(name: str, x, group_size, column_major_scales, scale_ue8m0, scale) -> None:
    C.check_dtype(name, "input", x, INPUT_DTYPES)
    C.check_min_dim(name, "input", x, 1)
    C.check_contiguous(name, "input", x)
    if group_size not in GROUP_SIZES:
        C.fail(name, f"group_size = {group_size} is not supported; supported: {', '.join(map(str, GROUP_SIZES))} "
                     "(128 is what the blockwise GEMM reads).")
    k = x.shape[-1]
    if k == 0 or k % group_size != 0:
        C.fail(name, f"input has shape {tuple(x.shape)}: its last dim K = {k} must be a positive multiple of "
                     f"group_size = {group_size}. Pad K with zeros to a multiple of {group_size}.")
    if scale is not None:
        if scale_ue8m0:
            C.fail(name, "scale_ue8m0 rounds dynamic scales up to powers of two; a static `scale` is used as given: "
                         "pass a power-of-two static scale instead, or scale_ue8m0=False.")
        groups = k // group_size
        C.check_scale(name, "scale", scale, (1, groups),
                      f"1 (per tensor) or K/group_size = {groups} (one static scale per group column) values")
        C.check_contiguous(name, "scale", scale)
        C.check_same_device(name, input=x, scale=scale)


@register_fake("per_token_group_fp8_quant")
def _(input, group_size=128, column_major_scales=False, scale_ue8m0=False, scale=None):
    _check_quant("per_token_group_fp8_quant", input, group_size, column_major_scales, scale_ue8m0, scale)
    return torch.empty_like(input, dtype=FP8_DTYPE), ref.empty_scales(input, group_size, column_major_scales)


@register_reference("per_token_group_fp8_quant")
def _(input, group_size=128, column_major_scales=False, scale_ue8m0=False, scale=None):
    _check_quant("per_token_group_fp8_quant", input, group_size, column_major_scales, scale_ue8m0, scale)
    return ref.per_token_group_quant(input, group_size, column_major_scales, scale_ue8m0, scale)


def per_token_group_quant(
    x: torch.Tensor,
    group_size: int = 128,
    *,
    column_major_scales: bool = False,
    scale_ue8m0: bool = False,
    scale: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` (float16 / bfloat16 / float32 ``[..., K]``, contiguous) to float8_e4m3fn with
    one float32 scale per token and group of ``group_size`` (128 or 64) consecutive elements of K.

    * ``K`` must be a positive multiple of ``group_size``.
    * Dynamic (``scale`` None): ``s = max(absmax(group) / 448, 1/(448*512))``; with
      ``scale_ue8m0=True`` rounded up to a power of two (DeepSeek-V3 / DeepGEMM UE8M0 scales,
      still float32 values).
    * Static (``scale`` given): float32 ``[1]`` (per tensor) or ``[K/group_size]`` (one scale per
      group column, shared by every token); ``s`` is that scale broadcast to every token.
    * ``column_major_scales``: ``s`` is returned in the layout the sm90 GEMM reads (``stride(-1)
      = ceil(M/4)*4``, the tokens contiguous); otherwise row-major (contiguous). Either layout is
      accepted by :func:`scaled_mm`; the column-major one avoids a copy there.

    Returns ``(q, s)``: ``q`` has ``x``'s shape, ``s`` the shape ``[*x.shape[:-1], K/group_size]``.
    Dequantise with ``qkernels.reference.fp8_block.dequant_groups(q, s, group_size)``.
    """
    return op("per_token_group_fp8_quant")(x, group_size, column_major_scales, scale_ue8m0, scale)


# ---------------------------------------------------------------- blockwise-scaled GEMM
def _check_gemm(name: str, a, b, a_scales, b_scales, out_dtype, bias) -> None:
    for arg, t in (("a", a), ("b", b)):
        C.check_dtype(name, arg, t, (FP8_DTYPE,),
                      hint="Quantise activations with qkernels.ops.fp8_block.per_token_group_quant; weights are "
                           "the float8_e4m3fn tensors of an FP8_BLOCK checkpoint.")
    m, k, n = C.check_gemm_operands(name, a, b)
    if k == 0 or k % K_MULTIPLE != 0:
        C.fail(name, f"K = {k} must be a positive multiple of {BLOCK} (one scale per {BLOCK} elements of K). Pad the "
                     f"weight's and the activations' K with zeros to a multiple of {BLOCK}.")
    C.check_multiple(name, "N", n, N_MULTIPLE,
                     "N need not be a multiple of 128 (the last block row of b_scales may be partial), but output "
                     "rows must be 16-byte aligned: pad the weight with zero rows.")
    if a.stride(1) != 1 or (m > 1 and (a.stride(0) % 16 != 0 or a.stride(0) < k)):
        C.fail(name, f"a (shape {tuple(a.shape)}, strides {a.stride()}) must be row-major with a row stride >= K "
                     "that is a multiple of 16 elements: call a.contiguous().")
    if b.stride(0) != 1 or (n > 1 and (b.stride(1) % 16 != 0 or b.stride(1) < k)):
        C.fail(name, f"b (shape {tuple(b.shape)}, strides {b.stride()}) must be column-major (the .t() view of a "
                     "row-major [N, K] weight) with a column stride >= K that is a multiple of 16: pass w.t() of a "
                     "contiguous w.")
    kb, nb = k // BLOCK, -(-n // BLOCK)
    C.check_dtype(name, "a_scales", a_scales, (torch.float32,), hint="Scales are float32: use .float().")
    if tuple(a_scales.shape) != (m, kb):
        C.fail(name, f"a_scales has shape {tuple(a_scales.shape)}; expected [M, K/{BLOCK}] = [{m}, {kb}] (one scale per "
                     f"token and group of {BLOCK}: per_token_group_quant(x, {BLOCK}) makes them).")
    # Any strides: the sm90 kernels read the column-major TMA-aligned layout (ref.is_column_major_aligned)
    # and the CUDA op copies other layouts into it (torch.compile may hand over a dense re-layout).
    C.check_dtype(name, "b_scales", b_scales, (torch.float32,), hint="Scales are float32: use .float().")
    if tuple(b_scales.shape) != (nb, kb):
        C.fail(name, f"b_scales has shape {tuple(b_scales.shape)}; expected [ceil(N/{BLOCK}), K/{BLOCK}] = [{nb}, {kb}] "
                     "(the checkpoint's weight_scale of the [N, K] weight, one scale per 128x128 block; pass it "
                     "as stored, not transposed).")
    C.check_contiguous(name, "b_scales", b_scales)
    C.check_out_dtype(name, out_dtype, OUT_DTYPES)
    C.check_bias(name, bias, n, out_dtype)
    C.check_same_device(name, a=a, b=b, a_scales=a_scales, b_scales=b_scales, bias=bias)


def _gemm_fake(name):
    def fake(a, b, a_scales, b_scales, out_dtype, bias=None):
        _check_gemm(name, a, b, a_scales, b_scales, out_dtype, bias)
        return a.new_empty((a.size(0), b.size(1)), dtype=out_dtype)

    return fake


def _gemm_reference(name):
    def reference(a, b, a_scales, b_scales, out_dtype, bias=None):
        _check_gemm(name, a, b, a_scales, b_scales, out_dtype, bias)
        return ref.scaled_mm(a, b, a_scales, b_scales, out_dtype, bias)

    return reference


for _name in ("fp8_block_scaled_mm", "fp8_block_scaled_mm_triton"):
    register_fake(_name)(_gemm_fake(_name))
    register_reference(_name)(_gemm_reference(_name))


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out [M, N]`` = the blockwise-scaled GEMM of ``qkernels.reference.fp8_block`` (its module
    docstring gives the exact order of operations).

    * ``a``: float8_e4m3fn ``[M, K]`` row-major (row stride a multiple of 16); ``a_scales``: float32
      ``[M, K/128]``, any strides. The sm90 kernels read them column-major with a column stride
      that is a multiple of 4 (what ``per_token_group_quant(x, 128, column_major_scales=True)``
      returns); other layouts cost one small copy per call.
    * ``b``: float8_e4m3fn ``[K, N]`` = ``w.t()`` of the row-major ``[N, K]`` weight; ``b_scales``:
      float32 ``[ceil(N/128), K/128]`` contiguous (the checkpoint's ``weight_scale``).
    * ``K`` a multiple of 128; ``N`` a multiple of 16 (not necessarily of 128: the last block row
      of ``b_scales`` then covers fewer than 128 columns); any ``M >= 0``.
    * ``out_dtype`` bfloat16 or float16; ``bias`` optional ``[N]`` of ``out_dtype``.

    On CUDA: sm90 (Hopper) runs CUTLASS kernels, sm89 (Ada) a Triton kernel (needs ``triton``).
    """
    return op("fp8_block_scaled_mm")(a, b, a_scales, b_scales, out_dtype, bias)


# ---------------------------------------------------------------- the sm89 (Triton) path
TRITON_MODULE = "qkernels.triton_kernels.fp8_block"


def triton_unavailable_reason(device: Optional[torch.device] = None) -> Optional[str]:
    """None if the Triton kernel of the sm89 path can run here (on ``device``), else why not."""
    import importlib

    try:
        mod = importlib.import_module(TRITON_MODULE)
    except ImportError as e:  # the module is missing from this install
        return f"{TRITON_MODULE} is not importable ({type(e).__name__}: {e})"
    if not hasattr(mod, "triton_fp8_block_mm") or not hasattr(mod, "available"):
        return f"{TRITON_MODULE} lacks triton_fp8_block_mm / available"
    return mod.available(device)


@register_python_cuda("fp8_block_scaled_mm_triton")
def _triton_cuda(a, b, a_scales, b_scales, out_dtype, bias=None):
    """CUDA implementation of ``fp8_block_scaled_mm_triton`` (registered from Python)."""
    _check_gemm("fp8_block_scaled_mm_triton", a, b, a_scales, b_scales, out_dtype, bias)
    why = triton_unavailable_reason(a.device)
    if why is not None:
        raise RuntimeError(f"qkernels.fp8_block_scaled_mm: the sm89 (Ada) path runs a Triton kernel, which cannot run "
                           f"here: {why}. Install triton (pip install triton) or use a Hopper GPU (CUTLASS kernels).")
    from importlib import import_module

    return import_module(TRITON_MODULE).triton_fp8_block_mm(a, b, a_scales, b_scales, out_dtype, bias)


# Ops whose CUDA implementation is registered from Python (not by the compiled library):
# ``qkernels._loader`` leaves them alone and ``qkernels info`` reports them as Triton kernels.
PYTHON_CUDA_OPS = ("fp8_block_scaled_mm_triton",)


# ---------------------------------------------------------------- capability
def kernel_path(device_capability: int) -> Optional[str]:
    """Which path runs the GEMM on a GPU of that capability: ``"SM90"`` (the CUTLASS kernel group
    of csrc/fp8_block/sources.cmake), ``"TRITON"`` (sm89), or None. Mirrors the C++ dispatch."""
    cap = int(device_capability)
    if cap == 90:
        return "SM90"
    if cap == 89:
        return "TRITON"
    return None


def _triton_importable() -> bool:
    from importlib import import_module

    try:
        return import_module("qkernels.triton_kernels").IMPORT_ERROR is None and \
            hasattr(import_module(TRITON_MODULE), "triton_fp8_block_mm")
    except ImportError:
        return False


@register_composite("fp8_block_scaled_mm_supports")
def _(device_capability: int) -> bool:
    from .. import _loader

    path = kernel_path(device_capability)
    if path is None or _loader.library_path is None:
        return False
    groups = _loader.build_info.get("groups", {}).get("fp8_block", {})
    if path == "SM90":
        return "90a" in (groups.get("SM90") or ())
    # sm89: the library's glue (built with the family) dispatches to the Triton op.
    return bool(groups) and _triton_importable()


def supports(device_capability: int) -> bool:
    """True if this install runs :func:`scaled_mm` on a GPU of that capability (``major*10+minor``):
    sm90 with the sm_90a kernels compiled, or sm89 with the family compiled and Triton importable."""
    return bool(op("fp8_block_scaled_mm_supports")(int(device_capability)))


# The dispatch key of the sm90 kernels (csrc/core/dispatch.h): its table (M bucket -> kernel +
# tile-scheduler params) is the compiled-in default or a per-GPU config (qkernels.configs, written
# by `qkernels tune`); ``qkernels.configs.forced_kernel(DISPATCH_KEY, name)`` runs one kernel for
# every M (tests, benchmarks of one kernel).
DISPATCH_KEY = "fp8_block/sm90/fp8"

OPS = (
    "per_token_group_fp8_quant",
    "fp8_block_scaled_mm",
    "fp8_block_scaled_mm_triton",
    "fp8_block_scaled_mm_supports",
)
