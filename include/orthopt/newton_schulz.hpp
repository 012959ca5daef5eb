// SPDX-License-Identifier: Apache-2.0
//
// The Newton–Schulz polar approximation, written once over the backend concept (orthopt/backend.hpp).
//
//   X ← X / norm(X);  for k = 1..T:  A = X·Xᵀ;  B = b_k·A + c_k·A·A;  X ← a_k·X + B·X
//
// on the wide orientation (a tall input is processed as its transpose so the Gram matrix A is the small
// side), following Jordan 2024 (KellerJordan/Muon) and Amsel et al. 2025 (Polar Express). Both symmetric
// products are rank-k updates (syrk); a_k·X is folded into the last product as B + a_k·I.
#pragma once

#include <math.h>  // ::ldexp, ::ilogb, ::sqrt, INFINITY, NAN: the names a CUDA device function can call too

#include <cmath>
#include <string>
#include <utility>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/ns_schedule.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

namespace detail {

/// factor[0]·factor[1] ← the multiplier that normalizes X, from its norm n = ‖X‖_F.
///
/// The reference formulas divide by n + ε, max(n, ε) or n(1 + s) + ε. An absolute ε breaks scale
/// invariance for small n (‖X‖ = 1e-30 would be divided by ~1e-7 and come out degenerate), so orthopt
/// applies ε relative to n: it divides by n·(1 + s + ε) (frobenius: s = 0; frobenius_clamp: by n,
/// since the clamp only ever acts on a zero matrix, handled apart). This equals the reference formula
/// at n = 1, differs from it by less than ε relative elsewhere, and makes the result exactly invariant
/// to positive scaling. AOL normalizes by n, then applies its own row scaling.
/// The multiplier 1/(n(1 + s + ε)) is formed as 2^e/(n·2^e·(1 + s + ε)) with 2^e split over two factors:
/// for double data with a subnormal norm, 1/n alone exceeds the double range.
struct ns_normalization_factor {
  const scalar_t* norm;  // count entries
  scalar_t* factor;      // two entries per matrix
  index_t count;
  ns_normalization kind;
  double eps;
  double safety;
  ORTHOPT_HD void operator()() const {
    for (index_t k = 0; k < count; ++k) one(norm[k], factor + 2 * k);
  }
  ORTHOPT_HD void one(double n, scalar_t* f) const {
    if (!(n > 0.0) || !(n < INFINITY)) {
      // Zero input → zero output. NaN or Inf (only reachable with check_finite off) propagates as NaN.
      f[0] = 1.0;
      f[1] = (n == 0.0) ? 0.0 : NAN;
      return;
    }
    const int e = -::ilogb(n);
    const double unit = ::ldexp(::ldexp(n, e / 2), e - e / 2);  // n·2^e, exact, in [1, 2)
    double d = unit;
    switch (kind) {
      case ns_normalization::frobenius: d = unit * (1.0 + eps); break;
      case ns_normalization::frobenius_clamp: d = unit; break;
      case ns_normalization::safety: d = unit * (1.0 + safety + eps); break;
      case ns_normalization::aol: d = unit; break;
    }
    f[0] = ::ldexp(1.0, e / 2);
    f[1] = ::ldexp(1.0 / d, e - e / 2);
  }
};

/// y = (x·f[0])·f[1] in double, rounded once to the element type; matrix k of a batch uses f + 2k.
struct scale_by_factor_pair {
  const scalar_t* f;
  template <class T>
  ORTHOPT_HD T operator()(T x) const noexcept {
    return static_cast<T>((static_cast<scalar_t>(x) * f[0]) * f[1]);
  }
  ORTHOPT_HD scale_by_factor_pair at(index_t k) const noexcept { return {f + 2 * k}; }
};

/// s_i ← 1/√max(s_i, ε): the AOL row scale from the absolute row sums of A = XXᵀ.
struct aol_row_scale {
  double eps;
  ORTHOPT_HD double operator()(double row_sum) const {
    const double v = row_sum > eps ? row_sum : eps;
    return 1.0 / ::sqrt(v);
  }
};

}  // namespace detail

