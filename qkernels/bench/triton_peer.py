"""A Triton W8A8 scaled GEMM: a benchmark *peer* of ``qkernels.ops.scaled_mm``, not a qkernels kernel.

It exists so that ``qkernels/bench/entries/scaled_mm.py`` can time our CUTLASS kernels against what a short,
portable Triton kernel reaches on the same GPU, in the same run (row ``impl =
"triton_scaled_mm"``). It is not registered as an op, not dispatched to by anything in
``qkernels``, and not tuned beyond a handful of ``triton.autotune`` configs: a reference point,
not a product.

It computes exactly what :func:`qkernels.reference.scaled_mm.scaled_mm` specifies::

    out[M, N] = out_dtype(a_scales[m] * (b_scales[n] * float(a @ b)[m, n]) + bias[n])

a ``[M, K]`` int8 or float8_e4m3fn (any strides; row-major is the fast case), b ``[K, N]`` the
same dtype (any strides; the column-major ``w.t()`` of a row-major ``[N, K]`` weight is the
fast case), a_scales float32 with 1 or M values, b_scales float32 with 1 or N values (any shape:
``[1]``, ``[M, 1]``, ``[1, N]``, ``[N]``), bias optional ``[N]``, out_dtype bfloat16 or float16.
The kernel is a standard tiled ``tl.dot`` loop (grouped tile order, masked M/N/K edges): INT8
accumulates in int32 (exact), FP8 in float32 with Triton's default FP8 accumulation for the arch
(on sm90 that is ``max_num_imprecise_acc = 2**30``, i.e. the tensor cores' fast, unpromoted FP8
accumulation, like cuBLASLt's ``use_fast_accum``); the epilogue is float32 with the reference's
order of operations and one rounding to ``out_dtype``.

Triton is imported defensively: without it this module still imports, :func:`available` says
why it cannot run, and :func:`triton_scaled_mm` raises ``RuntimeError`` (which the benchmark's
``ctx.peer_rows`` logs and skips). Failures inside Triton (compilation, out of resources) are
also re-raised as ``RuntimeError`` for the same reason. With ``TRITON_INTERPRET=1`` set before
Triton is imported, the kernel runs on CPU tensors through Triton's interpreter (what
``python_tests/test_triton_peer.py`` does; there it runs one fixed tile configuration, as
autotuning needs a GPU to time on).
"""
from __future__ import annotations

from typing import Optional

import torch

from qkernels.triton_kernels import interpreting as _interpreting

try:  # defensive: a missing or broken Triton only disables this peer
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[str] = None
except Exception as _e:  # noqa: BLE001  (ImportError, or a Triton that fails while importing)
    triton = None
    tl = None
    _IMPORT_ERROR = f"triton is not importable ({type(_e).__name__}: {_e})"

FP8 = torch.float8_e4m3fn
IN_DTYPES = (torch.int8, FP8)
OUT_DTYPES = (torch.bfloat16, torch.float16)

# A handful of configs (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages): small-M
# decode tiles and the usual large tiles. Shared memory per config (1-byte operands):
# stages * (BLOCK_M + BLOCK_N) * BLOCK_K, at most 144 KiB (a config that does not fit a
# GPU is scored inf by the autotuner and not chosen).
CONFIGS = (
    (16, 64, 256, 8, 4, 4),
    (32, 128, 128, 8, 4, 4),
    (64, 128, 128, 8, 4, 4),
    (128, 128, 128, 8, 8, 3),
    (128, 256, 128, 8, 8, 3),
)


def available() -> Optional[str]:
    """None if the Triton peer can be used (Triton imports), else why not."""
    return _IMPORT_ERROR


