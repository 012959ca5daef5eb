// SPDX-License-Identifier: Apache-2.0
//
// A rule's per-parameter state (param_state), made from the layout the rule declares (state_layout), the
// rule kind codes a checkpoint records, and the checks every step runs on its inputs and its state before
// it writes anything (step_limits, value_problem).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <cstdio>
#include <cstddef>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/rules/options.hpp"
#include "orthopt/rules/rule_kind.hpp"
#include "orthopt/rules/stages.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

namespace detail {
template <class Derived, class T, class Backend, class Options>
class rule_base;
}  // namespace detail

/// The largest magnitudes a step of a rule takes without overflowing (its overflow guard): with every
/// gradient and state entry within these, the momentum, the Nesterov direction, the second moments and
/// the norms NAMO and Newton–Schulz take in double are finite; the final division and update are finite
/// for states the steps produced (a second moment grows with what the momentum grows with), not for any
/// hand-written combination (a large momentum beside a zero or negative second moment). A step with
/// check_finite on refuses anything beyond them, finite or not, before it writes. Each rule's
/// `limits_of(options, rows, cols)` derives them (see there); +Inf: not checked.
struct step_limits {
  double gradient = std::numeric_limits<double>::infinity();  ///< every |G(i,j)|
  double momentum = std::numeric_limits<double>::infinity();  ///< every |M(i,j)|
  double second = std::numeric_limits<double>::infinity();    ///< AdamW's v and AdaMuon's V, element type
  double column = std::numeric_limits<double>::infinity();    ///< NAMO's v and NAMO-D's V_j, double
};

/// What a step's value check found: the tensor ("gradient" or a state slot), the batch item, the entry
/// and the limit it broke (+Inf: the entry is NaN or Inf).
struct value_problem {
  const char* tensor = "gradient";
  bool in_state = false;
  index_t item = 0;
  nonfinite_entry entry{};
  double limit = std::numeric_limits<double>::infinity();
};

namespace detail {
/// The gradient limit L every orthogonalizing rule shares: a quarter of the element type's range (with
/// momentum entries up to 1.25·L, μM + G and the Nesterov mix G + μM' stay below 0.82 of it) and, for
/// double data, what keeps ‖U‖_F of a rows×cols direction of such entries finite in double (the
/// Newton–Schulz normalization).
template <class T>
double orthogonalizer_entry_limit(index_t rows, index_t cols) {
  const double quarter = storage_max<std::remove_cv_t<T>>::value / 4.0;
  const double n = static_cast<double>(rows) * static_cast<double>(cols);
  const double norm_cap = std::numeric_limits<double>::max() / (4.0 * std::sqrt(n));
  return std::min(quarter, norm_cap);
}

/// The name of a storage type in messages.
template <class T>
const char* element_type_name() {
  if constexpr (std::is_same_v<std::remove_cv_t<T>, float>) return "float";
  else if constexpr (std::is_same_v<std::remove_cv_t<T>, double>) return "double";
  else if constexpr (sizeof(T) == 2) return "bfloat16";
  else return "the element type";
}
}  // namespace detail

/// The persistent tensors a rule keeps besides the momentum every rule has: what each rule declares as
/// `static constexpr state_layout layout`, what param_state allocates from it, and what a checkpoint
/// saves (param_state::slots).
struct state_layout {
  /// The shape of the column moment (in double): none, one scalar per matrix (NAMO's v), or one per
  /// column (NAMO-D's V_j).
  enum class columns : unsigned char { none, scalar, per_column };
  bool second_moment = false;  ///< a rows×cols tensor in the element type (AdaMuon's V, AdamW's v)
  columns column_moment = columns::none;
};

