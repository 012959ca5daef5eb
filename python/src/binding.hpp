// SPDX-License-Identifier: Apache-2.0
//
// The bindings of one element type on one backend: the array functions (Newton–Schulz, the exact polar
// factor, the orthogonality residual) and the optimizer class. Each backend's translation unit
// instantiates bind_all<T, Backend>; module.cpp dispatches on the arrays' dtype and device.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "options.hpp"
#include "orthopt/checkpoint.hpp"
#include "orthopt/newton_schulz.hpp"
#include "orthopt/optimizer.hpp"
#include "orthopt/polar.hpp"
#include "orthopt/rules.hpp"

namespace orthopt::python {

namespace nb = nanobind;

/// Checks that an array can be read as T on this backend's device; TypeError naming `what()` otherwise
/// (the description is built only when the check fails: the optimizer's step calls this per gradient).
template <class T, class A, class Describe>
void require_element(const A& a, element want, bool cuda, Describe what) {
  if (element_of(a) != want) {
    throw type_problem(what() + " is " + dtype_text(a) + "; this call needs " + element_name(want));
  }
  if (cuda ? !on_cuda(a) : !on_cpu(a)) {
    throw type_problem(what() + " is not in " + (cuda ? "CUDA" : "CPU") + " memory");
  }
}

// ---- Array functions ------------------------------------------------------------------------------

/// Newton–Schulz (or, with `exact`, the exact polar factor) of every m×n matrix of x into out (which may
/// be x itself). `config_kw`: the orthogonalizer keywords (options.hpp). Allocates a plan per call.
template <class T, class Backend>
void orthogonalize_arrays(ro_array x, array out, nb::dict config_kw, Backend be, element want, bool cuda) {
  require_element<T>(x, want, cuda, [] { return std::string("orthopt: the input"); });
  require_element<T>(out, want, cuda, [] { return std::string("orthopt: out"); });
  if (x.ndim() < 2) throw shape_error("orthopt: the input has shape " + shape_text(x) + "; it needs [..., m, n]");
  if (out.ndim() != x.ndim()) throw shape_error("orthopt: out has shape " + shape_text(out) + ", the input " + shape_text(x));
  for (std::size_t d = 0; d < x.ndim(); ++d)
    if (out.shape(d) != x.shape(d)) throw shape_error("orthopt: out has shape " + shape_text(out) + ", the input " + shape_text(x));
  orthogonalizer o;
  o.ns = ns_presets::polar_express();
  for (auto [key, value] : config_kw) {
    const std::string k = nb::cast<std::string>(key);
    if (!set_ortho_field(o, k, value)) throw type_problem("orthopt: no orthogonalizer option '" + k + "'");
  }
  o.ns.validate();
  const std::size_t n = x.ndim();
  const index_t rows = static_cast<index_t>(x.shape(n - 2)), cols = static_cast<index_t>(x.shape(n - 1));
  if (rows == 0 || cols == 0) return;
  // Pair up the input's and the output's batches (same shapes, each with its own strides).
  std::vector<batch_view<const T>> xs;
  std::vector<batch_view<T>> qs;
  for_each_batch<const T>(x, static_cast<const T*>(x.data()), [&](batch_view<const T> b) { xs.push_back(b); });
  for_each_batch<T>(out, static_cast<T*>(out.data()), [&](batch_view<T> b) { qs.push_back(b); });
  if (xs.empty()) return;
  nb::gil_scoped_release release;
  if (o.exact) {
    exact_polar<T, Backend> plan(rows, cols, be, o.ns.check_finite);
    for (std::size_t b = 0; b < xs.size(); ++b)
      for (index_t k = 0; k < xs[b].count; ++k) plan(xs[b][k], qs[b][k]);
  } else {
    newton_schulz<T, Backend> plan(rows, cols, o.ns, be);
    for (std::size_t b = 0; b < xs.size(); ++b) plan(xs[b], qs[b]);
  }
}

/// ‖X Xᵀ − I‖_F / √m for each matrix (m the smaller side; Xᵀ X when rows > cols), in double on the host.
template <class T>
std::vector<double> residuals_on_host(ro_array x) {
  std::vector<double> out;
  for_each_batch<const T>(x, static_cast<const T*>(x.data()), [&](batch_view<const T> b) {
    for (index_t k = 0; k < b.count; ++k) {
      const matrix_view<const T> m = b[k];
      const bool wide = m.rows <= m.cols;
      const index_t small = wide ? m.rows : m.cols, large = wide ? m.cols : m.rows;
      const auto at = [&](index_t i, index_t j) {  // element (i, j) of the wide orientation
        return static_cast<double>(wide ? m(i, j) : m(j, i));
      };
      double sum = 0.0;
      for (index_t i = 0; i < small; ++i) {
        for (index_t j = 0; j < small; ++j) {
          double dot = 0.0;
          for (index_t c = 0; c < large; ++c) dot += at(i, c) * at(j, c);
          const double e = dot - (i == j ? 1.0 : 0.0);
          sum += e * e;
        }
      }
      out.push_back(std::sqrt(sum / static_cast<double>(small)));
    }
  });
  return out;
}

// ---- A state given by Python, as the checkpoint writer reads a state ------------------------------

/// Host memory for the checkpoint writer's copies (found by argument-dependent lookup).
struct host_memory {};
inline void copy_to_host(host_memory&, void* dst, const void* src, std::size_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
}

/// One parameter's state as Python hands it over (import_state), with the members
/// detail::record_bytes_of and detail::write_param_record read from a param_state.
struct host_record {
  struct ns_steps_of {
    std::uint32_t count = 0;
    [[nodiscard]] std::uint32_t steps() const { return count; }
  };
  struct slot {
    const char* name;
    std::size_t element_bytes;
    const void* data;
    std::size_t elements;
  };
  std::string name;
  std::uint32_t code = 0;
  std::uint64_t rows_ = 0, cols_ = 0, count_ = 0, step_ = 0;
  ns_steps_of ns;
  std::vector<std::string> slot_names, slot_bytes;
  std::vector<std::uint32_t> element_bytes;
  mutable host_memory memory;

