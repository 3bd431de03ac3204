"""A CPU model of CUTLASS 4.2's sm90 stream-K tile scheduler, as the scaled_mm stream-K kernels use it.

``PersistentTileSchedulerSm90StreamK`` (``cutlass/gemm/kernel/sm90_tile_scheduler_stream_k.hpp``,
host-side decomposition in ``tile_scheduler_params.h``) decides, per problem, between a
data-parallel, split-K and stream-K decomposition, how many persistent CTAs run, and which
k-range of which output tile each CTA computes, in which order; in the deterministic reduction
mode a CTA that computes a non-first k-range of a tile waits until the k-ranges before it have
been accumulated into the workspace (``fixup``: ``wait_eq(lock, K_idx)``).

This module is a line-by-line port of that logic for what our kernels use: 1x1 clusters (the
swapped small-M configs ``ConfigM16``, ``ConfigM16K128``, ``ConfigM64``, ``azp_small``), one
batch, ``max_active_clusters`` unset, deterministic reduction, separate reduction off (CUTLASS
4.2 disables it), ``ktile_start_alignment_count`` 1. It serves two purposes:

* :func:`plan` + :func:`schedule` say, on a CPU, how a shape is decomposed under each value of the
  dispatch table's ``splits`` / ``raster`` / ``swizzle`` parameters (``qkernels/configs``);
* :func:`check_schedule` checks the properties the kernel's correctness and progress rest on:
  every (tile, k-tile) computed exactly once; every stream-K / split-K unit is the first work of a
  CTA of the single persistent wave (so a wait never targets a CTA that may not be resident); a
  waited-on job is its CTA's first job (no chain of waits); stream-K splits of at least 8 k-tiles.

``python_tests/test_streamk_model.py`` compares the model with CUTLASS's own code (the same
header, compiled for the host by the test) on many shapes, and checks the properties on every
benchmark shape of the stream-K kernels. What is *not* modelled: clusters larger than 1x1,
``max_active_clusters`` (occupancy-based grids), separate reduction, the M/N position of a tile
(swizzle and raster only reorder tiles; the model works with linear tile ids), timing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MIN_ITERS_PER_SK_UNIT = 8  # tile_scheduler_params.h: min_iters_per_sk_unit_
MAX_SK_GROUPS = 8  # tile_scheduler_params.h: max_sk_groups_
RASTERS = ("heuristic", "along_m", "along_n")
MODES = ("heuristic", "data_parallel", "split_k", "stream_k")


def _round_up(a: int, b: int) -> int:
    return (a + b - 1) // b * b


def log_swizzle_size(tiles_m: int, tiles_n: int, max_swizzle: int) -> int:
    """``get_log_swizzle_size``: the swizzle CUTLASS uses (it needs at least 6/3/2 tiles)."""
    d = min(tiles_m, tiles_n)
    if max_swizzle >= 8 and d >= 6:
        return 3
    if max_swizzle >= 4 and d >= 3:
        return 2
    if max_swizzle >= 2 and d >= 2:
        return 1
    return 0


def raster_order(tiles_m: int, tiles_n: int, option: str) -> str:
    """``get_rasterization_order``: "along_m" or "along_n"."""
    if option == "heuristic":
        return "along_m" if tiles_n > tiles_m else "along_n"
    return "along_n" if option == "along_n" else "along_m"


@dataclass
class Plan:
    """The host-side decomposition (fields as in ``PersistentTileSchedulerSm90StreamKParams``)."""

    mode: str  # "data_parallel" | "split_k" | "stream_k" (what runs, after the heuristic)
    grid: int  # persistent CTAs launched
    raster: str
    log_swizzle: int
    output_tiles: int  # after rounding to the swizzle
    k_tiles: int  # per output tile
    splits: int  # split-K ways (1 unless split_k)
    sk_tiles: int = 0
    sk_units: int = 0
    dp_units: int = 0
    groups: int = 1
    big_units: int = 0
    big_groups: int = 0
    k_tiles_per_sk_unit: int = 0
    units_per_problem: int = 0


def adjust_split_count(splits: int, sm_count: int, k_tiles: int) -> int:
    return min(splits, sm_count, k_tiles)


def plan(tiles_m: int, tiles_n: int, k_tiles: int, sm_count: int, max_swizzle: int = 1,
         raster: str = "heuristic", splits: int = 1, mode: str = "heuristic") -> Plan:
    """The decomposition of a problem of ``tiles_m x tiles_n`` output tiles (GEMM M x N, after the
    swap of the small-M kernels) with ``k_tiles`` k-tiles each, 1x1 clusters (see module doc).
    ``splits`` / ``mode`` are the scheduler arguments (our ``splits`` param: heuristic -> (1,
    heuristic), none -> (1, data_parallel), n -> (n, split_k))."""
    assert raster in RASTERS and mode in MODES
    lg = log_swizzle_size(tiles_m, tiles_n, max_swizzle)
    bm, bn = _round_up(tiles_m, 1 << lg), _round_up(tiles_n, 1 << lg)
    order = raster_order(bm, bn, raster)
    output_tiles = bm * bn
    grid = sm_count  # cluster size 1: the grid is the SM count (not truncated for stream-K)
    p = Plan(mode="data_parallel", grid=grid, raster=order, log_swizzle=lg, output_tiles=output_tiles,
             k_tiles=k_tiles, splits=1, units_per_problem=output_tiles)
    if mode == "split_k" or (mode == "heuristic" and splits > 1):
        p.splits = adjust_split_count(splits, sm_count, k_tiles)
        p.mode = "split_k" if p.splits > 1 else "data_parallel"
        p.big_units = k_tiles % p.splits
        p.k_tiles_per_sk_unit = k_tiles // p.splits
        return p
    ctas_per_wave = grid
    # get_num_sk_tiles
    full_waves, total_waves = output_tiles // ctas_per_wave, -(-output_tiles // ctas_per_wave)
    sk_tiles = 0
    if mode not in ("data_parallel", "split_k") and not (full_waves == total_waves
                                                         or k_tiles <= MIN_ITERS_PER_SK_UNIT):
        dp_waves = full_waves - 1 if full_waves > 1 else 0
        sk_tiles = output_tiles - dp_waves * ctas_per_wave
        if mode == "heuristic" and 2 * (output_tiles - full_waves * ctas_per_wave) >= ctas_per_wave:
            sk_tiles = 0
    dp_tiles = output_tiles - sk_tiles
    # get_num_sk_units
    sk_units = min(ctas_per_wave, (k_tiles * sk_tiles) // MIN_ITERS_PER_SK_UNIT)
    if mode == "data_parallel" or (mode == "heuristic" and sk_tiles == 0) or sk_units == 0:
        return p
    # calculate_groups (cluster size 1, no separate reduction)
    max_groups_problem = bm if order == "along_m" else bn
    groups = min(max_groups_problem, MAX_SK_GROUPS)

    def too_small(g: int) -> bool:
        return ((sk_tiles // g) * k_tiles) // (sk_units // g) < MIN_ITERS_PER_SK_UNIT

    fallback = 0
    while groups > 1 and not (sk_units % groups == 0 and sk_tiles % groups == 0 and not too_small(groups)):
        if fallback == 0 and sk_units % groups == 0 and not too_small(groups):
            fallback = groups
        groups -= 1
    if groups == 1 and fallback > 0:
        groups = fallback
    k_tiles_per_group = k_tiles * (sk_tiles // groups)
    if mode == "heuristic" and sk_tiles < sk_units and sk_units % sk_tiles == 0:
        p.mode = "split_k"  # set_params_basic with the heuristic's split count
        p.splits = sk_units // sk_tiles
        p.big_units = k_tiles % p.splits
        p.k_tiles_per_sk_unit = k_tiles // p.splits
        return p
    p.mode = "stream_k"
    p.sk_tiles, p.sk_units, p.dp_units, p.groups = sk_tiles, sk_units, dp_tiles, groups
    p.big_groups = sk_tiles % groups
    p.k_tiles_per_sk_unit = k_tiles_per_group // (sk_units // groups)
    p.big_units = k_tiles_per_group % sk_units
    p.units_per_problem = dp_tiles + sk_units
    return p


@dataclass(frozen=True)
class Job:
    """One output tile's k-range computed by one CTA: k-tiles [k_begin, k_begin + k_count)."""

    tile: int
    k_begin: int
    k_count: int


