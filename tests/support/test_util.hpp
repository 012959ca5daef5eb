// Test helpers: seeded random matrices, float64 references, tolerances derived from the scalar type.
#pragma once

#include <Eigen/Dense>
#include <orthopt/eigen.hpp>
#if defined(ORTHOPT_TEST_BLAS)
#include <orthopt/blas.hpp>
#endif
#if defined(ORTHOPT_TEST_CUDA_HOST)
// The CUDA backend on its host emulation (tests/CMakeLists.txt: the thrust_host tests): "device" memory
// is host memory there, so the tests hand it the same host views as the CPU backends.
#include <orthopt/cuda/backend.hpp>
#include <orthopt/cuda/svd.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace testing {

/// The backend the tests run on: the Eigen backend, or the BLAS backend when a test executable is
/// built a second time with ORTHOPT_TEST_BLAS (tests/CMakeLists.txt: the *_blas tests), or the CUDA
/// backend's host emulation with ORTHOPT_TEST_CUDA_HOST (the *_thrust_host tests).
#if defined(ORTHOPT_TEST_BLAS)
using backend_under_test = orthopt::blas_backend;
#elif defined(ORTHOPT_TEST_CUDA_HOST)
using backend_under_test = orthopt::cuda_backend;
#else
using backend_under_test = orthopt::eigen_backend;
#endif

/// Whether the backend under test runs a batch's products together (different rounding from one by one).
inline constexpr bool batches_products = orthopt::detail::runs_batched_products<backend_under_test>;

/// A backend handle for a test that varies the CPU backends' thread count; the CUDA backend has none.
inline backend_under_test make_backend([[maybe_unused]] int threads) {
#if defined(ORTHOPT_TEST_CUDA_HOST)
  return backend_under_test{};
#else
  return backend_under_test(threads);
#endif
}

/// The update rules on the backend under test, as the rule tests use them.
template <class T>
using Muon = orthopt::muon<T, backend_under_test>;
template <class T>
using AdaMuon = orthopt::adamuon<T, backend_under_test>;
template <class T>
using Namo = orthopt::namo<T, backend_under_test>;
template <class T>
using NamoD = orthopt::namo_d<T, backend_under_test>;
template <class T>
using AdamW = orthopt::adamw<T, backend_under_test>;

using orthopt::index_t;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using MatRM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct shape {
  index_t rows, cols;
};
inline std::string to_string(shape s) { return std::to_string(s.rows) + "x" + std::to_string(s.cols); }

/// The shapes every property runs on: square, tall, wide, 1×n, n×1, odd sizes, plus seeded random ones.
inline std::vector<shape> property_shapes(int random_count = 6, std::uint64_t seed = 20261122) {
  std::vector<shape> s = {{1, 1}, {1, 9}, {9, 1}, {2, 2}, {16, 16}, {33, 33}, {17, 40},
                          {40, 17}, {1, 64}, {64, 1}, {63, 127}, {96, 48}};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> side(2, 90);
  for (int i = 0; i < random_count; ++i) s.push_back({side(rng), side(rng)});
  return s;
}

/// A deterministic seed from a test's inputs, so each shape gets its own reproducible data.
inline std::uint64_t seed_of(shape s, std::uint64_t salt = 0) {
  return 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(s.rows * 7919 + s.cols + 1) + salt;
}

inline MatD gaussian(index_t rows, index_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  MatD m(rows, cols);
  for (index_t j = 0; j < cols; ++j)
    for (index_t i = 0; i < rows; ++i) m(i, j) = n(rng);
  return m;
}

/// A random orthogonal n×n matrix (QR of a Gaussian, signs fixed so it is Haar-distributed).
inline MatD random_orthogonal(index_t n, std::uint64_t seed) {
  const MatD g = gaussian(n, n, seed);
  Eigen::HouseholderQR<MatD> qr(g);
  MatD q = qr.householderQ();
  const MatD r = qr.matrixQR();
  for (index_t j = 0; j < n; ++j)
    if (r(j, j) < 0) q.col(j) *= -1.0;
  return q;
}

/// U·diag(sigma)·Vᵀ with random orthogonal U (rows×k) and V (cols×k), k = min(rows, cols).
struct synthetic {
  MatD x, u, v;
  std::vector<double> sigma;
};
inline synthetic with_singular_values(index_t rows, index_t cols, const std::vector<double>& sigma, std::uint64_t seed) {
  const index_t k = std::min(rows, cols);
  synthetic s;
  s.u = random_orthogonal(rows, seed).leftCols(k);
  s.v = random_orthogonal(cols, seed + 1).leftCols(k);
  s.sigma = sigma;
  MatD d = MatD::Zero(k, k);
  for (index_t i = 0; i < k; ++i) d(i, i) = sigma[static_cast<std::size_t>(i)];
  s.x = s.u * d * s.v.transpose();
  return s;
}

