"""W4A16 (sm80 Marlin-style kernel): a CPU model of the work partition and the reduction order.

The schedule comes from the compiled library's host code (``qkernels.ops.w4a16.schedule`` ->
``qk_w4a16_schedule``), i.e. from the same functions (csrc/w4a16/partition.h) that the launcher
sizes the grid with and that the kernel walks its work with; the tests skip without a library
(CI builds one). The model then simulates what the kernel does and checks, for every benchmark
shape (the model presets of ``qkernels.bench.shapes`` plus 8192 x 8192 and 28672 x 8192),
M = 1..64 (and a few multi-slice M), 132 SMs (H100) and 108 / 78 / 84:

* the pieces tile the iteration space exactly once, slots are private, the counters suffice;
* no wait cycle and no wait on a block that may not be resident (this kernel has no waits at
  all: a shared tile is finished by its last arrival);
* the critical path is at most ``1.2 x ideal + R``: ``ideal`` = ceil(total iterations / SMs)
  k-tile iterations (perfect balance of whole iterations, free reduction); ``R`` = the cost of
  reducing one split tile, which balancing over every SM forces: the tile is split in
  P = max(2, ceil(SMs / tiles)) pieces, one more where the equal ranges of stream-K straddle
  its boundaries, and its finaliser writes its own partial, reads all of them and writes the
  output tile: R = (P + 2) partial-tile transfers + one output tile. At M <= 16 a partial tile is small (R < 2.5 iterations).

Costs (H100 SXM per SM, the unit is irrelevant, only ratios matter): an iteration takes
max(weight bytes / HBM share, mma FLOPs / mma.sync rate); writing or reading a partial tile of
``rows`` x 64 fp32 takes its bytes / L2 share. Sync latencies (fences, the atomic round trip, a
launch) are not modelled: they are per launch constants, see csrc/w4a16/README.md.

``test_model_rejects_*`` run the same checks on the partitions of earlier designs (v1 of this
kernel: each block's first piece waited for the previous block's last piece; a Marlin-style
numbering with a grid larger than what can be resident) to show the checks can fail.
"""
from __future__ import annotations

import heapq
import math
import os
import shutil
import subprocess
from functools import lru_cache

import pytest
import torch

from qkernels.bench.shapes import PRESETS
from qkernels.ops import w4a16 as W

SHAPES = sorted({(s.N, s.K) for spec in PRESETS.values() for s in spec.linears()} | {(8192, 8192), (28672, 8192)})
SM_COUNTS = (132, 108, 78, 84)
SMALL_MS = tuple(range(1, 65))
SLICED_MS = (65, 100, 128, 256, 1000)  # several 64-row slices

# H100 SXM, per SM (132 SMs): HBM 3.35 TB/s, L2 ~5.5 TB/s, mma.sync fp16/bf16 -> fp32 ~500 TFLOP/s.
HBM_SM, L2_SM, MMA_SM = 3.35e12 / 132, 5.5e12 / 132, 5.0e14 / 132
# Shared memory per SM (bytes, incl. the 1 KiB per block the driver reserves), max threads per SM,
# max resident blocks: sm80 (A100), sm86 / sm89 (consumer Ampere / Ada), sm90 (H100).
ARCHS = {80: (167936, 2048, 32), 86: (102400, 1536, 16), 89: (102400, 1536, 24), 90: (233472, 2048, 32)}


def _library_or_skip():
    reason = W.schedule_unavailable()
    if reason:
        pytest.skip(f"the schedule comes from the compiled library: {reason}")
    from qkernels import _loader

    return _loader.library_path


@lru_cache(maxsize=None)
def _schedule(m, n, k, sms):
    return W.schedule(m, n, k, sms)


# ----------------------------------------------------------------- the model
def _costs(meta, m):
    """(iteration, partial write/read, output write) times for this schedule's block tile."""
    rows = 16 * meta["m_blocks"]
    it = max(meta["tile_n"] * meta["tile_k"] / 2 / HBM_SM, 2 * rows * meta["tile_n"] * meta["tile_k"] / MMA_SM)
    valid = min(m, 64)
    return it, valid * meta["tile_n"] * 4 / L2_SM, valid * meta["tile_n"] * 2 / L2_SM


def _rows(s):
    return [dict(zip(s.fields, r)) for r in s.pieces.tolist()]


