// 2:4 sparse FP8 GEMM (sm90a): the plain C++ interface between the torch glue
// (sparse24_torch.cpp) and the kernels (kernels/*.cu). No torch types here.
//
// The compressed weight format (values + metadata) is specified, with the math, by
// qkernels/reference/sparse24.py and described in words in README.md. All pointers
// are device pointers on `stream`; launchers return the launch's cudaError_t.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"

namespace qk::sparse24 {

// Shape of the metadata: [K/128, ceil(N/64), 64, 16] bytes (CUTLASS Sm90GemmSparseConfig,
// 8-bit A, MinTileShapeK = 128: blocks of 64 rows x 128 logical K, M-block fastest).
constexpr int kMetaRows = 64;    // rows per metadata block
constexpr int kMetaK = 128;      // logical K per metadata block (16 bytes per row)
constexpr int kOutAlignN = 8;    // N multiple of 8: 16-byte aligned output rows (TMA store)

// Compress a 2:4 fp8 weight w [n, k] (row-major, k % 128 == 0) into values [n, k/2]
// and meta (layout above; the padding rows n..ceil(n/64)*64-1 are written as all-zero
// rows). `bad_groups` (one int32, zeroed by the caller) receives the number of groups
// of 4 with more than 2 non-zeros; the output is meaningless if it is not 0.
cudaError_t compress(const uint8_t* w, uint8_t* values, uint8_t* meta, int* bad_groups, int64_t n, int64_t k,
                     cudaStream_t stream);

// out[m, n] = a_scales[m or 0] * (b_scales[n or 0] * sum_k a[m, k] w[n, k]) + bias[n]
// computed as the sparse GEMM out^T (N x M, column-major) = W_sparse (N x K) . a^T.
struct GemmArgs {
  const void* a;             // fp8 e4m3 [m, k], row stride lda (elements, multiple of 16)
  int64_t lda;
  const void* values;        // fp8 e4m3 [n, k/2]
  const uint8_t* meta;       // see above
  const float* a_scales;     // [m] if a_per_token else [1]
  bool a_per_token;
  const float* b_scales;     // [n] if b_per_channel else [1]
  bool b_per_channel;
  const void* bias;          // [n] of out_dtype, or null
  void* out;                 // [m, n] row-major, out_dtype
  DType out_dtype;           // kBFloat16 or kFloat16
  int64_t m, n, k;
  int sm_count;              // SMs of the device (persistent kernels; 0: CUTLASS queries it)
  TileSchedulerArgs scheduler;  // persistent kernels: the dispatch table's raster order / swizzle
};

// One compiled sparse GEMM (a tile config of kernels/sparse24_configs.cuh, bf16 and fp16
// output), defined by one kernels/gemm_*.cu each. The glue registers them as the candidates of
// the dispatch key "sparse24/sm90/fp8" (core/dispatch.h): M bucket -> kernel + scheduler params.
struct Kernel {
  const char* name;                                              // e.g. "sparse24_m32"
  const char* config;                                            // tile / schedule, for humans
  size_t (*workspace_size)(const GemmArgs&);                     // bytes the CUTLASS kernel needs
  cudaError_t (*run)(const GemmArgs&, void* workspace, cudaStream_t);  // cudaErrorNotSupported:
                                                                 // CUTLASS's can_implement said no
};
extern const Kernel sparse24_m32;       // 64x32x256, TMA warp-specialized (not persistent)
extern const Kernel sparse24_m128;      // 64x128x256, ping-pong
extern const Kernel sparse24_large;     // 128x128x128, 2x1 cluster, cooperative
extern const Kernel sparse24_large_k256;  // 128x128x256, 2x1 cluster, cooperative (tuner candidate)

}  // namespace qk::sparse24
