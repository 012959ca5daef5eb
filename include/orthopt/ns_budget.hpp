// SPDX-License-Identifier: Apache-2.0
//
// An adaptive Newton–Schulz budget: observe how many iterations each matrix needs, then commit a step
// count per matrix (or per group of same-role matrices) within a total budget.
//
// The idea is AMO's ("AMO: Adaptive Muon Orthogonalization", docs/references.md: matrices differ in how hard they are
// to orthogonalize, by operator type, depth and training phase; observe early, then commit an NS budget
// per matrix or operator group). The paper gives no formula and its authors published no code; the rule
// below is orthopt's own, in that spirit. It is not the paper's method.
//
// The signal. Every Newton–Schulz iteration forms A = X·Xᵀ; r = ‖A − I‖_F/√m is the orthogonality
// residual of the current X, the root mean square of σ_i² − 1 over its singular values
// (newton_schulz::record_residuals; one reduction of A per iteration and one extra product per call).
//
// The rule (orthopt::optimizer::set_ns_budget runs it on every Newton–Schulz parameter):
//   1. Observe. For `observe_window` optimizer steps from `start_step`, every matrix runs
//      `observe_ns_steps` iterations (default: twice its configured count) and records, per call, the
//      first k with r_k ≤ τ, its residual target (k = observe_ns_steps + 1 when no iterate reached it).
//      τ defaults to ns_auto_residual_target(schedule): a little above the residual the schedule
//      settles at, since schedules tuned for speed (Keller's) oscillate around r ≈ 0.37 and never
//      converge further.
//   2. Need. A role's need n_r is the mean of those counts over the window and over its matrices
//      (a role: one parameter, or all parameters whose name matches one of `roles`).
//   3. Commit. c_r = clamp(⌈n_r⌉, min_ns_steps, max_ns_steps). The budget is
//      B = round(budget_fraction × Σ_p configured_p × matrices_p) iterations per optimizer step (1.0:
//      the uniform schedule's cost). While Σ c_r·m_r > B, one step is taken from the role with the most
//      to spare (largest c_r − n_r; never below min_ns_steps). With spend_whole_budget, while steps remain,
//      one is given to the role furthest below its need (smallest c_r − n_r; never above max_ns_steps).
//      The total then equals B whenever the bounds and the role sizes allow it, and never exceeds it
//      unless min_ns_steps alone does (min_ns_steps × Σ m_p > B, refused when the budget is set).
//   4. Hold the counts; with reobserve_every > 0, observe again that many steps after each commit.
// Harder matrices (larger n_r) thus get more steps; a budget below the uniform cost takes steps first
// from the matrices that need them least.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "orthopt/errors.hpp"
#include "orthopt/name_pattern.hpp"
#include "orthopt/newton_schulz.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

/// The residual a schedule settles at, as its scalar map predicts: Newton–Schulz acts on each singular
/// value alone (σ ← aσ + bσ³ + cσ⁵), so the residual of a reference spectrum — 256 singular values
/// spread log-uniformly over [1e-3, 1], normalized as the schedule normalizes — is followed through
/// 2T and 2T + 1 iterations (T = config.steps) and the larger of the two is returned. Keller's 5-step
/// table gives ≈ 0.37; Polar Express converges and gives ≈ 0. (AOL's row scaling is not modelled; its
/// Frobenius normalization is.)
inline double ns_settled_residual(const ns_config& config) {
  config.validate();
  constexpr int n = 256;
  std::vector<double> s(n);
  double norm2 = 0.0;
  for (int i = 0; i < n; ++i) {
    s[i] = std::pow(10.0, -3.0 * i / (n - 1));
    norm2 += s[i] * s[i];
  }
  const double scale = config.normalization == ns_normalization::safety ? 1.0 + config.safety : 1.0;
  for (double& v : s) v /= std::sqrt(norm2) * scale;
  const auto residual = [&] {
    double sum = 0.0;
    for (double v : s) sum += (v * v - 1.0) * (v * v - 1.0);
    return std::sqrt(sum / n);
  };
  const int horizon = 2 * config.steps;
  double settled = 0.0;
  for (int k = 1; k <= horizon + 1; ++k) {
    const ns_coefficients& c = config.step(k);
    for (double& v : s) v = c.a * v + c.b * v * v * v + c.c * v * v * v * v * v;
    if (k >= horizon) settled = std::max(settled, residual());
  }
  return settled;
}

