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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/rules/options.hpp"
#include "orthopt/rules/stages.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

/// Which rule a state belongs to (also the tag a checkpoint records).
enum class rule_kind : std::uint32_t { muon = 1, adamuon = 2, namo = 3, namo_d = 4, adamw = 5 };

inline const char* rule_name(rule_kind k) {
  switch (k) {
    case rule_kind::muon: return "muon";
    case rule_kind::adamuon: return "adamuon";
    case rule_kind::namo: return "namo";
    case rule_kind::namo_d: return "namo_d";
    case rule_kind::adamw: return "adamw";
  }
  return "unknown";
}

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

/// v with 9 significant digits ("1e-50", "0.99999999"): enough to show why it rounds as it does.
inline std::string num_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
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
  param_state(rule_kind kind, index_t rows, index_t cols, index_t count, const orthogonalizer* ortho,
              const Backend& be)
      : kind_(kind), rows_(rows), cols_(cols), count_(count), backend_(be) {
    if (rows < 1 || cols < 1 || count < 1) {
      throw shape_error(std::string("orthopt::") + rule_name(kind) + ": cannot make a state for " + std::to_string(count) +
                        " matrices of shape " + shape_string(rows, cols) + "; every extent must be at least 1");
    }
    detail::checked_extent_product((std::string("orthopt::") + rule_name(kind)).c_str(),
                                   "a state for " + std::to_string(count) + " matrices of shape " + shape_string(rows, cols),
                                   rows, cols, count, sizeof(T) > sizeof(scalar_t) ? sizeof(T) : sizeof(scalar_t));
    const index_t n = rows * cols;
    // A backend that runs a batch's products in one launch (the CUDA backend) gets the scratch of the
    // whole batch, so that its orthogonalization is one batched call; the CPU backends keep one slot and
    // loop, with the memory of a single matrix.
    capacity_ = (ortho != nullptr && !ortho->exact && detail::runs_batched_products<Backend>) ? count : 1;
    momentum_ = backend_.template allocate<T>(count * n);
    if (kind == rule_kind::adamuon || kind == rule_kind::adamw) second_ = backend_.template allocate<T>(count * n);
    if (kind == rule_kind::namo) column_ = backend_.template allocate<scalar_t>(count);
    if (kind == rule_kind::namo_d) column_ = backend_.template allocate<scalar_t>(count * cols);
    direction_ = backend_.template allocate<T>(capacity_ * n);
    ortho_out_ = backend_.template allocate<T>(capacity_ * n);
    scalars_ = backend_.template allocate<scalar_t>(capacity_ * scalar_slot());
    if (ortho != nullptr) {
      plan_.emplace(rows, cols, *ortho, backend_, capacity_);
      if (!ortho->exact) configured_ns_steps_ = ortho->ns.steps;
    }
  }

  [[nodiscard]] rule_kind kind() const noexcept { return kind_; }
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

  [[nodiscard]] matrix_view<T> momentum(index_t k = 0) { return row_major_view(momentum_.data() + k * rows_ * cols_, rows_, cols_); }
  [[nodiscard]] matrix_view<T> second_moment(index_t k = 0) {
    if (second_.size() == 0) return {};
    return row_major_view(second_.data() + k * rows_ * cols_, rows_, cols_);
  }
  [[nodiscard]] matrix_view<scalar_t> column_moment(index_t k = 0) {
    if (column_.size() == 0) return {};
    const index_t w = kind_ == rule_kind::namo_d ? cols_ : 1;
    return row_major_view(column_.data() + k * w, 1, w);
  }

  /// Every persistent tensor as (name, element size, data, element count): what a checkpoint stores.
  struct slot {
    const char* name;
    std::size_t element_bytes;
    void* data;
    std::size_t elements;
  };
  [[nodiscard]] std::vector<slot> slots() {
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

 private:
  template <class, class, class, class>
  friend class detail::rule_base;
  template <class, class>
  friend class muon;
  template <class, class>
  friend class adamuon;
  template <class, class>
  friend class namo;
  template <class, class>
  friend class namo_d;
  template <class, class>
  friend class adamw;

  // The step's scratch for slot `slot` of a batch chunk (0 ≤ slot < capacity_).
  matrix_view<T> direction(index_t slot = 0) {
    return row_major_view(direction_.data() + slot * rows_ * cols_, rows_, cols_);
  }
  matrix_view<T> ortho_out(index_t slot = 0) {
    return row_major_view(ortho_out_.data() + slot * rows_ * cols_, rows_, cols_);
  }
  scalar_t* scalars(index_t slot = 0) { return scalars_.data() + slot * scalar_slot(); }
  [[nodiscard]] index_t scalar_slot() const noexcept { return 4 + 2 * cols_; }

  rule_kind kind_;
  int configured_ns_steps_ = 0;
  index_t rows_, cols_, count_, capacity_ = 1;
  std::int64_t step_ = 0;
  mutable Backend backend_;  // a handle: copying to the host from a const state is not a change of it
  typename Backend::template buffer<T> momentum_, second_, direction_, ortho_out_;
  typename Backend::template buffer<scalar_t> column_, scalars_;
  std::optional<stages::orthogonalizer_plan<T, Backend>> plan_;
};

