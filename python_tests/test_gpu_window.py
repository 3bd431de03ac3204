"""The GPU window (scripts/gpu_window.py, gpu_window.sh) and the prebuild (gpu_prebuild.sh), on CPU.

What can be checked without a GPU: the summary writer (fed passed / failed / timed-out / crashed /
skipped / not-run jobs and a cut junit file), the job runner (time caps, crashes, a test file
resumed after a crash, a sweep resumed after a crash, memcheck logs), the packing of the returned
files (at most 8, under the size limit), the plan (every test file and family), the whole window
on CPU with the sweep on the references, the carried-library switch of the loader, the CMake
switch QK_SASS_FOR, and the prebuild's dry run. What only a GPU run shows: that the carried
library loads under the GPU machine's torch and Python and its kernels are right.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_window():
    spec = importlib.util.spec_from_file_location("gpu_window", ROOT / "scripts" / "gpu_window.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_window"] = mod
    spec.loader.exec_module(mod)
    return mod


W = _load_window()
PY = sys.executable
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _env(**kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.update(kw)
    return env


# ----------------------------------------------------------------- parsing test results
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="python_tests.test_x" name="test_ok" time="0.5" />
<testcase classname="python_tests.test_x" name="test_bad[int8]" time="1.0"><failure message="AssertionError: rel_err 3e-01 &gt; tol">trace</failure></testcase>
<testcase classname="python_tests.test_x" name="test_skip" time="0"><skipped message="needs sm_90" /></testcase>
<testcase classname="python_tests.test_x" name="test_err" time="0.1"><error message="fixture broke">trace</error></testcase>
</testsuite></testsuites>"""


