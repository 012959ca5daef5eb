#!/usr/bin/env bash
# The second example (see README.md): installs what it needs on Debian/Ubuntu, builds the Fashion-MNIST
# program for this machine and trains a perceptron with AdamW, Muon, AdaMuon, NAMO and NAMO-D. Arguments
# go to the program (e.g. --quick, --steps N, --lr X, --out DIR); output lands in ./demo-output by default.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

packages=(cmake g++ make libeigen3-dev zlib1g-dev dataset-fashion-mnist gnuplot-nox)
bash cmake/install-debian-packages.sh "run_fashion_mnist.sh" "${packages[@]}"

cmake -S . -B build-fashion-mnist -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF \
      -DORTHOPT_BUILD_EXAMPLES=ON
cmake --build build-fashion-mnist -j "$(nproc 2>/dev/null || echo 2)" --target orthopt_demo
exec ./build-fashion-mnist/examples/orthopt_demo "$@"
