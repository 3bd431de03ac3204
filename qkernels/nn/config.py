"""Parse a compressed-tensors ``quantization_config`` and match its schemes to modules.

Lenient on what it does not need (unknown keys, observers, ``quantization_status``), strict on
what changes the math: an unsupported value raises :class:`CheckpointError` naming the field,
the value, what is supported and what to do.

Where the config lives (:func:`find_quantization_config`): ``config.json["quantization_config"]``,
the older ``["compression_config"]``, or either of them under ``["text_config"]`` (vision-language
models).

Matching (:meth:`QuantConfig.match`): an ``ignore`` entry or a group ``targets`` entry matches a
module by its exact name, by ``re:<regex>`` (``re.match``, anchored at the start) or by a class
name in the module's MRO (``Linear``). When several groups target a module the most specific
match wins (exact name > regex > class name); two groups at the same level are an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

QUANT_FORMATS = ("int-quantized", "float-quantized", "naive-quantized", "pack-quantized")
DENSE_FORMAT = "dense"
MIXED_FORMAT = "mixed-precision"
LEGACY_SPARSE_FORMATS = ("sparse-24-bitmask",)
_REJECTED_FORMATS = {  # known formats this loader does not read, and why
    "marlin-24": "the legacy Marlin 2:4 W4A16 format",
    "sparse-bitmask": "unstructured sparsity (no kernel: decompress it with compressed-tensors)",
    "nvfp4-pack-quantized": "NVFP4 (needs Blackwell FP4 kernels, not in qkernels)",
    "mxfp4-pack-quantized": "MXFP4 (not in qkernels)",
    "mxfp6-pack-quantized": "MXFP6 (not in qkernels)",
    "mxfp8-quantized": "MXFP8 (not in qkernels)",
}
STRATEGIES = ("tensor", "channel", "group", "token", "block")
_REJECTED_STRATEGIES = ("tensor_group", "attn_head", "head")
BLOCK_STRUCTURES = ((128, 128),)  # weight blocks [N, K] of the FP8_BLOCK GEMM


class CheckpointError(ValueError):
    """A checkpoint or its config cannot be loaded: says where, what was found and what to do."""


# ----------------------------------------------------------------------- schemes
@dataclass(frozen=True)
class QuantArgs:
    """One tensor's quantization (``QuantizationArgs`` reduced to what the kernels need)."""

    num_bits: int
    type: str  # "int" | "float"
    symmetric: bool
    strategy: str  # "tensor" | "channel" | "group" | "token"
    group_size: Optional[int]
    dynamic: bool
    actorder: Optional[str]
    block_structure: Optional[Tuple[int, int]] = None  # [rows (N), columns (K)] of a weight block

    @staticmethod
    def parse(d: Dict[str, Any], where: str) -> "QuantArgs":
        def bad(key: str, value, supported: str, todo: str = ""):
            raise CheckpointError(f"{where}.{key} = {value!r} is not supported; supported: {supported}." +
                                  (f" {todo}" if todo else ""))

        num_bits = int(d.get("num_bits", 8))
        qtype = str(d.get("type", "int")).lower()
        if qtype not in ("int", "float"):
            bad("type", qtype, "'int', 'float'")
        group_size = d.get("group_size")
        strategy = d.get("strategy")
        if strategy is None:  # compressed-tensors infers it from group_size
            strategy = "tensor" if group_size is None else ("channel" if group_size == -1 else "group")
        strategy = str(strategy).lower()
        if strategy in _REJECTED_STRATEGIES:
            bad("strategy", strategy, ", ".join(STRATEGIES),
                "Tensor-group / head scales have no qkernels GEMM: dequantize the checkpoint "
                "with compressed-tensors, or re-quantize per channel.")
        if strategy not in STRATEGIES:
            bad("strategy", strategy, ", ".join(STRATEGIES))
        if strategy == "group" and (group_size is None or int(group_size) <= 0):
            bad("group_size", group_size, "a positive group size with strategy 'group'")
        dynamic = d.get("dynamic", False)
        if dynamic not in (True, False):
            bad("dynamic", dynamic, "true, false", "'local' dynamic scales are an NVFP4 feature.")
        if d.get("block_structure") is not None and strategy != "block":
            bad("block_structure", d["block_structure"], "null unless strategy is 'block'")
        block = None
        if strategy == "block":
            bs = d.get("block_structure")
            if not (isinstance(bs, (list, tuple)) and len(bs) == 2 and all(isinstance(v, int) and v > 0 for v in bs)):
                bad("block_structure", bs, "two positive integers [rows, columns] with strategy 'block'")
            block = (int(bs[0]), int(bs[1]))
            if block not in BLOCK_STRUCTURES:
                bad("block_structure", list(bs), " or ".join(str(list(b)) for b in BLOCK_STRUCTURES),
                    "The blockwise FP8 GEMM reads 128 x 128 weight blocks (DeepSeek-V3 / llm-compressor FP8_BLOCK).")
        actorder = d.get("actorder")
        if actorder in (False, None, "static"):  # static: reorder at quantization time, nothing stored
            actorder = None
        elif actorder is True:
            actorder = "group"
        elif actorder not in ("group", "weight", "dynamic"):
            bad("actorder", actorder, "null, false, true, 'static', 'group', 'weight', 'dynamic'")
        return QuantArgs(num_bits, qtype, bool(d.get("symmetric", True)), strategy,
                         None if group_size is None else int(group_size), bool(dynamic), actorder, block)

    def describe(self) -> str:
        g = (f"g{self.group_size}" if self.strategy == "group" else
             f"block{self.block_structure[0]}x{self.block_structure[1]}" if self.strategy == "block" else self.strategy)
        kind = "dynamic" if self.dynamic else "static"
        return f"{self.type}{self.num_bits} {g} {'sym' if self.symmetric else 'asym'} {kind}"