/// The state of one parameter (or of a batch of `count` same-shape matrices) under one rule.
///
/// Persistent tensors, reachable by the host to inspect, shard or save (views into backend memory):
///   momentum(k)        the first moment M (all rules; AdamW's m)
///   second_moment(k)   AdaMuon's V and AdamW's v (rows×cols); empty for the others
///   column_moment(k)   NAMO's scalar v (1×1) and NAMO-D's per-column V_j (1×cols), in double
///   step()             the number of completed steps t (shared by the batch)
///   ns_observation     (Newton–Schulz states) the adaptive budget's five accumulators, in double
/// Besides these it owns the scratch of a step (the direction U, the orthogonalized O, the polar plan).
/// ns_plan() reaches the Newton–Schulz plan: its step count for this parameter, residual recording,
/// observation and in-call stopping (orthopt/newton_schulz.hpp).
template <class T, class Backend>
class param_state {
 public:
  /// The state of rule `rule` (its name and kind code) with the tensors `layout` lists, for `count`
  /// rows×cols matrices; `ortho`: the rule's orthogonalizer settings (nullptr: none). Rules make states
  /// (rule_base::make_state); a host has no reason to call this.
  param_state(const char* rule, rule_kind kind, state_layout layout, index_t rows, index_t cols, index_t count,
              const orthogonalizer* ortho, const Backend& be)
      : rule_(rule), kind_(kind), layout_(layout), rows_(rows), cols_(cols), count_(count), backend_(be) {
    if (rows < 1 || cols < 1 || count < 1) {
      throw shape_error(std::string("orthopt::") + rule + ": cannot make a state for " + std::to_string(count) +
                        " matrices of shape " + shape_string(rows, cols) + "; every extent must be at least 1");
    }
    detail::checked_extent_product((std::string("orthopt::") + rule).c_str(),
                                   "a state for " + std::to_string(count) + " matrices of shape " + shape_string(rows, cols),
                                   rows, cols, count, sizeof(T) > sizeof(scalar_t) ? sizeof(T) : sizeof(scalar_t));
    const index_t n = rows * cols;
    // A backend that runs a batch's products in one launch (the CUDA backend) gets the scratch of the
    // whole batch, so that its orthogonalization is one batched call; the CPU backends keep one slot and
    // loop, with the memory of a single matrix.
    capacity_ = (ortho != nullptr && !ortho->exact && detail::runs_batched_products<Backend>) ? count : 1;
    momentum_ = backend_.template allocate<T>(count * n);
    if (layout.second_moment) second_ = backend_.template allocate<T>(count * n);
    if (layout.column_moment != state_layout::columns::none) column_ = backend_.template allocate<scalar_t>(count * column_width());
    scalars_ = backend_.template allocate<scalar_t>(capacity_ * scalar_slot());
    if (ortho != nullptr) {  // the direction, its polar factor and the plan: the orthogonalizing rules only
      direction_ = backend_.template allocate<T>(capacity_ * n);
      ortho_out_ = backend_.template allocate<T>(capacity_ * n);
      plan_.emplace(rows, cols, *ortho, backend_, capacity_);
      if (!ortho->exact) configured_ns_steps_ = ortho->ns.steps;
    }
  }

  [[nodiscard]] rule_kind kind() const noexcept { return kind_; }
  /// The name of the rule that made the state ("muon").
  [[nodiscard]] const char* rule() const noexcept { return rule_; }
  [[nodiscard]] const state_layout& layout() const noexcept { return layout_; }
  [[nodiscard]] index_t rows() const noexcept { return rows_; }
  [[nodiscard]] index_t cols() const noexcept { return cols_; }
  [[nodiscard]] index_t count() const noexcept { return count_; }
  /// How many matrices of the batch a step orthogonalizes together (count on the CUDA backend, else 1).
  [[nodiscard]] index_t batch_capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::int64_t step() const noexcept { return step_; }
  /// The backend handle whose memory holds the state (checkpoints copy the slots through it).
  [[nodiscard]] Backend& backend() const noexcept { return backend_; }
  /// Set the step count (checkpoint loading; bias corrections depend on it).
  void set_step(std::int64_t t) {
    if (t < 0) throw value_error("orthopt::param_state::set_step: step = " + std::to_string(t) + " < 0");
    step_ = t;
  }

  /// The Newton–Schulz plan of this parameter, or nullptr (AdamW, or the exact polar factor).
  [[nodiscard]] newton_schulz<T, Backend>* ns_plan() noexcept { return plan_ ? plan_->ns() : nullptr; }
  [[nodiscard]] const newton_schulz<T, Backend>* ns_plan() const noexcept { return plan_ ? plan_->ns() : nullptr; }
  /// The Newton–Schulz step count of the rule's options when the state was made (0 without a plan):
  /// the uniform count an adaptive budget starts from.
  [[nodiscard]] int configured_ns_steps() const noexcept { return configured_ns_steps_; }

