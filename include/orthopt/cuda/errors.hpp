// SPDX-License-Identifier: Apache-2.0
//
// Errors of the CUDA backend: every CUDA runtime, cuBLAS and cuSOLVER call the backend makes goes
// through ORTHOPT_CUDA_CHECK, which throws orthopt::cuda_error carrying the status name, the call's
// expression, the file and the line.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <stdexcept>
#include <string>

#include "orthopt/errors.hpp"

namespace orthopt {

/// A CUDA runtime, cuBLAS or cuSOLVER call failed. what() reads, for example,
///   "orthopt: CUBLAS_STATUS_INVALID_VALUE (7) from cublasSgemm_v2(...) at orthopt/cuda/backend.hpp:412"
/// status() is the status name alone ("cudaErrorMemoryAllocation", "CUBLAS_STATUS_NOT_INITIALIZED", ...).
class cuda_error : public std::runtime_error, public error {
 public:
  cuda_error(const std::string& message, std::string status, int code)
      : std::runtime_error(message), status_(std::move(status)), code_(code) {}
  [[nodiscard]] const char* what() const noexcept override { return std::runtime_error::what(); }
  [[nodiscard]] const std::string& status() const noexcept { return status_; }
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  std::string status_;
  int code_;
};

namespace detail {

inline bool cuda_call_succeeded(cudaError_t s) noexcept { return s == cudaSuccess; }
inline bool cuda_call_succeeded(cublasStatus_t s) noexcept { return s == CUBLAS_STATUS_SUCCESS; }
inline bool cuda_call_succeeded(cusolverStatus_t s) noexcept { return s == CUSOLVER_STATUS_SUCCESS; }

inline std::string cuda_status_name(cudaError_t s) {
  const char* name = cudaGetErrorName(s);
  return name != nullptr ? name : "cudaError " + std::to_string(static_cast<int>(s));
}
inline std::string cuda_status_name(cublasStatus_t s) {
  const char* name = cublasGetStatusName(s);
  return name != nullptr ? name : "cublasStatus " + std::to_string(static_cast<int>(s));
}
/// cuSOLVER has no status-name function; these are the names of cusolver_common.h.
inline std::string cuda_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cusolverStatus " + std::to_string(static_cast<int>(s));
  }
}

[[noreturn]] inline void throw_cuda_failure(const std::string& status, int code, const char* expression,
                                            const char* file, int line) {
  throw cuda_error("orthopt: " + status + " (" + std::to_string(code) + ") from " + expression + " at " + file + ":" +
                       std::to_string(line),
                   status, code);
}

}  // namespace detail
}  // namespace orthopt

/// Evaluates a CUDA runtime / cuBLAS / cuSOLVER call once and throws orthopt::cuda_error unless it succeeded.
#define ORTHOPT_CUDA_CHECK(expression)                                                                         \
  do {                                                                                                         \
    const auto orthopt_cuda_status_ = (expression);                                                            \
    if (!::orthopt::detail::cuda_call_succeeded(orthopt_cuda_status_)) {                                       \
      ::orthopt::detail::throw_cuda_failure(::orthopt::detail::cuda_status_name(orthopt_cuda_status_),         \
                                            static_cast<int>(orthopt_cuda_status_), #expression, __FILE__,     \
                                            __LINE__);                                                         \
    }                                                                                                          \
  } while (0)
