# cmake -DBUILD_DIR=<orthopt build> -DPREFIX=<dir> -DSOURCE_DIR=<orthopt source> -DINCLUDEDIR=include
#       [-DCONFIG=<cfg>] [-DWITH_EIGEN=ON] [-DWITH_BLAS=ON] [-DWITH_CUDA=ON] [-DWITH_MPI=ON] -P install_tree.cmake
#
# The fixture of the package tests: installs the build tree's orthopt into a fresh PREFIX and checks
# that the install holds what a consumer needs: every header at its source-relative path, the package
# config with its version file and exported targets side by side, and the license. (The package
# directory is located, not assumed: ORTHOPT_INSTALL_CMAKEDIR may move it.)
foreach(_var BUILD_DIR PREFIX SOURCE_DIR INCLUDEDIR)
  if(NOT ${_var})
    message(FATAL_ERROR "install_tree.cmake: -D${_var}= is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
set(_config_args "")
if(CONFIG)
  set(_config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${_config_args}
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${_rc})")
endif()

set(_missing "")
macro(require path)
  if(NOT EXISTS "${path}")
    list(APPEND _missing "${path}")
  endif()
endmacro()

file(GLOB_RECURSE _headers RELATIVE "${SOURCE_DIR}/include" "${SOURCE_DIR}/include/orthopt/*.hpp"
     "${SOURCE_DIR}/include/orthopt/*.cuh")
foreach(_header IN LISTS _headers)
  require("${PREFIX}/${INCLUDEDIR}/${_header}")
endforeach()

file(GLOB_RECURSE _configs "${PREFIX}/*/orthoptConfig.cmake")
list(LENGTH _configs _count)
if(NOT _count EQUAL 1)
  message(FATAL_ERROR "expected one orthoptConfig.cmake under ${PREFIX}, found ${_count}: ${_configs}")
endif()
get_filename_component(_package_dir "${_configs}" DIRECTORY)
require("${_package_dir}/orthoptConfigVersion.cmake")
require("${_package_dir}/orthoptTargets.cmake")
if(WITH_EIGEN)
  require("${_package_dir}/orthoptEigenTargets.cmake")
endif()
if(WITH_BLAS)
  require("${_package_dir}/orthoptBlasTargets.cmake")
endif()
if(WITH_CUDA)
  require("${_package_dir}/orthoptCudaTargets.cmake")
endif()
if(WITH_MPI)
  require("${_package_dir}/orthoptMpiTargets.cmake")
endif()

file(GLOB_RECURSE _licenses "${PREFIX}/*/LICENSE")
if(NOT _licenses)
  list(APPEND _missing "LICENSE (anywhere under ${PREFIX})")
else()
  list(GET _licenses 0 _license)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${_license}" "${SOURCE_DIR}/LICENSE"
                  RESULT_VARIABLE _differs)
  if(_differs)
    message(FATAL_ERROR "${_license} differs from ${SOURCE_DIR}/LICENSE")
  endif()
endif()

if(_missing)
  list(JOIN _missing "\n  " _missing)
  message(FATAL_ERROR "the install in ${PREFIX} lacks:\n  ${_missing}")
endif()
list(LENGTH _headers _count)
message(STATUS "installed orthopt into ${PREFIX}: ${_count} headers, package files in ${_package_dir}, license")
