// SPDX-License-Identifier: Apache-2.0
//
// The update rules — Muon, AdaMuon, NAMO, NAMO-D, AdamW — written once over the backend concept from the
// shared stages (orthopt/rules/stages.hpp), and the per-parameter state they keep.
//
// Use: a rule object holds the options (change `options().lr` between steps for a schedule); a state
// is made once per parameter (`make_state(rows, cols[, count])`) and allocates everything the steps need;
// `step(W, G, state)` updates W in place and allocates nothing.
//
// Every step first checks its inputs and throws, leaving W and the state untouched, on: a parameter,
// gradient and state of different shapes (shape_error naming them), overlapping memory (shape_error), a
// state made by another rule (value_error), invalid hyper-parameters (value_error), and — with
// check_finite on, the default — a gradient or state entry that is NaN, Inf or beyond the rule's
// overflow limits (step_limits; value_error naming the tensor, the position, the value and the limit).
// check_finite = false skips that scan: one pass over the gradient and the state tensors the step reads,
// each a device→host read on a GPU (the CUDA backend's flag_on_device mode records instead of reading).
//
// This header holds what every rule shares (detail::rule_base); each rule is a header of its own in this
// folder, and orthopt/rules/rule_list.hpp lists them.
#pragma once

#include "orthopt/rules/param_state.hpp"

namespace orthopt {

namespace detail {

template <class T>
batch_view<T> single(matrix_view<T> m) {
  return {m, 1, 0};
}

inline double shape_factor(shape_scale s, index_t rows, index_t cols) {
  const double a = static_cast<double>(rows), b = static_cast<double>(cols);
  switch (s) {
    case shape_scale::original: return std::sqrt(std::max(1.0, a / b));
    case shape_scale::match_rms_adamw: return 0.2 * std::sqrt(std::max(a, b));
    case shape_scale::spectral: return std::sqrt(a / b);
    case shape_scale::none: return 1.0;
  }
  return 1.0;
}

/// Hyper-parameters that are valid as doubles but that a step uses in the element type's arithmetic
/// (compute_t<T>: float for float and bf16 data) must survive the rounding: an ε that rounds to 0 gives
/// 0/0 on a zero gradient entry, a β that rounds to 1 freezes a moment, a coefficient beyond the float
/// range is Inf. Each check builds its message only when it fails (steps run them and must not allocate).
template <class T>
inline void require_positive_in(const char* rule, const std::string& preset, const char* name, double v) {
  using C = compute_t<T>;
  require(static_cast<double>(static_cast<C>(v)) > 0.0, rule, preset, [&] {
    return std::string(name) + " = " + value_text(v) + " rounds to 0 in the element type (" +
           (sizeof(C) == 4 ? "float" : "its compute type") + "); use a value it can hold";
  });
}
template <class T>
inline void require_below_one_in(const char* rule, const std::string& preset, const char* name, double v) {
  using C = compute_t<T>;
  require(static_cast<double>(static_cast<C>(v)) < 1.0, rule, preset, [&] {
    return std::string(name) + " = " + value_text(v) + " rounds to 1 in the element type (" +
           (sizeof(C) == 4 ? "float" : "its compute type") + "), which would freeze the moment";
  });
}
template <class T>
inline void require_table_in(const char* rule, const std::string& preset, const orthogonalizer& o) {
  using C = compute_t<T>;
  if (o.exact) return;
  for (std::size_t r = 0; r < o.ns.table.size(); ++r) {
    const ns_coefficients& c = o.ns.table[r];
    const bool ok = std::isfinite(static_cast<double>(static_cast<C>(c.a))) &&
                    std::isfinite(static_cast<double>(static_cast<C>(c.b))) &&
                    std::isfinite(static_cast<double>(static_cast<C>(c.c)));
    require(ok, rule, preset, [&] {
      return "Newton–Schulz table row " + std::to_string(r + 1) + " (" + value_text(c.a) + ", " + value_text(c.b) + ", " + value_text(c.c) +
             ") overflows the element type's range";
    });
  }
}
template <class T>
inline void check_in_element_type(const muon_options& o) {
  require_below_one_in<T>("muon_options", o.preset, "momentum", o.momentum);
  require_table_in<T>("muon_options", o.preset, o.ortho);
}
template <class T>
inline void check_in_element_type(const adamuon_options& o) {
  require_below_one_in<T>("adamuon_options", o.preset, "beta", o.beta);
  if (o.beta2 > 0.0) require_below_one_in<T>("adamuon_options", o.preset, "beta2", o.beta2);
  require_positive_in<T>("adamuon_options", o.preset, "eps", o.eps);
  require_table_in<T>("adamuon_options", o.preset, o.ortho);
}
template <class T>
inline void check_in_element_type(const namo_options& o) {
  // μ2 and ε enter NAMO's scalar arithmetic in double; μ1 drives the momentum in the element type.
  require_below_one_in<T>("namo_options", o.preset, "mu1", o.mu1);
  require_table_in<T>("namo_options", o.preset, o.ortho);
}
template <class T>
inline void check_in_element_type(const adamw_options& o) {
  require_below_one_in<T>("adamw_options", o.preset, "beta1", o.beta1);
  require_below_one_in<T>("adamw_options", o.preset, "beta2", o.beta2);
  require_positive_in<T>("adamw_options", o.preset, "eps", o.eps);
}

/// Shared plumbing of a rule: options, backend, state creation, single/batch step dispatch.
template <class Derived, class T, class Backend, class Options>
class rule_base {
 public:
  using value_type = T;
  using backend_type = Backend;
  using options_type = Options;

