// SPDX-License-Identifier: Apache-2.0
//
// orthopt on NVIDIA GPUs: the core plus the CUDA backend (cuBLAS, cuSOLVER, Thrust). Include from a .cu
// file compiled by nvcc with -std=c++20; link the CMake target orthopt::cuda.
//
//   #include <orthopt/cuda.cuh>
//   orthopt::cuda_backend gpu(stream);                        // one context: cuBLAS handle on `stream`
//   orthopt::newton_schulz<float, orthopt::cuda_backend> ns(rows, cols, orthopt::ns_presets::keller(), gpu);
//   ns(input_view, output_view);                              // views of device memory
//
// Element types: float, double and orthopt::bfloat16 (__nv_bfloat16, storage only: arithmetic in float).
#pragma once

#if !defined(__CUDACC__)
#error "<orthopt/cuda.cuh> is compiled by nvcc (a .cu file); CPU code includes <orthopt/eigen.hpp> or <orthopt/blas.hpp>"
#endif

#include "orthopt/cuda/backend.hpp"
#include "orthopt/cuda/svd.hpp"
#include "orthopt/orthopt.hpp"
