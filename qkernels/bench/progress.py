"""A tiny progress bar on stderr for benchmark sweeps (no dependency).

On a terminal it redraws one line in place; when stderr is a file or a pipe (CI
logs, ``| tee``) it prints a plain line every ~10% so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """``with Progress(total, "scaled_mm") as p: ... p.update(label)``."""

    def __init__(self, total: int, title: str = "", stream: Optional[TextIO] = None, width: int = 28):
        self.total = max(int(total), 1)
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def update(self, label: str = "", step: int = 1) -> None:
        self.done = min(self.done + step, self.total)
        frac = self.done / self.total
        elapsed = time.monotonic() - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        if self._tty:
            fill = int(round(frac * self.width))
            bar = "#" * fill + "." * (self.width - fill)
            line = f"\r{self.title} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {label[:40]:<40}"
            self.stream.write(line)
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or self.done == self.total:
                self._last_decile = decile
                self.stream.write(f"{self.title} {self.done}/{self.total} ({frac:4.0%}) {elapsed:.0f}s {label}\n")
                self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
