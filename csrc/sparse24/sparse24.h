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
};

// M buckets (tokens): each has its own tile config, see kernels/sparse24_configs.cuh.
enum class MBucket : int { kUpTo32 = 0, kUpTo128 = 1, kLarge = 2 };
constexpr MBucket m_bucket(int64_t m) {
  return m <= 32 ? MBucket::kUpTo32 : (m <= 128 ? MBucket::kUpTo128 : MBucket::kLarge);
}

// Per bucket (one kernel file each): the workspace bytes the CUTLASS kernel needs,
// and the launch. `gemm` returns cudaErrorNotSupported when CUTLASS's can_implement
// rejects the problem.
template <MBucket B>
size_t gemm_workspace_size(const GemmArgs& args);
template <MBucket B>
cudaError_t gemm(const GemmArgs& args, void* workspace, cudaStream_t stream);

}  // namespace qk::sparse24
