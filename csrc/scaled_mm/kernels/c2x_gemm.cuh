// CUTLASS 2.x scaled GEMM (sm75 / sm80 / sm89 tensor ops) with the scale / bias / azp
// epilogue as an epilogue visitor tree (EVT). Included by the kernels/sm7x_*, sm8x_*
// files, each of which instantiates one tile config (c2x_configs.cuh) for both output
// dtypes through QK_SCALED_MM_C2X_KERNEL.
//
// Orientation: A = a [M, K] row-major, B = b [K, N] column-major, D = out [M, N]
// row-major. a_scale is one value per row of D (column broadcast), b_scale / bias /
// azp_adj one per column (row broadcast).
#pragma once
// (Order matters: the 2.x visitor headers expect the GEMM headers before them.)
#include "cutlass/cutlass.h"
#include "cutlass/numeric_conversion.h"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/default_gemm_universal_with_visitor.h"
#include "cutlass/epilogue/threadblock/fusion/visitors.hpp"

#include "scaled_mm/kernels/c2x_configs.cuh"
#include "scaled_mm/kernels/c2x_visitors.cuh"
#include "core/cutlass_run.cuh"
#include "scaled_mm/scaled_mm.h"

namespace qk::scaled_mm::c2x {

namespace tb = cutlass::epilogue::threadblock;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

template <class Config, class ElementOut, bool kAzp>
struct ScaledGemm {
  using ElementAB = typename Config::ElementAB;
  using ElementAcc = typename Config::ElementAcc;
  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<ElementAB>::value;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  static constexpr int kEpilogueStages = 1;
  static_assert(kAlignAB <= kAlignK && kAlignOut <= kAlignN, "the glue's alignment checks must cover the kernel's");

  using ThreadMap = tb::OutputTileThreadLayout<typename Config::TileShape, typename Config::WarpShape, ElementOut,
                                               kAlignOut, kEpilogueStages>;

  // ---- epilogue tree: a_scale[m] * (b_scale[n] * acc') + bias[n], in float32
  using Acc = tb::VisitorAccFetch;
  using AScale = tb::VisitorColBroadcast<ThreadMap, float, Stride<int64_t, _0, _0>>;  // stride 1 or 0 (per tensor)
  using BScale = VisitorRowOrScalarBroadcast<ThreadMap, float>;
  using Bias = tb::VisitorRowBroadcast<ThreadMap, ElementOut, Stride<_0, _1, _0>>;  // null -> 0

  // acc' = acc - azp[m] * azp_adj[n] in int32 (azp null -> 1: a per-tensor zero point is in azp_adj)
  using AzpAdj = tb::VisitorRowBroadcast<ThreadMap, int32_t, Stride<_0, _1, _0>>;
  using Azp = tb::VisitorColBroadcast<ThreadMap, int32_t, Stride<_1, _0, _0>>;
  using AzpTerm = tb::Sm80EVT<tb::VisitorCompute<cutlass::multiplies, int32_t, int32_t, kRound>, Azp, AzpAdj>;
  using AccAzp = tb::Sm80EVT<tb::VisitorCompute<cutlass::minus, float, int32_t, kRound>, Acc, AzpTerm>;
  using AccIn = cute::conditional_t<kAzp, AccAzp, Acc>;

  using Scaled = tb::Sm80EVT<tb::VisitorCompute<cutlass::multiplies, float, float, kRound>, BScale, AccIn>;
  using Result = tb::Sm80EVT<tb::VisitorCompute<cutlass::homogeneous_multiply_add, ElementOut, float, kRound>,
                             AScale, Scaled, Bias>;
  using Store = tb::VisitorAuxStore<ThreadMap, ElementOut, kRound, Stride<int64_t, _1, _0>>;
  using Tree = tb::Sm80EVT<Store, Result>;

  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      ElementAB, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, kAlignAB,
      ElementAB, cutlass::layout::ColumnMajor, cutlass::ComplexTransform::kNone, kAlignAB,
      ElementOut, cutlass::layout::RowMajor, kAlignOut,
      ElementAcc, float, cutlass::arch::OpClassTensorOp, typename Config::ArchTag,
      typename Config::TileShape, typename Config::WarpShape, typename Config::InstructionShape,
      Tree, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, Config::kStages,
      typename Config::Operator, kEpilogueStages>::GemmKernel;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Tree::Arguments tree_arguments(const GemmArgs& p) {
    typename AccIn::Arguments acc_args{};
    if constexpr (kAzp) {
      acc_args = {
          {},                                                                  // Acc
          {{p.azp, int32_t(1), {}}, {p.azp_adj, int32_t(0), {}}, {}},          // AzpTerm = azp * azp_adj
          {}                                                                   // minus
      };
    }
    return {
        {
            {p.a_scales, 0.f, {int64_t(p.a_per_token ? 1 : 0), _0{}, _0{}}},   // AScale
            {{p.b_scales, p.b_per_channel}, acc_args, {}},                      // Scaled = BScale * acc'
            {static_cast<const ElementOut*>(p.bias), ElementOut(0), {}},        // Bias
            {}                                                                  // multiply_add
        },
        {static_cast<ElementOut*>(p.out), {p.n, _1{}, _0{}}}                    // Store
    };
  }

  static typename Gemm::Arguments arguments(const GemmArgs& p) {
    const cutlass::gemm::GemmCoord problem(int(p.m), int(p.n), int(p.k));
    return typename Gemm::Arguments(cutlass::gemm::GemmUniversalMode::kGemm, problem, 1, tree_arguments(p), p.a, p.b,
                                    nullptr, nullptr, 0, 0, 0, 0, p.lda, p.ldb, 0, 0);
  }

  static cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
    return run_cutlass<Gemm>(arguments(p), workspace, stream);
  }

  static size_t workspace_size(const GemmArgs& p) { return Gemm::get_workspace_size(arguments(p)); }
};

template <class Config, bool kAzp>
size_t workspace_size(const GemmArgs& p) {
  return p.out_dtype == DType::kBFloat16 ? ScaledGemm<Config, cutlass::bfloat16_t, kAzp>::workspace_size(p)
                                         : ScaledGemm<Config, cutlass::half_t, kAzp>::workspace_size(p);
}

template <class Config, bool kAzp>
cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
  return p.out_dtype == DType::kBFloat16 ? ScaledGemm<Config, cutlass::bfloat16_t, kAzp>::run(p, workspace, stream)
                                         : ScaledGemm<Config, cutlass::half_t, kAzp>::run(p, workspace, stream);
}

}  // namespace qk::scaled_mm::c2x

// Defines `const Kernel NAME` (scaled_mm.h) for tile config CONFIG, epilogue AZP (true/false).
#define QK_SCALED_MM_C2X_KERNEL(NAME, CONFIG, AZP)                                                        \
  namespace qk::scaled_mm {                                                                              \
  const Kernel NAME = {#NAME, c2x::CONFIG::kDescription, &c2x::workspace_size<c2x::CONFIG, AZP>,         \
                       &c2x::run<c2x::CONFIG, AZP>};                                                     \
  }
