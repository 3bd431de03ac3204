// Torch glue of the activation-quantisation ops: checks, output allocation, launch.
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/*.cu (see quant.h).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "core/torch_utils.h"
#include "quant/quant.h"

namespace qk::quant {
namespace {

void check_input(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "qkernels.", op, ": input must be a CUDA tensor; got ", x.device(), ".");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat, "qkernels.", op, ": input has dtype ", t,
              "; supported: float16, bfloat16, float32.");
  TORCH_CHECK(x.dim() >= 1, "qkernels.", op, ": input must have at least 1 dim; got a scalar.");
  TORCH_CHECK(x.is_contiguous(), "qkernels.", op, ": input (shape ", x.sizes(), ", strides ", x.strides(),
              ") must be contiguous: call .contiguous() first.");
}

void check_scalar_tensor(const char* op, const char* name, const at::Tensor& s, at::ScalarType dtype,
                         const at::Tensor& x) {
  TORCH_CHECK(s.scalar_type() == dtype, "qkernels.", op, ": ", name, " has dtype ", s.scalar_type(), "; expected ",
              dtype, ".");
  TORCH_CHECK(s.numel() == 1, "qkernels.", op, ": ", name, " must hold one per-tensor value (shape [1]); got shape ",
              s.sizes(), ".");
  TORCH_CHECK(s.device() == x.device(), "qkernels.", op, ": ", name, " is on ", s.device(), " but input is on ",
              x.device(), ".");
}

std::vector<int64_t> token_scale_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(1);
  return shape;
}

int64_t rows_of(const at::Tensor& x) { return x.numel() == 0 ? 0 : x.numel() / x.size(-1); }

// Per-token ops: one block per row (the grid's x extent), reducing over a non-empty last dim.
void check_rows(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.size(-1) > 0, "qkernels.", op, ": input has shape ", x.sizes(),
              ": per-token scales need a non-empty last dim.");
  TORCH_CHECK(rows_of(x) <= INT32_MAX, "qkernels.", op, ": ", rows_of(x), " rows is too many (max 2^31 - 1).");
}

at::Tensor static_scaled_fp8_quant(const at::Tensor& input, const at::Tensor& scale) {
  check_input("static_scaled_fp8_quant", input);
  check_scalar_tensor("static_scaled_fp8_quant", "scale", scale, at::kFloat, input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kFloat8_e4m3fn));
  QK_CHECK_LAUNCH("static_scaled_fp8_quant",
                  static_fp8(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr(),
                             scale.data_ptr<float>(), input.numel(), stream_of(input)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> dynamic_scaled_fp8_quant(const at::Tensor& input) {
  check_input("dynamic_scaled_fp8_quant", input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({1}, input.options().dtype(at::kFloat));
  auto absmax = at::zeros({1}, input.options().dtype(at::kFloat));  // stream-ordered memset: graph-safe
  QK_CHECK_LAUNCH("dynamic_scaled_fp8_quant",
                  dynamic_fp8_per_tensor(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr(),
                                         scale.data_ptr<float>(), absmax.data_ptr<float>(), input.numel(),
                                         stream_of(input)));
  return {out, scale};
}

std::tuple<at::Tensor, at::Tensor> dynamic_per_token_scaled_fp8_quant(const at::Tensor& input,
                                                                      const std::optional<at::Tensor>& scale_ub) {
  check_input("dynamic_per_token_scaled_fp8_quant", input);
  check_rows("dynamic_per_token_scaled_fp8_quant", input);
  if (scale_ub) check_scalar_tensor("dynamic_per_token_scaled_fp8_quant", "scale_ub", *scale_ub, at::kFloat, input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kFloat8_e4m3fn));
  auto scales = at::empty(token_scale_shape(input), input.options().dtype(at::kFloat));
  QK_CHECK_LAUNCH("dynamic_per_token_scaled_fp8_quant",
                  dynamic_fp8_per_token(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr(),
                                        scales.data_ptr<float>(), scale_ub ? scale_ub->data_ptr<float>() : nullptr,
                                        rows_of(input), input.size(-1), stream_of(input)));
  return {out, scales};
}

at::Tensor static_scaled_int8_quant(const at::Tensor& input, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& azp) {
  check_input("static_scaled_int8_quant", input);
  check_scalar_tensor("static_scaled_int8_quant", "scale", scale, at::kFloat, input);
  if (azp) check_scalar_tensor("static_scaled_int8_quant", "azp", *azp, at::kInt, input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kChar));
  QK_CHECK_LAUNCH("static_scaled_int8_quant",
                  static_int8(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr<int8_t>(),
                              scale.data_ptr<float>(), azp ? azp->data_ptr<int32_t>() : nullptr, input.numel(),
                              stream_of(input)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> dynamic_scaled_int8_quant(const at::Tensor& input) {
  check_input("dynamic_scaled_int8_quant", input);
  check_rows("dynamic_scaled_int8_quant", input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kChar));
  auto scales = at::empty(token_scale_shape(input), input.options().dtype(at::kFloat));
  QK_CHECK_LAUNCH("dynamic_scaled_int8_quant",
                  dynamic_int8_per_token(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr<int8_t>(),
                                         scales.data_ptr<float>(), nullptr, rows_of(input), input.size(-1),
                                         stream_of(input)));
  return {out, scales};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_scaled_int8_quant_azp(const at::Tensor& input) {
  check_input("dynamic_scaled_int8_quant_azp", input);
  check_rows("dynamic_scaled_int8_quant_azp", input);
  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(at::kChar));
  auto scales = at::empty(token_scale_shape(input), input.options().dtype(at::kFloat));
  auto azp = at::empty(token_scale_shape(input), input.options().dtype(at::kInt));
  QK_CHECK_LAUNCH("dynamic_scaled_int8_quant_azp",
                  dynamic_int8_per_token(input.data_ptr(), to_qk(input.scalar_type()), out.data_ptr<int8_t>(),
                                         scales.data_ptr<float>(), azp.data_ptr<int32_t>(), rows_of(input),
                                         input.size(-1), stream_of(input)));
  return {out, scales, azp};
}

}  // namespace
}  // namespace qk::quant

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("static_scaled_fp8_quant", &qk::quant::static_scaled_fp8_quant);
  m.impl("dynamic_scaled_fp8_quant", &qk::quant::dynamic_scaled_fp8_quant);
  m.impl("dynamic_per_token_scaled_fp8_quant", &qk::quant::dynamic_per_token_scaled_fp8_quant);
  m.impl("static_scaled_int8_quant", &qk::quant::static_scaled_int8_quant);
  m.impl("dynamic_scaled_int8_quant", &qk::quant::dynamic_scaled_int8_quant);
  m.impl("dynamic_scaled_int8_quant_azp", &qk::quant::dynamic_scaled_int8_quant_azp);
}
