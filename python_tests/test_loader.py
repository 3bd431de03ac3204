"""The compressed-tensors loader, on real checkpoints written by compressed-tensors in the test.

Each checkpoint comes from a tiny random transformers model (Llama or Qwen2, 1 layer, hidden 128)
quantized by compressed-tensors' own ``apply_quantization_config`` + ``ModelCompressor``
(``qkernels.nn.make_checkpoint``). The reference is compressed-tensors' own decompression of the
same folder (``ct_decompressed_weights``). Two comparisons per format:

* each Linear: our module's output vs ``F.linear(x_hat, W_ct, bias)`` where ``x_hat`` is the
  input quantized and dequantized by the layer's own activation scheme (the quant ops are tested
  in test_quant.py): this isolates the weight path, the GEMM and its scales. Tolerance 1e-2
  relative: both sides round once to bf16 (2^-9) and compressed-tensors returns W in bf16
  (another 2^-9 per element); 1e-2 is ~5x that and far below any layout / scale bug (>= 10%).
* the logits of the whole model vs the decompressed model run in bf16 without activation
  quantization: the tolerance is the activation quantization error of the format (see LOGIT_TOL).

Tests that need compressed-tensors / transformers skip without them (the ``test`` extra).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from qkernels.nn import CheckpointError, apply_checkpoint, load_checkpoint, parse_quantization_config
from qkernels.nn import linear as L
from qkernels.nn.config import QuantConfig, find_quantization_config
from qkernels.nn.fuse import fuse_shards, requantize_to_max_scale
from qkernels.nn.loader import quantized_modules, read_safetensors
from qkernels.nn.tp import COLUMN, ROW, shard
from qkernels.ops import fp8_block
from qkernels.reference import fp8_block as fp8_block_ref
from qkernels.testing.numerics import assert_close_rel

ct = pytest.importorskip("compressed_tensors")
pytest.importorskip("transformers")
from qkernels.nn import make_checkpoint as mk  # noqa: E402  (needs compressed-tensors)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "llama-tiny-sparse24-bitmask-fp8")
LINEAR_TOL = 1e-2


def _int8(strategy, symmetric, dynamic):
    return {"num_bits": 8, "type": "int", "strategy": strategy, "symmetric": symmetric, "dynamic": dynamic}


def _fp8(strategy, dynamic):
    return {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": dynamic}


def _group(weights, inputs=None):
    g = {"targets": ["Linear"], "weights": weights}
    if inputs:
        g["input_activations"] = inputs
    return {"group_0": g}


def _w4(group_size, symmetric):
    strategy = "channel" if group_size == -1 else "group"
    return {"num_bits": 4, "type": "int", "strategy": strategy, "group_size": group_size, "symmetric": symmetric}


# name -> (arch, config groups, prune to 2:4, expected kernel substring, logits tolerance).
# Logit tolerances: the reference runs unquantized activations, so the gap is the activation
# quantization error through one decoder layer: int8 per-token ~0.5-1% rms (static per-tensor
# 2-3%: one scale for every token), fp8 e4m3 ~2-3% rms (3 mantissa bits); W4A16 has no
# activation quantization: only bf16 rounding order (< 0.5%).
CASES = {
    "w8a8-int8-dyn-token": ("llama", {"W8A8": ["Linear"]}, False, "w8a8-int8 scaled_mm", 5e-2),
    "w8a8-int8-static-asym": ("qwen2", _group(_int8("channel", True, False), _int8("tensor", False, False)),
                              False, "int8 static per-tensor asym", 8e-2),
    "w8a8-int8-dyn-asym": ("llama", _group(_int8("tensor", True, False), _int8("token", False, True)),
                           False, "int8 dynamic per-token asym", 5e-2),
    "fp8-static": ("llama", {"FP8": ["Linear"]}, False, "w8a8-fp8 scaled_mm, tensor weights, fp8 static", 8e-2),
    "fp8-dynamic": ("qwen2", {"FP8_DYNAMIC": ["Linear"]}, False, "fp8 dynamic per-token", 8e-2),
    "fp8-dyn-tensor": ("qwen2", _group(_fp8("channel", False), _fp8("tensor", True)), False,
                       "fp8 dynamic per-tensor", 8e-2),
    "fp8-2:4": ("llama", {"FP8_DYNAMIC": ["Linear"]}, True, "2:4 sparse fp8", 8e-2),
    "w4a16-sym-g128": ("llama", {"W4A16": ["Linear"]}, False, "w4a16 sym g128", 1e-2),
    "w4a16-asym-g32": ("qwen2", _group(_w4(32, False)), False, "w4a16 asym g32", 1e-2),
    "w4a16-channel": ("llama", _group(_w4(-1, True)), False, "w4a16 sym g-1", 1e-2),
    "w4a16-asym-g64": ("qwen2", _group(_w4(64, False)), False, "w4a16 asym g64", 1e-2),  # Hopper path: asym + bias
    # FP8_BLOCK: k/v_proj have N = 64 (a partial block row), down_proj K = 256 (two K blocks)
    "fp8-block": ("qwen2", {"FP8_BLOCK": ["Linear"]}, False, "fp8 block128x128 scaled_mm, fp8 dynamic per-token "
                                                               "group128", 8e-2),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Written once per module, lazily: name -> (folder, the unquantized model it came from)."""
    cache = {}

    def get(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            arch, groups, prune, _, _ = CASES[name]
            model = mk.tiny_model(arch)
            if prune:
                mk.prune_24(model)
            original = copy.deepcopy(model)
            folder = str(tmp_path_factory.mktemp(name.replace(":", "")))
            mk.write_checkpoint(model, folder, groups, **kw)
            cache[key] = (folder, original)
        return cache[key]

    return get


def _linear_inputs(model, ids):
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
             for n, m in quantized_modules(model)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return seen


def _x_hat(module, x):
    """The input as the layer's activation quantization sees it (identity for W4A16 / dequantized)."""
    if isinstance(module, L.FP8BlockLinear):
        q, s = fp8_block.per_token_group_quant(x.reshape(-1, x.shape[-1]).contiguous(), 128)
        return fp8_block_ref.dequant_groups(q, s, 128).reshape(x.shape)
    if not isinstance(module, (L.W8A8Linear, L.Sparse24Linear)):
        return x.float()
    q, s, azp = module._quantize_input(x.reshape(-1, x.shape[-1]).contiguous())
    xf = q.float() - (azp.float() if azp is not None else module.input_zero_point.float()
                      if module.input_zero_point is not None else 0.0)
    return (xf * s).reshape(x.shape)


def _check_linears(model, folder, ids):
    w_ct = mk.ct_decompressed_weights(folder)
    inputs = _linear_inputs(model, ids)
    assert set(inputs) == set(w_ct), "every quantized module of the checkpoint must be a qkernels module"
    for name, module in quantized_modules(model):
        x = inputs[name]
        with torch.no_grad():
            out = module(x)
        bias = None if module.bias is None else module.bias.float()
        ref = F.linear(_x_hat(module, x), w_ct[name].float(), bias)
        assert_close_rel(out, ref, LINEAR_TOL, f"{name} ({module.kernel})")


@pytest.mark.parametrize("case", list(CASES))
def test_formats_match_compressed_tensors(checkpoints, case):
    folder, original = checkpoints(case)
    _, _, _, kernel, logit_tol = CASES[case]
    model, report = load_checkpoint(folder)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in original.modules())
    assert len(report.layers) == n_linear
    assert [layer.name for layer in report.high_precision] == ["lm_head"]
    assert all(kernel in layer.kernel and "reference (cpu)" in layer.kernel for layer in report.quantized), str(report)
    ids = mk.calibration_ids(seed=7)
    _check_linears(model, folder, ids)
    ref = mk.decompressed_model(folder, original)
    with torch.no_grad():
        assert_close_rel(model(ids).logits, ref(ids).logits, logit_tol, f"{case} logits")


