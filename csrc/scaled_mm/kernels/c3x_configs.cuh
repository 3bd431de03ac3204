// Tile configurations of the CUTLASS 3.x sm90a scaled GEMMs (one struct per compiled config;
// kernels/generate.py instantiates them). The dispatch tables (compiled-in defaults in
// scaled_mm_torch.cpp, replaceable by a per-GPU config: qkernels/configs) map M buckets to them.
//
// Small M (decode) is memory-bound on the weight. There the GEMM is computed swapped,
// out^T [N, M] = W [N, K] . a^T, so that the weight's N fills the 64/128-row wgmma
// tiles and the few tokens sit in a narrow N tile (16 or 64) instead of wasting most of
// a 64-row tile; a cooperative persistent kernel with CUTLASS's stream-K scheduler then
// splits K across all SMs when there are fewer output tiles than SMs (N / 128 tiles is
// 32 for N = 4096, against 132 SMs). Larger M runs unswapped: a 2-CTA cluster along M
// multicasts each weight tile to both CTAs; ping-pong consumers overlap one tile's
// epilogue with the next tile's MMAs; the largest M use 128x256 cooperative tiles.
//
// Starting points chosen from the shapes CUTLASS's profiler and vLLM favour on H100;
// not yet measured here (README.md "Notes" records each measured change).
#pragma once
#include "cute/layout.hpp"
#include "cutlass/epilogue/dispatch_policy.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"

namespace qk::scaled_mm::c3x {

using namespace cute;

enum class Schedule { kWarpSpecialized, kPingpong, kCooperative };

template <class Tile, class Cluster, Schedule S, bool SwapAB, bool StreamK>
struct Config {
  using TileShape = Tile;  // (GEMM M, GEMM N, K): with SwapAB, GEMM M is the weight's N
  using ClusterShape = Cluster;
  static constexpr Schedule kSchedule = S;
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kStreamK = StreamK;
};

// Mainloop / epilogue schedules per operand type: FP8 uses the "fast accumulation"
// variants (no periodic promotion of the wgmma accumulators to a separate fp32 sum; the
// choice of vLLM and cuBLASLt's fast-accum mode), INT8 accumulates exactly in int32.
template <Schedule S, bool kFp8>
struct Schedules;
template <bool kFp8>
struct Schedules<Schedule::kWarpSpecialized, kFp8> {
  using Kernel = cute::conditional_t<kFp8, cutlass::gemm::KernelTmaWarpSpecializedFP8FastAccum,
                                     cutlass::gemm::KernelTmaWarpSpecialized>;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};
template <bool kFp8>
struct Schedules<Schedule::kPingpong, kFp8> {
  using Kernel = cute::conditional_t<kFp8, cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum,
                                     cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};
template <bool kFp8>
struct Schedules<Schedule::kCooperative, kFp8> {
  using Kernel = cute::conditional_t<kFp8, cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum,
                                     cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

// M <= 16: swapped, 128 weight rows x 16 tokens x 256 K, stream-K over all SMs.
struct ConfigM16 : Config<Shape<_128, _16, _256>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, swap AB, tile 128x16x256, cooperative, stream-K";
};
// Candidate for M <= 16 (kernels/generate.py; chosen by a tuned config, not by default): the
// same with TileK = 128, so stream-K can split K twice as finely. CUTLASS's stream-K scheduler
// gives a unit no fewer than 8 k-tiles (min_iters_per_sk_unit_ = 8, cutlass/gemm/kernel/
// tile_scheduler_params.h) and decomposes not at all when a tile has <= 8 k-tiles: at K = 4096
// TileK 256 gives 16 k-tiles per output tile (at most 2 units per tile), TileK 128 gives 32
// (up to 4). The split-K parameter of the table (`splits`) is the other way to split more.
struct ConfigM16K128 : Config<Shape<_128, _16, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, swap AB, tile 128x16x128, cooperative, stream-K";
};
// 16 < M <= 64: swapped, 128 weight rows x 64 tokens x 128 K, stream-K.
struct ConfigM64 : Config<Shape<_128, _64, _128>, Shape<_1, _1, _1>, Schedule::kCooperative, true, true> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, swap AB, tile 128x64x128, cooperative, stream-K";
};
// 64 < M <= 128: 64-row tiles, the 2 CTAs of a cluster share (multicast) each weight tile.
struct ConfigM128 : Config<Shape<_64, _128, _128>, Shape<_2, _1, _1>, Schedule::kPingpong, false, false> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, tile 64x128x128, cluster 2x1, ping-pong";
};
// 128 < M <= 1024.
struct ConfigM1024 : Config<Shape<_128, _128, _128>, Shape<_2, _1, _1>, Schedule::kPingpong, false, false> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, tile 128x128x128, cluster 2x1, ping-pong";
};
// M > 1024: compute-bound; 128x256 tiles, two consumer warpgroups of 64x256 each.
struct ConfigLarge : Config<Shape<_128, _256, _128>, Shape<_2, _1, _1>, Schedule::kCooperative, false, false> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, tile 128x256x128, cluster 2x1, cooperative";
};

// Candidate for large M (tuned configs): 256x128 cooperative, each consumer warpgroup a 128x128
// half (CUTLASS profiler's other common large-M FP8 shape); beside ConfigLarge (128x256) and
// ConfigM1024 (128x128 ping-pong), which the tuner also times on large M.
struct ConfigLarge256x128 : Config<Shape<_256, _128, _128>, Shape<_2, _1, _1>, Schedule::kCooperative, false, false> {
  static constexpr const char* kDescription = "cutlass 3.x sm90, tile 256x128x128, cluster 2x1, cooperative";
};

}  // namespace qk::scaled_mm::c3x
