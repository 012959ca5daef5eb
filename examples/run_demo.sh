#!/usr/bin/env bash
# The demo (see README.md): installs what it needs on Debian/Ubuntu, builds the demo and trains a
# Fashion-MNIST perceptron with AdamW, Muon, AdaMuon, NAMO and NAMO-D. Arguments go to the demo
# (e.g. --quick, --steps N, --lr X, --out DIR); output lands in ./demo-output by default.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

packages=(cmake g++ make libeigen3-dev zlib1g-dev dataset-fashion-mnist gnuplot-nox)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} > 0)); then
    echo "run_demo.sh: installing ${missing[*]}"
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
      sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
else
  echo "run_demo.sh: no apt-get here; assuming ${packages[*]} (or equivalents) are installed" >&2
fi

cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF \
      -DORTHOPT_BUILD_EXAMPLES=ON
cmake --build build-demo -j "$(nproc 2>/dev/null || echo 2)" --target orthopt_demo
exec ./build-demo/examples/orthopt_demo "$@"
