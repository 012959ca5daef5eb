// SPDX-License-Identifier: Apache-2.0
// The CUDA backend, double storage: one translation unit of the extension module (see instantiate.hpp).
// Compiled by nvcc; tests/python builds it with g++ on the CUDA backend's host emulation
// (ORTHOPT_CUDA_HOST_EMULATION), where "device" memory is host memory.
#if defined(ORTHOPT_CUDA_HOST_EMULATION)
#include <orthopt/cuda/backend.hpp>  // cuda.cuh insists on nvcc; the emulation compiles the same headers with g++
#include <orthopt/cuda/svd.hpp>
#include <orthopt/orthopt.hpp>
#else
#include <orthopt/cuda.cuh>
#endif

#include <cstdint>

#include "binding.hpp"
#include "instantiate.hpp"

namespace orthopt::python {
namespace {
/// A CUDA context on the caller's stream (torch's current stream; 0: the legacy default stream).
cuda_backend make_cuda(int /*threads*/, std::uintptr_t stream) {
  return cuda_backend(reinterpret_cast<cudaStream_t>(stream));
}
}  // namespace
ORTHOPT_PY_BACKEND_TU(bind_cuda_float64, double, cuda_backend, element::float64, true, "Optimizer_cuda_float64", make_cuda)
}  // namespace orthopt::python
