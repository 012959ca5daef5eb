// SPDX-License-Identifier: Apache-2.0
//
// The parameter registry both optimizers are made of (orthopt::optimizer, orthopt::distributed_optimizer):
// groups (a rule, a base learning rate, a schedule), parameters (a name, a group, a view of the host's
// memory, why the router sent it there), their states, the per-parameter Newton–Schulz settings, and
// the step transaction — check everything, then apply, or abandon with nothing changed.
//
// Every per-parameter and per-group feature lives here once, so both optimizers have the same API for
// it. What differs is where states live: an optimizer makes a parameter's state when the parameter is
// registered; a distributed optimizer makes it later, on the rank that owns the parameter only
// (has_state). Newton–Schulz settings given before a state exists (set_ns_steps, set_ns_stop_tolerance,
// record_ns_residuals) are kept and applied when it is made.
//
// A registry is not used on its own: it is the public base of the two optimizers, whose step()
// run the transaction (check_step, then apply_checked_step or abandon_checked_step).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "orthopt/backend.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/routing.hpp"
#include "orthopt/rules/rule_list.hpp"
#include "orthopt/lr_schedule.hpp"
#include "orthopt/tensor_views.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

/// A group: a rule with its hyper-parameters, a base learning rate and a schedule. Each step uses
/// lr = lr × schedule(steps_taken) for every parameter of the group.
template <class T, class Backend>
struct param_group {
  std::string name;
  any_rule<T, Backend> rule;
  double lr = 0.0;  ///< the base learning rate (taken from the rule's options when the group is made)
  lr_schedule schedule = constant_schedule{};

  [[nodiscard]] rule_kind kind() const {
    return std::visit([](const auto& r) { return std::decay_t<decltype(r)>::kind; }, rule);
  }
  /// The rule's options (muon_options, adamuon_options, namo_options for NAMO and NAMO-D,
  /// adamw_options); value_error when the rule takes other options. Their `lr` is overwritten by step().
  template <class Options>
  [[nodiscard]] Options& options() {
    return std::visit(
        [this](auto& r) -> Options& {
          if constexpr (std::is_same_v<typename std::decay_t<decltype(r)>::options_type, Options>) {
            return r.options();
          } else {
            throw value_error("orthopt::param_group '" + name + "': the rule is " +
                              rule_name(std::decay_t<decltype(r)>::kind) + ", which takes other options");
          }
        },
        rule);
  }
};

