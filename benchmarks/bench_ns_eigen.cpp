// SPDX-License-Identifier: Apache-2.0
//
// Newton–Schulz on the CPU: orthopt's Eigen backend against its peers, in one binary so that they can
// be compared as ratios measured in the same run.
//
//   bench_ns_eigen [google-benchmark flags] [--ns_include_4096]
//   bench_ns_eigen --ns_check     no timing: checks that every implementation computes the same matrix
//
// Benchmarks are named NS/<schedule>/<type>/<rows>x<cols>/<impl>, impl one of
//   orthopt  orthopt::newton_schulz<T, orthopt::eigen_backend> (a plan per shape, made once)
//   orthopt_blas  the same plan on orthopt::blas_backend (products on the linked CBLAS); built when
//            orthopt::blas exists (ORTHOPT_BENCH_BLAS)
//   eigen    the plain-Eigen NS with 3 products per iteration, as the peer baselines measure it (Eigen 3.4
//            GEMM through operator*, preallocated matrices, .noalias()), written again here for any
//            scalar type and coefficient table.
//   torch    libtorch's NS as the Muon codebases write it (A = X·Xᵀ, B = b·A + c·A·A, X ← a·X + B·X),
//            with the out= forms of mm/addmm into preallocated tensors; built when the benchmarks'
//            configure finds libtorch (ORTHOPT_BENCH_TORCH), with libtorch's intra-op threads set to
//            the OpenMP thread count.
// The 4096x4096 shape (many seconds per call) is registered only with --ns_include_4096.
//
// FLOP convention (the "FLOP/s" counter): the NAIVE count of one NS call with T = 5 steps,
//   T·(4·m²·n + 2·m³),  m = min(rows, cols), n = max(rows, cols)
// (X·Xᵀ: 2m²n, A·A: 2m³, B·X: 2m²n per step), for BOTH implementations, even though orthopt computes
// the two symmetric products as rank-k updates (about 3m²n + m³ real flops per step). With one count
// for both, a ratio of FLOP/s equals the inverse ratio of times. Normalization, the finite check and
// the element-wise passes are not counted.
//
// Time is wall-clock (UseRealTime): both implementations run their products on OpenMP threads.
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
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(ORTHOPT_BENCH_TORCH)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#endif

