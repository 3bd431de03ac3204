// Runs a CUTLASS device GEMM (2.x or 3.x GemmUniversalAdapter) and maps its status to a
// cudaError_t for the plain C++ kernel interfaces: cudaErrorNotSupported when
// can_implement rejects the problem (the glue turns that into a message naming the
// kernel and the shapes), the CUDA error of a failed initialize / launch otherwise.
// Kernel translation units only (CUTLASS headers, no torch).
#pragma once
#include <cuda_runtime.h>

#include <type_traits>
#include <utility>

#include "core/cuda_utils.h"
#include "cutlass/cutlass.h"

namespace qk {

inline cudaError_t cutlass_error(cutlass::Status status) {
  if (status == cutlass::Status::kSuccess) return cudaSuccess;
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? cudaErrorUnknown : e;
}

template <class T, class = void>
struct detail_has_decomposition : std::false_type {};
template <class T>
struct detail_has_decomposition<T, std::void_t<decltype(std::declval<T&>().decomposition_mode)>> : std::true_type {};

template <class Gemm>
cudaError_t run_cutlass(const typename Gemm::Arguments& args, void* workspace, cudaStream_t stream) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
  QK_RETURN_IF_CUDA_ERROR(cutlass_error(gemm.initialize(args, workspace, stream)));
  QK_RETURN_IF_CUDA_ERROR(cutlass_error(gemm.run(stream)));
  return cudaGetLastError();
}

// Applies the dispatch table's TileSchedulerArgs (core/cuda_utils.h) to a CUTLASS 3.x
// GemmUniversal argument struct: raster order and swizzle for every sm90 scheduler; the K
// decomposition only where the scheduler is the stream-K one (it has `decomposition_mode`).
template <class Args>
void set_tile_scheduler(Args& args, const TileSchedulerArgs& s) {
  using Raster = decltype(args.scheduler.raster_order);
  args.scheduler.raster_order = s.raster == 1 ? Raster::AlongM : (s.raster == 2 ? Raster::AlongN : Raster::Heuristic);
  args.scheduler.max_swizzle_size = s.max_swizzle;
  if constexpr (detail_has_decomposition<decltype(args.scheduler)>::value) {
    using Mode = decltype(args.scheduler.decomposition_mode);
    if (s.splits == 1) {
      args.scheduler.decomposition_mode = Mode::DataParallel;
    } else if (s.splits >= 2) {
      args.scheduler.decomposition_mode = Mode::SplitK;
      args.scheduler.splits = s.splits;
    }
  }
}

}  // namespace qk
