// SPDX-License-Identifier: Apache-2.0
//
// An optimizer over many named parameters: groups, each with one update rule (Muon, AdaMuon, NAMO,
// NAMO-D or AdamW), its hyper-parameters and a learning-rate schedule; one state per parameter, made
// from the parameter's shape when it is registered; and a routing helper that sends each parameter to a
// group the way every Muon-family codebase does (Muon's and Moonlight's: matrices of hidden layers to
// the Muon-family rule, embeddings, heads and vectors to AdamW).
//
//   using opt_t = orthopt::optimizer<float, orthopt::eigen_backend>;
//   opt_t opt;
//   auto hidden = opt.add_group("hidden", orthopt::muon<float, orthopt::eigen_backend>(
//                                             orthopt::muon_presets::moonlight()),
//                               orthopt::warmup_stable_decay(2000, 100000, 0.2));
//   auto rest = opt.add_group("adamw", orthopt::adamw<float, orthopt::eigen_backend>(), ...);
//   orthopt::param_router router(hidden, rest);                // embeddings, head, vectors → AdamW
//   opt.add_param("blocks.0.mlp.fc.weight", orthopt::make_view(W_fc), router);
//   opt.add_param("blocks.0.attn.qkv.weight", orthopt::split_rows(orthopt::make_view(W_qkv), 3), router);
//   opt.add_param("conv1.weight", orthopt::tensor_as_matrix(conv_ptr, {64, 3, 7, 7}), router);
//   opt.add_param("experts.w1", orthopt::tensor_as_batch(experts_ptr, {8, 512, 128}), router);
//   ...
//   opt.step(gradients);   // a span of batch_view<const T>, one per parameter in registration order
//
// Parameters are the host's memory: the optimizer keeps non-owning views of them, which must stay valid
// (and keep their addresses) for as long as the optimizer steps them. Gradients are handed over at each
// step as views, in registration order (`step(span)`), or bound once to the parameter when the host's
// gradient buffers keep their addresses (`bind_gradient`, then `step()`). `gradient_like(p, ptr)` builds
// a gradient view with the parameter's own shape, batch and strides at another address, so a host whose
// gradients mirror its parameters' layout (PyTorch's .grad, for instance) needs only a pointer.
//
// A step is all-or-nothing: every gradient (shape, usable view, NaN/Inf unless the group's rule has
// check_finite = false), every group's scheduled learning rate and hyper-parameters are checked before
// the first parameter is written; on any failure step() throws (shape_error / value_error naming the
// parameter) and leaves every parameter, every state and the step count as they were. After the first
// step, step() allocates nothing: all states and scratch exist from registration.
//
// Hyper-parameters may change between steps without touching the state: set `group(g).lr` (the base
// learning rate), `group(g).schedule`, or `group(g).options<muon_options>().momentum` and the like. The
// `lr` inside a rule's options is written by every step (base lr × schedule); set the group's lr
// instead. The orthogonalizer settings (`options().ortho`) are planned into each state at registration;
// changing them later has no effect on parameters already registered.
//
// Registration, routing, groups, states, Newton–Schulz settings and the all-or-nothing step check are
// the parameter registry's (orthopt/param_registry.hpp), which this class and distributed_optimizer share.
// Newton–Schulz iteration counts: per parameter (`set_ns_steps(param_id, n)`, `ns_steps(p)`) or per group
// (`set_ns_steps(group_id, n)`), stopping inside a call at a residual tolerance
// (`set_ns_stop_tolerance`, CPU backends), or chosen by the adaptive budget (`set_ns_budget`: an
// ns_budget_controller, orthopt/ns_budget.hpp, observes how many iterations each matrix needs, then
// commits counts within a total budget; its phase and counts are saved in checkpoints).
//
// Thread safety: an optimizer is not synchronized. Its mutating members (add_group, add_param,
// bind_gradient, step, set_steps_taken, group(...) writes, checkpoint loading) must not run concurrently
// with any other member call on the same optimizer. Const members may run concurrently with each other.
// Two optimizers may step on two threads at once only if their backend handles share no scratch: with
// the Eigen backend, give each optimizer's rules their own `eigen_backend` object, not copies of one
// (copies share packing buffers). Results are deterministic for a given backend thread count and
// parallel-step setting (set_parallel_parameters: which thread steps which parameter changes nothing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "orthopt/errors.hpp"
#include "orthopt/ns_budget.hpp"
#include "orthopt/param_registry.hpp"
#include "orthopt/routing.hpp"
#include "orthopt/tensor_views.hpp"
#include "orthopt/view.hpp"