namespace {

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

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

/// The naive flop count of one NS call (see the convention at the top of the file).
double ns_naive_flops(Eigen::Index rows, Eigen::Index cols, int steps) {
  const double m = static_cast<double>(std::min(rows, cols)), n = static_cast<double>(std::max(rows, cols));
  return steps * (4.0 * m * m * n + 2.0 * m * m * m);
}

/// Everything one benchmark needs, built once (input, output, plan, one warm-up call that touches every
/// buffer) and kept across repetitions, so repetitions time calls only.
struct fixture_base {
  virtual ~fixture_base() = default;
  virtual void call() = 0;
  /// Element (i, j) of the last result, for --ns_check.
  virtual double result(Eigen::Index i, Eigen::Index j) const = 0;
};

template <class T, class Backend = orthopt::eigen_backend>
struct orthopt_fixture final : fixture_base {
  matrix<T> G, Q;
  orthopt::newton_schulz<T, Backend> ns;
  orthopt_fixture(Eigen::Index r, Eigen::Index c, const orthopt::ns_config& cfg)
      : G(gaussian<T>(r, c, 0)), Q(r, c), ns(r, c, cfg) {
    call();
  }
  double result(Eigen::Index i, Eigen::Index j) const override { return static_cast<double>(Q(i, j)); }
  void call() override {
    ns(orthopt::make_view(G), orthopt::make_view(Q));
    benchmark::DoNotOptimize(Q.data());
    benchmark::ClobberMemory();
  }
};

template <class T>
struct eigen_fixture final : fixture_base {
  matrix<T> G, Q;
  plain_eigen_ns<T> ns;
  eigen_fixture(Eigen::Index r, Eigen::Index c, const orthopt::ns_config& cfg)
      : G(gaussian<T>(r, c, 0)), Q(r, c), ns(r, c, cfg) {
    call();
  }
  double result(Eigen::Index i, Eigen::Index j) const override { return static_cast<double>(Q(i, j)); }
  void call() override {
    ns.run(G, Q);
    benchmark::DoNotOptimize(Q.data());
    benchmark::ClobberMemory();
  }
};

#if defined(ORTHOPT_BENCH_TORCH)
/// The libtorch peer: the iteration of the PyTorch Muon implementations, on row-major tensors.
template <class T>
struct torch_fixture final : fixture_base {
  orthopt::ns_config cfg;
  bool tall;
  at::Tensor G, Q, X, Y, A, B;
  torch_fixture(Eigen::Index r, Eigen::Index c, const orthopt::ns_config& config) : cfg(config), tall(r > c) {
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
  double result(Eigen::Index i, Eigen::Index j) const override { return Q[i][j].item<double>(); }
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

std::map<std::string, std::unique_ptr<fixture_base>>& fixtures() {
  static std::map<std::string, std::unique_ptr<fixture_base>> f;
  return f;
}

struct shape {
  Eigen::Index rows, cols;
};

// The shapes of the peer baselines (256², 768², 768×3072, 3072×768, 1024×4096, 2048²; 4096² on request).
const std::vector<shape> default_shapes = {{256, 256}, {768, 768}, {768, 3072}, {3072, 768}, {1024, 4096}, {2048, 2048}};
const shape huge_shape = {4096, 4096};

enum class impl { orthopt, orthopt_blas, eigen, torch };

const char* impl_name(impl which) {
  switch (which) {
    case impl::orthopt: return "orthopt";
    case impl::orthopt_blas: return "orthopt_blas";
    case impl::eigen: return "eigen";
    case impl::torch: return "torch";
  }
  return "?";
}

template <class T>
std::unique_ptr<fixture_base> make_fixture(impl which, shape s, const orthopt::ns_config& cfg) {
#if defined(ORTHOPT_BENCH_TORCH)
  if (which == impl::torch) return std::make_unique<torch_fixture<T>>(s.rows, s.cols, cfg);
#endif
#if defined(ORTHOPT_BENCH_BLAS)
  if (which == impl::orthopt_blas) return std::make_unique<orthopt_fixture<T, orthopt::blas_backend>>(s.rows, s.cols, cfg);
#endif
  if (which == impl::eigen) return std::make_unique<eigen_fixture<T>>(s.rows, s.cols, cfg);
  return std::make_unique<orthopt_fixture<T>>(s.rows, s.cols, cfg);
}

/// --ns_check: every implementation on the same input must give the same matrix, up to rounding
/// amplified by the iteration. Compares every 7th row and column against orthopt; returns false on a
/// difference no rounding explains (a wrong coefficient or transposition gives O(1) differences).
template <class T>
bool check_agreement(const std::string& schedule, const char* type_name, shape s, const std::vector<impl>& impls) {
  const orthopt::ns_config cfg = orthopt::ns_presets::by_name(schedule);
  const auto reference = make_fixture<T>(impl::orthopt, s, cfg);
  bool ok = true;
  for (impl which : impls) {
    if (which == impl::orthopt) continue;
    const auto other = make_fixture<T>(which, s, cfg);
    double worst = 0.0;
    for (Eigen::Index i = 0; i < s.rows; i += 7)
      for (Eigen::Index j = 0; j < s.cols; j += 7)
        worst = std::max(worst, std::abs(other->result(i, j) - reference->result(i, j)));
    const double bound = sizeof(T) == 4 ? 5e-2 : 1e-6;
    const bool pass = worst <= bound;  // NaN fails
    std::printf("check %s/%s/%lldx%lld: max |%s - orthopt| = %.3g (bound %.0e) %s\n", schedule.c_str(), type_name,
                static_cast<long long>(s.rows), static_cast<long long>(s.cols), impl_name(which), worst, bound,
                pass ? "ok" : "FAILED");
    ok = ok && pass;
  }
  return ok;
}

template <class T>
void register_ns(const std::string& schedule, const char* type_name, shape s, impl which) {
  const orthopt::ns_config cfg = orthopt::ns_presets::by_name(schedule);
  const std::string name = "NS/" + schedule + "/" + type_name + "/" + std::to_string(s.rows) + "x" +
                           std::to_string(s.cols) + "/" + impl_name(which);
  const double flops = ns_naive_flops(s.rows, s.cols, cfg.steps);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    auto& slot = fixtures()[name];
    if (!slot) slot = make_fixture<T>(which, s, cfg);
    for (auto _ : state) slot->call();
    state.counters["FLOP/s"] =
        benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
    state.counters["m"] = static_cast<double>(std::min(s.rows, s.cols));
    state.counters["n"] = static_cast<double>(std::max(s.rows, s.cols));
  });
  b->UseRealTime()->Unit(benchmark::kMillisecond);
  // Calls estimated at 0.25 s and more (100 GFLOP/s fp32, half that fp64) are timed one call per
  // repetition; smaller ones use the library's min-time rule (default 0.5 s, --benchmark_min_time),
  // which also keeps a smoke run on the small shapes quick.
  const double call_s_estimate = flops / 100e9 * (sizeof(T) == 8 ? 2.0 : 1.0);
  if (call_s_estimate >= 0.25) b->Iterations(1);
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

}  // namespace

int main(int argc, char** argv) {
  // Our own flag first; Google Benchmark rejects flags it does not know.
  bool include_4096 = false, check_only = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--ns_include_4096") == 0) include_4096 = true;
    else if (std::strcmp(argv[i], "--ns_check") == 0) check_only = true;
    else args.push_back(argv[i]);
  }
  int n_args = static_cast<int>(args.size());
  benchmark::Initialize(&n_args, args.data());
  if (benchmark::ReportUnrecognizedArguments(n_args, args.data())) return 1;