def _sk_unit_start(p: Plan, linear: int) -> Tuple[int, int]:
    """``get_current_work_iter_start_possible_update_work_tile_k_remaining``: (first k iteration
    in the group's linearised k space, k-tiles of this unit) for a split-K / stream-K unit."""
    if p.mode == "split_k":
        split, tile = divmod(linear, p.units_per_problem)
        start = p.k_tiles * tile + p.k_tiles_per_sk_unit * split
        count = p.k_tiles_per_sk_unit
        if split < p.big_units:
            start += split
            count += 1
        else:
            start += p.big_units
        return start, count
    group, idx = linear % p.groups, linear // p.groups
    tiles_in_group = p.sk_tiles // p.groups + (1 if group < p.big_groups else 0)
    k_in_group = tiles_in_group * p.k_tiles
    units_per_group = p.sk_units // p.groups
    per_unit = k_in_group // units_per_group
    big = k_in_group - per_unit * units_per_group
    start = per_unit * idx
    count = per_unit
    if idx < big:
        start += idx
        count += 1
    else:
        start += big
    kt = start % p.k_tiles
    if kt < MIN_ITERS_PER_SK_UNIT:
        start -= kt
        count += kt
    elif kt > p.k_tiles - MIN_ITERS_PER_SK_UNIT:
        adj = p.k_tiles - kt
        start += adj
        count -= adj
    end_kt = (start + count) % p.k_tiles
    if end_kt < MIN_ITERS_PER_SK_UNIT:
        count -= end_kt
    elif end_kt > p.k_tiles - MIN_ITERS_PER_SK_UNIT:
        count += p.k_tiles - end_kt
    return start, count


