// W4A16 GEMM kernel (Marlin design, sm80+): out[m, n] = a[m, k] @ dequant(b)[k, n] (+ bias).
//
// Included by the gemm_*.cu instantiation files only. Layouts: README.md and
// qkernels/reference/w4a16.py. Block configuration and work partition: ../partition.h (the same
// code the glue and the schedule introspection run).
//
// Shape of the computation
// * A block is 8 warps. It owns a tile of up to 64 rows (16 * MB: the M bucket) x 64 columns;
//   warp w covers columns [32 (w % 2), +32) (four m16n8k16 n-tiles) and a quarter of each
//   iteration's k steps (k group w / 2): the k groups are summed through shared memory when a
//   piece of work ends. 32 columns per warp: every A fragment (ldmatrix) feeds 4 mma per m-block.
// * Work: the partition's contiguous range of (tile, k-tile) iterations (stream-K), or one whole
//   tile (data-parallel); see partition.h for the reduction of shared tiles, which never makes a
//   block wait for another block.
// * Pipeline: per iteration, one cp.async stage brings the A tile (zero-filled past row m and
//   past K), the weights (tile_k x 64 nibbles: 8 KiB for MB = 1) and the scale / zero-point rows
//   of the groups the iteration covers. The stage ring keeps running across piece boundaries:
//   the next piece's stages are in flight while a piece's epilogue runs. Weights are read once
//   when there is one row slice: L2 evict-first, so they do not push the re-read A out of L2.
// * Registers: fragments are double-buffered (Marlin): the ldmatrix / lds of k step s + 1 are
//   issued before the mma of step s; scales / zero points are re-read from shared memory only
//   when the group changes.
// * Dequantisation: lop3 + magic numbers (fp16: 0x6400 | u = 1024 + u, 0x6400 | u << 4 =
//   1024 + 16u; bf16: 0x4300 | u = 128 + u) give u - z exactly with one sub / fma, then one
//   multiply by the group scale: the same single rounding as the reference.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>

#include "w4a16/w4a16.h"

namespace qk::w4a16::detail {

// ----------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; valid = false reads nothing and writes 16 zero bytes
// (src-size 0). `gmem` must be a valid address either way (callers pass the tensor's base).
__device__ __forceinline__ void cp_async_zfill(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

// The same with an L2 cache policy (createpolicy below).
__device__ __forceinline__ void cp_async_zfill_hint(void* smem, const void* gmem, bool valid, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(valid ? 16 : 0), "l"(policy)
               : "memory");
}

// An L2 policy that evicts the lines it fills first (data read exactly once).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// (a & b) | c in one instruction.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

// Returns the old value. acq_rel: releases this thread's (and, through the preceding barrier,
// the block's fenced) partial-sum stores; acquires every earlier releaser's when it is the last.
__device__ __forceinline__ int atomic_add_acq_rel(int* p, int v) {
  int old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// Barrier 1 among the first `kCount` threads (warps 0 .. kCount / 32 - 1); barrier 0 is __syncthreads.
template <int kCount>
__device__ __forceinline__ void named_barrier_1() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kCount) : "memory");
}

// ----------------------------------------------------------------- per-dtype pieces
// dequant turns one int32 of 8 nibbles (a lane's word of one k16 step: two n-tiles) into the 4
// B-fragment registers: nibbles i and i + 4 -> register i, i.e. register 0 / 1 = n-tile 0 at
// k = 2t, 2t+1 / 2t+8, 2t+9; register 2 / 3 = n-tile 1 (layout: reference/w4a16.py).
template <typename T>
struct ActTraits;

