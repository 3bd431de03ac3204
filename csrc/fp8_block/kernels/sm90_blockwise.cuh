// CUTLASS 3.x sm90a blockwise-scaled FP8 GEMM (TMA, warp-specialized wgmma, CUTLASS's
// FP8-blockwise mainloop: the base is CUTLASS example 67) with a bias epilogue. Included by the
// kernels/sm90_fp8_block_*.cu files, each of which instantiates one config (sm90_configs.cuh)
// for both output dtypes through QK_FP8_BLOCK_SM90_KERNEL.
//
// Unswapped: A = a [M, K] (K-major), SFA = a_scales (1 per row and 128 of K, MN-major: the
//            column-major a_scales, TMA-loaded when a tile holds >= 32 rows of it);
//            B = b [K, N] = w [N, K] (K-major), SFB = b_scales (1 per 128x128 block, K-major:
//            the row-major [ceil(N/128), K/128] weight scales, loaded by cp.async);
//            D = out [M, N] row-major.
// Swapped (Config::kSwapAB, small M): A = w, SFA = b_scales; B = a, SFB = a_scales;
//            D = out^T [N, M] column-major, the same bytes as out [M, N] row-major.
// Per k-tile (= one 128-block of K) the mainloop computes the block's partial sum with wgmma,
// multiplies it by SFA * SFB (one float32 product) and adds it to a float32 accumulator; the
// epilogue adds the bias and rounds once to the output dtype: the order of operations of
// qkernels/reference/fp8_block.py, with the partial sums in wgmma's float32 accumulation.
#pragma once
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "core/cutlass_run.cuh"
#include "fp8_block/fp8_block.h"
#include "fp8_block/kernels/sm90_configs.cuh"

namespace qk::fp8_block::sm90 {

namespace fusion = cutlass::epilogue::fusion;

template <Schedule S>
struct Schedules;
template <>
struct Schedules<Schedule::kCooperative> {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};
template <>
struct Schedules<Schedule::kPingpong> {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};

template <class Config, class ElementOut>
struct BlockwiseGemm {
  using ElementAB = cutlass::float_e4m3_t;
  static constexpr bool kSwap = Config::kSwapAB;
  using TileShape = typename Config::TileShape;
  using ClusterShape = typename Config::ClusterShape;
  using Sched = Schedules<Config::kSchedule>;
  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<ElementAB>::value;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  static_assert(kAlignOut <= kAlignN, "the glue's alignment check on N must cover the kernel's");
  static_assert(size<2>(TileShape{}) == kBlock, "one k-tile = one 128-wide scale block of K");

  // ---- scale layouts: granularity (GEMM M, GEMM N, K) and which operand is MN- / K-major
  static constexpr int kGranM = kSwap ? kBlock : 1;
  static constexpr int kGranN = kSwap ? 1 : kBlock;
  using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<
      kGranM, kGranN, kBlock,
      kSwap ? cute::GMMA::Major::K : cute::GMMA::Major::MN,    // SFA: weight (K-major) | tokens (MN-major)
      kSwap ? cute::GMMA::Major::MN : cute::GMMA::Major::K>;   // SFB: tokens (MN-major) | weight (K-major)
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  // ---- epilogue: out = ElementOut(acc + bias[channel]) in float32, one rounding. The bias runs
  // along the GEMM's columns unswapped, along its rows swapped; null -> 0.
  using Bias = cute::conditional_t<
      kSwap, fusion::Sm90ColBroadcast<0, TileShape, ElementOut, float, Stride<_1, _0, int64_t>, kAlignOut>,
      fusion::Sm90RowBroadcast<0, TileShape, ElementOut, float, Stride<_0, _1, int64_t>, kAlignOut>>;
  using Tree = fusion::Sm90EVT<
      fusion::Sm90Compute<cutlass::plus, ElementOut, float, cutlass::FloatRoundStyle::round_to_nearest>,
      fusion::Sm90AccFetch, Bias>;

  using LayoutA = cutlass::layout::RowMajor;     // K-major
  using LayoutB = cutlass::layout::ColumnMajor;  // K-major
  using LayoutD = cute::conditional_t<kSwap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD, kAlignOut,          // no C operand
      ElementOut, LayoutD, kAlignOut,
      typename Sched::Epilogue, Tree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, cute::tuple<LayoutA, LayoutSFA>, kAlignAB,
      ElementAB, cute::tuple<LayoutB, LayoutSFB>, kAlignAB,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Sched::Kernel>::CollectiveOp;

