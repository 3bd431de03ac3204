// W4A16 Hopper path: the plain C++ interface between the torch glue (w4a16_hopper_torch.cpp)
// and the sm90a kernels (kernels/sm90_*.cu). The math and the weight layout are specified by
// qkernels/reference/w4a16_hopper.py and described in README.md ("Hopper path").
//
// All pointers are device pointers on `stream`, contiguous. Launchers return the launch's
// cudaError_t (cudaErrorNotSupported when CUTLASS's can_implement rejects the problem).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cuda_utils.h"

namespace qk::w4a16::hopper {

// Shape constraints (the same as the Marlin-style path, so one padded layer serves both):
// N % 64 (weight rows; TMA boxes of 64/128 rows, 16-row layout atoms) and K % 128 (the group
// sizes divide K; 16-column layout atoms; TMA's 16-byte row pitch).
inline constexpr int kAlignN = 64;
inline constexpr int kAlignK = 128;
// The prepacked weight is int32 [K / 16, N / 16, kWordsPerAtom]: one 16 x 16 layout atom
// (256 nibbles = 32 words) per (k block, n block), k blocks outermost. Inside an atom, element
// (r, c) (r: weight row, c: k, both 0..15) is nibble i of word `lane`:
//   lane = 4 (r % 8) + (c % 8) / 2,   i = r / 8 + 2 (c / 8) + 4 (c % 2)
// and the nibble holds q as two's-complement int4 (q = u - 8: the checkpoint's nibble u ^ 8).
// Why (and the proof that this is the layout CUTLASS's collective reads): sm90_w4a16_layout.cuh.
inline constexpr int kAtomRows = 16, kAtomCols = 16, kWordsPerAtom = 32;

__host__ __device__ constexpr int atom_lane(int r, int c) { return 4 * (r % 8) + (c % 8) / 2; }
__host__ __device__ constexpr int atom_nibble(int r, int c) { return r / 8 + 2 * (c / 8) + 4 * (c % 2); }
// The inverse: the (r, c) held by nibble i of word `lane`.
__host__ __device__ constexpr int atom_row(int lane, int i) { return lane / 4 + 8 * (i & 1); }
__host__ __device__ constexpr int atom_col(int lane, int i) { return 2 * (lane % 4) + 8 * ((i >> 1) & 1) + ((i >> 2) & 1); }

// Tile configurations (kernels/sm90_w4a16_gemm.cuh), weight rows x tokens x k, both cooperative
// with a 2 x 1 cluster: "medium" 128 x 128 x 64 and "large" 128 x 256 x 64. Which one runs for a
// given M is the dispatch key's table (w4a16_hopper_torch.cpp, core/dispatch.h); its compiled-in
// default switches to the large tile at kLargeMinM tokens (a prediction, to be tuned on an H100).
inline constexpr int kLargeMinM = 512;
// The k tile of both configs. CUTLASS 4.2's sm90 mixed-input collective needs at least 4 wgmma
// k-blocks per k tile (TileK >= 64 for 16-bit MMA) and reads one scale row per k tile, so the
// group size must be a multiple of 64 or the whole K: group 32 is not supported on this path
// (the Marlin-style path serves it).
inline constexpr int kTileK = 64;

struct GemmArgs {
  const void* a;          // [m, k] activations (fp16/bf16), already permuted for act-order
  const uint32_t* b;      // [k/16, n/16, 32] prepacked int4 weights (w4a16_hopper_prepack)
  const void* scales;     // [groups, n] in the activation dtype
  const void* zeros;      // [groups, n] additive zero term z' = (8 - z) * s in the activation dtype (0: symmetric)
  const void* bias;       // [n] in the activation dtype, or null
  void* c;                // [m, n] output, activation dtype
  int m, n, k;
  int group_size;         // 64, 128, or k for per channel (a multiple of kTileK, or k)
  int sm_count;           // persistent grid size
  TileSchedulerArgs scheduler;  // the dispatch table's raster order / swizzle (core/cuda_utils.h)
};

// One compiled (tile config, activation dtype): out = a @ dequant(b) (+ bias) with
// dequant(b) = q * s + z' (symmetric weights pass z' = 0: see README). Defined with constant
// initialisers in kernels/sm90_w4a16_<config>_<dtype>.cu; the dispatch keys hold them.
struct Kernel {
  const char* name;    // e.g. "sm90_w4a16_large_bf16"
  const char* config;  // tile / schedule, for humans
  size_t (*workspace_size)(const GemmArgs&);
  cudaError_t (*run)(const GemmArgs&, void* workspace, cudaStream_t stream);
};
extern const Kernel sm90_w4a16_medium_bf16, sm90_w4a16_large_bf16;  // bf16 activations
extern const Kernel sm90_w4a16_medium_f16, sm90_w4a16_large_f16;    // fp16 activations

// compressed-tensors weight_packed [n, k/8] (+ optional act-order perm [k]) -> prepacked
// [k/16, n/16, 32] (kernels/sm90_w4a16_prepack.cu).
cudaError_t prepack(const uint32_t* weight_packed, const int32_t* perm, uint32_t* out, int n, int k,
                    cudaStream_t stream);

}  // namespace qk::w4a16::hopper
