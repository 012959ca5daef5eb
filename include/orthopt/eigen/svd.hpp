// SPDX-License-Identifier: Apache-2.0
//
// The Eigen backend's thin SVD for exact_polar: JacobiSVD (one-sided Jacobi after a column-pivoting QR
// preconditioner), chosen over BDCSVD because its compute() reuses the buffers it was constructed with,
// so a call allocates nothing once the workspace exists; it is also the more accurate of the two.
#pragma once

#include <Eigen/SVD>
#include <limits>

#include "orthopt/eigen/backend.hpp"

namespace orthopt {

template <class T>
class eigen_backend::svd_workspace {
 public:
  svd_workspace() = default;
  /// For tall inputs: rows ≥ cols.
  svd_workspace(eigen_backend&, index_t rows, index_t cols)
      : a_(rows, cols), svd_(rows, cols, Eigen::ComputeThinU | Eigen::ComputeThinV) {}

  /// U (rows×cols), V (cols×cols), sigma (cols, decreasing) of the thin SVD of x.
  void compute(eigen_backend& be, const_matrix_view<T> x, matrix_view<T> U, matrix_view<T> V, scalar_t* sigma) {
    transform(be, x, make_view(a_), functors::identity{});
    if (!a_.allFinite()) {
      // JacobiSVD stops at a NaN or Inf entry and leaves U, V and σ unwritten (the previous call's
      // factors, or uninitialized memory on a first call); Eigen 3.4 also keeps reporting the failure in
      // info() on every later call. So the input is checked here (one pass, against the SVD's O(mn²)) and
      // never reaches compute(). The polar factor of such an input is NaN, as documented: NaN is written
      // everywhere, as the CUDA backend does when cuSOLVER reports info ≠ 0.
      const auto nan = [](T) { return std::numeric_limits<T>::quiet_NaN(); };
      transform(be, make_const_view(a_), U, nan);
      transform(be, make_const_view(a_).block(0, 0, V.rows, V.cols), V, nan);
      for (index_t i = 0; i < V.cols; ++i) sigma[i] = std::numeric_limits<scalar_t>::quiet_NaN();
      return;
    }
    svd_.compute(a_, Eigen::ComputeThinU | Eigen::ComputeThinV);
    transform(be, make_const_view(svd_.matrixU()), U, functors::identity{});
    transform(be, make_const_view(svd_.matrixV()), V, functors::identity{});
    const auto& s = svd_.singularValues();
    for (Eigen::Index i = 0; i < s.size(); ++i) sigma[i] = static_cast<scalar_t>(s[i]);
  }

 private:
  using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  matrix a_;
  Eigen::JacobiSVD<matrix, Eigen::ColPivHouseholderQRPreconditioner> svd_;
};

}  // namespace orthopt