template <>
struct ActTraits<half> {
  using T2 = half2;
  // lo = 1024 + u (nibble at bits 0-3): lo - (1024 + z); hi = 1024 + 16u (bits 4-7): hi / 16 - (64 + z).
  struct Offsets {
    half2 lo, hi;
  };
  __device__ static Offsets offsets(float z) {
    return {__float2half2_rn(1024.f + z), __float2half2_rn(-64.f - z)};
  }
  __device__ static void dequant(uint32_t q, const Offsets& o0, const Offsets& o1, half2 s0, half2 s1,
                                 uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x64006400u;  // 1024 in both halves
    const half2 sixteenth = __float2half2_rn(1.f / 16.f);
    uint32_t lo0 = and_or(q, 0x000f000fu, kMagic), hi0 = and_or(q, 0x00f000f0u, kMagic);
    q >>= 8;
    uint32_t lo1 = and_or(q, 0x000f000fu, kMagic), hi1 = and_or(q, 0x00f000f0u, kMagic);
    half2 w[4] = {
        __hmul2(__hsub2(*reinterpret_cast<half2*>(&lo0), o0.lo), s0),
        __hmul2(__hfma2(*reinterpret_cast<half2*>(&hi0), sixteenth, o0.hi), s0),
        __hmul2(__hsub2(*reinterpret_cast<half2*>(&lo1), o1.lo), s1),
        __hmul2(__hfma2(*reinterpret_cast<half2*>(&hi1), sixteenth, o1.hi), s1),
    };
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = *reinterpret_cast<uint32_t*>(&w[i]);
  }
  __device__ static half2 splat(half s) { return __half2half2(s); }
  __device__ static half2 pack(float x, float y) { return __floats2half2_rn(x, y); }
  __device__ static void mma(const uint32_t (&a)[4], const uint32_t* b, float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct ActTraits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  // bf16 has 7 mantissa bits: 128 + u fits, 128 + 16u does not, so each nibble pair is shifted
  // down to bits 0-3 / 16-19 first. lo = 128 + u: lo - (128 + z).
  struct Offsets {
    __nv_bfloat162 lo;
  };
  __device__ static Offsets offsets(float z) { return {__float2bfloat162_rn(128.f + z)}; }
  __device__ static void dequant(uint32_t q, const Offsets& o0, const Offsets& o1, __nv_bfloat162 s0,
                                 __nv_bfloat162 s1, uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x43004300u;  // 128 in both halves
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t v = and_or(q >> (4 * i), 0x000f000fu, kMagic);
      __nv_bfloat162 w = __hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&v), i < 2 ? o0.lo : o1.lo),
                                 i < 2 ? s0 : s1);
      b[i] = *reinterpret_cast<uint32_t*>(&w);
    }
  }
  __device__ static __nv_bfloat162 splat(__nv_bfloat16 s) { return __bfloat162bfloat162(s); }
  __device__ static __nv_bfloat162 pack(float x, float y) { return __floats2bfloat162_rn(x, y); }
  __device__ static void mma(const uint32_t (&a)[4], const uint32_t* b, float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// ----------------------------------------------------------------- shared-memory stage layout
// One stage, in 16-byte chunks: A [rows][tile_k / 8 chunks, chunk c of row r stored at c ^ (r % 8)
// so that ldmatrix's and cp.async's 8-row / 8-chunk phases hit 8 distinct bank groups],
// B [tile_k / 16 k16 rows][32 chunks = the tile's 128 words of that row],
// S [tile_k / 32 rows][8 chunks = 64 scales], Z [same, zero points].
template <int MB>
struct StageLayout {
  static constexpr int kTK = bucket_tile_k(MB);
  static constexpr int kRows = 16 * MB;
  static constexpr int kSteps = kTK / 16;     // k16 steps per iteration
  static constexpr int kLS = kSteps / kWarpsK;  // of which one warp does
  static constexpr int kACpr = kTK / 8;       // chunks per A row
  static constexpr int kAChunks = kRows * kACpr;
  static constexpr int kBChunks = kSteps * 32;
  static constexpr int kSChunks = stage_s_rows(MB) * 8;
  static constexpr int kA = 0, kB = kA + kAChunks, kS = kB + kBChunks, kZ = kS + kSChunks;
  static constexpr int kChunks = kZ + kSChunks;
  static_assert(kChunks * 16 == stage_bytes(MB), "stage layout and partition.h disagree");
  static_assert(kAChunks % kThreads == 0 && kBChunks % kThreads == 0, "whole cp.async rounds");
  static_assert(kLS >= 2 && kLS % 2 == 0, "the fragment double buffer alternates within a stage");
  static_assert(kACpr >= 8, "the XOR swizzle needs 8 chunks per row");
  static_assert(kSChunks <= 128, "scale rows: threads 0..127, zero points: threads 128..255");
};

// ----------------------------------------------------------------- the kernel
template <typename T, int MB, bool HAS_ZEROS>
__global__ void __launch_bounds__(kThreads, 1) gemm_kernel(const GemmArgs args) {
  using Tr = ActTraits<T>;
  using T2 = typename Tr::T2;
  using Off = typename Tr::Offsets;
  using L = StageLayout<MB>;
  constexpr int kStages = bucket_stages(MB);

  extern __shared__ uint4 smem[];
  __shared__ int finalize_tiles[2];

  const Partition& P = args.part;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int kg = warp / kWarpsN, nw = warp % kWarpsN;  // k group (0: holds the sums), column half
  const int m = P.m, n = P.n, K = P.k;
  const T* const a = static_cast<const T*>(args.a);
  const T* const scales = static_cast<const T*>(args.scales);
  const T* const zeros = static_cast<const T*>(args.zeros);
  // Scale rows per stage: one per min(group, tile_k) of k, i.e. one per (1 << gshift) k16 steps.
  const int gs = args.group_size;
  const int gshift = __ffs((gs < L::kTK ? gs : L::kTK) / 16) - 1;  // 1, 2, 3 or 4
  const int gmask = (1 << gshift) - 1;
  const int s_rows = L::kTK >> (4 + gshift);
  const bool weights_once = P.slices == 1;  // no other row slice re-reads them
  const uint64_t policy = evict_first_policy();

  // ---------------------------------------------------------------- loader
  Cursor ld;
  ld.start(P, blockIdx.x);
  int ld_slice, ld_nt;
  P.tile_coords(ld.tile, ld_slice, ld_nt);

  auto load_stage = [&](int stage) {
    uint4* const st = smem + stage * L::kChunks;
    const int k0 = ld.kt * L::kTK, k16_0 = k0 / 16, row0 = ld_slice * kSliceM;
#pragma unroll
    for (int i = 0; i < L::kAChunks / kThreads; ++i) {
      const int id = tid + i * kThreads, r = id / L::kACpr, c = id % L::kACpr;
      const bool valid = row0 + r < m && k0 + 8 * c < K;
      const T* src = a + (valid ? static_cast<size_t>(row0 + r) * K + k0 + 8 * c : 0);
      cp_async_zfill(st + L::kA + r * L::kACpr + (c ^ (r % 8)), src, valid);
    }
#pragma unroll
    for (int i = 0; i < L::kBChunks / kThreads; ++i) {
      const int id = tid + i * kThreads, row = id / 32, c = id % 32;
      const bool valid = k16_0 + row < K / 16;
      const uint32_t* src = args.b + (valid ? static_cast<size_t>(k16_0 + row) * 2 * n + ld_nt * 128 + c * 4 : 0);
      if (weights_once) {
        cp_async_zfill_hint(st + L::kB + id, src, valid, policy);
      } else {
        cp_async_zfill(st + L::kB + id, src, valid);
      }
    }
    // Scale row j of the stage: the group of k = k0 + j * (16 << gshift); rows past K are zeros.
    const int sid = tid % 128;
    if (sid < s_rows * 8 && (tid < 128 || HAS_ZEROS)) {
      const int j = sid / 8, c = sid % 8, kk = k0 + (j << (4 + gshift));
      const bool valid = kk < K;
      const T* base = tid < 128 ? scales : zeros;
      const T* src = base + (valid ? static_cast<size_t>(kk / gs) * n + ld_nt * kTileN + 8 * c : 0);
      cp_async_zfill(st + (tid < 128 ? L::kS : L::kZ) + sid, src, valid);
    }
  };
  // Loads the loader's next iteration (if any) into `stage`; always commits a group so that
  // cp.async.wait_group counts stay uniform.
  auto load_next = [&](int stage) {
    if (ld.left > 0) {
      load_stage(stage);
      ld.advance(P);
      if (ld.kt == 0 && ld.left > 0) P.tile_coords(ld.tile, ld_slice, ld_nt);
    }
    cp_async_commit();
  };

  // ---------------------------------------------------------------- fragments (double-buffered)
  float acc[MB][4][4];
  uint32_t af[2][MB][4];  // A: one 16x16 fragment per m-block
  uint32_t bq[2][2];      // B: one word per 16 columns
  T2 sc[2][4];            // scales of this thread's 4 columns (n-tiles 0..3)
  Off off[2][4];          // dequant offsets of those columns (zero points)
#pragma unroll
  for (int i = 0; i < 4; ++i) off[0][i] = off[1][i] = Tr::offsets(8.f);
  auto zero_acc = [&]() {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mb][j][e] = 0.f;
  };
  zero_acc();

  // Fragments of this warp's local step ls (global step s) of `stage` into buffer `buf`.
  auto load_frags = [&](int buf, int stage, int ls) {
    const uint4* const st = smem + stage * L::kChunks;
    const int s = kg * L::kLS + ls;
    const uint32_t* sb = reinterpret_cast<const uint32_t*>(st + L::kB) + s * 128 + nw * 64 + lane;
    bq[buf][0] = sb[0];
    bq[buf][1] = sb[32];
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) {
      const int r = mb * 16 + lane % 16, c = 2 * s + lane / 16;
      ldmatrix_x4(af[buf][mb], st + L::kA + r * L::kACpr + (c ^ (r % 8)));
    }
    if (ls == 0 || (s & gmask) == 0) {  // a new group (warp-uniform)
      const int idx = (s >> gshift) * kTileN + nw * 32 + lane / 4;
      const T* ss = reinterpret_cast<const T*>(st + L::kS) + idx;
#pragma unroll
      for (int i = 0; i < 4; ++i) sc[buf][i] = Tr::splat(ss[8 * i]);
      if constexpr (HAS_ZEROS) {
        const T* zs = reinterpret_cast<const T*>(st + L::kZ) + idx;
#pragma unroll
        for (int i = 0; i < 4; ++i) off[buf][i] = Tr::offsets(static_cast<float>(zs[8 * i]));
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sc[buf][i] = sc[buf ^ 1][i];
        if constexpr (HAS_ZEROS) off[buf][i] = off[buf ^ 1][i];
      }
    }
  };

  auto mma_step = [&](int buf) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {  // 16-column halves of the warp: n-tiles 2q, 2q + 1
      uint32_t b[4];
      Tr::dequant(bq[buf][q], off[buf][2 * q], off[buf][2 * q + 1], sc[buf][2 * q], sc[buf][2 * q + 1], b);
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) {
        Tr::mma(af[buf][mb], b, acc[mb][2 * q]);
        Tr::mma(af[buf][mb], b + 2, acc[mb][2 * q + 1]);
      }
    }
  };

  // ---------------------------------------------------------------- piece epilogue
  // Thread 0 keeps the tickets of the block's (at most two) shared pieces: its first and last
  // (scalars, not an array indexed at run time: that would live in local memory).
  int first_tile = -1, first_ticket = 0, last_tile = -1, last_ticket = 0;
  const T* const bias = static_cast<const T*>(args.bias);
  T* const out = static_cast<T*>(args.c);

  auto finish_piece = [&](int scratch_stage, int tile, int slice, int nt, bool first_piece) {
    // 1. Sum the k groups into k group 0, 16 rows at a time, through the stage just consumed
    //    (free until the loader refills it, which happens after the barriers below).
    float4* const scratch = reinterpret_cast<float4*>(smem + scratch_stage * L::kChunks);
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) {
      if (kg > 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          scratch[((kg - 1) * 4 + j) * 64 + nw * 32 + lane] =
              make_float4(acc[mb][j][0], acc[mb][j][1], acc[mb][j][2], acc[mb][j][3]);
      }
      __syncthreads();
      if (kg == 0) {
#pragma unroll
        for (int src = 0; src < kWarpsK - 1; ++src)  // fixed order: deterministic
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float4 v = scratch[(src * 4 + j) * 64 + nw * 32 + lane];
            acc[mb][j][0] += v.x, acc[mb][j][1] += v.y, acc[mb][j][2] += v.z, acc[mb][j][3] += v.w;
          }
      }
      __syncthreads();
    }
    // 2. k group 0 (warps 0, 1) writes the tile, or its partial + takes a ticket; the other
    //    warps go on with the next piece.
    if (kg == 0) {
      const int row0 = slice * kSliceM;
      const int rows = min(L::kRows, m - row0);
      // Calls f(row in tile, column in tile, value pair) for this thread's accumulator pairs
      // (mma C fragment: c0, c1 at row lane / 4, columns 2 (lane % 4) + {0, 1}; c2, c3 at row + 8).
      auto for_each_pair = [&](auto&& f) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int mb = 0; mb < MB; ++mb)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int row = mb * 16 + lane / 4 + 8 * h;
              if (row < rows) f(row, nw * 32 + j * 8 + 2 * (lane % 4), acc[mb][j][2 * h], acc[mb][j][2 * h + 1]);
            }
      };
      if (P.pieces(tile) == 1) {
        for_each_pair([&](int row, int col, float x, float y) {
          const int gcol = nt * kTileN + col;
          if (bias) x += static_cast<float>(bias[gcol]), y += static_cast<float>(bias[gcol + 1]);
          *reinterpret_cast<T2*>(out + static_cast<size_t>(row0 + row) * n + gcol) = Tr::pack(x, y);
        });
      } else {
        float* const slot = args.workspace + static_cast<size_t>(P.slot(blockIdx.x, tile)) * P.slot_rows * kTileN;
        for_each_pair([&](int row, int col, float x, float y) {
          __stcg(reinterpret_cast<float2*>(slot + row * kTileN + col), make_float2(x, y));
        });
        __threadfence();
        named_barrier_1<kWarpsN * 32>();  // k group 0's stores are all fenced
        if (tid == 0) {  // the returned ticket is only read at the end: no stall here
          const int ticket = atomic_add_acq_rel(args.counters + tile, 1);
          if (first_piece) {
            first_tile = tile, first_ticket = ticket;
          } else {
            last_tile = tile, last_ticket = ticket;
          }
        }
      }
    }
    zero_acc();
  };

  // Sums the partials of shared tile t in piece order (+ bias) and writes the output; run by
  // the block whose ticket completed the tile.
  auto finalize = [&](int t) {
    int slice, nt;
    P.tile_coords(t, slice, nt);
    const int row0 = slice * kSliceM, rows = min(L::kRows, m - row0);
    const int first = P.first_block(t), count = P.pieces(t);
    const size_t slot_floats = static_cast<size_t>(P.slot_rows) * kTileN;
    for (int c = tid; c < rows * (kTileN / 4); c += kThreads) {
      const int row = c / (kTileN / 4), col = 4 * (c % (kTileN / 4));
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int p = 0; p < count; ++p) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>(
            args.workspace + static_cast<size_t>(P.slot(first + p, t)) * slot_floats + row * kTileN + col));
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
      const int gcol = nt * kTileN + col;
      float b[4] = {0.f, 0.f, 0.f, 0.f};
      if (bias) {
#pragma unroll
        for (int e = 0; e < 4; ++e) b[e] = static_cast<float>(bias[gcol + e]);
      }
      T2* dst = reinterpret_cast<T2*>(out + static_cast<size_t>(row0 + row) * n + gcol);
      dst[0] = Tr::pack(s.x + b[0], s.y + b[1]);
      dst[1] = Tr::pack(s.z + b[2], s.w + b[3]);
    }
    if (tid == 0) args.counters[t] = 0;  // every piece has arrived: leave the counter zero
  };

  // ---------------------------------------------------------------- main loop
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load_next(s);
  int rd = 0, wr = kStages - 1;  // stage of the iteration being computed / next to be loaded
  cp_async_wait<kStages - 2>();
  __syncthreads();
  load_frags(0, 0, 0);

  Cursor cs;
  cs.start(P, blockIdx.x);
  int cs_slice, cs_nt;
  P.tile_coords(cs.tile, cs_slice, cs_nt);
  const int n_iter = cs.left;
  bool first_piece = true;
  for (int it = 0; it < n_iter; ++it) {
    const int cur = rd;
#pragma unroll
    for (int ls = 0; ls < L::kLS; ++ls) {
      if (ls < L::kLS - 1) load_frags((ls + 1) % 2, rd, ls + 1);
      if (ls == L::kLS - 2) {
        // Every warp has read its last fragments of stage cur - 1 (before the previous
        // iteration's barrier): refill it, then wait for stage cur + 1.
        load_next(wr);
        wr = wr + 1 == kStages ? 0 : wr + 1;
        rd = rd + 1 == kStages ? 0 : rd + 1;
        cp_async_wait<kStages - 2>();
        __syncthreads();
      }
      if (ls == L::kLS - 1 && it + 1 < n_iter) load_frags(0, rd, 0);
      mma_step(ls % 2);
    }
    if (cs.ends_piece(P)) {
      finish_piece(cur, cs.tile, cs_slice, cs_nt, first_piece);
      first_piece = false;
    }
    cs.advance(P);
    if (cs.kt == 0 && cs.left > 0) P.tile_coords(cs.tile, cs_slice, cs_nt);
  }
  cp_async_wait<0>();  // only empty groups remain; keeps the exit clean

  // ---------------------------------------------------------------- tickets -> finalisation
  if (tid == 0) {  // the ticket that completed a tile is pieces - 1
    finalize_tiles[0] = first_tile >= 0 && first_ticket == P.pieces(first_tile) - 1 ? first_tile : -1;
    finalize_tiles[1] = last_tile >= 0 && last_ticket == P.pieces(last_tile) - 1 ? last_tile : -1;
  }
  __syncthreads();
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (finalize_tiles[e] >= 0) finalize(finalize_tiles[e]);
  }
}

// ----------------------------------------------------------------- launcher
template <typename T, int MB, bool HAS_ZEROS>
cudaError_t launch(const GemmArgs& args, cudaStream_t stream) {
  auto kernel = gemm_kernel<T, MB, HAS_ZEROS>;
  constexpr int kSmem = smem_bytes(MB);
  // The dynamic shared memory opt-in, once per device (a driver call otherwise on every GEMM).
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  QK_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (!bit || !(configured.load(std::memory_order_relaxed) & bit)) {
    QK_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    configured.fetch_or(bit, std::memory_order_relaxed);
  }
  kernel<<<args.part.grid, kThreads, kSmem, stream>>>(args);
  return cudaGetLastError();
}

template <typename T, bool HAS_ZEROS>
cudaError_t dispatch_m(const GemmArgs& args, cudaStream_t stream) {
  switch (args.part.m_blocks) {
    case 1: return launch<T, 1, HAS_ZEROS>(args, stream);
    case 2: return launch<T, 2, HAS_ZEROS>(args, stream);
    case 3: return launch<T, 3, HAS_ZEROS>(args, stream);
    case 4: return launch<T, 4, HAS_ZEROS>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qk::w4a16::detail
