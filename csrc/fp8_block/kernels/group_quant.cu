// Per-token-group FP8 (e4m3) quantisation. Spec: qkernels/reference/fp8_block.py.
//
// Memory-bound (read 2 bytes, write 1 byte + 4/G bytes of scale per element): one pass, each
// group of G consecutive elements of a row is owned by G*sizeof(T)/16 threads (8 or 16 for
// 16-bit inputs, 16 or 32 for fp32) that each hold one 16-byte vector of it in registers; the
// group's absmax is reduced with xor-shuffles inside that lane group, the owner lane writes the
// scale in the requested layout, every lane converts and stores its slice (8 or 4 bytes). A
// thread handles kUnroll groups per iteration with their loads issued first (more bytes in
// flight per SM). The conversion uses cvt.rn.satfinite (the reference's clamp(+-448) then a
// round-to-nearest-even cast), and the same float32 operations as the reference in the same
// order (absmax / 448, max with the floor, 1 / s, x * (1 / s)), so results are bit-identical.
#include "fp8_block/fp8_block.h"
#include "quant/kernels/quant_common.cuh"  // Vec, load_vec, to_float, kFp8Max, kFp8MinScale, kThreads

namespace qk::fp8_block {
namespace {

using quant::kFp8Max;
using quant::kFp8MinScale;
using quant::kThreads;
using quant::to_float;
using quant::Vec;

constexpr int kUnroll = 2;

// The smallest power of two >= s for a positive normal float (UE8M0 scales): a non-zero mantissa
// bumps the exponent and clears the mantissa.
__device__ __forceinline__ float ue8m0(float s) {
  const uint32_t bits = __float_as_uint(s);
  return (bits & 0x007FFFFFu) ? __uint_as_float((bits & 0x7F800000u) + 0x00800000u) : s;
}

template <int V> struct Pack;
template <> struct Pack<8> { using type = uint2; };     // 8 fp8 of one 16-bit-input vector
template <> struct Pack<4> { using type = uint32_t; };  // 4 fp8 of one fp32 vector

template <typename T, int G>
__global__ void __launch_bounds__(kThreads)
group_quant_kernel(const T* __restrict__ in, uint8_t* __restrict__ out, float* __restrict__ scales,
                   int64_t scale_row_stride, int64_t scale_group_stride, int64_t groups_per_row, int64_t groups,
                   bool ue8m0_scales, const float* __restrict__ static_scale, bool static_per_group) {
  constexpr int V = Vec<T>::kSize;           // elements per 16-byte vector
  constexpr int kLanes = G / V;              // threads per group
  constexpr int kGroupsPerPass = kThreads / kLanes;
  static_assert(kLanes >= 1 && kLanes <= 32 && (32 % kLanes) == 0, "a group's lanes must sit in one warp");
  const int lane = threadIdx.x % kLanes;
  const int64_t step = int64_t(gridDim.x) * kGroupsPerPass * kUnroll;

  // The loop bound is uniform across the block, so every lane of a warp reaches the shuffles.
  for (int64_t base = int64_t(blockIdx.x) * kGroupsPerPass * kUnroll; base < groups; base += step) {
    Vec<T> x[kUnroll];
    int64_t grp[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      grp[u] = base + u * kGroupsPerPass + threadIdx.x / kLanes;
      if (grp[u] < groups) {
        x[u] = quant::load_vec(in + grp[u] * G + lane * V);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) x[u].v[i] = T(0.0f);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t row = grp[u] / groups_per_row, col_group = grp[u] - row * groups_per_row;
      float s;
      if (static_scale != nullptr) {
        s = static_scale[static_per_group ? col_group : 0];
      } else {
        float m = 0.0f;
#pragma unroll
        for (int i = 0; i < V; ++i) m = fmaxf(m, fabsf(to_float(x[u].v[i])));
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        s = fmaxf(m / kFp8Max, kFp8MinScale);
        if (ue8m0_scales) s = ue8m0(s);
      }
      if (grp[u] >= groups) continue;
      if (lane == 0) scales[row * scale_row_stride + col_group * scale_group_stride] = s;
      const float inv = 1.0f / s;
      union {
        typename Pack<V>::type pack;
        __nv_fp8x2_storage_t pair[V / 2];
      } o;
#pragma unroll
      for (int i = 0; i < V; i += 2) {
        const float2 f = make_float2(to_float(x[u].v[i]) * inv, to_float(x[u].v[i + 1]) * inv);
        o.pair[i / 2] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
      }
      *reinterpret_cast<typename Pack<V>::type*>(out + grp[u] * G + lane * V) = o.pack;
    }
  }
}

int grid_for(int64_t groups, int groups_per_block, int sms) {
  const int64_t want = ceil_div<int64_t>(groups, int64_t(groups_per_block) * kUnroll);
  const int64_t cap = int64_t(sms > 0 ? sms : 1) * 16;  // persistent-ish: at most 16 blocks per SM
  return int(want < 1 ? 1 : (want < cap ? want : cap));
}

template <typename T, int G>
cudaError_t launch(const GroupQuantArgs& p, cudaStream_t stream) {
  const int64_t groups_per_row = p.cols / G;
  const int64_t groups = p.rows * groups_per_row;
  if (groups == 0) return cudaSuccess;
  constexpr int kGroupsPerPass = kThreads / (G / Vec<T>::kSize);
  group_quant_kernel<T, G><<<grid_for(groups, kGroupsPerPass, p.sm_count), kThreads, 0, stream>>>(
      static_cast<const T*>(p.in), p.out, p.scales, p.scale_row_stride, p.scale_group_stride, groups_per_row, groups,
      p.ue8m0, p.static_scale, p.static_per_group);
  return cudaGetLastError();
}

}  // namespace

cudaError_t per_token_group_quant(const GroupQuantArgs& p, cudaStream_t stream) {
  // 16-byte vectors: the glue guarantees a 16-byte aligned input and (cols % G == 0) aligned rows.
  return quant::dispatch_float_input(p.in_dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    switch (p.group_size) {
      case 64: return launch<T, 64>(p, stream);
      case 128: return launch<T, 128>(p, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}

}  // namespace qk::fp8_block
