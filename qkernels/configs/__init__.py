"""Kernel configs as data: which compiled kernel, with which tile-scheduler parameters, serves
each M bucket of each dispatch key, per GPU.

The compiled library holds, per *dispatch key* (a family's arch / operand dtype / epilogue, e.g.
``scaled_mm/sm90/fp8``, ``sparse24/sm90/fp8``), the candidate kernels it was built with and a
compiled-in default table ``M bucket -> kernel`` (``csrc/core/dispatch.h``). A config file
replaces some keys' tables at run time, without rebuilding:

.. code-block:: json

    {"schema": "qkernels.configs/1",
     "gpu": "NVIDIA H100 80GB HBM3",
     "provenance": {"origin": "tuned", "gpu": "...", "torch": "...", "git_commit": "...", "date": "..."},
     "tables": {
       "scaled_mm/sm90/fp8": [
         {"max_m": 16, "kernel": "sm90_fp8_m16_k128", "splits": "split_k_4"},
         {"max_m": 128, "kernel": "sm90_fp8_m64"},
         {"max_m": null, "kernel": "sm90_fp8_large", "raster": "along_n", "swizzle": 4}]}}

A bucket serves ``M <= max_m`` (after the previous bucket); the last has ``"max_m": null`` (any
M). Any other field is a run-time parameter of the key (``raster``, ``swizzle``, ``splits`` for
the sm90 CUTLASS 3.x keys), given by value or label; a parameter left out keeps its default.
``qkernels info`` lists every key, its kernels, parameters and active table.

**Thresholds** (optional ``"thresholds": {"w4a16/sm90/hopper_min_m": 256}``): the choices made in
Python rather than by a kernel table, e.g. the token count from which the W4A16 Hopper path
replaces the Marlin-style one (two ops, two weight layouts: not one key). A family declares each
at import with :func:`register_threshold` (name, default, doc); code reads it with
:func:`threshold` (a dict lookup: no file I/O, no parsing per call). Values are ints >= the
threshold's minimum; an unknown name or a bad value keeps the default, with a
:class:`ConfigWarning`. They are part of the file's choice like the tables (reset to their
defaults, then set, by :func:`apply`); a traced graph (CUDA graph, ``torch.compile``) keeps the
path chosen when it was traced.

**Which file**: ``$QKERNELS_CONFIGS`` when set (a file; a folder holding ``<gpu-slug>.json``; or
``default`` for the compiled-in tables), else ``qkernels/configs/<gpu-slug>.json`` shipped in the
package for the GPU's name (slug as ``qkernels.bench.provenance.gpu_slug``: ``h100-sxm``,
``h200``...), else the compiled-in defaults. The choice is made once, at the first CUDA use of
the process (``torch.cuda`` initialisation; importing qkernels never initialises CUDA), from the
current device's name; a process sees one table per key (mixed GPUs: set ``QKERNELS_CONFIGS``).
The tables are read by the ops at call time (no host sync): CUDA graphs capture the kernel chosen
when they were captured.

**Never a crash, never a silent wrong kernel**: a malformed file, an unknown key, a kernel this
library was not built with, a parameter the kernel does not take: that key (or, for a malformed
file, every key) keeps its compiled-in default, with a :class:`ConfigWarning` naming the file, the
key and the kernel. ``qkernels tune`` writes these files (:mod:`qkernels.bench.tune`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch

SCHEMA = "qkernels.configs/1"
ENV = "QKERNELS_CONFIGS"
CONFIG_DIR = Path(__file__).resolve().parent
TOP_LEVEL_FIELDS = ("schema", "gpu", "provenance", "tables", "thresholds", "notes")
_log = logging.getLogger("qkernels.configs")


class ConfigWarning(UserWarning):
    """A config (or part of one) was not applied; the compiled-in default stays in use."""


class ConfigError(ValueError):
    """A config file or table that cannot be used (the message says what and where)."""


@dataclass
class State:
    """Which tables are in use in this process, and why."""

    origin: str = "default"  # "default" | "package" | "env" | "explicit"
    path: Optional[str] = None  # the file applied, if any
    reason: str = "not chosen yet: the per-GPU config is picked at the first CUDA use of this process"
    gpu: Optional[str] = None  # the device name the choice was made for
    provenance: Dict[str, Any] = field(default_factory=dict)
    applied: List[str] = field(default_factory=list)  # keys whose table came from the file
    rejected: Dict[str, str] = field(default_factory=dict)  # key -> why it kept the default
    thresholds: Dict[str, int] = field(default_factory=dict)  # thresholds the file set (name -> value)
    pending: bool = True  # the choice has not been made yet


_state = State()


def state() -> State:
    """The current :class:`State` (a copy is not made: do not modify it)."""
    return _state


# ----------------------------------------------------------------- the library's side
def library_tables() -> Optional[dict]:
    """The library's dispatch keys (``qkernels::dispatch_tables``, schema ``qkernels.dispatch/1``):
    ``{"keys": {key: {"params", "kernels", "default", "active", "active_source"}}}``, or None when
    no library with dispatch tables is loaded."""
    try:
        op = torch.ops.qkernels.dispatch_tables
    except (AttributeError, RuntimeError):
        return None
    return json.loads(op())


def _lib_op(name: str):
    return getattr(torch.ops.qkernels, name)


def _param_value(p: dict, value: Any) -> int:
    """A param value given by value or label -> its int value (ConfigError if not allowed)."""
    if isinstance(value, bool):
        value = None  # JSON true/false is not a parameter value
    if isinstance(value, str) and value in p["labels"]:
        return p["values"][p["labels"].index(value)]
    if isinstance(value, int) and value in p["values"]:
        return value
    allowed = ", ".join(f"{l!r}" if l != str(v) else str(v) for v, l in zip(p["values"], p["labels"] or p["values"]))
    raise ConfigError(f"param {p['name']!r} = {value!r} is not allowed; allowed: {allowed}")


def _param_label(p: dict, value: int) -> Union[int, str]:
    label = p["labels"][p["values"].index(value)] if p["labels"] else str(value)
    return value if label == str(value) else label


# ----------------------------------------------------------------- thresholds (Python-side choices)
@dataclass(frozen=True)
class Threshold:
    """A Python-side choice a config may set per GPU (see the module docstring)."""

    name: str  # "<family>/<arch group>/<what>", e.g. "w4a16/sm90/hopper_min_m"
    default: int
    doc: str
    minimum: int = 1


NEVER = 2**31 - 1
"""A threshold value that no input reaches: "never take the path this threshold switches to".
The tuner writes it when it measured the crossover and the switched-to path never won."""

_THRESHOLDS: Dict[str, Threshold] = {}
_threshold_values: Dict[str, int] = {}  # name -> value in use; replaced as a whole by apply()


def register_threshold(name: str, default: int, doc: str, minimum: int = 1) -> Threshold:
    """Declares a threshold (once, at the import of the family module that reads it; qkernels
    imports every family before the per-GPU config is chosen). Returns its :class:`Threshold`."""
    if isinstance(default, bool) or not isinstance(default, int) or default < minimum:
        raise ValueError(f"threshold {name!r}: default {default!r} must be an int >= {minimum}")
    t = Threshold(name, default, doc, minimum)
    old = _THRESHOLDS.get(name)
    if old is not None and old != t:
        raise ValueError(f"threshold {name!r} is registered twice with different definitions: {old} and {t}")
    _THRESHOLDS[name] = t
    _threshold_values.setdefault(name, default)
    return t


def threshold(name: str) -> int:
    """The value in use of a registered threshold: the config's, else its default. Cheap (one dict
    lookup): meant to be called on every forward."""
    try:
        return _threshold_values[name]
    except KeyError:
        raise KeyError(f"no threshold {name!r} is registered; registered: {', '.join(sorted(_THRESHOLDS)) or 'none'} "
                       "(qkernels.configs.register_threshold)") from None


def thresholds() -> Dict[str, Tuple[int, Threshold]]:
    """Every registered threshold: ``name -> (value in use, its Threshold)``."""
    return {n: (_threshold_values.get(n, t.default), t) for n, t in sorted(_THRESHOLDS.items())}


def check_threshold(name: str, value: Any) -> int:
    """``value`` as the int a config may set for ``name``; :class:`ConfigError` for an unknown name
    or a value that is not an int >= the threshold's minimum."""
    t = _THRESHOLDS.get(name)
    if t is None:
        raise ConfigError(f"unknown threshold {name!r}; known: {', '.join(sorted(_THRESHOLDS)) or 'none'}")
    if isinstance(value, bool) or not isinstance(value, int) or value < t.minimum:
        raise ConfigError(f"threshold {name!r} = {value!r} must be an int >= {t.minimum}")
    return value


