// SPDX-License-Identifier: Apache-2.0
//
// The CUDA backend's thin SVD for exact_polar: cuSOLVER's dense gesvd (QR-based bidiagonalization and
// implicit-shift QR), chosen over gesvdj because its convergence does not depend on a tolerance and a
// sweep limit, and over Xpolar-style iterations because the result must be the exact polar factor that
// the Newton–Schulz tests compare against. gesvd needs rows ≥ cols, which is the orientation
// exact_polar hands it. Workspace (gesvd's work, rwork and info, and copies of the input and factors
// in the compute type) is allocated once, when the plan is made.
//
// bf16 inputs are decomposed in float (cuSOLVER has no bf16 SVD); the factors are rounded to bf16 once.
// A gesvd that reports failure (info ≠ 0) sets every singular value to NaN, so the polar factor comes
// out NaN rather than stale.
#pragma once

#include "orthopt/cuda/backend.hpp"

namespace orthopt {

namespace detail {
/// sigma[i] ← s[i] in double, or NaN for every i when gesvd's info is non-zero.
template <class S>
struct svd_sigma_out {
  const S* s;
  const int* info;
  scalar_t* sigma;
  index_t count;
  ORTHOPT_HD void operator()() const {
    const bool failed = *info != 0;
    for (index_t i = 0; i < count; ++i) sigma[i] = failed ? NAN : static_cast<scalar_t>(s[i]);
  }
};
}  // namespace detail

template <class T>
class cuda_backend::svd_workspace {
  using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // cuSOLVER's type for T

 public:
  svd_workspace() = default;
  /// For tall inputs: rows ≥ cols.
  svd_workspace(cuda_backend& be, index_t rows, index_t cols) : rows_(rows), cols_(cols) {
    if (!detail::fits_int(rows) || !detail::fits_int(cols) || rows < cols) {
      throw shape_error("orthopt::exact_polar (CUDA): cuSOLVER's gesvd takes rows >= cols within the int range, not " +
                        shape_string(rows, cols));
    }
    int lwork = 0;
    const int m = static_cast<int>(rows), n = static_cast<int>(cols);
    if constexpr (std::is_same_v<S, float>) {
      ORTHOPT_CUDA_CHECK(cusolverDnSgesvd_bufferSize(be.cusolver(), m, n, &lwork));
    } else {
      ORTHOPT_CUDA_CHECK(cusolverDnDgesvd_bufferSize(be.cusolver(), m, n, &lwork));
    }
    lwork_ = std::max(lwork, 1);
    a_ = be.allocate<S>(rows * cols);
    u_ = be.allocate<S>(rows * cols);
    vt_ = be.allocate<S>(cols * cols);
    s_ = be.allocate<S>(cols);
    work_ = be.allocate<S>(lwork_);
    rwork_ = be.allocate<S>(std::max<index_t>(cols, 1));
    info_ = be.allocate<int>(1);
  }

  /// U (rows×cols), V (cols×cols), sigma (cols, decreasing) of the thin SVD of x.
  void compute(cuda_backend& be, const_matrix_view<T> x, matrix_view<T> U, matrix_view<T> V, scalar_t* sigma) {
    const int m = static_cast<int>(rows_), n = static_cast<int>(cols_);
    const matrix_view<S> A = col_major_view(a_.data(), rows_, cols_);
    transform(be, x, A, functors::identity{});  // gesvd overwrites its input
    const signed char job = 'S';
    if constexpr (std::is_same_v<S, float>) {
      ORTHOPT_CUDA_CHECK(cusolverDnSgesvd(be.cusolver(), job, job, m, n, a_.data(), m, s_.data(), u_.data(), m,
                                          vt_.data(), n, work_.data(), lwork_, rwork_.data(), info_.data()));
    } else {
      ORTHOPT_CUDA_CHECK(cusolverDnDgesvd(be.cusolver(), job, job, m, n, a_.data(), m, s_.data(), u_.data(), m,
                                          vt_.data(), n, work_.data(), lwork_, rwork_.data(), info_.data()));
    }
    const matrix_view<S> Us = col_major_view(u_.data(), rows_, cols_);
    const matrix_view<S> VTs = col_major_view(vt_.data(), cols_, cols_);
    transform(be, Us, U, functors::identity{});
    transform(be, VTs.transposed(), V, functors::identity{});
    run_scalar(be, detail::svd_sigma_out<S>{s_.data(), info_.data(), sigma, cols_});
  }

 private:
  index_t rows_ = 0, cols_ = 0;
  int lwork_ = 0;
  buffer<S> a_, u_, vt_, s_, work_, rwork_;
  buffer<int> info_;
};

}  // namespace orthopt
