#!/usr/bin/env python3
"""The GPU window: one command on the GPU machine that checks, sweeps, memchecks, tunes and
benchmarks qkernels with a library built elsewhere (``scripts/gpu_prebuild.sh``), compiling
nothing, and always leaves a summary of what passed, failed, crashed or ran out of time, and where.

Run it through ``scripts/gpu_window.sh`` (README "Validating on a GPU"). Subcommands:

  run         the window (the default): steps setup, load, tests, sweep, memcheck, tune, bench,
              each with its own time cap, under one overall budget; ``--dry-run`` prints the
              plan (every step, cap and exact command) and runs nothing
  load-check  (a child of ``run``, and of the prebuild) load the library, list what it registered,
              compare with the build info's list, run one small case per family; JSON out
  families    the families of this install and whether each has a sweep generator (JSON)
  digest      the digest of what the library is compiled from (csrc/'s sources, CMakeLists.txt)
  carry-info  (for scripts/gpu_prebuild.sh) write the carried library's _build_info.json
  summarize   rewrite the summary of a work folder from its records (after a crash of ``run``)

This file imports nothing outside the standard library at module level, and ``run`` never imports
torch: every step runs in child processes (one per test file, per family), each in its own process
group with its own time cap, so that a sticky CUDA error, a crash or a hang costs one job, not
the window. After every step the summary and the returned files are rewritten, so even a window
killed from outside returns the state of its last finished step and names the step it was in.
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import glob
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "qkernels.gpu_window/1"

# Statuses of a job, a test, a step. FAILS make the verdict FAIL; TIMEOUT and NOT_RUN (ran out of
# time, nothing wrong seen) make it INCOMPLETE; BAD ones are shown in capitals.
PASSED, FAILED, TIMEOUT, CRASHED, ERROR = "passed", "failed", "timeout", "crashed", "error"
SKIPPED, UNAVAILABLE, RUNNING, NOT_RUN = "skipped", "unavailable", "running", "not run"
FAILS = (FAILED, CRASHED, ERROR)
BAD = FAILS + (TIMEOUT,)

STEP_ORDER = ("setup", "load", "tests", "sweep", "memcheck", "tune", "bench")
# Seconds. The window must fit 9 minutes of device time, the machine's 1-2 minute start and the
# transfers included: the caps sum to 390 s, the overall budget (400 s) keeps the rest for the
# summary and packing; the device call's timeout_s (480) is a backstop the window never reaches.
DEFAULT_CAPS = {"setup": 20, "load": 40, "tests": 130, "sweep": 35, "memcheck": 50, "tune": 70, "bench": 45}
DEFAULT_BUDGET = 400.0
FINALIZE_RESERVE = 8.0  # seconds kept for the last summary + packing
KILL_GRACE = 6.0  # SIGINT first (pytest writes its junit file), SIGKILL this much later
KILL_WAIT = 10.0  # a process still there this long after SIGKILL (stuck in the driver) is recorded and left
MAX_ATTEMPTS = 8  # processes per test file / sweep (each resumes after the test or case the last died in)
# A sweep starts no case later than this many seconds before its job's cap (--deadline), so the cap's
# kill only hits a case that hangs: the last case, the summary line (and the sanitizer's report) fit.
SWEEP_MARGIN = 8.0
MEMCHECK_MARGIN = 12.0
BENCH_MARGIN = 20.0  # qkernels bench --time-limit = cap - this (startup, the last variant, plots)
# Every job's environment: the GPU machine has no network (a hub lookup would wait for its timeout).
JOB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
MAX_OUT_FILES = 8  # the device tool returns at most 8 files, 16 MiB each
MAX_OUT_FILE_BYTES = 15 * 2**20
LOG_TRIM_BYTES = 3 * 2**20  # a log larger than this is packed as its first 1 MiB + last 2 MiB
EVIDENCE_TRIM_BYTES = 512 * 2**10  # logs committed to the repository stay small

STEP_TITLES = {
    "setup": "carried library + wheels unpacked, GPU queried",
    "load": "library loads, registers every expected kernel; one small case per family",
    "tests": "GPU tests (pytest -m gpu), one process per test file",
    "sweep": "randomized sweep against the references, one process per family",
    "memcheck": "compute-sanitizer memcheck on a small sweep, one process per family",
    "tune": "qkernels tune --quick (writes the per-GPU config)",
    "bench": "qkernels bench --quick with the tuned config",
}


class WindowInterrupted(Exception):
    """A signal asked the window to stop: it kills its jobs and writes the summary."""


# ----------------------------------------------------------------- records
@dataclass
class TestResult:
    nodeid: str
    outcome: str  # passed | failed | skipped | error | crashed | timeout
    message: str = ""
    seconds: float = 0.0


@dataclass
class Record:
    """What one job did: the unit of the summary."""

    step: str
    name: str
    status: str
    seconds: float = 0.0
    rc: Optional[int] = None
    detail: str = ""
    cmd: str = ""
    log: str = ""  # path relative to the work folder
    attempts: int = 0
    counts: Dict[str, int] = field(default_factory=dict)  # tests / cases by outcome
    problems: List[str] = field(default_factory=list)  # one line each: what and where
    extra: dict = field(default_factory=dict)


@dataclass
class Job:
    step: str
    name: str
    argv: List[str]
    cap: float
    log: str  # relative to the work folder
    env: Dict[str, str] = field(default_factory=dict)
    kind: str = "plain"  # plain | pytest | sweep | memcheck | load
    meta: dict = field(default_factory=dict)

    def shell(self) -> str:
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (envs + " " if envs else "") + " ".join(shlex.quote(a) for a in self.argv)


@dataclass
class Step:
    name: str
    cap: float
    jobs: List[Job] = field(default_factory=list)
    parallel: int = 1
    skip: Optional[str] = None  # why the whole step does not run
    skip_status: str = SKIPPED  # or UNAVAILABLE: a tool the machine lacks
    notes: List[str] = field(default_factory=list)  # what the step does not cover, and why


# ----------------------------------------------------------------- running jobs
class Runner:
    """Runs jobs as process groups under time caps; collects records; writes the console log."""

    def __init__(self, work: Path, deadline: float, echo: bool = True):
        self.work = work
        self.deadline = deadline
        self.records: List[Record] = []
        self.lock = threading.Lock()
        self.console = open(work / "window.log", "a", buffering=1)
        self.echo = echo
        self.step_times: Dict[str, dict] = {}
        self.live: Dict[int, subprocess.Popen] = {}
        self.stopping = False
        self.stuck: List[dict] = []  # processes that did not exit after SIGKILL (left behind)

    def kill_all(self) -> None:
        """Stop every running job (their process groups): the window is being interrupted."""
        self.stopping = True
        for proc in list(self.live.values()):
            _kill_group(proc, signal.SIGKILL)

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        with self.lock:
            self.console.write(line + "\n")
            if self.echo:
                print(line, flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)
            with open(self.work / "records.jsonl", "a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")

    def exec(self, job: Job, cap: float, log_path: Path, argv: Optional[List[str]] = None,
             base_env: Optional[Dict[str, str]] = None) -> Tuple[Optional[int], float, bool]:
        """Run ``argv`` (default ``job.argv``) with output to ``log_path``; (rc, seconds, timed out).
        rc < 0: killed by that signal; None: could not start."""
        env = dict(base_env if base_env is not None else os.environ)
        env.update(job.env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(log_path, "ab") as logf:
            logf.write(f"$ {job.shell() if argv is None else ' '.join(shlex.quote(a) for a in argv)}\n".encode())
            logf.flush()
            try:
                # its own process group (killpg), in the window's session: the device tool's cleanup
                # at the end of the command ends it too (a new session would outlive the command)
                proc = subprocess.Popen(argv or job.argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        cwd=str(ROOT), process_group=0)
            except OSError as e:
                logf.write(f"could not start: {e}\n".encode())
                return None, 0.0, False
            self.live[proc.pid] = proc
            if self.stopping:
                _kill_group(proc, signal.SIGKILL)
            timed_out = False
            try:
                rc = proc.wait(timeout=max(0.1, cap))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc, signal.SIGINT)
                try:
                    rc = proc.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    _kill_group(proc, signal.SIGKILL)
                    try:
                        rc = proc.wait(timeout=KILL_WAIT)
                    except subprocess.TimeoutExpired:  # stuck (in the driver?): record it, do not wait forever
                        rc = -signal.SIGKILL
                        self.stuck.append({"step": job.step, "job": job.name, "pid": proc.pid})
                        logf.write(f"\n[window] pid {proc.pid} still there {KILL_WAIT:.0f} s after SIGKILL: "
                                   "left behind\n".encode())
                logf.write(f"\n[window] time cap of {cap:.0f} s reached: stopped (rc {rc})\n".encode())
            _kill_group(proc, signal.SIGKILL)  # leftovers of the group (a child that outlived its parent)
            self.live.pop(proc.pid, None)
        return rc, time.monotonic() - t0, timed_out


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def classify(rc: Optional[int], timed_out: bool, ok_rcs: Sequence[int] = (0,)) -> Tuple[str, str]:
    """(status, detail) of a finished process."""
    if rc is None:
        return ERROR, "could not start"
    if timed_out:
        return TIMEOUT, "stopped at its time cap"
    if rc < 0:
        return CRASHED, f"killed by {_signal_name(rc)}"
    if rc in ok_rcs:
        return PASSED, ""
    return FAILED, f"exit code {rc}"


# ----------------------------------------------------------------- pytest: progress + junit
def read_jsonl(path: Path) -> List[dict]:
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    return out


def parse_progress(path: Path) -> dict:
    """From a window_plugin progress file: {"results": [TestResult], "unfinished": nodeid or None,
    "sticky": nodeid or None, "finished_session": bool}."""
    results: Dict[str, TestResult] = {}
    started: List[str] = []
    finished = set()
    sticky = None
    session_done = False
    for ev in read_jsonl(path):
        e = ev.get("event")
        if e == "start":
            started.append(ev["nodeid"])
        elif e == "finish":
            finished.add(ev["nodeid"])
        elif e == "report":
            nid, out, when = ev["nodeid"], ev.get("outcome", "?"), ev.get("when")
            prev = results.get(nid)
            if out == "failed" and when != "call":
                out = "error"  # setup / teardown failure, as pytest counts it
            if prev is None or prev.outcome == "passed" or out in ("failed", "error"):
                msg = ev.get("message", "")
                results[nid] = TestResult(nid, out, msg if out != "passed" else "",
                                          (prev.seconds if prev else 0.0) + float(ev.get("duration") or 0.0))
        elif e == "sticky":
            sticky = ev["nodeid"]
        elif e == "sessionfinish":
            session_done = True
    unfinished = next((n for n in reversed(started) if n not in finished), None)
    return {"results": list(results.values()), "unfinished": unfinished, "sticky": sticky,
            "finished_session": session_done}


def parse_junit(path: Path) -> List[TestResult]:
    """Test results from a junit-xml file; a file cut short (a killed process) yields the
    complete ``<testcase>`` elements before the cut."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    try:
        root = ET.fromstring(text)
        cases = root.iter("testcase")
    except ET.ParseError:
        cases = []
        for m in re.finditer(r"<testcase\b.*?(?:/>|</testcase>)", text, re.S):
            try:
                cases.append(ET.fromstring(m.group(0)))
            except ET.ParseError:
                continue
    out = []
    for c in cases:
        cls, name = c.get("classname", ""), c.get("name", "")
        nid = f"{cls.replace('.', '/')}.py::{name}" if cls else name
        outcome, msg = PASSED, ""
        for tag, oc in (("failure", FAILED), ("error", ERROR), ("skipped", SKIPPED)):
            el = c.find(tag)
            if el is not None:
                outcome, msg = oc, (el.get("message") or (el.text or "")).strip().splitlines()[0:1]
                msg = msg[0][:500] if msg else ""
                break
        out.append(TestResult(nid, outcome, msg, float(c.get("time") or 0.0)))
    return out