  explicit rule_base(Options options, Backend backend) : options_(std::move(options)), backend_(std::move(backend)) {
    validate_options();
  }

  /// The options' own checks (Options::validate), and that the values a step uses in the element
  /// type's arithmetic survive rounding to it; value_error naming the field. Every step runs it first.
  void validate_options() const {
    options_.validate();
    check_in_element_type<T>(options_);
    if constexpr (requires { Derived::check_options(options_); }) Derived::check_options(options_);
  }

  [[nodiscard]] Options& options() noexcept { return options_; }
  [[nodiscard]] const Options& options() const noexcept { return options_; }
  [[nodiscard]] Backend& backend() noexcept { return backend_; }

  /// The overflow limits of a step on a rows×cols parameter under the current options (step_limits).
  [[nodiscard]] step_limits limits(index_t rows, index_t cols) const { return Derived::limits_of(options_, rows, cols); }

  /// The value check a step runs when check_finite is on, alone: the first gradient or state entry that
  /// is NaN, Inf or beyond limits(); nothing when the step would take them all. The optimizer runs it
  /// on every parameter before it steps any.
  [[nodiscard]] std::optional<value_problem> find_value_problem(batch_view<const T> G, param_state<T, Backend>& s) {
    return detail::find_value_problem(backend_, G, s, limits(s.rows(), s.cols()));
  }

  /// The orthogonalizer settings of the options (Newton–Schulz or the exact polar factor), or nullptr
  /// for a rule that does not orthogonalize (AdamW).
  [[nodiscard]] const orthogonalizer* ortho() const noexcept { return Derived::ortho_of(options_); }

  /// The work of one step on `count` rows×cols matrices, in multiply-adds, with `ns_steps` Newton–Schulz
  /// iterations: what a distributed optimizer balances across ranks. Newton–Schulz on an m×n matrix
  /// (m ≤ n) costs, per iteration, the Gram X·Xᵀ (m²n), its square (m³) and the product with X (m²n):
  /// ns_steps·(2m²n + m³). The exact polar factor (SVD) is counted as 20·m²n, a one-sided Jacobi SVD's few
  /// sweeps. Every rule adds about 10 element-wise passes over the matrix (momentum, moments, update),
  /// which is all a rule without an orthogonalizer (AdamW) costs. A rule may define its own
  /// `step_cost_of(options, rows, cols, count, ns_steps)` instead.
  [[nodiscard]] double step_cost(index_t rows, index_t cols, index_t count, int ns_steps) const {
    if constexpr (requires { Derived::step_cost_of(options_, rows, cols, count, ns_steps); }) {
      return Derived::step_cost_of(options_, rows, cols, count, ns_steps);
    } else {
      const double m = static_cast<double>(std::min(rows, cols));
      const double n = static_cast<double>(std::max(rows, cols));
      double per_matrix = 10.0 * m * n;
      if (const orthogonalizer* o = Derived::ortho_of(options_)) {
        per_matrix += o->exact ? 20.0 * m * m * n : ns_steps * (2.0 * m * m * n + m * m * m);
      }
      return per_matrix * static_cast<double>(count);
    }
  }

