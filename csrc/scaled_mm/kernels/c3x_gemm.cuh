// CUTLASS 3.x sm90a scaled GEMM (TMA, warp-specialized wgmma) with the scale / bias / azp
// epilogue as an sm90 epilogue visitor tree. Included by the kernels/sm90_*.cu files, each
// of which instantiates one tile config (c3x_configs.cuh) for both output dtypes through
// QK_SCALED_MM_C3X_KERNEL.
//
// Unswapped: A = a [M, K] (K-major), B = b [K, N] (K-major), D = out [M, N] row-major.
// Swapped (Config::kSwapAB, small M): A = the weight [N, K], B = a, D = out^T [N, M]
// column-major -- the same bytes as out [M, N] row-major. The epilogue is written once in
// terms of "per token" and "per channel" vectors; the swap only decides whether a token
// vector runs along the GEMM's rows or its columns.
#pragma once
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "scaled_mm/kernels/c3x_configs.cuh"
#include "core/cutlass_run.cuh"
#include "scaled_mm/scaled_mm.h"

namespace qk::scaled_mm::c3x {

namespace fusion = cutlass::epilogue::fusion;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// One value per GEMM row (M mode) / per GEMM column (N mode). kDynamic: the stride is a
// run-time bool, so one kernel serves a vector (per token / channel) and a scalar (per
// tensor). Dynamic or token-indexed vectors use alignment 1 (M is arbitrary).
template <class Tile, class E, class C, bool kDynamic, int kAlign>
using PerRow = fusion::Sm90ColBroadcast<0, Tile, E, C, Stride<cute::conditional_t<kDynamic, bool, _1>, _0, int64_t>,
                                        kAlign>;
template <class Tile, class E, class C, bool kDynamic, int kAlign>
using PerCol = fusion::Sm90RowBroadcast<0, Tile, E, C, Stride<_0, cute::conditional_t<kDynamic, bool, _1>, int64_t>,
                                        kAlign>;

// Marks a dynamic broadcast node's arguments as a vector (stride 1) or a scalar (stride 0).
template <class Args>
auto set_vector(Args& args, bool vector) -> decltype(args.dCol, void()) {
  cute::get<0>(args.dCol) = vector;
}
template <class Args>
auto set_vector(Args& args, bool vector) -> decltype(args.dRow, void()) {
  cute::get<1>(args.dRow) = vector;
}

template <class Config, class ElementAB, class ElementOut, bool kAzp>
struct ScaledGemm {
  static constexpr bool kFp8 = cute::is_same_v<ElementAB, cutlass::float_e4m3_t>;
  static constexpr bool kSwap = Config::kSwapAB;
  using ElementAcc = cute::conditional_t<kFp8, float, int32_t>;
  using TileShape = typename Config::TileShape;
  using ClusterShape = typename Config::ClusterShape;
  using Sched = Schedules<Config::kSchedule, kFp8>;
  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<ElementAB>::value;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  static_assert(kAlignAB <= kAlignK && kAlignOut <= kAlignN, "the glue's alignment checks must cover the kernel's");

  // Token-indexed vectors run along GEMM rows unswapped, along GEMM columns swapped;
  // channel-indexed vectors the other way round.
  template <class E, class C, bool kDynamic, int kAlign>
  using TokenVec = cute::conditional_t<kSwap, PerCol<TileShape, E, C, kDynamic, kAlign>,
                                       PerRow<TileShape, E, C, kDynamic, kAlign>>;
  template <class E, class C, bool kDynamic, int kAlign>
  using ChannelVec = cute::conditional_t<kSwap, PerRow<TileShape, E, C, kDynamic, kAlign>,
                                         PerCol<TileShape, E, C, kDynamic, kAlign>>;

  // ---- epilogue tree: a_scale[token] * (b_scale[channel] * acc') + bias[channel], float32
  using Acc = fusion::Sm90AccFetch;
  using AScale = TokenVec<float, float, true, 1>;
  using BScale = ChannelVec<float, float, true, 1>;
  using Bias = ChannelVec<ElementOut, float, false, kAlignOut>;  // null -> 0
  // acc' = acc - azp[token] * azp_adj[channel], int32 (azp null -> 1: per-tensor, folded into azp_adj)
  using AzpAdj = ChannelVec<int32_t, int32_t, false, 4>;
  using Azp = TokenVec<int32_t, int32_t, false, 1>;
  using AzpTerm = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, int32_t, int32_t, kRound>, Azp, AzpAdj>;
  using AccAzp = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::minus, float, int32_t, kRound>, Acc, AzpTerm>;
  using AccIn = cute::conditional_t<kAzp, AccAzp, Acc>;
  using Scaled = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>, BScale, AccIn>;
  using Tree = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementOut, float, kRound>,
                               AScale, Scaled, Bias>;

