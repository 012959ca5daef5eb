// SPDX-License-Identifier: Apache-2.0
//
// NAMO-D (the NAMO paper): NAMO with one adaptive factor per column.
#pragma once

#include "orthopt/rules/namo.hpp"
#include "orthopt/rules/rule_base.hpp"

namespace orthopt {

namespace detail {
/// NAMO-D's per-column step (minxin-zhg/namo): V_j ← μ2V_j + (1−μ2)‖G[:,j]‖²; d_j = ‖U[:,j]‖/(√V_j + ε);
/// with 0 < c ≤ 1, d_j is clamped to [c·d̄, d̄/c] around the mean d̄ of the finite d_j (when d̄ is
/// finite and > 0); decay_j = max(1 − λ·min(d_j·base, 1), 0), step_j = min(d_j·base·0.2·√max(A,B), 1).
/// On entry g holds ‖G[:,j]‖ and u holds ‖U[:,j]‖; on exit g holds decay_j and u holds step_j.
struct namo_d_scale {
  scalar_t* g;
  scalar_t* u;
  scalar_t* v;
  index_t cols;
  double mu2, eps, base, wd, rms, clamp;
  ORTHOPT_HD void operator()() const {
    double sum = 0.0;
    index_t finite = 0;
    for (index_t j = 0; j < cols; ++j) {
      v[j] = mu2 * v[j] + (1.0 - mu2) * g[j] * g[j];
      const double d = u[j] / (::sqrt(v[j]) + eps);
      u[j] = d;
      if (d - d == 0.0) {  // finite
        sum += d;
        ++finite;
      }
    }
    const double mean = finite > 0 ? sum / static_cast<double>(finite) : 0.0;
    const bool do_clamp = clamp > 0.0 && clamp <= 1.0 && mean > 0.0 && mean - mean == 0.0;
    for (index_t j = 0; j < cols; ++j) {
      double d = u[j];
      if (do_clamp) {
        const double lo = clamp * mean, hi = mean / clamp;
        d = d < lo ? lo : (d > hi ? hi : d);
      }
      const double a = d * base;
      const double decay = 1.0 - wd * (a < 1.0 ? a : 1.0);
      g[j] = decay > 0.0 ? decay : 0.0;
      const double step = a * rms;
      u[j] = step < 1.0 ? step : 1.0;
    }
  }
};
}  // namespace detail

/// NAMO-D (the NAMO paper; its authors' code): NAMO with one adaptive factor per column (input feature),
/// clamped around their mean by c = column_clamp. Only the authors' code form exists; presets in
/// namo_d_presets (code with c = 0.75, gpt2_small with c = 0.01).
template <class T, class Backend>
class namo_d : public detail::rule_base<namo_d<T, Backend>, T, Backend, namo_options> {
  using base = detail::rule_base<namo_d<T, Backend>, T, Backend, namo_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::namo_d;
  static constexpr const char* name = "namo_d";
  /// Besides the momentum: one v per column.
  static constexpr state_layout layout{.column_moment = state_layout::columns::per_column};
  explicit namo_d(namo_options o = namo_d_presets::code(), Backend be = Backend{}) : base(std::move(o), std::move(be)) {}

  /// NAMO's limits (a column's ‖G[:,j]‖² is at most ‖G‖²).
  static step_limits limits_of(const namo_options& o, index_t rows, index_t cols) {
    return namo<T, Backend>::namo_limits(o, rows, cols);
  }

  /// Only the code form exists for NAMO-D: a paper form, set at construction or later through
  /// options(), is refused (value_error) rather than ignored.
  static void check_options(const namo_options& o) {
    if (o.form != namo_form::code) {
      throw value_error("orthopt::namo_d: only the code form exists for NAMO-D (preset '" + o.preset + "')");
    }
  }

 private:
  static constexpr bool orthogonalizes = true;
  static const orthogonalizer* ortho_of(const namo_options& o) { return &o.ortho; }
  matrix_view<T> direction_of(const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, index_t slot, std::int64_t) {
    const namo_options& o = this->options_;
    Backend& be = this->backend_;
    scalar_t* g_cols = s.scalars(slot) + 4;
    scalar_t* u_cols = g_cols + G.cols;
    column_norms(be, G, column_norm::l2, g_cols);
    const matrix_view<T> U =
        stages::momentum_direction(be, momentum_kind::ema, o.mu1, o.nesterov, G, s.momentum(k), s.direction(slot));
    column_norms(be, U.as_const(), column_norm::l2, u_cols);
    return U;
  }
  void apply_update(matrix_view<T> W, const_matrix_view<T>, param_state<T, Backend>& s, index_t k, index_t slot,
                    std::int64_t t) {
    const namo_options& o = this->options_;
    Backend& be = this->backend_;
    scalar_t* g_cols = s.scalars(slot) + 4;
    scalar_t* u_cols = g_cols + W.cols;
    const double td = static_cast<double>(t);
    const double base = o.lr * std::sqrt(1.0 - std::pow(o.mu2, td)) / ((1.0 - std::pow(o.mu1, td)) + 1e-12);
    const double rms = o.rms_scale * std::sqrt(static_cast<double>(std::max(W.rows, W.cols)));
    run_scalar(be, detail::namo_d_scale{g_cols, u_cols, s.column_moment(k).data, W.cols, o.mu2, o.eps, base,
                                        o.weight_decay, rms, o.column_clamp});
    stages::decay_and_update_columns(be, W, s.ortho_out(slot), g_cols, u_cols);
  }
};

}  // namespace orthopt