  using TileScheduler = cute::conditional_t<Config::kStreamK, cutlass::gemm::StreamKScheduler,
                                            cutlass::gemm::PersistentScheduler>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Token scales, MN-major: element (row, kb) at kb * ld + row (ld: the glue's TMA-aligned stride).
  // The layout covers M_pad = ceil(M / kScaleAlign) * kScaleAlign rows, not M: where the scales are
  // TMA-loaded (tiles of >= 32 token rows), CUTLASS's can_implement requires the layout's stride-1
  // extent to be a multiple of 16 bytes (check_alignment<4>(layout_SFA/SFB) in
  // sm90_mma_tma_gmma_ss_warpspecialized_fp8_blockwise_scaling.hpp), so M = 17 would be refused.
  // The padding rows feed only accumulator rows (columns, swapped) >= M, which are never stored;
  // the glue guarantees they are addressable (M_pad <= ld, storage up to (kb-1)*ld + M_pad).
  template <class Layout>
  static Layout token_scales(int rows, int kblocks, int ld) {
    const int rows_pad = (rows + kScaleAlign - 1) / kScaleAlign * kScaleAlign;
    return Layout(make_shape(make_shape(_1{}, rows_pad), make_shape(Int<kBlock>{}, kblocks), 1),
                  make_stride(make_stride(_0{}, _1{}), make_stride(_0{}, ld), ld * kblocks));
  }
  // Weight scales, K-major: element (nb, kb) at nb * kblocks + kb (row-major [ceil(N/128), K/128]).
  template <class Layout>
  static Layout weight_scales(int cols, int kblocks) {
    const int nblocks = ceil_div(cols, kBlock);
    return Layout(make_shape(make_shape(Int<kBlock>{}, nblocks), make_shape(Int<kBlock>{}, kblocks), 1),
                  make_stride(make_stride(_0{}, kblocks), make_stride(_0{}, _1{}), nblocks * kblocks));
  }

  static typename Gemm::Arguments arguments(const GemmArgs& p) {
    // GEMM coordinates (rows, cols, K, batch); a and the weight are K-major with row strides lda / ldb.
    const int gm = int(kSwap ? p.n : p.m), gn = int(kSwap ? p.m : p.n), gk = int(p.k);
    const int kblocks = gk / kBlock, ld = int(p.a_scales_ld);
    const void* ptr_a = kSwap ? p.b : p.a;
    const void* ptr_b = kSwap ? p.a : p.b;
    auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, cute::make_shape(gm, gk, 1));
    cute::get<0>(stride_a) = kSwap ? p.ldb : p.lda;
    auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, cute::make_shape(gn, gk, 1));
    cute::get<0>(stride_b) = kSwap ? p.lda : p.ldb;
    const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, cute::make_shape(gm, gn, 1));

    LayoutSFA layout_sfa;
    LayoutSFB layout_sfb;
    const float* ptr_sfa;
    const float* ptr_sfb;
    if constexpr (kSwap) {
      layout_sfa = weight_scales<LayoutSFA>(gm, kblocks);
      layout_sfb = token_scales<LayoutSFB>(gn, kblocks, ld);
      ptr_sfa = p.b_scales;
      ptr_sfb = p.a_scales;
    } else {
      layout_sfa = token_scales<LayoutSFA>(gm, kblocks, ld);
      layout_sfb = weight_scales<LayoutSFB>(gn, kblocks);
      ptr_sfa = p.a_scales;
      ptr_sfb = p.b_scales;
    }

    typename Tree::Arguments tree{
        {},                                                                               // acc
        {static_cast<const ElementOut*>(p.bias), ElementOut(0), {}},                      // bias (null -> 0)
        {}                                                                                // plus
    };
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {gm, gn, gk, 1},
        {static_cast<const ElementAB*>(ptr_a), stride_a, static_cast<const ElementAB*>(ptr_b), stride_b,
         ptr_sfa, layout_sfa, ptr_sfb, layout_sfb},
        {tree, nullptr, stride_d, static_cast<ElementOut*>(p.out), stride_d}};
    args.hw_info.sm_count = p.sm_count;
    set_tile_scheduler(args, p.scheduler);  // the dispatch table's raster / swizzle (/ stream-K splits)
    return args;
  }

  static cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
    return run_cutlass<Gemm>(arguments(p), workspace, stream);
  }

  static size_t workspace_size(const GemmArgs& p) { return Gemm::get_workspace_size(arguments(p)); }
};

template <class Config>
size_t workspace_size(const GemmArgs& p) {
  return p.out_dtype == DType::kBFloat16 ? BlockwiseGemm<Config, cutlass::bfloat16_t>::workspace_size(p)
                                         : BlockwiseGemm<Config, cutlass::half_t>::workspace_size(p);
}

template <class Config>
cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
  return p.out_dtype == DType::kBFloat16 ? BlockwiseGemm<Config, cutlass::bfloat16_t>::run(p, workspace, stream)
                                         : BlockwiseGemm<Config, cutlass::half_t>::run(p, workspace, stream);
}

}  // namespace qk::fp8_block::sm90

// Defines `const Kernel NAME` (fp8_block.h) with the tile config CONFIG (sm90_configs.cuh);
// STREAMK: whether kernels/generate.py declared it a stream-K kernel (the run-time parameters
// kernels.inc gives it: the K decomposition only for the stream-K scheduler).
#define QK_FP8_BLOCK_SM90_KERNEL(NAME, CONFIG, STREAMK)                                              \
  static_assert(qk::fp8_block::sm90::CONFIG::kStreamK == STREAMK,                                    \
                #NAME ": kernels/generate.py's scheduler does not match " #CONFIG "'s tile scheduler"); \
  namespace qk::fp8_block {                                                                          \
  const Kernel NAME = {#NAME, sm90::CONFIG::kDescription, &sm90::workspace_size<sm90::CONFIG>,       \
                       &sm90::run<sm90::CONFIG>};                                                    \
  }
