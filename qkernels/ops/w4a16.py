"""W4A16: INT4-weight x FP16/BF16-activation GEMM (Marlin-style kernel, sm80+).

Load time: :func:`prepare_weight` takes the tensors of a compressed-tensors ``pack-quantized``
checkpoint (4 bits) and returns a :class:`W4A16Weight` in the kernel's layout (op
``w4a16_repack`` + the scale / zero-point transposition). Run time: :func:`gemm`
(op ``w4a16_gemm``). The layouts and the math are specified in ``qkernels.reference.w4a16``;
each op's CPU implementation is that reference, its CUDA implementation is ``csrc/w4a16``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..reference import w4a16 as ref
from . import _checks as C
from ._registry import op, register_fake, register_reference

ACT_DTYPES = (torch.float16, torch.bfloat16)
GROUP_SIZES = ref.GROUP_SIZES
TILE_N, TILE_K = ref.TILE_N, ref.TILE_K
PAD_HINT = (
    "Pad the layer: N with zero weight rows (and slice the output), K with zero activation "
    "columns and weight nibbles of value 8 (see csrc/w4a16/README.md, 'Shapes')."
)


def _num_groups(size_k: int, group_size: int) -> int:
    return 1 if group_size == -1 else size_k // group_size


def _check_sizes(name: str, size_n: int, size_k: int, group_size: int) -> None:
    if size_n <= 0 or size_k <= 0:
        C.fail(name, f"N = {size_n} and K = {size_k} must be positive.")
    C.check_multiple(name, "N (output features)", size_n, TILE_N, PAD_HINT)
    C.check_multiple(name, "K (input features)", size_k, TILE_K, PAD_HINT)
    if group_size not in GROUP_SIZES:
        C.fail(name, f"group_size = {group_size}; supported: {', '.join(map(str, GROUP_SIZES))} (-1 = per channel).")
    if group_size != -1:
        C.check_multiple(name, "K (input features)", size_k, group_size, "group_size must divide K.")


def _check_group_tensor(name: str, argname: str, t: torch.Tensor, shape, dtype: torch.dtype) -> None:
    C.check_dtype(name, argname, t, (dtype,), hint=f"{argname} must have the activations' dtype.")
    if tuple(t.shape) != tuple(shape):
        C.fail(name, f"{argname} has shape {tuple(t.shape)}; expected [G, N] = {list(shape)} (see prepare_weight).")
    C.check_contiguous(name, argname, t)


def check_perm(name: str, perm: torch.Tensor, size_k: int) -> None:
    """``perm``: a contiguous int32 [K] (the repack / prepack kernels read it through a raw pointer)."""
    C.check_dtype(name, "perm", perm, (torch.int32,), hint="perm is argsort(g_idx) as int32 (see prepare_weight).")
    if tuple(perm.shape) != (size_k,):
        C.fail(name, f"perm has shape {tuple(perm.shape)}; expected [K] = [{size_k}].")
    C.check_contiguous(name, "perm", perm)


def check_gemm_params(name: str, a: torch.Tensor, scales, zeros, perm, bias, size_n: int, size_k: int,
                      group_size: int) -> None:
    """The checks both W4A16 GEMMs (this one and ``w4a16_hopper_gemm``) make of ``scales`` /
    ``zeros`` ([G, N], activation dtype, contiguous), ``perm`` and ``bias`` (contiguous [N],
    activation dtype), as their CUDA glue does; the weight is each op's own."""
    groups = (_num_groups(size_k, group_size), size_n)
    _check_group_tensor(name, "scales", scales, groups, a.dtype)
    if zeros is not None:
        _check_group_tensor(name, "zeros", zeros, groups, a.dtype)
    if perm is not None:
        check_perm(name, perm, size_k)
    if bias is not None:
        C.check_dtype(name, "bias", bias, (a.dtype,), hint="bias must have the activations' dtype.")
        if tuple(bias.shape) != (size_n,):
            C.fail(name, f"bias has shape {tuple(bias.shape)}; expected [N] = [{size_n}].")
        C.check_contiguous(name, "bias", bias)


