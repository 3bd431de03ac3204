// INT8 activation quantisation kernels. Spec: qkernels/reference/quant.py.
// Same structure as fp8_quant.cu: one pass (static) or a per-row reduction then a
// quantising pass over the row (dynamic per token, symmetric or asymmetric).
#include "quant/kernels/quant_common.cuh"
#include "quant/quant.h"

namespace qk::quant {
namespace {

// sat8(v) for an integral-valued float v (rintf already applied).
__device__ __forceinline__ uint8_t sat_int8(float v) {
  v = fminf(fmaxf(v, -128.0f), 127.0f);
  return static_cast<uint8_t>(static_cast<int8_t>(v));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) int8_static_kernel(const T* in, uint8_t* out, const float* scale,
                                                               const int32_t* azp, int64_t n, bool vec) {
  const float s = scale[0];
  const float zp = azp != nullptr ? static_cast<float>(azp[0]) : 0.0f;
  quantize_flat(in, out, n, vec, [s, zp](float x) { return sat_int8(rintf(x / s) + zp); });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) int8_per_token_sym_kernel(const T* in, uint8_t* out, float* scales,
                                                                      int64_t cols, bool vec) {
  const int64_t r = blockIdx.x;
  const T* row = in + r * cols;
  float m = 0.0f;
  for_each_in_row(row, cols, vec, [&m](int64_t, float x) { m = fmaxf(m, fabsf(x)); });
  m = block_reduce<true>(m);
  if (threadIdx.x == 0) scales[r] = m / 127.0f;
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  quantize_row(row, out + r * cols, cols, vec, [inv](float x) { return sat_int8(rintf(x * inv)); });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) int8_per_token_azp_kernel(const T* in, uint8_t* out, float* scales,
                                                                      int32_t* azps, int64_t cols, bool vec) {
  const int64_t r = blockIdx.x;
  const T* row = in + r * cols;
  // The range always contains 0 (so 0 is exact and a constant row is representable).
  float lo = 0.0f, hi = 0.0f;
  for_each_in_row(row, cols, vec, [&](int64_t, float x) {
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  });
  lo = block_reduce<false>(lo);
  hi = block_reduce<true>(hi);
  float s = (hi - lo) / 255.0f;
  if (!(s > 0.0f)) s = 1.0f;
  const float zp = rintf(-128.0f - lo / s);
  if (threadIdx.x == 0) {
    scales[r] = s;
    azps[r] = static_cast<int32_t>(zp);
  }
  quantize_row(row, out + r * cols, cols, vec, [s, zp](float x) { return sat_int8(rintf(x / s) + zp); });
}

}  // namespace

cudaError_t static_int8(const void* in, DType in_dtype, int8_t* out, const float* scale, const int32_t* azp,
                        int64_t numel, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  return dispatch_float_input(in_dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = flat_vectorizable<T>(in, out);
    int8_static_kernel<T><<<flat_grid(numel), kThreads, 0, stream>>>(
        static_cast<const T*>(in), reinterpret_cast<uint8_t*>(out), scale, azp, numel, vec);
    return cudaGetLastError();
  });
}

cudaError_t dynamic_int8_per_token(const void* in, DType in_dtype, int8_t* out, float* scales, int32_t* azp,
                                   int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch_float_input(in_dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = rows_vectorizable_io<T>(in, out, cols);
    const T* x = static_cast<const T*>(in);
    uint8_t* q = reinterpret_cast<uint8_t*>(out);
    if (azp == nullptr) {
      int8_per_token_sym_kernel<T><<<rows, kThreads, 0, stream>>>(x, q, scales, cols, vec);
    } else {
      int8_per_token_azp_kernel<T><<<rows, kThreads, 0, stream>>>(x, q, scales, azp, cols, vec);
    }
    return cudaGetLastError();
  });
}

}  // namespace qk::quant
