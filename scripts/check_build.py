"""Fails unless every CUDA source under csrc/ was compiled in the given CMake build folder.

CI builds with QKERNELS_CUDA_ARCHS=min (each source once, at its lowest arch), so a
.cu that is missing here was left out of its family's sources.cmake or failed to build.
Skipped when the build compiled no CUDA code on purpose (QKERNELS_SKIP_CUDA=1, no nvcc).
"""
import glob
import json
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
build_dir = sys.argv[1]
info_path = os.path.join(root, "qkernels", "_build_info.json")
info = json.load(open(info_path)) if os.path.exists(info_path) else {}
if not info.get("built"):
    print(f"[check_build] no CUDA build ({info.get('reason', 'no build info')}): nothing to check")
    sys.exit(0)
sources = sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cu"), recursive=True))
objdir = os.path.join(build_dir, "CMakeFiles", "qkernels_cuda.dir")
missing = [s for s in sources if not os.path.exists(os.path.join(objdir, os.path.relpath(s, root) + ".o"))]
fams = info.get("families_requested", [])
missing = [m for m in missing if os.path.relpath(m, root).split(os.sep)[1] in fams]
print(f"[check_build] {len(sources) - len(missing)}/{len(sources)} CUDA sources compiled "
      f"(archs '{info.get('archs_requested')}', families {fams})")
if missing:
    print("[check_build] not compiled:\n  " + "\n  ".join(os.path.relpath(m, root) for m in missing), file=sys.stderr)
    sys.exit(1)
