// SPDX-License-Identifier: Apache-2.0
//
// What each backend translation unit defines (one per backend and element type), and module.cpp calls.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <vector>

#include "arrays.hpp"

namespace orthopt::python {

/// The entry points of one backend and element type.
struct backend_entry {
  /// Newton–Schulz or the exact polar factor of x into out (config: orthogonalizer keywords).
  void (*orthogonalize)(ro_array x, array out, nanobind::dict config, int threads, std::uintptr_t stream) = nullptr;
  /// ‖XXᵀ − I‖_F/√m per matrix (host arrays).
  std::vector<double> (*residuals)(ro_array x) = nullptr;
};

#define ORTHOPT_PY_DECLARE(NAME) backend_entry NAME(nanobind::module_& m)
ORTHOPT_PY_DECLARE(bind_eigen_float32);
ORTHOPT_PY_DECLARE(bind_eigen_float64);
#ifdef ORTHOPT_PY_HAVE_BLAS
ORTHOPT_PY_DECLARE(bind_blas_float32);
ORTHOPT_PY_DECLARE(bind_blas_float64);
#endif
#ifdef ORTHOPT_PY_HAVE_CUDA
ORTHOPT_PY_DECLARE(bind_cuda_float32);
ORTHOPT_PY_DECLARE(bind_cuda_float64);
ORTHOPT_PY_DECLARE(bind_cuda_bfloat16);
#endif
#undef ORTHOPT_PY_DECLARE

/// The body of a backend translation unit: the optimizer class `CLASS_NAME` and the array functions,
/// for element type T (storage) on BACKEND, whose handle MAKE_BACKEND(threads, stream) makes.
#define ORTHOPT_PY_BACKEND_TU(FN, T, BACKEND, ELEMENT, CUDA, CLASS_NAME, MAKE_BACKEND)                     \
  backend_entry FN(nanobind::module_& m) {                                                               \
    bind_optimizer<T, BACKEND, ELEMENT, CUDA, &MAKE_BACKEND>(m, CLASS_NAME);                            \
    backend_entry e;                                                                                     \
    e.orthogonalize = [](ro_array x, array out, nanobind::dict config, int threads, std::uintptr_t stream) { \
      orthogonalize_arrays<T, BACKEND>(x, out, config, MAKE_BACKEND(threads, stream), ELEMENT, CUDA);     \
    };                                                                                                   \
    if constexpr (!CUDA) e.residuals = [](ro_array x) { return residuals_on_host<T>(x); };              \
    return e;                                                                                            \
  }

}  // namespace orthopt::python