def test_parse_junit_complete_and_cut_short(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text(JUNIT)
    res = {r.nodeid: r for r in W.parse_junit(p)}
    assert [r.outcome for r in res.values()] == ["passed", "failed", "skipped", "error"]
    assert res["python_tests/test_x.py::test_bad[int8]"].message.startswith("AssertionError: rel_err 3e-01 > tol")
    cut = JUNIT[: JUNIT.index("<testcase classname=\"python_tests.test_x\" name=\"test_skip\"") + 30]
    p.write_text(cut)  # a process killed while writing: the complete testcases before the cut count
    assert [r.outcome for r in W.parse_junit(p)] == ["passed", "failed"]
    assert W.parse_junit(tmp_path / "missing.xml") == []


def test_parse_progress_names_the_test_a_process_died_in(tmp_path):
    p = tmp_path / "p.jsonl"
    ev = [{"event": "start", "nodeid": "f::a"}, {"event": "report", "nodeid": "f::a", "when": "call", "outcome": "passed"},
          {"event": "finish", "nodeid": "f::a"}, {"event": "start", "nodeid": "f::b"},
          {"event": "report", "nodeid": "f::b", "when": "setup", "outcome": "failed", "message": "boom"},
          {"event": "finish", "nodeid": "f::b"}, {"event": "start", "nodeid": "f::c"}]
    p.write_text("\n".join(json.dumps(e) for e in ev) + '\n{"event": "rep')  # last line cut by the kill
    got = W.parse_progress(p)
    assert got["unfinished"] == "f::c"
    assert {r.nodeid: r.outcome for r in got["results"]} == {"f::a": "passed", "f::b": "error"}
    assert not got["finished_session"]


# ----------------------------------------------------------------- the summary writer
def _records():
    R = W.Record
    return [
        R("setup", "library", "passed", 1.0, detail="25.0 MiB unpacked"),
        R("load", "load-check", "passed", 9.0, 0, detail="17 kernels registered of 17 expected"),
        R("tests", "python_tests/test_quant.py", "passed", 20.0, 0, counts={"passed": 30}),
        R("tests", "python_tests/test_scaled_mm.py", "failed", 90.0, 1, counts={"passed": 300, "failed": 1},
          problems=["FAILED python_tests/test_scaled_mm.py::test_gpu_all_m_vs_reference[sm80-int8-17]: rel_err 3e-01"]),
        R("tests", "python_tests/test_w4a16.py", "crashed", 40.0, 0, attempts=2, counts={"passed": 50, "crashed": 1},
          problems=["CRASHED python_tests/test_w4a16.py::test_gpu_act_order[x]: the process died in this test (SIGSEGV)"]),
        R("tests", "python_tests/test_sparse24.py", "timeout", 140.0, -2, counts={"passed": 10, "timeout": 1},
          problems=["TIMEOUT python_tests/test_sparse24.py::test_gpu_gemm_shapes[y]: the file's time cap ran out"]),
        R("tests", "python_tests/test_loader.py", "not run", 0.0, detail="the step's time cap ran out before it started"),
        R("memcheck", "memcheck", "skipped", 0.0, detail="compute-sanitizer was not found"),
        R("sweep", "quant", "passed", 12.0, 0, counts={"passed": 200}),
    ]


def test_summary_says_what_failed_and_where():
    md, js = W.build_summary(_records(), {"gpu": "NVIDIA H100 80GB HBM3", "gpu_slug": "h100-sxm", "budget": 420},
                             plan=("setup", "load", "tests", "sweep", "memcheck", "tune"))
    assert js["verdict"] == "FAIL"
    steps = {s["step"]: s["status"] for s in js["steps"]}
    # the worst job decides: a crash outranks a timeout, which outranks a failure
    assert steps == {"setup": "passed", "load": "passed", "tests": "crashed", "sweep": "passed",
                     "memcheck": "skipped", "tune": "not run"}
    assert md.startswith("# GPU window: FAIL")
    for where in ("test_gpu_all_m_vs_reference[sm80-int8-17]: rel_err 3e-01", "test_gpu_act_order[x]: the process died",
                  "test_gpu_gemm_shapes[y]", "NVIDIA H100 80GB HBM3 (h100-sxm)"):
        assert where in md, where
    assert "| tests | CRASHED |" in md and "| tune | not run |" in md
    tests = next(s for s in js["steps"] if s["step"] == "tests")
    assert tests["detail"] == ("jobs: 1 crashed, 1 failed, 1 not run, 1 passed, 1 timeout; "
                               "tests: 1 crashed, 1 failed, 390 passed, 1 timeout")
    assert len(js["problems"]) == 3


def test_summary_verdicts():
    ok = [W.Record(s, s, "passed") for s in W.STEP_ORDER]
    assert W.build_summary(ok, {})[1]["verdict"] == "PASS"
    unavailable = ok[:4] + [W.Record("memcheck", "m", "unavailable")] + ok[5:]
    assert W.build_summary(unavailable, {})[1]["verdict"] == "PASS"  # a tool the machine lacks is not a failure
    assert W.build_summary(ok[:3], {})[1]["verdict"] == "INCOMPLETE"  # steps never reached
    md, js = W.build_summary(ok[:3], {}, running="sweep")
    assert js["verdict"] == "INCOMPLETE" and "still in step 'sweep'" in md
    assert {s["step"]: s["status"] for s in js["steps"]}["sweep"] == "running"


# ----------------------------------------------------------------- running jobs
def _runner(tmp_path, budget=120):
    return W.Runner(tmp_path, time.monotonic() + budget, echo=False)


def test_jobs_pass_fail_crash_and_time_out(tmp_path):
    r = _runner(tmp_path)
    jobs = [
        W.Job("x", "ok", [PY, "-c", "print('hi')"], 20, "x/ok.log"),
        W.Job("x", "exit3", [PY, "-c", "import sys; sys.exit(3)"], 20, "x/exit3.log"),
        W.Job("x", "segv", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], 20, "x/segv.log"),
        W.Job("x", "hang", [PY, "-c", "import time; time.sleep(60)"], 1.5, "x/hang.log"),
    ]
    t0 = time.monotonic()
    recs = {rec.name: rec for rec in W.run_step(r, W.Step("x", 30, jobs, parallel=4), dict(os.environ))}
    assert time.monotonic() - t0 < 20, "the hung job must be stopped at its cap"
    assert recs["ok"].status == "passed"
    assert recs["exit3"].status == "failed" and "exit code 3" in recs["exit3"].detail
    assert recs["segv"].status == "crashed" and "SIGSEGV" in recs["segv"].detail
    assert recs["hang"].status == "timeout"
    assert "time cap of 2 s reached" in (tmp_path / "x/hang.log").read_text()
    assert len(W.read_jsonl(tmp_path / "records.jsonl")) == 4


