"""A pytest plugin for the GPU window (``scripts/gpu_window.py``): a crash-proof progress record,
resuming after a crash, and stopping on a sticky CUDA error.

``-p qkernels.testing.window_plugin`` adds:

``--qk-progress FILE``  one JSON line per event, flushed at once: ``start`` before a test runs,
                       ``report`` for each phase that failed or was skipped and for every call,
                       ``finish`` after it; so a process killed mid-test (a crash, a hang, a time
                       cap) still says which test it was in (started, never finished).
``--qk-skip FILE``     node ids (one per line) to deselect: the tests an earlier attempt already
                       ran, and the one it died in; the window reruns the file with the rest.

After a failed test whose error looks like an asynchronous CUDA fault ("illegal memory access",
"unspecified launch failure", ...), the plugin checks whether the CUDA context still works; if
not, every later test in this process would fail with the same error, so it records a ``sticky``
event and stops the session cleanly (the junit file is still written): the window then resumes
the file in a fresh process after that test.
"""
from __future__ import annotations

import json
import os
import time

import pytest

STICKY_MARKERS = ("illegal memory access", "unspecified launch failure", "misaligned address",
                  "illegal instruction", "device-side assert", "CUDA error", "cudaError", "CUBLAS_STATUS")


def pytest_addoption(parser):
    g = parser.getgroup("qkernels window")
    g.addoption("--qk-progress", default=None, help="append one JSON line per test event to this file")
    g.addoption("--qk-skip", default=None, help="file of node ids to deselect (one per line)")


class _Window:
    """The plugin's state: the progress file and the node ids to skip."""

    def __init__(self, config):
        path = config.getoption("--qk-progress")
        self.f = open(path, "a", buffering=1) if path else None
        skip = config.getoption("--qk-skip")
        self.skip = set()
        if skip:
            with open(skip) as f:
                self.skip = {line.strip() for line in f if line.strip()}
        self.write(event="session", pid=os.getpid())

    def write(self, **rec):
        if self.f:
            rec["t"] = round(time.time(), 3)
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def pytest_collection_modifyitems(self, config, items):
        if not self.skip:
            return
        keep = [it for it in items if it.nodeid not in self.skip]
        drop = [it for it in items if it.nodeid in self.skip]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_runtest_logstart(self, nodeid, location):
        self.write(event="start", nodeid=nodeid)

    def pytest_runtest_logfinish(self, nodeid, location):
        self.write(event="finish", nodeid=nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        if rep.when == "call" or not rep.passed:
            self.write(event="report", nodeid=rep.nodeid, when=rep.when, outcome=rep.outcome,
                       duration=round(rep.duration, 4), message=_message(rep))
        if rep.failed and any(m in str(rep.longrepr) for m in STICKY_MARKERS) and _context_is_broken():
            self.write(event="sticky", nodeid=rep.nodeid, message=_message(rep))
            item.session.shouldstop = f"sticky CUDA error in {rep.nodeid}: the CUDA context is unusable"

    def pytest_sessionfinish(self, session, exitstatus):
        self.write(event="sessionfinish", exitstatus=int(exitstatus))


def pytest_configure(config):
    if config.getoption("--qk-progress") or config.getoption("--qk-skip"):
        config.pluginmanager.register(_Window(config), "qk_window")


def _message(report) -> str:
    """One line: why a phase failed or was skipped."""
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
    text = str(crash or report.longrepr or "").strip()
    return (text.splitlines()[0] if text else "")[:500]


def _context_is_broken() -> bool:
    try:
        import torch

        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return False
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1).item()
        return False
    except Exception:  # noqa: BLE001  (any failure means the context is gone)
        return True
