// SPDX-License-Identifier: Apache-2.0
//
// Where should the Gram Newton–Schulz algorithm restart? For every preset schedule and every restart
// position a float plan can run, the float32 Gram result's largest entry error against a float64
// reference (the standard iteration in double), divided by the float32 standard iteration's error on
// the same input, over a set of inputs: wide, tall and square shapes, Gaussian and with singular values
// spread log-uniformly up to condition 10⁶, three seeds each. Prints, per preset, the worst and the
// median ratio for each position, marks the position ns_config::gram_restart_iteration derives (the
// default), and ends with the position of the smallest worst ratio beside the default's figures.
//
//   cmake --build build --target gram_restart_study && ./build/benchmarks/gram_restart_study
#include <orthopt/eigen.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
using backend = orthopt::eigen_backend;

MatD gaussian(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& rng) {
  std::normal_distribution<double> n;
  MatD x(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) x(i, j) = n(rng);
  return x;
}

/// U·diag(σ)·Vᵀ with σ log-uniform in [1/condition, 1] and Haar-random U, V (condition 0: Gaussian).
MatD input(Eigen::Index rows, Eigen::Index cols, double condition, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  if (condition == 0.0) return gaussian(rows, cols, rng);
  const Eigen::Index k = std::min(rows, cols);
  const MatD u = Eigen::HouseholderQR<MatD>(gaussian(rows, k, rng)).householderQ() * MatD::Identity(rows, k);
  const MatD v = Eigen::HouseholderQR<MatD>(gaussian(cols, k, rng)).householderQ() * MatD::Identity(cols, k);
  std::uniform_real_distribution<double> e(-std::log(condition), 0.0);
  Eigen::VectorXd sigma(k);
  for (Eigen::Index i = 0; i < k; ++i) sigma(i) = std::exp(e(rng));
  return u * sigma.asDiagonal() * v.transpose();
}

template <class T>
MatD run(const MatD& x, const orthopt::ns_config& cfg) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  Mat in = x.cast<T>(), out(x.rows(), x.cols());
  orthopt::newton_schulz<T, backend> ns(x.rows(), x.cols(), cfg);
  ns(orthopt::make_view(in), orthopt::make_view(out));
  return out.template cast<double>();
}

struct case_input {
  MatD x, reference;
  double standard_error;
};

}  // namespace

int main() {
  using orthopt::ns_config;
  namespace presets = orthopt::ns_presets;
  const double u = std::numeric_limits<float>::epsilon() / 2;
  struct shape {
    Eigen::Index rows, cols;
  };
  const std::vector<shape> shapes = {{32, 32}, {96, 96}, {24, 96}, {96, 24}, {40, 200}, {200, 40},
                                     {64, 256}, {256, 64}, {128, 512}, {512, 128}};
  const std::vector<double> conditions = {0.0, 1e1, 1e2, 1e4, 1e6};
  std::printf("| schedule | restart after | worst Gram/standard | median | |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const std::string name : {"keller", "polar_express", "polar_express_nanogpt", "quintic", "cans", "aol", "you", "cubic"}) {
    ns_config base = presets::by_name(name);
    base.algorithm = orthopt::ns_algorithm::standard;
    std::vector<case_input> cases;
    for (const shape s : shapes)
      for (const double c : conditions)
        for (std::uint64_t seed = 1; seed <= 3; ++seed) {
          case_input k;
          k.x = input(s.rows, s.cols, c, seed * 7919 + static_cast<std::uint64_t>(s.rows * 131 + s.cols));
          k.x /= k.x.norm();
          k.reference = run<double>(k.x, base);
          k.standard_error = (run<float>(k.x, base) - k.reference).cwiseAbs().maxCoeff();
          cases.push_back(std::move(k));
        }
    ns_config gram = base;
    gram.algorithm = orthopt::ns_algorithm::gram;
    gram.gram_restart_after = -1;
    const int derived = gram.gram_restart_iteration(u);
    int best = -1;
    double best_worst = 0.0, derived_worst = 0.0, derived_median = 0.0;
    for (int r = 0; r < base.steps; ++r) {
      if (gram.gram_rounding_growth(r) * u >= 1.0) continue;  // a float plan refuses it
      gram.gram_restart_after = r;
      std::vector<double> ratios;
      for (const case_input& k : cases) {
        const double e = (run<float>(k.x, gram) - k.reference).cwiseAbs().maxCoeff();
        ratios.push_back(e / k.standard_error);
      }
      std::sort(ratios.begin(), ratios.end());
      const double worst = ratios.back(), median = ratios[ratios.size() / 2];
      if (best < 0 || worst < best_worst) best = r, best_worst = worst;
      if (r == derived) derived_worst = worst, derived_median = median;
      std::printf("| %s | %d | %.2f | %.2f | %s |\n", name.c_str(), r, worst, median, r == derived ? "default" : "");
    }
    std::printf("| **%s** | **default %d** (smallest worst: %d, %.2f) | **%.2f** | **%.2f** | |\n", name.c_str(), derived,
                best, best_worst, derived_worst, derived_median);
    std::fflush(stdout);
  }
}