  [[nodiscard]] rule_kind kind() const { return static_cast<rule_kind>(code); }
  [[nodiscard]] std::uint64_t rows() const { return rows_; }
  [[nodiscard]] std::uint64_t cols() const { return cols_; }
  [[nodiscard]] std::uint64_t count() const { return count_; }
  [[nodiscard]] std::uint64_t step() const { return step_; }
  [[nodiscard]] const ns_steps_of* ns_plan() const { return ns.count != 0 ? &ns : nullptr; }
  [[nodiscard]] host_memory& backend() const { return memory; }
  [[nodiscard]] std::vector<slot> slots() const {
    std::vector<slot> s;
    for (std::size_t k = 0; k < slot_names.size(); ++k) {
      s.push_back({slot_names[k].c_str(), element_bytes[k], slot_bytes[k].data(), slot_bytes[k].size() / element_bytes[k]});
    }
    return s;
  }
};

// ---- The optimizer ---------------------------------------------------------------------------------

/// orthopt::optimizer<T, Backend> for Python: parameters registered from arrays (kept alive here), a
/// step over a list of gradient arrays (None: skipped), options from keywords, and the state as arrays.
template <class T, class Backend, element Want, bool Cuda>
class py_optimizer {
 public:
  explicit py_optimizer(Backend be) : be_(std::move(be)) {}

  int add_group(const std::string& name, const std::string& rule, const std::string& preset, nb::dict kw) {
    idle();
    auto g = opt_.add_group(name, make_rule(rule, preset, kw));
    return static_cast<int>(g.index);
  }

  /// Hyper-parameters of group g from keywords (the orthogonalizer's are refused: fixed at registration).
  void set_group_options(int g, nb::dict kw) {
    idle();
    auto& grp = opt_.group(gid(g));
    std::visit(
        [&](auto& r) {
          auto o = r.options();
          apply_keywords(o, kw, rule_name(std::decay_t<decltype(r)>::kind), /*allow_ortho=*/false);
          grp.lr = o.lr;
          r.options() = o;
        },
        grp.rule);
  }
  double group_lr(int g) { return opt_.group(gid(g)).lr; }

