#!/usr/bin/env bash
# The one test command (see README.md): installs what the build needs on Debian/Ubuntu, configures,
# builds and runs every test.
#
#   bash tests/run.sh              every test, each built once: a Release build in ./build (warnings as
#                                  errors; test programs at -O1) of the benchmarks, examples, header, compile-fail, package,
#                                  allocation, concurrency and the remaining BLAS and host-emulation tests,
#                                  the Python package (pip install . in build-python/venv) and its pytest
#                                  suite (tests/python/run.sh), then the sanitizer build (--sanitize) of
#                                  the core tests
#   bash tests/run.sh --sanitize   the core tests only (ORTHOPT_SANITIZE; tests/CMakeLists.txt lists them),
#                                  built at -O1 -g1 (those that run for seconds at -O0) in
#                                  ./build-sanitize with AddressSanitizer and UndefinedBehaviorSanitizer,
#                                  warnings as errors
#   bash tests/run.sh --release    every test in one Release build in ./build, no sanitizers (for a
#                                  machine without them; what the default did before it was split)
#   bash tests/run.sh --tsan       RelWithDebInfo build in ./build-tsan with ThreadSanitizer and without
#                                  OpenMP (libgomp is not instrumented); builds and runs test_concurrency
#                                  (independent optimizers and plans on several threads)
#   bash tests/run.sh --fuzz SECONDS
#                                  Clang build in ./build-fuzz of the libFuzzer targets (tests/fuzz:
#                                  checkpoint loader, Newton–Schulz and exact polar, every rule's step;
#                                  libFuzzer + ASan + UBSan) and a run of SECONDS per target (one target
#                                  per core at a time) on a corpus seeded with real checkpoints; fails on
#                                  any crash, sanitizer report or broken property, leaving the input in
#                                  build-fuzz/crashes/
#   ORTHOPT_TIMES_DIR=DIR bash tests/run.sh [mode]
#                                  also records where the time goes: each step's seconds (DIR/steps.tsv),
#                                  every compile and link (DIR/compile.tsv, through tests/ci_times/launcher.sh)
#                                  and every test (DIR/ctest-<mode>.xml); tests/ci_times/summarize.py DIR
#                                  prints the breakdown (.ci/run does both)
#   bash tests/run.sh --cuda       with nvcc (the CUDA toolkit): Release build in ./build-cuda with
#                                  ORTHOPT_ENABLE_CUDA=ON; builds the CUDA targets (GPU suite, bench_cuda,
#                                  the GPT demo's CUDA trainer,
#                                  the package's CUDA consumer, one CUDA translation unit of the Python
#                                  module) and runs the `gpu` tests, which report "skipped" without a
#                                  GPU. Without nvcc it says so and exits 0.
#
# Works from any directory; exits non-zero when any step fails.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

