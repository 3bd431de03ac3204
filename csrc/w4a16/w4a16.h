// W4A16 GEMM: the plain C++ interface between the torch glue (w4a16_torch.cpp) and the
// kernels (kernels/*.cu). The math and the layouts are specified by qkernels/reference/w4a16.py
// and described in README.md.
//
// All pointers are device pointers on `stream`, contiguous. Each launcher returns the launch's
// cudaError_t.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"

namespace qk::w4a16 {

inline constexpr int kTileN = 64;   // columns of one thread-block tile: N % 64 == 0
inline constexpr int kTileK = 128;  // K per pipeline stage: K % 128 == 0
inline constexpr int kSliceM = 64;  // rows per block; m <= kSliceM: stream-K, else tile mode (no split-K)

struct GemmArgs {
  const void* a;          // [m, k] activations (fp16/bf16), already permuted for act-order
  const uint32_t* b;      // [k/16, 2n] tiled 4-bit weights (w4a16_repack)
  const void* scales;     // [groups, n] in the activation dtype
  const void* zeros;      // [groups, n] zero-point nibbles in the activation dtype, or null (uint4b8)
  const void* bias;       // [n] in the activation dtype, or null
  void* c;                // [m, n] output, activation dtype
  float* partials;        // stream-K workspace (m <= kSliceM): partials_floats(n) floats, any contents
  int* locks;             // stream-K workspace (m <= kSliceM): n / kTileN ints, zero on entry (left zero)
  int m, n, k;
  int group_size;         // 32, 64, 128, or k for per channel
  int num_sms;            // thread blocks to spread the work over (one per SM)
};

// Size of GemmArgs::partials: one fp32 kSliceM x kTileN tile per column tile.
inline size_t partials_floats(int n) { return static_cast<size_t>(n / kTileN) * kSliceM * kTileN; }

// out = a @ dequant(b) (+ bias). Explicitly instantiated for {kFloat16, kBFloat16} x {false, true}
// in kernels/gemm_f16.cu and kernels/gemm_bf16.cu.
template <DType kAct, bool kHasZeros>
cudaError_t gemm(const GemmArgs& args, cudaStream_t stream);

// compressed-tensors weight_packed [n, k/8] (+ optional act-order perm [k]) -> tiled [k/16, 2n].
cudaError_t repack(const uint32_t* weight_packed, const int32_t* perm, uint32_t* out, int n, int k,
                   cudaStream_t stream);

}  // namespace qk::w4a16
