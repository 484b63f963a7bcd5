# Installs procpool from BUILD_DIR into a scratch prefix, then builds and runs the consumer against it.
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE result OUTPUT_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed")
endif()
if(NOT EXISTS ${WORK_DIR}/prefix/share/cmake/procpool/procpoolConfigVersion.cmake)
  message(FATAL_ERROR "the install has no procpoolConfigVersion.cmake")
endif()
execute_process(COMMAND ${CMAKE_CTEST_COMMAND} --build-and-test ${SOURCE_DIR} ${WORK_DIR}/build
                        --build-generator ${GENERATOR}
                        --build-options -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_CXX_COMPILER=${COMPILER}
                        --test-command consumer
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "the find_package consumer failed")
endif()
