// Helpers for the optimizer and checkpoint tests: a small "model" whose parameters cover every kind of
// registration (plain matrices in both storage orders, a split fused matrix, an N-D conv filter, stacked
// experts, vectors, an embedding and an output head) and every rule, deterministic gradients, and a
// byte snapshot of everything an optimizer step or a checkpoint load may write.
#pragma once

#include <orthopt/checkpoint.hpp>
#include <orthopt/eigen.hpp>
#include <orthopt/optimizer.hpp>
#include <orthopt/param_registry.hpp>
#include <orthopt/lr_schedule.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace testing {

using orthopt::index_t;

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

/// Appends the bytes of every element of a batch view (in index order, whatever the strides).
template <class T>
void append_bytes(std::vector<unsigned char>& out, orthopt::batch_view<T> b) {
  for (index_t k = 0; k < b.count; ++k)
    for (index_t i = 0; i < b.rows(); ++i)
      for (index_t j = 0; j < b.cols(); ++j) {
        const auto* p = reinterpret_cast<const unsigned char*>(&b[k](i, j));
        out.insert(out.end(), p, p + sizeof(T));
      }
}
inline void append_raw(std::vector<unsigned char>& out, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  out.insert(out.end(), p, p + n);
}

/// A checkpoint of `opt` as bytes (orthopt::save_checkpoint to a string stream).
template <class Optimizer>
std::string checkpoint_bytes(const Optimizer& opt) {
  std::ostringstream out(std::ios::binary);
  orthopt::save_checkpoint(opt, out);
  return out.str();
}
/// Loads checkpoint bytes into `opt` (orthopt::load_checkpoint from a string stream).
template <class Optimizer>
void load_checkpoint_bytes(Optimizer& opt, const std::string& bytes) {
  std::istringstream in(bytes, std::ios::binary);
  orthopt::load_checkpoint(opt, in);
}

/// The bytes of parameter `index`'s state: its step count and every slot.
template <class T, class Backend>
std::vector<unsigned char> state_bytes(const orthopt::param_registry<T, Backend>& opt, std::size_t index) {
  std::vector<unsigned char> out;
  const auto& s = opt.state(orthopt::param_id{index});
  const std::int64_t t = s.step();
  append_raw(out, &t, sizeof t);
  for (const auto& slot : s.slots()) append_raw(out, slot.data, slot.element_bytes * slot.elements);
  return out;
}

/// Every byte a step or a checkpoint load may change in either optimizer (on this rank, for a
/// distributed one): parameters, every state slot and step count that lives here, the optimizer's step
/// count, and each group's rule lr (step() writes it).
template <class T, class Backend>
std::vector<unsigned char> snapshot(const orthopt::param_registry<T, Backend>& opt) {
  std::vector<unsigned char> out;
  for (std::size_t i = 0; i < opt.param_count(); ++i) {
    const orthopt::param_id p{i};
    append_bytes(out, opt.param_view(p));
    if (!opt.has_state(p)) continue;
    const auto s = state_bytes(opt, i);
    out.insert(out.end(), s.begin(), s.end());
  }
  const std::int64_t n = opt.steps_taken();
  append_raw(out, &n, sizeof n);
  for (std::size_t g = 0; g < opt.group_count(); ++g) {
    const double lr = std::visit([](const auto& r) { return r.options().lr; }, opt.group(orthopt::group_id{g}).rule);
    append_raw(out, &lr, sizeof lr);
  }
  return out;
}

/// One tensor of the toy model: its values and gradient in host memory, and how it is registered.
template <class T>
struct toy_tensor {
  std::string name;
  std::vector<T> value, grad;
  std::function<orthopt::batch_view<T>(T*)> layout;  // the registered view over a buffer of this tensor
  std::string group;                                 // "" = routed by the router
};

/// Variations of the toy model for the checkpoint mismatch tests.
struct toy_variant {
  bool namo_group_runs_adamuon = false;  // another rule for the conv filter's group
  bool wider_fc = false;                 // fc is 16×9 instead of 16×8
  bool drop_head = false;                // no output head parameter
  bool rename_head = false;              // the head is called "lm_head.w"
  bool extra_param = false;              // one more vector parameter
};

template <class T>
struct toy_model {
  std::vector<toy_tensor<T>> tensors;

