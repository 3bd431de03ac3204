"""The CPU model of CUTLASS's sm90 stream-K scheduler (qkernels/testing/streamk.py) against CUTLASS's
own code, and the schedule properties of every stream-K kernel of scaled_mm on the benchmark shapes.

CUTLASS's host-side decomposition and its (device) work assignment are compiled for the host from
the pinned headers (python_tests/fixtures/cutlass_streamk_harness.cpp, g++, a few seconds); the
comparison is skipped with a reason where the headers or a compiler are missing.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess

import pytest

from qkernels.bench.shapes import PRESETS, unique_shapes
from qkernels.testing import streamk as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "python_tests", "fixtures", "cutlass_streamk_harness.cpp")
H100_SMS = 132
MODES = {"heuristic": 0, "data_parallel": 1, "split_k": 2, "stream_k": 3}
RASTER = {"heuristic": 0, "along_m": 1, "along_n": 2}
# The stream-K kernels of scaled_mm (kernels/c3x_configs.cuh): swapped, GEMM M = weight N.
STREAMK_CONFIGS = {"m16 (128x16x256)": (128, 16, 256), "m16_k128 (128x16x128)": (128, 16, 128),
                   "m64 (128x64x128)": (128, 64, 128)}


def _cutlass_include():
    try:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        return None
    inc = os.path.join(os.path.dirname(spec.origin), "source", "include")
    return inc if os.path.isdir(inc) else None


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    inc = _cutlass_include()
    cxx = shutil.which("g++") or shutil.which("c++")
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if inc is None or cxx is None or not os.path.isfile(os.path.join(cuda, "include", "cuda_runtime.h")):
        pytest.skip(f"needs the CUTLASS headers (nvidia-cutlass wheel: {inc}), a C++ compiler ({cxx}) and "
                    f"the CUDA headers ({cuda}/include)")
    exe = str(tmp_path_factory.mktemp("streamk") / "harness")
    cmd = [cxx, "-std=c++17", "-O1", "-fpermissive", "-w", f"-I{inc}", f"-I{cuda}/include", f"-I{cuda}/include/cccl",
           HARNESS, "-o", exe, f"-L{cuda}/lib64", "-lcudart", f"-Wl,-rpath,{cuda}/lib64"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, "compiling the CUTLASS stream-K harness failed:\n" + r.stderr[-3000:]

    def run(cases):
        text = "".join(" ".join(map(str, c)) + "\n" for c in cases)
        out = subprocess.run([exe], input=text, capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    return run


def _model(tm, tn, kt, sms, swz, raster, splits, mode):
    p = S.plan(tm, tn, kt, sms, max_swizzle=swz, raster=raster, splits=splits, mode=mode)
    return p, S.schedule(p)


CASES = [
    # (tiles_m, tiles_n, k_tiles, sms, max_swizzle, raster, splits, mode)
    *[(tm, 1, kt, H100_SMS, 1, "heuristic", 1, "heuristic")
      for tm in (8, 32, 48, 64, 112, 133, 224, 300) for kt in (4, 8, 9, 16, 28, 32, 56, 64, 112)],
    *[(32, 1, kt, H100_SMS, 1, "heuristic", s, "split_k") for kt in (16, 32, 7) for s in (2, 4, 8)],
    *[(32, 1, kt, H100_SMS, 1, "heuristic", 1, m) for kt in (16, 32, 64) for m in ("data_parallel", "stream_k")],
    *[(tm, tn, 32, H100_SMS, swz, r, 1, "heuristic")
      for tm, tn in ((16, 12), (7, 40), (40, 3)) for swz in (1, 2, 4, 8) for r in ("along_m", "along_n", "heuristic")],
    (200, 2, 40, 114, 1, "heuristic", 1, "stream_k"),
    (9, 9, 20, 16, 1, "along_m", 1, "stream_k"),
]


def test_model_matches_cutlass(harness):
    got = harness([(tm, tn, kt, sms, swz, RASTER[r], s, MODES[m]) for tm, tn, kt, sms, swz, r, s, m in CASES])
    assert len(got) == len(CASES)
    for case, c in zip(CASES, got):
        p, sched = _model(*case)
        fields = {"mode": p.mode, "grid": p.grid, "raster": p.raster, "log_swizzle": p.log_swizzle,
                  "splits": p.splits, "sk_tiles": p.sk_tiles, "sk_units": p.sk_units, "groups": p.groups,
                  "big_groups": p.big_groups, "units_per_problem": p.units_per_problem}
        if p.mode != "data_parallel":
            fields["k_tiles_per_sk_unit"] = p.k_tiles_per_sk_unit
        for k, v in fields.items():
            assert c[k] == v, f"{case}: {k} model {v} != CUTLASS {c[k]}"
        # the jobs: CUTLASS numbers tiles after its raster / swizzle mapping; compare per CTA as sets of
        # (k_begin, k_count) per tile position in the CTA's sequence, and the multiset of tiles
        assert len(c["ctas"]) == len(sched), case
        for cta, (theirs, mine) in enumerate(zip(c["ctas"], sched)):
            assert [(k, n) for _, k, n in theirs] == [(j.k_begin, j.k_count) for j in mine], (case, cta)
        if p.log_swizzle == 0 and p.output_tiles == case[0] * case[1] and (case[1] == 1 or case[0] == 1):
            assert [[t for t, _, _ in cta] for cta in c["ctas"]] == [[j.tile for j in cta] for cta in sched], case


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_every_model_schedule_is_complete_and_deadlock_free(case):
    p, sched = _model(*case)
    rep = S.check_schedule(p, sched, resident_ctas=case[3])
    assert rep.problems == [], rep.problems[:5]


def _benchmark_shapes():
    return unique_shapes(list(PRESETS.values()), synthetic=True)


@pytest.mark.parametrize("config", sorted(STREAMK_CONFIGS))
@pytest.mark.parametrize("splits", ["heuristic", "none", "split_k_2", "split_k_4", "split_k_8"])
def test_streamk_kernels_on_benchmark_shapes(config, splits):
    """Every stream-K kernel x every value of the table's ``splits`` x every benchmark shape (model
    presets + 8192^2) x M in its bucket: complete, no wait cycle, every CTA resident; the critical
    path (k-tiles, reduction steps counted as one k-tile) stays within 2.5x of the ideal where the
    problem has at least a wave of work. The ratios are predictions to check on a GPU, not timings."""
    tile_m, tile_n, tile_k = STREAMK_CONFIGS[config]
    n_splits, mode = S.splits_param(splits)
    worst = (0.0, None)
    for shape, M in itertools.product(_benchmark_shapes(), (1, 16, 64)):
        if tile_n == 16 and M > 16:
            continue
        tm, tn, kt = -(-shape.N // tile_m), -(-M // tile_n), -(-shape.K // tile_k)  # swapped: GEMM M = N
        p = S.plan(tm, tn, kt, H100_SMS, splits=n_splits, mode=mode)
        rep = S.check_schedule(p, S.schedule(p), resident_ctas=H100_SMS)
        assert rep.problems == [], (config, splits, shape.label, M, rep.problems[:3])
        if tm * tn * kt >= 8 * H100_SMS and rep.ratio > worst[0]:
            worst = (rep.ratio, (shape.label, M, p.mode, p.splits))
    assert worst[0] <= 2.5 or splits == "none", f"{config} splits={splits}: critical path {worst[0]:.2f}x ideal at {worst[1]}"


def test_the_m16_k128_candidate_splits_k_at_least_4_ways():
    """The reason for sm90_*_m16_k128 (README): at K = 4096, N = 4096 (32 output tiles), TileK 256
    gives 16 k-tiles per tile and CUTLASS's heuristic splits 2 ways; TileK 128 gives 32 and 4 ways."""
    assert (S.plan(32, 1, 4096 // 256, H100_SMS).mode, S.plan(32, 1, 4096 // 256, H100_SMS).splits) == ("split_k", 2)
    assert (S.plan(32, 1, 4096 // 128, H100_SMS).mode, S.plan(32, 1, 4096 // 128, H100_SMS).splits) == ("split_k", 4)
    # at most 8 k-tiles per tile: never split (tile_scheduler_params.h get_num_sk_tiles)
    assert S.plan(32, 1, 8, H100_SMS).mode == "data_parallel"


def test_check_schedule_catches_broken_schedules():
    p = S.plan(32, 1, 32, H100_SMS)
    sched = S.schedule(p)
    lost = [list(c) for c in sched]
    lost[0] = lost[0][:-1]
    assert any("covered up to" in x or "gap" in x for x in S.check_schedule(p, lost, H100_SMS).problems)
    dup = [list(c) for c in sched]
    dup[1] = dup[1] + [dup[0][0]]
    assert any("overlap" in x for x in S.check_schedule(p, dup, H100_SMS).problems)
    # a cycle: CTA 0 first does a range that waits on CTA 1's second job, which waits on CTA 0's
    cyc = [[S.Job(0, 8, 8), S.Job(1, 0, 8)], [S.Job(1, 8, 8), S.Job(0, 0, 8)]]
    q = S.Plan(mode="split_k", grid=2, raster="along_n", log_swizzle=0, output_tiles=2, k_tiles=16, splits=2)
    assert any("cycle" in x for x in S.check_schedule(q, cyc, 2).problems)
    assert any("not running" in x for x in S.check_schedule(p, sched, resident_ctas=100).problems)
