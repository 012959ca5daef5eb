# example.mpi_data_parallel: runs the data-parallel example on each rank count in RANKS ("1|2|4") and
# requires the same "parameters fnv1a64:" line from every run.
#   cmake -DMPIEXEC=mpirun -DNUMPROC_FLAG=-n -DMPIEXEC_FLAGS="--oversubscribe" -DPROGRAM=... -DDATA=...
#         -DSTEPS=120 -DRANKS="1|2|4" -P same_on_every_rank_count.cmake
string(REPLACE "|" ";" _ranks "${RANKS}")
string(REPLACE "|" ";" _flags "${MPIEXEC_FLAGS}")
set(_first "")
foreach(_n IN LISTS _ranks)
  execute_process(COMMAND "${MPIEXEC}" ${NUMPROC_FLAG} ${_n} ${_flags} "${PROGRAM}" --steps ${STEPS} --data "${DATA}"
                  OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc)
  message("---- ${_n} rank(s):\n${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "the run on ${_n} rank(s) failed (exit ${_rc})")
  endif()
  string(REGEX MATCH "parameters fnv1a64: [0-9a-f]+" _hash "${_out}")
  if(NOT _hash)
    message(FATAL_ERROR "the run on ${_n} rank(s) printed no parameter hash")
  endif()
  if(NOT _first)
    set(_first "${_hash}")
  elseif(NOT _hash STREQUAL _first)
    message(FATAL_ERROR "${_n} rank(s) ended with ${_hash}, the first run with ${_first}")
  endif()
endforeach()
message("every rank count ended with the same parameters (${_first})")