def test_step_cap_leaves_later_jobs_not_run(tmp_path):
    r = _runner(tmp_path)
    jobs = [W.Job("y", f"sleep{i}", [PY, "-c", "import time; time.sleep(30)"], 30, f"y/{i}.log") for i in range(2)]
    recs = W.run_step(r, W.Step("y", 4, jobs, parallel=1), dict(os.environ))
    assert [x.status for x in recs] == ["timeout", "not run"]
    assert W.step_status(recs) == "timeout"
    assert "not run" in recs[1].problems[0]


def test_window_budget_skips_steps_it_cannot_start(tmp_path):
    r = W.Runner(tmp_path, time.monotonic() + 1.0, echo=False)  # less than the finalize reserve
    recs = W.run_step(r, W.Step("z", 30, [W.Job("z", "a", [PY, "-c", "pass"], 5, "z/a.log")]), dict(os.environ))
    assert recs[0].status == "not run" and "budget" in recs[0].detail


FAKE_TESTS = textwrap.dedent("""
    import os, signal, time, pytest
    def test_a(): pass
    def test_b_segfaults(): os.kill(os.getpid(), signal.SIGSEGV)
    def test_c_fails(): assert 1 == 2, "wrong on purpose"
    @pytest.mark.skip(reason="not here")
    def test_d(): pass
    def test_e(): pass
    def test_f_hangs():
        if os.environ.get("HANG"): time.sleep(60)
    def test_g(): pass
""")


def _pytest_job(tmp_path, cap):
    f = tmp_path / "test_fake.py"
    f.write_text(FAKE_TESTS)
    argv = [PY, "-m", "pytest", str(f), "-q", "-p", "no:cacheprovider", "-p", "qkernels.testing.window_plugin",
            "--rootdir", str(tmp_path)]
    return W.Job("tests", "test_fake.py", argv, cap, "tests/test_fake.log", {}, "pytest")


def test_pytest_job_resumes_after_a_crash(tmp_path):
    r = _runner(tmp_path)
    rec = W.run_pytest_job(r, _pytest_job(tmp_path, 120), time.monotonic() + 120, _env())
    outcomes = {t["nodeid"].split("::")[1]: t["outcome"] for t in rec.extra["tests"]}
    assert outcomes == {"test_a": "passed", "test_b_segfaults": "crashed", "test_c_fails": "failed", "test_d": "skipped",
                        "test_e": "passed", "test_f_hangs": "passed", "test_g": "passed"}
    assert rec.status == "crashed" and rec.attempts == 2
    assert any("test_b_segfaults: the process died in this test (SIGSEGV)" in p for p in rec.problems)
    assert any("test_c_fails: AssertionError: wrong on purpose" in p for p in rec.problems)
    # the second process skipped what the first one ran (and the test it died in)
    skip = (tmp_path / "tests" / "test_fake.skip").read_text().split()
    assert {s.split("::")[1] for s in skip} == {"test_a", "test_b_segfaults"}


def test_pytest_job_names_the_test_that_hung(tmp_path):
    f = tmp_path / "test_hang.py"
    f.write_text("import time\ndef test_a(): pass\ndef test_hangs(): time.sleep(120)\ndef test_after(): pass\n")
    argv = [PY, "-m", "pytest", str(f), "-q", "-p", "no:cacheprovider", "-p", "qkernels.testing.window_plugin",
            "--rootdir", str(tmp_path)]
    job = W.Job("tests", "test_hang.py", argv, 25, "tests/test_hang.log", {}, "pytest")
    t0 = time.monotonic()
    rec = W.run_pytest_job(_runner(tmp_path), job, time.monotonic() + 25, _env())
    assert time.monotonic() - t0 < 25 + W.KILL_GRACE + 5
    outcomes = {t["nodeid"].split("::")[1]: t["outcome"] for t in rec.extra["tests"]}
    assert outcomes == {"test_a": "passed", "test_hangs": "timeout"}  # test_after never ran: the cap was spent
    assert rec.status == "timeout" and rec.attempts == 1
    assert any("test_hangs: the file's time cap (25 s) ran out in this test" in p for p in rec.problems)


