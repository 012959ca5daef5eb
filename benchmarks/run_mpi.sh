#!/usr/bin/env bash
# The distributed optimizer's benchmark: builds bench_mpi for this machine (Release, -O3 -march=native)
# and runs it under mpirun on 1, 2, 3 and 4 ranks (one OpenMP thread per rank; oversubscribed when the
# machine has fewer cores), then prints a table per rank count: step time (the slowest rank's), the
# collectives and bytes per step, and each rank's share of the optimizer state and of the work.
#
#   bash benchmarks/run_mpi.sh                 # about 8 minutes on 2 cores
#   WRITE_DOCS=1 bash benchmarks/run_mpi.sh    # also writes the table into docs/distributed.md (between
#                                              # its <!-- bench:begin --> and <!-- bench:end --> lines)
#
# Environment: BUILD_DIR (default /tmp/orthopt-bench-build), OUT (default $BUILD_DIR/mpi-run-DATE),
# RANKS (default "1 2 3 4"), ITERATIONS (default 5), JOBS (build jobs, 2).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
BUILD_DIR=${BUILD_DIR:-/tmp/orthopt-bench-build}
OUT=${OUT:-$BUILD_DIR/mpi-run-$(date +%F-%H%M%S)}
RANKS=${RANKS:-"1 2 3 4"}
JOBS=${JOBS:-2}
export ORTHOPT_BENCH_MPI_ITERATIONS=${ITERATIONS:-5}
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

bash "$SRC/cmake/install-debian-packages.sh" "run_mpi.sh" cmake g++ make libeigen3-dev libbenchmark-dev \
  libopenmpi-dev openmpi-bin

cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORTHOPT_BUILD_BENCHMARKS=ON \
  -DORTHOPT_BENCH_NATIVE=ON -DORTHOPT_BUILD_TESTS=OFF -DORTHOPT_BUILD_EXAMPLES=OFF -DORTHOPT_INSTALL=OFF >/dev/null
cmake --build "$BUILD_DIR" --target bench_mpi -j "$JOBS"

mkdir -p "$OUT"
git -C "$SRC" describe --always --dirty > "$OUT/commit.txt" 2>/dev/null || echo unknown > "$OUT/commit.txt"
oversubscribe=()
if mpirun --version 2>&1 | grep -q "Open MPI"; then oversubscribe=(--oversubscribe); fi
echo "# $(date -Is)  nproc=$(nproc)  cpu:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  results in $OUT"
for n in $RANKS; do
  echo "## $n rank(s)"
  mpirun -n "$n" "${oversubscribe[@]}" "$BUILD_DIR/benchmarks/bench_mpi" --benchmark_out="$OUT/np$n.json" \
    --benchmark_out_format=json | tee "$OUT/np$n.txt"
done

/usr/bin/python3 - "$OUT" "${WRITE_DOCS:-0}" "$SRC/docs/distributed.md" <<'PY'
import json, pathlib, re, sys
out, write, doc = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", pathlib.Path(sys.argv[3])
rows = {}
context = None
for f in sorted(out.glob("np*.json")):
    data = json.loads(f.read_text())
    context = context or data["context"]
    for b in data["benchmarks"]:
        name = re.sub(r"/iterations:\d+/manual_time$", "", b["name"])
        rows.setdefault(name, []).append(b)
lines = []
cpu = pathlib.Path("/proc/cpuinfo").read_text()
model = re.search(r"model name\s*:\s*(.*)", cpu)
commit = (out / "commit.txt").read_text().strip()
lines.append(f"Measured by `bash benchmarks/run_mpi.sh` at {commit} on {model.group(1) if model else 'unknown CPU'}, "
             f"{context.get('num_cpus', '?')} cores, one OpenMP thread per rank"
             f" (ranks beyond the core count share cores: read the bytes and the shares, not the times).\n")
for name, runs in rows.items():
    lines.append(f"\n**{name}**\n")
    lines.append("| ranks | step (ms, slowest rank) | collectives | bytes sent per rank (max) | largest state share | largest work share | staging bytes (max) |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for b in sorted(runs, key=lambda b: b["ranks"]):
        lines.append(f"| {int(b['ranks'])} | {b['real_time']:.0f} | {int(b['collectives'])} | {b['sent_bytes_max']/1e6:.1f} MB | "
                     f"{100*b['state_fraction_max']:.1f} % | {100*b['work_fraction_max']:.1f} % | {b['staging_bytes_max']/1e6:.1f} MB |")
table = "\n".join(lines) + "\n"
print(table)
if write:
    text = doc.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in text or end not in text:
        sys.exit(f"{doc} has no {begin} … {end} block")
    doc.write_text(text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):])
    print(f"wrote {doc}")
PY
