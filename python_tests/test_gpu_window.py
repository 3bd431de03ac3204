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
    # the worst job decides: a crash outranks a failure, which outranks a timeout
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
    assert js["unfinished"] == ["tests / python_tests/test_sparse24.py: timeout",
                                "tests / python_tests/test_loader.py: not run: the step's time cap ran out before it started",
                                "tune: not reached"]
    assert "## Did not finish (3)" in md


def test_summary_verdicts():
    ok = [W.Record(s, s, "passed") for s in W.STEP_ORDER]
    assert W.build_summary(ok, {})[1]["verdict"] == "PASS"
    unavailable = ok[:4] + [W.Record("memcheck", "m", "unavailable")] + ok[5:]
    assert W.build_summary(unavailable, {})[1]["verdict"] == "PASS"  # a tool the machine lacks is not a failure
    assert W.build_summary(ok[:3], {})[1]["verdict"] == "INCOMPLETE"  # steps never reached
    md, js = W.build_summary(ok[:3], {}, running="sweep")
    assert js["verdict"] == "INCOMPLETE" and "still in step 'sweep'" in md
    assert {s["step"]: s["status"] for s in js["steps"]}["sweep"] == "running"


def test_running_out_of_time_is_incomplete_not_fail():
    R = W.Record
    ok = [R(s, s, "passed") for s in W.STEP_ORDER]
    # a sweep stopped at its time limit, a test file still running at the step cap: nothing failed
    slow = [R("sweep", "quant", "timeout", counts={"passed": 150}, detail="150 of 200 cases: 150 passed"),
            R("tests", "python_tests/test_x.py", "timeout", counts={"passed": 40, "timeout": 1},
              detail="40 passed, 1 timeout"),
            R("memcheck", "fp8_block", "not run", detail="no time left in the step")]
    md, js = W.build_summary(ok + slow, {})
    assert js["verdict"] == "INCOMPLETE"
    assert md.startswith("# GPU window: INCOMPLETE (nothing failed outright, but time ran out: a slow or hung test or case is one cause; see 'Did not finish')")
    steps = {s["step"]: s["status"] for s in js["steps"]}
    assert steps["sweep"] == steps["tests"] == steps["memcheck"] == "timeout"  # still TIMEOUT, as a step
    assert js["unfinished"] == ["sweep / quant: timeout: 150 of 200 cases: 150 passed",
                                "tests / python_tests/test_x.py: timeout: 40 passed, 1 timeout",
                                "memcheck / fp8_block: not run: no time left in the step"]
    assert "## Did not finish (3)\n- sweep / quant: timeout: 150 of 200 cases" in md
    # any failed, crashed or error result makes it FAIL, also inside a job that timed out
    for bad in (R("tests", "t", "timeout", counts={"passed": 3, "failed": 1}), R("sweep", "s", "crashed"),
                R("memcheck", "m", "failed"), R("setup", "library", "error"),
                R("sweep", "s", "timeout", counts={"passed": 9, "error": 1})):
        assert W.build_summary(ok + slow + [bad], {})[1]["verdict"] == "FAIL", bad
    assert W.build_summary(ok + [R("tests", "t", "failed")], {}, running="sweep")[1]["verdict"] == "FAIL"
    # a test file with a failure and a timeout is FAILED: the failure is the finding
    step = W.step_status([R("tests", "a", "timeout"), R("tests", "b", "failed")])
    assert step == "failed"


def test_the_last_lines_of_output_repeat_the_verdict_and_step_table():
    R = W.Record
    recs = [R(s, s, "passed") for s in W.STEP_ORDER[:2]] + [
        R("tests", f"python_tests/test_{i}.py", "failed", counts={"failed": 3},
          problems=[f"FAILED python_tests/test_{i}.py::test_gpu_{j}[case]: " + "x" * 400 for j in range(3)])
        for i in range(20)]
    md, js = W.build_summary(recs, {})
    assert len(md) > 30_000  # the verdict at its top is far outside the device tool's 12,000-character tail
    tail = W.compact_tail(js)
    assert len(tail) < 6000
    assert "# GPU window: FAIL" in tail and "| step | status | time | cap | what | result |" in tail
    assert "| tests | FAILED |" in tail and "| tune | not run |" in tail
    assert "Problems (60, the first 10):" in tail
    assert all(len(ln) <= 162 for ln in tail.splitlines() if ln.startswith("- "))


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


