"""W4A16 Hopper path: INT4 weights x FP16/BF16 activations on sm90a wgmma (CUTLASS mixed input).

The large-M companion of :mod:`qkernels.ops.w4a16` (the Marlin-style ``mma.sync`` kernel, which
keeps serving small M, sm80/sm89 and group size 32). Same checkpoint format, same act-order
handling, same shape constraints (N % 64, K % 128); group sizes -1 / 64 / 128 (CUTLASS 4.2's sm90
mixed-input mainloop reads one scale per 64-wide k tile), symmetric or asymmetric;
its own weight layout (op ``w4a16_hopper_prepack``, spec in ``qkernels.reference.w4a16_hopper``),
built at load time from the checkpoint, and its own GEMM (op ``w4a16_hopper_gemm``).

Which path runs is the caller's choice, by token count: :func:`use_hopper` (threshold
:func:`hopper_min_m`: the per-GPU config's ``thresholds["w4a16/sm90/hopper_min_m"]``, default
:data:`W4A16_HOPPER_MIN_M`) and :func:`gemm_auto` (picks among the layouts a layer keeps);
``qkernels.nn.W4A16Linear`` keeps both when loaded with ``w4a16_hopper="auto"|"on"``. Keeping
both layouts costs a second copy of the int4 weight (N K / 2 bytes; the scales and perm are
shared; asymmetric layers add the ``z'`` tensor, 2 G N bytes): see csrc/w4a16/README.md, "Hopper
path".

Each op has a fake implementation (``torch.compile``), a CPU implementation (the reference) and,
when built for sm90a, a CUDA kernel (``csrc/w4a16/*hopper*``, ``kernels/sm90_w4a16_*``). On any
other GPU the CUDA op raises an error naming the Marlin path; :func:`supported` tells beforehand.
The ops belong to the ``w4a16`` build family (``QKERNELS_FAMILIES``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .. import configs
from ..reference import w4a16 as ct  # the checkpoint format (packing, zero points, act-order)
from ..reference import w4a16_hopper as ref
from . import _checks as C
from .w4a16 import _check_group_tensor, check_checkpoint_weight, check_gemm_params, check_perm
from ._registry import op, register_composite, register_fake, register_reference

ACT_DTYPES = (torch.float16, torch.bfloat16)
GROUP_SIZES = ref.GROUP_SIZES
N_MULTIPLE, K_MULTIPLE = ref.N_MULTIPLE, ref.K_MULTIPLE

W4A16_HOPPER_MIN_M = 128
"""The default of :func:`hopper_min_m`: token count (rows of the flattened activations) from
which :func:`use_hopper` picks this path over the Marlin-style kernel on sm90. A prediction until
measured; a per-GPU config (``qkernels/configs/<gpu>.json``, written by ``qkernels tune``, which
measures the crossover) sets it as ``thresholds["w4a16/sm90/hopper_min_m"]``."""
HOPPER_MIN_M_KEY = "w4a16/sm90/hopper_min_m"
configs.register_threshold(
    HOPPER_MIN_M_KEY, W4A16_HOPPER_MIN_M,
    "W4A16: tokens (M) from which the sm90 Hopper path replaces the Marlin-style one (layers keeping both layouts)")


def hopper_min_m() -> int:
    """The Marlin -> Hopper switch point in use: the per-GPU config's threshold, else
    :data:`W4A16_HOPPER_MIN_M` (a dict lookup; cheap on every call)."""
    return configs.threshold(HOPPER_MIN_M_KEY)

PAD_HINT = (
    "Pad the layer: N with zero weight rows (and slice the output), K with zero activation "
    "columns and weight nibbles of value 8 (q = 0) (see csrc/w4a16/README.md, 'Shapes')."
)
_MARLIN = "use the Marlin-style path (qkernels.ops.w4a16) for this layer instead."


def _check_sizes(name: str, size_n: int, size_k: int, group_size: int) -> None:
    if size_n <= 0 or size_k <= 0:
        C.fail(name, f"N = {size_n} and K = {size_k} must be positive.")
    C.check_multiple(name, "N (output features)", size_n, N_MULTIPLE, PAD_HINT)
    C.check_multiple(name, "K (input features)", size_k, K_MULTIPLE, PAD_HINT)
    if size_n * size_k >= 2**31:
        C.fail(name, f"N x K = {size_n} x {size_k} has 2^31 or more weights (32-bit layout offsets): "
                     "split the layer along N.")
    if group_size not in GROUP_SIZES:
        extra = f" Group size 32 runs on the Marlin-style path only: {_MARLIN}" if group_size in ct.GROUP_SIZES else ""
        C.fail(name, f"group_size = {group_size}; supported: {', '.join(map(str, GROUP_SIZES))} (-1 = per channel)."
                     + extra)
    if group_size != -1:
        C.check_multiple(name, "K (input features)", size_k, group_size, "group_size must divide K.")


# ----------------------------------------------------------------- w4a16_hopper_prepack
def _checks_prepack(weight_packed: torch.Tensor, perm: Optional[torch.Tensor]) -> None:
    name = "w4a16_hopper_prepack"
    C.check_dtype(name, "weight_packed", weight_packed, (torch.int32,),
                  hint="It is the int32 `weight_packed` tensor of a pack-quantized checkpoint.")
    C.check_dim(name, "weight_packed", weight_packed, 2)
    C.check_contiguous(name, "weight_packed", weight_packed)
    size_n, size_k = weight_packed.shape[0], weight_packed.shape[1] * ct.PACK_FACTOR
    if size_n <= 0 or size_k <= 0:
        C.fail(name, f"weight_packed {tuple(weight_packed.shape)} is empty: N and K must be positive.")
    _check_sizes(name, size_n, size_k, -1)
    if perm is not None:
        check_perm(name, perm, size_k)
        C.check_same_device(name, weight_packed=weight_packed, perm=perm)


def _prepacked_shape(size_n: int, size_k: int) -> Tuple[int, int, int]:
    return (size_k // ref.ATOM, size_n // ref.ATOM, ref.WORDS_PER_ATOM)


@register_fake("w4a16_hopper_prepack")
def _(weight_packed, perm=None):
    _checks_prepack(weight_packed, perm)
    return weight_packed.new_empty(_prepacked_shape(weight_packed.shape[0], weight_packed.shape[1] * ct.PACK_FACTOR))


@register_reference("w4a16_hopper_prepack")
def _(weight_packed, perm=None):
    _checks_prepack(weight_packed, perm)
    if perm is not None and perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= perm.numel()):
        C.fail("w4a16_hopper_prepack", f"perm holds column indices outside [0, K = {perm.numel()}): "
                                       "pass argsort(g_idx) (see prepare_weight).")
    return ref.prepack(weight_packed, perm)


# ----------------------------------------------------------------- w4a16_hopper_gemm
def _checks_gemm(a, b, scales, zeros, perm, bias, size_n, size_k, group_size) -> None:
    name = "w4a16_hopper_gemm"
    C.check_dtype(name, "a", a, ACT_DTYPES)
    C.check_min_dim(name, "a", a, 1)
    C.check_contiguous(name, "a", a)
    _check_sizes(name, size_n, size_k, group_size)
    if a.shape[-1] != size_k:
        C.fail(name, f"a has shape {tuple(a.shape)}; its last dim must be K = {size_k}.")
    C.check_dtype(name, "b", b, (torch.int32,), hint="b comes from w4a16_hopper_prepack / prepare_weight.")
    if tuple(b.shape) != _prepacked_shape(size_n, size_k):
        hint = (" This looks like a Marlin-layout weight (w4a16_repack): use qkernels.w4a16_gemm for it, or "
                "prepack the checkpoint with w4a16_hopper_prepack." if b.dim() == 2 else "")
        C.fail(name, f"b has shape {tuple(b.shape)}; expected [K/16, N/16, 32] = "
                     f"{list(_prepacked_shape(size_n, size_k))} (the output of w4a16_hopper_prepack).{hint}")
    C.check_contiguous(name, "b", b)
    check_gemm_params(name, a, scales, zeros, perm, bias, size_n, size_k, group_size)
    C.check_same_device(name, a=a, b=b, scales=scales, zeros=zeros, perm=perm, bias=bias)


@register_fake("w4a16_hopper_gemm")
def _(a, b, scales, zeros, perm, bias, size_n, size_k, group_size):
    _checks_gemm(a, b, scales, zeros, perm, bias, size_n, size_k, group_size)
    return a.new_empty((*a.shape[:-1], size_n))


@register_reference("w4a16_hopper_gemm")
def _(a, b, scales, zeros, perm, bias, size_n, size_k, group_size):
    _checks_gemm(a, b, scales, zeros, perm, bias, size_n, size_k, group_size)
    return ref.gemm(a, b, scales, zeros, perm, bias, group_size)


# ----------------------------------------------------------------- capability
@register_composite("w4a16_hopper_supported")
def _(device_capability: int) -> bool:
    # The kernels are sm_90a code, built only if the SM90 group of the w4a16 family was compiled
    # (the build records its groups; QK_W4A16_SM90 in the glue).
    from .. import _loader

    built = "SM90" in _loader.build_info.get("groups", {}).get("w4a16", {})
    return device_capability == 90 and built and _loader.library_path is not None


def supported(device_capability: int) -> bool:
    """True if this install runs the Hopper path on a GPU of that capability (``major*10+minor``).

    Only 90 (H100/H200) with the sm90a kernels built. Elsewhere use :mod:`qkernels.ops.w4a16`.
    """
    return bool(op("w4a16_hopper_supported")(int(device_capability)))


def supports_group_size(group_size: int) -> bool:
    """True if the Hopper path runs this group size (-1, 64, 128; 32 needs the Marlin-style path)."""
    return group_size in GROUP_SIZES


def layer_unsupported(size_n: int, size_k: int, group_size: int) -> Optional[str]:
    """Why a layer of that shape and group size cannot have the Hopper layout (short, for reports),
    or None if it can (the GPU is another question: :func:`supported`)."""
    if group_size not in GROUP_SIZES:
        return f"group size {group_size} not supported (runs {', '.join(map(str, GROUP_SIZES))})"
    if size_n % N_MULTIPLE or size_k % K_MULTIPLE:
        return f"needs N % {N_MULTIPLE} == 0 and K % {K_MULTIPLE} == 0, layer is [{size_n}, {size_k}]"
    if size_n * size_k >= 2**31:
        return f"N x K = {size_n} x {size_k} >= 2^31 (32-bit layout offsets)"
    return None


def use_hopper(m: int, device_capability: int, group_size: int = -1, min_m: Optional[int] = None) -> bool:
    """The path choice for ``m`` tokens: True if the Hopper path should run (supported on this GPU
    and group size, and ``m >= min_m``, default :func:`hopper_min_m`)."""
    return (m >= (hopper_min_m() if min_m is None else min_m) and supports_group_size(group_size)
            and supported(device_capability))


# ----------------------------------------------------------------- Python API
_ZERO_BUFFERS: Dict[Tuple[str, torch.dtype], torch.Tensor] = {}


def zero_buffer(groups: int, size_n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A ``[groups, size_n]`` view of zeros, shared by every symmetric layer on ``device``.

    The kernel always adds a zero term (``z' = 0`` keeps symmetric weights exact); one buffer per
    (device, dtype), grown to the largest layer, saves a per-layer ``[G, N]`` tensor and a per-call
    memset. Load time only (it may allocate)."""
    key = (str(torch.device(device)), dtype)
    buf = _ZERO_BUFFERS.get(key)
    if buf is None or buf.numel() < groups * size_n:
        buf = torch.zeros(groups * size_n, dtype=dtype, device=device)
        _ZERO_BUFFERS[key] = buf
    return buf[: groups * size_n].view(groups, size_n)


