// SPDX-License-Identifier: Apache-2.0
//
// Where a Newton–Schulz call's time goes, product by product, on the Eigen and the BLAS backend: the
// products of the Gram algorithm at 1024×4096 (the Gram matrix of X, the product with X, the 1024³
// products of its small iterations), summed the way gram_iterations runs them and set beside the whole
// call; and, for a 128×128 matrix on one thread (what each thread of a batch call runs), the three
// products of a standard iteration beside the whole call. Medians of repeated calls, in milliseconds.
// The products of the call are at the backend's own speed when the sum matches the call; what remains
// is then the number of products, not their speed.
//
//   cmake --build build --target ns_product_profile
//   OMP_NUM_THREADS=2 ./build/benchmarks/ns_product_profile gram     # the Gram call on 2 threads
//   OMP_NUM_THREADS=1 ./build/benchmarks/ns_product_profile small    # 128×128 on one thread (the BLAS's too)
#include <orthopt/eigen.hpp>
#if defined(ORTHOPT_PROFILE_BLAS)
#include <orthopt/blas.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using orthopt::index_t;
using orthopt::op;

template <class F>
double median_ms(F&& f, int reps) {
  f();  // warm-up: first-touch pages, the BLAS's own buffers
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    const auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<float> gaussian(index_t n, float scale, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = scale * d(rng);
  return v;
}

template <class Backend>
void gram_profile(const char* name) {
  const index_t m = 1024, n = 4096;
  std::vector<float> X = gaussian(m * n, 0.01f, 1), Y(m * n), A = gaussian(m * m, 0.01f, 2), B = gaussian(m * m, 0.01f, 3),
                     C(m * m);
  const auto x = orthopt::row_major_view<float>(X.data(), m, n);
  const auto y = orthopt::row_major_view<float>(Y.data(), m, n);
  const auto a = orthopt::row_major_view<float>(A.data(), m, m);
  const auto b = orthopt::row_major_view<float>(B.data(), m, m);
  const auto c = orthopt::row_major_view<float>(C.data(), m, m);
  Backend be;
  orthopt::prepare_gemm<float>(be, m, m, n);
  orthopt::prepare_gemm<float>(be, m, n, m);
  orthopt::prepare_gemm<float>(be, m, m, m);
  orthopt::prepare_syrk<float>(be, m, n);
  orthopt::prepare_syrk<float>(be, m, m);
  const int reps = 7;
  const double syrk_x = median_ms([&] { orthopt::syrk<float>(be, 1.f, x.as_const(), 0.f, c); }, reps);
  const double gemm_qx = median_ms([&] { orthopt::gemm<float>(be, 1.f, a.as_const(), op::none, x.as_const(), op::none, 0.f, y); }, reps);
  const double gemm_small = median_ms([&] { orthopt::gemm<float>(be, 1.f, a.as_const(), op::none, b.as_const(), op::none, 0.f, c); }, reps);
  const double syrk_small = median_ms([&] { orthopt::syrk<float>(be, 1.f, a.as_const(), 0.f, c); }, reps);
  const double symmetric_small =
      median_ms([&] { orthopt::gemm_symmetric_result<float>(be, 1.f, a.as_const(), a.as_const(), 0.f, c); }, reps);
  orthopt::ns_config cfg = orthopt::ns_presets::keller();
  cfg.algorithm = orthopt::ns_algorithm::gram;
  cfg.check_finite = false;
  orthopt::newton_schulz<float, Backend> gram(m, n, cfg, be);
  const double call = median_ms([&] { gram(x.as_const(), y); }, 5);
  // gram_iterations with T steps and one restart: R_0 = X·Xᵀ; every step P = a + b·R + c·R² (one syrk of
  // R); T − 2 products Q ← P·Q (the first step after each start copies P); T − 2 updates R ← R·P² (a syrk
  // of P and a symmetric product; none at the last step or at the restart); at the restart X ← Q·X and
  // R ← X·Xᵀ; at the end X ← Q·X.
  const int steps = cfg.steps;
  const double large = 2 * syrk_x + 2 * gemm_qx;
  const double small = steps * syrk_small + (steps - 2) * gemm_small + (steps - 2) * (syrk_small + symmetric_small);
  std::printf("%s, Gram Newton-Schulz, keller (%d steps, restart after %d), float 1024x4096\n", name, steps,
              cfg.gram_restart_iteration(static_cast<double>(std::numeric_limits<float>::epsilon()) / 2));
  std::printf("  syrk X*X^T (1024, k 4096)      %8.2f ms  x2 (R_0, the restart)\n", syrk_x);
  std::printf("  gemm Q*X (1024x1024x4096)      %8.2f ms  x2 (the restart, the end)\n", gemm_qx);
  std::printf("  syrk R*R^T (1024, k 1024)      %8.2f ms  x%d (R^2 of each step, P^2 of each update)\n", syrk_small,
              steps + steps - 2);
  std::printf("  gemm P*Q (1024^3)              %8.2f ms  x%d\n", gemm_small, steps - 2);
  std::printf("  symmetric R*P^2 (1024^3)       %8.2f ms  x%d\n", symmetric_small, steps - 2);
  std::printf("  sum of the products           %8.2f ms  (large %.2f + small %.2f)\n", large + small, large, small);
  std::printf("  the whole call                %8.2f ms\n", call);
}

template <class Backend>
void small_profile(const char* name) {
  const index_t m = 128;
  std::vector<float> X = gaussian(m * m, 0.05f, 4), Y(m * m), C(m * m);
  const auto x = orthopt::row_major_view<float>(X.data(), m, m);
  const auto y = orthopt::row_major_view<float>(Y.data(), m, m);
  const auto c = orthopt::row_major_view<float>(C.data(), m, m);
  Backend be(1);
  orthopt::prepare_gemm<float>(be, m, m, m);
  orthopt::prepare_syrk<float>(be, m, m);
  const int reps = 301;
  const double syrk = median_ms([&] { orthopt::syrk<float>(be, 1.f, x.as_const(), 0.f, c); }, reps);
  const double gemm = median_ms([&] { orthopt::gemm<float>(be, 1.f, c.as_const(), op::none, x.as_const(), op::none, 0.f, y); }, reps);
  orthopt::ns_config cfg = orthopt::ns_presets::keller();
  cfg.check_finite = false;
  orthopt::newton_schulz<float, Backend> ns(m, m, cfg, be);
  const double call = median_ms([&] { ns(x.as_const(), y); }, 101);
  std::printf("%s, handle of one thread, standard Newton-Schulz, keller (%d steps), float 128x128\n", name, cfg.steps);
  std::printf("  syrk (128, k 128)              %8.4f ms  x%d (A = X*X^T, A^2)\n", syrk, 2 * cfg.steps);
  std::printf("  gemm (128^3)                   %8.4f ms  x%d (B*X)\n", gemm, cfg.steps);
  std::printf("  sum of the products           %8.4f ms\n", cfg.steps * (2 * syrk + gemm));
  std::printf("  the whole call                %8.4f ms  (GEMM rate %.1f GFLOP/s)\n", call, 2.0 * m * m * m / (gemm * 1e6));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string part = argc > 1 ? argv[1] : "";
  if (part.empty() || part == "gram") {
    gram_profile<orthopt::eigen_backend>("Eigen backend");
#if defined(ORTHOPT_PROFILE_BLAS)
    gram_profile<orthopt::blas_backend>("BLAS backend");
#endif
  }
  if (part.empty() || part == "small") {
    small_profile<orthopt::eigen_backend>("Eigen backend");
#if defined(ORTHOPT_PROFILE_BLAS)
    small_profile<orthopt::blas_backend>("BLAS backend");
#endif
  }
#if defined(ORTHOPT_PROFILE_BLAS)
  const orthopt::blas_library_info blas = orthopt::blas_library();
  std::printf("BLAS: %s, core %s, %d threads\n", blas.config.c_str(), blas.core.c_str(), blas.threads);
#endif
  return 0;
}
