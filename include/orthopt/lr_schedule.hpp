// SPDX-License-Identifier: Apache-2.0
//
// Learning-rate schedules: small value types whose `operator()(step)` gives the multiplier of a base
// learning rate, lr(step) = base_lr × schedule(step). The optimizer (orthopt/optimizer.hpp) calls the
// schedule of each group once per step; any callable `double(std::int64_t)` works there, these are the
// common ones, written down exactly.
//
// The step convention, shared by every schedule here: `step` is the 0-based index of the step about to
// be taken, i.e. the number of optimizer steps already completed (0 for the first step). Warmup
// therefore starts at 1/W rather than 0, so no step is wasted at lr = 0, and reaches 1 at step W − 1.
//
// Construction validates the parameters (value_error naming the bad one); evaluation throws value_error
// only for a negative step. Evaluation never allocates and is safe to call from several threads at once
// (the types are immutable after construction).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <string>

#include "orthopt/errors.hpp"

namespace orthopt {

/// A group's learning-rate schedule in an optimizer: the multiplier of the base lr at a 0-based step.
/// Any of the types below, or any callable double(std::int64_t). Called once per group per step; it must
/// not allocate if step() is to allocate nothing.
using lr_schedule = std::function<double(std::int64_t)>;

namespace detail {
[[noreturn]] inline void schedule_fail(const char* who, const std::string& what) {
  throw value_error(std::string("orthopt::") + who + ": " + what);
}
inline void check_schedule_step(const char* who, std::int64_t step) {
  if (step < 0) schedule_fail(who, "step = " + std::to_string(step) + " must be >= 0");
}
inline void check_steps(const char* who, const char* name, std::int64_t v) {
  if (v < 0) schedule_fail(who, std::string(name) + " = " + std::to_string(v) + " must be >= 0");
}
inline void check_unit_interval(const char* who, const char* name, double v) {
  // !(v >= 0 && v <= 1) also rejects NaN.
  if (!(v >= 0.0 && v <= 1.0)) schedule_fail(who, std::string(name) + " = " + std::to_string(v) + " must lie in [0, 1]");
}
/// Linear warmup (s + 1)/W for s < W (W ≥ 1).
inline double warmup_multiplier(std::int64_t step, std::int64_t warmup_steps) {
  return static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
}
}  // namespace detail

/// The base learning rate at every step: multiplier 1.
struct constant_schedule {
  double operator()(std::int64_t step) const {
    detail::check_schedule_step("constant_schedule", step);
    return 1.0;
  }
};

/// The shape of a decay phase, as a function of progress p ∈ [0, 1] through it (1 at p = 0, 0 at p = 1).
enum class decay_shape {
  linear,          ///< 1 − p
  cosine,          ///< (1 + cos(πp)) / 2
  one_minus_sqrt,  ///< 1 − √p  (the "1 − sqrt" cooldown of Hägele et al. 2024, arXiv 2405.18392)
};

namespace detail {
inline double decay_factor(decay_shape shape, double p) {
  switch (shape) {
    case decay_shape::linear: return 1.0 - p;
    case decay_shape::cosine: return 0.5 * (1.0 + std::cos(std::numbers::pi * p));
    case decay_shape::one_minus_sqrt: return 1.0 - std::sqrt(p);
  }
  return 1.0 - p;
}
}  // namespace detail

/// Warmup–stable–decay (WSD).
///
/// Source. The AdaMuon paper (Si, Zhang, Shen 2025, §4 "Experimental settings"; docs/references.md) replaces
/// nanoGPT's cosine schedule by "the warmup-stable policy", with a warmup of 2K steps over 100K steps;
/// it describes no decay phase. With `decay_fraction = 0` this schedule is exactly that policy (linear
/// warmup, then constant). The optional decay over the final fraction of training is the usual WSD
/// cooldown; its shape is a parameter (linear by default) and is this library's choice, not the paper's.
///
/// Definition, with N = total_steps, W = warmup_steps, K = round(decay_fraction·N) (half away from
/// zero), D = N − K (the first decay step), f = final_multiplier, s = step:
///
///     s < W           : (s + 1) / W                               linear warmup
///     W ≤ s < D       : 1                                         stable
///     D ≤ s < N       : f + (1 − f) · shape((s − D) / K)          decay, 1 at s = D
///     s ≥ N           : f if K > 0, else 1                         after the planned run
///
/// Requires W + K ≤ N (warmup and decay do not overlap), decay_fraction and final_multiplier in [0, 1].
/// `warmup_stable_decay(2000, 100000)` is the paper's GPT-2 setting.
class warmup_stable_decay {
 public:
  explicit warmup_stable_decay(std::int64_t warmup_steps, std::int64_t total_steps, double decay_fraction = 0.0,
                               double final_multiplier = 0.0, decay_shape shape = decay_shape::linear)
      : warmup_(warmup_steps), total_(total_steps), final_(final_multiplier), shape_(shape) {
    const char* who = "warmup_stable_decay";
    detail::check_steps(who, "warmup_steps", warmup_steps);
    detail::check_steps(who, "total_steps", total_steps);
    detail::check_unit_interval(who, "decay_fraction", decay_fraction);
    detail::check_unit_interval(who, "final_multiplier", final_multiplier);
    decay_ = static_cast<std::int64_t>(std::llround(decay_fraction * static_cast<double>(total_steps)));
    if (warmup_ + decay_ > total_) {
      detail::schedule_fail(who, "warmup_steps = " + std::to_string(warmup_) + " plus decay steps = " +
                                     std::to_string(decay_) + " (decay_fraction " + detail::value_text(decay_fraction) +
                                     " of " + std::to_string(total_) + ") exceed total_steps = " +
                                     std::to_string(total_));
    }
  }