def test_sharded_checkpoint_with_index(checkpoints):
    folder, _ = checkpoints("w8a8-int8-dyn-token", max_shard_size="100KB")
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 1
    single, _ = checkpoints("w8a8-int8-dyn-token")
    ids = mk.calibration_ids(seed=3)
    a, _ = load_checkpoint(folder)
    b, _ = load_checkpoint(single)
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)


def test_naive_quantized_and_ignored_layers_stay_exact(tmp_path):
    """naive-quantized runs like int-quantized; layers ignored by regex come back bit-exact in bf16."""
    model = mk.tiny_model("qwen2")
    original = copy.deepcopy(model)
    groups = {"W8A8": ["Linear"]}
    mk.write_checkpoint(model, str(tmp_path), groups, ignore=("lm_head", "re:.*down_proj$"), fmt="naive-quantized")
    assert mk.quantization_config(str(tmp_path))["format"] == "naive-quantized"
    loaded, report = load_checkpoint(str(tmp_path))
    assert sorted(layer.name for layer in report.high_precision) == ["lm_head", "model.layers.0.mlp.down_proj"]
    assert all("ignored" in layer.kernel for layer in report.high_precision)
    down = loaded.model.layers[0].mlp.down_proj
    assert type(down) is torch.nn.Linear
    assert torch.equal(down.weight, original.model.layers[0].mlp.down_proj.weight)
    _check_linears(loaded, str(tmp_path), mk.calibration_ids(seed=2))


def test_apply_to_existing_model(checkpoints):
    folder, original = checkpoints("w4a16-asym-g32")
    model = copy.deepcopy(original)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    model, report = apply_checkpoint(model, cfg, read_safetensors(folder))
    assert len(report.quantized) == 7
    ref, _ = load_checkpoint(folder)
    for (name, a), (_, b) in zip(quantized_modules(model), quantized_modules(ref)):
        assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers())), name
    ids = mk.calibration_ids(seed=4)
    with torch.no_grad():  # the models differ in how transformers built them (e.g. attention backend)
        assert_close_rel(model(ids).logits, ref(ids).logits, 1e-2, "apply vs load")


def test_act_order_w4a16(checkpoints, tmp_path):
    """actorder=group with weight_g_idx (compressed-tensors <= 0.18 wrote it; 0.20 cannot, so the
    columns are permuted here with its own pack/unpack): equals compressed-tensors' decompression of
    the un-permuted checkpoint, with the columns permuted."""
    src, _ = checkpoints("w4a16-asym-g32")  # K = 128 or 256: 4 or 8 groups to shuffle
    shutil.copytree(src, tmp_path / "ckpt")
    folder = str(tmp_path / "ckpt")
    w_ct = mk.ct_decompressed_weights(folder)  # before the permutation
    perms = mk.add_act_order(folder, seed=5)
    model, report = load_checkpoint(folder)
    assert all("act-order" in layer.kernel for layer in report.quantized), str(report)
    torch.manual_seed(0)
    for name, module in quantized_modules(model):
        w_act = torch.empty_like(w_ct[name])
        w_act[:, perms[name]] = w_ct[name]
        x = torch.randn(5, module.in_features, dtype=torch.bfloat16)
        with torch.no_grad():
            ref = F.linear(x.float(), w_act.float(), None if module.bias is None else module.bias.float())
            assert_close_rel(module(x), ref, LINEAR_TOL, name)


# ------------------------------------------------------------------------------ legacy 2:4 fixture
def _bitmask_reference(sd, name):
    """Pure-torch decompression of sparse-24-bitmask, written independently of the loader: numpy
    unpackbits(bitorder='little') of each row, kept values scattered in row-major order."""
    import numpy as np

    n, k = sd[name + ".shape"].flatten().tolist()
    mask = np.unpackbits(sd[name + ".bitmask"].numpy(), axis=-1, bitorder="little")[:, :k].astype(bool)
    dense = np.zeros((n, k), dtype=np.float32)
    dense[mask] = sd[name + ".compressed"].float().numpy().reshape(-1)
    return torch.from_numpy(dense) * sd[name + ".weight_scale"].float()


