#!/usr/bin/env bash
# orthopt's CPU benchmark run: builds bench_cpu for this machine (Release, -O3 -march=native, OpenBLAS's
# OpenMP build, libtorch), then runs ROUNDS rounds, each one process of bench_cpu (every selected
# benchmark once, in random order) followed by bench_numpy.py on the same benchmarks; ratios are paired
# within a round and their median over rounds reported (the host is shared and noisy: absolute times
# move between rounds, ratios of neighbours in time much less).
#
#   bash benchmarks/run_cpu.sh                 # about 30 minutes on 2 cores (3 rounds); prints the summary
#   WRITE_DOCS=1 bash benchmarks/run_cpu.sh    # also rewrites docs/benchmarks.md, its plot, and the
#                                              # README's speed section from this run
#
# Environment: BUILD_DIR (default /tmp/orthopt-bench-build), OUT (results folder, default
# $BUILD_DIR/run-YYYY-MM-DD-HHMMSS), ROUNDS (default 3; about 9 minutes each), FILTER (a Google Benchmark regex; default:
# the selection docs/benchmarks.md reports), OMP_NUM_THREADS (default: nproc), JOBS (build jobs, 2).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/orthopt-bench-build}
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-2}
OUT=${OUT:-$BUILD_DIR/run-$(date +%F-%H%M%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
DEFAULT_FILTER='^(NS/keller/(standard|gram)/f32/|NS/keller/(standard|gram)/f64/(768x768|2048x2048|1024x4096)/|NS/[a-z_]+/standard/f32/768x768/orthopt_|NS/polar_express/(standard|gram)/f32/(768x768|1024x4096)/|BATCH/keller/f32/|STEP/[a-z_]+/f32/|POLAR/f32/|OPT/gpt_d512_l4/[a-z_]+/f32/|GEMM/)'
FILTER=${FILTER:-$DEFAULT_FILTER}

bash "$SRC/cmake/install-debian-packages.sh" "run_cpu.sh" cmake g++ make libeigen3-dev libbenchmark-dev \
  libopenblas-openmp-dev libtorch-dev python3-numpy gnuplot-nox
# Every BLAS row (numpy, libtorch, orthopt's BLAS backend, the GEMM ceiling) runs on OpenBLAS: its best
# kernels for this CPU, checked; the run's metadata names the core (blas: … <core>).
source "$SRC/cmake/openblas-kernels.sh"
orthopt_openblas_kernels "run_cpu.sh"

cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_BENCHMARKS=ON \
  -DORTHOPT_BENCH_NATIVE=ON -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF >/dev/null
cmake --build "$BUILD_DIR" --target bench_cpu -j "$JOBS"
BENCH="$BUILD_DIR/benchmarks/bench_cpu"

mkdir -p "$OUT"
git -C "$SRC" describe --always --dirty > "$OUT/commit.txt" 2>/dev/null || echo unknown > "$OUT/commit.txt"
printf '%s\n' "$FILTER" > "$OUT/filter.txt"
"$BENCH" --check > "$OUT/check.txt" || { cat "$OUT/check.txt"; echo "bench_cpu --check failed" >&2; exit 1; }
echo "# $(date -Is)  nproc=$(nproc)  cpu:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  OMP_NUM_THREADS=$OMP_NUM_THREADS"
echo "# results in $OUT"
for r in $(seq 1 "$ROUNDS"); do
  echo "## round $r/$ROUNDS  (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$BENCH" --include_4096 --benchmark_filter="$FILTER" --benchmark_repetitions=1 \
    --benchmark_enable_random_interleaving=true --benchmark_out="$OUT/round-$r.json" \
    --benchmark_out_format=json > "$OUT/round-$r.txt"
  /usr/bin/python3 "$HERE/bench_numpy.py" --include_4096 --filter "$FILTER" --out "$OUT/numpy-round-$r.json" \
    > "$OUT/numpy-round-$r.txt"
done

ARGS=("$OUT")
if [ "${WRITE_DOCS:-0}" = 1 ]; then
  ARGS+=(--md "$SRC/docs/benchmarks.md" --png "$SRC/docs/benchmarks-ns.png" --readme "$SRC/README.md"
         --raw "$SRC/benchmarks/results/cpu-$(date +%F).json")
fi
/usr/bin/python3 "$HERE/summarize_cpu.py" "${ARGS[@]}"
