// Tile configurations of the 2:4 sparse FP8 GEMM, one per M bucket (tokens), as data.
//
// GEMM coordinates are swapped (out^T = W_sparse . a^T): the tile's M is the weight's
// N (output features), the tile's N is the tokens. Small batches therefore get narrow
// token tiles and many CTAs along the weight; large batches a persistent cooperative
// kernel. All tiles have K >= 128, so CUTLASS's metadata atom (MinTileShapeK =
// min(TileK, 128)) is the same for every config: one compressed weight serves them all
// (static_assert in sparse24_gemm.cuh). Not tuned on a GPU yet (README, NOTES).
#pragma once
#include "cute/layout.hpp"
#include "cutlass/epilogue/dispatch_policy.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"

namespace qk::sparse24 {

using namespace cute;

// M <= 32 (decode): memory-bound on the weight; deep pipeline, many CTAs.
struct ConfigUpTo32 {
  using TileShape        = Shape<_64, _32, _256>;                                       // (weight N, tokens, K)
  using ClusterShape     = Shape<_1, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// 32 < M <= 128: ping-pong consumers overlap one tile's epilogue with the next's MMAs.
struct ConfigUpTo128 {
  using TileShape        = Shape<_64, _128, _256>;
  using ClusterShape     = Shape<_1, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// M > 128: compute-bound; two consumer warpgroups per 128-row tile, the activation
// tile multicast to the 2 CTAs of a cluster along the weight's N.
struct ConfigLarge {
  using TileShape        = Shape<_128, _128, _128>;
  using ClusterShape     = Shape<_2, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

}  // namespace qk::sparse24
