// W4A16 GEMM kernel (Marlin design, sm80+): out[m, n] = a[m, k] @ dequant(b)[k, n].
//
// Included by gemm_f16.cu / gemm_bf16.cu only (each instantiates one activation dtype).
// Layouts: README.md and qkernels/reference/w4a16.py.
//
// Shape of the computation
// * A thread block (4 warps) owns a 64-column tile of the output and a row slice of up to 64
//   rows (M_BLOCKS x 16). Warp w owns columns [16w, 16w + 16): two m16n8k16 n-tiles.
// * Work is the list of (column tile, 128-deep k tile) iterations, column-tile major. Each block
//   takes one contiguous range of it ("stream-K"): a column tile's k range may be split over
//   consecutive blocks, so even M = 1 with few column tiles keeps every SM streaming weights.
//   Blocks that share a column tile add their fp32 partial sums in k order through a global
//   workspace, serialised by a per-tile lock; the last one writes the output.
// * M > 64 ("tile mode") uses no split-K: the work items are (64-row slice, column tile) pairs
//   over the whole K, one block each, no workspace and no waiting between blocks. Items are
//   ordered in groups of kGroupTiles column tiles, slices inside a group: the blocks in flight
//   share a few column tiles (their weights stay in L2 across slices) and a few A slices.
// * Per k tile, a 4-stage cp.async pipeline brings A (zero-filled past row m) and the 4 KiB of
//   weights into shared memory. In stream-K mode weights are read exactly once: they are loaded
//   with an L2 evict-first policy so they do not push the activations (re-read by every block)
//   out of L2; in tile mode they are re-read by every slice and use the default policy.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16/w4a16.h"

namespace qk::w4a16::detail {

constexpr int kThreads = 128;                    // 4 warps
constexpr int kStages = 4;                       // cp.async pipeline depth
constexpr int kKSteps = kTileK / 16;             // mma k-steps per stage
constexpr int kBChunks = kKSteps * kTileN * 16 / 8 / 4;  // uint4 chunks of weights per stage (256)
constexpr int kAChunksPerRow = kTileK * 2 / 16;  // uint4 chunks of one A row per stage (16)
constexpr int kGroupTiles = 8;                  // tile mode: column tiles per item group

// ----------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 fills the destination with zeros (rows past m).
__device__ __forceinline__ void cp_async_zfill(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}

// 16-byte async copy of data read once (weights): evict it first from L2.
__device__ __forceinline__ void cp_async_evict_first(void* smem, const void* gmem) {
  asm volatile(
      "{\n"
      "  .reg .b64 policy;\n"
      "  createpolicy.fractional.L2::evict_first.b64 policy, 1.0;\n"
      "  cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, policy;\n"
      "}\n" ::"r"(smem_addr(smem)),
      "l"(gmem));
}

// 16-byte async copy with the default L2 policy.
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
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

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// ----------------------------------------------------------------- per-dtype pieces
// Each trait turns one int32 of 8 nibbles into the 4 B-fragment registers of a warp's two
// n-tiles (nibbles i and i+4 -> register i: k = 2t + (i >> 2) + 8 (i & 1) and its k + 1) with
// magic numbers: OR-ing a nibble u into the mantissa of 2^e gives the float 2^e + u exactly, so
// one lop3 + one subtraction replaces a int->float conversion.
template <typename T>
struct ActTraits;

template <>
struct ActTraits<half> {
  using T2 = half2;
  // Offsets, per n-tile, that turn the magic values into u - z (z = 8 when symmetric):
  //   lo = 1024 + u (nibble at bits 0-3):     lo - (1024 + z)
  //   hi = 1024 + 16u (nibble at bits 4-7):   hi / 16 - (64 + z)
  struct Offsets {
    half2 lo, hi;
  };
  __device__ static Offsets offsets(float z) {
    return {__float2half2_rn(1024.f + z), __float2half2_rn(-64.f - z)};
  }
  __device__ static void dequant(uint32_t q, const Offsets (&off)[2], const half2 (&scale)[2], uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x64006400u;  // 1024 in both halves
    const half2 sixteenth = __float2half2_rn(1.f / 16.f);
    uint32_t lo0 = and_or(q, 0x000f000fu, kMagic), hi0 = and_or(q, 0x00f000f0u, kMagic);
    q >>= 8;
    uint32_t lo1 = and_or(q, 0x000f000fu, kMagic), hi1 = and_or(q, 0x00f000f0u, kMagic);
    half2 v[4] = {
        __hsub2(*reinterpret_cast<half2*>(&lo0), off[0].lo),
        __hfma2(*reinterpret_cast<half2*>(&hi0), sixteenth, off[0].hi),
        __hsub2(*reinterpret_cast<half2*>(&lo1), off[1].lo),
        __hfma2(*reinterpret_cast<half2*>(&hi1), sixteenth, off[1].hi),
    };
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      half2 w = __hmul2(v[i], scale[i / 2]);  // exact (u - z) times the scale: one rounding
      b[i] = *reinterpret_cast<uint32_t*>(&w);
    }
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
  __device__ static void dequant(uint32_t q, const Offsets (&off)[2], const __nv_bfloat162 (&scale)[2],
                                 uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x43004300u;  // 128 in both halves
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t m = and_or(q >> (4 * i), 0x000f000fu, kMagic);
      __nv_bfloat162 w = __hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&m), off[i / 2].lo), scale[i / 2]);
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