namespace detail {
/// The registration checks of a parameter view: a batch of at least one matrix, usable views, no
/// element addressed twice, and no memory shared with a registered parameter.
/// `for_each_registered(visit)` calls visit(name, batch_view) for each registered parameter.
template <class T, class ForEachRegistered>
void check_new_param(const char* who, const std::string& name, batch_view<T> param,
                     ForEachRegistered for_each_registered) {
  if (param.count < 1) {
    throw shape_error(std::string(who) + ": parameter '" + name + "' is a batch of " + std::to_string(param.count) +
                      " matrices; at least 1 is needed");
  }
  if (param.count > 1 && param.batch_stride == 0) {
    throw shape_error(std::string(who) + ": parameter '" + name +
                      "' is a batch whose matrices all share one address (batch stride 0)");
  }
  const std::string what = "parameter '" + name + "'";
  check_view(param.first, who, what.c_str());
  for (index_t k = 1; k < param.count; ++k) check_view(param[k], who, what.c_str());
  // Memory shared with itself or with a registered parameter would be updated twice per step (tied
  // weights: register the shared tensor once), or read after another update wrote it.
  for (index_t k = 0; k < param.count; ++k) {
    if (view_overlaps_itself(param[k])) {
      throw shape_error(std::string(who) + ": " + what + " [" + describe_view(param[k]) + "] addresses some elements twice");
    }
  }
  if (const auto [j, k] = overlapping_batch_items(param); j >= 0) {
    throw shape_error(std::string(who) + ": " + what + ": batch items " + std::to_string(j) + " and " + std::to_string(k) +
                      " share memory [" + describe_view(param[j]) + "], [" + describe_view(param[k]) + "]");
  }
  for_each_registered([&](const std::string& other_name, const batch_view<T>& other) {
    if (const auto [j, k] = overlapping_items(param, other); j >= 0) {
      throw shape_error(std::string(who) + ": " + what + " [" + describe_view(param[j]) + "] shares memory with parameter '" +
                        other_name + "' [" + describe_view(other[k]) +
                        "]; each step would update it twice (for tied weights, register the shared tensor once)");
    }
  });
}

/// "count x rows x cols" (or "rows x cols" for one matrix), for messages.
template <class U>
std::string batch_shape(const batch_view<U>& b) {
  return (b.count == 1 ? std::string() : std::to_string(b.count) + " x ") + shape_string(b.rows(), b.cols());
}

/// A view at `data` with the parameter's shape, batch layout and strides (gradient_like).
template <class T>
batch_view<const T> view_like(const batch_view<T>& param, const T* data) {
  return {matrix_view<const T>(data, param.first.rows, param.first.cols, param.first.row_stride, param.first.col_stride),
          param.count, param.batch_stride};
}

/// The checks of a step's gradient that read no values: the parameter's shape, usable views, and no
/// memory shared with any parameter (the step would read it after an update wrote it; two comparisons
/// per parameter when the memory is separate, an exact check where ranges meet).
template <class T, class ForEachRegistered>
void check_gradient_view(const char* who, const std::string& name, const batch_view<const T>& grad,
                         const batch_view<T>& param, ForEachRegistered for_each_registered) {
  if (grad.count != param.count || grad.rows() != param.rows() || grad.cols() != param.cols()) {
    throw shape_error(std::string(who) + ": the gradient of '" + name + "' is " + batch_shape(grad) +
                      " but the parameter is " + batch_shape(param) + "; nothing was changed");
  }
  for (index_t k = 0; k < grad.count; ++k) {
    if (!view_is_usable(grad[k])) {  // the message is built only then: a step must not allocate
      const std::string what = "gradient of '" + name + "'";
      check_view(grad[k], who, what.c_str());
    }
  }
  for_each_registered([&](const std::string& other_name, const batch_view<T>& other) {
    if (const auto [j, k] = overlapping_items(grad, other); j >= 0) {
      throw shape_error(std::string(who) + ": the gradient of '" + name + "' [" + describe_view(grad[j]) +
                        "] shares memory with parameter '" + other_name + "' [" + describe_view(other[k]) +
                        "]; nothing was changed");
    }
  });
}

/// A rule's orthogonalizer settings when it orthogonalizes by Newton–Schulz; nullptr for AdamW and for
/// the exact polar factor.
template <class Rule>
const orthogonalizer* newton_schulz_settings(const Rule& rule) {
  return std::visit(
      [](const auto& r) {
        const orthogonalizer* o = r.ortho();
        return o != nullptr && !o->exact ? o : nullptr;
      },
      rule);
}
/// Whether a rule orthogonalizes by Newton–Schulz.
template <class Rule>
bool rule_runs_newton_schulz(const Rule& rule) {
  return newton_schulz_settings(rule) != nullptr;
}
/// The Newton–Schulz iterations a rule's options configure (0 without Newton–Schulz).
template <class Rule>
int rule_ns_steps(const Rule& rule) {
  const orthogonalizer* o = newton_schulz_settings(rule);
  return o != nullptr ? o->ns.steps : 0;
}
}  // namespace detail

/// Groups, parameters, states and the step transaction of an optimizer (see the file comment). The
/// public base of orthopt::optimizer and orthopt::distributed_optimizer; not constructible alone.
template <class T, class Backend>
class param_registry {
 public:
  using value_type = T;
  using backend_type = Backend;
  using rule_type = any_rule<T, Backend>;
  using group_type = param_group<T, Backend>;
  using state_type = param_state<T, Backend>;
  using gradient_view = batch_view<const T>;

  // ---- Setup (allocates) ----------------------------------------------------------------------

  /// A new group. Its base learning rate is the rule's options().lr; its schedule defaults to constant.
  group_id add_group(std::string name, rule_type rule, lr_schedule schedule = constant_schedule{}) {
    const std::string who = where("add_group");
    if (groups_closed_ != nullptr) throw value_error(who + ": " + groups_closed_);
    if (name.empty()) throw value_error(who + ": the group name is empty");
    for (const auto& g : groups_) {
      if (g.name == name) throw value_error(who + ": a group named '" + name + "' exists already");
    }
    if (!schedule) throw value_error(who + ": group '" + name + "' has an empty schedule");
    const double base_lr = std::visit([](auto& r) { return r.options().lr; }, rule);
    // Reserve first, so a failed allocation leaves the two per-group vectors the same length.
    groups_.reserve(groups_.size() + 1);
    saved_lr_.reserve(groups_.size() + 1);
    groups_.push_back(group_type{std::move(name), std::move(rule), base_lr, std::move(schedule)});
    saved_lr_.push_back(0.0);
    return {groups_.size() - 1};
  }

