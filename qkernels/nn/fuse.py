"""Fuse the checkpoint tensors of several Linear shards (q/k/v, gate/up) into one layer, as engines do.

Shards with per-tensor weight scales usually have different scales; a fused GEMM has one. Each
shard is dequantized and requantized to the largest scale (which represents every shard's range
without clipping): for FP8 the extra error is at most half an e4m3 ulp of the value (relative
2^-4), for INT8 half a step of the new scale. Per-channel / per-group scales are concatenated
like the weights. Static input scales (the shards see the same input) take the maximum too.

Block scales (FP8_BLOCK, one scale per 128 x 128 block: ``weight_scale [ceil(N_i/128), K/128]``)
are kept per block: the block rows are concatenated like the weights, which is exact when every
shard but the last has N_i a multiple of 128. Otherwise a block of the fused weight would straddle
two shards with different scales, and :func:`fuse_shards` refuses (keep such layers separate).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from .config import CheckpointError

Tensors = Dict[str, torch.Tensor]
FP8 = torch.float8_e4m3fn


def requantize_to_max_scale(weights: Sequence[torch.Tensor], scales: Sequence[torch.Tensor]
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[N_i, K]`` int8 / fp8 shards with per-tensor scales ``s_i`` -> (``[sum N_i, K]``, ``max s_i`` as float32 [1])."""
    dtype = weights[0].dtype
    if dtype not in (torch.int8, FP8) or any(w.dtype != dtype for w in weights):
        raise CheckpointError(f"requantize_to_max_scale: shards of dtypes {[str(w.dtype) for w in weights]}; "
                              "expected all int8 or all float8_e4m3fn.")
    scales = [s.float().reshape(()) for s in scales]
    s_max = torch.stack(scales).max()
    out: List[torch.Tensor] = []
    for w, s in zip(weights, scales):
        if bool(s == s_max):
            out.append(w)
            continue
        x = w.float() * (s / s_max)
        if dtype == FP8:
            out.append(x.clamp(-448.0, 448.0).to(FP8))
        else:
            out.append(x.round().clamp(-128, 127).to(torch.int8))
    return torch.cat(out, 0), s_max.reshape(1)


def fuse_shards(shards: Sequence[Tensors], names: Sequence[str] = ()) -> Tensors:
    """One module's tensors (local names) from its shards' (int-/float-/naive-quantized formats)."""
    names = list(names) or [f"shard{i}" for i in range(len(shards))]
    keys = set(shards[0])
    for nm, s in zip(names, shards):
        if set(s) != keys:
            raise CheckpointError(f"fuse_shards: {nm} stores {sorted(s)} but {names[0]} stores {sorted(keys)}.")
    if "weight" not in keys:
        raise CheckpointError(f"fuse_shards: no 'weight' in {sorted(keys)} (pack-quantized and legacy sparse "
                              "shards are fused by concatenating before packing; not supported here).")
    out: Tensors = {}
    per_tensor = shards[0]["weight_scale"].numel() == 1
    w0, s0 = shards[0]["weight"], shards[0]["weight_scale"]
    block = s0.dim() == 2 and s0.size(0) != w0.size(0)  # [ceil(N/128), K/128], not [N, 1] / [N, G]
    if block:
        bn = -(-w0.size(0) // s0.size(0))  # rows per block (128 for FP8_BLOCK)
        bad = [(nm, s["weight"].size(0)) for nm, s in zip(names[:-1], shards[:-1]) if s["weight"].size(0) % bn]
        if bad:
            raise CheckpointError(f"fuse_shards: block-scaled shards {bad} have N not a multiple of the block ({bn}): "
                                  "a block of the fused weight would straddle two shards with different scales. "
                                  "Keep these layers separate (or put such a shard last).")
        out["weight"] = torch.cat([s["weight"] for s in shards], 0)
        out["weight_scale"] = torch.cat([s["weight_scale"] for s in shards], 0)
    elif per_tensor:
        out["weight"], out["weight_scale"] = requantize_to_max_scale([s["weight"] for s in shards],
                                                                     [s["weight_scale"] for s in shards])
    else:
        out["weight"] = torch.cat([s["weight"] for s in shards], 0)
        out["weight_scale"] = torch.cat([s["weight_scale"] for s in shards], 0)
    for key in keys - {"weight", "weight_scale"}:
        if key == "bias":
            out[key] = torch.cat([s[key] for s in shards], 0)
        elif key == "input_scale":
            out[key] = torch.stack([s[key].float().reshape(()) for s in shards]).max().reshape(1)
        elif key in ("input_zero_point",):
            zps = {int(s[key].reshape(())) for s in shards}
            if len(zps) != 1:
                raise CheckpointError(f"fuse_shards: the shards have different static input zero points {sorted(zps)}.")
            out[key] = shards[0][key]
        else:
            raise CheckpointError(f"fuse_shards: no fusion rule for tensor '{key}'.")
    return out
