// SPDX-License-Identifier: Apache-2.0
// The blas backend, double storage: one translation unit of the extension module (see instantiate.hpp).
#include <orthopt/blas.hpp>

#include "binding.hpp"
#include "instantiate.hpp"

#include <cstdint>

namespace orthopt::python {
namespace {
/// CPU backends take a thread count (0: OpenMP's default); the stream is the CUDA backend's.
blas_backend make_blas(int threads, std::uintptr_t /*stream*/) {
  return threads > 0 ? blas_backend(threads) : blas_backend();
}
}  // namespace
ORTHOPT_PY_BACKEND_TU(bind_blas_float64, double, blas_backend, element::float64, false, "Optimizer_blas_float64",
                      make_blas)
}  // namespace orthopt::python
