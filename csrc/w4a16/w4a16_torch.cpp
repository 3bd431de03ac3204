// Torch glue of the W4A16 ops: checks, act-order gather, workspace, dispatch to the kernels.
// Schemas: qkernels/ops/schemas.py. Kernels: kernels/*.cu (see w4a16.h).
// Dispatch: checks -> arch (sm80+) -> activation dtype x zero points -> M bucket (in the kernel
// launcher, kernels/gemm_kernel.cuh).
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "core/torch_utils.h"
#include "w4a16/w4a16.h"

namespace qk::w4a16 {
namespace {

constexpr const char* kPadHint = " Pad the layer (csrc/w4a16/README.md, 'Shapes').";

void check_arch(const char* op, const at::Tensor& t) {
  const int arch = device_arch(t);
#if defined(QK_W4A16_SM80)
  TORCH_CHECK(arch >= 80, "qkernels.", op, ": needs sm_80 or newer (mma.sync bf16, cp.async); this GPU is sm_", arch,
              ". Dequantise the weight (qkernels.reference.w4a16.dequantize) and use a dense GEMM.");
#else
  TORCH_CHECK(false, "qkernels.", op, ": the W4A16 kernels were not built for sm_80+ in this install (GPU is sm_",
              arch, "). Rebuild with QKERNELS_ARCHS including 80, 86, 89 or 90.");
#endif
}

void check_group_tensor(const char* name, const at::Tensor& t, const at::Tensor& a, int64_t groups, int64_t n) {
  TORCH_CHECK(t.scalar_type() == a.scalar_type(), "qkernels.w4a16_gemm: ", name, " has dtype ", t.scalar_type(),
              "; it must have the activations' dtype ", a.scalar_type(), ".");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == groups && t.size(1) == n, "qkernels.w4a16_gemm: ", name, " has shape ",
              t.sizes(), "; expected [G, N] = [", groups, ", ", n, "].");
  TORCH_CHECK(t.is_contiguous(), "qkernels.w4a16_gemm: ", name, " must be contiguous.");
  check_aligned16("w4a16_gemm", name, t);  // read in 16-byte chunks (cp.async)
  TORCH_CHECK(t.device() == a.device(), "qkernels.w4a16_gemm: ", name, " is on ", t.device(), ", a on ", a.device(),
              ".");
}

void check_perm(const char* op, const at::Tensor& perm, const at::Tensor& like, int64_t k) {
  // contiguous: the repack kernel reads perm through a raw pointer (a strided one gave wrong weights)
  TORCH_CHECK(perm.scalar_type() == at::kInt && perm.dim() == 1 && perm.size(0) == k && perm.is_contiguous(),
              "qkernels.", op, ": perm must be a contiguous int32 [K] = [", k, "]; got ", perm.scalar_type(), " ",
              perm.sizes(), " (strides ", perm.strides(), ").");
  TORCH_CHECK(perm.device() == like.device(), "qkernels.", op, ": perm is on ", perm.device(), ", expected ",
              like.device(), ".");
}

at::Tensor w4a16_repack(const at::Tensor& weight_packed, const std::optional<at::Tensor>& perm) {
  QK_CHECK_CUDA_TENSOR("w4a16_repack", weight_packed);
  QK_CHECK_DTYPE("w4a16_repack", weight_packed, weight_packed.scalar_type() == at::kInt, "int32");
  QK_CHECK_CONTIGUOUS("w4a16_repack", weight_packed);
  TORCH_CHECK(weight_packed.dim() == 2, "qkernels.w4a16_repack: weight_packed must be 2-D [N, K/8]; got ",
              weight_packed.sizes(), ".");
  const int64_t n = weight_packed.size(0), k = weight_packed.size(1) * 8;
  TORCH_CHECK(n > 0 && k > 0 && n % kTileN == 0 && k % kTileK == 0, "qkernels.w4a16_repack: N = ", n, ", K = ", k,
              " must be positive multiples of ", kTileN, " and ", kTileK, ".", kPadHint);
  if (perm) {
    check_perm("w4a16_repack", *perm, weight_packed, k);
    // The kernel gathers weight columns perm[k]: a load-time op, so this sync is affordable.
    TORCH_CHECK(perm->min().item<int>() >= 0 && perm->max().item<int>() < k, "qkernels.w4a16_repack: perm holds "
                "column indices outside [0, K = ", k, "): pass argsort(g_idx) (qkernels.ops.w4a16.prepare_weight).");
  }
  check_arch("w4a16_repack", weight_packed);
  const c10::cuda::CUDAGuard guard(weight_packed.device());
  auto out = at::empty({k / 16, 2 * n}, weight_packed.options());
#if defined(QK_W4A16_SM80)
  QK_CHECK_LAUNCH("w4a16_repack",
                  repack(reinterpret_cast<const uint32_t*>(weight_packed.data_ptr<int32_t>()),
                         perm ? perm->data_ptr<int32_t>() : nullptr, reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()),
                         static_cast<int>(n), static_cast<int>(k), stream_of(weight_packed)));
#endif
  return out;
}

