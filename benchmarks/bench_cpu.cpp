// SPDX-License-Identifier: Apache-2.0
//
// orthopt's CPU benchmark suite: every backend of this build (Eigen; BLAS when orthopt::blas exists) and
// its peers, in one binary, so that they are compared as ratios measured in the same run.
//
//   bench_cpu [google-benchmark flags] [--include_4096]
//   bench_cpu --check      no timing: every implementation of a benchmark computes the same result
//
// Families (benchmarks/run_cpu.sh runs a selection; docs/benchmarks.md holds its results):
//   NS/<schedule>/<algorithm>/<type>/<rows>x<cols>/<impl>    one Newton–Schulz call
//   BATCH/<schedule>/<type>/<E>x<rows>x<cols>/<impl>         a stack of E small matrices
//   POLAR/<type>/<rows>x<cols>/<impl>                        the exact polar factor (SVD)
//   STEP/<rule>/<type>/<rows>x<cols>/<impl>                  one full update-rule step on one matrix
//   OPT/<model>/<rule>/<type>/<impl>                         optimizer::step over a transformer's parameters
//   GEMM/<type>/<n>/<impl>                                   the GEMM ceiling of this run
// impl:
//   orthopt_eigen, orthopt_blas   orthopt on eigen_backend / blas_backend (plans made once, outside timing)
//   *_loop (BATCH)                the same plan called once per matrix
//   eigen                         the plain-Eigen iteration with 3 products per step (.noalias(), buffers
//                                 made once), as the peer baselines measure it
//   torch                         libtorch's iteration as the PyTorch Muon codes write it (out= forms);
//                                 built when libtorch is found (ORTHOPT_BENCH_TORCH)
//   blas (GEMM)                   cblas_?gemm of the linked BLAS; numpy is measured by bench_numpy.py
// algorithm: standard or gram (ns_config::algorithm); the peers run the standard iteration.
//
// Counters, both kIsIterationInvariantRate:
//   FLOP/s      the NAIVE count, the same for every implementation of a benchmark: per NS step
//               4m²n + 2m³ (m = min side, n = max side), so a ratio of FLOP/s is the inverse ratio of times
//   FLOP/s_eff  the flops the implementation performs: orthopt standard 3m²n + m³ per step (both symmetric
//               products as rank-k updates), Gram as counted by gram_flops(), plain Eigen and torch the
//               naive count; GEMM 2n³
// Time is wall clock (UseRealTime): products run on OpenMP threads.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <orthopt/eigen.hpp>
#if defined(ORTHOPT_BENCH_BLAS)
#include <orthopt/blas.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bench_common.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(ORTHOPT_BENCH_TORCH)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#endif

#if defined(ORTHOPT_BENCH_BLAS)
// OpenBLAS's own queries, when the linked BLAS is OpenBLAS (weak: another BLAS leaves them null).
extern "C" char* openblas_get_config(void) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));
#endif

namespace {

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct shape {
  Eigen::Index rows, cols;
  [[nodiscard]] std::string str() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};

/// The same Gaussian matrix for every type and implementation: float draws, column by column.
template <class T>
matrix<T> gaussian(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  matrix<T> g(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) g(i, j) = static_cast<T>(nd(rng));
  return g;
}

/// What one benchmark times, built once (inputs, plan, one warm-up call) and kept across repetitions.
struct fixture_base {
  virtual ~fixture_base() = default;
  virtual void call() = 0;
  /// The result of the last call, in double (for --check).
  [[nodiscard]] virtual matrix<double> result() const = 0;
};

/// The plain-Eigen peer: per step A = X·Xᵀ, B = b·A + c·A·A, X ← a·X + B·X, as three Eigen GEMMs into
/// preallocated matrices (the method of peers/bench_eigen.cpp, with the coefficient table and the
/// normalization of the given orthopt configuration).
template <class T>
class plain_eigen_ns {
 public:
  plain_eigen_ns(Eigen::Index rows, Eigen::Index cols, const orthopt::ns_config& cfg) : cfg_(cfg) {
    const Eigen::Index p = std::min(rows, cols), q = std::max(rows, cols);
    X_.resize(p, q);
    Y_.resize(p, q);
    A_.resize(p, p);
    B_.resize(p, p);
  }

  void run(const matrix<T>& G, matrix<T>& out) {
    const bool tall = G.rows() > G.cols();
    const double norm = static_cast<double>(G.norm());
    const double denom = cfg_.normalization == orthopt::ns_normalization::safety
                             ? norm * (1.0 + cfg_.safety) + cfg_.eps
                             : norm + cfg_.eps;
    const T s = static_cast<T>(1.0 / denom);
    if (tall) X_.noalias() = s * G.transpose();
    else X_.noalias() = s * G;
    for (int k = 1; k <= cfg_.steps; ++k) {
      const auto& co = cfg_.step(k);
      const T a = static_cast<T>(co.a), b = static_cast<T>(co.b), c = static_cast<T>(co.c);
      A_.noalias() = X_ * X_.transpose();
      B_ = b * A_;
      B_.noalias() += (c * A_) * A_;
      Y_ = a * X_;
      Y_.noalias() += B_ * X_;
      X_.swap(Y_);
    }
    if (tall) out = X_.transpose();
    else out = X_;
  }

