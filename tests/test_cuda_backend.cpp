// What only the CUDA backend has, on its host emulation (label thrust_host): bf16 storage, the device
// status flag, cuda_error from failing CUDA / cuBLAS calls, no synchronization and no device allocation
// inside a step, the plain-kernel fallback for operands cuBLAS cannot take, double norms over the whole
// finite range, and bf16 checkpoints.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_host_control.hpp"
#include "optimizer_test_util.hpp"
#include "test_util.hpp"

using namespace testing;
using Catch::Matchers::Contains;
using orthopt::bfloat16;
using orthopt::cuda_backend;
namespace presets = orthopt::ns_presets;

namespace {

std::vector<bfloat16> to_bf16(const MatD& x) {  // column-major
  std::vector<bfloat16> v(static_cast<std::size_t>(x.size()));
  for (index_t i = 0; i < x.size(); ++i) v[static_cast<std::size_t>(i)] = bfloat16(static_cast<float>(x.data()[i]));
  return v;
}
MatD from_bf16(const std::vector<bfloat16>& v, index_t rows, index_t cols) {
  MatD x(rows, cols);
  for (index_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<double>(static_cast<float>(v[static_cast<std::size_t>(i)]));
  return x;
}

/// bf16 keeps 8 significand bits: one rounding is a relative error of at most 2⁻⁸ (half of its 2⁻⁷
/// epsilon). Every NS step rounds its three products' outputs to bf16 (fp32 accumulation inside), and
/// an error entering step k is amplified by the later steps' slopes (the schedule's gain, as in the
/// float tests). So the distance to the float64 iteration is bounded by about 3·2⁻⁸·gain·(steps);
/// 2⁻⁸·gain·steps·4 leaves room for the √n growth of the fp32 sums, which is far below bf16's rounding.
double bf16_ns_tolerance(const orthopt::ns_config& cfg) {
  return 4.0 * std::ldexp(1.0, -8) * schedule_gain(cfg) * cfg.steps;
}

}  // namespace

TEST_CASE("bf16 Newton-Schulz follows the float64 iteration within bf16's rounding", "[cuda][bf16]") {
  for (const auto& cfg : {presets::keller(), presets::polar_express(), presets::cubic()}) {
    for (const shape s : {shape{1, 9}, shape{16, 16}, shape{17, 40}, shape{64, 24}, shape{63, 127}}) {
      const MatD x = gaussian(s.rows, s.cols, seed_of(s, 301));
      const MatD expected = reference_ns(x, cfg);
      std::vector<bfloat16> in = to_bf16(x), out(in.size());
      orthopt::newton_schulz<bfloat16, cuda_backend> ns(s.rows, s.cols, cfg);
      ns(orthopt::col_major_view<const bfloat16>(in.data(), s.rows, s.cols), orthopt::col_major_view(out.data(), s.rows, s.cols));
      const double err = max_abs_diff(from_bf16(out, s.rows, s.cols), expected);
      INFO(cfg.name << " " << to_string(s) << " error " << err << " tolerance " << bf16_ns_tolerance(cfg));
      CHECK(err <= bf16_ns_tolerance(cfg));
      CHECK(err > 0.0);  // bf16 really rounds: an error of exactly 0 would mean the test ran in float
    }
  }
}

TEST_CASE("bf16 storage keeps coefficients in float: a step's constants are not rounded to bf16", "[cuda][bf16]") {
  // 1 − 0.95 = 0.05 is not a bf16 number (0.050048828125 is the nearest); an ema momentum with
  // β = 0.95 from M = 0 gives M = 0.05·G rounded once, which bf16 arithmetic on rounded constants
  // would not.
  const index_t rows = 4, cols = 6;
  std::vector<bfloat16> w(rows * cols, bfloat16(0.0f)), g(rows * cols);
  for (index_t i = 0; i < rows * cols; ++i) g[static_cast<std::size_t>(i)] = bfloat16(static_cast<float>(1 + i));
  orthopt::adamuon<bfloat16, cuda_backend> rule(orthopt::adamuon_presets::code());
  auto state = rule.make_state(rows, cols);
  rule.step(orthopt::row_major_view(w.data(), rows, cols), orthopt::row_major_view<const bfloat16>(g.data(), rows, cols), state);
  for (index_t i = 0; i < rows * cols; ++i) {
    const float m = static_cast<float>(state.momentum()(i / cols, i % cols));
    const float expected = static_cast<float>(bfloat16((1.0f - 0.95f) * static_cast<float>(1 + i)));
    CHECK(m == expected);
  }
}

TEST_CASE("bf16 AdaMuon steps have update RMS 0.2·lr and follow the float rule", "[cuda][bf16]") {
  // W starts at 0 and stays small (|W| ≲ 0.05), so bf16's spacing near W (2⁻⁸·|W| ≲ 2e-4) is a tenth of
  // the per-entry update (~0.2·lr = 2e-3): what lands in W is the update to about 5 %.
  const index_t rows = 24, cols = 40;
  std::vector<bfloat16> w(static_cast<std::size_t>(rows * cols), bfloat16(0.0f));
  Mat<float> wf = Mat<float>::Zero(rows, cols);
  orthopt::adamuon_options o = orthopt::adamuon_presets::code();
  o.lr = 0.01;
  o.weight_decay = 0.0;
  orthopt::adamuon<bfloat16, cuda_backend> rule(o);
  orthopt::adamuon<float, cuda_backend> rule_f(o);
  auto state = rule.make_state(rows, cols);
  auto state_f = rule_f.make_state(rows, cols);
  for (int t = 0; t < 5; ++t) {
    const MatD g = gaussian(rows, cols, 400 + static_cast<std::uint64_t>(t));
    const std::vector<bfloat16> gb = to_bf16(g);
    const Mat<float> gf = g.cast<float>();
    const MatD before = from_bf16(w, rows, cols);
    rule.step(orthopt::col_major_view(w.data(), rows, cols), orthopt::col_major_view<const bfloat16>(gb.data(), rows, cols), state);
    rule_f.step(orthopt::make_view(wf), orthopt::make_view(gf), state_f);
    const MatD update = from_bf16(w, rows, cols) - before;
    const double rms = update.norm() / std::sqrt(double(rows * cols));
    INFO("step " << t);
    CHECK(rms == Approx(0.2 * o.lr).epsilon(0.05));
  }
  // Against the float rule, in the Frobenius norm: bf16's NS error is a few percent of each update (see
  // the NS tolerance above). Entry by entry it can be larger: AdaMuon's O/√V is ±√(1/(1−β)) whatever
  // |O| at the first step, so an entry of O near 0 whose sign bf16 rounding flips moves by 2√20·0.2·lr.
  const double relative = (from_bf16(w, rows, cols) - wf.cast<double>()).norm() / wf.cast<double>().norm();
  INFO("relative distance to the float trajectory " << relative);
  CHECK(relative <= 0.1);
}

TEST_CASE("flag_on_device records the first NaN/Inf without a synchronization and without throwing", "[cuda][status]") {
  cuda_backend be;
  be.set_nonfinite_check(orthopt::nonfinite_check::flag_on_device);
  const index_t rows = 7, cols = 9;
  for (const bool row_major : {false, true}) {
    Mat<float> cm = Mat<float>::Ones(rows, cols);
    MatRM<float> rm = MatRM<float>::Ones(rows, cols);
    cm(4, 2) = INFINITY;
    cm(5, 8) = NAN;
    rm(4, 2) = INFINITY;
    rm(5, 8) = NAN;
    const auto x = row_major ? orthopt::make_view(rm).as_const() : orthopt::make_view(cm).as_const();
    be.clear_status();
    const auto syncs = orthopt_cuda_host::stream_synchronizations();
    CHECK_FALSE(find_nonfinite(be, x).has_value());
    CHECK_FALSE(find_nonfinite(be, x.block(0, 0, 3, 3)).has_value());  // clean: not counted
    CHECK_FALSE(find_nonfinite(be, x.block(5, 0, 2, 9)).has_value());  // a later check: counted only
    CHECK(orthopt_cuda_host::stream_synchronizations() == syncs);
    const orthopt::device_status st = be.read_status();
    CHECK(st.failed_checks == 2);
    CHECK(st.row == 4);
    CHECK(st.col == 2);
    CHECK(std::isinf(st.value));
  }
  be.clear_status();
  CHECK(be.read_status().failed_checks == 0);
  // throw_on_host (the default): found and returned, at the row-major-first position, for any strides.
  cuda_backend eager;
  Mat<double> y = Mat<double>::Zero(6, 5);
  y(3, 1) = NAN;
  y(2, 4) = -INFINITY;
  const auto bad = find_nonfinite(eager, orthopt::make_view(y).as_const());
  REQUIRE(bad.has_value());
  CHECK(bad->row == 2);
  CHECK(bad->col == 4);
  const auto bad_t = find_nonfinite(eager, orthopt::make_view(y).as_const().transposed());
  REQUIRE(bad_t.has_value());
  CHECK(bad_t->row == 1);
  CHECK(bad_t->col == 3);
}

TEST_CASE("a rule step on flag_on_device runs without a synchronization and flags a NaN gradient", "[cuda][status]") {
  cuda_backend be;
  be.set_nonfinite_check(orthopt::nonfinite_check::flag_on_device);
  orthopt::muon<float, cuda_backend> rule(orthopt::muon_presets::moonlight(), be);
  const index_t rows = 12, cols = 20;
  Mat<float> w = gaussian(rows, cols, 5).cast<float>(), g = gaussian(rows, cols, 6).cast<float>();
  auto state = rule.make_state(rows, cols);
  const auto allocations = cuda_backend::device_allocations();
  const auto syncs = orthopt_cuda_host::stream_synchronizations();
  rule.step(orthopt::make_view(w), orthopt::make_view(g), state);
  g(7, 11) = NAN;
  rule.step(orthopt::make_view(w), orthopt::make_view(g), state);  // recorded, not thrown
  CHECK(orthopt_cuda_host::stream_synchronizations() == syncs);
  CHECK(cuda_backend::device_allocations() == allocations);
  const orthopt::device_status st = be.read_status();
  CHECK(st.failed_checks == 1);
  CHECK(st.row == 7);
  CHECK(st.col == 11);
  // The default mode synchronizes once per check and throws before writing.
  // (W is NaN now: flag_on_device lets a step run on, and the host decides what to do.)
  CHECK(std::isnan(w(0, 0)));
  w = gaussian(rows, cols, 5).cast<float>();
  cuda_backend eager;
  orthopt::muon<float, cuda_backend> rule2(orthopt::muon_presets::moonlight(), eager);
  auto state2 = rule2.make_state(rows, cols);
  const Mat<float> w_before = w;
  CHECK_THROWS_WITH(rule2.step(orthopt::make_view(w), orthopt::make_view(g), state2), Contains("gradient(7, 11) is nan"));
  CHECK(w == w_before);
}

TEST_CASE("optimizer steps with the finite check off make no synchronization and no device allocation", "[cuda][alloc]") {
  toy_model<float> model;
  auto opt = model.make_optimizer();
  for (std::size_t g = 0; g < opt.group_count(); ++g) {
    std::visit([](auto& r) { r.options().check_finite = false; }, opt.group(orthopt::group_id{g}).rule);
  }
  model.fill_gradients(0);
  opt.step(model.gradient_views());
  const auto allocations = cuda_backend::device_allocations();
  const auto syncs = orthopt_cuda_host::stream_synchronizations();
  const auto live = orthopt_cuda_host::live_allocations();
  for (std::int64_t t = 1; t < 4; ++t) {
    model.fill_gradients(t);
    opt.step(model.gradient_views());
  }
  CHECK(cuda_backend::device_allocations() == allocations);
  CHECK(orthopt_cuda_host::live_allocations() == live);
  CHECK(orthopt_cuda_host::stream_synchronizations() == syncs);
}

TEST_CASE("a failing cuBLAS call throws cuda_error naming the status, the call, the file and the line", "[cuda][errors]") {
  cuda_backend be;
  Mat<float> a = Mat<float>::Ones(8, 8), c(8, 8);
  orthopt_cuda_host::fail_next_cublas_call(CUBLAS_STATUS_EXECUTION_FAILED);
  try {
    gemm(be, 1.0f, orthopt::make_view(a).as_const(), orthopt::op::none, orthopt::make_view(a).as_const(), orthopt::op::none, 0.0f,
         orthopt::make_view(c));
    FAIL("no exception");
  } catch (const orthopt::cuda_error& e) {
    CHECK(e.status() == "CUBLAS_STATUS_EXECUTION_FAILED");
    CHECK_THAT(std::string(e.what()), Contains("CUBLAS_STATUS_EXECUTION_FAILED") && Contains("cublasSgemm") &&
                                          Contains("orthopt/cuda/backend.hpp:"));
    const orthopt::error& base = e;  // catchable as every orthopt error
    CHECK(std::string(base.what()) == e.what());
  }
  // A failing product inside NS reaches the caller the same way, and the plan stays usable.
  orthopt::newton_schulz<float, cuda_backend> ns(8, 8, presets::keller(), be);
  orthopt_cuda_host::fail_next_cublas_call(CUBLAS_STATUS_INTERNAL_ERROR);
  CHECK_THROWS_AS(ns(orthopt::make_view(a), orthopt::make_view(c)), orthopt::cuda_error);
  ns(orthopt::make_view(a), orthopt::make_view(c));
  CHECK(std::isfinite(c(0, 0)));
}

TEST_CASE("a failing device allocation throws cuda_error at setup", "[cuda][errors]") {
  cuda_backend be;
  orthopt_cuda_host::fail_next_cuda_malloc();
  CHECK_THROWS_WITH((orthopt::newton_schulz<float, cuda_backend>(64, 32, presets::keller(), be)),
                    Contains("cudaErrorMemoryAllocation") && Contains("cudaMalloc"));
}

TEMPLATE_TEST_CASE("gemm and syrk on views with no unit stride use the plain kernel and agree", "[cuda][gemm]", float, double,
                   bfloat16) {
  using T = TestType;
  cuda_backend be;
  const index_t m = 9, n = 7, k = 5;
  // Every operand is a view with strides (2, 2·rows) into a larger buffer: cuBLAS cannot take them.
  const MatD a = gaussian(m, k, 1), b = gaussian(k, n, 2);
  std::vector<T> abuf(static_cast<std::size_t>(4 * m * k)), bbuf(static_cast<std::size_t>(4 * k * n)),
      cbuf(static_cast<std::size_t>(4 * m * n), T(0.0f)), sbuf(static_cast<std::size_t>(4 * m * m), T(0.0f));
  const orthopt::matrix_view<T> A(abuf.data(), m, k, 2, 2 * m), B(bbuf.data(), k, n, 2, 2 * k), C(cbuf.data(), m, n, 2, 2 * m),
      S(sbuf.data(), m, m, 2, 2 * m);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < k; ++j) A(i, j) = T(static_cast<float>(a(i, j)));
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < n; ++j) B(i, j) = T(static_cast<float>(b(i, j)));
  const MatD ad = [&] {
    MatD r(m, k);
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < k; ++j) r(i, j) = static_cast<double>(static_cast<float>(A(i, j)));
    return r;
  }();
  const MatD bd = [&] {
    MatD r(k, n);
    for (index_t i = 0; i < k; ++i)
      for (index_t j = 0; j < n; ++j) r(i, j) = static_cast<double>(static_cast<float>(B(i, j)));
    return r;
  }();
  const auto calls = orthopt_cuda_host::cublas_calls();
  gemm(be, orthopt::compute_t<T>(2), A.as_const(), orthopt::op::none, B.as_const(), orthopt::op::none, orthopt::compute_t<T>(0), C);
  syrk(be, orthopt::compute_t<T>(1), A.as_const(), orthopt::compute_t<T>(0), S);
  CHECK(orthopt_cuda_host::cublas_calls() == calls);  // neither reached cuBLAS
  const MatD c_ref = 2.0 * ad * bd, s_ref = ad * ad.transpose();
  const double tol_t = std::is_same_v<T, bfloat16> ? std::ldexp(1.0, -7) : 16 * orthopt::storage_epsilon<T>::value;
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) CHECK(static_cast<double>(static_cast<float>(C(i, j))) == Approx(c_ref(i, j)).margin(tol_t * 8));
    for (index_t j = 0; j < m; ++j) CHECK(static_cast<double>(static_cast<float>(S(i, j))) == Approx(s_ref(i, j)).margin(tol_t * 8));
  }
}

