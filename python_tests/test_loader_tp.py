"""Tensor-parallel slicing (qkernels.nn.tp) with torch.distributed: gloo, 2 processes, CPU.

Each rank slices a real compressed-tensors checkpoint's tensors (column parallel: gate_proj /
q_proj; row parallel: down_proj / o_proj), builds its qkernels module from its shard, and the
outputs are combined as an engine does (column: all_gather along the last dim; row: all_reduce
sum, bias from rank 0 only). The result is compared with the unsharded module on the same input.

Tolerances: column parallel computes exactly the unsharded layer's columns (same scales, same
inputs): bit-identical. Row parallel adds two bf16 partial outputs instead of rounding one
float32 sum (2 extra bf16 roundings, 2^-9 each): 1e-2 relative. With dynamic per-token
activations each rank quantizes its own K slice (its own scale, as engines do): still an exact
per-shard quantization, within int8 / fp8 rounding of the unsharded one: 3e-2 / 6e-2.
"""
from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qkernels.nn import linear as L
from qkernels.nn import tp
from qkernels.nn.config import parse_quantization_config
from qkernels.nn.loader import read_safetensors
from qkernels.testing.numerics import assert_close_rel

pytest.importorskip("compressed_tensors")
pytest.importorskip("transformers")
from qkernels.nn import make_checkpoint as mk  # noqa: E402

WORLD = 2
W4_ASYM_G32 = {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                       "group_size": 32, "symmetric": False}}}
W4_CHANNEL = {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "channel",
                                                      "symmetric": True}}}
INT8_STATIC = {"g": {"targets": ["Linear"],
                     "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                     "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor",
                                           "symmetric": False, "dynamic": False}}}
# name -> (arch, config groups, act-order, {module: (mode, tolerance)})
CASES = {
    "w4a16-asym-g32": ("qwen2", W4_ASYM_G32, False, {"model.layers.0.mlp.gate_proj": ("column", 0.0),
                                                   "model.layers.0.self_attn.q_proj": ("column", 0.0),
                                                   "model.layers.0.mlp.down_proj": ("row", 1e-2)}),
    "w4a16-channel": ("llama", W4_CHANNEL, False, {"model.layers.0.mlp.up_proj": ("column", 0.0),
                                                  "model.layers.0.mlp.down_proj": ("row", 1e-2)}),
    "w4a16-act-order": ("llama", W4_ASYM_G32, True, {"model.layers.0.mlp.gate_proj": ("column", 0.0),
                                                     "model.layers.0.mlp.down_proj": ("row", 1e-2)}),
    "w8a8-int8-static-asym": ("qwen2", INT8_STATIC, False, {"model.layers.0.self_attn.k_proj": ("column", 0.0),
                                                           "model.layers.0.self_attn.o_proj": ("row", 1e-2)}),
    "w8a8-fp8-dynamic": ("llama", {"FP8_DYNAMIC": ["Linear"]}, False,
                         {"model.layers.0.mlp.gate_proj": ("column", 0.0),
                          "model.layers.0.mlp.down_proj": ("row", 6e-2)}),
}


def _module_tensors(sd, name):
    return {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}


def _worker(rank, folder, modules, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        sd = read_safetensors(folder)
        cfg = parse_quantization_config(mk.quantization_config(folder))
        scheme = cfg.groups[0]
        fmt = cfg.format_of(scheme)
        for name, (mode, tol) in modules.items():
            t = _module_tensors(sd, name)
            full = L.make_linear(name, t, scheme, fmt, act_dtype=torch.bfloat16, device="cpu")
            x = torch.randn(3, 5, full.in_features, generator=torch.Generator().manual_seed(11), dtype=torch.bfloat16)
            local = L.make_linear(name, tp.shard(t, scheme, fmt, mode, rank, WORLD, name), scheme, fmt,
                                  act_dtype=torch.bfloat16, device="cpu")
            with torch.no_grad():
                ref = full(x)
                if mode == "column":
                    parts = [torch.empty_like(ref[..., : local.out_features]) for _ in range(WORLD)]
                    dist.all_gather(parts, local(x).contiguous())
                    out = torch.cat(parts, -1)
                else:
                    k = local.in_features
                    out = local(x[..., rank * k:(rank + 1) * k].contiguous()).float()
                    dist.all_reduce(out)
            if tol == 0.0:
                assert torch.equal(out, ref), f"rank {rank} {name} ({mode}, {local.kernel}): not bit-identical"
            else:
                assert_close_rel(out, ref, tol, f"rank {rank} {name} ({mode}, {local.kernel})")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", list(CASES))
def test_tensor_parallel_matches_unsharded(case, tmp_path):
    arch, groups, act_order, modules = CASES[case]
    folder = str(tmp_path / "ckpt")
    mk.write_checkpoint(mk.tiny_model(arch), folder, groups)
    if act_order:
        mk.add_act_order(folder, seed=3)
    init_file = tempfile.mktemp(dir=str(tmp_path))
    mp.start_processes(_worker, args=(folder, modules, init_file), nprocs=WORLD, join=True, start_method="fork")


def test_shard_shapes_of_every_tensor_kind():
    """Shapes and contents of each slicing rule on one W4A16 asym act-order module (N=256, K=128)."""
    torch.manual_seed(0)
    n, k, g = 256, 128, 32
    t = {"weight_packed": torch.randint(-2**31, 2**31 - 1, (n, k // 8), dtype=torch.int32),
         "weight_scale": torch.rand(n, k // g), "weight_zero_point": torch.randint(0, 2**31 - 1, (n // 8, k // g),
                                                                                  dtype=torch.int32),
         "weight_shape": torch.tensor([n, k]), "weight_g_idx": (torch.randperm(k) // g).to(torch.int32),
         "bias": torch.randn(n)}
    scheme = parse_quantization_config({"config_groups": copy.deepcopy(W4_ASYM_G32)}).groups[0]
    col = tp.shard(t, scheme, "pack-quantized", "column", 1, 2)
    assert torch.equal(col["weight_packed"], t["weight_packed"][128:])
    assert torch.equal(col["weight_zero_point"], t["weight_zero_point"][16:])  # packed along N: 8 rows per row
    assert torch.equal(col["weight_scale"], t["weight_scale"][128:]) and torch.equal(col["bias"], t["bias"][128:])
    assert col["weight_shape"].tolist() == [128, 128] and col["weight_g_idx"] is t["weight_g_idx"]
    row = tp.shard(t, scheme, "pack-quantized", "row", 1, 2)
    assert torch.equal(row["weight_packed"], t["weight_packed"][:, 8:])
    assert torch.equal(row["weight_g_idx"], t["weight_g_idx"][64:])
    assert row["weight_scale"] is t["weight_scale"]  # act-order: every group's scale stays
    assert "bias" not in row and row["weight_shape"].tolist() == [256, 64]
    no_act = {key: v for key, v in t.items() if key != "weight_g_idx"}
    row0 = tp.shard(no_act, scheme, "pack-quantized", "row", 0, 2)
    assert torch.equal(row0["weight_scale"], t["weight_scale"][:, :2]) and torch.equal(row0["bias"], t["bias"])
    assert torch.equal(row0["weight_zero_point"], t["weight_zero_point"][:, :2])
    with pytest.raises(ValueError, match="multiple of 8"):
        tp.shard({**t, "weight_shape": torch.tensor([8, k])}, scheme, "pack-quantized", "column", 0, 2)
