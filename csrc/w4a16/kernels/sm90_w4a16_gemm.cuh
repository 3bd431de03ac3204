// The Hopper W4A16 GEMM: CUTLASS 3.x sm90 mixed-input mainloop (TMA, warp-specialized, int4
// weights converted in registers and fed to wgmma as its register A operand) with a TMA
// epilogue that adds the bias. Included by the kernels/sm90_w4a16_<config>_<dtype>.cu files, each
// of which instantiates one (tile config, activation dtype) through QK_W4A16_HOPPER_KERNEL.
//
// The GEMM runs transposed (as CUTLASS example 55 does, so that the TMA epilogue can be used):
//   GEMM A = the prepacked weight W [N, K] (int4, K-major atoms, sm90_w4a16_layout.cuh),
//   GEMM B = the activations a [M, K] (K-major, i.e. row-major a),
//   GEMM D = out^T [N, M] column-major == out [M, N] row-major.
// So GEMM rows are output channels (weight rows) and GEMM columns are tokens; the scales and
// zeros [G, N] are "MN-major" ((n, g) at n + N g), the layout the collective requires.
//
// Dequantisation in the mainloop (CUTLASS's "scale with zero" mode), per element, in the
// activation dtype:  w = q * s + z'  with q the two's-complement nibble (q = u - 8 of the
// checkpoint's u) and z' = (8 - z) * s precomputed in the activation dtype. Symmetric weights
// pass z' = 0, which is exact (q * s + 0 rounds like q * s), so one kernel serves both: half the
// instantiations (compile time) for one extra add per weight element (README "Hopper path").
// The scale / zero of a k tile are read once per k tile, hence group_size % TileK == 0 (or
// group_size == K), and the collective wants TileK >= 64: no group size 32 (w4a16_hopper.h).
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
#include "w4a16/kernels/sm90_w4a16_layout.cuh"
#include "w4a16/w4a16_hopper.h"

namespace qk::w4a16::hopper {

using namespace cute;

// ---- tile configurations (TileShape is weight rows x tokens x k; see w4a16_hopper.h)
enum class Config : int { kMedium, kLarge };

template <Config>
struct TileConfig;

template <>
struct TileConfig<Config::kMedium> {
  static constexpr const char* kDescription = "128x128x64 (weight rows x tokens x k), cooperative, cluster 2x1";
  using TileShape        = Shape<_128, _128, Int<kTileK>>;
  using ClusterShape     = Shape<_2, _1, _1>;                                  // 2 weight tiles share (multicast) the token tile
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

template <>
struct TileConfig<Config::kLarge> {
  static constexpr const char* kDescription = "128x256x64 (weight rows x tokens x k), cooperative, cluster 2x1";
  using TileShape        = Shape<_128, _256, Int<kTileK>>;
  using ClusterShape     = Shape<_2, _1, _1>;
  using KernelSchedule   = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

template <DType kAct>
using Element = cute::conditional_t<kAct == DType::kBFloat16, cutlass::bfloat16_t, cutlass::half_t>;

template <DType kAct, Config kConfig>
struct HopperW4A16Gemm {
  using Cfg          = TileConfig<kConfig>;
  using TileShape    = typename Cfg::TileShape;
  using ClusterShape = typename Cfg::ClusterShape;
  using ElementAct   = Element<kAct>;                       // activations, scales, zeros, bias, output
  using ElementQ     = cutlass::int4b_t;                    // weights: two's complement q = u - 8
  using ElementAcc   = float;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
  static constexpr int kAlignAct = 128 / cutlass::sizeof_bits<ElementAct>::value;
  static constexpr int kAlignQ   = 128 / cutlass::sizeof_bits<ElementQ>::value;

  static_assert(check_weight_layout<ElementAct>());
  static_assert(kAlignK % size<2>(TileShape{}) == 0, "K must be a whole number of k tiles");

  // ---- epilogue: out = acc + bias[channel] (bias null -> 0), one rounding to the output dtype
  using Bias   = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, ElementAct, float, Stride<_1, _0, int64_t>,
                                                             kAlignAct>;
  using Fusion = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, ElementAct, float, kRound>,
      cutlass::epilogue::fusion::Sm90AccFetch, Bias>;

