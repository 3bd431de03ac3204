"""The op registry and `qkernels info`: every schema has its implementations, and info tells the truth."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

import qkernels
from qkernels import _loader, cli
from qkernels.ops import family_ops, python_cuda_ops
from qkernels.ops.schemas import SCHEMAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has(name, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"qkernels::{name}", key)


def test_every_schema_belongs_to_a_family():
    listed = [n for names in family_ops().values() for n in names]
    assert sorted(listed) == sorted(SCHEMAS), "SCHEMAS and the families' OPS tuples disagree"
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_op_has_cpu_fake_and_cuda_entries(name):
    # CPU: the reference (or a composite impl for ops without tensor inputs)
    assert _has(name, "CPU") or _has(name, "CompositeExplicitAutograd"), name
    # fake: torch.compile needs one for every op with tensor outputs
    from torch._library.simple_registry import singleton

    entry = singleton.find(f"qkernels::{name}")
    assert entry.fake_impl.kernel is not None or _has(name, "CompositeExplicitAutograd"), name
    # CUDA: the compiled kernel, or the clear "not built" error
    assert _has(name, "CUDA") or _has(name, "CompositeExplicitAutograd"), name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_python_wrapper_module_documents_its_ops(name):
    fam = next(f for f, names in family_ops().items() if name in names)
    mod = getattr(qkernels.ops, fam, None) or __import__(f"qkernels.ops.{fam}", fromlist=["x"])
    assert (mod.__doc__ or "").strip(), f"qkernels.ops.{fam} has no module docstring"


def test_info_reports_each_op_truthfully():
    buf = io.StringIO()
    assert cli.info(out=buf) == 0
    text = buf.getvalue()
    assert f"torch {torch.__version__}" in text
    for name in SCHEMAS:
        line = next(l for l in text.splitlines() if f"qkernels::{name} " in l)
        if "Tensor" not in SCHEMAS[name]:
            assert line.rstrip().endswith("capability query (no tensors; any device)"), line
        elif name in python_cuda_ops():
            assert "Triton kernel (registered from Python" in line and not _loader.has_cuda_kernel(name), line
        elif _loader.has_cuda_kernel(name):
            assert "CUDA kernel compiled (" in line, line
            usable = "usable here" in line and "not usable here" not in line
            if not torch.cuda.is_available():
                assert not usable and "not usable here" in line, line  # compiled is not usable without a GPU
        else:
            assert "CPU reference only" in line, line
    if _loader.build_info.get("built"):
        for fam in _loader.build_info["groups"]:
            assert any(l.strip().startswith(fam) for l in text.splitlines() if "sm_" in l), fam
    else:
        assert "Build: no CUDA code" in text


def test_build_info_matches_library():
    """A build that says it compiled a family must have loaded CUDA kernels for its ops."""
    bi = _loader.build_info
    if not bi.get("built"):
        pytest.skip(f"no CUDA build here: {bi.get('reason', 'no build info (source tree)')}")
    assert _loader.library_path, f"build_info says built, but the library did not load: {_loader.load_error}"
    for fam in bi["groups"]:
        for name in family_ops().get(fam, ()):
            if name in python_cuda_ops() or "Tensor" not in SCHEMAS[name]:  # Triton (Python) / capability query
                continue
            assert _loader.has_cuda_kernel(name), f"{fam} was built but qkernels::{name} has no CUDA kernel"


def test_without_library_cuda_calls_get_a_clear_error():
    code = (
        "import torch, qkernels;"
        "from qkernels import _loader;"
        "d = torch._C._dispatch_dump('qkernels::dynamic_scaled_int8_quant');"
        "print(_loader.library_path, 'CUDA: registered at' in d and '_registry.py' in d.split('CUDA:')[1].splitlines()[0])"
    )
    env = dict(os.environ, QKERNELS_DISABLE_CUDA_LIB="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "True"], out


def test_missing_cuda_impl_message():
    from qkernels.ops._registry import missing_cuda_kernel

    with pytest.raises(RuntimeError, match=r"qkernels::f has no CUDA implementation in this install: no nvcc\. "
                                           r"CPU tensors run the pure-torch reference"):
        missing_cuda_kernel("f", "no nvcc")(torch.empty(1))


def test_cli_help_and_unknown_command():
    assert cli.main(["help"]) == 0
    assert cli.main(["no-such-command"]) == 2


def test_setup_parses_families():
    sys.path.insert(0, ROOT)
    try:
        import setup as qsetup  # noqa: F401  (does not run setup(): guarded by __main__)
    finally:
        sys.path.pop(0)
    assert qsetup.parse_families("all") == qsetup.ALL_FAMILIES
    assert qsetup.parse_families("quant, w4a16") == ["quant", "w4a16"]
    with pytest.raises(RuntimeError, match="unknown families"):
        qsetup.parse_families("quant;nope")