# ----------------------------------------------------------------- w4a16_repack
def _checks_repack(weight_packed: torch.Tensor, perm: Optional[torch.Tensor]) -> None:
    name = "w4a16_repack"
    C.check_dtype(name, "weight_packed", weight_packed, (torch.int32,),
                  hint="It is the int32 `weight_packed` tensor of a pack-quantized checkpoint.")
    C.check_dim(name, "weight_packed", weight_packed, 2)
    C.check_contiguous(name, "weight_packed", weight_packed)
    size_n, size_k = weight_packed.shape[0], weight_packed.shape[1] * ref.PACK_FACTOR
    if size_n <= 0 or size_k <= 0:
        C.fail(name, f"weight_packed {tuple(weight_packed.shape)} is empty: N and K must be positive.")
    C.check_multiple(name, "N (output features)", size_n, TILE_N, PAD_HINT)
    C.check_multiple(name, "K (input features)", size_k, TILE_K, PAD_HINT)
    if perm is not None:
        check_perm(name, perm, size_k)
        C.check_same_device(name, weight_packed=weight_packed, perm=perm)


@register_fake("w4a16_repack")
def _(weight_packed, perm=None):
    _checks_repack(weight_packed, perm)
    return weight_packed.new_empty((weight_packed.shape[1] * ref.PACK_FACTOR // 16, 2 * weight_packed.shape[0]))


@register_reference("w4a16_repack")
def _(weight_packed, perm=None):
    _checks_repack(weight_packed, perm)
    return ref.repack(weight_packed, perm)


# ----------------------------------------------------------------- w4a16_gemm
def _checks_gemm(a, b_q, scales, zeros, perm, bias, size_n, size_k, group_size) -> None:
    name = "w4a16_gemm"
    C.check_dtype(name, "a", a, ACT_DTYPES)
    C.check_min_dim(name, "a", a, 1)
    C.check_contiguous(name, "a", a)
    _check_sizes(name, size_n, size_k, group_size)
    if a.shape[-1] != size_k:
        C.fail(name, f"a has shape {tuple(a.shape)}; its last dim must be K = {size_k}.")
    C.check_dtype(name, "b_q", b_q, (torch.int32,), hint="b_q comes from w4a16_repack / prepare_weight.")
    if tuple(b_q.shape) != (size_k // 16, 2 * size_n):
        C.fail(name, f"b_q has shape {tuple(b_q.shape)}; expected [K/16, 2N] = [{size_k // 16}, {2 * size_n}] "
                     "(the output of w4a16_repack).")
    C.check_contiguous(name, "b_q", b_q)
    check_gemm_params(name, a, scales, zeros, perm, bias, size_n, size_k, group_size)
    C.check_same_device(name, a=a, b_q=b_q, scales=scales, zeros=zeros, perm=perm, bias=bias)


@register_fake("w4a16_gemm")
def _(a, b_q, scales, zeros, perm, bias, size_n, size_k, group_size):
    _checks_gemm(a, b_q, scales, zeros, perm, bias, size_n, size_k, group_size)
    return a.new_empty((*a.shape[:-1], size_n))


@register_reference("w4a16_gemm")
def _(a, b_q, scales, zeros, perm, bias, size_n, size_k, group_size):
    _checks_gemm(a, b_q, scales, zeros, perm, bias, size_n, size_k, group_size)
    return ref.gemm(a, b_q, scales, zeros, perm, bias, group_size)


# ----------------------------------------------------------------- Python API
@dataclass
class W4A16Weight:
    """A 4-bit weight in the kernel's layout (see ``qkernels.reference.w4a16``).

    ``qweight`` int32 [K/16, 2N]; ``scales`` / ``zeros`` [G, N] in ``act_dtype`` (``zeros`` None
    when symmetric); ``perm`` int32 [K] or None (act-order: the GEMM gathers ``x[..., perm]``).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    perm: Optional[torch.Tensor]
    size_n: int
    size_k: int
    group_size: int
    has_zp: bool
    act_dtype: torch.dtype


def check_checkpoint_weight(name: str, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                            weight_zero_point: Optional[torch.Tensor], g_idx: Optional[torch.Tensor],
                            group_size: int, act_dtype: torch.dtype, symmetric: Optional[bool],
                            check_sizes) -> Tuple[int, int, int, Optional[torch.Tensor]]:
    """The checks every W4A16 ``prepare_weight`` makes on compressed-tensors ``pack-quantized``
    tensors (``check_sizes(name, N, K, group_size)``: the layout's own size rules). Returns
    ``(N, K, groups, perm)`` (``perm``: the act-order permutation, None without one)."""
    C.check_dtype(name, "weight_packed", weight_packed, (torch.int32,))
    C.check_dim(name, "weight_packed", weight_packed, 2)
    size_n, size_k = weight_packed.shape[0], weight_packed.shape[1] * ref.PACK_FACTOR
    check_sizes(name, size_n, size_k, group_size)
    if act_dtype not in ACT_DTYPES:
        C.fail(name, f"act_dtype = {act_dtype}; supported: {C._fmt_dtypes(ACT_DTYPES)}.")
    groups = _num_groups(size_k, group_size)
    C.check_dim(name, "weight_scale", weight_scale, 2)
    if tuple(weight_scale.shape) != (size_n, groups) or not weight_scale.is_floating_point():
        C.fail(name, f"weight_scale is {weight_scale.dtype} {tuple(weight_scale.shape)}; expected a float tensor "
                     f"[N, G] = [{size_n}, {groups}] for K = {size_k}, group_size = {group_size}.")
    if symmetric is False and weight_zero_point is None:
        C.fail(name, "the weight is asymmetric but weight_zero_point is None: pass the checkpoint's "
                     "weight_zero_point (int32 [ceil(N/8), G]).")
    if symmetric is True and weight_zero_point is not None:
        C.fail(name, "the weight is symmetric but a weight_zero_point was given: drop it, or pass symmetric=False.")
    if weight_zero_point is not None:
        C.check_dtype(name, "weight_zero_point", weight_zero_point, (torch.int32,))
        zp_shape = ((size_n + ref.PACK_FACTOR - 1) // ref.PACK_FACTOR, groups)
        if tuple(weight_zero_point.shape) != zp_shape:
            C.fail(name, f"weight_zero_point has shape {tuple(weight_zero_point.shape)}; expected "
                         f"[ceil(N/8), G] = {list(zp_shape)} (packed along N).")
    perm = None
    if g_idx is not None:
        C.check_dtype(name, "g_idx", g_idx, (torch.int32, torch.int64))
        if tuple(g_idx.shape) != (size_k,):
            C.fail(name, f"g_idx has shape {tuple(g_idx.shape)}; expected [K] = [{size_k}].")
        try:
            perm = ref.act_order_perm(g_idx, group_size)
        except ValueError as e:
            C.fail(name, str(e))
    return size_n, size_k, groups, perm


def prepare_weight(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: Optional[torch.Tensor] = None,
    g_idx: Optional[torch.Tensor] = None,
    group_size: int = -1,
    act_dtype: torch.dtype = torch.bfloat16,
    symmetric: Optional[bool] = None,
) -> W4A16Weight:
    """Convert compressed-tensors ``pack-quantized`` (4-bit) tensors to the kernel's layout. Load time only.

    * ``weight_packed`` int32 ``[N, K/8]`` (eight nibbles along K per word, ``u = q + 8``);
    * ``weight_scale`` ``[N, G]`` (any float dtype; ``G = K / group_size``, 1 per channel);
    * ``weight_zero_point`` int32 ``[ceil(N/8), G]`` packed along N (asymmetric only);
    * ``g_idx`` int32 ``[K]`` (act-order; a trivial ``k // group_size`` is dropped);
    * ``group_size`` -1 (per channel), 32, 64 or 128; ``act_dtype`` float16 or bfloat16;
    * ``symmetric`` (optional, from the checkpoint's config): checked against ``weight_zero_point``.

    The repack runs on the tensors' device (the CUDA kernel for CUDA tensors).
    """
    name = "prepare_weight"
    size_n, size_k, groups, perm = check_checkpoint_weight(
        name, weight_packed, weight_scale, weight_zero_point, g_idx, group_size, act_dtype, symmetric, _check_sizes)
    zeros = None if weight_zero_point is None else ref.kernel_zeros(weight_zero_point, size_n, act_dtype)
    qweight = op("w4a16_repack")(weight_packed.contiguous(), perm)
    return W4A16Weight(
        qweight=qweight,
        scales=ref.kernel_scales(weight_scale, act_dtype),
        zeros=zeros,
        perm=perm,
        size_n=size_n,
        size_k=size_k,
        group_size=group_size,
        has_zp=zeros is not None,
        act_dtype=act_dtype,
    )


def gemm(x: torch.Tensor, w: W4A16Weight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x [..., K] @ dequant(w)^T (+ bias) -> [..., N]`` in ``x.dtype`` (fp16/bf16, = ``w.act_dtype``)."""
    if x.dtype != w.act_dtype:
        C.fail("w4a16.gemm", f"x has dtype {x.dtype} but the weight was prepared for {w.act_dtype}: "
                             "call prepare_weight with act_dtype=x.dtype.")
    if w.has_zp != (w.zeros is not None):
        C.fail("w4a16.gemm", f"has_zp = {w.has_zp} but zeros is {'set' if w.zeros is not None else 'None'}.")
    return op("w4a16_gemm")(x.contiguous(), w.qweight, w.scales, w.zeros, w.perm, bias,
                            w.size_n, w.size_k, w.group_size)


# ----------------------------------------------------------------- schedule introspection
@dataclass(frozen=True)
class Schedule:
    """The CUDA kernel's work partition for one problem, as the launcher computes it.

    ``meta``: sizes and mode (``grid``, ``iters`` per block, ``k_tiles`` per tile, ``tiles``,
    ``stream_k``, the block configuration: ``threads``, ``smem_bytes``, ``stages``, ...).
    ``pieces``: int64 ``[P, len(fields)]``, one row per piece of work (a block's run of
    iterations inside one tile), in block order then in the order the block runs them; ``fields``
    names the columns (``block, seq, tile, slice, n_tile, k_begin, k_end, piece, pieces, slot,
    wait_tile, wait_value``). See csrc/w4a16/partition.h for the reduction protocol.
    """

    meta: dict
    fields: tuple
    pieces: torch.Tensor

    def col(self, name: str) -> torch.Tensor:
        """One column of ``pieces`` by field name."""
        return self.pieces[:, self.fields.index(name)]


def schedule(m: int, n: int, k: int, num_sms: int, library: Optional[str] = None) -> Schedule:
    """The partition the W4A16 kernel uses for ``[m, k] x [k, n]`` on ``num_sms`` SMs.

    Computed by the compiled library's host code (``qk_w4a16_schedule``, the same functions the
    launcher and the kernel run), so a CPU-only test can check the real schedule; needs no GPU.
    ``library``: path of the compiled library (default: the one qkernels loaded). Raises
    RuntimeError when there is none, or it predates this entry point.
    """
    import ctypes

    from .. import _loader

    path = library or _loader.library_path
    if path is None:
        raise RuntimeError(f"w4a16.schedule needs the compiled qkernels library: {_loader.load_error}")
    lib = ctypes.CDLL(path)
    try:
        fn, names = lib.qk_w4a16_schedule, lib.qk_w4a16_schedule_fields
    except AttributeError:
        raise RuntimeError(f"{path} has no qk_w4a16_schedule (built without the w4a16 family, or an older "
                           "build): rebuild the library.") from None
    names.restype = ctypes.c_char_p
    names.argtypes = [ctypes.c_int]
    meta_names = names(0).decode().split(",")
    fields = tuple(names(1).decode().split(","))
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    meta = torch.zeros(len(meta_names), dtype=torch.int64)
    count = fn(m, n, k, num_sms, meta.data_ptr(), meta.numel(), None, 0)
    if count < 0:
        C.fail("w4a16.schedule", f"m = {m}, n = {n}, k = {k}, num_sms = {num_sms}: the kernel needs m >= 1, "
                                 f"n % {TILE_N} == 0, k % {TILE_K} == 0, num_sms >= 1.")
    pieces = torch.zeros(count, len(fields), dtype=torch.int64)
    fn(m, n, k, num_sms, meta.data_ptr(), meta.numel(), pieces.data_ptr(), count)
    return Schedule(dict(zip(meta_names, meta.tolist())), fields, pieces)


def schedule_unavailable() -> Optional[str]:
    """Why :func:`schedule` cannot run here (no compiled library, or one without the entry
    point), or None when it can. For tests that need it: ``pytest.skip(reason)``."""
    try:
        schedule(1, TILE_N, TILE_K, 1)
    except RuntimeError as e:
        return str(e)
    return None


OPS = ("w4a16_repack", "w4a16_gemm")