/// The default residual target of ns_budget: τ = max(0.05, 1.1 × ns_settled_residual(config)). The
/// factor leaves room for a schedule's oscillation about its settled level (Keller's: τ ≈ 0.41); the
/// floor keeps τ above what float data resolves for converging schedules (Polar Express: τ = 0.05).
inline double ns_auto_residual_target(const ns_config& config) {
  return std::max(0.05, 1.1 * ns_settled_residual(config));
}

struct ns_budget_report;

/// Where an optimizer's adaptive budget is.
enum class ns_budget_phase : std::uint32_t {
  none = 0,       ///< no budget
  waiting = 1,    ///< set; the first window opens at start_step
  observing = 2,  ///< in an observation window
  committed = 3,  ///< counts committed
};

/// The knobs of the adaptive budget (the rule is in the file comment).
struct ns_budget_options {
  std::int64_t start_step = 0;       ///< the first observation window opens at this optimizer step
  std::int64_t observe_window = 50;  ///< optimizer steps per observation window (≥ 1)
  int observe_ns_steps = 0;          ///< iterations per call while observing; 0: 2 × configured
  double residual_target = 0.0;      ///< τ; 0: ns_auto_residual_target of each parameter's schedule
  int min_ns_steps = 2;              ///< the fewest iterations a role is committed
  int max_ns_steps = 0;              ///< the most; 0: the observation count
  double budget_fraction = 1.0;      ///< B = round(fraction × the uniform cost), in (0, 4]
  bool spend_whole_budget = true;    ///< hand out steps until B is reached (false: only what is needed)
  std::int64_t reobserve_every = 0;  ///< > 0: observe again this many steps after each commit
  std::vector<name_pattern> roles;   ///< parameters matching pattern j share one count (first match)
  /// Called after each commit with what was observed and decided (on the stepping thread).
  std::function<void(const ns_budget_report&)> on_commit;

  /// Throws value_error naming the first offending field.
  void validate() const {
    const auto fail = [](const std::string& what) { throw value_error("orthopt::ns_budget_options: " + what); };
    if (start_step < 0) fail("start_step = " + std::to_string(start_step) + " must be >= 0");
    if (observe_window < 1) fail("observe_window = " + std::to_string(observe_window) + " must be >= 1");
    if (observe_ns_steps < 0 || observe_ns_steps > ns_max_recorded_steps) {
      fail("observe_ns_steps = " + std::to_string(observe_ns_steps) + " must lie in [0, 64] (0: twice the configured count)");
    }
    if (!std::isfinite(residual_target) || residual_target < 0.0) {
      fail("residual_target = " + detail::value_text(residual_target) + " must be finite and >= 0 (0: automatic)");
    }
    if (min_ns_steps < 1) fail("min_ns_steps = " + std::to_string(min_ns_steps) + " must be >= 1");
    if (max_ns_steps < 0) fail("max_ns_steps = " + std::to_string(max_ns_steps) + " must be >= 0 (0: the observation count)");
    if (max_ns_steps > 0 && max_ns_steps < min_ns_steps) {
      fail("max_ns_steps = " + std::to_string(max_ns_steps) + " is below min_ns_steps = " + std::to_string(min_ns_steps));
    }
    if (!(budget_fraction > 0.0) || !(budget_fraction <= 4.0)) {
      fail("budget_fraction = " + detail::value_text(budget_fraction) + " must lie in (0, 4]");
    }
    if (reobserve_every < 0) fail("reobserve_every = " + std::to_string(reobserve_every) + " must be >= 0");
    for (const auto& p : roles) {
      if (p.text.empty()) fail("a role pattern is empty");
    }
  }
};

/// What the budget saw and decided for one parameter.
struct ns_budget_param_report {
  std::string name;
  std::string role;             ///< the matching role pattern, or the parameter's own name
  index_t matrices = 1;         ///< matrices in the parameter (a batch counts each)
  int configured_ns_steps = 0;  ///< the uniform count of its rule
  int observe_ns_steps = 0;     ///< iterations per call while observing
  double target = 0.0;          ///< τ
  ns_observation observed{};  ///< per-call needs and residuals over the window
  double role_need = 0.0;     ///< n_r of its role
  int committed_ns_steps = 0;    ///< c_r
};