  /// Register a parameter (or a batch of same-shape matrices updated independently) with a group. The
  /// view must stay valid, at the same address, while the optimizer is used.
  param_id add_param(std::string name, group_id g, batch_view<T> param) {
    return add_param_routed(std::move(name), g, param, route_reason::explicit_group, "registered with this group");
  }
  param_id add_param(std::string name, group_id g, matrix_view<T> param) {
    return add_param(std::move(name), g, as_batch(param));
  }
  /// Register a parameter with the group `router` chooses (see param_router); routing() shows why.
  param_id add_param(std::string name, batch_view<T> param, const param_router& router) {
    check_group(router.matrix_group, "add_param (router's matrix group)");
    check_group(router.adamw_group, "add_param (router's AdamW group)");
    if (groups_[router.adamw_group.index].kind() != rule_kind::adamw) {
      throw value_error(where("add_param") + ": the router's AdamW group '" + groups_[router.adamw_group.index].name +
                        "' runs " + rule_name(groups_[router.adamw_group.index].kind()) + ", not adamw");
    }
    route_decision d = router.decide(name, param.rows(), param.cols());
    return add_param_routed(std::move(name), d.group, param, d.reason, std::move(d.why));
  }
  param_id add_param(std::string name, matrix_view<T> param, const param_router& router) {
    return add_param(std::move(name), as_batch(param), router);
  }

  /// Throws value_error naming every override of `router` that matches no registered parameter (a
  /// misspelt override would otherwise do nothing, silently).
  void check_overrides_used(const param_router& router) const {
    std::string unused;
    for (const auto& o : router.overrides) {
      if (!find_param(o.first)) unused += (unused.empty() ? "'" : ", '") + o.first + "'";
    }
    if (!unused.empty()) throw value_error(std::string(name_) + ": router overrides name no registered parameter: " + unused);
  }

  /// Bind the gradient step() reads for `p` (for hosts whose gradient buffers keep their addresses).
  void bind_gradient(param_id p, gradient_view grad) {
    check_param(p, "bind_gradient");
    params_[p.index].bound_gradient = grad;
  }
  void bind_gradient(param_id p, const_matrix_view<T> grad) { bind_gradient(p, as_batch(grad)); }

  /// A gradient view with the parameter's shape, batch layout and strides, at `data`.
  [[nodiscard]] gradient_view gradient_like(param_id p, const T* data) const {
    check_param(p, "gradient_like");
    return detail::view_like(params_[p.index].param, data);
  }

  // ---- Inspection ------------------------------------------------------------------------------

  /// Completed optimizer steps; the schedules see this value at the next step.
  [[nodiscard]] std::int64_t steps_taken() const noexcept { return steps_taken_; }
  /// Set the completed step count (checkpoint loading, or a restart that keeps no state).
  void set_steps_taken(std::int64_t n) {
    if (n < 0) throw value_error(where("set_steps_taken") + ": " + std::to_string(n) + " < 0");
    steps_taken_ = n;
  }
  /// The learning rate the next step will use for group g: base lr × schedule(steps_taken()).
  [[nodiscard]] double next_lr(group_id g) const {
    check_group(g, "next_lr");
    return groups_[g.index].lr * groups_[g.index].schedule(steps_taken_);
  }

  [[nodiscard]] std::size_t group_count() const noexcept { return groups_.size(); }
  [[nodiscard]] std::size_t param_count() const noexcept { return params_.size(); }
  /// A group's rule, base lr and schedule, to read or change between steps (a distributed optimizer's
  /// changes must be made alike on every rank).
  [[nodiscard]] group_type& group(group_id g) {
    check_group(g, "group");
    return groups_[g.index];
  }
  [[nodiscard]] const group_type& group(group_id g) const {
    check_group(g, "group");
    return groups_[g.index];
  }
  [[nodiscard]] std::optional<group_id> find_group(std::string_view name) const {
    for (std::size_t i = 0; i < groups_.size(); ++i)
      if (groups_[i].name == name) return group_id{i};
    return std::nullopt;
  }
  [[nodiscard]] std::optional<param_id> find_param(std::string_view name) const {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (params_[i].name == name) return param_id{i};
    return std::nullopt;
  }
  [[nodiscard]] const std::string& param_name(param_id p) const {
    check_param(p, "param_name");
    return params_[p.index].name;
  }
  [[nodiscard]] group_id group_of(param_id p) const {
    check_param(p, "group_of");
    return params_[p.index].group;
  }
  [[nodiscard]] batch_view<T> param_view(param_id p) const {
    check_param(p, "param_view");
    return params_[p.index].param;
  }
  /// Whether p's state lives in this object: always in an optimizer; in a distributed optimizer on the
  /// owning rank, after finalize().
  [[nodiscard]] bool has_state(param_id p) const {
    check_param(p, "has_state");
    return params_[p.index].state.has_value();
  }
  /// The parameter's state: its persistent tensors (slots()) are what checkpoints save. value_error
  /// when it does not live here (has_state).
  [[nodiscard]] state_type& state(param_id p) { return state_of(p, "state"); }
  [[nodiscard]] const state_type& state(param_id p) const {
    return const_cast<param_registry*>(this)->state_of(p, "state");
  }