  // The persistent tensors. A mutable view may be written, so taking one forgets what the value guard
  // knew about the state (values_known_within); the read-only overloads keep it.
  [[nodiscard]] matrix_view<T> momentum(index_t k = 0) {
    known_limits_.reset();
    return row_major_view(momentum_.data() + k * rows_ * cols_, rows_, cols_);
  }
  [[nodiscard]] matrix_view<const T> momentum(index_t k = 0) const {
    return row_major_view(static_cast<const T*>(momentum_.data()) + k * rows_ * cols_, rows_, cols_);
  }
  [[nodiscard]] matrix_view<T> second_moment(index_t k = 0) {
    known_limits_.reset();
    if (second_.size() == 0) return {};
    return row_major_view(second_.data() + k * rows_ * cols_, rows_, cols_);
  }
  [[nodiscard]] matrix_view<const T> second_moment(index_t k = 0) const {
    if (second_.size() == 0) return {};
    return row_major_view(static_cast<const T*>(second_.data()) + k * rows_ * cols_, rows_, cols_);
  }
  [[nodiscard]] matrix_view<scalar_t> column_moment(index_t k = 0) {
    known_limits_.reset();
    if (column_.size() == 0) return {};
    return row_major_view(column_.data() + k * column_width(), 1, column_width());
  }
  [[nodiscard]] matrix_view<const scalar_t> column_moment(index_t k = 0) const {
    if (column_.size() == 0) return {};
    return row_major_view(static_cast<const scalar_t*>(column_.data()) + k * column_width(), 1, column_width());
  }

  /// Whether every value of the state is known to lie within `limits` without reading it: after a
  /// checked step of a rule whose update keeps its state within the limits it checked (AdamW:
  /// rule_base::apply_checked_step notes it), until a mutable view of a tensor is taken (momentum(),
  /// second_moment(), column_moment(), slots(): a host's write, a checkpoint load) or the limits become
  /// tighter than those noted. The value check then reads only the gradient.
  [[nodiscard]] bool values_known_within(const step_limits& limits) const noexcept {
    return known_limits_ && known_limits_->momentum <= limits.momentum && known_limits_->second <= limits.second &&
           known_limits_->column <= limits.column;
  }
  /// Rules only: every value of the state now lies within `limits` (see values_known_within).
  void note_values_within(const step_limits& limits) noexcept { known_limits_ = limits; }

  /// Every persistent tensor as (name, element size, data, element count): what a checkpoint stores.
  struct slot {
    const char* name;
    std::size_t element_bytes;
    void* data;
    std::size_t elements;
  };
  [[nodiscard]] std::vector<slot> slots() {
    known_limits_.reset();
    std::vector<slot> s;
    s.push_back({"momentum", sizeof(T), momentum_.data(), momentum_.size()});
    if (second_.size() > 0) s.push_back({"second_moment", sizeof(T), second_.data(), second_.size()});
    if (column_.size() > 0) s.push_back({"column_moment", sizeof(scalar_t), column_.data(), column_.size()});
    if (const auto* ns = ns_plan()) {
      s.push_back({"ns_observation", sizeof(scalar_t), const_cast<newton_schulz<T, Backend>*>(ns)->observation_data(),
                   static_cast<std::size_t>(newton_schulz<T, Backend>::observation_size)});
    }
    return s;
  }
  /// The same, read-only (saving a checkpoint).
  struct const_slot {
    const char* name;
    std::size_t element_bytes;
    const void* data;
    std::size_t elements;
  };
  [[nodiscard]] std::vector<const_slot> slots() const {
    std::vector<const_slot> s;
    s.push_back({"momentum", sizeof(T), momentum_.data(), momentum_.size()});
    if (second_.size() > 0) s.push_back({"second_moment", sizeof(T), second_.data(), second_.size()});
    if (column_.size() > 0) s.push_back({"column_moment", sizeof(scalar_t), column_.data(), column_.size()});
    if (const auto* ns = ns_plan()) {
      s.push_back({"ns_observation", sizeof(scalar_t), const_cast<newton_schulz<T, Backend>*>(ns)->observation_data(),
                   static_cast<std::size_t>(newton_schulz<T, Backend>::observation_size)});
    }
    return s;
  }