def test_legacy_sparse24_bitmask_fixture():
    """The fixture was written by compressed-tensors 0.14 (0.20 cannot read this format any more, and
    installing 0.14 in CI just for this is not worth it): the reference is the bitmask decoded above."""
    model, report = load_checkpoint(FIXTURE)
    assert len(report.quantized) == 14 and [layer.name for layer in report.high_precision] == ["lm_head"]
    assert all("2:4 sparse fp8, fp8 dynamic per-token" in layer.kernel for layer in report.quantized), str(report)
    sd = read_safetensors(FIXTURE)
    torch.manual_seed(0)
    dense = load_checkpoint(FIXTURE)[0]  # replaced below by the decoded weights in bf16
    for name, module in quantized_modules(model):
        w = _bitmask_reference(sd, name)
        x = torch.randn(3, 7, module.in_features, dtype=torch.bfloat16)
        with torch.no_grad():
            ref = F.linear(_x_hat(module, x), w)
            assert_close_rel(module(x), ref, LINEAR_TOL, name)
        parent, _, child = name.rpartition(".")
        lin = torch.nn.Linear(module.in_features, module.out_features, bias=False, dtype=torch.bfloat16)
        lin.weight.data = w.to(torch.bfloat16)
        setattr(dense.get_submodule(parent), child, lin)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # two layers of fp8 per-token activation error (see LOGIT_TOL rationale above)
        assert_close_rel(model(ids).logits, dense(ids).logits, 8e-2, "legacy 2:4 logits")


def test_dense_fp8_when_sparse24_disabled(checkpoints):
    folder, _ = checkpoints("fp8-2:4")
    model, report = load_checkpoint(folder, use_sparse24=False)
    assert all("dense fp8 (2:4 detected, sparse kernel disabled)" in layer.kernel for layer in report.quantized)
    sparse, _ = load_checkpoint(folder)
    ids = mk.calibration_ids(seed=6)
    with torch.no_grad():  # same math, different GEMM (sum order): bf16-level agreement
        assert_close_rel(model(ids).logits, sparse(ids).logits, 1e-2, "dense vs sparse fp8")


# ------------------------------------------------------------------------------ fused shards
def test_fuse_requantizes_to_max_scale(checkpoints):
    folder, _ = checkpoints("fp8-static")
    sd = read_safetensors(folder)
    prefix = "model.layers.0.self_attn."
    shards = [{k[len(prefix + p) + 1:]: v for k, v in sd.items() if k.startswith(prefix + p + ".")}
              for p in ("q_proj", "k_proj", "v_proj")]
    scales = [float(s["weight_scale"]) for s in shards]
    assert len(set(scales)) == 3, "the shards should have different per-tensor scales"
    fused = fuse_shards(shards, ["q_proj", "k_proj", "v_proj"])
    assert float(fused["weight_scale"]) == max(scales)
    # elementwise: requantizing to a larger scale costs at most half an e4m3 ulp (2^-4 relative,
    # plus the subnormal step 2^-9 * scale near zero)
    w_sep = torch.cat([s["weight"].float() * s["weight_scale"].float() for s in shards])
    w_fused = fused["weight"].float() * fused["weight_scale"]
    assert bool(((w_fused - w_sep).abs() <= w_sep.abs() * 2**-4 + 2**-9 * max(scales)).all())
    # and the fused layer runs: its output is the concatenation of the three layers' outputs
    scheme = parse_quantization_config(mk.quantization_config(folder)).groups[0]
    mods = [L.make_linear(f"s{i}", s, scheme, "float-quantized", act_dtype=torch.bfloat16, device="cpu")
            for i, s in enumerate(shards)]
    fused_mod = L.make_linear("qkv", fused, scheme, "float-quantized", act_dtype=torch.bfloat16, device="cpu")
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        assert_close_rel(fused_mod(x), torch.cat([m(x) for m in mods], -1), 5e-2, "fused qkv")


def test_fuse_int8_rounds_within_half_a_step():
    torch.manual_seed(0)
    w = [torch.randint(-127, 128, (8, 16), dtype=torch.int8) for _ in range(2)]
    s = [torch.tensor([0.01]), torch.tensor([0.03])]
    q, s_max = requantize_to_max_scale(w, s)
    assert float(s_max) == pytest.approx(0.03)
    err = q.float() * s_max - torch.cat([w[0].float() * 0.01, w[1].float() * 0.03])
    assert float(err.abs().max()) <= 0.5 * 0.03 + 1e-7
    assert torch.equal(q[8:], w[1])


# ------------------------------------------------------------------------------ config parsing
BASE = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}


class Attn(torch.nn.Module):
    pass


def test_config_nesting_presets_and_leniency():
    for config in ({"quantization_config": BASE}, {"compression_config": BASE},
                   {"text_config": {"quantization_config": BASE}}):
        qcfg, where = find_quantization_config(config)
        assert qcfg is BASE and where.endswith(("quantization_config", "compression_config"))
    lenient = {**BASE, "some_future_field": {"x": 1}, "quantization_status": "frozen",
               "config_groups": {"g": {**BASE["config_groups"]["group_0"], "observer": "mse", "new_key": 3}}}
    assert parse_quantization_config(lenient).groups[0].weights.strategy == "channel"
    cfg = parse_quantization_config({"config_groups": {"W4A16": ["Linear"]}})
    (g,) = cfg.groups
    assert (g.weights.num_bits, g.weights.group_size, g.weights.symmetric, g.targets) == (4, 128, True, ("Linear",))
    assert cfg.format_of(g) == "pack-quantized"  # inferred when the config leaves the format out
    fp8 = parse_quantization_config({"config_groups": {"FP8_DYNAMIC": {"targets": ["Linear"]}}}).groups[0]
    assert fp8.input_activations.strategy == "token" and fp8.input_activations.dynamic
    # older writers: strategy left null is inferred from group_size
    legacy = parse_quantization_config({"config_groups": {"g": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "group_size": 64, "strategy": None}}}}).groups[0]
    assert legacy.weights.strategy == "group"