at::Tensor w4a16_gemm(const at::Tensor& a, const at::Tensor& b_q, const at::Tensor& scales,
                      const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& perm,
                      const std::optional<at::Tensor>& bias, int64_t size_n, int64_t size_k, int64_t group_size) {
  constexpr const char* op = "w4a16_gemm";
  // ---- checks (memory safety; the Python wrapper has the friendlier versions)
  QK_CHECK_CUDA_TENSOR("w4a16_gemm", a);
  QK_CHECK_DTYPE("w4a16_gemm", a, a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16,
                 "float16, bfloat16");
  QK_CHECK_CONTIGUOUS("w4a16_gemm", a);
  TORCH_CHECK(a.dim() >= 1 && a.size(-1) == size_k, "qkernels.w4a16_gemm: a has shape ", a.sizes(),
              "; its last dim must be K = ", size_k, ".");
  TORCH_CHECK(size_n > 0 && size_k > 0 && size_n % kTileN == 0 && size_k % kTileK == 0, "qkernels.w4a16_gemm: N = ",
              size_n, ", K = ", size_k, " must be positive multiples of ", kTileN, " and ", kTileK, ".", kPadHint);
  TORCH_CHECK(group_size == -1 || group_size == 32 || group_size == 64 || group_size == 128,
              "qkernels.w4a16_gemm: group_size = ", group_size, "; supported: -1 (per channel), 32, 64, 128.");
  QK_CHECK_DTYPE("w4a16_gemm", b_q, b_q.scalar_type() == at::kInt, "int32");
  TORCH_CHECK(b_q.dim() == 2 && b_q.size(0) == size_k / 16 && b_q.size(1) == 2 * size_n && b_q.is_contiguous(),
              "qkernels.w4a16_gemm: b_q must be a contiguous [K/16, 2N] = [", size_k / 16, ", ", 2 * size_n,
              "] int32 tensor from w4a16_repack; got ", b_q.sizes(), ".");
  QK_CHECK_SAME_DEVICE("w4a16_gemm", a, b_q);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(b_q.data_ptr()) % 16 == 0,
              "qkernels.w4a16_gemm: b_q must start at a 16-byte aligned address; pass the tensor from w4a16_repack "
              "(or .clone() it).");
  const int64_t groups = group_size == -1 ? 1 : size_k / group_size;
  check_group_tensor("scales", scales, a, groups, size_n);
  if (zeros) check_group_tensor("zeros", *zeros, a, groups, size_n);
  if (perm) check_perm(op, *perm, a, size_k);
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == a.scalar_type() && bias->dim() == 1 && bias->size(0) == size_n &&
                    bias->is_contiguous(),
                "qkernels.w4a16_gemm: bias must be a contiguous [N] = [", size_n, "] tensor of dtype ",
                a.scalar_type(), "; got ", bias->scalar_type(), " ", bias->sizes(), ".");
    QK_CHECK_SAME_DEVICE("w4a16_gemm", a, (*bias));
  }
  // ---- arch
  check_arch(op, a);

  const c10::cuda::CUDAGuard guard(a.device());
  std::vector<int64_t> out_shape(a.sizes().begin(), a.sizes().end() - 1);
  out_shape.push_back(size_n);
  auto out = at::empty(out_shape, a.options());
  const int64_t m = a.numel() / size_k;
  if (m == 0) return out;
  // Act-order: one gather pass over the activations (kernel row k = checkpoint column perm[k]).
  at::Tensor a_sorted = perm ? at::index_select(a, -1, *perm) : a;
  // cp.async moves 16-byte chunks: a view with a misaligned start is copied once.
  if (reinterpret_cast<uintptr_t>(a_sorted.data_ptr()) % 16 != 0) a_sorted = a_sorted.clone();
  TORCH_CHECK(m <= INT32_MAX && size_n <= INT32_MAX && size_k <= INT32_MAX, "qkernels.w4a16_gemm: M = ", m,
              ", N = ", size_n, ", K = ", size_k, ": each must be below 2^31.");
  const int num_sms = sm_count(a.get_device());
  const int64_t tiles = (m <= kSliceM ? 1 : (m + kSliceM - 1) / kSliceM) * (size_n / kTileN);
  TORCH_CHECK(tiles <= INT32_MAX, "qkernels.w4a16_gemm: M = ", m, " x N = ", size_n, " makes ", tiles,
              " output tiles of 64 x 64, more than a grid holds (2^31 - 1): split M.");
  GemmArgs args{};
  args.part = make_partition(static_cast<int>(m), static_cast<int>(size_n), static_cast<int>(size_k), num_sms);
  // Stream-K workspace (only when some tile is shared by several blocks, partition.h) from
  // torch's caching allocator: inside a CUDA graph capture it comes from the graph's pool and the
  // zeroing of the counters is a captured memset. The kernel leaves the counters zero.
  at::Tensor workspace, counters;
  if (args.part.stream_k) {
    workspace = at::empty({static_cast<int64_t>(args.part.workspace_floats())}, a.options().dtype(at::kFloat));
    counters = at::zeros({args.part.counters()}, a.options().dtype(at::kInt));
  }
  args.a = a_sorted.data_ptr();
  args.b = reinterpret_cast<const uint32_t*>(b_q.data_ptr<int32_t>());
  args.scales = scales.data_ptr();
  args.zeros = zeros ? zeros->data_ptr() : nullptr;
  args.bias = bias ? bias->data_ptr() : nullptr;
  args.c = out.data_ptr();
  args.workspace = args.part.stream_k ? workspace.data_ptr<float>() : nullptr;
  args.counters = args.part.stream_k ? counters.data_ptr<int>() : nullptr;
  args.group_size = static_cast<int>(group_size == -1 ? size_k : group_size);

  // ---- activation dtype x zero points