TEST_CASE("double norms on the device are accurate over the whole finite range", "[cuda][norms]") {
  cuda_backend be;
  auto norms = be.allocate<double>(4);
  for (const double scale : {1e-300, 1e-160, 1.0, 1e160, 1e300}) {
    Mat<double> x = gaussian(33, 17, 9) * scale;
    frobenius_norm(be, orthopt::make_view(x).as_const(), norms.data());
    column_norms(be, orthopt::make_view(x).as_const().block(0, 0, 33, 2), orthopt::column_norm::l2, norms.data() + 1);
    const MatD unit = gaussian(33, 17, 9);
    INFO("scale " << scale);
    CHECK(norms.data()[0] / scale == Approx(unit.norm()).epsilon(1e-13));
    CHECK(norms.data()[1] / scale == Approx(unit.col(0).norm()).epsilon(1e-13));
    CHECK(norms.data()[2] / scale == Approx(unit.col(1).norm()).epsilon(1e-13));
  }
  Mat<double> y = Mat<double>::Ones(5, 5);
  y(1, 1) = INFINITY;
  frobenius_norm(be, orthopt::make_view(y).as_const(), norms.data());
  CHECK(std::isinf(norms.data()[0]));
  y(2, 2) = NAN;
  frobenius_norm(be, orthopt::make_view(y).as_const(), norms.data());
  CHECK(std::isnan(norms.data()[0]));
}