FAKE_SWEEP = textwrap.dedent("""
    import argparse, json, os, signal
    p = argparse.ArgumentParser(); p.add_argument("--jsonl"); p.add_argument("--start", type=int, default=0)
    p.add_argument("--time-limit"); a = p.parse_args()
    with open(a.jsonl, "a") as f:
        for i in range(a.start, 6):
            f.write(json.dumps({"event": "start", "index": i, "op": "op", "desc": f"case{i}"}) + "\\n"); f.flush()
            if i == 2:
                os.kill(os.getpid(), signal.SIGSEGV)
            st = "failed" if i == 4 else "passed"
            f.write(json.dumps({"event": "result", "index": i, "op": "op", "desc": f"case{i}", "status": st,
                                "detail": "rel_err 1e-01 > tol" if st == "failed" else ""}) + "\\n")
    raise SystemExit(1)
""")


def test_sweep_job_resumes_after_a_crash(tmp_path):
    (tmp_path / "fake_sweep.py").write_text(FAKE_SWEEP)
    (tmp_path / "sweep").mkdir()
    r = _runner(tmp_path)
    job = W.Job("sweep", "fam", [PY, str(tmp_path / "fake_sweep.py"), "--jsonl", str(tmp_path / "sweep/fam.jsonl")],
                60, "sweep/fam.log", {}, "sweep", {"jsonl": "sweep/fam.jsonl", "cases": 6})
    rec = W.run_sweep_job(r, job, time.monotonic() + 60, _env())
    assert rec.counts == {"passed": 4, "crashed": 1, "failed": 1}
    assert rec.status == "crashed" and rec.attempts == 2
    assert any(p.startswith("case 2 crashed: op case2: the process died (SIGSEGV)") for p in rec.problems)
    assert any(p.startswith("case 4 failed: op case4: rel_err 1e-01 > tol") for p in rec.problems)


@pytest.mark.parametrize("log,rc,status", [
    ("========= Invalid __global__ read of size 16 bytes\n=========     at qk::kernel+0x40\n"
     "========= ERROR SUMMARY: 2 errors\n", 3, "failed"),
    ("========= ERROR SUMMARY: 0 errors\n", 0, "passed"),
    ("========= Error: Device not supported\n", 1, "unavailable"),
    ("", 0, "failed"),  # exit 0 but no sanitizer summary: not evidence of anything
])
def test_memcheck_job_reads_the_sanitizer_log(tmp_path, log, rc, status):
    (tmp_path / "memcheck").mkdir()
    slog = tmp_path / "memcheck" / "f.sanitizer.log"
    code = f"open({str(slog)!r}, 'w').write({log!r}); raise SystemExit({rc})"
    job = W.Job("memcheck", "f", [PY, "-c", code], 30, "memcheck/f.log", {}, "memcheck",
                {"sanitizer_log": "memcheck/f.sanitizer.log"})
    rec = W.run_memcheck_job(_runner(tmp_path), job, time.monotonic() + 30, dict(os.environ))
    assert rec.status == status
    if status == "failed" and log:
        assert rec.detail == "2 memcheck errors" and "Invalid __global__ read of size 16" in rec.problems[0]