  double operator()(std::int64_t step) const {
    detail::check_schedule_step("warmup_stable_decay", step);
    if (step < warmup_) return detail::warmup_multiplier(step, warmup_);
    // Past the planned run the multiplier stays where the last phase ended: the floor after a decay,
    // 1 for the paper's warmup-stable policy (no decay), so training on past N never hits a cliff.
    if (step >= total_) return decay_ > 0 ? final_ : 1.0;
    const std::int64_t decay_start = total_ - decay_;
    if (step < decay_start) return 1.0;
    const double progress = static_cast<double>(step - decay_start) / static_cast<double>(decay_);
    return final_ + (1.0 - final_) * detail::decay_factor(shape_, progress);
  }

  [[nodiscard]] std::int64_t warmup_steps() const noexcept { return warmup_; }
  [[nodiscard]] std::int64_t total_steps() const noexcept { return total_; }
  [[nodiscard]] std::int64_t decay_steps() const noexcept { return decay_; }
  [[nodiscard]] std::int64_t decay_start() const noexcept { return total_ - decay_; }
  [[nodiscard]] double final_multiplier() const noexcept { return final_; }
  [[nodiscard]] decay_shape shape() const noexcept { return shape_; }

 private:
  std::int64_t warmup_, total_, decay_ = 0;
  double final_;
  decay_shape shape_;
};

/// Cosine decay with an optional linear warmup and a floor (nanoGPT's schedule, the one AdaMuon's
/// GPT-2 runs replaced). With N = total_steps, W = warmup_steps, f = final_multiplier, s = step:
///
///     s < W        : (s + 1) / W
///     W ≤ s < N    : f + (1 − f) · (1 + cos(π (s − W) / (N − W))) / 2      1 at s = W
///     s ≥ N        : f
///
/// Requires W ≤ N and f in [0, 1].
class cosine_schedule {
 public:
  explicit cosine_schedule(std::int64_t total_steps, std::int64_t warmup_steps = 0, double final_multiplier = 0.0)
      : warmup_(warmup_steps), total_(total_steps), final_(final_multiplier) {
    const char* who = "cosine_schedule";
    detail::check_steps(who, "total_steps", total_steps);
    detail::check_steps(who, "warmup_steps", warmup_steps);
    detail::check_unit_interval(who, "final_multiplier", final_multiplier);
    if (warmup_ > total_) {
      detail::schedule_fail(who, "warmup_steps = " + std::to_string(warmup_) + " exceeds total_steps = " +
                                     std::to_string(total_));
    }
  }

  double operator()(std::int64_t step) const {
    detail::check_schedule_step("cosine_schedule", step);
    if (step < warmup_) return detail::warmup_multiplier(step, warmup_);
    if (step >= total_) return final_;
    const double progress = static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    return final_ + (1.0 - final_) * detail::decay_factor(decay_shape::cosine, progress);
  }

  [[nodiscard]] std::int64_t warmup_steps() const noexcept { return warmup_; }
  [[nodiscard]] std::int64_t total_steps() const noexcept { return total_; }
  [[nodiscard]] double final_multiplier() const noexcept { return final_; }

 private:
  std::int64_t warmup_, total_;
  double final_;
};

}  // namespace orthopt
