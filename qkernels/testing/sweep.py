"""Randomized sweep: every family's ops on random shapes, scale kinds and dtypes, against the
reference.

Each family has one case generator, the module ``qkernels.testing.sweeps.<family>``, with

    make_case(rng: random.Random, gen: torch.Generator, ctx: SweepContext) -> Case

Case ``i`` of a sweep is drawn from generators seeded by ``(seed, family, i)`` alone, so a sweep
can resume after case ``i`` (``--start``) and any failure is reproduced by its index (on the
same kind of device: the inputs are drawn there, so that large cases cost no CPU time). A case
holds the op's arguments; :func:`run_case` copies them for the reference, runs the op on them
(the CUDA kernel), runs the reference (the op's CPU implementation on CPU copies, or, for large
GEMMs, the same pure-torch reference function on device copies) and compares the outputs:
bit-exactly, or by ``‖out − ref‖ / ‖ref‖``. Weight layouts are prepared with the reference
functions, never with the kernels under test.
On a machine without a GPU (``device="cpu"``) both sides run the reference: that checks the
generators (every case must pass the ops' input checks) and this machinery, not the kernels.

Families are discovered from :func:`qkernels.ops.family_ops`; a family without a generator is
reported as such (``missing generator``), never silently left out. ``python -m
qkernels.testing.sweep --help`` runs a sweep and writes one JSON line per case (``start`` before
the op runs, then its result), so a crash or a hang still names the case that caused it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .numerics import rel_err

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STICKY = 0, 1, 2, 75

# Substrings of the errors after which a CUDA context is unusable (every later call fails).
STICKY_MARKERS = ("illegal memory access", "unspecified launch failure", "misaligned address",
                  "illegal instruction", "device-side assert", "an illegal", "unknown error",
                  "CUDA error: launch timeout", "uncorrectable ECC")


@dataclass
class SweepContext:
    """Where the sweep runs and what this build can run there."""

    device: str = "cpu"
    capability: Optional[int] = None  # major*10+minor of the GPU; None on CPU
    small: bool = False  # small shapes only (memcheck runs: 10-100x slower)
    forced_archs: Tuple[int, ...] = ()  # older scaled_mm arch paths runnable here (QKERNELS_FORCE_ARCH)

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def has_kernel(self, op: str) -> bool:
        """True if ``op`` runs here: always on CPU (the reference); on a GPU if the library
        registered a CUDA kernel for it or its CUDA implementation comes from Python (Triton)."""
        if not self.on_gpu:
            return True
        from .. import _loader
        from ..ops import python_cuda_ops

        return _loader.has_cuda_kernel(op) or op in python_cuda_ops()


@dataclass
class Case:
    """One random call of one op, with how to judge its result.

    ``args``: the op's positional arguments (tensors on the sweep's device, numbers, dtypes, None).
    ``compare``: ``"exact"`` (bitwise) or ``"rel"`` (``rel_err <= tol``).
    ``outputs``: ``(result, args) -> tensors to compare``; default: the result itself (for the
    ``*_out`` ops, return the written argument). ``ref_on``: where the reference runs: ``"cpu"``
    (the op's CPU implementation on CPU copies; for bit-exact checks) or ``"device"`` (the same
    pure-torch reference function called on the device copies: fast for large GEMMs). ``forced_arch``: ``QKERNELS_FORCE_ARCH`` while the
    op runs on the device. ``misalign``: the first tensor is placed at an address 1 element past a
    16-byte boundary on the device. ``skip``: why this case cannot run here (recorded, not failed).
    """

    op: str
    args: tuple
    desc: str
    compare: str = "exact"
    tol: float = 0.0
    outputs: Optional[Callable[[Any, tuple], Sequence[torch.Tensor]]] = None
    forced_arch: Optional[int] = None
    misalign: bool = False
    skip: Optional[str] = None
    ref_on: str = "cpu"


@dataclass
class CaseResult:
    index: int
    op: str
    desc: str
    status: str  # passed | failed | error | skipped
    detail: str = ""
    seconds: float = 0.0
    sticky: bool = False

    def to_json(self) -> dict:
        return {"event": "result", "index": self.index, "op": self.op, "desc": self.desc, "status": self.status,
                "detail": self.detail, "seconds": round(self.seconds, 4), "sticky": self.sticky}


# ----------------------------------------------------------------- discovery
def generator_module(family: str):
    """The family's generator module, or None if it has none."""
    try:
        return importlib.import_module(f"{__package__}.sweeps.{family}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.sweeps.{family}":
            return None
        raise


def families() -> Dict[str, bool]:
    """{family: has a generator} for every family of this install (``qkernels.ops.family_ops``).
    A generator module that fails to import counts as present: its sweep then fails with the error."""
    from ..ops import family_ops

    out = {}
    for f in family_ops():
        try:
            out[f] = generator_module(f) is not None
        except Exception:  # noqa: BLE001  (reported by the sweep of that family)
            out[f] = True
    return out


def case_rngs(seed: int, family: str, index: int, device: str = "cpu") -> Tuple[random.Random, torch.Generator]:
    """The two generators case ``index`` of ``family`` is drawn from (depend on nothing else);
    tensors are drawn on ``device`` (``gen.device``)."""
    rng = random.Random(f"{seed}:{family}:{index}")
    gen = torch.Generator(device=device).manual_seed(rng.getrandbits(62))
    return rng, gen


def make_case(family: str, seed: int, index: int, ctx: SweepContext) -> Case:
    mod = generator_module(family)
    if mod is None:
        raise LookupError(f"family {family!r} has no sweep generator (add qkernels/testing/sweeps/{family}.py)")
    rng, gen = case_rngs(seed, family, index, ctx.device)
    return mod.make_case(rng, gen, ctx)


# ----------------------------------------------------------------- running one case
@contextlib.contextmanager
def forced_arch(arch: Optional[int]):
    """Dispatch as if the GPU were ``arch`` (the C++ glue reads QKERNELS_FORCE_ARCH per call)."""
    old = os.environ.get("QKERNELS_FORCE_ARCH")
    if arch is not None:
        os.environ["QKERNELS_FORCE_ARCH"] = str(arch)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QKERNELS_FORCE_ARCH", None)
        else:
            os.environ["QKERNELS_FORCE_ARCH"] = old


def _misaligned(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``x`` that starts 1 element past the allocation's 16-byte alignment."""
    base = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    return base[1:].view(x.shape).copy_(x)


def _copy_to(x: Any, device: str) -> Any:
    return x.detach().to(device, copy=True) if isinstance(x, torch.Tensor) else x


def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _bits(t: torch.Tensor) -> torch.Tensor:
    # a fresh flat copy: a "contiguous" tensor may keep any stride on a size-1 dim (a column-major
    # [M, 1] scale tensor), which view(uint8) refuses
    t = t.detach().cpu().reshape(-1).clone(memory_format=torch.contiguous_format)
    return t.view(torch.uint8) if t.numel() else t


def compare(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], how: str, tol: float) -> Optional[str]:
    """None if ``outs`` match ``refs``, else what differs (which output, how much)."""
    if len(outs) != len(refs):
        return f"{len(outs)} outputs, the reference has {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o is None or r is None:
            if (o is None) != (r is None):
                return f"output {i}: {'None' if o is None else 'a tensor'} vs reference {'None' if r is None else 'a tensor'}"
            continue
        if o.dtype != r.dtype or tuple(o.shape) != tuple(r.shape):
            return f"output {i}: {o.dtype} {tuple(o.shape)} vs reference {r.dtype} {tuple(r.shape)}"
        if how == "exact":
            ob, rb = _bits(o), _bits(r)
            if not torch.equal(ob, rb):
                n_bad = int((ob != rb).sum()) if ob.dtype == torch.uint8 else -1
                return f"output {i}: not bit-identical ({n_bad} of {ob.numel()} bytes differ)"
        else:
            if o.is_floating_point() and not torch.isfinite(o.detach().float().cpu()).all() \
                    and torch.isfinite(r.float()).all():
                return f"output {i}: non-finite values where the reference has none (unwritten output?)"
            e = rel_err(o, r)
            if not e <= tol:
                return f"output {i}: rel_err {e:.3e} > tol {tol:.1e}"
    return None


def _is_sticky(exc: BaseException) -> bool:
    """True if the CUDA context is now unusable (an asynchronous kernel fault)."""
    msg = str(exc)
    if not any(m in msg for m in STICKY_MARKERS):
        return False
    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1).item()
        return False
    except Exception:  # noqa: BLE001  (any failure here means the context is gone)
        return True


