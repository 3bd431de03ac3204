"""The ``qkernels`` command.

  qkernels info        what was built, for which archs, and how each op runs here
  qkernels quickstart  the README's main job: a quick benchmark on a GPU; without
                       one, a clear message and a CPU demo of the loader
  qkernels bench ...   the benchmark suite (``qkernels bench --help``)
  qkernels advise ...  which scheme to use for a model on a GPU, from measured results
  qkernels tune ...    time the compiled kernel candidates on this GPU and write its config
                       (``qkernels tune --help``; qkernels.configs)
  qkernels demo        the CPU loader demo alone
"""
from __future__ import annotations

import json
import platform
import sys
from typing import List, Optional

import torch


def _gpu_line() -> str:
    if not torch.cuda.is_available():
        return "none visible (torch.cuda.is_available() is False)"
    lines = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"[{i}] {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                     f"{p.total_memory / 2**30:.0f} GiB")
    return "; ".join(lines)


def info(out=sys.stdout) -> int:
    """Print versions, the build, and which implementation each op uses on this machine."""
    import qkernels
    from qkernels import _loader
    from qkernels.ops import family_ops, python_cuda_ops

    p = lambda *a: print(*a, file=out)
    bi = _loader.build_info
    p(f"qkernels {qkernels.__version__}  (python {platform.python_version()}, torch {torch.__version__}, "
      f"torch CUDA {torch.version.cuda})")
    p(f"GPU: {_gpu_line()}")
    if bi.get("built"):
        p(f"Build: CUDA {bi.get('cuda')}, archs requested '{bi.get('archs_requested')}', ptx={bi.get('ptx')}, "
          f"{bi.get('build_type')}, against torch {bi.get('torch')}")
        retargeted = bi.get("retargeted", {})
        for fam, groups in sorted(bi.get("groups", {}).items()):
            virt = retargeted.get(fam, {})
            desc = ", ".join(f"{tag}: sm_{'/sm_'.join(archs)}" + (f" from compute_{virt[tag]}" if tag in virt else "")
                             for tag, archs in sorted(groups.items()))
            p(f"  {fam:<10} {desc}")
        if any(retargeted.values()):
            p(f"  (QKERNELS_SASS_FOR={bi.get('sass_for')}: the 'from compute_NN' groups hold only sm_{bi.get('sass_for')} "
              "machine code of an older arch's kernels, for QKERNELS_FORCE_ARCH tests on that GPU)")
        skipped = [f for f in bi.get("families_requested", []) if f not in bi.get("groups", {})]
        if skipped:
            p(f"  not built for these archs: {', '.join(skipped)}")
    else:
        p(f"Build: no CUDA code ({bi.get('reason', 'no build info: running from a source tree?')})")
    src = ("from $QKERNELS_LIBRARY" if _loader.library_source == _loader.LIBRARY_ENV
           else "installed in the package")
    prov = ", ".join(f"{k} {bi[k]}" for k in ("git_commit", "git_dirty", "date") if k in bi)
    p(f"Library ({src}{'; ' + prov if prov else ''}): "
      f"{_loader.library_path or 'not loaded: ' + str(_loader.load_error)}")
    p(f"Here: {'CUDA GPU ' + _gpu_arch() if torch.cuda.is_available() else 'no CUDA GPU visible: every op runs its CPU reference'}")
    p("Ops (CPU tensors always run the pure-torch reference; 'usable here' = this machine's GPU runs the kernel):")
    from qkernels.ops.schemas import SCHEMAS

    for fam, names in family_ops().items():
        for n in names:
            if "Tensor" not in SCHEMAS[n]:  # e.g. scaled_mm_supports: answered from the build info
                cuda = "capability query (no tensors; any device)"
            elif n in python_cuda_ops():  # e.g. fp8_block_scaled_mm_triton (the sm89 path)
                from qkernels.triton_kernels import IMPORT_ERROR

                cuda = "Triton kernel (registered from Python; " + (
                    "triton importable)" if IMPORT_ERROR is None else f"unusable here: {IMPORT_ERROR})")
                if IMPORT_ERROR is None and not torch.cuda.is_available():
                    cuda += "; not usable here (no CUDA GPU)"
            elif _loader.has_cuda_kernel(n):
                cuda = f"CUDA kernel compiled ({_archs(bi, fam)}); {_usable_here(bi, fam)}"
            else:
                cuda = "no CUDA kernel (CPU reference only)"
            p(f"  {fam:<10} qkernels::{n:<38} {cuda}")
    if torch.cuda.is_available() and bi.get("built"):
        arch = "".join(map(str, torch.cuda.get_device_capability(0)))
        built = {a.rstrip("a") for g in bi.get("groups", {}).values() for archs in g.values() for a in archs}
        if arch not in built and not bi.get("ptx"):
            p(f"Note: this GPU is sm_{arch} but no kernel was built for it: ops on CUDA tensors will raise. "
              f"Rebuild with QKERNELS_CUDA_ARCHS={arch if arch != '90' else '90a'}.")
    from qkernels import configs  # the dispatch tables in use (per-GPU config or compiled-in defaults)

    for line in configs.describe():
        p(line)
    return 0