def simulate(meta, pieces, m, capacity):
    """Critical path of a schedule (same time unit as _costs) and the problems found.

    Protocols, chosen per piece by its fields:
    * ``pieces == 1``: the block writes the tile after its iterations;
    * ``pieces > 1`` and ``wait_tile < 0`` (this kernel): the piece writes its partial and takes a
      ticket; the last piece to arrive makes its block sum all the tile's partials once the
      block's own work is done;
    * ``wait_tile >= 0`` (a serial chain): before its epilogue the block waits until piece
      ``wait_value - 1`` of that tile has released, then reads that partial and writes its own
      (or the output), and releases.
    Blocks run concurrently (``capacity`` at a time, in index order, as the hardware dispatches
    them); a wait on a block that has not started is an error unless every block is resident.
    """
    t_it, c_part, c_out = _costs(meta, m)
    grid, problems = meta["grid"], []
    by_block = {}
    for p in pieces:
        by_block.setdefault(p["block"], []).append(p)
    by_tile = {}
    for p in pieces:
        by_tile.setdefault(p["tile"], {})[p["piece"]] = p

    # waits: structural checks first (cycles, residency)
    for p in pieces:
        if p["wait_tile"] >= 0:
            target = by_tile[p["wait_tile"]][p["wait_value"] - 1]
            if target["block"] > p["block"] and grid > capacity:
                problems.append(f"block {p['block']} waits on block {target['block']}, which may not be resident "
                                f"(grid {grid} > {capacity} resident)")

    done, state = {}, {}  # (block, seq) -> end time of that piece's epilogue

    def end_of(b, seq):
        key = (b, seq)
        if key in done:
            return done[key]
        if state.get(key) == "visiting":
            raise RecursionError(f"wait cycle through block {b} piece {seq}")
        state[key] = "visiting"
        p = by_block[b][seq]
        t = (end_of(b, seq - 1) if seq > 0 else 0.0) + (p["k_end"] - p["k_begin"]) * t_it
        if p["wait_tile"] >= 0:
            target = by_tile[p["wait_tile"]][p["wait_value"] - 1]
            t = max(t, end_of(target["block"], target["seq"])) + c_part  # read the running sum
        last_of_chain = p["wait_tile"] >= 0 and p["piece"] == p["pieces"] - 1
        if p["pieces"] == 1 or last_of_chain:
            t += c_out
        else:
            t += c_part  # its partial
        done[key] = t
        state[key] = "done"
        return t

    try:
        finish = {b: end_of(b, len(ps) - 1) for b, ps in by_block.items()}
    except RecursionError as e:
        return math.inf, problems + [str(e)]
    # last-arrival finalisation (pieces without waits): the latest arrival finalises at its end
    for t, ps in by_tile.items():
        if len(ps) > 1 and all(p["wait_tile"] < 0 for p in ps.values()):
            arrivals = [(done[(p["block"], p["seq"])], finish[p["block"]], p["block"]) for p in ps.values()]
            _, _, b = max(arrivals)
            finish[b] += len(ps) * c_part + c_out
    # blocks beyond the resident capacity start when a slot frees up (in index order)
    if grid > capacity:
        slots = [0.0] * capacity
        end = 0.0
        for b in range(grid):
            start = heapq.heappop(slots)
            stop = start + finish[b]
            heapq.heappush(slots, stop)
            end = max(end, stop)
        return end, problems
    return max(finish.values()), problems


def bound(meta, m, num_sms):
    """1.2 x ideal + the reduction of one split tile (module docstring). Returns (bound, ideal)."""
    t_it, c_part, c_out = _costs(meta, m)
    ideal = math.ceil(meta["total"] / num_sms) * t_it
    split = max(2, math.ceil(num_sms / meta["tiles"]))
    return 1.2 * ideal + (split + 2) * c_part + c_out, ideal


