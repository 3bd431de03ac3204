"""The randomized sweep (qkernels.testing.sweep), on CPU: the generators make valid cases for every
family, the machinery catches wrong results, errors and crashes-to-be, resumes by case index.

On CPU both sides of a case run the reference, so a pass here says nothing about the kernels;
the GPU window runs the same sweep with the CUDA kernels on one side.
"""
from __future__ import annotations

import json

import pytest
import torch

from qkernels.ops import family_ops
from qkernels.testing import sweep as SW

CPU = SW.SweepContext("cpu", None, small=True)
FAMILIES = [f for f, has in SW.families().items() if has]


def test_every_family_is_listed_with_or_without_a_generator():
    assert set(SW.families()) == set(family_ops())
    assert {"quant", "scaled_mm", "w4a16", "sparse24", "fp8_block"} <= set(FAMILIES)
    missing = [f for f, has in SW.families().items() if not has]
    for f in missing:
        with pytest.raises(LookupError, match=f"add qkernels/testing/sweeps/{f}.py"):
            SW.make_case(f, 0, 0, CPU)


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_cases_are_valid_and_pass_on_the_reference(family):
    s = SW.sweep(family, 12, seed=7, ctx=CPU)
    bad = [r for r in s.results if r.status != "passed"]
    assert not bad, SW.format_summary(s)
    assert len({SW.make_case(family, 1, i, CPU).op for i in range(40)}) >= 2, "the ops of the family vary"


@pytest.mark.parametrize("family", FAMILIES)
def test_case_i_depends_only_on_seed_family_and_index(family):
    a, b = SW.make_case(family, 3, 5, CPU), SW.make_case(family, 3, 5, CPU)
    assert a.op == b.op and a.desc == b.desc
    for x, y in zip(a.args, b.args):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x.view(torch.uint8) if x.element_size() == 1 else x,
                               y.view(torch.uint8) if y.element_size() == 1 else y)
        else:
            assert x == y
    assert SW.make_case(family, 3, 6, CPU).desc != a.desc or SW.make_case(family, 4, 5, CPU).desc != a.desc


def _first(family, op_prefix, compare):
    for i in range(200):
        c = SW.make_case(family, 0, i, CPU)
        if c.op.startswith(op_prefix) and c.compare == compare and not c.op.endswith("_out") \
                and c.args[0].numel() > 0 and not c.misalign:
            return i, c
    raise AssertionError(f"no {op_prefix} case in 200")


def test_a_wrong_gemm_is_caught_with_its_error():
    i, case = _first("scaled_mm", "scaled_mm", "rel")
    op = getattr(torch.ops.qkernels, case.op)
    res = SW.run_case(i, case, CPU, impl=lambda *a: op(*a) * 1.05)
    assert res.status == "failed" and "rel_err" in res.detail and "> tol" in res.detail
    assert SW.run_case(i, case, CPU).status == "passed"


def test_a_wrong_bit_exact_op_is_caught():
    i, case = _first("quant", "static_scaled_int8_quant", "exact")
    op = getattr(torch.ops.qkernels, case.op)

    def off_by_one(*a):
        q = op(*a).clone()
        if q.numel():
            q.view(-1)[0] = q.view(-1)[0] ^ 1
        return q

    res = SW.run_case(i, case, CPU, impl=off_by_one)
    assert res.status == "failed" and res.detail == f"output 0: not bit-identical (1 of {case.args[0].numel()} bytes differ)"


def test_unwritten_outputs_and_errors_are_reported():
    i, case = _first("scaled_mm", "scaled_mm", "rel")
    op = getattr(torch.ops.qkernels, case.op)
    nan = SW.run_case(i, case, CPU, impl=lambda *a: torch.full_like(op(*a), float("nan")))
    assert nan.status == "failed" and "non-finite" in nan.detail

    def boom(*a):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    err = SW.run_case(i, case, CPU, impl=boom)
    assert err.status == "error" and "illegal memory access" in err.detail
    assert not err.sticky, "on CPU there is no CUDA context to lose"
    skipped = SW.run_case(i, SW.Case(case.op, case.args, case.desc, skip="not on this GPU"), CPU)
    assert (skipped.status, skipped.detail) == ("skipped", "not on this GPU")


def test_sweep_stops_at_its_time_limit_and_resumes_by_index():
    s = SW.sweep("quant", 50, seed=0, ctx=CPU, time_limit=0.0)
    assert len(s.results) <= 1 and "time limit" in s.stopped and "next index" in s.stopped
    resumed = SW.sweep("quant", 6, seed=0, ctx=CPU, start=4)
    assert [r.index for r in resumed.results] == [4, 5]
    assert [r.desc for r in resumed.results] == [SW.make_case("quant", 0, i, CPU).desc for i in (4, 5)]


