"""Quantized ``Linear`` modules that call qkernels ops, and :func:`make_linear` that builds one from
the tensors a compressed-tensors checkpoint stores for a module.

========================  ==========================================  ==================================
checkpoint                module                                      op (CUDA kernel / CPU reference)
========================  ==========================================  ==================================
W8A8 int8 / fp8           :class:`W8A8Linear`                         quant.scaled_*_quant + scaled_mm
  asymmetric int8 inputs  :class:`W8A8Linear` (azp-corrected GEMM)    scaled_mm.scaled_mm_azp
FP8 weights that are 2:4  :class:`Sparse24Linear` (sm90 or CPU)       sparse24.scaled_mm
W4A16 (4-bit packed)      :class:`W4A16Linear`                        w4a16.gemm (repacked once at load)
anything without a kernel :class:`DequantLinear` (listed as high      torch F.linear on the dequantized
here (shape, GPU, bits)   precision in the report, with the reason)   weight
========================  ==========================================  ==================================

A module is built on the device it will run on: ops on CPU tensors are the pure-torch
references (what CI tests), ops on CUDA tensors the kernels. Its ``kernel`` attribute says
which; the loader's report lists them.

FP8 on a GPU older than sm_89 (no FP8 tensor cores): the layer falls back to a
:class:`DequantLinear` holding the dequantized weight in the model dtype, and the report says so
(the documented choice: the model still runs, at bf16 speed, without FP8 activation quantization).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import quant
from ..ops import sparse24 as sp24
from ..ops import w4a16
from .config import CheckpointError, QuantArgs, Scheme

FP8 = torch.float8_e4m3fn
Tensors = Dict[str, torch.Tensor]


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
    """Base of the modules below: ``in_features``, ``out_features``, ``kernel`` (what runs) and
    ``high_precision`` (True when the layer computes with a dequantized weight)."""

    high_precision = False

    def __init__(self, in_features: int, out_features: int, bias: Optional[torch.Tensor], kernel: str):
        super().__init__()
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel='{self.kernel}'"


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
                 kernel: str = ""):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel)
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
        if self.azp_adj is None:
            out = mm.scaled_mm(q, self.weight.t(), s, self.weight_scale, x.dtype, self.bias)
        else:  # a static zero point is folded into azp_adj: pass azp only when it is per token
            out = mm.scaled_mm_azp(q, self.weight.t(), s, self.weight_scale, x.dtype, self.azp_adj,
                                   None if self.act.static else azp, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class Sparse24Linear(_ActQuantMixin, QuantLinear):
    """FP8 GEMM with a 2:4 sparse weight compressed once at load (``qkernels.ops.sparse24``)."""

    def __init__(self, weight: torch.Tensor, weight_scale, act: ActQuant, bias=None, input_scale=None,
                 kernel: str = ""):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel)
        sw = sp24.compress(weight.contiguous())
        self.register_buffer("values", sw.values)
        self.register_buffer("meta", sw.meta)
        self.register_buffer("weight_scale", weight_scale.float().reshape(-1).contiguous())
        self._init_act(act, input_scale, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s, _ = self._quantize_input(_rows(x))
        sw = sp24.Sparse24Weight(self.values, self.meta, self.out_features, self.in_features)
        out = sp24.scaled_mm(q, sw, s, self.weight_scale, x.dtype, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class W4A16Linear(QuantLinear):
    """INT4 weights x bf16/fp16 activations (``qkernels.ops.w4a16``), repacked once at load."""

    def __init__(self, w: w4a16.W4A16Weight, bias=None, kernel: str = ""):
        super().__init__(w.size_k, w.size_n, bias, kernel)
        for k in ("qweight", "scales", "zeros", "perm"):
            self.register_buffer(k, getattr(w, k))
        self.group_size, self.act_dtype = w.group_size, w.act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = w4a16.W4A16Weight(self.qweight, self.scales, self.zeros, self.perm, self.out_features,
                              self.in_features, self.group_size, self.zeros is not None, self.act_dtype)
        return w4a16.gemm(x, w, self.bias)


class DequantLinear(QuantLinear):
    """A quantized layer computed with its dequantized weight (no kernel for it here): ``kernel`` says why."""

    high_precision = True

    def __init__(self, weight: torch.Tensor, bias=None, kernel: str = ""):
        super().__init__(weight.shape[1], weight.shape[0], bias, kernel)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


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


def _expand_groups(s: torch.Tensor, k: int, args: QuantArgs, g_idx: Optional[torch.Tensor]) -> torch.Tensor:
    """A [N, G] (or [N, 1] / scalar) scale / zero point expanded to [N, K]."""
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
        w = q - _expand_groups(zp.float(), k, args, g_idx)
    return (w * _expand_groups(s, k, args, g_idx)).to(dtype)


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
                expected_shape: Optional[Tuple[int, int]] = None) -> QuantLinear:
    """Build the qkernels module for the checkpoint tensors ``t`` (local names: ``weight``, ``weight_scale``...)
    of module ``name``. Tensors are moved to ``device``; the module runs there.

    ``expected_shape`` ([out_features, in_features] of the model's Linear) is checked against the
    stored weight. Raises :class:`CheckpointError` naming the module and the tensor on bad input.
    """
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
    scale_ok = [(n, groups)] if args.strategy != "tensor" else [(), (1,)]
    _tensor(t, "weight_scale", name, (torch.float32, torch.float16, torch.bfloat16), scale_ok)
    if not args.symmetric:
        zp_rows = -(-n * args.num_bits // 32) if fmt == "pack-quantized" else n
        _tensor(t, "weight_zero_point", name, (torch.int32,) if fmt == "pack-quantized" else None,
                [(zp_rows, groups)] if args.strategy != "tensor" else [(), (1,)])

    def fallback(reason: str) -> DequantLinear:
        return DequantLinear(dequantize(t, args, fmt, act_dtype, name), bias, f"dequantized {str(act_dtype)[6:]} "
                             f"({reason})")

    # ---- weight-only
    if scheme.input_activations is None:
        if fmt != "pack-quantized" or args.num_bits != 4:
            return fallback(f"weight-only {args.type}{args.num_bits}: no W{args.num_bits}A16 kernel in qkernels")
        return _make_w4a16(name, t, args, n, k, bias, act_dtype, cap, fallback)

    # ---- W8A8
    if fmt == "pack-quantized":
        raise CheckpointError(f"{name}: pack-quantized weights with quantized input activations (W4A8) "
                              "have no qkernels kernel.")
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
                                  _where_kernel(cap, f"2:4 sparse fp8, {act.describe()}"))
        family = f"dense fp8 ({note})"

    if cap is not None and not _scaled_mm().supports(cap, wdt):
        if wdt == FP8:
            return fallback(f"FP8 GEMM needs sm89+, this GPU is sm{cap}; use an INT8 or W4A16 checkpoint for speed")
        raise CheckpointError(f"{name}: the INT8 scaled GEMM is not available on sm{cap} in this build "
                              "(`qkernels info` lists what was built).")
    return W8A8Linear(weight, w_scale, act, bias, in_scale, in_zp,
                      _where_kernel(cap, f"{family} scaled_mm, {args.strategy} weights, {act.describe()}"))


def _make_w4a16(name, t, args, n, k, bias, act_dtype, cap, fallback) -> QuantLinear:
    gs = -1 if args.strategy == "channel" else (args.group_size if args.strategy == "group" else None)
    if gs is None:
        return fallback("W4A16 with a per-tensor weight scale has no kernel layout")
    if gs not in w4a16.GROUP_SIZES:
        return fallback(f"W4A16 group_size {gs} not in {w4a16.GROUP_SIZES}")
    if n % w4a16.TILE_N or k % w4a16.TILE_K:
        return fallback(f"W4A16 kernel needs N % {w4a16.TILE_N} == 0 and K % {w4a16.TILE_K} == 0, layer is [{n}, {k}]")
    if act_dtype not in w4a16.ACT_DTYPES:
        return fallback(f"W4A16 runs fp16/bf16 activations, the model is {act_dtype}")
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
    order = ", act-order" if w.perm is not None else ""
    what = f"w4a16 {'asym' if w.has_zp else 'sym'} g{gs}{order}"
    return W4A16Linear(w, bias, _where_kernel(cap, what))