# ----------------------------------------------------------------- packing
def test_pack_returns_at_most_8_files_within_the_limits(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    for d in ("tests", "sweep", "memcheck", "lib"):
        (work / d).mkdir(parents=True)
    for i in range(30):
        (work / "tests" / f"t{i}.log").write_text(f"log {i}\n" * 100)
    big = work / "memcheck" / "big.sanitizer.log"
    big.write_bytes(os.urandom(5 * 2**20))  # incompressible: must be trimmed
    (work / "lib" / "_qkernels_cuda.so").write_bytes(b"\0" * 1000)  # never packed
    (work / "window.log").write_text("console\n")
    monkeypatch.setattr(W, "MAX_OUT_FILE_BYTES", 3 * 2**20)
    monkeypatch.setattr(W, "LOG_TRIM_BYTES", 2 * 2**20)
    files = W.pack(work, out, "# md\n", {"verdict": "PASS"},
                   {"python_tests/logs/h100-sxm/tests/t1.log": work / "tests" / "t1.log",
                    "bench/results/h100-sxm/missing.json": work / "nope.json"})
    names = sorted(p.name for p in files)
    assert names == ["evidence.tar.gz", "logs.tar.gz", "summary.json", "summary.md", "window.log"]
    assert sorted(p.name for p in out.iterdir()) == names and all(OUT_NAME.match(n) for n in names)
    assert all(p.stat().st_size <= 3 * 2**20 for p in files)
    with tarfile.open(out / "logs.tar.gz") as t:
        members = t.getnames()
        assert "logs/tests/t29.log" in members and not any("lib/" in m for m in members)
        data = t.extractfile("logs/memcheck/big.sanitizer.log").read() if "logs/memcheck/big.sanitizer.log" in members \
            else t.extractfile("logs/DROPPED.txt").read()
        assert b"cut by the GPU window" in data or b"big.sanitizer.log" in data
    with tarfile.open(out / "evidence.tar.gz") as t:
        assert t.getnames() == ["python_tests/logs/h100-sxm/tests/t1.log"]


# ----------------------------------------------------------------- the plan and the scripts
def test_source_digest_follows_the_cuda_sources(tmp_path):
    (tmp_path / "csrc" / "fam").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    (tmp_path / "csrc" / "fam" / "k.cu").write_text("__global__ void k() {}\n")
    d0 = W.source_digest(tmp_path)
    (tmp_path / "csrc" / "fam" / "__pycache__").mkdir()
    (tmp_path / "csrc" / "fam" / "__pycache__" / "g.cpython-311.pyc").write_bytes(b"x")
    assert W.source_digest(tmp_path) == d0
    (tmp_path / "csrc" / "fam" / "k.cu").write_text("__global__ void k() { }\n")
    assert W.source_digest(tmp_path) != d0


def test_test_files_discovered_generically():
    from qkernels.ops import family_ops

    fams = list(family_ops())
    with_gpu, without = W.discover_test_files(ROOT, None, fams)
    every = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "python_tests").glob("test_*.py"))
    assert sorted(with_gpu + without) == every
    for f in with_gpu:
        assert "mark.gpu" in (ROOT / f).read_text()
    # the kernel families' files come first
    fam_files = [f for f in with_gpu if any(Path(f).stem[5:] == x or Path(f).stem[5:].startswith(x + "_") for x in fams)]
    assert with_gpu[: len(fam_files)] == fam_files
    assert W.discover_test_files(ROOT, "scaled_mm", fams)[0] == ["python_tests/test_scaled_mm.py"]


def test_window_dry_run_plans_every_step_file_and_family(tmp_path):
    from qkernels.ops import family_ops
    from qkernels.testing.sweep import families

    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_window.sh"), "--dry-run"], capture_output=True, text=True,
                       env=_env(PYTHON=PY, OUT=str(out), QK_WINDOW_WORK=str(tmp_path / "work")), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    order = [text.index(f"step {s} (cap") for s in W.STEP_ORDER]
    assert order == sorted(order), "steps out of order"
    caps = [float(c) for c in re.findall(r"^step \w+ \(cap (\d+)s", text, re.M)]
    assert sum(caps) <= W.DEFAULT_BUDGET - W.FINALIZE_RESERVE
    with_gpu, _ = W.discover_test_files(ROOT, None, list(family_ops()))
    for f in with_gpu:
        assert f"-m pytest {f} -m gpu" in text, f
    for fam, has in families().items():
        if has:
            assert f"--family {fam} --cases 200" in text and f"--log-file {tmp_path}/work/memcheck/{fam}" in text
        else:
            assert f"family '{fam}' has no sweep generator" in text
    assert "qkernels tune --quick" in text and "qkernels bench --quick" in text
    assert not out.exists() or not any(out.iterdir()), "a dry run must not write the returned files"
    assert not (tmp_path / "work").exists()


def test_window_without_a_carried_library_still_reports(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_window.sh")], capture_output=True, text=True, timeout=300,
                       env=_env(PYTHON=PY, OUT=str(out), QK_CARRY=str(tmp_path / "nothing"),
                                QK_WINDOW_WORK=str(tmp_path / "work")))
    assert r.returncode == 1
    md = (out / "summary.md").read_text()
    assert md.startswith("# GPU window: FAIL")
    assert "has no _build_info.json: run `bash scripts/gpu_prebuild.sh`" in md
    js = json.loads((out / "summary.json").read_text())
    assert {s["step"]: s["status"] for s in js["steps"]}["tests"] == "skipped"
    assert len(list(out.iterdir())) <= W.MAX_OUT_FILES


