// SPDX-License-Identifier: Apache-2.0
//
// AdaMuon (Si, Zhang, Shen 2025): the sign map, Newton–Schulz, an element-wise second moment and RMS
// alignment.
#pragma once

#include "orthopt/rules/rule_base.hpp"

namespace orthopt {

namespace detail {
/// AdaMuon's RMS alignment (the AdaMuon paper, Eq. 8): decay = 1 − ηλ, step = η·0.2·√(AB)/(‖Ô‖_F + ε_γ);
/// a zero Ô (zero gradient history) gives step 0 rather than 0/0.
struct adamuon_scale {
  const scalar_t* norm;
  scalar_t* out;
  double lr, decay, rms_target, eps;
  ORTHOPT_HD void operator()() const {
    const double n = *norm + eps;
    out[0] = decay;
    out[1] = n > 0.0 ? lr * rms_target / n : 0.0;
  }
};
}  // namespace detail

/// AdaMuon (Si, Zhang, Shen 2025, Algorithm 1): the sign map before NS, an element-wise second
/// moment of the orthogonalized direction, and RMS alignment to 0.2 (an update of RMS exactly 0.2·η
/// before weight decay). Presets in adamuon_presets (paper, code, code_gpt2, v1).
template <class T, class Backend>
class adamuon : public detail::rule_base<adamuon<T, Backend>, T, Backend, adamuon_options> {
  using base = detail::rule_base<adamuon<T, Backend>, T, Backend, adamuon_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::adamuon;
  static constexpr const char* name = "adamuon";
  /// Besides the momentum: the second moment V of the orthogonalized direction.
  static constexpr state_layout layout{.second_moment = true};
  explicit adamuon(adamuon_options o = adamuon_presets::code(), Backend be = Backend{})
      : base(std::move(o), std::move(be)) {}

  /// As Muon for the gradient and the momentum; V within a quarter of the range, so that βV + (1−β)O²
  /// (O, an orthogonalized matrix, has entries of order 1) stays finite. V ≥ (1−β)O² then keeps O/√V
  /// bounded by 1/√(1−β).
  static step_limits limits_of(const adamuon_options&, index_t rows, index_t cols) {
    const double l = detail::orthogonalizer_entry_limit<T>(rows, cols);
    return {l, 1.25 * l, storage_max<std::remove_cv_t<T>>::value / 4.0};
  }

 private:
  static constexpr bool orthogonalizes = true;
  static const orthogonalizer* ortho_of(const adamuon_options& o) { return &o.ortho; }
  matrix_view<T> direction_of(const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, index_t slot, std::int64_t) {
    const adamuon_options& o = this->options_;
    Backend& be = this->backend_;
    const matrix_view<T> M = s.momentum(k);
    const matrix_view<T> U = s.direction(slot);
    // Algorithm 1: M ← βM + G, U = sign(M); the authors' code: ema momentum, U = sign of the Nesterov mix.
    // One pass over G, M and U either way.
    const bool code = o.form == adamuon_form::code;
    stages::momentum_sign_direction(be, code ? momentum_kind::ema : momentum_kind::classical, o.beta, code, o.sign, G, M, U);
    return U;
  }
  void apply_update(matrix_view<T> W, const_matrix_view<T>, param_state<T, Backend>& s, index_t k, index_t slot,
                    std::int64_t t) {
    const adamuon_options& o = this->options_;
    Backend& be = this->backend_;
    const matrix_view<T> V = s.second_moment(k);
    const matrix_view<T> O = s.ortho_out(slot);
    // Second moment of O; arXiv v1: its own β2 with bias correction 1/(1 − β2ᵗ).
    const bool v1 = o.beta2 > 0.0;
    const double beta_v = v1 ? o.beta2 : o.beta;
    const double unbias = v1 ? 1.0 / (1.0 - std::pow(o.beta2, static_cast<double>(t))) : 1.0;
    stages::accumulate_square_and_divide(be, beta_v, 1.0, unbias, o.eps, O, V);  // V, then O ⊘ √V, one pass
    scalar_t* sc = s.scalars(slot);
    frobenius_norm(be, O.as_const(), sc + 2);
    const double rms_target = 0.2 * std::sqrt(static_cast<double>(W.rows) * static_cast<double>(W.cols));
    const double gamma_eps = o.form == adamuon_form::code ? o.eps : 0.0;
    run_scalar(be, detail::adamuon_scale{sc + 2, sc, o.lr, 1.0 - o.lr * o.weight_decay, rms_target, gamma_eps});
    stages::decay_and_update(be, W, O.as_const(), sc);
  }
};

}  // namespace orthopt
