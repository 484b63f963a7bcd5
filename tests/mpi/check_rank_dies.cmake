# Runs rank_dies under mpirun: it must fail (non-zero), quickly, naming the rank that died.
execute_process(COMMAND ${MPIEXEC} ${MPIFLAGS} ${PROGRAM}
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output TIMEOUT 60)
if(result EQUAL 0)
  message(FATAL_ERROR "the job ended successfully although a rank was killed:\n${output}")
endif()
if(NOT output MATCHES "signal 9|Killed|exited on signal")
  message(FATAL_ERROR "mpirun did not name the dead rank:\n${output}")
endif()
if(output MATCHES "not reached")
  message(FATAL_ERROR "rank 0 went on as if nothing happened:\n${output}")
endif()
message(STATUS "the job ended with: ${output}")
