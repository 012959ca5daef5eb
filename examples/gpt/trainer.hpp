// SPDX-License-Identifier: Apache-2.0
//
// The GPT demo's optimizer side, free of torch: an orthopt::optimizer over a model's parameters, given
// as views of the model's own memory, with the demo's routing, groups, schedule and adaptive budget.
// Written once over the backend: gpt_demo.cpp instantiates it for the Eigen or BLAS backend (host
// memory), and cuda_trainer.cu for the CUDA backend (device memory) behind the same trainer_interface,
// so that gpt_demo.cpp, compiled by the host compiler with torch, never sees a CUDA header.
//
// Routing, as in the papers and their codebases: every hidden matrix goes to the Muon-family rule (the
// fused QKV projection as three d×d blocks, split_rows; the attention output; both MLP matrices); the
// token and position embeddings and the head go to AdamW with weight decay, the norms' gains and biases
// to AdamW without. In the AdamW baseline AdamW takes everything, with the same groups.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "orthopt/orthopt.hpp"

namespace gpt_demo {

/// The rule that takes the hidden matrices (AdamW: the baseline, AdamW takes everything).
enum class rule_choice { adamw, muon, adamuon, namo, namo_d };

/// What a trainer is made from: the rule, its rates, the run's length and the budget switch.
struct trainer_settings {
  rule_choice matrices = rule_choice::adamw;
  std::string group_name = "AdamW";  // the matrices' group name in the routing table
  double lr = 1e-3;
  double weight_decay = 0.1;
  int steps = 800;      // the run's optimizer steps (the schedule's length)
  bool budget = false;  // the adaptive Newton–Schulz budget
};

/// One parameter of the model: its name and a view of its memory (a vector is 1 × n).
struct parameter {
  std::string name;
  orthopt::matrix_view<float> value;
  bool is_vector = false;
};

/// The optimizer side of a training run, whatever the backend.
class trainer_interface {
 public:
  virtual ~trainer_interface() = default;
  /// One optimizer step; grads[i] views the gradient of parameter i (same shape as its value).
  virtual void step(const std::vector<orthopt::matrix_view<const float>>& grads) = 0;
  [[nodiscard]] virtual std::string routing_table() const = 0;
  /// The adaptive budget's last commit, as a table (empty without the budget).
  [[nodiscard]] virtual std::string budget_report() const = 0;
  /// Newton–Schulz iterations run so far, summed over matrices and steps.
  [[nodiscard]] virtual std::int64_t ns_iterations() const = 0;
};

/// The adaptive Newton–Schulz budget of the "+budget" runs (orthopt/ns_budget.hpp): once the warmup is
/// over, observe for 10 steps (1/80 of training; an observation step runs twice the iterations), commit
/// per-matrix counts that reach the residual target, spending no more than the uniform 5 iterations
/// per matrix in all (only what is needed: the point is to see whether work can be saved), and observe
/// again every quarter of training, since what is hard changes as training goes on.
inline orthopt::ns_budget_options budget_options(int steps) {
  orthopt::ns_budget_options o;
  o.start_step = std::max(1, steps / 20);
  o.observe_window = std::max(5, steps / 80);
  o.reobserve_every = std::max(10, steps / 4);
  o.budget_fraction = 1.0;
  o.spend_whole_budget = false;
  return o;
}

template <class Options>
Options at_rates(Options o, double lr, double weight_decay) {
  o.lr = lr;
  o.weight_decay = weight_decay;
  return o;
}

template <class Backend>
class trainer final : public trainer_interface {
 public:
  using optimizer = orthopt::optimizer<float, Backend>;

