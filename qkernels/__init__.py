"""qkernels: quantized GEMM and activation-quantisation kernels for LLM inference.

Ops live in ``torch.ops.qkernels``; the Python wrappers with docstrings are in
``qkernels.ops.<family>``. CPU tensors run the pure-torch references
(``qkernels.reference``); CUDA tensors run the compiled kernels.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401  (defines the ops)
from . import _loader  # noqa: E402,F401  (loads the CUDA library, if built)
from . import configs as _configs  # noqa: E402  (per-GPU kernel configs)

_configs.install_cuda_init_hook()  # applied at the first CUDA use, never at import
from .ops.quant import scaled_fp8_quant, scaled_int8_quant  # noqa: E402,F401
