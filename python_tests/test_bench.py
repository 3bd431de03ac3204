"""The benchmark suite on CPU: CLI arguments, shapes, writers, estimates, advise, Ctrl-C.

Timing needs a GPU; here a fake timer stands in (the sweep, baselines, writers and
entries are the same code), and the quant entry runs on the CPU reference ops.
"""
import csv
import json
import math

import pytest
import torch

from qkernels.bench import cli as bench_cli, model_estimate as me, results as R
from qkernels.bench.advise import advise, caveats
from qkernels.bench.provenance import gpu_slug
from qkernels.bench.shapes import PRESETS, LinearShape, ModelSpec, model_from_config, resolve_model, unique_shapes
from qkernels.bench.suite import BenchContext, run_suite
from qkernels.testing.timing import Timing

PROV = {"gpu": "NVIDIA H100 80GB HBM3", "sm": "9.0", "num_sms": 132, "driver": "580.1", "torch": "2.14",
        "cuda": "13.0", "qkernels": "0.1.0", "git_commit": "a" * 40, "git_dirty": False,
        "date": "2026-11-24T12:00:00Z", "command": "qkernels bench", "measured_peaks": {"bf16_tflops": 800.0,
                                                                                     "copy_gbps": 3000.0}}


class FakeTimer:
    """Time = M * N * K / 1e9 µs (+1): deterministic, no GPU."""

    def __init__(self):
        self.calls = 0

    def time(self, fn):
        fn()
        self.calls += 1
        return Timing(1.0 + self.calls, 1.0, 2.0, "eager")


def cpu_ctx():
    return BenchContext(timer=FakeTimer(), device=torch.device("cpu"))


def row(family, impl, M, N, K, t, variant=None, model=None, layer=None):
    r = R.make_row(family=family, impl=impl, shape=LinearShape(N, K, model, layer), M=M,
                   dtypes={"a": "bfloat16"}, variant=variant, time_us=t, flops=2.0 * M * N * K,
                   nbytes=2.0 * (M * K + N * K + M * N))
    return r


# ------------------------------------------------------------------ shapes
def test_presets_shapes():
    s = {x.layer: (x.N, x.K) for x in PRESETS["llama-3.1-8b"].linears()}
    assert s == {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
                 "down_proj": (4096, 14336)}
    s70 = {x.layer: (x.N, x.K) for x in PRESETS["llama-3.1-70b"].linears()}
    assert s70["qkv_proj"] == (10240, 8192) and s70["down_proj"] == (8192, 28672)
    assert {x.layer: x.N for x in PRESETS["qwen3-8b"].linears()}["gate_up_proj"] == 24576


def test_config_parsing(tmp_path):
    cfg = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 4,
           "num_hidden_layers": 22, "_name_or_path": "org/Tiny-Model"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = model_from_config(tmp_path)
    assert m.name == "tiny-model" and m.hd == 128
    assert [(s.N, s.K) for s in m.linears()] == [(3072, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]
    # head_dim given explicitly (Qwen3 style: heads * head_dim != hidden) and no kv heads -> MHA
    cfg.update(head_dim=64, num_key_value_heads=None)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": cfg}))
    m = resolve_model(str(tmp_path / "config.json"))
    assert m.linears()[0].N == (16 + 32) * 64 and m.linears()[1].K == 16 * 64


def test_config_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 1}))
    with pytest.raises(ValueError, match="lacks intermediate_size"):
        model_from_config(tmp_path / "config.json")
    with pytest.raises(ValueError, match="unknown model 'gpt-9'.*llama-3.1-8b"):
        resolve_model("gpt-9")


def test_moe_calls_and_unique_shapes():
    mix = PRESETS["mixtral-8x7b"]
    calls = {s.layer: (M, c) for s, M, c in mix.gemm_calls(1)}
    assert calls["qkv_proj"] == (1, 1) and calls["gate_up_proj"] == (1, 2)  # 2 experts, one token each
    calls = {s.layer: (M, c) for s, M, c in mix.gemm_calls(100)}
    assert calls["down_proj"] == (25, 8)  # 200 routed tokens over 8 experts
    shapes = unique_shapes([PRESETS["llama-3.1-8b"], PRESETS["qwen3-8b"]], synthetic=True)
    assert len(shapes) == 7 and shapes[-1].model is None and (shapes[-1].N, shapes[-1].K) == (8192, 8192)


