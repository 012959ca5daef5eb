// main() of the MPI tests: every rank runs the Catch2 session (the same cases in the same order), and
// every rank exits with the same status: failed if any rank failed. Rank 0 prints Catch's report; the
// other ranks print theirs only when they fail.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

// MPI's C interface only (Open MPI's deprecated C++ bindings warn under -Wextra).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) {
    MPI_Abort(MPI_COMM_WORLD, rc);
  }
  const int failed = session.run();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed != 0) std::fprintf(stderr, "rank %d of %d: %d test case(s) failed\n", rank, ranks, failed);
  MPI_Finalize();
  return any_failed != 0 ? 1 : 0;
}
