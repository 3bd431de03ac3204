// W4A16 GEMM instantiations for bf16 activations (symmetric and zero-point weights, all M buckets).
#include "w4a16/kernels/gemm_kernel.cuh"

namespace qk::w4a16 {

template <>
cudaError_t gemm<DType::kBFloat16, false>(const GemmArgs& args, cudaStream_t stream) {
  return detail::dispatch_m<__nv_bfloat16, false>(args, stream);
}

template <>
cudaError_t gemm<DType::kBFloat16, true>(const GemmArgs& args, cudaStream_t stream) {
  return detail::dispatch_m<__nv_bfloat16, true>(args, stream);
}

}  // namespace qk::w4a16
