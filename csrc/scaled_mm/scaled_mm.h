// W8A8 scaled GEMM (INT8 and FP8 e4m3): the plain C++ interface between the torch glue
// (scaled_mm_torch.cpp) and the kernels (kernels/*.cu). No torch types here.
//
//   out[m, n] = out_dtype(a_scale[m|0] * (b_scale[n|0] * acc'[m, n]) + bias[n])
//   acc       = sum_k a[m, k] * b[k, n]                  (int32 for INT8, float32 for FP8)
//   acc'      = acc                                      (plain)
//             = acc - azp[m|.] * azp_adj[n]               (azp: azp null means 1, i.e. a
//                                                         per-tensor zero point folded into azp_adj)
// The executable spec is qkernels/reference/scaled_mm.py.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"
#include "scaled_mm/kernels/kernels.inc"

namespace qk::scaled_mm {

// Alignment the kernels need (elements): 16-byte vector / TMA accesses of the 8-bit
// operands along K, and of the 16-bit output (and the bias, scales) along N.
constexpr int kAlignK = 16;
constexpr int kAlignN = 16;

struct GemmArgs {
  const void* a;            // int8 / fp8 [m, k], row-major, row stride lda (elements)
  int64_t lda;
  const void* b;            // same dtype [k, n], column-major: element (k, n) at b[n * ldb + k]
  int64_t ldb;
  void* out;                // [m, n] row-major, contiguous, out_dtype
  DType out_dtype;          // kBFloat16 or kFloat16
  const float* a_scales;    // [m] if a_per_token else [1]
  bool a_per_token;
  const float* b_scales;    // [n] if b_per_channel else [1]
  bool b_per_channel;
  const void* bias;         // [n] of out_dtype, or null
  const int32_t* azp_adj;   // azp kernels: [n]
  const int32_t* azp;       // azp kernels: [m], or null (per-tensor zero point folded into azp_adj)
  int64_t m, n, k;
  int sm_count;              // SMs of the device (persistent / stream-K kernels)
  TileSchedulerArgs scheduler;  // sm90 kernels: the dispatch table's run-time scheduler arguments
};

// One compiled GEMM (a tile configuration, for one arch, operand dtype and epilogue),
// serving both output dtypes. Defined by one kernels/*.cu file each; the glue registers them
// as candidates of their dispatch key (core/dispatch.h: M bucket -> kernel + params).
struct Kernel {
  const char* name;                                              // e.g. "sm90_fp8_m16"
  const char* config;                                            // tile / schedule, for humans
  size_t (*workspace_size)(const GemmArgs&);                     // bytes (0 for most)
  cudaError_t (*run)(const GemmArgs&, void* workspace, cudaStream_t);  // cudaErrorNotSupported:
                                                                 // CUTLASS's can_implement said no
};

// The kernels, declared from the list that kernels/generate.py writes (kernels.inc: per dispatch
// key, X(name, params)). Names: <arch>_<dtype>[_azp]_<config>. Which exist in a build depends on
// the kernel groups compiled (csrc/scaled_mm/sources.cmake, QK_SCALED_MM_<GROUP> macros).
#define QK_SCALED_MM_DECLARE(name, params) extern const Kernel name;
QK_SCALED_MM_KERNELS_ALL(QK_SCALED_MM_DECLARE)
#undef QK_SCALED_MM_DECLARE

}  // namespace qk::scaled_mm