def count(results: Sequence[TestResult]) -> Dict[str, int]:
    c: Dict[str, int] = {}
    for r in results:
        c[r.outcome] = c.get(r.outcome, 0) + 1
    return c


def run_pytest_job(runner: Runner, job: Job, step_deadline: float, base_env: Dict[str, str]) -> Record:
    """One test file in as many processes as it takes: after a crash, a hang (killed by
    pytest-timeout) or a sticky CUDA error, the file is rerun without the tests already done and
    the one it died in, while its time lasts. Every test ends with an outcome: passed, failed,
    skipped, error, or crashed / timeout for the one a process died in."""
    rec = Record(job.step, job.name, PASSED, cmd=job.shell(), log=job.log)
    tdir = runner.work / Path(job.log).parent
    stem = Path(job.log).stem
    done: Dict[str, TestResult] = {}
    skip_file = tdir / f"{stem}.skip"
    t0 = time.monotonic()
    attempt = 0
    final_rc: Optional[int] = None
    stopped = ""
    while True:
        attempt += 1
        cap = min(job.cap - (time.monotonic() - t0), step_deadline - time.monotonic())
        if cap < 5:
            if attempt == 1:
                return Record(job.step, job.name, NOT_RUN, cmd=job.shell(), log=job.log,
                              detail="no time left in the step to start it",
                              problems=[f"{job.name}: not run (no time left in the step)"])
            stopped = "no time left in the step for another attempt"
            break
        prog = tdir / f"{stem}.progress.{attempt}.jsonl"
        junit = tdir / f"{stem}.junit.{attempt}.xml"
        argv = list(job.argv) + ["--qk-progress", str(prog), f"--junitxml={junit}"]
        if done:
            skip_file.write_text("\n".join(sorted(done)) + "\n")
            argv += ["--qk-skip", str(skip_file)]
        log_path = runner.work / job.log
        log_start = log_path.stat().st_size if log_path.exists() else 0
        rc, secs, timed_out = runner.exec(job, cap, log_path, argv, base_env)
        final_rc = rc
        p = parse_progress(prog)
        results = p["results"] or [r for r in parse_junit(junit) if r.nodeid not in done]
        for r in results:
            done[r.nodeid] = r
        log_text = _read_from(log_path, log_start, 200_000)  # this attempt's output only
        culprit = p["unfinished"]  # started, never finished: the process died in it
        if culprit:
            if timed_out:
                oc, why = TIMEOUT, f"the file's time cap ({job.cap:.0f} s) ran out in this test"
            elif "Timeout +++" in log_text:
                oc, why = TIMEOUT, "hung: pytest-timeout stopped the process in this test"
            elif rc is not None and rc < 0:
                oc, why = CRASHED, f"the process died in this test ({_signal_name(rc)})"
            else:
                oc, why = CRASHED, f"the process exited (code {rc}) in this test"
            done[culprit] = TestResult(culprit, oc, why)
            runner.say(f"tests {job.name}: {oc} in {culprit}")
            if timed_out:
                stopped = why
                break
            if attempt < MAX_ATTEMPTS:
                continue  # resume after it
            stopped = f"gave up after {attempt} processes"
            break
        if p["sticky"] and not timed_out and attempt < MAX_ATTEMPTS:
            r = done.get(p["sticky"])
            if r is not None:
                r.message = f"sticky CUDA error (context unusable; the rest reran in a new process): {r.message}"
            runner.say(f"tests {job.name}: sticky CUDA error in {p['sticky']}: resuming after it")
            continue
        if timed_out:
            stopped = f"time cap reached (rc {rc})"
        break
    rec.attempts = attempt
    rec.seconds = time.monotonic() - t0
    rec.rc = final_rc
    results = list(done.values())
    rec.counts = count(results)
    bad = [r for r in results if r.outcome in (FAILED, ERROR, CRASHED, TIMEOUT)]
    rec.problems = [f"{r.outcome.upper()} {r.nodeid}: {r.message}" for r in bad]
    rec.extra["tests"] = [asdict(r) for r in results]
    skips = [r.message for r in results if r.outcome == SKIPPED]
    if skips:
        common = max(set(skips), key=skips.count)
        rec.extra["skip_reason"] = f"{skips.count(common)} x '{common[:200]}'"
    if bad:
        worst = next((o for o in (CRASHED, FAILED, ERROR, TIMEOUT) if any(r.outcome == o for r in bad)))
        rec.status = worst if worst != ERROR else FAILED
    elif results and len(skips) == len(results):
        rec.status = SKIPPED
    elif final_rc == 5 and not results:
        rec.status, rec.detail = SKIPPED, "no GPU tests in this file"
    elif final_rc not in (0, 5) and not stopped:
        rec.status = FAILED if final_rc is None or final_rc >= 0 else CRASHED
        rec.detail = f"pytest exited with {final_rc} outside any test (collection or session error: see the log)"
        rec.problems.append(f"{job.name}: {rec.detail}")
    if stopped and rec.status not in BAD:
        rec.status = TIMEOUT
    if stopped:
        rec.detail = (rec.detail + "; " if rec.detail else "") + stopped
        if not any("time cap" in p or "hung" in p for p in rec.problems):
            rec.problems.append(f"{job.name}: {stopped}; tests after the last recorded one did not run")
    c = rec.counts
    summary = ", ".join(f"{c[k]} {k}" for k in ("passed", "failed", "error", "crashed", "timeout", "skipped") if c.get(k))
    rec.detail = (summary or "no tests ran") + (f"; {rec.detail}" if rec.detail else "") + \
        (f"; {attempt} processes" if attempt > 1 else "") + \
        (f"; most skipped: {rec.extra['skip_reason']}" if skips else "")
    return rec


# ----------------------------------------------------------------- sweep + memcheck jobs
def run_sweep_job(runner: Runner, job: Job, step_deadline: float, base_env: Dict[str, str]) -> Record:
    """One family's sweep; after a crash or a sticky CUDA error it resumes at the next case."""
    rec = Record(job.step, job.name, PASSED, cmd=job.shell(), log=job.log)
    jsonl = runner.work / job.meta["jsonl"]
    t0 = time.monotonic()
    start, attempt, final_rc, stopped = 0, 0, None, ""
    crashed_cases: List[str] = []
    while True:
        attempt += 1
        cap = min(job.cap - (time.monotonic() - t0), step_deadline - time.monotonic())
        if cap < 3:
            stopped = "no time left for the remaining cases"
            break
        # an absolute deadline: the sweep's imports and CUDA start count against it
        deadline = time.time() + max(1.0, cap - SWEEP_MARGIN)
        argv = list(job.argv) + ["--start", str(start), "--deadline", f"{deadline:.1f}"]
        rc, secs, timed_out = runner.exec(job, cap, runner.work / job.log, argv, base_env)
        final_rc = rc
        events = read_jsonl(jsonl)
        started = [e for e in events if e.get("event") == "start"]
        results = {e["index"]: e for e in events if e.get("event") == "result"}
        last = started[-1] if started else None
        if last is not None and last["index"] not in results and (timed_out or rc is None or rc < 0 or rc not in (0, 1, 75)):
            why = ("hung (time cap)" if timed_out else f"the process died ({_signal_name(rc)})" if rc is not None and rc < 0
                   else f"the process exited with {rc}")
            crashed_cases.append(f"case {last['index']} {last.get('op')} {last.get('desc')}: {why}")
            with open(jsonl, "a") as f:
                f.write(json.dumps({"event": "result", "index": last["index"], "op": last.get("op"),
                                    "desc": last.get("desc"), "status": TIMEOUT if timed_out else CRASHED,
                                    "detail": why}) + "\n")
            if timed_out or attempt >= MAX_ATTEMPTS:
                stopped = why if timed_out else f"gave up after {attempt} processes"
                break
            start = last["index"] + 1
            continue
        if rc == 75 and attempt < MAX_ATTEMPTS:  # sticky CUDA error: the sweep stopped itself; resume after that case
            sticky = [r for r in results.values() if r.get("sticky")]
            start = (max(r["index"] for r in sticky) if sticky else start) + 1
            continue
        if timed_out:
            stopped = "time cap reached"
        break
    events = read_jsonl(jsonl)
    results = {}
    for e in events:
        if e.get("event") == "result":
            results[e["index"]] = e  # the last word on each case
    c: Dict[str, int] = {}
    for r in results.values():
        c[r["status"]] = c.get(r["status"], 0) + 1
    rec.counts = c
    rec.attempts, rec.rc, rec.seconds = attempt, final_rc, time.monotonic() - t0
    bad = [r for r in sorted(results.values(), key=lambda r: r["index"]) if r["status"] in ("failed", "error", CRASHED, TIMEOUT)]
    rec.problems = [f"case {r['index']} {r['status']}: {r.get('op')} {r.get('desc')}: {r.get('detail')}" for r in bad]
    requested = job.meta.get("cases", 0)
    ran = len(results)
    parts = ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
    rec.detail = f"{ran} of {requested} cases: {parts or 'none'}"
    summaries = [e for e in events if e.get("event") == "summary" and e.get("stopped")]
    if summaries and not stopped:
        stopped = summaries[-1]["stopped"]
    if bad:
        sts = {r["status"] for r in bad}
        rec.status = CRASHED if CRASHED in sts else FAILED if sts - {TIMEOUT} else TIMEOUT
    elif final_rc not in (0, 1, 75) and not stopped:
        st, why = classify(final_rc, False)
        rec.status = st if st != PASSED else FAILED
        rec.problems.append(f"{job.name}: sweep process {why} (see {job.log})")
    if stopped:
        rec.detail += f"; stopped: {stopped}"
        if ran < requested and rec.status == PASSED:
            rec.status = TIMEOUT
            rec.problems.append(f"{job.name}: only {ran} of {requested} cases ran ({stopped})")
    return rec


