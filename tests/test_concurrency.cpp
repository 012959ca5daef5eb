// Concurrency and determinism, as docs/threading-and-allocation.md allows: independent plans and
// optimizers (each with its own backend handle) stepping on several threads at once give the bits a
// sequential run gives, and the same inputs on the same thread count give the same bits every time.
// `tests/run.sh --tsan` builds this file under ThreadSanitizer without OpenMP (libgomp is not
// instrumented, so an OpenMP build reports its own barriers) and runs it; CI does too.
#include <catch2/catch.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <thread>
#include <type_traits>
#include <vector>

#include "optimizer_test_util.hpp"
#include "test_util.hpp"

using namespace testing;

namespace {

constexpr int thread_count = 3;
constexpr std::int64_t steps = 6;

/// A toy model (seeded) and its optimizer, stepped `steps` times; returns every byte a step writes.
template <class T>
std::vector<unsigned char> train(std::uint64_t seed) {
  toy_model<T> model(toy_variant{}, seed);
  auto opt = model.make_optimizer();
  model.run(opt, 0, steps);
  return snapshot(opt);
}

/// One NS plan and backend handle of its own, on a seeded random matrix; returns the output's bytes.
template <class T>
std::vector<unsigned char> orthogonalize(std::uint64_t seed, int backend_threads) {
  const index_t m = 48, n = 80;
  const auto x = random_values<T>(static_cast<std::size_t>(m * n), seed);
  std::vector<T> q(x.size());
  backend_under_test be = [backend_threads] {
    // The host backends take a thread count; the CUDA backend (host emulation here) has none.
    if constexpr (std::is_constructible_v<backend_under_test, int>) return backend_under_test(backend_threads);
    else return backend_under_test();
  }();
  orthopt::newton_schulz<T, backend_under_test> plan(m, n, orthopt::ns_presets::polar_express(), be);
  plan(orthopt::row_major_view(x.data(), m, n), orthopt::row_major_view(q.data(), m, n));
  std::vector<unsigned char> out(q.size() * sizeof(T));
  std::memcpy(out.data(), q.data(), out.size());
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("optimizers stepping on separate threads give the bits of sequential runs", "[concurrency]", float,
                   double) {
  using T = TestType;
  std::vector<std::vector<unsigned char>> sequential(thread_count), concurrent(thread_count);
  for (int t = 0; t < thread_count; ++t) sequential[t] = train<T>(11 + static_cast<std::uint64_t>(t));
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t) {
      threads.emplace_back([t, &concurrent] { concurrent[t] = train<T>(11 + static_cast<std::uint64_t>(t)); });
    }
    for (auto& th : threads) th.join();
  }
  for (int t = 0; t < thread_count; ++t) {
    INFO("thread " << t);
    CHECK(concurrent[t] == sequential[t]);
  }
  // Different seeds give different results (the comparison can fail).
  CHECK(sequential[0] != sequential[1]);
}

TEMPLATE_TEST_CASE("Newton-Schulz plans running on separate threads give the bits of sequential calls", "[concurrency]",
                   float, double) {
  using T = TestType;
  std::vector<std::vector<unsigned char>> sequential(thread_count), concurrent(thread_count);
  for (int t = 0; t < thread_count; ++t) sequential[t] = orthogonalize<T>(100 + static_cast<std::uint64_t>(t), 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([t, &concurrent] { concurrent[t] = orthogonalize<T>(100 + static_cast<std::uint64_t>(t), 1); });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < thread_count; ++t) CHECK(concurrent[t] == sequential[t]);
}

TEMPLATE_TEST_CASE("the same inputs on the same backend thread count give the same bits", "[determinism]", float,
                   double) {
  using T = TestType;
  // Every rule over N steps, twice; and a Newton–Schulz call at 1 and at 2 backend threads, twice each.
  // (Across thread counts the bits may differ: the order of partial sums changes; docs/threading-and-allocation.md.)
  CHECK(train<T>(5) == train<T>(5));
  for (const int threads : {1, 2}) {
    INFO("backend threads " << threads);
    CHECK(orthogonalize<T>(9, threads) == orthogonalize<T>(9, threads));
  }
}