 private:
  orthopt::ns_config cfg_;
  matrix<T> X_, Y_, A_, B_;
};

#if defined(ORTHOPT_BENCH_TORCH)
/// The libtorch peer: the iteration of the PyTorch Muon implementations, on row-major tensors.
template <class T>
struct torch_fixture final : fixture_base {
  orthopt::ns_config cfg;
  bool tall;
  at::Tensor G, Q, X, Y, A, B;
  torch_fixture(shape s, const orthopt::ns_config& config) : cfg(config), tall(s.rows > s.cols) {
    const Eigen::Index r = s.rows, c = s.cols;
    const auto dtype = c10::CppTypeToScalarType<T>::value;
    matrix<T> g = gaussian<T>(r, c, 0);  // the same input as the other implementations
    // Eigen is column-major: its memory read row-major is gᵀ; transpose back into a row-major copy.
    G = at::from_blob(g.data(), {c, r}, at::TensorOptions().dtype(dtype)).t().contiguous();
    Q = at::empty({r, c}, at::TensorOptions().dtype(dtype));
    const std::int64_t p = std::min(r, c), q = std::max(r, c);
    X = at::empty({p, q}, G.options());
    Y = at::empty({p, q}, G.options());
    A = at::empty({p, p}, G.options());
    B = at::empty({p, p}, G.options());
    call();
  }
  matrix<double> result() const override {
    const at::Tensor d = Q.to(at::kDouble).t().contiguous();  // column-major for Eigen
    return Eigen::Map<const matrix<double>>(d.data_ptr<double>(), Q.size(0), Q.size(1));
  }
  void call() override {
    const double norm = at::linalg_vector_norm(G).item<double>();
    const double denom = cfg.normalization == orthopt::ns_normalization::safety ? norm * (1.0 + cfg.safety) + cfg.eps
                                                                                : norm + cfg.eps;
    at::mul_out(X, tall ? G.t() : G, 1.0 / denom);
    for (int k = 1; k <= cfg.steps; ++k) {
      const auto& co = cfg.step(k);
      at::mm_out(A, X, X.t());
      at::addmm_out(B, A, A, A, co.b, co.c);  // B = b·A + c·A·A
      at::addmm_out(Y, X, B, X, co.a, 1.0);   // Y = a·X + B·X
      std::swap(X, Y);
    }
    Q.copy_(tall ? X.t() : X);
    benchmark::DoNotOptimize(Q.data_ptr());
    benchmark::ClobberMemory();
  }
};
#endif


// ---------------------------------------------------------------------------------------------------
// Flop counts
// ---------------------------------------------------------------------------------------------------
double naive_step_flops(double m, double n) { return 4.0 * m * m * n + 2.0 * m * m * m; }

/// orthopt's standard iteration: X·Xᵀ and A·A as rank-k updates, P·X as a gemm (A·A skipped when c = 0).
double standard_flops(const orthopt::ns_config& cfg, double m, double n) {
  double f = 0.0;
  for (int k = 1; k <= cfg.steps; ++k) f += 3.0 * m * m * n + (cfg.step(k).c != 0.0 ? m * m * m : 0.0);
  return f;
}

/// Gram Newton–Schulz as orthopt runs it (newton_schulz.hpp, gram_iterations): R_0 = X·Xᵀ (m²n); per
/// step R² (m³), Q ← P·Q (2m³, none on the first step after a start); between steps either R ← R·P²
/// (P² as a rank-k update m³, the symmetric product m³) or a restart (Q·X 2m²n, X·Xᵀ m²n); Q·X at the end.
double gram_flops(const orthopt::ns_config& cfg, double m, double n) {
  const int restart = cfg.gram_restart_iteration();
  double f = m * m * n;
  bool fresh = true;
  for (int k = 1; k <= cfg.steps; ++k) {
    if (cfg.step(k).c != 0.0) f += m * m * m;
    if (!fresh) f += 2.0 * m * m * m;
    fresh = false;
    if (k == cfg.steps) break;
    if (k == restart) {
      f += 3.0 * m * m * n;
      fresh = true;
    } else {
      f += 2.0 * m * m * m;
    }
  }
  return f + (fresh ? 0.0 : 2.0 * m * m * n);
}

// ---------------------------------------------------------------------------------------------------
// Newton–Schulz
// ---------------------------------------------------------------------------------------------------
/// orthopt's call on row-major G and Q, the order numpy's and torch's peers hold theirs in (and the
/// order of a rule's direction), so that a step and its NS call, and orthopt and its peers, run the same
/// products.
template <class T, class Backend>
struct orthopt_ns final : fixture_base {
  row_matrix<T> G, Q;
  orthopt::newton_schulz<T, Backend> ns;
  orthopt_ns(shape s, const orthopt::ns_config& cfg) : G(gaussian<T>(s.rows, s.cols, 0)), Q(s.rows, s.cols), ns(s.rows, s.cols, cfg) {
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return Q.template cast<double>(); }
  void call() override {
    ns(orthopt::make_view(G), orthopt::make_view(Q));
    benchmark::DoNotOptimize(Q.data());
    benchmark::ClobberMemory();
  }
};

template <class T>
struct eigen_ns final : fixture_base {
  matrix<T> G, Q;
  plain_eigen_ns<T> ns;
  eigen_ns(shape s, const orthopt::ns_config& cfg) : G(gaussian<T>(s.rows, s.cols, 0)), Q(s.rows, s.cols), ns(s.rows, s.cols, cfg) {
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return Q.template cast<double>(); }
  void call() override {
    ns.run(G, Q);
    benchmark::DoNotOptimize(Q.data());
    benchmark::ClobberMemory();
  }
};

// ---------------------------------------------------------------------------------------------------
// Stacks of small matrices: one batch call against one call per matrix
// ---------------------------------------------------------------------------------------------------
template <class T>
struct stack_data {
  Eigen::Index count, rows, cols;
  std::vector<T> in, out;
  stack_data(Eigen::Index e, shape s) : count(e), rows(s.rows), cols(s.cols) {
    const matrix<T> g = gaussian<T>(e * s.rows, s.cols, 0);  // matrix k: rows [k·r, (k+1)·r)
    in.resize(static_cast<std::size_t>(e * s.rows * s.cols));
    out.resize(in.size());
    for (Eigen::Index i = 0; i < e * s.rows; ++i)
      for (Eigen::Index j = 0; j < s.cols; ++j) in[static_cast<std::size_t>(i * s.cols + j)] = g(i, j);
  }
  [[nodiscard]] T* item(std::vector<T>& v, Eigen::Index k) { return v.data() + k * rows * cols; }
  [[nodiscard]] matrix<double> result() const {
    return Eigen::Map<const row_matrix<T>>(out.data(), count * rows, cols).template cast<double>();
  }
};

template <class T, class Backend>
struct orthopt_stack final : fixture_base {
  stack_data<T> d;
  orthopt::newton_schulz<T, Backend> ns;
  bool loop;
  orthopt_stack(Eigen::Index e, shape s, const orthopt::ns_config& cfg, bool one_by_one)
      : d(e, s), ns(s.rows, s.cols, cfg), loop(one_by_one) {
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return d.result(); }
  void call() override {
    if (loop) {
      for (Eigen::Index k = 0; k < d.count; ++k) {
        ns(orthopt::row_major_view<const T>(d.item(d.in, k), d.rows, d.cols), orthopt::row_major_view(d.item(d.out, k), d.rows, d.cols));
      }
    } else {
      ns(orthopt::row_major_batch<const T>(d.in.data(), d.count, d.rows, d.cols),
         orthopt::row_major_batch(d.out.data(), d.count, d.rows, d.cols));
    }
    benchmark::DoNotOptimize(d.out.data());
    benchmark::ClobberMemory();
  }
};

template <class T>
struct eigen_stack final : fixture_base {
  stack_data<T> d;
  plain_eigen_ns<T> ns;
  matrix<T> G, Q;
  eigen_stack(Eigen::Index e, shape s, const orthopt::ns_config& cfg) : d(e, s), ns(s.rows, s.cols, cfg), G(s.rows, s.cols), Q(s.rows, s.cols) {
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return d.result(); }
  void call() override {
    for (Eigen::Index k = 0; k < d.count; ++k) {
      G = Eigen::Map<const row_matrix<T>>(d.item(d.in, k), d.rows, d.cols);
      ns.run(G, Q);
      Eigen::Map<row_matrix<T>>(d.item(d.out, k), d.rows, d.cols) = Q;
    }
    benchmark::DoNotOptimize(d.out.data());
    benchmark::ClobberMemory();
  }
};

#if defined(ORTHOPT_BENCH_TORCH)
/// libtorch on the whole stack at once (bmm/baddbmm), as a batched PyTorch Muon would run it.
template <class T>
struct torch_stack final : fixture_base {
  stack_data<T> d;
  orthopt::ns_config cfg;
  at::Tensor G, X, Y, A, B, Q;
  torch_stack(Eigen::Index e, shape s, const orthopt::ns_config& config) : d(e, s), cfg(config) {
    const auto dtype = c10::CppTypeToScalarType<T>::value;
    G = at::from_blob(d.in.data(), {e, s.rows, s.cols}, at::TensorOptions().dtype(dtype));
    Q = at::from_blob(d.out.data(), {e, s.rows, s.cols}, at::TensorOptions().dtype(dtype));
    const std::int64_t p = std::min(s.rows, s.cols), q = std::max(s.rows, s.cols);
    X = at::empty({e, p, q}, G.options());
    Y = at::empty({e, p, q}, G.options());
    A = at::empty({e, p, p}, G.options());
    B = at::empty({e, p, p}, G.options());
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return d.result(); }
  void call() override {
    const bool tall = d.rows > d.cols;
    const at::Tensor norms = at::linalg_vector_norm(G, 2, {1, 2}, true) + cfg.eps;
    at::div_out(X, tall ? G.transpose(1, 2) : G, norms);
    for (int k = 1; k <= cfg.steps; ++k) {
      const auto& co = cfg.step(k);
      at::bmm_out(A, X, X.transpose(1, 2));
      at::baddbmm_out(B, A, A, A, co.b, co.c);
      at::baddbmm_out(Y, X, B, X, co.a, 1.0);
      std::swap(X, Y);
    }
    Q.copy_(tall ? X.transpose(1, 2) : X);
    benchmark::DoNotOptimize(d.out.data());
    benchmark::ClobberMemory();
  }
};
#endif

// ---------------------------------------------------------------------------------------------------
// Exact polar, rule steps, optimizer steps, GEMM
// ---------------------------------------------------------------------------------------------------
template <class T, class Backend>
struct orthopt_polar final : fixture_base {
  matrix<T> G, Q;
  orthopt::exact_polar<T, Backend> polar;
  explicit orthopt_polar(shape s) : G(gaussian<T>(s.rows, s.cols, 0)), Q(s.rows, s.cols), polar(s.rows, s.cols) { call(); }
  [[nodiscard]] matrix<double> result() const override { return Q.template cast<double>(); }
  void call() override {
    polar(orthopt::make_view(G), orthopt::make_view(Q));
    benchmark::DoNotOptimize(Q.data());
    benchmark::ClobberMemory();
  }
};

/// One step of a rule on one matrix: W and G fixed Gaussian (W scaled like an initialization), the state
/// made once. The first call (in the constructor) is the one --check compares. W and G are row-major, as
/// torch's, numpy's and the state's own tensors are; `Storage` = matrix<T> gives column-major ones (a
/// parameter stored in the other order than its state).
template <class T, class Backend, class Rule, class Storage = row_matrix<T>>
struct orthopt_step final : fixture_base {
  Storage W, G;
  Rule rule;
  orthopt::param_state<T, Backend> state;
  template <class Options>
  orthopt_step(shape s, Options options)
      : W(gaussian<T>(s.rows, s.cols, 1) * T(0.02)), G(gaussian<T>(s.rows, s.cols, 2)), rule(std::move(options)),
        state(rule.make_state(s.rows, s.cols)) {
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return W.template cast<double>(); }
  void call() override {
    rule.step(orthopt::make_view(W), orthopt::make_view(G).as_const(), state);
    benchmark::DoNotOptimize(W.data());
    benchmark::ClobberMemory();
  }
};

/// The GPT-style model of bench_common.hpp, stepped by orthopt's optimizer. Parameters and gradients
/// are row-major, as torch's and the state's are. `checked`: check_finite in both groups (the default);
/// off, the same step without the value guard, to measure its cost on a whole step.
template <class T, class Backend, class Rule>
struct orthopt_optimizer final : fixture_base {
  struct tensor {
    std::string name;
    Eigen::Index rows, cols, blocks;  // blocks: row blocks registered as one batch parameter
    row_matrix<T> value, grad;
  };
  std::vector<tensor> tensors;
  orthopt::optimizer<T, Backend> opt;
  std::vector<orthopt::batch_view<const T>> grads;
  double naive_flops = 0.0, effective_flops = 0.0;