@dataclass
class W4A16HopperWeight:
    """A 4-bit weight in the Hopper path's layout (see ``qkernels.reference.w4a16_hopper``).

    ``b`` int32 [K/16, N/16, 32]; ``scales`` [G, N] in ``act_dtype`` (the same tensor the Marlin
    layout uses, so a layer keeping both shares it); ``zeros`` [G, N]: ``z' = (8 - z) s`` when
    asymmetric, a view of the shared :func:`zero_buffer` when symmetric; ``perm`` int32 [K] or None
    (act-order: the GEMM gathers ``x[..., perm]``)."""

    b: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    perm: Optional[torch.Tensor]
    size_n: int
    size_k: int
    group_size: int
    has_zp: bool
    act_dtype: torch.dtype


def prepare_weight(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: Optional[torch.Tensor] = None,
    g_idx: Optional[torch.Tensor] = None,
    group_size: int = -1,
    act_dtype: torch.dtype = torch.bfloat16,
    symmetric: Optional[bool] = None,
    scales: Optional[torch.Tensor] = None,
) -> W4A16HopperWeight:
    """Convert compressed-tensors ``pack-quantized`` (4-bit) tensors to the Hopper layout. Load time only.

    Arguments as :func:`qkernels.ops.w4a16.prepare_weight` (``weight_packed`` int32 [N, K/8],
    ``weight_scale`` [N, G], ``weight_zero_point`` int32 [ceil(N/8), G] or None, ``g_idx`` [K] or
    None, ``group_size`` -1/64/128 (32: Marlin path only), ``act_dtype`` fp16/bf16, ``symmetric``
    checked against the zero point). ``scales``: the Marlin weight's ``scales`` to share (same [G, N] tensor) instead
    of making a new one. The prepack runs on the tensors' device (the CUDA kernel on sm90).
    """
    name = "w4a16_hopper.prepare_weight"
    size_n, size_k, groups, perm = check_checkpoint_weight(
        name, weight_packed, weight_scale, weight_zero_point, g_idx, group_size, act_dtype, symmetric, _check_sizes)
    if scales is None:
        scales = ct.kernel_scales(weight_scale, act_dtype)
    else:
        _check_group_tensor(name, "scales", scales, (groups, size_n), act_dtype)
    if weight_zero_point is not None:
        zeros = ref.hopper_zeros(weight_zero_point, scales, size_n)
    else:
        zeros = zero_buffer(groups, size_n, act_dtype, weight_packed.device)
    b = op("w4a16_hopper_prepack")(weight_packed.contiguous(), perm)
    return W4A16HopperWeight(b=b, scales=scales, zeros=zeros, perm=perm, size_n=size_n, size_k=size_k,
                             group_size=group_size, has_zp=weight_zero_point is not None, act_dtype=act_dtype)


