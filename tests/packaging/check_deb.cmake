# Builds the Debian package from BUILD_DIR with CPack, unpacks it into a scratch root (dpkg-deb -x, never dpkg -i),
# and builds and runs the consumer against that root twice: through find_package() and through pkg-config + g++,
# header-only and in the separately compiled mode each time.
foreach(var BUILD_DIR WORK_DIR SOURCE_DIR GENERATOR COMPILER CPACK DPKG_DEB PKG_CONFIG)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_deb.cmake needs -D${var}=...")
  endif()
endforeach()
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${what} failed (${result})")
  endif()
endfunction()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# 1. The package, from the build tree as it is.
run("cpack -G DEB" ${CPACK} -G DEB --config ${BUILD_DIR}/CPackConfig.cmake -B ${WORK_DIR}/cpack)
file(GLOB debs ${WORK_DIR}/cpack/libprocpool-dev_*_all.deb)
list(LENGTH debs count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "expected one libprocpool-dev_*_all.deb in ${WORK_DIR}/cpack, found: ${debs}")
endif()
execute_process(COMMAND ${DPKG_DEB} --field ${debs} Package Architecture Depends OUTPUT_VARIABLE fields)
message(STATUS "${debs}:\n${fields}")
foreach(expected "Package: libprocpool-dev" "Architecture: all" "Depends: libboost-dev (>= 1.74)")
  string(FIND "${fields}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the package's control file lacks '${expected}'")
  endif()
endforeach()

# 2. Unpacked into a scratch root.
set(root ${WORK_DIR}/root)
run("dpkg-deb -x" ${DPKG_DEB} -x ${debs} ${root})
foreach(file include/procpool/procpool.hpp include/procpool/mpi.hpp include/procpool/detail/scheduler.hpp
             share/cmake/procpool/procpoolConfig.cmake share/cmake/procpool/procpoolConfigVersion.cmake
             share/cmake/procpool/procpoolTargets.cmake share/pkgconfig/procpool.pc share/pkgconfig/procpool-mpi.pc)
  if(NOT EXISTS ${root}/usr/${file})
    message(FATAL_ERROR "the package has no /usr/${file}")
  endif()
endforeach()

# 3. find_package(procpool) with CMAKE_PREFIX_PATH=<root>/usr, and it must be that copy that is found.
run("the find_package consumer"
    ${CMAKE_CTEST_COMMAND} --build-and-test ${SOURCE_DIR} ${WORK_DIR}/find_package --build-generator ${GENERATOR}
    --build-options -DCMAKE_PREFIX_PATH=${root}/usr -DCMAKE_CXX_COMPILER=${COMPILER}
    --test-command ${CMAKE_CTEST_COMMAND} --no-tests=error --output-on-failure)
file(STRINGS ${WORK_DIR}/find_package/CMakeCache.txt procpool_dir REGEX "^procpool_DIR:")
if(NOT procpool_dir STREQUAL "procpool_DIR:PATH=${root}/usr/share/cmake/procpool")
  message(FATAL_ERROR "the consumer found procpool elsewhere: ${procpool_dir}")
endif()

# 4. pkg-config + g++, with only the unpacked root's .pc files on the search path. procpool.pc derives its prefix
#    from its own location, so no PKG_CONFIG_SYSROOT_DIR or --define-variable is needed; check that it did.
set(ENV{PKG_CONFIG_PATH} ${root}/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_LIBDIR} ${root}/usr/share/pkgconfig)
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs procpool OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs procpool failed")
endif()
message(STATUS "pkg-config --cflags --libs procpool: ${flags}")
if(NOT flags MATCHES "-I${root}/usr/share/pkgconfig/\\.\\./\\.\\./include( |$)")
  message(FATAL_ERROR "procpool.pc's include directory is not in the unpacked root")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
file(MAKE_DIRECTORY ${WORK_DIR}/pkg_config)
run("g++ with pkg-config's flags"
    ${COMPILER} -O1 ${SOURCE_DIR}/main.cpp -o ${WORK_DIR}/pkg_config/consumer ${flags})
run("the pkg-config consumer" ${WORK_DIR}/pkg_config/consumer)
# The separately compiled mode without CMake: every file with -DPROCPOOL_SEPARATE_COMPILATION, and the library's
# source (pkg-config's compiled_source) compiled into the program once.
execute_process(COMMAND ${PKG_CONFIG} --variable=compiled_source procpool OUTPUT_VARIABLE compiled_source
                OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE result)
if(NOT result EQUAL 0 OR NOT EXISTS "${compiled_source}")
  message(FATAL_ERROR "pkg-config --variable=compiled_source procpool names no file: '${compiled_source}'")
endif()
run("g++ in the compiled mode with pkg-config's flags"
    ${COMPILER} -O1 -DPROCPOOL_SEPARATE_COMPILATION ${SOURCE_DIR}/main.cpp ${compiled_source}
    -o ${WORK_DIR}/pkg_config/consumer_compiled ${flags})
run("the pkg-config consumer in the compiled mode" ${WORK_DIR}/pkg_config/consumer_compiled)

# 5. procpool-mpi.pc resolves through MPI's own .pc file, where there is one.
unset(ENV{PKG_CONFIG_LIBDIR})
execute_process(COMMAND ${PKG_CONFIG} --exists mpi-c RESULT_VARIABLE no_mpi)
if(no_mpi EQUAL 0)
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs procpool-mpi OUTPUT_VARIABLE flags
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE result)
  message(STATUS "pkg-config --cflags --libs procpool-mpi: ${flags}")
  if(NOT result EQUAL 0 OR NOT flags MATCHES "-I${root}/usr/share/pkgconfig/")
    message(FATAL_ERROR "pkg-config --cflags --libs procpool-mpi failed")
  endif()
endif()