  template <class Options>
  orthopt_optimizer(Options options, bool checked) {
    for (const bench::gpt_tensor& spec : bench::gpt_tensors()) {
      const auto seed = static_cast<unsigned>(tensors.size());
      tensors.push_back({spec.name, spec.rows, spec.cols, spec.blocks, gaussian<T>(spec.rows, spec.cols, seed) * T(0.02),
                         gaussian<T>(spec.rows, spec.cols, 1000u + seed)});
    }
    options.check_finite = checked;
    orthopt::adamw_options adamw_options = orthopt::adamw_presets::torch();
    adamw_options.check_finite = checked;
    const auto rule_group = opt.add_group("rule", Rule(std::move(options)));
    const auto adamw_group = opt.add_group("adamw", orthopt::adamw<T, Backend>(adamw_options));
    const orthopt::param_router router(rule_group, adamw_group);
    for (auto& t : tensors) {
      const auto w = orthopt::split_rows(orthopt::make_view(t.value), t.blocks);
      const auto id = opt.add_param(t.name, w, router);
      grads.push_back(orthopt::split_rows(orthopt::make_view(t.grad).as_const(), t.blocks));
      if (opt.group_of(id) == rule_group) {
        const double r = static_cast<double>(t.rows / t.blocks), c = static_cast<double>(t.cols);
        const double m = std::min(r, c), n = std::max(r, c);
        naive_flops += static_cast<double>(t.blocks) * 5 * naive_step_flops(m, n);
        effective_flops += static_cast<double>(t.blocks) * standard_flops(orthopt::ns_presets::keller(), m, n);
      }
    }
    call();
  }
  /// The tensor result() returns: 4 is layers.0.attn.qkv (the rule's), 0 embed_tokens (AdamW's).
  std::size_t reported = 4;
  [[nodiscard]] matrix<double> result() const override { return tensors[reported].value.template cast<double>(); }
  void call() override {
    opt.step(grads);
    benchmark::DoNotOptimize(tensors.front().value.data());
    benchmark::ClobberMemory();
  }
};

template <class T>
struct eigen_gemm final : fixture_base {
  matrix<T> A, B, C;
  explicit eigen_gemm(Eigen::Index n) : A(gaussian<T>(n, n, 3)), B(gaussian<T>(n, n, 4)), C(n, n) { call(); }
  [[nodiscard]] matrix<double> result() const override { return C.template cast<double>(); }
  void call() override {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
};

#if defined(ORTHOPT_BENCH_BLAS)
template <class T>
struct blas_gemm final : fixture_base {
  matrix<T> A, B, C;
  explicit blas_gemm(Eigen::Index n) : A(gaussian<T>(n, n, 3)), B(gaussian<T>(n, n, 4)), C(n, n) { call(); }
  [[nodiscard]] matrix<double> result() const override { return C.template cast<double>(); }
  void call() override {
    const int n = static_cast<int>(A.rows());
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
    } else {
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, A.data(), n, B.data(), n, 0.0, C.data(), n);
    }
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
};
#endif

#if defined(ORTHOPT_BENCH_TORCH)
template <class T>
struct torch_gemm final : fixture_base {
  at::Tensor A, B, C;
  explicit torch_gemm(Eigen::Index n) {
    const auto dtype = c10::CppTypeToScalarType<T>::value;
    matrix<T> a = gaussian<T>(n, n, 3), b = gaussian<T>(n, n, 4);
    A = at::from_blob(a.data(), {n, n}, at::TensorOptions().dtype(dtype)).clone();
    B = at::from_blob(b.data(), {n, n}, at::TensorOptions().dtype(dtype)).clone();
    C = at::empty({n, n}, A.options());
    call();
  }
  [[nodiscard]] matrix<double> result() const override { return matrix<double>::Zero(1, 1); }
  void call() override {
    at::mm_out(C, A, B);
    benchmark::DoNotOptimize(C.data_ptr());
    benchmark::ClobberMemory();
  }
};
#endif

// ---------------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------------
using factory = std::function<std::unique_ptr<fixture_base>()>;

std::map<std::string, std::unique_ptr<fixture_base>>& fixtures() {
  static std::map<std::string, std::unique_ptr<fixture_base>> f;
  return f;
}

/// Registers `name`; the fixture is built on the benchmark's first run and kept. Calls estimated at
/// 0.25 s or more are timed one call per repetition; smaller ones use the min-time rule.
void add(const std::string& name, factory make, double naive, double effective, double call_seconds_estimate) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    auto& slot = fixtures()[name];
    if (!slot) slot = make();
    for (auto _ : state) slot->call();
    state.counters["FLOP/s"] = benchmark::Counter(naive, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
    state.counters["FLOP/s_eff"] =
        benchmark::Counter(effective, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  });
  b->UseRealTime()->Unit(benchmark::kMillisecond);
  if (call_seconds_estimate >= 0.25) b->Iterations(1);
}

