// Bad input: each case gives a clear exception naming the problem (and leaves the output untouched),
// or a documented result.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using namespace testing;
using Catch::Matchers::Contains;
namespace presets = orthopt::ns_presets;

namespace {
template <class T>
using NS = orthopt::newton_schulz<T, backend_under_test>;
template <class T>
using Polar = orthopt::exact_polar<T, backend_under_test>;

/// Calls op(x, q) expecting an exception of type E whose message contains `needle`; q must be unchanged.
template <class E, class Op, class T>
void expect_rejected(Op&& op, const Mat<T>& x, Mat<T>& q, const std::string& needle) {
  const Mat<T> before = q;
  bool thrown = false;
  try {
    op(orthopt::make_view(x), orthopt::make_view(q));
  } catch (const E& e) {
    thrown = true;
    INFO("message: " << e.what());
    CHECK_THAT(std::string(e.what()), Contains(needle));
  }
  CHECK(thrown);
  CHECK(((q.array() == before.array()) || (q.array().isNaN() && before.array().isNaN())).all());
}
}  // namespace

TEMPLATE_TEST_CASE("empty matrices are rejected when the plan is made", "[errors]", float, double) {
  using T = TestType;
  CHECK_THROWS_WITH(NS<T>(0, 5, presets::keller()), Contains("empty 0x5"));
  CHECK_THROWS_WITH(NS<T>(3, 0, presets::keller()), Contains("empty 3x0"));
  CHECK_THROWS_AS(Polar<T>(0, 0), orthopt::shape_error);
  // An empty view handed to a plan is rejected too.
  NS<T> ns(2, 2, presets::keller());
  Mat<T> empty(0, 0), q(2, 2);
  CHECK_THROWS_WITH(ns(orthopt::make_view(empty), orthopt::make_view(q)), Contains("input is an empty 0x0"));
}

TEMPLATE_TEST_CASE("mismatched shapes name both shapes and leave the output untouched", "[errors]", float, double) {
  using T = TestType;
  NS<T> ns(4, 6, presets::keller());
  Polar<T> polar(4, 6);
  const Mat<T> x = Mat<T>::Random(4, 6);
  Mat<T> wrong_out = Mat<T>::Constant(6, 4, T(7));
  expect_rejected<orthopt::shape_error>(ns, x, wrong_out, "output is 6x4 but 4x6 was expected");
  expect_rejected<orthopt::shape_error>(polar, x, wrong_out, "output is 6x4 but 4x6 was expected");
  const Mat<T> other = Mat<T>::Random(5, 6);
  Mat<T> q = Mat<T>::Constant(5, 6, T(7));
  expect_rejected<orthopt::shape_error>(ns, other, q, "input is 5x6 but the plan was made for 4x6");
  // Batches of different length.
  std::vector<T> in(2 * 24), out(3 * 24);
  CHECK_THROWS_WITH(ns(orthopt::row_major_batch<const T>(in.data(), 2, 4, 6), orthopt::row_major_batch(out.data(), 3, 4, 6)),
                    Contains("input batch has 2 matrices but output batch has 3"));
  // A negative count (it once silently did nothing); an empty batch does nothing.
  CHECK_THROWS_WITH(ns(orthopt::batch_view<const T>(orthopt::row_major_view<const T>(in.data(), 4, 6), -1, 24),
                       orthopt::batch_view<T>(orthopt::row_major_view(out.data(), 4, 6), -1, 24)),
                    Contains("a batch of -1 matrices; the count must be >= 0"));
  CHECK_NOTHROW(ns(orthopt::row_major_batch<const T>(in.data(), 0, 4, 6), orthopt::row_major_batch(out.data(), 0, 4, 6)));
  // A view whose strides are not positive.
  Mat<T> buf = Mat<T>::Random(4, 6);
  const orthopt::matrix_view<const T> zero_stride{buf.data(), 4, 6, 0, 4};
  Mat<T> q2 = Mat<T>::Constant(4, 6, T(7));
  expect_rejected<orthopt::shape_error>([&](auto, auto o) { ns(zero_stride, o); }, buf, q2, "strides must be positive");
}

TEMPLATE_TEST_CASE("NaN and Inf inputs are rejected with their position and nothing is written", "[errors]", float, double) {
  using T = TestType;
  NS<T> ns(5, 3, presets::polar_express());
  Polar<T> polar(5, 3);
  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity()}) {
    Mat<T> x = Mat<T>::Random(5, 3);
    x(3, 1) = bad;
    Mat<T> q = Mat<T>::Constant(5, 3, T(7));
    const std::string what = std::isnan(bad) ? "input(3, 1) is nan" : (bad > 0 ? "input(3, 1) is inf" : "input(3, 1) is -inf");
    expect_rejected<orthopt::value_error>(ns, x, q, what);
    expect_rejected<orthopt::value_error>(polar, x, q, what);
  }
  // In a batch, a NaN in the last matrix stops the call before the first matrix is written.
  std::vector<T> in(3 * 15, T(1)), out(3 * 15, T(7));
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<T>(std::sin(double(i)));
  in[2 * 15 + 4] = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_WITH(ns(orthopt::row_major_batch<const T>(in.data(), 3, 5, 3), orthopt::row_major_batch(out.data(), 3, 5, 3)),
                    Contains("batch item 2") && Contains("is nan"));
  CHECK(std::all_of(out.begin(), out.end(), [](T v) { return v == T(7); }));
  // With the check off, NaN propagates instead (documented): every output entry is NaN.
  auto cfg = presets::keller();
  cfg.check_finite = false;
  NS<T> unchecked(5, 3, cfg);
  Mat<T> x = Mat<T>::Random(5, 3), q(5, 3);
  x(0, 0) = std::numeric_limits<T>::quiet_NaN();
  unchecked(orthopt::make_view(x), orthopt::make_view(q));
  CHECK(q.array().isNaN().all());
}