/// One commit of the budget.
struct ns_budget_report {
  std::int64_t window_start = 0;    ///< the optimizer step the observation began at
  std::int64_t committed_at = 0;    ///< the optimizer step count at the commit
  std::int64_t budget = 0;          ///< B, iterations per optimizer step
  std::int64_t uniform_cost = 0;    ///< Σ configured × matrices
  std::int64_t committed_cost = 0;  ///< Σ committed × matrices
  std::vector<ns_budget_param_report> params;

  /// A text table, one line per parameter (allocates; for logs): the mean and largest observed need,
  /// the inputs' mean effective rank (fraction of m), the mean final residual, τ, and the committed count.
  [[nodiscard]] std::string table() const {
    std::string s = "ns budget committed at step " + std::to_string(committed_at) + ": " +
                    std::to_string(committed_cost) + " iterations per step (budget " + std::to_string(budget) +
                    ", uniform " + std::to_string(uniform_cost) + ")\n";
    char line[512];
    for (const auto& p : params) {
      std::snprintf(line, sizeof(line),
                    "  %-32s x%-2lld need %5.2f (max %2.0f; rank %.2f, r_end %.3f, tau %.3f) -> %2d (was %d)%s%s\n",
                    p.name.c_str(), static_cast<long long>(p.matrices), p.observed.mean_needed, p.observed.max_needed,
                    p.observed.mean_effective_rank, p.observed.mean_final_residual, p.target, p.committed_ns_steps,
                    p.configured_ns_steps, p.role == p.name ? "" : "  role ", p.role == p.name ? "" : p.role.c_str());
      s += line;
    }
    return s;
  }
};

/// Step 3 of the rule: committed[r] for roles of needs need[r], sizes matrices[r] and upper bounds
/// max_ns_steps[r] (all spans of one length), within `budget` iterations. Allocates nothing. Returns the committed cost Σ c_r·m_r.
inline std::int64_t commit_ns_steps(std::span<const double> need, std::span<const index_t> matrices, int min_ns_steps,
                                    std::span<const int> max_ns_steps, std::int64_t budget, bool spend_whole_budget,
                                    std::span<int> committed) {
  const std::size_t n = need.size();
  std::int64_t cost = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const double up = std::ceil(need[r] - 1e-9);
    int c = up < min_ns_steps ? min_ns_steps : (up > max_ns_steps[r] ? max_ns_steps[r] : static_cast<int>(up));
    committed[r] = c;
    cost += static_cast<std::int64_t>(c) * matrices[r];
  }
  while (cost > budget) {  // take from the role with the most to spare
    std::size_t best = n;
    for (std::size_t r = 0; r < n; ++r) {
      if (committed[r] <= min_ns_steps) continue;
      if (best == n) {
        best = r;
        continue;
      }
      const double slack = committed[r] - need[r], best_slack = committed[best] - need[best];
      if (slack > best_slack || (slack == best_slack && committed[r] > committed[best])) best = r;
    }
    if (best == n) break;  // every role at min_ns_steps
    --committed[best];
    cost -= matrices[best];
  }
  while (spend_whole_budget) {  // give to the role furthest below its need
    std::size_t best = n;
    for (std::size_t r = 0; r < n; ++r) {
      if (committed[r] >= max_ns_steps[r] || matrices[r] > budget - cost) continue;
      if (best == n) {
        best = r;
        continue;
      }
      const double slack = committed[r] - need[r], best_slack = committed[best] - need[best];
      if (slack < best_slack || (slack == best_slack && need[r] > need[best])) best = r;
    }
    if (best == n) break;
    ++committed[best];
    cost += matrices[best];
  }
  return cost;
}

/// One parameter an adaptive budget may run (ns_budget_controller): its name, its Newton–Schulz plan,
/// the count its rule configured, and its matrices (a batch counts each).
template <class T, class Backend>
struct ns_budget_candidate {
  std::string_view name;
  newton_schulz<T, Backend>* plan;
  int configured_ns_steps;
  index_t matrices;
};

/// The adaptive budget as a component: the rule in the file comment, run over a fixed set of
/// Newton–Schulz plans. An optimizer holds one (optimizer::set_ns_budget) and calls before_step and
/// after_step around each step's updates; it owns the plans' step counts while it exists. Made at
/// setup (allocates); the steps allocate nothing, except what on_commit does. The plans must stay at
/// their addresses while it exists (the optimizer refuses new parameters meanwhile).
template <class T, class Backend>
class ns_budget_controller {
 public:
  using candidate = ns_budget_candidate<T, Backend>;

