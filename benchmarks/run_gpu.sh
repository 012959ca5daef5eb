#!/usr/bin/env bash
# The GPU checks of the CUDA backend, as one script for a machine with an NVIDIA GPU, nvcc and PyTorch:
#   1. the GPU suite (test_gpu: the CUDA backend against the Eigen backend in float, double and bf16,
#      NaN input to cuSOLVER, CUDA-graph capture and replay of a rule step and of an optimizer step,
#      no allocation in steps), built for Hopper (CMAKE_CUDA_ARCHITECTURES=90, or
#      ORTHOPT_CUDA_ARCHITECTURES), or taken from .gpu-carry/bin when prepared there and runnable here;
#   2. bench_cuda (CUDA-event timing) and, in the same session, the PyTorch peer
#      (benchmarks/bench_torch_ns.py: eager NS5, torch.optim.Muon, torch's bf16 GEMM), then the paired
#      table with the speed targets (benchmarks/summarize_gpu.py);
#   3. the GPT demo on the GPU (orthopt_gpt_demo_cuda --device cuda, built against this machine's
#      libtorch, which must have CUDA), every optimizer for a short run, stepping the CUDA tensors in
#      place; then AdamW and Muon again with the value checks waiting for the GPU (--gpu-checks host);
#   4. where the time of one NS call goes, orthopt's kernels against torch's
#      (benchmarks/profile_gpu.py: Nsight Compute and torch.profiler), and compute-sanitizer's memcheck
#      on a few suite cases (these two run while the demo builds).
# Dependencies the GPU machine lacks come from ./.gpu-carry (benchmarks/prepare_gpu_carry.sh): Eigen,
# Catch2, Google Benchmark, the demo's corpus, and prebuilt test_gpu and bench_cuda.
# Results go to $OUT (or ./gpu-results): table.md, gpu-suite.log, summary.txt and everything else in
# gpu-results.tar.gz. Each phase's time is printed.
#
#   bash benchmarks/run_gpu.sh [--quick] [--phases suite,bench,demo,profile,memcheck]
#     --quick: fewer shapes and repetitions; --phases: only these (default: all, in this order)
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/gpu-results}"
work="$repo_root/gpu-results-work"
rm -rf "$work"
mkdir -p "$out" "$work"
quick=0
phases=suite,bench,demo,profile,memcheck
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --phases) phases="${2:?--phases needs a list}"; shift ;;
    *) echo "run_gpu.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ",$phases," == *",$1,"* ]]; }
demo=0
want demo && demo=1
suite_rc=0
start=$SECONDS
# What is under $OUT after each phase (so that a run stopped by its time limit still returns its logs):
# the table, the suite's log and a summary beside a tarball of everything.
save() {
  echo "seconds=$((SECONDS - start)) suite_rc=${suite_rc:-} demo_rc=${demo_rc:-}" > "$work/summary.txt"
  cat "$work/device.txt" >> "$work/summary.txt" 2>/dev/null
  for f in table.md gpu-suite.log summary.txt profile.md; do [[ -f "$work/$f" ]] && cp "$work/$f" "$out/"; done
  tar -czf "$out/gpu-results.tar.gz" -C "$work" --exclude='*.png' . 2>/dev/null
}
phase() { save; echo "== [$((SECONDS - start)) s] $*"; }
nvcc_path="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
jobs="$(nproc 2>/dev/null || echo 4)"
arch="${ORTHOPT_CUDA_ARCHITECTURES:-90}"
carry="$repo_root/.gpu-carry"
prefix_args=()
[[ -d "$carry/prefix" ]] && prefix_args=(-DCMAKE_PREFIX_PATH="$carry/prefix")
export LD_LIBRARY_PATH="$carry/prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python="$(command -v python3)"

phase "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  "$nvcc_path" --version | tail -2
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
  uname -r
} > "$work/device.txt" 2>&1
cat "$work/device.txt"

# ---- The demo's build, in the background while the suite runs (CPU work beside GPU work) ------------
demo_pid=""
if ((demo)); then
  torch_prefix="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"
  (
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
    cmake -S . -B build-gpu-demo -DCMAKE_BUILD_TYPE=Release -DORTHOPT_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
          -DCMAKE_CUDA_ARCHITECTURES="$arch" -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF \
          -DORTHOPT_BUILD_EXAMPLES=ON -DORTHOPT_OPENMP=OFF -DORTHOPT_BLAS=OFF -DORTHOPT_MPI=OFF -DORTHOPT_INSTALL=OFF \
          -DCMAKE_PREFIX_PATH="$torch_prefix;$carry/prefix" > "$work/demo-configure.log" 2>&1 &&
      cmake --build build-gpu-demo -j "$jobs" --target orthopt_gpt_demo_cuda > "$work/demo-build.log" 2>&1
  ) &
  demo_pid=$!
fi

# ---- The suite and the benchmark binary: prebuilt if they run here, else built now --------------------
bin="$carry/bin"
# Runnable: every shared library resolves (ldd names a missing one, or a missing GLIBC/GLIBCXX version,
# with "not found") and the benchmark binary starts.
if [[ -x "$bin/test_gpu" && -x "$bin/bench_cuda" ]] && ! ldd "$bin/test_gpu" "$bin/bench_cuda" 2>&1 | grep -q "not found" &&
   "$bin/bench_cuda" --benchmark_list_tests=true > /dev/null 2>&1; then
  phase "using the prebuilt test_gpu and bench_cuda of .gpu-carry/bin (sm_$arch)"
  test_gpu="$bin/test_gpu"
  bench_cuda="$bin/bench_cuda"
