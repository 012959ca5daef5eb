// The CUDA backend against the Eigen backend on the same inputs (label gpu on a GPU; label thrust_host on
// the host emulation, see gpu_driver.hpp). Tolerances:
//   float: both sides round every operation to float but sum in different orders (cuBLAS's tiles
//          against Eigen's kernels), so they differ by the float rounding of a length-n inner product
//          amplified by the schedule's gain: 10·ε_f·√n·gain, as the float-vs-float64 NS tests.
//   bf16:  against the Eigen backend in float: bf16 keeps 8 significand bits, one rounding is 2⁻⁸
//          relative, each NS step rounds three products, and later steps amplify by the schedule's
//          gain: 4·2⁻⁸·gain·steps (the argument in test_cuda_backend.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gpu_driver.hpp"
#include "test_util.hpp"

using namespace testing;
using gpu_driver::element;
namespace presets = orthopt::ns_presets;

namespace {

/// The memory policy of gpu_runs.hpp for host memory (the Eigen reference).
struct host_memory {
  template <class T>
  std::vector<T> make(std::size_t n) {
    return std::vector<T>(n);
  }
  template <class T>
  std::vector<T> upload(const std::vector<double>& x) {
    std::vector<T> v(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) v[i] = static_cast<T>(x[i]);
    return v;
  }
  template <class T>
  std::vector<double> download_raw(const T* p, std::size_t n) {
    return std::vector<double>(p, p + n);
  }
  template <class T>
  std::vector<double> download(const std::vector<T>& v) {
    return std::vector<double>(v.begin(), v.end());
  }
};

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}
double max_abs(const std::vector<double>& a) {
  double d = 0.0;
  for (double x : a) d = std::max(d, std::abs(x));
  return d;
}

/// The input rounded to float, as both sides see it.
std::vector<double> as_float(std::vector<double> v) {
  for (auto& x : v) x = static_cast<double>(static_cast<float>(x));
  return v;
}

std::vector<orthopt::ns_config> all_schedules() {
  return {presets::keller(), presets::polar_express(), presets::polar_express_nanogpt(), presets::quintic(),
          presets::cans(),   presets::aol(),           presets::you(),                   presets::cubic()};
}
const std::vector<shape> gpu_shapes = {{64, 64}, {96, 40}, {40, 96}, {128, 256}, {1, 33}};

double bf16_tolerance(const orthopt::ns_config& cfg) { return 4.0 * std::ldexp(1.0, -8) * schedule_gain(cfg) * cfg.steps; }

}  // namespace

TEST_CASE("the device and the suite's build", "[gpu]") {
  std::string description;
  REQUIRE(gpu_driver::device_available(description));
  WARN("device: " << description);
}

TEST_CASE("Newton-Schulz on the device matches the Eigen backend for every schedule, in float, double and bf16",
          "[gpu][ns]") {
  for (const auto& cfg : all_schedules()) {
    for (const shape s : gpu_shapes) {
      const auto x = as_float(gpu_runs::values(static_cast<std::size_t>(s.rows * s.cols), seed_of(s, 1)));
      host_memory mem;
      const auto ref = gpu_runs::ns_run<float>(orthopt::eigen_backend{}, mem, x, s.rows, s.cols, cfg);
      const auto ref64 = gpu_runs::ns_run<double>(orthopt::eigen_backend{}, mem, x, s.rows, s.cols, cfg);
      const auto f32 = gpu_driver::newton_schulz(x, s.rows, s.cols, cfg, element::f32);
      const auto f64 = gpu_driver::newton_schulz(x, s.rows, s.cols, cfg, element::f64);
      const auto bf = gpu_driver::newton_schulz(x, s.rows, s.cols, cfg, element::bf16);
      INFO(cfg.name << " " << to_string(s) << ": float " << max_diff(f32, ref) << ", double " << max_diff(f64, ref64)
                    << ", bf16 " << max_diff(bf, ref));
      CHECK(max_diff(f32, ref) <= tol<float>(10 * schedule_gain(cfg), s));
      CHECK(max_diff(f64, ref64) <= tol<double>(10 * schedule_gain(cfg), s));
      CHECK(max_diff(bf, ref) <= bf16_tolerance(cfg));
    }
  }
}