namespace detail {

/// The first gradient or state entry that is NaN, Inf or beyond its limit (gradients first, then the
/// momentum, the second moment and the column moment, batch item by batch item); nothing when all pass.
/// One pass over each tensor, no allocation.
template <class T, class Backend>
std::optional<value_problem> find_value_problem(Backend& be, batch_view<const T> G, param_state<T, Backend>& s,
                                                const step_limits& limits) {
  for (index_t k = 0; k < G.count; ++k) {
    if (const auto bad = find_beyond(be, G[k], limits.gradient)) return value_problem{"gradient", false, k, *bad, limits.gradient};
  }
  for (index_t k = 0; k < s.count(); ++k) {
    if (const auto bad = find_beyond(be, s.momentum(k).as_const(), limits.momentum)) {
      return value_problem{"momentum", true, k, *bad, limits.momentum};
    }
    if (const auto v = s.second_moment(k); !v.empty()) {
      if (const auto bad = find_beyond(be, v.as_const(), limits.second)) return value_problem{"second moment", true, k, *bad, limits.second};
    }
    if (const auto c = s.column_moment(k); !c.empty()) {
      if (const auto bad = find_beyond(be, c.as_const(), limits.column)) return value_problem{"column moment", true, k, *bad, limits.column};
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
                  std::to_string(p.entry.col) + ") is " + (nonfinite ? std::to_string(p.entry.value) : num_g(p.entry.value));
  if (!nonfinite) {
    m += ", beyond " + num_g(p.limit) + ", the largest magnitude a step of this rule takes in " +
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
    throw value_error(who() + ": the state was made by " + rule_name(s.kind()) + ", not by " + rule);
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
    return std::string(name) + " = " + num_g(v) + " rounds to 0 in the element type (" +
           (sizeof(C) == 4 ? "float" : "its compute type") + "); use a value it can hold";
  });
}
template <class T>
inline void require_below_one_in(const char* rule, const std::string& preset, const char* name, double v) {
  using C = compute_t<T>;
  require(static_cast<double>(static_cast<C>(v)) < 1.0, rule, preset, [&] {
    return std::string(name) + " = " + num_g(v) + " rounds to 1 in the element type (" +
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
      return "Newton–Schulz table row " + std::to_string(r + 1) + " (" + num_g(c.a) + ", " + num_g(c.b) + ", " + num_g(c.c) +
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
    return param_state<T, Backend>(Derived::kind, rows, cols, count, Derived::ortho_of(options_), backend_);
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
        (*s.plan_)(batch_view<const T>(U_first.as_const(), chunk, spacing), batch_view<T>(s.ortho_out(0), chunk, spacing));
        for (index_t slot = 0; slot < chunk; ++slot) self.apply_update(W[k0 + slot], G[k0 + slot], s, k0 + slot, slot, t);
      }
    } else {
      for (index_t k = 0; k < W.count; ++k) self.step_one(W[k], G[k], s, k, t);
    }
    s.set_step(t);
  }

 protected:
  Options options_;
  Backend backend_;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------------
/// Muon (Jordan et al. 2024; docs/references.md): M ← momentum(M, G); U ← nesterov ? mix(G, M) : M;
/// O ← NS(U); W ← W(1 − ηλ) − η·scale(A, B)·O. Presets in muon_presets (keller, moonlight, torch).
template <class T, class Backend>
class muon : public detail::rule_base<muon<T, Backend>, T, Backend, muon_options> {
  using base = detail::rule_base<muon<T, Backend>, T, Backend, muon_options>;
  friend base;

 public:
  static constexpr rule_kind kind = rule_kind::muon;
  static constexpr const char* name = "muon";
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
    if (o.form == adamuon_form::paper) {
      // Algorithm 1: M ← βM + G; U = sign(M)
      stages::accumulate_momentum(be, momentum_kind::classical, o.beta, G, M);
      stages::sign_map(be, o.sign, M.as_const(), U);
    } else {
      // The authors' code: ema momentum, Nesterov mix, sign of the mix
      stages::accumulate_momentum(be, momentum_kind::ema, o.beta, G, M);
      stages::nesterov_direction(be, momentum_kind::ema, o.beta, G, M.as_const(), U);
      stages::sign_map(be, o.sign, U.as_const(), U);
    }
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
    stages::accumulate_square(be, beta_v, O.as_const(), V);
    stages::divide_by_root_second_moment(be, O.as_const(), V.as_const(), 1.0, unbias, o.eps, O);
    scalar_t* sc = s.scalars(slot);
    frobenius_norm(be, O.as_const(), sc + 2);
    const double rms_target = 0.2 * std::sqrt(static_cast<double>(W.rows) * static_cast<double>(W.cols));
    const double gamma_eps = o.form == adamuon_form::code ? o.eps : 0.0;
    run_scalar(be, detail::adamuon_scale{sc + 2, sc, o.lr, 1.0 - o.lr * o.weight_decay, rms_target, gamma_eps});
    stages::decay_and_update(be, W, O.as_const(), sc);
  }
};

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
  explicit adamw(adamw_options o = adamw_presets::torch(), Backend be = Backend{}) : base(std::move(o), std::move(be)) {}