def test_config_target_matching():
    cfg = parse_quantization_config({"ignore": ["re:.*gate.*", "lm_head"], "config_groups": {
        "by_class": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}},
        "by_regex": {"targets": ["re:.*\\.k_proj$"], "weights": {"num_bits": 4, "type": "int", "group_size": 128}},
        "by_name": {"targets": ["model.layers.0.self_attn.k_proj"], "weights": {"num_bits": 4, "type": "int",
                                                                              "group_size": 32}}}})
    lin = torch.nn.Linear(4, 4)
    assert cfg.match("model.layers.0.self_attn.k_proj", lin).name == "by_name"
    assert cfg.match("model.layers.1.self_attn.k_proj", lin).name == "by_regex"
    assert cfg.match("model.layers.1.self_attn.q_proj", lin).name == "by_class"
    assert cfg.match("model.layers.1.mlp.gate_proj", lin) is None
    assert cfg.match("lm_head", lin) is None
    assert cfg.match("model.layers.1.self_attn", Attn()) is None
    dup = QuantConfig(groups=cfg.groups[:1] * 2, format=None, ignore=())
    with pytest.raises(CheckpointError, match="equally"):
        dup.match("x", lin)


@pytest.mark.parametrize("patch, message", [
    ({"transform_config": {"u": {"type": "hadamard"}}}, "transform_config is not empty"),
    ({"format": "marlin-24"}, "'marlin-24' is not supported"),
    ({"format": "something-new"}, "'something-new' is not supported"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                 "strategy": "block", "block_structure": [64, 64]}}}},
     r"block_structure = \[64, 64\] is not supported; supported: \[128, 128\]"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "mx"}}}}, "type = 'mx'"),
    ({"config_groups": {"NVFP4": ["Linear"]}}, "'NVFP4' is not a preset scheme qkernels knows"),
    ({"config_groups": {"g": {"weights": {"num_bits": 8}}}}, "targets is empty or missing"),
    ({"sparsity_config": {"format": "sparse-bitmask"}}, "unstructured sparsity"),
])
def test_config_rejects_unsupported_values(patch, message):
    with pytest.raises(CheckpointError, match=message):
        parse_quantization_config({**BASE, **patch})


# ------------------------------------------------------------------------------ load errors
def _tensors(sd, name):
    return {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("weight_scale"), "model.layers.0.mlp.up_proj: tensor 'weight_scale' is missing"),
    (lambda t: t.__setitem__("weight_scale", t["weight_scale"][:5]), r"up_proj.weight_scale has shape \(5, 1\)"),
    (lambda t: t.__setitem__("weight", t["weight"].float()), "up_proj.weight has dtype torch.float32"),
    (lambda t: t.__setitem__("weight", t["weight"][:, :64]), r"weight is \[256, 64\] but the model's Linear"),
])
def test_load_errors_name_module_and_tensor(checkpoints, edit, message):
    folder, original = checkpoints("w8a8-int8-dyn-token")
    sd = read_safetensors(folder)
    name = "model.layers.0.mlp.up_proj"
    t = _tensors(sd, name)
    edit(t)
    sd = {k: v for k, v in sd.items() if not k.startswith(name + ".")}
    sd.update({f"{name}.{k}": v for k, v in t.items()})
    with pytest.raises(CheckpointError, match=message):
        apply_checkpoint(copy.deepcopy(original), mk.quantization_config(folder), sd)


def test_load_error_unquantized_config_with_quantized_tensors(checkpoints):
    folder, original = checkpoints("w8a8-int8-dyn-token")
    qcfg = {**mk.quantization_config(folder), "ignore": ["lm_head", "re:.*o_proj"]}
    with pytest.raises(CheckpointError, match="o_proj: the checkpoint stores quantized tensors"):
        apply_checkpoint(copy.deepcopy(original), qcfg, read_safetensors(folder))


def test_unsupported_gpu_choices(checkpoints, monkeypatch):
    """The per-GPU decisions, exercised on CPU tensors by pretending to be an sm80 / sm70 GPU:
    FP8 falls back to a dequantized layer listed as high precision; INT8 without a kernel is an error."""
    folder, _ = checkpoints("fp8-dynamic")
    sd, qcfg = read_safetensors(folder), parse_quantization_config(mk.quantization_config(folder))
    name = "model.layers.0.mlp.up_proj"
    scheme = qcfg.groups[0]
    monkeypatch.setattr(L, "device_capability", lambda device: 80)
    mod = L.make_linear(name, _tensors(sd, name), scheme, "float-quantized", act_dtype=torch.bfloat16, device="cpu")
    assert isinstance(mod, L.DequantLinear) and mod.high_precision and "FP8 GEMM needs sm89+" in mod.kernel
    folder, _ = checkpoints("w8a8-int8-dyn-token")
    sd, qcfg = read_safetensors(folder), parse_quantization_config(mk.quantization_config(folder))
    monkeypatch.setattr(L, "device_capability", lambda device: 70)
    with pytest.raises(CheckpointError, match="up_proj: the INT8 scaled GEMM is not available on sm70"):
        L.make_linear(name, _tensors(sd, name), qcfg.groups[0], "int-quantized", act_dtype=torch.bfloat16,
                      device="cpu")


def test_weight_only_8bit_is_listed_as_high_precision(tmp_path):
    model = mk.tiny_model("llama")
    mk.write_checkpoint(model, str(tmp_path), {"g": {"targets": ["re:.*mlp.*"], "weights": _fp8("channel", False)}})
    _, report = load_checkpoint(str(tmp_path))
    mlp = [layer for layer in report.layers if ".mlp." in layer.name]
    assert mlp and all(layer.high_precision and "weight-only float8" in layer.kernel for layer in mlp)
    attn = [layer for layer in report.layers if "self_attn" in layer.name]
    assert attn and all(layer.high_precision and "ignored" in layer.kernel for layer in attn)  # CT lists them