def test_cli_writes_a_line_per_case_event(tmp_path):
    p = tmp_path / "s.jsonl"
    assert SW.main(["--device", "cpu", "--family", "quant", "--cases", "3", "--small", "--jsonl", str(p)]) == 0
    ev = [json.loads(line) for line in p.read_text().splitlines()]
    assert [e["event"] for e in ev] == ["start", "result"] * 3 + ["summary"]
    assert ev[-1]["counts"] == {"passed": 3} and all(e["family"] == "quant" for e in ev)
    assert SW.main(["--device", "cpu", "--family", "nope"]) == SW.EXIT_USAGE


def test_cli_deadline_is_the_callers_clock(tmp_path):
    """--deadline (time.time() seconds) counts this process's start: a deadline already past runs no case."""
    import time

    p = tmp_path / "s.jsonl"
    assert SW.main(["--device", "cpu", "--family", "quant", "--cases", "5", "--small", "--jsonl", str(p),
                    "--deadline", f"{time.time() - 1:.1f}"]) == SW.EXIT_OK
    ev = [json.loads(line) for line in p.read_text().splitlines()]
    assert [e["event"] for e in ev] == ["summary"] and ev[0]["counts"] == {}
    assert "time limit" in ev[0]["stopped"] and "next index 0" in ev[0]["stopped"]
    q = tmp_path / "t.jsonl"  # a deadline ahead, --time-limit still works beside it
    assert SW.main(["--device", "cpu", "--family", "quant", "--cases", "3", "--small", "--jsonl", str(q),
                    "--deadline", f"{time.time() + 600:.1f}", "--time-limit", "600"]) == SW.EXIT_OK
    last = json.loads(q.read_text().splitlines()[-1])
    assert last["counts"] == {"passed": 3} and not last["stopped"]
    r = tmp_path / "u.jsonl"  # the earlier of the two limits wins
    assert SW.main(["--device", "cpu", "--family", "quant", "--cases", "3", "--small", "--jsonl", str(r),
                    "--deadline", f"{time.time() + 600:.1f}", "--time-limit", "0"]) == SW.EXIT_OK
    assert "time limit" in json.loads(r.read_text().splitlines()[-1])["stopped"]


def test_fp8_block_cases_cover_the_layouts_and_edges():
    """The first 200 cases (the GPU window's count) reach every scale layout, UE8M0, both group
    sizes, static scales, M = 1, odd M, every bucket of the sm90 default table, a partial last N
    block, both output dtypes, bias and the Triton op; quant cases compare the scales' strides too."""
    seen = set()
    for i in range(200):
        c = SW.make_case("fp8_block", 0, i, CPU)
        if c.op == "per_token_group_fp8_quant":
            x, g, column_major, ue8m0, scale = c.args
            seen |= {f"g{g}", f"cm{column_major}", f"ue{ue8m0}", f"static{scale is not None}", f"in_{x.dtype}"}
            q, s = torch.ops.qkernels.per_token_group_fp8_quant(*c.args)
            assert c.outputs((q, s), c.args)[2].tolist() == list(s.stride())
        else:
            a, b, a_s, b_s, out_dtype, bias = c.args
            m, n = a.shape[0], b.shape[1]
            seen |= {c.op, f"out_{out_dtype}", f"bias{bias is not None}", f"partialN{n % 128 != 0}"}
            seen |= {"M1"} if m == 1 else {"oddM"} if m % 2 else set()
            seen |= {next(f"bucket{b}" for b in (16, 32, 64, 2048, 1 << 62) if m <= b)} if m else set()
            seen |= {f"a_s_{lay}" for lay in ("col-tma", "row", "col-dense") if f"a_s={lay}" in c.desc}
            seen |= {"ue8m0_gemm"} if "ue8m0" in c.desc else set()
    want = {"g64", "g128", "cmTrue", "cmFalse", "ueTrue", "ueFalse", "staticTrue", "in_torch.float16",
            "in_torch.bfloat16", "in_torch.float32", "fp8_block_scaled_mm", "fp8_block_scaled_mm_triton",
            "out_torch.bfloat16", "out_torch.float16", "biasTrue", "biasFalse", "partialNTrue", "partialNFalse", "M1",
            "oddM", "bucket16", "bucket32", "bucket64", "bucket2048", "a_s_col-tma", "a_s_row", "a_s_col-dense",
            "ue8m0_gemm"}
    assert want <= seen, want - seen
    # full-size cases (the GPU window's; small=True caps M at 256) reach the last bucket, M > 2048
    big = SW.SweepContext("cpu", None, small=False)
    assert any(c.op != "per_token_group_fp8_quant" and c.args[0].shape[0] > 2048
               for c in (SW.make_case("fp8_block", 0, i, big) for i in range(100))), "no GEMM case with M > 2048"
