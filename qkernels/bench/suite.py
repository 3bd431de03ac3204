"""The sweep shared by every benchmark family: shapes x variants x M, baselines, rows on disk.

A family's benchmark entry is a module in ``bench/`` (see ``bench/README.md``) with:

``NAME``                      the family name on the command line (``scaled_mm``)
``GEMM``                      True: every row gets a ``torch_bf16`` baseline at the same shape
``available() -> str|None``   why it cannot run here (None: it can)
``variants(quick) -> list``   variant names, e.g. ``fp8 token x channel``
``prepare(ctx, shape, variant) -> state``   weights etc., built once per (shape, variant)
``run(ctx, state, M) -> rows``              the qkernels row and its peers' rows at this M
``select(shapes, ms, quick)`` optional: the (shapes, ms) this family sweeps (default: as given)

The suite measures the BF16 cuBLAS baseline (``F.linear`` in bf16) once per
(M, N, K) in the same run, adds one ``torch_bf16`` row per family and shape, fills
``speedup_vs_bf16``, and hands every batch of rows to the :class:`ResultsWriter`
at once, so an interrupted sweep keeps its rows. A case that raises is recorded
in the provenance's ``skipped`` list (family, variant, reason) and the sweep goes on.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..testing.numerics import rel_err
from .progress import Progress
from .results import ResultsWriter, make_row
from .shapes import LinearShape
from ..testing.timing import Timer, Timing

REL_ERR_ROWS = 256
"""rel_err is computed on the first min(M, 256) rows of the output (rows are independent
in every GEMM here), so that checking a large-M case costs little."""


@dataclass
class BenchContext:
    """What an entry needs: the timer, the device, the run's switches."""

    timer: Timer
    quick: bool = False
    peers: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cuda"))
    _failed_peers: set = field(default_factory=set)

    def time(self, fn: Callable[[], Any]) -> Timing:
        return self.timer.time(fn)

    @staticmethod
    def check_rows(M: int) -> int:
        return min(M, REL_ERR_ROWS)

    @staticmethod
    def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
        return rel_err(out, ref)

    def row(self, *, timing: Timing, **kw) -> Dict[str, Any]:
        """:func:`~qkernels.bench.results.make_row` with the time taken from ``timing``."""
        return make_row(time_us=timing.median_us, timing=timing.method, **kw)

    def peer_rows(self, impl: str, fn: Callable[[], Any], **kw) -> List[Dict[str, Any]]:
        """``[row]`` timing a peer's ``fn``, or ``[]`` (logged once per peer) if the peer fails here:
        a peer that cannot run must not cost the qkernels row of the same case."""
        try:
            return [self.row(impl=impl, timing=self.time(fn), **kw)]
        except RuntimeError as e:
            if impl not in self._failed_peers:
                self._failed_peers.add(impl)
                print(f"\npeer {impl} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                      "its rows are left out", file=sys.stderr)
            return []


def _bf16_baseline(ctx: BenchContext, shape: LinearShape, M: int, cache: Dict[Tuple[int, int, int], Timing]) -> Timing:
    key = (M, shape.N, shape.K)
    if key not in cache:
        x = torch.randn(M, shape.K, device=ctx.device, dtype=torch.bfloat16)
        w = torch.randn(shape.N, shape.K, device=ctx.device, dtype=torch.bfloat16)
        cache[key] = ctx.time(lambda: torch.nn.functional.linear(x, w))
        del x, w
    return cache[key]


def add_baselines(ctx: BenchContext, rows: List[Dict[str, Any]], shape: LinearShape, M: int,
                  cache: Dict, emitted: set) -> List[Dict[str, Any]]:
    """``rows`` with speedups filled, preceded by a ``torch_bf16`` row per family not yet given one."""
    t = _bf16_baseline(ctx, shape, M, cache)
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        key = (fam, shape, M)
        if key not in emitted:
            emitted.add(key)
            out.append(ctx.row(family=fam, impl="torch_bf16", shape=shape, M=M,
                               dtypes={"a": "bfloat16", "b": "bfloat16", "out": "bfloat16"}, variant=None,
                               timing=t, flops=2.0 * M * shape.N * shape.K,
                               nbytes=2.0 * (M * shape.K + shape.N * shape.K + M * shape.N)))
            out[-1]["speedup_vs_bf16"] = 1.0
    for r in rows:
        r["speedup_vs_bf16"] = round(t.median_us / r["time_us"], 3)
    return out + rows


def run_suite(ctx: BenchContext, entries: Sequence[Any], shapes: Sequence[LinearShape], ms: Sequence[int],
              writer: ResultsWriter, log=sys.stderr, deadline: Optional[float] = None) -> bool:
    """Sweep every entry over its shapes x variants x M, writing rows as they come. With a
    ``deadline`` (``time.monotonic()``), no shape or variant is started after it: the provenance's
    ``stopped`` says before which; returns True if it stopped there."""
    skipped: List[Dict[str, str]] = writer.provenance.setdefault("skipped", [])
    cache: Dict[Tuple[int, int, int], Timing] = {}
    emitted: set = set()
    for entry in entries:
        e_shapes, e_ms = entry.select(shapes, ms, ctx.quick) if hasattr(entry, "select") else (shapes, ms)
        variants = entry.variants(ctx.quick)
        with Progress(len(e_shapes) * len(variants) * len(e_ms), entry.NAME, stream=log) as bar:
            for shape in e_shapes:
                for variant in variants:
                    if deadline is not None and time.monotonic() > deadline:
                        writer.provenance["stopped"] = f"time limit reached before {entry.NAME} {shape.label} {variant}"
                        return True
                    try:
                        state = entry.prepare(ctx, shape, variant)
                    except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError) as e:
                        _skip(skipped, entry.NAME, variant, shape, None, e, log)
                        bar.update(f"{shape.label} {variant}: skipped", step=len(e_ms))
                        continue
                    for M in e_ms:
                        try:
                            rows = entry.run(ctx, state, M)
                        except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError) as e:
                            _skip(skipped, entry.NAME, variant, shape, M, e, log)
                            rows = []
                        if rows and entry.GEMM:
                            rows = add_baselines(ctx, rows, shape, M, cache, emitted)
                        if rows:
                            writer.add(rows)
                        bar.update(f"{shape.label} {variant} M={M}")
                    del state
                    torch.cuda.empty_cache()
    return False


def _skip(skipped: List[Dict[str, str]], family: str, variant: str, shape: LinearShape, M: Optional[int],
          err: Exception, log) -> None:
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if not any(s["family"] == family and s["variant"] == variant and s["reason"] == reason for s in skipped):
        skipped.append({"family": family, "variant": variant, "reason": reason,
                        "first_case": f"{shape.label}" + (f" M={M}" if M is not None else "")})
        print(f"\n[{family}] {variant}: skipped ({reason}) at {shape.label}" + (f" M={M}" if M else ""), file=log)
