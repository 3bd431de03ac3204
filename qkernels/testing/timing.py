"""Kernel timing on CUDA: warm-up, then the median of many repeats, L2 flushed.

Each repeat is ``flush L2 -> start event -> the work -> end event``. The flush
writes a buffer twice the size of the L2 cache, so every repeat reads its
weights and activations from HBM (what a real decode step sees: the weights were
evicted by the other layers). The work is captured once into a CUDA graph and
replayed, so the Python cost of a call (argument checks, dispatch) does not show
up as GPU idle time between the events; an op that cannot be captured is timed
eagerly instead (the row's ``timing`` field says which). Only the events are
synchronised, once per measurement, after all repeats.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch


@dataclass(frozen=True)
class TimingConfig:
    """How many warm-up calls and timed repeats; ``quick`` halves the cost of a sweep."""

    warmup: int = 10
    reps: int = 50
    use_graph: bool = True
    flush_l2: bool = True

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(warmup=3, reps=15)

    def describe(self) -> dict:
        return {
            "method": "CUDA events around CUDA-graph replays (eager if capture fails)"
            if self.use_graph else "CUDA events around eager calls",
            "statistic": "median",
            "warmup": self.warmup,
            "reps": self.reps,
            "l2_flush": "2x L2 size buffer written before every repeat" if self.flush_l2 else "none",
        }


@dataclass(frozen=True)
class Timing:
    """A measurement: median and spread in microseconds, and how it was taken."""

    median_us: float
    min_us: float
    max_us: float
    method: str  # "graph" or "eager"


class L2Flusher:
    """Writes a buffer larger than the L2 cache on the current stream."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        self.buf = torch.empty(2 * l2, dtype=torch.int8, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def _capture(fn: Callable[[], object]) -> Optional[torch.cuda.CUDAGraph]:
    """``fn`` captured into a CUDA graph, or None if it cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            fn()  # first call outside capture: lazy init, workspace allocation
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        torch.cuda.synchronize()
        return graph
    except (RuntimeError, torch.cuda.OutOfMemoryError):
        torch.cuda.synchronize()
        return None


class Timer:
    """Times callables on one device with one :class:`TimingConfig`."""

    def __init__(self, config: TimingConfig = TimingConfig(), device: Optional[torch.device] = None):
        if not torch.cuda.is_available():
            raise RuntimeError("qkernels timing needs a CUDA GPU (torch.cuda.is_available() is False).")
        self.config = config
        self.device = torch.device(device or "cuda")
        self._flush = L2Flusher(self.device) if config.flush_l2 else (lambda: None)

    def time(self, fn: Callable[[], object]) -> Timing:
        """Median time of ``fn()`` in microseconds over ``config.reps`` repeats."""
        cfg = self.config
        graph = _capture(fn) if cfg.use_graph else None
        run = graph.replay if graph is not None else fn
        for _ in range(cfg.warmup):
            run()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.reps)]
        for s, e in zip(starts, ends):
            self._flush()
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        us: List[float] = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
        return Timing(statistics.median(us), min(us), max(us), "eager" if graph is None else "graph")
