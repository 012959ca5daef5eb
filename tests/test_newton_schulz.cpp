// Property tests of the Newton–Schulz operator on the Eigen backend, float and double.
#include <catch2/catch.hpp>

#include <map>

#include "test_util.hpp"

using namespace testing;
using orthopt::ns_config;
namespace presets = orthopt::ns_presets;

namespace {
/// A Gaussian matrix rescaled to ‖X‖_F = 1, where orthopt's relative ε and the reference formulas'
/// absolute ε give the same normalization.
MatD unit_norm_gaussian(shape s, std::uint64_t salt) {
  MatD x = gaussian(s.rows, s.cols, seed_of(s, salt));
  return x / x.norm();
}
}  // namespace

TEMPLATE_TEST_CASE("NS agrees with a plain float64 transcription for every schedule", "[ns][reference]", float,
                   double) {
  for (const ns_config& cfg : all_presets()) {
    for (const shape s : property_shapes()) {
      const MatD x = unit_norm_gaussian(s, 1);
      const MatD ref = reference_ns(x, cfg);
      const MatD got = run_ns<TestType>(x, cfg);
      // Rounding errors grow by at most the schedule's gain (the product of its polynomials' slopes);
      // 10 ε·√n·gain. Wrong coefficients are caught exactly by the table test below.
      INFO("schedule " << cfg.name << " shape " << to_string(s) << " gain " << schedule_gain(cfg));
      CHECK(max_abs_diff(got, ref) <= tol<TestType>(10 * schedule_gain(cfg), s));
    }
  }
}

TEMPLATE_TEST_CASE("with absolute_eps NS reproduces the sources' normalization at any norm", "[ns][reference][absolute_eps]",
                   float, double) {
  using T = TestType;
  for (ns_config cfg : all_presets()) {
    cfg.absolute_eps = true;
    for (const shape s : property_shapes(3)) {
      for (const double norm : {1e-3, 0.05, 0.16, 1.0, 3.7, 250.0}) {
        const MatD x = unit_norm_gaussian(s, 4) * norm;
        // The source's formula: X/(‖X‖ + ε) and the like. AOL's normalization has no ε (orthopt divides
        // by ‖X‖ in both modes; reference_ns applies only the row scaling), so it gets X/‖X‖.
        const bool aol = cfg.normalization == orthopt::ns_normalization::aol;
        const MatD ref = reference_ns(aol ? MatD(x / x.norm()) : x, cfg);
        INFO("schedule " << cfg.name << " shape " << to_string(s) << " norm " << norm);
        CHECK(max_abs_diff(run_ns<T>(x, cfg), ref) <= tol<T>(10 * schedule_gain(cfg), s));
      }
    }
  }
  // The default (relative ε) differs from the source by ε·(1/‖X‖ − 1)/(1 + ε/‖X‖) in the normalization:
  // at ‖X‖ = 1e-3 that is 1e-4, far outside the double tolerance; the option is what closes the gap.
  const shape s{24, 40};
  const MatD x = unit_norm_gaussian(s, 5) * 1e-3;
  const ns_config relative = presets::keller();
  CHECK(max_abs_diff(run_ns<double>(x, relative), reference_ns(x, relative)) > 1e3 * tol<double>(10 * schedule_gain(relative), s));
}

TEMPLATE_TEST_CASE("NS is invariant to scaling the input from 1e-30 to 1e30", "[ns][scale]", float, double) {
  const std::vector<double> factors = {1e-30, 1e-20, 1e-10, 1e-3, 0.37, 3.0, 1e3, 1e10, 1e20, 1e30};
  for (const ns_config& cfg : all_presets()) {
    for (const shape s : property_shapes(3)) {
      const MatD x = gaussian(s.rows, s.cols, seed_of(s, 2));
      // The unscaled result from the same element type; scaled copies are rounded to T before NS.
      const MatD base = run_ns<TestType>(x, cfg);
      for (double c : factors) {
        const MatD scaled = run_ns<TestType>(x * c, cfg);
        INFO("schedule " << cfg.name << " shape " << to_string(s) << " factor " << c);
        REQUIRE(scaled.allFinite());
        // Rounding c·X to T perturbs each entry by ε; NS amplifies that by at most its gain.
        CHECK(max_abs_diff(scaled, base) <= tol<TestType>(10 * schedule_gain(cfg), s));
      }
    }
  }
}

