// W4A16 (sm80+ Marlin-style path): block configuration and work partition, the one source of
// truth for the kernel (kernels/gemm_kernel.cuh, device side), the launcher and the torch glue
// (host side: workspace sizes) and the schedule introspection (`qk_w4a16_schedule` in
// w4a16_torch.cpp, read by qkernels.ops.w4a16.schedule and python_tests/test_w4a16_schedule.py).
// Plain arithmetic only: compiled by nvcc for the kernel and by the host compiler for the glue.
//
// Work: the output is cut into tiles of (up to) kSliceM rows x kTileN columns; a tile's K range
// is cut into `k_tiles` iterations of `tile_k` (the last one may be half when K % tile_k ==
// 128, then zero-filled). The iterations are numbered tile-major, `it = tile * k_tiles + kt`,
// and block b runs the contiguous range [b * iters, (b + 1) * iters): "stream-K". A block's run
// of iterations that falls into one tile is a *piece*. A tile covered by one piece is written
// directly. A tile covered by several pieces (blocks first_block(t) .. last_block(t)) is
// reduced without any block waiting for another:
//   * every piece writes its fp32 partial sum to its own workspace slot, then adds 1 to the
//     tile's counter (atom.add.acq_rel.gpu);
//   * the piece that takes the counter to pieces(t) - 1 -> pieces(t) (the last to arrive,
//     whichever block that is) sums the slots of all pieces *in piece order* and writes the
//     output, then resets the counter to 0. The sum order is fixed by the partition, so the
//     bits do not depend on arrival order (deterministic run to run on the same GPU).
// A block checks its tickets when its own work is done (so the atomic's round trip never
// stalls its pipeline), and only spin-waits on nothing: no block depends on another block
// being resident, scheduled, or done, whatever the grid size and whatever else runs on the GPU.
#pragma once
#include <cuda_runtime.h>  // __host__ __device__ (host compilers get empty macros)

#include <cstddef>
#include <climits>
#include <cstdint>

namespace qk::w4a16 {

inline constexpr int kTileN = 64;    // columns of a block tile (N % 64 == 0)
inline constexpr int kTileK = 128;   // K granularity (K % 128 == 0); iterations are 128 or 256 deep
inline constexpr int kSliceM = 64;   // rows of a tile in multi-slice mode (m > 64)
inline constexpr int kThreads = 256; // 8 warps per block
inline constexpr int kWarpsN = 2;    // warps across the 64 columns (32 columns = 4 mma n-tiles each)
inline constexpr int kWarpsK = 4;    // warps across an iteration's k steps (reduced in smem at a piece end)
inline constexpr int kGroupTiles = 8;  // multi-slice tile order: column tiles per group (L2 locality)

// ---------------------------------------------------------------- per M-bucket configuration
// m_blocks = rows / 16 of the block tile: 1 (m <= 16), 2, 3, 4 (m > 48, and every m > 64).
__host__ __device__ constexpr int m_blocks_for(int m) { return m <= 16 ? 1 : m <= 32 ? 2 : m <= 48 ? 3 : 4; }
// K per iteration: 256 for m <= 16 (8 KiB of weights per pipeline stage), 128 above (the A tile,
// 16 * m_blocks rows x tile_k, would not fit 4+ stages in sm_86's 99 KiB otherwise).
__host__ __device__ constexpr int bucket_tile_k(int mb) { return mb == 1 ? 256 : 128; }
// Pipeline stages: enough weight bytes in flight per SM to cover HBM latency (README, "Stages").
__host__ __device__ constexpr int bucket_stages(int mb) { return mb == 1 ? 5 : mb == 2 ? 7 : mb == 3 ? 5 : 4; }
// One stage in shared memory: A (16 mb rows x tile_k bf16/fp16), weights (tile_k x 64 nibbles),
// scale rows and zero-point rows (up to tile_k / 32 groups x 64 columns x 2 bytes each).
__host__ __device__ constexpr int stage_a_bytes(int mb) { return 16 * mb * bucket_tile_k(mb) * 2; }
__host__ __device__ constexpr int stage_b_bytes(int mb) { return bucket_tile_k(mb) * kTileN / 2; }
__host__ __device__ constexpr int stage_s_rows(int mb) { return bucket_tile_k(mb) / 32; }
__host__ __device__ constexpr int stage_s_bytes(int mb) { return stage_s_rows(mb) * kTileN * 2; }
__host__ __device__ constexpr int stage_bytes(int mb) {
  return stage_a_bytes(mb) + stage_b_bytes(mb) + 2 * stage_s_bytes(mb);
}
__host__ __device__ constexpr int smem_bytes(int mb) { return bucket_stages(mb) * stage_bytes(mb); }
// The k-group reduction at a piece end goes through the stage buffer just consumed, 16 rows at
// a time: (kWarpsK - 1) x 16 rows x 64 columns of fp32.
__host__ __device__ constexpr int reduce_scratch_bytes() { return (kWarpsK - 1) * 16 * kTileN * 4; }

static_assert(smem_bytes(1) <= 99 * 1024 && smem_bytes(2) <= 99 * 1024 && smem_bytes(3) <= 99 * 1024 &&
                  smem_bytes(4) <= 99 * 1024,
              "every configuration must fit sm_86 / sm_89 (99 KiB of shared memory per block)");
static_assert(stage_bytes(1) >= reduce_scratch_bytes() && stage_bytes(2) >= reduce_scratch_bytes() &&
                  stage_bytes(3) >= reduce_scratch_bytes() && stage_bytes(4) >= reduce_scratch_bytes(),
              "the k-group reduction reuses one stage buffer");

// ---------------------------------------------------------------- the partition
struct Partition {
  int m, n, k;
  int m_blocks;    // rows of the block tile / 16
  int tile_k;      // K per iteration
  int k_tiles;     // iterations per tile: ceil(k / tile_k)
  int n_tiles;     // n / kTileN
  int slices;      // row slices: 1 if m <= 64, else ceil(m / 64)
  int tiles;       // slices * n_tiles
  int64_t total;   // tiles * k_tiles
  int iters;       // iterations per block (the last block may have fewer)
  int grid;        // blocks: ceil(total / iters)
  int slot_rows;   // rows of one fp32 partial slot: min(m, 64)
  bool stream_k;   // some tile is shared by several blocks (workspace + counters needed)