namespace {

/// A model of many mid-sized matrices (each product of them large enough to split over two threads),
/// a batch of small ones, and AdamW tensors, stepped `steps` times by an optimizer whose rules all use
/// `handle`; `dominant` adds a matrix whose work exceeds the rest together. Returns the bytes of each
/// parameter (and its state) separately, in registration order.
template <class T>
std::vector<std::vector<unsigned char>> parallel_model(backend_under_test handle, bool parallel, bool dominant) {
  using B = backend_under_test;
  struct tensor {
    std::string name;
    index_t count, rows, cols;
    std::string group;
    std::vector<T> value, grad;
  };
  std::vector<tensor> tensors;
  const auto add = [&](std::string name, index_t count, index_t rows, index_t cols, std::string group) {
    tensors.push_back({std::move(name), count, rows, cols, std::move(group), {}, {}});
  };
  if (dominant) add("big", 1, 224, 256, "muon");
  add("a", 1, 96, 128, "muon");
  add("b", 1, 128, 96, "muon");
  add("c", 1, 112, 112, "adamuon");
  add("d", 1, 96, 112, "namo");
  add("e", 1, 112, 96, "namo_d");
  add("experts", 3, 40, 72, "muon");
  add("embedding", 1, 400, 96, "adamw");
  add("bias", 1, 1, 96, "adamw");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto n = static_cast<std::size_t>(tensors[i].count * tensors[i].rows * tensors[i].cols);
    tensors[i].value = random_values<T>(n, 900 + i, 0.5);
    tensors[i].grad.resize(n);
  }
  orthopt::optimizer<T, B> opt;
  opt.set_parallel_parameters(parallel);
  opt.add_group("muon", orthopt::muon<T, B>(orthopt::muon_presets::moonlight(), handle));
  opt.add_group("adamuon", orthopt::adamuon<T, B>(orthopt::adamuon_presets::code(), handle));
  opt.add_group("namo", orthopt::namo<T, B>(orthopt::namo_presets::code(), handle));
  opt.add_group("namo_d", orthopt::namo_d<T, B>(orthopt::namo_d_presets::code(), handle));
  opt.add_group("adamw", orthopt::adamw<T, B>(orthopt::adamw_presets::moonlight(), handle));
  const auto view = [](tensor& t, T* p) {
    return orthopt::batch_view<T>{orthopt::row_major_view(p, t.rows, t.cols), t.count, t.rows * t.cols};
  };
  for (auto& t : tensors) opt.add_param(t.name, *opt.find_group(t.group), view(t, t.value.data()));
  std::vector<orthopt::batch_view<const T>> grads;
  for (auto& t : tensors) grads.push_back(view(t, t.grad.data()).as_const_batch());
  for (std::int64_t s = 0; s < 3; ++s) {
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto g = random_values<T>(tensors[i].grad.size(), 0xBEEFull * static_cast<std::uint64_t>(s + 1) + i);
      std::copy(g.begin(), g.end(), tensors[i].grad.begin());
    }
    opt.step(grads);
  }
  std::vector<std::vector<unsigned char>> out;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    std::vector<unsigned char> bytes;
    append_bytes(bytes, opt.param_view(orthopt::param_id{i}));
    const auto s = state_bytes(opt, i);
    bytes.insert(bytes.end(), s.begin(), s.end());
    out.push_back(std::move(bytes));
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("a parallel optimizer step gives each parameter the bits a one-thread handle gives", "[concurrency]",
                   float, double) {
  using T = TestType;
  if constexpr (!orthopt::detail::runs_concurrent_lanes<backend_under_test>) {
    SUCCEED("this backend steps parameters in turn");
  } else {
    const auto one_thread = parallel_model<T>(make_backend(1), true, false);
    // Two lanes, several times (a race on shared scratch would show as differing bits).
    for (int round = 0; round < 3; ++round) {
      INFO("round " << round);
      const auto two_lanes = parallel_model<T>(make_backend(2), true, false);
      for (std::size_t i = 0; i < one_thread.size(); ++i) {
        INFO("parameter " << i);
        CHECK(two_lanes[i] == one_thread[i]);
      }
    }
  }
}

TEMPLATE_TEST_CASE("a parameter with most of a step's work runs alone on all threads", "[concurrency]", float, double) {
  using T = TestType;
  if constexpr (!orthopt::detail::runs_concurrent_lanes<backend_under_test>) {
    SUCCEED("this backend steps parameters in turn");
  } else {
    const auto one_thread = parallel_model<T>(make_backend(1), true, true);
    const auto in_turn = parallel_model<T>(make_backend(2), false, true);
    const auto parallel = parallel_model<T>(make_backend(2), true, true);
    // The dominant matrix (index 0) as the two-thread handle steps it; every other parameter in a lane.
    CHECK(parallel[0] == in_turn[0]);
    for (std::size_t i = 1; i < one_thread.size(); ++i) {
      INFO("parameter " << i);
      CHECK(parallel[i] == one_thread[i]);
    }
  }
}

TEMPLATE_TEST_CASE("a batch split over threads is whole when called from inside a parallel region", "[concurrency]",
                   float, double) {
  using T = TestType;
  // A plan whose batches go to its threads whole (small matrices, two threads), called by one thread of
  // an enclosing parallel region: the nested region gets one thread, which must still do every matrix.
  const index_t m = 24, n = 40, count = 5;
  const auto x = random_values<T>(static_cast<std::size_t>(count * m * n), 77);
  std::vector<T> expected(x.size()), nested(x.size(), T(0));
  orthopt::newton_schulz<T, backend_under_test> plan(m, n, orthopt::ns_presets::keller(), make_backend(2));
  const orthopt::batch_view<const T> in{orthopt::row_major_view(x.data(), m, n), count, m * n};
  plan(in, orthopt::batch_view<T>{orthopt::row_major_view(expected.data(), m, n), count, m * n});
#if defined(_OPENMP)
#pragma omp parallel num_threads(2)
#endif
  {
#if defined(_OPENMP)
    const bool caller = omp_get_thread_num() == 0;
#else
    const bool caller = true;
#endif
    if (caller) plan(in, orthopt::batch_view<T>{orthopt::row_major_view(nested.data(), m, n), count, m * n});
  }
  CHECK(nested == expected);
}
