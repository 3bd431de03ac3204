"""Block-scaled FP8 GEMM (W8A8-FP8_BLOCK) in Triton: the sm89 (Ada) path and the benchmark's Triton peer.

It computes what :func:`qkernels.reference.fp8_block.scaled_mm` specifies::

    out[m, n] = out_dtype( sum_kb  a_scales[m, kb] * b_scales[n // 128, kb] * (a @ b)_kb[m, n]  + bias[n] )

where ``(a @ b)_kb`` is the product over the 128-wide block ``kb`` of K:

========== ================== ======================= ===========================================
argument   dtype              shape                   layout
========== ================== ======================= ===========================================
a          float8_e4m3fn      [M, K]                  any strides; row-major is the fast case
b          float8_e4m3fn      [K, N]                  any strides; ``w.t()`` of a row-major
                                                      ``[N, K]`` weight (K-contiguous) is the fast case
a_scales   float32            [M, K/128]              any strides: row-major, or column-major
                                                      (``[K/128, M_pad]`` storage, e.g. TMA-aligned)
                                                      as ``per_token_group_quant`` writes it
b_scales   float32            [ceil(N/128), K/128]    any strides; one scale per 128x128 weight block
bias       out_dtype          [N]                     optional
out        bfloat16 / float16 [M, N]                  row-major, allocated here
========== ================== ======================= ===========================================

K must be a multiple of 128 (the scale block); M and N are free (a last partial 128-block of N
shares its block's scale row).

The kernel (``_fp8_block_mm_kernel``) is a tiled ``tl.dot`` loop whose K step is the scale block:
each iteration multiplies a ``[BLOCK_M, 128]`` tile of ``a`` by a ``[128, BLOCK_N]`` tile of ``b``
into a *fresh* float32 product, multiplies it by that block's ``a_scales`` column and
``b_scales`` value(s) and adds it to the float32 accumulator (the scales cannot be applied after
the loop because they change per block). A ``BLOCK_N`` of at most 128 lies in one 128-block of
N, so its ``b`` scale is one scalar load per iteration; ``BLOCK_N = 256`` loads a vector.
On sm90 Triton's FP8 ``tl.dot`` accumulates inside one 128-block with the tensor cores' fast
(unpromoted) FP8 accumulation (``max_num_imprecise_acc = 2**30``, Triton's sm90 default); the
promotion to a float32 register accumulator happens every 128 K, as in DeepGEMM. Ada's FP8
``mma.sync`` accumulates in float32.

Split-K: small M x small N leaves most SMs idle (M <= 64 and N = 2112 is 17-33 output tiles on
a 132-SM GPU while K = 7168 is 56 blocks deep), so a config may split the K blocks in
``SPLIT_K`` contiguous ranges (a second grid dimension). Each split writes its float32 partial
tile to a workspace ``[SPLIT_K, M, N]``; a second kernel (``_split_k_reduce_kernel``) sums the
partials **in split order 0, 1, ..., SPLIT_K-1**, adds the bias and rounds once to out_dtype.
No atomics: for a given config the result is bitwise deterministic, and the launch is CUDA-graph
safe (the workspace is a ``torch.empty`` of the call, from the graph's pool under capture; no
zero-initialised state survives between calls). The cost is a second launch and
``2 * SPLIT_K * M * N * 4`` bytes of workspace traffic (for M=64, N=2112, SPLIT_K=4: 4.3 MB,
against 15 MB of weight): the candidates are timed with it included.

Config choice: :func:`candidates` lists a few tiles for the M bucket (16/32/64 rows for small M,
64/128 rows with 128/256 columns for large M), each without split-K and, where the tile grid
leaves SMs idle, with one or two ``SPLIT_K`` values that fill the SMs. ``config=None`` (default)
times them once per (device, next power of two of M, N, K, out dtype, bias, layouts) with
``triton.testing.do_bench`` and keeps the fastest for the process. Under CUDA-graph capture
(no timing possible) an untuned key uses :func:`heuristic_config` (not cached, so a later eager
call still tunes). ``autotune=False`` always uses the heuristic: pick it (or a fixed
``config``) where bitwise reproducibility *across processes* matters, since two tuning runs can
pick different configs, which round differently. Triton compiles a kernel at its first launch
and tuning times every candidate: make one eager call per (M bucket, N, K) before capturing a
CUDA graph (the warm-up of qkernels' timer and of the usual graph runners does this).

Triton is imported defensively: without it this module still imports, :func:`available` says
why it cannot run, and :func:`triton_fp8_block_mm` raises ``RuntimeError``. Failures inside
Triton (compilation, out of resources) are re-raised as ``RuntimeError`` too (what the
benchmark's ``ctx.peer_rows`` logs and skips). With ``TRITON_INTERPRET=1`` set before Triton is
imported, the kernels run on CPU tensors through Triton's interpreter
(``python_tests/test_triton_fp8_block.py``); there ``config=None`` means the heuristic for a
132-SM GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from qkernels.ops._checks import check_bias, check_dim, check_dtype, check_out_dtype, check_same_device, fail
from qkernels.triton_kernels import IMPORT_ERROR, interpreting

if IMPORT_ERROR is None:
    import triton
    import triton.language as tl
else:
    triton = None
    tl = None

OP = "triton_fp8_block_mm"
FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)
BLOCK_K = 128
"""The K step of the kernel = the scale block along K (of both operands)."""
SCALE_BLOCK_N = 128
"""The weight scale block along N."""
MIN_SM = (8, 9)
INTERPRETER_SMS = 132
"""SM count the heuristic assumes under Triton's interpreter (an H100 SXM)."""
REDUCE_BLOCK = 1024


