"""Model-level estimate: a model's Linear-layer GEMM time per quantisation scheme.

**An estimate, not a measurement.** For a step that processes ``tokens`` tokens
(prefill: ``batch * seq_len``; decode: ``batch``), the estimate is

    num_hidden_layers * sum over the block's GEMMs (shape, M, count) of count * t_scheme(N, K, M)

with the calls from :meth:`ModelSpec.gemm_calls` (MoE experts: uniform routing) and
``t_scheme`` read from benchmark rows of the same (N, K): linear interpolation in M
between measured points, the smallest measured M's time below it (GEMM time is flat
there), and linear scaling from the largest measured M above it (compute-bound).
It is the GEMM share of TTFT / TPOT only: attention, norms, activation
quantisation, communication and launch gaps are not in it.
"""
from __future__ import annotations

import statistics
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .shapes import ModelSpec


@dataclass(frozen=True)
class Scheme:
    """Which rows time a scheme: ``family``/``impl`` and the variants preferred, in order."""

    name: str
    family: Optional[str]  # None: any family (the bf16 baseline appears in each)
    impl: str
    variants: Tuple[str, ...] = ()
    note: str = ""


SCHEMES: Tuple[Scheme, ...] = (
    Scheme("BF16", None, "torch_bf16", note="cuBLAS, unquantised"),
    Scheme("W8A8-INT8", "scaled_mm_int8", "qkernels", ("int8 token x channel", "int8 tensor x tensor")),
    Scheme("W8A8-FP8", "scaled_mm_fp8", "qkernels", ("fp8 token x channel", "fp8 tensor x tensor")),
    Scheme("W8A8-FP8-BLOCK", "fp8_block", "qkernels", ("g128 dynamic", "g128 dynamic ue8m0"),
           note="128x128 weight blocks, dynamic per-token-group-128 activations"),
    Scheme("W4A16", "w4a16", "qkernels", ("g128 sym", "g128 asym", "g128 act-order", "g64 sym", "g32 sym", "channel sym")),
    Scheme("2:4 FP8", "sparse24_fp8", "qkernels", ("fp8 token x channel", "fp8 tensor x tensor")),
)
SCHEME_BY_NAME = {s.name: s for s in SCHEMES}

Curve = List[Tuple[int, float]]  # sorted (M, time_us)


def interpolate(curve: Curve, M: int) -> Tuple[float, bool]:
    """(time at ``M``, True if ``M`` lies outside the measured range)."""
    ms = [m for m, _ in curve]
    i = bisect_left(ms, M)
    if i < len(ms) and ms[i] == M:
        return curve[i][1], False
    if i == 0:
        return curve[0][1], True
    if i == len(ms):
        m1, t1 = curve[-1]
        return t1 * M / m1, True
    (m0, t0), (m1, t1) = curve[i - 1], curve[i]
    return t0 + (t1 - t0) * (M - m0) / (m1 - m0), False


def scheme_curves(rows: Iterable[dict], scheme: Scheme) -> Tuple[Optional[str], Dict[Tuple[int, int], Curve]]:
    """(variant used, {(N, K): curve}) for ``scheme``. Duplicate points take the median time."""
    rows = [r for r in rows if r["impl"] == scheme.impl and r.get("N") is not None
            and (scheme.family is None or r["family"] == scheme.family)]
    if not rows:
        return None, {}
    present = {r["variant"] for r in rows}
    variant = next((v for v in scheme.variants if v in present), None)
    if scheme.variants and variant is None:
        variant = sorted(v for v in present if v is not None)[0]
    pts: Dict[Tuple[int, int], Dict[int, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not scheme.variants or r["variant"] == variant:
            pts[(r["N"], r["K"])][r["M"]].append(r["time_us"])
    return variant, {nk: sorted((m, statistics.median(ts)) for m, ts in by_m.items()) for nk, by_m in pts.items()}


@dataclass
class StepEstimate:
    """One scheme, one step: total microseconds (None if a shape has no rows) and caveats."""

    scheme: str
    variant: Optional[str]
    time_us: Optional[float]
    missing: List[Tuple[int, int]]
    extrapolated: bool


def estimate_step(model: ModelSpec, tokens: int, scheme: Scheme, rows: Sequence[dict]) -> StepEstimate:
    variant, curves = scheme_curves(rows, scheme)
    total, missing, extrapolated = 0.0, [], False
    for shape, M, count in model.gemm_calls(tokens):
        curve = curves.get((shape.N, shape.K))
        if not curve:
            missing.append((shape.N, shape.K))
            continue
        t, out = interpolate(curve, M)
        total += count * t
        extrapolated |= out
    return StepEstimate(scheme.name, variant, None if missing else total * model.num_hidden_layers,
                        missing, extrapolated)


def estimate(model: ModelSpec, rows: Sequence[dict], batch: int, seq_len: int,
             schemes: Sequence[Scheme] = SCHEMES) -> Dict[str, Dict[str, StepEstimate]]:
    """{scheme: {"prefill": ..., "decode": ...}} for ``batch`` sequences of ``seq_len`` prompt tokens."""
    return {s.name: {"prefill": estimate_step(model, batch * seq_len, s, rows),
                     "decode": estimate_step(model, batch, s, rows)} for s in schemes}


def _ms(e: StepEstimate, base: Optional[StepEstimate]) -> str:
    if e.time_us is None:
        return "no rows" if e.variant is None else f"missing N,K {', '.join(f'{n}x{k}' for n, k in e.missing)}"
    s = f"{e.time_us / 1e3:.3f}"
    if base is not None and base.time_us:
        s += f" ({base.time_us / e.time_us:.2f}×)"
    return s + (" †" if e.extrapolated else "")


def markdown(model: ModelSpec, est: Dict[str, Dict[str, StepEstimate]], batch: int, seq_len: int) -> str:
    """The estimate as a markdown table, labelled as an estimate."""
    base = est.get("BF16", {})
    lines = [
        f"#### Estimate: {model.name}, batch {batch}, prompt {seq_len} tokens "
        f"({model.num_hidden_layers} layers{', MoE ' + str(model.num_experts) + 'x top-' + str(model.num_experts_per_tok) if model.is_moe else ''})",
        "",
        "**Estimate, not a measurement**: the sum of the model's Linear-layer GEMM times "
        "interpolated from the benchmark rows (attention, norms, activation quantisation and "
        "communication are not included). Times in ms; (×) = speedup vs BF16.",
        "",
        "| scheme | variant | prefill GEMMs (ms) | decode-step GEMMs (ms) |",
        "|---|---|---:|---:|",
    ]
    for name, steps in est.items():
        lines.append(f"| {name} | {steps['decode'].variant or '–'} | {_ms(steps['prefill'], base.get('prefill'))} | "
                     f"{_ms(steps['decode'], base.get('decode'))} |")
    if any(e.extrapolated for steps in est.values() for e in steps.values()):
        lines += ["", "† some M outside the measured range (clamped below, scaled linearly above)."]
    return "\n".join(lines) + "\n"
