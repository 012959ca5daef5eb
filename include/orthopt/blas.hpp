// SPDX-License-Identifier: Apache-2.0
//
// orthopt on the CPU with the products on the system BLAS: the core, the Eigen backend, and
// orthopt::blas_backend (orthopt/blas/backend.hpp). Link the CMake target orthopt::blas.
//
//   #include <orthopt/blas.hpp>
//   orthopt::newton_schulz<float, orthopt::blas_backend> ns(rows, cols, orthopt::ns_presets::keller());
//   ns(orthopt::make_view(gradient), orthopt::make_view(update));
#pragma once

#include "orthopt/blas/backend.hpp"
#include "orthopt/eigen.hpp"