# ----------------------------------------------------------------- structure (no library needed)
def check_document(doc: Any) -> None:
    """Raises :class:`ConfigError` if ``doc`` is not a ``qkernels.configs/1`` document (the
    per-key tables are checked by :func:`check_table`)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"the top level must be a JSON object, not {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise ConfigError(f"schema is {doc.get('schema')!r}; this qkernels reads {SCHEMA!r}")
    unknown = sorted(set(doc) - set(TOP_LEVEL_FIELDS))
    if unknown:
        raise ConfigError(f"unknown top-level field(s) {unknown}; allowed: {list(TOP_LEVEL_FIELDS)}")
    if not isinstance(doc.get("provenance"), dict):
        raise ConfigError("'provenance' must be an object saying where the tables come from "
                          "(e.g. {\"origin\": \"tuned\", \"gpu\": ..., \"date\": ...} or {\"origin\": \"hand-written\"})")
    if not isinstance(doc.get("tables"), dict):
        raise ConfigError("'tables' must be an object {dispatch key: [buckets]}")
    if not isinstance(doc.get("thresholds", {}), dict):
        raise ConfigError("'thresholds' (optional) must be an object {threshold name: int}")


def check_table(key: str, buckets: Any) -> None:
    """Raises :class:`ConfigError` unless ``buckets`` is a well-formed table: a non-empty list of
    objects with an increasing positive int ``max_m`` (``null`` on the last one only) and a
    ``kernel`` name; other fields are parameters (int or str values)."""
    if not isinstance(buckets, list) or not buckets:
        raise ConfigError(f"{key}: the table must be a non-empty list of buckets")
    prev = 0
    for i, b in enumerate(buckets):
        last = i == len(buckets) - 1
        if not isinstance(b, dict):
            raise ConfigError(f"{key}: bucket {i} must be an object, not {type(b).__name__}")
        if "max_m" not in b or not isinstance(b.get("kernel"), str) or not b["kernel"]:
            raise ConfigError(f"{key}: bucket {i} needs 'max_m' and a 'kernel' name; got {b}")
        m = b["max_m"]
        if last:
            if m is not None:
                raise ConfigError(f"{key}: the last bucket must have \"max_m\": null (it serves every larger M); "
                                  f"got {m!r}")
        elif isinstance(m, bool) or not isinstance(m, int) or m <= prev:
            raise ConfigError(f"{key}: bucket {i} has max_m {m!r}; every bucket but the last needs an int max_m "
                              f"greater than the previous one ({prev})")
        else:
            prev = m
        for name, v in b.items():
            if name not in ("max_m", "kernel") and (isinstance(v, bool) or not isinstance(v, (int, str))):
                raise ConfigError(f"{key}: bucket {i} param {name!r} = {v!r} must be an int or a label")


def resolve_table(key: str, buckets: list, lib_key: dict) -> Tuple[List[int], List[str], List[int]]:
    """A checked table -> the arguments of ``qkernels::set_dispatch_table`` (max_m with -1 for
    "any", kernel names, params flattened per bucket in the key's order), validated against what
    the library reports for ``key``: every kernel compiled, every param known, allowed and taken by
    its kernel. Raises :class:`ConfigError` naming the kernel otherwise."""
    check_table(key, buckets)
    kernels = {k["name"]: k for k in lib_key["kernels"]}
    params = lib_key["params"]
    by_name = {p["name"]: p for p in params}
    max_m, names, flat = [], [], []
    for i, b in enumerate(buckets):
        kname = b["kernel"]
        if kname not in kernels:
            raise ConfigError(f"{key}: kernel {kname!r} (bucket {i}) was not built into this library; "
                              f"built for this key: {', '.join(kernels)}")
        takes = set(kernels[kname]["params"])
        values = {p["name"]: p["default"] for p in params}
        for pname, v in b.items():
            if pname in ("max_m", "kernel"):
                continue
            if pname not in by_name:
                raise ConfigError(f"{key}: bucket {i} ({kname}) sets unknown param {pname!r}; "
                                  f"params of this key: {', '.join(by_name) or 'none'}")
            try:
                val = _param_value(by_name[pname], v)
            except ConfigError as e:
                raise ConfigError(f"{key}: bucket {i} ({kname}): {e}") from None
            if pname not in takes and val != by_name[pname]["default"]:
                raise ConfigError(f"{key}: kernel {kname!r} (bucket {i}) does not take param {pname!r} "
                                  f"(it takes: {', '.join(sorted(takes)) or 'none'})")
            values[pname] = val
        max_m.append(-1 if b["max_m"] is None else int(b["max_m"]))
        names.append(kname)
        flat += [values[p["name"]] for p in params]
    return max_m, names, flat


def export_table(lib_key: dict, which: str = "active") -> List[dict]:
    """A key's ``default`` or ``active`` table from :func:`library_tables` in config form
    (params by label, left out where they are the default)."""
    params = {p["name"]: p for p in lib_key["params"]}
    out = []
    for b in lib_key[which]:
        e = {"max_m": b["max_m"], "kernel": b["kernel"]}
        for name, v in b["params"].items():
            if v != params[name]["default"]:
                e[name] = _param_label(params[name], v)
        out.append(e)
    return out


def format_table(buckets: List[dict]) -> str:
    """One line for humans: ``M<=16 sm90_fp8_m16 | M<=64 ... | any sm90_fp8_large (raster=along_n)``."""
    parts = []
    for b in buckets:
        extra = ", ".join(f"{k}={v}" for k, v in b.items() if k not in ("max_m", "kernel"))
        m = "larger" if b["max_m"] is None else f"M<={b['max_m']}"
        parts.append(f"{m} {b['kernel']}" + (f" ({extra})" if extra else ""))
    return " | ".join(parts)


# ----------------------------------------------------------------- files
def load(path: Union[str, Path]) -> dict:
    """Reads and structure-checks a config file (:class:`ConfigError` on any problem)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    try:
        check_document(doc)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return doc


def gpu_slug(name: str) -> str:
    """The file name stem for a GPU name (``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``)."""
    from qkernels.bench.provenance import gpu_slug as slug

    return slug(name)


def find_config(device_name: str) -> Tuple[Optional[Path], str, str]:
    """``(file or None, origin, reason)`` for a GPU name: ``$QKERNELS_CONFIGS``, else the
    package's ``<slug>.json``, else None (the compiled-in defaults)."""
    slug = gpu_slug(device_name)
    env = os.environ.get(ENV, "").strip()
    if env:
        if env.lower() in ("default", "defaults", "none"):
            return None, "env", f"{ENV}={env}: the compiled-in defaults"
        p = Path(env).expanduser()
        if p.is_dir():
            f = p / f"{slug}.json"
            if f.is_file():
                return f, "env", f"{ENV}={env}: {f.name} for GPU {device_name!r}"
            return None, "env", (f"{ENV}={env} is a folder without {slug}.json (GPU {device_name!r}): "
                                 "the compiled-in defaults")
        return p, "env", f"{ENV}={env}"
    f = CONFIG_DIR / f"{slug}.json"
    if f.is_file():
        return f, "package", f"qkernels/configs/{f.name}, shipped for GPU {device_name!r}"
    return None, "default", (f"no qkernels/configs/{slug}.json for GPU {device_name!r}: the compiled-in defaults "
                             "(`qkernels tune` writes one)")


# ----------------------------------------------------------------- applying
def _warn(msg: str) -> None:
    warnings.warn(f"qkernels configs: {msg}", ConfigWarning, stacklevel=3)
    _log.warning(msg)


def apply(config: Union[str, Path, dict, None], *, origin: str = "explicit", reason: str = "",
          gpu: Optional[str] = None) -> State:
    """Makes ``config`` (a file, a loaded document, or None for the compiled-in defaults) the
    tables and thresholds of this process: every key and threshold is first reset to its default,
    then each one of the file that passes validation is set; any other keeps its default, with a
    :class:`ConfigWarning`. Without a library only the thresholds apply. Returns (and records) the
    new :class:`State`. Never raises for a bad config."""
    global _state, _threshold_values
    lib = library_tables()
    new = State(origin=origin, reason=reason or "", gpu=gpu, pending=False)
    values = {n: t.default for n, t in _THRESHOLDS.items()}
    _threshold_values = dict(values)
    if lib is None:
        new.reason = (reason + "; " if reason else "") + "no CUDA library with dispatch tables is loaded: " + (
            "nothing to apply" if config is None else "kernel tables not applied (thresholds only)")
    else:
        _lib_op("reset_dispatch_table")("")
    if config is None:
        _state = new
        return new
    label = str(config) if not isinstance(config, dict) else "<config object>"
    new.path = None if isinstance(config, dict) else str(Path(config).resolve())
    try:
        doc = config if isinstance(config, dict) else load(config)
        if isinstance(config, dict):
            check_document(doc)
    except ConfigError as e:
        _warn(f"{e}. Every kernel table stays at its compiled-in default (every threshold at its default).")
        new.rejected["*"] = str(e)
        new.path = None
        new.reason += f" -- file rejected ({e}); compiled-in defaults"
        _state = new
        return new
    new.provenance = dict(doc.get("provenance") or {})
    for name, value in (doc.get("thresholds") or {}).items():
        try:
            values[name] = check_threshold(name, value)
        except ConfigError as e:
            new.rejected[f"threshold {name}"] = str(e)
            kept = f"it keeps its default {_THRESHOLDS[name].default}" if name in _THRESHOLDS else "ignored"
            _warn(f"{label}: {e}; {kept}.")
            continue
        new.thresholds[name] = values[name]
    _threshold_values = values
    if lib is None:
        _state = new
        return new
    lib_keys = lib["keys"]
    built_families = {k.split("/", 1)[0] for k in lib_keys}
    for key, buckets in doc["tables"].items():
        if key not in lib_keys:
            why = (f"dispatch key {key!r} is not in this library (its family was not built)"
                   if key.split("/", 1)[0] not in built_families else
                   f"dispatch key {key!r} is not in this library; its keys: {', '.join(sorted(lib_keys))}")
            new.rejected[key] = why
            if key.split("/", 1)[0] in built_families:
                _warn(f"{label}: {why}. Ignored.")
            else:
                _log.info("%s: %s. Ignored.", label, why)
            continue
        try:
            args = resolve_table(key, buckets, lib_keys[key])
            _lib_op("set_dispatch_table")(key, *args, label)
        except (ConfigError, RuntimeError) as e:
            new.rejected[key] = str(e)
            _warn(f"{label}: {e}. {key} keeps its compiled-in default table.")
            continue
        new.applied.append(key)
    _log.info("applied %s: %d key(s) and %d threshold(s) set, %d kept their default", label, len(new.applied),
              len(new.thresholds), len(new.rejected))
    _state = new
    return new


def apply_for_device(device: Optional[int] = None) -> State:
    """Chooses and applies the config for a CUDA device (default: the current one); see the
    module docstring for the order. Needs CUDA; never raises for a bad config."""
    idx = torch.cuda.current_device() if device is None else device
    name = torch.cuda.get_device_name(idx)
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    path, origin, reason = find_config(name)
    if len(names) > 1 and not os.environ.get(ENV):
        reason += (f"; note: this process sees different GPUs ({', '.join(sorted(names))}), and one table per key "
                   f"serves them all (the one for device {idx}); set {ENV} to choose")
        _warn(reason)
    return apply(path, origin=origin, reason=reason, gpu=name)


def _on_cuda_init() -> None:
    """Runs once, when torch initialises CUDA in this process. Must not raise (an exception here
    would fail CUDA initialisation itself)."""
    try:
        apply_for_device()
    except Exception as e:  # noqa: BLE001  (anything: the defaults stay, and we say so)
        global _state
        _state = State(reason=f"choosing the per-GPU config failed ({type(e).__name__}: {e}); compiled-in defaults",
                       pending=False)
        try:
            _warn(_state.reason)
        except Exception:  # noqa: BLE001  (warnings turned into errors must not break CUDA init)
            pass


def install_cuda_init_hook() -> bool:
    """Arranges for :func:`apply_for_device` to run at the first CUDA use (immediately if CUDA is
    already initialised). Called once by ``qkernels/__init__.py`` when the library loaded."""
    global _state
    if library_tables() is None:
        _state = State(reason="no CUDA library with dispatch tables is loaded", pending=False)
        return False
    lazy = getattr(torch.cuda, "_lazy_call", None)
    if lazy is None:  # a torch without the hook: say how to apply by hand
        _state = State(reason="this torch has no torch.cuda._lazy_call: call qkernels.configs.apply_for_device() "
                              "to use a per-GPU config (compiled-in defaults until then)")
        return False
    lazy(_on_cuda_init)
    return True


@contextlib.contextmanager
def forced_kernel(key: str, kernel: str, **params: Union[int, str]) -> Iterator[None]:
    """Within the block, ``kernel`` serves every M of dispatch key ``key``, with the run-time
    ``params`` given (by value or label, e.g. ``splits="split_k_4"``; the others at their defaults):
    tests and benchmarks of one compiled kernel. On exit (also on an exception) the key gets back
    the table it had (the compiled-in default, or the one a config set). Calls made inside the
    block read the forced table; a CUDA graph captured inside keeps the forced kernel.

    Raises :class:`ConfigError` naming what is compiled when there is no library, no such key, or
    the kernel / a param is not one the key has (the library's own check would say the same)."""
    lib = library_tables()
    if lib is None:
        raise ConfigError(f"cannot force {key} to {kernel}: no CUDA library with dispatch tables is loaded")
    if key not in lib["keys"]:
        raise ConfigError(f"dispatch key {key!r} is not in this library; its keys: {', '.join(sorted(lib['keys']))}")
    info = lib["keys"][key]
    args = resolve_table(key, [dict({"max_m": None, "kernel": kernel}, **params)], info)
    before, source = export_table(info, "active"), info["active_source"]
    _lib_op("set_dispatch_table")(key, *args, f"forced_kernel({kernel})")
    try:
        yield
    finally:
        if source == "default":
            _lib_op("reset_dispatch_table")(key)
        else:
            _lib_op("set_dispatch_table")(key, *resolve_table(key, before, info), source)


def describe() -> List[str]:
    """Lines for ``qkernels info``: the table in use, where it came from, and each key's buckets."""
    st = _state
    lines = []
    if st.path:
        prov = st.provenance
        bits = [f"{k} {prov[k]}" for k in ("origin", "gpu", "torch", "git_commit", "date") if prov.get(k)]
        lines.append(f"Kernel configs: {st.path} ({'; '.join(bits) or 'no provenance'})")
        lines.append(f"  chosen: {st.reason}")
    else:
        lines.append(f"Kernel configs: compiled-in defaults ({st.reason})" if not st.pending
                     else f"Kernel configs: {st.reason}")
    for key, why in sorted(st.rejected.items()):
        lines.append(f"  not applied: {key}: {why}")
    for name, (value, t) in thresholds().items():
        src = "config" if name in st.thresholds else "default"
        lines.append(f"  threshold {name:<24} {value} [{src}{'' if src == 'default' else f', default {t.default}'}]"
                     f" {t.doc}")
    lib = library_tables()
    if lib is None:
        lines.append("  (no library: no dispatch tables)")
        return lines
    for key, info in sorted(lib["keys"].items()):
        src = "default" if info["active_source"] == "default" else "config"
        lines.append(f"  {key:<24} [{src}] {format_table(export_table(info, 'active'))}")
    return lines


__all__ = ["SCHEMA", "ENV", "CONFIG_DIR", "ConfigWarning", "ConfigError", "State", "state", "library_tables",
           "check_document", "check_table", "resolve_table", "export_table", "format_table", "load", "gpu_slug",
           "find_config", "apply", "apply_for_device", "install_cuda_init_hook", "forced_kernel", "describe",
           "Threshold", "register_threshold", "threshold", "thresholds", "check_threshold"]