# compute-sanitizer cannot check this device here (gVisor says "Device not supported").
SANITIZER_NOT_SUPPORTED = ("Device not supported", "Unable to find injection library", "device is not supported",
                           "CUDA_ERROR_NOT_SUPPORTED")
# its lines about the target's exit status, not memory errors (a failed or crashed sweep: the rc says which)
SANITIZER_TARGET_EXIT = ("Target application returned an error", "process didn't terminate successfully")


def run_memcheck_job(runner: Runner, job: Job, step_deadline: float, base_env: Dict[str, str]) -> Record:
    rec = Record(job.step, job.name, PASSED, cmd=job.shell(), log=job.log)
    cap = min(job.cap, step_deadline - time.monotonic())
    if cap < 5:
        rec.status, rec.detail = NOT_RUN, "no time left in the step"
        rec.problems = [f"memcheck {job.name}: not run (no time left in the step)"]
        return rec
    argv = list(job.argv) + ["--deadline", f"{time.time() + max(1.0, cap - MEMCHECK_MARGIN):.1f}"]
    rc, secs, timed_out = runner.exec(job, cap, runner.work / job.log, argv, base_env)
    rec.rc, rec.seconds, rec.attempts = rc, secs, 1
    san_log = runner.work / job.meta["sanitizer_log"]
    text = san_log.read_text(errors="replace") if san_log.exists() else ""
    out = _tail(runner.work / job.log, 100_000)
    m = re.search(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    errors = int(m.group(1)) if m else None
    first = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("=========") and
             re.search(r"Invalid|Program hit|out of bounds|misaligned|leak|Error", ln)
             and not any(s in ln for s in SANITIZER_TARGET_EXIT)][:6]
    events = read_jsonl(runner.work / job.meta["jsonl"]) if job.meta.get("jsonl") else []
    results = {e["index"]: e for e in events if e.get("event") == "result"}
    failed_cases = [f"memcheck {job.name}: case {i} {r['status']}: {r.get('op')} {r.get('desc')}: {r.get('detail')}"
                    for i, r in sorted(results.items()) if r.get("status") in ("failed", "error")]
    if any(s in text or s in out for s in SANITIZER_NOT_SUPPORTED) and not errors:
        rec.status, rec.detail = UNAVAILABLE, "compute-sanitizer cannot check this device here: " + \
            next(s for s in SANITIZER_NOT_SUPPORTED if s in text or s in out)
        return rec
    if errors:
        rec.status = FAILED
        rec.detail = f"{errors} memcheck errors"
        rec.problems = [f"memcheck {job.name}: {ln}" for ln in first] or [f"memcheck {job.name}: {errors} errors (see {job.meta['sanitizer_log']})"]
    elif first:  # no summary (killed, crashed) but errors were reported before
        rec.status, rec.detail = FAILED, f"memcheck errors before the run ended ({'time cap' if timed_out else f'rc {rc}'})"
        rec.problems = [f"memcheck {job.name}: {ln}" for ln in first]
    elif timed_out:
        rec.status, rec.detail = TIMEOUT, "stopped at its time cap before the sanitizer's summary"
        rec.problems = [f"memcheck {job.name}: time cap ({cap:.0f} s) reached; no error seen before it"]
    elif rc is not None and rc < 0:
        rec.status, rec.detail = CRASHED, f"killed by {_signal_name(rc)}"
        rec.problems = [f"memcheck {job.name}: {rec.detail}"]
    elif rc not in (0,):
        rec.status = FAILED
        rec.detail = f"exit code {rc} ({'sweep cases failed under memcheck' if rc == 1 else 'see the log'})"
        rec.problems = [f"memcheck {job.name}: {rec.detail}"] + failed_cases[:6]
    else:
        rec.detail = f"0 errors ({'ERROR SUMMARY read' if m else 'no sanitizer summary found'})"
        if not m:
            rec.status = FAILED
            rec.problems = [f"memcheck {job.name}: exit 0 but no 'ERROR SUMMARY' in {job.meta['sanitizer_log']}"]
        stop = [e["stopped"] for e in events if e.get("event") == "summary" and e.get("stopped")]
        if m and stop and len(results) < job.meta.get("cases", 0):  # clean, but its deadline came first
            rec.status = TIMEOUT
            rec.detail += f"; {len(results)} of {job.meta['cases']} cases; stopped: {stop[-1]}"
            rec.problems = [f"memcheck {job.name}: only {len(results)} of {job.meta['cases']} cases ran ({stop[-1]})"]
    return rec


def run_plain_job(runner: Runner, job: Job, step_deadline: float, base_env: Dict[str, str]) -> Record:
    rec = Record(job.step, job.name, PASSED, cmd=job.shell(), log=job.log)
    cap = min(job.cap, step_deadline - time.monotonic())
    if cap < 1:
        rec.status, rec.detail = NOT_RUN, "no time left in the step"
        rec.problems = [f"{job.name}: not run (no time left in the step)"]
        return rec
    note = ""
    if job.meta.get("configs_dir"):  # the bench: with the tuned config if the tune step wrote one
        cdir = Path(job.meta["configs_dir"])
        tuned = sorted(cdir.glob("*.json")) if cdir.is_dir() else []
        if tuned:
            job.env["QKERNELS_CONFIGS"] = str(cdir)
            note = f"tuned config {tuned[0].name}"
        else:
            note = "no tuned config (the tune step wrote none): shipped / compiled-in tables"
        rec.cmd = job.shell()
    rc, secs, timed_out = runner.exec(job, cap, runner.work / job.log, None, base_env)
    rec.rc, rec.seconds, rec.attempts = rc, secs, 1
    rec.status, rec.detail = classify(rc, timed_out, job.meta.get("ok_rcs", (0,)))
    if note:
        rec.detail = (rec.detail + "; " if rec.detail else "") + note
    if rec.status != PASSED:
        tail = [ln for ln in _tail(runner.work / job.log, 4000).splitlines()
                if ln.strip() and not ln.startswith("$ ")][-3:]
        rec.problems.append(f"{job.name}: {rec.detail}" + (f": {' | '.join(tail)[:400]}" if tail else ""))
    post = job.meta.get("post")
    if post:
        post(rec)
    return rec


RUNNERS = {"pytest": run_pytest_job, "sweep": run_sweep_job, "memcheck": run_memcheck_job, "plain": run_plain_job}


def run_step(runner: Runner, step: Step, base_env: Dict[str, str]) -> List[Record]:
    """Run a step's jobs (``step.parallel`` at a time) until done or the step's cap; a job that
    could not start before the cap is recorded as not run."""
    t0 = time.monotonic()
    cap = max(0.0, min(step.cap, runner.left() - FINALIZE_RESERVE))
    runner.step_times[step.name] = {"cap": step.cap, "effective_cap": round(cap, 1), "started": time.time()}
    if step.skip:
        recs = [Record(step.name, step.name, step.skip_status, detail=step.skip)]
    elif cap < 2:
        recs = [Record(step.name, step.name, NOT_RUN, detail="no time left in the window's budget")]
    else:
        deadline = t0 + cap
        runner.say(f"step {step.name}: {len(step.jobs)} jobs, cap {cap:.0f} s, {step.parallel} at a time")

        def one(job: Job) -> Record:
            if time.monotonic() > deadline - 2:
                return Record(step.name, job.name, NOT_RUN, detail="the step's time cap ran out before it started",
                              cmd=job.shell(), log=job.log,
                              problems=[f"{step.name} {job.name}: not run (the step's cap of {cap:.0f} s ran out)"])
            try:
                r = RUNNERS[job.kind](runner, job, deadline, base_env)
            except Exception as e:  # noqa: BLE001  (a bug here must not end the window)
                r = Record(step.name, job.name, ERROR, detail=f"window error: {type(e).__name__}: {e}",
                           cmd=job.shell(), log=job.log, problems=[f"{job.name}: window error {e}"])
            runner.say(f"  {step.name} {job.name}: {r.status} in {r.seconds:.0f} s: {r.detail}")
            return r

        with ThreadPoolExecutor(max_workers=max(1, step.parallel)) as ex:
            recs = list(ex.map(one, step.jobs))
    for r in recs:
        runner.add(r)
    runner.step_times[step.name]["seconds"] = round(time.monotonic() - t0, 1)
    return recs


