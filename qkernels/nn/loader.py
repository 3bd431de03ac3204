"""Load a compressed-tensors checkpoint into a model whose Linear layers run qkernels ops.

    model, report = load_checkpoint("path/to/checkpoint", device="cuda")
    print(report)

* :func:`load_checkpoint` reads ``config.json`` + ``*.safetensors`` (sharded with
  ``model.safetensors.index.json`` or not), builds the model from its config with
  ``transformers.AutoModelForCausalLM.from_config`` (parameters on the meta device: nothing is
  allocated twice), replaces every quantized Linear and fills the other weights.
* :func:`apply_checkpoint` does the same on a model you built (any ``torch.nn.Module``), from a
  ``quantization_config`` dict and a state dict.

Both return ``(model, report)``: :class:`LoadReport` lists each Linear with the kernel it runs
(``report.layers``) and every layer left in high precision, with the reason (ignored by the
config, dense group, or no kernel for it here). Nothing is silently left unquantized.

A model dtype the kernels do not take (float32, float64) is handled at load time for every
scheme alike, by ``unsupported_dtype`` (``"cast"``, the default: kernels in bfloat16, outputs cast;
``"dequantize"``; ``"error"``), and the report says which (:mod:`qkernels.nn.linear`). A file that
cannot be read (truncated download, corrupt header) raises :class:`CheckpointError` naming it.

W4A16 on Hopper: ``w4a16_hopper`` (``"auto"``, the default; ``"on"``; ``"off"``) says whether
W4A16 layers keep, beside the Marlin-style layout, the layout of the sm90 wgmma kernel
(:mod:`qkernels.ops.w4a16_hopper`), which then serves inputs of at least ``hopper_min_m`` tokens
(the per-GPU config's threshold, 128 by default) while smaller ones (decode) stay on Marlin.
The cost is a second copy of the int4 weight, ``N K / 2`` bytes per layer (+100 % of the packed
weights: ~3.5 GB for an 8B model, ~35 GB for a 70B one); the scales and the act-order
permutation are shared. Why ``"auto"`` is the default: on an H100/H200 the Marlin-style
``mma.sync`` kernel is predicted at 0.3-0.5x BF16 for large M (prefill, batched serving) and the
Hopper kernel exists to close that gap, so a W4A16 model loaded for throughput wants it; but the
copy must not crowd out the KV cache, so ``"auto"`` keeps it only while the model's extra bytes
stay within :data:`W4A16_HOPPER_AUTO_MAX_FRACTION` (25 %) of the GPU's memory (an 8B or 32B model
on an 80 GB H100: kept; a 70B model: not kept, a note says so). ``"on"`` keeps it regardless of
memory (and on CPU, prepared by the reference ops); ``"off"`` never. It takes effect only on
sm90 with the sm90a kernels built and for group sizes -1 / 64 / 128 (group 32 keeps Marlin only;
the report says why per layer).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch

from .config import (DENSE_FORMAT, CheckpointError, QuantConfig, find_quantization_config,
                     parse_quantization_config)
from .linear import CAST_DTYPE, KERNEL_DTYPES, W4A16_HOPPER_POLICIES, QuantLinear, device_capability, make_linear

INDEX_FILE = "model.safetensors.index.json"
W4A16_HOPPER_AUTO_MAX_FRACTION = 0.25
"""``w4a16_hopper="auto"`` keeps the second (Hopper) W4A16 layout only if its bytes, summed over
the model, are at most this fraction of the GPU's total memory (see the module docstring)."""
# Tensors compressed-tensors may store on a module that are not part of any Linear qkernels builds.
_KV_CACHE_SCALES = ("k_scale", "v_scale", "q_scale", "kv_cache_scale")


@dataclass
class LayerInfo:
    name: str
    scheme: str  # config group name, or "" when not quantized
    format: str
    kernel: str
    high_precision: bool


