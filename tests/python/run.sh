#!/usr/bin/env bash
# Builds the Python package as a user would (pip install . into a virtual environment) and runs its
# pytest suite (tests/python) on numpy and Debian's CPU PyTorch (python3-torch).
#
#   bash tests/python/run.sh        (tests/run.sh runs it after the C++ Release tests)
#
# The virtual environment is build-python/venv, made from Debian's /usr/bin/python3 with the system's
# site packages (numpy, torch, pytest from Debian); pip fetches scikit-build-core and nanobind from
# PyPI to build. Set ORTHOPT_PYTHON to use another interpreter that has numpy, torch and pytest.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
python="${ORTHOPT_PYTHON:-/usr/bin/python3}"
venv=build-python/venv
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv --system-site-packages "$venv"
fi
# build-dir: the CMake tree is kept between runs (rebuilds only what changed).
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  --config-settings=build-dir=build-python/cmake --config-settings=cmake.build-type=Release .
cd tests/python
# From the tests' folder: the installed package is imported, not the source tree's python/orthopt.
"$repo_root/$venv/bin/python" -c "import orthopt, orthopt.torch; print('tests/python/run.sh: orthopt', orthopt.__version__, 'CPU backend:', *orthopt.cpu_backend())"
"$repo_root/$venv/bin/python" -m pytest -q -p no:cacheprovider .
