"""Quantized ``Linear`` modules that call qkernels ops, and :func:`make_linear` that builds one from
the tensors a compressed-tensors checkpoint stores for a module.

========================  ==========================================  ==================================
checkpoint                module                                      op (CUDA kernel / CPU reference)
========================  ==========================================  ==================================
W8A8 int8 / fp8           :class:`W8A8Linear`                         quant.scaled_*_quant + scaled_mm
  asymmetric int8 inputs  :class:`W8A8Linear` (azp-corrected GEMM)    scaled_mm.scaled_mm_azp
FP8 weights that are 2:4  :class:`Sparse24Linear` (sm90 or CPU)       sparse24.scaled_mm
FP8_BLOCK (128x128 block  :class:`FP8BlockLinear`                     fp8_block.per_token_group_quant +
weights, group-128 input)                                             fp8_block.scaled_mm
W4A16 (4-bit packed)      :class:`W4A16Linear`                        w4a16.gemm (repacked once at load);
                                                                      on sm90 also w4a16_hopper.gemm for
                                                                      M >= hopper_min_m (``w4a16_hopper``)
anything without a kernel :class:`DequantLinear` (listed as high      torch F.linear on the dequantized
here (shape, GPU, bits)   precision in the report, with the reason)   weight
========================  ==========================================  ==================================

A module is built on the device it will run on: ops on CPU tensors are the pure-torch
references (what CI tests), ops on CUDA tensors the kernels. Its ``kernel`` attribute says
which; the loader's report lists them.

FP8 on a GPU older than sm_89 (no FP8 tensor cores): the layer falls back to a
:class:`DequantLinear` holding the dequantized weight in the model dtype, and the report says so
(the documented choice: the model still runs, at bf16 speed, without FP8 activation quantization).

Model dtypes the kernels do not take (the GEMMs output float16 / bfloat16 only; a float32 model is
the usual case), decided once at load time by ``unsupported_dtype`` (the report says which):

* ``"cast"`` (default): the kernel runs with a bfloat16 output (W4A16: bfloat16 activations too)
  and the result is cast to the model dtype; the bias is added after the cast, in the model dtype.
  The extra error is one bfloat16 rounding (2^-9 relative), far below the quantization error of
  any of these formats. ``kernel`` ends with ``"..., bfloat16 kernel, cast to float32"``.
* ``"dequantize"``: a :class:`DequantLinear` in the model dtype (the format's exact math on the
  dequantized weight, no activation quantization, no kernel speed), listed as high precision.
* ``"error"``: :class:`~qkernels.nn.config.CheckpointError` naming the module.

``weight``: :class:`W8A8Linear` and :class:`DequantLinear` hold a dense ``[N, K]`` ``weight``
buffer (int8 / fp8 as stored, or the dequantized float weight). :class:`W4A16Linear` and
:class:`Sparse24Linear` store packed / compressed tensors, and their ``weight`` is a read-only
property that dequantizes on every access (a new ``[N, K]`` tensor; a warning the first time),
so code that inspects ``module.weight`` (shape, dtype, device, values) keeps working. Every module
has :meth:`QuantLinear.dequantize`, the explicit form: the dense float weight ``[N, K]``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import fp8_block as fb
from ..ops import quant
from ..ops import sparse24 as sp24
from ..ops import w4a16
from ..ops import w4a16_hopper as w4h
from .config import CheckpointError, QuantArgs, Scheme

FP8 = torch.float8_e4m3fn
Tensors = Dict[str, torch.Tensor]
KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # what the GEMMs output (and W4A16 takes)
CAST_DTYPE = torch.bfloat16  # the kernels' dtype for a model in another dtype (unsupported_dtype="cast")
UNSUPPORTED_DTYPE_POLICIES = ("cast", "dequantize", "error")
W4A16_HOPPER_POLICIES = ("auto", "on", "off")  # see make_linear and qkernels.nn.loader


def _scaled_mm():
    # imported lazily: the module of the scaled_mm family is optional at import time of qkernels.nn
    from ..ops import scaled_mm

    return scaled_mm


# ------------------------------------------------------------------------ activation quantization
@dataclass(frozen=True)
class ActQuant:
    """How a layer quantizes its input: int8 or fp8, per token (dynamic) or per tensor (static/dynamic)."""

    dtype: torch.dtype
    per_token: bool
    static: bool
    symmetric: bool

    def describe(self) -> str:
        kind = "static per-tensor" if self.static else ("dynamic per-token" if self.per_token else "dynamic per-tensor")
        return f"{'int8' if self.dtype == torch.int8 else 'fp8'} {kind}{'' if self.symmetric else ' asym'}"


def act_quant_of(args: QuantArgs, weight_dtype: torch.dtype, where: str) -> ActQuant:
    """The :class:`ActQuant` for a scheme's ``input_activations``; a clear error for what no kernel runs."""
    dtype = torch.int8 if args.type == "int" else FP8
    supported = ("supported: int8 dynamic per-token (sym/asym), int8 static per-tensor (sym/asym), "
                 "fp8 dynamic per-token or per-tensor, fp8 static per-tensor (sym)")
    ok = args.num_bits == 8 and (
        (args.strategy == "token" and args.dynamic)
        or (args.strategy == "tensor" and (not args.dynamic or dtype == FP8)))
    if dtype == FP8 and not args.symmetric:
        ok = False
    if not ok:
        raise CheckpointError(f"{where}: input activations '{args.describe()}' have no qkernels kernel; {supported}.")
    if dtype != weight_dtype:
        raise CheckpointError(f"{where}: {args.type} activations with {weight_dtype} weights: W8A8 needs both int8 "
                              "or both fp8.")
    return ActQuant(dtype, args.strategy == "token", not args.dynamic, args.symmetric)


