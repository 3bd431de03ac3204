// Torch glue of the 2:4 sparse FP8 ops: checks -> arch -> scale granularity -> M bucket (the
// dispatch key's table) -> kernel.
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/*.cu (see sparse24.h).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <tuple>

#include "core/dispatch.h"
#include "core/torch_utils.h"
#include "sparse24/sparse24.h"

namespace qk::sparse24 {
namespace {

// ---- dispatch key: M bucket (tokens) -> kernel + scheduler params. Candidates: every compiled
// config (kernels/gemm_*.cu); default table below; a per-GPU config (qkernels/configs) may
// replace it at run time (core/dispatch.h).
#if defined(QK_SPARSE24_SM90)
dispatch::Key& kSm90Fp8 = dispatch::add_key(
    "sparse24/sm90/fp8", "2:4 sparse FP8 e4m3, CUTLASS 3.x sm90a (swapped: tile M = weight rows, tile N = tokens)",
    dispatch::sm90_scheduler_params(),
    {
        {sparse24_m32.name, sparse24_m32.config, &sparse24_m32, dispatch::kNoParams},  // not persistent
        {sparse24_m128.name, sparse24_m128.config, &sparse24_m128, dispatch::kPersistentParams},
        {sparse24_large.name, sparse24_large.config, &sparse24_large, dispatch::kPersistentParams},
        {sparse24_large_k256.name, sparse24_large_k256.config, &sparse24_large_k256, dispatch::kPersistentParams},
    },
    {{32, &sparse24_m32}, {128, &sparse24_m128}, {dispatch::kAnyM, &sparse24_large}});
#endif

constexpr const char* kDenseInstead =
    "use the dense FP8 GEMM (qkernels.ops.scaled_mm) on the decompressed weight "
    "(qkernels.ops.sparse24.decompress) instead";

// 2:4 sparse tensor cores are used through sm_90a wgmma.sp: Hopper only.
void check_arch(const char* op, const at::Tensor& t) {
  const int arch = device_arch(t);
#if defined(QK_SPARSE24_SM90)
  TORCH_CHECK(arch == 90, "qkernels.", op, ": the 2:4 sparse FP8 kernels run on sm_90 (H100/H200) only; this GPU is sm_",
              arch, ": ", kDenseInstead, ".");
#else
  TORCH_CHECK(false, "qkernels.", op, ": this install was built without the sm_90a 2:4 sparse kernels (build with "
              "archs including 90a); GPU is sm_", arch, ": ", kDenseInstead, ".");
#endif
}

void check_weight_shape(const char* op, int64_t n, int64_t k) {
  TORCH_CHECK(n > 0 && k > 0, "qkernels.", op, ": the weight is empty (N = ", n, ", K = ", k, ").");
  TORCH_CHECK(k % kMetaK == 0, "qkernels.", op, ": K = ", k, " must be a multiple of ", kMetaK,
              " (one sm90 sparse metadata block); ", kDenseInstead, ".");
  TORCH_CHECK(n % kOutAlignN == 0, "qkernels.", op, ": N = ", n, " must be a multiple of ", kOutAlignN,
              " (16-byte aligned output rows); ", kDenseInstead, ".");
}

std::tuple<at::Tensor, at::Tensor> sparse24_compress(const at::Tensor& w) {
  QK_CHECK_CUDA_TENSOR("sparse24_compress", w);
  QK_CHECK_DTYPE("sparse24_compress", w, w.scalar_type() == at::kFloat8_e4m3fn, "float8_e4m3fn");
  TORCH_CHECK(w.dim() == 2, "qkernels.sparse24_compress: w must be 2-D [N, K]; got shape ", w.sizes(), ".");
  QK_CHECK_CONTIGUOUS("sparse24_compress", w);
  const int64_t n = w.size(0), k = w.size(1);
  check_weight_shape("sparse24_compress", n, k);
  check_aligned16("sparse24_compress", "w", w);
  const c10::cuda::CUDAGuard guard(w.device());
  check_arch("sparse24_compress", w);

  auto values = at::empty({n, k / 2}, w.options());
  auto meta = at::empty({k / kMetaK, ceil_div<int64_t>(n, kMetaRows), kMetaRows, kMetaK / 8}, w.options().dtype(at::kByte));
  auto bad = at::zeros({1}, w.options().dtype(at::kInt));
#if defined(QK_SPARSE24_SM90)  // else check_arch has thrown
  QK_CHECK_LAUNCH("sparse24_compress",
                  compress(static_cast<const uint8_t*>(w.data_ptr()), static_cast<uint8_t*>(values.data_ptr()),
                           meta.data_ptr<uint8_t>(), bad.data_ptr<int>(), n, k, stream_of(w)));
#endif
  // A load-time op: this synchronises (the 2:4 check). Never prune silently.
  const int n_bad = bad.item<int>();
  TORCH_CHECK(n_bad == 0, "qkernels.sparse24_compress: w ", w.sizes(), " is not 2:4 sparse along K: ", n_bad,
              " group(s) of 4 have more than 2 non-zeros. qkernels.ops.sparse24.check_24(w) lists them; prune the "
              "weight 2:4 or load it as a dense FP8 weight.");
  return {values, meta};
}

at::Tensor sparse24_scaled_mm(const at::Tensor& a, const at::Tensor& values, const at::Tensor& meta,
                              const at::Tensor& a_scales, const at::Tensor& b_scales, at::ScalarType out_dtype,
                              const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse24_scaled_mm";
  // ---- checks (memory safety; the Python layer has already said it nicely)
  QK_CHECK_CUDA_TENSOR("sparse24_scaled_mm", a);
  QK_CHECK_DTYPE("sparse24_scaled_mm", a, a.scalar_type() == at::kFloat8_e4m3fn, "float8_e4m3fn");
  QK_CHECK_DTYPE("sparse24_scaled_mm", values, values.scalar_type() == at::kFloat8_e4m3fn, "float8_e4m3fn");
  QK_CHECK_DTYPE("sparse24_scaled_mm", meta, meta.scalar_type() == at::kByte, "uint8");
  QK_CHECK_DTYPE("sparse24_scaled_mm", a_scales, a_scales.scalar_type() == at::kFloat, "float32");
  QK_CHECK_DTYPE("sparse24_scaled_mm", b_scales, b_scales.scalar_type() == at::kFloat, "float32");
  TORCH_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf, "qkernels.", op, ": out_dtype ", out_dtype,
              " is not supported; supported: bfloat16, float16.");
  TORCH_CHECK(a.dim() == 2 && values.dim() == 2, "qkernels.", op, ": a and values must be 2-D; got ", a.sizes(),
              " and ", values.sizes(), ".");
  QK_CHECK_CONTIGUOUS("sparse24_scaled_mm", values);
  QK_CHECK_CONTIGUOUS("sparse24_scaled_mm", meta);
  QK_CHECK_CONTIGUOUS("sparse24_scaled_mm", a_scales);
  QK_CHECK_CONTIGUOUS("sparse24_scaled_mm", b_scales);
  const int64_t m = a.size(0), n = values.size(0), k = values.size(1) * 2;
  check_weight_shape(op, n, k);
  TORCH_CHECK(a.size(1) == k, "qkernels.", op, ": a ", a.sizes(), " has K = ", a.size(1), "; the weight has K = ", k, ".");
  TORCH_CHECK(a.stride(1) == 1 && (m <= 1 || (a.stride(0) % 16 == 0 && a.stride(0) >= k)), "qkernels.", op,
              ": a (strides ", a.strides(), ") must be row-major with a row stride >= K that is a multiple of 16: "
              "call .contiguous() first.");
  TORCH_CHECK(meta.sizes() == at::IntArrayRef({k / kMetaK, ceil_div<int64_t>(n, kMetaRows), kMetaRows, kMetaK / 8}),
              "qkernels.", op, ": meta has shape ", meta.sizes(), "; pass what sparse24_compress returned.");
  TORCH_CHECK(a_scales.numel() == 1 || a_scales.numel() == m, "qkernels.", op, ": a_scales has ", a_scales.numel(),
              " elements; expected 1 (per tensor) or M = ", m, " (per token).");
  TORCH_CHECK(b_scales.numel() == 1 || b_scales.numel() == n, "qkernels.", op, ": b_scales has ", b_scales.numel(),
              " elements; expected 1 (per tensor) or N = ", n, " (per channel).");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == out_dtype && bias->numel() == n && bias->is_contiguous(), "qkernels.", op,
                ": bias must be a contiguous [", n, "] tensor of the output dtype; got ", bias->scalar_type(), " ",
                bias->sizes(), ".");
    check_same_device(op, a, *bias, "bias");
    check_aligned16(op, "bias", *bias);
  }
  check_same_device(op, a, values, "values");
  check_same_device(op, a, meta, "meta");
  check_same_device(op, a, a_scales, "a_scales");
  check_same_device(op, a, b_scales, "b_scales");
  check_aligned16(op, "a", a);
  check_aligned16(op, "values", values);
  check_aligned16(op, "meta", meta);

  const c10::cuda::CUDAGuard guard(a.device());
  // ---- arch
  check_arch(op, a);

  auto out = at::empty({m, n}, a.options().dtype(out_dtype));
  if (m == 0) return out;

  // ---- scale granularity (run-time broadcast strides in the epilogue)
  GemmArgs args{};
  args.a = a.data_ptr();
  args.lda = m <= 1 ? k : a.stride(0);
  args.values = values.data_ptr();
  args.meta = meta.data_ptr<uint8_t>();
  args.a_scales = a_scales.data_ptr<float>();
  args.a_per_token = a_scales.numel() > 1;
  args.b_scales = b_scales.data_ptr<float>();
  args.b_per_channel = b_scales.numel() > 1;
  args.bias = bias ? bias->data_ptr() : nullptr;
  args.out = out.data_ptr();
  args.out_dtype = to_qk(out_dtype);
  args.m = m;
  args.n = n;
  args.k = k;
  TORCH_CHECK(m <= INT32_MAX, "qkernels.", op, ": M = ", m, " rows is too many (max 2^31 - 1).");
  args.sm_count = sm_count(a.get_device());

  // ---- M bucket -> kernel + scheduler params (the key's active table, read at call time). The
  // workspace comes from torch's caching allocator (CUDA-graph safe); no host synchronisation.
#if defined(QK_SPARSE24_SM90)  // else check_arch has thrown
  const dispatch::Bucket& bucket = kSm90Fp8.pick(m);
  const Kernel& kernel = kSm90Fp8.kernel<Kernel>(bucket);
  args.scheduler = dispatch::sm90_scheduler_args(bucket);
  auto ws = at::empty({static_cast<int64_t>(kernel.workspace_size(args))}, a.options().dtype(at::kByte));
  const cudaError_t err = kernel.run(args, ws.data_ptr(), stream_of(a));
  TORCH_CHECK(err != cudaErrorNotSupported, "qkernels.", op, ": kernel ", kernel.name, " (", kernel.config,
              ") cannot run M=", m, " N=", n, " K=", k, " (CUTLASS can_implement failed). If a config file chose "
              "this kernel (`qkernels info`), set QKERNELS_CONFIGS=default to rule it out; please report this.");
  QK_CHECK_LAUNCH("sparse24_scaled_mm", err);
#endif
  return out;
}

}  // namespace
}  // namespace qk::sparse24

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("sparse24_compress", &qk::sparse24::sparse24_compress);
  m.impl("sparse24_scaled_mm", &qk::sparse24::sparse24_scaled_mm);
}
