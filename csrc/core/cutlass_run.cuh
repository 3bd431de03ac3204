// Runs a CUTLASS device GEMM (2.x or 3.x GemmUniversalAdapter) and maps its status to a
// cudaError_t for the plain C++ kernel interfaces: cudaErrorNotSupported when
// can_implement rejects the problem (the glue turns that into a message naming the
// kernel and the shapes), the CUDA error of a failed initialize / launch otherwise.
// Kernel translation units only (CUTLASS headers, no torch).
#pragma once
#include <cuda_runtime.h>

#include "core/cuda_utils.h"
#include "cutlass/cutlass.h"

namespace qk {

inline cudaError_t cutlass_error(cutlass::Status status) {
  if (status == cutlass::Status::kSuccess) return cudaSuccess;
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? cudaErrorUnknown : e;
}

template <class Gemm>
cudaError_t run_cutlass(const typename Gemm::Arguments& args, void* workspace, cudaStream_t stream) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
  QK_RETURN_IF_CUDA_ERROR(cutlass_error(gemm.initialize(args, workspace, stream)));
  QK_RETURN_IF_CUDA_ERROR(cutlass_error(gemm.run(stream)));
  return cudaGetLastError();
}

}  // namespace qk