# ------------------------------------------------------------------------ modules
class QuantLinear(torch.nn.Module):
    """Base of the modules below: ``in_features``, ``out_features``, ``kernel`` (what runs),
    ``high_precision`` (True when the layer computes with a dequantized weight) and ``cast_dtype``
    (None, or the dtype the kernel runs in when the model dtype is one it does not take)."""

    high_precision = False

    def __init__(self, in_features: int, out_features: int, bias: Optional[torch.Tensor], kernel: str,
                 cast_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.cast_dtype = cast_dtype
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel='{self.kernel}'"

    def dequantize(self) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` weight in float (what the layer multiplies by,
        up to the kernel's rounding). A new tensor: for inspection and tests, not for the forward."""
        raise NotImplementedError

    def _run(self, x: torch.Tensor, run: Callable[[torch.dtype, Optional[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """``run(out_dtype, bias)`` in the input's dtype when the kernels take it; else in
        ``cast_dtype`` without the bias, cast back, then the bias added in the input's dtype."""
        if x.dtype in KERNEL_DTYPES:
            return run(x.dtype, None if self.bias is None else self.bias.to(x.dtype))
        if self.cast_dtype is None:
            raise RuntimeError(f"{type(self).__name__} ({self.kernel}): the input is {x.dtype}, but the kernel takes "
                               "float16 / bfloat16. Load the model with dtype=torch.bfloat16, or with "
                               "unsupported_dtype='cast' (or 'dequantize'), see qkernels.nn.linear.")
        out = run(self.cast_dtype, None).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


_WARNED = set()


def _warn_dequantizing_weight(cls: type, stored: str) -> None:
    if cls not in _WARNED:
        _WARNED.add(cls)
        warnings.warn(f"{cls.__name__}.weight dequantizes the {stored} into a new [out_features, in_features] float "
                      "tensor on every access (this warning is shown once). Use .dequantize() to say so "
                      "explicitly, or the stored buffers (see qkernels.nn.linear) to avoid the copy.", stacklevel=3)


def _dequantizing_weight(stored: str) -> property:
    """The read-only ``weight`` property of a module that stores ``stored`` (packed / compressed) instead
    of a dense weight: the dense float32 ``[N, K]`` weight, dequantized on every access (see the module doc)."""

    def get(self) -> torch.Tensor:
        _warn_dequantizing_weight(type(self), stored)
        return self.dequantize()

    def set_(self, value) -> None:
        raise AttributeError(f"{type(self).__name__}.weight is computed from the quantized buffers and cannot be set; "
                             "build a new module from a checkpoint instead (qkernels.nn.make_linear).")

    return property(get, set_, doc=get.__doc__ or f"The dense float32 weight, dequantized from the {stored}.")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


class _ActQuantMixin:
    act: ActQuant

    def _init_act(self, act: ActQuant, input_scale: Optional[torch.Tensor], input_zp: Optional[torch.Tensor]):
        self.act = act
        self.register_buffer("input_scale", input_scale)
        self.register_buffer("input_zero_point", input_zp)

    def _quantize_input(self, x2: torch.Tensor):
        """(q, scale, azp|None) of the 2-D input."""
        if self.act.dtype == FP8:
            q, s = quant.scaled_fp8_quant(x2, self.input_scale, per_token=self.act.per_token)
            return q, s, None
        return quant.scaled_int8_quant(x2, self.input_scale, self.input_zero_point, symmetric=self.act.symmetric)


class W8A8Linear(_ActQuantMixin, QuantLinear):
    """INT8 x INT8 or FP8 x FP8 scaled GEMM: ``out = (s_x * s_w) * (q_x @ q_w^T) + bias``.

    ``weight`` [N, K] int8 / fp8 (passed to the GEMM as the column-major ``weight.t()``),
    ``weight_scale`` float32 [1] or [1, N]. Asymmetric int8 inputs use the azp-corrected GEMM:
    ``sum_k (q_k - z) w_k = sum_k q_k w_k - z * colsum(w)``, with ``azp_adj = z * colsum(w)``
    precomputed for a static zero point, ``colsum(w)`` for dynamic per-token zero points.
    """

    def __init__(self, weight, weight_scale, act: ActQuant, bias=None, input_scale=None, input_zp=None,
                 kernel: str = "", cast_dtype: Optional[torch.dtype] = None):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel, cast_dtype)
        self.register_buffer("weight", weight.contiguous())
        ws = weight_scale.float().reshape(-1)  # [1] per tensor, [1, N] per channel
        self.register_buffer("weight_scale", (ws if ws.numel() == 1 else ws.reshape(1, -1)).contiguous())
        self._init_act(act, input_scale, input_zp)
        azp_adj = None
        if not act.symmetric:
            colsum = self.weight.to(torch.int32).sum(dim=1, dtype=torch.int32)
            azp_adj = colsum * input_zp.to(torch.int32).reshape(()) if act.static else colsum
        self.register_buffer("azp_adj", azp_adj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s, azp = self._quantize_input(_rows(x))
        mm = _scaled_mm()

        def run(out_dtype, bias):
            if self.azp_adj is None:
                return mm.scaled_mm(q, self.weight.t(), s, self.weight_scale, out_dtype, bias)
            # a static zero point is folded into azp_adj: pass azp only when it is per token
            return mm.scaled_mm_azp(q, self.weight.t(), s, self.weight_scale, out_dtype, self.azp_adj,
                                    None if self.act.static else azp, bias)

        return self._run(x, run).reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.reshape(-1, 1)


class Sparse24Linear(_ActQuantMixin, QuantLinear):
    """FP8 GEMM with a 2:4 sparse weight compressed once at load (``qkernels.ops.sparse24``)."""

    def __init__(self, weight: torch.Tensor, weight_scale, act: ActQuant, bias=None, input_scale=None,
                 kernel: str = "", cast_dtype: Optional[torch.dtype] = None):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel, cast_dtype)
        sw = sp24.compress(weight.contiguous())
        self.register_buffer("values", sw.values)
        self.register_buffer("meta", sw.meta)
        self.register_buffer("weight_scale", weight_scale.float().reshape(-1).contiguous())
        self._init_act(act, input_scale, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s, _ = self._quantize_input(_rows(x))
        sw = sp24.Sparse24Weight(self.values, self.meta, self.out_features, self.in_features)
        out = self._run(x, lambda out_dtype, bias: sp24.scaled_mm(q, sw, s, self.weight_scale, out_dtype, bias))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        w = sp24.decompress(sp24.Sparse24Weight(self.values, self.meta, self.out_features, self.in_features))
        return w.float() * self.weight_scale.reshape(-1, 1)

    weight = _dequantizing_weight("2:4-compressed fp8 weight")


class FP8BlockLinear(QuantLinear):
    """Block-scaled FP8 (compressed-tensors / llm-compressor ``FP8_BLOCK``, DeepSeek-V3 style).

    ``weight`` float8_e4m3fn ``[N, K]`` with ``weight_scale`` float32 ``[ceil(N/128), K/128]`` (one
    scale per 128 x 128 block; the last block row may cover fewer than 128 rows); the input is
    quantized per token in groups of 128 along K (``qkernels.ops.fp8_block.per_token_group_quant``)
    and the GEMM applies both scales per K block (``qkernels.ops.fp8_block.scaled_mm``).
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias=None, kernel: str = "",
                 cast_dtype: Optional[torch.dtype] = None):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel, cast_dtype)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # column-major scales: the layout the sm90 kernel reads without a copy (any layout on CPU)
        q, s = fb.per_token_group_quant(_rows(x), fb.BLOCK, column_major_scales=x.is_cuda)
        out = self._run(x, lambda out_dtype, bias: fb.scaled_mm(q, self.weight.t(), s, self.weight_scale,
                                                                out_dtype, bias))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        s = _expand_blocks(self.weight_scale.float(), self.out_features, self.in_features, (fb.BLOCK, fb.BLOCK))
        return self.weight.float() * s


class W4A16Linear(QuantLinear):
    """INT4 weights x bf16/fp16 activations, repacked once at load.

    Always the Marlin-style layout (``qkernels.ops.w4a16``: ``qweight``, ``scales``, ``zeros``,
    ``perm``). Optionally (``hopper``) also the sm90 Hopper layout (``qkernels.ops.w4a16_hopper``:
    buffers ``hopper_b`` and ``hopper_zeros``; ``scales`` and ``perm`` are shared): then an input
    of at least ``hopper_min_m`` tokens (rows of the flattened input; None: the per-GPU config's
    threshold, :func:`qkernels.ops.w4a16_hopper.hopper_min_m`, read on each call) runs the Hopper
    GEMM, a smaller one the Marlin GEMM. The layer holds the Hopper layout only where it runs (the
    loader builds it on sm90 with the kernels built, or on CPU with the reference ops when asked
    to), so the forward does not re-check the GPU. The Hopper tensors are non-persistent buffers:
    derived from the checkpoint at load time, left out of ``state_dict()``. ``has_hopper`` says
    whether the layer keeps them; :meth:`dequantize` reads the Marlin layout.
    """

    def __init__(self, w: w4a16.W4A16Weight, bias=None, kernel: str = "", cast_dtype: Optional[torch.dtype] = None,
                 hopper: Optional[w4h.W4A16HopperWeight] = None, hopper_min_m: Optional[int] = None):
        super().__init__(w.size_k, w.size_n, bias, kernel, cast_dtype)
        for k in ("qweight", "scales", "zeros", "perm"):
            self.register_buffer(k, getattr(w, k))
        self.group_size, self.act_dtype = w.group_size, w.act_dtype
        if hopper is not None:
            _check_same_weight(w, hopper)
        self.register_buffer("hopper_b", None if hopper is None else hopper.b, persistent=False)
        self.register_buffer("hopper_zeros", None if hopper is None else hopper.zeros, persistent=False)
        if hopper_min_m is not None and (isinstance(hopper_min_m, bool) or not isinstance(hopper_min_m, int)
                                         or hopper_min_m < 1):
            raise ValueError(f"hopper_min_m = {hopper_min_m!r}: pass an int >= 1, or None for the per-GPU config's "
                             "threshold (qkernels.ops.w4a16_hopper.hopper_min_m()).")
        self.hopper_min_m = hopper_min_m

    @property
    def has_hopper(self) -> bool:
        """True if the layer keeps the Hopper layout too (large inputs run the Hopper GEMM)."""
        return self.hopper_b is not None

    def _weight(self) -> w4a16.W4A16Weight:
        return w4a16.W4A16Weight(self.qweight, self.scales, self.zeros, self.perm, self.out_features,
                                 self.in_features, self.group_size, self.zeros is not None, self.act_dtype)

    def _hopper_weight(self) -> w4h.W4A16HopperWeight:
        return w4h.W4A16HopperWeight(self.hopper_b, self.scales, self.hopper_zeros, self.perm, self.out_features,
                                     self.in_features, self.group_size, self.zeros is not None, self.act_dtype)

    def uses_hopper(self, m: int) -> bool:
        """Whether an input of ``m`` tokens runs the Hopper GEMM."""
        if self.hopper_b is None:
            return False
        return m >= (w4h.hopper_min_m() if self.hopper_min_m is None else self.hopper_min_m)

    def _gemm(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.uses_hopper(math.prod(x.shape[:-1])):
            return w4h.gemm(x, self._hopper_weight(), bias)
        return w4a16.gemm(x, self._weight(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in KERNEL_DTYPES or self.cast_dtype is None:
            return self._gemm(x, None if self.bias is None else self.bias.to(x.dtype))
        out = self._gemm(x.to(self.act_dtype), None).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        from ..reference.w4a16 import dequantize_kernel_layout

        w_sorted = dequantize_kernel_layout(self.qweight, self.scales, self.zeros, self.group_size).float()  # [K, N]
        if self.perm is None:
            return w_sorted.t().contiguous()
        w = torch.empty(self.out_features, self.in_features, device=w_sorted.device)
        w[:, self.perm.long()] = w_sorted.t()  # kernel row k is checkpoint column perm[k]
        return w

    weight = _dequantizing_weight("4-bit packed weight")


def _check_same_weight(w: w4a16.W4A16Weight, h: w4h.W4A16HopperWeight) -> None:
    """The two layouts of one W4A16 layer must describe the same checkpoint (load time)."""
    mine = (w.size_n, w.size_k, w.group_size, w.has_zp, w.act_dtype, w.perm is None)
    theirs = (h.size_n, h.size_k, h.group_size, h.has_zp, h.act_dtype, h.perm is None)
    what = "(size_n, size_k, group_size, has_zp, act_dtype, no act-order)"
    if mine != theirs:
        raise ValueError(f"W4A16Linear: the Marlin weight {mine} and the Hopper weight {theirs} {what} differ: "
                         "prepare both from the same checkpoint tensors (w4a16_hopper.prepare_weight(..., "
                         "scales=marlin.scales)).")
    if h.scales is not w.scales and not torch.equal(h.scales, w.scales):
        raise ValueError("W4A16Linear: the Hopper weight's scales differ from the Marlin weight's: prepare it with "
                         "w4a16_hopper.prepare_weight(..., scales=marlin.scales) (the layer keeps one copy).")
    if w.perm is not None and not torch.equal(h.perm, w.perm):
        raise ValueError("W4A16Linear: the two weights have different act-order permutations (g_idx): prepare both "
                         "from the same checkpoint tensors.")


class DequantLinear(QuantLinear):
    """A quantized layer computed with its dequantized weight (no kernel for it here): ``kernel`` says why."""

    high_precision = True

    def __init__(self, weight: torch.Tensor, bias=None, kernel: str = ""):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float()


# ------------------------------------------------------------------------ reading a module's tensors
def _tensor(t: Tensors, key: str, where: str, dtypes=None, shape=None) -> torch.Tensor:
    if key not in t:
        raise CheckpointError(f"{where}: tensor '{key}' is missing (found: {sorted(t) or 'nothing'}). "
                              "The checkpoint does not match its quantization_config.")
    v = t[key]
    if dtypes is not None and v.dtype not in dtypes:
        raise CheckpointError(f"{where}.{key} has dtype {v.dtype}; expected {' or '.join(map(str, dtypes))}.")
    if shape is not None and tuple(v.shape) not in [tuple(s) for s in shape]:
        raise CheckpointError(f"{where}.{key} has shape {tuple(v.shape)}; expected "
                              f"{' or '.join(str(list(s)) for s in shape)}.")
    return v


PACKED_BITS = (2, 4, 8)  # pack-quantized widths whose values tile an int32 word (32 % num_bits == 0)


def num_groups(args: QuantArgs, k: int) -> int:
    """Columns of a [N, G] scale / zero point: K / group_size for groups, else 1."""
    return -(-k // args.group_size) if args.strategy == "group" else 1


def unpack_int32(packed: torch.Tensor, num_bits: int, size: int, dim: int = -1) -> torch.Tensor:
    """compressed-tensors ``unpack_from_int32``: the unsigned ``num_bits`` values (int32) packed
    little-endian as a bit stream along ``dim`` of an int32 tensor (element j in bits [jb, jb+b))."""
    p = packed.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    bit = torch.arange(size, device=p.device) * num_bits
    word, off = bit // 32, bit % 32
    lo = p[..., word] >> off
    nxt = p[..., (word + 1).clamp(max=p.shape[-1] - 1)]
    hi = torch.where(off + num_bits > 32, nxt << (32 - off), torch.zeros_like(nxt))
    return ((lo | hi) & ((1 << num_bits) - 1)).to(torch.int32).movedim(-1, dim)


def decompress_bitmask(t: Tensors, where: str) -> torch.Tensor:
    """Dense [N, K] weight of a legacy ``sparse-24-bitmask`` module (``compressed``, ``bitmask``, ``shape``):
    ``bitmask`` is numpy.packbits(mask, bitorder='little') per row; ``compressed`` the kept values in order."""
    values = _tensor(t, "compressed", where)
    bitmask = _tensor(t, "bitmask", where, (torch.uint8,))
    n, k = (int(v) for v in _tensor(t, "shape", where).flatten().tolist())
    if tuple(bitmask.shape) != (n, -(-k // 8)):
        raise CheckpointError(f"{where}.bitmask has shape {tuple(bitmask.shape)}; expected [{n}, {-(-k // 8)}].")
    bits = (bitmask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=bitmask.device)) & 1
    mask = bits.flatten(1)[:, :k].bool()
    if int(mask.sum()) != values.numel():
        raise CheckpointError(f"{where}: bitmask keeps {int(mask.sum())} values but 'compressed' holds "
                              f"{values.numel()}.")
    dense = torch.zeros(n, k, dtype=torch.uint8, device=values.device)
    dense[mask] = values.reshape(-1).view(torch.uint8) if values.element_size() == 1 else values.reshape(-1)
    return dense.view(values.dtype) if values.element_size() == 1 else dense.to(values.dtype)


def _expand_blocks(s: torch.Tensor, n: int, k: int, block: Tuple[int, int]) -> torch.Tensor:
    """A ``[ceil(N/bn), ceil(K/bk)]`` block scale expanded to ``[N, K]`` (partial last blocks cut)."""
    return s.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]


def _expand_groups(s: torch.Tensor, k: int, args: QuantArgs, g_idx: Optional[torch.Tensor],
                   n: Optional[int] = None) -> torch.Tensor:
    """A [N, G] (or [N, 1] / scalar / block) scale / zero point expanded to [N, K]."""
    if args.strategy == "block":
        return _expand_blocks(s, n, k, args.block_structure)
    if args.strategy == "tensor":
        return s.reshape(1, 1)
    if args.strategy == "channel":
        return s.reshape(-1, 1)
    idx = g_idx.long() if g_idx is not None else torch.arange(k, device=s.device) // args.group_size
    return s[:, idx]


def dequantize(t: Tensors, args: QuantArgs, fmt: str, dtype: torch.dtype, where: str) -> torch.Tensor:
    """The dense [N, K] weight in ``dtype`` of a quantized module (any format, bits, strategy)."""
    if fmt == "pack-quantized":
        n, k = (int(v) for v in _tensor(t, "weight_shape", where).tolist())
        q = unpack_int32(t["weight_packed"], args.num_bits, k).float() - 2 ** (args.num_bits - 1)
    else:
        q = t["weight"].float()
        n, k = q.shape
    s = t["weight_scale"].float()
    g_idx = t.get("weight_g_idx")
    w = q
    if not args.symmetric:
        zp = t["weight_zero_point"]
        if fmt == "pack-quantized":
            zp = unpack_int32(zp, args.num_bits, n, dim=0).float() - 2 ** (args.num_bits - 1)
        w = q - _expand_groups(zp.float(), k, args, g_idx, n)
    return (w * _expand_groups(s, k, args, g_idx, n)).to(dtype)


# ------------------------------------------------------------------------ the factory
def device_capability(device: torch.device) -> Optional[int]:
    """``major*10 + minor`` of a CUDA device, None for CPU."""
    if torch.device(device).type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def _where_kernel(cap: Optional[int], what: str) -> str:
    return f"{what}, reference (cpu)" if cap is None else f"{what} (sm{cap})"


def make_linear(name: str, t: Tensors, scheme: Scheme, fmt: str, *, act_dtype: torch.dtype,
                device: torch.device, legacy_sparse24: bool = False, use_sparse24: bool = True,
                expected_shape: Optional[Tuple[int, int]] = None, unsupported_dtype: str = "cast",
                w4a16_hopper: str = "auto") -> QuantLinear:
    """Build the qkernels module for the checkpoint tensors ``t`` (local names: ``weight``, ``weight_scale``...)
    of module ``name``. Tensors are moved to ``device``; the module runs there.

    ``expected_shape`` ([out_features, in_features] of the model's Linear) is checked against the
    stored weight. ``unsupported_dtype`` ("cast", "dequantize" or "error") says what to do when
    ``act_dtype`` is not float16 / bfloat16 (see the module doc). ``w4a16_hopper`` (W4A16 layers):
    ``"auto"`` keeps the Hopper layout beside the Marlin one on an sm90 GPU with the sm90a kernels
    built, for a group size that path runs (-1, 64, 128); ``"on"`` the same, and on CPU too (the
    layout prepared by the reference ops: what the CPU tests check); ``"off"`` the Marlin layout
    only. Either way a layer that cannot have it keeps Marlin only and its ``kernel`` says why
    (``"..., marlin only (hopper: group size 32 ...)"``); one that has it says
    ``"..., marlin + hopper (M >= 128)"``. The memory budget of the whole model is
    :func:`qkernels.nn.loader.apply_checkpoint`'s business. Raises :class:`CheckpointError`
    naming the module and the tensor on bad input.
    """
    if unsupported_dtype not in UNSUPPORTED_DTYPE_POLICIES:
        raise ValueError(f"unsupported_dtype = {unsupported_dtype!r}; choose from {UNSUPPORTED_DTYPE_POLICIES}.")
    if w4a16_hopper not in W4A16_HOPPER_POLICIES:
        raise ValueError(f"w4a16_hopper = {w4a16_hopper!r}; choose from {W4A16_HOPPER_POLICIES}.")
    t = {k: v.to(device) for k, v in t.items()}
    args = scheme.weights
    cap = device_capability(device)
    bias = t.get("bias")
    bias = None if bias is None else bias.to(act_dtype)
    if args is None:
        raise CheckpointError(f"{name}: config group {scheme.name!r} quantizes no weights: not a quantized Linear.")
    if legacy_sparse24:
        t = {**{k: v for k, v in t.items() if k not in ("compressed", "bitmask", "shape")},
             "weight": decompress_bitmask(t, name)}

    # ---- shapes and dtypes of what is stored
    if fmt == "pack-quantized":
        if args.type != "int":
            raise CheckpointError(f"{name}: pack-quantized weights must be int; the config says {args.type}.")
        if args.num_bits not in PACKED_BITS:
            raise CheckpointError(f"{name}: pack-quantized weights with num_bits={args.num_bits} are not supported; "
                                  f"qkernels reads num_bits in {PACKED_BITS} (4 bits on the W4A16 kernel, 2 and 8 "
                                  "dequantized). Re-quantize to 4 bits (W4A16) or 8 bits (W8A16 / W8A8).")
        n, k = (int(v) for v in _tensor(t, "weight_shape", name, shape=[(2,)]).tolist())
        _tensor(t, "weight_packed", name, (torch.int32,), [(n, -(-k * args.num_bits // 32))])
    else:
        w = _tensor(t, "weight", name, (torch.int8,) if args.type == "int" else (FP8,))
        if w.dim() != 2:
            raise CheckpointError(f"{name}.weight has shape {tuple(w.shape)}; expected a 2-D [N, K] weight.")
        n, k = w.shape
        if args.num_bits != 8:
            raise CheckpointError(f"{name}: {fmt} stores 8-bit weights; the config says num_bits={args.num_bits}.")
    if expected_shape is not None and (n, k) != tuple(expected_shape):
        raise CheckpointError(f"{name}: the checkpoint's weight is [{n}, {k}] but the model's Linear is "
                              f"{list(expected_shape)} [out_features, in_features].")
    groups = num_groups(args, k)
    if "weight_g_idx" in t and args.strategy == "group":
        g_idx = _tensor(t, "weight_g_idx", name, (torch.int32, torch.int64), [(k,)])
        # act-order: a row-parallel shard keeps every group's scale (see qkernels.nn.tp)
        groups = max(groups, int(g_idx.max()) + 1)
    if args.strategy == "block":
        if not args.symmetric:
            raise CheckpointError(f"{name}: asymmetric block-quantized weights are not supported (FP8_BLOCK is "
                                  "symmetric).")
        bn, bk = args.block_structure
        scale_ok = [(-(-n // bn), -(-k // bk))]
    else:
        scale_ok = [(n, groups)] if args.strategy != "tensor" else [(), (1,)]
    _tensor(t, "weight_scale", name, (torch.float32, torch.float16, torch.bfloat16), scale_ok)
    if not args.symmetric:
        zp_rows = -(-n * args.num_bits // 32) if fmt == "pack-quantized" else n
        _tensor(t, "weight_zero_point", name, (torch.int32,) if fmt == "pack-quantized" else None,
                [(zp_rows, groups)] if args.strategy != "tensor" else [(), (1,)])

    def fallback(reason: str) -> DequantLinear:
        return DequantLinear(dequantize(t, args, fmt, act_dtype, name), bias, f"dequantized {str(act_dtype)[6:]} "
                             f"({reason})")

    # ---- a model dtype the kernels do not take: decided here, once, for every scheme
    cast_dtype = None
    if act_dtype not in KERNEL_DTYPES:
        if unsupported_dtype == "error":
            raise CheckpointError(f"{name}: the model dtype is {act_dtype}, but qkernels' kernels compute in float16 / "
                                  "bfloat16. Load with dtype=torch.bfloat16, or pass unsupported_dtype='cast' (kernels "
                                  "in bfloat16, outputs cast) or 'dequantize' (dequantized weights in the model dtype).")
        if unsupported_dtype == "dequantize":
            return fallback(f"model dtype {str(act_dtype)[6:]}: the kernels take float16 / bfloat16")
        cast_dtype = CAST_DTYPE
    cast_note = "" if cast_dtype is None else f", {str(cast_dtype)[6:]} kernel, cast to {str(act_dtype)[6:]}"

    # ---- weight-only
    if scheme.input_activations is None:
        if fmt != "pack-quantized" or args.num_bits != 4:
            return fallback(f"weight-only {args.type}{args.num_bits}: no W{args.num_bits}A16 kernel in qkernels")
        return _make_w4a16(name, t, args, n, k, bias, cast_dtype or act_dtype, cap, fallback, cast_dtype, cast_note,
                           w4a16_hopper)

    # ---- W8A8
    if fmt == "pack-quantized":
        raise CheckpointError(f"{name}: pack-quantized weights with quantized input activations (W4A8) "
                              "have no qkernels kernel.")
    if args.strategy == "block":
        return _make_fp8_block(name, t, args, scheme.input_activations, n, k, bias, cap, fallback, cast_dtype,
                               cast_note)
    if not args.symmetric or args.strategy not in ("tensor", "channel"):
        raise CheckpointError(f"{name}: W8A8 weights '{args.describe()}' are not supported; supported: symmetric, "
                              "per-tensor or per-channel.")
    wdt = t["weight"].dtype
    act = act_quant_of(scheme.input_activations, wdt, f"{name}.input_activations")
    in_scale = in_zp = None
    if act.static:
        in_scale = _tensor(t, "input_scale", name, shape=[(), (1,)]).float().reshape(1)
        if not act.symmetric:
            in_zp = _tensor(t, "input_zero_point", name, (torch.int8, torch.int32), [(), (1,)]).to(torch.int32).reshape(1)
    weight, w_scale = t["weight"], t["weight_scale"].float()
    family = "w8a8-int8" if wdt == torch.int8 else "w8a8-fp8"

    if wdt == FP8 and sp24.is_24(weight):
        shape_ok = k % sp24.K_MULTIPLE == 0 and n % sp24.N_MULTIPLE == 0
        if not use_sparse24:
            note = "2:4 detected, sparse kernel disabled"
        elif not shape_ok:
            note = f"2:4 detected, sparse kernel needs K % {sp24.K_MULTIPLE} == 0 and N % {sp24.N_MULTIPLE} == 0"
        elif cap is not None and not sp24.supported(cap):
            note = f"2:4 detected, sparse kernel needs sm90 (this GPU is sm{cap})"
        elif not act.symmetric:
            note = "2:4 detected, asymmetric inputs"
        else:
            return Sparse24Linear(weight, w_scale, act, bias, in_scale,
                                  _where_kernel(cap, f"2:4 sparse fp8, {act.describe()}{cast_note}"), cast_dtype)
        family = f"dense fp8 ({note})"

    if cap is not None and not _scaled_mm().supports(cap, wdt):
        if wdt == FP8:
            return fallback(f"FP8 GEMM needs sm89+, this GPU is sm{cap}; use an INT8 or W4A16 checkpoint for speed")
        raise CheckpointError(f"{name}: the INT8 scaled GEMM is not available on sm{cap} in this build "
                              "(`qkernels info` lists what was built).")
    return W8A8Linear(weight, w_scale, act, bias, in_scale, in_zp,
                      _where_kernel(cap, f"{family} scaled_mm, {args.strategy} weights, {act.describe()}{cast_note}"),
                      cast_dtype)


def _make_fp8_block(name, t, args, inputs: QuantArgs, n, k, bias, cap, fallback, cast_dtype, cast_note) -> QuantLinear:
    """FP8_BLOCK: 128x128 block-scaled fp8 weights x fp8 activations quantized per token in groups of 128."""
    if args.type != "float" or args.num_bits != 8 or t["weight"].dtype != FP8:
        raise CheckpointError(f"{name}: block-quantized weights '{args.describe()}' ({t['weight'].dtype}) are not "
                              "supported; supported: float8_e4m3fn with 128x128 blocks (FP8_BLOCK).")
    if not (inputs.type == "float" and inputs.num_bits == 8 and inputs.strategy == "group" and inputs.dynamic
            and inputs.symmetric and inputs.group_size == fb.BLOCK):
        raise CheckpointError(f"{name}.input_activations: '{inputs.describe()}' with 128x128 block weights has no "
                              f"qkernels kernel; supported: float8 dynamic per-token groups of {fb.BLOCK} (FP8_BLOCK).")
    if k % fb.K_MULTIPLE or n % fb.N_MULTIPLE:
        return fallback(f"FP8 block GEMM needs K % {fb.K_MULTIPLE} == 0 and N % {fb.N_MULTIPLE} == 0, layer is "
                        f"[{n}, {k}]")
    if cap is not None and not fb.supports(cap):
        return fallback(f"FP8 block GEMM runs on sm89 / sm90 with the fp8_block family built; this GPU is sm{cap}")
    partial = f", last block row {n % fb.BLOCK} of {fb.BLOCK}" if n % fb.BLOCK else ""
    return FP8BlockLinear(t["weight"], t["weight_scale"], bias,
                          _where_kernel(cap, f"fp8 block128x128 scaled_mm, fp8 dynamic per-token group128"
                                             f"{partial}{cast_note}"), cast_dtype)


def _make_w4a16(name, t, args, n, k, bias, act_dtype, cap, fallback, cast_dtype=None, cast_note="",
                hopper: str = "off") -> QuantLinear:
    gs = -1 if args.strategy == "channel" else (args.group_size if args.strategy == "group" else None)
    if gs is None:
        return fallback("W4A16 with a per-tensor weight scale has no kernel layout")
    if gs not in w4a16.GROUP_SIZES:
        return fallback(f"W4A16 group_size {gs} not in {w4a16.GROUP_SIZES}")
    if n % w4a16.TILE_N or k % w4a16.TILE_K:
        return fallback(f"W4A16 kernel needs N % {w4a16.TILE_N} == 0 and K % {w4a16.TILE_K} == 0, layer is [{n}, {k}]")
    g_idx = t.get("weight_g_idx")
    if g_idx is not None and gs != -1:
        counts = torch.bincount(g_idx.long().cpu(), minlength=k // gs)
        if counts.numel() != k // gs or bool((counts != gs).any()):
            return fallback("act-order groups do not hold group_size columns each (a row-parallel shard?)")
    try:
        w = w4a16.prepare_weight(t["weight_packed"].contiguous(), t["weight_scale"], t.get("weight_zero_point"),
                                 g_idx, gs, act_dtype, symmetric=args.symmetric)
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from e
    hw, paths = None, "marlin"
    if hopper == "on" or (hopper == "auto" and cap is not None):
        why = w4h.layer_unsupported(n, k, gs)
        if cap is not None and not w4h.supported(cap):
            here = "build has none" if cap == 90 else f"GPU is sm{cap}"
            why = f"needs sm90 with the sm90a kernels built, this {here}"
        if why is None:
            try:
                hw = w4h.prepare_weight(t["weight_packed"].contiguous(), t["weight_scale"], t.get("weight_zero_point"),
                                        g_idx, gs, act_dtype, symmetric=args.symmetric, scales=w.scales)
            except ValueError as e:
                raise CheckpointError(f"{name}: {e}") from e
            paths = f"marlin + hopper (M >= {w4h.hopper_min_m()})"
        elif hopper == "on" or cap == 90:  # "auto" elsewhere: the Marlin path is the only one, nothing to explain
            paths = f"marlin only (hopper: {why})"
    order = ", act-order" if w.perm is not None else ""
    what = f"w4a16 {'asym' if w.has_zp else 'sym'} g{gs}{order}, {paths}{cast_note}"
    return W4A16Linear(w, bias, _where_kernel(cap, what), cast_dtype, hw)