@dataclass(frozen=True)
class Config:
    """One launch configuration: output tile, split-K factor, grouped tile order, warps, stages."""

    block_m: int
    block_n: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def smem_bytes(self) -> int:
        """Shared memory of the operand pipeline (1-byte operands): stages x (a tile + b tile)."""
        return self.num_stages * (self.block_m + self.block_n) * BLOCK_K

    @property
    def label(self) -> str:
        split = f" split-k {self.split_k}" if self.split_k > 1 else ""
        return f"{self.block_m}x{self.block_n}x{BLOCK_K}{split} w{self.num_warps} s{self.num_stages}"


ConfigLike = Union[Config, dict]

# Tiles per M bucket (the next power of two of M): (block_m, block_n). Warps and stages follow
# from the tile (see _tile_config).
_TILES: Tuple[Tuple[int, Tuple[Tuple[int, int], ...]], ...] = (
    (16, ((16, 64), (16, 128))),
    (32, ((16, 64), (32, 64), (32, 128))),
    (64, ((32, 64), (64, 64), (64, 128))),
    (128, ((64, 64), (64, 128), (128, 128))),
    (1 << 62, ((64, 128), (128, 128), (128, 256))),
)
MAX_STAGES = 4
SMEM_RESERVE = 8 * 1024
MAX_SPLIT_K = 16
MIN_KB_PER_SPLIT = 4
"""A split gets at least 4 K blocks (512 of K): below that the partials' traffic dominates."""