  /// For every parameter, in registration order: its group, rule and why it went there.
  [[nodiscard]] std::vector<route_record> routing() const {
    std::vector<route_record> out;
    out.reserve(params_.size());
    for (const auto& p : params_) {
      const group_type& g = groups_[p.group.index];
      out.push_back({p.name, g.name, g.kind(), p.reason, p.why, p.param.rows(), p.param.cols(), p.param.count});
    }
    return out;
  }
  /// routing() as text, one line per parameter: "name  shape  -> group (rule): why".
  [[nodiscard]] std::string routing_table() const {
    std::string s;
    for (const auto& r : routing()) {
      s += r.name + "  " + (r.count > 1 ? std::to_string(r.count) + "x" : std::string()) + shape_string(r.rows, r.cols) +
           "  -> " + r.group + " (" + rule_name(r.rule) + "): " + r.why + "\n";
    }
    return s;
  }

  // ---- Newton–Schulz settings per parameter and per group ----------------------------------------

  /// The Newton–Schulz iterations parameter p runs per step; value_error for a parameter whose rule
  /// has no Newton–Schulz plan (AdamW, or the exact polar factor).
  [[nodiscard]] int ns_steps(param_id p) const {
    check_ns_param(p, "ns_steps");
    return current_ns_steps(p.index);
  }
  /// Set parameter p's iteration count (≥ 1).
  void set_ns_steps(param_id p, int steps) {
    refuse_if_counts_locked("set_ns_steps");
    check_ns_param(p, "set_ns_steps");
    if (steps < 1) {
      throw value_error(where("set_ns_steps") + ": steps = " + std::to_string(steps) + " for '" + params_[p.index].name +
                        "'; at least 1 is needed");
    }
    set_ns_steps_of(p.index, steps);
  }
  /// Set the iteration count of every parameter of group g (a group whose rule orthogonalizes by
  /// Newton–Schulz; value_error otherwise). Parameters registered later keep the rule's own count.
  void set_ns_steps(group_id g, int steps) {
    refuse_if_counts_locked("set_ns_steps");
    const auto members = ns_members(g, "set_ns_steps");
    if (steps < 1) {
      throw value_error(where("set_ns_steps") + ": steps = " + std::to_string(steps) + " for group '" +
                        groups_[g.index].name + "'; at least 1 is needed");
    }
    for (std::size_t i : members) set_ns_steps_of(i, steps);
  }
  /// Residual-based stopping inside each call for every parameter of group g (tolerance > 0; 0 turns it
  /// off): a call stops at the first iteration whose residual ‖XXᵀ − I‖_F/√m is ≤ tolerance and never
  /// runs more than the parameter's count. It reads the residual back to the host each iteration:
  /// meant for CPU backends; on a GPU prefer a committed budget.
  void set_ns_stop_tolerance(group_id g, double tolerance) {
    refuse_if_counts_locked("set_ns_stop_tolerance");
    const auto members = ns_members(g, "set_ns_stop_tolerance");
    if (!(tolerance >= 0.0) || !std::isfinite(tolerance)) {
      throw value_error(where("set_ns_stop_tolerance") + ": tolerance = " + detail::value_text(tolerance) + " for group '" +
                        groups_[g.index].name + "' must be finite and >= 0");
    }
    for (std::size_t i : members) {
      if (current_ns_steps(i) > ns_max_recorded_steps && tolerance > 0.0) {
        throw value_error(where("set_ns_stop_tolerance") + ": '" + params_[i].name + "' runs " +
                          std::to_string(current_ns_steps(i)) + " iterations; stopping works up to " +
                          std::to_string(ns_max_recorded_steps));
      }
    }
    for (std::size_t i : members) {
      params_[i].ns.stop_tolerance = tolerance;
      if (auto* ns = plan_of(i)) ns->stop_at_residual(tolerance);
    }
  }
  /// Record the residuals r_0 … r_T of every Newton–Schulz call of group g (ns_residuals reads them).
  void record_ns_residuals(group_id g, bool on) {
    const auto members = ns_members(g, "record_ns_residuals");
    // All or nothing: a plan that cannot record refuses before any member is switched.
    if (on) {
      for (std::size_t i : members) {
        if (auto* ns = plan_of(i); ns != nullptr && !ns->can_record_residuals()) ns->record_residuals(true);
      }
    }
    for (std::size_t i : members) {
      params_[i].ns.record_residuals = on;
      if (auto* ns = plan_of(i)) ns->record_residuals(on);
    }
  }
  /// The residuals r_0 … r_T of parameter p's last Newton–Schulz call (matrix k of its last chunk),
  /// copied to the host; empty before any call that measured them. Needs p's state here. Allocates.
  [[nodiscard]] std::vector<double> ns_residuals(param_id p, index_t k = 0) {
    check_ns_param(p, "ns_residuals");
    auto* ns = state_of(p, "ns_residuals").ns_plan();
    if (!ns->records_residuals() && ns->stop_tolerance() == 0.0) return {};
    if (k < 0 || k >= ns->batch_capacity()) {
      throw value_error(where("ns_residuals") + ": matrix " + std::to_string(k) + " of '" + params_[p.index].name +
                        "', whose calls hold " + std::to_string(ns->batch_capacity()));
    }
    return ns->residuals(k);
  }