def _gpu_arch() -> str:
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def _archs(bi: dict, fam: str) -> str:
    archs = sorted({a for archs in bi.get("groups", {}).get(fam, {}).values() for a in archs})
    return "sm_" + "/sm_".join(archs) if archs else "archs unknown"


def _usable_here(bi: dict, fam: str) -> str:
    """Whether this machine's GPU runs the family's compiled kernels: a cubin runs on its own major arch at
    >= its minor (sm_90a only on sm_90); PTX JITs on anything newer. The per-dtype / per-op limits (FP8
    needs sm89+, 2:4 sm90) are the capability queries' business."""
    if not torch.cuda.is_available():
        return "not usable here (no CUDA GPU)"
    major, minor = torch.cuda.get_device_capability(0)
    cap = major * 10 + minor
    ok = False
    for archs in bi.get("groups", {}).get(fam, {}).values():
        for a in archs:
            if a.endswith("a"):
                ok |= int(a[:-1]) == cap
            elif a.isdigit():
                ok |= (int(a) // 10 == major and int(a) <= cap) or (bool(bi.get("ptx")) and int(a) <= cap)
    return f"usable here ({_gpu_arch()})" if ok else f"NOT usable here: this GPU is {_gpu_arch()}"


def quickstart() -> int:
    """The README's main job."""
    if torch.cuda.is_available():
        from qkernels.bench.cli import quick_main

        return quick_main()
    print("qkernels: no CUDA GPU is visible, so there is nothing to benchmark here.\n"
          "Running the CPU demo instead: a tiny model quantized with compressed-tensors, loaded by\n"
          "qkernels.nn and run through the CPU reference ops (the same math the CUDA kernels do).\n")
    return demo()


def demo() -> int:
    from qkernels.nn.demo import main as demo_main

    return demo_main() or 0


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `qkernels info | head`: the reader went away, not an error
        sys.stderr.close()
        return 0


COMMANDS = ("info", "quickstart", "bench", "advise", "tune", "demo")


def usage() -> str:
    """The module docstring as plain text (no reST backticks)."""
    return "usage: qkernels <command> [args]\n\n" + __doc__.replace("``", "").strip("\n") + \
        "\n  qkernels --version   the installed version\n"


def _main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv else "help"
    if cmd in ("--version", "-V", "version"):
        import qkernels

        print(f"qkernels {qkernels.__version__}")
        return 0
    if cmd in ("help", "-h", "--help"):
        print(usage())
        return 0
    if cmd == "info":
        if argv and argv[0] == "--json":
            from qkernels import _loader

            print(json.dumps(_loader.build_info, indent=2))
            return 0
        return info()
    if cmd == "quickstart":
        return quickstart()
    if cmd == "demo":
        return demo()
    if cmd == "bench":
        from qkernels.bench.cli import main_bench

        return main_bench(argv)
    if cmd == "advise":
        from qkernels.bench.cli import main_advise

        return main_advise(argv)
    if cmd == "tune":
        from qkernels.bench.tune import main as main_tune

        return main_tune(argv)
    print(f"qkernels: unknown command {cmd!r}; commands: {', '.join(COMMANDS)} (`qkernels --help` says what "
          "each does).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
