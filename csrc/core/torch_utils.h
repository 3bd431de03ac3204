// Glue-side helpers (torch headers allowed here only). Checks produce messages
// that say what was given, what is supported and what to do.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/cuda_utils.h"

namespace qk {

// Compute capability of the tensor's device as major*10+minor (e.g. 90), or the
// value of QKERNELS_FORCE_ARCH when set (to exercise an older arch's kernels on a
// newer GPU; they must have been built with PTX, see README).
inline int device_arch(const at::Tensor& t) {
  if (const char* forced = std::getenv("QKERNELS_FORCE_ARCH")) {
    if (*forced) return std::atoi(forced);
  }
  int dev = t.get_device();
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major * 10 + minor;
}

// Multiprocessors of a device, queried once per device (persistent / stream-K grids).
inline int sm_count(int device) {
  static int counts[64] = {};
  TORCH_CHECK(device >= 0 && device < 64, "qkernels: device index ", device, " is out of range.");
  if (counts[device] == 0) {
    int n = 0;
    const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    TORCH_CHECK(err == cudaSuccess, "qkernels: querying the SM count of device ", device, " failed: ",
                cudaGetErrorString(err), ".");
    counts[device] = n;
  }
  return counts[device];
}

// `t` is on the same device as `a` (the op's first tensor argument).
inline void check_same_device(const char* op, const at::Tensor& a, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == a.device(), "qkernels.", op, ": all tensors must be on one device; a is on ", a.device(),
              ", ", name, " on ", t.device(), ".");
}

// 16-byte vector / TMA accesses need 16-byte aligned base addresses.
inline void check_aligned16(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "qkernels.", op, ": ", name,
              " must start at a 16-byte aligned address (a view at an odd offset is not): call .clone() first.");
}

inline std::string dtype_name(at::ScalarType t) { return std::string(c10::toString(t)); }

inline DType to_qk(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    case at::kFloat8_e4m3fn: return DType::kFloat8E4M3;
    case at::kChar: return DType::kInt8;
    case at::kInt: return DType::kInt32;
    default: TORCH_CHECK(false, "qkernels: unsupported dtype ", t);
  }
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.get_device()).stream();
}

#define QK_CHECK_CUDA_TENSOR(op, t) \
  TORCH_CHECK((t).is_cuda(), "qkernels." op ": " #t " must be a CUDA tensor; got device ", (t).device(), ".")

#define QK_CHECK_CONTIGUOUS(op, t)                                                                    \
  TORCH_CHECK((t).is_contiguous(), "qkernels." op ": " #t " (shape ", (t).sizes(), ", strides ", (t).strides(), \
              ") must be contiguous: call .contiguous() first.")

#define QK_CHECK_DTYPE(op, t, cond, supported) \
  TORCH_CHECK(cond, "qkernels." op ": " #t " has dtype ", (t).scalar_type(), "; supported: " supported ".")

#define QK_CHECK_SAME_DEVICE(op, a, b)                                                                     \
  TORCH_CHECK((a).device() == (b).device(), "qkernels." op ": all tensors must be on one device; " #a " is on ", \
              (a).device(), ", " #b " on ", (b).device(), ".")

// Turns a launcher's cudaError_t into an exception naming the op.
#define QK_CHECK_LAUNCH(op, expr)                                                                         \
  do {                                                                                                    \
    cudaError_t qk_err_ = (expr);                                                                         \
    TORCH_CHECK(qk_err_ == cudaSuccess, "qkernels." op ": CUDA error ", cudaGetErrorString(qk_err_), "."); \
  } while (0)

}  // namespace qk
