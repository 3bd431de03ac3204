// W4A16 GEMM: fp16 activations x symmetric (uint4b8) weights, the four M buckets (one kernel each).
#include "w4a16/kernels/gemm_kernel.cuh"

namespace qk::w4a16 {

template <>
cudaError_t gemm<DType::kFloat16, false>(const GemmArgs& args, cudaStream_t stream) {
  return detail::dispatch_m<half, false>(args, stream);
}

}  // namespace qk::w4a16