/// A Newton–Schulz plan for one input shape. Construction sizes every buffer; a call allocates nothing.
///
/// `q = NS(x)` accepts any strides for x and q (either storage order, blocks, transposes). q may be x
/// itself or overlap it: x is read completely before q is written. A plan is not safe to call from two
/// threads at once; give each thread its own plan (and backend handle).
///
/// Errors (thrown before anything is written): shape_error for an empty matrix, a shape other than the
/// plan's, an output of another shape, or a non-positive stride; value_error for a NaN or Inf entry,
/// naming its position and value (unless config.check_finite is false, in which case NaN propagates).
/// Documented results: a zero matrix maps to the zero matrix; NS is invariant to positive scaling of x
/// over the whole finite range (‖x‖ from 1e-30 to 1e30 gives the same result up to rounding).
///
/// Batches: a plan made with batch_capacity = B runs up to B matrices of a batch_view together, every
/// stage of the iteration one batched primitive (on the CUDA backend one strided-batched GEMM launch
/// per product for the whole batch); a longer batch runs in chunks of B. The CPU backends loop over the
/// matrices either way. Each matrix's result is the same as a single call's.
template <class T, class Backend>
  requires backend_for<Backend, T>
class newton_schulz {
 public:
  using value_type = T;
  using backend_type = Backend;

