// SPDX-License-Identifier: Apache-2.0
//
// AdamW (Loshchilov and Hutter 2019), in the torch and the Moonlight form: the rule for the parameters
// Muon-family rules do not orthogonalize (embeddings, heads, vectors).
#pragma once

#include "orthopt/rules/rule_base.hpp"

namespace orthopt {

/// AdamW (Loshchilov and Hutter 2019) in the torch or the Moonlight form, for the parameters Muon-family rules do
/// not take (vectors, embeddings, output heads); any shape (view a vector as 1×n). Presets in
/// adamw_presets.
template <class T, class Backend>
class adamw : public detail::rule_base<adamw<T, Backend>, T, Backend, adamw_options> {
  using base = detail::rule_base<adamw<T, Backend>, T, Backend, adamw_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::adamw;
  static constexpr const char* name = "adamw";
  /// Besides the momentum: the second moment v.
  static constexpr state_layout layout{.second_moment = true};
  explicit adamw(adamw_options o = adamw_presets::torch(), Backend be = Backend{}) : base(std::move(o), std::move(be)) {}

  /// With R a quarter of the element type's range: |m| ≤ (1−β1)·R, so that m/(1−β1ᵗ) ≤ R; |G| ≤ 0.8 of
  /// that and G² ≤ R/2, so that β2·v + (1−β2)·G² stays below R when v ≤ R. m and v are averages of what
  /// entered them, so a step keeps them within their limits.
  static step_limits limits_of(const adamw_options& o, index_t, index_t) {
    const double r = storage_max<std::remove_cv_t<T>>::value / 4.0;
    const double m = (1.0 - o.beta1) * r;
    return {std::min(0.8 * m, std::sqrt(r / 2.0)), m, r};
  }
  /// A step from a gradient and a state within limits_of(o) leaves the state within them:
  /// |β1·m + (1−β1)·g| ≤ (1 − 0.2(1−β1))·(1−β1)r and β2·v + (1−β2)·g² ≤ (1 − (1−β2)/2)·r, below the limits by
  /// margins that dwarf the rounding of the update (a few units of 1e-7 relative) while 1−β1 ≥ 5e-4 and
  /// 1−β2 ≥ 2e-4; closer to 1 the value check reads the state every step.
  static bool keeps_state_within_limits(const adamw_options& o) { return o.beta1 <= 0.9995 && o.beta2 <= 0.9998; }

 private:
  static constexpr bool orthogonalizes = false;
  static const orthogonalizer* ortho_of(const adamw_options&) { return nullptr; }
  void step_one(matrix_view<T> W, const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, std::int64_t t) {
    const adamw_options& o = this->options_;
    Backend& be = this->backend_;
    const matrix_view<T> m = s.momentum(k);
    const matrix_view<T> v = s.second_moment(k);
    const double td = static_cast<double>(t);
    const double c1 = 1.0 - std::pow(o.beta1, td), c2 = 1.0 - std::pow(o.beta2, td);
    // torch: m̂ / (√v̂ + ε); Moonlight: ε added to √v before the bias corrections (√c2 / c1 on m).
    const bool torch_form = o.form == adamw_form::torch;
    const double c = torch_form ? 1.0 / c1 : std::sqrt(c2) / c1;
    const double scale_v = torch_form ? 1.0 / c2 : 1.0;
    // gradient → momentum and second moment → normalized direction → decay and update, in one pass.
    stages::adamw_update(be, o.beta1, o.beta2, c, scale_v, o.eps, 1.0 - o.lr * o.weight_decay, o.lr, G, m, v, W);
  }
};

}  // namespace orthopt