def structural_problems(s):
    """Invariants of the partition that the kernel's correctness rests on."""
    meta, rows, out = s.meta, _rows(s), []
    kt = meta["k_tiles"]
    if meta["stream_k"] and meta["grid"] > meta["num_sms"]:
        out.append(f"stream-K grid {meta['grid']} > {meta['num_sms']} SMs")
    per_tile = {}
    for p in rows:
        per_tile.setdefault(p["tile"], []).append(p)
    if sorted(per_tile) != list(range(meta["tiles"])):
        out.append("not every tile is covered")
    slots = set()
    for t, ps in per_tile.items():
        ps.sort(key=lambda p: p["block"])
        spans = [(p["k_begin"], p["k_end"]) for p in ps]
        if spans[0][0] != 0 or spans[-1][1] != kt or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
            out.append(f"tile {t}: pieces {spans} do not cover k tiles [0, {kt}) once")
        if [p["piece"] for p in ps] != list(range(len(ps))) or any(p["pieces"] != len(ps) for p in ps):
            out.append(f"tile {t}: piece numbering {[(p['piece'], p['pieces']) for p in ps]}")
        if [p["block"] for p in ps] != list(range(ps[0]["block"], ps[0]["block"] + len(ps))):
            out.append(f"tile {t}: blocks {[p['block'] for p in ps]} are not consecutive")
        for p in ps:
            if len(ps) > 1:
                if p["slot"] < 0 or p["slot"] in slots or p["slot"] >= 2 * meta["grid"]:
                    out.append(f"tile {t}: slot {p['slot']} of block {p['block']} is missing or reused")
                slots.add(p["slot"])
            elif p["slot"] != -1:
                out.append(f"tile {t}: an unshared tile has a slot")
    if slots and (not meta["stream_k"] or meta["counters"] < meta["tiles"]
                  or meta["workspace_floats"] < (max(slots) + 1) * meta["slot_rows"] * meta["tile_n"]):
        out.append(f"workspace {meta['workspace_floats']} floats / {meta['counters']} counters too small")
    blocks = {}
    for p in rows:
        blocks.setdefault(p["block"], []).append(p)
    if sorted(blocks) != list(range(meta["grid"])):
        out.append("a block has no work")
    for b, ps in blocks.items():
        if [p["seq"] for p in ps] != list(range(len(ps))):
            out.append(f"block {b}: pieces out of order")
        if any(p["pieces"] > 1 for p in ps[1:-1]):
            out.append(f"block {b}: a middle piece is shared (at most two tickets per block)")
        work = sum(p["k_end"] - p["k_begin"] for p in ps)
        if work > meta["iters"]:
            out.append(f"block {b}: {work} iterations > {meta['iters']}")
    return out


# ----------------------------------------------------------------- occupancy
@lru_cache(maxsize=None)
def kernel_registers(library):
    """Max registers per thread of the w4a16 GEMM kernels in the library (cuobjdump), or 255 (the
    most __launch_bounds__(256, 1) allows) when cuobjdump is not available."""
    tool = shutil.which("cuobjdump") or ("/usr/local/cuda/bin/cuobjdump" if os.path.exists("/usr/local/cuda/bin/cuobjdump") else None)
    if tool is None:
        return 255
    out = subprocess.run([tool, "--dump-resource-usage", library], capture_output=True, text=True).stdout
    regs = [int(line.split("REG:")[1].split()[0]) for line in out.splitlines()
            if "w4a16" in line and "gemm_kernel" in line and "REG:" in line]
    return max(regs) if regs else 255


