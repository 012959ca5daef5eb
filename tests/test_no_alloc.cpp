// No allocation inside an NS or exact-polar call once the plan exists, proven with a process-wide
// counting malloc (every thread, every allocator that ends in malloc).
#include <catch2/catch.hpp>

#include "counting_malloc.hpp"
#include "test_util.hpp"

using namespace testing;
using orthopt::eigen_backend;
namespace presets = orthopt::ns_presets;

TEST_CASE("the counting allocator sees allocations (the test can fail)", "[alloc]") {
  long seen = 0;
  {
    counting_malloc::scope s;
    auto* p = new std::vector<double>(1000);
    seen = s.allocations();
    delete p;
  }
  CHECK(seen >= 2);
}

TEMPLATE_TEST_CASE("a Newton–Schulz call allocates nothing after the plan is made", "[alloc]", float, double) {
  using T = TestType;
  eigen_backend be;  // default thread count: with OpenMP, the parallel products are exercised too
  // Sizes past Eigen's stack-allocation limit, where its own product expressions would allocate.
  for (const shape s : {shape{1, 7}, shape{40, 30}, shape{300, 700}, shape{700, 300}, shape{400, 400}}) {
    for (const auto& cfg : {presets::keller(), presets::aol(), presets::cubic()}) {
      Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 61)).cast<T>();
      Mat<T> q(s.rows, s.cols);
      MatRM<T> q_rm(s.rows, s.cols);
      orthopt::newton_schulz<T, eigen_backend> ns(s.rows, s.cols, cfg, be);
      ns(orthopt::make_view(x), orthopt::make_view(q));  // first call: thread pools and the like start up
      long n = -1;
      {
        counting_malloc::scope scope;
        ns(orthopt::make_view(x), orthopt::make_view(q));
        ns(orthopt::make_view(x), orthopt::make_view(q_rm));
        ns(orthopt::make_view(x), orthopt::make_view(x));
        n = scope.allocations();
      }
      INFO("schedule " << cfg.name << " shape " << to_string(s));
      CHECK(n == 0);
    }
  }
}

TEMPLATE_TEST_CASE("batched NS and the exact polar allocate nothing after setup", "[alloc]", float, double) {
  using T = TestType;
  eigen_backend be;
  const index_t E = 3, M = 64, N = 96;
  std::vector<T> in(static_cast<std::size_t>(E * M * N)), out(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<T>(std::cos(0.37 * double(i)));
  orthopt::newton_schulz<T, eigen_backend> ns(M, N, presets::polar_express(), be);
  ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
  for (const shape s : {shape{50, 20}, shape{20, 50}, shape{33, 33}}) {
    Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 62)).cast<T>();
    Mat<T> q(s.rows, s.cols);
    orthopt::exact_polar<T, eigen_backend> polar(s.rows, s.cols, be);
    polar(orthopt::make_view(x), orthopt::make_view(q));
    long n = -1;
    {
      counting_malloc::scope scope;
      polar(orthopt::make_view(x), orthopt::make_view(q));
      ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
      n = scope.allocations();
    }
    INFO("shape " << to_string(s));
    CHECK(n == 0);
  }
}
