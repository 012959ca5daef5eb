// The GPU suite's device side: see gpu_driver.hpp.
#if defined(ORTHOPT_CUDA_HOST_EMULATION)
#include <orthopt/cuda/backend.hpp>
#include <orthopt/cuda/svd.hpp>
#include <orthopt/orthopt.hpp>
#else
#include <orthopt/cuda.cuh>
#endif

#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_driver.hpp"

namespace gpu_driver {
namespace {

using orthopt::bfloat16;
using orthopt::cuda_backend;

#define GPU_CHECK(expr) ORTHOPT_CUDA_CHECK(expr)

/// Owning device memory of n elements of T (plain cudaMalloc: test data, not the backend's buffers).
template <class T>
class device_array {
 public:
  device_array() = default;
  explicit device_array(std::size_t n) : n_(n) {
    void* p = nullptr;
    GPU_CHECK(cudaMalloc(&p, (n == 0 ? 1 : n) * sizeof(T)));
    p_ = static_cast<T*>(p);
  }
  device_array(device_array&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  device_array& operator=(device_array&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
  ~device_array() {
    if (p_ != nullptr) (void)cudaFree(p_);
  }
  T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

template <class T>
T from_double(double x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
double from_double<double>(double x) {
  return x;
}
template <class T>
double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
double to_double<double>(double x) {
  return x;
}

/// The memory policy of gpu_runs.hpp for device memory: copies through the host, waiting for each.
struct device_memory {
  template <class T>
  device_array<T> make(std::size_t n) {
    return device_array<T>(n);
  }
  template <class T>
  device_array<T> upload(const std::vector<double>& x) {
    std::vector<T> host(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) host[i] = from_double<T>(x[i]);
    device_array<T> d(x.size());
    GPU_CHECK(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, nullptr));
    GPU_CHECK(cudaStreamSynchronize(nullptr));
    return d;
  }
  template <class T>
  std::vector<double> download_raw(const T* p, std::size_t n) {
    GPU_CHECK(cudaStreamSynchronize(nullptr));  // the backend's stream is the default one here
    std::vector<T> host(n);
    GPU_CHECK(cudaMemcpyAsync(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost, nullptr));
    GPU_CHECK(cudaStreamSynchronize(nullptr));
    std::vector<double> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = to_double(host[i]);
    return out;
  }
  template <class T>
  std::vector<double> download(const device_array<T>& d) {
    return download_raw(d.data(), d.size());
  }
};

template <class F>
auto by_element(element e, F&& f) {
  switch (e) {
    case element::f64: return f(double{});
    case element::bf16: return f(bfloat16{});
    case element::f32: break;
  }
  return f(float{});
}

}  // namespace

bool on_gpu() { return ORTHOPT_CUDA_ON_DEVICE != 0; }

bool device_available(std::string& description) {
#if ORTHOPT_CUDA_ON_DEVICE
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    description = "no CUDA device";
    return false;
  }
  cudaDeviceProp prop{};
  GPU_CHECK(cudaGetDeviceProperties(&prop, 0));
  description = std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
                std::to_string(prop.minor) + ")";
  return true;
#else
  description = "the CUDA backend's host emulation (no GPU)";
  return true;
#endif
}

std::vector<double> newton_schulz(const std::vector<double>& x, index_t rows, index_t cols, const orthopt::ns_config& cfg,
                                  element e) {
  device_memory mem;
  return by_element(e, [&](auto t) {
    return gpu_runs::ns_run<decltype(t)>(cuda_backend{}, mem, x, rows, cols, cfg);
  });
}

std::vector<double> newton_schulz_batch(const std::vector<double>& x, index_t count, index_t rows, index_t cols,
                                        const orthopt::ns_config& cfg, element e) {
  device_memory mem;
  return by_element(e, [&](auto t) {
    return gpu_runs::ns_batch_run<decltype(t)>(cuda_backend{}, mem, x, count, rows, cols, cfg);
  });
}

std::vector<double> exact_polar(const std::vector<double>& x, index_t rows, index_t cols, element e) {
  device_memory mem;
  return by_element(e, [&](auto t) { return gpu_runs::polar_run<decltype(t)>(cuda_backend{}, mem, x, rows, cols); });
}

std::vector<std::vector<double>> exact_polar_series(const std::vector<std::vector<double>>& xs, index_t rows, index_t cols,
                                                    element e, bool check_finite, std::vector<std::string>& refusals) {
  device_memory mem;
  return by_element(e, [&](auto t) {
    return gpu_runs::polar_series<decltype(t)>(cuda_backend{}, mem, xs, rows, cols, check_finite, refusals);
  });
}

gpu_runs::rule_result rule(const gpu_runs::rule_spec& spec, index_t count, index_t rows, index_t cols, int steps,
                           std::uint64_t seed, element e) {
  device_memory mem;
  return by_element(e, [&](auto t) {
    return gpu_runs::rule_run<decltype(t)>(cuda_backend{}, mem, spec, count, rows, cols, steps, seed);
  });
}

gpu_runs::optimizer_result optimizer(int steps, int save_at, element e) {
  device_memory mem;
  return by_element(e, [&](auto t) { return gpu_runs::optimizer_run<decltype(t)>(cuda_backend{}, mem, steps, save_at); });
}

std::int64_t allocations_during_steps(int steps) {
  device_memory mem;
  cuda_backend be;
  const index_t rows = 64, cols = 96, experts = 4;
  orthopt::optimizer<float, cuda_backend> opt;
  const auto ada = opt.add_group("adamuon", orthopt::adamuon<float, cuda_backend>(orthopt::adamuon_presets::code(), be));
  const auto namo_d = opt.add_group("namo_d", orthopt::namo_d<float, cuda_backend>(orthopt::namo_d_presets::code(), be));
  const auto adamw = opt.add_group("adamw", orthopt::adamw<float, cuda_backend>(orthopt::adamw_presets::torch(), be));
  auto w0 = mem.upload<float>(gpu_runs::values(rows * cols, 1));
  auto w1 = mem.upload<float>(gpu_runs::values(experts * rows * cols, 2));
  auto w2 = mem.upload<float>(gpu_runs::values(cols, 3));
  auto g0 = mem.upload<float>(gpu_runs::values(rows * cols, 4));
  auto g1 = mem.upload<float>(gpu_runs::values(experts * rows * cols, 5));
  auto g2 = mem.upload<float>(gpu_runs::values(cols, 6));
  opt.add_param("w0", ada, orthopt::row_major_view(w0.data(), rows, cols));
  opt.add_param("experts", namo_d, orthopt::row_major_batch(w1.data(), experts, rows, cols));
  opt.add_param("bias", adamw, orthopt::row_major_view(w2.data(), 1, cols));
  const std::vector<orthopt::batch_view<const float>> grads = {
      orthopt::as_batch(orthopt::row_major_view<const float>(g0.data(), rows, cols)),
      orthopt::row_major_batch<const float>(g1.data(), experts, rows, cols),
      orthopt::as_batch(orthopt::row_major_view<const float>(g2.data(), 1, cols))};
  opt.step(grads);  // the first step: anything lazy happens here
  const std::int64_t before = cuda_backend::device_allocations();
  for (int t = 1; t < steps; ++t) opt.step(grads);
  be.synchronize();
  return cuda_backend::device_allocations() - before;
}

#if ORTHOPT_CUDA_ON_DEVICE
namespace {

/// Captures `body` (work queued on `stream`) into a graph in global capture mode, in which any host
/// synchronization or allocation by any thread during the capture is an error, and launches it once.
/// Returns the instantiated graph; the caller destroys it.
template <class F>
cudaGraphExec_t capture_and_launch(cudaStream_t stream, F&& body) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  GPU_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  try {
    body();
  } catch (...) {
    (void)cudaStreamEndCapture(stream, &graph);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    throw;
  }
  GPU_CHECK(cudaStreamEndCapture(stream, &graph));
  GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  (void)cudaGraphDestroy(graph);
  GPU_CHECK(cudaGraphLaunch(exec, stream));
  return exec;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

/// Runs body(backend, stream) on a backend bound to a stream of its own with its NaN/Inf checks in
/// flag_on_device mode (the capturable form of the check), and returns its verdict; an exception (a
/// failed capture) is a false verdict with its message in `detail`.
template <class Body>
bool on_capturable_backend(std::string& detail, Body&& body) {
  cudaStream_t stream = nullptr;
  GPU_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  bool ok = false;
  try {
    cuda_backend::settings settings;
    settings.stream = stream;
    settings.nonfinite = orthopt::nonfinite_check::flag_on_device;
    cuda_backend be(settings);
    ok = body(be, stream);
  } catch (const std::exception& e) {
    detail = std::string("capture failed: ") + e.what();
    ok = false;
  }
  (void)cudaStreamDestroy(stream);
  return ok;
}

}  // namespace
#endif

bool graph_replay_matches(std::string& detail) {
#if !ORTHOPT_CUDA_ON_DEVICE
  detail = "CUDA graphs need a GPU: not checked on the host emulation";
  return false;
#else
  return on_capturable_backend(detail, [&](cuda_backend& be, cudaStream_t stream) {
    device_memory mem;
    const index_t rows = 96, cols = 160;
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    orthopt::adamuon<float, cuda_backend> rule(orthopt::adamuon_presets::code(), be);
    auto eager_state = rule.make_state(rows, cols);
    auto graph_state = rule.make_state(rows, cols);
    auto w_eager = mem.upload<float>(gpu_runs::values(n, 11));
    auto w_graph = mem.upload<float>(gpu_runs::values(n, 11));
    auto g = mem.upload<float>(gpu_runs::values(n, 12));
    const auto W = [&](device_array<float>& w) { return orthopt::row_major_view(w.data(), rows, cols); };
    const auto G = orthopt::row_major_view<const float>(g.data(), rows, cols);
    // One ordinary step each, so that the captured step starts from a non-trivial state.
    rule.step(W(w_eager), G, eager_state);
    rule.step(W(w_graph), G, graph_state);
    be.synchronize();

    cudaGraphExec_t exec = capture_and_launch(stream, [&] { rule.step(W(w_graph), G, graph_state); });
    rule.step(W(w_eager), G, eager_state);
    GPU_CHECK(cudaStreamSynchronize(stream));
    const bool ok =
        same_bits(mem.download(w_eager), mem.download(w_graph)) &&
        same_bits(mem.download_raw(eager_state.momentum().data, n), mem.download_raw(graph_state.momentum().data, n)) &&
        same_bits(mem.download_raw(eager_state.second_moment().data, n),
                  mem.download_raw(graph_state.second_moment().data, n)) &&
        be.read_status().failed_checks == 0;
    detail = ok ? "parameters, momentum and second moment identical" : "a replayed step differs from the eager one";
    (void)cudaGraphExecDestroy(exec);
    return ok;
  });
#endif
}

bool optimizer_graph_replay_matches(std::string& detail) {
#if !ORTHOPT_CUDA_ON_DEVICE
  detail = "CUDA graphs need a GPU: not checked on the host emulation";
  return false;
#else
  return on_capturable_backend(detail, [&](cuda_backend& be, cudaStream_t stream) {
    device_memory mem;
    const index_t rows = 64, cols = 96, experts = 4;
    const std::size_t n0 = static_cast<std::size_t>(rows * cols), n1 = n0 * experts, n2 = static_cast<std::size_t>(cols);
    struct model {
      device_array<float> w0, w1, w2;
      orthopt::optimizer<float, cuda_backend> opt;
    };
    auto make = [&](model& m) {
      m.w0 = mem.upload<float>(gpu_runs::values(n0, 1));
      m.w1 = mem.upload<float>(gpu_runs::values(n1, 2));
      m.w2 = mem.upload<float>(gpu_runs::values(n2, 3));
      const auto muon = m.opt.add_group("muon", orthopt::muon<float, cuda_backend>(orthopt::muon_presets::moonlight(), be));
      const auto ada = m.opt.add_group("adamuon", orthopt::adamuon<float, cuda_backend>(orthopt::adamuon_presets::code(), be));
      const auto adamw = m.opt.add_group("adamw", orthopt::adamw<float, cuda_backend>(orthopt::adamw_presets::torch(), be));
      m.opt.add_param("w0", muon, orthopt::row_major_view(m.w0.data(), rows, cols));
      m.opt.add_param("experts", ada, orthopt::row_major_batch(m.w1.data(), experts, rows, cols));
      m.opt.add_param("bias", adamw, orthopt::row_major_view(m.w2.data(), 1, cols));
    };
    model eager, graphed;
    make(eager);
    make(graphed);
    auto g0 = mem.upload<float>(gpu_runs::values(n0, 4));
    auto g1 = mem.upload<float>(gpu_runs::values(n1, 5));
    auto g2 = mem.upload<float>(gpu_runs::values(n2, 6));
    const std::vector<orthopt::batch_view<const float>> grads = {
        orthopt::as_batch(orthopt::row_major_view<const float>(g0.data(), rows, cols)),
        orthopt::row_major_batch<const float>(g1.data(), experts, rows, cols),
        orthopt::as_batch(orthopt::row_major_view<const float>(g2.data(), 1, cols))};
    eager.opt.step(grads);
    graphed.opt.step(grads);
    be.synchronize();

    cudaGraphExec_t exec = capture_and_launch(stream, [&] { graphed.opt.step(grads); });
    eager.opt.step(grads);
    GPU_CHECK(cudaStreamSynchronize(stream));
    const bool same = same_bits(mem.download(eager.w0), mem.download(graphed.w0)) &&
                      same_bits(mem.download(eager.w1), mem.download(graphed.w1)) &&
                      same_bits(mem.download(eager.w2), mem.download(graphed.w2));
    const auto clean = be.read_status();
    // The captured check still runs on replay: a NaN in the gradient memory the graph reads is counted.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    GPU_CHECK(cudaMemcpyAsync(g1.data() + 7, &nan, sizeof(float), cudaMemcpyHostToDevice, stream));
    GPU_CHECK(cudaGraphLaunch(exec, stream));
    const auto flagged = be.read_status();
    const bool ok = same && clean.failed_checks == 0 && flagged.failed_checks > 0;
    detail = !same ? "a replayed optimizer step differs from the eager one"
             : clean.failed_checks != 0 ? "the status record flagged a clean step"
             : flagged.failed_checks == 0 ? "a replay on a NaN gradient was not flagged"
                                          : "parameters identical; a NaN gradient replayed was flagged (" +
                                                std::to_string(flagged.failed_checks) + " check(s))";
    (void)cudaGraphExecDestroy(exec);
    return ok;
  });
#endif
}

}  // namespace gpu_driver
