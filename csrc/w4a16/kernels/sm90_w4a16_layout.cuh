// The prepacked int4 weight layout of the Hopper W4A16 path, as a CuTe layout (used by the GEMM
// through TMA) and as the closed form the prepack kernel and qkernels/reference/w4a16_hopper.py
// implement. A static_assert below proves the two agree, so a change on either side fails the
// build instead of producing wrong numbers.
//
// Why this layout: wgmma takes its A operand (here: the dequantised weights; the GEMM is run
// transposed, out^T = W . a^T) from registers, in the m64k16 fragment order: lane l of a warp
// holds rows r = l / 4 and r + 8 of its warp's 16 rows, columns 2t, 2t + 1, 2t + 8, 2t + 9
// (t = l % 4). In a plain K-major int4 matrix these 8 nibbles are 4 separate bytes. Here each
// lane's 8 nibbles are one 32-bit word (one shared-memory load instead of four byte loads), and
// inside the word they are in the order [v0 v2 v4 v6 v1 v3 v5 v7] of the fragment's values
// v0..v7, the order for which CUTLASS's int4 -> fp16/bf16 converter extracts two values per
// lop3 + one sub (cutlass/detail/collective/mixed_input_utils.hpp, LayoutAwareConvertImpl).
// This is the reordering of CUTLASS example 55 (compute_memory_reordering_atom with the value
// shuffle [0,2,4,6,1,3,5,7]), written out here so that it can be checked and documented.
#pragma once
#include "cute/atom/mma_traits_sm90_gmma.hpp"
#include "cute/tensor.hpp"

#include "w4a16/w4a16_hopper.h"

namespace qk::w4a16::hopper {

// Nibble offset of element (r, c) inside one 16 x 16 atom: the closed form of w4a16_hopper.h.
// Across atoms: offset(n, k) = atom_offset(n % 16, k % 16) + 256 (n / 16) + 16 N (k / 16).
__host__ __device__ constexpr int atom_offset(int r, int c) { return 8 * atom_lane(r, c) + atom_nibble(r, c); }

namespace detail {
using namespace cute;

// The register-fragment-ordered atom, derived from the wgmma A layout: invert one warp's
// (thread, value) -> (row, k) map, then give each thread 8 consecutive offsets (its word) in
// the value order ValShuffle.
template <class ElementMma>
constexpr auto weight_atom() {
  using ValShuffle = Layout<Shape<_2, _4>, Stride<_4, _1>>;  // values [0 2 4 6 1 3 5 7] -> word nibbles 0..7
  using Mma = decltype(SM90::GMMA::rs_op_selector<ElementMma, ElementMma, float, Shape<_64, _16, _32>>());
  using Traits = MMA_Traits<Mma>;
  auto tv = typename Traits::ALayout{};                                 // (128 threads, 8 values) -> (m, k) of 64 x 16
  auto warp_mk = shape_div(select<0, 2>(typename Traits::Shape_MNK{}),  // (16, 16): one warp's rows
                           size(typename Traits::ThrID{}) / Int<32>{});
  auto warp_tv = make_layout_like(composition(tv, make_shape(Int<32>{}, size<1>(tv))));
  auto mk_to_tv = right_inverse(warp_tv).with_shape(warp_mk);           // (r, c) -> thread + 32 * value
  auto val_to_off = logical_product(ValShuffle{}, size<1>(tv) / size(ValShuffle{}));
  auto tv_to_off = select<1, 0>(logical_product(val_to_off, make_layout(size<0>(warp_tv))));
  return composition(tv_to_off, mk_to_tv);
}

template <class Atom>
constexpr bool atom_matches_closed_form() {
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      if (Atom{}(r, c) != atom_offset(r, c)) return false;
    }
  }
  return true;
}
}  // namespace detail

template <class ElementMma>
using WeightAtom = decltype(detail::weight_atom<ElementMma>());

// The GEMM's layout type for the weight (N, K, L): atoms tiled N-blocks first, then K-blocks.
template <class ElementMma>
using WeightLayout = decltype(cute::tile_to_shape(WeightAtom<ElementMma>{}, cute::Shape<int, int, int>{}));

template <class ElementMma>
WeightLayout<ElementMma> weight_layout(int n, int k) {
  return cute::tile_to_shape(WeightAtom<ElementMma>{}, cute::make_shape(n, k, 1));
}

// The proof: CuTe's atom is the closed form (all 256 entries), and tiling puts atom (kb, nb) at
// 256 nb + 16 N kb (checked on a static 32 x 32 instance: both strides are visible there).
template <class ElementMma>
constexpr bool check_weight_layout() {
  using namespace cute;
  static_assert(size<0>(WeightAtom<ElementMma>{}) == 16 && size<1>(WeightAtom<ElementMma>{}) == 16,
                "the weight atom must be 16 x 16");
  static_assert(detail::atom_matches_closed_form<WeightAtom<ElementMma>>(),
                "the CuTe weight atom differs from atom_offset(): update the prepack kernel and the reference");
  constexpr auto tiled = tile_to_shape(WeightAtom<ElementMma>{}, Shape<_32, _32, _1>{});
  static_assert(tiled(16, 0, 0) == 256 && tiled(0, 16, 0) == 16 * 32 && tiled(17, 19, 0) == 256 + 512 + atom_offset(1, 3),
                "atoms must be tiled N-blocks first, then K-blocks");
  return true;
}

}  // namespace qk::w4a16::hopper