/// A rough time for `flops` on 2 cores (100 GFLOP/s fp32, half that fp64), to pick the iteration rule.
template <class T>
double estimate_seconds(double flops) {
  return flops / 100e9 * (sizeof(T) == 8 ? 2.0 : 1.0);
}

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "f32" : "f64";
}

const std::vector<std::string> schedules = {"keller", "polar_express", "polar_express_nanogpt", "quintic",
                                            "cans",   "aol",           "you",                   "cubic"};

const std::vector<std::pair<std::string, std::string>> backends = {
    {"orthopt_eigen", "eigen"},
#if defined(ORTHOPT_BENCH_BLAS)
    {"orthopt_blas", "blas"},
#endif
};

template <class T>
std::unique_ptr<fixture_base> make_orthopt_ns(const std::string& backend, shape s, const orthopt::ns_config& cfg) {
#if defined(ORTHOPT_BENCH_BLAS)
  if (backend == "blas") return std::make_unique<orthopt_ns<T, orthopt::blas_backend>>(s, cfg);
#endif
  (void)backend;
  return std::make_unique<orthopt_ns<T, orthopt::eigen_backend>>(s, cfg);
}

template <class T>
void register_ns(const std::string& schedule, shape s) {
  const double m = static_cast<double>(std::min(s.rows, s.cols)), n = static_cast<double>(std::max(s.rows, s.cols));
  const std::string base = "NS/" + schedule + "/";
  const std::string tail = std::string("/") + type_name<T>() + "/" + s.str() + "/";
  for (const auto algorithm : {orthopt::ns_algorithm::standard, orthopt::ns_algorithm::gram}) {
    orthopt::ns_config cfg = orthopt::ns_presets::by_name(schedule);
    cfg.algorithm = algorithm;
    const bool gram = algorithm == orthopt::ns_algorithm::gram;
    const double naive = cfg.steps * naive_step_flops(m, n);
    const double effective = gram ? gram_flops(cfg, m, n) : standard_flops(cfg, m, n);
    for (const auto& [impl, backend] : backends) {
      add(base + (gram ? "gram" : "standard") + tail + impl, [=] { return make_orthopt_ns<T>(backend, s, cfg); }, naive,
          effective, estimate_seconds<T>(naive));
    }
  }
  const orthopt::ns_config cfg = orthopt::ns_presets::by_name(schedule);
  const double naive = cfg.steps * naive_step_flops(m, n);
  add(base + "standard" + tail + "eigen", [=] { return std::make_unique<eigen_ns<T>>(s, cfg); }, naive, naive,
      estimate_seconds<T>(naive));
#if defined(ORTHOPT_BENCH_TORCH)
  add(base + "standard" + tail + "torch", [=] { return std::make_unique<torch_fixture<T>>(s, cfg); }, naive, naive,
      estimate_seconds<T>(naive));
#endif
}