def test_jobs_run_in_their_own_process_group_inside_the_window_session(tmp_path):
    """process_group=0, not a new session: killpg reaches the job's children, and the device tool's
    cleanup at the end of its command (which spares only new sessions) ends them too."""
    code = "import os; print('ids', os.getpgid(0) == os.getpid(), os.getsid(0))"
    rec = W.run_plain_job(_runner(tmp_path), W.Job("x", "ids", [PY, "-c", code], 20, "x/ids.log"),
                          time.monotonic() + 20, dict(os.environ))
    assert rec.status == "passed"
    line = next(ln for ln in (tmp_path / "x/ids.log").read_text().splitlines() if ln.startswith("ids "))
    assert line == f"ids True {os.getsid(0)}"


def test_a_process_that_survives_sigkill_is_recorded_not_waited_for(tmp_path, monkeypatch):
    import signal

    sent = []
    monkeypatch.setattr(W, "_kill_group", lambda proc, sig: sent.append(sig))  # the kills do not land
    monkeypatch.setattr(W, "KILL_GRACE", 0.5)
    monkeypatch.setattr(W, "KILL_WAIT", 0.5)
    r = _runner(tmp_path)
    job = W.Job("x", "stuck", [PY, "-c", "import time; time.sleep(60)"], 1.0, "x/stuck.log")
    t0 = time.monotonic()
    try:
        rc, _, timed_out = r.exec(job, 1.0, tmp_path / "x/stuck.log")
        assert time.monotonic() - t0 < 10 and timed_out and rc == -signal.SIGKILL
        assert sent[:2] == [signal.SIGINT, signal.SIGKILL]
        assert [(x["step"], x["job"]) for x in r.stuck] == [("x", "stuck")]
        assert "still there 0 s after SIGKILL: left behind" in (tmp_path / "x/stuck.log").read_text()
        md, _ = W.build_summary([], {"stuck_processes": r.stuck})
        assert f"processes left behind (still there after SIGKILL): x stuck (pid {r.stuck[0]['pid']})" in md
    finally:
        for x in r.stuck:  # the process this test started
            os.killpg(x["pid"], signal.SIGKILL)


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
    p.add_argument("--deadline", type=float); a = p.parse_args()
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


SLOW_START_SWEEP = textwrap.dedent("""
    import argparse, json, time
    time.sleep(3)  # imports, the library, CUDA's start
    p = argparse.ArgumentParser(); p.add_argument("--jsonl"); p.add_argument("--start", type=int, default=0)
    p.add_argument("--deadline", type=float); a = p.parse_args()
    with open(a.jsonl, "a") as f:
        for i in range(a.start, 100):
            if time.time() > a.deadline:
                f.write(json.dumps({"event": "summary", "stopped": f"time limit reached (next index {i})"}) + "\\n")
                break
            f.write(json.dumps({"event": "start", "index": i, "op": "op", "desc": f"case{i}"}) + "\\n"); f.flush()
            time.sleep(0.4)
            f.write(json.dumps({"event": "result", "index": i, "op": "op", "desc": f"case{i}", "status": "passed"}) + "\\n")
""")