def available(device: Optional[torch.device] = None) -> Optional[str]:
    """None if the kernel can run (on ``device``, default the current CUDA device), else why not."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return ("no CUDA GPU visible (on CPU the kernel runs only through Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing Triton)")
    sm = torch.cuda.get_device_capability(device)
    if sm < MIN_SM:
        return (f"FP8 tensor cores need sm_89+ (Ada, Hopper); this GPU is sm_{sm[0]}{sm[1]}: "
                "use the W8A8-INT8 or W4A16 path there")
    return None


# ------------------------------------------------------------------ configs (heuristics, no launch)
def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _tile_config(bm: int, bn: int, split_k: int, smem_limit: int) -> Optional[Config]:
    """The tile with 4 warps up to 64x128 (8 above) and as many stages (2..4) as fit ``smem_limit``
    (None if not even 2 fit)."""
    warps = 4 if bm * bn <= 64 * 128 else 8
    per_stage = (bm + bn) * BLOCK_K
    # SMEM_RESERVE: the pipeline's barriers and Triton's small scratch buffers. The epilogue's
    # layout conversion reuses the operand buffers (dead after the loop).
    stages = min(MAX_STAGES, (smem_limit - SMEM_RESERVE) // per_stage)
    if stages < 2:
        return None
    return Config(bm, bn, split_k=split_k, num_warps=warps, num_stages=stages)


def _tiles_for(M: int) -> Tuple[Tuple[int, int], ...]:
    bucket = _next_pow2(M)
    return next(tiles for limit, tiles in _TILES if bucket <= limit)


def _split_choices(tiles: int, num_kb: int, sms: int) -> List[int]:
    """1, plus the split factors that bring a grid of ``tiles`` CTAs to about one wave of ``sms``:
    the largest that stays within one wave and the next power of two above it (tuning decides
    whether a second, partial wave of small CTAs pays), each leaving every split >= 4 K blocks."""
    if tiles * 2 > sms:
        return [1]
    cap = min(MAX_SPLIT_K, num_kb // MIN_KB_PER_SPLIT)
    raw = {sms // tiles, _next_pow2(-(-sms // tiles))}
    return [1] + sorted(s for s in raw if 2 <= s <= cap)


def candidates(M: int, N: int, K: int, sms: int, smem_limit: int) -> List[Config]:
    """The configs timed for this problem on a GPU with ``sms`` SMs and ``smem_limit`` bytes of
    shared memory per block."""
    out: List[Config] = []
    num_kb = K // BLOCK_K
    for bm, bn in _tiles_for(M):
        tiles = -(-M // bm) * -(-N // bn)
        for s in _split_choices(tiles, num_kb, sms):
            cfg = _tile_config(bm, bn, s, smem_limit)
            if cfg is not None and _fits_int32(cfg, M, N):
                out.append(cfg)
    return out


def _fits_int32(cfg: Config, M: int, N: int) -> bool:
    """Whether the split-K workspace [split_k, M, N] is indexable with int32 (the kernel's offsets)."""
    return cfg.split_k == 1 or cfg.split_k * M * N < 2**31


def heuristic_config(M: int, N: int, K: int, sms: int, smem_limit: int) -> Config:
    """One config without timing: the bucket's largest tile of at most 128x128 that still gives
    every SM a CTA (else its first tile; 256-wide tiles, near the shared-memory limit of Ada, are
    left to tuning), split-K to fill the SMs where the tile grid is under half of them."""
    tiles = [t for t in _tiles_for(M) if t[1] <= SCALE_BLOCK_N]
    num_kb = K // BLOCK_K
    bm, bn = tiles[0]
    for tbm, tbn in tiles:
        if -(-M // tbm) * -(-N // tbn) >= sms and _tile_config(tbm, tbn, 1, smem_limit) is not None:
            bm, bn = tbm, tbn
    grid = -(-M // bm) * -(-N // bn)
    split = 1
    if grid * 2 <= sms:
        split = max(1, min(sms // grid, MAX_SPLIT_K, num_kb // MIN_KB_PER_SPLIT))
    if split * M * N >= 2**31:
        split = 1
    cfg = _tile_config(bm, bn, split, smem_limit)
    if cfg is None:  # a GPU with less shared memory than the smallest tile needs: 2 stages of 16x64
        cfg = Config(16, 64, split_k=split, num_warps=4, num_stages=2)
    return cfg


def _as_config(config: ConfigLike) -> Config:
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        names = {"BLOCK_M": "block_m", "BLOCK_N": "block_n", "SPLIT_K": "split_k", "GROUP_M": "group_m",
                 "num_warps": "num_warps", "num_stages": "num_stages"}
        unknown = set(config) - set(names) - set(names.values())
        if unknown:
            raise ValueError(f"{OP}: unknown config keys {sorted(unknown)}; use {sorted(names)}")
        cfg = Config(**{names.get(k, k): v for k, v in config.items()})
    else:
        raise TypeError(f"{OP}: config must be a Config, a dict or None; got {type(config).__name__}")
    pow2 = lambda v: v >= 1 and v & (v - 1) == 0
    if not (pow2(cfg.block_m) and pow2(cfg.block_n) and cfg.block_m >= 16 and cfg.block_n >= 16):
        raise ValueError(f"{OP}: block_m and block_n must be powers of two >= 16 (tl.dot); got {cfg.label}")
    if cfg.split_k < 1 or cfg.group_m < 1:
        raise ValueError(f"{OP}: split_k and group_m must be >= 1; got {cfg}")
    return cfg


# ------------------------------------------------------------------ kernels
if triton is not None:

    @triton.jit
    def _fp8_block_mm_kernel(
        a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, out_ptr, ws_ptr,
        M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn,
        stride_asm, stride_ask, stride_bsn, stride_bsk,
        stride_om, stride_on,
        HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        BK: tl.constexpr = 128  # = BLOCK_K = the scale block along K
        SBN: tl.constexpr = 128  # = SCALE_BLOCK_N

        # Grouped tile order: GROUP_M row-tiles share each column of b while it is in L2.
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        first_pid_m = (pid // num_pid_in_group) * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Rows / columns past the edge read row m % M / column n % N, which exist: the main loop's
        # loads need no mask, and those outputs are dropped by the masked store.
        rows = offs_m % M
        cols = offs_n % N
        offs_k = tl.arange(0, BK)

        # This split's K blocks: [kb_lo, kb_hi), the K blocks shared out as evenly as possible.
        num_kb = K // BK
        kb_lo = pid_k * num_kb // SPLIT_K
        kb_hi = (pid_k + 1) * num_kb // SPLIT_K

        a_ptrs = a_ptr + rows[:, None] * stride_am + (kb_lo * BK + offs_k)[None, :] * stride_ak
        b_ptrs = b_ptr + (kb_lo * BK + offs_k)[:, None] * stride_bk + cols[None, :] * stride_bn
        as_ptrs = as_ptr + rows * stride_asm + kb_lo * stride_ask
        if BLOCK_N <= SBN:
            # The whole N tile lies in one 128-block of N (BLOCK_N divides 128): one scale per K block.
            bs_ptrs = bs_ptr + ((pid_n * BLOCK_N) // SBN) * stride_bsn + kb_lo * stride_bsk
        else:
            bs_ptrs = bs_ptr + (cols // SBN) * stride_bsn + kb_lo * stride_bsk

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(kb_lo, kb_hi):
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            a_s = tl.load(as_ptrs)
            b_s = tl.load(bs_ptrs)
            # A fresh float32 product per scale block: its scales apply to it alone.
            part = tl.dot(a, b, out_dtype=tl.float32)
            if BLOCK_N <= SBN:
                acc += part * (a_s * b_s)[:, None]
            else:
                acc += part * (a_s[:, None] * b_s[None, :])
            a_ptrs += BK * stride_ak
            b_ptrs += BK * stride_bk
            as_ptrs += stride_ask
            bs_ptrs += stride_bsk

        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        if SPLIT_K == 1:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
            out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            # The float32 partial of this split; the reduce kernel adds the splits in order.
            ws_ptrs = ws_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
            tl.store(ws_ptrs, acc, mask=mask)

    @triton.jit
    def _split_k_reduce_kernel(ws_ptr, bias_ptr, out_ptr, MN, N,
                               SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        # out (contiguous [M, N]) = sum of the SPLIT_K partials in split order (deterministic) + bias.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLIT_K):
            acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ launcher
def _max_offset(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))


def _check(a, b, a_scales, b_scales, out_dtype, bias) -> Tuple[int, int, int]:
    check_dtype(OP, "a", a, (FP8,), hint="Quantize activations with qkernels.ops.fp8_block.per_token_group_quant.")
    check_dtype(OP, "b", b, (FP8,), hint="b is the .t() of a float8_e4m3fn [N, K] weight.")
    check_dim(OP, "a", a, 2)
    check_dim(OP, "b", b, 2)
    M, K = a.shape
    if b.shape[0] != K:
        fail(OP, f"a {tuple(a.shape)} and b {tuple(b.shape)} do not chain: a is [M, K], b is [K, N] (the .t() of "
                 "an [N, K] weight).")
    N = b.shape[1]
    if K % BLOCK_K != 0:
        fail(OP, f"K = {K} must be a multiple of {BLOCK_K} (the scale block along K); pad the weight's and the "
                 "activations' K with zeros to a multiple of 128.")
    kb, nb = K // BLOCK_K, -(-N // SCALE_BLOCK_N)
    check_dtype(OP, "a_scales", a_scales, (torch.float32,), hint="Scales are float32: use .float().")
    check_dtype(OP, "b_scales", b_scales, (torch.float32,), hint="Scales are float32: use .float().")
    if tuple(a_scales.shape) != (M, kb):
        fail(OP, f"a_scales has shape {tuple(a_scales.shape)}; expected [M, K/128] = [{M}, {kb}] (one scale per "
                 "token and 128-group of K, as per_token_group_quant(x, 128) returns).")
    if tuple(b_scales.shape) != (nb, kb):
        fail(OP, f"b_scales has shape {tuple(b_scales.shape)}; expected [ceil(N/128), K/128] = [{nb}, {kb}] "
                 "(one scale per 128x128 block of the [N, K] weight).")
    check_out_dtype(OP, out_dtype, OUT_DTYPES)
    check_bias(OP, bias, N, out_dtype)
    check_same_device(OP, a=a, b=b, a_scales=a_scales, b_scales=b_scales, bias=bias)
    return M, N, K


def _launch(cfg: Config, a, b, a_scales, b_scales, bias, out) -> None:
    M, K = a.shape
    N = b.shape[1]
    has_bias = bias is not None
    bias_arg = bias if has_bias else out  # not read when HAS_BIAS=False
    tiles = triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n)
    ws = torch.empty((cfg.split_k, M, N), dtype=torch.float32, device=a.device) if cfg.split_k > 1 else out
    _fp8_block_mm_kernel[(tiles, cfg.split_k)](
        a, b, a_scales, b_scales, bias_arg, out, ws, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        a_scales.stride(0), a_scales.stride(1), b_scales.stride(0), b_scales.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=has_bias, SPLIT_K=cfg.split_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if cfg.split_k > 1:
        _split_k_reduce_kernel[(triton.cdiv(M * N, REDUCE_BLOCK),)](
            ws, bias_arg, out, M * N, N, SPLIT_K=cfg.split_k, HAS_BIAS=has_bias, BLOCK=REDUCE_BLOCK, num_warps=4)


_TUNED: Dict[tuple, Config] = {}


def tuned_configs() -> Dict[tuple, Config]:
    """A copy of the configs chosen by timing so far, keyed by (device index, M bucket, N, K, out
    dtype, bias, a K-contiguous, b K-contiguous, a_scales column-major)."""
    return dict(_TUNED)


def _device_limits(device: torch.device) -> Tuple[int, int]:
    """(SM count, shared memory per block with opt-in) of ``device``; fixed values under the interpreter."""
    if device.type != "cuda":
        return INTERPRETER_SMS, 227 * 1024
    p = torch.cuda.get_device_properties(device)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or 99 * 1024
    return p.multi_processor_count, smem


def _tune(key, candidates_: List[Config], run) -> Config:
    """The fastest of ``candidates_`` (``run(cfg)`` launches one), timed with do_bench; cached under ``key``."""
    best, best_ms, errors = None, math.inf, []
    for cfg in candidates_:
        try:
            ms = triton.testing.do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")
        except Exception as e:  # noqa: BLE001  (OutOfResources, compile errors: skip this candidate)
            errors.append(f"{cfg.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError(f"{OP}: every candidate config failed on this GPU: " + "; ".join(errors))
    _TUNED[key] = best
    return best


def triton_fp8_block_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scales: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype,
    bias: Optional[torch.Tensor] = None,
    config: Optional[ConfigLike] = None,
    autotune: bool = True,
) -> torch.Tensor:
    """Block-scaled FP8 GEMM ``out [M, N]`` (see the module docstring for the math and layouts).

    ``config``: None picks one (timed once per problem bucket when ``autotune``, else
    :func:`heuristic_config`); a :class:`Config` or a dict with ``BLOCK_M``, ``BLOCK_N`` and
    optionally ``SPLIT_K``, ``GROUP_M``, ``num_warps``, ``num_stages`` runs that one.
    Raises :class:`~qkernels.ops._checks.QKernelsInputError` (a ``ValueError``) for unsupported
    inputs and ``RuntimeError`` when the kernel cannot run here (no Triton, arch < sm89) or
    Triton fails.
    """
    if IMPORT_ERROR is not None:
        raise RuntimeError(IMPORT_ERROR)
    M, N, K = _check(a, b, a_scales, b_scales, out_dtype, bias)
    if max(_max_offset(a), _max_offset(b), M * N) >= 2**31:
        fail(OP, f"an operand is too large for the kernel's int32 indexing (M={M}, N={N}, K={K}); split M into "
                 "chunks.")
    fixed = _as_config(config) if config is not None else None
    if fixed is not None and not _fits_int32(fixed, M, N):
        fail(OP, f"split_k = {fixed.split_k} needs a workspace of {fixed.split_k} x {M} x {N} float32, too large for "
                 "the kernel's int32 indexing: use a smaller split_k.")
    if a.device.type == "cuda":
        why = available(a.device)
        if why is not None:
            raise RuntimeError(f"{OP}: {why}")
    elif not interpreting():
        raise RuntimeError(f"{OP}: tensors are on {a.device}; the kernel runs on a CUDA GPU (sm_89+), or on CPU "
                           "only through Triton's interpreter (TRITON_INTERPRET=1 before importing Triton). "
                           "The CPU reference is qkernels.reference.fp8_block.scaled_mm.")

    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    run = lambda cfg: _launch(cfg, a, b, a_scales, b_scales, bias, out)
    try:
        if fixed is not None:
            cfg = fixed
        else:
            sms, smem = _device_limits(a.device)
            key = (a.device.index, _next_pow2(M), N, K, out_dtype, bias is not None, a.stride(1) == 1,
                   b.stride(0) == 1, a_scales.stride(0) == 1)
            cfg = _TUNED.get(key)
            if cfg is None:
                if (autotune and a.device.type == "cuda" and not torch.cuda.is_current_stream_capturing()):
                    cfg = _tune(key, candidates(M, N, K, sms, smem), run)
                else:
                    cfg = heuristic_config(M, N, K, sms, smem)
        run(cfg)
    except (RuntimeError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001  (compile errors, OutOfResources, ...)
        raise RuntimeError(f"{OP} failed: {type(e).__name__}: {e}") from e
    return out