def gemm(x: torch.Tensor, w: W4A16HopperWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x [..., K] @ dequant(w)^T (+ bias) -> [..., N]`` in ``x.dtype`` (fp16/bf16, = ``w.act_dtype``)."""
    if x.dtype != w.act_dtype:
        C.fail("w4a16_hopper.gemm", f"x has dtype {x.dtype} but the weight was prepared for {w.act_dtype}: "
                                    "call prepare_weight with act_dtype=x.dtype.")
    return op("w4a16_hopper_gemm")(x.contiguous(), w.b, w.scales, w.zeros, w.perm, bias,
                                   w.size_n, w.size_k, w.group_size)


def gemm_auto(x: torch.Tensor, marlin=None, hopper: Optional[W4A16HopperWeight] = None,
              bias: Optional[torch.Tensor] = None, min_m: Optional[int] = None) -> torch.Tensor:
    """Run whichever layout fits ``x``'s token count: the Hopper path for ``M >= min_m`` on sm90
    (:func:`use_hopper`), else the Marlin-style path. A layer may keep either layout or both
    (``marlin``: a :class:`qkernels.ops.w4a16.W4A16Weight`); with one, that one runs for every M."""
    if marlin is None and hopper is None:
        C.fail("w4a16_hopper.gemm_auto", "no weight given: pass marlin= (w4a16.prepare_weight) and/or hopper= "
                                         "(w4a16_hopper.prepare_weight).")
    if hopper is not None and (marlin is None or (
            x.is_cuda and use_hopper(C.rows(x), _capability(x.device), hopper.group_size, min_m))):
        return gemm(x, hopper, bias)
    from . import w4a16

    return w4a16.gemm(x, marlin, bias)


def _capability(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


OPS = ("w4a16_hopper_prepack", "w4a16_hopper_gemm", "w4a16_hopper_supported")