def run_case(index: int, case: Case, ctx: SweepContext,
             impl: Optional[Callable[..., Any]] = None) -> CaseResult:
    """Run ``case`` on ``ctx.device`` (or through ``impl``, for tests) and compare with the reference."""
    res = CaseResult(index, case.op, case.desc, "passed")
    t0 = time.perf_counter()
    if case.skip:
        res.status, res.detail = "skipped", case.skip
        return res
    if not ctx.has_kernel(case.op):
        res.status, res.detail = "skipped", f"qkernels::{case.op} has no CUDA kernel in this build"
        return res
    op = getattr(torch.ops.qkernels, case.op)
    try:
        # the reference's own copies first: the op may write into its arguments (*_out ops)
        ref_args = tuple(_copy_to(a, ctx.device if case.ref_on == "device" else "cpu") for a in case.args)
        args = case.args
        if case.misalign and isinstance(args[0], torch.Tensor) and args[0].numel():
            args = (_misaligned(args[0]),) + tuple(args[1:])
        with forced_arch(case.forced_arch if ctx.on_gpu else None):
            out = (impl or op)(*args)
            outs = case.outputs(out, args) if case.outputs else _as_tuple(out)
            outs = [o.cpu() if isinstance(o, torch.Tensor) else o for o in outs]  # synchronises
        if case.ref_on == "device":
            from ..ops._registry import REFERENCES

            ref = REFERENCES[case.op](*ref_args)
        else:
            ref = op(*ref_args)
        refs = case.outputs(ref, ref_args) if case.outputs else _as_tuple(ref)
        why = compare(outs, refs, case.compare, case.tol)
        if why:
            res.status, res.detail = "failed", why
    except Exception as e:  # noqa: BLE001  (recorded per case; the sweep goes on)
        res.status = "error"
        res.detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
        res.sticky = ctx.on_gpu and _is_sticky(e)
        if not res.sticky and os.environ.get("QKERNELS_SWEEP_TRACEBACK") == "1":
            traceback.print_exc()
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------- a sweep
@dataclass
class SweepSummary:
    family: str
    requested: int
    results: List[CaseResult] = field(default_factory=list)
    stopped: str = ""  # why the sweep stopped early ("" if it ran every case)

    def counts(self) -> Dict[str, int]:
        c: Dict[str, int] = {}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def ok(self) -> bool:
        return not any(r.status in ("failed", "error") for r in self.results)


