"""PNG plots of benchmark rows (matplotlib, imported lazily; absent -> a clear error).

* :func:`speedup_vs_m`: one panel per shape, speedup over BF16 cuBLAS against M (log2)
  for every non-baseline impl/variant of a family.
* :func:`roofline`: achieved TFLOPS against arithmetic intensity (FLOP/byte) with the
  measured bf16 matmul peak and copy bandwidth as the roof (GEMM families), or GB/s
  against M with the measured copy bandwidth (element-wise families).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Union


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plots need matplotlib (pip install matplotlib, or qkernels[bench]); "
                           "the JSON/CSV/markdown results were written without them.") from e
    return plt


def _series_key(r: dict) -> str:
    return r["impl"] + (f" [{r['variant']}]" if r["variant"] else "")


def _shape_key(r: dict) -> str:
    where = f"{r['model']} {r['layer']}" if r["model"] else "synthetic"
    return f"{where}\nN={r['N']} K={r['K']}"


def speedup_vs_m(rows: Sequence[dict], path: Union[str, Path], title: str = "") -> Path:
    """Speedup vs BF16 against M, one panel per (N, K) shape; returns the PNG path."""
    plt = _plt()
    rows = [r for r in rows if r["impl"] != "torch_bf16" and r["speedup_vs_bf16"] is not None]
    if not rows:
        raise ValueError("no rows with a speedup to plot")
    shapes = sorted({_shape_key(r) for r in rows})
    cols = min(4, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, sk in zip(axes.flat, shapes):
        sel = [r for r in rows if _shape_key(r) == sk]
        for series in sorted({_series_key(r) for r in sel}):
            pts = sorted((r["M"], r["speedup_vs_bf16"]) for r in sel if _series_key(r) == series)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                    lw=2 if series.startswith("qkernels") else 1, label=series)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_title(sk, fontsize=8)
        ax.set_xlabel("M (tokens)", fontsize=8)
        ax.set_ylabel("speedup vs BF16", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def roofline(rows: Sequence[dict], peaks: Dict[str, float], path: Union[str, Path], title: str = "") -> Path:
    """Roofline-style plot against the measured peaks; returns the PNG path."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    gemm = [r for r in rows if r["tflops"] is not None and r["gbps"] is not None]
    bw = peaks.get("copy_gbps")
    if gemm:
        for series in sorted({_series_key(r) for r in gemm}):
            sel = [r for r in gemm if _series_key(r) == series]
            ai = [r["tflops"] * 1e3 / r["gbps"] for r in sel]  # FLOP / byte
            ax.scatter(ai, [r["tflops"] for r in sel], s=10, label=series)
        lo, hi = 0.5, max(r["tflops"] * 1e3 / r["gbps"] for r in gemm) * 2
        if bw and peaks.get("bf16_tflops"):
            xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
            ax.plot(xs, [min(peaks["bf16_tflops"], bw * x / 1e3) for x in xs], "k--", lw=1,
                    label=f"measured roof: {peaks['bf16_tflops']} TFLOPS bf16, {bw} GB/s copy")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / minimum byte)")
        ax.set_ylabel("TFLOPS (dense-equivalent)")
    else:
        for series in sorted({_series_key(r) for r in rows}):
            pts = sorted((r["M"] * r["K"], r["gbps"]) for r in rows if _series_key(r) == series and r["gbps"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=series)
        if bw:
            ax.axhline(bw, color="k", ls="--", lw=1, label=f"measured copy {bw} GB/s")
            ax.axhline(0.8 * bw, color="gray", ls=":", lw=1, label="80% of copy")
        ax.set_xscale("log")
        ax.set_xlabel("elements (M x K)")
        ax.set_ylabel("GB/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def family_plots(rows: Sequence[dict], peaks: Dict[str, float], out_dir: Union[str, Path], stem: str) -> List[Path]:
    """Both plots of one family's rows, as ``<stem>-speedup.png`` and ``<stem>-roofline.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if any(r["speedup_vs_bf16"] is not None and r["impl"] != "torch_bf16" for r in rows):
        paths.append(speedup_vs_m(rows, out_dir / f"{stem}-speedup.png", f"{stem}: speedup vs BF16 cuBLAS"))
    if any(r["gbps"] for r in rows):
        paths.append(roofline(rows, peaks, out_dir / f"{stem}-roofline.png", f"{stem}: against measured peaks"))
    return paths