template <class T>
void register_stack(Eigen::Index count, shape s) {
  const orthopt::ns_config cfg = orthopt::ns_presets::keller();
  const double m = static_cast<double>(std::min(s.rows, s.cols)), n = static_cast<double>(std::max(s.rows, s.cols));
  const double naive = static_cast<double>(count) * cfg.steps * naive_step_flops(m, n);
  const double effective = static_cast<double>(count) * standard_flops(cfg, m, n);
  const std::string base = std::string("BATCH/keller/") + type_name<T>() + "/" + std::to_string(count) + "x" + s.str() + "/";
  for (const auto& [impl, backend] : backends) {
    for (const bool loop : {false, true}) {
      add(base + impl + (loop ? "_loop" : ""),
          [=, backend = backend]() -> std::unique_ptr<fixture_base> {
#if defined(ORTHOPT_BENCH_BLAS)
            if (backend == "blas") return std::make_unique<orthopt_stack<T, orthopt::blas_backend>>(count, s, cfg, loop);
#endif
            return std::make_unique<orthopt_stack<T, orthopt::eigen_backend>>(count, s, cfg, loop);
          },
          naive, effective, estimate_seconds<T>(naive));
    }
  }
  add(base + "eigen_loop", [=] { return std::make_unique<eigen_stack<T>>(count, s, cfg); }, naive, naive,
      estimate_seconds<T>(naive));
#if defined(ORTHOPT_BENCH_TORCH)
  add(base + "torch", [=] { return std::make_unique<torch_stack<T>>(count, s, cfg); }, naive, naive,
      estimate_seconds<T>(naive));
#endif
}

template <class T, class Backend, class Rule, class Options, class Storage = row_matrix<T>>
std::unique_ptr<fixture_base> make_rule_step(shape s, Options o, bool checked) {
  o.check_finite = checked;
  return std::make_unique<orthopt_step<T, Backend, Rule, Storage>>(s, std::move(o));
}

/// A benchmark's rule name and whether its value guard is on: "<rule>_unchecked" names the rule with
/// check_finite off.
struct guarded_rule {
  std::string rule;
  bool checked;
  explicit guarded_rule(const std::string& name) : rule(name), checked(!name.ends_with("_unchecked")) {
    if (!checked) rule.resize(name.size() - std::string_view("_unchecked").size());
  }
};

