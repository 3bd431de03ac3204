"""W4A16 sm80 kernel: a lane-level CPU emulation of csrc/w4a16/kernels/gemm_kernel.cuh, checked
against the reference.

What is emulated, transcribed from the kernel (same names): the loader's cp.async chunk map
(A rows with the XOR swizzle, zero fill past row m and past K, the weight words, the scale /
zero-point rows and their group index), the consumer's shared-memory reads (B words, the
ldmatrix row addresses, the scale re-read condition), the lop3 / magic-number dequantisation in
fp16 / bf16 arithmetic, the k-group reduction, the output / partial-slot writes and the
finalisation order, over the real schedule from the compiled library (partition.h).

What is *not* transcribed but taken from an independent source, so that a wrong index in the
kernel shows up as a wrong result: the hardware's fragment semantics, from CuTe's traits in the
pinned CUTLASS (cute/atom/mma_traits_sm80.hpp ``SM80_16x8x16_F32F16F16F32_TN`` A / B / C
layouts, cute/atom/copy_traits_sm75.hpp ``SM75_U32x4_LDSM_N``), and the math, from
``qkernels.reference.w4a16``. What the emulation cannot check: timing, races, the memory model
(cp.async completion, fences, the atomics), and the accumulation order inside one mma.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from qkernels.ops import w4a16 as W
from qkernels.reference import w4a16 as ref
from qkernels.testing.numerics import assert_close_rel

WARPS_N, WARPS_K, TILE_N = 2, 4, 64


# ----------------------------------------------------------------- hardware semantics (CuTe)
def _cute(shape_t, stride_t, shape_v, stride_v):
    """offset[thread, value] of a CuTe (thread, value) -> index layout (colexicographic modes)."""
    def offsets(shape, stride, n):
        out = []
        for i in range(n):
            off, rest = 0, i
            for s, d in zip(shape, stride):
                off += (rest % s) * d
                rest //= s
            out.append(off)
        return out

    t = offsets(shape_t, stride_t, 32)
    v = offsets(shape_v, stride_v, 1 if not shape_v else int(torch.tensor(shape_v).prod()))
    return torch.tensor([[a + b for b in v] for a in t])


# SM80_16x8x16 (F32F16F16F32 / F32BF16BF16F32, "TN"): A is M x K = 16 x 16, index m + 16 k;
# B is N x K = 8 x 16, index n + 8 k; C is M x N = 16 x 8, index m + 16 n.
A_IDX = _cute((4, 8), (32, 1), (2, 2, 2), (16, 8, 128))  # [lane, 8 values]: reg r holds values 2r, 2r+1
B_IDX = _cute((4, 8), (16, 1), (2, 2), (8, 64))  # [lane, 4 values]: reg r holds values 2r, 2r+1
C_IDX = _cute((4, 8), (32, 1), (2, 2), (16, 8))  # [lane, 4 values] = c0..c3


def ldmatrix_x4(rows):
    """rows: [32 lanes, 8] 16-bit values, lane l's 16-byte row. SM75_U32x4_LDSM_N: destination
    bit 32 t + 1024 j + b (thread t, register j) is source bit 128 s + o with s = (32 t + 1024 j) // 128.
    Returns [32 lanes, 4 registers, 2 halves]."""
    out = torch.empty(32, 4, 2, dtype=rows.dtype)
    for t in range(32):
        for j in range(4):
            bit = 32 * t + 1024 * j
            src, off = bit // 128, (bit % 128) // 16
            out[t, j] = rows[src, off:off + 2]
    return out


def mma(a_regs, b_regs, c):
    """mma.sync.m16n8k16.row.col.f32: a_regs [32, 4, 2], b_regs [32, 2, 2] (activation dtype
    values), c [32, 4] float32 -> c + A @ B in the fragment layout."""
    a = torch.zeros(256)
    a[A_IDX.flatten()] = a_regs.reshape(32, 8).float().flatten()
    b = torch.zeros(128)
    b[B_IDX.flatten()] = b_regs.reshape(32, 4).float().flatten()
    A = a.view(16, 16).t()  # index m + 16 k -> [m, k]
    B = b.view(16, 8)  # index n + 8 k -> [k, n]
    C = torch.zeros(128)
    C[C_IDX.flatten()] = c.flatten()
    C = C.view(8, 16).t() + A @ B  # index m + 16 n -> [m, n]
    return C.t().flatten()[C_IDX]


# ----------------------------------------------------------------- the kernel, transcribed
def _bits(x):
    return x.view(torch.int16).to(torch.int32) & 0xFFFF


def _from_bits(u16, dtype):
    return u16.to(torch.int16).view(dtype)


def dequant(q, o0, o1, s0, s1, dtype):
    """ActTraits<T>::dequant on a lane vector: q int64 [32] words (uint32 values), offsets /
    scales [32] per n-tile (o = (lo, hi) for fp16, (lo,) for bf16). Returns [32, 4 regs, 2 halves]."""
    def half2(word):  # uint32 -> two 16-bit lanes, low half first
        return torch.stack([_from_bits(word & 0xFFFF, dtype), _from_bits((word >> 16) & 0xFFFF, dtype)], -1)

    out = torch.empty(32, 4, 2, dtype=dtype)
    if dtype == torch.float16:
        magic = 0x64006400
        lo0, hi0 = (q & 0x000F000F) | magic, (q & 0x00F000F0) | magic
        q = q >> 8
        lo1, hi1 = (q & 0x000F000F) | magic, (q & 0x00F000F0) | magic
        for r, (w, o, s, is_hi) in enumerate(((lo0, o0, s0, False), (hi0, o0, s0, True), (lo1, o1, s1, False),
                                              (hi1, o1, s1, True))):
            v = half2(w)
            if is_hi:  # __hfma2(v, 1/16, o.hi): one rounding of the exact value
                v = (v.float() * (1.0 / 16.0) + o[1].float().unsqueeze(-1)).to(dtype)
            else:  # __hsub2(v, o.lo)
                v = (v.float() - o[0].float().unsqueeze(-1)).to(dtype)
            out[:, r] = (v.float() * s.float().unsqueeze(-1)).to(dtype)  # __hmul2
    else:
        magic = 0x43004300
        for r in range(4):
            v = half2(((q >> (4 * r)) & 0x000F000F) | magic)
            o, s = (o0, s0) if r < 2 else (o1, s1)
            v = (v.float() - o[0].float().unsqueeze(-1)).to(dtype)
            out[:, r] = (v.float() * s.float().unsqueeze(-1)).to(dtype)
    return out


def offsets(z, dtype):
    """ActTraits<T>::offsets(z) for a lane vector of zero points."""
    z = z.float()
    if dtype == torch.float16:
        return ((1024.0 + z).to(dtype), (-64.0 - z).to(dtype))
    return ((128.0 + z).to(dtype),)


def emulate(a, qweight, scales, zeros, bias, group_size, sched):
    """The kernel's output for a [m, k] (already act-order permuted) over schedule ``sched``."""
    meta, dtype = sched.meta, a.dtype
    m, n, K = meta["m"], meta["n"], meta["k"]
    tk, rows_cfg = meta["tile_k"], meta["rows"]
    mbs = rows_cfg // 16
    steps, ls_n = tk // 16, tk // 16 // WARPS_K
    acpr = tk // 8
    gs = K if group_size == -1 else group_size
    gshift = ((min(gs, tk) // 16).bit_length() - 1)  # __ffs(x) - 1 of a power of two
    gmask = (1 << gshift) - 1
    s_rows = tk >> (4 + gshift)
    a16 = _bits(a)  # [m, K] 16-bit patterns
    qw = qweight.to(torch.int64) & 0xFFFFFFFF
    s16 = _bits(scales)
    z16 = _bits(zeros) if zeros is not None else None
    out = torch.full((m, n), float("nan"), dtype=dtype)
    slots = {}
    lane = torch.arange(32)

    def load_stage(slice_, nt, kt):
        """cp.async of one stage: A [chunks, 8], B [k16 rows * 128] words, S / Z [rows * 64]."""
        k0, k16_0, row0 = kt * tk, kt * tk // 16, slice_ * 64
        sa = torch.zeros(rows_cfg * acpr, 8, dtype=torch.int32)
        for idx in range(rows_cfg * acpr):  # id = tid + i * 256 covers every chunk once
            r, c = divmod(idx, acpr)
            if row0 + r < m and k0 + 8 * c < K:
                sa[r * acpr + (c ^ (r % 8))] = a16[row0 + r, k0 + 8 * c:k0 + 8 * c + 8]
        sb = torch.zeros(steps * 128, dtype=torch.int64)
        for idx in range(steps * 32):
            row, c = divmod(idx, 32)
            if k16_0 + row < K // 16:
                sb[4 * idx:4 * idx + 4] = qw[k16_0 + row, nt * 128 + c * 4:nt * 128 + c * 4 + 4]
        ss = torch.zeros(tk // 32 * 64, dtype=torch.int32)
        sz = torch.zeros(tk // 32 * 64, dtype=torch.int32)
        for sid in range(s_rows * 8):
            j, c = divmod(sid, 8)
            kk = k0 + (j << (4 + gshift))
            if kk < K:
                ss[8 * sid:8 * sid + 8] = s16[kk // gs, nt * TILE_N + 8 * c:nt * TILE_N + 8 * c + 8]
                if z16 is not None:
                    sz[8 * sid:8 * sid + 8] = z16[kk // gs, nt * TILE_N + 8 * c:nt * TILE_N + 8 * c + 8]
        return sa, sb, ss, sz

    for block in range(meta["grid"]):
        pieces = [p for p in sched.pieces.tolist() if p[0] == block]
        acc = torch.zeros(WARPS_K, WARPS_N, mbs, 4, 32, 4)  # [kg][nw][mb][n-tile][lane][c0..c3]
        for p in pieces:
            row = dict(zip(sched.fields, p))
            slice_, nt, tile = row["slice"], row["n_tile"], row["tile"]
            for kt in range(row["k_begin"], row["k_end"]):
                sa, sb, ss, sz = load_stage(slice_, nt, kt)
                for kg, nw in itertools.product(range(WARPS_K), range(WARPS_N)):
                    sc = off = None
                    for ls in range(ls_n):
                        s = kg * ls_n + ls
                        words = [sb[s * 128 + nw * 64 + lane], sb[s * 128 + nw * 64 + 32 + lane]]
                        afr = []
                        for mb in range(mbs):
                            r, c = mb * 16 + lane % 16, 2 * s + lane // 16
                            rows16 = sa[r * acpr + (c ^ (r % 8))]
                            afr.append(ldmatrix_x4(_from_bits(rows16, dtype)))
                        if ls == 0 or (s & gmask) == 0:
                            idx = (s >> gshift) * TILE_N + nw * 32 + lane // 4
                            sc = [_from_bits(ss[idx + 8 * i], dtype) for i in range(4)]
                            zs = [sz[idx + 8 * i] for i in range(4)] if z16 is not None else None
                            off = ([offsets(_from_bits(z, dtype), dtype) for z in zs] if zs is not None
                                   else [offsets(torch.full((32,), 8.0), dtype)] * 4)
                        for q in range(2):
                            b = dequant(words[q], off[2 * q], off[2 * q + 1], sc[2 * q], sc[2 * q + 1], dtype)
                            for mb in range(mbs):
                                acc[kg, nw, mb, 2 * q] = mma(afr[mb], b[:, 0:2], acc[kg, nw, mb, 2 * q])
                                acc[kg, nw, mb, 2 * q + 1] = mma(afr[mb], b[:, 2:4], acc[kg, nw, mb, 2 * q + 1])
            # finish_piece: k groups summed in order 0 + 1 + 2 + 3, then k group 0 writes
            tot = acc[0].clone()
            for src in range(1, WARPS_K):
                tot += acc[src]
            acc.zero_()
            row0 = slice_ * 64
            rows = min(rows_cfg, m - row0)
            vals = {}
            for nw, mb, j, h in itertools.product(range(WARPS_N), range(mbs), range(4), range(2)):
                col = nw * 32 + j * 8 + 2 * (lane % 4)
                r = mb * 16 + lane // 4 + 8 * h
                for e in range(2):
                    for ln in range(32):
                        if r[ln] < rows:
                            vals[(int(r[ln]), int(col[ln]) + e)] = tot[nw, mb, j, ln, 2 * h + e]
            if row["pieces"] == 1:
                for (r, c), v in vals.items():
                    bv = bias[nt * TILE_N + c].float() if bias is not None else 0.0
                    out[row0 + r, nt * TILE_N + c] = (v + bv).to(dtype)
            else:
                slots.setdefault(tile, {})[row["piece"]] = (row0, nt, rows, vals)
    # finalize: slots of a shared tile in piece order (whoever arrived last)
    for tile, pcs in slots.items():
        row0, nt, rows, _ = pcs[0]
        for r in range(rows):
            for c in range(TILE_N):
                s = torch.tensor(0.0)
                for p in range(len(pcs)):
                    s = s + pcs[p][3][(r, c)]
                bv = bias[nt * TILE_N + c].float() if bias is not None else 0.0
                out[row0 + r, nt * TILE_N + c] = (s + bv).to(dtype)
    return out


# ----------------------------------------------------------------- tests
def _library_or_skip():
    reason = W.schedule_unavailable()
    if reason:
        pytest.skip(f"the emulation runs over the schedule from the compiled library: {reason}")
    from qkernels import _loader

    return _loader.library_path


def test_fragment_layouts_are_the_ptx_ones():
    """The CuTe-derived maps say what PTX's mma.m16n8k16 documentation says (groupID = lane / 4,
    threadID_in_group = lane % 4): a0,a1 at (g, 2t..2t+1), a2,a3 at (g+8, ..), a4..a7 at k + 8;
    b0,b1 at (k = 2t..2t+1, n = g), b2,b3 at k + 8; c0,c1 at (g, 2t..2t+1), c2,c3 at (g+8, ..)."""
    for ln in range(32):
        g, t = ln // 4, ln % 4
        a = [(int(i) % 16, int(i) // 16) for i in A_IDX[ln]]
        assert a == [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1),
                     (g, 2 * t + 8), (g, 2 * t + 9), (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]
        b = [(int(i) // 8, int(i) % 8) for i in B_IDX[ln]]  # (k, n)
        assert b == [(2 * t, g), (2 * t + 1, g), (2 * t + 8, g), (2 * t + 9, g)]
        c = [(int(i) % 16, int(i) // 16) for i in C_IDX[ln]]
        assert c == [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]


def test_mma_emulation_is_a_matmul():
    torch.manual_seed(0)
    A, B = torch.randn(16, 16).half(), torch.randn(16, 8).half()
    a_regs = A.t().flatten()[A_IDX].view(32, 4, 2)  # A index m + 16 k
    b_regs = B.flatten()[B_IDX].view(32, 2, 2)  # B index n + 8 k over [k, n] row-major
    c = mma(a_regs, b_regs, torch.zeros(32, 4))
    got = torch.zeros(128)
    got[C_IDX.flatten()] = c.flatten()
    torch.testing.assert_close(got.view(8, 16).t(), A.float() @ B.float())


def _case(m, n, k, group_size, asym, dtype, act_order=False):
    q = torch.randint(-8, 8, (n, k), dtype=torch.int32)
    groups = 1 if group_size == -1 else k // group_size
    scale = (torch.rand(n, groups) * 0.02 + 0.005).to(torch.bfloat16)
    zp = ref.pack_int4((torch.randint(0, 16, (n, groups), dtype=torch.int32)).t()).t().contiguous() if asym else None
    g_idx = ref.default_g_idx(k, group_size)[torch.randperm(k)].contiguous() if act_order else None
    w = W.prepare_weight(ref.pack_int4(q + 8), scale, zp, g_idx, group_size, act_dtype=dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    return x, w, bias


# (m, k, num_sms): every M bucket, K with a half last iteration (k % 256 == 128 for m <= 16),
# shared tiles (few SMs: stream-K pieces, partial slots, finalisation), data-parallel, 2 slices.
CASES = [(1, 384, 3), (5, 512, 64), (16, 256, 5), (17, 384, 3), (40, 256, 64), (64, 512, 5), (70, 384, 7)]


@pytest.mark.parametrize("dtype,asym", list(itertools.product((torch.float16, torch.bfloat16), (False, True))))
def test_emulated_kernel_matches_reference(dtype, asym):
    _library_or_skip()
    torch.manual_seed(1)
    for (m, k, sms), group_size in zip(CASES, itertools.cycle((-1, 32, 64, 128))):
        n = 128
        x, w, bias = _case(m, n, k, group_size, asym, dtype, act_order=group_size == 64)
        sched = W.schedule(m, n, k, sms)
        a = x.index_select(-1, w.perm.long()) if w.perm is not None else x
        got = emulate(a.contiguous(), w.qweight, w.scales, w.zeros, bias, group_size, sched)
        exp = W.gemm(x, w, bias)  # the CPU reference op
        what = f"M={m} K={k} SMs={sms} g={group_size} {dtype} asym={asym} grid={sched.meta['grid']}"
        assert torch.isfinite(got).all(), what + ": an output element was never written"
        assert_close_rel(got, exp, 2e-3 if dtype == torch.float16 else 8e-3, what)


def test_emulation_catches_a_wrong_swizzle(monkeypatch):
    """The emulation is sensitive to the kernel's index arithmetic: break the A swizzle in the
    consumer only and the result must be wrong."""
    _library_or_skip()
    torch.manual_seed(2)
    x, w, bias = _case(16, 128, 256, 128, False, torch.float16)
    sched = W.schedule(16, 128, 256, 4)
    exp = W.gemm(x, w, bias)
    real = ldmatrix_x4
    monkeypatch.setitem(globals(), "ldmatrix_x4", lambda rows: real(rows.roll(1, 0)))  # rows of the wrong lanes
    got = emulate(x, w.qweight, w.scales, w.zeros, bias, 128, sched)
    assert (got.float() - exp.float()).abs().max() > 0.1
