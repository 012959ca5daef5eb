// A consumer of the installed package's CUDA backend: one Newton–Schulz call on the device, checked for
// orthogonality on the host. Without a GPU it says so and succeeds (the build and link are the test).
#include <orthopt/cuda.cuh>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("cuda_consumer: built against the installed orthopt::cuda; no CUDA device to run on\n");
    return 0;
  }
  const orthopt::index_t m = 32, n = 48;
  std::vector<float> host(m * n);
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = std::sin(0.7f * static_cast<float>(i));
  float *x = nullptr, *q = nullptr;
  ORTHOPT_CUDA_CHECK(cudaMalloc(&x, host.size() * sizeof(float)));
  ORTHOPT_CUDA_CHECK(cudaMalloc(&q, host.size() * sizeof(float)));
  ORTHOPT_CUDA_CHECK(cudaMemcpy(x, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  orthopt::cuda_backend gpu;
  orthopt::newton_schulz<float, orthopt::cuda_backend> ns(m, n, orthopt::ns_presets::polar_express(8), gpu);
  ns(orthopt::row_major_view<const float>(x, m, n), orthopt::row_major_view(q, m, n));
  ORTHOPT_CUDA_CHECK(cudaMemcpy(host.data(), q, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double worst = 0.0;  // |Q·Qᵀ − I|
  for (orthopt::index_t i = 0; i < m; ++i)
    for (orthopt::index_t j = 0; j < m; ++j) {
      double s = 0.0;
      for (orthopt::index_t k = 0; k < n; ++k) s += double(host[i * n + k]) * double(host[j * n + k]);
      worst = std::fmax(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  std::printf("cuda_consumer: |QQ^T - I|_max = %.3g\n", worst);
  cudaFree(x);
  cudaFree(q);
  return worst < 1e-2 ? 0 : 1;
}
