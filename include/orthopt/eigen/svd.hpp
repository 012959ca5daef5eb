// SPDX-License-Identifier: Apache-2.0
//
// The Eigen backend's thin SVD for exact_polar: JacobiSVD (one-sided Jacobi after a column-pivoting QR
// preconditioner), chosen over BDCSVD because its compute() reuses the buffers it was constructed with,
// so a call allocates nothing once the workspace exists; it is also the more accurate of the two.
#pragma once

#include <Eigen/SVD>

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