// Found by fuzzing (tests/fuzz/fuzz_newton_schulz.cpp): double entries near 1.8e308 have a Frobenius norm
// beyond the double range; the normalization then divided by Inf and the output was NaN for a finite
// input. It now divides by the bound 2^1024·√(rows·cols) ≥ ‖X‖_F.
TEST_CASE("NS of a finite double matrix whose norm overflows or is subnormal is finite", "[ns][scale][overflow]") {
  const double largest = std::numeric_limits<double>::max();
  for (ns_config cfg : all_presets()) {
    for (const shape s : {shape{1, 2}, shape{2, 2}, shape{5, 3}, shape{8, 12}}) {
      for (const bool absolute : {false, true}) {
        cfg.absolute_eps = absolute;
        MatD x = gaussian(s.rows, s.cols, seed_of(s, 31));
        x = x / x.cwiseAbs().maxCoeff() * (0.9 * largest);  // the largest entry at 0.9·max
        x(0, 0) = largest;
        x(0, 1) = -largest;
        INFO("schedule " << cfg.name << " shape " << to_string(s) << " absolute_eps " << absolute);
        const MatD q = run_ns<double>(x, cfg);
        REQUIRE(q.allFinite());
        CHECK(q.norm() > 0.0);
        CHECK(q.cwiseAbs().maxCoeff() <= 1.5);  // an NS output's entries stay near [-1, 1]
      }
    }
  }
  // Subnormal double entries: the norm of two entries of 4.9e-324 rounds to 4.9e-324 itself, and the
  // normalized matrix had norm √2, which Newton–Schulz blew up to Inf (found by fuzzing).
  for (const ns_config& preset : all_presets()) {
    for (const shape s : {shape{1, 2}, shape{2, 2}, shape{3, 5}}) {
      for (const double entry : {std::numeric_limits<double>::denorm_min(), 3 * std::numeric_limits<double>::denorm_min(),
                                 1e-310}) {
        INFO("schedule " << preset.name << " shape " << to_string(s) << " entries " << entry);
        const MatD x = MatD::Constant(s.rows, s.cols, entry);
        const MatD q = run_ns<double>(x, preset);
        REQUIRE(q.allFinite());
        CHECK(q.norm() > 0.0);
        CHECK(q.cwiseAbs().maxCoeff() <= 1.5);
      }
    }
  }
  // AOL with a tiny ε on float data: a row whose squares underflow in float has row sum 0, and the row
  // scale 1/√ε = 2e153 carried its entries past the float range (found by fuzzing: NaN output).
  for (const double eps : {1e-300, 2.2250738585072014e-308, 1e-45, 1e-7}) {
    ns_config aol = presets::aol();
    aol.eps = eps;
    for (const bool absolute : {false, true}) {
      aol.absolute_eps = absolute;
      MatD x = MatD::Constant(9, 3, 1.1754943508222875e-38);
      x(0, 2) = -0.57647061347961426;
      x(6, 0) = 3.0e38;
      INFO("aol eps " << eps << " absolute_eps " << absolute);
      const MatD q = run_ns<float>(x, aol);
      REQUIRE(q.allFinite());
      CHECK(q.cwiseAbs().maxCoeff() <= 1.5);
    }
  }
  // With check_finite off, an Inf entry still gives a non-finite output (it is not mistaken for an
  // overflowing norm of finite entries).
  ns_config cfg = presets::keller();
  cfg.check_finite = false;
  MatD x = gaussian(4, 6, 32);
  x(2, 3) = std::numeric_limits<double>::infinity();
  CHECK_FALSE(run_ns<double>(x, cfg).allFinite());
}

TEMPLATE_TEST_CASE("polar_express with 8 steps lands a well-conditioned input on the polar factor", "[ns][polar_express]",
                   float, double) {
  for (const shape s : property_shapes()) {
    const index_t k = std::min(s.rows, s.cols);
    // Condition number 10: singular values log-uniform in [0.1, 1], scaled arbitrarily.
    const synthetic syn = with_singular_values(s.rows, s.cols, spread(k, 0.1, 1.0, seed_of(s, 3)), seed_of(s, 4));
    const MatD x = 7.0 * syn.x;
    const MatD q = run_ns<TestType>(x, presets::polar_express(8));
    const Eigen::VectorXd sv = singular_values(q);
    INFO("shape " << to_string(s) << " singular values in [" << sv.minCoeff() << ", " << sv.maxCoeff() << "]");
    // Measured: |σ − 1| ≤ 3e-7 (float), 1e-14 (double) on these inputs; bound 50 ε·√n.
    CHECK((sv.array() - 1.0).abs().maxCoeff() <= tol<TestType>(50, s));
    CHECK(max_abs_diff(q, svd_polar(x)) <= tol<TestType>(50, s));
  }
}

TEMPLATE_TEST_CASE("keller with 5 steps keeps rectangular Gaussian singular values in its measured band", "[ns][keller]",
                   float, double) {
  // Measured (tests/test_newton_schulz.cpp's shapes, float and double alike): every singular value of
  // NS5-keller on these Gaussian inputs of aspect ratio ≥ 2 lay in [0.6818, 1.1344] — Keller Jordan's Muon
  // write-up reports roughly [0.68, 1.14]. Asserted with that band. (Square Gaussian inputs are excluded: their smallest
  // singular values stay near 0, as that write-up notes.)
  std::vector<shape> shapes = {{32, 64}, {64, 32}, {50, 200}, {200, 50}, {17, 61}, {96, 192}, {1, 40}, {40, 1}};
  std::mt19937_64 rng(99);
  for (int i = 0; i < 40; ++i) {
    index_t m = 2 + static_cast<index_t>(rng() % 100);
    index_t n = 2 * m + static_cast<index_t>(rng() % 100);
    if (i % 2) std::swap(m, n);
    shapes.push_back({m, n});
  }
  for (const shape s : shapes) {
    const MatD x = gaussian(s.rows, s.cols, seed_of(s, 5));
    const Eigen::VectorXd sv = singular_values(run_ns<TestType>(x, presets::keller()));
    INFO("shape " << to_string(s) << " singular values in [" << sv.minCoeff() << ", " << sv.maxCoeff() << "]");
    CHECK(sv.minCoeff() >= 0.68);
    CHECK(sv.maxCoeff() <= 1.14);
  }
}