namespace orthopt {

/// A single-process optimizer: the parameter registry (groups, parameters, states, routing,
/// Newton–Schulz settings; orthopt/param_registry.hpp) with a step and an optional adaptive budget.
template <class T, class Backend>
class optimizer : public param_registry<T, Backend> {
  using base = param_registry<T, Backend>;

 public:
  using typename base::gradient_view;
  using typename base::group_type;
  using typename base::rule_type;
  using typename base::state_type;

  optimizer() : base("orthopt::optimizer", /*states_at_registration=*/true) { this->parallel_parameters_ = true; }
  // The states own backend memory: an optimizer moves, it does not copy.
  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;
  optimizer(optimizer&&) noexcept = default;
  optimizer& operator=(optimizer&&) noexcept = default;

  // ---- Stepping (allocates nothing) ------------------------------------------------------------

  /// One step of every parameter, gradients[i] for the i-th registered parameter. All-or-nothing: see
  /// the file comment. An empty view (gradient_view{}, count 0) skips its parameter: the parameter, its
  /// state and its step count stay as they are (a parameter that got no gradient this step, as PyTorch's
  /// optimizers skip a parameter whose .grad is None). The optimizer's steps_taken() counts the step.
  void step(std::span<const gradient_view> gradients) {
    if (gradients.size() != this->params_.size()) {
      throw value_error("orthopt::optimizer::step: " + std::to_string(gradients.size()) + " gradients for " +
                        std::to_string(this->params_.size()) + " parameters; nothing was changed");
    }
    step_with([gradients](std::size_t i) { return gradients[i]; });
  }

  /// One step with the gradients bound by bind_gradient (value_error if any parameter has none).
  void step() {
    for (const auto& p : this->params_) {
      if (p.bound_gradient.count == 0) {
        throw value_error("orthopt::optimizer::step: parameter '" + p.name +
                          "' has no bound gradient (bind_gradient, or pass the gradients); nothing was changed");
      }
    }
    step_with([this](std::size_t i) { return this->params_[i].bound_gradient; });
  }

  /// Parallel steps (on by default). On a CPU backend whose handles have more than one thread (the
  /// Eigen and BLAS backends, compiled with OpenMP), a step runs several parameters at once, each on one
  /// thread, largest first; a parameter whose work is at least a thread's share of the step runs alone,
  /// its products on all threads. Matrices of a few hundred rows keep the cores busier this way than by
  /// splitting each of their products (docs/benchmarks.md, the Python section, measures both).
  /// A parameter stepped on one thread gets the update a one-thread handle computes: bit for bit on the
  /// Eigen backend; on the BLAS backend the library's products run on one thread there (OpenBLAS's and
  /// MKL's OpenMP builds do inside a parallel region), so they are a one-thread BLAS's. Off, every
  /// product splits over the handle's threads, as each one does when stepped alone. Without OpenMP, and
  /// for a step called from inside an OpenMP parallel region, parameters run in turn.
  void set_parallel_parameters(bool on) noexcept { this->parallel_parameters_ = on; }
  [[nodiscard]] bool parallel_parameters() const noexcept { return this->parallel_parameters_; }

  // ---- The adaptive Newton–Schulz budget (orthopt/ns_budget.hpp) ----------------------------------

