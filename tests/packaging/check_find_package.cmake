# Installs procpool from BUILD_DIR into a scratch prefix, then builds and runs the consumer against it
# (header-only and with procpool::compiled).
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE result OUTPUT_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed")
endif()
foreach(file share/cmake/procpool/procpoolConfigVersion.cmake share/procpool/procpool.cpp)
  if(NOT EXISTS ${WORK_DIR}/prefix/${file})
    message(FATAL_ERROR "the install has no ${file}")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_CTEST_COMMAND} --build-and-test ${SOURCE_DIR} ${WORK_DIR}/build
                        --build-generator ${GENERATOR}
                        --build-options -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_CXX_COMPILER=${COMPILER}
                        --test-command ${CMAKE_CTEST_COMMAND} --no-tests=error --output-on-failure
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "the find_package consumer failed")
endif()
