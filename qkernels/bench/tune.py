"""``qkernels tune``: choose, per M bucket, the fastest *correct* compiled kernel of every dispatch
key that runs on this GPU, and write the per-GPU config (:mod:`qkernels.configs`).

For each key (``scaled_mm/sm90/fp8``, ``sparse24/sm90/fp8``, ...; the library lists them), each
bucket of a grid of M values (the compiled-in default's boundaries plus a fixed grid) and each
Linear shape of the model presets (:mod:`qkernels.bench.shapes`; a family's driver may choose its
own: ``fp8_block/sm90/fp8`` adds DeepSeek-V3's and drops the shapes its op does not take):

1. every compiled candidate kernel of the key, at its default run-time parameters, is run once
   and compared with the family's reference (:mod:`qkernels.reference`) on the same inputs; a
   candidate that is wrong (or that CUTLASS refuses, or that fails) anywhere is excluded from the
   whole key and reported, never chosen; the correct ones are timed (:mod:`qkernels.testing.timing`:
   CUDA graphs, L2 flushed, median);
2. for the best kernels of each bucket, tile-scheduler variants (raster order, swizzle, the K
   split of stream-K kernels) are checked and timed the same way (both passes stop at the time
   limit);
3. :func:`select_tables` (a pure function) picks per bucket the candidate with the least total
   time over the shapes, keeps the compiled-in default unless the winner is at least
   ``min_gain`` faster, merges equal neighbours, and the config is written with its provenance.

Thresholds (the config's ``"thresholds"``: Python-side path choices): on sm90 with both W4A16
paths built, right after pass 1 of the Hopper bf16 key (which runs first: :func:`work_order`, so
that a short ``--time-limit`` still measures it), the Marlin-style and the Hopper W4A16 GEMMs are
checked and timed on the same checkpoints (the presets' shapes, a few M values; the Hopper key with
its pass-1 table) and
:func:`select_threshold` (pure) writes ``w4a16/sm90/hopper_min_m``: the smallest measured M from
which the Hopper path wins on the total over the shapes at every larger measured M;
``configs.NEVER`` (Hopper path off) when both paths were correct and Hopper does not win at the
largest M; the default stays when nothing was measured or a path failed its check.

The check runs each candidate with its activation scales multiplied by a factor of its own (and
compares ``out / factor`` with the reference), so an output buffer that still holds an earlier
candidate's result cannot pass for a kernel that wrote nothing.

Files, in ``--out``: ``<gpu-slug>.json`` (the config; rewritten after each key of each pass, so
a run killed from outside or stopped by ``--time-limit`` leaves what it finished; buckets not
measured keep their default kernel) and ``tune-<gpu-slug>.jsonl`` (one line per measurement as it
is taken, then the selection report). Use the config with ``QKERNELS_CONFIGS=<file>`` or by
copying it into ``qkernels/configs/``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from qkernels import configs

NO_GPU_MESSAGE = (
    "qkernels tune: no CUDA GPU is visible (torch.cuda.is_available() is False), so there is nothing to time.\n"
    "  * On a machine with an NVIDIA GPU: `qkernels tune --quick --out DIR` (about 2 minutes on an H100).\n"
    "  * Here you can still check a config file against this build: `qkernels tune --check FILE`."
)
QUICK_MODELS = ("llama-3.1-8b",)
QUICK_GRID = (16, 64, 128, 1024)
FULL_GRID = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK_LAST_M, FULL_LAST_M = 4096, 8192
QUICK_CROSSOVER_MS = (32, 64, 128, 256, 512)
FULL_CROSSOVER_MS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
CHECK_FACTORS = (1.25, 1.5, 1.75, 2.25, 2.5, 2.75, 3.25, 3.5)  # never 1: see the module docstring


# ----------------------------------------------------------------- the selection (pure)
Cand = Tuple[str, Tuple[Tuple[str, object], ...]]  # (kernel, sorted non-default params)


def cand_of(kernel: str, params: Optional[dict]) -> Cand:
    return kernel, tuple(sorted((params or {}).items()))


def cand_str(c: Cand) -> str:
    return c[0] + ("" if not c[1] else " (" + ", ".join(f"{k}={v}" for k, v in c[1]) + ")")


def _default_for(default_table: List[dict], m: Optional[int]) -> Cand:
    for b in default_table:
        if b["max_m"] is None or (m is not None and m <= b["max_m"]):
            return cand_of(b["kernel"], {k: v for k, v in b.items() if k not in ("max_m", "kernel")})
    b = default_table[-1]
    return cand_of(b["kernel"], {k: v for k, v in b.items() if k not in ("max_m", "kernel")})


def select_tables(rows: Iterable[dict], grids: Dict[str, List[Optional[int]]], defaults: Dict[str, List[dict]],
                  min_gain: float = 0.02) -> Tuple[Dict[str, List[dict]], Dict[str, dict]]:
    """Measurements -> per-key tables (config form) and a report.

    ``rows``: ``{"key", "max_m" (the bucket, None = last), "N", "K", "M", "kernel", "params"
    (non-default ones), "status" ("ok" | "wrong" | "unsupported" | "error"), "time_us"}``.
    ``grids``: key -> the buckets' max_m (ascending, ending with None). ``defaults``: key -> the
    compiled-in default table in config form.

    A candidate (kernel + params) with any row not "ok" is excluded from its key. In a bucket,
    the eligible candidates are those measured "ok" on every sample (shape, M) measured there;
    the one with the least total time wins, unless the bucket's default candidate is eligible and
    within ``min_gain`` of it (then the default stays: noise must not churn the tables). A bucket
    without measurements (time limit) or without an eligible candidate keeps the default's kernel
    for that bucket, and the report says why; a key without any measurement is left out (it keeps
    its compiled-in table). Equal neighbouring buckets are merged.
    """
    by_key: Dict[str, List[dict]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    tables: Dict[str, List[dict]] = {}
    report: Dict[str, dict] = {}
    for key, grid in grids.items():
        krows = by_key.get(key, [])
        excluded: Dict[str, str] = {}
        for r in krows:
            if r["status"] != "ok":
                c = cand_str(cand_of(r["kernel"], r.get("params")))
                excluded.setdefault(c, f"{r['status']} at N={r['N']} K={r['K']} M={r['M']}"
                                       + (f": {r['error']}" if r.get("error") else ""))
        rep = {"buckets": [], "excluded": excluded, "dropped": None}
        report[key] = rep
        chosen: List[Tuple[Optional[int], Cand]] = []
        for max_m in grid:
            brows = [r for r in krows if r["max_m"] == max_m]
            samples = {(r["N"], r["K"], r["M"]) for r in brows}
            times: Dict[Cand, Dict[tuple, float]] = {}
            for r in brows:
                c = cand_of(r["kernel"], r.get("params"))
                if cand_str(c) in excluded or r["status"] != "ok" or r.get("time_us") is None:
                    continue
                times.setdefault(c, {})[(r["N"], r["K"], r["M"])] = float(r["time_us"])
            scores = {c: sum(t.values()) for c, t in times.items() if samples and set(t) == samples}
            default = _default_for(defaults[key], max_m)
            entry = {"max_m": max_m, "samples": len(samples), "candidates": len(scores),
                     "default": cand_str(default), "default_us": scores.get(default)}
            if not scores:
                why = ("not measured (time limit?)" if not samples else
                       "no candidate was correct and measured on every sample")
                if cand_str(default) in excluded:
                    why += f"; NOTE: the default {cand_str(default)} itself was excluded ({excluded[cand_str(default)]})"
                entry.update(chosen=cand_str(default), chosen_us=None, gain=None, kept_default=why)
                rep["buckets"].append(entry)
                chosen.append((max_m, default))
                continue
            best = min(scores, key=lambda c: (scores[c], cand_str(c)))
            if default in scores and scores[best] >= scores[default] * (1.0 - min_gain):
                best = default
            entry.update(chosen=cand_str(best), chosen_us=scores[best],
                         gain=(scores[default] / scores[best] - 1.0) if default in scores else None)
            rep["buckets"].append(entry)
            chosen.append((max_m, best))
        if not krows:
            rep["dropped"] = "not measured: the key keeps its compiled-in default table"
            continue
        merged: List[Tuple[Optional[int], Cand]] = []
        for max_m, c in chosen:
            if merged and merged[-1][1] == c:
                merged[-1] = (max_m, c)
            else:
                merged.append((max_m, c))
        tables[key] = [dict({"max_m": m, "kernel": c[0]}, **dict(c[1])) for m, c in merged]
    return tables, report


def select_threshold(rows: Iterable[dict], default: int, min_gain: float = 0.0) -> Tuple[Optional[int], dict]:
    """Marlin-vs-Hopper measurements -> ``(hopper_min_m to write, or None to keep the default; report)``.

    ``rows``: ``{"N", "K", "M", "path" ("marlin" | "hopper"), "status" ("ok" | "wrong" |
    "unsupported" | "error"), "time_us"}``. A path with any row not "ok" is not trusted: the
    default stays (the report says where it failed). The shapes that count are those measured
    "ok" on both paths at every M measured (a shape cut short by the time limit is left out), so
    every M compares totals over the same shapes. Hopper wins at M when its total is below
    ``(1 - min_gain)`` x Marlin's. The threshold is the smallest measured M from which Hopper wins
    at every larger measured M too (a win at small M followed by a loss does not count);
    :data:`qkernels.configs.NEVER` (the Hopper path is never taken) when both paths were measured
    correct and Hopper does not win at the largest M; None (keep the default) when nothing was
    measured or a path failed its check."""
    rows = list(rows)
    rep: dict = {"default": default, "chosen": None, "kept_default": None, "per_m": [], "excluded": {}}
    for r in rows:
        if r["status"] != "ok":
            rep["excluded"].setdefault(r["path"], f"{r['status']} at N={r['N']} K={r['K']} M={r['M']}"
                                                  + (f": {r['error']}" if r.get("error") else ""))
    if rep["excluded"]:
        failed = "; ".join(f"{p} {w}" for p, w in sorted(rep["excluded"].items()))
        rep["kept_default"] = f"a path failed its check: {failed}"
        return None, rep
    times: Dict[Tuple[int, int, int, str], float] = {(r["N"], r["K"], r["M"], r["path"]): float(r["time_us"])
                                                     for r in rows if r.get("time_us") is not None}
    ms = sorted({m for _, _, m, _ in times})
    shapes = sorted({(n, k) for n, k, _, _ in times})
    full = [s for s in shapes if all((*s, m, p) in times for m in ms for p in ("marlin", "hopper"))]
    rep["shapes"] = len(full)
    if not ms or not full:
        rep["kept_default"] = "not measured (time limit, or no shape both paths run)" if not ms else \
            "no shape was measured on both paths at every M"
        return None, rep
    wins = []
    for m in ms:
        marlin = sum(times[(*s, m, "marlin")] for s in full)
        hopper = sum(times[(*s, m, "hopper")] for s in full)
        win = hopper < marlin * (1.0 - min_gain)
        wins.append(win)
        rep["per_m"].append({"M": m, "marlin_us": marlin, "hopper_us": hopper, "hopper_wins": win})
    if not wins[-1]:
        rep["chosen"] = configs.NEVER
        rep["never"] = (f"the Hopper path does not win at the largest M measured ({ms[-1]}): no crossover found, "
                        "so it is switched off on this GPU (threshold = never)")
        return configs.NEVER, rep
    i = len(wins) - 1
    while i > 0 and wins[i - 1]:
        i -= 1
    rep["chosen"] = ms[i]
    return ms[i], rep


def bucket_grid(default_table: List[dict], quick: bool) -> List[Optional[int]]:
    """The tuner's buckets for a key: the fixed grid plus the default table's own boundaries
    (so each bucket lies inside one default bucket), ending with None (any larger M)."""
    bounds = set(QUICK_GRID if quick else FULL_GRID)
    bounds |= {b["max_m"] for b in default_table if b["max_m"] is not None}
    return sorted(bounds) + [None]


def sample_ms(grid: Sequence[Optional[int]], quick: bool) -> Dict[Optional[int], List[int]]:
    """The M values timed in each bucket (lo, hi]: quick, the upper end (and M = 1 in the first
    bucket, decode); otherwise the lower end, the middle and the upper end. The last bucket: 4x
    its lower end, at most ``QUICK_LAST_M`` / ``FULL_LAST_M``."""
    out: Dict[Optional[int], List[int]] = {}
    lo = 0
    for hi in grid:
        top = hi if hi is not None else max(lo * 2, min(4 * lo, QUICK_LAST_M if quick else FULL_LAST_M))
        if quick:
            ms = {1, top} if lo == 0 else {top}
        else:
            ms = {lo + 1, (lo + 1 + top) // 2, top}
        out[hi] = sorted(m for m in ms if m >= 1)
        lo = top if hi is None else hi
    return out


def param_variants(kernel: dict, lib_key: dict, quick: bool) -> List[dict]:
    """Non-default run-time parameter settings to try for a kernel (labels): raster order x
    swizzle for persistent kernels; for stream-K kernels the K decomposition and the raster
    order (their swapped small-M grids are one tile wide, where CUTLASS uses no swizzle)."""
    takes = set(kernel["params"])
    params = {p["name"]: p for p in lib_key["params"]}
    if not takes:
        return []
    lab = lambda name, v: configs._param_label(params[name], v)
    out: List[dict] = []
    if "splits" in takes:
        for v in params["splits"]["values"]:
            if v != params["splits"]["default"]:
                out.append({"splits": lab("splits", v)})
        for r in params["raster"]["values"][1:]:
            out.append({"raster": lab("raster", r)})
        return out
    rasters = params["raster"]["values"] if "raster" in takes else [params["raster"]["default"]]
    swizzles = params["swizzle"]["values"] if "swizzle" in takes else [params["swizzle"]["default"]]
    if quick:
        swizzles = [s for s in swizzles if s in (1, 4)]
    for r in rasters:
        for s in swizzles:
            if (r, s) == (params["raster"]["default"], params["swizzle"]["default"]):
                continue
            v = {}
            if r != params["raster"]["default"]:
                v["raster"] = lab("raster", r)
            if s != params["swizzle"]["default"]:
                v["swizzle"] = lab("swizzle", s)
            out.append(v)
    return out


# ----------------------------------------------------------------- families (GPU)
@dataclass
class Case:
    """One (shape, M) problem of a key: ``run(factor)`` calls the op with the activation scales
    multiplied by ``factor``; ``ref`` is the reference output at factor 1."""

    run: Callable[[float], torch.Tensor]
    ref: torch.Tensor
    tol: float


def _effective_arch() -> int:
    """The arch the glue dispatches on: ``QKERNELS_FORCE_ARCH`` if set (as the C++ does)."""
    forced = os.environ.get("QKERNELS_FORCE_ARCH", "").strip()
    if forced:
        return int(forced)
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


class ScaledMMDriver:
    """``scaled_mm/<group>/{fp8,int8,int8_azp}``: per-token activations x per-channel weights,
    bf16 output (the loader's most common scheme), against ``qkernels.reference.scaled_mm``."""

    family = "scaled_mm"

    def keys(self, arch: int) -> List[str]:
        from qkernels.bench.entries._common import FP8
        from qkernels.ops.scaled_mm import kernel_group

        out = []
        for dtype, names in ((FP8, ("fp8",)), (torch.int8, ("int8", "int8_azp"))):
            g = kernel_group(arch, dtype)
            if g is not None:
                out += [f"scaled_mm/{g.lower()}/{n}" for n in names]
        return out

    def weight(self, key: str, N: int, K: int, device) -> dict:
        from qkernels.bench.entries._common import FP8, quantize_weight, random_weight

        dtype = FP8 if key.endswith("/fp8") else torch.int8
        q, s = quantize_weight(random_weight(N, K, device), dtype, per_channel=True)
        return {"b": q.t(), "b_scales": s, "dtype": dtype}

    def case(self, key: str, w: dict, M: int, device) -> Case:
        from qkernels.bench.entries._common import quantize_activations
        from qkernels.ops import scaled_mm as ops
        from qkernels.reference import scaled_mm as ref

        K = w["b"].shape[0]
        x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
        b, bs = w["b"], w["b_scales"]
        if key.endswith("_azp"):
            a = torch.randint(-128, 128, (M, K), device=device, dtype=torch.int8)
            a_s = torch.rand(M, 1, device=device) * 0.02 + 0.001
            azp = torch.randint(-8, 8, (M,), device=device, dtype=torch.int32)
            adj = ops.azp_adj(b)
            expect = ref.scaled_mm_azp(a, b, a_s, bs, torch.bfloat16, adj, azp)
            run = lambda f: ops.scaled_mm_azp(a, b, a_s * f, bs, torch.bfloat16, adj, azp)
            return Case(run, expect, 8e-3)
        a, a_s = quantize_activations(x, w["dtype"], per_token=True)
        expect = ref.scaled_mm(a, b, a_s, bs, torch.bfloat16)
        run = lambda f: ops.scaled_mm(a, b, a_s * f, bs, torch.bfloat16)
        return Case(run, expect, 1.5e-2 if key.endswith("/fp8") else 8e-3)


class Sparse24Driver:
    """``sparse24/sm90/fp8``: a random 2:4-pruned FP8 weight, per-token x per-channel scales,
    bf16 output, against ``qkernels.reference.sparse24``."""

    family = "sparse24"

    def keys(self, arch: int) -> List[str]:
        return ["sparse24/sm90/fp8"] if arch == 90 else []

    def weight(self, key: str, N: int, K: int, device) -> Optional[dict]:
        from qkernels.bench.entries._common import FP8, prune_24, quantize_weight, random_weight
        from qkernels.ops import sparse24 as ops

        if K % 128 or N % 8:
            return None
        q, s = quantize_weight(prune_24(random_weight(N, K, device)), FP8, per_channel=True)
        sw = ops.compress(q)
        return {"sw": sw, "b_scales": s.reshape(-1)}

    def case(self, key: str, w: dict, M: int, device) -> Case:
        from qkernels.bench.entries._common import FP8, quantize_activations
        from qkernels.ops import sparse24 as ops
        from qkernels.reference import sparse24 as ref

        sw, bs = w["sw"], w["b_scales"]
        a, a_s = quantize_activations(torch.randn(M, sw.size_k, device=device, dtype=torch.bfloat16), FP8,
                                      per_token=True)
        expect = ref.scaled_mm(a, sw.values, sw.meta, a_s, bs, torch.bfloat16)
        run = lambda f: ops.scaled_mm(a, sw, a_s * f, bs, torch.bfloat16)
        return Case(run, expect, 1.5e-2)


class W4A16HopperDriver:
    """``w4a16_hopper/sm90/{bf16,fp16}``: a random symmetric group-128 int4 checkpoint in the Hopper
    layout, activations of the key's dtype, against ``qkernels.reference.w4a16_hopper``. (The
    Marlin-vs-Hopper path threshold is not a key but a config threshold:
    :class:`W4A16CrossoverDriver`.)"""

    family = "w4a16_hopper"

    def keys(self, arch: int) -> List[str]:
        return ["w4a16_hopper/sm90/bf16", "w4a16_hopper/sm90/fp16"] if arch == 90 else []

    def weight(self, key: str, N: int, K: int, device) -> Optional[dict]:
        from qkernels.bench.entries.w4a16 import pack_rows
        from qkernels.ops import w4a16_hopper as ops

        if N % ops.N_MULTIPLE or K % ops.K_MULTIPLE or N * K >= 2**31:
            return None
        dtype = torch.bfloat16 if key.endswith("/bf16") else torch.float16
        u = torch.randint(0, 16, (N, K), device=device, dtype=torch.int32)
        scale = (torch.rand(N, K // 128, device=device) * 0.002 + 0.002).to(dtype)
        return {"w": ops.prepare_weight(pack_rows(u), scale, group_size=128, act_dtype=dtype), "dtype": dtype}

    def case(self, key: str, w: dict, M: int, device) -> Case:
        from qkernels.ops import w4a16_hopper as ops
        from qkernels.reference import w4a16_hopper as ref

        hw = w["w"]
        x = torch.randn(M, hw.size_k, device=device, dtype=w["dtype"])
        expect = ref.gemm(x, hw.b, hw.scales, None, None, None, hw.group_size)
        run = lambda f: ops.gemm(x if f == 1.0 else x * f, hw)  # noqa: E731  (x * f rounds: hence the tolerance)
        return Case(run, expect, 1.5e-2)


class Fp8BlockDriver:
    """``fp8_block/sm90/fp8``: a random weight quantised per 128 x 128 block
    (``qkernels.bench.entries.fp8_block.quantize_weight_blockwise``), activations quantised per
    token and group of 128 by the reference into the column-major scale layout the kernels read,
    bf16 output, against ``qkernels.reference.fp8_block``. Shapes: DeepSeek-V3's
    (``qkernels.bench.shapes.DEEPSEEK_V3_SHAPES``; ``--quick``: its 2112 x 7168 only) plus the run's
    model presets' that the op takes (K % 128, N % 16): the benchmark entry's choice. (The sm89
    path is a Triton kernel with its own autotuner: no dispatch key.)"""

    family = "fp8_block"

    def keys(self, arch: int) -> List[str]:
        from qkernels.ops.fp8_block import DISPATCH_KEY

        return [DISPATCH_KEY] if arch == 90 else []

    def shapes(self, shapes: Sequence, quick: bool) -> list:
        from qkernels.bench.entries.fp8_block import select

        return select(shapes, None, quick)[0]

    def weight(self, key: str, N: int, K: int, device) -> Optional[dict]:
        from qkernels.bench.entries._common import random_weight
        from qkernels.bench.entries.fp8_block import quantize_weight_blockwise
        from qkernels.ops import fp8_block as ops

        if K % ops.K_MULTIPLE or N % ops.N_MULTIPLE:
            return None
        q, s = quantize_weight_blockwise(random_weight(N, K, device))
        return {"b": q.t(), "b_scales": s}

    def case(self, key: str, w: dict, M: int, device) -> Case:
        from qkernels.ops import fp8_block as ops
        from qkernels.reference import fp8_block as ref

        b, bs = w["b"], w["b_scales"]
        x = torch.randn(M, b.shape[0], device=device, dtype=torch.bfloat16)
        a, a_s = ref.per_token_group_quant(x, ops.BLOCK, column_major_scales=True)
        expect = ref.scaled_mm(a, b, a_s, bs, torch.bfloat16)

        def scales(f: float) -> torch.Tensor:  # a_s * f in the same (column-major, TMA-aligned) layout
            if f == 1.0:
                return a_s
            return ref.empty_scales(a, ops.BLOCK, column_major=True).copy_(a_s * f)

        run = lambda f: ops.scaled_mm(a, b, scales(f), bs, torch.bfloat16)  # noqa: E731
        return Case(run, expect, 1e-2)


DRIVERS = {"scaled_mm": ScaledMMDriver(), "sparse24": Sparse24Driver(), "w4a16_hopper": W4A16HopperDriver(),
           "fp8_block": Fp8BlockDriver()}
"""Family -> how to build its problems. A family whose keys are listed by the library but that
has no driver here is reported and left at its defaults: add a driver (keys(arch), weight(),
case(); optionally shapes(run_shapes, quick) -> the shapes its keys are tuned on, default the
run's) next to these when a family registers dispatch keys (docs/CONTRIBUTING.md)."""


class W4A16CrossoverDriver:
    """The threshold ``w4a16/sm90/hopper_min_m``: the Marlin-style and the Hopper W4A16 GEMMs on the
    same random symmetric group-128 bf16 checkpoint (both layouts, shared scales, as the loader
    keeps them), each checked against ``qkernels.reference.w4a16_hopper`` and timed per M."""

    threshold = "w4a16/sm90/hopper_min_m"
    key = "w4a16_hopper/sm90/bf16"  # the Hopper path's dispatch key for these cases (its pass-1 table is used)

    def unavailable(self, arch: int) -> Optional[str]:
        """None if both paths run here, else why not."""
        from qkernels import _loader
        from qkernels.ops import w4a16_hopper as ops

        if arch != 90 or not ops.supported(arch):
            return f"the Hopper W4A16 path runs on sm90 with the sm90a kernels built (here sm_{arch}, " \
                   f"built: {ops.supported(90)})"
        if not _loader.has_cuda_kernel("w4a16_gemm"):
            return "the Marlin-style W4A16 kernel was not built"
        return None

    def weight(self, N: int, K: int, device) -> Optional[dict]:
        from qkernels.bench.entries.w4a16 import pack_rows
        from qkernels.ops import w4a16, w4a16_hopper as ops

        if N % ops.N_MULTIPLE or K % ops.K_MULTIPLE or N * K >= 2**31:
            return None
        u = torch.randint(0, 16, (N, K), device=device, dtype=torch.int32)
        scale = (torch.rand(N, K // 128, device=device) * 0.002 + 0.002).to(torch.bfloat16)
        packed = pack_rows(u)
        del u
        marlin = w4a16.prepare_weight(packed, scale, group_size=128, act_dtype=torch.bfloat16)
        hopper = ops.prepare_weight(packed, scale, group_size=128, act_dtype=torch.bfloat16, scales=marlin.scales)
        return {"marlin": marlin, "hopper": hopper}

    def cases(self, w: dict, M: int, device) -> Dict[str, Case]:
        from qkernels.ops import w4a16, w4a16_hopper as ops
        from qkernels.reference import w4a16_hopper as ref

        hw = w["hopper"]
        x = torch.randn(M, hw.size_k, device=device, dtype=torch.bfloat16)
        expect = ref.gemm(x, hw.b, hw.scales, None, None, None, hw.group_size)
        xf = lambda f: x if f == 1.0 else x * f  # noqa: E731  (x * f rounds: hence the tolerance)
        return {"marlin": Case(lambda f: w4a16.gemm(xf(f), w["marlin"]), expect, 1.5e-2),
                "hopper": Case(lambda f: ops.gemm(xf(f), hw), expect, 1.5e-2)}


CROSSOVER = W4A16CrossoverDriver()
"""The config thresholds ``qkernels tune`` measures (one today): threshold name -> its driver."""
THRESHOLD_DRIVERS = {CROSSOVER.threshold: CROSSOVER}


def work_order(keys: Sequence[str], thresholds: Sequence[str], stages: Sequence[int]) -> List[Tuple[str, str, int]]:
    """What a run measures, in order (a time limit cuts the end): ``("key", key, stage)`` and
    ``("threshold", name, 1)``. Pass 1 starts with the keys the thresholds' drivers set (their
    pass-1 tables are used), then the thresholds, then the other keys, then pass 2 of every key:
    so that even a short ``--time-limit`` measures the thresholds."""
    lead = [k for k in keys if any(getattr(THRESHOLD_DRIVERS[n], "key", None) == k for n in thresholds)]
    order = [("key", k, 1) for k in lead] + [("threshold", n, 1) for n in thresholds]
    order += [("key", k, 1) for k in keys if k not in lead]
    return order + [("key", k, st) for st in stages if st != 1 for k in keys]


def driver_shapes(driver, shapes: Sequence, quick: bool) -> list:
    """The shapes a driver's keys are tuned on: its ``shapes(shapes, quick)`` if it has one, else
    the run's (the model presets' Linear shapes)."""
    pick = getattr(driver, "shapes", None)
    return list(pick(shapes, quick)) if pick is not None else list(shapes)


# ----------------------------------------------------------------- the run (GPU)
class CudaFault(RuntimeError):
    """The CUDA context is unusable (sticky error): nothing more can run in this process."""


def _check_context() -> None:
    try:
        torch.cuda.synchronize()
    except RuntimeError as e:
        raise CudaFault(str(e)) from e


def _rel_err(out: torch.Tensor, ref: torch.Tensor, factor: float) -> float:
    """``qkernels.testing.numerics.rel_err`` of ``out / factor``, computed on the device (outputs of
    the largest shapes are hundreds of MB: the CPU copy would dominate the tuning time)."""
    o = out.double() / factor
    r = ref.double()
    if not bool(torch.isfinite(o).all()):
        return math.inf
    den = float(r.norm())
    num = float((o - r).norm())
    return (0.0 if num == 0.0 else math.inf) if den == 0.0 else num / den


class Tuner:
    """Runs the measurements of one ``qkernels tune`` invocation (see the module docstring)."""

    def __init__(self, out_dir: Path, quick: bool, models: Sequence[str], keys: Optional[Sequence[str]],
                 time_limit_s: float, min_gain: float, log: Callable[[str], None] = print,
                 device: Optional[torch.device] = None, gpu_name: Optional[str] = None, timer=None):
        """``device`` / ``gpu_name`` / ``timer`` default to the current CUDA device and a
        :class:`qkernels.testing.timing.Timer` (the tests pass stand-ins to run the logic on CPU)."""
        from qkernels.bench.provenance import gpu_slug
        from qkernels.testing.timing import Timer, TimingConfig

        self.quick = quick
        self.min_gain = min_gain
        self.out_dir = out_dir
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self.gpu = gpu_name or torch.cuda.get_device_name(self.device)
        self.slug = gpu_slug(self.gpu)
        self.timing = TimingConfig.quick() if quick else TimingConfig()
        self.timer = timer or Timer(self.timing, self.device)
        self.models = list(models)
        self.only_keys = list(keys) if keys else None
        self.t0 = time.monotonic()
        self.deadline = self.t0 + time_limit_s
        self.log = log
        self.rows: List[dict] = []
        self.crossover_rows: List[dict] = []  # Marlin vs Hopper W4A16 (select_threshold)
        self.check_count = 0
        self.notes: List[str] = []
        self._prov: Optional[dict] = None
        out_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = out_dir / f"{self.slug}.json"
        self.rows_path = out_dir / f"tune-{self.slug}.jsonl"
        self._rows_file = open(self.rows_path, "w")

    # ---- bookkeeping
    def say(self, msg: str) -> None:
        self.log(f"[{time.monotonic() - self.t0:6.1f}s] {msg}")

    def _record(self, row: dict) -> None:
        self.rows.append(row)
        self._rows_file.write(json.dumps(dict(row, type="row")) + "\n")
        self._rows_file.flush()

    def _set(self, key: str, kernel: str, params: dict, lib_key: dict) -> None:
        args = configs.resolve_table(key, [dict({"max_m": None, "kernel": kernel}, **params)], lib_key)
        configs._lib_op("set_dispatch_table")(key, *args, "qkernels tune (candidate)")

    # ---- one candidate on one problem
    def measure(self, key: str, lib_key: dict, max_m, shape, M: int, case: Case, kernel: str, params: dict) -> dict:
        row = {"key": key, "max_m": max_m, "N": shape.N, "K": shape.K, "M": M, "shape": shape.label,
               "kernel": kernel, "params": params, "status": "ok", "time_us": None, "rel_err": None, "error": None}
        self._check_and_time(row, case, lambda: self._set(key, kernel, params, lib_key))
        self._record(row)
        if row["status"] != "ok":
            self.say(f"  {key} {cand_str(cand_of(kernel, params))} at N={shape.N} K={shape.K} M={M}: "
                     f"{row['status'].upper()} ({row['error']}): excluded")
        return row

    def _check_and_time(self, row: dict, case: Case, setup: Optional[Callable[[], None]] = None) -> dict:
        """Fills ``row`` (status, rel_err, time_us, error): ``setup()`` (e.g. the candidate's
        table), the case checked (activations scaled by a factor of its own), then timed if correct.
        A RuntimeError makes the row "unsupported" (CUTLASS's can_implement) or "error"."""
        factor = CHECK_FACTORS[self.check_count % len(CHECK_FACTORS)]
        self.check_count += 1
        try:
            if setup is not None:
                setup()
            out = case.run(factor)
            err = _rel_err(out, case.ref, factor)
            out.fill_(float("nan"))  # a later candidate cannot find this result in a reused buffer
            del out
            row["rel_err"] = err
            if not err <= case.tol:
                row.update(status="wrong", error=f"rel_err {err:.3e} > tol {case.tol:.1e}")
            else:
                t = self.timer.time(lambda: case.run(1.0))
                row.update(time_us=t.median_us, timing=t.method)
        except RuntimeError as e:
            if self.device.type == "cuda":
                _check_context()  # raises CudaFault if the context is gone
            msg = str(e).splitlines()[0][:300]
            row.update(status="unsupported" if "can_implement" in msg else "error", error=msg)
        return row

    # ---- the W4A16 Marlin -> Hopper crossover (a config threshold)
    def run_crossover(self, driver, shapes, lib: Optional[dict] = None, tables: Optional[dict] = None) -> None:
        """Checks and times both W4A16 paths per shape and M (``QUICK_CROSSOVER_MS`` /
        ``FULL_CROSSOVER_MS``), the Hopper key set to its table in ``tables`` (pass 1's choice)
        when there is one; stops at the time limit (the rows so far are kept)."""
        name = driver.threshold
        ms = QUICK_CROSSOVER_MS if self.quick else FULL_CROSSOVER_MS
        key = getattr(driver, "key", None)
        set_key = lib is not None and tables is not None and key in tables and key in lib["keys"]
        try:
            if set_key:
                args = configs.resolve_table(key, tables[key], lib["keys"][key])
                configs._lib_op("set_dispatch_table")(key, *args, "qkernels tune (crossover)")
            for s in shapes:
                w = driver.weight(s.N, s.K, self.device)
                if w is None:
                    self.say(f"  {name}: shape {s.label} not run by both paths; skipped")
                    continue
                for M in ms:
                    if time.monotonic() > self.deadline:
                        self.say(f"  {name}: time limit reached; the crossover uses the shapes finished")
                        self.notes.append(f"{name}: crossover stopped at the time limit ({s.label}, M={M})")
                        return
                    line = []
                    for path, case in driver.cases(w, M, self.device).items():
                        row = {"threshold": name, "path": path, "N": s.N, "K": s.K, "M": M, "shape": s.label,
                               "status": "ok", "time_us": None, "rel_err": None, "error": None}
                        self._check_and_time(row, case)
                        self.crossover_rows.append(row)
                        self._rows_file.write(json.dumps(dict(row, type="crossover")) + "\n")
                        self._rows_file.flush()
                        line.append(f"{path} {row['time_us']:.1f} us" if row["status"] == "ok" else
                                    f"{path} {row['status'].upper()} ({row['error']})")
                    self.say(f"{name} {s.label} M={M}: {', '.join(line)}")
                del w
        finally:
            if set_key:
                configs._lib_op("reset_dispatch_table")(key)

    # ---- a pass over the buckets of a key
    def run_key(self, key: str, lib_key: dict, driver, shapes, stage: int) -> None:
        try:
            self._run_key(key, lib_key, driver, shapes, stage)
        finally:  # the key's table back to its default, whatever happened
            configs._lib_op("reset_dispatch_table")(key)

    def _run_key(self, key: str, lib_key: dict, driver, shapes, stage: int) -> None:
        defaults = configs.export_table(lib_key, "default")
        grid = bucket_grid(defaults, self.quick)
        ms = sample_ms(grid, self.quick)
        kernels = {k["name"]: k for k in lib_key["kernels"]}
        weights = {}
        for s in shapes:
            w = driver.weight(key, s.N, s.K, self.device)
            if w is None:
                self.say(f"  {key}: shape {s.label} not supported by this family; skipped")
            else:
                weights[s] = w
        excluded = {cand_str(cand_of(r["kernel"], r["params"])) for r in self.rows
                    if r["key"] == key and r["status"] != "ok"}
        for max_m in grid:
            if stage == 1:
                cands = [(name, {}) for name in kernels]
            else:
                # the best kernels of this bucket in pass 1 (total over its samples), with variants
                tot: Dict[str, float] = {}
                for r in self.rows:
                    if r["key"] == key and r["max_m"] == max_m and r["status"] == "ok" and not r["params"]:
                        tot[r["kernel"]] = tot.get(r["kernel"], 0.0) + r["time_us"]
                top = sorted(tot, key=tot.get)[: 2 if self.quick else 3]
                cands = [(k, v) for k in top for v in param_variants(kernels[k], lib_key, self.quick)]
            cands = [c for c in cands if cand_str(cand_of(*c)) not in excluded]
            if not cands:
                continue
            label = "any M" if max_m is None else f"M<={max_m}"
            for s, w in weights.items():
                for M in ms[max_m]:
                    if time.monotonic() > self.deadline:
                        what = "variants are not tried" if stage == 2 else "buckets keep their default kernel"
                        self.say(f"  {key}: time limit reached; the remaining {what}")
                        self.notes.append(f"{key}: pass {stage} stopped at the time limit ({label})")
                        return
                    case = driver.case(key, w, M, self.device)
                    best = None
                    for kernel, params in cands:
                        if cand_str(cand_of(kernel, params)) in excluded:
                            continue
                        r = self.measure(key, lib_key, max_m, s, M, case, kernel, params)
                        if r["status"] != "ok":
                            excluded.add(cand_str(cand_of(kernel, params)))
                        elif best is None or r["time_us"] < best[1]:
                            best = (cand_str(cand_of(kernel, params)), r["time_us"])
                    del case
                    if best:
                        self.say(f"{key} {label} pass {stage} {s.label} M={M}: best {best[0]} {best[1]:.1f} us")

    # ---- results
    def write(self, lib: dict, keys: List[str], command: str, final: bool) -> Tuple[dict, dict]:
        from qkernels.bench.provenance import collect

        defaults = {k: configs.export_table(lib["keys"][k], "default") for k in keys}
        grids = {k: bucket_grid(defaults[k], self.quick) for k in keys}
        tables, report = select_tables(self.rows, grids, defaults, self.min_gain)
        thresholds, t_report = {}, {}
        for name in THRESHOLD_DRIVERS:
            rows = [r for r in self.crossover_rows if r["threshold"] == name]
            if rows:
                value, t_report[name] = select_threshold(rows, configs.thresholds()[name][1].default)
                if value is not None:
                    thresholds[name] = value
        if self._prov is None:  # once (it runs nvidia-smi); the date is the start of the run
            self._prov = collect(command=command, device=self.device if self.device.type == "cuda" else None)
            self._prov.pop("measured_peaks", None)
        prov = dict(self._prov)
        prov.update(origin="tuned", tune={
            "quick": self.quick, "models": self.models, "keys": keys, "grids": {k: grids[k] for k in keys},
            "timing": self.timing.describe(), "objective": "least total time over the shapes and sample M per bucket",
            "min_gain": self.min_gain, "complete": final, "notes": self.notes,
            "seconds": round(time.monotonic() - self.t0, 1)})
        if t_report:
            prov["tune"]["crossover_ms"] = list(QUICK_CROSSOVER_MS if self.quick else FULL_CROSSOVER_MS)
        doc = {"schema": configs.SCHEMA, "gpu": self.gpu, "provenance": prov, "tables": tables}
        if thresholds:
            doc["thresholds"] = thresholds
        for name, r in t_report.items():
            report[name] = dict(r, threshold=True)
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.config_path)
        if final:
            self._rows_file.write(json.dumps({"type": "selection", "report": report}) + "\n")
            self._rows_file.flush()
        return doc, report


def _summary_lines(report: dict) -> List[str]:
    lines = []
    for key, rep in sorted(report.items()):
        if rep.get("threshold"):
            for e in rep["per_m"]:
                lines.append(f"{key:<24} M={e['M']:<6} marlin {e['marlin_us']:.1f} us, hopper {e['hopper_us']:.1f} us "
                             f"(total over {rep.get('shapes')} shapes){'  hopper wins' if e['hopper_wins'] else ''}")
            if rep.get("never"):
                lines.append(f"{key:<24} = never ({configs.NEVER}): {rep['never']}")
            elif rep["chosen"] is not None:
                lines.append(f"{key:<24} = {rep['chosen']}")
            else:
                lines.append(f"{key:<24} default {rep['default']} kept: {rep['kept_default']}")
            continue
        if rep["dropped"]:
            lines.append(f"{key}: not written ({rep['dropped']})")
        for b in rep["buckets"]:
            m = "any M" if b["max_m"] is None else f"M<={b['max_m']}"
            if b.get("kept_default"):
                lines.append(f"{key:<24} {m:<9} {b['chosen']} (default kept: {b['kept_default']})")
                continue
            gain = "" if b.get("gain") is None else f", {b['gain'] * 100:+.1f}% vs default {b['default']}"
            lines.append(f"{key:<24} {m:<9} {b['chosen']}  {b['chosen_us']:.1f} us over {b['samples']} samples{gain}")
        for c, why in sorted(rep["excluded"].items()):
            lines.append(f"{key:<24} EXCLUDED {c}: {why}")
    return lines


def run(args: argparse.Namespace, command: str) -> int:
    from qkernels.bench.shapes import resolve_model, unique_shapes

    lib = configs.library_tables()
    if lib is None:
        print("qkernels tune: the CUDA library is not loaded (or has no dispatch tables): nothing to tune. "
              "`qkernels info` says why.", file=sys.stderr)
        return 1
    models = args.model or (list(QUICK_MODELS) if args.quick else None)
    from qkernels.bench.shapes import PRESETS

    specs = [resolve_model(m) for m in (models or list(PRESETS))]
    shapes = unique_shapes(specs, synthetic=False)
    tuner = Tuner(Path(args.out), args.quick, [m.name for m in specs], args.key,
                  args.time_limit if args.time_limit is not None else (150.0 if args.quick else 3600.0),
                  args.min_gain)
    arch = _effective_arch()
    keys: List[str] = []
    for fam, drv in DRIVERS.items():
        keys += [k for k in drv.keys(arch) if k in lib["keys"]]
    keys.sort(key=lambda k: k.endswith("_azp"))  # priority under a time limit: the azp variant last
    no_driver = sorted(k for k in lib["keys"] if k.split("/", 1)[0] not in DRIVERS)
    if no_driver:
        tuner.say(f"no tuner driver for {', '.join(no_driver)}: left at their defaults (add one in qkernels/bench/tune.py)")
    thresholds = [n for n, d in THRESHOLD_DRIVERS.items() if d.unavailable(arch) is None]
    if args.key:
        unknown = sorted(set(args.key) - set(keys) - set(thresholds))
        if unknown:
            print(f"qkernels tune: --key {', '.join(unknown)} does not run on this GPU (sm_{arch}) or is not in this "
                  f"library; tunable here: {', '.join(keys + thresholds) or 'none'}", file=sys.stderr)
            return 2
        keys = [k for k in keys if k in args.key]
        thresholds = [n for n in thresholds if n in args.key]
    for n, d in THRESHOLD_DRIVERS.items():
        if (not args.key or n in args.key) and n not in thresholds:
            tuner.say(f"threshold {n} not measured: {d.unavailable(arch)}; it keeps its default")
    if not keys and not thresholds:
        print(f"qkernels tune: no dispatch key of this library runs on this GPU (sm_{arch}); "
              f"library keys: {', '.join(sorted(lib['keys']))}", file=sys.stderr)
        return 1
    tuner.say(f"GPU {tuner.gpu} (sm_{arch}), keys {', '.join(keys + thresholds)}; {len(shapes)} shapes of "
              f"{', '.join(tuner.models)}; {'quick' if args.quick else 'full'}; output {tuner.config_path}")
    status = 0
    try:
        # in priority order; the config is rewritten after each item
        for what, name, stage in work_order(keys, thresholds, (1,) if args.no_variants else (1, 2)):
            if time.monotonic() > tuner.deadline:
                tuner.notes.append(f"pass {stage}: {name} not reached before the time limit" if what == "key" else
                                   f"{name}: not reached before the time limit")
                continue
            if what == "threshold":  # the Hopper key at its pass-1 table (measured just before)
                doc, _ = tuner.write(lib, keys, command, final=False)
                tuner.run_crossover(THRESHOLD_DRIVERS[name], shapes, lib, doc["tables"])
            else:
                drv = DRIVERS[name.split("/", 1)[0]]
                tuner.run_key(name, lib["keys"][name], drv, driver_shapes(drv, shapes, args.quick), stage)
            tuner.write(lib, keys, command, final=False)
    except CudaFault as e:
        last = tuner.rows[-1] if tuner.rows else None
        tuner.say(f"CUDA context lost ({e}); last measured: {last and cand_str(cand_of(last['kernel'], last['params']))}"
                  " -- the config keeps only what was complete (see the .jsonl)")
        tuner.notes.append(f"aborted: CUDA context lost ({e})")
        status = 1
    finally:
        try:
            configs._lib_op("reset_dispatch_table")("")
        except RuntimeError:
            pass
    doc, report = tuner.write(lib, keys, command, final=True)
    for line in _summary_lines(report):
        tuner.say(line)
    tuner.say(f"wrote {tuner.config_path} ({len(doc['tables'])} key(s), {len(doc.get('thresholds', {}))} "
              f"threshold(s)) and {tuner.rows_path}; use it with "
              f"QKERNELS_CONFIGS={tuner.config_path} or copy it into qkernels/configs/")
    if status == 0:  # the written file must apply cleanly to this library
        st = configs.apply(tuner.config_path, origin="explicit", reason="qkernels tune self-check")
        if st.rejected:
            tuner.say(f"ERROR: the written config does not apply cleanly: {st.rejected}")
            status = 1
    try:  # back to what this process used before
        if torch.cuda.is_available():
            configs.apply_for_device()
    except Exception:  # noqa: BLE001
        pass
    return status if doc["tables"] or doc.get("thresholds") else 1


def check_file(path: str) -> int:
    """``qkernels tune --check FILE``: validate a config against this library (no GPU needed)."""
    try:
        doc = configs.load(path)
    except configs.ConfigError as e:
        print(f"qkernels tune --check: {e}", file=sys.stderr)
        return 1
    lib = configs.library_tables()
    bad = 0
    for key, buckets in doc["tables"].items():
        try:
            if lib is None:
                configs.check_table(key, buckets)
                print(f"{key}: well-formed (no library loaded: kernels and params not checked)")
                continue
            if key not in lib["keys"]:
                raise configs.ConfigError(f"{key}: not a dispatch key of this library")
            configs.resolve_table(key, buckets, lib["keys"][key])
            print(f"{key}: ok  {configs.format_table(buckets)}")
        except configs.ConfigError as e:
            bad += 1
            print(f"{key}: REJECTED ({e}); it would keep its compiled-in default", file=sys.stderr)
    for name, value in doc.get("thresholds", {}).items():
        try:
            print(f"threshold {name}: ok  {configs.check_threshold(name, value)}")
        except configs.ConfigError as e:
            bad += 1
            print(f"threshold {name}: REJECTED ({e}); it would keep its default", file=sys.stderr)
    return 1 if bad else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkernels tune",
        description="Time every compiled kernel candidate (and tile-scheduler variant) of each dispatch key that "
                    "runs on this GPU, on the model presets' shapes, check each against the reference, and write "
                    "the per-GPU config <out>/<gpu-slug>.json (qkernels.configs) plus tune-<gpu-slug>.jsonl.")
    p.add_argument("--quick", action="store_true",
                   help=f"about 2 minutes on an H100: {', '.join(QUICK_MODELS)}, buckets {QUICK_GRID}, "
                        "fewer variants and repeats, time limit 150 s")
    p.add_argument("--out", default="qkernels-configs", help="output folder (default: ./qkernels-configs)")
    p.add_argument("--model", "-m", action="append", default=None,
                   help="model preset or HF config.json (repeatable; default: all presets, --quick: llama-3.1-8b)")
    p.add_argument("--key", action="append", default=None,
                   help="only this dispatch key or config threshold, e.g. w4a16/sm90/hopper_min_m (repeatable)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which nothing more is measured (default: 150 with --quick, 3600); what "
                        "was not measured keeps its default. The config is rewritten after each key, so a run "
                        "killed from outside leaves the keys it finished")
    p.add_argument("--min-gain", type=float, default=0.02,
                   help="keep the compiled-in default unless a candidate is this much faster (default 0.02)")
    p.add_argument("--no-variants", action="store_true", help="only pass 1 (kernels at default parameters)")
    p.add_argument("--check", metavar="FILE", help="validate a config file against this build and exit (no GPU)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.check:
        return check_file(args.check)
    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return 1
    return run(args, "qkernels tune " + " ".join(shlex.quote(a) for a in argv))


if __name__ == "__main__":
    sys.exit(main())