/// Singular values spread log-uniformly over [lo, hi].
inline std::vector<double> spread(index_t k, double lo, double hi, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  std::vector<double> s(static_cast<std::size_t>(k));
  for (auto& v : s) v = std::exp(u(rng));
  std::sort(s.begin(), s.end(), std::greater<>());
  return s;
}

/// The float64 polar factor U·Vᵀ from a thin SVD.
inline MatD svd_polar(const MatD& x) {
  Eigen::JacobiSVD<MatD> svd(x, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU() * svd.matrixV().transpose();
}

inline Eigen::VectorXd singular_values(const MatD& x) {
  return Eigen::JacobiSVD<MatD>(x).singularValues();
}

/// ‖QᵀQ − I‖_max for tall Q, ‖QQᵀ − I‖_max for wide Q.
inline double orthogonality_error(const MatD& q) {
  const MatD g = q.rows() >= q.cols() ? MatD(q.transpose() * q) : MatD(q * q.transpose());
  return (g - MatD::Identity(g.rows(), g.cols())).cwiseAbs().maxCoeff();
}

inline double max_abs_diff(const MatD& a, const MatD& b) { return (a - b).cwiseAbs().maxCoeff(); }

/// Unit roundoff of T.
template <class T>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

/// A tolerance of `factor` units of T's epsilon, growing like √n with the matrix size (the growth of
/// rounding errors in inner products of length n).
template <class T>
double tol(double factor, shape s) {
  return factor * eps<T>() * std::sqrt(static_cast<double>(std::max(s.rows, s.cols)));
}

/// How much a schedule can amplify a rounding error: the largest product of |p_k'(σ_k)| along a
/// singular-value trajectory σ_{k+1} = p_k(σ_k), over starting values σ ∈ [0, 1] (normalized inputs) and
/// over the step at which the error enters. Tolerances for NS results are ε_T·√n times this gain.
inline double schedule_gain(const orthopt::ns_config& cfg) {
  double gain = 1.0;
  for (int start = 1; start <= cfg.steps; ++start) {
    for (int g = 0; g <= 2000; ++g) {
      double sigma = g / 2000.0, product = 1.0;
      for (int k = 1; k <= cfg.steps; ++k) {
        const auto& c = cfg.step(k);
        const double s2 = sigma * sigma;
        if (k >= start) product *= std::abs(c.a + 3 * c.b * s2 + 5 * c.c * s2 * s2);
        sigma = c.a * sigma + c.b * sigma * s2 + c.c * sigma * s2 * s2;
      }
      gain = std::max(gain, product);
    }
  }
  return gain;
}

/// Every named schedule (orthopt::ns_presets), each with its source's step count.
inline std::vector<orthopt::ns_config> all_presets() {
  namespace p = orthopt::ns_presets;
  return {p::keller(), p::polar_express(), p::polar_express_nanogpt(), p::quintic(),
          p::cans(),   p::aol(),           p::you(),                   p::cubic()};
}

/// How much the Gram algorithm (ns_algorithm::gram) can amplify a rounding error of its m×m Gram matrix,
/// beyond schedule_gain. On a segment of iterations s..e run on R (between restarts) the iterate is
/// X_e = q(R_s)·X_s with q(λ) = Π_k (a_k + b_k·λ_k + c_k·λ_k²), a polynomial in λ = σ², λ_{k+1} = λ_k·(…)².
/// R_s holds σ² with an absolute rounding error δ ≈ ε (‖R‖ ≤ 1), which moves σ_e by |q'(σ_s²)|·δ·σ_s;
/// the steps after the segment multiply that by their slopes |p_k'|. The sum over segments of the
/// largest such factor over σ ∈ (0, 1] is the gain. Keller, 5 steps: 35617 without a restart, 432 with
/// the default restart after step 2 (against a schedule_gain of 485): small singular values are where
/// working with σ² loses digits, and a restart refreshes R from X. (ns_config::gram_error_gain computes
/// the same quantity to choose the default restart; this is the tests' own transcription.)
inline double gram_gain(const orthopt::ns_config& cfg) {
  const int T = cfg.steps;
  const int restart = cfg.gram_restart_iteration();
  std::vector<std::pair<int, int>> segments;
  if (restart > 0 && restart < T) {
    segments = {{1, restart}, {restart + 1, T}};
  } else {
    segments = {{1, T}};
  }
  const auto p = [&](int k, double s) {
    const auto& c = cfg.step(k);
    return c.a * s + c.b * s * s * s + c.c * s * s * s * s * s;
  };
  const auto slope = [&](int k, double s) {
    const auto& c = cfg.step(k);
    return std::abs(c.a + 3 * c.b * s * s + 5 * c.c * s * s * s * s);
  };
  double total = 0.0;
  for (const auto& [first, last] : segments) {
    double best = 0.0;
    for (int g = 1; g <= 2000; ++g) {
      double sigma = g / 2000.0;
      for (int k = 1; k < first; ++k) sigma = p(k, sigma);
      // Forward-mode derivative of q with respect to λ along the segment.
      double lambda = sigma * sigma, d_lambda = 1.0, q = 1.0, d_q = 0.0;
      for (int k = first; k <= last; ++k) {
        const auto& c = cfg.step(k);
        const double f = c.a + c.b * lambda + c.c * lambda * lambda;
        const double d_f = (c.b + 2 * c.c * lambda) * d_lambda;
        d_q = d_q * f + q * d_f;
        q *= f;
        d_lambda = d_lambda * f * f + lambda * 2 * f * d_f;
        lambda *= f * f;
      }
      double sensitivity = std::abs(d_q) * sigma, s_end = q * sigma;
      for (int k = last + 1; k <= T; ++k) {
        sensitivity *= slope(k, s_end);
        s_end = p(k, s_end);
      }
      best = std::max(best, sensitivity);
    }
    total += best;
  }
  return total;
}

/// Run NS with the Eigen backend on a float64 matrix converted to T; returns the result in double.
template <class T>
MatD run_ns(const MatD& x, const orthopt::ns_config& cfg, backend_under_test be = backend_under_test{}) {
  Mat<T> xt = x.cast<T>();
  Mat<T> q(x.rows(), x.cols());
  orthopt::newton_schulz<T, backend_under_test> ns(x.rows(), x.cols(), cfg, be);
  ns(orthopt::make_view(xt), orthopt::make_view(q));
  return q.template cast<double>();
}

template <class T>
MatD run_polar(const MatD& x) {
  Mat<T> xt = x.cast<T>();
  Mat<T> q(x.rows(), x.cols());
  orthopt::exact_polar<T, backend_under_test> p(x.rows(), x.cols());
  p(orthopt::make_view(xt), orthopt::make_view(q));
  return q.template cast<double>();
}

/// A plain float64 transcription of the Newton–Schulz iteration, written from the sources' formulas and not
/// from the library: normalize (the reference formulas, with an absolute ε), then X ← aX + (bA + cA²)X
/// with A = XXᵀ on the wide orientation. orthopt's relative ε agrees with it exactly at ‖X‖_F = 1.
inline MatD reference_ns(MatD x, const orthopt::ns_config& cfg) {
  const bool tall = x.rows() > x.cols();
  if (tall) x.transposeInPlace();
  const double nrm = x.norm();
  bool first_aol = false;
  switch (cfg.normalization) {
    case orthopt::ns_normalization::frobenius: x /= (nrm + cfg.eps); break;
    case orthopt::ns_normalization::frobenius_clamp: x /= std::max(nrm, cfg.eps); break;
    case orthopt::ns_normalization::safety: x /= (nrm * (1.0 + cfg.safety) + cfg.eps); break;
    case orthopt::ns_normalization::aol: first_aol = true; break;
  }
  MatD a;
  if (first_aol) {
    a = x * x.transpose();
    Eigen::VectorXd s(a.rows());
    for (index_t i = 0; i < a.rows(); ++i) s(i) = 1.0 / std::sqrt(std::max(a.row(i).cwiseAbs().sum(), cfg.eps));
    x = s.asDiagonal() * x;
    a = s.asDiagonal() * a * s.asDiagonal();
  }
  for (int k = 1; k <= cfg.steps; ++k) {
    const auto& c = cfg.table[static_cast<std::size_t>(std::min<int>(k, static_cast<int>(cfg.table.size())) - 1)];
    if (!(first_aol && k == 1)) a = x * x.transpose();
    const MatD b = c.b * a + c.c * a * a;
    x = c.a * x + b * x;
  }
  if (tall) x.transposeInPlace();
  return x;
}

}  // namespace testing