// ----------------------------------------------------------------- the kernel
template <int M_BLOCKS>
constexpr int smem_bytes() {
  return kStages * (M_BLOCKS * 16 * kAChunksPerRow + kBChunks) * 16;
}

template <typename T, int M_BLOCKS, bool HAS_ZEROS>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmArgs args, int iters_per_block) {
  using Tr = ActTraits<T>;
  using T2 = typename Tr::T2;
  constexpr int kRows = M_BLOCKS * 16;
  constexpr int kAStage = kRows * kAChunksPerRow;  // uint4 chunks

  extern __shared__ uint4 smem[];
  uint4* const smem_a = smem;                          // [stage][row][16 chunks, XOR-swizzled]
  uint4* const smem_b = smem + kStages * kAStage;      // [stage][k-step][32 chunks]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int m = args.m, n = args.n;
  const int k_tiles = args.k / kTileK;
  const T* const a = static_cast<const T*>(args.a);
  const T* const scales = static_cast<const T*>(args.scales);
  const T* const zeros = static_cast<const T*>(args.zeros);

  // One segment of work: rows [row0, row0 + kRows) x column tile nt x k tiles [kt0, kt1).
  // stream_k: the tile's k range may be shared with neighbouring blocks (reduction below);
  // otherwise the segment covers the whole K and writes its output directly.
  auto segment = [&](const int row0, const int nt, const int kt0, const int kt1, const bool stream_k) {
    const int col0 = nt * kTileN + warp * 16 + lane / 4;  // this thread's column in n-tile 0 (+8: n-tile 1)

    // Issues the loads of k tile `kt` into pipeline stage `stage`.
    auto load_stage = [&](int stage, int kt) {
      uint4* sa = smem_a + stage * kAStage;
#pragma unroll
      for (int i = 0; i < kAStage / kThreads; ++i) {
        const int id = tid + i * kThreads, r = id / kAChunksPerRow, c = id % kAChunksPerRow;
        const bool valid = row0 + r < m;
        const T* src = a + (valid ? static_cast<size_t>(row0 + r) * args.k + kt * kTileK + c * 8 : 0);
        cp_async_zfill(sa + r * kAChunksPerRow + (c ^ (r % 8)), src, valid);
      }
      uint4* sb = smem_b + stage * kBChunks;
#pragma unroll
      for (int i = 0; i < kBChunks / kThreads; ++i) {
        const int id = tid + i * kThreads, step = id / 32, c = id % 32;
        const uint32_t* src = args.b + static_cast<size_t>(kt * kKSteps + step) * 2 * n + nt * 128 + c * 4;
        if (stream_k) {
          cp_async_evict_first(sb + id, src);  // read once
        } else {
          cp_async(sb + id, src);  // re-read by the other slices: keep in L2
        }
      }
    };

    float acc[M_BLOCKS][2][4] = {};
    T2 scale[2];
    typename Tr::Offsets off[2] = {Tr::offsets(8.f), Tr::offsets(8.f)};
    int group = -1;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (kt0 + s < kt1) load_stage(s, kt0 + s);
      cp_async_commit();  // empty groups keep the wait count uniform
    }
    for (int kt = kt0; kt < kt1; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // stage kt is visible; stage kt-1 is free for the next load
      const int next = kt + kStages - 1;
      if (next < kt1) load_stage((next - kt0) % kStages, next);
      cp_async_commit();

      const int stage = (kt - kt0) % kStages;
      const uint4* sa = smem_a + stage * kAStage;
      const uint32_t* sb = reinterpret_cast<const uint32_t*>(smem_b + stage * kBChunks);
#pragma unroll
      for (int step = 0; step < kKSteps; ++step) {
        const int g = (kt * kTileK + step * 16) / args.group_size;
        if (g != group) {  // warp-uniform: scales (and zero points) of this group's two columns
          group = g;
          const size_t base = static_cast<size_t>(g) * n + col0;
          scale[0] = Tr::splat(scales[base]);
          scale[1] = Tr::splat(scales[base + 8]);
          if constexpr (HAS_ZEROS) {
            off[0] = Tr::offsets(static_cast<float>(zeros[base]));
            off[1] = Tr::offsets(static_cast<float>(zeros[base + 8]));
          }
        }
        uint32_t bfrag[4];
        Tr::dequant(sb[step * 128 + warp * 32 + lane], off, scale, bfrag);
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS; ++mb) {
          uint32_t afrag[4];
          const int r = mb * 16 + lane % 16, c = step * 2 + lane / 16;
          ldmatrix_x4(afrag, sa + r * kAChunksPerRow + (c ^ (r % 8)));
          Tr::mma(afrag, bfrag, acc[mb][0]);
          Tr::mma(afrag, bfrag + 2, acc[mb][1]);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // all stages consumed before the next segment reuses them

    // ---- reduction over the blocks that share column tile nt (in k order), then the output
    const int first = stream_k ? nt * k_tiles / iters_per_block : 0;
    const int last = stream_k ? ((nt + 1) * k_tiles - 1) / iters_per_block : 0;
    const int idx = blockIdx.x - first;
    const bool shared_tile = stream_k && first != last;
    const bool writes_output = !stream_k || int(blockIdx.x) == last;
    float4* ws = reinterpret_cast<float4*>(args.partials) + static_cast<size_t>(nt) * kSliceM * kTileN / 4 +
                 warp * M_BLOCKS * 2 * 32 + lane;
    if (shared_tile) {
      if (tid == 0) {
        while (ld_acquire(args.locks + nt) != idx) {
        }
      }
      __syncthreads();
      if (idx > 0) {
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS; ++mb)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float4 p = __ldcg(ws + (mb * 2 + j) * 32);
            acc[mb][j][0] += p.x, acc[mb][j][1] += p.y, acc[mb][j][2] += p.z, acc[mb][j][3] += p.w;
          }
      }
      if (!writes_output) {
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS; ++mb)
#pragma unroll
          for (int j = 0; j < 2; ++j)
            __stcg(ws + (mb * 2 + j) * 32, make_float4(acc[mb][j][0], acc[mb][j][1], acc[mb][j][2], acc[mb][j][3]));
        __threadfence();
      }
    }
    if (writes_output) {
      T* c = static_cast<T*>(args.c);
      const T* bias = static_cast<const T*>(args.bias);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = nt * kTileN + warp * 16 + j * 8 + 2 * (lane % 4);
        const float b0 = bias ? static_cast<float>(bias[col]) : 0.f;
        const float b1 = bias ? static_cast<float>(bias[col + 1]) : 0.f;
#pragma unroll
        for (int mb = 0; mb < M_BLOCKS; ++mb)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = row0 + mb * 16 + lane / 4 + 8 * h;
            if (row < m)
              *reinterpret_cast<T2*>(c + static_cast<size_t>(row) * n + col) =
                  Tr::pack(acc[mb][j][2 * h] + b0, acc[mb][j][2 * h + 1] + b1);
          }
      }
    }
    if (shared_tile) {
      __syncthreads();  // every thread's workspace reads / writes are done (and fenced)
      if (tid == 0) st_release(args.locks + nt, writes_output ? 0 : idx + 1);
    }
  };

  if (M_BLOCKS * 16 != kSliceM || iters_per_block > 0) {
    // Stream-K (m <= kRows, one row slice): this block's contiguous range of (column tile, k
    // tile) iterations. A block only ever waits for lower-numbered blocks of its tile.
    const int total = (n / kTileN) * k_tiles;
    const int start = blockIdx.x * iters_per_block;
    const int end = min(start + iters_per_block, total);
    for (int it = start; it < end;) {
      const int nt = it / k_tiles, kt0 = it % k_tiles;
      const int kt1 = min(k_tiles, kt0 + (end - it));
      it += kt1 - kt0;
      segment(0, nt, kt0, kt1, true);
    }
  } else if constexpr (M_BLOCKS * 16 == kSliceM) {
    // Tile mode (m > kRows; only the 64-row kernel): item blockIdx.x = (slice, column tile), whole K. Items come in
    // groups of kGroupTiles column tiles; inside a group, consecutive items are consecutive
    // tiles of one slice, so the blocks in flight share weights and activations in L2.
    const int n_tiles = n / kTileN, slices = (m + kRows - 1) / kRows;
    const int per_group = slices * kGroupTiles;
    const int g = blockIdx.x / per_group, r = blockIdx.x % per_group;
    const int tiles_in_group = min(kGroupTiles, n_tiles - g * kGroupTiles);
    const int nt = g * kGroupTiles + r % tiles_in_group, slice = r / tiles_in_group;
    segment(slice * kRows, nt, 0, k_tiles, false);
  }
}

