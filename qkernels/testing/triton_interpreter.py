"""Run code in a child Python whose Triton kernels go through Triton's CPU interpreter.

``TRITON_INTERPRET=1`` only takes effect if it is set before Triton is imported, and a test
process may already have imported Triton (or may later need it compiled), so the CPU tests of
the Triton kernels run them in a child process: the parent builds the inputs (``torch.save``),
the child runs the kernels and saves the outputs, the parent asserts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def interpreter_env() -> dict:
    """The environment of the child: ``TRITON_INTERPRET=1`` and this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_interpreted(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -c code`` (dedented) in the repository root under Triton's interpreter."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=interpreter_env(),
                          capture_output=True, text=True, timeout=timeout)