  int add_param(const std::string& name, int g, array a, bool batch, int row_blocks) {
    idle();
    require_element<T>(a, want_, cuda_, [&] { return "orthopt: parameter '" + name + "'"; });
    const batch_view<T> view = param_matrices<T>(name, a, static_cast<T*>(a.data()), batch, row_blocks);
    const auto p = opt_.add_param(name, gid(g), view);
    arrays_.push_back(a);  // keeps the memory alive as long as the optimizer
    layout_.push_back({batch, row_blocks});
    grads_.emplace_back();
    held_.reserve(arrays_.size());
    return static_cast<int>(p.index);
  }

  /// One step; gradients[i] is parameter i's gradient array or None (skipped). All-or-nothing.
  void step(nb::list gradients) {
    // The step runs without the GIL: a second thread stepping the same optimizer meanwhile is refused
    // (an optimizer is not synchronized; two optimizers may step on two threads).
    if (busy_.exchange(true)) {
      throw value_error("orthopt: this optimizer is being stepped on another thread; nothing was changed");
    }
    // held_ keeps the gradient arrays (and so their memory) for the duration of the step; it is emptied
    // after it, keeping its capacity.
    struct end_of_step {
      py_optimizer& self;
      ~end_of_step() {
        self.held_.clear();
        self.busy_ = false;
      }
    } done{*this};
    if (nb::len(gradients) != arrays_.size()) {
      throw value_error("orthopt: step got " + std::to_string(nb::len(gradients)) + " gradients for " +
                        std::to_string(arrays_.size()) + " parameters; nothing was changed");
    }
    for (std::size_t i = 0; i < arrays_.size(); ++i) {
      nb::handle h = gradients[i];
      if (h.is_none()) {
        grads_[i] = {};
        continue;
      }
      ro_array g;
      if (!nb::try_cast<ro_array>(h, g, /*convert=*/false)) {
        throw type_problem("orthopt: the gradient of '" + opt_.param_name(param_id{i}) +
                              "' is not an array (DLPack or buffer protocol); nothing was changed");
      }
      const auto who = [&] { return "orthopt: the gradient of '" + opt_.param_name(param_id{i}) + "'"; };
      require_element<T>(g, want_, cuda_, who);
      const array& p = arrays_[i];
      bool same_shape = g.ndim() == p.ndim();
      for (std::size_t d = 0; same_shape && d < g.ndim(); ++d) same_shape = g.shape(d) == p.shape(d);
      if (!same_shape) {
        throw shape_error(who() + " has shape " + shape_text(g) + ", the parameter " + shape_text(p) + "; nothing was changed");
      }
      grads_[i] = param_matrices<const T>(opt_.param_name(param_id{i}), g, static_cast<const T*>(g.data()),
                                          layout_[i].batch, layout_[i].row_blocks);
      held_.push_back(std::move(g));
    }
    nb::gil_scoped_release release;
    opt_.step(grads_);
  }

  // ---- Inspection and Newton–Schulz settings ------------------------------------------------------
  void set_parallel_parameters(bool on) {
    idle();
    opt_.set_parallel_parameters(on);
  }
  bool parallel_parameters() const { return opt_.parallel_parameters(); }
  std::int64_t steps_taken() const { return opt_.steps_taken(); }
  void set_steps_taken(std::int64_t n) {
    idle();
    opt_.set_steps_taken(n);
  }
  std::size_t param_count() const { return opt_.param_count(); }
  std::string routing_table() const { return opt_.routing_table(); }
  int ns_steps(int p) { return opt_.ns_steps(pid(p)); }
  void set_ns_steps_param(int p, int n) {
    idle();
    opt_.set_ns_steps(pid(p), n);
  }
  void set_ns_steps_group(int g, int n) {
    idle();
    opt_.set_ns_steps(gid(g), n);
  }
  void record_ns_residuals(int g, bool on) {
    idle();
    opt_.record_ns_residuals(gid(g), on);
  }
  std::vector<double> ns_residuals(int p, int k) {
    idle();
    return opt_.ns_residuals(pid(p), k);
  }
  void set_ns_stop_tolerance(int g, double t) {
    idle();
    opt_.set_ns_stop_tolerance(gid(g), t);
  }

