"""Activation quantisation ops: FP8 (e4m3) and INT8, static and dynamic.

Each op below has a Python wrapper (with the docstring), a fake implementation
(shapes only, for ``torch.compile``), the CPU implementation (the reference in
``qkernels.reference.quant``) and, when built, a CUDA kernel (``csrc/quant``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..reference import quant as ref
from . import _checks as C
from ._registry import op, register_fake, register_reference

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPE = ref.FP8_DTYPE


def _check_input(name: str, x: torch.Tensor) -> None:
    C.check_dtype(name, "input", x, INPUT_DTYPES)
    C.check_min_dim(name, "input", x, 1)
    C.check_contiguous(name, "input", x)


def _check_tensor_scale(name: str, argname: str, s: torch.Tensor, x: torch.Tensor) -> None:
    C.check_scale(name, argname, s, (1,), "one per-tensor scale, shape [1]")
    C.check_same_device(name, input=x, **{argname: s})


def _check_rows(name: str, x: torch.Tensor) -> None:
    """Per-token ops reduce over the last dim: it must not be empty."""
    if x.shape[-1] == 0:
        C.fail(name, f"input has shape {tuple(x.shape)}: per-token scales need a non-empty last dim.")


def _token_scale_shape(x: torch.Tensor):
    return (*x.shape[:-1], 1)


# ---------------------------------------------------------------- FP8
def _checks_static_fp8(input, scale):
    _check_input("static_scaled_fp8_quant", input)
    _check_tensor_scale("static_scaled_fp8_quant", "scale", scale, input)


@register_fake("static_scaled_fp8_quant")
def _(input, scale):
    _checks_static_fp8(input, scale)
    return torch.empty_like(input, dtype=FP8_DTYPE)


@register_reference("static_scaled_fp8_quant")
def _(input, scale):
    _checks_static_fp8(input, scale)
    return ref.static_scaled_fp8_quant(input, scale)


@register_fake("dynamic_scaled_fp8_quant")
def _(input):
    _check_input("dynamic_scaled_fp8_quant", input)
    return torch.empty_like(input, dtype=FP8_DTYPE), input.new_empty((1,), dtype=torch.float32)


@register_reference("dynamic_scaled_fp8_quant")
def _(input):
    _check_input("dynamic_scaled_fp8_quant", input)
    return ref.dynamic_scaled_fp8_quant(input)


def _checks_token_fp8(input, scale_ub):
    _check_input("dynamic_per_token_scaled_fp8_quant", input)
    _check_rows("dynamic_per_token_scaled_fp8_quant", input)
    if scale_ub is not None:
        _check_tensor_scale("dynamic_per_token_scaled_fp8_quant", "scale_ub", scale_ub, input)


@register_fake("dynamic_per_token_scaled_fp8_quant")
def _(input, scale_ub=None):
    _checks_token_fp8(input, scale_ub)
    return torch.empty_like(input, dtype=FP8_DTYPE), input.new_empty(_token_scale_shape(input), dtype=torch.float32)


@register_reference("dynamic_per_token_scaled_fp8_quant")
def _(input, scale_ub=None):
    _checks_token_fp8(input, scale_ub)
    return ref.dynamic_per_token_scaled_fp8_quant(input, scale_ub)


def scaled_fp8_quant(
    input: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    per_token: bool = False,
    scale_ub: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``input`` (fp16/bf16/fp32, any leading dims) to ``float8_e4m3fn``.

    * ``scale`` given: static per-tensor quantisation with that float32 ``[1]`` scale.
    * ``scale`` None, ``per_token`` False: dynamic per-tensor scale ``absmax / 448``.
    * ``scale`` None, ``per_token`` True: one scale per token (row), optionally
      computed from ``min(absmax, scale_ub)`` (``scale_ub`` float32 ``[1]``: an upper bound on the
      row's absmax, so the scale is at most ``scale_ub / 448``; vLLM's convention).

    Returns ``(q, scale)``: ``q`` has ``input``'s shape; ``scale`` is float32 ``[1]``
    or ``[*input.shape[:-1], 1]``. Dequantise with ``q.float() * scale``.
    """
    if scale is not None:
        if per_token or scale_ub is not None:
            C.fail("scaled_fp8_quant", "a static `scale` excludes per_token=True and scale_ub.")
        return op("static_scaled_fp8_quant")(input, scale), scale
    if per_token:
        return op("dynamic_per_token_scaled_fp8_quant")(input, scale_ub)
    if scale_ub is not None:
        C.fail("scaled_fp8_quant", "scale_ub only applies to per_token=True.")
    return op("dynamic_scaled_fp8_quant")(input)