// "<rule>_unchecked": the same step with check_finite off, to measure the value guard's cost (it reads
// the gradient, and the state unless the previous checked step left it within its limits, before
// writing anything).
template <class T, class Backend>
std::unique_ptr<fixture_base> make_step(const std::string& name, shape s) {
  const auto [rule, checked] = guarded_rule(name);
  if (rule == "muon") return make_rule_step<T, Backend, orthopt::muon<T, Backend>>(s, orthopt::muon_presets::moonlight(), checked);
  if (rule == "adamuon") return make_rule_step<T, Backend, orthopt::adamuon<T, Backend>>(s, orthopt::adamuon_presets::code(), checked);
  if (rule == "namo") return make_rule_step<T, Backend, orthopt::namo<T, Backend>>(s, orthopt::namo_presets::code(), checked);
  if (rule == "namo_d") return make_rule_step<T, Backend, orthopt::namo_d<T, Backend>>(s, orthopt::namo_d_presets::code(), checked);
  if (rule == "adamw_column_major") {  // the parameter and its gradient column-major, the state row-major
    return make_rule_step<T, Backend, orthopt::adamw<T, Backend>, orthopt::adamw_options, matrix<T>>(
        s, orthopt::adamw_presets::torch(), checked);
  }
  return make_rule_step<T, Backend, orthopt::adamw<T, Backend>>(s, orthopt::adamw_presets::torch(), checked);
}

template <class T>
void register_steps(shape s) {
  const double m = static_cast<double>(std::min(s.rows, s.cols)), n = static_cast<double>(std::max(s.rows, s.cols));
  const orthopt::ns_config keller = orthopt::ns_presets::keller();  // every rule's preset here runs keller, 5 steps
  for (const std::string rule : {"muon", "adamuon", "namo", "namo_d", "adamw", "muon_unchecked", "adamuon_unchecked",
                                  "namo_unchecked", "namo_d_unchecked", "adamw_unchecked", "adamw_column_major"}) {
    const bool ns = !rule.starts_with("adamw");
    const double naive = ns ? keller.steps * naive_step_flops(m, n) : 0.0;
    const double effective = ns ? standard_flops(keller, m, n) : 0.0;
    for (const auto& [impl, backend] : backends) {
      add("STEP/" + rule + "/" + type_name<T>() + "/" + s.str() + "/" + impl,
          [=, backend = backend]() -> std::unique_ptr<fixture_base> {
#if defined(ORTHOPT_BENCH_BLAS)
            if (backend == "blas") return make_step<T, orthopt::blas_backend>(rule, s);
#endif
            return make_step<T, orthopt::eigen_backend>(rule, s);
          },
          naive, effective, estimate_seconds<T>(naive));
    }
  }
}

// "<rule>_unchecked": the same optimizer with check_finite off in both groups (the guard's cost on a
// whole step, the Newton–Schulz rule's parameters and AdamW's together).
template <class T, class Backend>
std::unique_ptr<fixture_base> make_optimizer_fixture(const std::string& name) {
  const auto [rule, checked] = guarded_rule(name);
  if (rule == "muon") {
    return std::make_unique<orthopt_optimizer<T, Backend, orthopt::muon<T, Backend>>>(orthopt::muon_presets::moonlight(), checked);
  }
  return std::make_unique<orthopt_optimizer<T, Backend, orthopt::adamuon<T, Backend>>>(orthopt::adamuon_presets::code(), checked);
}

template <class T>
void register_optimizer() {
  // Per step: 4 layers × (3 + 1 blocks of 512², 2048×512 and 512×2048), keller, 5 NS steps.
  const double d = bench::gpt_dims::d;
  const double naive = bench::gpt_dims::layers * 5 * (4 * naive_step_flops(d, d) + 2 * naive_step_flops(d, 4 * d));
  const double effective = bench::gpt_dims::layers * (4 * standard_flops(orthopt::ns_presets::keller(), d, d) +
                                                2 * standard_flops(orthopt::ns_presets::keller(), d, 4 * d));
  for (const std::string rule : {"muon", "adamuon", "muon_unchecked", "adamuon_unchecked"}) {
    for (const auto& [impl, backend] : backends) {
      add("OPT/gpt_d512_l4/" + rule + "/" + type_name<T>() + "/" + impl,
          [=, backend = backend]() -> std::unique_ptr<fixture_base> {
#if defined(ORTHOPT_BENCH_BLAS)
            if (backend == "blas") return make_optimizer_fixture<T, orthopt::blas_backend>(rule);
#endif
            return make_optimizer_fixture<T, orthopt::eigen_backend>(rule);
          },
          naive, effective, estimate_seconds<T>(naive));
    }
  }
}

template <class T>
void register_polar(shape s) {
  // Flop count of a thin SVD is not the point here: the counters carry the NS count of the same shape,
  // so FLOP/s compares directly with the NS benchmarks' (time ratio = inverse FLOP/s ratio).
  const double m = static_cast<double>(std::min(s.rows, s.cols)), n = static_cast<double>(std::max(s.rows, s.cols));
  const double naive = 5 * naive_step_flops(m, n);
  for (const auto& [impl, backend] : backends) {
    add(std::string("POLAR/") + type_name<T>() + "/" + s.str() + "/" + impl,
        [=, backend = backend]() -> std::unique_ptr<fixture_base> {
#if defined(ORTHOPT_BENCH_BLAS)
          if (backend == "blas") return std::make_unique<orthopt_polar<T, orthopt::blas_backend>>(s);
#endif
          return std::make_unique<orthopt_polar<T, orthopt::eigen_backend>>(s);
        },
        naive, naive, 1.0);
  }
}