def test_gpu_slug():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert gpu_slug("NVIDIA H100 PCIe") == "h100-pcie"
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA A100-SXM4-80GB") == "a100-sxm"


# ------------------------------------------------------------------ writers
def test_json_csv_markdown(tmp_path):
    rows = [row("scaled_mm_fp8", "torch_bf16", 16, 4096, 4096, 20.0),
            row("scaled_mm_fp8", "qkernels", 16, 4096, 4096, 10.0, "fp8 token x channel", "llama-3.1-8b", "o_proj")]
    rows[1]["rel_err"], rows[1]["speedup_vs_bf16"] = 0.012, 2.0
    p = R.write_json(tmp_path / "r.json", PROV, rows)
    doc = R.load(p)
    assert R.validate(doc) == [] and doc["rows"][1]["tflops"] == pytest.approx(2 * 16 * 4096 * 4096 / 10e-6 / 1e12,
                                                                               rel=1e-3)
    R.write_csv(tmp_path / "r.csv", rows)
    got = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert got[1]["impl"] == "qkernels" and got[1]["variant"] == "fp8 token x channel" and got[0]["rel_err"] == ""
    md = R.markdown_table(rows, PROV["measured_peaks"])
    assert "### scaled_mm_fp8" in md and "| llama-3.1-8b / o_proj | 16 |" in md and "2.00×" in md