  /// Participants, roles, targets and the report's fixed fields. Throws value_error (prefixed by `who`)
  /// for invalid options, when there is no candidate, or when min_ns_steps alone exceeds the budget.
  ns_budget_controller(ns_budget_options options, std::span<const candidate> candidates, const std::string& who)
      : options_(std::move(options)) {
    options_.validate();
    const ns_budget_options& o = options_;
    std::vector<std::string> role_names;
    std::int64_t uniform = 0, matrices = 0;
    for (const candidate& c : candidates) {
      std::string role(c.name);
      for (const auto& pat : o.roles) {
        if (pat.matches(c.name)) {
          role = pat.describe();
          break;
        }
      }
      std::size_t r = 0;
      while (r < role_names.size() && role_names[r] != role) ++r;
      if (r == role_names.size()) {
        role_names.push_back(role);
        role_matrices_.push_back(0);
        role_max_.push_back(ns_max_recorded_steps + 1);
      }
      const int configured = c.configured_ns_steps;
      const int observe = o.observe_ns_steps > 0 ? o.observe_ns_steps : std::min(2 * configured, ns_max_recorded_steps);
      const int most = o.max_ns_steps > 0 ? o.max_ns_steps : observe;
      if (most < o.min_ns_steps) {
        throw value_error(who + ": parameter '" + std::string(c.name) + "' would have max_ns_steps = " +
                          std::to_string(most) + " below min_ns_steps = " + std::to_string(o.min_ns_steps));
      }
      const double target =
          o.residual_target > 0.0 ? o.residual_target : ns_auto_residual_target(c.plan->config().with_steps(configured));
      participants_.push_back({c.plan, r, observe, configured, target});
      role_matrices_[r] += c.matrices;
      role_max_[r] = std::min(role_max_[r], most);
      uniform += static_cast<std::int64_t>(configured) * c.matrices;
      matrices += c.matrices;
      ns_budget_param_report pr;
      pr.name = std::string(c.name);
      pr.role = role;
      pr.matrices = c.matrices;
      pr.configured_ns_steps = configured;
      pr.observe_ns_steps = observe;
      pr.target = target;
      report_.params.push_back(std::move(pr));
    }
    if (participants_.empty()) {
      throw value_error(who + ": no registered parameter runs Newton–Schulz (register parameters first)");
    }
    report_.uniform_cost = uniform;
    report_.budget = std::llround(o.budget_fraction * static_cast<double>(uniform));
    if (static_cast<std::int64_t>(o.min_ns_steps) * matrices > report_.budget) {
      throw value_error(who + ": min_ns_steps = " + std::to_string(o.min_ns_steps) + " for " + std::to_string(matrices) +
                        " matrices costs " + std::to_string(static_cast<std::int64_t>(o.min_ns_steps) * matrices) +
                        " iterations per step, above the budget of " + std::to_string(report_.budget) +
                        " (budget_fraction " + detail::value_text(o.budget_fraction) + " of " + std::to_string(uniform) + ")");
    }
    role_need_.assign(role_names.size(), 0.0);
    role_calls_.assign(role_names.size(), 0.0);
    role_committed_.assign(role_names.size(), 0);
  }
  ns_budget_controller(const ns_budget_controller&) = delete;
  ns_budget_controller& operator=(const ns_budget_controller&) = delete;
  ns_budget_controller(ns_budget_controller&&) noexcept = default;
  ns_budget_controller& operator=(ns_budget_controller&&) noexcept = default;

  [[nodiscard]] const ns_budget_options& options() const noexcept { return options_; }
  [[nodiscard]] ns_budget_phase phase() const noexcept { return phase_; }
  /// The optimizer step at which the current phase began (a window's start, or the last commit).
  [[nodiscard]] std::int64_t phase_start() const noexcept { return phase_start_; }
  /// The last commit's report, or nullptr before the first commit.
  [[nodiscard]] const ns_budget_report* last_report() const noexcept { return has_report_ ? &report_ : nullptr; }

  /// Before the updates of the step that follows `steps_taken` completed ones: opens an observation
  /// window when one is due.
  void before_step(std::int64_t steps_taken) {
    const bool first = phase_ == ns_budget_phase::waiting && steps_taken >= options_.start_step;
    const bool again = phase_ == ns_budget_phase::committed && options_.reobserve_every > 0 &&
                       steps_taken - phase_start_ >= options_.reobserve_every;
    if (!first && !again) return;
    for (const auto& part : participants_) {
      part.plan->set_steps(part.observe_ns_steps);
      part.plan->reset_observation();
      part.plan->observe(part.target);
    }
    phase_ = ns_budget_phase::observing;
    phase_start_ = steps_taken;
  }

