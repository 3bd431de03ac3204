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
import shutil

import pytest
import torch
import torch.nn.functional as F

from qkernels.nn import CheckpointError, apply_checkpoint, load_checkpoint, parse_quantization_config
from qkernels.nn import linear as L
from qkernels.nn.config import QuantConfig, find_quantization_config
from qkernels.nn.fuse import fuse_shards, requantize_to_max_scale
from qkernels.nn.loader import quantized_modules, read_safetensors
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
                                                                 "strategy": "block", "block_structure": [128, 128]}}}},
     "strategy = 'block' is not supported"),
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