# ------------------------------------------------------------------------------ FP8_BLOCK beyond the CASES model
def test_fp8_block_multi_block_partial_n_and_k(tmp_path):
    """hidden 256, intermediate 320: several K blocks (K = 256), gate/up with a partial last block row
    (N = 320 = 2.5 blocks) on the kernel; down_proj (K = 320, not a multiple of 128) falls back to a
    dequantized layer that says why. All against compressed-tensors' decompression."""
    model = mk.tiny_model("llama", hidden=256, intermediate=320)
    original = copy.deepcopy(model)
    mk.write_checkpoint(model, str(tmp_path), {"FP8_BLOCK": ["Linear"]})
    loaded, report = load_checkpoint(str(tmp_path))
    kinds = {layer.name.rsplit(".", 1)[-1]: layer for layer in report.layers}
    assert "last block row 64 of 128" in kinds["gate_proj"].kernel and "fp8 block128x128" in kinds["q_proj"].kernel
    down = kinds["down_proj"]
    assert down.high_precision and "FP8 block GEMM needs K % 128 == 0" in down.kernel, str(report)
    ids = mk.calibration_ids(seed=9)
    w_ct = mk.ct_decompressed_weights(str(tmp_path))
    for name, module in quantized_modules(loaded):
        assert_close_rel(module.dequantize(), w_ct[name].float(), 1e-2, name)
    _check_linears(loaded, str(tmp_path), ids)
    with torch.no_grad():
        ref = mk.decompressed_model(str(tmp_path), original)
        assert_close_rel(loaded(ids).logits, ref(ids).logits, 8e-2, "fp8 block logits")


def test_fp8_block_fuse_and_shard(checkpoints):
    """Fused gate_up keeps its per-block scales (exactly the two layers side by side); a fused qkv whose
    k part has N = 64 (not a multiple of 128, not last) is refused; tensor-parallel shards keep whole blocks."""
    folder, _ = checkpoints("fp8-block")
    sd = read_safetensors(folder)
    scheme = parse_quantization_config(mk.quantization_config(folder)).groups[0]
    pre = "model.layers.0."
    part = lambda p: {k[len(pre + p) + 1:]: v for k, v in sd.items() if k.startswith(pre + p + ".")}  # noqa: E731
    gate, up = part("mlp.gate_proj"), part("mlp.up_proj")
    fused = fuse_shards([gate, up], ["gate_proj", "up_proj"])
    assert fused["weight_scale"].shape == (4, 1)
    mk_lin = lambda t, n: L.make_linear(n, t, scheme, "float-quantized", act_dtype=torch.bfloat16,  # noqa: E731
                                        device="cpu")
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(mk_lin(fused, "gate_up")(x), torch.cat([mk_lin(gate, "g")(x), mk_lin(up, "u")(x)], -1),
                                   rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"block-scaled shards \[\('k_proj', 64\)\] have N not a multiple"):
        fuse_shards([part("self_attn.q_proj"), part("self_attn.k_proj"), part("self_attn.v_proj")],
                    ["q_proj", "k_proj", "v_proj"])
    down = part("mlp.down_proj")  # [128, 256]: two K blocks
    halves = [shard(down, scheme, "float-quantized", ROW, r, 2, "down") for r in (0, 1)]
    assert [h["weight_scale"].shape for h in halves] == [(1, 1), (1, 1)]
    with torch.no_grad():
        xs = torch.randn(3, 256, dtype=torch.bfloat16)
        parts = [mk_lin(h, f"d{r}")(xs[:, r * 128:(r + 1) * 128]).float() for r, h in enumerate(halves)]
        assert_close_rel(parts[0] + parts[1], mk_lin(down, "down")(xs).float(), 1e-2, "row-parallel fp8 block")
    with pytest.raises(CheckpointError, match="must hold whole 128x128 blocks"):
        shard(up, scheme, "float-quantized", COLUMN, 0, 4, "up")


# ------------------------------------------------------------------------------ model dtypes the kernels do not take
@pytest.mark.parametrize("case", ["w8a8-int8-dyn-token", "fp8-2:4", "w4a16-asym-g32"])
def test_float32_model_casts_around_the_kernels(checkpoints, case):
    """dtype=float32: every quantized layer runs its kernel in bfloat16 and casts (the report says so);
    each layer matches compressed-tensors' weight as in the bfloat16 tests, and the float32 logits
    the decompressed float32 model."""
    folder, original = checkpoints(case)
    model, report = load_checkpoint(folder, dtype=torch.float32)
    assert all("bfloat16 kernel, cast to float32" in layer.kernel for layer in report.quantized), str(report)
    assert len(report.quantized) == 7 and any("model dtype float32" in n for n in report.notes)
    ids = mk.calibration_ids(seed=8)
    _check_linears(model, folder, ids)
    with torch.no_grad():
        out = model(ids).logits
        assert out.dtype == torch.float32
        ref = mk.decompressed_model(folder, original).float()
        assert_close_rel(out, ref(ids).logits, CASES[case][4], f"{case}: float32 vs decompressed")


