// The computations the GPU suite compares, written once over a backend and a memory policy: the CUDA
// backend on device memory (gpu_driver.cu) and the Eigen backend on host memory (test_gpu.cpp, the
// reference) run the very same code. A memory policy provides upload<T>(doubles) → an array of T,
// make<T>(n), download(array) and download_raw<T>(pointer, n) → doubles.
#pragma once

#include <orthopt/orthopt.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace gpu_runs {

using orthopt::index_t;

/// A rule and its options: the options of `kind`'s type are used.
struct rule_spec {
  orthopt::rule_kind kind = orthopt::rule_kind::muon;
  orthopt::muon_options muon = orthopt::muon_presets::keller();
  orthopt::adamuon_options adamuon = orthopt::adamuon_presets::code();
  orthopt::namo_options namo = orthopt::namo_presets::code();
  orthopt::adamw_options adamw = orthopt::adamw_presets::torch();
  std::string label;
};

/// Deterministic values in [-1, 1): no Eigen, no <random> distribution differences between compilers.
inline std::vector<double> values(std::size_t n, std::uint64_t seed) {
  std::vector<double> v(n);
  std::uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<double>(s >> 11) * (2.0 / 9007199254740992.0) - 1.0;
  }
  return v;
}

/// NS of a row-major rows×cols matrix.
template <class T, class Backend, class Memory>
std::vector<double> ns_run(Backend be, Memory& mem, const std::vector<double>& x, index_t rows, index_t cols,
                           const orthopt::ns_config& cfg) {
  auto in = mem.template upload<T>(x);
  auto out = mem.template make<T>(x.size());
  orthopt::newton_schulz<T, Backend> ns(rows, cols, cfg, be);
  ns(orthopt::row_major_view<const T>(in.data(), rows, cols), orthopt::row_major_view(out.data(), rows, cols));
  return mem.download(out);
}

/// NS of each matrix of a row-major [count, rows, cols] stack, as one batch call.
template <class T, class Backend, class Memory>
std::vector<double> ns_batch_run(Backend be, Memory& mem, const std::vector<double>& x, index_t count, index_t rows,
                                 index_t cols, const orthopt::ns_config& cfg) {
  auto in = mem.template upload<T>(x);
  auto out = mem.template make<T>(x.size());
  orthopt::newton_schulz<T, Backend> ns(rows, cols, cfg, be, count);
  ns(orthopt::row_major_batch<const T>(in.data(), count, rows, cols), orthopt::row_major_batch(out.data(), count, rows, cols));
  return mem.download(out);
}

/// The exact polar factor of a row-major rows×cols matrix.
template <class T, class Backend, class Memory>
std::vector<double> polar_run(Backend be, Memory& mem, const std::vector<double>& x, index_t rows, index_t cols) {
  auto in = mem.template upload<T>(x);
  auto out = mem.template make<T>(x.size());
  orthopt::exact_polar<T, Backend> polar(rows, cols, be);
  polar(orthopt::row_major_view<const T>(in.data(), rows, cols), orthopt::row_major_view(out.data(), rows, cols));
  return mem.download(out);
}

/// One exact_polar plan applied to each input in turn (see gpu_driver::exact_polar_series).
template <class T, class Backend, class Memory>
std::vector<std::vector<double>> polar_series(Backend be, Memory& mem, const std::vector<std::vector<double>>& xs,
                                              index_t rows, index_t cols, bool check_finite,
                                              std::vector<std::string>& refusals) {
  orthopt::exact_polar<T, Backend> polar(rows, cols, be, check_finite);
  std::vector<std::vector<double>> outs;
  refusals.assign(xs.size(), std::string());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    auto in = mem.template upload<T>(xs[i]);
    auto out = mem.template make<T>(xs[i].size());
    try {
      polar(orthopt::row_major_view<const T>(in.data(), rows, cols), orthopt::row_major_view(out.data(), rows, cols));
      outs.push_back(mem.download(out));
    } catch (const orthopt::value_error& e) {
      refusals[i] = e.what();
      outs.emplace_back();
    }
  }
  return outs;
}

struct rule_result {
  std::vector<double> w, momentum;
};

