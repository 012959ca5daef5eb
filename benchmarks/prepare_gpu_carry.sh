#!/usr/bin/env bash
# Prepares, on this (Debian) machine, what benchmarks/run_gpu.sh needs on a GPU machine that lacks it,
# under ./.gpu-carry (ignored by git):
#   prefix/    Eigen's headers, Catch2's single header and Google Benchmark (headers and library), each
#              with its CMake package files;
#   fortunes/  the GPT demo's corpus (Debian's fortunes);
#   bin/       test_gpu and bench_cuda built here by nvcc for the GPU's architecture (sm_90, Hopper, or
#              ORTHOPT_CUDA_ARCHITECTURES), so that the GPU machine's time is not spent compiling them;
#              run_gpu.sh uses them only if they load there, and builds them itself otherwise.
#              Skipped with --no-build, or when there is no nvcc.
# Pass the folder along with the working tree (the device tool: carry [".gpu-carry"]), then run
# benchmarks/run_gpu.sh there. About 30 MiB.
#
#   bash benchmarks/prepare_gpu_carry.sh [--no-build]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
build=1
[[ "${1:-}" == "--no-build" ]] && build=0
bash cmake/install-debian-packages.sh "benchmarks/prepare_gpu_carry.sh" libeigen3-dev catch2 libbenchmark-dev fortunes \
  cmake g++ make

prefix=.gpu-carry/prefix
rm -rf .gpu-carry
mkdir -p "$prefix/include" "$prefix/share" "$prefix/lib/cmake" "$prefix/lib/x86_64-linux-gnu/cmake" .gpu-carry/fortunes
cp -r /usr/include/eigen3 "$prefix/include/"
cp -r /usr/share/eigen3 "$prefix/share/"
cp -r /usr/include/catch2 "$prefix/include/"
cp -r /usr/lib/cmake/Catch2 "$prefix/lib/cmake/"
cp -r /usr/include/benchmark "$prefix/include/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark "$prefix/lib/x86_64-linux-gnu/cmake/"
cp -P /usr/lib/x86_64-linux-gnu/libbenchmark*.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a "$prefix/lib/x86_64-linux-gnu/"
# The fortune text files: regular files without an extension (the demo reads only those).
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.*' -exec cp {} .gpu-carry/fortunes/ \;
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude

nvcc_path="$(command -v nvcc || true)"
[[ -z "$nvcc_path" && -x /usr/local/cuda/bin/nvcc ]] && nvcc_path=/usr/local/cuda/bin/nvcc
if ((build)) && [[ -n "$nvcc_path" ]]; then
  cmake -S . -B build-gpu-carry -DCMAKE_BUILD_TYPE=Release -DORTHOPT_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
        -DCMAKE_CUDA_ARCHITECTURES="${ORTHOPT_CUDA_ARCHITECTURES:-90}" -DORTHOPT_BUILD_EXAMPLES=OFF \
        -DORTHOPT_CUDA_HOST_TESTS=OFF -DORTHOPT_BLAS=OFF -DORTHOPT_MPI=OFF -DORTHOPT_OPENMP=OFF > /dev/null
  cmake --build build-gpu-carry -j "$(nproc)" --target test_gpu bench_cuda
  mkdir -p .gpu-carry/bin
  cp build-gpu-carry/tests/gpu/test_gpu build-gpu-carry/benchmarks/bench_cuda .gpu-carry/bin/
  (cd .gpu-carry/bin && git -C "$repo_root" rev-parse HEAD > built-from.txt && git -C "$repo_root" status --short >> built-from.txt)
elif ((build)); then
  echo "prepare_gpu_carry.sh: no nvcc here; run_gpu.sh will build test_gpu and bench_cuda on the GPU machine"
fi
du -sh .gpu-carry