def _read_from(path: Path, start: int, n: int) -> str:
    """The last ``n`` bytes written to ``path`` after offset ``start``."""
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(start, size - n))
        return f.read().decode(errors="replace")


def _tail(path: Path, n: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode(errors="replace")


# ----------------------------------------------------------------- the summary
def step_status(recs: Sequence[Record]) -> str:
    sts = [r.status for r in recs]
    for s in (CRASHED, FAILED, ERROR, TIMEOUT):
        if s in sts:
            return s
    if not sts:
        return NOT_RUN
    if all(s == NOT_RUN for s in sts):
        return NOT_RUN
    if all(s in (SKIPPED, UNAVAILABLE, NOT_RUN) for s in sts):
        return UNAVAILABLE if UNAVAILABLE in sts else SKIPPED
    if NOT_RUN in sts:
        return TIMEOUT  # some jobs never started: the step ran out of time
    return PASSED


def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.0f}s"


def build_summary(records: Sequence[Record], meta: dict, running: Optional[str] = None,
                  plan: Sequence[str] = STEP_ORDER, step_times: Optional[dict] = None,
                  notes: Optional[Dict[str, List[str]]] = None) -> Tuple[str, dict]:
    """(markdown, json) of the window from its job records. ``running``: the step in progress
    when this is written (the files then describe a window that did not finish)."""
    step_times = step_times or {}
    notes = notes or {}
    by_step: Dict[str, List[Record]] = {}
    for r in records:
        by_step.setdefault(r.step, []).append(r)
    steps = []
    for name in plan:
        recs = by_step.get(name, [])
        st = RUNNING if name == running else step_status(recs)
        if not recs and name != running:
            st = NOT_RUN
        t = step_times.get(name, {})
        steps.append({"step": name, "status": st, "seconds": t.get("seconds"), "cap": t.get("cap"),
                      "title": STEP_TITLES.get(name, name), "detail": _step_detail(name, recs),
                      "jobs": len(recs), "notes": notes.get(name, [])})
    problems = [f"{r.step} / {r.name}: {p}" for r in records for p in r.problems]
    # FAIL: anything failed, crashed or errored (a job, or a test / case inside one); INCOMPLETE:
    # only time ran out (timeouts, jobs or steps not run); PASS: everything ran and passed.
    failed = any(r.status in FAILS or any(r.counts.get(k) for k in FAILS) for r in records)
    unfinished = [f"{r.step} / {r.name}: {r.status}" + (f": {r.detail}" if r.detail else "")
                  for r in records if r.status in (TIMEOUT, NOT_RUN)]
    unfinished += [f"{s['step']}: not reached" for s in steps if s["status"] == NOT_RUN and not s["jobs"]]
    if running:
        unfinished.append(f"{running}: still running when this was written")
    verdict = "FAIL" if failed else "INCOMPLETE" if unfinished else "PASS"
    js = {"schema": SCHEMA, "verdict": verdict, "running": running, "meta": meta, "steps": steps,
          "problems": problems, "unfinished": unfinished, "jobs": [asdict(r) for r in records],
          "written": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return _markdown(js), js


def _step_detail(name: str, recs: Sequence[Record]) -> str:
    if not recs:
        return ""
    if len(recs) == 1:
        return recs[0].detail
    tot: Dict[str, int] = {}
    for r in recs:
        for k, v in r.counts.items():
            tot[k] = tot.get(k, 0) + v
    by = {}
    for r in recs:
        by[r.status] = by.get(r.status, 0) + 1
    jobs = ", ".join(f"{v} {k}" for k, v in sorted(by.items()))
    unit = "tests" if name == "tests" else "cases" if name in ("sweep", "memcheck") else "items"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(tot.items()))
    return f"jobs: {jobs}" + (f"; {unit}: {counts}" if counts else "")


def _headline(js: dict) -> str:
    if js["running"]:
        return f"# GPU window: {js['verdict']} (still in step '{js['running']}' when written)"
    if js["verdict"] == "INCOMPLETE":
        return "# GPU window: INCOMPLETE (nothing failed outright, but time ran out: a slow or hung test or case is one cause; see 'Did not finish')"
    return f"# GPU window: {js['verdict']}"


def _step_table(js: dict) -> List[str]:
    L = ["| step | status | time | cap | what | result |", "|---|---|---|---|---|---|"]
    for s in js["steps"]:
        L.append(f"| {s['step']} | {s['status'].upper() if s['status'] in BAD else s['status']} | {_fmt_s(s['seconds'])} | "
                 f"{_fmt_s(s['cap'])} | {s['title']} | {s['detail'] or ''} |")
    return L


def compact_tail(js: dict, problems: int = 10, width: int = 160) -> str:
    """The verdict, the step table and the first problems, short: the window's last lines of output,
    so that they are in the device tool's output tail however long the summary above them is."""
    L = ["", "=" * 20 + " GPU window summary (again; summary.md has it all) " + "=" * 20, _headline(js), ""]
    L += _step_table(js)
    if js.get("unfinished"):
        L += ["", f"Did not finish ({len(js['unfinished'])}): " + "; ".join(u[:width] for u in js["unfinished"][:problems])]
    if js["problems"]:
        L += ["", f"Problems ({len(js['problems'])}, the first {min(problems, len(js['problems']))}):"]
        L += [f"- {p[:width]}" for p in js["problems"][:problems]]
    return "\n".join(L) + "\n"


def _markdown(js: dict) -> str:
    m = js["meta"]
    L = []
    L.append(_headline(js))
    L.append("")
    L.append(f"- GPU: {m.get('gpu') or 'unknown'} ({m.get('gpu_slug') or '-'}), driver {m.get('driver') or '-'}")
    L.append(f"- torch {m.get('torch') or '-'} (CUDA {m.get('torch_cuda') or '-'}), python {m.get('python') or '-'}")
    L.append(f"- library: {m.get('library') or 'not loaded'}; built {m.get('built_date') or '-'} from commit "
             f"{m.get('git_commit') or 'unknown'}{' (dirty tree)' if m.get('git_dirty') else ''}, "
             f"archs {m.get('archs') or '-'}, torch {m.get('built_torch') or '-'}")
    if m.get("source_check"):
        L.append(f"- sources: {m['source_check']}")
    L.append(f"- window: {_fmt_s(m.get('elapsed'))} of a {_fmt_s(m.get('budget'))} budget, started {m.get('started') or '-'}")
    if m.get("stuck_processes"):
        L.append("- processes left behind (still there after SIGKILL): " +
                 ", ".join(f"{x['step']} {x['job']} (pid {x['pid']})" for x in m["stuck_processes"]))
    L.append("")
    L += _step_table(js)
    L.append("")
    if js.get("unfinished"):
        L.append(f"## Did not finish ({len(js['unfinished'])})")
        L += [f"- {u}" for u in js["unfinished"]]
        L.append("")
    if js["problems"]:
        L.append(f"## Problems ({len(js['problems'])}): what and where")
        for p in js["problems"][:200]:
            L.append(f"- {p}")
        if len(js["problems"]) > 200:
            L.append(f"- ... {len(js['problems']) - 200} more in summary.json")
        L.append("")
    notes = [(s["step"], n) for s in js["steps"] for n in s.get("notes", [])]
    if notes:
        L.append("## Not covered")
        for st, n in notes:
            L.append(f"- {st}: {n}")
        L.append("")
    L.append("## Jobs")
    L.append("| step | job | status | time | processes | counts | detail | log |")
    L.append("|---|---|---|---|---|---|---|---|")
    for j in js["jobs"]:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(j["counts"].items()))
        L.append(f"| {j['step']} | {j['name']} | {j['status']} | {_fmt_s(j['seconds'])} | {j['attempts']} | {counts} | "
                 f"{(j['detail'] or '').replace('|', '/')[:300]} | {j['log']} |")
    L.append("")
    L.append("Logs: logs.tar.gz (everything, by step); evidence.tar.gz (the files to commit, at their repository "
             "paths: `tar -xzf evidence.tar.gz` in the checkout).")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------- packing the returned files
def _add_trimmed(tar: tarfile.TarFile, path: Path, arcname: str, limit: int) -> None:
    size = path.stat().st_size
    if size <= limit:
        tar.add(str(path), arcname=arcname)
        return
    head_n, tail_n = limit // 3, limit - limit // 3
    with open(path, "rb") as f:
        head = f.read(head_n)
        f.seek(size - tail_n)
        tail = f.read()
    note = f"\n\n[... {size - head_n - tail_n} bytes cut by the GPU window: the file had {size} bytes ...]\n\n".encode()
    data = head + note + tail
    ti = tarfile.TarInfo(arcname)
    ti.size = len(data)
    ti.mtime = int(path.stat().st_mtime)
    tar.addfile(ti, io.BytesIO(data))


