"""Real compressed-tensors checkpoints, written by the library itself (for the tests and the demo).

Needs ``compressed-tensors`` and ``transformers`` (the ``test`` extra); the loader does not.

A tiny randomly initialised ``transformers`` model gets a quantization config applied with
``compressed_tensors.apply_quantization_config``; the scales and zero points are computed here
with plain min/max observers (weights: over each tensor / channel / group; static activations:
over a few calibration batches), and ``ModelCompressor`` compresses the model before
``save_pretrained`` + ``update_config`` write the folder, exactly what llm-compressor does after
calibration. llm-compressor itself is not needed (it pins an older torch).

The reference for a checkpoint is compressed-tensors' own decompression
(:func:`ct_decompressed_weights`): the per-module ``decompress`` of the format's compressor
applied to the tensors read back from the folder.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch

from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.torch import load_file

HIDDEN, INTERMEDIATE, VOCAB = 128, 256, 256  # the smallest sizes the W4A16 / 2:4 kernels tile


def tiny_model(arch: str = "llama", layers: int = 1, seed: int = 0, dtype=torch.bfloat16, hidden: int = HIDDEN,
               intermediate: int = INTERMEDIATE):
    """A tiny random ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (hidden 128, 4 heads, 2 KV heads)."""
    import transformers

    common = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                  max_position_embeddings=64, tie_word_embeddings=False)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":  # q/k/v projections carry a bias: covers the bias path of every Linear
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}: llama or qwen2")
    cfg.architectures = [cls.__name__]
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype).eval()
    with torch.no_grad():  # random biases (transformers initialises them to zero)
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.02)
    return model


def prune_24(model, skip=("lm_head",)) -> None:
    """Magnitude-prune every Linear (but ``skip``) to 2:4 along K, as SparseGPT 2:4 leaves it."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip):
                w = mod.weight
                g = w.float().view(w.size(0), -1, 4)
                keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.abs().topk(2, dim=-1).indices, True)
                w.copy_((g * keep).view_as(w).to(w.dtype))


def calibration_ids(seed: int = 1, batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _minmax(w: torch.Tensor, args):
    """Min / max of a weight [N, K] reduced to the scale shape of ``args.strategy``."""
    w = w.float()
    strategy = str(getattr(args.strategy, "value", args.strategy))
    if strategy == "tensor":
        return w.amin().reshape(1), w.amax().reshape(1)
    if strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if strategy == "group":
        g = w.view(w.size(0), -1, args.group_size)
        return g.amin(-1), g.amax(-1)
    if strategy == "block":  # [ceil(N/bn), ceil(K/bk)]; a partial last block is padded with zeros, which
        bn, bk = args.block_structure  # changes nothing: calculate_qparams widens every range to hold 0
        n, k = w.shape
        g = torch.nn.functional.pad(w, (0, -k % bk, 0, -n % bn)).view(-(-n // bn), bn, -(-k // bk), bk)
        return g.amin(dim=(1, 3)), g.amax(dim=(1, 3))
    raise NotImplementedError(f"observer for weight strategy {strategy}")


def _set(mod, name: str, value: torch.Tensor) -> None:
    p = getattr(mod, name)
    p.data = value.to(p.dtype).reshape(p.shape).to(p.device)


def calibrate(model, ids: Optional[torch.Tensor] = None) -> None:
    """Min/max observers: weight scales (and zero points), static input scales from ``ids``."""
    quantized = {n: m for n, m in model.named_modules() if hasattr(m, "quantization_scheme")}
    for mod in quantized.values():
        args = mod.quantization_scheme.weights
        if args is not None:
            scale, zp = calculate_qparams(*_minmax(mod.weight.data, args), args)
            _set(mod, "weight_scale", scale)
            if not args.symmetric:
                _set(mod, "weight_zero_point", zp.float().round())
    static = {n: m for n, m in quantized.items()
              if m.quantization_scheme.input_activations is not None
              and not m.quantization_scheme.input_activations.dynamic}
    if not static:
        return
    seen: Dict[str, list] = {n: [] for n in static}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach().float()))
             for n, m in static.items()]
    from compressed_tensors.quantization.lifecycle.helpers import disable_quantization, enable_quantization
    model.apply(disable_quantization)
    with torch.no_grad():
        model(calibration_ids() if ids is None else ids)
    model.apply(enable_quantization)
    for h in hooks:
        h.remove()
    for n, m in static.items():
        x = torch.cat([t.flatten() for t in seen[n]])
        args = m.quantization_scheme.input_activations
        scale, zp = calculate_qparams(x.amin().reshape(1), x.amax().reshape(1), args)
        _set(m, "input_scale", scale)
        if not args.symmetric:
            _set(m, "input_zero_point", zp.float().round())