template <class T>
void register_gemm(Eigen::Index n) {
  const double flops = 2.0 * double(n) * double(n) * double(n);
  const std::string base = std::string("GEMM/") + type_name<T>() + "/" + std::to_string(n) + "/";
  add(base + "eigen", [=] { return std::make_unique<eigen_gemm<T>>(n); }, flops, flops, estimate_seconds<T>(flops));
#if defined(ORTHOPT_BENCH_BLAS)
  add(base + "blas", [=] { return std::make_unique<blas_gemm<T>>(n); }, flops, flops, estimate_seconds<T>(flops));
#endif
#if defined(ORTHOPT_BENCH_TORCH)
  add(base + "torch", [=] { return std::make_unique<torch_gemm<T>>(n); }, flops, flops, estimate_seconds<T>(flops));
#endif
}

// ---------------------------------------------------------------------------------------------------
// --check: the implementations of one benchmark compute the same result
// ---------------------------------------------------------------------------------------------------
bool compare(const std::string& what, const fixture_base& reference, const fixture_base& other, double bound) {
  const matrix<double> a = reference.result(), b = other.result();
  const double worst = (a.rows() == b.rows() && a.cols() == b.cols()) ? (a - b).cwiseAbs().maxCoeff() : INFINITY;
  const bool pass = worst <= bound;  // NaN fails
  std::printf("check %-58s max |difference| = %.3g (bound %.0e) %s\n", what.c_str(), worst, bound, pass ? "ok" : "FAILED");
  return pass;
}

template <class T>
bool check_all() {
  // Bounds: NS amplifies rounding by the schedule's gain (about 500 for keller), so float results of
  // different product orders differ by up to ~1e-4; a wrong coefficient or transposition gives O(1).
  const double bound = sizeof(T) == 4 ? 5e-3 : 1e-9;
  bool ok = true;
  for (const shape s : {shape{256, 256}, shape{96, 300}, shape{300, 96}, shape{64, 512}}) {
    for (const std::string schedule : {"keller", "polar_express", "aol"}) {
      const orthopt::ns_config cfg = orthopt::ns_presets::by_name(schedule);
      orthopt::ns_config gram = cfg;
      gram.algorithm = orthopt::ns_algorithm::gram;
      const auto reference = make_orthopt_ns<T>("eigen", s, cfg);
      const std::string tag = "NS/" + schedule + "/" + type_name<T>() + "/" + s.str() + "/";
      for (const auto& [impl, backend] : backends) {
        if (backend != "eigen") ok = compare(tag + impl, *reference, *make_orthopt_ns<T>(backend, s, cfg), bound) && ok;
        ok = compare(tag + impl + " gram", *reference, *make_orthopt_ns<T>(backend, s, gram), 10 * bound) && ok;
      }
      if (schedule != "aol") {
        // The peers implement the sources' Frobenius and safety normalizations with an absolute ε:
        // orthopt's absolute_eps mode is the same formula.
        orthopt::ns_config absolute = cfg;
        absolute.absolute_eps = true;
        const auto as_sources = make_orthopt_ns<T>("eigen", s, absolute);
        ok = compare(tag + "eigen", *as_sources, eigen_ns<T>(s, cfg), bound) && ok;
#if defined(ORTHOPT_BENCH_TORCH)
        ok = compare(tag + "torch", *as_sources, torch_fixture<T>(s, cfg), bound) && ok;
#endif
      }
    }
  }
  const orthopt::ns_config keller = orthopt::ns_presets::keller();
  const shape small{64, 96};
  const orthopt_stack<T, orthopt::eigen_backend> stack_reference(6, small, keller, true);
  const std::string stack_tag = std::string("BATCH/keller/") + type_name<T>() + "/6x64x96/";
  ok = compare(stack_tag + "orthopt_eigen", stack_reference, orthopt_stack<T, orthopt::eigen_backend>(6, small, keller, false), bound) && ok;
#if defined(ORTHOPT_BENCH_BLAS)
  ok = compare(stack_tag + "orthopt_blas", stack_reference, orthopt_stack<T, orthopt::blas_backend>(6, small, keller, false), bound) && ok;
#endif
  orthopt::ns_config keller_absolute = keller;
  keller_absolute.absolute_eps = true;
  const orthopt_stack<T, orthopt::eigen_backend> stack_as_sources(6, small, keller_absolute, true);
  ok = compare(stack_tag + "eigen_loop", stack_as_sources, eigen_stack<T>(6, small, keller), bound) && ok;
#if defined(ORTHOPT_BENCH_TORCH)
  ok = compare(stack_tag + "torch", stack_as_sources, torch_stack<T>(6, small, keller), bound) && ok;
#endif
#if defined(ORTHOPT_BENCH_BLAS)
  // One step moves W by lr·(an RMS-0.2-ish update): the backends agree to that times the NS bound.
  for (const std::string rule : {"muon", "adamuon", "namo", "namo_d", "adamw"}) {
    const auto a = make_step<T, orthopt::eigen_backend>(rule, {96, 160});
    const auto b = make_step<T, orthopt::blas_backend>(rule, {96, 160});
    ok = compare("STEP/" + rule + "/" + type_name<T>() + "/96x160 blas vs eigen", *a, *b, bound) && ok;
  }
  {  // The storage order of the parameter changes how a pass walks memory, not a single value.
    const auto a = make_step<T, orthopt::eigen_backend>("adamw", {96, 160});
    const auto b = make_step<T, orthopt::eigen_backend>("adamw_column_major", {96, 160});
    ok = compare(std::string("STEP/adamw/") + type_name<T>() + "/96x160 column-major vs row-major", *a, *b, 0.0) && ok;
  }
  if (sizeof(T) == 4) {
    // Muon: AdaMuon's first step is sign(O) elementwise (V̂ = O²), where rounding may flip entries near 0.
    const auto a = make_optimizer_fixture<T, orthopt::eigen_backend>("muon");
    const auto b = make_optimizer_fixture<T, orthopt::blas_backend>("muon");
    ok = compare("OPT/gpt_d512_l4/muon/f32 blas vs eigen (attn.qkv)", *a, *b, bound) && ok;
  }
#endif
  if (sizeof(T) == 4) {
    // The value guard reads; it changes no value. Two steps: the second check reads AdamW's gradient
    // only (the first step left its state known to be within the limits).
    using fixture = orthopt_optimizer<T, orthopt::eigen_backend, orthopt::adamuon<T, orthopt::eigen_backend>>;
    fixture a(orthopt::adamuon_presets::code(), true), b(orthopt::adamuon_presets::code(), false);
    a.call();
    b.call();
    ok = compare("OPT/gpt_d512_l4/adamuon/f32 checked vs unchecked, 2 steps (attn.qkv)", a, b, 0.0) && ok;
    a.reported = b.reported = 0;
    ok = compare("OPT/gpt_d512_l4/adamuon/f32 checked vs unchecked, 2 steps (embed_tokens)", a, b, 0.0) && ok;
  }
  return ok;
}

