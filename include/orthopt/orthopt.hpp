// SPDX-License-Identifier: Apache-2.0
//
// orthopt's backend-independent core: views and the tensor concept, the backend concept, Newton–Schulz
// schedules, the generic polar operators, the update rules, the optimizer with its adaptive
// Newton–Schulz budget, and checkpoints. Include a backend's umbrella header to run them:
// orthopt/eigen.hpp (CPU) or orthopt/cuda.cuh (GPU, nvcc only).
#pragma once

#include "orthopt/backend.hpp"
#include "orthopt/checkpoint.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/name_pattern.hpp"
#include "orthopt/newton_schulz.hpp"
#include "orthopt/ns_budget.hpp"
#include "orthopt/ns_config.hpp"
#include "orthopt/optimizer.hpp"
#include "orthopt/polar.hpp"
#include "orthopt/rules.hpp"
#include "orthopt/lr_schedule.hpp"
#include "orthopt/version.hpp"
#include "orthopt/view.hpp"
