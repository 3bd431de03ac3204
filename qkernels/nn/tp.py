"""Tensor-parallel slicing of a quantized Linear's checkpoint tensors (one rank's shard).

Column parallel splits the output features N (each rank computes a slice of the output, gathered
along the last dim); row parallel splits the input features K (each rank takes a slice of the
input, partial outputs are summed; the bias is added once, by rank 0). Slicing happens on the
checkpoint tensors, before :func:`qkernels.nn.linear.make_linear` prepares them for a kernel:

=====================================  ============================  ===============================
tensor                                 column (N)                    row (K)
=====================================  ============================  ===============================
weight [N, K] (int8 / fp8)             rows                          columns
weight_packed [N, K*b/32] (int32)      rows                          words (K/ws*b % 32 == 0)
weight_shape [2]                       [N/ws, K]                     [N, K/ws]
weight_scale per tensor [1]            replicated                    replicated
weight_scale per channel [N, 1]        rows                          replicated
weight_scale / zero point groups       rows                          group columns (no act-order);
[N, G]                                                               all groups kept with act-order
weight_zero_point packed [N*b/32, G]   packed rows (N/ws*b % 32==0)  as weight_scale
weight_g_idx [K]                       replicated                    columns
weight_scale blocks [N/bn, K/bk]       block rows (N/ws % bn == 0)   block columns (K/ws % bk == 0)
bias [N]                               rows                          rank 0 only
input_scale / input_zero_point         replicated                    replicated
=====================================  ============================  ===============================

With act-order a rank's K slice mixes columns of every group, so row-parallel shards keep all
the group scales; such a shard no longer has ``group_size`` columns per group and runs on the
dequantized fallback (the report says so).
"""
from __future__ import annotations

from typing import Dict

import torch

from .config import CheckpointError, Scheme

Tensors = Dict[str, torch.Tensor]
COLUMN, ROW = "column", "row"


def _chunk(t: torch.Tensor, dim: int, rank: int, world_size: int, what: str, unit: int = 1) -> torch.Tensor:
    size = t.shape[dim]
    if size % (world_size * unit):
        raise CheckpointError(f"tensor parallel: {what} has {size} along dim {dim}, not divisible into "
                              f"{world_size} shards of a multiple of {unit}.")
    step = size // world_size
    return t.narrow(dim, rank * step, step).contiguous()


def shard(tensors: Tensors, scheme: Scheme, fmt: str, mode: str, rank: int, world_size: int,
          name: str = "layer") -> Tensors:
    """This rank's slice of a module's checkpoint tensors (local names), column or row parallel."""
    if mode not in (COLUMN, ROW):
        raise ValueError(f"mode = {mode!r}; expected 'column' or 'row'.")
    if "bitmask" in tensors:
        raise CheckpointError(f"{name}: decompress the legacy sparse-24-bitmask tensors before sharding "
                              "(qkernels.nn.linear.decompress_bitmask).")
    args = scheme.weights
    packed = fmt == "pack-quantized"
    bits = args.num_bits if args is not None else 8
    per_word = 32 // bits
    act_order = "weight_g_idx" in tensors
    out: Tensors = {}
    for key, t in tensors.items():
        what = f"{name}.{key}"
        if key in ("input_scale", "input_zero_point") or (key == "weight_scale" and args.strategy == "tensor"):
            out[key] = t
        elif key == "weight_shape":
            n, k = t.tolist()
            out[key] = torch.tensor([n // world_size, k] if mode == COLUMN else [n, k // world_size], dtype=t.dtype)
        elif key == "bias":
            if mode == COLUMN:
                out[key] = _chunk(t, 0, rank, world_size, what)
            elif rank == 0:
                out[key] = t
        elif key == "weight_g_idx":
            out[key] = t if mode == COLUMN else _chunk(t, 0, rank, world_size, what)
        elif key in ("weight", "weight_packed"):  # packed words split along K are whole words
            out[key] = _chunk(t, 0 if mode == COLUMN else 1, rank, world_size, what)
        elif key == "weight_scale" and args.strategy == "block":
            bn, bk = args.block_structure
            n, k = tensors["weight"].shape
            if (n if mode == COLUMN else k) % (world_size * (bn if mode == COLUMN else bk)):
                raise CheckpointError(f"{what}: a {mode}-parallel shard of [{n}, {k}] into {world_size} must hold whole "
                                      f"{bn}x{bk} blocks.")
            out[key] = _chunk(t, 0 if mode == COLUMN else 1, rank, world_size, what)
        elif key in ("weight_scale", "weight_zero_point"):
            if mode == COLUMN:
                if packed and key == "weight_zero_point" and (int(tensors["weight_shape"][0]) // world_size) % per_word:
                    raise CheckpointError(f"{what}: N / world_size must be a multiple of {per_word} to split a "
                                          "zero point packed along N.")
                out[key] = _chunk(t, 0, rank, world_size, what)
            elif args.strategy == "group" and not act_order:
                out[key] = _chunk(t, 1, rank, world_size, what)
            else:
                out[key] = t  # per channel, or act-order groups: every rank needs all of them
        else:
            raise CheckpointError(f"{name}: no tensor-parallel rule for tensor '{key}'.")
    if mode == ROW and args is not None and args.strategy == "group" and not act_order:
        k_local = (out["weight_shape"][1] if packed else out["weight"].shape[1])
        if int(k_local) % args.group_size:
            raise CheckpointError(f"{name}: row-parallel shard of K = {int(k_local)} does not hold whole groups of "
                                  f"{args.group_size}.")
    return out
