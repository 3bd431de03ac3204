"""2:4 sparse FP8 GEMM on Hopper (sm90a): the compression op, the sparse scaled GEMM, a capability query.

A 2:4 sparse weight ``w [N, K]`` (at most 2 non-zeros in every group of 4 along K,
as SparseGPT / llm-compressor write them) is compressed once at load time into
``values [N, K/2]`` + ``meta`` (the CUTLASS sm90 metadata layout, described in
``qkernels.reference.sparse24`` and ``csrc/sparse24/README.md``). The GEMM then runs
on Hopper's sparse tensor cores, computing ``out^T = W_sparse . a^T`` so that the
activations stay dense.

Each op has a fake implementation (``torch.compile``), a CPU implementation (the
reference) and, when built for sm90a, a CUDA kernel (``csrc/sparse24``). On any
other GPU the CUDA op raises an error that names the dense FP8 path to use instead;
:func:`supported` tells beforehand.

Requirements: ``K % 128 == 0`` (one metadata block), ``N % 8 == 0`` (16-byte
aligned output rows), weight dtype ``float8_e4m3fn``, activations fp8 ``[M, K]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..reference import sparse24 as ref
from . import _checks as C
from ._registry import op, register_composite, register_fake, register_reference

FP8_DTYPE = ref.FP8_DTYPE
OUT_DTYPES = (torch.bfloat16, torch.float16)
K_MULTIPLE = ref.META_K
N_MULTIPLE = 8
_FALLBACK = "Use the dense FP8 GEMM (qkernels.ops.scaled_mm) for this layer."
_MAX_EXAMPLES = 5


# ---------------------------------------------------------------- 2:4 checks
def is_24(w: torch.Tensor) -> bool:
    """True if ``w [N, K]`` has at most 2 non-zeros in every group of 4 consecutive elements along K.

    Any dtype (FP8 compared bitwise; ``-0`` is zero). False if ``w`` is not 2-D or
    ``K % 4 != 0``. Synchronises with the device (one ``bool``): a load-time check.
    """
    if w.dim() != 2 or w.size(1) % ref.GROUP != 0:
        return False
    return not bool((ref.group_nonzeros(w) > 2).any())


def check_24(w: torch.Tensor, name: str = "weight") -> None:
    """Raise ``QKernelsInputError`` unless ``w [N, K]`` is 2:4 sparse along K.

    The message gives the number of offending groups and rows and the first few
    (row, group, K range, non-zero count). Synchronises with the device.
    """
    C.check_dim("check_24", name, w, 2)
    C.check_multiple("check_24", f"{name}.shape[1] (K)", w.size(1), ref.GROUP,
                     "2:4 sparsity is defined on groups of 4 along K.")
    counts = ref.group_nonzeros(w)
    bad = (counts > 2).nonzero()
    if bad.numel() == 0:
        return
    nnz = counts[bad[:_MAX_EXAMPLES, 0], bad[:_MAX_EXAMPLES, 1]].tolist()
    examples = ", ".join(
        f"row {r} group {g} (K {g * ref.GROUP}..{g * ref.GROUP + 3}: {c} non-zeros)"
        for (r, g), c in zip(bad[:_MAX_EXAMPLES].tolist(), nnz)
    )
    n_rows = int(bad[:, 0].unique().numel())
    C.fail(
        "sparse24",
        f"{name} {tuple(w.shape)} is not 2:4 sparse along K: {bad.size(0)} group(s) of 4 in {n_rows} row(s) "
        f"have more than 2 non-zeros, e.g. {examples}. Weights are never pruned here: prune them 2:4 "
        f"(e.g. SparseGPT in llm-compressor) or load the layer as a dense FP8 weight.",
    )


# ---------------------------------------------------------------- compress
def _check_weight(opname: str, w: torch.Tensor) -> None:
    C.check_dtype(opname, "w", w, (FP8_DTYPE,), hint="Quantise the weight to fp8 e4m3 first.")
    C.check_dim(opname, "w", w, 2)
    if w.numel() == 0:
        C.fail(opname, f"w {tuple(w.shape)} is empty: N and K must be positive.")
    C.check_contiguous(opname, "w", w)
    C.check_multiple(opname, "w.shape[1] (K)", w.size(1), K_MULTIPLE,
                     f"The sm90 sparse metadata comes in blocks of {K_MULTIPLE} along K. {_FALLBACK}")
    C.check_multiple(opname, "w.shape[0] (N)", w.size(0), N_MULTIPLE,
                     f"Output rows must be 16-byte aligned. {_FALLBACK}")


@register_fake("sparse24_compress")
def _(w):
    _check_weight("sparse24_compress", w)
    n, k = w.shape
    return w.new_empty((n, k // 2)), w.new_empty(ref.meta_shape(n, k), dtype=torch.uint8)


@register_reference("sparse24_compress")
def _(w):
    _check_weight("sparse24_compress", w)
    check_24(w, "w")
    return ref.compress(w)


@dataclass
class Sparse24Weight:
    """A compressed 2:4 weight: what :func:`scaled_mm` consumes.

    ``values`` ``[N, K/2]`` (the weight's dtype) and ``meta`` (uint8, CUTLASS sm90
    layout ``[K/128, ceil(N/64), 64, 16]``), on the weight's device.
    """

    values: torch.Tensor
    meta: torch.Tensor
    size_n: int
    size_k: int


def compress(w: torch.Tensor) -> Sparse24Weight:
    """Compress a 2:4 sparse fp8 e4m3 weight ``w [N, K]`` (``K % 128 == 0``, ``N % 8 == 0``).

    Runs on the weight's device (GPU kernel on sm90, reference on CPU). A weight that
    is not 2:4 is rejected with :func:`check_24`'s error, never pruned. A load-time op:
    the 2:4 check synchronises with the device.
    """
    _check_weight("sparse24_compress", w)
    check_24(w)
    values, meta = op("sparse24_compress")(w)
    return Sparse24Weight(values, meta, w.size(0), w.size(1))


def decompress(sw: Sparse24Weight) -> torch.Tensor:
    """The dense weight ``[N, K]`` back (reference, any device): bit-exact inverse of :func:`compress`
    (a dropped ``-0`` comes back as ``+0``)."""
    return ref.decompress(sw.values, sw.meta)


# ---------------------------------------------------------------- sparse scaled GEMM
def _checks_mm(a, values, meta, a_scales, b_scales, out_dtype, bias):
    name = "sparse24_scaled_mm"
    C.check_dtype(name, "a", a, (FP8_DTYPE,), hint="Quantise activations with qkernels.ops.quant.scaled_fp8_quant.")
    C.check_dtype(name, "values", values, (FP8_DTYPE,))
    C.check_dtype(name, "meta", meta, (torch.uint8,))
    C.check_dim(name, "a", a, 2)
    C.check_dim(name, "values", values, 2)
    C.check_last_dim_contiguous(name, "a", a)
    C.check_contiguous(name, "values", values)
    C.check_contiguous(name, "meta", meta)
    n, k = values.size(0), values.size(1) * 2
    C.check_multiple(name, "K (a.shape[1])", k, K_MULTIPLE, _FALLBACK)
    C.check_multiple(name, "N (values.shape[0])", n, N_MULTIPLE, _FALLBACK)
    if a.size(1) != k:
        C.fail(name, f"a {tuple(a.shape)} has K = {a.size(1)}; the compressed weight has K = {k} "
                     f"(values {tuple(values.shape)}).")
    if tuple(meta.shape) != ref.meta_shape(n, k):
        C.fail(name, f"meta has shape {tuple(meta.shape)}; a [{n}, {k}] weight needs {ref.meta_shape(n, k)}: "
                     "pass what sparse24_compress returned.")
    if a.size(0) > 1 and (a.stride(0) % 16 != 0 or a.stride(0) < k):
        C.fail(name, f"a's row stride {a.stride(0)} must be >= K and a multiple of 16 elements (TMA): "
                     "call .contiguous().")
    C.check_scale(name, "a_scales", a_scales, (1, a.size(0)), f"1 (per tensor) or M = {a.size(0)} (per token)")
    C.check_scale(name, "b_scales", b_scales, (1, n), f"1 (per tensor) or N = {n} (per channel)")
    C.check_contiguous(name, "a_scales", a_scales)
    C.check_contiguous(name, "b_scales", b_scales)
    C.check_out_dtype(name, out_dtype, OUT_DTYPES)
    C.check_bias(name, bias, n, out_dtype)
    C.check_same_device(name, a=a, values=values, meta=meta, a_scales=a_scales, b_scales=b_scales, bias=bias)


@register_fake("sparse24_scaled_mm")
def _(a, values, meta, a_scales, b_scales, out_dtype, bias=None):
    _checks_mm(a, values, meta, a_scales, b_scales, out_dtype, bias)
    return a.new_empty((a.size(0), values.size(0)), dtype=out_dtype)


@register_reference("sparse24_scaled_mm")
def _(a, values, meta, a_scales, b_scales, out_dtype, bias=None):
    _checks_mm(a, values, meta, a_scales, b_scales, out_dtype, bias)
    return ref.scaled_mm(a, values, meta, a_scales, b_scales, out_dtype, bias)


def scaled_mm(
    a: torch.Tensor,
    w: Sparse24Weight,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out [M, N] = a_scales * (b_scales * (a @ W^T)) + bias`` with ``W`` a compressed 2:4 weight.

    * ``a``: fp8 e4m3 ``[M, K]``, row-major (row stride a multiple of 16).
    * ``a_scales``: float32 ``[1]`` (per tensor) or ``[M, 1]`` (per token).
    * ``b_scales``: float32 ``[1]`` (per tensor) or per channel ``[N]`` / ``[N, 1]`` / ``[1, N]``.
    * ``out_dtype``: bfloat16 or float16; ``bias``: optional ``[N]`` of ``out_dtype``.

    Scales and bias are applied in the GEMM epilogue; no host synchronisation (CUDA
    graph safe). sm90 only: see :func:`supported`.
    """
    return op("sparse24_scaled_mm")(a, w.values, w.meta, a_scales.reshape(-1), b_scales.reshape(-1),
                                    out_dtype, bias)


# ---------------------------------------------------------------- capability
@register_composite("sparse24_supported")
def _(device_capability: int) -> bool:
    # The CUDA kernels exist only for sm_90a, and only if the SM90 group of this family
    # was compiled (the build records its groups; QK_SPARSE24_SM90 in the glue).
    from .. import _loader

    built = "SM90" in _loader.build_info.get("groups", {}).get("sparse24", {})
    return device_capability == 90 and built and _loader.library_path is not None


def supported(device_capability: int) -> bool:
    """True if this install runs :func:`scaled_mm` on a GPU of that capability (``major*10+minor``).

    Only 90 (H100/H200) with the SM90 kernels built. On any other GPU use the dense
    FP8 GEMM (``qkernels.ops.scaled_mm``) on the decompressed weight.
    """
    return bool(op("sparse24_supported")(int(device_capability)))


OPS = ("sparse24_compress", "sparse24_scaled_mm", "sparse24_supported")