if triton is not None:

    @triton.jit
    def _scaled_mm_kernel(
        a_ptr, b_ptr, a_scales_ptr, b_scales_ptr, bias_ptr, out_ptr,
        M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
        A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
        IS_INT8: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M row-tiles share each column of B while it is in L2.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

        if IS_INT8:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
            if IS_INT8:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.float32)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

        # Epilogue, in the reference's order: a_scale * (b_scale * float(acc)) + bias, in float32.
        out = acc.to(tl.float32)
        if B_PER_CHANNEL:
            b_s = tl.load(b_scales_ptr + offs_n, mask=mask_n, other=0.0)
            out = b_s[None, :] * out
        else:
            out = tl.load(b_scales_ptr) * out
        if A_PER_TOKEN:
            a_s = tl.load(a_scales_ptr + offs_m, mask=mask_m, other=0.0)
            out = a_s[:, None] * out
        else:
            out = tl.load(a_scales_ptr) * out
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            out = out + bias[None, :]
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    _scaled_mm_kernel_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": g},
                               num_warps=w, num_stages=s) for bm, bn, bk, g, w, s in CONFIGS],
        key=["M", "N", "K"],  # plus the pointer dtypes, which the autotuner always adds
    )(_scaled_mm_kernel)


def _max_offset(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))


def triton_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
    config: Optional[dict] = None,
) -> torch.Tensor:
    """``out [M, N] = a_scales * (b_scales * (a @ b)) + bias`` in Triton (see the module docstring).

    ``config``: None autotunes over :data:`CONFIGS` (autotuning times on a GPU, so under
    Triton's interpreter None means the first of :data:`CONFIGS`); a dict with ``BLOCK_M``,
    ``BLOCK_N``, ``BLOCK_K``, ``GROUP_M`` (and optionally ``num_warps``, ``num_stages``) runs
    that one tile configuration.
    """
    if _IMPORT_ERROR is not None:
        raise RuntimeError(_IMPORT_ERROR)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"triton_scaled_mm: a [M, K] @ b [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype not in IN_DTYPES or b.dtype != a.dtype:
        raise ValueError(f"triton_scaled_mm: a and b must both be int8 or float8_e4m3fn, got {a.dtype}, {b.dtype}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"triton_scaled_mm: out_dtype must be bfloat16 or float16, got {out_dtype}")
    M, K = a.shape
    N = b.shape[1]
    if a_scales.numel() not in (1, M) or b_scales.numel() not in (1, N):
        raise ValueError(f"triton_scaled_mm: a_scales needs 1 or M={M} values, b_scales 1 or N={N}; got "
                         f"{tuple(a_scales.shape)} and {tuple(b_scales.shape)}")
    if bias is not None and bias.numel() != N:
        raise ValueError(f"triton_scaled_mm: bias needs N={N} values, got {tuple(bias.shape)}")
    if max(_max_offset(a), _max_offset(b), M * N) >= 2**31:
        raise ValueError("triton_scaled_mm: the kernel indexes with int32; an operand is too large")

    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    # The reference applies .float() to the scales and bias; float32 inputs pass through uncopied.
    a_s = a_scales.reshape(-1).float().contiguous()
    b_s = b_scales.reshape(-1).float().contiguous()
    bias_arg = bias.reshape(-1).contiguous() if bias is not None else out  # unused when HAS_BIAS=False
    args = (a, b, a_s, b_s, bias_arg, out, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1))
    flags = dict(A_PER_TOKEN=a_s.numel() != 1, B_PER_CHANNEL=b_s.numel() != 1,
                 HAS_BIAS=bias is not None, IS_INT8=a.dtype == torch.int8)
    if config is None and _interpreting():
        bm, bn, bk, g, w, s = CONFIGS[0]
        config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=g, num_warps=w, num_stages=s)
    try:
        if config is None:
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
            _scaled_mm_kernel_tuned[grid](*args, **flags)
        else:
            cfg = dict(config)
            grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
            _scaled_mm_kernel[grid](*args, **flags, **cfg)
    except RuntimeError:
        raise
    except Exception as e:  # noqa: BLE001  (compile errors, OutOfResources, ...: a peer failure)
        raise RuntimeError(f"triton_scaled_mm failed: {type(e).__name__}: {e}") from e
    return out