  /// Run the adaptive budget over every registered parameter with a Newton–Schulz plan, from the next
  /// step. Register all parameters first: add_param is refused while a budget is set, and so are the
  /// Newton–Schulz count setters (the budget owns the counts). Replaces a budget already set (its
  /// counts are discarded). Throws value_error for invalid options, when no parameter runs
  /// Newton–Schulz, or when min_ns_steps alone exceeds the budget; the optimizer is then unchanged.
  /// Allocates (setup); the steps after it do not, except for what on_commit does.
  void set_ns_budget(ns_budget_options options) {
    std::vector<ns_budget_candidate<T, Backend>> candidates;
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      auto& st = *this->params_[i].state;
      if (st.ns_plan() == nullptr) continue;
      // In-call stopping and a budget both decide counts: as set_ns_stop_tolerance refuses while a budget
      // is set, the budget refuses while a tolerance is.
      if (st.ns_plan()->stop_tolerance() > 0.0) {
        throw value_error("orthopt::optimizer::set_ns_budget: parameter '" + this->params_[i].name +
                          "' stops at a residual tolerance of " + detail::value_text(st.ns_plan()->stop_tolerance()) +
                          "; turn it off first (set_ns_stop_tolerance(group, 0)); nothing was changed");
      }
      // The count the parameter runs without a budget (its rule's, or set_ns_steps'; under a budget being
      // replaced, the one that budget took over): observation starts from it, clear_ns_budget puts it back.
      const int before = budget_ ? budget_->configured_steps_of(st.ns_plan()) : 0;
      candidates.push_back({this->params_[i].name, st.ns_plan(), before > 0 ? before : st.ns_plan()->steps(), st.count()});
    }
    ns_budget_controller<T, Backend> made(std::move(options), candidates, "orthopt::optimizer::set_ns_budget");
    clear_ns_budget();
    budget_.emplace(std::move(made));
    this->params_closed_ =
        "comes after set_ns_budget; register every parameter first (or clear_ns_budget, add, and set the budget again)";
    this->counts_locked_ = "an adaptive Newton–Schulz budget is set and owns the step counts; clear_ns_budget() first";
  }
  /// Remove the budget: every parameter it ran goes back to the count it had when the budget was set,
  /// observation stops.
  void clear_ns_budget() {
    if (!budget_) return;
    budget_->release();
    budget_.reset();
    this->params_closed_ = nullptr;
    this->counts_locked_ = nullptr;
  }
  [[nodiscard]] bool has_ns_budget() const noexcept { return budget_.has_value(); }
  /// The budget's phase (ns_budget_phase::none without one).
  [[nodiscard]] ns_budget_phase ns_budget_state() const noexcept { return budget_ ? budget_->phase() : ns_budget_phase::none; }
  /// The optimizer step at which the current phase began (a window's start, or the last commit).
  [[nodiscard]] std::int64_t ns_budget_phase_start() const noexcept { return budget_ ? budget_->phase_start() : 0; }
  /// The last commit's report, or nullptr before the first commit.
  [[nodiscard]] const ns_budget_report* ns_budget_last_report() const noexcept {
    return budget_ ? budget_->last_report() : nullptr;
  }
  /// Put the budget in `phase`, begun at step `start` (checkpoint loading; the parameters' counts and
  /// accumulators are restored by the loader). No effect without a budget or for phase none.
  void restore_ns_budget_phase(ns_budget_phase phase, std::int64_t start) {
    if (budget_) budget_->restore_phase(phase, start);
  }

 private:
  /// Checks everything, then updates everything: nothing is written until every check has passed.
  template <class GradientAt>
  void step_with(GradientAt gradient_at) {
    this->check_step(gradient_at);
    if (budget_) {
      try {
        budget_->before_step(this->steps_taken_);
      } catch (...) {
        this->abandon_checked_step();
        throw;
      }
    }
    this->apply_checked_step(gradient_at);
    if (budget_) budget_->after_step(this->steps_taken_);
  }

  std::optional<ns_budget_controller<T, Backend>> budget_;
};

}  // namespace orthopt