@dataclass(frozen=True)
class Scheme:
    """A config group: which modules, how their weights and inputs are quantized, in which format."""

    name: str
    targets: Tuple[str, ...]
    weights: Optional[QuantArgs]
    input_activations: Optional[QuantArgs]
    format: Optional[str]  # the group's own format (overrides the global one) or None

    def describe(self) -> str:
        w = self.weights.describe() if self.weights else "none"
        a = self.input_activations.describe() if self.input_activations else "none"
        return f"weights {w}; inputs {a}"


# The presets of compressed-tensors' quant_scheme.py that qkernels runs (a config group may be
# ``{"W4A16": ["Linear"]}``). Each is spelled out so that the loader needs no compressed-tensors.
_W_INT8_CH = dict(num_bits=8, type="int", strategy="channel", symmetric=True)
_W_FP8_CH = dict(num_bits=8, type="float", strategy="channel", symmetric=True)
_W_FP8_T = dict(num_bits=8, type="float", strategy="tensor", symmetric=True)
_A_FP8_TOKEN_DYN = dict(num_bits=8, type="float", strategy="token", symmetric=True, dynamic=True)
PRESETS: Dict[str, Dict[str, Any]] = {
    "UNQUANTIZED": {},
    "W8A8": dict(weights=_W_INT8_CH, input_activations=dict(num_bits=8, type="int", strategy="token",
                                                             symmetric=True, dynamic=True)),
    "INT8": "W8A8",
    "W8A16": dict(weights=_W_INT8_CH),
    "W4A16": dict(weights=dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=True)),
    "W4A16_ASYM": dict(weights=dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=False)),
    "FP8": dict(weights=_W_FP8_T, input_activations=dict(num_bits=8, type="float", strategy="tensor",
                                                         symmetric=True, dynamic=False)),
    "FP8_DYNAMIC": dict(weights=_W_FP8_CH, input_activations=_A_FP8_TOKEN_DYN),
    "FP8_BLOCK": dict(weights=dict(num_bits=8, type="float", strategy="block", block_structure=[128, 128],
                                   symmetric=True),
                      input_activations=dict(num_bits=8, type="float", strategy="group", group_size=128,
                                             symmetric=True, dynamic=True)),
}


