"""One random-case generator per kernel family for :mod:`qkernels.testing.sweep`.

A module ``<family>.py`` here (named like the family in :func:`qkernels.ops.family_ops`)
defines ``make_case(rng, gen, ctx) -> Case``: draw everything from ``rng`` (``random.Random``)
and ``gen`` (a ``torch.Generator`` on the sweep's device: build every tensor on ``gen.device``),
prepare weight layouts with the reference functions (never the kernels under test), and set
``skip`` when ``ctx`` (the GPU's capability, the build) cannot run the case. The helpers below
draw on ``gen.device`` and keep the shape distributions alike across families.
"""
from __future__ import annotations

import math
import random
from typing import Tuple

import torch


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi], log-uniformly (small sizes as likely per octave as large ones)."""
    return max(lo, min(hi, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))))


def multiple(rng: random.Random, lo: int, hi: int, of: int) -> int:
    """A multiple of ``of`` in [lo, hi] (both rounded to multiples), log-uniformly."""
    return max(of, (log_uniform(rng, max(lo, of), hi) // of) * of)


def fit_gemm(m: int, n: int, k: int, budget: int, n_of: int, k_of: int,
             weight_budget: int = 1 << 24) -> Tuple[int, int, int]:
    """Halve the largest of M, N, K (keeping N, K multiples of ``n_of``, ``k_of``) until
    ``m * n * k <= budget`` and ``n * k <= weight_budget``: bounds the cost of the reference and
    of drawing the inputs on the CPU."""
    while n * k > weight_budget and (n > n_of or k > k_of):
        if (n >= k and n > n_of) or k <= k_of:
            n = max(n_of, (n // 2) // n_of * n_of)
        else:
            k = max(k_of, (k // 2) // k_of * k_of)
    while max(m, 1) * n * k > budget:
        if m >= n and m >= k and m > 1:
            m //= 2
        elif n >= k and n > n_of:
            n = max(n_of, (n // 2) // n_of * n_of)
        elif k > k_of:
            k = max(k_of, (k // 2) // k_of * k_of)
        else:
            break
    return m, n, k


def randn(shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device) * scale


def rand(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device)


def randint(lo: int, hi: int, shape, gen: torch.Generator, dtype=torch.int32) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=gen, dtype=dtype, device=gen.device)


def scalar(value, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """A ``[1]`` tensor on the sweep's device."""
    return torch.tensor([value], dtype=dtype, device=gen.device)


def short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
