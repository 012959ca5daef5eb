// A host implementation of the CUDA runtime, cuBLAS and cuSOLVER entry points orthopt's CUDA backend
// calls, with the real signatures from NVIDIA's headers, so that the backend's own call sites (operand
// orders, transposes, leading dimensions) run in CI on machines without a GPU. "Device" memory is host
// memory; streams are ignored (everything runs at once, in order). Products go to CBLAS, the SVD to
// Eigen. It implements the column-major BLAS semantics literally: a wrong transpose or leading dimension
// at a call site gives a wrong result here, as it would on a GPU.
#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <Eigen/Dense>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "cuda_host_control.hpp"

namespace {
std::atomic<int> pending_cublas_failure{0};
std::atomic<bool> pending_malloc_failure{false};
std::atomic<std::int64_t> cublas_call_count{0};
std::atomic<std::int64_t> sync_count{0};
std::atomic<std::int64_t> live{0};

struct blas_context {
  cudaStream_t stream = nullptr;
};
struct solver_context {
  cudaStream_t stream = nullptr;
};

cublasStatus_t enter_cublas(cublasHandle_t handle) {
  ++cublas_call_count;
  if (const int f = pending_cublas_failure.exchange(0); f != 0) return static_cast<cublasStatus_t>(f);
  return handle == nullptr ? CUBLAS_STATUS_NOT_INITIALIZED : CUBLAS_STATUS_SUCCESS;
}

CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) { return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

/// The checks cuBLAS makes on a gemm's arguments (invalid values are errors, not undefined behaviour).
bool gemm_arguments_valid(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc) {
  const int rows_a = ta == CUBLAS_OP_N ? m : k;
  const int rows_b = tb == CUBLAS_OP_N ? k : n;
  return m >= 0 && n >= 0 && k >= 0 && lda >= std::max(1, rows_a) && ldb >= std::max(1, rows_b) &&
         ldc >= std::max(1, m);
}

}  // namespace

namespace orthopt_cuda_host {
void fail_next_cublas_call(int status) { pending_cublas_failure = status; }
void fail_next_cuda_malloc() { pending_malloc_failure = true; }
std::int64_t cublas_calls() { return cublas_call_count; }
std::int64_t stream_synchronizations() { return sync_count; }
std::int64_t live_allocations() { return live; }
}  // namespace orthopt_cuda_host

// ---- CUDA runtime ----------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (pending_malloc_failure.exchange(false)) return cudaErrorMemoryAllocation;
  *ptr = ::operator new(size == 0 ? 1 : size, std::align_val_t{256}, std::nothrow);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  ++live;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr != nullptr) {
    ::operator delete(ptr, std::align_val_t{256});
    --live;
  }
  return cudaSuccess;
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++sync_count;
  return cudaSuccess;
}
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    default: return "cudaErrorUnknown";
  }
}

