// Torch glue of the block-scaled FP8 ops, read top to bottom:
//   per_token_group_fp8_quant: checks -> outputs (the scale layout) -> launch.
//   fp8_block_scaled_mm:       checks -> arch (sm90: CUTLASS; sm89: the Triton op; else an error)
//                              -> a_scales in the kernels' layout -> M bucket (the dispatch key's
//                              table: core/dispatch.h) -> kernel.
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/*.cu (GEMM list: kernels/generate.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/dispatch.h"
#include "core/torch_utils.h"
#include "fp8_block/fp8_block.h"

namespace qk::fp8_block {
namespace {

int64_t tma_aligned_rows(int64_t m) { return (m + kScaleAlign - 1) / kScaleAlign * kScaleAlign; }

// ----------------------------------------------------------------- the sm90 dispatch key
// M bucket (tokens) -> kernel + tile-scheduler params. Candidates: every kernel kernels/generate.py
// declares (kernels.inc); the compiled-in default table below (README.md explains the choices); a
// per-GPU config (qkernels/configs, written by `qkernels tune`) may replace it at run time, and
// tests force one kernel with qkernels.configs.forced_kernel.
#if defined(QK_FP8_BLOCK_SM90)
#define QK_FP8B_CANDIDATE(k, params) dispatch::Candidate{#k, k.config, &k, dispatch::params},
dispatch::Key& kSm90Fp8 = dispatch::add_key(
    "fp8_block/sm90/fp8",
    "block-scaled FP8 e4m3 (1x128 token groups, 128x128 weight blocks), CUTLASS 3.x sm90a blockwise mainloop; "
    "the m16/m32/m64 kernels are swapped (tile M = weight rows, tile N = tokens)",
    dispatch::sm90_scheduler_params(), {QK_FP8_BLOCK_KERNELS_SM90_FP8(QK_FP8B_CANDIDATE)},
    {{16, &sm90_fp8_block_m16},
     {32, &sm90_fp8_block_m32},
     {64, &sm90_fp8_block_m64},
     {2048, &sm90_fp8_block_sk},
     {dispatch::kAnyM, &sm90_fp8_block_large}});
#undef QK_FP8B_CANDIDATE
#endif

const char* kRebuild =
    "rebuild with QKERNELS_CUDA_ARCHS including this GPU's arch (see `qkernels info` for what was built)";

// ----------------------------------------------------------------- per-token-group quantisation
std::tuple<at::Tensor, at::Tensor> per_token_group_fp8_quant(const at::Tensor& input, int64_t group_size,
                                                             bool column_major_scales, bool scale_ue8m0,
                                                             const std::optional<at::Tensor>& scale) {
  constexpr const char* op = "per_token_group_fp8_quant";
  TORCH_CHECK(input.is_cuda(), "qkernels.", op, ": input must be a CUDA tensor; got ", input.device(), ".");
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat, "qkernels.", op, ": input has dtype ", t,
              "; supported: float16, bfloat16, float32.");
  TORCH_CHECK(input.dim() >= 1, "qkernels.", op, ": input must have at least 1 dim; got a scalar.");
  TORCH_CHECK(input.is_contiguous(), "qkernels.", op, ": input (shape ", input.sizes(), ", strides ", input.strides(),
              ") must be contiguous: call .contiguous() first.");
  TORCH_CHECK(group_size == 64 || group_size == 128, "qkernels.", op, ": group_size = ", group_size,
              " is not supported; supported: 64, 128.");
  const int64_t k = input.size(-1);
  TORCH_CHECK(k > 0 && k % group_size == 0, "qkernels.", op, ": the last dim K = ", k,
              " must be a positive multiple of group_size = ", group_size, ".");
  const int64_t groups = k / group_size, rows = input.numel() / k;
  if (scale) {
    TORCH_CHECK(!scale_ue8m0, "qkernels.", op, ": scale_ue8m0 applies to dynamic scales; a static scale is used as "
                "given.");
    TORCH_CHECK(scale->scalar_type() == at::kFloat, "qkernels.", op, ": scale has dtype ", scale->scalar_type(),
                "; expected float32.");
    TORCH_CHECK(scale->numel() == 1 || scale->numel() == groups, "qkernels.", op, ": scale has shape ",
                scale->sizes(), "; expected 1 (per tensor) or K/group_size = ", groups, " values.");
    TORCH_CHECK(scale->is_contiguous(), "qkernels.", op, ": scale must be contiguous.");
    check_same_device(op, input, *scale, "scale");
  }
  if (input.numel() > 0) check_aligned16(op, "input", input);
  const c10::cuda::CUDAGuard guard(input.device());

  // Outputs. The scales are a view of a buffer of groups * rows (row-major) or groups * M_pad
  // (column-major, M_pad = ceil(rows / 4) * 4) floats: qkernels/reference/fp8_block.py:empty_scales.
  at::Tensor q = at::empty_like(input, input.options().dtype(at::kFloat8_e4m3fn));
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 1);
  shape.push_back(groups);
  std::vector<int64_t> strides(shape.size());
  int64_t acc = 1;
  const int64_t lead = static_cast<int64_t>(shape.size()) - 1;
  if (column_major_scales) {
    for (int64_t i = lead - 1; i >= 0; --i) {
      strides[i] = acc;
      acc *= std::max<int64_t>(shape[i], 1);
    }
    strides[lead] = tma_aligned_rows(rows);
  } else {
    for (int64_t i = lead; i >= 0; --i) {
      strides[i] = acc;
      acc *= std::max<int64_t>(shape[i], 1);
    }
  }
  const int64_t storage = groups * (column_major_scales ? tma_aligned_rows(rows) : rows);
  at::Tensor s = at::empty({storage}, input.options().dtype(at::kFloat)).as_strided(shape, strides);

  GroupQuantArgs args{};
  args.in = input.data_ptr();
  args.in_dtype = to_qk(t);
  args.out = static_cast<uint8_t*>(q.data_ptr());
  args.scales = s.data_ptr<float>();
  args.scale_row_stride = column_major_scales ? 1 : groups;
  args.scale_group_stride = column_major_scales ? tma_aligned_rows(rows) : 1;
  args.rows = rows;
  args.cols = k;
  args.group_size = static_cast<int>(group_size);
  args.ue8m0 = scale_ue8m0;
  args.static_scale = scale ? scale->data_ptr<float>() : nullptr;
  args.static_per_group = scale && scale->numel() == groups && groups > 1;
  args.sm_count = sm_count(input.get_device());
  QK_CHECK_LAUNCH("per_token_group_fp8_quant", per_token_group_quant(args, stream_of(input)));
  return {q, s};
}

// ----------------------------------------------------------------- the GEMM: checks
// The Python wrappers and fakes explain these errors at length; these guard memory safety for
// direct torch.ops calls and accept exactly what the fakes accept.
struct Problem {
  int64_t m, n, k, kb, nb;
};

// The sm90 kernels' fast path for a_scales [M, K/128]: column-major with a 16-byte aligned column
// stride ld >= M_pad, a 16-byte aligned base, and storage that reaches the padding rows of the last
// column ((kb-1)*ld + M_pad floats: the kernels' TMA reads them, sm90_blockwise.cuh token_scales),
// which per_token_group_quant(..., column_major_scales=True) allocates. ld_out: the stride to use.
bool column_major_aligned(const at::Tensor& s, int64_t& ld_out) {
  const int64_t m = s.size(0), kb = s.size(1), m_pad = tma_aligned_rows(m);
  const int64_t ld = kb <= 1 ? m_pad : s.stride(1);
  const bool layout = (m <= 1 || s.stride(0) == 1) && (kb <= 1 || (ld >= m && ld % kScaleAlign == 0));
  const int64_t need = s.storage_offset() + (kb - 1) * ld + m_pad;
  const bool in_storage = static_cast<int64_t>(s.storage().nbytes() / sizeof(float)) >= need;
  ld_out = ld;
  return layout && in_storage && reinterpret_cast<uintptr_t>(s.data_ptr()) % 16 == 0;
}

Problem check_gemm(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
                   const at::Tensor& b_scales, at::ScalarType out_dtype, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.is_cuda(), "qkernels.", op, ": a must be a CUDA tensor; got device ", a.device(), ".");
  TORCH_CHECK(a.scalar_type() == at::kFloat8_e4m3fn && b.scalar_type() == at::kFloat8_e4m3fn, "qkernels.", op,
              ": a and b must be float8_e4m3fn; got ", a.scalar_type(), " and ", b.scalar_type(), ".");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "qkernels.", op, ": a and b must be 2-D; got ", a.sizes(), " and ",
              b.sizes(), ".");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k, "qkernels.", op, ": a ", a.sizes(), " and b ", b.sizes(),
              " do not chain: b must be [K, N] = weight.t().");
  TORCH_CHECK(k > 0 && k % kBlock == 0, "qkernels.", op, ": K = ", k, " must be a positive multiple of ", kBlock,
              ": pad K with zeros.");
  TORCH_CHECK(n % kAlignN == 0, "qkernels.", op, ": N = ", n, " must be a multiple of ", kAlignN,
              ": pad the weight with zero rows.");
  TORCH_CHECK(a.stride(1) == 1 && (m <= 1 || (a.stride(0) % 16 == 0 && a.stride(0) >= k)), "qkernels.", op,
              ": a (strides ", a.strides(), ") must be row-major with a row stride >= K that is a multiple of 16: "
              "call .contiguous().");
  TORCH_CHECK(b.stride(0) == 1 && (n <= 1 || (b.stride(1) % 16 == 0 && b.stride(1) >= k)), "qkernels.", op,
              ": b (strides ", b.strides(), ") must be column-major (w.t() of a contiguous [N, K] w) with a column "
              "stride >= K that is a multiple of 16.");
  const int64_t kb = k / kBlock, nb = (n + kBlock - 1) / kBlock;
  TORCH_CHECK(a_scales.scalar_type() == at::kFloat && b_scales.scalar_type() == at::kFloat, "qkernels.", op,
              ": a_scales and b_scales must be float32; got ", a_scales.scalar_type(), " and ",
              b_scales.scalar_type(), ".");
  TORCH_CHECK(a_scales.dim() == 2 && a_scales.size(0) == m && a_scales.size(1) == kb, "qkernels.", op,
              ": a_scales has shape ", a_scales.sizes(), "; expected [M, K/128] = [", m, ", ", kb, "].");
  TORCH_CHECK(b_scales.dim() == 2 && b_scales.size(0) == nb && b_scales.size(1) == kb && b_scales.is_contiguous(),
              "qkernels.", op, ": b_scales (shape ", b_scales.sizes(), ") must be a contiguous [ceil(N/128), K/128] = [",
              nb, ", ", kb, "] tensor.");
  TORCH_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf, "qkernels.", op, ": out_dtype ", out_dtype,
              " is not supported; supported: bfloat16, float16.");
  check_same_device(op, a, b, "b");
  check_same_device(op, a, a_scales, "a_scales");
  check_same_device(op, a, b_scales, "b_scales");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == out_dtype && bias->numel() == n && bias->is_contiguous(), "qkernels.", op,
                ": bias must be a contiguous [", n, "] tensor of the output dtype ", out_dtype, "; got ",
                bias->scalar_type(), " ", bias->sizes(), ".");
    check_same_device(op, a, *bias, "bias");
  }
  return {m, n, k, kb, nb};
}

// ----------------------------------------------------------------- the GEMM: sm89 (Triton)
at::Tensor run_triton(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales, const at::Tensor& b_scales,
                      at::ScalarType out_dtype, const std::optional<at::Tensor>& bias) {
  // Registered from Python (qkernels/ops/fp8_block.py), which imports Triton on first use.
  static const auto triton_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("qkernels::fp8_block_scaled_mm_triton", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            at::ScalarType, const std::optional<at::Tensor>&)>();
  return triton_op.call(a, b, a_scales, b_scales, out_dtype, bias);
}

// ----------------------------------------------------------------- the GEMM: sm90 (CUTLASS)
#if defined(QK_FP8_BLOCK_SM90)
at::Tensor run_sm90(const char* op, const Problem& p, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& a_scales, const at::Tensor& b_scales, at::ScalarType out_dtype,
                    const std::optional<at::Tensor>& bias) {
  at::Tensor out = at::empty({p.m, p.n}, a.options().dtype(out_dtype));
  if (p.m == 0 || p.n == 0) return out;
  check_aligned16(op, "a", a);
  check_aligned16(op, "b", b);
  if (bias) check_aligned16(op, "bias", *bias);

  // The kernels read the token scales MN-major (column-major) with a TMA-aligned column stride.
  // per_token_group_quant(..., column_major_scales=True) writes exactly that; any other layout is
  // copied into it here (one small extra kernel: M * K/128 floats).
  at::Tensor sa = a_scales;
  int64_t ld = 0;
  if (!column_major_aligned(a_scales, ld)) {
    ld = tma_aligned_rows(p.m);
    sa = at::empty({p.kb * ld}, a_scales.options()).as_strided({p.m, p.kb}, {1, ld});
    sa.copy_(a_scales);
  }

  GemmArgs args{};
  args.a = a.data_ptr();
  args.lda = p.m <= 1 ? p.k : a.stride(0);
  args.b = b.data_ptr();
  args.ldb = p.n <= 1 ? p.k : b.stride(1);
  args.out = out.data_ptr();
  args.out_dtype = to_qk(out_dtype);
  args.a_scales = sa.data_ptr<float>();
  args.a_scales_ld = ld;
  args.b_scales = b_scales.data_ptr<float>();
  args.bias = bias ? bias->data_ptr() : nullptr;
  args.m = p.m;
  args.n = p.n;
  args.k = p.k;
  args.sm_count = sm_count(a.get_device());
  TORCH_CHECK(p.kb * ld < std::numeric_limits<int32_t>::max() && p.nb * p.kb < std::numeric_limits<int32_t>::max(),
              "qkernels.", op, ": the scale tensors are too large for the kernels' 32-bit scale indexing (M = ", p.m,
              ", K = ", p.k, "): split M into chunks.");

  // ---- M bucket -> kernel + scheduler params: the key's active table (compiled-in default or a
  // per-GPU config), read at call time. The workspace (stream-K partials and flags) comes from
  // torch's caching allocator; nothing here synchronises with the host: CUDA-graph safe.
  const dispatch::Bucket& bucket = kSm90Fp8.pick(p.m);
  const Kernel& kernel = kSm90Fp8.kernel<Kernel>(bucket);
  args.scheduler = dispatch::sm90_scheduler_args(bucket);
  const size_t ws_bytes = kernel.workspace_size(args);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, a.options().dtype(at::kByte));
  const cudaError_t err = kernel.run(args, ws_bytes > 0 ? ws.data_ptr() : nullptr, stream_of(a));
  TORCH_CHECK(err != cudaErrorNotSupported, "qkernels.", op, ": kernel ", kernel.name, " (", kernel.config,
              ", dispatch key ", kSm90Fp8.name(), ") cannot run M=", p.m, " N=", p.n, " K=", p.k, " with strides a ",
              a.strides(), ", b ", b.strides(), " (CUTLASS can_implement failed). If a config file chose this kernel "
              "(`qkernels info`), set QKERNELS_CONFIGS=default to rule it out; please report this with the shapes.");
  TORCH_CHECK(err == cudaSuccess, "qkernels.", op, ": kernel ", kernel.name, " failed: ", cudaGetErrorString(err),
              ". If it says 'no kernel image', this build lacks sm_90a code: ", kRebuild, ".");
  return out;
}
#endif

at::Tensor fp8_block_scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scales,
                               const at::Tensor& b_scales, at::ScalarType out_dtype,
                               const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "fp8_block_scaled_mm";
  // ---- checks
  const Problem p = check_gemm(op, a, b, a_scales, b_scales, out_dtype, bias);
  const c10::cuda::CUDAGuard guard(a.device());

  // ---- arch. Mirrors qkernels/ops/fp8_block.py:kernel_path.
  const int arch = device_arch(a);
  (void)p;
  if (arch == 89) return run_triton(a, b, a_scales, b_scales, out_dtype, bias);
  if (arch == 90) {
#if defined(QK_FP8_BLOCK_SM90)
    return run_sm90(op, p, a, b, a_scales, b_scales, out_dtype, bias);
#else
    TORCH_CHECK(false, "qkernels.", op, ": this install has no sm_90a kernels for the blockwise FP8 GEMM on this sm_90 "
                "GPU: ", kRebuild, ".");
#endif
  }
  TORCH_CHECK(false, "qkernels.", op, ": the blockwise-scaled FP8 GEMM runs on sm_90 (Hopper: CUTLASS kernels) and "
              "sm_89 (Ada: a Triton kernel); this GPU is sm_", arch,
              arch < 89 ? ", which has no FP8 tensor cores: use a W8A8-INT8 or W4A16 checkpoint, or dequantize the "
                          "weights to bfloat16."
                        : ". The Triton kernel may run here but is not validated on this arch: "
                          "QKERNELS_FORCE_ARCH=89 selects it at your own risk.");
  return {};
}

}  // namespace
}  // namespace qk::fp8_block

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("per_token_group_fp8_quant", &qk::fp8_block::per_token_group_fp8_quant);
  m.impl("fp8_block_scaled_mm", &qk::fp8_block::fp8_block_scaled_mm);
}
