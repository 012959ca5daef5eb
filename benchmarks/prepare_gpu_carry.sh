#!/usr/bin/env bash
# Prepares, on this (Debian) machine, what benchmarks/run_gpu.sh needs on a GPU machine that lacks it:
# Eigen's headers, Catch2's single header and Google Benchmark (headers and library), each with its CMake
# package files, under one prefix in ./.gpu-carry (ignored by git). Pass that folder along with the
# working tree (the device tool: carry [".gpu-carry"]), then run benchmarks/run_gpu.sh there.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash cmake/install-debian-packages.sh "benchmarks/prepare_gpu_carry.sh" libeigen3-dev catch2 libbenchmark-dev

prefix=.gpu-carry/prefix
rm -rf .gpu-carry
mkdir -p "$prefix/include" "$prefix/share" "$prefix/lib/cmake" "$prefix/lib/x86_64-linux-gnu/cmake"
cp -r /usr/include/eigen3 "$prefix/include/"
cp -r /usr/share/eigen3 "$prefix/share/"
cp -r /usr/include/catch2 "$prefix/include/"
cp -r /usr/lib/cmake/Catch2 "$prefix/lib/cmake/"
cp -r /usr/include/benchmark "$prefix/include/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark "$prefix/lib/x86_64-linux-gnu/cmake/"
cp -P /usr/lib/x86_64-linux-gnu/libbenchmark*.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a "$prefix/lib/x86_64-linux-gnu/"
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
du -sh .gpu-carry
