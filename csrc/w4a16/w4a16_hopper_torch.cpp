// Torch glue of the Hopper W4A16 ops (w4a16_hopper_prepack, w4a16_hopper_gemm).
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/sm90_w4a16_*.cu (see w4a16_hopper.h).
// Dispatch: checks -> arch (sm_90 only) -> act-order gather -> activation dtype -> M bucket (the
// dispatch key's table: core/dispatch.h) -> kernel.
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "core/dispatch.h"
#include "core/torch_utils.h"
#include "w4a16/w4a16_hopper.h"

namespace qk::w4a16::hopper {
namespace {

// ---- dispatch keys: M bucket (tokens) -> kernel + scheduler params, one key per activation
// dtype. Candidates: every compiled config (kernels/sm90_w4a16_*.cu); the default table switches
// to the large tile at kLargeMinM; a per-GPU config (qkernels/configs) may replace it at run time.
// (Which *path* runs, Marlin-style or this one, is chosen in Python: W4A16_HOPPER_MIN_M.)
#if defined(QK_W4A16_SM90)
dispatch::Key& make_key(const char* name, const char* doc, const Kernel& medium, const Kernel& large) {
  return dispatch::add_key(name, doc, dispatch::sm90_scheduler_params(),
                           {{medium.name, medium.config, &medium, dispatch::kPersistentParams},
                            {large.name, large.config, &large, dispatch::kPersistentParams}},
                           {{kLargeMinM - 1, &medium}, {dispatch::kAnyM, &large}});
}
dispatch::Key& kSm90Bf16 = make_key(
    "w4a16_hopper/sm90/bf16", "W4A16 Hopper path, bf16: CUTLASS 3.x sm90a mixed input (int4 x bf16 wgmma), swapped: "
    "tile M = weight rows, tile N = tokens", sm90_w4a16_medium_bf16, sm90_w4a16_large_bf16);
dispatch::Key& kSm90Fp16 = make_key(
    "w4a16_hopper/sm90/fp16", "W4A16 Hopper path, fp16: CUTLASS 3.x sm90a mixed input (int4 x fp16 wgmma), swapped: "
    "tile M = weight rows, tile N = tokens", sm90_w4a16_medium_f16, sm90_w4a16_large_f16);
#endif

constexpr const char* kMarlinInstead =
    "use the Marlin-style W4A16 path (qkernels.w4a16_gemm on a w4a16_repack'ed weight; "
    "qkernels.ops.w4a16.prepare_weight) instead";
constexpr const char* kPadHint = " Pad the layer (csrc/w4a16/README.md, 'Shapes').";

// wgmma / TMA / sm_90a code: Hopper only (sm_90a kernels do not run on newer archs either).
void check_arch(const char* op, const at::Tensor& t) {
  const int arch = device_arch(t);
#if defined(QK_W4A16_SM90)
  TORCH_CHECK(arch == 90, "qkernels.", op, ": the Hopper W4A16 kernels run on sm_90 (H100/H200) only; this GPU is sm_",
              arch, ": ", kMarlinInstead, ".");
#else
  TORCH_CHECK(false, "qkernels.", op, ": this install was built without the sm_90a W4A16 kernels (build with "
              "QKERNELS_CUDA_ARCHS including 90a); GPU is sm_", arch, ": ", kMarlinInstead, ".");
#endif
}

void check_sizes(const char* op, int64_t n, int64_t k) {
  TORCH_CHECK(n > 0 && k > 0 && n % kAlignN == 0 && k % kAlignK == 0, "qkernels.", op, ": N = ", n, ", K = ", k,
              " must be positive multiples of ", kAlignN, " and ", kAlignK, ".", kPadHint);
  // The CuTe weight layout computes nibble offsets in 32-bit ints.
  TORCH_CHECK(n * k <= INT32_MAX, "qkernels.", op, ": N x K = ", n, " x ", k, " has more than 2^31 - 1 weights; ",
              "split the layer along N.");
}

void check_perm(const char* op, const at::Tensor& perm, const at::Tensor& like, int64_t k) {
  TORCH_CHECK(perm.scalar_type() == at::kInt && perm.dim() == 1 && perm.size(0) == k && perm.is_contiguous(),
              "qkernels.", op, ": perm must be a contiguous int32 [K] = [", k, "]; got ", perm.scalar_type(), " ",
              perm.sizes(), ".");
  check_same_device(op, like, perm, "perm");
}

void check_group_tensor(const char* name, const at::Tensor& t, const at::Tensor& a, int64_t groups, int64_t n) {
  constexpr const char* op = "w4a16_hopper_gemm";
  TORCH_CHECK(t.scalar_type() == a.scalar_type(), "qkernels.", op, ": ", name, " has dtype ", t.scalar_type(),
              "; it must have the activations' dtype ", a.scalar_type(), ".");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == groups && t.size(1) == n && t.is_contiguous(), "qkernels.", op, ": ", name,
              " must be a contiguous [G, N] = [", groups, ", ", n, "] tensor; got ", t.sizes(), ".");
  check_same_device(op, a, t, name);
  check_aligned16(op, name, t);  // TMA
}

at::Tensor w4a16_hopper_prepack(const at::Tensor& weight_packed, const std::optional<at::Tensor>& perm) {
  constexpr const char* op = "w4a16_hopper_prepack";
  QK_CHECK_CUDA_TENSOR("w4a16_hopper_prepack", weight_packed);
  QK_CHECK_DTYPE("w4a16_hopper_prepack", weight_packed, weight_packed.scalar_type() == at::kInt, "int32");
  QK_CHECK_CONTIGUOUS("w4a16_hopper_prepack", weight_packed);
  TORCH_CHECK(weight_packed.dim() == 2, "qkernels.w4a16_hopper_prepack: weight_packed must be 2-D [N, K/8]; got ",
              weight_packed.sizes(), ".");
  const int64_t n = weight_packed.size(0), k = weight_packed.size(1) * 8;
  check_sizes(op, n, k);
  if (perm) {
    check_perm(op, *perm, weight_packed, k);
    // The kernel gathers checkpoint columns perm[k]: a load-time op, so this sync is affordable.
    TORCH_CHECK(perm->min().item<int>() >= 0 && perm->max().item<int>() < k, "qkernels.w4a16_hopper_prepack: perm "
                "holds column indices outside [0, K = ", k, "): pass argsort(g_idx) "
                "(qkernels.ops.w4a16_hopper.prepare_weight).");
  }
  check_arch(op, weight_packed);
  const c10::cuda::CUDAGuard guard(weight_packed.device());
  auto out = at::empty({k / kAtomCols, n / kAtomRows, kWordsPerAtom}, weight_packed.options());
#if defined(QK_W4A16_SM90)  // else check_arch has thrown
  QK_CHECK_LAUNCH("w4a16_hopper_prepack",
                  prepack(reinterpret_cast<const uint32_t*>(weight_packed.data_ptr<int32_t>()),
                          perm ? perm->data_ptr<int32_t>() : nullptr, reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()),
                          static_cast<int>(n), static_cast<int>(k), stream_of(weight_packed)));
#endif
  return out;
}

