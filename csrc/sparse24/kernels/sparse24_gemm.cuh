// The CUTLASS 3.x sm90 2:4 sparse FP8 GEMM with the scale/bias epilogue, for one tile
// config (sparse24_configs.cuh). Included by one kernels/gemm_*.cu per config.
//
// D (N x M, column-major == out [M, N] row-major) = a_s[col] * (b_s[row] * acc) + bias[row]
// A = compressed weight values [N, K/2] (+ metadata E), B = activations [M, K] (K-major).
#pragma once
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "core/cutlass_run.cuh"
#include "sparse24/kernels/sparse24_configs.cuh"
#include "sparse24/sparse24.h"

namespace qk::sparse24 {

template <class Config, class ElementOut>
struct SparseScaledGemm {
  using ElementAB   = cutlass::float_e4m3_t;
  using ElementAcc  = float;
  using TileShape   = typename Config::TileShape;
  using ClusterShape = typename Config::ClusterShape;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  // ---- epilogue: a_scale[col] * (b_scale[row] * acc) + bias[row], all in fp32.
  // Scales are dynamic broadcasts: stride 1 (vector) or 0 (one per-tensor value) at run time.
  using Acc    = cutlass::epilogue::fusion::Sm90AccFetch;
  using BScale = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<bool, _0, int64_t>, 1>;
  using AScale = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, bool, int64_t>, 1>;
  using Bias   = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, ElementOut, float, Stride<_1, _0, int64_t>>;
  using Mul    = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>;
  using MulAdd = cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementOut, float, kRound>;
  using ScaledAcc = cutlass::epilogue::fusion::Sm90EVT<Mul, BScale, Acc>;
  using Fusion    = cutlass::epilogue::fusion::Sm90EVT<MulAdd, AScale, ScaledAcc, Bias>;

  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  static constexpr int kAlignAB  = 128 / cutlass::sizeof_bits<ElementAB>::value;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
      void, cutlass::layout::ColumnMajor, kAlignOut,          // no C operand
      ElementOut, cutlass::layout::ColumnMajor, kAlignOut,    // D = out^T
      typename Config::EpilogueSchedule, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
      ElementAB, cutlass::layout::RowMajor, kAlignAB,         // A: weight [N, K], sparse
      ElementAB, cutlass::layout::ColumnMajor, kAlignAB,      // B: activations [M, K] (K-major)
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Config::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // The compressed format is the one of reference/sparse24.py for every config.
  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  using EAtom = typename SparseConfig::TensorEAtom;
  static_assert(typename SparseConfig::TensorEAtomM{} == kMetaRows && typename SparseConfig::TensorEAtomK{} == kMetaK,
                "metadata atom must be 64 x 128 (tile K >= 128)");
  static_assert(decltype(cute::stride<1>(EAtom{}))::value == 1 && decltype(cute::stride<0>(EAtom{}))::value == kMetaK,
                "metadata atom must be K-major (row of 16 bytes per weight row)");
  static_assert(int(typename SparseConfig::TensorAAlignmentK{}) <= kMetaK, "values need no K padding beyond 128");

  static typename Gemm::Arguments arguments(const GemmArgs& p) {
    using ElementE = typename CollectiveMainloop::ElementE;
    const auto problem = cute::make_shape(int(p.n), int(p.m), int(p.k), 1);  // (weight N, tokens, K, batch)
    auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, cute::make_shape(int(p.m), int(p.k), 1));
    cute::get<0>(stride_b) = p.lda;
    const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, cute::make_shape(int(p.n), int(p.m), 1));

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        problem,
        {static_cast<const ElementAB*>(p.values), SparseConfig::fill_layoutA(problem),
         static_cast<const ElementAB*>(p.a), stride_b,
         reinterpret_cast<const ElementE*>(p.meta), SparseConfig::fill_layoutE(problem)},
        {{},  // fusion arguments, below
         nullptr, stride_d, static_cast<ElementOut*>(p.out), stride_d}};
    args.hw_info.sm_count = p.sm_count;
    set_tile_scheduler(args, p.scheduler);  // the dispatch table's raster / swizzle (persistent kernels)
    auto& f = args.epilogue.thread;
    f = {
        {p.a_scales, 0.f, {_0{}, p.a_per_token, int64_t(0)}},             // AScale (per column = token)
        {
            {p.b_scales, 0.f, {p.b_per_channel, _0{}, int64_t(0)}},       // BScale (per row = channel)
            {},                                                           // Acc
            {}                                                            // Mul
        },
        {static_cast<const ElementOut*>(p.bias), ElementOut(0), {}},     // Bias (null -> 0)
        {}                                                                // MulAdd
    };
    return args;
  }
};

template <class Config, class ElementOut>
size_t workspace_size_for(const GemmArgs& p) {
  using G = SparseScaledGemm<Config, ElementOut>;
  return G::Gemm::get_workspace_size(G::arguments(p));
}

template <class Config, class ElementOut>
cudaError_t run_for(const GemmArgs& p, void* workspace, cudaStream_t stream) {
  using G = SparseScaledGemm<Config, ElementOut>;
  return run_cutlass<typename G::Gemm>(G::arguments(p), workspace, stream);
}

// Out-dtype dispatch, shared by the per-config files.
template <class Config>
size_t workspace_size(const GemmArgs& p) {
  return p.out_dtype == DType::kBFloat16 ? workspace_size_for<Config, cutlass::bfloat16_t>(p)
                                         : workspace_size_for<Config, cutlass::half_t>(p);
}

template <class Config>
cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
  return p.out_dtype == DType::kBFloat16 ? run_for<Config, cutlass::bfloat16_t>(p, workspace, stream)
                                         : run_for<Config, cutlass::half_t>(p, workspace, stream);
}

}  // namespace qk::sparse24

// Defines `const Kernel NAME` (sparse24.h) for tile config CONFIG.
#define QK_SPARSE24_KERNEL(NAME, CONFIG)                                                            \
  namespace qk::sparse24 {                                                                          \
  const Kernel NAME = {#NAME, CONFIG::kDescription, &workspace_size<CONFIG>, &run<CONFIG>};         \
  }