# ---------------------------------------------------------------- INT8
def _checks_static_int8(input, scale, azp):
    _check_input("static_scaled_int8_quant", input)
    _check_tensor_scale("static_scaled_int8_quant", "scale", scale, input)
    if azp is not None:
        C.check_dtype("static_scaled_int8_quant", "azp", azp, (torch.int32,))
        if azp.numel() != 1:
            C.fail("static_scaled_int8_quant", f"azp must be one per-tensor int32 zero point; got shape {tuple(azp.shape)}.")
        C.check_same_device("static_scaled_int8_quant", input=input, azp=azp)


@register_fake("static_scaled_int8_quant")
def _(input, scale, azp=None):
    _checks_static_int8(input, scale, azp)
    return torch.empty_like(input, dtype=torch.int8)


@register_reference("static_scaled_int8_quant")
def _(input, scale, azp=None):
    _checks_static_int8(input, scale, azp)
    return ref.static_scaled_int8_quant(input, scale, azp)


@register_fake("dynamic_scaled_int8_quant")
def _(input):
    _check_input("dynamic_scaled_int8_quant", input)
    _check_rows("dynamic_scaled_int8_quant", input)
    return torch.empty_like(input, dtype=torch.int8), input.new_empty(_token_scale_shape(input), dtype=torch.float32)


@register_reference("dynamic_scaled_int8_quant")
def _(input):
    _check_input("dynamic_scaled_int8_quant", input)
    _check_rows("dynamic_scaled_int8_quant", input)
    return ref.dynamic_scaled_int8_quant(input)


@register_fake("dynamic_scaled_int8_quant_azp")
def _(input):
    _check_input("dynamic_scaled_int8_quant_azp", input)
    _check_rows("dynamic_scaled_int8_quant_azp", input)
    shape = _token_scale_shape(input)
    return (
        torch.empty_like(input, dtype=torch.int8),
        input.new_empty(shape, dtype=torch.float32),
        input.new_empty(shape, dtype=torch.int32),
    )


@register_reference("dynamic_scaled_int8_quant_azp")
def _(input):
    _check_input("dynamic_scaled_int8_quant_azp", input)
    _check_rows("dynamic_scaled_int8_quant_azp", input)
    return ref.dynamic_scaled_int8_quant_azp(input)


def scaled_int8_quant(
    input: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    azp: Optional[torch.Tensor] = None,
    symmetric: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Quantise ``input`` (fp16/bf16/fp32, any leading dims) to int8.

    * ``scale`` given: static per-tensor (float32 ``[1]``), with the optional static
      int32 zero point ``azp`` (``[1]``): ``q = sat(rint(x / scale) + azp)``.
    * ``scale`` None, ``symmetric``: dynamic per-token ``scale = absmax / 127``.
    * ``scale`` None, not ``symmetric``: dynamic per-token scale and int32 zero point.

    Returns ``(q, scale, azp)`` with ``azp`` None for symmetric quantisation.
    Dequantise with ``(q.float() - azp) * scale``.
    """
    if scale is not None:
        return op("static_scaled_int8_quant")(input, scale, azp), scale, azp
    if azp is not None:
        C.fail("scaled_int8_quant", "a static `azp` needs a static `scale` too.")
    if symmetric:
        q, s = op("dynamic_scaled_int8_quant")(input)
        return q, s, None
    return op("dynamic_scaled_int8_quant_azp")(input)


OPS = (
    "static_scaled_fp8_quant",
    "dynamic_scaled_fp8_quant",
    "dynamic_per_token_scaled_fp8_quant",
    "static_scaled_int8_quant",
    "dynamic_scaled_int8_quant",
    "dynamic_scaled_int8_quant_azp",
)
