"""Helpers shared by the benchmark entries: availability checks, weight quantisation, names."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def family_module(name: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    """(``qkernels.ops.<name>``, None) or (None, why it is not available)."""
    try:
        return importlib.import_module(f"qkernels.ops.{name}"), None
    except ModuleNotFoundError as e:
        if e.name == f"qkernels.ops.{name}":
            return None, f"qkernels.ops.{name} is not part of this install"
        raise


def unavailable(family: str, min_sm: Tuple[int, int] = (7, 5),
                max_sm: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """Why ``family`` cannot be benchmarked here (no GPU, op module absent, one of its ops not
    built, arch outside [min_sm, max_sm]), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    mod, why = family_module(family)
    if mod is None:
        return why
    from qkernels import _loader

    missing = [o for o in mod.OPS if not _loader.has_cuda_kernel(o)]
    if missing:
        return f"no CUDA kernel for {', '.join(missing)} ({_loader.load_error or 'family not compiled'})"
    sm = torch.cuda.get_device_capability()
    if sm < min_sm or (max_sm is not None and sm > max_sm):
        span = f"sm_{min_sm[0]}{min_sm[1]}" + (f"..sm_{max_sm[0]}{max_sm[1]}" if max_sm else "+")
        return f"needs {span}; this GPU is sm_{sm[0]}{sm[1]}"
    return None


def random_weight(N: int, K: int, device, scale: float = 0.02) -> torch.Tensor:
    """A bf16 [N, K] weight with a realistic magnitude (``randn * 0.02``)."""
    return (torch.randn(N, K, device=device) * scale).to(torch.bfloat16)


def quantize_weight(w: torch.Tensor, dtype: torch.dtype, per_channel: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``w [N, K]`` -> (q [N, K] of ``dtype`` (fp8 e4m3 or int8), float32 scale [N, 1] or [1])."""
    qmax = FP8_MAX if dtype == FP8 else 127.0
    wf = w.float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per_channel else wf.abs().amax().reshape(1)
    scale = (amax / qmax).clamp(min=1e-12)
    q = wf / (scale if per_channel else scale.reshape(()))
    q = q.clamp(-qmax, qmax)
    q = q.to(FP8) if dtype == FP8 else q.round().to(torch.int8)
    return q, scale


def quantize_activations(x: torch.Tensor, dtype: torch.dtype, per_token: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The activation quantisation a W8A8 layer runs (the qkernels quant ops)."""
    from qkernels.ops.quant import scaled_fp8_quant, scaled_int8_quant

    if dtype == FP8:
        return scaled_fp8_quant(x, per_token=per_token)
    if per_token:
        q, s, _ = scaled_int8_quant(x)
        return q, s
    s = (x.float().abs().amax() / 127.0).clamp(min=1e-12).reshape(1)
    q, s, _ = scaled_int8_quant(x, scale=s)
    return q, s


def prune_24(w: torch.Tensor) -> torch.Tensor:
    """``w`` with the 2 smallest-magnitude values of every 4 consecutive along K set to zero."""
    N, K = w.shape
    g = w.reshape(N, K // 4, 4)
    keep = g.abs().float().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return (g * mask).reshape(N, K)