  void set_ns_budget(nb::dict kw) {
    idle();
    opt_.set_ns_budget(budget_options(kw));
  }
  void clear_ns_budget() {
    idle();
    opt_.clear_ns_budget();
  }
  std::string budget_phase() const {
    switch (opt_.ns_budget_state()) {
      case orthopt::ns_budget_phase::none: return "none";
      case orthopt::ns_budget_phase::waiting: return "waiting";
      case orthopt::ns_budget_phase::observing: return "observing";
      case orthopt::ns_budget_phase::committed: return "committed";
    }
    return "?";
  }
  nb::object ns_budget_report() const {
    const auto* r = opt_.ns_budget_last_report();
    if (r == nullptr) return nb::none();
    nb::dict d;
    d["window_start"] = r->window_start;
    d["committed_at"] = r->committed_at;
    d["budget"] = r->budget;
    d["uniform_cost"] = r->uniform_cost;
    d["committed_cost"] = r->committed_cost;
    d["table"] = r->table();
    nb::list params;
    for (const auto& p : r->params) {
      nb::dict e;
      e["name"] = p.name;
      e["role"] = p.role;
      e["matrices"] = p.matrices;
      e["configured_ns_steps"] = p.configured_ns_steps;
      e["observe_ns_steps"] = p.observe_ns_steps;
      e["target"] = p.target;
      e["mean_needed"] = p.observed.mean_needed;
      e["max_needed"] = p.observed.max_needed;
      e["mean_final_residual"] = p.observed.mean_final_residual;
      e["mean_effective_rank"] = p.observed.mean_effective_rank;
      e["committed_ns_steps"] = p.committed_ns_steps;
      params.append(e);
    }
    d["params"] = params;
    return d;
  }

  // ---- State -------------------------------------------------------------------------------------

  /// The whole state as host copies: {steps_taken, ns_budget_phase, ns_budget_phase_start, params: [{name,
  /// rule, rows, cols, count, step, ns_steps, slots: {name: (bytes, element_bytes)}}]}. The Python side
  /// turns the bytes into tensors.
  nb::dict export_state() const {
    idle();
    nb::dict d;
    d["steps_taken"] = opt_.steps_taken();
    d["ns_budget_phase"] = static_cast<std::uint32_t>(opt_.ns_budget_state());
    d["ns_budget_phase_start"] = opt_.ns_budget_phase_start();
    nb::list params;
    std::vector<unsigned char> staging;
    for (std::size_t i = 0; i < opt_.param_count(); ++i) {
      const auto& st = opt_.state(param_id{i});
      nb::dict e;
      e["name"] = opt_.param_name(param_id{i});
      e["rule"] = std::string(rule_name(st.kind()));
      e["rows"] = st.rows();
      e["cols"] = st.cols();
      e["count"] = st.count();
      e["step"] = st.step();
      e["ns_steps"] = st.ns_plan() != nullptr ? st.ns_plan()->steps() : 0;
      nb::dict slots;
      for (const auto& s : st.slots()) {
        staging.resize(s.element_bytes * s.elements);
        copy_to_host(st.backend(), staging.data(), s.data, staging.size());
        slots[s.name] = nb::make_tuple(nb::bytes(reinterpret_cast<const char*>(staging.data()), staging.size()),
                                       s.element_bytes);
      }
      e["slots"] = slots;
      params.append(e);
    }
    d["params"] = params;
    return d;
  }