def _preset(name: str, where: str) -> Dict[str, Any]:
    p = PRESETS.get(name.upper())
    if isinstance(p, str):
        p = PRESETS[p]
    if p is None:
        raise CheckpointError(f"{where}: {name!r} is not a preset scheme qkernels knows; known presets: "
                              f"{', '.join(PRESETS)}. Spell the scheme out (weights / input_activations).")
    return p


def _parse_group(name: str, value: Any, where: str) -> Scheme:
    if isinstance(value, (list, tuple)):  # {"W4A16": ["Linear"]}: a preset on these targets
        targets, body = list(value), _preset(name, where)
    elif isinstance(value, dict):
        targets, body = value.get("targets"), value
        if not value.get("weights") and not value.get("input_activations") and name.upper() in PRESETS:
            body = {**_preset(name, where), **{k: v for k, v in value.items() if v is not None}}
    else:
        raise CheckpointError(f"{where} is a {type(value).__name__}; expected a scheme object or a target list.")
    if not targets:
        raise CheckpointError(f"{where}.targets is empty or missing: a config group must name its targets.")
    if isinstance(targets, str):
        targets = [targets]
    if body.get("output_activations"):
        raise CheckpointError(f"{where}.output_activations = {body['output_activations']!r} is not supported "
                              "(no qkernels GEMM quantizes its output): use a checkpoint without it.")
    w = body.get("weights")
    a = body.get("input_activations")
    fmt = body.get("format")
    return Scheme(name, tuple(targets),
                  QuantArgs.parse(w, f"{where}.weights") if w else None,
                  QuantArgs.parse(a, f"{where}.input_activations") if a else None,
                  _check_format(fmt, f"{where}.format") if fmt else None)


def _check_format(fmt: str, where: str) -> str:
    if fmt in QUANT_FORMATS or fmt in (DENSE_FORMAT, MIXED_FORMAT):
        return fmt
    why = _REJECTED_FORMATS.get(fmt)
    supported = ", ".join(QUANT_FORMATS + (DENSE_FORMAT, MIXED_FORMAT))
    raise CheckpointError(f"{where} = {fmt!r} is not supported" + (f" ({why})" if why else "") +
                          f"; supported: {supported} (and legacy sparsity_config.format sparse-24-bitmask).")


# ----------------------------------------------------------------------- matching
EXACT, REGEX, CLASS = 3, 2, 1  # specificity of a target match


def match_level(target: str, name: str, module: Optional[torch.nn.Module]) -> int:
    """How ``target`` matches the module ``name``: EXACT, REGEX, CLASS or 0 (no match)."""
    if target.startswith("re:"):
        return REGEX if re.match(target[3:], name) else 0
    if target == name:
        return EXACT
    if module is not None and any(c.__name__ == target for c in type(module).__mro__):
        return CLASS
    return 0


@dataclass
class QuantConfig:
    """A parsed ``quantization_config``."""

    groups: List[Scheme]
    format: Optional[str]
    ignore: Tuple[str, ...]
    sparsity_format: Optional[str] = None  # legacy sparse-24-bitmask
    sparsity_targets: Tuple[str, ...] = ()
    sparsity_ignore: Tuple[str, ...] = ()
    notes: List[str] = field(default_factory=list)  # parts of the config that were read but not applied

    def ignored(self, name: str, module: Optional[torch.nn.Module]) -> bool:
        return any(match_level(t, name, module) for t in self.ignore)

    def match(self, name: str, module: Optional[torch.nn.Module]) -> Optional[Scheme]:
        """The scheme of module ``name`` (None: ignored or not targeted)."""
        if self.ignored(name, module):
            return None
        best, level = [], 0
        for g in self.groups:
            lv = max((match_level(t, name, module) for t in g.targets), default=0)
            if lv > level:
                best, level = [g], lv
            elif lv and lv == level:
                best.append(g)
        if len(best) > 1:
            raise CheckpointError(f"module {name!r} is targeted by config groups {[g.name for g in best]} equally "
                                  "specifically: make one target more specific (exact name > re: > class).")
        return best[0] if best else None

    def format_of(self, scheme: Scheme) -> str:
        fmt = scheme.format or self.format
        if fmt in (None, MIXED_FORMAT):
            return _infer_format(scheme)
        return fmt

    def sparse24(self, name: str, module: Optional[torch.nn.Module]) -> bool:
        """True if the legacy sparsity config stores this module as a 2:4 bitmask."""
        if self.sparsity_format is None:
            return False
        if any(match_level(t, name, module) for t in self.sparsity_ignore):
            return False
        return any(match_level(t, name, module) for t in self.sparsity_targets)


