"""``qkernels bench`` and ``qkernels advise``: argument handling and the run itself.

``main_bench(argv)`` / ``main_advise(argv)`` take the arguments after the
subcommand and return an exit code; ``quick_main()`` is the README's main job on a
GPU. The per-family benchmark entries live in :mod:`qkernels.bench.entries` (``bench/README.md``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Sequence

import torch

from . import model_estimate as me
from .provenance import REPO_ROOT, collect, gpu_slug
from .shapes import DEFAULT_MS, PRESETS, QUICK_MS, ModelSpec, resolve_model, unique_shapes

def no_gpu_message() -> str:
    """What ``qkernels bench`` says without a GPU: only suggestions that work on this install."""
    lines = ["qkernels bench: no CUDA GPU is visible (torch.cuda.is_available() is False), so there is "
             "nothing to time.",
             "  * On a machine with an NVIDIA GPU: `qkernels bench --quick` (under a minute) or `qkernels bench`.",
             "  * Here: `qkernels bench --dry-run` runs every family once on the CPU reference ops (a check of "
             "the install; it times nothing)."]
    measured = sorted(p.name for p in RESULTS_DIR.glob("*") if p.is_dir() and any(p.glob("*.json"))) \
        if RESULTS_DIR.is_dir() else []
    if measured:
        lines.append(f"  * Results measured elsewhere are in {RESULTS_DIR}: `qkernels advise --gpu {measured[0]} "
                     f"--model {QUICK_MODEL}` and `qkernels bench --summarize {RESULTS_DIR / measured[0]}`.")
    else:
        lines.append(f"  * `qkernels advise` needs benchmark results, and {RESULTS_DIR} holds none yet: run "
                     "`qkernels bench` on the GPU, then `qkernels advise --results <its folder> --model <model>`.")
    return "\n".join(lines)


def _results_dir() -> Path:
    """Where results live: ``bench/results/`` of a source checkout (the committed runs), or
    ``./qkernels-results/`` of the working directory for an installed package."""
    checkout = REPO_ROOT / "bench" / "results"
    return checkout if checkout.is_dir() else Path.cwd() / "qkernels-results"


RESULTS_DIR = _results_dir()
QUICK_MODEL = "llama-3.1-8b"
ESTIMATE_BATCHES = (1, 16, 64)


def _int_list(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(vals))


def _entries_module():
    """The package of the per-family benchmark entries (:mod:`qkernels.bench.entries`)."""
    from . import entries

    return entries


def bench_parser() -> argparse.ArgumentParser:
    FAMILIES = _entries_module().FAMILIES

    p = argparse.ArgumentParser(
        prog="qkernels bench",
        description="Time the qkernels families against BF16 cuBLAS and peers on Linear shapes of real models. "
                    "Writes <family>-<date>-<commit>.{json,csv,md} (format qkernels.bench/1) and PNG plots.")
    p.add_argument("--family", "-f", action="append", choices=FAMILIES,
                   help="family to run (repeatable; default: every family built for this GPU)")
    p.add_argument("--model", "-m", action="append", default=None,
                   help=f"model preset ({', '.join(PRESETS)}) or a HF config.json path (repeatable; "
                        f"default: all presets, --quick: {QUICK_MODEL})")
    p.add_argument("--no-synthetic", dest="synthetic", action="store_false",
                   help="leave out the synthetic 8192x8192 (N x K) shape")
    p.add_argument("--m", dest="ms", type=_int_list, default=None,
                   help=f"M values, e.g. 1,16,128 (default {','.join(map(str, DEFAULT_MS))}; --quick "
                        f"{','.join(map(str, QUICK_MS))})")
    p.add_argument("--variant", action="append", default=None,
                   help="only these variants (repeatable, exact names; `--list` shows them)")
    p.add_argument("--quick", action="store_true",
                   help=f"under a minute on an H100: {QUICK_MODEL} + synthetic, fewer M, variants and repeats")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip the peers (BF16 is always run)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats per measurement (default 50, quick 15)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10, quick 3)")
    p.add_argument("--eager", action="store_true", help="time eager calls instead of CUDA-graph replays")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where files go (default: bench/results/<gpu-slug>/ of the source tree)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="do not write PNG plots")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no new family, shape or variant this many seconds after the start; what was "
                        "measured is written as usual (the provenance's 'stopped' says where it stopped)")
    p.add_argument("--batch", type=_int_list, default=None,
                   help=f"batch sizes of the model-level estimate (default {','.join(map(str, ESTIMATE_BATCHES))})")
    p.add_argument("--seq-len", type=int, default=2048, help="prompt length of the prefill estimate (default 2048)")
    p.add_argument("--list", action="store_true", help="list families (and whether they run here), variants, presets")
    p.add_argument("--summarize", type=Path, metavar="DIR",
                   help="only (re)write DIR/README.md (tables + plots) from the results files in DIR")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: run every family's entry once on the CPU reference ops at one small shape, "
                        "write and validate its results files (in a temporary folder, or --out-dir) and say what "
                        "ran. Checks an install; measures nothing")
    return p


def _list(bench, out=sys.stdout) -> int:
    print("families:", file=out)
    for fam in bench.FAMILIES:
        entry = bench.load(fam)
        why = entry.available()
        print(f"  {fam:<10} {'runs here' if not why else 'not here: ' + why}", file=out)
        print(f"  {'':<10} variants: {', '.join(entry.variants(False))}", file=out)
    print("model presets:", file=out)
    for m in PRESETS.values():
        print(f"  {m.name:<14} " + ", ".join(f"{s.layer} {s.N}x{s.K}" for s in m.linears()), file=out)
    return 0


def _stem(family: str, prov: dict, quick: bool) -> str:
    date = prov["date"][:10].replace("-", "")
    short = (prov["git_commit"] or "nocommit")[:8] + ("-dirty" if prov["git_dirty"] else "")
    return f"{family}-{date}-{short}" + ("-quick" if quick else "")


def main_bench(argv: Sequence[str]) -> int:
    try:
        bench = _entries_module()
    except RuntimeError as e:
        print(f"qkernels bench: {e}", file=sys.stderr)
        return 2
    args = bench_parser().parse_args(list(argv))
    if args.list:
        return _list(bench)
    if args.summarize is not None:
        from .summary import summarize

        try:
            print(f"wrote {summarize(args.summarize, plots=args.plots)}")
        except (ValueError, RuntimeError) as e:
            print(f"qkernels bench --summarize: {e}", file=sys.stderr)
            return 2
        return 0
    if args.dry_run:
        return dry_run(bench, args.family or bench.FAMILIES, args.out_dir)
    try:
        models = [resolve_model(m) for m in (args.model or ([QUICK_MODEL] if args.quick else list(PRESETS)))]
    except ValueError as e:
        print(f"qkernels bench: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return 1
    return _run(bench, args, models, command="qkernels bench " + " ".join(shlex.quote(a) for a in argv))


def _entries(bench, args) -> list:
    entries = []
    for fam in args.family or bench.FAMILIES:
        entry = bench.load(fam)
        why = entry.available()
        if why:
            print(f"[{fam}] not available here: {why}", file=sys.stderr)
            continue
        if args.variant:
            base = entry
            chosen = [v for v in base.variants(False) if v in args.variant]
            if not chosen:
                print(f"[{fam}] none of the variants {args.variant} exist (it has: {', '.join(base.variants(False))})",
                      file=sys.stderr)
                continue
            entry = _Filtered(base, chosen)
        entries.append(entry)
    return entries


class _Filtered:
    """An entry restricted to some variants."""

    def __init__(self, entry, variants: List[str]):
        self._entry, self._variants = entry, variants

    def variants(self, quick: bool) -> List[str]:
        return self._variants

    def __getattr__(self, name):
        return getattr(self._entry, name)


def _run(bench, args, models: List[ModelSpec], command: str) -> int:
    from .peaks import measure_peaks
    from .results import ResultsWriter, markdown_table
    from .suite import BenchContext, run_suite
    from .timing import Timer, TimingConfig

    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    entries = _entries(bench, args)
    if not entries:
        print("qkernels bench: no family can run on this machine (`qkernels info` shows what was built).",
              file=sys.stderr)
        return 1
    cfg = TimingConfig.quick() if args.quick else TimingConfig()
    cfg = TimingConfig(warmup=args.warmup or cfg.warmup, reps=args.reps or cfg.reps, use_graph=not args.eager)
    timer = Timer(cfg)
    print("measuring device peaks (bf16 matmul 8192^3, 1 GiB copy)...", file=sys.stderr)
    peaks = measure_peaks(timer)
    prov = collect(command=command, measured_peaks=peaks, extra={"timing": cfg.describe()})
    out_dir = args.out_dir or RESULTS_DIR / gpu_slug(prov["gpu"])
    shapes = unique_shapes(models, args.synthetic)
    ms = args.ms or list(QUICK_MS if args.quick else DEFAULT_MS)
    ctx = BenchContext(timer=timer, quick=args.quick, peers=args.peers)
    print(f"{prov['gpu']} (sm {prov['sm']}): {peaks['bf16_tflops']} TFLOPS bf16, {peaks['copy_gbps']} GB/s copy; "
          f"families {', '.join(e.NAME for e in entries)}; {len(shapes)} shapes; M {ms}", file=sys.stderr)
    all_rows: List[dict] = []
    written: List[Path] = []
    writer = None
    not_run: List[str] = []
    try:
        for entry in entries:
            if deadline is not None and time.monotonic() > deadline:
                not_run.append(entry.NAME)
                continue
            writer = ResultsWriter(out_dir, _stem(entry.NAME, prov, args.quick), dict(prov, skipped=[]))
            with writer:
                if run_suite(ctx, [entry], shapes, ms, writer, deadline=deadline):
                    print(f"qkernels bench: time limit ({args.time_limit:g} s) reached in {entry.NAME}: "
                          f"{writer.provenance['stopped']}", file=sys.stderr)
            all_rows += writer.rows
            written.append(writer.json_path)
            if args.plots:
                written += _plots(writer, out_dir)
            if args.quick:
                print(markdown_table(writer.rows, peaks))
    except KeyboardInterrupt:
        kept = f"{writer.json_path} (and .csv/.md)" if writer else "nothing yet"
        print(f"\ninterrupted: the rows measured so far are in {kept}", file=sys.stderr)
        return 130
    if not_run:
        print(f"qkernels bench: time limit ({args.time_limit:g} s) reached: families not run: {', '.join(not_run)}",
              file=sys.stderr)
    for model in models:
        md = "\n".join(me.markdown(model, me.estimate(model, all_rows, b, args.seq_len), b, args.seq_len)
                       for b in (args.batch or ESTIMATE_BATCHES))
        path = out_dir / f"{_stem('estimate-' + model.name, prov, args.quick)}.md"
        path.write_text(md)
        written.append(path)
        print(md)
    print("wrote:\n  " + "\n  ".join(map(str, written)))
    return 0


class _DryTimer:
    """Calls the function once and reports its wall time: a dry run checks that everything runs."""

    def time(self, fn):
        import time

        from ..testing.timing import Timing

        t0 = time.perf_counter()
        fn()
        us = max((time.perf_counter() - t0) * 1e6, 1e-3)
        return Timing(us, us, us, "eager")


DRY_SHAPE = (256, 256)  # N, K: a multiple of every family's tile (w4a16, 2:4, fp8 blocks)
DRY_MS = (1, 16)


class _DryEntry:
    """An entry restricted to small shapes and M (the shapes an entry adds itself, e.g. DeepSeek-V3's, are dropped)."""

    def __init__(self, entry):
        self._entry = entry

    def select(self, shapes, ms, quick):
        if hasattr(self._entry, "select"):
            shapes, ms = self._entry.select(shapes, ms, False)
        small = [s for s in shapes if s.K <= DRY_SHAPE[1] and (s.N is None or s.N <= DRY_SHAPE[0])]
        return small, [m for m in ms if m <= max(DRY_MS)] or list(DRY_MS)

    def __getattr__(self, name):
        return getattr(self._entry, name)


def dry_run(bench, families: Sequence[str], out_dir=None, log=None) -> int:
    """``qkernels bench --dry-run``: every entry of ``families`` on the CPU (the reference ops), without peers,
    at N = K = 256 and M in (1, 16); the results files are written and validated against the schema.
    Returns 0 if every family produced qkernels rows and nothing was skipped."""
    log = log or sys.stderr
    import contextlib
    import io
    import tempfile

    from .results import ResultsWriter, load
    from .shapes import LinearShape
    from .suite import BenchContext, run_suite

    prov = collect(command="qkernels bench --dry-run", extra={"dry_run": "CPU reference ops; times are not measurements"})
    ctx = BenchContext(timer=_DryTimer(), peers=False, device=torch.device("cpu"))
    shapes = [LinearShape(*DRY_SHAPE, model="dry-run", layer="synthetic")]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(out_dir or tmp)
        for fam in families:
            writer = ResultsWriter(where, f"dry-run-{fam}", dict(prov, skipped=[]))
            chatter = io.StringIO()  # what entries print (e.g. a peer that cannot run on the CPU): shown on failure
            with writer, contextlib.redirect_stderr(chatter), contextlib.redirect_stdout(chatter):
                run_suite(ctx, [_DryEntry(bench.load(fam))], shapes, list(DRY_MS), writer, log=chatter)
            doc = load(writer.json_path)  # raises if the file does not follow the schema
            ours = [r for r in doc["rows"] if r["impl"] != "torch_bf16"]
            skipped = doc["provenance"].get("skipped", [])
            variants = sorted({str(r["variant"]) for r in ours})
            print(f"[{fam}] {len(ours)} qkernels rows ({len(variants)} variants), {len(doc['rows']) - len(ours)} "
                  f"bf16 baseline rows, {len(skipped)} skipped", file=log)
            for sk in skipped:
                print(f"    skipped {sk['variant']}: {sk['reason']}", file=log)
            if not ours or skipped:
                failed.append(fam)
                print("    its output:\n" + "\n".join("      " + line for line in chatter.getvalue().splitlines()[-20:]),
                      file=log)
        kept = f"; files in {where}" if out_dir else " (files validated, then removed)"
    print(f"qkernels bench --dry-run: {len(families) - len(failed)} of {len(families)} families ran on the CPU "
          f"reference ops{kept}." + (f" Failed: {', '.join(failed)}." if failed else ""), file=log)
    return 1 if failed else 0


def _plots(writer, out_dir: Path) -> List[Path]:
    from .plots import family_plots

    try:
        return family_plots(writer.rows, writer.provenance["measured_peaks"], out_dir / "plots", writer.stem)
    except RuntimeError as e:  # matplotlib missing
        print(f"plots skipped: {e}", file=sys.stderr)
        return []


def quick_main() -> int:
    """The README's main job: ``qkernels bench --quick`` of every built family on a GPU;
    without one, the no-GPU message and 0 (the caller then runs the CPU demo)."""
    if not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return 0
    return main_bench(["--quick"])


# ---------------------------------------------------------------- advise
def advise_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkernels advise",
        description="Which quantisation scheme is fastest for a model at which batch size on a GPU, from "
                    "measured benchmark rows (an estimate of the GEMM share of each step), with quality caveats.")
    p.add_argument("--model", "-m", required=True,
                   help=f"model preset ({', '.join(PRESETS)}) or a HF config.json path")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gpu", help="GPU slug with committed results in bench/results/<gpu>/ (default: this GPU's)")
    src.add_argument("--results", type=Path, action="append",
                     help="results files or folders to use instead (repeatable)")
    p.add_argument("--batch", type=_int_list, default=None, help="batch sizes (default 1,4,16,64,256)")
    p.add_argument("--seq-len", type=int, default=2048, help="prompt length of the prefill step (default 2048)")
    return p


def main_advise(argv: Sequence[str]) -> int:
    from .advise import DEFAULT_BATCHES, advise, load_rows

    args = advise_parser().parse_args(list(argv))
    try:
        model = resolve_model(args.model)
    except ValueError as e:
        print(f"qkernels advise: {e}", file=sys.stderr)
        return 2
    if args.results:
        paths, where = args.results, ", ".join(map(str, args.results))
    else:
        slug = args.gpu or (gpu_slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else None)
        if slug is None:
            have = sorted(p.name for p in RESULTS_DIR.glob("*") if p.is_dir()) if RESULTS_DIR.exists() else []
            print("qkernels advise: no CUDA GPU visible; name one with --gpu (committed results: "
                  f"{', '.join(have) or 'none'}) or give --results.", file=sys.stderr)
            return 2
        paths, where = [RESULTS_DIR / slug], str(RESULTS_DIR / slug)
    try:
        rows, provs = load_rows(paths)
    except (OSError, ValueError) as e:
        print(f"qkernels advise: cannot read results ({e})", file=sys.stderr)
        return 2
    if not rows:
        print(f"qkernels advise: no benchmark rows in {where}. Measure them on that GPU with "
              f"`qkernels bench --model {args.model}`, then rerun.", file=sys.stderr)
        return 1
    sms = {p["sm"] for p in provs if p.get("sm")}
    sm = tuple(int(x) for x in sorted(sms)[0].split(".")) if len(sms) == 1 else None
    gpu = ", ".join(sorted({p["gpu"] for p in provs if p.get("gpu")})) or "unknown GPU"
    if any(not p.get("git_commit") or p.get("git_dirty") is not False for p in provs):
        print("note: some results come from a dirty or unknown tree (not evidence): "
              + ", ".join(p["file"] for p in provs if p.get("git_dirty") is not False), file=sys.stderr)
    print(advise(model, rows, sm, gpu, args.batch or DEFAULT_BATCHES, args.seq_len))
    print(f"(from {len(rows)} rows in {where}, dated {min(p['date'] for p in provs)[:10]}"
          f"..{max(p['date'] for p in provs)[:10]})")
    return 0