  using LayoutA = cutlass::layout::RowMajor;     // K-major
  using LayoutB = cutlass::layout::ColumnMajor;  // K-major
  using LayoutD = cute::conditional_t<kSwap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
      void, LayoutD, kAlignOut,          // no C operand
      ElementOut, LayoutD, kAlignOut,
      typename Sched::Epilogue, Tree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, LayoutA, kAlignAB,
      ElementAB, LayoutB, kAlignAB,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Sched::Kernel>::CollectiveOp;

  using TileScheduler = cute::conditional_t<Config::kStreamK, cutlass::gemm::StreamKScheduler, void>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // A broadcast node's arguments: pointer, value used when it is null, and for the dynamic
  // nodes whether it is a vector (stride 1) or a scalar (stride 0) this call.
  template <class Node, class T>
  static typename Node::Arguments bcast(const T* ptr, T null_default, bool vector = true) {
    typename Node::Arguments args{ptr, null_default, {}};
    if constexpr (Node::IsDynamicBroadcast) set_vector(args, vector);
    return args;
  }

  static typename Gemm::Arguments arguments(const GemmArgs& p) {
    // GEMM coordinates: (rows, cols, K, batch); a and the weight are K-major with row strides lda / ldb.
    const int gm = int(kSwap ? p.n : p.m), gn = int(kSwap ? p.m : p.n), gk = int(p.k);
    const void* ptr_a = kSwap ? p.b : p.a;
    const void* ptr_b = kSwap ? p.a : p.b;
    auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, cute::make_shape(gm, gk, 1));
    cute::get<0>(stride_a) = kSwap ? p.ldb : p.lda;
    auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, cute::make_shape(gn, gk, 1));
    cute::get<0>(stride_b) = kSwap ? p.lda : p.ldb;
    const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, cute::make_shape(gm, gn, 1));

    typename AccIn::Arguments acc_args{};
    if constexpr (kAzp) {
      acc_args = {
          {},                                                                                      // Acc
          {bcast<Azp>(p.azp, int32_t(1)), bcast<AzpAdj>(p.azp_adj, int32_t(0)), {}},               // azp * azp_adj
          {}                                                                                       // minus
      };
    }
    typename Tree::Arguments tree{
        bcast<AScale>(p.a_scales, 0.f, p.a_per_token),                                            // AScale
        {bcast<BScale>(p.b_scales, 0.f, p.b_per_channel), acc_args, {}},                          // BScale * acc'
        bcast<Bias>(static_cast<const ElementOut*>(p.bias), ElementOut(0)),                       // Bias (null -> 0)
        {}                                                                                        // multiply_add
    };

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {gm, gn, gk, 1},
        {static_cast<const ElementAB*>(ptr_a), stride_a, static_cast<const ElementAB*>(ptr_b), stride_b},
        {tree, nullptr, stride_d, static_cast<ElementOut*>(p.out), stride_d}};
    args.hw_info.sm_count = p.sm_count;
    set_tile_scheduler(args, p.scheduler);  // the dispatch table's raster / swizzle / splits
    return args;
  }

  static cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
    return run_cutlass<Gemm>(arguments(p), workspace, stream);
  }

  static size_t workspace_size(const GemmArgs& p) { return Gemm::get_workspace_size(arguments(p)); }
};

template <class Config, class ElementAB, bool kAzp>
size_t workspace_size(const GemmArgs& p) {
  return p.out_dtype == DType::kBFloat16 ? ScaledGemm<Config, ElementAB, cutlass::bfloat16_t, kAzp>::workspace_size(p)
                                         : ScaledGemm<Config, ElementAB, cutlass::half_t, kAzp>::workspace_size(p);
}

template <class Config, class ElementAB, bool kAzp>
cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
  return p.out_dtype == DType::kBFloat16
             ? ScaledGemm<Config, ElementAB, cutlass::bfloat16_t, kAzp>::run(p, workspace, stream)
             : ScaledGemm<Config, ElementAB, cutlass::half_t, kAzp>::run(p, workspace, stream);
}

}  // namespace qk::scaled_mm::c3x

// Defines `const Kernel NAME` (scaled_mm.h): tile config CONFIG, operand type AB (fp8 / int8), epilogue AZP.
#define QK_SCALED_MM_C3X_AB_fp8 cutlass::float_e4m3_t
#define QK_SCALED_MM_C3X_AB_int8 int8_t
#define QK_SCALED_MM_C3X_KERNEL(NAME, CONFIG, AB, AZP)                                                      \
  namespace qk::scaled_mm {                                                                                \
  const Kernel NAME = {#NAME, c3x::CONFIG::kDescription,                                                   \
                       &c3x::workspace_size<c3x::CONFIG, QK_SCALED_MM_C3X_AB_##AB, AZP>,                   \
                       &c3x::run<c3x::CONFIG, QK_SCALED_MM_C3X_AB_##AB, AZP>};                             \
  }
