// Property tests of the exact polar factor (SVD) on the Eigen backend, float and double.
#include <catch2/catch.hpp>

#include "test_util.hpp"

using namespace testing;

TEMPLATE_TEST_CASE("exact polar: orthonormal, QᵀX symmetric PSD, equal to the float64 SVD polar", "[polar]", float,
                   double) {
  using T = TestType;
  for (const shape s : property_shapes(8)) {
    const MatD x = gaussian(s.rows, s.cols, seed_of(s, 11));
    const MatD q = run_polar<T>(x);
    INFO("shape " << to_string(s));
    CHECK(orthogonality_error(q) <= tol<T>(50, s));
    const MatD h = q.transpose() * x.cast<T>().template cast<double>();
    const double scale = x.norm();
    CHECK((h - h.transpose()).cwiseAbs().maxCoeff() <= tol<T>(50, s) * scale);
    const Eigen::SelfAdjointEigenSolver<MatD> eig(0.5 * (h + h.transpose()));
    CHECK(eig.eigenvalues().minCoeff() >= -tol<T>(50, s) * scale);
    // Against the float64 SVD: the polar factor's sensitivity is 1/(σ_min + σ_next) (Higham), so the
    // bound scales with the input's conditioning; Gaussian inputs are measured to need ≤ 10³ of that.
    const Eigen::VectorXd sv = singular_values(x);
    const double gap = sv.size() > 1 ? sv(sv.size() - 1) + sv(sv.size() - 2) : 2.0 * sv(0);
    CHECK(max_abs_diff(q, svd_polar(x.cast<T>().template cast<double>())) <= tol<T>(50, s) * scale / gap);
  }
}

TEMPLATE_TEST_CASE("exact polar: polar(Xᵀ) = polar(X)ᵀ and polar(PXQ) = P·polar(X)·Q", "[polar]", float, double) {
  using T = TestType;
  for (const shape s : property_shapes(8)) {
    const index_t k = std::min(s.rows, s.cols);
    // Condition number ≤ 10, so the polar factor is well determined and the orthogonal-equivariance
    // comparison measures the operator, not the input's sensitivity.
    const synthetic syn = with_singular_values(s.rows, s.cols, spread(k, 0.1, 1.0, seed_of(s, 12)), seed_of(s, 13));
    const MatD x = syn.x;
    const MatD q = run_polar<T>(x);
    INFO("shape " << to_string(s));
    CHECK(max_abs_diff(run_polar<T>(x.transpose()), q.transpose()) <= tol<T>(50, s));
    const MatD p_left = random_orthogonal(s.rows, seed_of(s, 14));
    const MatD q_right = random_orthogonal(s.cols, seed_of(s, 15));
    CHECK(max_abs_diff(run_polar<T>(p_left * x * q_right), p_left * q * q_right) <= tol<T>(500, s));
  }
}

TEMPLATE_TEST_CASE("exact polar is invariant to positive scaling and maps rank-deficient inputs to partial isometries",
                   "[polar]", float, double) {
  using T = TestType;
  for (const shape s : property_shapes(3)) {
    const MatD x = gaussian(s.rows, s.cols, seed_of(s, 16));
    const MatD base = run_polar<T>(x);
    for (double c : {1e-30, 1e-5, 1e5, 1e30}) {
      INFO("shape " << to_string(s) << " factor " << c);
      const MatD scaled = run_polar<T>(x * c);
      REQUIRE(scaled.allFinite());
      const Eigen::VectorXd sv = singular_values(x);
      const double gap = sv.size() > 1 ? sv(sv.size() - 1) + sv(sv.size() - 2) : 2.0 * sv(0);
      CHECK(max_abs_diff(scaled, base) <= tol<T>(50, s) * x.norm() / gap);
    }
  }
  // Rank 2 in a 6×9 matrix: two singular values 1, the rest 0, and Q·Qᵀ the projector on X's range.
  const synthetic syn = with_singular_values(6, 9, {3.0, 0.5, 0, 0, 0, 0}, 17);
  const MatD q = run_polar<T>(syn.x);
  const Eigen::VectorXd sv = singular_values(q);
  CHECK(sv(0) == Approx(1.0).margin(50 * eps<T>()));
  CHECK(sv(1) == Approx(1.0).margin(50 * eps<T>()));
  CHECK(sv.tail(4).maxCoeff() <= 50 * eps<T>());
  const MatD u2 = syn.u.leftCols(2), v2 = syn.v.leftCols(2);
  CHECK(max_abs_diff(q, u2 * v2.transpose()) <= 100 * eps<T>());
}

// With the finite check off, an SVD that fails on a NaN or Inf input must not leave
// the previous call's answer (or uninitialized memory) as the "polar factor". Every output entry is NaN,
// on a plan's first call and after a finite call alike.
TEMPLATE_TEST_CASE("exact polar of a NaN or Inf input with the finite check off is NaN, never a stale answer",
                   "[polar]", float, double) {
  using T = TestType;
  for (const shape s : property_shapes(4)) {
    for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
      INFO("shape " << to_string(s) << ", bad entry " << bad);
      orthopt::exact_polar<T, backend_under_test> polar(s.rows, s.cols, make_backend(1), /*check_finite=*/false);
      Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 31)).cast<T>();
      Mat<T> q(s.rows, s.cols);
      const auto all_nan = [&] { return q.array().isNaN().all(); };
      Mat<T> poisoned = x;
      poisoned(s.rows / 2, s.cols / 3) = static_cast<T>(bad);
      q.setConstant(T(7));
      polar(orthopt::make_view(poisoned), orthopt::make_view(q));  // the plan's first call
      CHECK(all_nan());
      polar(orthopt::make_view(x), orthopt::make_view(q));         // a finite call: a real answer
      REQUIRE(orthogonality_error(q.template cast<double>()) <= tol<T>(50, s));
      polar(orthopt::make_view(poisoned), orthopt::make_view(q));  // then the bad input again
      CHECK(all_nan());
    }
  }
}
