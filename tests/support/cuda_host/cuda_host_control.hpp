// The host emulation of the CUDA runtime, cuBLAS and cuSOLVER that the thrust_host tests link instead of
// NVIDIA's libraries (cuda_host_runtime.cpp), and the hooks through which tests make a call fail.
#pragma once

#include <cstdint>

namespace orthopt_cuda_host {

/// The next cuBLAS call returns `status` (a cublasStatus_t value) instead of running.
void fail_next_cublas_call(int status);
/// The next cudaMalloc returns cudaErrorMemoryAllocation.
void fail_next_cuda_malloc();
/// cuBLAS / cuSOLVER / cudaMemcpyAsync / cudaStreamSynchronize calls so far (tests count syncs with it).
std::int64_t cublas_calls();
std::int64_t stream_synchronizations();
/// Live "device" allocations (cudaMalloc minus cudaFree).
std::int64_t live_allocations();

}  // namespace orthopt_cuda_host