  std::vector<shape> shapes = default_shapes;
  if (include_4096) shapes.push_back(huge_shape);
  std::vector<impl> impls = {impl::orthopt};
#if defined(ORTHOPT_BENCH_BLAS)
  impls.push_back(impl::orthopt_blas);
#endif
  impls.push_back(impl::eigen);
#if defined(ORTHOPT_BENCH_TORCH)
  impls.push_back(impl::torch);
#if defined(_OPENMP)
  at::set_num_threads(omp_get_max_threads());
#endif
#endif
  if (check_only) {
    bool ok = true;
    for (const shape& s : {shape{256, 256}, shape{96, 300}, shape{300, 96}}) {
      ok = check_agreement<float>("keller", "f32", s, impls) && ok;
      ok = check_agreement<double>("keller", "f64", s, impls) && ok;
      ok = check_agreement<float>("polar_express", "f32", s, impls) && ok;
    }
    return ok ? 0 : 1;
  }
  // Adjacent registration (orthopt, then the peers, shape by shape) keeps each group close in time when
  // run in order; --benchmark_enable_random_interleaving mixes repetitions across everything.
  for (const shape& s : shapes)
    for (impl which : impls) register_ns<float>("keller", "f32", s, which);
  for (const shape& s : shapes)
    for (impl which : impls) register_ns<double>("keller", "f64", s, which);
  for (const shape& s : shapes)
    for (impl which : impls) register_ns<float>("polar_express", "f32", s, which);

  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eigen_nb_threads", std::to_string(Eigen::nbThreads()));
#if defined(_OPENMP)
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(omp_get_max_threads()));
#else
  benchmark::AddCustomContext("openmp_max_threads", "none (built without OpenMP)");
#endif
  {
    const char* env = std::getenv("OMP_NUM_THREADS");
    benchmark::AddCustomContext("OMP_NUM_THREADS", env ? env : "(unset)");
  }
  benchmark::AddCustomContext("orthopt_backend_threads", std::to_string(orthopt::eigen_backend{}.threads()));
  benchmark::AddCustomContext("orthopt_version", ORTHOPT_VERSION_STRING);
#if defined(ORTHOPT_BENCH_TORCH)
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("torch_parallel_info", at::get_parallel_info());
#else
  benchmark::AddCustomContext("torch_version", "not built (libtorch not found)");
#endif
  benchmark::AddCustomContext("compiler", compiler_string());
#if defined(ORTHOPT_BENCH_NATIVE)
  benchmark::AddCustomContext("orthopt_bench_native", "ON (-O3 -march=native)");
#else
  benchmark::AddCustomContext("orthopt_bench_native", "OFF (portable ISA)");
#endif
  benchmark::AddCustomContext("flop_convention", "naive 5*(4*m^2*n + 2*m^3), m = min side, n = max side");

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  fixtures().clear();
  return 0;
}