  /// The name of the first of this state's buffers whose memory meets [lo, hi) (bytes), or nullptr:
  /// what the steps use to refuse a parameter or gradient that overlaps the state.
  [[nodiscard]] const char* buffer_meeting(std::uintptr_t lo, std::uintptr_t hi) const noexcept {
    const auto meets = [&](const auto& b) {
      if (b.size() == 0 || b.data() == nullptr) return false;
      const auto first = reinterpret_cast<std::uintptr_t>(b.data());
      return first < hi && lo < first + b.size() * sizeof(*b.data());
    };
    if (meets(momentum_)) return "momentum";
    if (meets(second_)) return "second moment";
    if (meets(column_)) return "column moment";
    if (meets(direction_)) return "direction scratch";
    if (meets(ortho_out_)) return "orthogonalized scratch";
    if (meets(scalars_)) return "scalars";
    return nullptr;
  }

  // ---- The scratch of a step (what the rules write while stepping; meaningless between steps) ------

  /// Slot `slot` of a batch chunk (0 ≤ slot < batch_capacity()): the direction U, the orthogonalized O.
  /// Only a rule with an orthogonalizer has them (AdamW's step writes no scratch).
  matrix_view<T> direction(index_t slot = 0) {
    return row_major_view(direction_.data() + slot * rows_ * cols_, rows_, cols_);
  }
  matrix_view<T> ortho_out(index_t slot = 0) {
    return row_major_view(ortho_out_.data() + slot * rows_ * cols_, rows_, cols_);
  }
  /// Slot `slot`'s scalars (decay and step factors, norms): 4 + 2·cols doubles.
  scalar_t* scalars(index_t slot = 0) { return scalars_.data() + slot * scalar_slot(); }
  /// The orthogonalizer (Newton–Schulz or the exact polar factor) of a rule that has one.
  stages::orthogonalizer_plan<T, Backend>& orthogonalizer_plan() { return *plan_; }

 private:
  [[nodiscard]] index_t scalar_slot() const noexcept { return 4 + 2 * cols_; }
  [[nodiscard]] index_t column_width() const noexcept {
    return layout_.column_moment == state_layout::columns::per_column ? cols_ : 1;
  }

  const char* rule_;
  rule_kind kind_;
  state_layout layout_;
  int configured_ns_steps_ = 0;
  index_t rows_, cols_, count_, capacity_ = 1;
  std::int64_t step_ = 0;
  mutable Backend backend_;  // a handle: copying to the host from a const state is not a change of it
  typename Backend::template buffer<T> momentum_, second_, direction_, ortho_out_;
  typename Backend::template buffer<scalar_t> column_, scalars_;
  std::optional<stages::orthogonalizer_plan<T, Backend>> plan_;
  std::optional<step_limits> known_limits_;  // values_known_within
};