at::Tensor w4a16_hopper_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scales,
                             const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& perm,
                             const std::optional<at::Tensor>& bias, int64_t size_n, int64_t size_k,
                             int64_t group_size) {
  constexpr const char* op = "w4a16_hopper_gemm";
  // ---- checks (memory safety; the Python wrapper has the friendlier versions)
  QK_CHECK_CUDA_TENSOR("w4a16_hopper_gemm", a);
  QK_CHECK_DTYPE("w4a16_hopper_gemm", a, a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16,
                 "float16, bfloat16");
  QK_CHECK_CONTIGUOUS("w4a16_hopper_gemm", a);
  TORCH_CHECK(a.dim() >= 1 && a.size(-1) == size_k, "qkernels.w4a16_hopper_gemm: a has shape ", a.sizes(),
              "; its last dim must be K = ", size_k, ".");
  check_sizes(op, size_n, size_k);
  TORCH_CHECK(group_size == -1 || group_size == 64 || group_size == 128, "qkernels.w4a16_hopper_gemm: group_size = ",
              group_size, "; supported: -1 (per channel), 64, 128 (CUTLASS's sm90 mixed-input mainloop reads one scale "
              "per ", kTileK, "-wide k tile); for group size 32 ", kMarlinInstead, ".");
  TORCH_CHECK(group_size == -1 || size_k % group_size == 0, "qkernels.w4a16_hopper_gemm: group_size = ", group_size,
              " must divide K = ", size_k, ".");
  QK_CHECK_DTYPE("w4a16_hopper_gemm", b, b.scalar_type() == at::kInt, "int32");
  TORCH_CHECK(b.dim() == 3 && b.size(0) == size_k / kAtomCols && b.size(1) == size_n / kAtomRows &&
                  b.size(2) == kWordsPerAtom && b.is_contiguous(),
              "qkernels.w4a16_hopper_gemm: b must be a contiguous int32 [K/16, N/16, 32] = [", size_k / kAtomCols, ", ",
              size_n / kAtomRows, ", ", kWordsPerAtom, "] tensor from w4a16_hopper_prepack; got ", b.sizes(), ".");
  check_same_device(op, a, b, "b");
  check_aligned16(op, "b", b);
  const int64_t groups = group_size == -1 ? 1 : size_k / group_size;
  check_group_tensor("scales", scales, a, groups, size_n);
  if (zeros) check_group_tensor("zeros", *zeros, a, groups, size_n);
  if (perm) check_perm(op, *perm, a, size_k);
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == a.scalar_type() && bias->dim() == 1 && bias->size(0) == size_n &&
                    bias->is_contiguous(),
                "qkernels.w4a16_hopper_gemm: bias must be a contiguous [N] = [", size_n, "] tensor of dtype ",
                a.scalar_type(), "; got ", bias->scalar_type(), " ", bias->sizes(), ".");
    check_same_device(op, a, *bias, "bias");
    check_aligned16(op, "bias", *bias);
  }
  // ---- arch
  check_arch(op, a);

  const c10::cuda::CUDAGuard guard(a.device());
  std::vector<int64_t> out_shape(a.sizes().begin(), a.sizes().end() - 1);
  out_shape.push_back(size_n);
  auto out = at::empty(out_shape, a.options());
  const int64_t m = a.numel() / size_k;
  if (m == 0) return out;
  TORCH_CHECK(m <= INT32_MAX, "qkernels.w4a16_hopper_gemm: M = ", m, " rows is too many (max 2^31 - 1).");
  // Act-order: one gather pass over the activations (GEMM column k = checkpoint column perm[k]).
  at::Tensor a_sorted = perm ? at::index_select(a, -1, *perm) : a;
  // TMA needs a 16-byte aligned base: a view at an odd offset is copied once.
  if (reinterpret_cast<uintptr_t>(a_sorted.data_ptr()) % 16 != 0) a_sorted = a_sorted.clone();
  // Symmetric weights run the same kernel with z' = 0. The Python API passes a shared zero
  // buffer; a direct call without zeros gets one here (a memset per call, CUDA-graph safe).
  at::Tensor zeros_or_0 = zeros ? *zeros : at::zeros({groups, size_n}, a.options());

  GemmArgs args{};
  args.a = a_sorted.data_ptr();
  args.b = reinterpret_cast<const uint32_t*>(b.data_ptr<int32_t>());
  args.scales = scales.data_ptr();
  args.zeros = zeros_or_0.data_ptr();
  args.bias = bias ? bias->data_ptr() : nullptr;
  args.c = out.data_ptr();
  args.m = static_cast<int>(m);
  args.n = static_cast<int>(size_n);
  args.k = static_cast<int>(size_k);
  args.group_size = static_cast<int>(group_size == -1 ? size_k : group_size);
  args.sm_count = sm_count(a.get_device());

  // ---- activation dtype -> M bucket -> kernel. The workspace (if any) comes from torch's caching
  // allocator (CUDA-graph safe); no host synchronisation on this path.
