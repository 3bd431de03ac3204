// Torch glue of the W8A8 scaled GEMM ops, read top to bottom:
//   checks -> arch -> operand dtype / epilogue (a dispatch key) -> M bucket (its table) -> kernel.
// Scale granularity (per tensor / token / channel) is a run-time argument of every kernel.
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/*.cu (list: kernels/generate.py).
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>
#include <string>

#include "core/dispatch.h"
#include "core/torch_utils.h"
#include "scaled_mm/scaled_mm.h"

namespace qk::scaled_mm {
namespace {

// ----------------------------------------------------------------- dispatch tables
// One dispatch key per (kernel group, operand dtype, epilogue): its candidates are every kernel
// kernels/generate.py declares for it (kernels.inc), its compiled-in default table below
// (M bucket -> kernel, smallest bucket first; tile configs in kernels/c2x_configs.cuh and
// kernels/c3x_configs.cuh, README.md explains the choices). A per-GPU config
// (qkernels/configs/<gpu>.json, applied at first CUDA use) may replace a key's table at run time.
using dispatch::DefaultBucket;
using dispatch::kAnyM;
using dispatch::Key;

#define QK_SMM_CANDIDATE(k, params) dispatch::Candidate{#k, k.config, &k, dispatch::params},

Key& add_key(const char* name, const char* doc, std::vector<dispatch::Candidate> candidates,
             std::vector<DefaultBucket> defaults, bool sm90) {
  return dispatch::add_key(name, doc, sm90 ? dispatch::sm90_scheduler_params() : std::vector<dispatch::Param>{},
                           std::move(candidates), defaults);
}

#if defined(QK_SCALED_MM_SM75)
Key& kSm75Int8 = add_key("scaled_mm/sm75/int8", "INT8 W8A8, CUTLASS 2.x sm75",
                         {QK_SCALED_MM_KERNELS_SM75_INT8(QK_SMM_CANDIDATE)},
                         {{32, &sm75_int8_small}, {kAnyM, &sm75_int8_large}}, false);
Key& kSm75Int8Azp = add_key("scaled_mm/sm75/int8_azp", "INT8 W8A8 + zero point, CUTLASS 2.x sm75",
                            {QK_SCALED_MM_KERNELS_SM75_INT8_AZP(QK_SMM_CANDIDATE)},
                            {{kAnyM, &sm75_int8_azp_all}}, false);
#endif
#if defined(QK_SCALED_MM_SM80)
Key& kSm80Int8 = add_key("scaled_mm/sm80/int8", "INT8 W8A8, CUTLASS 2.x sm80 (also sm86/sm89 GPUs)",
                         {QK_SCALED_MM_KERNELS_SM80_INT8(QK_SMM_CANDIDATE)},
                         {{16, &sm80_int8_m16}, {64, &sm80_int8_m64}, {128, &sm80_int8_m128}, {kAnyM, &sm80_int8_large}},
                         false);
Key& kSm80Int8Azp = add_key("scaled_mm/sm80/int8_azp", "INT8 W8A8 + zero point, CUTLASS 2.x sm80",
                            {QK_SCALED_MM_KERNELS_SM80_INT8_AZP(QK_SMM_CANDIDATE)},
                            {{64, &sm80_int8_azp_small}, {kAnyM, &sm80_int8_azp_large}}, false);
#endif
#if defined(QK_SCALED_MM_SM89)
Key& kSm89Fp8 = add_key("scaled_mm/sm89/fp8", "FP8 e4m3 W8A8, CUTLASS 2.x sm89",
                        {QK_SCALED_MM_KERNELS_SM89_FP8(QK_SMM_CANDIDATE)},
                        {{16, &sm89_fp8_m16}, {64, &sm89_fp8_m64}, {128, &sm89_fp8_m128}, {kAnyM, &sm89_fp8_large}},
                        false);
#endif
#if defined(QK_SCALED_MM_SM90)
Key& kSm90Fp8 = add_key("scaled_mm/sm90/fp8", "FP8 e4m3 W8A8, CUTLASS 3.x sm90a",
                        {QK_SCALED_MM_KERNELS_SM90_FP8(QK_SMM_CANDIDATE)},
                        {{16, &sm90_fp8_m16}, {64, &sm90_fp8_m64}, {128, &sm90_fp8_m128}, {1024, &sm90_fp8_m1024},
                         {kAnyM, &sm90_fp8_large}},
                        true);
Key& kSm90Int8 = add_key("scaled_mm/sm90/int8", "INT8 W8A8, CUTLASS 3.x sm90a",
                         {QK_SCALED_MM_KERNELS_SM90_INT8(QK_SMM_CANDIDATE)},
                         {{16, &sm90_int8_m16}, {64, &sm90_int8_m64}, {128, &sm90_int8_m128}, {1024, &sm90_int8_m1024},
                          {kAnyM, &sm90_int8_large}},
                         true);
Key& kSm90Int8Azp = add_key("scaled_mm/sm90/int8_azp", "INT8 W8A8 + zero point, CUTLASS 3.x sm90a",
                            {QK_SCALED_MM_KERNELS_SM90_INT8_AZP(QK_SMM_CANDIDATE)},
                            {{64, &sm90_int8_azp_small}, {kAnyM, &sm90_int8_azp_large}}, true);
#endif
#undef QK_SMM_CANDIDATE

const char* kRebuild =
    "rebuild with QKERNELS_CUDA_ARCHS including this GPU's arch (see `qkernels info` for what was built)";

// The dispatch key for (arch, operand dtype, epilogue), or an error that names the arch and
// what runs there. Mirrors qkernels/ops/scaled_mm.py:kernel_group.
const Key& select_key(const char* op, int arch, bool fp8, bool azp) {
  const char* dt = fp8 ? "FP8 (float8_e4m3fn)" : "INT8";
  if (arch == 90) {
#if defined(QK_SCALED_MM_SM90)
    return fp8 ? kSm90Fp8 : (azp ? kSm90Int8Azp : kSm90Int8);
#else
    TORCH_CHECK(false, "qkernels.", op, ": this install has no sm_90a kernels for the ", dt, " GEMM on this sm_90 GPU: ",
                kRebuild, ".");
#endif
  }
  if (fp8) {
    TORCH_CHECK(arch >= 89, "qkernels.", op, ": the FP8 GEMM needs FP8 tensor cores (sm_89 Ada or sm_90 Hopper); "
                "this GPU is sm_", arch,
                arch >= 75 ? ", where the INT8 GEMM runs: use an INT8 W8A8 or a W4A16 checkpoint instead."
                           : ", which has no INT8 tensor cores either (sm_75+): the CPU reference runs on CPU tensors.");
#if defined(QK_SCALED_MM_SM89)
    return kSm89Fp8;
#else
    TORCH_CHECK(false, "qkernels.", op, ": this install has no sm_89 FP8 kernels (GPU is sm_", arch, "): ", kRebuild,
                ".");
#endif
  }
  TORCH_CHECK(arch >= 75, "qkernels.", op, ": the INT8 GEMM needs INT8 tensor cores of sm_75 (Turing) or newer; this GPU "
              "is sm_", arch, ". The CPU reference runs on CPU tensors.");
  if (arch >= 80) {
#if defined(QK_SCALED_MM_SM80)
    return azp ? kSm80Int8Azp : kSm80Int8;
#else
    TORCH_CHECK(false, "qkernels.", op, ": this install has no sm_80 INT8 kernels (GPU is sm_", arch, "): ", kRebuild,
                ".");
#endif
  }
#if defined(QK_SCALED_MM_SM75)
  return azp ? kSm75Int8Azp : kSm75Int8;
#else
  TORCH_CHECK(false, "qkernels.", op, ": this install has no sm_75 INT8 kernels (GPU is sm_", arch, "): ", kRebuild, ".");
#endif
}

// ----------------------------------------------------------------- checks
// The Python wrappers and fakes already explain these errors at length; these guard
// memory safety for direct torch.ops calls.
void check_vector(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                  std::initializer_list<int64_t> numels, const at::Tensor& a) {
  TORCH_CHECK(t.scalar_type() == dtype, "qkernels.", op, ": ", name, " has dtype ", t.scalar_type(), "; expected ",
              dtype, ".");
  bool ok = false;
  for (int64_t n : numels) ok = ok || t.numel() == n;
  TORCH_CHECK(ok, "qkernels.", op, ": ", name, " has shape ", t.sizes(), " (", t.numel(), " elements), which does not "
              "match the problem (see the op's docstring for the allowed shapes).");
  TORCH_CHECK(t.is_contiguous(), "qkernels.", op, ": ", name, " must be contiguous.");
  check_same_device(op, a, t, name);
}

struct Problem {
  int64_t m, n, k;
};

Problem check_operands(const char* op, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& a_scales, const at::Tensor& b_scales, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.is_cuda(), "qkernels.", op, ": a must be a CUDA tensor; got device ", a.device(), ".");
  const auto dt = a.scalar_type();
  TORCH_CHECK(dt == at::kChar || dt == at::kFloat8_e4m3fn, "qkernels.", op, ": a has dtype ", dt,
              "; supported: int8, float8_e4m3fn.");
  TORCH_CHECK(b.scalar_type() == dt, "qkernels.", op, ": a is ", dt, " but b is ", b.scalar_type(),
              ": both operands must have the same dtype.");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "qkernels.", op, ": a and b must be 2-D; got ", a.sizes(), " and ",
              b.sizes(), ".");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k, "qkernels.", op, ": a ", a.sizes(), " and b ", b.sizes(),
              " do not chain: b must be [K, N] = weight.t().");
  TORCH_CHECK(k > 0 && k % kAlignK == 0 && n % kAlignN == 0, "qkernels.", op, ": K = ", k, " and N = ", n,
              " must be multiples of ", kAlignK, " and ", kAlignN, " (K > 0): pad the weight with zeros.");
  // int32 accumulation is exact while K * 128 * 128 < 2^31 (sm75/80 saturate past it, sm90 wraps)
  constexpr int64_t kInt8MaxK = int64_t(1) << 17;
  TORCH_CHECK(dt != at::kChar || k < kInt8MaxK, "qkernels.", op, ": K = ", k, " is too deep for INT8: the int32 "
              "accumulator is exact only for K < ", kInt8MaxK, " (2^31 / 128^2); split K and add the outputs.");
  TORCH_CHECK(a.stride(1) == 1 && (m <= 1 || (a.stride(0) % kAlignK == 0 && a.stride(0) >= k)), "qkernels.", op,
              ": a (strides ", a.strides(), ") must be row-major with a row stride >= K that is a multiple of ",
              kAlignK, ": call .contiguous().");
  TORCH_CHECK(b.stride(0) == 1 && (n <= 1 || (b.stride(1) % kAlignK == 0 && b.stride(1) >= k)), "qkernels.", op,
              ": b (strides ", b.strides(), ") must be column-major (w.t() of a contiguous [N, K] w) with a column "
              "stride >= K that is a multiple of ", kAlignK, ".");
  const auto out_dt = out.scalar_type();
  TORCH_CHECK(out_dt == at::kBFloat16 || out_dt == at::kHalf, "qkernels.", op, ": the output dtype ", out_dt,
              " is not supported; supported: bfloat16, float16.");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == m && out.size(1) == n && out.is_contiguous(), "qkernels.", op,
              ": out must be a contiguous [", m, ", ", n, "] tensor; got ", out.sizes(), ".");
  check_same_device(op, a, b, "b");
  check_same_device(op, a, out, "out");
  check_vector(op, "a_scales", a_scales, at::kFloat, {1, m}, a);
  check_vector(op, "b_scales", b_scales, at::kFloat, {1, n}, a);
  if (bias) {
    check_vector(op, "bias", *bias, out_dt, {n}, a);
    check_aligned16(op, "bias", *bias);
  }
  if (m > 0 && n > 0) {
    check_aligned16(op, "a", a);
    check_aligned16(op, "b", b);
    check_aligned16(op, "out", out);
    if (b_scales.numel() > 1) check_aligned16(op, "b_scales", b_scales);
  }
  return {m, n, k};
}

// ----------------------------------------------------------------- the GEMM
void run_gemm(const char* op, at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
              const at::Tensor& b_scales, const std::optional<at::Tensor>& bias,
              const std::optional<at::Tensor>& azp_adj, const std::optional<at::Tensor>& azp) {
  // ---- checks
  const Problem p = check_operands(op, out, a, b, a_scales, b_scales, bias);
  const bool fp8 = a.scalar_type() == at::kFloat8_e4m3fn;
  const bool with_azp = azp_adj.has_value();
  if (with_azp) {
    TORCH_CHECK(!fp8, "qkernels.", op, ": the azp GEMM is for int8 activations; FP8 is symmetric: use scaled_mm.");
    check_vector(op, "azp_adj", *azp_adj, at::kInt, {p.n}, a);
    check_aligned16(op, "azp_adj", *azp_adj);
    if (azp) check_vector(op, "azp", *azp, at::kInt, {p.m}, a);
  }
  const c10::cuda::CUDAGuard guard(a.device());

  // ---- arch -> dtype / epilogue -> dispatch key (raises with what runs here when there is none)
  const int arch = device_arch(a);
  const Key& key = select_key(op, arch, fp8, with_azp);
  if (p.m == 0 || p.n == 0) return;

  GemmArgs args{};
  args.a = a.data_ptr();
  args.lda = p.m <= 1 ? p.k : a.stride(0);
  args.b = b.data_ptr();
  args.ldb = b.stride(1);
  args.out = out.data_ptr();
  args.out_dtype = to_qk(out.scalar_type());
  args.a_scales = a_scales.data_ptr<float>();
  args.a_per_token = a_scales.numel() > 1;
  args.b_scales = b_scales.data_ptr<float>();
  args.b_per_channel = b_scales.numel() > 1;
  args.bias = bias ? bias->data_ptr() : nullptr;
  args.azp_adj = with_azp ? azp_adj->data_ptr<int32_t>() : nullptr;
  args.azp = with_azp && azp ? azp->data_ptr<int32_t>() : nullptr;
  args.m = p.m;
  args.n = p.n;
  args.k = p.k;
  args.sm_count = sm_count(a.get_device());

  // ---- M bucket -> kernel + scheduler params: the key's active table (compiled-in default or a
  // per-GPU config), read at call time. The workspace (stream-K partials) comes from torch's
  // caching allocator; nothing here synchronises with the host: CUDA-graph safe.
  const dispatch::Bucket& bucket = key.pick(p.m);
  const Kernel* kernel = &key.kernel<Kernel>(bucket);
  if (!key.params().empty()) args.scheduler = dispatch::sm90_scheduler_args(bucket);
  const size_t ws_bytes = kernel->workspace_size(args);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, a.options().dtype(at::kByte));
  const cudaError_t err = kernel->run(args, ws_bytes > 0 ? ws.data_ptr() : nullptr, stream_of(a));
  TORCH_CHECK(err != cudaErrorNotSupported, "qkernels.", op, ": kernel ", kernel->name, " (", kernel->config,
              ", dispatch key ", key.name(), ") cannot run M=", p.m, " N=", p.n, " K=", p.k, " with strides a ",
              a.strides(), ", b ", b.strides(), " (CUTLASS can_implement failed). If a config file chose this kernel "
              "(`qkernels info`), set QKERNELS_CONFIGS=default to rule it out; please report this with the shapes.");
  TORCH_CHECK(err == cudaSuccess, "qkernels.", op, ": kernel ", kernel->name, " failed: ", cudaGetErrorString(err),
              ". If it says 'no kernel image', this build lacks code for sm_", arch, ": ", kRebuild, ".");
}

at::Tensor new_out(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf, "qkernels.scaled_mm: out_dtype ", out_dtype,
              " is not supported; supported: bfloat16, float16.");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "qkernels.scaled_mm: a and b must be 2-D; got ", a.sizes(), " and ",
              b.sizes(), ".");
  return at::empty({a.size(0), b.size(1)}, a.options().dtype(out_dtype));
}

// ----------------------------------------------------------------- ops
void scaled_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
                   const at::Tensor& b_scales, const std::optional<at::Tensor>& bias) {
  run_gemm("scaled_mm_out", out, a, b, a_scales, b_scales, bias, std::nullopt, std::nullopt);
}

at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales, const at::Tensor& b_scales,
                     at::ScalarType out_dtype, const std::optional<at::Tensor>& bias) {
  at::Tensor out = new_out(a, b, out_dtype);
  run_gemm("scaled_mm", out, a, b, a_scales, b_scales, bias, std::nullopt, std::nullopt);
  return out;
}

void scaled_mm_azp_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
                       const at::Tensor& b_scales, const at::Tensor& azp_adj, const std::optional<at::Tensor>& azp,
                       const std::optional<at::Tensor>& bias) {
  run_gemm("scaled_mm_azp_out", out, a, b, a_scales, b_scales, bias, azp_adj, azp);
}

at::Tensor scaled_mm_azp(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
                         const at::Tensor& b_scales, at::ScalarType out_dtype, const at::Tensor& azp_adj,
                         const std::optional<at::Tensor>& azp, const std::optional<at::Tensor>& bias) {
  at::Tensor out = new_out(a, b, out_dtype);
  run_gemm("scaled_mm_azp", out, a, b, a_scales, b_scales, bias, azp_adj, azp);
  return out;
}

}  // namespace
}  // namespace qk::scaled_mm

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("scaled_mm", &qk::scaled_mm::scaled_mm);
  m.impl("scaled_mm_out", &qk::scaled_mm::scaled_mm_out);
  m.impl("scaled_mm_azp", &qk::scaled_mm::scaled_mm_azp);
  m.impl("scaled_mm_azp_out", &qk::scaled_mm::scaled_mm_azp_out);
}