namespace detail {

/// The first gradient or state entry that is NaN, Inf or beyond its limit (gradients first, then the
/// momentum, the second moment and the column moment, batch item by batch item); nothing when all pass.
/// One pass over each tensor, no allocation.
template <class T, class Backend>
std::optional<value_problem> find_value_problem(Backend& be, batch_view<const T> G, const param_state<T, Backend>& s,
                                                const step_limits& limits) {
  for (index_t k = 0; k < G.count; ++k) {
    if (const auto bad = find_beyond(be, G[k], limits.gradient)) return value_problem{"gradient", false, k, *bad, limits.gradient};
  }
  // A state a checked step left within these limits, untouched since, is not read again (for AdamW the
  // state is two thirds of what the check would read).
  if (s.values_known_within(limits)) return std::nullopt;
  for (index_t k = 0; k < s.count(); ++k) {  // read-only views: reading keeps what is known
    if (const auto bad = find_beyond(be, s.momentum(k), limits.momentum)) {
      return value_problem{"momentum", true, k, *bad, limits.momentum};
    }
    if (const auto v = s.second_moment(k); !v.empty()) {
      if (const auto bad = find_beyond(be, v, limits.second)) return value_problem{"second moment", true, k, *bad, limits.second};
    }
    if (const auto c = s.column_moment(k); !c.empty()) {
      if (const auto bad = find_beyond(be, c, limits.column)) return value_problem{"column moment", true, k, *bad, limits.column};
    }
  }
  return std::nullopt;
}

/// "gradient(3, 4) is nan" or "the state's momentum(0, 2) is 3.1e+38, beyond 8.5e+37, the largest
/// magnitude a step of this rule takes in float without overflowing", with the batch item when there
/// is more than one.
template <class T>
std::string describe_value_problem(const value_problem& p, index_t count) {
  const bool nonfinite = !std::isfinite(p.entry.value);
  std::string m = std::string(p.in_state ? "the state's " : "") + p.tensor + "(" + std::to_string(p.entry.row) + ", " +
                  std::to_string(p.entry.col) + ") is " + value_text(p.entry.value);
  if (!nonfinite) {
    m += ", beyond " + value_text(p.limit) + ", the largest magnitude a step of this rule takes in " +
         (p.tensor == std::string_view("column moment") ? "double" : element_type_name<T>()) + " without overflowing";
  }
  if (count > 1) m += " in batch item " + std::to_string(p.item);
  if (p.in_state) m += " (a state gets there by being loaded or written so, or by growing under classical momentum)";
  return m;
}

/// The checks every step runs before it writes anything; `limits` null: no value check (check_finite off).
template <class T, class Backend>
void check_step(const char* rule, rule_kind kind, Backend& be, batch_view<T> W, batch_view<const T> G,
                param_state<T, Backend>& s, const step_limits* limits) {
  const auto who = [rule] { return std::string("orthopt::") + rule + "::step"; };
  if (s.kind() != kind) {
    throw value_error(who() + ": the state was made by " + s.rule() + ", not by " + rule);
  }
  if (W.count != s.count() || G.count != s.count()) {
    throw shape_error(who() + ": parameter batch of " + std::to_string(W.count) + " and gradient batch of " +
                      std::to_string(G.count) + " matrices, but the state holds " + std::to_string(s.count()));
  }
  for (index_t k = 0; k < W.count; ++k) {
    const auto w = W[k];
    const auto g = G[k];
    if (!view_is_usable(w) || !view_is_usable(g)) {
      check_view(w, who().c_str(), "parameter");
      check_view(g, who().c_str(), "gradient");
    }
    if (w.rows != s.rows() || w.cols != s.cols() || g.rows != s.rows() || g.cols != s.cols()) {
      throw shape_error(who() + ": parameter is " + shape_string(w) + ", gradient is " + shape_string(g) +
                        " and the state is " + shape_string(s.rows(), s.cols()) + (W.count > 1 ? " (batch item " + std::to_string(k) + ")" : ""));
    }
  }
  // Overlapping memory: refused before anything is written, since a step reads G and the
  // state while it writes W and the state. A few comparisons when everything lies in separate buffers.
  const auto item = [&W](index_t k) { return W.count > 1 ? " (batch item " + std::to_string(k) + ")" : std::string(); };
  for (index_t k = 0; k < W.count; ++k) {
    if (view_overlaps_itself(W[k])) {
      throw shape_error(who() + ": the parameter" + item(k) + " [" + describe_view(W[k]) +
                        "] addresses some elements twice; a parameter must not overlap itself");
    }
    for (const auto& [what, v] : {std::pair<const char*, matrix_view<const T>>{"parameter", W[k].as_const()}, {"gradient", G[k]}}) {
      const auto r = detail::byte_range(v);
      if (const char* buffer = s.buffer_meeting(r.first, r.second)) {
        throw shape_error(who() + ": the " + what + item(k) + " [" + describe_view(v) + "] overlaps the state's " + buffer +
                          "; pass the rule memory of your own");
      }
    }
  }
  if (const auto [j, k] = overlapping_batch_items(W); j >= 0) {
    throw shape_error(who() + ": parameter batch items " + std::to_string(j) + " [" + describe_view(W[j]) + "] and " +
                      std::to_string(k) + " [" + describe_view(W[k]) + "] share memory; each matrix is updated once per step");
  }
  if (const auto [j, k] = overlapping_items(G, W); j >= 0) {
    throw shape_error(who() + ": the gradient" + item(j) + " [" + describe_view(G[j]) + "] and the parameter" + item(k) + " [" +
                      describe_view(W[k]) + "] share memory; the step would read a gradient it is overwriting");
  }
  if (limits != nullptr) {
    if (const auto problem = find_value_problem(be, G, s, *limits)) {
      throw value_error(who() + ": " + describe_value_problem<T>(*problem, G.count) + "; parameters and state are unchanged");
    }
  }
}

}  // namespace detail

}  // namespace orthopt
