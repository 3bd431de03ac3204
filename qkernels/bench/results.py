"""Benchmark rows and the files they are written to (schema ``qkernels.bench/1``).

The format is documented in ``docs/bench-results.md``; :data:`SCHEMA` is its JSON
Schema and :func:`validate` checks a document against it without any dependency.
:class:`ResultsWriter` rewrites the JSON file (atomically) after every row, so a
sweep interrupted with Ctrl-C leaves every finished row on disk; CSV and markdown
are derived from the same rows.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

SCHEMA_ID = "qkernels.bench/1"

_NUM_OR_NULL = {"type": ["number", "null"]}
SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "qkernels benchmark results",
    "type": "object",
    "required": ["schema", "provenance", "rows"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "provenance": {
            "type": "object",
            "required": ["gpu", "sm", "num_sms", "driver", "torch", "cuda", "qkernels", "git_commit",
                         "git_dirty", "date", "command", "measured_peaks"],
            "properties": {
                "gpu": {"type": ["string", "null"]},
                "sm": {"type": ["string", "null"]},
                "num_sms": {"type": ["integer", "null"]},
                "driver": {"type": ["string", "null"]},
                "torch": {"type": "string"},
                "cuda": {"type": ["string", "null"]},
                "qkernels": {"type": "string"},
                "git_commit": {"type": ["string", "null"]},
                "git_dirty": {"type": ["boolean", "null"]},
                "date": {"type": "string"},
                "command": {"type": "string"},
                "measured_peaks": {
                    "type": "object",
                    "properties": {"bf16_tflops": {"type": "number"}, "copy_gbps": {"type": "number"}},
                },
            },
        },
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["family", "impl", "model", "layer", "M", "N", "K", "dtypes", "variant",
                             "time_us", "tflops", "gbps", "speedup_vs_bf16", "rel_err"],
                "properties": {
                    "family": {"type": "string"},
                    "impl": {"type": "string"},
                    "model": {"type": ["string", "null"]},
                    "layer": {"type": ["string", "null"]},
                    "M": {"type": "integer", "minimum": 1},
                    "N": {"type": ["integer", "null"], "minimum": 1},
                    "K": {"type": "integer", "minimum": 1},
                    "dtypes": {"type": "object", "additionalProperties": {"type": "string"}},
                    "variant": {"type": ["string", "null"]},
                    "time_us": {"type": "number", "exclusiveMinimum": 0},
                    "tflops": _NUM_OR_NULL,
                    "gbps": _NUM_OR_NULL,
                    "speedup_vs_bf16": _NUM_OR_NULL,
                    # non-finite errors (a kernel wrote NaN/Inf) are kept, as strings
                    "rel_err": {"anyOf": [_NUM_OR_NULL, {"enum": ["inf", "nan"]}]},
                    "timing": {"enum": ["graph", "eager"]},
                },
            },
        },
    },
}

ROW_FIELDS = tuple(SCHEMA["properties"]["rows"]["items"]["required"])

_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


def _is(value: Any, t: str) -> bool:
    if t in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[t])


def _check(value: Any, schema: Dict[str, Any], where: str, errors: List[str]) -> None:
    """The subset of JSON Schema that :data:`SCHEMA` uses."""
    if "anyOf" in schema:
        if all(_sub_errors(value, alt, where) for alt in schema["anyOf"]):
            errors.append(f"{where}: {value!r} matches none of {schema['anyOf']}")
        return
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {type(value).__name__} {value!r}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        for k in schema.get("required", ()):
            if k not in value:
                errors.append(f"{where}: missing required field {k!r}")
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                _check(v, props[k], f"{where}.{k}", errors)
            elif "additionalProperties" in schema:
                _check(v, schema["additionalProperties"], f"{where}.{k}", errors)
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _check(v, schema["items"], f"{where}[{i}]", errors)


def _sub_errors(value: Any, schema: Dict[str, Any], where: str) -> List[str]:
    errors: List[str] = []
    _check(value, schema, where, errors)
    return errors


def validate(doc: Any) -> List[str]:
    """Every way ``doc`` departs from :data:`SCHEMA` (an empty list: valid)."""
    errors: List[str] = []
    _check(doc, SCHEMA, "$", errors)
    return errors


# ------------------------------------------------------------------ rows
def _finite_or_str(x: Optional[float]) -> Union[float, str, None]:
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else "inf"


def make_row(*, family: str, impl: str, shape, M: int, dtypes: Dict[str, str], variant: Optional[str],
             time_us: float, flops: Optional[float], nbytes: Optional[float],
             rel_err: Optional[float] = None, timing: Optional[str] = None) -> Dict[str, Any]:
    """A row with the derived fields (tflops, gbps) computed; ``speedup_vs_bf16`` is filled by the suite.

    ``shape`` is a :class:`~qkernels.bench.shapes.LinearShape` (its ``N`` may be None
    for element-wise ops); ``flops`` is the dense-equivalent 2*M*N*K (None for
    element-wise ops); ``nbytes`` the minimum bytes moved (inputs read once, outputs
    written once).
    """
    row = {
        "family": family, "impl": impl, "model": shape.model, "layer": shape.layer,
        "M": int(M), "N": shape.N, "K": shape.K, "dtypes": dtypes, "variant": variant,
        "time_us": round(time_us, 3),
        "tflops": round(flops / (time_us * 1e-6) / 1e12, 3) if flops else None,
        "gbps": round(nbytes / (time_us * 1e-6) / 1e9, 2) if nbytes else None,
        "speedup_vs_bf16": None,
        "rel_err": _finite_or_str(rel_err if rel_err is None else float(f"{rel_err:.4g}")),
    }
    if timing is not None:
        row["timing"] = timing
    return row


def gemm_bytes(M: int, N: int, K: int, a_bits: float, b_bits: float, out_bits: float,
               b_meta_bits: float = 0.0) -> float:
    """Minimum bytes of ``out[M,N] = a[M,K] @ b[K,N]``: a, b (+ metadata per weight element) read once, out written once."""
    return (M * K * a_bits + N * K * (b_bits + b_meta_bits) + M * N * out_bits) / 8.0


# ------------------------------------------------------------------ files
def document(provenance: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return {"schema": SCHEMA_ID, "provenance": provenance, "rows": list(rows)}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Union[str, Path], provenance: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Path:
    path = Path(path)
    _atomic_write(path, json.dumps(document(provenance, rows), indent=1, allow_nan=False) + "\n")
    return path


def load(path: Union[str, Path]) -> Dict[str, Any]:
    """A results document, validated; raises ``ValueError`` listing what is wrong."""
    doc = json.loads(Path(path).read_text())
    errors = validate(doc)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"{path} is not a valid {SCHEMA_ID} file: " + "; ".join(errors[:5]) + more)
    return doc


def write_csv(path: Union[str, Path], rows: Sequence[Dict[str, Any]]) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ROW_FIELDS)
        for r in rows:
            w.writerow(["" if r.get(k) is None else
                        ";".join(f"{a}={b}" for a, b in r[k].items()) if k == "dtypes" else r[k] for k in ROW_FIELDS])
    return path


def _fmt(x: Any, spec: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return format(x, spec)


def markdown_table(rows: Sequence[Dict[str, Any]], peaks: Optional[Dict[str, float]] = None) -> str:
    """One markdown table per family: shape, M, impl, variant, time, TFLOPS, GB/s, speedup, rel_err.

    With ``peaks`` the TFLOPS and GB/s columns also show the fraction of the measured peaks.
    """
    peaks = peaks or {}
    out: List[str] = []
    for fam in sorted({r["family"] for r in rows}):
        out += [f"### {fam}", "",
                "| model / layer | M | N | K | impl | variant | time (µs) | TFLOPS | GB/s | vs bf16 | rel_err |",
                "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        fam_rows = sorted((r for r in rows if r["family"] == fam),
                          key=lambda r: (r["model"] or "~", r["N"] or 0, r["K"], r["M"], r["impl"] != "qkernels",
                                         r["impl"], r["variant"] or ""))
        for r in fam_rows:
            tf, gb = _fmt(r["tflops"], ".1f"), _fmt(r["gbps"], ".0f")
            if r["tflops"] is not None and peaks.get("bf16_tflops"):
                tf += f" ({r['tflops'] / peaks['bf16_tflops']:.0%})"
            if r["gbps"] is not None and peaks.get("copy_gbps"):
                gb += f" ({r['gbps'] / peaks['copy_gbps']:.0%})"
            where = f"{r['model']} / {r['layer']}" if r["model"] else "synthetic"
            sp = r["speedup_vs_bf16"]
            out.append(f"| {where} | {r['M']} | {_fmt(r['N'])} | {r['K']} | {r['impl']} | {_fmt(r['variant'])} | "
                       f"{r['time_us']:.1f} | {tf} | {gb} | {_fmt(sp, '.2f') + ('×' if sp is not None else '')} | "
                       f"{_fmt(r['rel_err'], '.1e')} |")
        out.append("")
    if peaks:
        out.append(f"Percentages: of the measured bf16 matmul peak ({peaks.get('bf16_tflops')} TFLOPS) and of "
                   f"the measured device copy bandwidth ({peaks.get('copy_gbps')} GB/s).")
    return "\n".join(out) + "\n"


class ResultsWriter:
    """Collects rows and keeps ``<stem>.json`` on disk up to date after every row.

    :meth:`finish` also writes ``<stem>.csv`` and ``<stem>.md``. Use it as a context
    manager: on an exception (including ``KeyboardInterrupt``) the files are still
    finished with the rows collected so far, and the exception propagates.
    """

    def __init__(self, out_dir: Union[str, Path], stem: str, provenance: Dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.provenance = provenance
        self.rows: List[Dict[str, Any]] = []

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"{self.stem}.json"

    def add(self, rows: Iterable[Dict[str, Any]]) -> None:
        self.rows.extend(rows)
        write_json(self.json_path, self.provenance, self.rows)

    def finish(self) -> List[Path]:
        paths = [write_json(self.json_path, self.provenance, self.rows),
                 write_csv(self.out_dir / f"{self.stem}.csv", self.rows)]
        md = self.out_dir / f"{self.stem}.md"
        md.write_text(markdown_table(self.rows, self.provenance.get("measured_peaks")))
        paths.append(md)
        return paths

    def __enter__(self) -> "ResultsWriter":
        write_json(self.json_path, self.provenance, self.rows)
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