  /// The state of a rows×cols parameter, or of `count` stacked ones; allocates all a step needs.
  [[nodiscard]] param_state<T, Backend> make_state(index_t rows, index_t cols, index_t count = 1) const {
    return param_state<T, Backend>(Derived::name, Derived::kind, Derived::layout, rows, cols, count,
                                   Derived::ortho_of(options_), backend_);
  }

  /// The checks step() makes on the views before it reads a value (the state's rule, shapes, usable
  /// views, memory shared between W, G and the state), alone: the optimizer runs them for every
  /// parameter before it steps any. Throws as step() would; changes nothing.
  void check_step_views(batch_view<T> W, batch_view<const T> G, param_state<T, Backend>& s) {
    check_step(Derived::name, Derived::kind, backend_, W, G, s, nullptr);
  }

  /// W ← one step of the rule, from gradient G.
  void step(matrix_view<T> W, const_matrix_view<T> G, param_state<T, Backend>& s) {
    step(single(W), single(G), s);
  }

  /// One step for every matrix of a batch (stacked experts, row blocks of a fused matrix), each with its
  /// own state entry; all checks pass before the first matrix is written. A rule with a polar operator
  /// runs in three phases per chunk of the state's batch capacity: each matrix's direction, then one
  /// (batched) orthogonalization, then each matrix's update.
  void step(batch_view<T> W, batch_view<const T> G, param_state<T, Backend>& s) {
    validate_options();
    const step_limits limits = Derived::limits_of(options_, s.rows(), s.cols());
    check_step(Derived::name, Derived::kind, backend_, W, G, s, options_.check_finite ? &limits : nullptr);
    if (s.step() == std::numeric_limits<std::int64_t>::max()) {
      // step + 1 would overflow (a count loaded from a checkpoint or set by set_step); refuse first.
      throw value_error(std::string("orthopt::") + Derived::name + "::step: the state's step count is " +
                        std::to_string(s.step()) + ", the largest there is; nothing was changed");
    }
    apply_checked_step(W, G, s);
  }

  /// The updates of step(), for a caller that has made all of step()'s checks itself (validate_options,
  /// check_step_views, find_value_problem when check_finite is on, a step count below the largest): the
  /// optimizer, which makes them for every parameter before it steps any.
  void apply_checked_step(batch_view<T> W, batch_view<const T> G, param_state<T, Backend>& s) {
    const std::int64_t t = s.step() + 1;
    Derived& self = *static_cast<Derived*>(this);
    if constexpr (Derived::orthogonalizes) {
      const index_t capacity = s.batch_capacity();
      for (index_t k0 = 0; k0 < W.count; k0 += capacity) {
        const index_t chunk = std::min(capacity, W.count - k0);
        matrix_view<T> U_first{};
        for (index_t slot = 0; slot < chunk; ++slot) {
          const matrix_view<T> U = self.direction_of(G[k0 + slot], s, k0 + slot, slot, t);
          if (slot == 0) U_first = U;
        }
        // Every matrix's direction lies in the same per-matrix buffer (momentum or scratch) at slot
        // spacing rows·cols: a strided batch.
        const index_t spacing = s.rows() * s.cols();
        s.orthogonalizer_plan()(batch_view<const T>(U_first.as_const(), chunk, spacing), batch_view<T>(s.ortho_out(0), chunk, spacing));
        for (index_t slot = 0; slot < chunk; ++slot) self.apply_update(W[k0 + slot], G[k0 + slot], s, k0 + slot, slot, t);
      }
    } else {
      for (index_t k = 0; k < W.count; ++k) self.step_one(W[k], G[k], s, k, t);
    }
    s.set_step(t);
    // The gradient and the state were within the limits (checked), so a rule whose update keeps them
    // there leaves a state the next check need not read (param_state::values_known_within).
    if constexpr (requires { Derived::keeps_state_within_limits(options_); }) {
      if (options_.check_finite && Derived::keeps_state_within_limits(options_)) {
        s.note_values_within(Derived::limits_of(options_, s.rows(), s.cols()));
      }
    }
  }

 protected:
  Options options_;
  Backend backend_;
};

}  // namespace detail

}  // namespace orthopt
