// SPDX-License-Identifier: Apache-2.0
//
// Muon (Jordan et al. 2024): momentum, Newton–Schulz, shape-scaled update.
#pragma once

#include "orthopt/rules/rule_base.hpp"

namespace orthopt {

/// Muon (Jordan et al. 2024; docs/references.md): M ← momentum(M, G); U ← nesterov ? mix(G, M) : M;
/// O ← NS(U); W ← W(1 − ηλ) − η·scale(A, B)·O. Presets in muon_presets (keller, moonlight, torch).
template <class T, class Backend>
class muon : public detail::rule_base<muon<T, Backend>, T, Backend, muon_options> {
  using base = detail::rule_base<muon<T, Backend>, T, Backend, muon_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::muon;
  static constexpr const char* name = "muon";
  /// Besides the momentum: nothing.
  static constexpr state_layout layout{};
  explicit muon(muon_options o = muon_presets::keller(), Backend be = Backend{}) : base(std::move(o), std::move(be)) {}

  /// Gradient entries within L, a quarter of the element type's range (and, for double data, what
  /// keeps the direction's norm finite), momentum entries within 1.25·L: μM + G ≤ 2.25·L and the
  /// Nesterov mix ≤ 3.25·L stay finite. An ema momentum stays within 1.25·L; a classical one
  /// (M ← μM + G) can grow to L/(1−μ) and is then refused at the next step.
  static step_limits limits_of(const muon_options&, index_t rows, index_t cols) {
    const double l = detail::orthogonalizer_entry_limit<T>(rows, cols);
    return {l, 1.25 * l};
  }

 private:
  static constexpr bool orthogonalizes = true;
  static const orthogonalizer* ortho_of(const muon_options& o) { return &o.ortho; }
  /// M ← momentum(M, G); U ← nesterov ? mix(G, M) : M.
  matrix_view<T> direction_of(const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, index_t slot, std::int64_t) {
    const muon_options& o = this->options_;
    return stages::momentum_direction(this->backend_, o.momentum_type, o.momentum, o.nesterov, G, s.momentum(k),
                                      s.direction(slot));
  }
  /// W ← W(1 − ηλ) − η·scale·O.
  void apply_update(matrix_view<T> W, const_matrix_view<T>, param_state<T, Backend>& s, index_t, index_t slot,
                    std::int64_t) {
    const muon_options& o = this->options_;
    Backend& be = this->backend_;
    const double scale = detail::shape_factor(o.scale, W.rows, W.cols);
    stages::set_decay_and_step(be, s.scalars(slot), 1.0 - o.lr * o.weight_decay, o.lr * scale);
    stages::decay_and_update(be, W, s.ortho_out(slot).as_const(), s.scalars(slot));
  }
};

}  // namespace orthopt