  /// With R a quarter of the element type's range: |m| ≤ (1−β1)·R, so that m/(1−β1ᵗ) ≤ R; |G| ≤ 0.8 of
  /// that and G² ≤ R/2, so that β2·v + (1−β2)·G² stays below R when v ≤ R. m and v are averages of what
  /// entered them, so a step keeps them within their limits.
  static step_limits limits_of(const adamw_options& o, index_t, index_t) {
    const double r = storage_max<std::remove_cv_t<T>>::value / 4.0;
    const double m = (1.0 - o.beta1) * r;
    return {std::min(0.8 * m, std::sqrt(r / 2.0)), m, r};
  }

 private:
  static constexpr bool orthogonalizes = false;
  static const orthogonalizer* ortho_of(const adamw_options&) { return nullptr; }
  void step_one(matrix_view<T> W, const_matrix_view<T> G, param_state<T, Backend>& s, index_t k, std::int64_t t) {
    const adamw_options& o = this->options_;
    Backend& be = this->backend_;
    const matrix_view<T> m = s.momentum(k);
    const matrix_view<T> v = s.second_moment(k);
    stages::accumulate_momentum(be, momentum_kind::ema, o.beta1, G, m);
    stages::accumulate_square(be, o.beta2, G, v);
    const double td = static_cast<double>(t);
    const double c1 = 1.0 - std::pow(o.beta1, td), c2 = 1.0 - std::pow(o.beta2, td);
    const matrix_view<T> D = s.direction();
    if (o.form == adamw_form::torch) {
      stages::divide_by_root_second_moment(be, m.as_const(), v.as_const(), 1.0 / c1, 1.0 / c2, o.eps, D);
    } else {
      stages::divide_by_root_second_moment(be, m.as_const(), v.as_const(), std::sqrt(c2) / c1, 1.0, o.eps, D);
    }
    stages::set_decay_and_step(be, s.scalars(), 1.0 - o.lr * o.weight_decay, o.lr);
    stages::decay_and_update(be, W, D.as_const(), s.scalars());
  }
};

/// The list of rules: every rule an optimizer group can run. A new rule is its header and one entry here.
template <class T, class Backend>
using any_rule = std::variant<muon<T, Backend>, adamuon<T, Backend>, namo<T, Backend>, namo_d<T, Backend>,
                              adamw<T, Backend>>;

}  // namespace orthopt