def test_float32_from_config_json_and_the_other_policies(checkpoints, tmp_path):
    """A checkpoint whose config.json says float32 (the loader follows it) gets the same treatment;
    'dequantize' keeps float32 math on dequantized weights; 'error' names the module."""
    src, _ = checkpoints("w8a8-int8-dyn-token")
    folder = tmp_path / "f32"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = cfg["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(cfg))
    model, report = load_checkpoint(str(folder))
    assert all(layer.kernel.endswith("bfloat16 kernel, cast to float32, reference (cpu)") for layer in report.quantized)
    with torch.no_grad():
        assert model(mk.calibration_ids(seed=2)).logits.dtype == torch.float32
    deq, report = load_checkpoint(str(folder), unsupported_dtype="dequantize")
    assert len(report.quantized) == 0 and len(report.high_precision) == 8
    assert all("model dtype float32" in layer.kernel for layer in report.high_precision if layer.name != "lm_head")
    with torch.no_grad():  # exact float32 math: the difference is the int8 activation quantization only
        assert_close_rel(deq(mk.calibration_ids(seed=2)).logits, model(mk.calibration_ids(seed=2)).logits, 5e-2,
                         "dequantized float32 vs cast")
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.q_proj: the model dtype is torch.float32"):
        load_checkpoint(str(folder), unsupported_dtype="error")


def test_module_without_cast_names_the_problem():
    """A module built for bfloat16 and then given float32 input says what to do (no bare op error)."""
    w = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    mod = L.W8A8Linear(w, torch.full((32, 1), 0.01), L.ActQuant(torch.int8, True, False, True), kernel="test")
    with pytest.raises(RuntimeError, match="input is torch.float32, but the kernel takes float16 / bfloat16"):
        mod(torch.randn(2, 64))


# ------------------------------------------------------------------------------ unreadable files, bit widths
@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_names_the_file(checkpoints, tmp_path, damage):
    src, _ = checkpoints("w8a8-int8-dyn-token")
    folder = tmp_path / damage
    shutil.copytree(src, folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: not a readable safetensors file .* truncated or corrupt"):
        load_checkpoint(str(folder))


def test_unsupported_pack_bits_named(checkpoints):
    """num_bits=3 in a pack-quantized config is reported as an unsupported bit width, not a shape error."""
    folder, original = checkpoints("w4a16-sym-g128")
    qcfg = json.loads(json.dumps(mk.quantization_config(folder)))
    for group in qcfg["config_groups"].values():
        group["weights"]["num_bits"] = 3
    with pytest.raises(CheckpointError, match=r"pack-quantized weights with num_bits=3 are not supported; "
                                              r"qkernels reads num_bits in \(2, 4, 8\)"):
        apply_checkpoint(copy.deepcopy(original), qcfg, read_safetensors(folder))


# ------------------------------------------------------------------------------ .weight of quantized modules
@pytest.mark.parametrize("case", ["w4a16-asym-g32", "fp8-2:4", "w8a8-int8-dyn-token"])
def test_weight_and_dequantize(checkpoints, case, recwarn):
    """Every module's dequantize() is compressed-tensors' decompressed weight; W4A16 / 2:4 modules expose
    it as a read-only .weight (one warning per class), W8A8 keeps the stored int8 / fp8 .weight buffer."""
    folder, _ = checkpoints(case)
    model, _ = load_checkpoint(folder)
    w_ct = mk.ct_decompressed_weights(folder)
    mods = quantized_modules(model)
    for name, module in mods:
        w = module.dequantize()
        assert w.shape == (module.out_features, module.in_features) and w.dtype == torch.float32
        assert_close_rel(w, w_ct[name].float(), 1e-2, name)  # compressed-tensors rounds W to bf16
        assert module.weight.shape == (module.out_features, module.in_features)
    name, module = mods[0]
    if isinstance(module, L.W8A8Linear):
        assert module.weight.dtype == torch.int8 and not recwarn.list
        return
    assert torch.equal(module.weight, module.dequantize())
    assert len([w for w in recwarn.list if "dequantizes" in str(w.message)]) <= 1  # once per class (and process)
    with pytest.raises(AttributeError, match="cannot be set"):
        module.weight = torch.zeros(1)


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_formats_on_gpu(checkpoints, case):
    """The same comparisons through the CUDA kernels, plus the CPU reference model as a second reference."""
    folder, original = checkpoints(case)
    _, _, _, kernel, logit_tol = CASES[case]
    model, report = load_checkpoint(folder, device="cuda")
    print(report)
    assert [layer.name for layer in report.high_precision] == ["lm_head"], str(report)
    cap = "(sm%d%d)" % torch.cuda.get_device_capability()
    if CASES[case][2] and torch.cuda.get_device_capability() != (9, 0):  # 2:4 weights off Hopper
        kernel = "dense fp8 (2:4 detected, sparse kernel needs sm90"
    assert all(kernel in layer.kernel and cap in layer.kernel for layer in report.quantized), str(report)
    ids = mk.calibration_ids(seed=7).cuda()
    cpu_model, _ = load_checkpoint(folder)
    with torch.no_grad():
        out = model(ids).logits.float().cpu()
        assert_close_rel(out, cpu_model(ids.cpu()).logits, 2e-2, f"{case}: GPU kernels vs CPU reference")
        ref = mk.decompressed_model(folder, original)
        assert_close_rel(out, ref(ids.cpu()).logits, logit_tol, f"{case}: GPU logits vs decompressed bf16")


# ------------------------------------------------------------------------------ W4A16: Marlin + Hopper layouts
HOPPER_MIN_M = "w4a16/sm90/hopper_min_m"


class _PathSpy:
    """Counts the W4A16 GEMMs a forward runs, by path (wraps the wrappers qkernels.nn.linear calls)."""

    def __init__(self, monkeypatch):
        from qkernels.ops import w4a16, w4a16_hopper

        self.calls = []
        for path, mod in (("marlin", w4a16), ("hopper", w4a16_hopper)):
            real = mod.gemm
            monkeypatch.setattr(mod, "gemm", lambda x, w, bias=None, _r=real, _p=path: (self.calls.append(_p),
                                                                                      _r(x, w, bias))[1])

    def take(self):
        out, self.calls = self.calls, []
        return out


def _paired_modules(on, off):
    return list(zip(quantized_modules(on), quantized_modules(off)))


@pytest.mark.parametrize("case, act_order", [("w4a16-sym-g128", False), ("w4a16-asym-g64", False),
                                             ("w4a16-asym-g64", True), ("w4a16-channel", False)])
def test_w4a16_hopper_layout_on_cpu(checkpoints, case, act_order, tmp_path, monkeypatch):
    """w4a16_hopper="on" on a CPU model: every layer keeps both layouts (the Hopper one prepared by the
    reference ops, sharing scales and perm), the forward runs the Marlin op below the threshold and the
    Hopper op from it, and both match the Marlin-only model's layer (the CPU impls are the two
    references: this checks the layout plumbing, the shared tensors, zero points, act-order, bias)."""
    from qkernels.ops import w4a16_hopper as H
    from qkernels.reference import w4a16 as ref_m
    from qkernels.reference import w4a16_hopper as ref_h

    folder, _ = checkpoints(case)
    if act_order:
        shutil.copytree(folder, tmp_path / "ckpt")
        folder = str(tmp_path / "ckpt")
        mk.add_act_order(folder, seed=3)
    on, report = load_checkpoint(folder, w4a16_hopper="on")
    off, report_off = load_checkpoint(folder, w4a16_hopper="off")
    m0 = H.hopper_min_m()
    both = f", marlin + hopper (M >= {m0}), reference (cpu)"
    assert all(both in layer.kernel for layer in report.quantized), str(report)
    assert all(layer.kernel.endswith(", marlin, reference (cpu)") for layer in report_off.quantized), str(report_off)
    spy = _PathSpy(monkeypatch)
    torch.manual_seed(0)
    for (name, a), (_, b) in _paired_modules(on, off):
        assert a.has_hopper and not b.has_hopper, name
        assert a.hopper_b.shape == (a.in_features // 16, a.out_features // 16, 32)
        assert (a.perm is not None) == act_order and (a.hopper_zeros.any().item() == (a.zeros is not None))
        # the same checkpoint: the Hopper layout dequantizes to the Marlin layout's weight (sorted k)
        w_h = ref_h.dequantize_prepacked(a.hopper_b, a.scales, a.hopper_zeros if a.zeros is not None else None,
                                         a.group_size).float()
        w_m = ref_m.dequantize_kernel_layout(a.qweight, a.scales, a.zeros, a.group_size).float()
        assert_close_rel(w_h, w_m, 1e-2, name)  # bit-exact when symmetric; z' rounds once when asymmetric
        if a.zeros is None:
            assert torch.equal(w_h, w_m), name
        assert torch.equal(a.dequantize(), b.dequantize()), name
        assert sorted(a.state_dict()) == sorted(b.state_dict()), name  # the Hopper buffers are derived, not saved
        for m in (1, m0 - 1, m0, m0 + 37):
            x = torch.randn(m, a.in_features, dtype=torch.bfloat16)
            with torch.no_grad():
                got, want = a(x), b(x)
            assert spy.take() == ["hopper" if m >= m0 else "marlin", "marlin"], (name, m)
            assert_close_rel(got, want, 1e-2, f"{name} M={m}")
            if a.zeros is None and m >= m0:
                torch.testing.assert_close(got, want, rtol=0, atol=0)  # the two references: same math
        x3 = torch.randn(2, (m0 + 1) // 2 + 1, a.in_features, dtype=torch.bfloat16)  # 3-D input: rows = 2 x seq
        with torch.no_grad():
            assert_close_rel(a(x3), b(x3), 1e-2, f"{name} 3-D")
        assert spy.take() == ["hopper", "marlin"]


def test_w4a16_hopper_report_and_options(checkpoints):
    folder, _ = checkpoints("w4a16-asym-g32")
    _, report = load_checkpoint(folder, w4a16_hopper="on")  # group 32: the Hopper path cannot take it
    assert all(layer.kernel.endswith(", marlin only (hopper: group size 32 not supported (runs -1, 64, 128)), "
                                     "reference (cpu)") for layer in report.quantized), str(report)
    folder, _ = checkpoints("w4a16-sym-g128")
    model, report = load_checkpoint(folder)  # "auto" on CPU: the references gain nothing from a second layout
    assert all(layer.kernel == "w4a16 sym g128, marlin, reference (cpu)" for layer in report.quantized), str(report)
    assert not any(m.has_hopper for _, m in quantized_modules(model))
    with pytest.raises(ValueError, match=r"w4a16_hopper = 'yes'; choose from \('auto', 'on', 'off'\)"):
        load_checkpoint(folder, w4a16_hopper="yes")
    _, report = load_checkpoint(folder, dtype=torch.float32, w4a16_hopper="on")  # cast: both layouts in bf16
    assert all("marlin + hopper" in layer.kernel and "cast to float32" in layer.kernel for layer in report.quantized)


def test_w4a16_hopper_sm80_and_no_kernels(checkpoints, monkeypatch):
    """The per-GPU decision, on CPU tensors: "on" on an sm80 GPU or on an sm90 without the sm90a
    kernels keeps Marlin only and says why; "auto" says nothing on sm80 (Marlin is the only path)."""
    from qkernels.ops import w4a16_hopper as H

    folder, _ = checkpoints("w4a16-sym-g128")
    sd, qcfg = read_safetensors(folder), parse_quantization_config(mk.quantization_config(folder))
    name = "model.layers.0.mlp.up_proj"
    monkeypatch.setattr(L, "device_capability", lambda device: 80)
    mk_lin = lambda policy: L.make_linear(name, _tensors(sd, name), qcfg.groups[0], "pack-quantized",  # noqa: E731
                                          act_dtype=torch.bfloat16, device="cpu", w4a16_hopper=policy)
    assert mk_lin("on").kernel == ("w4a16 sym g128, marlin only (hopper: needs sm90 with the sm90a kernels built, "
                                   "this GPU is sm80) (sm80)")
    assert mk_lin("auto").kernel == "w4a16 sym g128, marlin (sm80)"
    monkeypatch.setattr(L, "device_capability", lambda device: 90)
    monkeypatch.setattr(H, "supported", lambda cap: False)
    assert "marlin only (hopper: needs sm90 with the sm90a kernels built, this build has none)" in mk_lin("auto").kernel
    monkeypatch.setattr(H, "supported", lambda cap: cap == 90)  # as on an H100 with the kernels: both layouts
    mod = mk_lin("auto")
    assert mod.has_hopper and mod.kernel == f"w4a16 sym g128, marlin + hopper (M >= {H.hopper_min_m()}) (sm90)"
    assert not mk_lin("off").has_hopper


def test_w4a16_hopper_threshold_from_the_config(checkpoints, monkeypatch):
    """The switch point is the per-GPU config's threshold, read at each call (and shown in the report
    when the config was applied before the load); a layer's own hopper_min_m overrides it."""
    from qkernels import configs

    folder, _ = checkpoints("w4a16-sym-g128")
    monkeypatch.setattr(configs, "_threshold_values", dict(configs._threshold_values))
    monkeypatch.setattr(configs, "_state", configs._state)
    monkeypatch.setattr(configs, "library_tables", lambda: None)  # thresholds only: the kernel tables stay put
    configs.apply({"schema": configs.SCHEMA, "provenance": {"origin": "hand-written"}, "tables": {},
                   "thresholds": {HOPPER_MIN_M: 8}})
    model, report = load_checkpoint(folder, w4a16_hopper="on")
    assert all("marlin + hopper (M >= 8)" in layer.kernel for layer in report.quantized), str(report)
    spy = _PathSpy(monkeypatch)
    _, mod = quantized_modules(model)[0]
    with torch.no_grad():
        for m, path in ((7, "marlin"), (8, "hopper")):
            mod(torch.randn(m, mod.in_features, dtype=torch.bfloat16))
            assert spy.take() == [path], m
        configs.apply({"schema": configs.SCHEMA, "provenance": {}, "tables": {}, "thresholds": {HOPPER_MIN_M: 64}})
        mod(torch.randn(8, mod.in_features, dtype=torch.bfloat16))
        assert spy.take() == ["marlin"]  # the new config applies to the loaded model at once
        mod.hopper_min_m = 4
        mod(torch.randn(4, mod.in_features, dtype=torch.bfloat16))
        assert spy.take() == ["hopper"]
    with pytest.raises(ValueError, match="hopper_min_m = 0: pass an int >= 1"):
        L.W4A16Linear(mod._weight(), None, "", None, mod._hopper_weight(), hopper_min_m=0)


def test_w4a16_hopper_layouts_must_match():
    from qkernels.ops import w4a16, w4a16_hopper as H
    from qkernels.reference import w4a16 as ref_m

    u = torch.randint(0, 16, (128, 256), dtype=torch.int32)
    packed = ref_m.pack_int4(u)
    scale = torch.rand(128, 2) * 0.01 + 0.001
    m = w4a16.prepare_weight(packed, scale, group_size=128)
    L.W4A16Linear(m, hopper=H.prepare_weight(packed, scale, group_size=128, scales=m.scales))  # fine
    with pytest.raises(ValueError, match="differ: prepare both from the same checkpoint"):
        L.W4A16Linear(m, hopper=H.prepare_weight(packed, torch.rand(128, 1), group_size=-1))
    with pytest.raises(ValueError, match="scales differ from the Marlin weight's"):
        L.W4A16Linear(m, hopper=H.prepare_weight(packed, scale * 2, group_size=128))


@pytest.mark.parametrize("extra_gb, policy, keep", [(3.5, "auto", True), (20.0, "auto", True), (35.0, "auto", False),
                                                    (35.0, "on", True)])
def test_w4a16_hopper_auto_memory_budget(extra_gb, policy, keep):
    from qkernels.nn.loader import W4A16_HOPPER_AUTO_MAX_FRACTION, w4a16_hopper_budget

    total = 80 * 2**30  # an H100
    ok, note = w4a16_hopper_budget(policy, int(extra_gb * 2**30), total)
    assert ok == keep
    if policy == "auto":  # "on" keeps it whatever it costs
        assert (extra_gb * 2**30 <= W4A16_HOPPER_AUTO_MAX_FRACTION * total) == keep
    assert f"{extra_gb:.2f} GiB" in note and "of this GPU's 80 GiB" in note
    assert ("w4a16_hopper='on' keeps it anyway" in note) == (not ok)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["w4a16-sym-g128", "w4a16-asym-g64"])
def test_w4a16_both_paths_on_gpu(checkpoints, case, monkeypatch):
    """A checkpoint loaded on the GPU with w4a16_hopper="on": on an sm90 with the Hopper kernels every
    layer keeps both layouts and a batch of M >= threshold tokens runs the Hopper kernel while one token
    runs Marlin, both matching the CPU reference; elsewhere the report says why it is Marlin only."""
    from qkernels.ops import w4a16_hopper as H

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none visible)")
    folder, _ = checkpoints(case)
    model, report = load_checkpoint(folder, device="cuda", w4a16_hopper="on")
    print(report)
    cap = L.device_capability(torch.device("cuda"))
    if not H.supported(cap):
        assert all("marlin only (hopper: needs sm90" in layer.kernel for layer in report.quantized), str(report)
        pytest.skip(f"the Hopper W4A16 path needs sm90 with the sm90a kernels (sm{cap}): checked the report only")
    m0 = H.hopper_min_m()
    assert all(f"marlin + hopper (M >= {m0}) (sm90)" in layer.kernel for layer in report.quantized), str(report)
    cpu_model, _ = load_checkpoint(folder, w4a16_hopper="off")
    spy = _PathSpy(monkeypatch)
    seq = 32
    ids = torch.randint(0, 100, (max(1, -(-m0 // seq)), seq))  # >= m0 tokens per Linear
    runs = [(ids, "hopper")] + ([(ids[:1, :1], "marlin")] if m0 > 1 else [])
    with torch.no_grad():
        for batch, path in runs:
            expect = cpu_model(batch).logits
            spy.take()
            out = model(batch.cuda()).logits.float().cpu()
            calls = spy.take()
            assert len(calls) == len(report.quantized) and set(calls) == {path}, (path, calls)
            assert_close_rel(out, expect, 2e-2, f"{case} ({path} path) vs CPU reference")