  /// Replaces the state with `d` (export_state's layout): written as a checkpoint and loaded through
  /// orthopt's checkpoint loader, so every check it makes applies and a refusal changes nothing.
  void import_state(nb::dict d) {
    idle();
    const auto need = [&](nb::handle obj, const char* key) -> nb::object {
      nb::dict m = nb::borrow<nb::dict>(obj);
      if (!m.contains(key)) throw value_error(std::string("orthopt: the state has no '") + key + "'");
      return m[key];
    };
    std::vector<host_record> records;
    nb::list params = nb::borrow<nb::list>(need(d, "params"));
    for (nb::handle h : params) {
      host_record r;
      r.name = nb::cast<std::string>(need(h, "name"));
      r.code = rule_code(nb::cast<std::string>(need(h, "rule")));
      r.rows_ = nb::cast<std::uint64_t>(need(h, "rows"));
      r.cols_ = nb::cast<std::uint64_t>(need(h, "cols"));
      r.count_ = nb::cast<std::uint64_t>(need(h, "count"));
      r.step_ = nb::cast<std::uint64_t>(need(h, "step"));
      r.ns.count = nb::cast<std::uint32_t>(need(h, "ns_steps"));
      nb::dict slots = nb::borrow<nb::dict>(need(h, "slots"));
      for (auto [k, v] : slots) {
        nb::tuple t = nb::borrow<nb::tuple>(v);
        nb::bytes b = nb::borrow<nb::bytes>(t[0]);
        const auto size = nb::cast<std::uint32_t>(t[1]);
        const std::string slot = nb::cast<std::string>(k);
        if (size == 0 || b.size() % size != 0) {
          throw value_error("orthopt: parameter '" + r.name + "': slot '" + slot + "' holds " + std::to_string(b.size()) +
                            " bytes, not a whole number of " + std::to_string(size) + "-byte elements");
        }
        r.slot_names.push_back(slot);
        r.slot_bytes.emplace_back(b.c_str(), b.size());
        r.element_bytes.push_back(size);
      }
      records.push_back(std::move(r));
    }
    const std::int64_t steps_taken = nb::cast<std::int64_t>(need(d, "steps_taken"));
    const auto phase = static_cast<orthopt::ns_budget_phase>(nb::cast<std::uint32_t>(need(d, "ns_budget_phase")));
    const std::int64_t phase_start = nb::cast<std::int64_t>(need(d, "ns_budget_phase_start"));
    if (steps_taken < 0) throw value_error("orthopt: the state's steps_taken = " + std::to_string(steps_taken) + " < 0");

    // The checkpoint's own record writer and length, so that this stays the format the loader reads.
    std::uint64_t payload = detail::payload_fixed_bytes;
    for (const auto& r : records) payload += detail::record_bytes_of(r.name, r);
    std::ostringstream out;
    const auto write_records = [&](detail::checkpoint_writer& w) {
      std::vector<unsigned char> staging;
      for (const auto& r : records) detail::write_param_record(w, r.name, r, staging);
    };
    detail::write_checkpoint<T>(out, payload, steps_taken, records.size(), write_records, phase, phase_start);
    std::istringstream in(out.str());
    load_checkpoint(opt_, in);
  }

  nb::bytes save_checkpoint_bytes() const {
    idle();
    std::ostringstream out;
    save_checkpoint(opt_, out);
    const std::string s = out.str();
    return nb::bytes(s.data(), s.size());
  }
  void load_checkpoint_bytes(nb::bytes b) {
    idle();
    std::istringstream in(std::string(b.c_str(), b.size()));
    load_checkpoint(opt_, in);
  }

 private:
  struct param_layout {
    bool batch;
    int row_blocks;
  };

  /// Refuses a call while a step runs on another thread (the step releases the GIL).
  void idle() const {
    if (busy_) throw value_error("orthopt: this optimizer is being stepped on another thread");
  }

  static std::uint32_t rule_code(const std::string& rule) {
    for (rule_kind k : {rule_kind::muon, rule_kind::adamuon, rule_kind::namo, rule_kind::namo_d, rule_kind::adamw}) {
      if (rule == rule_name(k)) return static_cast<std::uint32_t>(k);
    }
    throw value_error("orthopt: the state names an unknown rule '" + rule + "'");
  }