// ---- cuBLAS ----------------------------------------------------------------------------------------
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = reinterpret_cast<cublasHandle_t>(new blas_context);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete reinterpret_cast<blas_context*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<blas_context*>(handle)->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void*, size_t) {
  return handle == nullptr ? CUBLAS_STATUS_NOT_INITIALIZED : CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
  if (const auto s = enter_cublas(handle); s != CUBLAS_STATUS_SUCCESS) return s;
  if (!gemm_arguments_valid(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
  if (const auto s = enter_cublas(handle); s != CUBLAS_STATUS_SUCCESS) return s;
  if (!gemm_arguments_valid(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  cblas_dgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

/// syrk writes only the `uplo` triangle, as cuBLAS does: the other one is left as it was, so a missing
/// mirror at the call site shows.
template <class T>
cublasStatus_t host_syrk(cublasHandle_t handle, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                         const T* alpha, const T* A, int lda, const T* beta, T* C, int ldc) {
  if (const auto s = enter_cublas(handle); s != CUBLAS_STATUS_SUCCESS) return s;
  const int rows_a = trans == CUBLAS_OP_N ? n : k;
  if (n < 0 || k < 0 || lda < std::max(1, rows_a) || ldc < std::max(1, n)) return CUBLAS_STATUS_INVALID_VALUE;
  const CBLAS_UPLO u = uplo == CUBLAS_FILL_MODE_LOWER ? CblasLower : CblasUpper;
  if constexpr (std::is_same_v<T, float>) {
    cblas_ssyrk(CblasColMajor, u, to_cblas(trans), n, k, *alpha, A, lda, *beta, C, ldc);
  } else {
    cblas_dsyrk(CblasColMajor, u, to_cblas(trans), n, k, *alpha, A, lda, *beta, C, ldc);
  }
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSsyrk_v2(cublasHandle_t handle, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                              const float* alpha, const float* A, int lda, const float* beta, float* C, int ldc) {
  return host_syrk(handle, uplo, trans, n, k, alpha, A, lda, beta, C, ldc);
}
cublasStatus_t cublasDsyrk_v2(cublasHandle_t handle, cublasFillMode_t uplo, cublasOperation_t trans, int n, int k,
                              const double* alpha, const double* A, int lda, const double* beta, double* C, int ldc) {
  return host_syrk(handle, uplo, trans, n, k, alpha, A, lda, beta, C, ldc);
}

/// GemmEx for bf16 operands with fp32 compute (what the backend asks for): operands widened to float,
/// sgemm, the result rounded to bf16 once (round-to-nearest-even, as cuBLAS's epilogue).
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (const auto s = enter_cublas(handle); s != CUBLAS_STATUS_SUCCESS) return s;
  if (Atype != CUDA_R_16BF || Btype != CUDA_R_16BF || Ctype != CUDA_R_16BF || compute != CUBLAS_COMPUTE_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!gemm_arguments_valid(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
  const auto* a = static_cast<const __nv_bfloat16*>(A);
  const auto* b = static_cast<const __nv_bfloat16*>(B);
  auto* c = static_cast<__nv_bfloat16*>(C);
  const int cols_a = ta == CUBLAS_OP_N ? k : m, cols_b = tb == CUBLAS_OP_N ? n : k;
  std::vector<float> af(static_cast<std::size_t>(lda) * cols_a), bf(static_cast<std::size_t>(ldb) * cols_b),
      cf(static_cast<std::size_t>(ldc) * n);
  for (std::size_t i = 0; i < af.size(); ++i) af[i] = __bfloat162float(a[i]);
  for (std::size_t i = 0; i < bf.size(); ++i) bf[i] = __bfloat162float(b[i]);
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) cf[static_cast<std::size_t>(j) * ldc + i] = be == 0.0f ? 0.0f : __bfloat162float(c[static_cast<std::size_t>(j) * ldc + i]);
  cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, al, af.data(), lda, bf.data(), ldb, be, cf.data(),
              ldc);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) c[static_cast<std::size_t>(j) * ldc + i] = __float2bfloat16(cf[static_cast<std::size_t>(j) * ldc + i]);
  return CUBLAS_STATUS_SUCCESS;
}

/// Strided-batched forms: one call, `count` products (cuBLAS counts it as one call, and so does this).
template <class T>
cublasStatus_t host_gemm_strided_batched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const T* alpha, const T* A, int lda, long long sa, const T* B, int ldb,
                                         long long sb, const T* beta, T* C, int ldc, long long sc, int count) {
  if (const auto s = enter_cublas(handle); s != CUBLAS_STATUS_SUCCESS) return s;
  if (!gemm_arguments_valid(ta, tb, m, n, k, lda, ldb, ldc) || count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  for (int i = 0; i < count; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, A + i * sa, lda, B + i * sb, ldb, *beta,
                  C + i * sc, ldc);
    } else {
      cblas_dgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, *alpha, A + i * sa, lda, B + i * sb, ldb, *beta,
                  C + i * sc, ldc);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long int sa,
                                         const float* B, int ldb, long long int sb, const float* beta, float* C, int ldc,
                                         long long int sc, int count) {
  return host_gemm_strided_batched(handle, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count);
}
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const double* alpha, const double* A, int lda, long long int sa,
                                         const double* B, int ldb, long long int sb, const double* beta, double* C,
                                         int ldc, long long int sc, int count) {
  return host_gemm_strided_batched(handle, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, count);
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType Atype, int lda,
                                          long long int sa, const void* B, cudaDataType Btype, int ldb, long long int sb,
                                          const void* beta, void* C, cudaDataType Ctype, int ldc, long long int sc,
                                          int count, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  if (count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const auto* a = static_cast<const __nv_bfloat16*>(A);
  const auto* b = static_cast<const __nv_bfloat16*>(B);
  auto* c = static_cast<__nv_bfloat16*>(C);
  for (int i = 0; i < count; ++i) {
    const auto s = cublasGemmEx(handle, ta, tb, m, n, k, alpha, a + i * sa, Atype, lda, b + i * sb, Btype, ldb, beta,
                                c + i * sc, Ctype, ldc, compute, algo);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (i + 1 < count) --cublas_call_count;  // one call, as cuBLAS counts it
  }
  return CUBLAS_STATUS_SUCCESS;
}

// ---- cuSOLVER --------------------------------------------------------------------------------------
cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t* handle) {
  *handle = reinterpret_cast<cusolverDnHandle_t>(new solver_context);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t handle) {
  delete reinterpret_cast<solver_context*>(handle);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  reinterpret_cast<solver_context*>(handle)->stream = stream;
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSgesvd_bufferSize(cusolverDnHandle_t handle, int m, int n, int* lwork) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (m < n || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = 5 * std::max(1, n);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDgesvd_bufferSize(cusolverDnHandle_t handle, int m, int n, int* lwork) {
  return cusolverDnSgesvd_bufferSize(handle, m, n, lwork);
}

/// gesvd with jobu = jobvt = 'S': U (m×n, ldu), VT (n×n, ldvt), S decreasing; info = 0, or 1 when the
/// SVD did not converge (Eigen's JacobiSVD reports that for non-finite input).
template <class T>
cusolverStatus_t host_gesvd(cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n, T* A,
                            int lda, T* S, T* U, int ldu, T* VT, int ldvt, int lwork, int* info) {
  ++cublas_call_count;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (jobu != 'S' || jobvt != 'S') return CUSOLVER_STATUS_NOT_SUPPORTED;
  if (m < n || n < 0 || lda < std::max(1, m) || ldu < std::max(1, m) || ldvt < std::max(1, n) || lwork < 1) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Map<const mat, 0, Eigen::OuterStride<>> a(A, m, n, Eigen::OuterStride<>(lda));
  Eigen::JacobiSVD<mat> svd(a, Eigen::ComputeThinU | Eigen::ComputeThinV);
  *info = svd.info() == Eigen::Success ? 0 : 1;
  Eigen::Map<mat, 0, Eigen::OuterStride<>>(U, m, n, Eigen::OuterStride<>(ldu)) = svd.matrixU();
  Eigen::Map<mat, 0, Eigen::OuterStride<>>(VT, n, n, Eigen::OuterStride<>(ldvt)) = svd.matrixV().transpose();
  for (int i = 0; i < n; ++i) S[i] = svd.singularValues()[i];
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSgesvd(cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n,
                                  float* A, int lda, float* S, float* U, int ldu, float* VT, int ldvt, float*,
                                  int lwork, float*, int* info) {
  return host_gesvd(handle, jobu, jobvt, m, n, A, lda, S, U, ldu, VT, ldvt, lwork, info);
}
cusolverStatus_t cusolverDnDgesvd(cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n,
                                  double* A, int lda, double* S, double* U, int ldu, double* VT, int ldvt, double*,
                                  int lwork, double*, int* info) {
  return host_gesvd(handle, jobu, jobvt, m, n, A, lda, S, U, ldu, VT, ldvt, lwork, info);
}
