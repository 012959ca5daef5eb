#!/usr/bin/env bash
# The GPU checks of the CUDA backend, as one script for a machine with an NVIDIA GPU and nvcc:
#   1. configure with ORTHOPT_ENABLE_CUDA=ON (Hopper: CMAKE_CUDA_ARCHITECTURES=90), build the GPU suite
#      and bench_cuda;
#   2. run the GPU suite (ctest label gpu: the CUDA backend against the Eigen backend, CUDA-graph
#      replay, no allocation in steps);
#   3. run bench_cuda (CUDA-event timing) and, in the same session, the PyTorch peer
#      (benchmarks/bench_torch_ns.py), then print the paired table (benchmarks/summarize_gpu.py).
# Dependencies the GPU machine lacks come from ./.gpu-carry (benchmarks/prepare_gpu_carry.sh).
# Results go to $OUT (or ./gpu-results): the suite's log, both JSON files and the table.
#
#   bash benchmarks/run_gpu.sh [--quick]    --quick: fewer shapes and repetitions
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/gpu-results}"
mkdir -p "$out"
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
nvcc_path="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
jobs="$(nproc 2>/dev/null || echo 4)"
prefix_args=()
[[ -d .gpu-carry/prefix ]] && prefix_args=(-DCMAKE_PREFIX_PATH="$repo_root/.gpu-carry/prefix")
export LD_LIBRARY_PATH="$repo_root/.gpu-carry/prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>&1 || true
cat "$out/device.txt"

cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DORTHOPT_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
      -DCMAKE_CUDA_ARCHITECTURES="${ORTHOPT_CUDA_ARCHITECTURES:-90}" -DORTHOPT_BUILD_EXAMPLES=OFF \
      -DORTHOPT_CUDA_HOST_TESTS=OFF "${prefix_args[@]}" > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$jobs" --target test_gpu bench_cuda > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

echo "== GPU suite"
(cd build-gpu && ./tests/gpu/test_gpu 2>&1) | tee "$out/gpu-suite.log" | tail -25
suite_rc=${PIPESTATUS[0]}

echo "== bench_cuda"
filter='.'
reps=3
if ((quick)); then filter='(NS/keller|step/adamuon|ceiling)/.*/(1024x1024|4096x4096|64x128x128|8192)$'; reps=1; fi
./build-gpu/benchmarks/bench_cuda --benchmark_filter="$filter" --benchmark_repetitions="$reps" \
    --benchmark_report_aggregates_only=true --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json \
    > "$out/bench_cuda.txt" 2>&1
tail -5 "$out/bench_cuda.txt"

echo "== PyTorch peer"
torch_args=(--out "$out/bench_torch.json")
((quick)) && torch_args+=(--quick)
python3 benchmarks/bench_torch_ns.py "${torch_args[@]}" 2>&1 | tail -8

echo "== paired table"
python3 benchmarks/summarize_gpu.py "$out/bench_cuda.json" "$out/bench_torch.json" | tee "$out/table.md"
exit "$suite_rc"