@dataclass
class LoadReport:
    """What the loader did: one :class:`LayerInfo` per Linear layer, and notes on the config."""

    layers: List[LayerInfo] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def quantized(self) -> List[LayerInfo]:
        return [layer for layer in self.layers if not layer.high_precision]

    @property
    def high_precision(self) -> List[LayerInfo]:
        return [layer for layer in self.layers if layer.high_precision]

    def kernels(self) -> Counter:
        """{kernel description: number of layers}."""
        return Counter(layer.kernel for layer in self.quantized)

    def table(self) -> str:
        """One line per layer."""
        w = max((len(layer.name) for layer in self.layers), default=4)
        return "\n".join(f"  {layer.name:<{w}}  {layer.format:<15}  {layer.kernel}" for layer in self.layers)

    def __str__(self) -> str:
        lines = [f"qkernels loader: {len(self.quantized)} Linear layer(s) on quantized kernels, "
                 f"{len(self.high_precision)} in high precision"]
        for kernel, count in sorted(self.kernels().items()):
            lines.append(f"  {count:>4} x {kernel}")
        if self.high_precision:
            lines.append("High precision:")
            lines += [f"  {layer.name}: {layer.kernel}" for layer in self.high_precision]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- files
def read_safetensors(folder: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``folder`` (one file, or the shards its index names).
    Raises :class:`CheckpointError` naming the file for a missing, truncated or corrupt shard."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors file (and no {INDEX_FILE}).")
    sd: Dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"{folder}: {INDEX_FILE} names the shard {name}, which is missing.")
        sd.update(_load_safetensors(path))
    return sd


