// SPDX-License-Identifier: Apache-2.0
//
// Python keyword options → orthopt's options structs. Every field of an options struct is a keyword of
// the same name; enumerations are given by their enumerator names as strings; the orthogonalizer's
// fields are flat keywords: ns (a schedule name), ns_steps, ns_coefficients, ns_normalization, ns_eps,
// ns_safety, ns_absolute_eps, ns_algorithm, ns_gram_restart_after, ns_check_finite, exact_polar.
// Unknown keywords are refused by name (TypeError, as Python refuses an unexpected keyword argument).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "arrays.hpp"
#include "orthopt/ns_budget.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/rules/options.hpp"

namespace orthopt::python {

namespace nb = nanobind;


template <class E>
struct enum_names;
template <>
struct enum_names<momentum_kind> {
  static constexpr std::pair<const char*, momentum_kind> values[] = {{"ema", momentum_kind::ema},
                                                                     {"classical", momentum_kind::classical}};
};
template <>
struct enum_names<shape_scale> {
  static constexpr std::pair<const char*, shape_scale> values[] = {{"original", shape_scale::original},
                                                                   {"match_rms_adamw", shape_scale::match_rms_adamw},
                                                                   {"spectral", shape_scale::spectral},
                                                                   {"none", shape_scale::none}};
};
template <>
struct enum_names<adamuon_form> {
  static constexpr std::pair<const char*, adamuon_form> values[] = {{"paper", adamuon_form::paper},
                                                                    {"code", adamuon_form::code}};
};
template <>
struct enum_names<namo_form> {
  static constexpr std::pair<const char*, namo_form> values[] = {{"paper", namo_form::paper}, {"code", namo_form::code}};
};
template <>
struct enum_names<adamw_form> {
  static constexpr std::pair<const char*, adamw_form> values[] = {{"torch", adamw_form::torch},
                                                                  {"moonlight", adamw_form::moonlight}};
};
template <>
struct enum_names<ns_normalization> {
  static constexpr std::pair<const char*, ns_normalization> values[] = {
      {"frobenius", ns_normalization::frobenius},
      {"frobenius_clamp", ns_normalization::frobenius_clamp},
      {"safety", ns_normalization::safety},
      {"aol", ns_normalization::aol}};
};
template <>
struct enum_names<ns_algorithm> {
  static constexpr std::pair<const char*, ns_algorithm> values[] = {{"standard", ns_algorithm::standard},
                                                                    {"gram", ns_algorithm::gram},
                                                                    {"fastest", ns_algorithm::fastest}};
};

template <class E>
E enum_from(const char* key, nb::handle v) {
  if (!nb::isinstance<nb::str>(v)) {
    throw type_problem("orthopt: option '" + std::string(key) + "' takes a string");
  }
  const std::string s = nb::cast<std::string>(v);
  std::string known;
  for (const auto& [name, value] : enum_names<E>::values) {
    if (s == name) return value;
    known += (known.empty() ? "" : ", ") + std::string(name);
  }
  throw value_error("orthopt: option " + std::string(key) + " = '" + s + "' is not one of: " + known);
}
template <class E>
const char* enum_name(E e) {
  for (const auto& [name, value] : enum_names<E>::values)
    if (value == e) return name;
  return "?";
}

inline double as_double(const char* key, nb::handle v) {
  if (nb::isinstance<nb::bool_>(v) || !(nb::isinstance<nb::float_>(v) || nb::isinstance<nb::int_>(v))) {
    // torch's lr may be a one-element tensor: accept anything with __float__ but bool.
    if (!nb::isinstance<nb::bool_>(v) && nb::hasattr(v, "__float__")) return nb::cast<double>(v.attr("__float__")());
    throw type_problem("orthopt: option '" + std::string(key) + "' takes a number, not " +
                       nb::cast<std::string>(nb::str(v.type().attr("__name__"))));
  }
  return nb::cast<double>(v);
}
inline long long as_int(const char* key, nb::handle v) {
  if (nb::isinstance<nb::bool_>(v) || !nb::isinstance<nb::int_>(v)) {
    throw type_problem("orthopt: option '" + std::string(key) + "' takes an integer");
  }
  return nb::cast<long long>(v);
}
inline bool as_bool(const char* key, nb::handle v) {
  if (!nb::isinstance<nb::bool_>(v)) {
    throw type_problem("orthopt: option '" + std::string(key) + "' takes True or False");
  }
  return nb::cast<bool>(v);
}

/// Sets one orthogonalizer keyword on `o`; false when `key` is not one.
inline bool set_ortho_field(orthogonalizer& o, const std::string& key, nb::handle v) {
  ns_config& ns = o.ns;
  if (key == "ns") {
    ns = ns_presets::by_name(nb::cast<std::string>(nb::str(v)));
  } else if (key == "ns_steps") {
    const long long s = as_int("ns_steps", v);
    if (s < 1 || s > 1000) throw value_error("orthopt: ns_steps = " + std::to_string(s) + " must lie in [1, 1000]");
    ns.steps = static_cast<int>(s);
  } else if (key == "ns_coefficients") {
    // One (a, b, c) triple for every iteration, or a table of triples (row k for iteration k, the last
    // row repeating).
    nb::sequence seq = nb::borrow<nb::sequence>(v);
    std::vector<ns_coefficients> table;
    const auto triple = [](nb::handle t) {
      nb::sequence abc = nb::borrow<nb::sequence>(t);
      if (nb::len(abc) != 3) throw value_error("orthopt: ns_coefficients rows are (a, b, c) triples");
      return ns_coefficients{as_double("ns_coefficients", abc[0]), as_double("ns_coefficients", abc[1]),
                             as_double("ns_coefficients", abc[2])};
    };
    if (nb::len(seq) == 3 && !nb::hasattr(seq[0], "__len__")) {
      table.push_back(triple(seq));
    } else {
      for (nb::handle row : seq) table.push_back(triple(row));
    }
    if (table.empty()) throw value_error("orthopt: ns_coefficients is empty");
    ns.table = std::move(table);
    ns.name = "custom";
  } else if (key == "ns_normalization") {
    ns.normalization = enum_from<ns_normalization>("ns_normalization", v);
  } else if (key == "ns_eps") {
    ns.eps = as_double("ns_eps", v);
  } else if (key == "ns_safety") {
    ns.safety = as_double("ns_safety", v);
  } else if (key == "ns_absolute_eps") {
    ns.absolute_eps = as_bool("ns_absolute_eps", v);
  } else if (key == "ns_algorithm") {
    ns.algorithm = enum_from<ns_algorithm>("ns_algorithm", v);
  } else if (key == "ns_gram_restart_after") {
    ns.gram_restart_after = static_cast<int>(as_int("ns_gram_restart_after", v));
  } else if (key == "ns_check_finite") {
    ns.check_finite = as_bool("ns_check_finite", v);
  } else if (key == "exact_polar") {
    o.exact = as_bool("exact_polar", v);
  } else {
    return false;
  }
  return true;
}

/// The keywords of the orthogonalizer (fixed when a parameter is registered).
inline bool is_ortho_key(std::string_view key) {
  return key == "ns" || key.starts_with("ns_") || key == "exact_polar";
}

// ---- Per-rule fields --------------------------------------------------------------------------------

inline bool set_field(muon_options& o, const std::string& k, nb::handle v) {
  if (k == "lr") o.lr = as_double("lr", v);
  else if (k == "weight_decay") o.weight_decay = as_double("weight_decay", v);
  else if (k == "momentum") o.momentum = as_double("momentum", v);
  else if (k == "momentum_type") o.momentum_type = enum_from<momentum_kind>("momentum_type", v);
  else if (k == "nesterov") o.nesterov = as_bool("nesterov", v);
  else if (k == "scale") o.scale = enum_from<shape_scale>("scale", v);
  else if (k == "check_finite") o.check_finite = as_bool("check_finite", v);
  else return set_ortho_field(o.ortho, k, v);
  return true;
}
inline bool set_field(adamuon_options& o, const std::string& k, nb::handle v) {
  if (k == "lr") o.lr = as_double("lr", v);
  else if (k == "weight_decay") o.weight_decay = as_double("weight_decay", v);
  else if (k == "form") o.form = enum_from<adamuon_form>("form", v);
  else if (k == "beta") o.beta = as_double("beta", v);
  else if (k == "eps") o.eps = as_double("eps", v);
  else if (k == "sign") o.sign = as_bool("sign", v);
  else if (k == "beta2") o.beta2 = as_double("beta2", v);
  else if (k == "check_finite") o.check_finite = as_bool("check_finite", v);
  else return set_ortho_field(o.ortho, k, v);
  return true;
}
inline bool set_field(namo_options& o, const std::string& k, nb::handle v) {
  if (k == "lr") o.lr = as_double("lr", v);
  else if (k == "weight_decay") o.weight_decay = as_double("weight_decay", v);
  else if (k == "form") o.form = enum_from<namo_form>("form", v);
  else if (k == "mu1") o.mu1 = as_double("mu1", v);
  else if (k == "mu2") o.mu2 = as_double("mu2", v);
  else if (k == "eps") o.eps = as_double("eps", v);
  else if (k == "nesterov") o.nesterov = as_bool("nesterov", v);
  else if (k == "rms_scale") o.rms_scale = as_double("rms_scale", v);
  else if (k == "column_clamp") o.column_clamp = as_double("column_clamp", v);
  else if (k == "check_finite") o.check_finite = as_bool("check_finite", v);
  else return set_ortho_field(o.ortho, k, v);
  return true;
}
inline bool set_field(adamw_options& o, const std::string& k, nb::handle v) {
  if (k == "lr") o.lr = as_double("lr", v);
  else if (k == "weight_decay") o.weight_decay = as_double("weight_decay", v);
  else if (k == "form") o.form = enum_from<adamw_form>("form", v);
  else if (k == "beta1") o.beta1 = as_double("beta1", v);
  else if (k == "beta2") o.beta2 = as_double("beta2", v);
  else if (k == "eps") o.eps = as_double("eps", v);
  else if (k == "check_finite") o.check_finite = as_bool("check_finite", v);
  else return false;
  return true;
}

inline muon_options muon_preset(const std::string& p) {
  if (p == "keller") return muon_presets::keller();
  if (p == "moonlight") return muon_presets::moonlight();
  if (p == "torch") return muon_presets::torch();
  if (p == "custom") return muon_options{};
  throw value_error("orthopt: unknown Muon preset '" + p + "'; known: keller, moonlight, torch, custom");
}
inline adamuon_options adamuon_preset(const std::string& p) {
  if (p == "paper") return adamuon_presets::paper();
  if (p == "code") return adamuon_presets::code();
  if (p == "code_gpt2") return adamuon_presets::code_gpt2();
  if (p == "v1") return adamuon_presets::v1();
  if (p == "custom") return adamuon_options{};
  throw value_error("orthopt: unknown AdaMuon preset '" + p + "'; known: paper, code, code_gpt2, v1, custom");
}
inline namo_options namo_preset(const std::string& p) {
  if (p == "code") return namo_presets::code();
  if (p == "paper") return namo_presets::paper();
  if (p == "custom") return namo_options{};
  throw value_error("orthopt: unknown NAMO preset '" + p + "'; known: code, paper, custom");
}
inline namo_options namo_d_preset(const std::string& p) {
  if (p == "code") return namo_d_presets::code();
  if (p == "gpt2_small") return namo_d_presets::gpt2_small();
  if (p == "custom") return namo_options{};
  throw value_error("orthopt: unknown NAMO-D preset '" + p + "'; known: code, gpt2_small, custom");
}
inline adamw_options adamw_preset(const std::string& p) {
  if (p == "torch") return adamw_presets::torch();
  if (p == "moonlight") return adamw_presets::moonlight();
  if (p == "custom") return adamw_options{};
  throw value_error("orthopt: unknown AdamW preset '" + p + "'; known: torch, moonlight, custom");
}

/// Applies the keywords of `kw` to `o` in two passes: `ns` first (it replaces the schedule), then the
/// rest; `allow_ortho` false refuses the orthogonalizer's keywords (they are fixed after registration).
/// `rule` names the rule in messages. The result is validated (value_error naming the field).
template <class Options>
void apply_keywords(Options& o, nb::dict kw, const char* rule, bool allow_ortho) {
  for (int pass = 0; pass < 2; ++pass) {
    for (auto [key, value] : kw) {
      const std::string k = nb::cast<std::string>(key);
      if (k == "preset") continue;
      if ((k == "ns") != (pass == 0)) continue;
      if (!allow_ortho && is_ortho_key(k)) {
        throw value_error(std::string("orthopt: '") + k + "' of a " + rule +
                          " group is fixed when its parameters are registered; make a new optimizer to change it");
      }
      if (!set_field(o, k, value)) throw type_problem(std::string("orthopt: ") + rule + " has no option '" + k + "'");
    }
  }
  o.validate();
}

/// ns_budget_options from keywords (the on_commit callback is not offered: read ns_budget_report()).
inline ns_budget_options budget_options(nb::dict kw) {
  ns_budget_options o;
  for (auto [key, v] : kw) {
    const std::string k = nb::cast<std::string>(key);
    if (k == "start_step") o.start_step = as_int("start_step", v);
    else if (k == "observe_window") o.observe_window = as_int("observe_window", v);
    else if (k == "observe_ns_steps") o.observe_ns_steps = static_cast<int>(as_int("observe_ns_steps", v));
    else if (k == "residual_target") o.residual_target = as_double("residual_target", v);
    else if (k == "min_ns_steps") o.min_ns_steps = static_cast<int>(as_int("min_ns_steps", v));
    else if (k == "max_ns_steps") o.max_ns_steps = static_cast<int>(as_int("max_ns_steps", v));
    else if (k == "budget_fraction") o.budget_fraction = as_double("budget_fraction", v);
    else if (k == "spend_whole_budget") o.spend_whole_budget = as_bool("spend_whole_budget", v);
    else if (k == "reobserve_every") o.reobserve_every = as_int("reobserve_every", v);
    else if (k == "roles") {
      for (nb::handle r : nb::borrow<nb::sequence>(v)) o.roles.push_back(name_pattern{nb::cast<std::string>(r), false});
    } else {
      throw type_problem("orthopt: the adaptive Newton–Schulz budget has no option '" + k + "'");
    }
  }
  return o;
}

}  // namespace orthopt::python