  newton_schulz(index_t rows, index_t cols, ns_config config, Backend backend = Backend{}, index_t batch_capacity = 1)
      : backend_(std::move(backend)), config_(std::move(config)), rows_(rows), cols_(cols), capacity_(batch_capacity) {
    if (rows < 1 || cols < 1) {
      throw shape_error("orthopt::newton_schulz: cannot plan for an empty " + shape_string(rows, cols) + " matrix");
    }
    if (batch_capacity < 1) {
      throw shape_error("orthopt::newton_schulz: batch_capacity = " + std::to_string(batch_capacity) + " < 1");
    }
    config_.validate();
    small_ = rows < cols ? rows : cols;
    large_ = rows < cols ? cols : rows;
    x_ = backend_.template allocate<T>(capacity_ * small_ * large_);
    x_next_ = backend_.template allocate<T>(capacity_ * small_ * large_);
    gram_ = backend_.template allocate<T>(capacity_ * small_ * small_);
    poly_ = backend_.template allocate<T>(capacity_ * small_ * small_);
    scalars_ = backend_.template allocate<scalar_t>(capacity_ * (3 + small_));
    prepare_syrk<T>(backend_, small_, large_);
    prepare_syrk<T>(backend_, small_, small_);
    prepare_gemm<T>(backend_, small_, large_, small_);
  }

  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] const ns_config& config() const noexcept { return config_; }
  /// How many matrices of a batch run together.
  [[nodiscard]] index_t batch_capacity() const noexcept { return capacity_; }
  [[nodiscard]] Backend& backend() noexcept { return backend_; }

  /// Change the step count for later calls (no allocation); the adaptive budget uses this.
  void set_steps(int steps) {
    if (steps < 1) throw value_error("orthopt::newton_schulz::set_steps: steps = " + std::to_string(steps) + " < 1");
    config_.steps = steps;
  }

  /// q ← NS(x).
  void operator()(const_matrix_view<T> x, matrix_view<T> q) {
    check(x, q);
    run(batch_view<const T>(x, 1, 0), batch_view<T>(q, 1, 0));
  }

  /// q[k] ← NS(x[k]) for every matrix of a batch (e.g. stacked MoE experts [E, M, N]).
  void operator()(batch_view<const T> x, batch_view<T> q) {
    static constexpr const char* who = "orthopt::newton_schulz";
    if (x.count != q.count) {
      throw shape_error(std::string(who) + ": input batch has " + std::to_string(x.count) +
                        " matrices but output batch has " + std::to_string(q.count));
    }
    for (index_t k = 0; k < x.count; ++k) check(x[k], q[k], k);
    for (index_t k0 = 0; k0 < x.count; k0 += capacity_) {
      const index_t n = x.count - k0 < capacity_ ? x.count - k0 : capacity_;
      run(batch_view<const T>(x[k0], n, x.batch_stride), batch_view<T>(q[k0], n, q.batch_stride));
    }
  }

 private:
  // The checks build no string unless they throw: a call must not allocate.
  void check(const_matrix_view<T> x, matrix_view<T> q, index_t batch_index = -1) {
    const auto who = [batch_index] {
      return batch_index < 0 ? std::string("orthopt::newton_schulz")
                             : "orthopt::newton_schulz (batch item " + std::to_string(batch_index) + ")";
    };
    if (!view_is_usable(x) || !view_is_usable(q)) {
      check_view(x, who().c_str(), "input");
      check_view(q, who().c_str(), "output");
    }
    if (x.rows != rows_ || x.cols != cols_) {
      throw shape_error(who() + ": input is " + shape_string(x) + " but the plan was made for " +
                        shape_string(rows_, cols_));
    }
    if (q.rows != x.rows || q.cols != x.cols) check_shape(q, x.rows, x.cols, who().c_str(), "output");
    if (config_.check_finite) {
      if (const auto bad = find_nonfinite(backend_, x)) {
        throw value_error(who() + ": input(" + std::to_string(bad->row) + ", " + std::to_string(bad->col) +
                          ") is " + std::to_string(bad->value) + "; NaN and Inf inputs are rejected");
      }
    }
  }

  /// The iteration on x.count ≤ capacity_ matrices at once; every stage is one batched primitive.
  void run(batch_view<const T> x_in, batch_view<T> q_out) {
    const index_t count = x_in.count;
    // Work on the wide orientation: X is small_ × large_.
    const bool tall = x_in.rows() > x_in.cols();
    const batch_view<const T> x_src{tall ? x_in.first.transposed() : x_in.first, count, x_in.batch_stride};
    const batch_view<T> q{tall ? q_out.first.transposed() : q_out.first, count, q_out.batch_stride};

    // X is stored in the input's storage order, so that the copies in and out run along unit strides
    // (a column-major input would otherwise be transposed on the way in and on the way out).
    const bool col_major = x_src.first.row_stride < x_src.first.col_stride;
    const index_t x_size = small_ * large_, g_size = small_ * small_;
    const auto iterate_batch = [&](T* p) {
      return batch_view<T>(col_major ? col_major_view(p, small_, large_) : row_major_view(p, small_, large_), count,
                           x_size);
    };
    batch_view<T> X = iterate_batch(x_.data());
    batch_view<T> X_next = iterate_batch(x_next_.data());
    const batch_view<T> G{row_major_view(gram_.data(), small_, small_), count, g_size};
    const batch_view<T> P{row_major_view(poly_.data(), small_, small_), count, g_size};
    // The Gram and polynomial matrices of the whole batch as one contiguous matrix, and their diagonals
    // (count × small_: diagonal entry i of matrix k).
    const matrix_view<T> G_all = row_major_view(gram_.data(), count * small_, small_);
    const matrix_view<T> P_all = row_major_view(poly_.data(), count * small_, small_);
    const matrix_view<T> P_diagonals(poly_.data(), count, small_, g_size, small_ + 1);
    scalar_t* norms = scalars_.data();
    scalar_t* factors = scalars_.data() + capacity_;    // two per matrix
    scalar_t* row_scale = scalars_.data() + 3 * capacity_;  // small_ per matrix

    frobenius_norms(backend_, x_src, norms);
    run_scalar(backend_, detail::ns_normalization_factor{norms, factors, count, config_.normalization, config_.eps,
                                                         config_.safety});
    transform_batched(backend_, x_src, X, detail::scale_by_factor_pair{factors});

    using C = compute_t<T>;  // α, β and the coefficients: never rounded to a 16-bit storage type
    const bool aol = config_.normalization == ns_normalization::aol;
    if (aol) {
      // AOL (Turbo-Muon): rescale rows by 1/√(absolute row sums of XXᵀ); A is rescaled on both sides and
      // reused by the first step.
      syrk_batched(backend_, C(1), X.as_const_batch(), C(0), G);
      for (index_t k = 0; k < count; ++k) column_norms(backend_, G[k].as_const(), column_norm::l1, row_scale + k * small_);
      const matrix_view<scalar_t> s = col_major_view(row_scale, count * small_, 1);
      transform(backend_, s, s, detail::aol_row_scale{config_.eps});
      for (index_t k = 0; k < count; ++k) {
        scale_columns(backend_, row_scale + k * small_, X[k].transposed());
        scale_columns(backend_, row_scale + k * small_, G[k]);
        scale_columns(backend_, row_scale + k * small_, G[k].transposed());
      }
    }

    for (int k = 1; k <= config_.steps; ++k) {
      const ns_coefficients& coef = config_.step(k);
      if (!(aol && k == 1)) syrk_batched(backend_, C(1), X.as_const_batch(), C(0), G);
      // P = b·A + c·A·A + a·I  (A·A = A·Aᵀ: A is symmetric)
      transform(backend_, G_all, P_all, functors::scale_by<T>{static_cast<C>(coef.b)});
      if (coef.c != 0.0) syrk_batched(backend_, static_cast<C>(coef.c), G.as_const_batch(), C(1), P);
      transform(backend_, P_diagonals, P_diagonals, functors::add_constant<T>{static_cast<C>(coef.a)});
      gemm_batched(backend_, C(1), P.as_const_batch(), op::none, X.as_const_batch(), op::none, C(0), X_next);
      std::swap(X, X_next);
    }
    transform_batched(backend_, X.as_const_batch(), q, functors::identity{});
  }

  Backend backend_;
  ns_config config_;
  index_t rows_ = 0, cols_ = 0, capacity_ = 1, small_ = 0, large_ = 0;
  typename Backend::template buffer<T> x_, x_next_, gram_, poly_;
  typename Backend::template buffer<scalar_t> scalars_;
};

}  // namespace orthopt