def _infer_format(s: Scheme) -> str:
    """compressed-tensors' infer_module_format, for configs that leave the format out."""
    w = s.weights
    if w is None:
        return DENSE_FORMAT
    if w.type == "int" and w.num_bits < 8 and (s.input_activations is None or s.input_activations.type == "int"):
        return "pack-quantized"
    return "float-quantized" if w.type == "float" else "int-quantized"


def find_quantization_config(config: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The quantization config dict inside a ``config.json`` dict, and where it was found."""
    for prefix, cfg in (("", config), ("text_config.", config.get("text_config") or {})):
        for key in ("quantization_config", "compression_config"):
            if cfg.get(key):
                return cfg[key], prefix + key
    raise CheckpointError("config.json has no quantization_config (nor compression_config, nor either under "
                          "text_config): this is not a compressed-tensors checkpoint.")


def parse_quantization_config(qcfg: Dict[str, Any], where: str = "quantization_config") -> QuantConfig:
    """Parse a compressed-tensors quantization config (the dict under ``quantization_config``)."""
    method = qcfg.get("quant_method", "compressed-tensors")
    if method not in ("compressed-tensors", "sparseml"):
        raise CheckpointError(f"{where}.quant_method = {method!r}; this loader reads 'compressed-tensors' only.")
    # legacy compression_config: {"quantization_config": {...}, "sparsity_config": {...}}
    if "config_groups" not in qcfg and isinstance(qcfg.get("quantization_config"), dict):
        qcfg = {**qcfg["quantization_config"], "sparsity_config": qcfg.get("sparsity_config")}
    transform = qcfg.get("transform_config")
    if transform:
        raise CheckpointError(f"{where}.transform_config is not empty ({sorted(transform)}): rotations / Hadamard "
                              "transforms are not supported by qkernels. Use a checkpoint without transforms.")
    groups = [_parse_group(n, v, f"{where}.config_groups.{n}") for n, v in (qcfg.get("config_groups") or {}).items()]
    fmt = qcfg.get("format")
    cfg = QuantConfig(groups, _check_format(fmt, f"{where}.format") if fmt else None,
                      tuple(qcfg.get("ignore") or ()))
    sp = qcfg.get("sparsity_config") or {}
    sp_fmt = sp.get("format")
    if sp_fmt and sp_fmt != DENSE_FORMAT:
        if sp_fmt not in LEGACY_SPARSE_FORMATS:
            _check_format(sp_fmt, f"{where}.sparsity_config.format")
        structure = sp.get("sparsity_structure", "2:4")
        if str(structure) != "2:4":
            raise CheckpointError(f"{where}.sparsity_config.sparsity_structure = {structure!r}; only '2:4' is supported.")
        cfg.sparsity_format = sp_fmt
        cfg.sparsity_targets = tuple(sp.get("targets") or ("Linear",))
        cfg.sparsity_ignore = tuple(sp.get("ignore") or ())
    if qcfg.get("kv_cache_scheme"):
        cfg.notes.append("kv_cache_scheme is present but not applied: qkernels replaces Linear layers only "
                         "(attention runs in the model dtype).")
    return cfg
