#!/usr/bin/env python3
"""Markdown table from bench_ns_eigen's JSON output (--benchmark_out=FILE --benchmark_out_format=json).

usage: summarize.py RESULTS.json

One row per schedule / type / shape: the median wall time over the repetitions of each implementation
present (orthopt on the Eigen backend; on the BLAS backend when built with it; plain Eigen; libtorch
when built with it), the ratio peer/orthopt of the medians for each orthopt backend (> 1: orthopt is
faster), the better orthopt backend's naive-count GFLOP/s, and the coefficient of variation
of the repetitions. A row is flagged "!" when, for any implementation, the median main-thread CPU
time is below 85 % of the wall time: the process was descheduled, i.e. other load shared the cores.
Standard library only.
"""
import json
import statistics
import sys
from collections import defaultdict

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_name(run_name):
    # NS/<schedule>/<type>/<rows>x<cols>/<impl>[/iterations:N][/real_time]
    parts = run_name.split("/")
    if len(parts) < 5 or parts[0] != "NS":
        return None
    return parts[1], parts[2], parts[3], parts[4]


def main(path):
    with open(path) as f:
        doc = json.load(f)
    ctx = doc.get("context", {})
    # (schedule, type, shape, impl) -> {"median_ms", "cv", "gflops", "reps": [ms, ...]}
    data = defaultdict(lambda: {"reps": [], "flops_reps": [], "cpu_share": []})
    for b in doc.get("benchmarks", []):
        key = parse_name(b.get("run_name", b["name"]))
        if key is None or b.get("error_occurred"):
            continue
        ms = b["real_time"] * TO_MS[b.get("time_unit", "ns")]
        d = data[key]
        if b.get("run_type") == "aggregate":
            agg = b.get("aggregate_name")
            if agg == "median":
                d["median_ms"] = ms
                d["gflops"] = b.get("FLOP/s", float("nan")) / 1e9
            elif agg == "cv":
                d["cv"] = b["real_time"]  # a fraction, not a time
        else:
            d["reps"].append(ms)
            d["flops_reps"].append(b.get("FLOP/s", float("nan")) / 1e9)
            d["cpu_share"].append(b["cpu_time"] / b["real_time"] if b["real_time"] > 0 else 1.0)
    # Without aggregates (a single repetition, or aggregates filtered out), use the repetitions.
    for d in data.values():
        if "median_ms" not in d and d["reps"]:
            d["median_ms"] = statistics.median(d["reps"])
            d["gflops"] = statistics.median(d["flops_reps"])
        if "cv" not in d and len(d["reps"]) > 1:
            d["cv"] = statistics.stdev(d["reps"]) / statistics.mean(d["reps"])

    def shape_key(shape):
        r, c = shape.split("x")
        return int(r) * int(r) * int(c) + int(c) * int(c) * int(r), int(r)

    order = {"keller": 0, "polar_express": 1}
    configs = sorted({k[:3] for k in data},
                     key=lambda k: (order.get(k[0], 9), k[0], k[1], shape_key(k[2])))

    print(f"Context: {ctx.get('date', '?')}, host {ctx.get('host_name', '?')}, "
          f"{ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz (nominal), "
          f"Eigen {ctx.get('eigen_version', '?')} [{ctx.get('eigen_simd', '?')}], "
          f"OpenMP threads {ctx.get('openmp_max_threads', '?')}, "
          f"orthopt backend threads {ctx.get('orthopt_backend_threads', '?')}, "
          f"{ctx.get('compiler', '?')}, native: {ctx.get('orthopt_bench_native', '?')}, "
          f"libtorch {ctx.get('torch_version', 'absent')} (threads {ctx.get('torch_threads', '?')})")
    print()
    names = {"orthopt": "orthopt", "orthopt_blas": "orthopt BLAS", "eigen": "plain Eigen", "torch": "libtorch"}
    impls = [i for i in names if any(k[3] == i for k in data)]
    ours = [i for i in ("orthopt", "orthopt_blas") if i in impls]
    peers = [i for i in ("eigen", "torch") if i in impls]
    header = "| schedule | type | shape |" + "".join(f" {names[i]} ms |" for i in impls)
    header += "".join(f" {names[p]} / {names[o]} |" for o in ours for p in peers)
    header += " best orthopt GFLOP/s | CV " + " / ".join(names[i] for i in impls) + " | contended |"
    print(header)
    print("|---|---|---|" + "---:|" * (len(impls) + len(ours) * len(peers) + 1) + "---|---|")
    fmt_ms = lambda v: "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
    fmt_cv = lambda d: "—" if d.get("cv") is None else f"{100 * d['cv']:.0f}%"
    contended = lambda d: bool(d.get("cpu_share")) and statistics.median(d["cpu_share"]) < 0.85
    for sched, typ, shape in configs:
        row_data = {i: data.get((sched, typ, shape, i), {}) for i in impls}
        med = {i: row_data[i].get("median_ms") for i in impls}
        row = f"| {sched} | {typ} | {shape.replace('x', '×')} |"
        row += "".join(f" {fmt_ms(med[i])} |" for i in impls)
        for o in ours:
            for p in peers:
                row += f" {med[p] / med[o]:.2f} |" if med[o] and med[p] else " — |"
        best = max((row_data[o].get("gflops") or 0.0 for o in ours), default=0.0)
        flag = "!" if any(contended(row_data[i]) for i in impls) else ""
        row += f" {best:.0f} | {' / '.join(fmt_cv(row_data[i]) for i in impls)} | {flag} |"
        print(row)
    print()
    print("Times are medians over the repetitions, wall clock; a ratio above 1 means orthopt is faster. GFLOP/s use the naive count "
          "5·(4m²n + 2m³), m = min side, n = max side, the same count for every implementation; orthopt performs fewer real flops (syrk for both symmetric "
          "products: about 5·(3m²n + m³)). CV: standard deviation / mean of the repetitions. '!': the median "
          "main-thread CPU time was under 85 % of the wall time (other load shared the cores); treat "
          "the row's absolute times as disturbed and prefer the minima.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