// ----------------------------------------------------------------- launcher
// Stream-K partition (m <= kSliceM): one block per SM, each taking ceil(total / num_sms)
// consecutive (column tile, k tile) iterations.
inline int iters_per_block(const GemmArgs& args) {
  const int total = (args.n / kTileN) * (args.k / kTileK);
  return ceil_div(total, args.num_sms);
}

template <typename T, int M_BLOCKS, bool HAS_ZEROS>
cudaError_t launch(const GemmArgs& args, cudaStream_t stream) {
  auto kernel = gemm_kernel<T, M_BLOCKS, HAS_ZEROS>;
  constexpr int kSmem = smem_bytes<M_BLOCKS>();
  QK_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  if (args.m > M_BLOCKS * 16) {
    // Tile mode: one block per (64-row slice, column tile), whole K (only the 64-row kernel).
    if constexpr (M_BLOCKS * 16 == kSliceM) {
      const int items = ceil_div(args.m, kSliceM) * (args.n / kTileN);
      kernel<<<items, kThreads, kSmem, stream>>>(args, 0);
      return cudaGetLastError();
    }
    return cudaErrorInvalidValue;  // dispatch_m never sends m > rows to the smaller kernels
  }
  const int ipb = iters_per_block(args);
  const int total = (args.n / kTileN) * (args.k / kTileK);
  kernel<<<ceil_div(total, ipb), kThreads, kSmem, stream>>>(args, ipb);
  return cudaGetLastError();
}

// M bucket -> rows per block: 16, 32, 48, 64 (stream-K, one slice); beyond 64, tile mode on 64-row slices.
template <typename T, bool HAS_ZEROS>
cudaError_t dispatch_m(const GemmArgs& args, cudaStream_t stream) {
  if (args.m <= 16) return launch<T, 1, HAS_ZEROS>(args, stream);
  if (args.m <= 32) return launch<T, 2, HAS_ZEROS>(args, stream);
  if (args.m <= 48) return launch<T, 3, HAS_ZEROS>(args, stream);
  return launch<T, 4, HAS_ZEROS>(args, stream);
}

}  // namespace qk::w4a16::detail