TEST_CASE("Gram Newton-Schulz on the device matches the standard iteration, in float and bf16", "[gpu][ns][gram]") {
  // The same derived bound as tests/test_newton_schulz.cpp: the schedule's slope gain plus the Gram
  // matrix's own amplification (gram_gain), in units of the storage type's rounding.
  for (const auto& cfg : all_schedules()) {
    orthopt::ns_config gram = cfg;
    gram.algorithm = orthopt::ns_algorithm::gram;
    const double amplification = schedule_gain(cfg) + gram_gain(gram);
    for (const shape s : gpu_shapes) {
      const auto x = as_float(gpu_runs::values(static_cast<std::size_t>(s.rows * s.cols), seed_of(s, 2)));
      host_memory mem;
      const auto ref = gpu_runs::ns_run<float>(orthopt::eigen_backend{}, mem, x, s.rows, s.cols, cfg);
      const auto f32 = gpu_driver::newton_schulz(x, s.rows, s.cols, gram, element::f32);
      const auto bf = gpu_driver::newton_schulz(x, s.rows, s.cols, gram, element::bf16);
      INFO(cfg.name << " " << to_string(s) << ": float " << max_diff(f32, ref) << ", bf16 " << max_diff(bf, ref));
      CHECK(max_diff(f32, ref) <= tol<float>(10 * amplification, s));
      CHECK(max_diff(bf, ref) <= bf16_tolerance(cfg) * amplification / schedule_gain(cfg));
    }
  }
}

TEST_CASE("a batch of stacked matrices on the device matches the Eigen backend matrix by matrix", "[gpu][batch]") {
  const index_t E = 64, M = 32, N = 32;  // the 64×(128×128) in the benchmarks; smaller here
  const auto x = as_float(gpu_runs::values(static_cast<std::size_t>(E * M * N), 5));
  host_memory mem;
  for (const auto& cfg : {presets::keller(), presets::polar_express()}) {
    const auto ref = gpu_runs::ns_batch_run<float>(orthopt::eigen_backend{}, mem, x, E, M, N, cfg);
    const auto f32 = gpu_driver::newton_schulz_batch(x, E, M, N, cfg, element::f32);
    const auto bf = gpu_driver::newton_schulz_batch(x, E, M, N, cfg, element::bf16);
    INFO(cfg.name);
    CHECK(max_diff(f32, ref) <= tol<float>(10 * schedule_gain(cfg), {M, N}));
    CHECK(max_diff(bf, ref) <= bf16_tolerance(cfg));
  }
}

TEST_CASE("the exact polar factor on the device matches the Eigen backend", "[gpu][polar]") {
  for (const shape s : {shape{64, 64}, shape{96, 40}, shape{40, 96}}) {
    // Well conditioned (a random Gaussian-like matrix is, at these sizes, to within a few hundred), so the
    // polar factor is a well-posed function of the input: float results agree to ε_f·κ·√n.
    const auto x = gpu_runs::values(static_cast<std::size_t>(s.rows * s.cols), seed_of(s, 2));
    host_memory mem;
    const auto ref64 = gpu_runs::polar_run<double>(orthopt::eigen_backend{}, mem, x, s.rows, s.cols);
    const auto f64 = gpu_driver::exact_polar(x, s.rows, s.cols, element::f64);
    const auto f32 = gpu_driver::exact_polar(as_float(x), s.rows, s.cols, element::f32);
    INFO(to_string(s));
    CHECK(max_diff(f64, ref64) <= tol<double>(1e4, s));
    CHECK(max_diff(f32, ref64) <= tol<float>(1e4, s));
  }
}

TEST_CASE("the exact polar factor on the device: NaN and Inf inputs are refused, or give NaN, never a stale result",
          "[gpu][polar][nan]") {
  // cuSOLVER's gesvd on a NaN input: with the check on, the plan refuses the input before cuSOLVER sees
  // it; with the check off, whatever gesvd returns (NaN factors, or info != 0), every entry of the result
  // is NaN. Either way the same plan then gives the right factor of a clean input.
  const index_t rows = 40, cols = 24;
  const auto clean = gpu_runs::values(static_cast<std::size_t>(rows * cols), 31);
  auto with_nan = clean, with_inf = clean;
  with_nan[17] = std::numeric_limits<double>::quiet_NaN();
  with_inf[200] = std::numeric_limits<double>::infinity();
  host_memory mem;
  const auto ref64 = gpu_runs::polar_run<double>(orthopt::eigen_backend{}, mem, clean, rows, cols);
  for (const element e : {element::f32, element::f64}) {
    INFO((e == element::f32 ? "float" : "double"));
    const double tolerance = e == element::f32 ? tol<float>(1e4, {rows, cols}) : tol<double>(1e4, {rows, cols});
    std::vector<std::string> refusals;
    const auto checked = gpu_driver::exact_polar_series({with_nan, with_inf, clean}, rows, cols, e, true, refusals);
    CHECK(checked[0].empty());
    CHECK(refusals[0].find("nan") != std::string::npos);  // the message names the value (lower case: "NaN" is the rule text)
    CHECK(checked[1].empty());
    CHECK(refusals[1].find("is inf") != std::string::npos);
    REQUIRE(refusals[2].empty());
    CHECK(max_diff(checked[2], ref64) <= tolerance);
    const auto unchecked = gpu_driver::exact_polar_series({with_nan, with_inf, clean}, rows, cols, e, false, refusals);
    for (int i : {0, 1}) {
      INFO("input " << i);
      REQUIRE(refusals[i].empty());
      CHECK(std::all_of(unchecked[i].begin(), unchecked[i].end(), [](double v) { return std::isnan(v); }));
    }
    CHECK(max_diff(unchecked[2], ref64) <= tolerance);
  }
}

