"""Load compressed-tensors checkpoints into models whose Linear layers run qkernels ops.

``load_checkpoint(folder)`` / ``apply_checkpoint(model, quantization_config, state_dict)`` return
``(model, report)``; see :mod:`qkernels.nn.loader`. The modules are in :mod:`qkernels.nn.linear`,
config parsing in :mod:`qkernels.nn.config`, tensor-parallel slicing in :mod:`qkernels.nn.tp`,
the fused-shard requantization in :mod:`qkernels.nn.fuse`.
"""
from .config import CheckpointError, parse_quantization_config
from .linear import (DequantLinear, FP8BlockLinear, QuantLinear, Sparse24Linear, W4A16Linear, W8A8Linear,
                     make_linear)
from .loader import LoadReport, apply_checkpoint, load_checkpoint, read_safetensors

__all__ = ["CheckpointError", "parse_quantization_config", "QuantLinear", "W8A8Linear", "Sparse24Linear",
           "W4A16Linear", "FP8BlockLinear", "DequantLinear", "make_linear", "LoadReport", "apply_checkpoint", "load_checkpoint",
           "read_safetensors"]
