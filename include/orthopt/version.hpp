// orthopt: orthogonalized optimizers (Newton–Schulz, polar, Muon-family update rules).
// SPDX-License-Identifier: Apache-2.0
#pragma once

// The single source of the version: CMakeLists.txt parses these three lines.
#define ORTHOPT_VERSION_MAJOR 0
#define ORTHOPT_VERSION_MINOR 2
#define ORTHOPT_VERSION_PATCH 0

#define ORTHOPT_VERSION_STRING "0.2.0"