std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("g++ ") + __VERSION__;
#else
  return "unknown";
#endif
}

/// The first line of /proc/cpuinfo that starts with `key`, after the colon ("" if none).
std::string cpuinfo(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? "" : line.substr(colon + 2);
    }
  }
  return "";
}

/// The SIMD-relevant flags of this CPU (avx2, fma, avx512*), space separated.
std::string isa_flags() {
  const std::string flags = " " + cpuinfo("flags") + " ";
  std::string out;
  std::size_t pos = 0;
  while ((pos = flags.find(' ', pos)) != std::string::npos) {
    const std::size_t end = flags.find(' ', pos + 1);
    if (end == std::string::npos) break;
    const std::string f = flags.substr(pos + 1, end - pos - 1);
    if (f == "avx" || f == "avx2" || f == "fma" || f.rfind("avx512", 0) == 0 || f == "amx_bf16") out += (out.empty() ? "" : " ") + f;
    pos = end;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool include_4096 = false, check_only = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--include_4096") == 0) include_4096 = true;
    else if (std::strcmp(argv[i], "--check") == 0) check_only = true;
    else args.push_back(argv[i]);
  }
  int n_args = static_cast<int>(args.size());
  benchmark::Initialize(&n_args, args.data());
  if (benchmark::ReportUnrecognizedArguments(n_args, args.data())) return 1;
#if defined(ORTHOPT_BENCH_TORCH) && defined(_OPENMP)
  at::set_num_threads(omp_get_max_threads());
#endif
  if (check_only) {
    const bool ok = check_all<float>() & check_all<double>();
    std::printf(ok ? "every implementation agrees\n" : "SOME IMPLEMENTATIONS DISAGREE\n");
    return ok ? 0 : 1;
  }

  // The shapes the targets name; 4096² (seconds per call) only with --include_4096.
  std::vector<shape> shapes = {{256, 256}, {768, 768}, {768, 3072}, {3072, 768}, {1024, 4096}, {2048, 2048}};
  if (include_4096) shapes.push_back({4096, 4096});
  for (const std::string& schedule : schedules) {
    for (const shape& s : shapes) {
      register_ns<float>(schedule, s);
      register_ns<double>(schedule, s);
    }
  }
  register_stack<float>(64, {128, 128});
  register_stack<double>(64, {128, 128});
  for (const shape& s : {shape{768, 768}, shape{1024, 4096}}) {
    register_steps<float>(s);
    register_steps<double>(s);
    register_polar<float>(s);
    register_polar<double>(s);
  }
  register_optimizer<float>();
  register_optimizer<double>();
  register_gemm<float>(4096);
  register_gemm<double>(4096);

  benchmark::AddCustomContext("cpu_model", cpuinfo("model name"));
  benchmark::AddCustomContext("cpu_isa", isa_flags());
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                                                   "." + std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
#if defined(_OPENMP)
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(omp_get_max_threads()));
#else
  benchmark::AddCustomContext("openmp_max_threads", "none (built without OpenMP)");
#endif
  {
    const char* env = std::getenv("OMP_NUM_THREADS");
    benchmark::AddCustomContext("OMP_NUM_THREADS", env ? env : "(unset)");
  }
  benchmark::AddCustomContext("orthopt_eigen_backend_threads", std::to_string(orthopt::eigen_backend{}.threads()));
#if defined(ORTHOPT_BENCH_BLAS)
  benchmark::AddCustomContext("blas", openblas_get_config ? openblas_get_config() : "a CBLAS other than OpenBLAS");
  benchmark::AddCustomContext("blas_threads", openblas_get_num_threads ? std::to_string(openblas_get_num_threads()) : "unknown");
  benchmark::AddCustomContext("orthopt_blas_backend_threads", std::to_string(orthopt::blas_backend{}.threads()));
#else
  benchmark::AddCustomContext("blas", "not built (orthopt::blas not found)");
#endif
  benchmark::AddCustomContext("orthopt_version", ORTHOPT_VERSION_STRING);
#if defined(ORTHOPT_BENCH_TORCH)
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
#else
  benchmark::AddCustomContext("torch_version", "not built (libtorch not found)");
#endif
  benchmark::AddCustomContext("compiler", compiler_string());
#if defined(ORTHOPT_BENCH_NATIVE)
  benchmark::AddCustomContext("orthopt_bench_native", "ON (-O3 -march=native)");
#else
  benchmark::AddCustomContext("orthopt_bench_native", "OFF (portable ISA)");
#endif
  benchmark::AddCustomContext("flop_convention",
                              "FLOP/s: naive 4m^2n + 2m^3 per NS step (m = min side); FLOP/s_eff: the implementation's own count");

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  fixtures().clear();
  return 0;
}