TEST_CASE("every rule and preset on the device follows the Eigen backend over 10 steps", "[gpu][rules]") {
  std::vector<gpu_runs::rule_spec> specs;
  auto add = [&](orthopt::rule_kind k, auto set, const std::string& label) {
    gpu_runs::rule_spec s;
    s.kind = k;
    set(s);
    s.label = label;
    specs.push_back(s);
  };
  using orthopt::rule_kind;
  add(rule_kind::muon, [](auto& s) { s.muon = orthopt::muon_presets::keller(); }, "muon keller");
  add(rule_kind::muon, [](auto& s) { s.muon = orthopt::muon_presets::moonlight(); }, "muon moonlight");
  add(rule_kind::muon, [](auto& s) { s.muon = orthopt::muon_presets::torch(); }, "muon torch");
  add(rule_kind::adamuon, [](auto& s) { s.adamuon = orthopt::adamuon_presets::paper(); }, "adamuon paper");
  add(rule_kind::adamuon, [](auto& s) { s.adamuon = orthopt::adamuon_presets::code(); }, "adamuon code");
  add(rule_kind::adamuon, [](auto& s) { s.adamuon = orthopt::adamuon_presets::code_gpt2(); }, "adamuon code_gpt2");
  add(rule_kind::adamuon, [](auto& s) { s.adamuon = orthopt::adamuon_presets::v1(); }, "adamuon v1");
  add(rule_kind::namo, [](auto& s) { s.namo = orthopt::namo_presets::code(); }, "namo code");
  add(rule_kind::namo, [](auto& s) { s.namo = orthopt::namo_presets::paper(); }, "namo paper");
  add(rule_kind::namo_d, [](auto& s) { s.namo = orthopt::namo_d_presets::code(); }, "namo_d code");
  add(rule_kind::namo_d, [](auto& s) { s.namo = orthopt::namo_d_presets::gpt2_small(); }, "namo_d gpt2_small");
  add(rule_kind::adamw, [](auto& s) { s.adamw = orthopt::adamw_presets::torch(); }, "adamw torch");
  add(rule_kind::adamw, [](auto& s) { s.adamw = orthopt::adamw_presets::moonlight(); }, "adamw moonlight");
  const int steps = 10;
  for (const auto& spec : specs) {
    for (const index_t count : {index_t{1}, index_t{4}}) {  // a single matrix, and stacked experts
      const index_t rows = 48, cols = 80;
      host_memory mem;
      const auto ref = gpu_runs::rule_run<float>(orthopt::eigen_backend{}, mem, spec, count, rows, cols, steps, 21);
      const auto got = gpu_driver::rule(spec, count, rows, cols, steps, 21, element::f32);
      INFO(spec.label << ", " << count << " matrices");
      {
        // In double the same argument holds with double's rounding. AdaMuon's first-step sign sensitivity
        // would need an entry of O within about 1e-13 of zero; with these seeded inputs none is (a sign
        // flip would fail this bound by far).
        const auto ref64 = gpu_runs::rule_run<double>(orthopt::eigen_backend{}, mem, spec, count, rows, cols, steps, 21);
        const auto got64 = gpu_driver::rule(spec, count, rows, cols, steps, 21, element::f64);
        const double moved64 = max_diff(ref64.w, gpu_runs::values(ref64.w.size(), 21));
        const double ns64 = tol<double>(10 * schedule_gain(presets::keller()), {rows, cols});
        CHECK(max_diff(got64.momentum, ref64.momentum) <= 8 * eps<double>() * std::max(1.0, max_abs(ref64.momentum)));
        CHECK(max_diff(got64.w, ref64.w) <= moved64 * ns64 + 16 * eps<double>() * std::max(1.0, max_abs(ref64.w)));
      }
      // The momentum sees only the gradients (element-wise maps): float rounding alone.
      CHECK(max_diff(got.momentum, ref.momentum) <= 8 * eps<float>() * std::max(1.0, max_abs(ref.momentum)));
      // W = W0 + Σ updates; each update is the orthogonalized direction times a scale, so the two sides
      // differ by NS's float tolerance relative to the total update, plus W's own rounding (a few ulp).
      // (Measured on the host emulation, where the products' summation orders differ too: about 2e-7,
      // against this bound's 1e-5 to 3e-5.)
      const double ns = tol<float>(10 * schedule_gain(presets::keller()), {rows, cols});
      const std::vector<double> w_start = gpu_runs::values(ref.w.size(), 21);
      const double moved = max_diff(ref.w, w_start);
      const double w_scale = std::max(1.0, max_abs(ref.w));
      if (spec.kind == orthopt::rule_kind::adamuon) {
        // AdaMuon divides O by √V, and at the first step O/√V = ±√(1/(1−β)) whatever |O| is: an entry of
        // O that rounds to the other side of 0 moves by twice a full update. In the Frobenius norm one
        // such entry among rows·cols is 2/√(rows·cols) ≈ 3 % of the total update; 10 % allows three.
        double diff2 = 0.0, moved2 = 0.0;
        for (std::size_t i = 0; i < ref.w.size(); ++i) {
          diff2 += (got.w[i] - ref.w[i]) * (got.w[i] - ref.w[i]);
          moved2 += (ref.w[i] - w_start[i]) * (ref.w[i] - w_start[i]);
        }
        CHECK(std::sqrt(diff2) <= 0.1 * std::sqrt(moved2) / std::sqrt(double(count)) + 16 * eps<float>() * w_scale);
      } else {
        CHECK(max_diff(got.w, ref.w) <= moved * ns + 16 * eps<float>() * w_scale);
      }
    }
  }
}