def write_checkpoint(model, out_dir: str, config_groups: dict, ignore=("lm_head",), fmt: Optional[str] = None,
                     max_shard_size: Optional[str] = None) -> str:
    """Quantize ``model`` in place with ``config_groups`` and save a compressed checkpoint to ``out_dir``.

    ``fmt`` forces one compression format (else compressed-tensors infers it per module);
    ``max_shard_size`` (e.g. ``"100KB"``) writes a sharded checkpoint with an index.
    """
    qc = QuantizationConfig(config_groups=config_groups, ignore=list(ignore))
    apply_quantization_config(model, qc)
    calibrate(model)
    mc = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    mc.compress_model(model)
    mc.remove_decompression_hook(model)
    os.makedirs(out_dir, exist_ok=True)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kw)
    mc.update_config(out_dir)
    return out_dir


def read_state_dict(folder: str) -> Dict[str, torch.Tensor]:
    sd: Dict[str, torch.Tensor] = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(folder, f)))
    return sd


def quantization_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)["quantization_config"]


def ct_decompressed_weights(folder: str) -> Dict[str, torch.Tensor]:
    """``{module name: dense weight}`` for every quantized module, decompressed by compressed-tensors.

    Each module's tensors go through ``BaseCompressor.<format>.decompress(state_dict, scheme)``,
    the same per-module function ``ModelCompressor.decompress_model`` calls.
    """
    sd = read_state_dict(folder)
    qcfg = quantization_config(folder)
    groups = qcfg["config_groups"]
    out = {}
    names = {k.rsplit(".", 1)[0] for k in sd if k.endswith((".weight_scale",))}
    for name in sorted(names):
        local = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        # the test checkpoints use one group per run; find the one whose format applies
        (group,) = [g for g in groups.values()]
        scheme = QuantizationScheme.model_validate(group)
        fmt = group.get("format") or qcfg["format"]
        dense = BaseCompressor.get_value_from_registry(fmt).decompress(local, scheme)
        out[name] = dense["weight"]
    return out


def decompressed_model(folder: str, original):
    """A copy of ``original`` (the model before quantization) holding compressed-tensors' decompressed weights."""
    import copy

    ref = copy.deepcopy(original)
    sd = ref.state_dict()
    for name, w in ct_decompressed_weights(folder).items():
        sd[name + ".weight"] = w.to(sd[name + ".weight"].dtype)
    ref.load_state_dict(sd)
    return ref


def add_act_order(folder: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Turn a grouped ``pack-quantized`` checkpoint into an act-order one (``actorder: group`` + ``weight_g_idx``),
    as compressed-tensors <= 0.18 wrote them (0.20 no longer stores ``g_idx``).

    For each module, a random permutation ``perm`` of the K columns: stored column ``perm[j]`` is original
    column ``j`` and ``weight_g_idx[perm[j]] = j // group_size``. The packing is compressed-tensors' own
    (``unpack_from_int32`` / ``pack_to_int32``). Returns ``{module: perm}``: the act-order layer's dense
    weight is ``W_act[:, perm] = W`` with ``W`` the original layer's.
    """
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from safetensors.torch import save_file

    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert files == ["model.safetensors"], "add_act_order expects a single-file checkpoint"
    sd = read_state_dict(folder)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    (group,) = config["quantization_config"]["config_groups"].values()
    gs = group["weights"]["group_size"]
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for key in [k for k in sd if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        shape = sd[name + ".weight_shape"]
        q = unpack_from_int32(sd[key], 4, shape)
        k = q.shape[1]
        perm = torch.randperm(k, generator=gen)
        q_act = torch.empty_like(q)
        q_act[:, perm] = q
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[perm] = (torch.arange(k) // gs).to(torch.int32)
        sd[key] = pack_to_int32(q_act, 4).contiguous()
        sd[name + ".weight_g_idx"] = g_idx
        perms[name] = perm
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    group["weights"]["actorder"] = "group"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return perms