  /// After a step, with `steps_taken` now completed: commits when the window is over.
  void after_step(std::int64_t steps_taken) {
    if (phase_ != ns_budget_phase::observing || steps_taken - phase_start_ < options_.observe_window) return;
    std::fill(role_need_.begin(), role_need_.end(), 0.0);
    std::fill(role_calls_.begin(), role_calls_.end(), 0.0);
    for (std::size_t k = 0; k < participants_.size(); ++k) {
      const auto& part = participants_[k];
      const ns_observation obs = part.plan->read_observation();
      part.plan->stop_observing();
      report_.params[k].observed = obs;
      role_need_[part.role] += obs.mean_needed * obs.calls;
      role_calls_[part.role] += obs.calls;
    }
    for (std::size_t r = 0; r < role_need_.size(); ++r) {
      if (role_calls_[r] > 0.0) role_need_[r] /= role_calls_[r];
    }
    report_.committed_cost = commit_ns_steps(role_need_, role_matrices_, options_.min_ns_steps, role_max_, report_.budget,
                                             options_.spend_whole_budget, role_committed_);
    for (std::size_t k = 0; k < participants_.size(); ++k) {
      const auto& part = participants_[k];
      part.plan->set_steps(role_committed_[part.role]);
      report_.params[k].role_need = role_need_[part.role];
      report_.params[k].committed_ns_steps = role_committed_[part.role];
    }
    report_.window_start = phase_start_;
    report_.committed_at = steps_taken;
    has_report_ = true;
    phase_ = ns_budget_phase::committed;
    phase_start_ = steps_taken;
    if (options_.on_commit) call_on_commit(steps_taken);
  }

  /// on_commit runs after the step that ended the window was applied: an exception from it must not read
  /// as a failed step. It arrives as a value_error saying so, with the callback's exception nested
  /// (std::rethrow_if_nested gives it back).
  void call_on_commit(std::int64_t steps_taken) {
    const auto applied = [&](const std::string& what) {
      return value_error("orthopt: step " + std::to_string(steps_taken) +
                         " was applied and the adaptive budget committed its counts; then on_commit threw" + what +
                         " (nested in this exception); the optimizer is consistent and may step on");
    };
    try {
      options_.on_commit(report_);
    } catch (const std::exception& e) {
      std::throw_with_nested(applied(std::string(": ") + e.what()));
    } catch (...) {
      std::throw_with_nested(applied(""));
    }
  }

  /// Puts the budget in `phase`, begun at step `start` (checkpoint loading; the plans' counts and
  /// accumulators are restored by the loader). No effect for phase none.
  void restore_phase(ns_budget_phase phase, std::int64_t start) {
    if (phase == ns_budget_phase::none) return;
    for (const auto& part : participants_) {
      if (phase == ns_budget_phase::observing) part.plan->observe(part.target);
      else part.plan->stop_observing();
    }
    phase_ = phase;
    phase_start_ = start;
  }

  /// The count `plan` had when this budget took it (release() gives it back), or 0 for a plan it does
  /// not run.
  [[nodiscard]] int configured_steps_of(const newton_schulz<T, Backend>* plan) const noexcept {
    for (const auto& part : participants_)
      if (part.plan == plan) return part.configured_ns_steps;
    return 0;
  }

  /// Gives the plans back: every one to its configured count, observation stopped.
  void release() {
    for (const auto& part : participants_) {
      part.plan->stop_observing();
      part.plan->set_steps(part.configured_ns_steps);
    }
  }

 private:
  struct participant {
    newton_schulz<T, Backend>* plan;
    std::size_t role;
    int observe_ns_steps;
    int configured_ns_steps;
    double target;
  };
  ns_budget_options options_;
  ns_budget_phase phase_ = ns_budget_phase::waiting;
  std::int64_t phase_start_ = 0;
  std::vector<participant> participants_;
  std::vector<double> role_need_, role_calls_;
  std::vector<index_t> role_matrices_;
  std::vector<int> role_max_, role_committed_;
  ns_budget_report report_;  // sized at setup; a commit fills in numbers only
  bool has_report_ = false;
};

}  // namespace orthopt
