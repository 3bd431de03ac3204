// CUTLASS 2.x epilogue visitor (EVT) nodes that CUTLASS lacks: a row broadcast whose
// vector-or-scalar choice is made at run time (per-channel or per-tensor weight scale),
// so one kernel serves both granularities.
//
// CUTLASS's VisitorColBroadcast already handles the column case (one value per row m,
// per-token or per-tensor activation scale) with a run-time stride of 1 or 0: it loads
// element by element. Its VisitorRowBroadcast loads 16-byte vectors, which a stride of
// 0 would turn into reads past a one-element scale, hence this node.
#pragma once
#include "cutlass/gemm/gemm.h"
#include "cutlass/epilogue/threadblock/fusion/visitors.hpp"

namespace qk::scaled_mm::c2x {

using namespace cute;
using cutlass::epilogue::threadblock::EmptyCallbacks;

// Row vector (ptr[n], per_col) or scalar (ptr[0]) broadcast. Adapted from CUTLASS's
// VisitorRowBroadcast (visitor_load.hpp), with the run-time scalar branch added.
template <class ThreadMap, class Element>
struct VisitorRowOrScalarBroadcast {
  struct Arguments {
    Element const* ptr_row = nullptr;
    bool per_col = false;  // false: every column uses ptr_row[0]
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }

  struct SharedStorage {};

  static int constexpr vec_bits = ThreadMap::kElementsPerAccess * cutlass::sizeof_bits<Element>::value;
  using VecType = cutlass::uint_bit_t<cute::min(128, vec_bits)>;
  static int constexpr VecLength = sizeof(VecType) / sizeof(Element);

  CUTLASS_HOST_DEVICE VisitorRowOrScalarBroadcast() {}
  CUTLASS_HOST_DEVICE VisitorRowOrScalarBroadcast(Params const& params, SharedStorage const&) : params_ptr(&params) {}

  Params const* params_ptr;

  template <class GTensor, class RTensor, class CTensor, class ProblemShape>
  struct Callbacks : EmptyCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor&& tC_gRow, RTensor&& tC_rRow, CTensor&& tC_cRow, ProblemShape problem_shape,
                             Params const* params_ptr)
        : tC_gRow(cute::forward<GTensor>(tC_gRow)),
          tC_rRow(cute::forward<RTensor>(tC_rRow)),
          tC_cRow(cute::forward<CTensor>(tC_cRow)),
          n(get<1>(problem_shape)),
          params_ptr(params_ptr) {}

    GTensor tC_gRow;
    RTensor tC_rRow;
    CTensor tC_cRow;
    int n;
    Params const* params_ptr;

    CUTLASS_DEVICE void begin_epilogue() {
      if (!params_ptr->per_col) {
        auto rows = recast<cutlass::Array<Element, VecLength>>(coalesce(tC_rRow));
        Element const value = *params_ptr->ptr_row;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(rows); ++i) rows[i].fill(value);
        return;
      }
      clear(tC_rRow);
      auto src_v = filter(tC_gRow);
      auto coord_v = filter(tC_cRow);
      auto dst_v = filter(tC_rRow);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(src_v); ++i) {
        bool guard = get<1>(coord_v(i)) < n;
        cutlass::arch::global_load<VecType, sizeof(VecType)>(dst_v(i), (void const*)&src_v(i), guard);
      }
    }

    template <class ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE auto visit(int iter_idx, int row_idx, int column_idx, int frg_idx,
                              cutlass::Array<ElementAccumulator, FragmentSize> const& frg_acc) {
      Tensor rRow_frg = recast<cutlass::Array<Element, FragmentSize>>(coalesce(tC_rRow));
      return rRow_frg(column_idx);
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord threadblock_tile_offset, int thread_idx,
                                    ProblemShape problem_shape) {
    Tensor mRow = make_tensor(make_gmem_ptr(params_ptr->ptr_row), problem_shape, Stride<_0, _1, _0>{});
    Tensor tC_gRow = recast<VecType>(ThreadMap::partition(mRow, thread_idx, threadblock_tile_offset))(
        _, _, _0{}, _0{}, _0{}, _0{});
    Tensor tC_rRow = make_tensor_like(tC_gRow);
    Tensor cRow = make_identity_tensor(mRow.shape());
    Tensor tC_cRow = outer_partition(
        ThreadMap::partition(cRow, thread_idx, threadblock_tile_offset)(_, _, _0{}, _0{}, _0{}, _0{}),
        Shape<Int<VecLength>>{}, (_0{}));
    return Callbacks<decltype(tC_gRow), decltype(tC_rRow), decltype(tC_cRow), ProblemShape>(
        cute::move(tC_gRow), cute::move(tC_rRow), cute::move(tC_cRow), problem_shape, params_ptr);
  }
};

}  // namespace qk::scaled_mm::c2x
