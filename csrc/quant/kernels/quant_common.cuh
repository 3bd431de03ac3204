// Shared pieces of the quantisation kernels: typed vector loads, block reductions,
// launch geometry. Device code only; included by the kernel .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/cuda_utils.h"

namespace qk::quant {

constexpr int kThreads = 256;
constexpr float kFp8Max = 448.0f;
constexpr float kFp8MinScale = 1.0f / (448.0f * 512.0f);

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// VEC elements of T in one 16-byte load.
template <typename T>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {
  Vec<T> r;
  *reinterpret_cast<uint4*>(r.v) = __ldg(reinterpret_cast<const uint4*>(p));
  return r;
}

// True when a row of `cols` elements of T starting at `base` can be read with
// 16-byte vectors: every row start is 16-byte aligned.
template <typename T>
__host__ __device__ inline bool rows_vectorizable(const void* base, int64_t cols) {
  return (reinterpret_cast<uintptr_t>(base) % 16 == 0) && ((cols * sizeof(T)) % 16 == 0);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide max/min over kThreads threads; the result is returned to every thread.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v) {
  __shared__ float partial[kThreads / 32];
  __shared__ float result;
  v = kMax ? warp_max(v) : warp_min(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? partial[lane] : (kMax ? -INFINITY : INFINITY);
    v = kMax ? warp_max(v) : warp_min(v);
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

// Visits every element x (as float) of a row with its column index: f(col, x).
// Uses 16-byte loads when the rows allow it, scalar loads otherwise.
template <typename T, typename F>
__device__ __forceinline__ void for_each_in_row(const T* row, int64_t cols, bool vectorized, F&& f) {
  if (vectorized) {
    constexpr int V = Vec<T>::kSize;
    for (int64_t c = int64_t(threadIdx.x) * V; c < cols; c += int64_t(kThreads) * V) {
      Vec<T> x = load_vec(row + c);
#pragma unroll
      for (int i = 0; i < V; ++i) f(c + i, to_float(x.v[i]));
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) f(c, to_float(row[c]));
  }
}

// Byte-sized output packs of one Vec<T> (8 bytes for 16-bit inputs, 4 for fp32).
template <int V> struct OutPack;
template <> struct OutPack<8> { using type = uint2; };
template <> struct OutPack<4> { using type = uint32_t; };

// Writes quant(x) (one byte: fp8 or int8 bits) for every element of a row.
template <typename T, typename Q>
__device__ __forceinline__ void quantize_row(const T* row, uint8_t* out, int64_t cols, bool vectorized, Q&& quant) {
  if (vectorized) {
    constexpr int V = Vec<T>::kSize;
    for (int64_t c = int64_t(threadIdx.x) * V; c < cols; c += int64_t(kThreads) * V) {
      Vec<T> x = load_vec(row + c);
      union { typename OutPack<V>::type pack; uint8_t b[V]; } o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.b[i] = quant(to_float(x.v[i]));
      *reinterpret_cast<typename OutPack<V>::type*>(out + c) = o.pack;
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) out[c] = quant(to_float(row[c]));
  }
}

// The same over a flat array of n elements, grid-stride, with a scalar tail.
template <typename T, typename Q>
__device__ __forceinline__ void quantize_flat(const T* p, uint8_t* out, int64_t n, bool vectorized, Q&& quant) {
  constexpr int V = Vec<T>::kSize;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t start = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nvec = vectorized ? n / V : 0;
  for (int64_t v = start; v < nvec; v += stride) {
    Vec<T> x = load_vec(p + v * V);
    union { typename OutPack<V>::type pack; uint8_t b[V]; } o;
#pragma unroll
    for (int i = 0; i < V; ++i) o.b[i] = quant(to_float(x.v[i]));
    *reinterpret_cast<typename OutPack<V>::type*>(out + v * V) = o.pack;
  }
  for (int64_t i = nvec * V + start; i < n; i += stride) out[i] = quant(to_float(p[i]));
}

// max(|x|) over a flat array (grid-stride), reduced over the block.
template <typename T>
__device__ __forceinline__ float block_absmax_flat(const T* p, int64_t n, bool vectorized) {
  constexpr int V = Vec<T>::kSize;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t start = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t nvec = vectorized ? n / V : 0;
  float m = 0.0f;
  for (int64_t v = start; v < nvec; v += stride) {
    Vec<T> x = load_vec(p + v * V);
#pragma unroll
    for (int i = 0; i < V; ++i) m = fmaxf(m, fabsf(to_float(x.v[i])));
  }
  for (int64_t i = nvec * V + start; i < n; i += stride) m = fmaxf(m, fabsf(to_float(p[i])));
  return block_reduce<true>(m);
}

template <typename T>
inline bool flat_vectorizable(const void* in, const void* out) {
  return reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
}

// Row kernels vectorize when every input row start is 16-byte aligned (and so
// every output row start is aligned for its pack).
template <typename T>
inline bool rows_vectorizable_io(const void* in, const void* out, int64_t cols) {
  return rows_vectorizable<T>(in, cols) && reinterpret_cast<uintptr_t>(out) % 16 == 0;
}

inline int flat_grid(int64_t n) {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  int64_t want = ceil_div<int64_t>(n, int64_t(kThreads) * 8);
  int64_t cap = int64_t(sms > 0 ? sms : 1) * 8;
  return int(want < 1 ? 1 : (want < cap ? want : cap));
}

// Calls f.template operator()<T>() with T = the C++ type of `dt`.
template <typename F>
inline cudaError_t dispatch_float_input(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat32: return f(float{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace qk::quant
