// SPDX-License-Identifier: Apache-2.0
//
// The shape check and orientation of a gemm call, shared by every backend whose kernels write a
// column-major C (Eigen's, CBLAS, cuBLAS): a row-major C is the transposed problem Cᵀ = op(B)ᵀ·op(A)ᵀ.
#pragma once

#include <string>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/view.hpp"

namespace orthopt::detail {

/// The product C ← α·L·R + β·C a gemm call asks for, with L = op(A) and R = op(B), oriented for
/// kernels that write a column-major C: a row-major C becomes the transposed problem Cᵀ = Rᵀ·Lᵀ.
template <class T>
struct gemm_problem {
  const_matrix_view<T> L, R;
  matrix_view<T> C;
};

/// True when C is row-major (and not also column-major): orient_gemm then computes Cᵀ = op(B)ᵀ·op(A)ᵀ.
template <class T>
constexpr bool gemm_swaps_operands(const matrix_view<T>& C) noexcept {
  return !(C.row_stride == 1 || C.rows == 1) && (C.col_stride == 1 || C.cols == 1);
}

/// Checks that op(A)·op(B) fits C (shape_error naming the three shapes) and orients the problem.
template <class T, class TA, class TB>
gemm_problem<T> orient_gemm(matrix_view<TA> A, op op_a, matrix_view<TB> B, op op_b, matrix_view<T> C) {
  gemm_problem<T> p{op_a == op::transpose ? A.as_const().transposed() : A.as_const(),
                    op_b == op::transpose ? B.as_const().transposed() : B.as_const(), C};
  if (p.L.rows != C.rows || p.R.cols != C.cols || p.L.cols != p.R.rows) {
    throw shape_error("orthopt::gemm: op(A) is " + shape_string(p.L) + ", op(B) is " + shape_string(p.R) +
                      " and C is " + shape_string(C) + "; they do not multiply");
  }
  if (gemm_swaps_operands(C)) {
    p = {p.R.transposed(), p.L.transposed(), C.transposed()};
  }
  return p;
}

}  // namespace orthopt::detail