  trainer(const trainer_settings& s, const std::vector<parameter>& params, const Backend& be) {
    const orthopt::warmup_stable_decay schedule(std::max(1, s.steps / 20), s.steps, 0.2);
    const auto adamw_opts = at_rates(orthopt::adamw_presets::torch(), s.lr, s.weight_decay);
    const auto adamw_group = opt_.add_group("adamw", orthopt::adamw<float, Backend>(adamw_opts, be), schedule);
    const auto no_decay =
        opt_.add_group("adamw_no_decay", orthopt::adamw<float, Backend>(at_rates(adamw_opts, s.lr, 0.0), be), schedule);
    const auto matrices = s.matrices == rule_choice::adamw
                              ? adamw_group
                              : opt_.add_group(s.group_name, matrix_rule(s.matrices, s.lr, s.weight_decay, be), schedule);
    // The router's defaults send vectors, "wte"/"wpe" (embeddings) and "head" to AdamW and every other
    // matrix to the Muon-family group; the norms' gains and biases go to the group without decay.
    orthopt::param_router router(matrices, adamw_group);
    for (const auto& p : params) {
      if (p.is_vector) router.override_param(p.name, no_decay);
    }
    for (const auto& p : params) {
      const bool fused = p.name.size() > 11 && p.name.ends_with(".qkv.weight");
      if (fused) opt_.add_param(p.name, orthopt::split_rows(p.value, 3), router);  // Q, K and V on their own
      else opt_.add_param(p.name, p.value, router);
      split_qkv_.push_back(fused);
    }
    opt_.check_overrides_used(router);
    grads_.resize(params.size());
    for (std::size_t i = 0; i < opt_.param_count(); ++i) {
      const orthopt::param_id p{i};
      if (opt_.state(p).ns_plan() != nullptr) ns_params_.emplace_back(p, opt_.state(p).count());
    }
    if (s.budget) {
      auto o = budget_options(s.steps);
      o.on_commit = [this](const orthopt::ns_budget_report& r) { budget_report_ = r.table(); };
      opt_.set_ns_budget(std::move(o));
    }
  }

  void step(const std::vector<orthopt::matrix_view<const float>>& grads) override {
    if (grads.size() != grads_.size()) {
      throw std::invalid_argument("trainer::step: " + std::to_string(grads.size()) + " gradients for " +
                                  std::to_string(grads_.size()) + " parameters");
    }
    for (std::size_t i = 0; i < grads.size(); ++i) {
      grads_[i] = split_qkv_[i] ? orthopt::split_rows(grads[i], 3) : orthopt::as_batch(grads[i]);
    }
    for (const auto& [p, matrices] : ns_params_) ns_iterations_ += static_cast<std::int64_t>(opt_.ns_steps(p)) * matrices;
    opt_.step(grads_);
  }
  [[nodiscard]] std::string routing_table() const override { return opt_.routing_table(); }
  [[nodiscard]] std::string budget_report() const override { return budget_report_; }
  [[nodiscard]] std::int64_t ns_iterations() const override { return ns_iterations_; }

 private:
  static typename optimizer::rule_type matrix_rule(rule_choice r, double lr, double wd, const Backend& be) {
    switch (r) {
      case rule_choice::muon: return orthopt::muon<float, Backend>(at_rates(orthopt::muon_presets::moonlight(), lr, wd), be);
      case rule_choice::adamuon:
        return orthopt::adamuon<float, Backend>(at_rates(orthopt::adamuon_presets::code(), lr, wd), be);
      case rule_choice::namo: return orthopt::namo<float, Backend>(at_rates(orthopt::namo_presets::code(), lr, wd), be);
      case rule_choice::namo_d: return orthopt::namo_d<float, Backend>(at_rates(orthopt::namo_d_presets::code(), lr, wd), be);
      case rule_choice::adamw: break;
    }
    return orthopt::adamw<float, Backend>(at_rates(orthopt::adamw_presets::torch(), lr, wd), be);
  }

  optimizer opt_;
  std::vector<bool> split_qkv_;  // registered as three row blocks
  std::vector<typename optimizer::gradient_view> grads_;
  std::vector<std::pair<orthopt::param_id, std::int64_t>> ns_params_;  // Newton–Schulz parameters, matrices
  std::int64_t ns_iterations_ = 0;
  std::string budget_report_;
};

/// A trainer on the CUDA backend over device memory, on the legacy default stream (the stream libtorch
/// runs its kernels on unless told otherwise, so the optimizer's work is ordered after the backward
/// pass that wrote the gradients with no extra synchronization). checks_on_device: the value checks
/// are recorded on the device and read once per step (see cuda_trainer.cu); else each check waits for
/// the GPU and refuses before anything is written. Defined in cuda_trainer.cu.
std::unique_ptr<trainer_interface> make_cuda_trainer(const trainer_settings& s, const std::vector<parameter>& params,
                                                     bool checks_on_device);

}  // namespace gpt_demo