TEST_CASE("each schedule reproduces its coefficient table", "[ns][tables]") {
  // The tables as published (typed here from the sources independently of the library's header).
  const std::vector<orthopt::ns_coefficients> pe_raw = {
      {8.28721201814563, -23.595886519098837, 17.300387312530933},
      {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
      {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
      {3.3184196573706015, -2.488488024314874, 0.51004894012372},
      {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
      {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
      {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
      {1.875, -1.25, 0.375}};
  std::vector<orthopt::ns_coefficients> pe = pe_raw;
  for (std::size_t r = 0; r + 1 < pe.size(); ++r) {
    pe[r] = {pe_raw[r].a / 1.01, pe_raw[r].b / std::pow(1.01, 3), pe_raw[r].c / std::pow(1.01, 5)};
  }
  struct expected {
    ns_config cfg;
    std::vector<orthopt::ns_coefficients> table;
    int steps;
    double eps, safety;
  };
  const double d = 1024.0;
  const std::vector<expected> cases = {
      {presets::keller(), {{3.4445, -4.7750, 2.0315}}, 5, 1e-7, 0.0},
      {presets::polar_express(), pe, 5, 1e-7, 0.01},
      {presets::polar_express_nanogpt(),
       {{8.156554524902461, -22.48329292557795, 15.878769915207462},
        {4.042929935166739, -2.808917465908714, 0.5000178451051316},
        {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
        {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
        {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}},
       5, 1e-6, 0.02},
      {presets::quintic(),
       {{4.0848, -6.8946, 2.9270}, {3.9505, -6.3029, 2.6377}, {3.7418, -5.5913, 2.3037}, {2.8769, -3.1427, 1.2046},
        {2.8366, -3.0525, 1.2012}},
       5, 1e-7, 0.0},
      {presets::cans(),
       {{8.4703, -25.1081, 18.6293}, {4.1828, -3.1087, 0.5806}, {3.9619, -2.9541, 0.5630}, {3.2866, -2.4647, 0.5074},
        {2.2737, -1.6447, 0.4162}},
       5, 1e-7, 0.0},
      {presets::aol(),
       {{4.0098, -7.0585, 2.4635}, {3.4585, -5.5479, 2.5959}, {2.7573, -3.2939, 1.4254}, {2.7215, -3.0494, 1.3169}},
       4, 1e-7, 0.0},
      {presets::you(),
       {{3955 / d, -8306 / d, 5008 / d}, {3735 / d, -6681 / d, 3463 / d}, {3799 / d, -6499 / d, 3211 / d},
        {4019 / d, -6385 / d, 2906 / d}, {2677 / d, -3029 / d, 1162 / d}, {2172 / d, -1833 / d, 682 / d}},
       6, 1e-7, 0.0},
      {presets::cubic(), {{1.5, -0.5, 0.0}}, 10, 1e-7, 0.0},
  };
  for (const auto& e : cases) {
    INFO("schedule " << e.cfg.name);
    REQUIRE(e.cfg.table.size() == e.table.size());
    for (std::size_t r = 0; r < e.table.size(); ++r) {
      CHECK(e.cfg.table[r].a == Approx(e.table[r].a).epsilon(1e-15));
      CHECK(e.cfg.table[r].b == Approx(e.table[r].b).epsilon(1e-15));
      CHECK(e.cfg.table[r].c == Approx(e.table[r].c).epsilon(1e-15));
    }
    CHECK(e.cfg.steps == e.steps);
    CHECK(e.cfg.eps == e.eps);
    CHECK(e.cfg.safety == e.safety);

    // The operator applies the table: on X = U·diag(σ)·Vᵀ each singular value follows the scalar
    // recurrence σ ← aσ + bσ³ + cσ⁵ through steps+2 steps (so the last row's repetition is exercised).
    if (e.cfg.normalization == orthopt::ns_normalization::aol) continue;  // covered by the transcription test
    const shape s{12, 20};
    const std::vector<double> sigma = spread(12, 0.05, 1.0, 77);
    const synthetic syn = with_singular_values(s.rows, s.cols, sigma, 78);
    const ns_config cfg = e.cfg.with_steps(e.steps + 2);
    const MatD x = syn.x / syn.x.norm();
    const MatD q = run_ns<double>(x, cfg);
    const MatD core = syn.u.transpose() * q * syn.v;  // should be diagonal
    const double nrm = x.norm();
    const double denom = e.cfg.normalization == orthopt::ns_normalization::frobenius_clamp
                             ? std::max(nrm, e.eps)
                             : nrm * (1.0 + e.safety) + e.eps;
    for (index_t i = 0; i < 12; ++i) {
      double v = sigma[static_cast<std::size_t>(i)] / syn.x.norm() / denom;
      for (int k = 1; k <= cfg.steps; ++k) {
        const auto& c = e.table[static_cast<std::size_t>(std::min<int>(k, static_cast<int>(e.table.size())) - 1)];
        v = c.a * v + c.b * v * v * v + c.c * v * v * v * v * v;
      }
      CHECK(core(i, i) == Approx(v).epsilon(1e-9).margin(1e-12));
    }
    MatD off = core;
    off.diagonal().setZero();
    CHECK(off.cwiseAbs().maxCoeff() <= 1e-10);
  }
}

TEMPLATE_TEST_CASE("Theorem 1: the sign map is scale invariant, sign consistent, odd and bounded", "[sign][theorem1]",
                   float, double) {
  using T = TestType;
  backend_under_test be;
  std::mt19937_64 rng(1234);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> log_scale(-30.0, 30.0);
  const orthopt::functors::sign sgn;
  for (int trial = 0; trial < 2000; ++trial) {
    const T x = static_cast<T>(normal(rng) * std::pow(10.0, log_scale(rng) / 3.0));
    const T c = static_cast<T>(std::pow(10.0, log_scale(rng) / 3.0));  // positive, 1e-10 .. 1e10
    const T y = sgn(x);
    INFO("x = " << x << " c = " << c);
    if (x != T(0) && std::isfinite(c * x) && c * x != T(0)) CHECK(sgn(static_cast<T>(c * x)) == y);  // (1) scale
    if (x > T(0)) CHECK(y > T(0));                                                                  // (2) sign
    if (x < T(0)) CHECK(y < T(0));
    CHECK(sgn(static_cast<T>(-x)) == -y);                 // (3) odd
    CHECK(std::abs(y) <= T(1));                           // (4) bounded
  }
  CHECK(sgn(T(0)) == T(0));
  CHECK(sgn(std::numeric_limits<T>::denorm_min()) == T(1));
  CHECK(sgn(-std::numeric_limits<T>::max()) == T(-1));

  // NS(sign(D⊙M)) = NS(sign(M)) for random positive element-wise D, through the backend's transform.
  for (const shape s : property_shapes(3)) {
    Mat<T> m = gaussian(s.rows, s.cols, seed_of(s, 6)).cast<T>();
    Mat<T> dm = m;
    std::uniform_real_distribution<double> logd(-20.0, 20.0);
    for (index_t j = 0; j < s.cols; ++j)
      for (index_t i = 0; i < s.rows; ++i) dm(i, j) = static_cast<T>(dm(i, j) * std::exp(logd(rng)));
    Mat<T> sm(s.rows, s.cols), sdm(s.rows, s.cols);
    transform(be, orthopt::make_const_view(m), orthopt::make_view(sm), sgn);
    transform(be, orthopt::make_const_view(dm), orthopt::make_view(sdm), sgn);
    const MatD a = run_ns<T>(sm.template cast<double>(), presets::keller());
    const MatD b = run_ns<T>(sdm.template cast<double>(), presets::keller());
    INFO("shape " << to_string(s));
    CHECK(max_abs_diff(a, b) == 0.0);
    // Without the sign map the same D changes the result: the property is not vacuous.
    if (s.rows > 1 && s.cols > 1) {
      CHECK(max_abs_diff(run_ns<T>(m.template cast<double>(), presets::keller()),
                         run_ns<T>(dm.template cast<double>(), presets::keller())) > 1e-2);
    }
  }
}

TEMPLATE_TEST_CASE("NS gives the same result for any storage order, block or transposed view", "[ns][views]", float,
                   double) {
  using T = TestType;
  for (const shape s : property_shapes(3)) {
    const MatD x = gaussian(s.rows, s.cols, seed_of(s, 7));
    const MatD base = run_ns<T>(x, presets::polar_express());
    orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, presets::polar_express());
    INFO("shape " << to_string(s));
    {  // row-major in and out
      MatRM<T> xr = x.cast<T>(), qr(s.rows, s.cols);
      ns(orthopt::make_view(xr), orthopt::make_view(qr));
      CHECK(max_abs_diff(qr.template cast<double>(), base) <= tol<T>(100, s));
    }
    {  // a block of a larger matrix in, a transposed view of a column-major matrix out
      Mat<T> big = Mat<T>::Constant(s.rows + 5, s.cols + 3, T(99));
      big.block(2, 1, s.rows, s.cols) = x.cast<T>();
      Mat<T> qt(s.cols, s.rows);
      ns(orthopt::make_view(big.block(2, 1, s.rows, s.cols)), orthopt::make_view(qt).transposed());
      CHECK(max_abs_diff(qt.transpose().template cast<double>(), base) <= tol<T>(100, s));
    }
    {  // in place: q and x the same memory
      Mat<T> xq = x.cast<T>();
      ns(orthopt::make_view(xq), orthopt::make_view(xq));
      CHECK(max_abs_diff(xq.template cast<double>(), base) <= tol<T>(100, s));
    }
  }
}

TEMPLATE_TEST_CASE("NS over a batch equals NS of each matrix, and threads do not change results", "[ns][batch]", float,
                   double) {
  using T = TestType;
  const index_t E = 4, M = 24, N = 40;
  std::vector<T> in(static_cast<std::size_t>(E * M * N)), out(in.size());
  const MatD all = gaussian(E * M, N, 8);
  for (index_t e = 0; e < E; ++e)
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) in[static_cast<std::size_t>((e * M + i) * N + j)] = static_cast<T>(all(e * M + i, j));
  orthopt::newton_schulz<T, backend_under_test> ns(M, N, presets::keller());
  ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
  for (index_t e = 0; e < E; ++e) {
    const MatD single = run_ns<T>(all.block(e * M, 0, M, N).template cast<T>().template cast<double>(), presets::keller());
    Eigen::Map<const MatRM<T>> got(out.data() + e * M * N, M, N);
    // Same values, other storage order: only the order of the norm's summation differs.
    CHECK(max_abs_diff(got.template cast<double>(), single) <= tol<T>(10 * schedule_gain(presets::keller()), {M, N}));
  }
  // A two-thread backend splits the products differently; results agree to rounding.
  for (const shape s : {shape{200, 300}, shape{300, 200}, shape{257, 257}}) {
    const MatD x = gaussian(s.rows, s.cols, seed_of(s, 9));
    const MatD one = run_ns<T>(x, presets::polar_express(), make_backend(1));
    const MatD two = run_ns<T>(x, presets::polar_express(), make_backend(2));
    INFO("shape " << to_string(s));
    CHECK(max_abs_diff(one, two) <= tol<T>(10 * schedule_gain(presets::polar_express()), s));
  }
}

TEMPLATE_TEST_CASE("a plan with a batch capacity runs batches together, in chunks, for every layout", "[ns][batch]", float,
                   double) {
  using T = TestType;
  const index_t E = 7;
  for (const shape s : {shape{12, 20}, shape{20, 12}, shape{16, 16}}) {
    for (const auto& cfg : {presets::keller(), presets::aol()}) {
      // The stack as rows of one column-major (E·M)×N matrix: split_rows gives a strided batch view.
      const MatD all = gaussian(E * s.rows, s.cols, seed_of(s, 31));
      Mat<T> stacked = all.cast<T>();
      const auto in = orthopt::split_rows(orthopt::make_view(stacked).as_const(), E);
      for (const index_t capacity : {index_t{1}, index_t{3}, index_t{8}}) {
        std::vector<T> out(static_cast<std::size_t>(E * s.rows * s.cols));
        orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, cfg, backend_under_test{}, capacity);
        CHECK(ns.batch_capacity() == capacity);
        ns(in, orthopt::row_major_batch(out.data(), E, s.rows, s.cols));
        for (index_t e = 0; e < E; ++e) {
          const MatD single = run_ns<T>(all.block(e * s.rows, 0, s.rows, s.cols).template cast<T>().template cast<double>(), cfg);
          Eigen::Map<const MatRM<T>> got(out.data() + e * s.rows * s.cols, s.rows, s.cols);
          INFO(cfg.name << " " << to_string(s) << " capacity " << capacity << " matrix " << e);
          // A batched backend forms A·Aᵀ by a batched GEMM instead of syrk: rounding differs, nothing else.
          CHECK(max_abs_diff(got.template cast<double>(), single) <= tol<T>(10 * schedule_gain(cfg), s));
        }
      }
    }
  }
  CHECK_THROWS_AS((orthopt::newton_schulz<T, backend_under_test>(4, 4, presets::keller(), backend_under_test{}, 0)),
                  orthopt::shape_error);
}

// ---------------------------------------------------------------------------------------------------
// Gram Newton–Schulz (ns_config::algorithm = ns_algorithm::gram)
// ---------------------------------------------------------------------------------------------------
namespace {
ns_config as_gram(ns_config cfg, int restart_after = -1) {
  cfg.algorithm = orthopt::ns_algorithm::gram;
  cfg.gram_restart_after = restart_after;
  return cfg;
}

/// Shapes from square to 1:8, both orientations, including sizes that are not multiples of anything.
std::vector<shape> gram_shapes() {
  return {{24, 24}, {33, 33}, {20, 40}, {40, 20}, {16, 64}, {64, 16}, {13, 104}, {104, 13}, {31, 93}};
}
}  // namespace

TEMPLATE_TEST_CASE("Gram NS matches the standard iteration for every schedule, square to 1:8", "[ns][gram]", float,
                   double) {
  using T = TestType;
  for (const ns_config& base : all_presets()) {
    const ns_config gram = as_gram(base);
    // The standard bound (10 ε·√n·schedule gain) plus the Gram matrix's own amplification (gram_gain).
    const double factor = 10 * (schedule_gain(base) + gram_gain(gram));
    for (const shape s : gram_shapes()) {
      const MatD x = unit_norm_gaussian(s, 41);
      const MatD ref = reference_ns(x, base);
      const MatD got = run_ns<T>(x, gram);
      INFO("schedule " << base.name << " shape " << to_string(s) << " gram gain " << gram_gain(gram));
      CHECK(max_abs_diff(got, ref) <= tol<T>(factor, s));
      CHECK(max_abs_diff(got, run_ns<T>(x, base)) <= tol<T>(factor, s));
    }
  }
}

TEMPLATE_TEST_CASE("Gram NS with its default restart stays within each preset's measured factor of the standard error",
                   "[ns][gram][restart]", float, double) {
  // Without a restart, R_0 = X·Xᵀ carries σ² and small singular values lose digits that the accumulated
  // polynomial then multiplies by the schedule's gain; one restart refreshes R from X. The default
  // position (gram_restart_iteration: the smallest worst rounding growth) was chosen by measurement
  // (benchmarks/gram_restart_study.cpp: every position, 10 shapes, Gaussian and condition up to 10⁶).
  // Here, for every preset, wide, tall and square float inputs of condition 10² to 10⁶: the Gram error
  // against a float64 reference stays within the preset's worst measured factor of the standard
  // iteration's own error (the study's figure, 1.5× for other inputs; docs/newton-schulz.md lists
  // them), where no restart is far off. Double results are held to the derived tolerance.
  using T = TestType;
  const std::map<std::string, double> measured_worst = {{"keller", 6.0}, {"polar_express", 11.0},
                                                        {"polar_express_nanogpt", 10.5}, {"quintic", 5.7},
                                                        {"cans", 8.8}, {"aol", 1.9}, {"you", 3.7}, {"cubic", 2.9}};
  for (const ns_config& base : all_presets()) {
    const ns_config gram = as_gram(base), never = as_gram(base, 0);
    const int position = gram.gram_restart_iteration(std::numeric_limits<T>::epsilon() / 2);
    // The default position has the smallest worst rounding growth of all positions.
    for (int r = 0; r < base.steps; ++r) CHECK(gram.gram_rounding_growth(r) >= gram.gram_rounding_growth(position) * (1 - 1e-9));
    double worst = 0.0, worst_unrestarted = 0.0;
    for (const shape s : {shape{32, 32}, shape{24, 96}, shape{96, 24}, shape{40, 200}, shape{200, 40}}) {
      for (const double condition : {1e2, 1e4, 1e6}) {
        const index_t k = std::min(s.rows, s.cols);
        MatD x = with_singular_values(s.rows, s.cols, spread(k, 1.0 / condition, 1.0, seed_of(s, 43)),
                                      seed_of(s, 44)).x;
        x /= x.norm();
        const MatD ref = reference_ns(x, base);
        const double standard_error = max_abs_diff(run_ns<T>(x, base), ref);
        const double gram_error = max_abs_diff(run_ns<T>(x, gram), ref);
        const double never_error = max_abs_diff(run_ns<T>(x, never), ref);
        INFO("schedule " << base.name << " shape " << to_string(s) << " condition " << condition << ": standard "
                         << standard_error << ", gram " << gram_error << ", gram without restart " << never_error);
        CHECK(gram_error <= tol<T>(10 * (schedule_gain(base) + gram_gain(gram)), s));
        CHECK(never_error <= tol<T>(10 * (schedule_gain(base) + gram_gain(never)), s));
        // An error floor of ε covers inputs where the standard error is itself at the last bit.
        worst = std::max(worst, gram_error / (standard_error + eps<T>()));
        worst_unrestarted = std::max(worst_unrestarted, never_error / (standard_error + eps<T>()));
      }
    }
    INFO("schedule " << base.name << ": worst Gram / standard " << worst << ", without a restart " << worst_unrestarted);
    if (std::is_same_v<T, float>) {
      CHECK(worst <= 1.5 * measured_worst.at(base.name));
      // What the restart is for: without it some input is further off (cubic's growth is small).
      CHECK(worst_unrestarted > worst);
    }
  }
}

TEMPLATE_TEST_CASE("Gram NS: batches, views, in place, AOL, restarts anywhere, residuals and stopping", "[ns][gram]",
                   float, double) {
  using T = TestType;
  const shape s{12, 40};
  const MatD x = unit_norm_gaussian(s, 45);
  for (const ns_config& base : {presets::keller(), presets::aol(), presets::cubic()}) {
    const double factor = 10 * (schedule_gain(base) + gram_gain(as_gram(base, 0)));
    // Any restart position (after step 1 … beyond the last, which is none) computes the same matrix.
    const MatD ref = reference_ns(x, base);
    for (int restart = 0; restart <= base.steps + 1; ++restart) {
      INFO(base.name << " restart after " << restart);
      CHECK(max_abs_diff(run_ns<T>(x, as_gram(base, restart)), ref) <= tol<T>(factor, s));
    }
    const ns_config gram = as_gram(base);
    const MatD single = run_ns<T>(x, gram);
    // Transposed view in, in place, and a batch with a capacity: the same result.
    Mat<T> xq = x.cast<T>();
    orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, gram);
    ns(orthopt::make_view(xq), orthopt::make_view(xq));
    CHECK(max_abs_diff(xq.template cast<double>(), single) <= tol<T>(100, s));
    Mat<T> xt = x.transpose().cast<T>(), qt(s.cols, s.rows);
    orthopt::newton_schulz<T, backend_under_test> ns_t(s.cols, s.rows, gram);
    ns_t(orthopt::make_view(xt), orthopt::make_view(qt));
    CHECK(max_abs_diff(qt.transpose().template cast<double>(), single) <= tol<T>(100, s));
    const index_t E = 5;
    const MatD all = gaussian(E * s.rows, s.cols, 46);
    Mat<T> stacked = all.cast<T>();
    std::vector<T> out(static_cast<std::size_t>(E * s.rows * s.cols));
    orthopt::newton_schulz<T, backend_under_test> batched(s.rows, s.cols, gram, backend_under_test{}, 2);
    batched(orthopt::split_rows(orthopt::make_view(stacked).as_const(), E), orthopt::row_major_batch(out.data(), E, s.rows, s.cols));
    for (index_t e = 0; e < E; ++e) {
      const MatD one = run_ns<T>(all.block(e * s.rows, 0, s.rows, s.cols).template cast<T>().template cast<double>(), gram);
      Eigen::Map<const MatRM<T>> got(out.data() + e * s.rows * s.cols, s.rows, s.cols);
      INFO(base.name << " batch item " << e);
      CHECK(max_abs_diff(got.template cast<double>(), one) <= tol<T>(factor, s));
    }
  }
  // Residuals recorded by the Gram iteration come from R_k; they match the standard iteration's.
  const ns_config base = presets::keller(), gram = as_gram(base);
  Mat<T> xt = x.cast<T>(), q1(s.rows, s.cols), q2(s.rows, s.cols);
  orthopt::newton_schulz<T, backend_under_test> a(s.rows, s.cols, base), b(s.rows, s.cols, gram);
  a.record_residuals(true);
  b.record_residuals(true);
  a(orthopt::make_view(xt), orthopt::make_view(q1));
  b(orthopt::make_view(xt), orthopt::make_view(q2));
  const std::vector<double> ra = a.residuals(), rb = b.residuals();
  REQUIRE(ra.size() == rb.size());
  for (std::size_t k = 0; k < ra.size(); ++k) {
    INFO("residual " << k);
    CHECK(std::abs(ra[k] - rb[k]) <= tol<T>(10 * (schedule_gain(base) + gram_gain(gram)), s));
  }
  // Stopping at a residual stops the Gram iteration at the same step, with the same matrix as a plain
  // Gram call of that many steps.
  b.record_residuals(false);
  b.stop_at_residual(0.5);
  b(orthopt::make_view(xt), orthopt::make_view(q2));
  REQUIRE(b.last_steps() >= 1);
  REQUIRE(b.last_steps() < base.steps);
  ns_config shorter = gram.with_steps(b.last_steps());
  shorter.gram_restart_after = gram.gram_restart_iteration();  // the restart position of the stopped call
  CHECK(max_abs_diff(q2.template cast<double>(), run_ns<T>(x, shorter)) == 0.0);

  // A run of iterations between restarts multiplies a rounding error of R by the product of its a_k²
  // but the last (gram_rounding_growth); past the element type's precision a slightly negative
  // eigenvalue of R diverges (found by fuzzing: keller for 14 iterations, restart after 1, float, a
  // nearly singular 2×2 input, NaN output). A float plan refuses that configuration, a double plan
  // takes it; the default restart is chosen among the positions that keep the growth within the
  // precision, and set_steps never refuses (it only moves the default restart).
  {
    const double u = std::numeric_limits<T>::epsilon() / 2;
    const ns_config long_run = as_gram(presets::keller(14), 1);
    CHECK(long_run.gram_rounding_growth(1) == Approx(std::pow(3.4445 * 3.4445, 12)).epsilon(1e-12));
    MatD near_singular(2, 2);
    near_singular << 8.808210986899212e-05, 8.8082095317076892e-05, 8.808210986899212e-05, 8.808210986899212e-05;
    if (std::is_same_v<T, float>) {
      CHECK_THROWS_WITH((orthopt::newton_schulz<T, backend_under_test>(2, 2, long_run)),
                        Catch::Contains("diverges on nearly singular inputs"));
    } else {
      CHECK(run_ns<T>(near_singular, long_run).allFinite());
    }
    for (const int steps : {10, 14, 20}) {
      const ns_config longer = as_gram(presets::keller(steps));
      const int restart = longer.gram_restart_iteration(u);
      INFO("keller " << steps << " iterations, default restart after " << restart);
      if (longer.gram_rounding_growth(restart) * u < 0.01) CHECK(run_ns<T>(near_singular, longer).allFinite());
    }
    orthopt::newton_schulz<T, backend_under_test> five(2, 2, as_gram(presets::keller()));
    five.set_steps(14);
    CHECK(five.steps() == 14);
    CHECK(five.algorithm() == orthopt::ns_algorithm::gram);
    // A count no restart keeps within float's precision (16: two runs of 8, growth 11.9^7 · u ≈ 2), as
    // the adaptive budget's observation sets for keller(8): the float plan runs the standard iteration
    // (before, the Gram algorithm turned a nearly singular input into NaN), and Gram again once the count
    // comes back down.
    five.set_steps(16);
    CHECK(five.algorithm() == (std::is_same_v<T, float> ? orthopt::ns_algorithm::standard : orthopt::ns_algorithm::gram));
    Mat<T> in = near_singular.cast<T>(), out(2, 2);
    five(orthopt::make_view(in).as_const(), orthopt::make_view(out));
    CHECK(out.allFinite());
    ns_config standard16 = presets::keller(16);
    if (std::is_same_v<T, float>) CHECK(max_abs_diff(out.template cast<double>(), run_ns<T>(near_singular, standard16)) == 0.0);
    five.set_steps(5);
    CHECK(five.algorithm() == orthopt::ns_algorithm::gram);
  }

  // Bad restart values are refused by name.
  ns_config bad = as_gram(base, -2);
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("gram_restart_after = -2"));
}

TEMPLATE_TEST_CASE("ns_algorithm::fastest runs Gram on wide matrices and the standard iteration elsewhere", "[ns][gram]",
                   float, double) {
  using T = TestType;
  using plan_t = orthopt::newton_schulz<T, backend_under_test>;
  // The multiply-add model: keller, 5 steps, restart after 2, at 1:4 is 20.5 m³ against 32.5 m³.
  const ns_config keller = presets::keller();
  CHECK(keller.gram_flops_ratio(64, 256, 2) == Approx(20.5 / 32.5).epsilon(1e-12));
  CHECK(keller.gram_flops_ratio(64, 64, 2) > 1.0);
  ns_config fastest = keller;
  fastest.algorithm = orthopt::ns_algorithm::fastest;
  for (const shape s : {shape{24, 24}, shape{40, 60}, shape{24, 96}, shape{96, 24}, shape{13, 104}}) {
    const bool wide = std::max(s.rows, s.cols) >= 3 * std::min(s.rows, s.cols);
    INFO("shape " << to_string(s));
    plan_t plan(s.rows, s.cols, fastest);
    CHECK(plan.algorithm() == (wide ? orthopt::ns_algorithm::gram : orthopt::ns_algorithm::standard));
    // Bit for bit the algorithm it chose.
    ns_config chosen = keller;
    chosen.algorithm = plan.algorithm();
    const MatD x = unit_norm_gaussian(s, 47);
    CHECK(max_abs_diff(run_ns<T>(x, fastest), run_ns<T>(x, chosen)) == 0.0);
  }
  // Where the Gram algorithm would be refused (float: keller for 14 steps, restart after 1), fastest runs
  // the standard iteration instead of refusing; set_steps to such a count leaves Gram the same way.
  ns_config long_run = presets::keller(14);
  long_run.algorithm = orthopt::ns_algorithm::fastest;
  long_run.gram_restart_after = 1;
  plan_t refused_gram(16, 128, long_run);
  CHECK(refused_gram.algorithm() == (std::is_same_v<T, float> ? orthopt::ns_algorithm::standard : orthopt::ns_algorithm::gram));
  ns_config restart_one = fastest;
  restart_one.gram_restart_after = 1;
  plan_t shortened(16, 128, restart_one);
  CHECK(shortened.algorithm() == orthopt::ns_algorithm::gram);
  shortened.set_steps(14);
  CHECK(shortened.algorithm() == (std::is_same_v<T, float> ? orthopt::ns_algorithm::standard : orthopt::ns_algorithm::gram));
  const MatD x = unit_norm_gaussian(shape{16, 128}, 48);
  Mat<T> in = x.cast<T>(), out(16, 128);
  shortened(orthopt::make_view(in).as_const(), orthopt::make_view(out));
  CHECK(out.allFinite());
  // Back to a count within precision: the Gram algorithm again (the adaptive budget's observation phase
  // raises counts, its commit lowers them).
  shortened.set_steps(5);
  CHECK(shortened.algorithm() == orthopt::ns_algorithm::gram);
  // A value outside the enumeration is refused by name.
  ns_config bad = keller;
  bad.algorithm = static_cast<orthopt::ns_algorithm>(7);
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("algorithm = 7"));
}

TEMPLATE_TEST_CASE("a batch of small matrices split over threads equals the matrices one by one", "[ns][batch][threads]",
                   float, double) {
  using T = TestType;
  const index_t E = 9;
  for (const shape s : {shape{16, 16}, shape{12, 40}, shape{40, 12}}) {
    for (ns_config cfg : {presets::keller(), presets::aol(), as_gram(presets::polar_express())}) {
      const MatD all = gaussian(E * s.rows, s.cols, seed_of(s, 47));
      Mat<T> stacked = all.cast<T>();
      const auto in = orthopt::split_rows(orthopt::make_view(stacked).as_const(), E);
      std::vector<T> out(static_cast<std::size_t>(E * s.rows * s.cols));
      orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, cfg, make_backend(2));
#if defined(_OPENMP) && !defined(ORTHOPT_TEST_CUDA_HOST)
      CHECK(ns.batch_threads() == 2);
#else
      CHECK(ns.batch_threads() == 1);
#endif
      for (const bool record : {false, true}) {  // recording runs the matrices in turn
        ns.record_residuals(record);
        ns(in, orthopt::row_major_batch(out.data(), E, s.rows, s.cols));
        for (index_t e = 0; e < E; ++e) {
          MatRM<T> one_out(s.rows, s.cols);
          orthopt::newton_schulz<T, backend_under_test> single(s.rows, s.cols, cfg, make_backend(1));
          single(in[e], orthopt::make_view(one_out));
          Eigen::Map<const MatRM<T>> got(out.data() + e * s.rows * s.cols, s.rows, s.cols);
          INFO(cfg.name << " " << to_string(s) << " matrix " << e << " recording " << record);
          // The per-thread plans are single-threaded plans: the same arithmetic as a one-thread call.
          CHECK(max_abs_diff(got.template cast<double>(), one_out.template cast<double>()) <= (record ? tol<T>(100, s) : 0.0));
        }
      }
    }
  }
  // A large shape keeps splitting its products instead.
  orthopt::newton_schulz<T, backend_under_test> big(300, 300, presets::keller(), make_backend(2));
  CHECK(big.batch_threads() == 1);
}
