// W4A16 GEMM (sm80+ Marlin-style path): the plain C++ interface between the torch glue
// (w4a16_torch.cpp) and the kernels (kernels/*.cu). The math and the layouts are specified by
// qkernels/reference/w4a16.py and described in README.md; the block configuration and the work
// partition by partition.h.
//
// All pointers are device pointers on `stream`, contiguous. Each launcher returns the launch's
// cudaError_t.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"
#include "w4a16/partition.h"

namespace qk::w4a16 {

struct GemmArgs {
  const void* a;          // [m, k] activations (fp16/bf16), already permuted for act-order; 16-byte aligned
  const uint32_t* b;      // [k/16, 2n] tiled 4-bit weights (w4a16_repack); 16-byte aligned
  const void* scales;     // [groups, n] in the activation dtype; 16-byte aligned
  const void* zeros;      // [groups, n] zero-point nibbles in the activation dtype, or null (uint4b8)
  const void* bias;       // [n] in the activation dtype, or null
  void* c;                // [m, n] output, activation dtype
  float* workspace;       // part.workspace_floats() floats, any contents (null when 0)
  int* counters;          // part.counters() ints, zero on entry; the kernel leaves them zero
  int group_size;         // 32, 64, 128, or k for per channel
  Partition part;         // make_partition(m, n, k, num_sms): sizes, mode, grid
};

// out = a @ dequant(b) (+ bias). Explicitly instantiated for {kFloat16, kBFloat16} x {false, true}
// in kernels/gemm_{f16,bf16}_{sym,zp}.cu (the four M buckets each).
template <DType kAct, bool kHasZeros>
cudaError_t gemm(const GemmArgs& args, cudaStream_t stream);

// compressed-tensors weight_packed [n, k/8] (+ optional act-order perm [k]) -> tiled [k/16, 2n].
cudaError_t repack(const uint32_t* weight_packed, const int32_t* perm, uint32_t* out, int n, int k,
                   cudaStream_t stream);

}  // namespace qk::w4a16
