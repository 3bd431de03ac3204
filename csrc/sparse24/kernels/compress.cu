// 2:4 compressor: dense fp8 weight -> (values, CUTLASS sm90 metadata). Plain CUDA.
// Same bytes as qkernels/reference/sparse24.py:compress (see README.md for the layout).
#include "sparse24/sparse24.h"

namespace qk::sparse24 {
namespace {

constexpr int kBytesPerRow = kMetaK / 8;  // metadata bytes per row of one block (16)

// One thread per (row, 128-wide K block): reads 128 weight bytes, writes 64 value
// bytes and 16 metadata bytes. A load-time op: simplicity over coalescing.
__global__ void compress_kernel(const uint8_t* __restrict__ w, uint8_t* __restrict__ values,
                                uint8_t* __restrict__ meta, int* __restrict__ bad_groups, int64_t n, int64_t k) {
  const int64_t row = int64_t(blockIdx.x) * kMetaRows + threadIdx.x;  // padded rows (>= n) included
  const int64_t kb = blockIdx.y;                                      // K block
  const bool real = row < n;

  uint4 in[kMetaK / 16];
#pragma unroll
  for (int i = 0; i < kMetaK / 16; ++i) {
    in[i] = real ? reinterpret_cast<const uint4*>(w + row * k + kb * kMetaK)[i] : make_uint4(0, 0, 0, 0);
  }
  const uint32_t* words = reinterpret_cast<const uint32_t*>(in);  // one group of 4 per word

  uint32_t vals[kMetaK / 2 / 4];   // 64 kept bytes
  uint32_t meta_words[kBytesPerRow / 4];
  int bad = 0;
#pragma unroll
  for (int i = 0; i < kBytesPerRow / 4; ++i) meta_words[i] = 0;
#pragma unroll
  for (int i = 0; i < kMetaK / 2 / 4; ++i) vals[i] = 0;

#pragma unroll
  for (int g = 0; g < kMetaK / 4; ++g) {
    const uint32_t word = words[g];
    // Kept positions: the non-zeros (sign bit ignored: -0 is zero), then the lowest
    // zeros, at most 2, in increasing order -- never a repeated index.
    int sel[2] = {0, 0};
    int c = 0, nnz = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool nz = ((word >> (8 * i)) & 0x7Fu) != 0;
      nnz += nz;
      if (nz && c < 2) sel[c++] = i;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool nz = ((word >> (8 * i)) & 0x7Fu) != 0;
      if (!nz && c < 2) sel[c++] = i;
    }
    if (sel[0] > sel[1]) { const int t = sel[0]; sel[0] = sel[1]; sel[1] = t; }
    bad += nnz > 2;

    const uint32_t v0 = (word >> (8 * sel[0])) & 0xFFu, v1 = (word >> (8 * sel[1])) & 0xFFu;
    const int vb = 2 * g;  // value byte index within the 64 of this block
    vals[vb / 4] |= (v0 | (v1 << 8)) << (8 * (vb % 4));
    const uint32_t nibble = uint32_t(sel[0]) | (uint32_t(sel[1]) << 2);
    meta_words[g / 8] |= nibble << (4 * (g % 8));  // group g -> byte g/2, low nibble if g even
  }

  if (real) {
    uint4* vout = reinterpret_cast<uint4*>(values + row * (k / 2) + kb * (kMetaK / 2));
#pragma unroll
    for (int i = 0; i < kMetaK / 2 / 16; ++i) vout[i] = make_uint4(vals[4 * i], vals[4 * i + 1], vals[4 * i + 2], vals[4 * i + 3]);
  }
  const int64_t row_blocks = gridDim.x;
  uint8_t* mout = meta + ((kb * row_blocks + blockIdx.x) * kMetaRows + threadIdx.x) * kBytesPerRow;
  *reinterpret_cast<uint4*>(mout) = make_uint4(meta_words[0], meta_words[1], meta_words[2], meta_words[3]);
  if (bad) atomicAdd(bad_groups, bad);
}

}  // namespace

cudaError_t compress(const uint8_t* w, uint8_t* values, uint8_t* meta, int* bad_groups, int64_t n, int64_t k,
                     cudaStream_t stream) {
  if (n == 0 || k == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(n, kMetaRows)), static_cast<unsigned>(k / kMetaK));
  compress_kernel<<<grid, kMetaRows, 0, stream>>>(w, values, meta, bad_groups, n, k);
  return cudaGetLastError();
}

}  // namespace qk::sparse24