TEMPLATE_TEST_CASE("a zero matrix maps to zero, never NaN, for every schedule and the exact polar", "[errors][zero]", float,
                   double) {
  using T = TestType;
  for (const auto& cfg : {presets::keller(), presets::polar_express(), presets::polar_express_nanogpt(), presets::quintic(),
                          presets::cans(), presets::aol(), presets::you(), presets::cubic()}) {
    for (const shape s : {shape{1, 1}, shape{3, 8}, shape{8, 3}, shape{6, 6}}) {
      const Mat<T> x = Mat<T>::Zero(s.rows, s.cols);
      Mat<T> q = Mat<T>::Constant(s.rows, s.cols, T(7));
      NS<T> ns(s.rows, s.cols, cfg);
      ns(orthopt::make_view(x), orthopt::make_view(q));
      INFO("schedule " << cfg.name << " shape " << to_string(s));
      CHECK(q.isZero(0));
    }
  }
  auto clamp = presets::keller();
  clamp.normalization = orthopt::ns_normalization::frobenius_clamp;
  const Mat<T> x = Mat<T>::Zero(4, 4);
  Mat<T> q = Mat<T>::Constant(4, 4, T(7));
  NS<T>(4, 4, clamp)(orthopt::make_view(x), orthopt::make_view(q));
  CHECK(q.isZero(0));
  Polar<T>(4, 4)(orthopt::make_view(x), orthopt::make_view(q));
  CHECK(q.isZero(0));
  // The tiniest non-zero input is not zero: it orthogonalizes like any other.
  Mat<T> tiny = Mat<T>::Zero(4, 4);
  tiny.diagonal().setConstant(std::numeric_limits<T>::denorm_min());
  NS<T>(4, 4, presets::polar_express(8))(orthopt::make_view(tiny), orthopt::make_view(q));
  CHECK(q.isIdentity(1e-3));
}

TEST_CASE("invalid configurations are rejected with the offending field", "[errors][config]") {
  auto cfg = presets::keller();
  cfg.table.clear();
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("coefficient table is empty"));
  CHECK_THROWS_WITH(NS<float>(3, 3, presets::keller(0)), Contains("steps = 0"));
  cfg = presets::quintic();
  cfg.table[2].b = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("row 3 has a non-finite coefficient"));
  cfg = presets::keller();
  cfg.eps = -1.0;
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("eps"));
  // Values are shown as given (std::to_string's six decimals printed -1e-9 as "-0.000000").
  cfg.eps = -1e-9;
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("eps = -1e-09 must be finite and >= 0"));
  {
    auto muon = orthopt::muon_presets::keller();
    muon.lr = -2.5e-7;
    using Muon = orthopt::muon<float, backend_under_test>;
    CHECK_THROWS_WITH(Muon(muon), Contains("lr = -2.5e-07 must be finite and >= 0"));
    muon.lr = 0.1 + 0.2;
    muon.momentum = 1.0000000001;
    CHECK_THROWS_WITH(Muon(muon), Contains("momentum = 1.0000000001"));
  }
  cfg = presets::polar_express();
  cfg.safety = -0.5;
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("safety"));
  // Enumerators outside the enum (a cast from a config file's integer): refused, not run as some
  // default (found by fuzzing, tests/fuzz/fuzz_newton_schulz.cpp).
  cfg = presets::keller();
  cfg.normalization = static_cast<orthopt::ns_normalization>(4);
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("normalization = 4 is not an ns_normalization"));
  cfg = presets::keller();
  cfg.algorithm = static_cast<orthopt::ns_algorithm>(3);
  CHECK_THROWS_WITH(NS<float>(3, 3, cfg), Contains("algorithm = 3 is not an ns_algorithm"));
  CHECK_THROWS_WITH(presets::by_name("kellr"), Contains("unknown schedule 'kellr'"));
  CHECK(presets::by_name("cans").name == "cans");
  NS<float> ns(3, 3, presets::keller());
  CHECK_THROWS_WITH(ns.set_steps(0), Contains("steps = 0"));
  ns.set_steps(7);
  CHECK(ns.config().steps == 7);
  // Exceptions are catchable as the standard types and as orthopt::error.
  CHECK_THROWS_AS(NS<float>(0, 3, presets::keller()), std::invalid_argument);
  CHECK_THROWS_AS(NS<float>(3, 3, presets::keller(0)), std::domain_error);
  CHECK_THROWS_AS(NS<float>(3, 3, presets::keller(0)), orthopt::error);
}
