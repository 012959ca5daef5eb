// SPDX-License-Identifier: Apache-2.0
//
// orthopt's CUDA backend on a GPU: Newton–Schulz (keller and polar_express, 5 steps, standard and Gram) and full AdaMuon
// and NAMO steps, in float and bf16, for the shapes Muon users run, timed with CUDA events (Google
// Benchmark's manual time), with the device's GEMM ceilings measured by the same binary.
//
//   bench_cuda [google-benchmark flags]          (exits 0 with a message when there is no GPU)
//
// Names: NS/<schedule>/<type>/<shape>, step/<rule>/<type>/<shape>, ceiling/gemm/<type>/8192.
// <shape> is RxC or BxRxC (a batch of B stacked matrices, one plan with batch capacity B, one launch
// per product for the whole stack); loopBxRxC is the same stack as B calls of a one-matrix plan, the
// way a framework without batched NS runs it. step/muon is the torch preset (torch.optim.Muon's rule).
// Counters:
//   FLOP/s       the naive count of one call, T·(4·m²·n + 2·m³) per matrix (m = min, n = max of the
//                shape, T = 5), as bench_cpu counts it; a rule step counts its NS only.
//   pct_ceiling  FLOP/s as a percentage of the cuBLAS GEMM rate of the same element type at 8192³
//                (bf16: cublasGemmEx with fp32 accumulation; float: cublasSgemm), measured at startup.
// The PyTorch peer (its eager zeropower_via_newtonschulz5 in bf16) is benchmarks/bench_torch_ns.py,
// run by benchmarks/run_gpu.sh in the same session; benchmarks/summarize_gpu.py pairs them.
#include <benchmark/benchmark.h>

#include <orthopt/cuda.cuh>

#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

using orthopt::bfloat16;
using orthopt::cuda_backend;
using orthopt::index_t;

struct shape {
  index_t batch, rows, cols;
  std::string name() const {
    return (batch > 1 ? std::to_string(batch) + "x" : std::string()) + std::to_string(rows) + "x" + std::to_string(cols);
  }
};
const std::vector<shape> shapes = {{1, 1024, 1024}, {1, 4096, 4096},  {1, 8192, 8192},
                                   {1, 1024, 4096}, {1, 4096, 16384}, {64, 128, 128}};