def test_schema_rejects_bad_docs():
    good = R.document(PROV, [row("w4a16", "qkernels", 1, 8, 8, 1.0)])
    assert R.validate(good) == []
    bad = json.loads(json.dumps(good))
    del bad["rows"][0]["time_us"]
    bad["rows"][0]["M"] = "1"
    bad["schema"] = "other/1"
    errs = R.validate(bad)
    assert any("time_us" in e for e in errs) and any("$.rows[0].M" in e for e in errs) and any("schema" in e for e in errs)
    nonfinite = R.make_row(family="x", impl="qkernels", shape=LinearShape(8, 8), M=1, dtypes={}, variant=None,
                           time_us=1.0, flops=None, nbytes=None, rel_err=math.inf)
    assert nonfinite["rel_err"] == "inf" and R.validate(R.document(PROV, [nonfinite])) == []


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    from qkernels.bench.plots import family_plots

    rows = []
    for M, t in ((1, 10.0), (16, 11.0), (256, 40.0)):
        b = row("scaled_mm_fp8", "torch_bf16", M, 4096, 4096, 2 * t)
        q = row("scaled_mm_fp8", "qkernels", M, 4096, 4096, t, "fp8 token x channel")
        b["speedup_vs_bf16"], q["speedup_vs_bf16"] = 1.0, 2.0
        rows += [b, q]
    paths = family_plots(rows, PROV["measured_peaks"], tmp_path, "fp8")
    assert [p.name for p in paths] == ["fp8-speedup.png", "fp8-roofline.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# ------------------------------------------------------------------ estimate / advise
def _toy_model():
    return ModelSpec("toy", hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                     num_hidden_layers=3)


def _toy_rows():
    """Times: bf16 t = M + N/16 + K/16; fp8 half of that; only M = 1 and 64 measured."""
    rows = []
    for s in _toy_model().linears():
        for M in (1, 64):
            t = M + s.N / 16 + s.K / 16
            rows.append(row("scaled_mm_fp8", "torch_bf16", M, s.N, s.K, t))
            rows.append(row("scaled_mm_fp8", "qkernels", M, s.N, s.K, t / 2, "fp8 token x channel"))
    return rows


def test_interpolate():
    curve = [(1, 10.0), (64, 73.0)]
    assert me.interpolate(curve, 1) == (10.0, False)
    assert me.interpolate(curve, 32) == (10.0 + 63.0 * 31 / 63, False)
    assert me.interpolate(curve, 128) == (146.0, True)


def test_model_estimate_exact_sums():
    model, rows = _toy_model(), _toy_rows()
    shapes = [(128, 64), (64, 64), (256, 64), (64, 128)]  # qkv, o, gate_up, down by hand
    bf16 = lambda M: sum(M + n / 16 + k / 16 for n, k in shapes)  # exact: time is affine in M
    est = me.estimate(model, rows, batch=2, seq_len=16)  # prefill 32 tokens, decode 2
    assert est["BF16"]["prefill"].time_us == pytest.approx(3 * bf16(32))
    assert est["BF16"]["decode"].time_us == pytest.approx(3 * bf16(2))
    assert est["W8A8-FP8"]["decode"].time_us == pytest.approx(3 * bf16(2) / 2)
    assert est["W8A8-FP8"]["decode"].variant == "fp8 token x channel"
    assert est["W4A16"]["decode"].time_us is None and est["W4A16"]["decode"].variant is None
    md = me.markdown(model, est, 2, 16)
    assert "Estimate, not a measurement" in md and "(2.00×)" in md and "no rows" in md


def test_model_estimate_moe_and_missing():
    moe = ModelSpec("moe", 64, 128, 4, 2, 1, num_experts=4, num_experts_per_tok=2)
    rows = _toy_rows()
    e = me.estimate_step(moe, 2, me.SCHEME_BY_NAME["BF16"], rows)  # 4 routed tokens -> 4 experts x M=1
    want = (2 + 128 / 16 + 4) + (2 + 4 + 4) + 4 * (1 + 16 + 4) + 4 * (1 + 4 + 8)
    assert e.time_us == pytest.approx(want)
    partial = [r for r in rows if r["N"] != 256]
    e = me.estimate_step(_toy_model(), 2, me.SCHEME_BY_NAME["BF16"], partial)
    assert e.time_us is None and e.missing == [(256, 64)]


def test_advise_on_synthetic_rows():
    rows = _toy_rows() + [r | {"family": "w4a16", "impl": "qkernels", "variant": "g128 sym",
                               "time_us": 1.0 if r["M"] == 1 else 10_000.0}
                          for r in _toy_rows() if r["impl"] == "torch_bf16"]
    text = advise(_toy_model(), rows, (9, 0), "H100", batches=(1, 64), seq_len=8)
    lines = {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| 1 ") or l.startswith("| 64 ")}
    assert "**W4A16**" in lines["1"].split("|")[2]  # decode at batch 1: W4A16 fastest
    assert "**W8A8-FP8**" in lines["64"].split("|")[2]
    assert "2:4 FP8" in text and "pruned" in text and "estimate" in text.lower()
    assert "not available on this GPU" in " ".join(caveats((8, 0)))  # no FP8 on sm80


def test_advise_cli(tmp_path, capsys):
    R.write_json(tmp_path / "r.json", PROV, _toy_rows())
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128,
                                                      "num_attention_heads": 4, "num_key_value_heads": 2,
                                                      "num_hidden_layers": 3}))
    assert bench_cli.main_advise(["--model", str(tmp_path / "config.json"), "--results", str(tmp_path / "r.json"),
                                  "--batch", "1,64"]) == 0
    out = capsys.readouterr().out
    assert "W8A8-FP8" in out and "| 64 |" in out
    assert bench_cli.main_advise(["--model", "llama-3.1-8b", "--results", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "empty").mkdir()
    assert bench_cli.main_advise(["--model", "llama-3.1-8b", "--results", str(tmp_path / "empty")]) == 1
    assert "no benchmark rows" in capsys.readouterr().err


# ------------------------------------------------------------------ CLI
def test_cli_arguments(capsys):
    p = bench_cli.bench_parser()
    a = p.parse_args(["--family", "quant", "-f", "w4a16", "--m", "64,1,16,16", "--quick", "--no-peers"])
    assert a.family == ["quant", "w4a16"] and a.ms == [1, 16, 64] and a.quick and not a.peers
    for bad in (["--family", "nope"], ["--m", "0,4"], ["--m", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    assert bench_cli.main_bench(["--model", "gpt-9"]) == 2
    assert "unknown model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_gpu_message(capsys):
    assert bench_cli.main_bench(["--quick"]) == 1
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert bench_cli.quick_main() == 0
    assert "qkernels bench --quick" in capsys.readouterr().err


def test_summarize(tmp_path):
    R.write_json(tmp_path / "scaled_mm-20261124-aaaaaaaa.json", PROV, _toy_rows())
    assert bench_cli.main_bench(["--summarize", str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "## scaled_mm_fp8" in text and "Model-level estimates" in text and "aaaaaaaaaaaa" in text


# ------------------------------------------------------------------ sweep (fake timer, CPU)
class ToyEntry:
    NAME, GEMM = "toy", True

    def __init__(self, interrupt_at=None):
        self.interrupt_at, self.runs = interrupt_at, 0

    def variants(self, quick):
        return ["v"]

    def prepare(self, ctx, shape, variant):
        return shape

    def run(self, ctx, shape, M):
        self.runs += 1
        if self.runs == self.interrupt_at:
            raise KeyboardInterrupt
        if M == 3:
            raise RuntimeError("no kernel for M=3\nmore")
        t = ctx.time(lambda: None)
        return [ctx.row(family="toy_fam", impl="qkernels", shape=shape, M=M, dtypes={}, variant="v", timing=t,
                        flops=2.0 * M * shape.N * shape.K, nbytes=1.0, rel_err=0.0)]


def test_sweep_rows_baselines_and_skips(tmp_path):
    w = R.ResultsWriter(tmp_path, "toy", dict(PROV))
    with w:
        run_suite(cpu_ctx(), [ToyEntry()], [LinearShape(16, 32, "m", "l")], [1, 2, 3], w, log=open("/dev/null", "w"))
    doc = R.load(tmp_path / "toy.json")
    impls = [(r["impl"], r["M"]) for r in doc["rows"]]
    assert impls == [("torch_bf16", 1), ("qkernels", 1), ("torch_bf16", 2), ("qkernels", 2)]
    assert all(r["speedup_vs_bf16"] is not None for r in doc["rows"])
    assert doc["provenance"]["skipped"][0]["reason"] == "RuntimeError: no kernel for M=3"
    assert (tmp_path / "toy.csv").exists() and (tmp_path / "toy.md").exists()


def test_ctrl_c_keeps_rows(tmp_path):
    w = R.ResultsWriter(tmp_path, "toy", dict(PROV))
    with pytest.raises(KeyboardInterrupt):
        with w:
            run_suite(cpu_ctx(), [ToyEntry(interrupt_at=3)], [LinearShape(16, 32)], [1, 2, 4, 8], w,
                      log=open("/dev/null", "w"))
    doc = R.load(tmp_path / "toy.json")
    assert [r["M"] for r in doc["rows"] if r["impl"] == "qkernels"] == [1, 2]
    assert len(list(csv.DictReader((tmp_path / "toy.csv").open()))) == 4


def test_time_limit_stops_before_the_next_shape_and_keeps_the_rows(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from qkernels.bench import suite

    clock = iter([0.0, 1.0, 2.0])  # the suite's clock: one reading before each (shape, variant)
    monkeypatch.setattr(suite, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    w = R.ResultsWriter(tmp_path, "toy", dict(PROV))
    shapes = [LinearShape(16, 32, "m", "a"), LinearShape(16, 64, "m", "b")]
    with w:
        stopped = run_suite(cpu_ctx(), [ToyEntry()], shapes, [1, 2], w, log=open("/dev/null", "w"), deadline=0.5)
    assert stopped is True
    doc = R.load(tmp_path / "toy.json")  # written, valid, with the first shape's rows only
    assert {(r["K"], r["M"]) for r in doc["rows"]} == {(32, 1), (32, 2)}
    assert doc["provenance"]["stopped"] == f"time limit reached before toy {shapes[1].label} v"
    assert (tmp_path / "toy.csv").exists() and (tmp_path / "toy.md").exists()
    w2 = R.ResultsWriter(tmp_path, "toy2", dict(PROV))
    with w2:
        assert run_suite(cpu_ctx(), [ToyEntry()], shapes[:1], [1], w2, log=open("/dev/null", "w")) is False
    assert "stopped" not in R.load(tmp_path / "toy2.json")["provenance"]
    assert bench_cli.bench_parser().parse_args(["--quick", "--time-limit", "25"]).time_limit == 25.0
    assert bench_cli.bench_parser().parse_args([]).time_limit is None


def test_quant_entry_on_cpu_reference(tmp_path):
    """The real quant entry, run on the CPU reference ops with the fake timer."""
    from qkernels.bench.entries import quant

    bench_cli._entries_module()
    ctx = cpu_ctx()
    shapes, ms = quant.select([LinearShape(64, 48, "m", "l")], [1, 5], quick=False)
    assert [s.K for s in shapes] == [48, 8192] and ms == [1, 5, 8192]
    small = type("SmallQuant", (), {k: staticmethod(getattr(quant, k)) for k in ("available", "variants", "prepare", "run")})
    small.NAME, small.GEMM = quant.NAME, quant.GEMM  # the entry without its select(): no 8192 x 8192 on CPU
    w = R.ResultsWriter(tmp_path, "quant", dict(PROV))
    with w:
        run_suite(ctx, [small], shapes[:1], [1, 5], w, log=open("/dev/null", "w"))
    doc = R.load(tmp_path / "quant.json")
    rows = doc["rows"]
    assert len(rows) == 6 * 2 * 2  # 6 variants x 2 M x (qkernels + torch_eager)
    assert all(r["rel_err"] == 0.0 for r in rows if r["impl"] == "qkernels")  # reference vs itself
    assert {r["family"] for r in rows} == {"quant_fp8", "quant_int8"}
    # The per-token-group variants (where qkernels.ops.fp8_block is installed) need K % group == 0:
    # at K = 48 each is recorded as skipped, with the op's error.
    group = [v for v in quant.variants(False) if "group" in v]
    assert sorted(s["variant"] for s in doc["provenance"].get("skipped", [])) == sorted(group)


def test_fp8_block_entry_on_cpu_reference(tmp_path):
    """The block-FP8 entry on the CPU reference ops with the fake timer: its shapes (DeepSeek-V3's
    added, K % 128 != 0 and N % 16 != 0 dropped), a qkernels row per variant and M with the bf16 baseline; the
    Triton peer cannot run on CPU outside Triton's interpreter and is left out
    (``python_tests/test_triton_fp8_block.py`` runs it through the interpreter)."""
    pytest.importorskip("qkernels.ops.fp8_block")
    from qkernels.bench.entries import fp8_block as entry
    from qkernels.bench.shapes import DEEPSEEK_V3_SHAPES

    given = [LinearShape(64, 48, "m", "l"), LinearShape(200, 256, "m", "n200"), LinearShape(208, 256, "m", "l2"),
             LinearShape(2112, 7168, "m", "dup")]
    shapes, ms = entry.select(given, [1, 5], quick=False)
    assert [(s.N, s.K) for s in shapes] == [(208, 256)] + [(s.N, s.K) for s in DEEPSEEK_V3_SHAPES] and ms == [1, 5]
    assert shapes[1].layer == "dup"  # first occurrence wins
    assert [(s.N, s.K) for s in entry.select([], [1], quick=True)[0]] == [(2112, 7168)]
    assert bench_cli.bench_parser().parse_args(["-f", "fp8_block"]).family == ["fp8_block"]
    small = type("SmallFp8Block", (), {k: staticmethod(getattr(entry, k)) for k in ("available", "variants", "prepare",
                                                                                     "run")})
    small.NAME, small.GEMM = entry.NAME, entry.GEMM  # without select(): no DeepSeek-V3 shapes on CPU
    w = R.ResultsWriter(tmp_path, "fp8_block", dict(PROV))
    with w:
        run_suite(cpu_ctx(), [small], shapes[:1], [1, 5], w, log=open("/dev/null", "w"))
    rows = R.load(tmp_path / "fp8_block.json")["rows"]
    assert [(r["impl"], r["M"], r["variant"]) for r in rows] == [
        ("torch_bf16", 1, None), ("qkernels", 1, "g128 dynamic"), ("torch_bf16", 5, None),
        ("qkernels", 5, "g128 dynamic"), ("qkernels", 1, "g128 dynamic ue8m0"), ("qkernels", 5, "g128 dynamic ue8m0")]
    q = [r for r in rows if r["impl"] == "qkernels"]
    assert all(r["family"] == "fp8_block" and r["rel_err"] == 0.0 for r in q)  # reference vs itself
    assert all(r["speedup_vs_bf16"] is not None and r["tflops"] is not None for r in q)
    # bytes: a (8 bits + a float32 per 128), b (8 bits + a float32 per 128x128), bf16 out
    r5 = next(r for r in q if r["M"] == 5)
    want = (5 * 256 * (1 + 4 / 128) + 208 * 256 * (1 + 4 / 128**2) + 5 * 208 * 2) / (r5["time_us"] * 1e-6) / 1e9
    assert r5["gbps"] == pytest.approx(want, abs=0.006)  # rows keep 2 decimals


def test_fp8_block_weight_quantisation():
    """quantize_weight_blockwise: one scale per 128x128 block (partial last block row), dequantises
    to the weight within e4m3's precision; UE8M0 scales are powers of two."""
    from qkernels.bench.entries.fp8_block import quantize_weight_blockwise
    from qkernels.reference.fp8_block import dequant_weight

    w = torch.randn(200, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w[130:, 128:] *= 100  # one block with a much larger range: its own scale
    for ue8m0 in (False, True):
        q, s = quantize_weight_blockwise(w, ue8m0)
        assert q.dtype == torch.float8_e4m3fn and q.shape == (200, 256) and s.shape == (2, 2)
        assert s[1, 1] > 50 * s[1, 0]
        if ue8m0:
            assert torch.equal(torch.exp2(torch.log2(s).round()), s)
        err = (dequant_weight(q, s) - w.float()).abs()
        assert bool((err <= 2.0**-3 * w.float().abs() + s.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)
                     * 2.0**-9).all())


def test_quant_group_variants_on_cpu_reference(tmp_path):
    """The quant entry's per-token-group variants (family quant_fp8_group) at K = 256: bytes include
    one float32 scale per group."""
    pytest.importorskip("qkernels.ops.fp8_block")
    from qkernels.bench.entries import quant

    group = [v for v in quant.variants(False) if "group" in v]
    assert group == ["fp8 dynamic group128", "fp8 dynamic group128 col-major ue8m0", "fp8 dynamic group64"]
    small = type("Small", (), {"NAME": "quant", "GEMM": False, "available": staticmethod(quant.available),
                               "variants": staticmethod(lambda quick: group),
                               "prepare": staticmethod(quant.prepare), "run": staticmethod(quant.run)})
    w = R.ResultsWriter(tmp_path, "quant", dict(PROV))
    with w:
        run_suite(cpu_ctx(), [small], [LinearShape(None, 256)], [3], w, log=open("/dev/null", "w"))
    rows = R.load(tmp_path / "quant.json")["rows"]
    assert [(r["variant"], r["impl"]) for r in rows] == [(v, i) for v in group for i in ("qkernels", "torch_eager")]
    for r in rows:
        assert r["family"] == "quant_fp8_group" and r["dtypes"]["out"] == "float8_e4m3fn"
        groups = 256 // (64 if r["variant"].endswith("group64") else 128)
        assert r["gbps"] == pytest.approx((3 * 256 * 3 + 3 * groups * 4) / (r["time_us"] * 1e-6) / 1e9, abs=0.006)
    assert all(r["rel_err"] == 0.0 for r in rows if r["impl"] == "qkernels")