def sweep(family: str, cases: int, seed: int, ctx: SweepContext, start: int = 0,
          time_limit: Optional[float] = None, log: Optional[Callable[[dict], None]] = None,
          impl: Optional[Callable[..., Any]] = None) -> SweepSummary:
    """Run cases ``start .. cases-1`` of ``family``; stop early at ``time_limit`` seconds or on a
    sticky CUDA error (the context is then unusable: resume in a new process at the next index)."""
    summary = SweepSummary(family, cases)
    t0 = time.monotonic()
    for i in range(start, cases):
        if time_limit is not None and time.monotonic() - t0 > time_limit:
            summary.stopped = f"time limit {time_limit:.0f} s reached after {i - start} cases (next index {i})"
            break
        try:
            case = make_case(family, seed, i, ctx)
        except Exception as e:  # noqa: BLE001  (a broken generator is a finding, not a crash)
            case = None
            res = CaseResult(i, "?", "generator", "error", f"generator failed: {type(e).__name__}: {e}")
        if case is not None:
            if log:
                log({"event": "start", "index": i, "op": case.op, "desc": case.desc})
            res = run_case(i, case, ctx, impl)
        summary.results.append(res)
        if log:
            log(res.to_json())
        if res.sticky:
            summary.stopped = f"sticky CUDA error at case {i} ({res.op}: {res.desc}); resume with --start {i + 1}"
            break
    return summary