else
  phase "building test_gpu and bench_cuda here (no runnable prebuilt binaries)"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DORTHOPT_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
        -DCMAKE_CUDA_ARCHITECTURES="$arch" -DORTHOPT_BUILD_EXAMPLES=OFF \
        -DORTHOPT_CUDA_HOST_TESTS=OFF "${prefix_args[@]}" > "$work/configure.log" 2>&1 || { tail -30 "$work/configure.log"; }
  cmake --build build-gpu -j "$jobs" --target test_gpu bench_cuda > "$work/build.log" 2>&1 || tail -40 "$work/build.log"
  test_gpu=build-gpu/tests/gpu/test_gpu
  bench_cuda=build-gpu/benchmarks/bench_cuda
fi

if want suite; then
  phase "GPU suite"
  timeout 180 "$test_gpu" --durations yes > "$work/gpu-suite.log" 2>&1
  suite_rc=$?
  grep -v "^[0-9.]* s: " "$work/gpu-suite.log" | tail -30
  echo "GPU suite exit code: $suite_rc"
fi

if want profile && command -v ncu > /dev/null; then
  phase "profile of one NS call, orthopt against torch"
  timeout 240 "$python" benchmarks/profile_gpu.py "$bench_cuda" > "$work/profile.md" 2> "$work/profile.err"
  echo "profile exit code: $?"
  cat "$work/profile.md"
  tail -5 "$work/profile.err"
fi

# Memory checking of a few suite cases, where the machine's compute-sanitizer works and time is left.
if want memcheck && command -v compute-sanitizer > /dev/null; then
  phase "compute-sanitizer memcheck on the batch, NaN-polar, allocation and optimizer cases"
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$test_gpu" "[batch],[nan],[alloc],[optimizer]" \
      > "$work/memcheck.log" 2>&1
  echo "memcheck exit code: $?"
  tail -5 "$work/memcheck.log"
fi

if [[ -n "$demo_pid" ]]; then
  phase "waiting for the demo's build"
  wait "$demo_pid"
  demo_build_rc=$?
  ((demo_build_rc == 0)) || { tail -5 "$work/demo-configure.log"; tail -40 "$work/demo-build.log"; }
fi

if want bench; then
  phase "bench_cuda"
  filter='.'
  reps=3
  if ((quick)); then filter='(NS/keller|step/(adamuon|muon)|ceiling)/.*/(1024x1024|4096x4096|1024x4096|64x128x128|loop64x128x128|8192)$'; reps=1; fi
  timeout 240 "$bench_cuda" --benchmark_filter="$filter" --benchmark_repetitions="$reps" --benchmark_min_time=0.1 \
      --benchmark_report_aggregates_only=true --benchmark_out="$work/bench_cuda.json" --benchmark_out_format=json \
      > "$work/bench_cuda.txt" 2>&1
  echo "bench_cuda exit code: $?"
  tail -3 "$work/bench_cuda.txt"

  phase "PyTorch peer"
  torch_args=(--out "$work/bench_torch.json")
  ((quick)) && torch_args+=(--quick)
  timeout 150 "$python" benchmarks/bench_torch_ns.py "${torch_args[@]}" > "$work/bench_torch.txt" 2>&1
  echo "bench_torch_ns exit code: $?"
  tail -4 "$work/bench_torch.txt"

  phase "paired table"
  "$python" benchmarks/summarize_gpu.py "$work/bench_cuda.json" "$work/bench_torch.json" > "$work/table.md" 2>&1
  cat "$work/table.md"
fi

demo_rc=-1
if ((demo)) && [[ -x build-gpu-demo/examples/orthopt_gpt_demo_cuda ]]; then
  phase "GPT demo on CUDA"
  data="$carry/fortunes"
  [[ -d "$data" ]] || data=/usr/share/games/fortunes
  timeout 150 build-gpu-demo/examples/orthopt_gpt_demo_cuda --device cuda --steps "${ORTHOPT_GPU_DEMO_STEPS:-200}" \
      --seeds 1 --data "$data" --out "$work/gpt-cuda" > "$work/gpt-cuda.log" 2>&1
  demo_rc=$?
  sed -n '/^Mean over/,/^Samples/p' "$work/gpt-cuda.log"
  echo "GPT demo exit code: $demo_rc"
  phase "GPT demo on CUDA, AdamW and Muon with --gpu-checks host"
  timeout 90 build-gpu-demo/examples/orthopt_gpt_demo_cuda --device cuda --gpu-checks host --methods AdamW,Muon \
      --steps "${ORTHOPT_GPU_DEMO_STEPS:-200}" --seeds 1 --data "$data" --out "$work/gpt-cuda-host-checks" \
      > "$work/gpt-cuda-host-checks.log" 2>&1
  echo "exit code: $?"
  sed -n '/^Mean over/,/^Samples/p' "$work/gpt-cuda-host-checks.log"
fi

phase "done"
save
exit "$suite_rc"