def test_sweep_deadline_counts_the_startup_so_the_cap_kills_no_healthy_case(tmp_path, monkeypatch):
    """A sweep with 3 s of startup and a 7 s cap: its deadline (absolute, from the window's clock)
    stops it before the cap, so no case is cut and called hung; out of time, nothing failed: TIMEOUT."""
    monkeypatch.setattr(W, "SWEEP_MARGIN", 2.0)
    (tmp_path / "slow_sweep.py").write_text(SLOW_START_SWEEP)
    (tmp_path / "sweep").mkdir()
    job = W.Job("sweep", "fam", [PY, str(tmp_path / "slow_sweep.py"), "--jsonl", str(tmp_path / "sweep/fam.jsonl")],
                7, "sweep/fam.log", {}, "sweep", {"jsonl": "sweep/fam.jsonl", "cases": 100})
    rec = W.run_sweep_job(_runner(tmp_path), job, time.monotonic() + 60, _env())
    assert rec.status == "timeout" and rec.attempts == 1
    assert set(rec.counts) == {"passed"} and 1 <= rec.counts["passed"] < 100
    assert "time cap of" not in (tmp_path / "sweep/fam.log").read_text(), "the cap's kill must not be needed"
    assert not any("hung" in p for p in rec.problems)
    assert rec.problems == [f"fam: only {rec.counts['passed']} of 100 cases ran (time limit reached "
                            f"(next index {rec.counts['passed']}))"]
    assert W.build_summary([rec], {})[1]["verdict"] == "INCOMPLETE"


@pytest.mark.parametrize("log,rc,status", [
    ("========= Invalid __global__ read of size 16 bytes\n=========     at qk::kernel+0x40\n"
     "========= ERROR SUMMARY: 2 errors\n", 3, "failed"),
    ("========= ERROR SUMMARY: 0 errors\n", 0, "passed"),
    ("========= Error: Device not supported\n", 1, "unavailable"),
    ("", 0, "failed"),  # exit 0 but no sanitizer summary: not evidence of anything
    # a sweep case failed under memcheck (the sweep exits 1): a failure, not "cannot check this device"
    ("========= Error: Target application returned an error\n========= ERROR SUMMARY: 0 errors\n", 1, "failed"),
    # the sweep crashed: compute-sanitizer says so and exits non-zero
    ("========= Error: process didn't terminate successfully\n========= ERROR SUMMARY: 0 errors\n", 255, "failed"),
])
def test_memcheck_job_reads_the_sanitizer_log(tmp_path, log, rc, status):
    (tmp_path / "memcheck").mkdir()
    slog = tmp_path / "memcheck" / "f.sanitizer.log"
    case = {"event": "result", "index": 4, "op": "scaled_mm", "desc": "M=17", "status": "failed", "detail": "rel_err 1e-01"}
    code = (f"open({str(slog)!r}, 'w').write({log!r}); "
            f"open({str(tmp_path / 'memcheck' / 'f.jsonl')!r}, 'w').write({json.dumps(case)!r} if {rc} == 1 else ''); "
            f"raise SystemExit({rc})")
    job = W.Job("memcheck", "f", [PY, "-c", code], 30, "memcheck/f.log", {}, "memcheck",
                {"sanitizer_log": "memcheck/f.sanitizer.log", "jsonl": "memcheck/f.jsonl", "cases": 6})
    rec = W.run_memcheck_job(_runner(tmp_path), job, time.monotonic() + 30, dict(os.environ))
    assert rec.status == status
    assert " --deadline " in (tmp_path / "memcheck/f.log").read_text().splitlines()[0]  # the memcheck sweep's time limit
    if status == "failed" and "Invalid" in log:
        assert rec.detail == "2 memcheck errors" and "Invalid __global__ read of size 16" in rec.problems[0]
    if status == "failed" and rc == 1:
        assert rec.detail == "exit code 1 (sweep cases failed under memcheck)"
        assert rec.problems == ["memcheck f: exit code 1 (sweep cases failed under memcheck)",
                                "memcheck f: case 4 failed: scaled_mm M=17: rel_err 1e-01"]
    if rc == 255:
        assert rec.detail == "exit code 255 (see the log)"