 protected:
  /// `name`: the owning class in messages ("orthopt::optimizer"). `states_at_registration`: whether
  /// add_param makes the state (else the owner calls make_state).
  param_registry(const char* name, bool states_at_registration)
      : name_(name),
        step_who_(std::string(name) + "::step"),
        states_at_registration_(states_at_registration),
        skips_missing_gradients_(states_at_registration) {}
  // The states own backend memory: a registry moves, it does not copy.
  param_registry(const param_registry&) = delete;
  param_registry& operator=(const param_registry&) = delete;
  param_registry(param_registry&&) noexcept = default;
  param_registry& operator=(param_registry&&) noexcept = default;
  ~param_registry() = default;

  /// The Newton–Schulz settings a parameter keeps whether or not its state exists yet.
  struct ns_settings {
    int steps = 0;  ///< 0: the rule's own count
    double stop_tolerance = 0.0;
    bool record_residuals = false;
  };
  struct param_entry {
    std::string name;
    group_id group;
    batch_view<T> param;
    std::optional<state_type> state;
    gradient_view bound_gradient{};
    route_reason reason;
    std::string why;
    ns_settings ns;
  };

  /// "orthopt::optimizer::add_param", for messages.
  [[nodiscard]] std::string where(const char* member) const { return std::string(name_) + "::" + member; }

  void check_group(group_id g, const char* who) const {
    if (g.index >= groups_.size()) {
      throw value_error(where(who) + ": group index " + std::to_string(g.index) + " but the optimizer has " +
                        std::to_string(groups_.size()) + " groups");
    }
  }
  void check_param(param_id p, const char* who) const {
    if (p.index >= params_.size()) {
      throw value_error(where(who) + ": parameter index " + std::to_string(p.index) + " but the optimizer has " +
                        std::to_string(params_.size()) + " parameters");
    }
  }

  /// Makes parameter i's state from its group's rule and applies its Newton–Schulz settings. Throws
  /// (allocation, a plan refusing a setting) with the registry unchanged.
  void make_state(std::size_t i) {
    param_entry& e = params_[i];
    state_type s = std::visit([&](auto& r) { return r.make_state(e.param.rows(), e.param.cols(), e.param.count); },
                              groups_[e.group.index].rule);
    if (auto* ns = s.ns_plan()) {
      if (e.ns.steps > 0) ns->set_steps(e.ns.steps);
      if (e.ns.record_residuals) ns->record_residuals(true);
      if (e.ns.stop_tolerance > 0.0) ns->stop_at_residual(e.ns.stop_tolerance);
    }
    e.state.emplace(std::move(s));
  }
  /// Drops every state (a distributed optimizer whose finalize() failed on some rank).
  void drop_states() noexcept {
    for (param_entry& e : params_) e.state.reset();
  }

