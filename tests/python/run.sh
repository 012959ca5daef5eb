#!/usr/bin/env bash
# Builds the Python package as a user would (pip install . into a virtual environment) and runs its
# pytest suite (tests/python) on numpy and Debian's CPU PyTorch (python3-torch). The package is built
# with ORTHOPT_PYTHON_CUDA=HOST_EMULATION: the CPU backends as every user gets them, and the module's
# CUDA code path compiled by g++ on the CUDA backend's host emulation, so that test_cuda_emulation.py
# runs it without a GPU (nvcc compiles the real one in tests/run.sh --cuda).
#
#   bash tests/python/run.sh        (tests/run.sh runs it after the C++ Release tests)
#
# The virtual environment is build-python/venv, made from Debian's /usr/bin/python3 with the system's
# site packages (numpy, torch, pytest from Debian); pip fetches scikit-build-core and nanobind from
# PyPI to build. Set ORTHOPT_PYTHON to use another interpreter that has numpy, torch and pytest.
#   bash tests/python/run.sh --cuda-object
#                                   compiles one of the module's CUDA translation units with nvcc
#                                   (src/bind_cuda_f32.cu: nanobind, the bindings and the CUDA backend
#                                   together) in build-python/cuda-check, for tests/run.sh --cuda. The three
#                                   CUDA units differ only in the element type; a whole nvcc build of the
#                                   module takes minutes more than CI's CUDA lane has to spare.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
python="${ORTHOPT_PYTHON:-/usr/bin/python3}"
venv=build-python/venv
if [[ "${1:-}" == "--cuda-object" ]]; then
  venv=build-python/cuda-venv
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check nanobind
  nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  cmake -S . -B build-python/cuda-check -DCMAKE_BUILD_TYPE=Release -DORTHOPT_PYTHON=ON -DORTHOPT_PYTHON_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc" \
        -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF \
        -DORTHOPT_MPI=OFF -DPython_EXECUTABLE="$repo_root/$venv/bin/python" >/dev/null
  make -C build-python/cuda-check/python src/bind_cuda_f32.o
  exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv --system-site-packages "$venv"
fi
# build-dir: the CMake tree is kept between runs (rebuilds only what changed).
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings=build-dir=build-python/cmake --config-settings=cmake.build-type=Release \
  --config-settings=cmake.define.ORTHOPT_PYTHON_CUDA=HOST_EMULATION .
cd tests/python
# From the tests' folder: the installed package is imported, not the source tree's python/orthopt.
"$repo_root/$venv/bin/python" -c "import orthopt, orthopt.torch; print('tests/python/run.sh: orthopt', orthopt.__version__, 'CPU backend:', *orthopt.cpu_backend())"
# One OpenMP thread: the host emulation runs thousands of tiny parallel regions (as its C++ tests do).
OMP_NUM_THREADS=1 "$repo_root/$venv/bin/python" -m pytest -q -p no:cacheprovider .