def test_memcheck_stopped_by_its_deadline_is_a_timeout(tmp_path):
    (tmp_path / "memcheck").mkdir()
    slog, jl = tmp_path / "memcheck" / "f.sanitizer.log", tmp_path / "memcheck" / "f.jsonl"
    events = [{"event": "result", "index": i, "status": "passed"} for i in range(2)] + \
        [{"event": "summary", "stopped": "time limit 38 s reached after 2 cases (next index 2)"}]
    code = (f"open({str(slog)!r}, 'w').write('========= ERROR SUMMARY: 0 errors\\n'); "
            f"open({str(jl)!r}, 'w').write({''.join(json.dumps(e) + chr(10) for e in events)!r})")
    job = W.Job("memcheck", "f", [PY, "-c", code], 30, "memcheck/f.log", {}, "memcheck",
                {"sanitizer_log": "memcheck/f.sanitizer.log", "jsonl": "memcheck/f.jsonl", "cases": 6})
    rec = W.run_memcheck_job(_runner(tmp_path), job, time.monotonic() + 30, dict(os.environ))
    assert rec.status == "timeout"
    assert rec.detail == "0 errors (ERROR SUMMARY read); 2 of 6 cases; stopped: time limit 38 s reached after 2 cases " \
                         "(next index 2)"


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


def test_source_digest_covers_only_what_is_compiled(tmp_path):
    fam = tmp_path / "csrc" / "fam"
    (fam / "kernels").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    for name in ("k.cu", "k.cuh", "k.h", "glue.cpp", "tab.inc", "sources.cmake", "kernels/x.cu"):
        (fam / name).write_text(f"// {name}\n")
    d0 = W.source_digest(tmp_path)
    for name in ("README.md", "notes.txt", "gen.py", "kernels/README.md"):  # not compiled: a notes-only commit
        (fam / name).write_text("notes\n")
    assert W.source_digest(tmp_path) == d0
    for name in ("k.cuh", "k.h", "glue.cpp", "tab.inc", "sources.cmake", "kernels/x.cu"):
        (fam / name).write_text("// changed\n")
        assert W.source_digest(tmp_path) != d0, name
        d0 = W.source_digest(tmp_path)
    (tmp_path / "CMakeLists.txt").write_text("project(y)\n")
    assert W.source_digest(tmp_path) != d0
    # the prebuild records the digest through the same function (carry-info), the window compares with it
    assert "source_digest(), " in (ROOT / "scripts" / "gpu_window.py").read_text()
    assert "gpu_window.py carry-info" in (ROOT / "scripts" / "gpu_prebuild.sh").read_text()


def test_test_files_discovered_generically():
    from qkernels.ops import family_ops

    fams = list(family_ops())
    with_gpu, without = W.discover_test_files(ROOT, None, fams)
    every = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "python_tests").glob("test_*.py"))
    assert sorted(with_gpu + without) == every
    for f in with_gpu:
        assert "mark.gpu" in (ROOT / f).read_text()
    # the files with the most GPU tests start first
    counts = [W.gpu_tests_in((ROOT / f).read_text()) for f in with_gpu]
    assert counts == sorted(counts, reverse=True) and counts[0] >= 50
    # "mark.gpu" in a string (an assertion) is no gpu mark: no process for a file without GPU tests
    assert "python_tests/test_gpu_window.py" in without
    assert W.discover_test_files(ROOT, "scaled_mm", fams)[0] == ["python_tests/test_scaled_mm.py"]


def test_gpu_tests_are_counted_from_the_source():
    d = textwrap.dedent
    assert W.gpu_tests_in(d("""
        def test_a():
            assert "mark.gpu" in open(__file__).read()
        S = "@pytest.mark.gpu"
    """)) is None
    assert W.gpu_tests_in(d("""
        import pytest
        @pytest.mark.gpu
        def test_a(): pass
        @pytest.mark.gpu
        @pytest.mark.parametrize("m", [1, 2, 3])
        @pytest.mark.parametrize("dtype", DTYPES)
        def test_b(m, dtype): pass
        def test_cpu(): pass
        DTYPES = ("a", "b")
    """)) == 1 + 3 * 2  # a module-level list counts wherever it is assigned
    src = d("""
        import pytest
        gpu = pytest.mark.gpu
        MS = [1, 2] + [3, 4, 5]
        SHAPES = [(1, 2)] if REDUCED else [(1, 2), (3, 4), (5, 6)]
        DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
        @gpu
        @pytest.mark.parametrize("m", MS)
        @pytest.mark.parametrize("shape", SHAPES)
        def test_a(m, shape): pass
        @pytest.mark.parametrize("device", DEVICES)
        @pytest.mark.parametrize("k", (1, 2))
        def test_b(device, k): pass
        class TestC:
            @gpu
            def test_c(self): pass
        @pytest.mark.parametrize("x", [1, 2])
        def test_cpu_only(x): pass
    """)
    assert W.gpu_tests_in(src) == 5 * 3 + 1 * 2 + 1
    assert W.gpu_tests_in("import pytest\npytestmark = pytest.mark.gpu\ndef test_a(): pass\ndef test_b(): pass\n") == 2