#if defined(QK_W4A16_SM80)
  const cudaStream_t stream = stream_of(a);
  const bool bf16 = a.scalar_type() == at::kBFloat16;
  cudaError_t err;
  if (bf16) {
    err = zeros ? gemm<DType::kBFloat16, true>(args, stream) : gemm<DType::kBFloat16, false>(args, stream);
  } else {
    err = zeros ? gemm<DType::kFloat16, true>(args, stream) : gemm<DType::kFloat16, false>(args, stream);
  }
  QK_CHECK_LAUNCH("w4a16_gemm", err);
#endif
  return out;
}

}  // namespace
}  // namespace qk::w4a16

// ----------------------------------------------------------------- schedule introspection
// The kernel's work partition for (m, n, k, num_sms), computed by the same code the launcher and
// the kernel run (partition.h: make_partition, Cursor, Partition::slot). A plain C entry point,
// read with ctypes by qkernels.ops.w4a16.schedule (no GPU needed): the CPU model of the
// schedule in python_tests/test_w4a16_schedule.py simulates exactly what the kernel does.
//   qk_w4a16_schedule_fields(0 / 1): comma-separated names of the meta / per-piece fields.
//   qk_w4a16_schedule(...): fills meta[meta_len] and up to max_pieces rows of pieces (one row of
//   the per-piece fields each, in block order, then the block's order of work) and returns the
//   number of pieces (call with max_pieces = 0 first to size the buffer), or -1 for shapes the
//   op rejects (m < 1, n % 64, k % 128, num_sms < 1).
namespace {
constexpr const char* kScheduleMeta =
    "m,n,k,num_sms,m_blocks,rows,tile_n,tile_k,k_tiles,n_tiles,slices,tiles,total,iters,grid,stream_k,slot_rows,"
    "workspace_floats,counters,threads,warps_k,stages,stage_bytes,smem_bytes";
// wait_tile / wait_value: the counter a piece's block spins on before its epilogue and the value
// it waits for. This kernel never waits (-1): shared tiles are finished by the last arrival.
constexpr const char* kSchedulePiece = "block,seq,tile,slice,n_tile,k_begin,k_end,piece,pieces,slot,wait_tile,wait_value";
}  // namespace