def _unit_jobs(p: Plan, linear: int) -> List[Job]:
    """The jobs of one work unit, in execution order (stream-K units walk their range backwards)."""
    if p.mode == "data_parallel" or (p.mode == "stream_k" and linear >= p.sk_units):
        tile = linear - p.sk_units + p.sk_tiles if p.mode == "stream_k" else linear
        return [Job(tile, 0, p.k_tiles)]
    start, remaining = _sk_unit_start(p, linear)
    group = 0 if p.mode == "split_k" else linear % p.groups
    groups = 1 if p.mode == "split_k" else p.groups
    jobs = []
    while remaining > 0:  # update_output_tile_id_and_work_tile_k, then continue_current_work
        end = start + remaining - 1
        tile_in_group = end // p.k_tiles
        t0 = tile_in_group * p.k_tiles
        begin = max(t0, start)
        stop = min(t0 + p.k_tiles, end + 1)
        jobs.append(Job(tile_in_group * groups + group, begin - t0, stop - begin))
        remaining -= stop - begin
    return jobs


def schedule(p: Plan) -> List[List[Job]]:
    """Per persistent CTA (index = first linear work index), its jobs in execution order."""
    total_units = p.units_per_problem * p.splits
    out = []
    for cta in range(p.grid):
        jobs: List[Job] = []
        linear = cta
        while linear < total_units:
            jobs += _unit_jobs(p, linear)
            linear += p.grid
        out.append(jobs)
    return out


@dataclass
class Report:
    """What :func:`check_schedule` found; ``problems`` is empty when every property holds."""

    problems: List[str] = field(default_factory=list)
    critical_path: float = 0.0  # k-tiles on the longest chain of program order + waits
    ideal: float = 0.0  # all k-tiles / CTAs
    waits: int = 0  # jobs that wait for earlier k-ranges of their tile (deterministic fixup)

    @property
    def ratio(self) -> float:
        return self.critical_path / self.ideal if self.ideal else 1.0


