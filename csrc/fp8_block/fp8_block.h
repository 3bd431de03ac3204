// Block-scaled FP8 (W8A8-FP8_BLOCK): the plain C++ interface between the torch glue
// (fp8_block_torch.cpp) and the kernels (kernels/*.cu). No torch types here.
// The executable spec (math, order of operations, scale layouts) is
// qkernels/reference/fp8_block.py.
//
//   per-token-group quant:  s[r, g] = max(absmax(x[r, gG:(g+1)G]) / 448, 1/(448*512)) (or static),
//                           optionally rounded up to a power of two (UE8M0);
//                           q[r, k] = fp8(clamp(x[r, k] * (1 / s[r, k / G]), +-448))
//   blockwise GEMM (B = 128):
//     out[m, n] = out_dtype( sum_kb (sum_{k in kb} a[m,k] b[k,n]) * (sa[m,kb] * sb[n/B, kb]) + bias[n] )
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"
#include "fp8_block/kernels/kernels.inc"

namespace qk::fp8_block {

constexpr int kBlock = 128;     // weight block (N and K), the GEMM's activation group along K
constexpr int kScaleAlign = 4;  // float32 elements per 16 bytes: column-major scales' row padding
constexpr int kAlignN = 16;     // N: 16-byte aligned output rows (TMA stores) and bias

// ----------------------------------------------------------------- per-token-group quantisation
struct GroupQuantArgs {
  const void* in;             // [rows, cols] contiguous, in_dtype (fp16 / bf16 / fp32)
  DType in_dtype;
  uint8_t* out;               // [rows, cols] fp8 e4m3 bits, contiguous
  float* scales;              // element (r, g) at scales[r * scale_row_stride + g * scale_group_stride]
  int64_t scale_row_stride;   // row-major: cols / group_size; column-major: 1
  int64_t scale_group_stride; // row-major: 1; column-major: ceil(rows / 4) * 4
  int64_t rows, cols;
  int group_size;             // 64 or 128
  bool ue8m0;                 // dynamic scales rounded up to a power of two
  const float* static_scale;  // null: dynamic; else [1] or [cols / group_size] (static_per_group)
  bool static_per_group;
  int sm_count;               // SMs of the device (grid size)
};

// Launches the quantisation kernel; returns the launch's cudaError_t (cudaErrorInvalidValue for
// an unsupported dtype / group size, which the glue rules out first).
cudaError_t per_token_group_quant(const GroupQuantArgs& args, cudaStream_t stream);

// ----------------------------------------------------------------- blockwise-scaled GEMM (sm90a)
struct GemmArgs {
  const void* a;              // fp8 [m, k], row-major, row stride lda (elements)
  int64_t lda;
  const void* b;              // fp8 [k, n], column-major: element (k, n) at b[n * ldb + k]
  int64_t ldb;
  void* out;                  // [m, n] row-major, contiguous, out_dtype
  DType out_dtype;            // kBFloat16 or kFloat16
  const float* a_scales;      // column-major [m, k/128]: element (m, kb) at a_scales[kb * a_scales_ld + m]
  int64_t a_scales_ld;        // a multiple of kScaleAlign, >= m
  const float* b_scales;      // row-major [ceil(n/128), k/128], contiguous
  const void* bias;           // [n] of out_dtype, or null
  int64_t m, n, k;
  int sm_count;               // SMs of the device (persistent / stream-K grids)
  TileSchedulerArgs scheduler;  // the dispatch table's raster order / swizzle / stream-K K split
};

// One compiled GEMM (a tile configuration; both output dtypes). Defined by one kernels/*.cu file
// each; the glue registers them as the candidates of the dispatch key "fp8_block/sm90/fp8"
// (core/dispatch.h): M bucket -> kernel + scheduler params.
struct Kernel {
  const char* name;                                                    // e.g. "sm90_fp8_block_m16"
  const char* config;                                                  // tile / schedule, for humans
  size_t (*workspace_size)(const GemmArgs&);                           // bytes (stream-K partials)
  cudaError_t (*run)(const GemmArgs&, void* workspace, cudaStream_t);  // cudaErrorNotSupported:
                                                                       // CUTLASS's can_implement said no
};

// The kernels, declared from the list kernels/generate.py writes (kernels.inc). They exist when
// the SM90 group was compiled (QK_FP8_BLOCK_SM90).
#define QK_FP8_BLOCK_DECLARE(name, params) extern const Kernel name;
QK_FP8_BLOCK_KERNELS_SM90_FP8(QK_FP8_BLOCK_DECLARE)
#undef QK_FP8_BLOCK_DECLARE

}  // namespace qk::fp8_block