sanitize=0
release=0
cuda=0
tsan=0
fuzz_seconds=""
while (($#)); do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --release) release=1 ;;
    --cuda) cuda=1 ;;
    --tsan) tsan=1 ;;
    --fuzz)
      if [[ $# -lt 2 || ! "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "tests/run.sh: --fuzz needs a number of seconds per target, e.g. --fuzz 60" >&2
        exit 2
      fi
      fuzz_seconds="$2"
      shift ;;
    -h|--help) sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tests/run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- Timing (ORTHOPT_TIMES_DIR) ------------------------------------------------------------------
mode=plain
((sanitize)) && mode=sanitize
((cuda)) && mode=cuda
((tsan)) && mode=tsan
[[ -n "$fuzz_seconds" ]] && mode=fuzz
timing_args=()
junit_args=()
if [[ -n "${ORTHOPT_TIMES_DIR:-}" ]]; then
  mkdir -p "$ORTHOPT_TIMES_DIR"
  ORTHOPT_TIMES_DIR="$(cd "$ORTHOPT_TIMES_DIR" && pwd)"
  export ORTHOPT_TIMES_DIR
  launcher="$repo_root/tests/ci_times/launcher.sh"
  timing_args=(-DCMAKE_CXX_COMPILER_LAUNCHER="$launcher" -DCMAKE_CXX_LINKER_LAUNCHER="$launcher")
  ((cuda)) && timing_args+=(-DCMAKE_CUDA_COMPILER_LAUNCHER="$launcher")
  junit_args=(--output-junit "$ORTHOPT_TIMES_DIR/ctest-$mode.xml")
fi
# step NAME COMMAND...: runs COMMAND; with ORTHOPT_TIMES_DIR, appends "mode<TAB>NAME<TAB>seconds".
step() {
  local name="$1" t0
  shift
  t0=$(date +%s.%N)
  "$@"
  if [[ -n "${ORTHOPT_TIMES_DIR:-}" ]]; then
    printf '%s\t%s\t%s\n' "$mode" "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" \
      >> "$ORTHOPT_TIMES_DIR/steps.tsv"
  fi
}

# ---- Fuzzing (its own packages and build) ---------------------------------------------------------
if [[ -n "$fuzz_seconds" ]]; then
  # clang and libclang-rt-dev: libFuzzer and the sanitizer runtimes for Clang.
  step install bash cmake/install-debian-packages.sh "tests/run.sh --fuzz" cmake make clang libclang-rt-dev libeigen3-dev
  jobs="$(nproc 2>/dev/null || echo 2)"
  step configure env CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DORTHOPT_FUZZ=ON \
        -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF \
        -DORTHOPT_INSTALL=OFF -DORTHOPT_OPENMP=OFF -DORTHOPT_BLAS=OFF -DORTHOPT_MPI=OFF "${timing_args[@]}"
  targets=(fuzz_checkpoint fuzz_newton_schulz fuzz_rules)
  step build cmake --build build-fuzz -j "$jobs" --target orthopt_fuzz_targets
  mkdir -p build-fuzz/crashes
  # fuzz_one TARGET: SECONDS of libFuzzer on TARGET's corpus; its exit status is libFuzzer's.
  fuzz_one() {
    local t="$1" corpus="build-fuzz/corpus/$1" log="build-fuzz/$1.log" fuzz_t0=$SECONDS rc=0
    mkdir -p "$corpus"
    echo "tests/run.sh --fuzz: $t for ${fuzz_seconds} s (log: $log)"
    # -malloc_limit_mb: no single allocation above 64 MiB (the checkpoint loader may allocate what the
    # loading optimizer's own checkpoint size justifies: about a megabyte here); -timeout: an input
    # taking 20 s (an endless stream read without end) is a failure.
    # A fixed seed (ORTHOPT_FUZZ_SEED overrides it) so that a CI run explores the same way each time.
    ORTHOPT_FUZZ_SEED_DIR="$corpus" "build-fuzz/tests/fuzz/$t" "$corpus" -max_total_time="$fuzz_seconds" \
      -seed="${ORTHOPT_FUZZ_SEED:-1}" \
      -malloc_limit_mb=64 -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/crashes/$t-" >"$log" 2>&1 || rc=$?
    [[ -n "${ORTHOPT_TIMES_DIR:-}" ]] && printf 'fuzz\trun %s\t%s\n' "$t" "$((SECONDS - fuzz_t0))" >> "$ORTHOPT_TIMES_DIR/steps.tsv"
    return $rc
  }
  # One target per core at a time (each fuzzer is one process on one core): every target still gets
  # SECONDS of a core to itself, in fewer minutes of wall time.
  declare -A fuzz_pid=()
  for t in "${targets[@]}"; do
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    fuzz_one "$t" &
    fuzz_pid[$t]=$!
  done
  failed=()
  for t in "${targets[@]}"; do
    wait "${fuzz_pid[$t]}" || failed+=("$t")
  done
  for t in "${failed[@]}"; do
    tail -n 80 "build-fuzz/$t.log" >&2
    echo "tests/run.sh --fuzz: $t FAILED; the input is in build-fuzz/crashes/ (replay: build-fuzz/tests/fuzz/$t FILE," \
         "ORTHOPT_FUZZ_VERBOSE=1 to see what it did)" >&2
  done
  ((${#failed[@]} == 0)) || exit 1
  summary=()
  for t in "${targets[@]}"; do
    runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "build-fuzz/$t.log" | tail -n 1)"
    summary+=("$t: $runs, 0 crashes, corpus $(find "build-fuzz/corpus/$t" -type f | wc -l) inputs")
  done
  printf 'tests/run.sh --fuzz: %s\n' "${summary[@]}"
  exit 0
fi

# ---- Dependencies (Debian packages) -------------------------------------------------------------
# libopenblas-openmp-dev: the BLAS backend (orthopt::blas: cblas.h and an optimized BLAS on the same
# OpenMP runtime as orthopt); libtorch-dev: the GPT demo, the libtorch example and the libtorch peer in
# the benchmark (without OpenBLAS, libtorch would run on the reference BLAS); fortunes: the GPT demo's
# corpus (its smoke test, example.gpt_quick); libopenmpi-dev and openmpi-bin: the distributed optimizer
# (orthopt::mpi) and its tests, which ctest runs under mpirun at 1 to 4 ranks (label mpi).
# python3-venv, python3-dev, python3-numpy, python3-torch, python3-pytest: the Python package's build
# (pip install . in a virtual environment) and its pytest suite (tests/python/run.sh).
packages=(cmake g++ make python3 libeigen3-dev catch2 libbenchmark-dev zlib1g-dev dataset-fashion-mnist
          libopenblas-openmp-dev libtorch-dev fortunes libopenmpi-dev openmpi-bin
          python3-venv python3-dev python3-numpy python3-torch python3-pytest)
step install bash cmake/install-debian-packages.sh "tests/run.sh" "${packages[@]}"
# The BLAS tests, libtorch and numpy run on OpenBLAS: its best kernels for this CPU, checked (a generic
# fallback would make them several times slower).
source cmake/openblas-kernels.sh
orthopt_openblas_kernels "tests/run.sh"

# ---- Configure, build, test ----------------------------------------------------------------------
jobs="$(nproc 2>/dev/null || echo 2)"
if ((cuda)); then
  nvcc_path="$(command -v nvcc || true)"
  if [[ -z "$nvcc_path" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc_path=/usr/local/cuda/bin/nvcc; fi
  if [[ -z "$nvcc_path" ]]; then
    echo "tests/run.sh --cuda: no nvcc (CUDA toolkit) found; the CUDA build is skipped"
    exit 0
  fi
  step configure cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DORTHOPT_WERROR=ON -DORTHOPT_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc_path" -DORTHOPT_BUILD_EXAMPLES=OFF "${timing_args[@]}"
  # Only the CUDA targets: the rest is what the plain run builds and tests.
  step build cmake --build build-cuda -j "$jobs" --target test_gpu bench_cuda orthopt_gpt_cuda_trainer
  step test ctest --test-dir build-cuda --output-on-failure -L gpu "${junit_args[@]}"
  # The Python module's CUDA code under nvcc (one translation unit; tests/python/run.sh runs the same
  # code on the host emulation).
  step python-cuda bash tests/python/run.sh --cuda-object
  exit 0
fi
if ((tsan)); then
  step configure cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DORTHOPT_SANITIZE=thread -DORTHOPT_OPENMP=OFF \
        -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF "${timing_args[@]}"
  step build cmake --build build-tsan -j "$jobs" --target test_concurrency
  step test ctest --test-dir build-tsan --output-on-failure -R '^test_concurrency:' "${junit_args[@]}"
  exit 0
fi
# build_and_test MODE DIR CMAKE_ARGS...: configure, build and run one tree's tests.
build_and_test() {
  mode="$1"
  local dir="$2"
  shift 2
  ((${#junit_args[@]})) && junit_args=(--output-junit "$ORTHOPT_TIMES_DIR/ctest-$mode.xml")
  step configure cmake -S . -B "$dir" "$@" "${timing_args[@]}"
  step build cmake --build "$dir" -j "$jobs"
  step test ctest --test-dir "$dir" --output-on-failure -j2 "${junit_args[@]}"
}
# The sanitizer build: the core tests at -O1 (fast to build; AddressSanitizer's own advice for its
# builds), with line tables (-g1) for readable reports. At -O2 -g the sanitizers made each translation
# unit about four times as costly to compile as in the Release tree (measured: 59 s against 18 s for
# test_views), and this build was the largest part of CI.
# The tests that run for seconds and compile for minutes go down to -O0 (ORTHOPT_TESTS_O0): under the
# sanitizers -O0 compiles them in less than half the time of -O1 (test_rules_errors: 70 s against 165 s).
# The ones that run long stay at -O1: at -O0 test_rules_invariants ran 123 s, test_ns_budget 106 s and
# the MPI test_distributed 118 s (46, 39 and 28 s at -O1), more than -O0 saved compiling them.
sanitize_o0="test_views;test_schedule;test_polar;test_errors;test_errors_thrust_host;test_overlap;test_rules_errors"
sanitize_o0+=";test_optimizer;test_checkpoint;test_cuda_backend_thrust_host;test_tensor_parallel_ns"
sanitize_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
               -DORTHOPT_SANITIZE=address,undefined -DORTHOPT_WERROR=ON "-DORTHOPT_TESTS_O0=$sanitize_o0"
               -DORTHOPT_BUILD_BENCHMARKS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF)
# The Release tree: -O3 for the benchmarks and demos, the test programs at -O1 (ORTHOPT_TESTS_O1).
release_args=(-DCMAKE_BUILD_TYPE=Release -DORTHOPT_WERROR=ON -DORTHOPT_TESTS_O1=ON)
if ((sanitize)); then
  build_and_test sanitize build-sanitize "${sanitize_args[@]}"
elif ((release)); then
  build_and_test plain build "${release_args[@]}" -DORTHOPT_CORE_TESTS=ON
  mode=python step python bash tests/python/run.sh
else
  # Each test built once: the core tests only in the sanitizer build.
  build_and_test plain build "${release_args[@]}" -DORTHOPT_CORE_TESTS=OFF
  mode=python step python bash tests/python/run.sh
  build_and_test sanitize build-sanitize "${sanitize_args[@]}"
fi