def _load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a :class:`CheckpointError` naming the file when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise CheckpointError(f"{path}: not a readable safetensors file ({size} bytes): {type(e).__name__}: {e}. "
                              "It is truncated or corrupt (an interrupted download?): download or copy it "
                              "again.") from e


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{folder}: no config.json: not a transformers checkpoint folder.")
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- model
@contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device while buffers (e.g. rotary ``inv_freq``, computed in
    ``__init__`` and absent from checkpoints) stay real: accelerate's ``init_empty_weights(include_buffers=False)``."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_model(folder: str, dtype: torch.dtype):
    """``AutoModelForCausalLM.from_config`` of the folder's config, parameters on the meta device."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    for holder in (config, getattr(config, "text_config", None)):
        for key in ("quantization_config", "compression_config"):
            if holder is not None and hasattr(holder, key):
                delattr(holder, key)  # the model itself is built unquantized; qkernels replaces its Linears
    with _parameters_on_meta():
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)


def _checkpoint_dtype(config: dict, sd: Dict[str, torch.Tensor]) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    for t in sd.values():
        if t.dtype in (torch.bfloat16, torch.float16, torch.float32):
            return t.dtype
    return torch.bfloat16


def load_checkpoint(folder: str, *, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                    use_sparse24: bool = True, unsupported_dtype: str = "cast", w4a16_hopper: str = "auto"):
    """Build the model of the checkpoint ``folder`` and load it with qkernels Linears. Returns ``(model, report)``.

    ``device``: where the model runs (CUDA: the kernels; CPU: the reference ops). ``dtype``: the
    activation / high-precision dtype (default: the checkpoint's ``config.json`` dtype).
    ``use_sparse24``: run 2:4 FP8 weights on the sparse kernel where it is supported (the report
    says where it was not). ``unsupported_dtype``: what quantized layers do when ``dtype`` is not
    float16 / bfloat16: ``"cast"`` (kernels in bfloat16, outputs cast to ``dtype``), ``"dequantize"``
    or ``"error"`` (see :mod:`qkernels.nn.linear`). ``w4a16_hopper``: whether W4A16 layers also
    keep the sm90 Hopper layout for large M (``"auto"``, ``"on"``, ``"off"``; see the module
    docstring for the memory cost and the default).
    """
    config = read_config(folder)
    qcfg, where = find_quantization_config(config)
    sd = read_safetensors(folder)
    dtype = dtype or _checkpoint_dtype(config, sd)
    model = build_model(folder, dtype)
    model, report = apply_checkpoint(model, qcfg, sd, device=device, dtype=dtype, use_sparse24=use_sparse24,
                                     where=where, unsupported_dtype=unsupported_dtype, w4a16_hopper=w4a16_hopper)
    return model.eval(), report


# ----------------------------------------------------------------------------- apply
def _local(sd: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
    """Pop the tensors stored directly on module ``name`` (``name.weight``...), by local name."""
    prefix = name + "." if name else ""
    keys = [k for k in sd if k.startswith(prefix) and "." not in k[len(prefix):]]
    return {k[len(prefix):]: sd.pop(k) for k in keys}


def _is_quantized_tensor_set(local: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("weight_scale", "weight_packed", "compressed", "bitmask")) for k in local) or (
        "weight" in local and local["weight"].dtype in (torch.int8, torch.float8_e4m3fn))


def apply_checkpoint(model: torch.nn.Module, quantization_config: dict, state_dict: Dict[str, torch.Tensor], *,
                     device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
                     use_sparse24: bool = True, where: str = "quantization_config", unsupported_dtype: str = "cast",
                     w4a16_hopper: str = "auto"):
    """Replace the Linears of ``model`` that ``quantization_config`` quantizes with qkernels modules built
    from ``state_dict`` (compressed-tensors names), and load every other tensor. Returns ``(model, report)``.

    ``quantization_config``: the dict under ``config.json["quantization_config"]`` (a whole
    ``config.json`` dict is accepted too). ``state_dict`` is not modified. ``device`` defaults to the
    device of the model's first real parameter (CPU if none), ``dtype`` to its floating dtype.
    ``unsupported_dtype``, ``w4a16_hopper``: as in :func:`load_checkpoint`.
    """
    if w4a16_hopper not in W4A16_HOPPER_POLICIES:
        raise ValueError(f"w4a16_hopper = {w4a16_hopper!r}; choose from {W4A16_HOPPER_POLICIES}.")
    if "config_groups" not in quantization_config and "quant_method" not in quantization_config:
        quantization_config, where = find_quantization_config(quantization_config)
    cfg: QuantConfig = parse_quantization_config(quantization_config, where)
    sd = dict(state_dict)
    real = [p for p in model.parameters() if p.device.type != "meta"]
    device = torch.device(device) if device is not None else (real[0].device if real else torch.device("cpu"))
    dtype = dtype or next((p.dtype for p in real if p.is_floating_point()), torch.bfloat16)
    report = LoadReport(notes=list(cfg.notes))
    if dtype not in KERNEL_DTYPES and cfg.groups:
        how = {"cast": f"quantized layers run their kernels in {str(CAST_DTYPE)[6:]} and cast the outputs to "
                       f"{str(dtype)[6:]} (unsupported_dtype='cast')",
               "dequantize": f"quantized layers run on dequantized {str(dtype)[6:]} weights, without kernels "
                             "(unsupported_dtype='dequantize')",
               "error": ""}.get(unsupported_dtype)
        if how:
            report.notes.append(f"model dtype {str(dtype)[6:]}: the kernels compute in float16 / bfloat16, so {how}. "
                                "Load with dtype=torch.bfloat16 to run them natively.")
    w4a16_hopper = _w4a16_hopper_policy(model, cfg, sd, device, w4a16_hopper, report)

    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear):
            continue
        scheme = cfg.match(name, module)
        fmt = cfg.format_of(scheme) if scheme is not None else DENSE_FORMAT
        quantized = scheme is not None and scheme.weights is not None and fmt != DENSE_FORMAT
        stored = {k[len(name) + 1:]: v for k, v in sd.items()
                  if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
        if not quantized:
            if _is_quantized_tensor_set(stored):
                raise CheckpointError(f"{name}: the checkpoint stores quantized tensors ({sorted(stored)}) but "
                                      f"{where} leaves this module unquantized (ignored, untargeted or dense).")
            why = "ignored by the config" if cfg.ignored(name, module) else (
                f"config group {scheme.name!r} is dense" if scheme is not None else "not targeted by any config group")
            report.layers.append(LayerInfo(name, "", DENSE_FORMAT, f"{str(dtype)[6:]} ({why})", True))
            continue
        local = _local(sd, name)
        new = make_linear(name, local, scheme, fmt, act_dtype=dtype, device=device,
                          legacy_sparse24=cfg.sparse24(name, module), use_sparse24=use_sparse24,
                          expected_shape=(module.out_features, module.in_features),
                          unsupported_dtype=unsupported_dtype, w4a16_hopper=w4a16_hopper)
        if (module.bias is None) != (new.bias is None):
            raise CheckpointError(f"{name}: the model's Linear has {'no ' if module.bias is None else 'a '}bias but the "
                                  f"checkpoint {'stores' if new.bias is not None else 'has no'} '{name}.bias'.")
        _set_submodule(model, name, new)
        report.layers.append(LayerInfo(name, scheme.name, fmt, new.kernel, new.high_precision))

    # the rest: embeddings, norms, high-precision Linears
    dropped = [k for k in sd if k.rsplit(".", 1)[-1] in _KV_CACHE_SCALES]
    if dropped:
        report.notes.append(f"{len(dropped)} KV-cache scale tensor(s) not used (attention runs in {str(dtype)[6:]}).")
        for k in dropped:
            sd.pop(k)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.unexpected_keys:
        raise CheckpointError(f"the checkpoint holds tensors the model has no place for: {result.unexpected_keys[:8]}"
                              f"{' ...' if len(result.unexpected_keys) > 8 else ''}. Wrong model for this checkpoint?")
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    _check_no_meta(model)
    model.to(device)
    return model, report


def w4a16_hopper_budget(policy: str, extra_bytes: int, total_bytes: int) -> Tuple[bool, str]:
    """``(keep the Hopper layout, note for the report)`` for a model whose W4A16 layers would take
    ``extra_bytes`` more with it, on a GPU of ``total_bytes`` (policy ``"auto"`` or ``"on"``)."""
    gib = 2.0 ** 30
    cost = (f"a second copy of the int4 weights, up to {extra_bytes / gib:.2f} GiB "
            f"({extra_bytes / total_bytes:.1%} of this GPU's {total_bytes / gib:.0f} GiB)")
    if policy == "auto" and extra_bytes > W4A16_HOPPER_AUTO_MAX_FRACTION * total_bytes:
        return False, (f"w4a16_hopper='auto': the Hopper layout of the W4A16 layers is not kept: {cost} is over "
                       f"{W4A16_HOPPER_AUTO_MAX_FRACTION:.0%}, which would crowd out the KV cache; the Marlin-style "
                       "path runs every M. w4a16_hopper='on' keeps it anyway.")
    return True, (f"w4a16_hopper={policy!r}: W4A16 layers keep the Hopper layout beside the Marlin one ({cost}); "
                  "the Hopper kernel runs inputs of M >= the per-GPU threshold tokens. w4a16_hopper='off' saves it.")


def _w4a16_hopper_policy(model: torch.nn.Module, cfg: QuantConfig, sd: Dict[str, torch.Tensor], device: torch.device,
                         policy: str, report: LoadReport) -> str:
    """The policy :func:`make_linear` gets: ``policy``, or ``"off"`` where the memory budget of
    ``"auto"`` says so (CUDA on sm90 with the Hopper kernels built only; elsewhere make_linear
    decides per layer). Adds the note on the cost to the report."""
    from ..ops import w4a16_hopper as w4h

    cap = device_capability(device)
    if policy == "off" or cap is None or not w4h.supported(cap):
        return policy
    extra = 0  # an upper bound: every 4-bit weight-only layer (some may not take it, e.g. group 32)
    for name, module in model.named_modules():
        scheme = cfg.match(name, module) if isinstance(module, torch.nn.Linear) else None
        packed = sd.get(f"{name}.weight_packed")
        if (scheme is not None and scheme.weights is not None and scheme.input_activations is None
                and scheme.weights.num_bits == 4 and packed is not None and cfg.format_of(scheme) == "pack-quantized"):
            extra += packed.numel() * packed.element_size()  # [N, K/8] int32 = N K / 2 bytes, as the Hopper layout
    if not extra:
        return policy
    keep, note = w4a16_hopper_budget(policy, extra, torch.cuda.get_device_properties(device).total_memory)
    report.notes.append(note)
    return policy if keep else "off"


def _set_submodule(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _check_no_meta(model: torch.nn.Module) -> None:
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensor(s) of the model: {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}.")


def quantized_modules(model: torch.nn.Module) -> List[Tuple[str, QuantLinear]]:
    """``(name, module)`` of every qkernels Linear in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