  /// The Newton–Schulz plan of parameter i's state, or nullptr (no state here, or no plan).
  newton_schulz<T, Backend>* plan_of(std::size_t i) noexcept {
    return params_[i].state ? params_[i].state->ns_plan() : nullptr;
  }
  /// The checks every caller of set_ns_steps(param) & co. runs.
  void check_ns_param(param_id p, const char* who) const {
    check_param(p, who);
    if (!detail::rule_runs_newton_schulz(groups_[params_[p.index].group.index].rule)) {
      throw value_error(where(who) + ": parameter '" + params_[p.index].name + "' runs " +
                        rule_name(groups_[params_[p.index].group.index].kind()) +
                        " without a Newton–Schulz plan (AdamW, or the exact polar factor)");
    }
  }
  /// The parameters of group g; value_error if its rule has no Newton–Schulz plan.
  std::vector<std::size_t> ns_members(group_id g, const char* who) const {
    check_group(g, who);
    if (!detail::rule_runs_newton_schulz(groups_[g.index].rule)) {
      throw value_error(where(who) + ": group '" + groups_[g.index].name + "' runs " + rule_name(groups_[g.index].kind()) +
                        " without Newton–Schulz");
    }
    std::vector<std::size_t> members;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (params_[i].group == g) members.push_back(i);
    }
    return members;
  }
  /// Parameter i's count: its plan's when its state is here, else the one set, else the rule's.
  [[nodiscard]] int current_ns_steps(std::size_t i) const {
    if (params_[i].state && params_[i].state->ns_plan() != nullptr) return params_[i].state->ns_plan()->steps();
    if (params_[i].ns.steps > 0) return params_[i].ns.steps;
    return detail::rule_ns_steps(groups_[params_[i].group.index].rule);
  }
  void set_ns_steps_of(std::size_t i, int steps) {
    if (auto* ns = plan_of(i)) ns->set_steps(steps);
    params_[i].ns.steps = steps;
  }
  void refuse_if_counts_locked(const char* who) const {
    if (counts_locked_ != nullptr) throw value_error(where(who) + ": " + counts_locked_);
  }

  state_type& state_of(param_id p, const char* who) {
    check_param(p, who);
    if (!params_[p.index].state) {
      throw value_error(where(who) + ": the state of parameter '" + params_[p.index].name +
                        "' does not live here (a distributed optimizer keeps it on the rank that owns it: owns(p))");
    }
    return *params_[p.index].state;
  }

  /// Registration with the checks and, in an optimizer, the state.
  param_id add_param_routed(std::string name, group_id g, batch_view<T> param, route_reason reason, std::string why) {
    const std::string who = where("add_param");
    check_group(g, "add_param");
    if (params_closed_ != nullptr) throw value_error(who + ": parameter '" + name + "' " + params_closed_);
    if (name.empty()) throw value_error(who + ": the parameter name is empty");
    if (find_param(name)) throw value_error(who + ": a parameter named '" + name + "' exists already");
    detail::check_new_param(who.c_str(), name, param, [this](auto&& visit) {
      for (const param_entry& other : params_) visit(other.name, other.param);
    });
    detail::checked_extent_product(who.c_str(), "parameter '" + name + "'", param.rows(), param.cols(), param.count, sizeof(T));
    params_.reserve(params_.size() + 1);
    step_order_.reserve(params_.size() + 1);  // a parallel step's scratch: it allocates nothing
    step_costs_.reserve(params_.size() + 1);
    params_.push_back(param_entry{std::move(name), g, param, std::nullopt, {}, reason, std::move(why), {}});
    if (states_at_registration_) {
      try {
        make_state(params_.size() - 1);
      } catch (...) {
        params_.pop_back();
        throw;
      }
    }
    return {params_.size() - 1};
  }

  // ---- The step transaction ----------------------------------------------------------------------

  /// The checks of a step that read no values, for every parameter: shape, usable views, no memory
  /// shared with a parameter. Changes nothing.
  template <class GradientAt>
  void check_gradient_views(GradientAt gradient_at) const {
    for (std::size_t i = 0; i < params_.size(); ++i) {
      detail::check_gradient_view(step_who_.c_str(), params_[i].name, gradient_at(i), params_[i].param,
                                  [this](auto&& visit) {
                                    for (const param_entry& q : params_) visit(q.name, q.param);
                                  });
    }
  }

  /// The checks of a step, before anything is written: (1) every group's scheduled learning rate and
  /// hyper-parameters, (2) every gradient's shape and views, and the values of the gradient and state of
  /// every parameter whose state is here, (3) every such state can count one more step. On success
  /// every group's rule lr holds the step's scheduled value (apply_checked_step uses it;
  /// abandon_checked_step puts the previous values back); on failure it throws and nothing has changed.
  template <class GradientAt>
  void check_step(GradientAt gradient_at) {
    const std::string& who = step_who_;  // built once: a step allocates nothing until it throws
    std::size_t written = 0;  // groups whose rule lr has been overwritten (and saved)
    constexpr std::int64_t largest_count = std::numeric_limits<std::int64_t>::max();
    if (steps_taken_ == largest_count) {
      throw value_error(who + ": steps_taken = " + std::to_string(steps_taken_) +
                        ", the largest count there is; nothing was changed");
    }
    try {
      // 1. The rule's lr is set so that validate() sees the value the step will use.
      for (group_type& g : groups_) {
        if (!g.schedule) {
          throw value_error(who + ": group '" + g.name +
                            "' has an empty schedule (set group(g).schedule to a callable); nothing was changed");
        }
        const double multiplier = g.schedule(steps_taken_);
        const double lr = g.lr * multiplier;
        if (!std::isfinite(lr) || lr < 0.0) {
          throw value_error(who + ": group '" + g.name + "' gets lr = " + detail::value_text(g.lr) + " x " +
                            detail::value_text(multiplier) + " = " + detail::value_text(lr) + " at step " +
                            std::to_string(steps_taken_) + "; it must be finite and >= 0; nothing was changed");
        }
        std::visit(
            [&](auto& r) {
              saved_lr_[written] = r.options().lr;
              r.options().lr = lr;
            },
            g.rule);
        ++written;
        std::visit([](auto& r) { r.validate_options(); }, g.rule);
      }
      // 2. Every gradient.
      for (std::size_t i = 0; i < params_.size(); ++i) check_gradient(params_[i], gradient_at(i));
      // 3. Every state can count one more step (the rule would refuse after earlier parameters were
      //    written).
      for (const param_entry& p : params_) {
        if (p.state && p.state->step() == largest_count) {
          throw value_error(who + ": the state of '" + p.name + "' is at step count " + std::to_string(p.state->step()) +
                            ", the largest there is; nothing was changed");
        }
      }
    } catch (...) {
      restore_lrs(written);
      throw;
    }
  }

  /// Puts back the rule lrs a successful check_step replaced (the step will not run).
  void abandon_checked_step() noexcept { restore_lrs(groups_.size()); }

  /// The updates of a step whose check_step passed: every parameter whose state is here, in
  /// registration order; then the step count.
  template <class GradientAt>
  void apply_checked_step(GradientAt gradient_at) {
    const auto step_param = [&](std::size_t i) {
      param_entry& p = params_[i];
      // check_step made every check the rule's step would (views, values, counts, options).
      std::visit([&](auto& r) { r.apply_checked_step(p.param, gradient_at(i), *p.state); }, groups_[p.group.index].rule);
    };
    const auto steps_now = [&](std::size_t i) {
      const param_entry& p = params_[i];
      return p.state && !(skips_missing_gradients_ && gradient_at(i).count == 0);
    };
    const int lanes = step_lanes();
    if (lanes <= 1) {
      for (std::size_t i = 0; i < params_.size(); ++i) {
        if (steps_now(i)) step_param(i);
      }
    } else {
      step_in_lanes(lanes, steps_now, step_param);
    }
    ++steps_taken_;
  }

  /// Whether steps may run several parameters at once (see optimizer::set_parallel_parameters).
  bool parallel_parameters_ = false;

  std::vector<group_type> groups_;
  std::vector<param_entry> params_;
  std::int64_t steps_taken_ = 0;
  /// When set, add_group / add_param / the Newton–Schulz count setters refuse, giving this reason
  /// (add_param's follows "parameter 'name' ").
  const char* groups_closed_ = nullptr;
  const char* params_closed_ = nullptr;
  const char* counts_locked_ = nullptr;

 private:
  /// How many parameters a step runs at once: the fewest lanes of any state's backend handle, when
  /// parallel steps are on, the backend runs concurrent lanes and the program has OpenMP; else 1.
  int step_lanes() {
#if defined(_OPENMP)
    if constexpr (detail::runs_concurrent_lanes<Backend>) {
      if (!parallel_parameters_ || detail::concurrent_lane >= 0 || omp_in_parallel()) return 1;
      int lanes = std::numeric_limits<int>::max(), with_state = 0;
      for (const param_entry& p : params_) {
        if (!p.state) continue;
        lanes = std::min(lanes, p.state->backend().lanes());
        ++with_state;
      }
      return with_state > 1 ? std::min(lanes, with_state) : 1;
    }
#endif
    return 1;
  }

  /// The parallel form of a step's updates. Largest first (the rule's step_cost): a parameter whose work
  /// is at least a lane's share of the step's runs alone, its products on all of the handle's threads;
  /// the rest are taken one at a time by `lanes` threads, each in a concurrent_lane_scope, so every
  /// product of theirs runs on one thread. A parameter's update does not depend on which thread ran it.
  template <class StepsNow, class StepParam>
  void step_in_lanes(int lanes, StepsNow& steps_now, StepParam& step_param) {
    step_order_.clear();
    step_costs_.assign(params_.size(), 0.0);
    double total = 0.0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (!steps_now(i)) continue;
      const param_entry& p = params_[i];
      const auto* plan = p.state->ns_plan();
      step_costs_[i] = std::visit(
          [&](auto& r) { return r.step_cost(p.param.rows(), p.param.cols(), p.param.count, plan ? plan->steps() : 0); },
          groups_[p.group.index].rule);
      total += step_costs_[i];
      step_order_.push_back(i);
    }
    std::sort(step_order_.begin(), step_order_.end(), [this](std::size_t a, std::size_t b) {
      return step_costs_[a] > step_costs_[b] || (step_costs_[a] == step_costs_[b] && a < b);
    });
    const double share = total / lanes;
    std::size_t first_shared = 0;
    while (first_shared < step_order_.size() && step_costs_[step_order_[first_shared]] >= share) {
      step_param(step_order_[first_shared++]);
    }
    if (first_shared == step_order_.size()) return;