TEST_CASE("an optimizer on the device matches the Eigen backend, and a checkpoint resumes it bit for bit", "[gpu][optimizer]") {
  host_memory mem;
  const auto ref = gpu_runs::optimizer_run<float>(orthopt::eigen_backend{}, mem, 6, 3);
  const auto got = gpu_driver::optimizer(6, 3, element::f32);
  CHECK(got.resumed == got.straight);  // bit for bit
  CHECK(got.checkpoint_bytes == ref.checkpoint_bytes);
  // As for the rules: NS's float tolerance relative to how far the parameters moved (AdaMuon's parameter
  // is one of six, so its first-step sign sensitivity is covered by the same 10 % argument, scaled).
  std::vector<double> start;
  const index_t sizes[] = {48 * 32, 32 * 48, 40 * 40, 4 * 16 * 24, 24, 10 * 32};
  for (std::size_t i = 0; i < 6; ++i) {
    const auto v = gpu_runs::values(static_cast<std::size_t>(sizes[i]), 77 + i);
    start.insert(start.end(), v.begin(), v.end());
  }
  double diff2 = 0.0, moved2 = 0.0;
  for (std::size_t i = 0; i < start.size(); ++i) {
    diff2 += (got.straight[i] - ref.straight[i]) * (got.straight[i] - ref.straight[i]);
    moved2 += (ref.straight[i] - start[i]) * (ref.straight[i] - start[i]);
  }
  CHECK(std::sqrt(diff2) <= 0.1 * std::sqrt(moved2));
  const auto bf = gpu_driver::optimizer(6, 3, element::bf16);
  CHECK(bf.resumed == bf.straight);
}

TEST_CASE("optimizer steps on the device allocate no device memory", "[gpu][alloc]") {
  CHECK(gpu_driver::allocations_during_steps(4) == 0);
}

TEST_CASE("a rule step captured in a CUDA graph replays bit for bit, with no synchronization", "[gpu][graph]") {
  std::string detail;
  const bool matches = gpu_driver::graph_replay_matches(detail);
  INFO(detail);
  if (!gpu_driver::on_gpu()) {
    WARN(detail);
    return;
  }
  CHECK(matches);
}

TEST_CASE("an optimizer step captured in a CUDA graph replays bit for bit and keeps its NaN check", "[gpu][graph]") {
  std::string detail;
  const bool matches = gpu_driver::optimizer_graph_replay_matches(detail);
  INFO(detail);
  if (!gpu_driver::on_gpu()) {
    WARN(detail);
    return;
  }
  CHECK(matches);
}