double ns_flops(const shape& s, int steps = 5) {
  const double m = static_cast<double>(std::min(s.rows, s.cols)), n = static_cast<double>(std::max(s.rows, s.cols));
  return static_cast<double>(s.batch) * steps * (4.0 * m * m * n + 2.0 * m * m * m);
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

/// Device memory filled with a deterministic pattern in [-1, 1).
template <class T>
struct device_matrix {
  T* data = nullptr;
  explicit device_matrix(std::size_t n) {
    ORTHOPT_CUDA_CHECK(cudaMalloc(&data, n * sizeof(T)));
    std::vector<T> host(n);
    for (std::size_t i = 0; i < n; ++i) host[i] = static_cast<T>(static_cast<float>(((i * 2654435761u) % 2001u) / 1000.0 - 1.0));
    ORTHOPT_CUDA_CHECK(cudaMemcpy(data, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~device_matrix() { (void)cudaFree(data); }
  device_matrix(const device_matrix&) = delete;
  device_matrix& operator=(const device_matrix&) = delete;
};

/// Times `body` on `stream` with CUDA events; one warm-up call first.
template <class F>
void time_on_stream(benchmark::State& state, cudaStream_t stream, F&& body) {
  cudaEvent_t start, stop;
  ORTHOPT_CUDA_CHECK(cudaEventCreate(&start));
  ORTHOPT_CUDA_CHECK(cudaEventCreate(&stop));
  body();
  ORTHOPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (auto _ : state) {
    ORTHOPT_CUDA_CHECK(cudaEventRecord(start, stream));
    body();
    ORTHOPT_CUDA_CHECK(cudaEventRecord(stop, stream));
    ORTHOPT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    ORTHOPT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
}

/// The GEMM ceiling (FLOP/s) of an element type at 8192³, measured once.
std::map<std::string, double>& ceilings() {
  static std::map<std::string, double> c;
  return c;
}

template <class T>
void ceiling(benchmark::State& state) {
  const index_t n = 8192;
  cudaStream_t stream;
  ORTHOPT_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    cuda_backend be(stream);
    device_matrix<T> a(n * n), b(n * n), c(n * n);
    const auto A = orthopt::row_major_view<const T>(a.data, n, n), B = orthopt::row_major_view<const T>(b.data, n, n);
    const auto C = orthopt::row_major_view(c.data, n, n);
    time_on_stream(state, stream, [&] { gemm(be, 1.0f, A, orthopt::op::none, B, orthopt::op::none, 0.0f, C); });
  }
  (void)cudaStreamDestroy(stream);
  const double flops = 2.0 * n * n * n;
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

double ceiling_of(const char* type) {
  auto& c = ceilings();
  if (c.count(type) == 0) {
    // Measured outside Google Benchmark's loop: 20 products after a warm-up.
    const index_t n = 8192;
    cudaStream_t stream;
    ORTHOPT_CUDA_CHECK(cudaStreamCreate(&stream));
    double rate = 0.0;
    auto run = [&](auto t) {
      using T = decltype(t);
      cuda_backend be(stream);
      device_matrix<T> a(n * n), b(n * n), cc(n * n);
      const auto A = orthopt::row_major_view<const T>(a.data, n, n), B = orthopt::row_major_view<const T>(b.data, n, n);
      const auto C = orthopt::row_major_view(cc.data, n, n);
      gemm(be, 1.0f, A, orthopt::op::none, B, orthopt::op::none, 0.0f, C);
      cudaEvent_t start, stop;
      ORTHOPT_CUDA_CHECK(cudaEventCreate(&start));
      ORTHOPT_CUDA_CHECK(cudaEventCreate(&stop));
      ORTHOPT_CUDA_CHECK(cudaEventRecord(start, stream));
      for (int i = 0; i < 20; ++i) gemm(be, 1.0f, A, orthopt::op::none, B, orthopt::op::none, 0.0f, C);
      ORTHOPT_CUDA_CHECK(cudaEventRecord(stop, stream));
      ORTHOPT_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      ORTHOPT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      rate = 20.0 * 2.0 * n * n * n / (ms / 1e3);
    };
    if (std::string(type) == "f32") run(float{});
    else run(bfloat16{});
    (void)cudaStreamDestroy(stream);
    c[type] = rate;
  }
  return c[type];
}

/// The naive flop rate of one call of shape s, and its share of the GEMM ceiling (pct_ceiling: naive
/// flops / time / ceiling).
template <class T>
void set_flop_counters(benchmark::State& state, const shape& s) {
  state.counters["FLOP/s"] = benchmark::Counter(ns_flops(s), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_ceiling"] =
      benchmark::Counter(100.0 * ns_flops(s) / ceiling_of(type_name<T>()), benchmark::Counter::kIsIterationInvariantRate);
}

/// NS of the stack s: one call of a plan with batch capacity s.batch, or (matrix_by_matrix) s.batch calls
/// of a one-matrix plan, what a batched call is measured against.
template <class T>
void ns_bench(benchmark::State& state, orthopt::ns_config cfg, shape s, bool matrix_by_matrix = false) {
  cudaStream_t stream;
  ORTHOPT_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    cuda_backend be(stream);
    const std::size_t n = static_cast<std::size_t>(s.batch * s.rows * s.cols);
    device_matrix<T> x(n), q(n);
    cfg.check_finite = false;  // timing the iteration, not the (synchronizing) input check
    orthopt::newton_schulz<T, cuda_backend> ns(s.rows, s.cols, cfg, be, matrix_by_matrix ? 1 : s.batch);
    if (matrix_by_matrix) {
      time_on_stream(state, stream, [&] {
        for (index_t b = 0; b < s.batch; ++b) {
          const std::size_t offset = static_cast<std::size_t>(b * s.rows * s.cols);
          ns(orthopt::row_major_view<const T>(x.data + offset, s.rows, s.cols),
             orthopt::row_major_view(q.data + offset, s.rows, s.cols));
        }
      });
    } else {
      const auto in = orthopt::row_major_batch<const T>(x.data, s.batch, s.rows, s.cols);
      const auto out = orthopt::row_major_batch(q.data, s.batch, s.rows, s.cols);
      time_on_stream(state, stream, [&] { ns(in, out); });
    }
  }
  (void)cudaStreamDestroy(stream);
  set_flop_counters<T>(state, s);
}

template <class T, class Rule>
void step_bench(benchmark::State& state, typename Rule::options_type options, shape s) {
  cudaStream_t stream;
  ORTHOPT_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    cuda_backend be(stream);
    const std::size_t n = static_cast<std::size_t>(s.batch * s.rows * s.cols);
    device_matrix<T> w(n), g(n);
    options.check_finite = false;
    Rule rule(options, be);
    auto st = rule.make_state(s.rows, s.cols, s.batch);
    const auto W = orthopt::row_major_batch(w.data, s.batch, s.rows, s.cols);
    const auto G = orthopt::row_major_batch<const T>(g.data, s.batch, s.rows, s.cols);
    time_on_stream(state, stream, [&] { rule.step(W, G, st); });
  }
  (void)cudaStreamDestroy(stream);
  set_flop_counters<T>(state, s);
}

/// Registers a benchmark timed by CUDA events (manual time), reported in milliseconds.
template <class F>
void register_timed(const std::string& name, F&& f) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(f))->UseManualTime()->Unit(benchmark::kMillisecond);
}

template <class T>
void register_type() {
  const std::string t = type_name<T>();
  register_timed("ceiling/gemm/" + t + "/8192", ceiling<T>);
  for (const shape& s : shapes) {
    for (const auto& cfg : {orthopt::ns_presets::keller(), orthopt::ns_presets::polar_express()}) {
      register_timed("NS/" + cfg.name + "/" + t + "/" + s.name(), [cfg, s](benchmark::State& st) { ns_bench<T>(st, cfg, s); });
      // Gram Newton–Schulz (ns_algorithm::gram): the same polynomial, iterated on the small side.
      orthopt::ns_config gram = cfg;
      gram.algorithm = orthopt::ns_algorithm::gram;
      register_timed("NS/" + cfg.name + "/gram/" + t + "/" + s.name(),
                     [gram, s](benchmark::State& st) { ns_bench<T>(st, gram, s); });
    }
    if (s.batch > 1) {
      register_timed("NS/keller/" + t + "/loop" + s.name(), [s](benchmark::State& st) {
        ns_bench<T>(st, orthopt::ns_presets::keller(), s, /*matrix_by_matrix=*/true);
      });
    }
    register_timed("step/muon/" + t + "/" + s.name(), [s](benchmark::State& st) {
      step_bench<T, orthopt::muon<T, cuda_backend>>(st, orthopt::muon_presets::torch(), s);
    });
    register_timed("step/adamuon/" + t + "/" + s.name(), [s](benchmark::State& st) {
      step_bench<T, orthopt::adamuon<T, cuda_backend>>(st, orthopt::adamuon_presets::code(), s);
    });
    register_timed("step/namo/" + t + "/" + s.name(), [s](benchmark::State& st) {
      step_bench<T, orthopt::namo<T, cuda_backend>>(st, orthopt::namo_presets::code(), s);
    });
  }
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_cuda: no CUDA device; nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  ORTHOPT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  benchmark::AddCustomContext("device", prop.name);
  register_type<bfloat16>();
  register_type<float>();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