def pack(work: Path, out: Path, summary_md: str, summary_js: dict, evidence: Dict[str, Path],
         exclude: Sequence[str] = ("lib", "site")) -> List[Path]:
    """Write the returned files into ``out``: summary.md, summary.json, evidence.tar.gz (files at
    their repository paths), logs.tar.gz (the work folder), window.log. At most 8 files, each
    under 15 MiB (logs trimmed, then dropped largest first, with a note, if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".packing"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "summary.md").write_text(summary_md)
    (tmp / "summary.json").write_text(json.dumps(summary_js, indent=1, default=str))
    with tarfile.open(tmp / "evidence.tar.gz", "w:gz") as tar:
        for arc, p in sorted(evidence.items()):
            if p.exists() and p.is_file():
                _add_trimmed(tar, p, arc, EVIDENCE_TRIM_BYTES if p.suffix in (".log", ".txt", ".jsonl") else MAX_OUT_FILE_BYTES // 4)
    files = sorted(p for p in work.rglob("*") if p.is_file() and p.parts[len(work.parts)] not in exclude
                   and p.name != "window.log")
    limit = LOG_TRIM_BYTES
    dropped: List[str] = []
    while True:
        with tarfile.open(tmp / "logs.tar.gz", "w:gz") as tar:
            for p in files:
                if str(p.relative_to(work)) in dropped:
                    continue
                _add_trimmed(tar, p, "logs/" + str(p.relative_to(work)), limit)
            if dropped:
                data = ("dropped to keep this file under the size limit:\n" + "\n".join(dropped) + "\n").encode()
                ti = tarfile.TarInfo("logs/DROPPED.txt")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        if (tmp / "logs.tar.gz").stat().st_size <= MAX_OUT_FILE_BYTES:
            break
        if limit > 256 * 2**10:
            limit //= 4
            continue
        left = [p for p in files if str(p.relative_to(work)) not in dropped]
        if not left:
            break
        dropped.append(str(max(left, key=lambda p: p.stat().st_size).relative_to(work)))
    wl = work / "window.log"
    if wl.exists():
        with tarfile.open(tmp / "_w.tar", "w") as t:  # reuse the trimming
            _add_trimmed(t, wl, "window.log", MAX_OUT_FILE_BYTES // 2)
        with tarfile.open(tmp / "_w.tar") as t:
            (tmp / "window.log").write_bytes(t.extractfile("window.log").read())
        (tmp / "_w.tar").unlink()
    produced = sorted(p for p in tmp.iterdir() if p.is_file())
    assert len(produced) <= MAX_OUT_FILES, produced
    for p in out.iterdir():  # replace what an earlier (partial) pack left
        if p.is_file() and p.name in {q.name for q in produced}:
            p.unlink()
    final = []
    for p in produced:
        dst = out / p.name
        os.replace(p, dst)
        final.append(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------- the plan
BUILD_INPUT_SUFFIXES = (".cu", ".cuh", ".h", ".cpp", ".inc")
BUILD_INPUT_NAMES = ("sources.cmake", "CMakeLists.txt")


def source_digest(root: Path = ROOT) -> str:
    """sha256 of what the library is compiled from: CMakeLists.txt and csrc/'s C++/CUDA sources,
    headers and sources.cmake files (not its READMEs or scripts). Equal digests mean the carried
    library was built from these sources. The prebuild records it through ``carry-info``, the
    window compares with it: both call this function."""
    h = hashlib.sha256()
    paths = [root / "CMakeLists.txt"] + sorted(
        p for p in (root / "csrc").rglob("*")
        if p.is_file() and (p.suffix in BUILD_INPUT_SUFFIXES or p.name in BUILD_INPUT_NAMES))
    for p in paths:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _is_gpu_mark(node: ast.AST) -> bool:
    """``pytest.mark.gpu`` as code (an attribute), never inside a string."""
    return (isinstance(node, ast.Attribute) and node.attr == "gpu" and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark" and isinstance(node.value.value, ast.Name) and node.value.value.id == "pytest")


def _param_values(v: ast.AST, names: Dict[str, ast.AST], depth: int = 0) -> list:
    """The argvalues of a parametrize as far as the source says: a literal list / tuple, a module-level
    name of one, ``a + b``, ``a if c else b`` (the longer); anything else counts as 3 unknown values."""
    if isinstance(v, ast.Name) and v.id in names and depth < 5:
        return _param_values(names[v.id], names, depth + 1)
    if isinstance(v, (ast.List, ast.Tuple)):
        return list(v.elts)
    if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Add):
        return _param_values(v.left, names, depth + 1) + _param_values(v.right, names, depth + 1)
    if isinstance(v, ast.IfExp):
        return max(_param_values(v.body, names, depth + 1), _param_values(v.orelse, names, depth + 1), key=len)
    return [None] * 3


def gpu_tests_in(text: str) -> Optional[int]:
    """About how many tests of a test file's source carry the ``gpu`` mark (``@pytest.mark.gpu``, an
    alias ``gpu = pytest.mark.gpu`` used as ``@gpu``, ``pytestmark``, or ``pytest.param(...,
    marks=pytest.mark.gpu)`` in a parametrize), counting parametrized cases where the source lists
    them; None if the file uses no gpu mark at all (in code: a string saying "mark.gpu" does not count)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:  # pytest will report it: run the file if it looks like it has GPU tests
        return 1 if re.search(r"^\s*@pytest\.mark\.gpu\b|=\s*pytest\.mark\.gpu\b", text, re.M) else None
    if not any(_is_gpu_mark(n) for n in ast.walk(tree)):
        return None
    aliases, names, whole_module = set(), {}, False
    for st in tree.body:
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            name = st.targets[0].id
            if name == "pytestmark":
                whole_module = any(_is_gpu_mark(n) for n in ast.walk(st.value))
            elif _is_gpu_mark(st.value):
                aliases.add(name)
            else:
                names[name] = st.value

    def is_gpu(node) -> bool:
        return _is_gpu_mark(node) or (isinstance(node, ast.Name) and node.id in aliases)

    def gpu_param(e) -> bool:  # pytest.param(..., marks=gpu)
        return isinstance(e, ast.Call) and any(k.arg == "marks" and any(is_gpu(n) for n in ast.walk(k.value))
                                               for k in e.keywords)

    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for c in tree.body:
        if isinstance(c, ast.ClassDef) and c.name.startswith("Test"):
            funcs += [n for n in c.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    total = 0
    for f in funcs:
        if not f.name.startswith("test"):
            continue
        gpu, n = whole_module or any(is_gpu(d) for d in f.decorator_list), 1
        for d in f.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "parametrize" \
                    and len(d.args) >= 2:
                vals = _param_values(d.args[1], names)
                marked = sum(gpu_param(e) for e in vals)
                if marked and not gpu:  # only its gpu-marked params are GPU tests
                    gpu, n = True, n * marked
                else:
                    n *= max(1, len(vals))
        total += n if gpu else 0
    return total


def discover_test_files(root: Path = ROOT, pattern: Optional[str] = None,
                        families: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(files with GPU tests, files without): python_tests/test_*.py that use the ``gpu`` mark
    (:func:`gpu_tests_in`), filtered by the comma-separated substrings of ``pattern``. Order: the
    most GPU tests first (the longest jobs start first); among equal counts the kernel families'
    files (``test_<family>*.py``, in family order), then larger files."""
    files = sorted(glob.glob(str(root / "python_tests" / "test_*.py")))
    if pattern:
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        files = [f for f in files if any(p in Path(f).name for p in pats)]
    fam_rank = {f: i for i, f in enumerate(families)}
    n_gpu = {f: gpu_tests_in(Path(f).read_text(errors="replace")) for f in files}

    def key(f: str):
        name = Path(f).stem[len("test_"):]
        rank = min((i for fam, i in fam_rank.items() if name == fam or name.startswith(fam + "_")),
                   default=len(fam_rank))
        return -(n_gpu[f] or 0), rank, -os.path.getsize(f), f

    files.sort(key=key)
    with_gpu = [str(Path(f).relative_to(root)) for f in files if n_gpu[f] is not None]
    without = [str(Path(f).relative_to(root)) for f in files if n_gpu[f] is None]
    return with_gpu, without


SANITIZER_PLACES = ("/usr/local/cuda*/bin/compute-sanitizer", "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                    "/opt/nvidia/**/compute-sanitizer")


def find_sanitizer(prefix: str = "", path: Optional[str] = None) -> Tuple[Optional[str], List[str]]:
    """(compute-sanitizer's path or None, the places tried: PATH (or ``path``), then SANITIZER_PLACES
    under ``prefix``)."""
    tried = ["PATH"] + [prefix + g for g in SANITIZER_PLACES]
    found = shutil.which("compute-sanitizer", path=path)
    for g in tried[1:]:
        if found:
            break
        found = next((c for c in sorted(glob.glob(g, recursive=True))
                      if os.path.isfile(c) and os.access(c, os.X_OK)), None)
    return found, tried


def _has_module(python: str, name: str) -> bool:
    r = subprocess.run([python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec('{name}') is None)"],
                       capture_output=True, env=dict(os.environ))
    return r.returncode == 0


def make_plan(a, python: str, families: Dict[str, bool], have_gpu: bool, sanitizer: Optional[str],
              pytest_timeout: bool, work: Path, sanitizer_tried: Sequence[str] = ()) -> List[Step]:
    """The steps after setup and load, from what those found (or, for --dry-run, what is known)."""
    caps = dict(DEFAULT_CAPS)
    caps.update(a.caps)
    steps: List[Step] = []
    gpu_needed = None if have_gpu or a.allow_no_gpu else "no CUDA GPU is visible (see step load)"
    # tests
    t = Step("tests", caps["tests"], parallel=a.jobs)
    files, no_gpu = discover_test_files(ROOT, a.tests, list(families))
    if no_gpu:
        t.notes.append(f"no GPU tests (no `mark.gpu`) in {', '.join(Path(f).name for f in no_gpu)}: not run here")
    for f in files:
        stem = Path(f).stem
        argv = [python, "-m", "pytest", f, "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                "-p", "qkernels.testing.window_plugin", "-o", "junit_family=xunit1"]
        if pytest_timeout:
            argv += [f"--timeout={a.test_timeout}", "--timeout-method=thread"]
        env = {"QKERNELS_TEST_REDUCED": "1"} if a.reduced else {}
        t.jobs.append(Job("tests", f, argv, caps["tests"], f"tests/{stem}.log", env, "pytest"))
    if not pytest_timeout:
        t.notes.append("pytest-timeout is not installed: a hung test is only stopped by the file's time cap")
    t.skip = gpu_needed
    steps.append(t)
    # sweep
    fams = [f for f in families if not a.families or f in a.families.split(",")]
    s = Step("sweep", caps["sweep"])
    device = "cuda" if have_gpu else "cpu"
    for f in fams:
        if not families[f]:
            s.notes.append(f"family '{f}' has no sweep generator (add qkernels/testing/sweeps/{f}.py)")
            continue
        jsonl = f"sweep/{f}.jsonl"
        s.jobs.append(Job("sweep", f, [python, "-m", "qkernels.testing.sweep", "--family", f, "--cases",
                                       str(a.sweep_cases), "--seed", str(a.seed), "--device", device,
                                       "--jsonl", str(work / jsonl)],
                          caps["sweep"], f"sweep/{f}.log", {}, "sweep", {"jsonl": jsonl, "cases": a.sweep_cases}))
    s.skip = gpu_needed
    steps.append(s)
    # memcheck
    mc = Step("memcheck", caps["memcheck"])
    if not have_gpu:
        mc.skip = "no CUDA GPU is visible"
    elif sanitizer is None:
        mc.skip = f"compute-sanitizer was not found (tried {', '.join(sanitizer_tried) or 'PATH'})"
        mc.skip_status = UNAVAILABLE
    for f in fams:
        if not families[f]:
            continue
        slog = f"memcheck/{f}.sanitizer.log"
        # --report-api-errors no: torch / Triton probe the driver (cuGetProcAddress ... CUDA_ERROR_NOT_FOUND);
        # those API errors are not memory errors. Memory errors still end in --error-exitcode 3.
        argv = [sanitizer or "compute-sanitizer", "--tool", "memcheck", "--report-api-errors", "no",
                "--error-exitcode", "3", "--print-limit", "20",
                "--log-file", str(work / slog), python, "-m", "qkernels.testing.sweep", "--family", f, "--cases",
                str(a.memcheck_cases), "--small", "--seed", str(a.seed + 1), "--device", "cuda",
                "--jsonl", str(work / f"memcheck/{f}.jsonl")]
        mc.jobs.append(Job("memcheck", f, argv, caps["memcheck"], f"memcheck/{f}.log",
                           {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "CUDA_MODULE_LOADING": "LAZY"}, "memcheck",
                           {"sanitizer_log": slog, "jsonl": f"memcheck/{f}.jsonl", "cases": a.memcheck_cases}))
    mc.notes.append("the caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so an overrun into a "
                    f"neighbouring tensor is reported; {a.memcheck_cases} small cases per family")
    steps.append(mc)
    # sweep and memcheck: every family at once (small cases, 16 cores); each job's CPU threads: cores / processes
    s.parallel, mc.parallel = max(1, len(s.jobs)), max(1, len(mc.jobs))
    for st in (t, s, mc):
        threads = str(max(1, (os.cpu_count() or 16) // max(1, st.parallel)))
        for j in st.jobs:
            j.env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", threads))
    # tune
    tune_dir = work / "tune"
    tu = Step("tune", caps["tune"])
    tu.jobs.append(Job("tune", "tune", [python, "-m", "qkernels", "tune", "--quick", "--out", str(tune_dir),
                                        "--time-limit", f"{max(10, caps['tune'] - 25):.0f}"],
                       caps["tune"], "tune/tune.log"))
    tu.skip = None if have_gpu else "no CUDA GPU is visible"
    steps.append(tu)
    # bench
    be = Step("bench", caps["bench"])
    bench_args = shlex.split(a.bench_args)
    if "--time-limit" not in bench_args:  # it stops starting shapes in time to write its files inside the cap
        bench_args += ["--time-limit", f"{max(10, caps['bench'] - BENCH_MARGIN):.0f}"]
    be.jobs.append(Job("bench", "bench", [python, "-m", "qkernels", "bench", *bench_args, "--out-dir", str(work / "bench")],
                       caps["bench"], "bench/bench.log", {}, "plain",
                       {"configs_dir": str(tune_dir), "post": lambda rec: _bench_post(rec, work / "bench/bench.log")}))
    be.notes.append("timed with the config the tune step wrote (QKERNELS_CONFIGS=<work>/tune) when it wrote one; "
                    "else with the shipped / compiled-in tables (the job's detail says which)")
    be.skip = None if have_gpu else "no CUDA GPU is visible"
    steps.append(be)
    keep = set(a.steps.split(",")) if a.steps else set(STEP_ORDER)
    for st in steps:
        if st.name not in keep:
            st.skip = st.skip or f"not selected (--steps {a.steps})"
            st.skip_status = SKIPPED
    return steps


def _bench_post(rec: Record, log: Path) -> None:
    """The bench's own words on what its --time-limit left out (it still wrote its files)."""
    lines = [ln.strip() for ln in _tail(log, 20_000).splitlines() if ln.startswith("qkernels bench: time limit")]
    if lines:
        rec.detail = (rec.detail + "; " if rec.detail else "") + lines[-1][:300]


# ----------------------------------------------------------------- the window
class Window:
    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.work = Path(a.work).resolve()
        self.out = Path(a.out).resolve()
        self.python = a.python
        self.meta: dict = {"budget": a.budget, "started": self.started}
        self.notes: Dict[str, List[str]] = {}
        self.evidence: Dict[str, Path] = {}
        self.plan_names: List[str] = list(STEP_ORDER)
        self.env: Dict[str, str] = {}
        self.fatal: Optional[str] = None  # why the steps after load cannot run

    # -- bookkeeping
    def finalize(self, runner: Runner, running: Optional[str] = None) -> List[Path]:
        self.meta["elapsed"] = round(time.monotonic() - self.t0, 1)
        if runner.stuck:
            self.meta["stuck_processes"] = list(runner.stuck)
        md, js = build_summary(runner.records, self.meta, running, self.plan_names, runner.step_times, self.notes)
        (self.work / "summary.md").write_text(md)
        slug = self.meta.get("gpu_slug") or "unknown-gpu"
        ev = dict(self.evidence)
        ev[f"python_tests/logs/{slug}/window-summary.md"] = self.work / "summary.md"
        (self.work / "summary.json").write_text(json.dumps(js, indent=1, default=str))
        ev[f"python_tests/logs/{slug}/window-summary.json"] = self.work / "summary.json"
        for p in sorted(self.work.glob("tests/*.log")) + sorted(self.work.glob("tests/*.xml")):
            ev[f"python_tests/logs/{slug}/tests/{p.name}"] = p
        for p in sorted(self.work.glob("memcheck/*.log")) + sorted(self.work.glob("sweep/*.jsonl")):
            ev[f"python_tests/logs/{slug}/{p.parent.name}/{p.name}"] = p
        for name in ("info.txt", "load.json", "gpu.txt"):
            if (self.work / "load" / name).exists():
                ev[f"python_tests/logs/{slug}/{name}"] = self.work / "load" / name
        bench = self.work / "bench"
        for p in sorted(bench.rglob("*")) if bench.is_dir() else []:
            if p.is_file() and p.name != "bench.log":
                ev[f"bench/results/{slug}/{p.relative_to(bench).as_posix()}"] = p
        tuned = self.work / "tune" / f"{slug}.json"
        if tuned.exists():
            ev[f"qkernels/configs/{slug}.json"] = tuned
        for p in sorted((self.work / "tune").glob("*.jsonl")) if (self.work / "tune").is_dir() else []:
            ev[f"python_tests/logs/{slug}/tune/{p.name}"] = p
        for p in (self.work / "tune" / "tune.log", self.work / "bench" / "bench.log",
                  self.work / "load" / "test_registry.log", self.work / "load" / "load-check.log"):
            if p.exists():
                ev[f"python_tests/logs/{slug}/{p.parent.name}/{p.name}"] = p
        try:
            return pack(self.work, self.out, md, js, ev)
        except Exception as e:  # noqa: BLE001  (the summary at least must come back)
            (self.out / "summary.md").write_text(md + f"\n\nPACKING FAILED: {type(e).__name__}: {e}\n")
            return [self.out / "summary.md"]

    def base_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env

    # -- setup: the carried library, wheels, the GPU
    def setup(self, runner: Runner) -> None:
        t0 = time.monotonic()
        runner.step_times["setup"] = {"cap": self.a.caps.get("setup", DEFAULT_CAPS["setup"]), "started": time.time()}
        self.env: Dict[str, str] = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
                                    "QKERNELS_TEST_SEED": str(self.a.seed), **JOB_ENV}
        pypath = [str(ROOT)]
        carry = Path(self.a.carry).resolve() if self.a.carry else None
        info: dict = {}
        if carry is None:
            runner.add(Record("setup", "library", SKIPPED, detail="--carry '': using the package's own library, if any"))
        elif not (carry / "_build_info.json").exists():
            runner.add(Record("setup", "library", ERROR, detail=f"no carried library: {carry}/_build_info.json is missing",
                              problems=[f"the carry folder {carry} has no _build_info.json: run `bash scripts/gpu_prebuild.sh` "
                                        "on the CPU machine and name its folder (.gpu-carry) in the device call's `carry`"]))
            self.fatal = "no carried library (see setup)"
        else:
            info = json.loads((carry / "_build_info.json").read_text())
            libdir = self.work / "lib"
            libdir.mkdir(parents=True, exist_ok=True)
            gz, so = carry / "_qkernels_cuda.so.gz", carry / "_qkernels_cuda.so"
            dst = libdir / "_qkernels_cuda.so"
            try:
                if gz.exists():
                    with gzip.open(gz, "rb") as fi, open(dst, "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
                elif so.exists():
                    shutil.copyfile(so, dst)
                else:
                    raise FileNotFoundError(f"neither {gz.name} nor {so.name} in {carry}")
                want = info.get("library_sha256")
                got = hashlib.sha256(dst.read_bytes()).hexdigest()
                if want and want != got:
                    raise ValueError(f"the unpacked library's sha256 {got[:12]} differs from the build info's {want[:12]}")
                shutil.copyfile(carry / "_build_info.json", libdir / "_build_info.json")
                self.env["QKERNELS_LIBRARY"] = str(dst)
                runner.add(Record("setup", "library", PASSED, detail=f"{dst.stat().st_size / 2**20:.1f} MiB unpacked, sha256 ok"))
            except Exception as e:  # noqa: BLE001
                runner.add(Record("setup", "library", ERROR, detail=f"{type(e).__name__}: {e}",
                                  problems=[f"the carried library could not be unpacked: {e}"]))
                self.fatal = "the carried library could not be unpacked (see setup)"
            if info.get("git_commit"):
                self.env["QKERNELS_GIT_COMMIT"] = str(info["git_commit"])
                if info.get("git_dirty") is not None:
                    self.env["QKERNELS_GIT_DIRTY"] = "1" if info["git_dirty"] else "0"
            here = source_digest()
            there = info.get("source_digest")
            self.meta["source_check"] = (
                "the library was built from these C++ sources (digest match)" if here == there else
                f"MISMATCH: the tree's csrc/ + CMakeLists.txt digest {here[:12]} differs from the library's {str(there)[:12]}: "
                "the results are the carried library's (its commit above), not this tree's C++ code")
            self.meta.update(git_commit=info.get("git_commit"), git_dirty=info.get("git_dirty"),
                             built_date=info.get("date"), built_torch=info.get("torch"),
                             archs=_archs_text(info))
            wheels = sorted(glob.glob(str(carry / "wheels" / "*.whl")))
            if wheels:
                site = self.work / "site"
                job = Job("setup", "wheels", [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                              "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site), *wheels],
                          min(60, self.a.caps.get("setup", DEFAULT_CAPS["setup"])), "setup/wheels.log")
                rec = run_plain_job(runner, job, time.monotonic() + job.cap, self.base_env())
                rec.detail = f"{len(wheels)} wheels: " + (rec.detail or "installed")
                runner.add(rec)
                if rec.status == PASSED:
                    pypath.insert(0, str(site))
            else:
                runner.add(Record("setup", "wheels", SKIPPED, detail="no wheels carried (the loader's GPU tests need "
                                                                     "compressed-tensors: scripts/fetch_gpu_wheels.sh)"))
        self.env["PYTHONPATH"] = os.pathsep.join(pypath + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        smi = shutil.which("nvidia-smi")
        if smi:
            job = Job("setup", "nvidia-smi", [smi, "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                                                   "temperature.gpu,power.draw,compute_mode", "--format=csv"], 20, "load/gpu.txt")
            rec = run_plain_job(runner, job, time.monotonic() + 20, self.base_env())
            runner.add(rec)
            txt = _tail(self.work / "load/gpu.txt", 4000).splitlines()
            if len(txt) >= 3 and "," in txt[2]:
                self.meta["driver"] = txt[2].split(",")[1].strip()
        else:
            runner.add(Record("setup", "nvidia-smi", SKIPPED, detail="nvidia-smi not found"))
        runner.step_times["setup"]["seconds"] = round(time.monotonic() - t0, 1)

    # -- load: the library, the kernels it registers, one case per family
    def load(self, runner: Runner) -> dict:
        caps = dict(DEFAULT_CAPS, **self.a.caps)
        py = self.python
        report = self.work / "load/load.json"

        def read_report(rec: Record) -> None:  # the load check's own words, not just its exit code
            try:
                rep = json.loads(report.read_text())
            except (OSError, json.JSONDecodeError):
                rec.problems.append("load-check wrote no report (see load/load-check.log)")
                return
            rec.detail = rep.get("verdict", rec.detail)
            rec.problems = list(rep.get("problems", [])) or rec.problems
            rec.extra["smoke"] = rep.get("smoke", {})

        jobs = [
            Job("load", "load-check", [py, str(Path(__file__)), "load-check", "--json", str(report)]
                + (["--allow-no-gpu"] if self.a.allow_no_gpu else []), caps["load"], "load/load-check.log",
                meta={"ok_rcs": (0,), "post": read_report}),
            Job("load", "info", [py, "-m", "qkernels", "info"], caps["load"], "load/info.txt"),
            Job("load", "registry-tests", [py, "-m", "pytest", "python_tests/test_registry.py", "-q", "-rA", "-p",
                                           "no:cacheprovider", "-p", "qkernels.testing.window_plugin"],
                caps["load"], "load/test_registry.log", kind="pytest"),
        ]
        step = Step("load", caps["load"], jobs, parallel=3)
        if self.fatal:
            step.skip = self.fatal
        run_step(runner, step, self.base_env())
        info = {}
        p = self.work / "load/load.json"
        if p.exists():
            try:
                info = json.loads(p.read_text())
            except json.JSONDecodeError:
                info = {}
        self.meta.update({k: info.get(k) for k in ("gpu", "gpu_slug", "torch", "torch_cuda", "python", "capability")})
        self.meta["library"] = info.get("library_path") and f"{info.get('library_path')} ({info.get('library_source')})"
        if not self.fatal and not self.a.allow_no_gpu:
            if not info:
                self.fatal = "the load check wrote no report (crashed or timed out: see load/load-check.log)"
            elif not info.get("library_path"):
                self.fatal = f"the library did not load: {info.get('load_error') or 'see load/load-check.log'}"
            elif not info.get("cuda_available"):
                self.fatal = "no CUDA GPU is visible to torch (see load/load-check.log)"
        return info

    def run(self) -> int:
        a = self.a
        if self.work.exists():
            shutil.rmtree(self.work)
        for d in ("load", "tests", "sweep", "memcheck", "tune", "bench", "setup"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        runner = Runner(self.work, self.t0 + a.budget)
        self.meta["host_python"] = platform.python_version()
        runner.say(f"GPU window: budget {a.budget:.0f} s, work {self.work}, out {self.out}")
        self.finalize(runner, "setup")

        def interrupted(signum, _frame):
            runner.kill_all()
            raise WindowInterrupted(f"interrupted by {signal.Signals(signum).name}")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, interrupted)
        try:
            self.setup(runner)
            self.finalize(runner, "load")
            info = self.load(runner)
            fams = {f: bool(has) for f, has in (info.get("sweep_generators") or {}).items()}
            have_gpu = bool(info.get("cuda_available"))
            sanitizer, tried = find_sanitizer()
            pt_timeout = _has_module(self.python, "pytest_timeout")
            steps = make_plan(a, self.python, fams, have_gpu, sanitizer, pt_timeout, self.work, tried)
            for st in steps:
                self.notes[st.name] = st.notes
                if self.fatal:
                    st.skip, st.skip_status = self.fatal, SKIPPED
            for st in steps:
                self.finalize(runner, st.name)
                run_step(runner, st, self.base_env())
        except Exception as e:  # noqa: BLE001  (record it; the summary must still be written)
            runner.kill_all()
            runner.add(Record("window", "orchestrator", ERROR, detail=f"{type(e).__name__}: {e}",
                              problems=[f"the window itself stopped: {type(e).__name__}: {e}"]))
            if "window" not in self.plan_names:
                self.plan_names.append("window")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        files = self.finalize(runner)
        md = (self.work / "summary.md").read_text()
        print("\n" + md, flush=True)
        runner.say(f"returned files: {', '.join(f'{p.name} ({p.stat().st_size / 1024:.0f} KiB)' for p in files)}")
        js = json.loads((self.work / "summary.json").read_text())
        print(compact_tail(js), end="", flush=True)  # the last lines: in the device tool's output tail
        return 0 if js["verdict"] == "PASS" else 1

    def dry_run(self) -> int:
        a = self.a
        fams, why = _families_subprocess(self.python)
        work = self.work
        print(f"GPU window plan (dry run: nothing is executed). Budget {a.budget:.0f} s; work {work}; out {self.out}.")
        print(f"python: {self.python}; carry: {a.carry or '(none: the package library)'}")
        print("\nstep setup (cap %ds): unpack %s/_qkernels_cuda.so.gz -> %s/lib/ (+ _build_info.json), check its sha256 "
              "and the source digest, pip install --no-index --target %s/site %s/wheels/*.whl, nvidia-smi"
              % (a.caps.get("setup", DEFAULT_CAPS["setup"]), a.carry, work, work, a.carry))
        caps = dict(DEFAULT_CAPS, **a.caps)
        print(f"\nstep load (cap {caps['load']}s): 3 jobs at once")
        print(f"  {self.python} {Path(__file__)} load-check --json {work}/load/load.json")
        print(f"  {self.python} -m qkernels info")
        print(f"  {self.python} -m pytest python_tests/test_registry.py -q -rA -p no:cacheprovider -p qkernels.testing.window_plugin")
        if why:
            print(f"\n(families could not be listed: {why})")
        steps = make_plan(a, self.python, fams, True, find_sanitizer()[0] or "compute-sanitizer", True, work)
        total = caps["setup"] + caps["load"]
        for st in steps:
            total += st.cap
            print(f"\nstep {st.name} (cap {st.cap:.0f}s, {st.parallel} at a time): {STEP_TITLES[st.name]}"
                  + (f"  [SKIPPED: {st.skip}]" if st.skip else ""))
            for j in st.jobs:  # a sweep gets its deadline when it starts (epoch seconds)
                margin = {"sweep": SWEEP_MARGIN, "memcheck": MEMCHECK_MARGIN}.get(j.kind)
                print(f"  [{j.kind}, cap {j.cap:.0f}s] {j.shell()}"
                      + (f" --deadline <its start + {max(1.0, j.cap - margin):.0f} s>" if margin else ""))
            for n in st.notes:
                print(f"  note: {n}")
        print(f"\ncaps sum to {total:.0f} s of the {a.budget:.0f} s budget; then summary.md, summary.json, "
              f"evidence.tar.gz, logs.tar.gz, window.log in {self.out}")
        return 0


def _archs_text(info: dict) -> str:
    if not info.get("groups"):
        return "-"
    parts = []
    retarget = info.get("retargeted", {})
    for fam, groups in sorted(info["groups"].items()):
        for tag, archs in sorted(groups.items()):
            v = retarget.get(fam, {}).get(tag)
            parts.append(f"{fam}/{tag}:sm_{'/'.join(archs)}" + (f"<-compute_{v}" if v else ""))
    return ", ".join(parts)


def _families_subprocess(python: str) -> Tuple[Dict[str, bool], Optional[str]]:
    r = subprocess.run([python, str(Path(__file__)), "families"], capture_output=True, text=True, cwd=str(ROOT),
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        return {}, (r.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(r.stdout), None


# ----------------------------------------------------------------- children (import torch)
def _import_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def cmd_families(_a) -> int:
    _import_path()
    from qkernels.testing.sweep import families

    print(json.dumps(families()))
    return 0


def cmd_load_check(a) -> int:
    """Load the library (QKERNELS_LIBRARY or the package's), compare what it registered with the
    build info's list, run one small sweep case per family. Exit 0 ok; 1 kernels missing or a
    smoke case failed; 2 the library did not load; 3 no GPU (unless --allow-no-gpu)."""
    _import_path()
    t0 = time.time()
    rep: dict = {"python": platform.python_version(), "glibc": "-".join(platform.libc_ver())}
    problems: List[str] = []
    import torch

    rep.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    import qkernels  # noqa: F401
    from qkernels import _loader
    from qkernels.ops import family_ops, python_cuda_ops
    from qkernels.testing import sweep

    bi = _loader.build_info
    rep.update(library_path=_loader.library_path, library_source=_loader.library_source, load_error=_loader.load_error,
               families={f: list(v) for f, v in family_ops().items()}, python_cuda_ops=sorted(python_cuda_ops()),
               registered=sorted(_loader._cuda_ops), build_groups=bi.get("groups"), sweep_generators=sweep.families())
    expected = bi.get("registered_kernels")
    if expected is not None:
        missing = sorted(set(expected) - set(rep["registered"]))
        rep["missing"] = missing
        rep["unexpected"] = sorted(set(rep["registered"]) - set(expected))
        if missing:
            problems.append(f"kernels the build registered at prebuild time but not here: {', '.join(missing)}")
    if rep["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        rep.update(gpu=p.name, capability=p.major * 10 + p.minor, sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        from qkernels.bench.provenance import gpu_slug

        rep["gpu_slug"] = gpu_slug(p.name)
    rc = 0
    if _loader.library_path is None:
        problems.append(f"the library did not load: {_loader.load_error}")
        rc = 2
    elif not rep["cuda_available"]:
        if not a.allow_no_gpu:
            problems.append("no CUDA GPU is visible to torch")
            rc = 3
    else:
        smoke = {}
        ctx = sweep.default_context("cuda", small=True)
        for fam, has in rep["sweep_generators"].items():
            if not has:
                smoke[fam] = "no generator"
                continue
            try:
                res = sweep.run_case(0, sweep.make_case(fam, 12345, 0, ctx), ctx)
                smoke[fam] = f"{res.status}: {res.op} {res.desc}" + (f": {res.detail}" if res.detail else "")
                if res.status in ("failed", "error"):
                    problems.append(f"smoke case of {fam} {res.status}: {res.op} {res.desc}: {res.detail}")
                if res.sticky:
                    problems.append("the CUDA context is unusable after that case: smoke cases stopped")
                    break
            except Exception as e:  # noqa: BLE001
                smoke[fam] = f"error: {type(e).__name__}: {e}"
                problems.append(f"smoke case of {fam}: {type(e).__name__}: {e}")
        rep["smoke"] = smoke
        rep["forced_arch_paths"] = list(ctx.forced_archs)
    if problems and rc == 0:
        rc = 1
    n_exp = len(expected) if expected is not None else None
    rep["verdict"] = (f"{len(rep['registered'])} kernels registered" + (f" of {n_exp} expected" if n_exp is not None else "")
                      + (f"; {len(rep.get('missing', []))} missing" if rep.get("missing") else "")
                      + (f"; smoke: {sum(1 for v in rep.get('smoke', {}).values() if v.startswith('passed'))} of "
                         f"{len(rep.get('smoke', {}))} families passed" if rep.get("smoke") else "")
                      + ("" if _loader.library_path else f"; NOT LOADED: {_loader.load_error}"))
    rep["problems"] = problems
    rep["seconds"] = round(time.time() - t0, 2)
    text = json.dumps(rep, indent=1, default=str)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text)
    print(text)
    return rc


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def elf_needed(lib: Path) -> Tuple[List[str], Optional[int]]:
    """(NEEDED sonames, number of undefined Python C-API symbols or None if nm is missing)."""
    needed: List[str] = []
    try:
        out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, timeout=60).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    except OSError:
        pass
    try:
        und = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, timeout=60).stdout
        py = len(re.findall(r"\bU _?Py[A-Z_]\w*", und))
    except OSError:
        py = None
    return needed, py


def cmd_carry_info(a) -> int:
    """The carried library's _build_info.json: what setup.py would write (from CMake's
    build_info.txt), plus where it came from (commit, dirty flag, date, source digest), what it
    is (sha256, size, NEEDED sonames) and, from a load check under the GPU machine's torch,
    which ops it registers (the window checks the GPU machine registers the same)."""
    sys.path.insert(0, str(ROOT))
    import setup as qsetup  # the same parser setup.py uses

    text = (Path(a.cmake_build) / "build_info.txt").read_text()
    raw = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    lib = Path(a.library)
    needed, py_syms = elf_needed(lib)
    status = _git("status", "--porcelain", "--", ".")
    info = {
        "built": True, "archs_requested": raw.get("archs"), "families_requested": raw.get("families", "").split(";"),
        "ptx": raw.get("ptx", "OFF") == "ON", "build_type": raw.get("build_type"), "torch": a.torch,
        **qsetup.parse_cmake_build_info(text),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_digest": source_digest(), "library_sha256": hashlib.sha256(lib.read_bytes()).hexdigest(),
        "library_bytes": lib.stat().st_size, "needed": needed, "python_api_symbols": py_syms,
        "built_by": "scripts/gpu_prebuild.sh",
    }
    if a.load_check:
        lc = json.loads(Path(a.load_check).read_text())
        if not lc.get("library_path"):
            print(f"the load check did not load the library: {lc.get('load_error')}", file=sys.stderr)
            return 1
        info["registered_kernels"] = lc["registered"]
        info["load_check_torch"] = lc.get("torch")
    if a.times and Path(a.times).exists():
        info["prebuild_seconds"] = json.loads(Path(a.times).read_text())
    Path(a.out).write_text(json.dumps(info, indent=2, sort_keys=True))
    print(json.dumps({k: info[k] for k in ("git_commit", "git_dirty", "groups", "library_bytes", "needed",
                                           "python_api_symbols")}, indent=1))
    return 0


def cmd_summarize(a) -> int:
    work = Path(a.work)
    recs = [Record(**{k: v for k, v in r.items()}) for r in read_jsonl(work / "records.jsonl")]
    md, js = build_summary(recs, {"note": "rewritten by `gpu_window.py summarize` from records.jsonl"})
    (work / "summary.md").write_text(md)
    (work / "summary.json").write_text(json.dumps(js, indent=1, default=str))
    print(md)
    return 0


def _caps(text: str) -> Dict[str, float]:
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition("=")
        if k not in DEFAULT_CAPS or not v:
            raise argparse.ArgumentTypeError(f"--caps expects step=seconds for steps {list(DEFAULT_CAPS)}; got {part!r}")
        out[k] = float(v)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv and argv[0] in ("run", "load-check", "families", "digest", "summarize",
                                             "carry-info") else "run"
    p = argparse.ArgumentParser(prog=f"gpu_window.py {cmd}")
    if cmd == "run":
        p.add_argument("--dry-run", action="store_true", help="print the plan (every step, cap, command); run nothing")
        p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_out"), help="returned files (default $OUT)")
        p.add_argument("--work", default=os.environ.get("QK_WINDOW_WORK", "/tmp/qk_window"), help="logs while running")
        p.add_argument("--carry", default=os.environ.get("QK_CARRY", str(ROOT / ".gpu-carry")),
                       help="the prebuild's folder ('' = the package's own library)")
        p.add_argument("--python", default=os.environ.get("PYTHON", sys.executable))
        p.add_argument("--budget", type=float, default=float(os.environ.get("QK_WINDOW_BUDGET", DEFAULT_BUDGET)),
                       help=f"seconds for the whole window (default {DEFAULT_BUDGET:.0f})")
        p.add_argument("--caps", type=_caps, default=_caps(os.environ.get("QK_WINDOW_CAPS", "")),
                       help="per-step caps, e.g. tests=200,tune=60")
        p.add_argument("--steps", default=os.environ.get("QK_WINDOW_STEPS"), help="only these of tests,sweep,memcheck,tune,bench")
        p.add_argument("--tests", default=None, help="only test files containing one of these comma-separated substrings")
        p.add_argument("--families", default=None, help="only these families (sweep, memcheck)")
        p.add_argument("--jobs", type=int, default=4, help="processes at a time in the tests / sweep / memcheck steps")
        p.add_argument("--sweep-cases", type=int, default=200)
        p.add_argument("--memcheck-cases", type=int, default=6)
        p.add_argument("--test-timeout", type=int, default=60, help="pytest-timeout per test (seconds)")
        p.add_argument("--reduced", action="store_true", help="QKERNELS_TEST_REDUCED=1 for the GPU tests")
        p.add_argument("--bench-args", default="--quick")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--allow-no-gpu", action="store_true",
                       help="run the steps without a GPU (sweep on CPU; for checking the window itself)")
    elif cmd == "load-check":
        p.add_argument("--json", default=None)
        p.add_argument("--allow-no-gpu", action="store_true")
    elif cmd == "summarize":
        p.add_argument("work")
    elif cmd == "carry-info":
        p.add_argument("--cmake-build", required=True, help="the CMake build folder (its build_info.txt)")
        p.add_argument("--library", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--torch", required=True, help="the torch version it was built against")
        p.add_argument("--load-check", default=None, help="a load-check JSON: the ops the library registers")
        p.add_argument("--times", default=None, help="a JSON of the prebuild's step times")
    a = p.parse_args(argv)
    if cmd == "carry-info":
        return cmd_carry_info(a)
    if cmd == "families":
        return cmd_families(a)
    if cmd == "digest":
        print(source_digest())
        return 0
    if cmd == "load-check":
        return cmd_load_check(a)
    if cmd == "summarize":
        return cmd_summarize(a)
    w = Window(a)
    return w.dry_run() if a.dry_run else w.run()


if __name__ == "__main__":
    sys.exit(main())
