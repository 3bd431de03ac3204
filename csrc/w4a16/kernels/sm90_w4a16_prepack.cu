// Load-time repack for the Hopper W4A16 path: compressed-tensors weight_packed [N, K/8] (eight
// uint4b8 nibbles along K per int32, u = q + 8), optionally with the act-order permutation of K,
// -> the prepacked [K/16, N/16, 32] layout of w4a16_hopper.h (two's-complement nibbles).
// Spec: qkernels/reference/w4a16_hopper.py (prepack). Plain CUDA: no CUTLASS needed here; the
// GEMM's CuTe layout is proven equal to the closed form in sm90_w4a16_layout.cuh.
#include <cuda_runtime.h>

#include <cstdint>

#include "w4a16/w4a16_hopper.h"

namespace qk::w4a16::hopper {
namespace {

// The forward and inverse maps of an atom agree (the prepack writes through the inverse).
constexpr bool inverse_is_consistent() {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const int r = atom_row(lane, i), c = atom_col(lane, i);
      if (r < 0 || r >= kAtomRows || c < 0 || c >= kAtomCols) return false;
      if (atom_lane(r, c) != lane || atom_nibble(r, c) != i) return false;
    }
  }
  return true;
}
static_assert(inverse_is_consistent(), "atom_row / atom_col must invert atom_lane / atom_nibble");

// One thread per output word: gathers its 8 nibbles from the checkpoint (through perm for
// act-order), flips them to two's complement (u ^ 8 = q mod 16) and stores one int32. Reads are
// scattered over 8 rows, but this runs once at load time and is bound by the same bytes.
__global__ void prepack_kernel(const uint32_t* __restrict__ src, const int32_t* __restrict__ perm,
                               uint32_t* __restrict__ dst, int n, int k) {
  const int64_t words = static_cast<int64_t>(n) * k / 8;
  const int n_atoms = n / kAtomRows;
  const int64_t src_row_words = k / 8;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(w % kWordsPerAtom);
    const int64_t atom = w / kWordsPerAtom;
    const int64_t row0 = (atom % n_atoms) * kAtomRows;
    const int64_t col0 = (atom / n_atoms) * kAtomCols;
    uint32_t out = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t row = row0 + atom_row(lane, i);
      int64_t col = col0 + atom_col(lane, i);
      if (perm != nullptr) col = perm[col];
      const uint32_t u = (src[row * src_row_words + col / 8] >> (4 * (col % 8))) & 0xFu;
      out |= (u ^ 0x8u) << (4 * i);
    }
    dst[w] = out;
  }
}

}  // namespace

cudaError_t prepack(const uint32_t* weight_packed, const int32_t* perm, uint32_t* out, int n, int k,
                    cudaStream_t stream) {
  const int64_t words = static_cast<int64_t>(n) * k / 8;
  constexpr int kThreads = 256;
  const int64_t blocks = (words + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 ? blocks : 65535);  // grid-stride loop covers the rest
  prepack_kernel<<<grid, kThreads, 0, stream>>>(weight_packed, perm, out, n, k);
  return cudaGetLastError();
}

}  // namespace qk::w4a16::hopper