/// `steps` steps of a rule on a [count, rows, cols] parameter stack from w0, with gradients from seeds.
template <class T, class Backend, class Memory>
rule_result rule_run(Backend be, Memory& mem, const rule_spec& spec, index_t count, index_t rows, index_t cols,
                     int steps, std::uint64_t seed) {
  const std::size_t n = static_cast<std::size_t>(count * rows * cols);
  auto w = mem.template upload<T>(values(n, seed));
  auto drive = [&](auto rule) {
    auto state = rule.make_state(rows, cols, count);
    for (int t = 0; t < steps; ++t) {
      auto g = mem.template upload<T>(values(n, seed + 1000 + static_cast<std::uint64_t>(t)));
      rule.step(orthopt::row_major_batch(w.data(), count, rows, cols),
                orthopt::row_major_batch<const T>(g.data(), count, rows, cols), state);
    }
    return rule_result{mem.download(w), mem.template download_raw<T>(state.momentum().data, n)};
  };
  using orthopt::rule_kind;
  switch (spec.kind) {
    case rule_kind::muon: return drive(orthopt::muon<T, Backend>(spec.muon, be));
    case rule_kind::adamuon: return drive(orthopt::adamuon<T, Backend>(spec.adamuon, be));
    case rule_kind::namo: return drive(orthopt::namo<T, Backend>(spec.namo, be));
    case rule_kind::namo_d: return drive(orthopt::namo_d<T, Backend>(spec.namo, be));
    case rule_kind::adamw: return drive(orthopt::adamw<T, Backend>(spec.adamw, be));
  }
  return {};
}

/// A small model with every rule: the parameters after `steps` optimizer steps in one go, and after
/// `save_at` steps, a checkpoint, a fresh optimizer over a copy of the parameters, a load, and the rest.
struct optimizer_result {
  std::vector<double> straight, resumed;
  std::int64_t checkpoint_bytes = 0;
};

template <class T, class Backend, class Memory>
optimizer_result optimizer_run(Backend be, Memory& mem, int steps, int save_at) {
  struct tensor {
    const char* name;
    index_t count, rows, cols;
  };
  const std::vector<tensor> tensors = {{"layer.0.w", 1, 48, 32},       {"layer.1.w", 1, 32, 48},
                                       {"layer.2.w", 1, 40, 40},       {"layer.3.experts", 4, 16, 24},
                                       {"layer.3.bias", 1, 1, 24},     {"head.weight", 1, 10, 32}};
  using opt_t = orthopt::optimizer<T, Backend>;
  auto build = [&](std::vector<decltype(mem.template make<T>(1))>& params) {
    opt_t opt;
    const auto muon = opt.add_group("muon", orthopt::muon<T, Backend>(orthopt::muon_presets::moonlight(), be));
    const auto ada = opt.add_group("adamuon", orthopt::adamuon<T, Backend>(orthopt::adamuon_presets::code(), be));
    const auto namo = opt.add_group("namo", orthopt::namo<T, Backend>(orthopt::namo_presets::code(), be));
    const auto namo_d = opt.add_group("namo_d", orthopt::namo_d<T, Backend>(orthopt::namo_d_presets::code(), be));
    const auto adamw = opt.add_group("adamw", orthopt::adamw<T, Backend>(orthopt::adamw_presets::torch(), be),
                                     orthopt::warmup_stable_decay(2, 6, 0.5));
    const orthopt::group_id groups[] = {muon, ada, namo, namo_d, adamw, adamw};
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const tensor& t = tensors[i];
      opt.add_param(t.name, groups[i], orthopt::row_major_batch(params[i].data(), t.count, t.rows, t.cols));
    }
    return opt;
  };
  auto fresh_params = [&] {
    std::vector<decltype(mem.template make<T>(1))> p;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const tensor& t = tensors[i];
      p.push_back(mem.template upload<T>(values(static_cast<std::size_t>(t.count * t.rows * t.cols), 77 + i)));
    }
    return p;
  };
  auto step = [&](opt_t& opt, int t) {
    std::vector<decltype(mem.template make<T>(1))> grads;
    std::vector<orthopt::batch_view<const T>> views;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const tensor& tt = tensors[i];
      grads.push_back(mem.template upload<T>(
          values(static_cast<std::size_t>(tt.count * tt.rows * tt.cols), 5000 + 100 * static_cast<std::uint64_t>(t) + i)));
      views.push_back(orthopt::row_major_batch<const T>(grads.back().data(), tt.count, tt.rows, tt.cols));
    }
    opt.step(views);
  };
  auto gather = [&](std::vector<decltype(mem.template make<T>(1))>& params) {
    std::vector<double> all;
    for (auto& p : params) {
      const auto v = mem.download(p);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };

  optimizer_result r;
  auto params = fresh_params();
  {
    opt_t opt = build(params);
    for (int t = 0; t < steps; ++t) step(opt, t);
    r.straight = gather(params);
  }
  auto params2 = fresh_params();
  std::string bytes;
  {
    opt_t opt = build(params2);
    for (int t = 0; t < save_at; ++t) step(opt, t);
    std::ostringstream out;
    orthopt::save_checkpoint(opt, out);
    bytes = out.str();
  }
  {
    opt_t opt = build(params2);  // a fresh optimizer over the same parameter values
    std::istringstream in(bytes);
    orthopt::load_checkpoint(opt, in);
    for (int t = save_at; t < steps; ++t) step(opt, t);
  }
  r.resumed = gather(params2);
  r.checkpoint_bytes = static_cast<std::int64_t>(bytes.size());
  return r;
}

}  // namespace gpu_runs
