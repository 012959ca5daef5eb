// SPDX-License-Identifier: Apache-2.0
//
// orthopt on the CPU: the core plus the Eigen backend. Link the CMake target orthopt::eigen.
//
//   #include <orthopt/eigen.hpp>
//   orthopt::newton_schulz<float, orthopt::eigen_backend> ns(rows, cols, orthopt::ns_presets::keller());
//   ns(orthopt::make_view(gradient), orthopt::make_view(update));
#pragma once

#include "orthopt/eigen/backend.hpp"
#include "orthopt/eigen/svd.hpp"
#include "orthopt/orthopt.hpp"
