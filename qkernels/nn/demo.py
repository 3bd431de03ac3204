"""``qkernels demo``: the loader end to end on the CPU, in a few seconds.

Builds a tiny random Llama, quantizes it with compressed-tensors (W8A8 INT8, FP8 dynamic with 2:4
weights, W4A16) into a temporary folder, loads each checkpoint with :func:`qkernels.nn.load_checkpoint`
and prints the report and how close the logits are to compressed-tensors' own decompression.
Needs ``compressed-tensors`` and ``transformers`` (``pip install qkernels[test]``).
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile

import torch

SCHEMES = {  # name -> (config groups, prune to 2:4 first)
    "W8A8 INT8 (dynamic per-token)": ({"W8A8": ["Linear"]}, False),
    "FP8 dynamic, 2:4 sparse weights": ({"FP8_DYNAMIC": ["Linear"]}, True),
    "W4A16 (group 128)": ({"W4A16": ["Linear"]}, False),
}


def main(argv=None, out=sys.stdout) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # compressed-tensors' progress bars
    try:
        from . import make_checkpoint as mk
    except ImportError as e:
        print(f"qkernels demo needs compressed-tensors and transformers ({e}): pip install 'qkernels[test]'",
              file=out)
        return 1
    from ..testing.numerics import rel_err
    from .loader import load_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"qkernels loader demo: tiny random Llama (hidden {mk.HIDDEN}, 1 layer), ops on {device}"
          f"{' (pure-torch references)' if device == 'cpu' else ''}", file=out)
    ids = mk.calibration_ids(seed=7)
    for title, (groups, prune) in SCHEMES.items():
        model = mk.tiny_model("llama")
        if prune:
            mk.prune_24(model)
        original = copy.deepcopy(model)
        with tempfile.TemporaryDirectory() as folder:
            mk.write_checkpoint(model, folder, groups)
            loaded, report = load_checkpoint(folder, device=device)
            reference = mk.decompressed_model(folder, original)
        with torch.no_grad():
            err = rel_err(loaded(ids.to(device)).logits, reference(ids).logits)
        print(f"\n== {title}\n{report}", file=out)
        print(f"logits vs compressed-tensors' decompressed bf16 model: rel err {err:.2e} "
              "(activation quantization and bf16 rounding)", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
