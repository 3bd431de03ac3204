// FP8 (e4m3) activation quantisation kernels. Spec: qkernels/reference/quant.py.
//
// Memory-bound: each kernel reads the input once (per-token: once more from L1/L2
// for the second pass over a row, which is at most a few tens of KB) and writes one
// byte per element. 16-byte vector loads when rows are aligned, one packed store
// per vector. The conversion uses __NV_SATFINITE, which equals the reference's
// clamp(±448) followed by a round-to-nearest-even cast (NaN stays NaN).
#include "quant/kernels/quant_common.cuh"
#include "quant/quant.h"

namespace qk::quant {
namespace {

__device__ __forceinline__ uint8_t to_fp8(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fp8_static_kernel(const T* in, uint8_t* out, const float* scale,
                                                              int64_t n, bool vec) {
  const float inv = 1.0f / scale[0];
  quantize_flat(in, out, n, vec, [inv](float x) { return to_fp8(x * inv); });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) absmax_kernel(const T* in, float* absmax, int64_t n, bool vec) {
  const float m = block_absmax_flat(in, n, vec);
  // absmax >= 0, so its bit pattern orders like a signed int: atomicMax on the bits.
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<int*>(absmax), __float_as_int(m));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fp8_from_absmax_kernel(const T* in, uint8_t* out, const float* absmax,
                                                                   float* scale, int64_t n, bool vec) {
  const float s = fmaxf(absmax[0] / kFp8Max, kFp8MinScale);
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[0] = s;
  const float inv = 1.0f / s;
  quantize_flat(in, out, n, vec, [inv](float x) { return to_fp8(x * inv); });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fp8_per_token_kernel(const T* in, uint8_t* out, float* scales,
                                                                 const float* scale_ub, int64_t cols, bool vec) {
  const int64_t r = blockIdx.x;
  const T* row = in + r * cols;
  float m = 0.0f;
  for_each_in_row(row, cols, vec, [&m](int64_t, float x) { m = fmaxf(m, fabsf(x)); });
  m = block_reduce<true>(m);
  if (scale_ub != nullptr) m = fminf(m, scale_ub[0]);
  const float s = fmaxf(m / kFp8Max, kFp8MinScale);
  if (threadIdx.x == 0) scales[r] = s;
  const float inv = 1.0f / s;
  quantize_row(row, out + r * cols, cols, vec, [inv](float x) { return to_fp8(x * inv); });
}

}  // namespace

cudaError_t static_fp8(const void* in, DType in_dtype, void* out, const float* scale, int64_t numel,
                       cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  return dispatch_float_input(in_dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = flat_vectorizable<T>(in, out);
    fp8_static_kernel<T><<<flat_grid(numel), kThreads, 0, stream>>>(static_cast<const T*>(in),
                                                                     static_cast<uint8_t*>(out), scale, numel, vec);
    return cudaGetLastError();
  });
}

cudaError_t dynamic_fp8_per_tensor(const void* in, DType in_dtype, void* out, float* scale, float* absmax_ws,
                                   int64_t numel, cudaStream_t stream) {
  return dispatch_float_input(in_dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = flat_vectorizable<T>(in, out);
    const int grid = flat_grid(numel);
    const T* x = static_cast<const T*>(in);
    if (numel > 0) absmax_kernel<T><<<grid, kThreads, 0, stream>>>(x, absmax_ws, numel, vec);
    QK_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    // Also launched for numel == 0 so that `scale` is always written.
    fp8_from_absmax_kernel<T><<<grid, kThreads, 0, stream>>>(x, static_cast<uint8_t*>(out), absmax_ws, scale,
                                                             numel, vec);
    return cudaGetLastError();
  });
}

cudaError_t dynamic_fp8_per_token(const void* in, DType in_dtype, void* out, float* scales, const float* scale_ub,
                                  int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch_float_input(in_dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = rows_vectorizable_io<T>(in, out, cols);
    fp8_per_token_kernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(in), static_cast<uint8_t*>(out),
                                                           scales, scale_ub, cols, vec);
    return cudaGetLastError();
  });
}

}  // namespace qk::quant