def check_schedule(p: Plan, sched: List[List[Job]], resident_ctas: int, real_tiles: Optional[int] = None,
                   fixup_k_tiles: float = 1.0) -> Report:
    """Checks a schedule: every (tile, k-tile) computed exactly once; the wait graph (each CTA runs
    its jobs in order; a job with ``k_begin > 0`` waits for every earlier k-range of its tile) has
    no cycle; every CTA is resident (``grid <= resident_ctas``: a wait never targets a CTA that
    cannot be scheduled); and computes the critical path in k-tiles against the ideal
    ``all k-tiles / CTAs``: a job's mainloop starts when its CTA's previous job is done, its
    epilogue waits for the earlier k-ranges of its tile, and a reduction step costs
    ``fixup_k_tiles``. ``real_tiles``: tiles before the swizzle rounding (default: all)."""
    rep = Report()
    real = p.output_tiles if real_tiles is None else real_tiles
    if p.grid > resident_ctas:
        rep.problems.append(f"{p.grid} persistent CTAs but only {resident_ctas} resident: a wait may target a CTA "
                            "that is not running")
    by_tile: Dict[int, List[Tuple[int, int, int, int]]] = {}
    for cta, jobs in enumerate(sched):
        for pos, j in enumerate(jobs):
            by_tile.setdefault(j.tile, []).append((j.k_begin, j.k_count, cta, pos))
    deps: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    for t in sorted(by_tile):
        ranges = sorted(by_tile[t])
        k = 0
        for b, c, cta, pos in ranges:
            if b != k or c <= 0:
                rep.problems.append(f"tile {t}: k-range [{b}, {b + c}) of CTA {cta} after k-tile {k} "
                                    "(gap, overlap or empty range)")
            k = max(k, b + c)
            if p.mode == "stream_k" and c < MIN_ITERS_PER_SK_UNIT and c != p.k_tiles:
                rep.problems.append(f"tile {t}: a stream-K range of {c} k-tiles (< {MIN_ITERS_PER_SK_UNIT})")
        if k != p.k_tiles:
            rep.problems.append(f"tile {t}: k-tiles covered up to {k} of {p.k_tiles}")
        for i, (b, c, cta, pos) in enumerate(ranges):
            if b > 0:
                rep.waits += 1
                deps.setdefault((cta, pos), []).extend((r[2], r[3]) for r in ranges[:i])
    missing = [t for t in range(real) if t not in by_tile]
    if missing:
        rep.problems.append(f"{len(missing)} tile(s) never computed, e.g. {missing[:5]}")
    # longest path over the DAG (program order + waits); a cycle is a deadlock
    weight = {(cta, pos): j.k_count for cta, jobs in enumerate(sched) for pos, j in enumerate(jobs)}
    finish: Dict[Tuple[int, int], int] = {}
    state: Dict[Tuple[int, int], int] = {}  # 1: on the stack, 2: done

    def visit(node: Tuple[int, int]) -> int:
        stack = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            if state.get(n) == 2:
                continue
            prev = [(n[0], n[1] - 1)] if n[1] > 0 else []
            waits = deps.get(n, [])
            preds = prev + waits
            if expanded:  # mainloop after the CTA's previous job; the wait is in the epilogue (fixup)
                done = (finish[prev[0]] if prev else 0) + weight[n]
                finish[n] = max([done] + [finish[q] for q in waits]) + (fixup_k_tiles if waits else 0)
                state[n] = 2
                continue
            if state.get(n) == 1:
                raise RuntimeError(f"wait cycle through CTA {n[0]} job {n[1]}")
            state[n] = 1
            stack.append((n, True))
            for q in preds:
                if state.get(q) == 1:
                    raise RuntimeError(f"wait cycle: CTA {n[0]} job {n[1]} waits on CTA {q[0]} job {q[1]}")
                if state.get(q) != 2:
                    stack.append((q, False))
        return finish[node]

    try:
        rep.critical_path = max((visit(n) for n in weight), default=0)
    except RuntimeError as e:
        rep.problems.append(str(e))
    rep.ideal = real * p.k_tiles / max(1, p.grid)
    return rep


def splits_param(value: str) -> Tuple[int, str]:
    """Our dispatch-table ``splits`` label -> CUTLASS (splits, decomposition mode), as
    ``core/cutlass_run.cuh`` ``set_tile_scheduler`` maps it."""
    if value == "heuristic":
        return 1, "heuristic"
    if value == "none":
        return 1, "data_parallel"
    if value.startswith("split_k_"):
        return int(value.rsplit("_", 1)[1]), "split_k"
    raise ValueError(f"unknown splits value {value!r}")