TEST_CASE("bf16 optimizer checkpoints round-trip and refuse a float optimizer", "[cuda][checkpoint]") {
  const index_t rows = 6, cols = 10;
  auto make = [&](std::vector<bfloat16>& w) {
    orthopt::optimizer<bfloat16, cuda_backend> opt;
    const auto g = opt.add_group("namo", orthopt::namo<bfloat16, cuda_backend>());
    opt.add_param("w", g, orthopt::row_major_view(w.data(), rows, cols));
    return opt;
  };
  std::vector<bfloat16> w = to_bf16(gaussian(rows, cols, 1)), w2 = w, grad = to_bf16(gaussian(rows, cols, 2));
  auto opt = make(w);
  const std::vector<orthopt::batch_view<const bfloat16>> grads = {
      orthopt::as_batch(orthopt::row_major_view<const bfloat16>(grad.data(), rows, cols))};
  opt.step(grads);
  opt.step(grads);
  std::stringstream file;
  orthopt::save_checkpoint(opt, file);
  const std::string bytes = file.str();
  CHECK(static_cast<unsigned char>(bytes[12]) == 3);  // element type 3 = bfloat16
  auto resumed = make(w2);
  std::stringstream in(bytes);
  orthopt::load_checkpoint(resumed, in);
  CHECK(resumed.steps_taken() == 2);
  CHECK(std::memcmp(resumed.state(orthopt::param_id{0}).momentum().data, opt.state(orthopt::param_id{0}).momentum().data,
                    sizeof(bfloat16) * rows * cols) == 0);
  std::vector<float> wf(static_cast<std::size_t>(rows * cols));
  orthopt::optimizer<float, cuda_backend> float_opt;
  float_opt.add_param("w", float_opt.add_group("namo", orthopt::namo<float, cuda_backend>()),
                      orthopt::row_major_view(wf.data(), rows, cols));
  std::stringstream in2(bytes);
  CHECK_THROWS_WITH(orthopt::load_checkpoint(float_opt, in2), Contains("bfloat16") && Contains("float32"));
}

