// SPDX-License-Identifier: Apache-2.0
//
// Options and presets of the update rules (Muon, AdaMuon, NAMO, NAMO-D, AdamW). A preset is data: a
// named set of options. Hyper-parameters may change between steps (a learning-rate schedule writes
// `lr`); the state does not depend on them.
#pragma once

#include <cmath>
#include <string>

#include "orthopt/errors.hpp"
#include "orthopt/ns_config.hpp"

namespace orthopt {

/// Momentum accumulation.
enum class momentum_kind {
  ema,        ///< M ← μM + (1−μ)G; Nesterov direction (1−μ)G + μM   (KellerJordan/Muon, torch)
  classical,  ///< M ← μM + G;      Nesterov direction G + μM          (Moonlight, Megatron)
};

/// The per-shape multiplier of Muon's update for an A×B parameter (A rows = outputs, B cols = inputs).
enum class shape_scale {
  original,         ///< √max(1, A/B)          (KellerJordan/Muon)
  match_rms_adamw,  ///< 0.2·√max(A, B)        (Moonlight, Liu et al. 2025: AdamW-matched update RMS)
  spectral,         ///< √(A/B)
  none,             ///< 1
};

/// Which polar operator a rule uses.
struct orthogonalizer {
  ns_config ns = ns_presets::keller();
  bool exact = false;  ///< the exact polar factor (SVD) instead of Newton–Schulz
};

namespace detail {
/// Throws value_error("<who>: <what()>") when !ok; the message is built only then (validation runs at
/// every step, and a step must not allocate).
template <class What>
inline void require(bool ok, const char* rule, const std::string& preset, What&& what) {
  if (!ok) throw value_error(std::string("orthopt::") + rule + " '" + preset + "': " + what());
}
inline void check_lr_wd(const char* rule, const std::string& preset, double lr, double wd) {
  require(std::isfinite(lr) && lr >= 0.0, rule, preset, [&] { return "lr = " + value_text(lr) + " must be finite and >= 0"; });
  require(std::isfinite(wd) && wd >= 0.0, rule, preset,
          [&] { return "weight_decay = " + value_text(wd) + " must be finite and >= 0"; });
}
inline void check_beta(const char* rule, const std::string& preset, const char* name, double b) {
  require(std::isfinite(b) && b >= 0.0 && b < 1.0, rule, preset,
          [&] { return std::string(name) + " = " + value_text(b) + " must lie in [0, 1)"; });
}
/// An enum field holds one of its enumerators (not an integer cast from a config file that names none).
template <class E, class... Values>
inline void check_enum(const char* rule, const std::string& preset, const char* name, E value, Values... allowed) {
  require(((value == allowed) || ...), rule, preset, [&] {
    return std::string(name) + " = " + std::to_string(static_cast<long long>(value)) + " is not one of its enumerators";
  });
}
inline void check_eps(const char* rule, const std::string& preset, double eps) {
  require(std::isfinite(eps) && eps > 0.0, rule, preset, [&] { return "eps = " + value_text(eps) + " must be finite and > 0"; });
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// Muon (Jordan et al. 2024; Moonlight, Liu et al. 2025; docs/references.md)
//   M ← momentum(M, G);  U ← nesterov ? mix(G, M) : M;  O ← NS(U)
//   W ← W(1 − ηλ);  W ← W − η·scale(A, B)·O
// ---------------------------------------------------------------------------------------------------
struct muon_options {
  std::string preset = "custom";
  double lr = 0.02;
  double weight_decay = 0.0;
  double momentum = 0.95;
  momentum_kind momentum_type = momentum_kind::ema;
  bool nesterov = true;
  shape_scale scale = shape_scale::original;
  orthogonalizer ortho{};
  bool check_finite = true;  ///< refuse NaN, Inf and overflowing gradient or state entries (step_limits; device→host reads on a GPU)

  void validate() const {
    const char* who = "muon_options";
    detail::check_lr_wd(who, preset, lr, weight_decay);
    detail::check_enum(who, preset, "momentum_type", momentum_type, momentum_kind::ema, momentum_kind::classical);
    detail::check_enum(who, preset, "scale", scale, shape_scale::original, shape_scale::match_rms_adamw,
                       shape_scale::spectral, shape_scale::none);
    detail::check_beta(who, preset, "momentum", momentum);
    ortho.ns.validate();
  }
};

namespace muon_presets {
/// KellerJordan/Muon (muon.py): ema momentum 0.95 with Nesterov, NS5 keller, √max(1, A/B), lr 0.02, wd 0.
inline muon_options keller() {
  return {"keller", 0.02, 0.0, 0.95, momentum_kind::ema, true, shape_scale::original, {ns_presets::keller(), false}};
}
/// Moonlight (Liu et al. 2025, MoonshotAI/Moonlight): classical momentum with Nesterov, 0.2·√max(A, B)
/// so one lr serves Muon and AdamW, lr 1e-3, wd 0.1.
inline muon_options moonlight() {
  return {"moonlight", 1e-3, 0.1, 0.95, momentum_kind::classical, true, shape_scale::match_rms_adamw,
          {ns_presets::keller(), false}};
}
/// torch.optim.Muon (PyTorch 2.9): ema with Nesterov, keller coefficients with X/max(‖X‖, 1e-7),
/// lr 1e-3, wd 0.1, adjust_lr_fn "original" (default) or "match_rms_adamw".
inline muon_options torch(shape_scale adjust = shape_scale::original) {
  ns_config ns = ns_presets::keller();
  ns.name = "keller_clamp";
  ns.normalization = ns_normalization::frobenius_clamp;
  return {"torch", 1e-3, 0.1, 0.95, momentum_kind::ema, true, adjust, {ns, false}};
}
}  // namespace muon_presets

// ---------------------------------------------------------------------------------------------------
// AdaMuon (Si, Zhang, Shen 2025; docs/references.md)
// ---------------------------------------------------------------------------------------------------
enum class adamuon_form {
  paper,  ///< Algorithm 1: M ← βM + G; O ← NS(sign(M)); γ = 0.2√(AB)/‖Ô‖_F; W ← W − η(γÔ + λW)
  code,   ///< the authors' code: ema + Nesterov mix U, O ← NS(sign(U)), γ = 0.2√(AB)/(‖Ô‖_F + ε),
          ///< W ← W(1 − ηλ) − ηγÔ
};

struct adamuon_options {
  std::string preset = "custom";
  adamuon_form form = adamuon_form::code;
  double lr = 0.02;
  double weight_decay = 0.01;
  double beta = 0.95;  ///< the momentum; also the second-moment β unless beta2 > 0
  double eps = 1e-8;
  bool sign = true;    ///< the sign map before NS (Theorem 1); false = the arXiv v1 rule
  double beta2 = 0.0;  ///< > 0: a separate second-moment β with bias correction (arXiv v1)
  orthogonalizer ortho{};
  bool check_finite = true;

  void validate() const {
    const char* who = "adamuon_options";
    detail::check_lr_wd(who, preset, lr, weight_decay);
    detail::check_enum(who, preset, "form", form, adamuon_form::paper, adamuon_form::code);
    detail::check_beta(who, preset, "beta", beta);
    detail::check_eps(who, preset, eps);
    detail::require(std::isfinite(beta2) && beta2 >= 0.0 && beta2 < 1.0, who, preset, [&] {
      return "beta2 = " + detail::value_text(beta2) + " must lie in [0, 1) (0: use beta, no bias correction)";
    });
    ortho.ns.validate();
  }
};

namespace adamuon_presets {
/// Algorithm 1 of the paper: β = 0.95 for both moments, ε = 1e-8, no bias correction, no Nesterov.
inline adamuon_options paper() { return {"paper", adamuon_form::paper, 0.02, 0.01, 0.95, 1e-8, true, 0.0, {}}; }
/// The authors' code (Chongjie-Si/AdaMuon, gpt2/models/optimizers/adamuon.py): defaults lr 0.02, wd 0.01.
inline adamuon_options code() { return {"code", adamuon_form::code, 0.02, 0.01, 0.95, 1e-8, true, 0.0, {}}; }
/// The authors' GPT-2 runs: the code with the AdamW learning rate 6e-4 and wd 0.1.
inline adamuon_options code_gpt2() { return {"code_gpt2", adamuon_form::code, 6e-4, 0.1, 0.95, 1e-8, true, 0.0, {}}; }
/// arXiv v1: no sign map, a separate β2 = 0.999 with bias correction (on the code form).
inline adamuon_options v1() { return {"v1", adamuon_form::code, 0.02, 0.01, 0.95, 1e-8, false, 0.999, {}}; }
}  // namespace adamuon_presets

// ---------------------------------------------------------------------------------------------------
// NAMO and NAMO-D ("Adam Improves Muon", 2026; the authors' code, minxin-zhg/namo src/namo.py)
// ---------------------------------------------------------------------------------------------------
enum class namo_form {
  paper,  ///< α = √(1−μ2ᵗ)/(1−μ1ᵗ)·‖M‖_F/(√v + ε); W ← W − ηα(O + λW); no clamps, no 0.2, no Nesterov
  code,   ///< the authors' code: Nesterov, α with η inside, clamps min(α, 1) and min(0.2√max(A,B)α, 1)
};

struct namo_options {
  std::string preset = "custom";
  namo_form form = namo_form::code;
  double lr = 1e-2;
  double weight_decay = 0.1;
  double mu1 = 0.95;
  double mu2 = 0.99;
  double eps = 1e-8;
  bool nesterov = true;      ///< code form only (the paper form has none)
  double rms_scale = 0.2;    ///< code form's 0.2 in min(0.2·√max(A,B)·α, 1)
  double column_clamp = 0.75;  ///< NAMO-D only: c in clamp(d_j, c·d̄, d̄/c); 0 or > 1 disables it
  orthogonalizer ortho{};
  bool check_finite = true;

  void validate() const {
    const char* who = "namo_options";
    detail::check_lr_wd(who, preset, lr, weight_decay);
    detail::check_enum(who, preset, "form", form, namo_form::paper, namo_form::code);
    detail::check_beta(who, preset, "mu1", mu1);
    detail::check_beta(who, preset, "mu2", mu2);
    detail::check_eps(who, preset, eps);
    detail::require(std::isfinite(rms_scale) && rms_scale > 0.0, who, preset,
                    [&] { return "rms_scale = " + detail::value_text(rms_scale) + " must be finite and > 0"; });
    detail::require(std::isfinite(column_clamp) && column_clamp >= 0.0, who, preset,
                    [&] { return "column_clamp = " + detail::value_text(column_clamp) + " must be finite and >= 0"; });
    ortho.ns.validate();
  }
};

namespace namo_presets {
/// The authors' code defaults: lr 1e-2, wd 0.1, μ1 0.95, μ2 0.99, ε 1e-8, Nesterov, NS5, scale 0.2.
inline namo_options code() { return {"code", namo_form::code, 1e-2, 0.1, 0.95, 0.99, 1e-8, true, 0.2, 0.75, {}}; }
/// The paper's rule (no clamps, no 0.2 factor, no Nesterov), same numeric defaults.
inline namo_options paper() { return {"paper", namo_form::paper, 1e-2, 0.1, 0.95, 0.99, 1e-8, false, 0.2, 0.75, {}}; }
}  // namespace namo_presets

namespace namo_d_presets {
/// NAMO-D in the authors' code: the NAMO code defaults and column clamp c = 0.75.
inline namo_options code() { return {"code", namo_form::code, 1e-2, 0.1, 0.95, 0.99, 1e-8, true, 0.2, 0.75, {}}; }
/// The clamp the paper's GPT-2 small runs used, c = 0.01, on the code form.
inline namo_options gpt2_small() {
  return {"gpt2_small", namo_form::code, 1e-2, 0.1, 0.95, 0.99, 1e-8, true, 0.2, 0.01, {}};
}
}  // namespace namo_d_presets

// ---------------------------------------------------------------------------------------------------
// AdamW (Loshchilov and Hutter 2019; torch.optim.AdamW), for vectors, embeddings and output heads
// ---------------------------------------------------------------------------------------------------
enum class adamw_form {
  torch,      ///< W ← W − η·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε)
  moonlight,  ///< W ← W − η·√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + ε)   (the AdaMuon and NAMO codebases)
};

struct adamw_options {
  std::string preset = "custom";
  adamw_form form = adamw_form::torch;
  double lr = 1e-3;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  bool check_finite = true;

  void validate() const {
    const char* who = "adamw_options";
    detail::check_lr_wd(who, preset, lr, weight_decay);
    detail::check_enum(who, preset, "form", form, adamw_form::torch, adamw_form::moonlight);
    detail::check_beta(who, preset, "beta1", beta1);
    detail::check_beta(who, preset, "beta2", beta2);
    detail::check_eps(who, preset, eps);
  }
};

namespace adamw_presets {
inline adamw_options torch() { return {"torch", adamw_form::torch, 1e-3, 0.1, 0.9, 0.95, 1e-8}; }
inline adamw_options moonlight() { return {"moonlight", adamw_form::moonlight, 1e-3, 0.1, 0.9, 0.95, 1e-8}; }
}  // namespace adamw_presets

// ---------------------------------------------------------------------------------------------------
// Every option as data: for_each_setting(options, f) calls f(prefix, name, value) for each field that
// changes what a step computes, as a double (detail::setting_value; `preset` is a label and is left
// out). prefix + name is the field's path: prefix "" for the rule's own fields, "ortho." and
// "ortho.ns." for its orthogonalizer (the Newton–Schulz settings skipped with the exact polar factor).
// Ranks compare them to agree on their configuration (distributed_optimizer). Allocates nothing.
// ---------------------------------------------------------------------------------------------------
namespace detail {
template <class F>
void for_each_ortho_setting(const orthogonalizer& o, F& f) {
  f("ortho.", "exact", setting_value(o.exact));
  if (!o.exact) for_each_setting(o.ns, f, "ortho.ns.");
}
}  // namespace detail

template <class F>
void for_each_setting(const muon_options& o, F&& f) {
  using detail::setting_value;
  f("", "lr", o.lr);
  f("", "weight_decay", o.weight_decay);
  f("", "momentum", o.momentum);
  f("", "momentum_type", setting_value(o.momentum_type));
  f("", "nesterov", setting_value(o.nesterov));
  f("", "scale", setting_value(o.scale));
  f("", "check_finite", setting_value(o.check_finite));
  detail::for_each_ortho_setting(o.ortho, f);
}
template <class F>
void for_each_setting(const adamuon_options& o, F&& f) {
  using detail::setting_value;
  f("", "lr", o.lr);
  f("", "weight_decay", o.weight_decay);
  f("", "form", setting_value(o.form));
  f("", "beta", o.beta);
  f("", "eps", o.eps);
  f("", "sign", setting_value(o.sign));
  f("", "beta2", o.beta2);
  f("", "check_finite", setting_value(o.check_finite));
  detail::for_each_ortho_setting(o.ortho, f);
}
template <class F>
void for_each_setting(const namo_options& o, F&& f) {
  using detail::setting_value;
  f("", "lr", o.lr);
  f("", "weight_decay", o.weight_decay);
  f("", "form", setting_value(o.form));
  f("", "mu1", o.mu1);
  f("", "mu2", o.mu2);
  f("", "eps", o.eps);
  f("", "nesterov", setting_value(o.nesterov));
  f("", "rms_scale", o.rms_scale);
  f("", "column_clamp", o.column_clamp);
  f("", "check_finite", setting_value(o.check_finite));
  detail::for_each_ortho_setting(o.ortho, f);
}
template <class F>
void for_each_setting(const adamw_options& o, F&& f) {
  using detail::setting_value;
  f("", "lr", o.lr);
  f("", "weight_decay", o.weight_decay);
  f("", "form", setting_value(o.form));
  f("", "beta1", o.beta1);
  f("", "beta2", o.beta2);
  f("", "eps", o.eps);
  f("", "check_finite", setting_value(o.check_finite));
}

}  // namespace orthopt