  __host__ __device__ int64_t block_begin(int b) const { return static_cast<int64_t>(b) * iters; }
  __host__ __device__ int64_t block_end(int b) const {
    const int64_t e = block_begin(b) + iters;
    return e < total ? e : total;
  }
  // Blocks whose range meets tile t, and how many pieces it has.
  __host__ __device__ int first_block(int t) const { return static_cast<int>(static_cast<int64_t>(t) * k_tiles / iters); }
  __host__ __device__ int last_block(int t) const {
    return static_cast<int>((static_cast<int64_t>(t + 1) * k_tiles - 1) / iters);
  }
  __host__ __device__ int pieces(int t) const { return last_block(t) - first_block(t) + 1; }
  // Workspace slot of block b's piece of a shared tile t: a block has at most two shared pieces,
  // its first (slot 2b) and its last (slot 2b + 1).
  __host__ __device__ int slot(int b, int t) const {
    return 2 * b + (t == static_cast<int>(block_begin(b) / k_tiles) ? 0 : 1);
  }
  // Tile -> (row slice, column tile). Tiles come in groups of kGroupTiles column tiles with the
  // slices inside a group, so the blocks in flight share a few weight tiles and a few A slices.
  __host__ __device__ void tile_coords(int t, int& slice, int& nt) const {
    const int per_group = slices * kGroupTiles;
    const int g = t / per_group, r = t % per_group;
    const int left = n_tiles - g * kGroupTiles;
    const int in_group = left < kGroupTiles ? left : kGroupTiles;
    nt = g * kGroupTiles + r % in_group;
    slice = r / in_group;
  }
  __host__ __device__ size_t workspace_floats() const {
    return stream_k ? static_cast<size_t>(grid) * 2 * slot_rows * kTileN : 0;
  }
  __host__ __device__ int counters() const { return stream_k ? tiles : 0; }
};

// Estimated time of a partition, in bytes of HBM traffic of one SM (H100-like ratios: L2 ~1.6x
// HBM bandwidth, ~150 mma.sync FLOPs per HBM byte): an iteration costs max(its weight bytes,
// its FLOPs / 150); a partial tile (slot_rows x 64 fp32) costs its bytes / 1.6 to write or read.
// Only used to choose between the candidate partitions below; python_tests/test_w4a16_schedule.py checks
// the chosen partitions with its own model.
__host__ __device__ inline double iteration_cost(int m_blocks, int tile_k) {
  const double bytes = tile_k * kTileN / 2.0, flops = 2.0 * 16 * m_blocks * kTileN * tile_k;
  return bytes > flops / 150.0 ? bytes : flops / 150.0;
}
__host__ __device__ inline double partial_cost(int slot_rows) { return slot_rows * kTileN * 4 / 1.6; }

// Most pieces a tile has when block ranges are `iters` long (the ranges start at multiples of
// iters, the tiles at multiples of k_tiles).
__host__ __device__ inline int max_pieces(int iters, int k_tiles) {
  if (iters >= k_tiles) return iters % k_tiles == 0 ? 1 : 2;
  return k_tiles % iters == 0 ? k_tiles / iters : k_tiles / iters + 2;
}

// The launcher's partition: contiguous ranges of `iters` iterations, one block each. Candidates:
//  * data-parallel: iters = k_tiles (a whole tile per block, grid = tiles, no reduction);
//  * stream-K: iters = ceil(total / num_sms) (grid <= num_sms, one block per SM);
//  * aligned split-K: iters = k_tiles / S for the divisors S of k_tiles with tiles * S <= num_sms
//    (each tile split in exactly S pieces: fewer partials when partial tiles are expensive).
// The cheapest by the estimate above wins (ties: data-parallel over stream-K; a split-K S only
// when strictly cheaper than both and every smaller S).
// Inputs must satisfy the op's checks: m >= 1, n % 64 == 0, k % 128 == 0, num_sms >= 1, and
// tiles <= INT32_MAX (checked by the glue).
__host__ __device__ inline Partition make_partition(int m, int n, int k, int num_sms) {
  Partition p{};
  p.m = m;
  p.n = n;
  p.k = k;
  p.m_blocks = m_blocks_for(m);
  p.tile_k = bucket_tile_k(p.m_blocks);
  p.k_tiles = (k + p.tile_k - 1) / p.tile_k;
  p.n_tiles = n / kTileN;
  p.slices = m <= kSliceM ? 1 : (m + kSliceM - 1) / kSliceM;
  p.tiles = p.slices * p.n_tiles;
  p.total = static_cast<int64_t>(p.tiles) * p.k_tiles;
  p.slot_rows = m < kSliceM ? m : kSliceM;
  const double it = iteration_cost(p.m_blocks, p.tile_k), part = partial_cost(p.slot_rows);
  // a block's iterations, then (if its tiles are shared) one partial written and, for the
  // finaliser, every piece of the tile read
  auto cost = [&](int iters) {
    const int pieces = max_pieces(iters, p.k_tiles);
    return iters * it + (pieces > 1 ? (pieces + 1) * part : 0.0);
  };
  const int64_t sk_iters = (p.total + num_sms - 1) / num_sms;
  p.iters = sk_iters <= INT32_MAX ? static_cast<int>(sk_iters) : p.k_tiles;  // huge M: data-parallel
  double best = cost(p.iters);
  const int64_t waves = (p.tiles + num_sms - 1) / num_sms;
  if (static_cast<double>(waves) * p.k_tiles * it <= best || sk_iters > INT32_MAX) {
    p.iters = p.k_tiles;
    best = static_cast<double>(waves) * p.k_tiles * it;
  }
  for (int splits = 2; splits <= p.k_tiles && static_cast<int64_t>(p.tiles) * splits <= num_sms; ++splits) {
    if (p.k_tiles % splits != 0) continue;
    const double c = cost(p.k_tiles / splits);
    if (c < best) {
      best = c;
      p.iters = p.k_tiles / splits;
    }
  }
  p.grid = static_cast<int>((p.total + p.iters - 1) / p.iters);
  p.stream_k = p.grid > 1 && p.iters % p.k_tiles != 0;
  return p;
}

// Walks a block's iterations in order: (tile, kt), and whether an iteration ends a piece. The
// kernel's loader and consumer each run one; the host introspection runs the same walk.
struct Cursor {
  int tile, kt;      // current iteration
  int left;          // iterations left in the block, this one included
  __host__ __device__ void start(const Partition& p, int b) {
    const int64_t s = p.block_begin(b);
    tile = static_cast<int>(s / p.k_tiles);
    kt = static_cast<int>(s % p.k_tiles);
    left = static_cast<int>(p.block_end(b) - s);
  }
  __host__ __device__ bool ends_piece(const Partition& p) const { return kt == p.k_tiles - 1 || left == 1; }
  __host__ __device__ void advance(const Partition& p) {
    --left;
    if (++kt == p.k_tiles) {
      kt = 0;
      ++tile;
    }
  }
};

}  // namespace qk::w4a16
