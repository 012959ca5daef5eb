# Install rules and the exported package for orthopt (included by the top-level CMakeLists.txt when
# ORTHOPT_INSTALL is ON). Consumers then write
#
#   find_package(orthopt CONFIG REQUIRED COMPONENTS eigen)
#   target_link_libraries(app PRIVATE orthopt::eigen)
#
# Five export sets: orthoptTargets (orthopt::orthopt, the backend-independent core, no dependencies),
# orthoptEigenTargets (orthopt::eigen, which needs Eigen3::Eigen), orthoptBlasTargets (orthopt::blas,
# which also needs BLAS::BLAS) and orthoptCudaTargets (orthopt::cuda, which needs the CUDA toolkit's
# cuBLAS, cuSOLVER and runtime; installed when orthopt was configured with ORTHOPT_ENABLE_CUDA=ON) and
# orthoptMpiTargets (orthopt::mpi, which needs MPI's C++ target). A consumer without Eigen can still
# find the package and use orthopt::orthopt; the Eigen targets are only loaded when Eigen is found.
#
# Paths come from CMAKE_CURRENT_LIST_DIR / PROJECT_SOURCE_DIR (never CMAKE_SOURCE_DIR), so these rules
# are right when orthopt is added with add_subdirectory() too.
include(CMakePackageConfigHelpers)

# Header-only and architecture independent: the package files go under share/, where find_package
# looks on every architecture. Packagers may move them.
set(ORTHOPT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/orthopt"
    CACHE STRING "Where orthopt's CMake package files are installed (relative to the prefix)")
mark_as_advanced(ORTHOPT_INSTALL_CMAKEDIR)

# ---- Headers (layout kept: <prefix>/include/orthopt/...) ------------------------------------------
# *.cuh too: the CUDA backend's headers ship with the package even though only nvcc can use them.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/orthopt"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.hpp" PATTERN "*.cuh")

# ---- Targets ----------------------------------------------------------------------------------------
install(TARGETS orthopt EXPORT orthoptTargets)
install(EXPORT orthoptTargets
        NAMESPACE orthopt::
        FILE orthoptTargets.cmake
        DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")

# orthopt_eigen exists only when Eigen 3.4 was found at configure time; its link to `orthopt` refers
# to the other export set, so the config loads orthoptTargets.cmake first.
if(TARGET orthopt_eigen)
  install(TARGETS orthopt_eigen EXPORT orthoptEigenTargets)
  install(EXPORT orthoptEigenTargets
          NAMESPACE orthopt::
          FILE orthoptEigenTargets.cmake
          DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")
endif()

# orthopt_blas links BLAS::BLAS, which the config recreates with find_dependency(BLAS).
if(TARGET orthopt_blas)
  install(TARGETS orthopt_blas EXPORT orthoptBlasTargets)
  install(EXPORT orthoptBlasTargets
          NAMESPACE orthopt::
          FILE orthoptBlasTargets.cmake
          DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")
endif()

# orthopt_mpi links MPI::MPI_CXX, which the config recreates with find_dependency(MPI COMPONENTS CXX).
if(TARGET orthopt_mpi)
  install(TARGETS orthopt_mpi EXPORT orthoptMpiTargets)
  install(EXPORT orthoptMpiTargets
          NAMESPACE orthopt::
          FILE orthoptMpiTargets.cmake
          DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")
endif()

# orthopt_cuda links CUDA::cublas, CUDA::cusolver and CUDA::cudart, which the config recreates with
# find_dependency(CUDAToolkit).
if(TARGET orthopt_cuda)
  install(TARGETS orthopt_cuda EXPORT orthoptCudaTargets)
  install(EXPORT orthoptCudaTargets
          NAMESPACE orthopt::
          FILE orthoptCudaTargets.cmake
          DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")
endif()

# ---- Package config and version ----------------------------------------------------------------------
configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/orthoptConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/orthoptConfig.cmake"
  INSTALL_DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")

# Version compatibility. While orthopt is 0.x every minor release may change the API (semantic
# versioning gives 0.x no stability promise), so a request for 0.1 must not accept 0.2:
# SameMinorVersion. SameMajorVersion would accept 0.2 for 0.1 (same major, 0). From 1.0 on, releases
# with one major version are compatible: SameMajorVersion. ARCH_INDEPENDENT: header-only, so a 32-bit
# consumer may use a package installed by a 64-bit build and the reverse.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(_orthopt_compatibility SameMinorVersion)
else()
  set(_orthopt_compatibility SameMajorVersion)
endif()
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/orthoptConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY ${_orthopt_compatibility}
  ARCH_INDEPENDENT)
unset(_orthopt_compatibility)

install(FILES "${PROJECT_BINARY_DIR}/orthoptConfig.cmake" "${PROJECT_BINARY_DIR}/orthoptConfigVersion.cmake"
        DESTINATION "${ORTHOPT_INSTALL_CMAKEDIR}")

# ---- License ----------------------------------------------------------------------------------------
# share/doc/orthopt, spelled out: CMAKE_INSTALL_DOCDIR is named after whichever project included
# GNUInstallDirs first, which is the parent project when orthopt is a subdirectory.
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION "${CMAKE_INSTALL_DATAROOTDIR}/doc/orthopt")
