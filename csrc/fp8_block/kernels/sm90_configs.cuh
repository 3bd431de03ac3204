// Tile configurations of the sm90a blockwise-scaled FP8 GEMMs, as data: one struct per compiled
// kernel (kernels/generate.py names them; the table of the dispatch key fp8_block/sm90/fp8 picks
// among them, with the tile scheduler's raster order, swizzle and, stream-K, the K decomposition).
//
// Constraints of CUTLASS's blockwise mainloop (sm90_mma_tma_gmma_ss_warpspecialized_fp8_blockwise_
// scaling.hpp) that shape this list:
// * TileK = 128 = the scale block: every k-tile's wgmma partial sum is promoted (scaled by
//   a_scale * b_scale and added to the float32 accumulator) before the next one starts
//   (ScalePromotionInterval = 128 / 32 = 4 wgmma k-steps); TileK 256 fails its static_asserts.
// * The weight's side of the tile is a multiple of 128 (one b_scale per 128 rows of N).
// * Two float32 accumulators live in registers (the wgmma one and the promoted one), so a
//   cooperative 128x256 tile (2 x 128 registers per thread) would spill: 128x128 is the largest.
//
// Small M (decode) is a weight stream: the GEMM runs swapped, out^T [N, M] = W [N, K] . a^T, so the
// weight's N fills the 128-row wgmma tile and the few tokens a 16/32/64-wide N tile; CUTLASS's
// stream-K tile scheduler then spreads the K loop of the ceil(N/128) output tiles over all SMs
// (N = 2112 is 17 tiles against 132 SMs). Larger M runs unswapped with 128x128 tiles, stream-K
// (the scheduler's heuristic: data-parallel waves plus a stream-K share of the last, partial
// wave), the largest M with a 1x2 cluster whose two CTAs share (TMA-multicast) each A tile.
// Starting points, not yet measured (README.md "Notes").
#pragma once
#include "cute/layout.hpp"

namespace qk::fp8_block::sm90 {

using namespace cute;

enum class Schedule { kPingpong, kCooperative };

template <class Tile, class Cluster, Schedule S, bool SwapAB, bool StreamK>
struct Config {
  using TileShape = Tile;  // (GEMM M, GEMM N, K): with SwapAB, GEMM M is the weight's N
  using ClusterShape = Cluster;
  static constexpr Schedule kSchedule = S;
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kStreamK = StreamK;
};

// M <= 16: swapped, 128 weight rows x 16 tokens, stream-K.
struct ConfigM16 : Config<Shape<_128, _16, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90 blockwise, swap AB, tile 128x16x128, cooperative, stream-K";
};
// M <= 32: swapped, 128 x 32, stream-K (token scales by TMA from here up).
struct ConfigM32 : Config<Shape<_128, _32, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90 blockwise, swap AB, tile 128x32x128, cooperative, stream-K";
};
// M <= 64: swapped, 128 x 64, stream-K.
struct ConfigM64 : Config<Shape<_128, _64, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90 blockwise, swap AB, tile 128x64x128, cooperative, stream-K";
};
// Mid M: 128x128, stream-K (few output tiles for small N: 17 x ceil(M/128) at N = 2112).
struct ConfigSK : Config<Shape<_128, _128, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, false, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90 blockwise, tile 128x128x128, cooperative, stream-K";
};
// Large M: example 67's configuration (128x128, 1x2 cluster, cooperative, stream-K heuristic).
struct ConfigLarge : Config<Shape<_128, _128, _128>, Shape<_1, _2, _1>, Schedule::kCooperative, false, true> {
  static constexpr const char* kDescription =
      "cutlass 3.x sm90 blockwise, tile 128x128x128, cluster 1x2, cooperative, stream-K heuristic";
};
// Large-M candidate for the tuned table: 64x128 ping-pong (one consumer warpgroup's epilogue
// overlaps the other's MMAs), 1x2 cluster, persistent data-parallel.
struct ConfigPingpong : Config<Shape<_64, _128, _128>, Shape<_1, _2, _1>, Schedule::kPingpong, false, false> {
  static constexpr const char* kDescription = "cutlass 3.x sm90 blockwise, tile 64x128x128, cluster 1x2, ping-pong";
};

}  // namespace qk::fp8_block::sm90