def test_window_end_to_end_on_cpu(tmp_path):
    """The real steps without a GPU: load check, one test file, the sweep on the references."""
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_window.sh"), "--carry", "", "--allow-no-gpu",
                        "--tests", "test_quant", "--families", "quant", "--sweep-cases", "3", "--steps", "tests,sweep"],
                       capture_output=True, text=True, timeout=600,
                       env=_env(PYTHON=PY, OUT=str(out), QK_WINDOW_WORK=str(tmp_path / "work")))
    js = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in js["steps"]}
    assert steps["sweep"]["status"] == "passed" and "3 passed" in steps["sweep"]["detail"], steps["sweep"]
    jobs = {(j["step"], j["name"]): j for j in js["jobs"]}
    assert jobs[("tests", "python_tests/test_quant.py")]["counts"].get("skipped", 0) > 0  # gpu tests skip here
    assert jobs[("load", "registry-tests")]["status"] == "passed"
    load = json.loads((tmp_path / "work" / "load" / "load.json").read_text())
    from qkernels.ops import family_ops

    assert set(load["families"]) == set(family_ops()) and load["cuda_available"] is False
    assert steps["memcheck"]["status"] == "skipped" and steps["tune"]["status"] == "skipped"
    with tarfile.open(out / "evidence.tar.gz") as t:
        names = t.getnames()
    assert "python_tests/logs/unknown-gpu/window-summary.md" in names
    assert any(n.startswith("python_tests/logs/unknown-gpu/tests/test_quant") for n in names)
    assert r.returncode == (0 if js["verdict"] == "PASS" else 1)


