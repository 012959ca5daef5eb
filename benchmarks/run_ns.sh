#!/usr/bin/env bash
# Build bench_ns_eigen (Release, -O3 -march=native) and run it with repetitions; writes the Google
# Benchmark JSON and a markdown summary (benchmarks/summarize.py).
#
#   benchmarks/run_ns.sh [extra google-benchmark flags, e.g. --benchmark_filter=keller/f32]
#
# Environment: BUILD_DIR (default /tmp/orthopt-bench-build), OUT (JSON file, default
# $BUILD_DIR/ns-YYYY-MM-DD-HHMMSS.json), REPS (repetitions, default 5), JOBS (build jobs, default 2),
# OMP_NUM_THREADS (default: nproc), WAIT_QUIET (seconds to wait, before running, for the CPUs to be
# at least 90 % idle over 2 s; default 0: do not wait).
# About 6 minutes on 2 idle cores with the default shapes (more on a busy machine); add
# --ns_include_4096 for the 4096x4096 shape (several more minutes).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/orthopt-bench-build}
REPS=${REPS:-5}
JOBS=${JOBS:-2}
OUT=${OUT:-$BUILD_DIR/ns-$(date +%F-%H%M%S).json}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

# What the build needs, the BLAS backend (OpenBLAS's OpenMP build, so that its threads and orthopt's
# share one OpenMP runtime) and the libtorch peer (its NS runs in the same binary, on that OpenBLAS).
bash "$SRC/cmake/install-debian-packages.sh" "run_ns.sh" cmake g++ make libeigen3-dev libbenchmark-dev \
  libopenblas-openmp-dev libtorch-dev

# Tests, examples and install rules are not needed to build the benchmark.
cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_BENCHMARKS=ON \
  -DORTHOPT_BENCH_NATIVE=ON -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF >/dev/null
cmake --build "$BUILD_DIR" --target bench_ns_eigen -j "$JOBS"

mkdir -p "$(dirname "$OUT")"

# On a shared machine, optionally wait until nothing else is running (Linux /proc/stat).
if [ "${WAIT_QUIET:-0}" -gt 0 ] && [ -r /proc/stat ]; then
  start=$(date +%s)
  while :; do
    read -r _ u1 n1 s1 i1 w1 _ </proc/stat; sleep 2; read -r _ u2 n2 s2 i2 w2 _ </proc/stat
    idle=$(( (i2 + w2 - i1 - w1) * 100 / (u2 + n2 + s2 + i2 + w2 - u1 - n1 - s1 - i1 - w1 + 1) ))
    [ "$idle" -ge 90 ] && break
    if [ $(( $(date +%s) - start )) -ge "$WAIT_QUIET" ]; then
      echo "# warning: CPUs still busy (idle ${idle}%) after ${WAIT_QUIET}s; running anyway"; break
    fi
  done
fi
echo "# $(date -Is)  nproc=$(nproc)  cpu:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  OMP_NUM_THREADS=$OMP_NUM_THREADS"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# Repetitions are interleaved at random across all benchmarks, so a slow episode of the (shared, noisy)
# host spreads over both implementations instead of hitting one benchmark's consecutive repetitions.
"$BUILD_DIR/benchmarks/bench_ns_eigen" \
  --benchmark_repetitions="$REPS" \
  --benchmark_enable_random_interleaving=true \
  --benchmark_display_aggregates_only=true \
  --benchmark_out="$OUT" --benchmark_out_format=json \
  "$@"

echo
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "JSON: $OUT"
echo
python3 "$HERE/summarize.py" "$OUT"
