// No allocation inside an NS or exact-polar call once the plan exists, proven with a process-wide
// counting malloc (every thread, every allocator that ends in malloc).
#include <catch2/catch.hpp>

#include <array>
#include <string>
#include <vector>

#include "counting_malloc.hpp"
#include <orthopt/distributed.hpp>
#include "optimizer_test_util.hpp"
#include "test_util.hpp"

using namespace testing;
namespace presets = orthopt::ns_presets;

namespace {
#if defined(ORTHOPT_TEST_CUDA_HOST)
// On the CUDA backend's host emulation the host heap belongs to the emulation's runtime (libgomp makes
// a team per parallel region, OpenBLAS under the emulated cuBLAS keeps buffers), not to orthopt. What a
// GPU step must not do is allocate device memory, and every orthopt buffer is device memory from
// cudaMalloc: that is what is counted here (cuda_backend::device_allocations()).
class allocation_scope {
 public:
  [[nodiscard]] long allocations() const {
    return static_cast<long>(orthopt::cuda_backend::device_allocations() - start_);
  }

 private:
  std::int64_t start_ = orthopt::cuda_backend::device_allocations();
};
/// Something that allocates, for the check that the counter can see it.
inline void allocate_something() { (void)backend_under_test{}.allocate<float>(16); }
#else
using allocation_scope = counting_malloc::scope;
inline void allocate_something() { delete new std::vector<double>(1000); }
#endif
}  // namespace

TEST_CASE("the counting allocator sees allocations (the test can fail)", "[alloc]") {
  long seen = 0;
  {
    allocation_scope s;
    allocate_something();
    seen = s.allocations();
  }
  CHECK(seen >= 2);
}

TEMPLATE_TEST_CASE("a Newton–Schulz call allocates nothing after the plan is made", "[alloc]", float, double) {
  using T = TestType;
  backend_under_test be;  // default thread count: with OpenMP, the parallel products are exercised too
  // Sizes past Eigen's stack-allocation limit, where its own product expressions would allocate.
  for (const shape s : {shape{1, 7}, shape{40, 30}, shape{300, 700}, shape{700, 300}, shape{400, 400}}) {
    for (const auto& cfg : {presets::keller(), presets::aol(), presets::cubic()}) {
      Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 61)).cast<T>();
      Mat<T> q(s.rows, s.cols);
      MatRM<T> q_rm(s.rows, s.cols);
      orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, cfg, be);
      ns(orthopt::make_view(x), orthopt::make_view(q));  // first call: thread pools and the like start up
      long n = -1;
      {
        allocation_scope scope;
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
  backend_under_test be;
  const index_t E = 3, M = 64, N = 96;
  std::vector<T> in(static_cast<std::size_t>(E * M * N)), out(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<T>(std::cos(0.37 * double(i)));
  orthopt::newton_schulz<T, backend_under_test> ns(M, N, presets::polar_express(), be);
  ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
  for (const shape s : {shape{50, 20}, shape{20, 50}, shape{33, 33}}) {
    Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 62)).cast<T>();
    Mat<T> q(s.rows, s.cols);
    orthopt::exact_polar<T, backend_under_test> polar(s.rows, s.cols, be);
    polar(orthopt::make_view(x), orthopt::make_view(q));
    long n = -1;
    {
      allocation_scope scope;
      polar(orthopt::make_view(x), orthopt::make_view(q));
      ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
      n = scope.allocations();
    }
    INFO("shape " << to_string(s));
    CHECK(n == 0);
  }
}