  explicit toy_model(toy_variant v = {}, std::uint64_t seed = 7) {
    using orthopt::batch_view;
    const index_t fc_cols = v.wider_fc ? 9 : 8;
    add("transformer.wte.weight", 32 * 8, "", [](T* p) { return orthopt::as_batch(orthopt::col_major_view(p, 32, 8)); });
    add("blocks.0.attn.qkv.weight", 24 * 8, "",
        [](T* p) { return orthopt::split_rows(orthopt::col_major_view(p, 24, 8), 3); });
    add("blocks.0.mlp.fc.weight", static_cast<std::size_t>(16 * fc_cols), "adamuon",
        [fc_cols](T* p) { return orthopt::as_batch(orthopt::row_major_view(p, 16, fc_cols)); });
    add("blocks.0.conv.weight", 6 * 2 * 3 * 3, "namo",
        [](T* p) { return orthopt::as_batch(orthopt::tensor_as_matrix(p, {6, 2, 3, 3})); });
    add("blocks.0.moe.experts", 3 * 8 * 5, "namo_d", [](T* p) { return orthopt::tensor_as_batch(p, {3, 8, 5}); });
    add("blocks.0.ln.weight", 8, "", [](T* p) { return orthopt::as_batch(orthopt::row_major_view(p, 1, 8)); });
    add("blocks.0.mlp.fc.bias", 16, "", [](T* p) { return orthopt::as_batch(orthopt::col_major_view(p, 16, 1)); });
    if (v.extra_param) add("blocks.0.extra.bias", 8, "", [](T* p) { return orthopt::as_batch(orthopt::row_major_view(p, 1, 8)); });
    if (!v.drop_head) {
      add(v.rename_head ? "lm_head.w" : "lm_head.weight", 10 * 8, "",
          [](T* p) { return orthopt::as_batch(orthopt::row_major_view(p, 10, 8)); });
    }
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].value = random_values<T>(tensors[i].value.size(), seed * 1000 + i, 0.5);
    namo_group_runs_adamuon = v.namo_group_runs_adamuon;
  }

  /// Deterministic gradients for step `t` (the same in every toy model with the same tensor list).
  void fill_gradients(std::int64_t t) {
    // In place: views bound to the gradient buffers stay valid.
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto g = random_values<T>(tensors[i].value.size(), 0xC0FFEEull * static_cast<std::uint64_t>(t + 1) + i);
      std::copy(g.begin(), g.end(), tensors[i].grad.begin());
    }
  }

  /// An optimizer with one group per rule; hidden matrices routed to Muon, the rest as `group` says.
  orthopt::optimizer<T, backend_under_test> make_optimizer() {
    orthopt::optimizer<T, backend_under_test> opt;
    register_into(opt);
    return opt;
  }
  /// The groups and parameters of make_optimizer, registered with `opt` (an optimizer or a
  /// distributed_optimizer).
  template <class Opt>
  void register_into(Opt& opt) {
    using B = backend_under_test;
    const auto sched = orthopt::warmup_stable_decay(2, 12, 0.5, 0.1);
    const auto muon_g = opt.add_group("muon", orthopt::muon<T, B>(orthopt::muon_presets::moonlight()), sched);
    opt.add_group("adamuon", orthopt::adamuon<T, B>(orthopt::adamuon_presets::code()), sched);
    if (namo_group_runs_adamuon) opt.add_group("namo", orthopt::adamuon<T, B>(orthopt::adamuon_presets::paper()), sched);
    else opt.add_group("namo", orthopt::namo<T, B>(orthopt::namo_presets::code()), sched);
    opt.add_group("namo_d", orthopt::namo_d<T, B>(orthopt::namo_d_presets::code()), sched);
    const auto adamw_g = opt.add_group("adamw", orthopt::adamw<T, B>(orthopt::adamw_presets::moonlight()), sched);
    const orthopt::param_router router(muon_g, adamw_g);
    for (auto& t : tensors) {
      const auto view = t.layout(t.value.data());
      if (t.group.empty()) opt.add_param(t.name, view, router);
      else opt.add_param(t.name, *opt.find_group(t.group), view);
    }
  }

  /// The gradients in registration order (the order make_optimizer registers the tensors).
  std::vector<orthopt::batch_view<const T>> gradient_views() {
    std::vector<orthopt::batch_view<const T>> g;
    for (auto& t : tensors) g.push_back(t.layout(t.grad.data()));
    return g;
  }

  void run(orthopt::optimizer<T, backend_under_test>& opt, std::int64_t from, std::int64_t to) {
    for (std::int64_t t = from; t < to; ++t) {
      fill_gradients(t);
      opt.step(gradient_views());
    }
  }

  bool namo_group_runs_adamuon = false;

 private:
  void add(std::string name, std::size_t n, std::string group, std::function<orthopt::batch_view<T>(T*)> layout) {
    tensors.push_back({std::move(name), std::vector<T>(n), std::vector<T>(n), std::move(layout), std::move(group)});
  }
};

}  // namespace testing
