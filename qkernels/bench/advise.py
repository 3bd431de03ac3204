"""``qkernels advise``: which quantisation scheme is fastest for a model at which batch size.

Grounded in benchmark rows (a run of this GPU, or the committed runs under
``bench/results/<gpu>/``): for every batch size the model-level estimate
(:mod:`qkernels.bench.model_estimate`) of a decode step and of a prefill is
computed per scheme and the fastest is named, with its speedup over BF16. Speed
is half the answer, so the quality and hardware caveats of each scheme follow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import model_estimate as me
from .results import load
from .shapes import ModelSpec

DEFAULT_BATCHES: Tuple[int, ...] = (1, 4, 16, 64, 256)
DEFAULT_SEQ_LEN = 2048


def load_rows(paths: Sequence[Path]) -> Tuple[List[dict], List[dict]]:
    """(rows, provenances) of every results file in ``paths`` (files or folders of ``*.json``)."""
    files: List[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    rows, provs = [], []
    for f in files:
        doc = load(f)
        rows += doc["rows"]
        provs.append(dict(doc["provenance"], file=str(f)))
    return rows, provs


def caveats(sm: Optional[Tuple[int, int]]) -> List[str]:
    """Quality and hardware caveats per scheme, marked for the GPU's arch when known."""
    def mark(ok: bool) -> str:
        return "" if sm is None else (" (available on this GPU)" if ok else " (**not available on this GPU**)")

    return [
        "**W4A16** (4-bit weights, 16-bit activations): weight-only, so it wins where the GEMM is "
        "memory-bound: decode at small batch (latency-bound serving). Use a calibrated checkpoint "
        "(GPTQ/AWQ, group size 128; act-order for the best accuracy); naive round-to-nearest 4-bit "
        "loses noticeably more quality. Its advantage fades as batch grows (dequantisation is not free)."
        + mark(sm is None or sm >= (8, 0)),
        "**W8A8-FP8** (e4m3, per-channel weights, per-token activations): near-lossless on most LLMs "
        "without calibration; needs FP8 tensor cores, i.e. sm89+ (Ada, Hopper)." + mark(sm is not None and sm >= (8, 9)),
        "**W8A8-FP8-BLOCK** (e4m3, one scale per 128x128 weight block, activations per token in groups "
        "of 128): the format of the DeepSeek-V3/R1 and Qwen3-FP8 releases and llm-compressor's FP8_BLOCK; "
        "finer scales than per-channel FP8, no calibration. sm90 runs CUTLASS kernels, sm89 a Triton "
        "kernel (needs `triton`); other archs have no path yet." + mark(sm in ((8, 9), (9, 0))),
        "**W8A8-INT8**: the W8A8 path on sm80 (Ampere has no FP8); activations with outliers need "
        "SmoothQuant-style calibration and per-token scales, otherwise accuracy drops."
        + mark(sm is None or sm >= (7, 5)),
        "**2:4 FP8** (2:4 sparse weights): only on sm90, only pays at large batch (compute-bound "
        "prefill), and needs a model pruned to 2:4 (and usually fine-tuned afterwards): it is not a "
        "drop-in conversion of a dense checkpoint." + mark(sm is not None and sm[0] == 9),
        "Every number is the GEMM share of a step from the benchmark rows, not an end-to-end "
        "measurement; attention, activation quantisation and communication come on top.",
    ]


def _best(step: Dict[str, me.StepEstimate]) -> Tuple[Optional[str], str]:
    known = {k: v for k, v in step.items() if v.time_us is not None}
    if not known:
        return None, "no rows"
    best = min(known, key=lambda k: known[k].time_us)
    base = known.get("BF16")
    sp = f", {base.time_us / known[best].time_us:.2f}× vs BF16" if base else ""
    return best, f"**{best}** ({known[best].time_us / 1e3:.2f} ms{sp})"


def advise(model: ModelSpec, rows: Sequence[dict], sm: Optional[Tuple[int, int]], gpu: str,
           batches: Sequence[int] = DEFAULT_BATCHES, seq_len: int = DEFAULT_SEQ_LEN) -> str:
    """The advice as markdown: fastest scheme per batch size (decode and prefill), then caveats."""
    lines = [f"## {model.name} on {gpu}", "",
             f"Fastest scheme per batch size, from the model-level estimate (sum of the Linear-layer "
             f"GEMM times of {model.num_hidden_layers} layers, interpolated from the benchmark rows; "
             f"prefill = batch x {seq_len} prompt tokens). **An estimate, not a measurement.**", "",
             "| batch | decode step | prefill |", "|---:|---|---|"]
    missing = set()
    for b in batches:
        est = me.estimate(model, rows, batch=b, seq_len=seq_len)
        decode = {k: v["decode"] for k, v in est.items()}
        prefill = {k: v["prefill"] for k, v in est.items()}
        missing |= {k for k, v in decode.items() if v.time_us is None}
        lines.append(f"| {b} | {_best(decode)[1]} | {_best(prefill)[1]} |")
    if missing:
        lines += ["", f"No complete rows for: {', '.join(sorted(missing))} (family not benchmarked on this GPU, "
                      "or not for this model's shapes: `qkernels bench --model <model>`)."]
    lines += ["", "### Caveats", ""] + [f"- {c}" for c in caveats(sm)]
    return "\n".join(lines) + "\n"