TEMPLATE_TEST_CASE("Gram NS calls and batches split over threads allocate nothing after setup", "[alloc][gram]",
                   float, double) {
  using T = TestType;
  const index_t E = 5, M = 24, N = 96;
  std::vector<T> in(static_cast<std::size_t>(E * M * N)), out(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<T>(std::cos(0.29 * double(i)));
  orthopt::ns_config gram = presets::keller();
  gram.algorithm = orthopt::ns_algorithm::gram;
  for (const auto& cfg : {presets::keller(), gram}) {
    // Two threads: with OpenMP the batch goes to the per-thread plans (batch_threads() == 2).
    orthopt::newton_schulz<T, backend_under_test> ns(M, N, cfg, make_backend(2));
    Mat<T> x = gaussian(300, 700, 63).cast<T>(), q(300, 700);
    orthopt::newton_schulz<T, backend_under_test> big(300, 700, cfg, make_backend(2));
    ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
    big(orthopt::make_view(x), orthopt::make_view(q));
    long n = -1;
    {
      allocation_scope scope;
      ns(orthopt::row_major_batch<const T>(in.data(), E, M, N), orthopt::row_major_batch(out.data(), E, M, N));
      ns(orthopt::make_view(x).block(0, 0, M, N), orthopt::make_view(q).block(0, 0, M, N));
      big(orthopt::make_view(x), orthopt::make_view(q));
      n = scope.allocations();
    }
    INFO(cfg.name << (cfg.algorithm == orthopt::ns_algorithm::gram ? " gram" : " standard") << ", batch threads "
                  << ns.batch_threads());
    CHECK(n == 0);
  }
}

TEMPLATE_TEST_CASE("an optimizer step allocates nothing after the first step", "[alloc][optimizer]", float, double) {
  using T = TestType;
  // Every rule, every kind of registration (split rows, N-D, stacked experts, vectors), schedules.
  toy_model<T> model;
  auto opt = model.make_optimizer();
  for (std::size_t i = 0; i < model.tensors.size(); ++i) {
    const orthopt::param_id p{i};
    opt.bind_gradient(p, opt.gradient_like(p, model.tensors[i].grad.data()));
  }
  model.fill_gradients(0);
  const auto grads = model.gradient_views();
  opt.step(grads);  // warm-up: thread pools and the like start up
  model.fill_gradients(1);
  long n = -1;
  {
    allocation_scope scope;
    opt.step(grads);
    opt.step();  // bound gradients
    opt.step(grads);
    n = scope.allocations();
  }
  CHECK(opt.steps_taken() == 4);
  CHECK(n == 0);
}

TEMPLATE_TEST_CASE("a parallel optimizer step allocates nothing after the first step", "[alloc][optimizer]", float,
                   double) {
  using T = TestType;
  using B = backend_under_test;
  if constexpr (!orthopt::detail::runs_concurrent_lanes<B>) {
    SUCCEED("this backend steps parameters in turn");
  } else {
    // Two-thread handles: the Muon matrices run in lanes (products of every shape on either lane), the
    // largest AdamW tensor too; a stacked batch beside them.
    const B handle = make_backend(2);
    orthopt::optimizer<T, B> opt;
    const auto muon_g = opt.add_group("muon", orthopt::muon<T, B>(orthopt::muon_presets::moonlight(), handle));
    const auto adamw_g = opt.add_group("adamw", orthopt::adamw<T, B>(orthopt::adamw_presets::moonlight(), handle));
    const std::vector<std::array<index_t, 3>> shapes = {{1, 96, 128}, {1, 128, 96}, {1, 112, 112}, {3, 40, 72}, {1, 80, 200}};
    std::vector<std::vector<T>> values, grads;
    std::vector<orthopt::batch_view<const T>> views;
    for (std::size_t i = 0; i <= shapes.size(); ++i) {
      const bool vector = i == shapes.size();
      const std::array<index_t, 3> s = vector ? std::array<index_t, 3>{1, 1, 300} : shapes[i];
      const auto n = static_cast<std::size_t>(s[0] * s[1] * s[2]);
      values.push_back(random_values<T>(n, 40 + i, 0.5));
      grads.push_back(random_values<T>(n, 80 + i));
      const auto view = [&](T* p) { return orthopt::batch_view<T>{orthopt::row_major_view(p, s[1], s[2]), s[0], s[1] * s[2]}; };
      opt.add_param(std::string(1, static_cast<char>('a' + i)), vector ? adamw_g : muon_g, view(values.back().data()));
      views.push_back(view(grads.back().data()).as_const_batch());
    }
    opt.step(views);  // warm-up: thread pools and the like start up
    long n = -1;
    {
      allocation_scope scope;
      for (int k = 0; k < 4; ++k) opt.step(views);
      n = scope.allocations();
    }
    CHECK(opt.steps_taken() == 5);
    CHECK(n == 0);
  }
}

#if !defined(ORTHOPT_TEST_CUDA_HOST)
TEMPLATE_TEST_CASE("a distributed optimizer step allocates nothing after the first step", "[alloc][distributed]", float,
                   double) {
  // Over the single-process communicator (MPI's own calls may allocate; orthopt's code around them must
  // not): the checks, the agreement and the owner's step. (On one rank averaging hands the host's
  // gradients on unchanged; the averaging path itself runs on two or more ranks, in tests/mpi.)
  using T = TestType;
  for (const auto averaging : {orthopt::gradient_averaging::none, orthopt::gradient_averaging::average}) {
    toy_model<T> model;
    orthopt::self_communicator comm;
    orthopt::distributed_optimizer<T, backend_under_test> opt(comm, {averaging, std::size_t{1} << 12});
    model.register_into(opt);
    for (std::size_t i = 0; i < model.tensors.size(); ++i) {
      const orthopt::param_id p{i};
      opt.bind_gradient(p, opt.gradient_like(p, model.tensors[i].grad.data()));
    }
    model.fill_gradients(0);
    const auto grads = model.gradient_views();
    opt.step(grads);
    model.fill_gradients(1);
    long n = -1;
    {
      allocation_scope scope;
      opt.step(grads);
      opt.step();
      n = scope.allocations();
    }
    CHECK(opt.steps_taken() == 3);
    CHECK(n == 0);
  }
}
#endif

TEMPLATE_TEST_CASE("steps that observe, commit and reobserve an adaptive budget allocate nothing", "[alloc][ns_budget]",
                   float, double) {
  using T = TestType;
  toy_model<T> model;
  auto opt = model.make_optimizer();
  orthopt::ns_budget_options o;
  o.start_step = 1;
  o.observe_window = 2;
  o.reobserve_every = 1;
  o.roles = {{"attn", false}};
  int commits = 0;
  o.on_commit = [&commits](const orthopt::ns_budget_report&) { ++commits; };
  opt.set_ns_budget(o);
  model.fill_gradients(0);
  const auto grads = model.gradient_views();
  opt.step(grads);  // warm-up
  long n = -1;
  {
    allocation_scope scope;
    for (int i = 0; i < 6; ++i) opt.step(grads);  // windows [1, 3) and [4, 6), commits at 3 and 6
    n = scope.allocations();
  }
  CHECK(commits == 2);
  CHECK(n == 0);
}

TEMPLATE_TEST_CASE("Newton-Schulz calls that record, observe or stop at a residual allocate nothing", "[alloc][ns]",
                   float, double) {
  using T = TestType;
  for (const shape s : {shape{40, 30}, shape{300, 700}}) {
    Mat<T> x = gaussian(s.rows, s.cols, seed_of(s, 65)).cast<T>(), q(s.rows, s.cols);
    orthopt::newton_schulz<T, backend_under_test> ns(s.rows, s.cols, presets::keller(8));
    ns(orthopt::make_view(x), orthopt::make_view(q));
    long n = -1;
    {
      allocation_scope scope;
      ns.record_residuals(true);
      ns(orthopt::make_view(x), orthopt::make_view(q));
      ns.observe(0.4);
      ns(orthopt::make_view(x), orthopt::make_view(q));
      (void)ns.read_observation();
      ns.reset_observation();
      ns.stop_observing();
      ns.stop_at_residual(0.4);
      ns(orthopt::make_view(x), orthopt::make_view(q));
      n = scope.allocations();
    }
    CHECK(ns.last_steps() < 8);
    CHECK(n == 0);
  }
}

TEMPLATE_TEST_CASE("an update-rule step allocates nothing after the state is made", "[alloc][rules]", float, double) {
  using T = TestType;
  backend_under_test be;
  // Rule objects of each kind (and the exact polar); every step runs its checks (shapes, finiteness,
  // options().validate()) too, which must not allocate either.
  orthopt::muon_options exact = orthopt::muon_presets::moonlight();
  exact.ortho.exact = true;
  orthopt::muon<T, backend_under_test> muon(orthopt::muon_presets::keller(), be), muon_exact(exact, be);
  orthopt::adamuon<T, backend_under_test> ada_paper(orthopt::adamuon_presets::paper(), be),
      ada_code(orthopt::adamuon_presets::code(), be), ada_v1(orthopt::adamuon_presets::v1(), be);
  orthopt::namo<T, backend_under_test> namo_code(orthopt::namo_presets::code(), be), namo_paper(orthopt::namo_presets::paper(), be);
  orthopt::namo_d<T, backend_under_test> namo_d(orthopt::namo_d_presets::code(), be);
  orthopt::adamw<T, backend_under_test> adamw(orthopt::adamw_presets::torch(), be), adamw_ml(orthopt::adamw_presets::moonlight(), be);
  const index_t E = 3;
  for (const shape s : {shape{1, 7}, shape{40, 30}, shape{300, 200}, shape{200, 300}}) {
    Mat<T> w = gaussian(s.rows, s.cols, seed_of(s, 63)).cast<T>();
    const MatRM<T> g = gaussian(s.rows, s.cols, seed_of(s, 64)).cast<T>();
    std::vector<T> wb(static_cast<std::size_t>(E * s.rows * s.cols)), gb(wb.size());
    for (std::size_t i = 0; i < wb.size(); ++i) {
      wb[i] = static_cast<T>(std::sin(0.11 * double(i)));
      gb[i] = static_cast<T>(std::cos(0.37 * double(i)));
    }
    const auto check_rule = [&](auto& rule, const char* label, bool batch) {
      auto st = rule.make_state(s.rows, s.cols);
      auto bst = rule.make_state(s.rows, s.cols, E);
      const auto step_all = [&] {
        rule.step(orthopt::make_view(w), orthopt::make_view(g), st);
        if (batch) {
          rule.step(orthopt::row_major_batch(wb.data(), E, s.rows, s.cols),
                    orthopt::row_major_batch<const T>(gb.data(), E, s.rows, s.cols), bst);
        }
      };
      step_all();  // warm-up: thread pools and the like start up
      long n = -1;
      {
        allocation_scope scope;
        for (int k = 0; k < 3; ++k) {
          rule.options().lr *= 0.9;  // a schedule writes options() between steps
          step_all();
        }
        n = scope.allocations();
      }
      INFO(label << " shape " << to_string(s));
      CHECK(n == 0);
      CHECK(st.step() == 4);
    };
    const bool small = s.rows * s.cols <= 1200;  // the exact polar's SVD is slow on the large shapes
    check_rule(muon, "muon keller", true);
    if (small) check_rule(muon_exact, "muon exact polar", true);
    check_rule(ada_paper, "adamuon paper", true);
    check_rule(ada_code, "adamuon code", true);
    check_rule(ada_v1, "adamuon v1", small);
    check_rule(namo_code, "namo code", true);
    check_rule(namo_paper, "namo paper", small);
    check_rule(namo_d, "namo_d code", true);
    check_rule(adamw, "adamw torch", true);
    check_rule(adamw_ml, "adamw moonlight", small);
  }
}
