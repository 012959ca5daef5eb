// SPDX-License-Identifier: Apache-2.0
//
// NAMO ("Adam Improves Muon", 2026): Muon's orthogonalized direction scaled by an Adam-like scalar.
#pragma once

#include "orthopt/rules/rule_base.hpp"

namespace orthopt {

namespace detail {
/// NAMO's adaptive step (the NAMO paper; the authors' code, minxin-zhg/namo): v ← μ2v + (1−μ2)‖G‖²,
/// then decay and step from α = bias·‖U‖/(√v + ε) in the paper or the code form.
struct namo_scale {
  const scalar_t* g_norm;
  const scalar_t* u_norm;
  scalar_t* v;
  scalar_t* out;
  double mu2, eps, lr, wd, bias, rms, code_form;
  ORTHOPT_HD void operator()() const {
    const double g = *g_norm;
    *v = mu2 * *v + (1.0 - mu2) * g * g;
    const double ratio = *u_norm / (::sqrt(*v) + eps);
    if (code_form != 0.0) {
      const double alpha = lr * bias * ratio;  // bias = √(1−μ2ᵗ)/((1−μ1ᵗ) + 1e-12)
      out[0] = 1.0 - wd * (alpha < 1.0 ? alpha : 1.0);
      const double step = alpha * rms;
      out[1] = step < 1.0 ? step : 1.0;
    } else {
      const double alpha = bias * ratio;  // bias = √(1−μ2ᵗ)/(1−μ1ᵗ)
      out[0] = 1.0 - lr * alpha * wd;
      out[1] = lr * alpha;
    }
  }
};

}  // namespace detail

/// NAMO ("Adam Improves Muon", 2026; docs/references.md): Muon's orthogonalized direction scaled by an Adam-like scalar
/// α = ‖U‖/(√v + ε), v the running mean of ‖G‖². Presets in namo_presets (code, paper).
///
/// Documented behaviour: ε acts as in Adam, so gradients far below ε in norm (1e-30) give steps that
/// shrink with them rather than steps of normal size, as in the authors' code.
template <class T, class Backend>
class namo : public detail::rule_base<namo<T, Backend>, T, Backend, namo_options> {
  using base = detail::rule_base<namo<T, Backend>, T, Backend, namo_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::namo;
  static constexpr const char* name = "namo";
  /// Besides the momentum: the scalar v, the running mean of ‖G‖².
  static constexpr state_layout layout{.column_moment = state_layout::columns::scalar};
  explicit namo(namo_options o = namo_presets::code(), Backend be = Backend{}) : base(std::move(o), std::move(be)) {}

  /// As Muon, and a gradient small enough that ‖G‖² (the running mean v, in double) stays within a
  /// quarter of the double range: |G(i,j)| ≤ √(max double)/(2√(rows·cols)); v within half of it, so
  /// that μ2·v + (1−μ2)·‖G‖² stays there.
  static step_limits limits_of(const namo_options& o, index_t rows, index_t cols) { return namo_limits(o, rows, cols); }
  /// NAMO's limits (NAMO-D uses them too).
  static step_limits namo_limits(const namo_options&, index_t rows, index_t cols) {
    const double l = detail::orthogonalizer_entry_limit<T>(rows, cols);
    const double n = static_cast<double>(rows) * static_cast<double>(cols);
    const double square_cap = std::sqrt(std::numeric_limits<double>::max()) / (2.0 * std::sqrt(n));
    return {std::min(l, square_cap), 1.25 * l, std::numeric_limits<double>::infinity(),
            std::numeric_limits<double>::max() / 2.0};
  }

 private:
  static constexpr bool orthogonalizes = true;
  static const orthogonalizer* ortho_of(const namo_options& o) { return &o.ortho; }
  matrix_view<T> direction_of(const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, index_t slot, std::int64_t) {
    const namo_options& o = this->options_;
    Backend& be = this->backend_;
    const bool code = o.form == namo_form::code;
    scalar_t* sc = s.scalars(slot);
    frobenius_norm(be, G, sc + 2);
    const matrix_view<T> U = stages::momentum_direction(be, momentum_kind::ema, o.mu1, code && o.nesterov, G,
                                                        s.momentum(k), s.direction(slot));
    frobenius_norm(be, U.as_const(), sc + 3);
    return U;
  }
  void apply_update(matrix_view<T> W, const_matrix_view<T>, param_state<T, Backend>& s, index_t k, index_t slot,
                    std::int64_t t) {
    const namo_options& o = this->options_;
    Backend& be = this->backend_;
    const bool code = o.form == namo_form::code;
    scalar_t* sc = s.scalars(slot);
    const double td = static_cast<double>(t);
    const double root = std::sqrt(1.0 - std::pow(o.mu2, td));
    const double bias = code ? root / ((1.0 - std::pow(o.mu1, td)) + 1e-12) : root / (1.0 - std::pow(o.mu1, td));
    const double rms = o.rms_scale * std::sqrt(static_cast<double>(std::max(W.rows, W.cols)));
    run_scalar(be, detail::namo_scale{sc + 2, sc + 3, s.column_moment(k).data, sc, o.mu2, o.eps, o.lr, o.weight_decay,
                                      bias, rms, code ? 1.0 : 0.0});
    stages::decay_and_update(be, W, s.ortho_out(slot).as_const(), sc);
  }
};

}  // namespace orthopt
