// SPDX-License-Identifier: Apache-2.0
//
// orthopt over MPI (target orthopt::mpi, package component `mpi`): the MPI communicator and every
// distributed algorithm (orthopt/distributed.hpp).
//
//   #include <orthopt/eigen.hpp>
//   #include <orthopt/mpi.hpp>
//   orthopt::mpi_communicator comm(MPI_COMM_WORLD);
//   orthopt::distributed_optimizer<float, orthopt::eigen_backend> opt(comm);
#pragma once

#include "orthopt/distributed.hpp"
#include "orthopt/mpi/communicator.hpp"
