# How orthopt's own tests and examples start MPI programs (included where they are registered):
#   ORTHOPT_MPIEXEC        mpirun / mpiexec
#   ORTHOPT_MPIEXEC_NUMPROC_FLAG  -n (or what FindMPI found)
#   ORTHOPT_MPIEXEC_FLAGS  flags before the program: --oversubscribe for Open MPI (CI has 2 cores and
#                          the tests start up to 4 ranks)
#   ORTHOPT_MPI_ENVIRONMENT  OpenMPI refuses to start as root unless told (CI runs as root); one OpenMP
#                          thread per rank, so that four ranks do not spin four thread pools on two cores
#                          and every rank computes as the single-process reference it is compared with.
if(DEFINED ORTHOPT_MPIEXEC)
  return()
endif()
set(ORTHOPT_MPIEXEC "${MPIEXEC_EXECUTABLE}")
if(NOT ORTHOPT_MPIEXEC)
  find_program(ORTHOPT_MPIEXEC NAMES mpirun mpiexec REQUIRED)
endif()
execute_process(COMMAND "${ORTHOPT_MPIEXEC}" --version OUTPUT_VARIABLE _orthopt_mpiexec_version ERROR_QUIET)
set(ORTHOPT_MPIEXEC_NUMPROC_FLAG "${MPIEXEC_NUMPROC_FLAG}")
if(NOT ORTHOPT_MPIEXEC_NUMPROC_FLAG)
  set(ORTHOPT_MPIEXEC_NUMPROC_FLAG -n)
endif()
set(ORTHOPT_MPIEXEC_FLAGS ${MPIEXEC_PREFLAGS})
if(_orthopt_mpiexec_version MATCHES "Open MPI|OpenRTE")
  list(APPEND ORTHOPT_MPIEXEC_FLAGS --oversubscribe)
endif()
unset(_orthopt_mpiexec_version)
set(ORTHOPT_MPI_ENVIRONMENT OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
if(ORTHOPT_SANITIZE)
  # OpenMPI's own allocations outlive MPI_Finalize; LeakSanitizer would report them as orthopt's.
  list(APPEND ORTHOPT_MPI_ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
endif()
