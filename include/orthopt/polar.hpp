// SPDX-License-Identifier: Apache-2.0
//
// The exact polar factor polar(X) = U·Vᵀ from the thin SVD X = U·Σ·Vᵀ, written once over the backend
// concept plus one backend-supplied piece: a thin SVD workspace for tall matrices
// (`Backend::svd_workspace<T>`, e.g. Eigen's JacobiSVD on the CPU).
#pragma once

#include <math.h>  // NAN, usable in device code

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

namespace detail {
/// mask_i ← 1 if σ_i exceeds the numerical-rank threshold max(m, n)·ε_T·σ_max, else 0 (σ sorted
/// decreasing, as every SVD returns it).
struct polar_rank_mask {
  scalar_t* sigma;  // in: singular values; out: the mask
  index_t count;
  double threshold_factor;
  ORTHOPT_HD void operator()() const {
    const double largest = sigma[0];  // read before the loop overwrites sigma[0]
    const double tol = threshold_factor * largest;
    // A NaN σ (a NaN input, or an SVD that failed and said so) makes the whole result NaN, never a
    // silently zero or stale one.
    bool nan = false;
    for (index_t i = 0; i < count; ++i) nan = nan || sigma[i] != sigma[i];
    for (index_t i = 0; i < count; ++i) sigma[i] = nan ? NAN : ((largest > 0.0 && sigma[i] > tol) ? 1.0 : 0.0);
  }
};
}  // namespace detail

/// The exact polar factor for one input shape. Construction sizes every buffer (and the SVD's own); a
/// call allocates nothing.
///
/// Returns U·D·Vᵀ where D_ii = 1 for the singular values above the numerical rank threshold
/// max(m, n)·ε·σ_max and 0 below it: for a full-rank input that is the polar factor (all singular
/// values 1, polar(X)ᵀX symmetric positive definite); a rank-deficient input gets the partial isometry
/// on its range (so a zero input maps to zero, as Newton–Schulz does). Same errors, aliasing and
/// threading rules as newton_schulz.
template <class T, class Backend>
  requires backend_for<Backend, T>
class exact_polar {
 public:
  using value_type = T;
  using backend_type = Backend;

  exact_polar(index_t rows, index_t cols, Backend backend = Backend{}, bool check_finite = true)
      : backend_(std::move(backend)), rows_(rows), cols_(cols), check_finite_(check_finite) {
    if (rows < 1 || cols < 1) {
      throw shape_error("orthopt::exact_polar: cannot plan for an empty " + shape_string(rows, cols) + " matrix");
    }
    small_ = rows < cols ? rows : cols;
    large_ = rows < cols ? cols : rows;
    svd_ = typename Backend::template svd_workspace<T>(backend_, large_, small_);
    u_ = backend_.template allocate<T>(large_ * small_);
    v_ = backend_.template allocate<T>(small_ * small_);
    sigma_ = backend_.template allocate<scalar_t>(small_);
    prepare_gemm<T>(backend_, large_, small_, small_);
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }

  /// q ← polar(x).
  void operator()(const_matrix_view<T> x, matrix_view<T> q) {
    // The checks build no string unless they throw: a call must not allocate.
    static constexpr const char* who = "orthopt::exact_polar";
    if (!view_is_usable(x) || !view_is_usable(q)) {
      check_view(x, who, "input");
      check_view(q, who, "output");
    }
    if (x.rows != rows_ || x.cols != cols_) {
      throw shape_error(std::string(who) + ": input is " + shape_string(x) + " but the plan was made for " +
                        shape_string(rows_, cols_));
    }
    if (q.rows != x.rows || q.cols != x.cols) check_shape(q, x.rows, x.cols, who, "output");
    // q may be x itself (x is read whole by the SVD first); no other overlap (newton_schulz's rule).
    if (view_overlaps_itself(q)) {
      throw shape_error(std::string(who) + ": the output [" + describe_view(q) + "] addresses some elements twice");
    }
    const bool in_place = x.data == q.data && x.row_stride == q.row_stride && x.col_stride == q.col_stride;
    if (!in_place && views_overlap(x, q)) {
      throw shape_error(std::string(who) + ": the output [" + describe_view(q) + "] overlaps the input [" + describe_view(x) +
                        "] without being the same view; only q = x (in place) is allowed");
    }
    if (check_finite_) {
      if (const auto bad = find_nonfinite(backend_, x)) {
        throw value_error(std::string(who) + ": input(" + std::to_string(bad->row) + ", " + std::to_string(bad->col) +
                          ") is " + detail::value_text(bad->value) + "; NaN and Inf inputs are rejected");
      }
    }
    // Work on the tall orientation (large_ × small_).
    const bool wide = x.rows < x.cols;
    const const_matrix_view<T> x_tall = wide ? x.transposed() : x;
    const matrix_view<T> q_tall = wide ? q.transposed() : q;
    const matrix_view<T> U = col_major_view(u_.data(), large_, small_);
    const matrix_view<T> V = col_major_view(v_.data(), small_, small_);
    svd_.compute(backend_, x_tall, U, V, sigma_.data());
    run_scalar(backend_, detail::polar_rank_mask{sigma_.data(), small_,
                                                 static_cast<double>(large_) * storage_epsilon<T>::value});
    scale_columns(backend_, sigma_.data(), U);
    gemm(backend_, compute_t<T>(1), U.as_const(), op::none, V.as_const(), op::transpose, compute_t<T>(0), q_tall);
  }

 private:
  Backend backend_;
  index_t rows_ = 0, cols_ = 0, small_ = 0, large_ = 0;
  bool check_finite_ = true;
  typename Backend::template svd_workspace<T> svd_;
  typename Backend::template buffer<T> u_, v_;
  typename Backend::template buffer<scalar_t> sigma_;
};

}  // namespace orthopt
