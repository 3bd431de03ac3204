// Repack: compressed-tensors `pack-quantized` 4-bit weights -> the GEMM's tiled layout.
// Runs once per layer at load time, so it favours obvious correctness over speed: one thread per
// output word gathers its 8 nibbles (the index map is the one of qkernels/reference/w4a16.py).
#include "w4a16/w4a16.h"

namespace qk::w4a16 {
namespace {

__global__ void repack_kernel(const uint32_t* __restrict__ in, const int32_t* __restrict__ perm,
                              uint32_t* __restrict__ out, int n, int k) {
  const size_t words = static_cast<size_t>(k / 16) * 2 * n;
  const size_t o = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= words) return;
  const int kt = static_cast<int>(o / (2 * n)), word = static_cast<int>(o % (2 * n));
  const int nt = word / 128, warp = (word / 32) % 4, lane = word % 32;
  const int t = lane % 4, r = lane / 4;
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int kk = 16 * kt + 2 * t + (i >> 2) + 8 * (i & 1);       // row of the MMA B fragment
    const int nn = kTileN * nt + 16 * warp + r + 8 * ((i >> 1) & 1);  // its column
    const int src_k = perm ? perm[kk] : kk;
    const uint32_t u = (in[static_cast<size_t>(nn) * (k / 8) + src_k / 8] >> (4 * (src_k % 8))) & 0xFu;
    packed |= u << (4 * i);
  }
  out[o] = packed;
}

}  // namespace

cudaError_t repack(const uint32_t* weight_packed, const int32_t* perm, uint32_t* out, int n, int k,
                   cudaStream_t stream) {
  const size_t words = static_cast<size_t>(k / 16) * 2 * n;
  constexpr int kThreads = 256;
  repack_kernel<<<static_cast<unsigned>(ceil_div<size_t>(words, kThreads)), kThreads, 0, stream>>>(
      weight_packed, perm, out, n, k);
  return cudaGetLastError();
}

}  // namespace qk::w4a16