TEMPLATE_TEST_CASE("a batch of matrices costs one cuBLAS launch per product, whatever its size", "[cuda][batch]", float,
                   bfloat16) {
  using T = TestType;
  const index_t E = 8, M = 16, N = 24;
  const MatD all = gaussian(E * M, N, 77);
  std::vector<T> in(static_cast<std::size_t>(E * M * N)), out(in.size());
  for (index_t e = 0; e < E; ++e)
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) in[static_cast<std::size_t>((e * M + i) * N + j)] = T(static_cast<float>(all(e * M + i, j)));
  const auto cfg = presets::keller();  // 5 steps, 3 products each
  for (const index_t capacity : {index_t{1}, E}) {
    cuda_backend be;
    orthopt::newton_schulz<T, cuda_backend> ns(M, N, cfg, be, capacity);
    const auto calls = orthopt_cuda_host::cublas_calls();
    ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
    INFO("capacity " << capacity);
    CHECK(orthopt_cuda_host::cublas_calls() - calls == 3 * cfg.steps * (E / capacity));
    // And each result is that matrix's own NS (float: the float tolerance; bf16: bf16's).
    for (index_t e = 0; e < E; ++e) {
      MatD got(M, N);
      for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) got(i, j) = static_cast<double>(static_cast<float>(out[static_cast<std::size_t>((e * M + i) * N + j)]));
      MatD x(M, N);
      for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) x(i, j) = static_cast<double>(static_cast<float>(in[static_cast<std::size_t>((e * M + i) * N + j)]));
      const double tolerance = std::is_same_v<T, float> ? tol<float>(10 * schedule_gain(cfg), {M, N}) : bf16_ns_tolerance(cfg);
      CHECK(max_abs_diff(got, reference_ns(x, cfg)) <= tolerance);
    }
  }
}

TEST_CASE("a rule step on stacked experts orthogonalizes them in one batched call", "[cuda][batch]") {
  const index_t E = 6, M = 12, N = 20;
  std::vector<float> w(static_cast<std::size_t>(E * M * N)), g(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<float>(std::sin(0.1 * double(i)));
    g[i] = static_cast<float>(std::cos(0.37 * double(i)));
  }
  for (const bool exact : {false, true}) {
    orthopt::muon_options o = orthopt::muon_presets::keller();  // NS5: 3 products per step
    o.ortho.exact = exact;
    orthopt::muon<float, cuda_backend> rule(o);
    auto state = rule.make_state(M, N, E);
    CHECK(state.batch_capacity() == (exact ? 1 : E));
    const auto calls = orthopt_cuda_host::cublas_calls();
    rule.step(orthopt::row_major_batch(w.data(), E, M, N), orthopt::row_major_batch<const float>(g.data(), E, M, N), state);
    INFO("exact polar " << exact);
    // NS: 15 calls for the whole stack; exact polar: per matrix one SVD and one product.
    CHECK(orthopt_cuda_host::cublas_calls() - calls == (exact ? 2 * E : 3 * 5));
  }
}