#if defined(QK_W4A16_SM90)  // else check_arch has thrown
  const dispatch::Key& key = a.scalar_type() == at::kBFloat16 ? kSm90Bf16 : kSm90Fp16;
  const dispatch::Bucket& bucket = key.pick(m);
  const Kernel& kernel = key.kernel<Kernel>(bucket);
  args.scheduler = dispatch::sm90_scheduler_args(bucket);
  auto ws = at::empty({static_cast<int64_t>(kernel.workspace_size(args))}, a.options().dtype(at::kByte));
  const cudaError_t err = kernel.run(args, ws.data_ptr(), stream_of(a));
  TORCH_CHECK(err != cudaErrorNotSupported, "qkernels.w4a16_hopper_gemm: CUTLASS rejected M = ", m, ", N = ", size_n,
              ", K = ", size_k, ", group_size = ", group_size, " for kernel ", kernel.name, " (", kernel.config,
              "; chosen by dispatch key ", key.name(), "); ", kMarlinInstead, ".");
  QK_CHECK_LAUNCH("w4a16_hopper_gemm", err);
#endif
  return out;
}

}  // namespace
}  // namespace qk::w4a16::hopper

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("w4a16_hopper_prepack", &qk::w4a16::hopper::w4a16_hopper_prepack);
  m.impl("w4a16_hopper_gemm", &qk::w4a16::hopper::w4a16_hopper_gemm);
}
