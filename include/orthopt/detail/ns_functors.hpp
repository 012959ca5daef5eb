// SPDX-License-Identifier: Apache-2.0
//
// The element-wise and scalar functors of the Newton–Schulz iteration, run on the backend's device by
// transform / run_scalar (orthopt/backend.hpp): the normalization multiplier, its application, AOL's
// row scaling, the orthogonality residual from the Gram matrix and the observation accumulators. The
// plan (orthopt/newton_schulz.hpp) and the tensor-parallel plan
// (orthopt/distributed/tensor_parallel_newton_schulz.hpp) both use them; neither needs the other.
#pragma once

#include <math.h>  // ::ldexp, ::ilogb, ::sqrt, INFINITY, NAN: the names a CUDA device function can call too

#include "orthopt/backend.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/view.hpp"

namespace orthopt::detail {

/// factor[0]·factor[1] ← the multiplier that normalizes X, from its norm n = ‖X‖_F.
///
/// The reference formulas divide by n + ε, max(n, ε) or n(1 + s) + ε. An absolute ε breaks scale
/// invariance for small n (‖X‖ = 1e-30 would be divided by ~1e-7 and come out degenerate), so orthopt
/// applies ε relative to n: it divides by n·(1 + s + ε) (frobenius: s = 0; frobenius_clamp: by n,
/// since the clamp only ever acts on a zero matrix, handled apart). This equals the reference formula
/// at n = 1 and makes the result exactly invariant to positive scaling; elsewhere the multiplier differs
/// from the reference's by the relative amount ε·(1/n − 1)/(1 + ε/n) (frobenius), which grows as n
/// shrinks (2e-6 at n = 0.05 with ε = 1e-7). With `absolute` (ns_config::absolute_eps) the reference
/// formula itself is used: n + ε, max(n, ε), n(1 + s) + ε. AOL normalizes by n, then applies its own
/// row scaling. The multiplier 1/d is formed as 2^e/(d·2^e) with 2^e split over two factors: for double
/// data with a subnormal norm, 1/n alone exceeds the double range.
struct ns_normalization_factor {
  const scalar_t* norm;  // count entries
  scalar_t* factor;      // two entries per matrix
  index_t count;
  ns_normalization kind;
  double eps;
  double safety;
  bool absolute = false;
  /// rows·cols of one matrix. An infinite norm of a finite matrix means its norm overflowed double
  /// (double entries near 1.8e308): the divisor is then the bound 2^1024·√elements ≥ ‖X‖_F, so the
  /// normalized matrix is finite, of norm below 1 (Newton–Schulz orthogonalizes it as it would a smaller
  /// input; scale invariance does not reach there). An Inf entry (check_finite off) stays Inf and makes
  /// the output NaN.
  double elements = 1.0;
  ORTHOPT_HD void operator()() const {
    for (index_t k = 0; k < count; ++k) one(norm[k], factor + 2 * k);
  }
  ORTHOPT_HD void one(double n, scalar_t* f) const {
    if (n == INFINITY) {
      f[0] = ::ldexp(1.0, -512);
      f[1] = ::ldexp(1.0 / ::sqrt(elements), -512);
      return;
    }
    if (!(n > 0.0)) {
      // Zero input → zero output. NaN (only reachable with check_finite off) propagates as NaN.
      f[0] = 1.0;
      f[1] = (n == 0.0) ? 0.0 : NAN;
      return;
    }
    if (n < 2.2250738585072014e-308) {
      // A subnormal norm (double data of subnormal entries) is rounded to a multiple of 4.9e-324: two
      // entries of 4.9e-324 have norm 7e-324, which rounds to 4.9e-324, and dividing by that gives a
      // matrix of norm √2, outside Newton–Schulz's range (it diverged to Inf; found by fuzzing). One
      // smallest subnormal more bounds the true norm from above.
      n += 4.9406564584124654e-324;
    }
    if (absolute) {
      // The sources' formulas, as written (the divisor is at least n, so finite and > 0).
      double d = n;
      switch (kind) {
        case ns_normalization::frobenius: d = n + eps; break;
        case ns_normalization::frobenius_clamp: d = n > eps ? n : eps; break;
        case ns_normalization::safety: d = n * (1.0 + safety) + eps; break;
        case ns_normalization::aol: d = n; break;
      }
      if (!(d < INFINITY)) {  // n(1 + s) + ε beyond the double range (ε or s near 1.8e308): X/d is 0
        f[0] = 1.0;
        f[1] = 0.0;
        return;
      }
      const int e = -::ilogb(d);
      const double unit = ::ldexp(::ldexp(d, e / 2), e - e / 2);  // d·2^e, exact, in [1, 2)
      f[0] = ::ldexp(1.0, e / 2);
      f[1] = ::ldexp(1.0 / unit, e - e / 2);
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

/// s_i ← 1/√max(s_i, ε, tiny): the AOL row scale from the absolute row sums of A = XXᵀ. `tiny` is the
/// smallest normal number of the arithmetic A was formed in: a row whose squares underflowed there has a
/// row sum of 0 however small ε is, and 1/√ε (1e154 for ε = 1e-308) would then carry its entries past the
/// element type's range (found by fuzzing: float data, ε = 2.2e-308, NaN output). Raising a row sum
/// only shrinks the row, so AOL's bound σ ≤ 1 still holds.
struct aol_row_scale {
  double eps;
  double tiny = 0.0;
  ORTHOPT_HD double operator()(double row_sum) const {
    const double floor = eps > tiny ? eps : tiny;
    const double v = row_sum > floor ? row_sum : floor;
    return 1.0 / ::sqrt(v);
  }
};

/// r ← ‖A − I‖_F/√m, the orthogonality residual of X, from ‖A‖_F and tr(A) of its Gram matrix A = X·Xᵀ
/// (m×m): ‖A − I‖²_F = ‖A‖²_F − 2·tr(A) + m holds exactly for the computed entries of A, so the only
/// error is the double rounding of the two sums (relative 1e-16 of m), far below what float data can
/// resolve. One reduction of A and one of its diagonal: a cost of order m², against the m²·n of the
/// product that formed A. NaN stays NaN.
///
/// When `rank` is set (the call's input, j = 0), the same two sums also give (tr A)²/(m·‖A‖²_F): the
/// participation ratio (Σσ²)²/Σσ⁴ of X's singular values — an effective rank, 1/m for rank one, 1 for
/// orthogonal rows — as a fraction of m; scale-free, 0 for a zero matrix.
struct ns_residual_from_gram {
  const scalar_t* gram_norm;
  const scalar_t* trace;
  scalar_t* out;
  double m;
  scalar_t* rank = nullptr;
  ORTHOPT_HD void operator()() const {
    const double g = *gram_norm;
    const double v = g * g - 2.0 * *trace + m;
    *out = v > 0.0 ? ::sqrt(v / m) : (v == v ? 0.0 : v);
    if (rank) *rank = g > 0.0 ? (*trace / g) * (*trace / g) / m : 0.0;
  }
};

/// One observed call of the adaptive budget (orthopt/ns_budget.hpp): from the residuals r_0..r_last of
/// one matrix, the iterations it needed, i.e. the first k with r_k ≤ target, or last + 1 when none was
/// (a censored count); accumulated as acc = [Σ needed, calls, Σ r_last, max needed, Σ effective rank]
/// in backend memory.
struct ns_observe_call {
  const scalar_t* residuals;
  const scalar_t* effective_rank;  // of the call's input, as a fraction of m
  int last;
  double target;
  scalar_t* acc;
  ORTHOPT_HD void operator()() const {
    int needed = last + 1;
    for (int k = 0; k <= last; ++k) {
      if (residuals[k] <= target) {
        needed = k;
        break;
      }
    }
    acc[0] += needed;
    acc[1] += 1.0;
    acc[2] += residuals[last];
    if (needed > acc[3]) acc[3] = needed;
    acc[4] += *effective_rank;
  }
};

/// acc[0..4] ← 0
struct ns_clear_observation {
  scalar_t* acc;
  ORTHOPT_HD void operator()() const { acc[0] = acc[1] = acc[2] = acc[3] = acc[4] = 0.0; }
};

}  // namespace orthopt::detail
