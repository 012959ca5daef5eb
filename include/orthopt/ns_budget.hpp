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
//   1. Observe. For `observe_steps` optimizer steps from `start_step`, every matrix runs
//      `observe_ns_steps` iterations (default: twice its configured count) and records, per call, the
//      first k with r_k ≤ τ, its residual target (k = observe_ns_steps + 1 when no iterate reached it).
//      τ defaults to ns_auto_residual_target(schedule): a little above the residual the schedule
//      settles at, since schedules tuned for speed (Keller's) oscillate around r ≈ 0.37 and never
//      converge further.
//   2. Need. A role's need n_r is the mean of those counts over the window and over its matrices
//      (a role: one parameter, or all parameters whose name matches one of `roles`).
//   3. Commit. c_r = clamp(⌈n_r⌉, min_steps, max_steps). The budget is
//      B = round(budget_fraction × Σ_p configured_p × matrices_p) iterations per optimizer step (1.0:
//      the uniform schedule's cost). While Σ c_r·m_r > B, one step is taken from the role with the most
//      to spare (largest c_r − n_r; never below min_steps). With spend_whole_budget, while steps remain,
//      one is given to the role furthest below its need (smallest c_r − n_r; never above max_steps).
//      The total then equals B whenever the bounds and the role sizes allow it, and never exceeds it
//      unless min_steps alone does (min_steps × Σ m_p > B, refused when the budget is set).
//   4. Hold the counts; with reobserve_every > 0, observe again that many steps after each commit.
// Harder matrices (larger n_r) thus get more steps; a budget below the uniform cost takes steps first
// from the matrices that need them least.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "orthopt/errors.hpp"
#include "orthopt/name_pattern.hpp"
#include "orthopt/newton_schulz.hpp"
#include "orthopt/ns_schedule.hpp"
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
  std::int64_t start_step = 0;         ///< the first observation window opens at this optimizer step
  std::int64_t observe_steps = 50;     ///< optimizer steps per observation window (≥ 1)
  int observe_ns_steps = 0;            ///< iterations per call while observing; 0: 2 × configured
  double residual_target = 0.0;        ///< τ; 0: ns_auto_residual_target of each parameter's schedule
  int min_steps = 2;                   ///< the fewest iterations a role is committed
  int max_steps = 0;                   ///< the most; 0: the observation count
  double budget_fraction = 1.0;        ///< B = round(fraction × the uniform cost), in (0, 4]
  bool spend_whole_budget = true;      ///< hand out steps until B is reached (false: only what is needed)
  std::int64_t reobserve_every = 0;    ///< > 0: observe again this many steps after each commit
  std::vector<name_pattern> roles;     ///< parameters matching pattern j share one count (first match)
  /// Called after each commit with what was observed and decided (on the stepping thread).
  std::function<void(const ns_budget_report&)> on_commit;

  /// Throws value_error naming the first offending field.
  void validate() const {
    const auto fail = [](const std::string& what) { throw value_error("orthopt::ns_budget_options: " + what); };
    if (start_step < 0) fail("start_step = " + std::to_string(start_step) + " must be >= 0");
    if (observe_steps < 1) fail("observe_steps = " + std::to_string(observe_steps) + " must be >= 1");
    if (observe_ns_steps < 0 || observe_ns_steps > ns_max_recorded_steps) {
      fail("observe_ns_steps = " + std::to_string(observe_ns_steps) + " must lie in [0, 64] (0: twice the configured count)");
    }
    if (!std::isfinite(residual_target) || residual_target < 0.0) {
      fail("residual_target = " + std::to_string(residual_target) + " must be finite and >= 0 (0: automatic)");
    }
    if (min_steps < 1) fail("min_steps = " + std::to_string(min_steps) + " must be >= 1");
    if (max_steps < 0) fail("max_steps = " + std::to_string(max_steps) + " must be >= 0 (0: the observation count)");
    if (max_steps > 0 && max_steps < min_steps) {
      fail("max_steps = " + std::to_string(max_steps) + " is below min_steps = " + std::to_string(min_steps));
    }
    if (!(budget_fraction > 0.0) || !(budget_fraction <= 4.0)) {
      fail("budget_fraction = " + std::to_string(budget_fraction) + " must lie in (0, 4]");
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
  std::string role;           ///< the matching role pattern, or the parameter's own name
  index_t matrices = 1;       ///< matrices in the parameter (a batch counts each)
  int configured_steps = 0;   ///< the uniform count of its rule
  int observed_steps = 0;     ///< iterations per call while observing
  double target = 0.0;        ///< τ
  ns_observation observed{};  ///< per-call needs and residuals over the window
  double role_need = 0.0;     ///< n_r of its role
  int committed_steps = 0;    ///< c_r
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
                    p.observed.mean_effective_rank, p.observed.mean_final_residual, p.target, p.committed_steps,
                    p.configured_steps, p.role == p.name ? "" : "  role ", p.role == p.name ? "" : p.role.c_str());
      s += line;
    }
    return s;
  }
};

/// Step 3 of the rule: committed[r] for roles of needs need[r], sizes matrices[r] and upper bounds
/// max_steps[r] (all spans of one length), within `budget` iterations. Allocates nothing. Returns the committed cost Σ c_r·m_r.
inline std::int64_t commit_ns_steps(std::span<const double> need, std::span<const index_t> matrices, int min_steps,
                                    std::span<const int> max_steps, std::int64_t budget, bool spend_whole_budget,
                                    std::span<int> committed) {
  const std::size_t n = need.size();
  std::int64_t cost = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const double up = std::ceil(need[r] - 1e-9);
    int c = up < min_steps ? min_steps : (up > max_steps[r] ? max_steps[r] : static_cast<int>(up));
    committed[r] = c;
    cost += static_cast<std::int64_t>(c) * matrices[r];
  }
  while (cost > budget) {  // take from the role with the most to spare
    std::size_t best = n;
    for (std::size_t r = 0; r < n; ++r) {
      if (committed[r] <= min_steps) continue;
      if (best == n) {
        best = r;
        continue;
      }
      const double slack = committed[r] - need[r], best_slack = committed[best] - need[best];
      if (slack > best_slack || (slack == best_slack && committed[r] > committed[best])) best = r;
    }
    if (best == n) break;  // every role at min_steps
    --committed[best];
    cost -= matrices[best];
  }
  while (spend_whole_budget) {  // give to the role furthest below its need
    std::size_t best = n;
    for (std::size_t r = 0; r < n; ++r) {
      if (committed[r] >= max_steps[r] || matrices[r] > budget - cost) continue;
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

}  // namespace orthopt
