#!/usr/bin/env bash
# The demo (see README.md): installs what it needs on Debian/Ubuntu (libtorch, OpenBLAS, Eigen, the
# `fortunes` corpus, gnuplot), builds examples/gpt/gpt_demo.cpp for this machine and trains a byte-level
# GPT with AdamW, Muon, AdaMuon, NAMO and NAMO-D, and Muon and AdaMuon with the adaptive Newton–Schulz
# budget, two seeds each. Arguments go to the demo (--quick,
# --sweep, --steps N, --seeds K, --lr NAME=X, --out DIR; --help); output lands in ./gpt-output.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

packages=(cmake g++ make libeigen3-dev libopenblas-openmp-dev libtorch-dev fortunes gnuplot-nox)
bash cmake/install-debian-packages.sh "run_demo.sh" "${packages[@]}"
# libtorch's matmuls and orthopt's BLAS run on OpenBLAS: its best kernels for this CPU, checked.
source cmake/openblas-kernels.sh
orthopt_openblas_kernels "run_demo.sh"

cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF \
      -DORTHOPT_BUILD_EXAMPLES=ON
cmake --build build-demo -j "$(nproc 2>/dev/null || echo 2)" --target orthopt_gpt_demo
exec ./build-demo/examples/orthopt_gpt_demo "$@"