def format_summary(s: SweepSummary) -> str:
    c = s.counts()
    parts = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    lines = [f"sweep {s.family}: {len(s.results)} of {s.requested} cases run: {parts or 'none'}"
             + (f"; stopped: {s.stopped}" if s.stopped else "")]
    for r in s.results:
        if r.status in ("failed", "error"):
            lines.append(f"  case {r.index} {r.status}: {r.op} {r.desc}: {r.detail}")
    return "\n".join(lines)


def default_context(device: str, small: bool = False) -> SweepContext:
    """The context of this machine: its GPU's capability and the older scaled_mm paths this build
    runs here (groups whose machine code or PTX runs on this GPU)."""
    if device == "cpu" or not torch.cuda.is_available():
        return SweepContext("cpu", None, small, ())
    major, minor = torch.cuda.get_device_capability()
    cap = 10 * major + minor
    from .. import _loader

    bi = _loader.build_info
    groups = bi.get("groups", {}).get("scaled_mm", {})
    forced = []
    for arch, group in ((75, "SM75"), (80, "SM80"), (89, "SM89")):
        archs = groups.get(group, [])
        runs = bool(archs) and (bool(bi.get("ptx")) or any(
            (int(a[:-1]) == cap) if a.endswith("a") else (int(a) // 10 == cap // 10 and int(a) <= cap) for a in archs))
        if arch < cap and runs and _loader.library_path is not None:
            forced.append(arch)
    return SweepContext(device, cap, small, tuple(forced))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qkernels.testing.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", "-f", action="append", help="family (repeatable; default: every family)")
    p.add_argument("--cases", type=int, default=200, help="cases per family (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case index (resume after a crash)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="small shapes only (for compute-sanitizer runs)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop starting new cases this many seconds after the sweep's start (after its imports)")
    p.add_argument("--deadline", type=float, default=None,
                   help="stop starting new cases at this time (seconds since the epoch, as time.time()): a caller's "
                        "clock, so this process's imports and CUDA start count against it")
    p.add_argument("--jsonl", default=None, help="append one JSON line per case event to this file")
    p.add_argument("--list", action="store_true", help="list the families and whether they have a generator")
    a = p.parse_args(argv)
    fams = families()
    if a.list:
        for f, has in fams.items():
            print(f"{f:<12} {'generator' if has else 'NO GENERATOR (add qkernels/testing/sweeps/%s.py)' % f}")
        return EXIT_OK
    chosen = a.family or list(fams)
    unknown = [f for f in chosen if f not in fams]
    if unknown:
        print(f"unknown families {unknown}; this install has {list(fams)}", file=sys.stderr)
        return EXIT_USAGE
    if a.device != "cpu" and not torch.cuda.is_available():
        print(f"--device {a.device}: no CUDA GPU is visible", file=sys.stderr)
        return EXIT_USAGE
    ctx = default_context(a.device, a.small)
    out = open(a.jsonl, "a") if a.jsonl else None

    def log(rec: dict) -> None:
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    print(f"sweep on {ctx.device} (sm_{ctx.capability}, forced arch paths {list(ctx.forced_archs)}), "
          f"seed {a.seed}, cases {a.start}..{a.cases - 1}{', small shapes' if a.small else ''}", flush=True)
    rc = EXIT_OK
    deadline = None if a.time_limit is None else time.monotonic() + a.time_limit
    if a.deadline is not None:  # the caller's wall clock, on this process's monotonic one
        at = time.monotonic() + (a.deadline - time.time())
        deadline = at if deadline is None else min(deadline, at)
    for f in chosen:
        if not fams[f]:
            log({"event": "missing_generator", "family": f})
            print(f"sweep {f}: no generator (add qkernels/testing/sweeps/{f}.py)", flush=True)
            rc = max(rc, EXIT_FAILED)
            continue
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        s = sweep(f, a.cases, a.seed, ctx, a.start, left, lambda r, f=f: log({"family": f, **r}))
        log({"event": "summary", "family": f, "counts": s.counts(), "requested": a.cases, "start": a.start,
             "stopped": s.stopped})
        print(format_summary(s), flush=True)
        if any(r.sticky for r in s.results):
            return EXIT_STICKY
        if not s.ok:
            rc = EXIT_FAILED
    return rc


if __name__ == "__main__":
    sys.exit(main())
