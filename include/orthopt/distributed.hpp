// SPDX-License-Identifier: Apache-2.0
//
// orthopt's distributed algorithms over the communicator interface, without any transport: the
// data-parallel distributed_optimizer and tensor-parallel Newton–Schulz. Include orthopt/mpi.hpp for
// the MPI communicator, or implement orthopt::communicator over another transport.
#pragma once

#include "orthopt/distributed/communicator.hpp"
#include "orthopt/distributed/distributed_optimizer.hpp"
#include "orthopt/distributed/tensor_parallel_newton_schulz.hpp"
