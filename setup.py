"""Thin setup: resolves the build switches and drives CMake + ninja.

Build switches (environment variables; README "Build switches"):
  QKERNELS_CUDA_ARCHS   e.g. "90a" or "80;89;90a" or "min". Default: the visible GPU's
                        arch ("90a" on Hopper); with no GPU, "min" = every CUDA source
                        compiled once, at the lowest arch its family supports.
  QKERNELS_FAMILIES     "all" (default) or a list of quant;scaled_mm;w4a16;sparse24;fp8_block
  QKERNELS_PTX          1: also embed PTX for the non-sm90a sources (lets sm75/80/89
                        kernels JIT on an H100 for testing; see QKERNELS_FORCE_ARCH)
  QKERNELS_SASS_FOR     e.g. 90: also build the groups QKERNELS_CUDA_ARCHS skips, as sm_90
                        machine code from their own lowest virtual arch (compute_80 -> sm_90):
                        the sm75/80/89 paths run on an H100 without PTX JIT (test builds)
  QKERNELS_BUILD_TYPE   Release (default) or Debug
  QKERNELS_SKIP_CUDA    1: build no CUDA code (the ops run on their CPU references)
  QKERNELS_CUTLASS_DIR  a CUTLASS checkout to use instead of the nvidia-cutlass wheel
  QKERNELS_BUILD_DIR    CMake build folder (default build/cmake-<hash of the switches>)
  QKERNELS_CCACHE       1 (default): compile through ccache if it is on PATH; 0: never
  MAX_JOBS              parallel compile jobs (default: number of CPUs)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
ALL_FAMILIES = ["quant", "scaled_mm", "w4a16", "sparse24", "fp8_block"]


def _log(msg: str) -> None:
    print(f"[qkernels build] {msg}", file=sys.stderr, flush=True)


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    for cand in (shutil.which("nvcc"), os.path.join(cuda_home, "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


def default_archs() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return "90a" if (major, minor) == (9, 0) else f"{major}{minor}"
    except Exception as e:  # torch without CUDA, broken driver...
        _log(f"could not query the GPU ({e}); building the 'min' arch set")
    return "min"


def cutlass_dir() -> str:
    d = os.environ.get("QKERNELS_CUTLASS_DIR")
    if d:
        if not os.path.isdir(os.path.join(d, "include", "cutlass")):
            raise RuntimeError(f"QKERNELS_CUTLASS_DIR={d} has no include/cutlass: point it at a CUTLASS checkout.")
        return d
    # Located without importing it: the package's Python side needs dependencies (cuda-python,
    # pydot, ...) that a build does not, and that a machine without a registry may lack.
    import importlib.util

    spec = importlib.util.find_spec("cutlass_library")
    src = os.path.join(os.path.dirname(spec.origin), "source") if spec and spec.origin else None
    if not src or not os.path.isdir(os.path.join(src, "include", "cutlass")):
        raise RuntimeError(
            "CUTLASS headers not found: install the pinned wheel (pip install nvidia-cutlass==4.2.0.0) "
            "or set QKERNELS_CUTLASS_DIR to a CUTLASS checkout (see third_party/README.md)."
        )
    return src


def parse_families(value: str) -> list:
    if value.strip() in ("", "all"):
        return list(ALL_FAMILIES)
    fams = [f.strip() for f in value.replace(",", ";").split(";") if f.strip()]
    unknown = [f for f in fams if f not in ALL_FAMILIES]
    if unknown:
        raise RuntimeError(f"QKERNELS_FAMILIES has unknown families {unknown}; known: {ALL_FAMILIES}")
    return fams


def parse_cmake_build_info(text: str) -> dict:
    """The fields of CMake's ``build_info.txt`` that go into ``_build_info.json``.

    ``groups``: {family: {tag: [archs with machine code]}}; ``retargeted``: {family: {tag:
    virtual arch}} for the groups built by ``QKERNELS_SASS_FOR`` (their only machine code is
    ``sm_<sass_for>``, generated from that virtual arch: they run on that GPU only).
    """
    raw = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    groups: dict = {}
    retargeted: dict = {}
    for g in filter(None, raw.get("groups", "").split(";")):
        fam, tag, archs_csv, *virtual = g.split(":")
        groups.setdefault(fam, {})[tag] = archs_csv.split(",")
        if virtual:
            retargeted.setdefault(fam, {})[tag] = virtual[0]
    info = {"cuda": raw.get("cuda"), "groups": groups}
    if raw.get("sass_for"):
        info.update(sass_for=raw["sass_for"], retargeted=retargeted)
    return info


def write_build_info(path: str, info: dict) -> None:
    with open(path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch

        out_path = self.get_ext_fullpath(ext.name)
        out_dir = os.path.dirname(os.path.abspath(out_path))
        lib_name = os.path.basename(out_path)[: -len(".so")]
        archs = os.environ.get("QKERNELS_CUDA_ARCHS") or default_archs()
        families = parse_families(os.environ.get("QKERNELS_FAMILIES", "all"))
        ptx = os.environ.get("QKERNELS_PTX", "0") == "1"
        sass_for = os.environ.get("QKERNELS_SASS_FOR", "").strip()
        if sass_for and not sass_for.isdigit():
            raise RuntimeError(f"QKERNELS_SASS_FOR={sass_for!r}: expected an arch number such as 90.")
        build_type = os.environ.get("QKERNELS_BUILD_TYPE", "Release")
        torch_dir = os.path.dirname(torch.__file__)
        cache_key = hashlib.sha1(f"{archs}|{families}|{ptx}|{sass_for}|{build_type}|{torch.__version__}".encode()).hexdigest()[:8]
        build_dir = os.environ.get("QKERNELS_BUILD_DIR") or os.path.join(ROOT, "build", f"cmake-{cache_key}")
        os.makedirs(build_dir, exist_ok=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        cmake = shutil.which("cmake") or "cmake"
        args = [
            cmake, "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_CUDA_COMPILER={find_nvcc()}",
            f"-DQK_ARCHS={archs}",
            f"-DQK_FAMILIES={';'.join(families)}",
            f"-DQK_PTX={'ON' if ptx else 'OFF'}",
            f"-DQK_SASS_FOR={sass_for}",
            f"-DQK_CUTLASS_DIR={cutlass_dir()}",
            f"-DQK_TORCH_INCLUDE_DIRS={torch_dir}/include;{torch_dir}/include/torch/csrc/api/include",
            f"-DQK_TORCH_LIB_DIR={torch_dir}/lib",
            f"-DQK_TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DQK_OUTPUT_DIR={out_dir}",
            f"-DQK_LIB_NAME={lib_name}",
            f"-DQK_CCACHE={'OFF' if os.environ.get('QKERNELS_CCACHE', '1') == '0' else 'ON'}",
        ]
        _log(f"archs={archs} families={families} ptx={ptx} sass_for={sass_for or '-'} build_type={build_type} jobs={jobs} dir={build_dir}")
        subprocess.check_call(args)
        subprocess.check_call([cmake, "--build", build_dir, "--", f"-j{jobs}"])
        # build_info.txt (written by CMake) -> _build_info.json next to the library
        with open(os.path.join(build_dir, "build_info.txt")) as f:
            cmake_info = parse_cmake_build_info(f.read())
        info = {
            "built": True, "archs_requested": archs, "families_requested": families, "ptx": ptx,
            "build_type": build_type, "torch": torch.__version__, **cmake_info,
        }
        # Next to the library (wheel builds) and in the source tree (editable installs
        # copy only the library itself back into the tree).
        for d in {out_dir, os.path.join(ROOT, "qkernels")}:
            write_build_info(os.path.join(d, "_build_info.json"), info)


def main() -> None:
    ext_modules = []
    skip = os.environ.get("QKERNELS_SKIP_CUDA", "0") == "1"
    nvcc = find_nvcc()
    reason = None
    if skip:
        reason = "QKERNELS_SKIP_CUDA=1 at build time"
    elif nvcc is None:
        reason = "nvcc was not found at build time (set CUDA_HOME or put nvcc on PATH and reinstall)"
    if reason:
        _log(f"building no CUDA code: {reason}. The ops will run on their CPU references.")
        write_build_info(os.path.join(ROOT, "qkernels", "_build_info.json"), {"built": False, "reason": reason})
    else:
        ext_modules.append(CMakeExtension("qkernels._qkernels_cuda"))
    setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})


if __name__ == "__main__":
    main()
