// Activation quantisation: the plain C++ interface between the torch glue
// (quant_torch.cpp) and the kernels (kernels/*.cu). The math is specified by
// qkernels/reference/quant.py; the kernels perform the same float32 operations
// in the same order, so results are bit-identical to the reference.
//
// All pointers are device pointers on `stream`; inputs are contiguous, viewed as
// [rows, cols] (cols = hidden size, any value). Each launcher returns the launch's
// cudaError_t.
#pragma once
#include <cstdint>

#include "core/cuda_utils.h"

namespace qk::quant {

// q = fp8(clamp(x * (1/scale[0]), ±448))
cudaError_t static_fp8(const void* in, DType in_dtype, void* out, const float* scale, int64_t numel,
                       cudaStream_t stream);

// scale[0] = max(absmax(x)/448, 1/(448*512)); q as static. `absmax_ws` is one float,
// zeroed by the caller (stream-ordered) before the call.
cudaError_t dynamic_fp8_per_tensor(const void* in, DType in_dtype, void* out, float* scale, float* absmax_ws,
                                   int64_t numel, cudaStream_t stream);

// scales[r] = max(min(absmax(x_r), ub)/448, 1/(448*512)); `scale_ub` may be null.
cudaError_t dynamic_fp8_per_token(const void* in, DType in_dtype, void* out, float* scales, const float* scale_ub,
                                  int64_t rows, int64_t cols, cudaStream_t stream);

// q = sat8(rint(x / scale[0]) + azp[0]); `azp` may be null (symmetric).
cudaError_t static_int8(const void* in, DType in_dtype, int8_t* out, const float* scale, const int32_t* azp,
                        int64_t numel, cudaStream_t stream);

// Per-token symmetric (azp == null) or asymmetric (azp != null: one int32 per row).
cudaError_t dynamic_int8_per_token(const void* in, DType in_dtype, int8_t* out, float* scales, int32_t* azp,
                                   int64_t rows, int64_t cols, cudaStream_t stream);

}  // namespace qk::quant
