// SPDX-License-Identifier: Apache-2.0
// The eigen backend, float storage: one translation unit of the extension module (see instantiate.hpp).
#include <orthopt/eigen.hpp>

#include "binding.hpp"
#include "instantiate.hpp"

#include <cstdint>

namespace orthopt::python {
namespace {
/// CPU backends take a thread count (0: OpenMP's default); the stream is the CUDA backend's.
eigen_backend make_eigen(int threads, std::uintptr_t /*stream*/) {
  return threads > 0 ? eigen_backend(threads) : eigen_backend();
}
}  // namespace
ORTHOPT_PY_BACKEND_TU(bind_eigen_float32, float, eigen_backend, element::float32, false, "Optimizer_eigen_float32",
                      make_eigen)
}  // namespace orthopt::python