#if defined(_OPENMP)
    std::atomic<std::size_t> next{first_shared};
    std::atomic<bool> failed{false};
    std::exception_ptr failure;  // an exception must not leave an OpenMP region
#pragma omp parallel num_threads(lanes)
    {
      const concurrent_lane_scope lane(omp_get_thread_num());
      for (std::size_t k = next.fetch_add(1); k < step_order_.size() && !failed.load(); k = next.fetch_add(1)) {
        try {
          step_param(step_order_[k]);
        } catch (...) {
#pragma omp critical(orthopt_parallel_step_failure)
          {
            if (!failure) failure = std::current_exception();
          }
          failed.store(true);
        }
      }
    }
    if (failure) std::rethrow_exception(failure);
#else
    for (std::size_t k = first_shared; k < step_order_.size(); ++k) step_param(step_order_[k]);
#endif
  }

  void restore_lrs(std::size_t groups) noexcept {
    for (std::size_t k = 0; k < groups; ++k) {
      std::visit([&](auto& r) { r.options().lr = saved_lr_[k]; }, groups_[k].rule);
    }
  }

  void check_gradient(param_entry& p, const gradient_view& grad) {
    const std::string& who = step_who_;
    group_type& g = groups_[p.group.index];
    const rule_kind kind = g.kind();
    if (p.state && p.state->kind() != kind) {
      throw value_error(who + ": parameter '" + p.name + "' has a " + rule_name(p.state->kind()) + " state but its group '" +
                        g.name + "' now runs " + rule_name(kind) +
                        " (a group's rule kind cannot change after registration); nothing was changed");
    }
    if (skips_missing_gradients_ && grad.count == 0) return;  // no gradient this step: p is skipped
    detail::check_gradient_view(who.c_str(), p.name, grad, p.param, [this](auto&& visit) {
      for (const param_entry& q : params_) visit(q.name, q.param);
    });
    // A gradient in a state's memory would be read while a step writes it (and, in a parallel step, by
    // another thread): refused here, before anything is written, for every state that lives here.
    for (index_t k = 0; k < grad.count; ++k) {
      const auto range = detail::byte_range(grad[k]);
      for (const param_entry& q : params_) {
        if (!q.state) continue;
        if (const char* buffer = q.state->buffer_meeting(range.first, range.second)) {
          throw shape_error(who + ": the gradient of '" + p.name + "'" +
                            (grad.count > 1 ? " (batch item " + std::to_string(k) + ")" : std::string()) + " [" +
                            describe_view(grad[k]) + "] lies in the " + buffer + " of the state of '" + q.name +
                            "'; pass gradients in memory of your own; nothing was changed");
        }
      }
    }
    if (!p.state) return;
    // Every other check the rule's step makes on the views, before any parameter is written.
    try {
      std::visit([&](auto& r) { r.check_step_views(p.param, grad, *p.state); }, g.rule);
    } catch (const shape_error& e) {
      throw shape_error(who + ": parameter '" + p.name + "': " + e.what() + "; nothing was changed");
    } catch (const value_error& e) {
      throw value_error(who + ": parameter '" + p.name + "': " + e.what() + "; nothing was changed");
    }
    // The rule's value check (NaN, Inf and its overflow limits on the gradient and the state), run here
    // for every parameter before any is stepped.
    const auto problem = std::visit(
        [&](auto& r) -> std::optional<value_problem> {
          if (!r.options().check_finite) return std::nullopt;
          return r.find_value_problem(grad, *p.state);
        },
        g.rule);
    if (!problem) return;
    const bool nonfinite = !std::isfinite(problem->entry.value);
    if (!problem->in_state && nonfinite) {
      throw value_error(who + ": the gradient of '" + p.name + "' has " + detail::value_text(problem->entry.value) + " at (" +
                        std::to_string(problem->entry.row) + ", " + std::to_string(problem->entry.col) + ")" +
                        (grad.count > 1 ? " of batch item " + std::to_string(problem->item) : std::string()) +
                        "; nothing was changed");
    }
    throw value_error(who + ": parameter '" + p.name + "': " + detail::describe_value_problem<T>(*problem, grad.count) +
                      "; nothing was changed");
  }

  const char* name_;
  std::string step_who_;  // name_ + "::step"
  bool states_at_registration_;
  // An empty gradient view (count 0) skips its parameter: the single-process optimizer's way of saying
  // "no gradient this step". A distributed step needs every rank's gradient of every parameter, so there
  // an empty view is refused as a shape mismatch.
  bool skips_missing_gradients_;
  std::vector<double> saved_lr_;                   // per group, scratch of a step: sized at add_group
  std::vector<std::size_t> step_order_;            // per parameter, scratch of a parallel step: reserved
  std::vector<double> step_costs_;                 // at add_param
};

}  // namespace orthopt
