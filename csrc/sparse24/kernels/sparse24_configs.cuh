// Tile configurations of the 2:4 sparse FP8 GEMM, one per compiled kernel (kernels/gemm_*.cu).
// The dispatch key "sparse24/sm90/fp8" maps M buckets (tokens) to them: compiled-in default in
// sparse24_torch.cpp, replaceable by a per-GPU config (qkernels/configs).
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
  static constexpr const char* kDescription = "cutlass 3.x sm90 sparse, tile 64x32x256, TMA warp-specialized";
  using TileShape        = Shape<_64, _32, _256>;                                       // (weight N, tokens, K)
  using ClusterShape     = Shape<_1, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// 32 < M <= 128: ping-pong consumers overlap one tile's epilogue with the next's MMAs.
struct ConfigUpTo128 {
  static constexpr const char* kDescription = "cutlass 3.x sm90 sparse, tile 64x128x256, ping-pong";
  using TileShape        = Shape<_64, _128, _256>;
  using ClusterShape     = Shape<_1, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// M > 128: compute-bound; two consumer warpgroups per 128-row tile, the activation
// tile multicast to the 2 CTAs of a cluster along the weight's N.
struct ConfigLarge {
  static constexpr const char* kDescription = "cutlass 3.x sm90 sparse, tile 128x128x128, cluster 2x1, cooperative";
  using TileShape        = Shape<_128, _128, _128>;
  using ClusterShape     = Shape<_2, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

// Candidate for M > 128 (tuned configs): the large config with TileK = 256, i.e. a 128-byte row
// of compressed values per k-tile and half as many k-iterations (fewer barrier round trips).
struct ConfigLargeK256 {
  static constexpr const char* kDescription = "cutlass 3.x sm90 sparse, tile 128x128x256, cluster 2x1, cooperative";
  using TileShape        = Shape<_128, _128, _256>;
  using ClusterShape     = Shape<_2, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

}  // namespace qk::sparse24
