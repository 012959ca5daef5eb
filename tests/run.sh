#!/usr/bin/env bash
# The one test command (see README.md): installs what the build needs on Debian/Ubuntu, configures,
# builds and runs every test.
#
#   bash tests/run.sh              Release build in ./build, warnings as errors, all tests
#   bash tests/run.sh --sanitize   RelWithDebInfo build in ./build-sanitize with AddressSanitizer and
#                                  UndefinedBehaviorSanitizer (no benchmarks, no examples), all tests
#   bash tests/run.sh --tsan       RelWithDebInfo build in ./build-tsan with ThreadSanitizer and without
#                                  OpenMP (libgomp is not instrumented); builds and runs test_concurrency
#                                  (independent optimizers and plans on several threads)
#   bash tests/run.sh --cuda       with nvcc (the CUDA toolkit): Release build in ./build-cuda with
#                                  ORTHOPT_ENABLE_CUDA=ON; builds the CUDA targets (GPU suite, bench_cuda,
#                                  the package's CUDA consumer) and runs the `gpu` tests, which report
#                                  "skipped" without a GPU. Without nvcc it says so and exits 0.
#
# Works from any directory; exits non-zero when any step fails.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

sanitize=0
cuda=0
tsan=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --cuda) cuda=1 ;;
    --tsan) tsan=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tests/run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# ---- Dependencies (Debian packages) -------------------------------------------------------------
# libopenblas-openmp-dev: the BLAS backend (orthopt::blas: cblas.h and an optimized BLAS on the same
# OpenMP runtime as orthopt); libtorch-dev: the GPT demo, the libtorch example and the libtorch peer in
# the benchmark (without OpenBLAS, libtorch would run on the reference BLAS); fortunes: the GPT demo's
# corpus (its smoke test, example.gpt_quick); libopenmpi-dev and openmpi-bin: the distributed optimizer
# (orthopt::mpi) and its tests, which ctest runs under mpirun at 1 to 4 ranks (label mpi).
packages=(cmake g++ make libeigen3-dev catch2 libbenchmark-dev zlib1g-dev dataset-fashion-mnist
          libopenblas-openmp-dev libtorch-dev fortunes libopenmpi-dev openmpi-bin)
bash cmake/install-debian-packages.sh "tests/run.sh" "${packages[@]}"

# ---- Configure, build, test ----------------------------------------------------------------------
jobs="$(nproc 2>/dev/null || echo 2)"
if ((cuda)); then
  nvcc_path="$(command -v nvcc || true)"
  if [[ -z "$nvcc_path" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc_path=/usr/local/cuda/bin/nvcc; fi
  if [[ -z "$nvcc_path" ]]; then
    echo "tests/run.sh --cuda: no nvcc (CUDA toolkit) found; the CUDA build is skipped"
    exit 0
  fi
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DORTHOPT_WERROR=ON -DORTHOPT_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc_path" -DORTHOPT_BUILD_EXAMPLES=OFF
  # Only the CUDA targets: the rest is what the plain run builds and tests.
  cmake --build build-cuda -j "$jobs" --target test_gpu bench_cuda
  ctest --test-dir build-cuda --output-on-failure -L gpu
  exit 0
fi
if ((tsan)); then
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DORTHOPT_SANITIZE=thread -DORTHOPT_OPENMP=OFF \
        -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF
  cmake --build build-tsan -j "$jobs" --target test_concurrency
  ctest --test-dir build-tsan --output-on-failure -R '^test_concurrency:'
  exit 0
fi
if ((sanitize)); then
  build_dir=build-sanitize
  cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DORTHOPT_SANITIZE=address,undefined
              -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF)
else
  build_dir=build
  cmake_args=(-DCMAKE_BUILD_TYPE=Release -DORTHOPT_WERROR=ON)
fi

cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j2