extern "C" __attribute__((visibility("default"))) const char* qk_w4a16_schedule_fields(int which) {
  return which == 0 ? kScheduleMeta : kSchedulePiece;
}

extern "C" __attribute__((visibility("default"))) int64_t qk_w4a16_schedule(int m, int n, int k, int num_sms,
                                                                           int64_t* meta, int64_t meta_len,
                                                                           int64_t* pieces, int64_t max_pieces) {
  using namespace qk::w4a16;
  if (m < 1 || n < kTileN || n % kTileN != 0 || k < kTileK || k % kTileK != 0 || num_sms < 1) return -1;
  const Partition p = make_partition(m, n, k, num_sms);
  const int mb = p.m_blocks;
  const int64_t values[] = {m, n, k, num_sms, mb, 16 * mb, kTileN, p.tile_k, p.k_tiles, p.n_tiles, p.slices,
                            p.tiles, p.total, p.iters, p.grid, p.stream_k ? 1 : 0, p.slot_rows,
                            static_cast<int64_t>(p.workspace_floats()), p.counters(), kThreads, kWarpsK,
                            bucket_stages(mb), stage_bytes(mb), smem_bytes(mb)};
  for (int64_t i = 0; i < meta_len && i < static_cast<int64_t>(sizeof(values) / sizeof(values[0])); ++i)
    meta[i] = values[i];
  constexpr int kFields = 12;
  int64_t count = 0;
  for (int b = 0; b < p.grid; ++b) {
    Cursor c;
    c.start(p, b);
    for (int seq = 0; c.left > 0; ++seq) {  // the kernel's walk: a piece ends where ends_piece() says
      const int tile = c.tile, k_begin = c.kt;
      while (!c.ends_piece(p)) c.advance(p);
      const int k_end = c.kt + 1;
      c.advance(p);
      if (count < max_pieces) {
        int slice = 0, nt = 0;
        p.tile_coords(tile, slice, nt);
        const int count_t = p.pieces(tile);
        const int64_t row[kFields] = {b, seq, tile, slice, nt, k_begin, k_end, b - p.first_block(tile), count_t,
                                      count_t > 1 ? p.slot(b, tile) : -1, -1, -1};
        for (int f = 0; f < kFields; ++f) pieces[count * kFields + f] = row[f];
      }
      ++count;
    }
  }
  return count;
}

TORCH_LIBRARY_IMPL(qkernels, CUDA, m) {
  m.impl("w4a16_repack", &qk::w4a16::w4a16_repack);
  m.impl("w4a16_gemm", &qk::w4a16::w4a16_gemm);
}
