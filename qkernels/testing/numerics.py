"""Numeric helpers for comparing a kernel against its reference."""
from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (0 if both are zero). NaN/Inf in ``out`` give inf."""
    o = out.detach().double().cpu()
    r = ref.detach().double().cpu()
    if not torch.isfinite(o).all():
        return float("inf")
    den = r.norm().item()
    num = (o - r).norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "") -> None:
    """Fails with the measured relative error if it exceeds ``tol``."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    e = rel_err(out, ref)
    assert e <= tol, f"{what}: rel_err {e:.3e} > tol {tol:.1e}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with a value no kernel writes (NaN for floats, a marker for ints)."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-77 if t.dtype == torch.int8 else -7777777)
