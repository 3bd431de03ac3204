"""Measured device peaks: what the benchmark rows are compared against.

* ``bf16_tflops``: ``torch.mm`` (cuBLAS) on bf16 8192 x 8192 x 8192, 2*M*N*K / time.
* ``copy_gbps``: a device-to-device copy of a 1 GiB buffer, counting the bytes read
  *and* written (2 GiB per copy) / time: the bandwidth a memory-bound kernel such
  as activation quantisation can hope for.

They are measured in the same run as the rows (same clocks, same driver), with the
same timer, so "fraction of peak" columns are self-consistent.
"""
from __future__ import annotations

import torch

from ..testing.timing import Timer

MATMUL_DIM = 8192
COPY_BYTES = 2**30


def measure_peaks(timer: Timer) -> dict:
    """``{"bf16_tflops": ..., "copy_gbps": ...}`` on ``timer``'s device."""
    dev = timer.device
    n = MATMUL_DIM
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t_mm = timer.time(lambda: torch.mm(a, b)).median_us
    del a, b
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t_copy = timer.time(lambda: dst.copy_(src)).median_us
    del src, dst
    torch.cuda.empty_cache()
    return {
        "bf16_tflops": round(2.0 * n**3 / (t_mm * 1e-6) / 1e12, 1),
        "copy_gbps": round(2.0 * COPY_BYTES / (t_copy * 1e-6) / 1e9, 1),
    }