  any_rule<T, Backend> make_rule(const std::string& rule, const std::string& preset, nb::dict kw) {
    if (rule == "muon") {
      auto o = muon_preset(preset.empty() ? "keller" : preset);
      apply_keywords(o, kw, "Muon", true);
      return muon<T, Backend>(o, be_);
    }
    if (rule == "adamuon") {
      auto o = adamuon_preset(preset.empty() ? "code" : preset);
      apply_keywords(o, kw, "AdaMuon", true);
      return adamuon<T, Backend>(o, be_);
    }
    if (rule == "namo") {
      auto o = namo_preset(preset.empty() ? "code" : preset);
      apply_keywords(o, kw, "NAMO", true);
      return namo<T, Backend>(o, be_);
    }
    if (rule == "namo_d") {
      auto o = namo_d_preset(preset.empty() ? "code" : preset);
      apply_keywords(o, kw, "NAMO-D", true);
      return namo_d<T, Backend>(o, be_);
    }
    if (rule == "adamw") {
      auto o = adamw_preset(preset.empty() ? "torch" : preset);
      apply_keywords(o, kw, "AdamW", true);
      return adamw<T, Backend>(o, be_);
    }
    throw value_error("orthopt: unknown rule '" + rule + "'; known: muon, adamuon, namo, namo_d, adamw");
  }

  group_id gid(int g) const {
    if (g < 0 || static_cast<std::size_t>(g) >= opt_.group_count()) {
      throw value_error("orthopt: group index " + std::to_string(g) + " out of range");
    }
    return group_id{static_cast<std::size_t>(g)};
  }
  param_id pid(int p) const {
    check_index(p);
    return param_id{static_cast<std::size_t>(p)};
  }
  void check_index(int p) const {
    if (p < 0 || static_cast<std::size_t>(p) >= arrays_.size()) {
      throw value_error("orthopt: parameter index " + std::to_string(p) + " out of range");
    }
  }

  static constexpr element want_ = Want;
  static constexpr bool cuda_ = Cuda;
  Backend be_;
  optimizer<T, Backend> opt_;
  std::vector<array> arrays_;
  std::vector<param_layout> layout_;
  std::vector<batch_view<const T>> grads_;
  std::vector<ro_array> held_;
  std::atomic<bool> busy_{false};
};

/// Registers the class py_optimizer<T, Backend> as `name` in module m; its constructor takes the CPU
/// thread count and the CUDA stream (an integer handle), and makes its backend with `make`.
template <class T, class Backend, element Want, bool Cuda, Backend (*Make)(int, std::uintptr_t)>
void bind_optimizer(nb::module_& m, const char* name) {
  using P = py_optimizer<T, Backend, Want, Cuda>;
  nb::class_<P>(m, name)
      .def(
          "__init__", [](P* self, int threads, std::uintptr_t stream) { new (self) P(Make(threads, stream)); },
          nb::arg("threads"), nb::arg("stream") = 0)
      .def("add_group", &P::add_group, nb::arg("name"), nb::arg("rule"), nb::arg("preset"), nb::arg("options"))
      .def("set_group_options", &P::set_group_options)
      .def("group_lr", &P::group_lr)
      .def("add_param", &P::add_param, nb::arg("name"), nb::arg("group"), nb::arg("array").noconvert(),
           nb::arg("batch") = false, nb::arg("row_blocks") = 1)
      .def("step", &P::step)
      .def("set_parallel_parameters", &P::set_parallel_parameters)
      .def("parallel_parameters", &P::parallel_parameters)
      .def("steps_taken", &P::steps_taken)
      .def("set_steps_taken", &P::set_steps_taken)
      .def("param_count", &P::param_count)
      .def("routing_table", &P::routing_table)
      .def("ns_steps", &P::ns_steps)
      .def("set_ns_steps_param", &P::set_ns_steps_param)
      .def("set_ns_steps_group", &P::set_ns_steps_group)
      .def("record_ns_residuals", &P::record_ns_residuals)
      .def("ns_residuals", &P::ns_residuals, nb::arg("param"), nb::arg("item") = 0)
      .def("set_ns_stop_tolerance", &P::set_ns_stop_tolerance)
      .def("set_ns_budget", &P::set_ns_budget)
      .def("clear_ns_budget", &P::clear_ns_budget)
      .def("ns_budget_phase", &P::budget_phase)
      .def("ns_budget_report", &P::ns_budget_report)
      .def("export_state", &P::export_state)
      .def("import_state", &P::import_state)
      .def("save_checkpoint", &P::save_checkpoint_bytes)
      .def("load_checkpoint", &P::load_checkpoint_bytes);
}

}  // namespace orthopt::python
