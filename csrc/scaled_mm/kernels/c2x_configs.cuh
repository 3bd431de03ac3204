// Tile configurations of the CUTLASS 2.x scaled GEMMs (sm75, sm80, sm89), as data.
// The dispatch tables in scaled_mm_torch.cpp map M buckets to them.
//
// Small M is memory-bound on the weight: short, wide-in-K tiles (M tile 16 or 32)
// with deep cp.async pipelines and an intra-CTA split of K across warps; large M uses
// 128x128 tiles. Starting points from the shapes CUTLASS's profiler and vLLM favour on
// these archs; not yet measured here. No sm75/80/89 GPU is available to this project: the
// plan is to test these paths for correctness on an H100 through PTX (README.md); speed on
// those archs is not something this project can measure.
#pragma once
#include "cutlass/arch/arch.h"
#include "cutlass/arch/mma.h"
#include "cutlass/gemm/gemm.h"
#include "cutlass/numeric_types.h"

namespace qk::scaled_mm::c2x {

using cutlass::gemm::GemmShape;

template <class Arch, class AB, class Acc, class Tile, class Warp, class Instr, int Stages, class Op>
struct Config {
  using ArchTag = Arch;
  using ElementAB = AB;
  using ElementAcc = Acc;
  using TileShape = Tile;
  using WarpShape = Warp;
  using InstructionShape = Instr;
  static constexpr int kStages = Stages;
  using Operator = Op;
};

// ---- sm75 (Turing) INT8: mma m8n8k16, two-stage (ldg -> sts) pipeline.
template <class Tile, class Warp>
using Sm75Int8 = Config<cutlass::arch::Sm75, int8_t, int32_t, Tile, Warp, GemmShape<8, 8, 16>, 2,
                        cutlass::arch::OpMultiplyAddSaturate>;
struct Sm75Int8Small : Sm75Int8<GemmShape<32, 128, 64>, GemmShape<32, 64, 64>> {
  static constexpr const char* kDescription = "cutlass 2.x sm75 int8, tile 32x128x64, warp 32x64x64, 2 stages";
};
struct Sm75Int8Mid : Sm75Int8<GemmShape<64, 128, 64>, GemmShape<32, 64, 64>> {
  static constexpr const char* kDescription = "cutlass 2.x sm75 int8, tile 64x128x64, warp 32x64x64, 2 stages";
};
struct Sm75Int8Large : Sm75Int8<GemmShape<128, 128, 64>, GemmShape<64, 64, 64>> {
  static constexpr const char* kDescription = "cutlass 2.x sm75 int8, tile 128x128x64, warp 64x64x64, 2 stages";
};

// ---- sm80+ INT8: mma m16n8k32 (saturating int32 accumulation), cp.async multistage.
template <class Tile, class Warp, int Stages>
using Sm80Int8 = Config<cutlass::arch::Sm80, int8_t, int32_t, Tile, Warp, GemmShape<16, 8, 32>, Stages,
                        cutlass::arch::OpMultiplyAddSaturate>;
struct Sm80Int8M16 : Sm80Int8<GemmShape<16, 64, 128>, GemmShape<16, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm80 int8, tile 16x64x128, warp 16x64x64, 5 stages";
};
struct Sm80Int8M64 : Sm80Int8<GemmShape<64, 64, 128>, GemmShape<32, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm80 int8, tile 64x64x128, warp 32x64x64, 5 stages";
};
struct Sm80Int8M128 : Sm80Int8<GemmShape<64, 128, 64>, GemmShape<32, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm80 int8, tile 64x128x64, warp 32x64x64, 5 stages";
};
struct Sm80Int8Large : Sm80Int8<GemmShape<128, 128, 64>, GemmShape<64, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm80 int8, tile 128x128x64, warp 64x64x64, 5 stages";
};

// ---- sm89 FP8 e4m3: mma m16n8k32 with float32 accumulation, cp.async multistage.
// Shared memory per CTA stays under sm89's 99 KiB (the large tile: 5 x 16 KiB).
// OpMultiplyAddFastAccum: plain float32 accumulation in the mma (OpMultiplyAdd would add a
// second, "staged" accumulator set and an extra add per k tile), as vLLM does here and as
// the sm90 FP8 kernels do.
template <class Tile, class Warp, int Stages>
using Sm89Fp8 = Config<cutlass::arch::Sm89, cutlass::float_e4m3_t, float, Tile, Warp, GemmShape<16, 8, 32>, Stages,
                       cutlass::arch::OpMultiplyAddFastAccum>;
struct Sm89Fp8M16 : Sm89Fp8<GemmShape<16, 64, 128>, GemmShape<16, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm89 fp8, tile 16x64x128, warp 16x64x64, 5 stages";
};
struct Sm89Fp8M64 : Sm89Fp8<GemmShape<64, 64, 128>, GemmShape<32, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm89 fp8, tile 64x64x128, warp 32x64x64, 5 stages";
};
struct Sm89Fp8M128 : Sm89Fp8<GemmShape<64, 128, 64>, GemmShape<32, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm89 fp8, tile 64x128x64, warp 32x64x64, 5 stages";
};
struct Sm89Fp8Large : Sm89Fp8<GemmShape<128, 128, 64>, GemmShape<64, 64, 64>, 5> {
  static constexpr const char* kDescription = "cutlass 2.x sm89 fp8, tile 128x128x64, warp 64x64x64, 5 stages";
};

}  // namespace qk::scaled_mm::c2x