def _plan_args(**kw):
    from types import SimpleNamespace

    a = dict(caps={}, tests=None, reduced=False, test_timeout=60, families=None, sweep_cases=200, seed=0,
             memcheck_cases=6, jobs=4, bench_args="--quick", steps=None, allow_no_gpu=False)
    a.update(kw)
    return SimpleNamespace(**a)


FAMS = {"quant": True, "scaled_mm": True, "w4a16": True, "w4a16_hopper": True, "sparse24": True, "fp8_block": True}


def test_plan_sweep_and_memcheck_run_every_family_at_once(tmp_path):
    steps = {s.name: s for s in W.make_plan(_plan_args(), PY, FAMS, True, "/x/compute-sanitizer", True, tmp_path)}
    sw, mc, t = steps["sweep"], steps["memcheck"], steps["tests"]
    assert sw.parallel == len(sw.jobs) == 6 and mc.parallel == len(mc.jobs) == 6
    assert t.parallel == 4  # the test files: still 4 at a time
    threads = str(max(1, (os.cpu_count() or 16) // 6))
    assert all(j.env["OMP_NUM_THREADS"] == threads for j in sw.jobs + mc.jobs) or "OMP_NUM_THREADS" in os.environ
    for j in mc.jobs:  # API errors (torch / Triton probing the driver) are not memcheck errors; memory errors are
        i = j.argv.index("--report-api-errors")
        assert j.argv[i + 1] == "no" and j.argv[j.argv.index("--error-exitcode") + 1] == "3"
        assert j.argv[0] == "/x/compute-sanitizer" and j.meta["cases"] == 6 and j.meta["jsonl"] == f"memcheck/{j.name}.jsonl"
    bench = steps["bench"].jobs[0].argv
    assert bench[bench.index("--time-limit") + 1] == f"{W.DEFAULT_CAPS['bench'] - W.BENCH_MARGIN:.0f}"
    own = {s.name: s for s in W.make_plan(_plan_args(bench_args="--quick --time-limit 9"), PY, FAMS, True, "cs", True,
                                          tmp_path)}["bench"].jobs[0].argv
    assert own.count("--time-limit") == 1 and own[own.index("--time-limit") + 1] == "9"


def test_a_missing_sanitizer_makes_memcheck_unavailable_with_the_places_tried(tmp_path):
    tried = ["PATH", "/usr/local/cuda*/bin/compute-sanitizer", "/opt/nvidia/**/compute-sanitizer"]
    steps = {s.name: s for s in W.make_plan(_plan_args(), PY, FAMS, True, None, True, tmp_path, tried)}
    mc = steps["memcheck"]
    assert mc.skip_status == "unavailable" and "/opt/nvidia/**/compute-sanitizer" in mc.skip
    rec = W.run_step(_runner(tmp_path), mc, dict(os.environ))[0]
    assert rec.status == "unavailable" and rec.detail == ("compute-sanitizer was not found (tried PATH, "
                                                          "/usr/local/cuda*/bin/compute-sanitizer, /opt/nvidia/**/compute-sanitizer)")
    # not selected: skipped, as any unselected step
    mc2 = {s.name: s for s in W.make_plan(_plan_args(steps="tests"), PY, FAMS, True, None, True, tmp_path)}["memcheck"]
    assert mc2.skip_status == "skipped"


def test_find_sanitizer_looks_beyond_path(tmp_path):
    nobin = str(tmp_path / "nobin")
    found, tried = W.find_sanitizer(str(tmp_path), path=nobin)
    assert found is None and tried == ["PATH"] + [str(tmp_path) + g for g in W.SANITIZER_PLACES]
    assert any("/opt/nvidia/**" in t for t in tried) and any("/usr/local/cuda*/compute-sanitizer/" in t for t in tried)
    deep = tmp_path / "opt" / "nvidia" / "cuda-13" / "tools" / "compute-sanitizer"
    deep.parent.mkdir(parents=True)
    deep.write_text("#!/bin/sh\n")
    assert W.find_sanitizer(str(tmp_path), path=nobin)[0] is None  # not executable
    deep.chmod(0o755)
    assert W.find_sanitizer(str(tmp_path), path=nobin)[0] == str(deep)
    cs = tmp_path / "usr" / "local" / "cuda-13.0" / "compute-sanitizer" / "compute-sanitizer"
    cs.parent.mkdir(parents=True)
    cs.write_text("#!/bin/sh\n")
    cs.chmod(0o755)
    assert W.find_sanitizer(str(tmp_path), path=nobin)[0] == str(cs)  # before /opt/nvidia
    on_path = tmp_path / "bin" / "compute-sanitizer"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert W.find_sanitizer(str(tmp_path), path=str(on_path.parent))[0] == str(on_path)


def test_every_job_runs_offline(tmp_path):
    from types import SimpleNamespace

    a = SimpleNamespace(work=str(tmp_path / "work"), out=str(tmp_path / "out"), python=PY, budget=60, seed=0,
                        carry="", caps={})
    w = W.Window(a)
    w.work.mkdir(parents=True)
    r = _runner(w.work)
    w.setup(r)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert w.env[k] == "1" and w.base_env()[k] == "1"


def test_the_bench_job_says_where_its_time_limit_stopped_it(tmp_path):
    log = tmp_path / "bench.log"
    log.write_text("measuring...\r[quant] 3/8\nqkernels bench: time limit (25 s) reached in quant: time limit reached "
                   "before quant 4096x4096 fp8\nwrote:\n")
    rec = W.Record("bench", "bench", "passed", detail="tuned config h100-sxm.json")
    W._bench_post(rec, log)
    assert rec.detail == ("tuned config h100-sxm.json; qkernels bench: time limit (25 s) reached in quant: time limit "
                          "reached before quant 4096x4096 fp8")


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
    assert "--report-api-errors no" in text and "(cap 35s, 6 at a time)" in text
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
    # the last lines of the output: the verdict and the step table again (the device tool shows the tail)
    lines = r.stdout.rstrip().splitlines()
    i = max(k for k, ln in enumerate(lines) if ln.startswith("# GPU window: "))
    assert i > len(lines) - 30 and i > lines.index("## Jobs"), "the verdict is among the very last lines"
    assert lines[i].startswith(f"# GPU window: {js['verdict']}") and lines[i + 2].startswith("| step | status |")
    assert [ln.split(" | ")[0][2:] for ln in lines[i + 4: i + 4 + len(W.STEP_ORDER)]] == list(W.STEP_ORDER)


def test_window_sh_fallback_summary_is_printed_too(tmp_path):
    """The orchestrator dies before writing any summary: the shell's fallback summary is the end of the output."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback: the orchestrator broke' >&2\nexit 7\n")
    fake.chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    (work / "tests").mkdir(parents=True)
    (work / "tests" / "t.log").write_text("a log\n")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_window.sh")], capture_output=True, text=True, timeout=60,
                       env=_env(PYTHON=str(fake), OUT=str(out), QK_WINDOW_WORK=str(work)))
    assert r.returncode == 7
    md = (out / "summary.md").read_text()
    assert md.startswith("# GPU window: FAIL (the orchestrator exited with code 7 before writing a summary)")
    assert r.stdout.endswith(md) and "Traceback: the orchestrator broke" in md
    with tarfile.open(out / "logs.tar.gz") as t:  # the work folder of QK_WINDOW_WORK
        assert "work/tests/t.log" in t.getnames()


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