def test_window_killed_from_outside_still_reports_and_leaves_no_process(tmp_path):
    import signal

    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.Popen([PY, str(ROOT / "scripts" / "gpu_window.py"), "run", "--carry", "", "--allow-no-gpu",
                             "--out", str(out), "--work", str(work), "--steps", "tests", "--tests", "test_quant"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (work / "load" / "load-check.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the load step's jobs run
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output[-3000:]
    js = json.loads((out / "summary.json").read_text())
    assert js["verdict"] == "FAIL"
    assert any("the window itself stopped: WindowInterrupted: interrupted by SIGTERM" in p for p in js["problems"])
    assert len(list(out.iterdir())) <= W.MAX_OUT_FILES
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the window still running: {left}"


def test_prebuild_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    env = _env(GPU_VENV=str(tmp_path / "venv"), CARRY=str(tmp_path / "carry"), BUILD_DIR=str(tmp_path / "build"))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_prebuild.sh"), "--dry-run"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for s in ("venv", "configure", "build", "inspect", "load-check", "stage", "size"):
        assert f"== [{s}]" in text, s
    assert f"-m venv {tmp_path}/venv" in text and "pip install -q torch==2.11.0" in text
    assert "-DQK_ARCHS=90a -DQK_SASS_FOR=90 -DQK_PTX=OFF" in text
    assert "load-check --allow-no-gpu" in text and f"gzip -6 -c {tmp_path}/build/out/_qkernels_cuda.so" in text
    assert f"WHL_DIR={tmp_path}/carry.new/wheels" in text
    assert 'run(command="bash scripts/gpu_window.sh"' in text
    assert not any(tmp_path.iterdir()), "a dry run must create nothing"
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_prebuild.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


# ----------------------------------------------------------------- build switches
def test_parse_cmake_build_info_records_retargeted_groups():
    sys.path.insert(0, str(ROOT))
    try:
        import setup as qsetup
    finally:
        sys.path.pop(0)
    text = ("archs=90a\nfamilies=quant;scaled_mm\nptx=OFF\nsass_for=90\nbuild_type=Release\ncuda=13.0.88\n"
            "groups=;quant:ALL:90a;scaled_mm:SM80:90:80;scaled_mm:SM90:90a\n")
    info = qsetup.parse_cmake_build_info(text)
    assert info["groups"] == {"quant": {"ALL": ["90a"]}, "scaled_mm": {"SM80": ["90"], "SM90": ["90a"]}}
    assert info["retargeted"] == {"scaled_mm": {"SM80": "80"}} and info["sass_for"] == "90"
    old = qsetup.parse_cmake_build_info("cuda=13.0\ngroups=;quant:ALL:75,80\n")  # before QK_SASS_FOR
    assert old == {"cuda": "13.0", "groups": {"quant": {"ALL": ["75", "80"]}}}


@pytest.mark.skipif(not os.path.exists("/usr/local/cuda/bin/nvcc"), reason="needs nvcc for CMake's CUDA configure")
def test_cmake_sass_for_compiles_older_groups_to_sm90(tmp_path):
    cmake = shutil.which("cmake", path=os.path.dirname(PY)) or shutil.which("cmake")
    ninja = shutil.which("ninja", path=os.path.dirname(PY)) or shutil.which("ninja")
    if not cmake or not ninja:
        pytest.skip("cmake / ninja not installed")
    b = tmp_path / "b"
    r = subprocess.run([cmake, "-S", str(ROOT), "-B", str(b), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                        "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc", "-DQK_ARCHS=90a", "-DQK_SASS_FOR=90",
                        "-DQK_FAMILIES=quant;scaled_mm;w4a16;sparse24", f"-DQK_OUTPUT_DIR={b}/out"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = dict(line.split("=", 1) for line in (b / "build_info.txt").read_text().splitlines())
    groups = info["groups"].split(";")
    for tag, v in (("SM75", "75"), ("SM80", "80"), ("SM89", "89")):
        assert f"scaled_mm:{tag}:90:{v}" in groups
    assert "scaled_mm:SM90:90a" in groups and "quant:ALL:90a" in groups  # groups that run on sm_90 natively
    ninja_text = (b / "build.ninja").read_text()
    for v in ("75", "80", "89"):
        assert f"arch=compute_{v},code=sm_90" in ninja_text
    assert not re.search(r"code=sm_(75|80|89)\b", ninja_text), "no machine code for the older GPUs themselves"
    for macro in ("QK_SCALED_MM_SM75", "QK_SCALED_MM_SM80", "QK_SCALED_MM_SM89", "QK_SCALED_MM_SM90"):
        assert f"-D{macro}=1" in ninja_text
    bad = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "c"), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                          "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc", "-DQK_SASS_FOR=sm90"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "must be a plain arch number" in bad.stdout + bad.stderr


# ----------------------------------------------------------------- the carried library switch
def test_loader_reports_a_missing_carried_library(tmp_path):
    code = ("import warnings; warnings.simplefilter('ignore'); import io, qkernels; from qkernels import _loader, cli; "
            "b = io.StringIO(); cli.info(out=b); "
            "print(_loader.library_path, _loader.library_source, '|', _loader.load_error, '|', "
            "[l for l in b.getvalue().splitlines() if l.startswith('Library')][0])")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_env(QKERNELS_LIBRARY=str(tmp_path / "nope.so")))
    assert r.returncode == 0, r.stderr
    path, err, line = r.stdout.strip().split(" | ")
    assert path == "None QKERNELS_LIBRARY"
    assert err == f"QKERNELS_LIBRARY={tmp_path}/nope.so does not exist (unset it to use the package's own library)"
    assert line.startswith("Library (from $QKERNELS_LIBRARY): not loaded: QKERNELS_LIBRARY=")


def test_loader_loads_a_library_from_elsewhere(tmp_path):
    from qkernels import _loader

    if _loader.library_path is None or _loader.library_source != "package":
        pytest.skip("no installed library to carry elsewhere")
    shutil.copy(_loader.library_path, tmp_path / "_qkernels_cuda.so")
    info = dict(_loader.build_info, git_commit="abc123", date="2026-11-28T00:00:00Z")
    (tmp_path / "_build_info.json").write_text(json.dumps(info))
    code = ("import io, qkernels; from qkernels import _loader, cli; b = io.StringIO(); cli.info(out=b); "
            "print(_loader.library_path); print(sorted(_loader._cuda_ops) == %r); "
            "print([l for l in b.getvalue().splitlines() if l.startswith('Library')][0])" % sorted(_loader._cuda_ops))
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_env(QKERNELS_LIBRARY=str(tmp_path / "_qkernels_cuda.so")))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == str(tmp_path / "_qkernels_cuda.so") and lines[1] == "True"
    assert lines[2].startswith("Library (from $QKERNELS_LIBRARY; git_commit abc123") and "date 2026-11-28" in lines[2]