def blocks_per_sm(meta, regs, arch):
    smem_sm, threads_sm, max_blocks = ARCHS[arch]
    by_smem = smem_sm // (meta["smem_bytes"] + 1024 + 16)  # + static smem of the kernel (16 B)
    reg_per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = (65536 // reg_per_warp) // (meta["threads"] // 32)
    return min(by_smem, by_regs, threads_sm // meta["threads"], max_blocks)


# ----------------------------------------------------------------- tests
def test_schedule_rejects_unsupported_shapes():
    _library_or_skip()
    with pytest.raises(ValueError, match=r"n % 64 == 0, k % 128 == 0"):
        W.schedule(1, 96, 128, 132)


@pytest.mark.parametrize("mb", (1, 17, 33, 49))
def test_every_config_fits_every_arch(mb):
    """Shared memory and registers allow at least one block per SM on sm80 / 86 / 89 / 90."""
    lib = _library_or_skip()
    meta = _schedule(mb, 4096, 4096, 132).meta
    regs = kernel_registers(lib)
    assert regs <= 255
    for arch in ARCHS:
        assert blocks_per_sm(meta, regs, arch) >= 1, (arch, meta["smem_bytes"], regs)


@pytest.mark.parametrize("sms", SM_COUNTS)
@pytest.mark.parametrize("n,k", SHAPES)
def test_schedule_model(n, k, sms):
    lib = _library_or_skip()
    regs = kernel_registers(lib)
    for m in SMALL_MS + SLICED_MS:
        s = _schedule(m, n, k, sms)
        meta = s.meta
        assert (meta["m"], meta["n"], meta["k"], meta["num_sms"]) == (m, n, k, sms)
        assert not structural_problems(s), (m, structural_problems(s)[:3])
        assert all(p == -1 for p in s.col("wait_tile").tolist()), "the kernel must never wait on another block"
        capacity = sms * min(blocks_per_sm(meta, regs, arch) for arch in ARCHS)
        critical, problems = simulate(meta, _rows(s), m, capacity)
        assert not problems, (m, problems[:3])
        limit, ideal = bound(meta, m, sms)
        assert critical <= limit, (
            f"M={m} N={n} K={k} SMs={sms}: critical path {critical / ideal:.2f} x ideal > bound "
            f"{limit / ideal:.2f} x (grid {meta['grid']}, iters {meta['iters']}, k_tiles {meta['k_tiles']})")


def test_decode_shapes_are_near_ideal():
    """M <= 16 on the large layers: within 5% of perfect balance (the weight stream dominates)."""
    _library_or_skip()
    for n, k in ((28672, 8192), (57344, 8192), (8192, 28672), (28672, 4096)):
        for m in (1, 8, 16):
            s = _schedule(m, n, k, 132)
            critical, _ = simulate(s.meta, _rows(s), m, 132)
            _, ideal = bound(s.meta, m, 132)
            assert critical <= 1.05 * ideal, (n, k, m, critical / ideal)


def test_deterministic_reduction_order():
    """Each shared tile's partial sums are added in piece order, whatever block arrives last: the
    order is a function of the partition alone (same bits run to run on one GPU)."""
    _library_or_skip()
    s = _schedule(1, 28672, 8192, 132)
    a, b = _schedule.__wrapped__(1, 28672, 8192, 132), _schedule.__wrapped__(1, 28672, 8192, 132)
    assert torch.equal(a.pieces, b.pieces) and a.meta == b.meta
    assert s.meta["stream_k"] and (s.col("pieces") > 1).any()


# ----------------------------------------------------------------- the model catches bad schedules
def _v1_schedule(m, n, k, sms):
    """The partition of this kernel's v1 (64 x 128 iterations, forward order, a per-tile lock):
    piece idx of a shared tile waited for lock == idx, i.e. for piece idx - 1 to release."""
    k_tiles, tiles = k // 128, n // 64
    total = tiles * k_tiles
    iters = math.ceil(total / sms)
    grid = math.ceil(total / iters)
    pieces = []
    for b in range(grid):
        it, end, seq = b * iters, min(total, (b + 1) * iters), 0
        while it < end:
            t, k0 = divmod(it, k_tiles)
            k1 = min(k_tiles, k0 + end - it)
            first, last = t * k_tiles // iters, ((t + 1) * k_tiles - 1) // iters
            idx, count = b - first, last - first + 1
            pieces.append(dict(block=b, seq=seq, tile=t, slice=0, n_tile=t, k_begin=k0, k_end=k1, piece=idx,
                               pieces=count, slot=-1, wait_tile=t if idx > 0 else -1, wait_value=idx))
            it += k1 - k0
            seq += 1
    meta = dict(m=m, n=n, k=k, num_sms=sms, m_blocks=min(4, math.ceil(m / 16)), tile_n=64, tile_k=128,
                k_tiles=k_tiles, tiles=tiles, total=total, iters=iters, grid=grid)
    return meta, pieces


def test_model_rejects_the_v1_schedule():
    """v1's first piece of each block waited for the previous block's last piece: a chain across
    the grid. The model must flag it (issue 12: ~27x on 28672 x 8192)."""
    meta, pieces = _v1_schedule(1, 28672, 8192, 132)
    critical, problems = simulate(meta, pieces, 1, 132)
    limit, ideal = bound(meta, 1, 132)
    assert not problems  # it waits on lower blocks only: residency is not its problem...
    assert critical > 10 * ideal and critical > limit  # ...the chain is
    # a shape where every block holds whole tiles escapes (no sharing, no waits)
    meta, pieces = _v1_schedule(1, 64 * 132, 128, 132)
    critical, _ = simulate(meta, pieces, 1, 132)
    assert critical <= bound(meta, 1, 132)[0]


def test_model_rejects_waits_on_blocks_that_may_not_be_resident():
    """Marlin's numbering (the lowest block of a tile waits for the higher ones) is safe only if the
    whole grid is resident: the model flags it when the grid exceeds the resident capacity."""
    meta, pieces = _v1_schedule(1, 4096, 4096, 132)
    for p in pieces:  # reverse the chain: piece idx waits for piece idx + 1 (higher block)
        if p["pieces"] > 1:
            p["wait_value"] = p["piece"] + 2 if p["piece"] < p["pieces"] - 1 else -1
            p["wait_tile"] = p["tile"] if p["piece"] < p["pieces"] - 1 else -1
    _, problems = simulate(meta, pieces, 1, capacity=meta["grid"] // 2)
    assert any("may not be resident" in s for s in problems)
    _, problems = simulate(meta, pieces, 1, capacity=meta["grid"])
    assert not problems


def test_model_detects_a_wait_cycle():
    meta, pieces = _v1_schedule(1, 64, 1024, 4)  # one tile, four blocks: a chain 0 <- 1 <- 2 <- 3
    pieces[0].update(wait_tile=0, wait_value=4)  # piece 0 now also waits for piece 3
    critical, problems = simulate(meta, pieces, 1, 4)
    assert critical == math.inf and any("cycle" in s for s in problems)
