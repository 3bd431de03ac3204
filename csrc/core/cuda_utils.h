// Helpers for kernel translation units (.cu). No torch headers here: kernel files
// must compile without them (compile time; see README "Adding a kernel").
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace qk {

// Launchers return the CUDA error of their launch (cudaGetLastError()); the torch
// glue turns a non-success code into a Python RuntimeError naming the op.
#define QK_RETURN_IF_CUDA_ERROR(expr)          \
  do {                                         \
    cudaError_t qk_err_ = (expr);              \
    if (qk_err_ != cudaSuccess) return qk_err_; \
  } while (0)

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

// Element types passed through the plain C++ interfaces between glue and kernels.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat8E4M3 = 3, kInt8 = 4, kInt32 = 5 };

}  // namespace qk
