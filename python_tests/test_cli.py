"""The ``qkernels`` command: --version, unknown commands, an honest ``info``, suggestions that work
without a GPU, the CPU dry run of the benchmark suite, and the README's CPU example."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch

from qkernels import _loader, cli
from qkernels.bench import cli as bench_cli
from qkernels.bench import results as R
from qkernels.bench.shapes import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_help_and_unknown_command(capsys):
    import qkernels

    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"qkernels {qkernels.__version__}"
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: qkernels <command>") and "`" not in out and "qkernels --version" in out
    assert cli.main(["frobnicate"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "unknown command 'frobnicate'" in cap.err and "info, quickstart, bench" in cap.err


FAKE_BUILD = {"built": True, "archs_requested": "min", "families_requested": ["quant", "w4a16", "sparse24"],
              "ptx": False, "build_type": "Release", "cuda": "13.0", "torch": torch.__version__,
              "groups": {"quant": {"ALL": ["75"]}, "w4a16": {"SM80": ["80"]}, "sparse24": {"SM90": ["90a"]}}}


def test_info_says_compiled_and_whether_usable_here(monkeypatch, capsys):
    """Compiled kernels are not 'available' on a machine without a GPU; with one, per family by arch."""
    monkeypatch.setattr(_loader, "build_info", FAKE_BUILD)
    monkeypatch.setattr(_loader, "library_path", "/fake/_qkernels_cuda.so")
    monkeypatch.setattr(_loader, "has_cuda_kernel", lambda n: n in ("static_scaled_fp8_quant", "w4a16_gemm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.info(out=sys.stdout) == 0  # (its default stream is bound at import)
    out = capsys.readouterr().out
    assert "Here: no CUDA GPU visible" in out
    assert re.search(r"static_scaled_fp8_quant\s+CUDA kernel compiled \(sm_75\); not usable here \(no CUDA GPU\)", out)
    assert re.search(r"w4a16_repack\s+no CUDA kernel", out)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert cli._usable_here(FAKE_BUILD, "quant") == "NOT usable here: this GPU is sm_86"  # sm_75 cubin, other major
    assert cli._usable_here(FAKE_BUILD, "w4a16") == "usable here (sm_86)"                 # sm_80 cubin runs on sm_86
    assert cli._usable_here(FAKE_BUILD, "sparse24") == "NOT usable here: this GPU is sm_86"
    assert cli._usable_here(dict(FAKE_BUILD, ptx=True), "quant") == "usable here (sm_86)"   # PTX JITs forward
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert cli._usable_here(FAKE_BUILD, "sparse24") == "usable here (sm_90)"


def _write_llama_results(path):
    prov = {"gpu": "NVIDIA H100 80GB HBM3", "sm": "9.0", "num_sms": 132, "driver": "580", "torch": "2", "cuda": "13",
            "qkernels": "0.1.0", "git_commit": "a" * 40, "git_dirty": False, "date": "2026-11-24T12:00:00Z",
            "command": "qkernels bench", "measured_peaks": {"bf16_tflops": 800.0, "copy_gbps": 3000.0}}
    rows = []
    for s in PRESETS["llama-3.1-8b"].linears():
        for M in (1, 64):
            t = M + s.N / 16 + s.K / 16
            for impl, variant, us in (("torch_bf16", None, t), ("qkernels", "fp8 token x channel", t / 2)):
                rows.append(R.make_row(family="scaled_mm_fp8", impl=impl, shape=s, M=M, dtypes={"a": "bfloat16"},
                                       variant=variant, time_us=us, flops=2.0 * M * s.N * s.K, nbytes=1.0))
    R.write_json(path, prov, rows)


def _suggested(message, prefix):
    """The argv of the first `qkernels <prefix> ...` command quoted in ``message``."""
    m = re.search(rf"`qkernels {prefix} ([^`]*)`", message)
    return None if m is None else m.group(1).split()


def test_no_gpu_message_suggests_only_what_works(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench_cli, "RESULTS_DIR", tmp_path / "results")
    msg = bench_cli.no_gpu_message()
    assert "--dry-run" in msg and "advise --gpu" not in msg  # no results here: no advise --gpu suggestion
    assert "holds none yet" in msg
    (tmp_path / "results" / "h100-sxm").mkdir(parents=True)
    _write_llama_results(tmp_path / "results" / "h100-sxm" / "scaled_mm.json")
    msg = bench_cli.no_gpu_message()
    argv = _suggested(msg, "advise")
    assert argv == ["--gpu", "h100-sxm", "--model", "llama-3.1-8b"]
    assert bench_cli.main_advise(argv) == 0 and "| 64 |" in capsys.readouterr().out
    summarize = re.search(r"`qkernels bench (--summarize [^`]*)`", msg).group(1).split()
    assert bench_cli.main_bench(summarize) == 0
    assert bench_cli.main_advise(["--model", "llama-3.1-8b"]) == 2  # no GPU, no --gpu: says what to do
    assert "name one with --gpu (committed results: h100-sxm)" in capsys.readouterr().err


def test_dry_run_on_cpu(tmp_path, capsys):
    """`qkernels bench --dry-run`: the family's entry runs on the reference ops; the files follow the schema."""
    assert bench_cli.main_bench(["--dry-run", "--family", "quant", "--out-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "[quant]" in err and "0 skipped" in err and "1 of 1 families ran" in err
    doc = R.load(tmp_path / "dry-run-quant.json")
    assert doc["rows"] and {r["M"] for r in doc["rows"]} <= {1, 16} and doc["provenance"]["dry_run"]


def test_readme_load_a_checkpoint_example_runs(capsys):
    """The README's 'Load a checkpoint (runs on a CPU)' block, executed as written."""
    pytest.importorskip("compressed_tensors")
    pytest.importorskip("transformers")
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("### Load a checkpoint (runs on a CPU)", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "7 x w8a8-int8 scaled_mm" in out and scope["logits"].shape == (1, 4, 256)
    assert json.load(open(os.path.join(scope["folder"], "config.json")))["quantization_config"]
