// The GPU suite's device side: see gpu_driver.hpp.
#if defined(ORTHOPT_CUDA_HOST_EMULATION)
#include <orthopt/cuda/backend.hpp>
#include <orthopt/cuda/svd.hpp>
#include <orthopt/orthopt.hpp>
#else
#include <orthopt/cuda.cuh>
#endif

#include <cstring>
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

bool graph_replay_matches(std::string& detail) {
#if !ORTHOPT_CUDA_ON_DEVICE
  detail = "CUDA graphs need a GPU: not checked on the host emulation";
  return false;
#else
  cudaStream_t stream = nullptr;
  GPU_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  bool ok = true;
  try {
    cuda_backend be(stream);
    device_memory mem;
    const index_t rows = 96, cols = 160;
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    orthopt::adamuon_options o = orthopt::adamuon_presets::code();
    o.check_finite = false;  // the throwing check reads back to the host: not capturable, by design
    orthopt::adamuon<float, cuda_backend> rule(o, be);
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

    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    GPU_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      rule.step(W(w_graph), G, graph_state);
    } catch (...) {
      (void)cudaStreamEndCapture(stream, &graph);
      throw;
    }
    GPU_CHECK(cudaStreamEndCapture(stream, &graph));
    GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    GPU_CHECK(cudaGraphLaunch(exec, stream));
    rule.step(W(w_eager), G, eager_state);
    GPU_CHECK(cudaStreamSynchronize(stream));
    const auto a = mem.download(w_eager), b = mem.download(w_graph);
    const auto ma = mem.download_raw(eager_state.momentum().data, n), mb = mem.download_raw(graph_state.momentum().data, n);
    const auto va = mem.download_raw(eager_state.second_moment().data, n),
               vb = mem.download_raw(graph_state.second_moment().data, n);
    ok = std::memcmp(a.data(), b.data(), n * sizeof(double)) == 0 && ma == mb &&
         std::memcmp(va.data(), vb.data(), n * sizeof(double)) == 0;
    detail = ok ? "parameters, momentum and second moment identical" : "a replayed step differs from the eager one";
    (void)cudaGraphExecDestroy(exec);
    (void)cudaGraphDestroy(graph);
  } catch (const std::exception& e) {
    detail = std::string("capture failed: ") + e.what();
    ok = false;
  }
  (void)cudaStreamDestroy(stream);
  return ok;
#endif
}

}  // namespace gpu_driver
