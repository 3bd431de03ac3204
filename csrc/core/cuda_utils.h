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

// Run-time arguments of a CUTLASS 3.x sm90 persistent tile scheduler, chosen per M bucket by the
// dispatch tables (core/dispatch.h; applied by core/cutlass_run.cuh set_tile_scheduler). The
// defaults are CUTLASS's own. Kernels that are not persistent ignore them.
struct TileSchedulerArgs {
  int raster = 0;       // 0: CUTLASS heuristic, 1: along M, 2: along N (RasterOrderOptions)
  int max_swizzle = 1;  // 1, 2, 4 or 8 (CUTLASS uses the largest that the tile grid allows)
  int splits = 0;       // stream-K scheduler only: 0 its heuristic, 1 data-parallel (no split),
                        // n >= 2 split-K into n parts (CUTLASS caps n at the k-tiles and SMs)
};

}  // namespace qk