  using LayoutD = cutlass::layout::ColumnMajor;  // out^T [N, M]
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
      void, LayoutD, kAlignAct,                    // no C operand
      ElementAct, LayoutD, kAlignAct,
      typename Cfg::EpilogueSchedule, Fusion>::CollectiveOp;

  // ---- mainloop: the weight operand carries its scale and zero types; the activations are the
  // MMA type. The collective converts the weights in registers (it requires them on the A side).
  using ElementWeightTuple = cute::tuple<ElementQ, ElementAct, ElementAct>;
  using LayoutWeight = WeightLayout<ElementAct>;
  using LayoutActTag = cutlass::layout::ColumnMajor;  // GEMM B [K, M] column-major == a [M, K] row-major
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementWeightTuple, LayoutWeight, kAlignQ,
      ElementAct, LayoutActTag, kAlignAct,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Cfg::KernelSchedule>::CollectiveOp;

  // Persistent data-parallel tile scheduler (the default): every output tile is computed by one
  // CTA over the whole K, so no CTA ever waits for another (no stream-K / split-K partials).
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // What the glue's checks rely on.
  static_assert(CollectiveMainloop::KernelConversionMode == cutlass::detail::ConversionMode::ConvertAndScaleWithZero,
                "unexpected mixed-input conversion mode");
  static_assert(cute::is_same_v<typename CollectiveMainloop::StrideScale, Stride<_1, int64_t, int64_t>>,
                "scales / zeros must be [G, N] (N-major)");
  static_assert(!CollectiveMainloop::SwapAB, "the weights must be the collective's A operand");

  static typename Gemm::Arguments arguments(const GemmArgs& p) {
    const int groups = p.k / p.group_size;
    const auto stride_act =
        cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, cute::make_shape(p.m, p.k, 1));
    const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, cute::make_shape(p.n, p.m, 1));
    const auto stride_s = cutlass::make_cute_packed_stride(typename CollectiveMainloop::StrideScale{},
                                                           cute::make_shape(p.n, groups, 1));
    typename CollectiveMainloop::Arguments mainloop{
        reinterpret_cast<const ElementQ*>(p.b), weight_layout<ElementAct>(p.n, p.k),
        static_cast<const ElementAct*>(p.a), stride_act,
        static_cast<const ElementAct*>(p.scales), stride_s, p.group_size,
        static_cast<const ElementAct*>(p.zeros)};

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.n, p.m, p.k, 1},  // (weight rows, tokens, K, batch)
        mainloop,
        {{}, nullptr, stride_d, static_cast<ElementAct*>(p.c), stride_d}};
    args.epilogue.thread = {
        {},                                                                         // acc
        {static_cast<const ElementAct*>(p.bias), ElementAct(0), {}},                // bias (null -> 0)
        {}                                                                          // plus
    };
    args.hw_info.sm_count = p.sm_count;
    set_tile_scheduler(args, p.scheduler);  // the dispatch table's raster / swizzle
    return args;
  }

  static size_t workspace_size(const GemmArgs& p) { return Gemm::get_workspace_size(arguments(p)); }
  static cudaError_t run(const GemmArgs& p, void* workspace, cudaStream_t stream) {
    return run_cutlass<Gemm>(arguments(p), workspace, stream);
  }
};

}  // namespace qk::w4a16::hopper

// Defines `const Kernel NAME` (w4a16_hopper.h) for one (tile config, activation dtype).
#define QK_W4A16_HOPPER_KERNEL(NAME, CONFIG, ACT)                                                   \
  namespace qk::w4a16::hopper {                                                                    \
  const Kernel NAME = {#NAME, TileConfig<Config::CONFIG>::kDescription,                            \
                       &HopperW4A16Gemm<DType::ACT, Config::CONFIG>::workspace_size,               \
                       &HopperW4A16Gemm<DType::ACT, Config::CONFIG>::run};                         \
  }
