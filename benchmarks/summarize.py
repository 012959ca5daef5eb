#!/usr/bin/env python3
"""Markdown table from bench_ns_eigen's JSON output (--benchmark_out=FILE --benchmark_out_format=json).

usage: summarize.py RESULTS.json

One row per schedule / type / shape: the median (and the minimum) wall time of orthopt and of each peer
present (plain Eigen; libtorch when the binary was built with it) over the repetitions, the ratio
peer/orthopt of the medians (> 1: orthopt is faster) and of the minima, orthopt's naive-count GFLOP/s
(from the median), and the coefficient of variation
of the repetitions. A row is flagged "!" when, for either implementation, the median main-thread CPU
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
    peer_names = {"eigen": "plain Eigen", "torch": "libtorch"}
    peers = [p for p in peer_names if any(k[3] == p for k in data)]
    header = "| schedule | type | shape | orthopt ms |"
    for p in peers:
        header += f" {peer_names[p]} ms | ratio {peer_names[p]}/orthopt |"
    header += " orthopt GFLOP/s | CV " + " / ".join(["orthopt"] + [peer_names[p] for p in peers]) + " | contended |"
    print(header)
    print("|---|---|---|---:|" + "---:|---:|" * len(peers) + "---:|---|---|")
    fmt_ms = lambda v: "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
    fmt_gf = lambda d: "—" if d.get("gflops") is None else f"{d['gflops']:.0f}"
    fmt_cv = lambda d: "—" if d.get("cv") is None else f"{100 * d['cv']:.0f}%"
    rmin = lambda d: min(d["reps"]) if d.get("reps") else None
    contended = lambda d: bool(d.get("cpu_share")) and statistics.median(d["cpu_share"]) < 0.85
    for sched, typ, shape in configs:
        o = data.get((sched, typ, shape, "orthopt"), {})
        om, omin = o.get("median_ms"), rmin(o)
        row = f"| {sched} | {typ} | {shape.replace('x', '×')} | {fmt_ms(om)} (min {fmt_ms(omin)}) |"
        flag = "!" if contended(o) else ""
        cvs = [fmt_cv(o)]
        for p in peers:
            e = data.get((sched, typ, shape, p), {})
            em, emin = e.get("median_ms"), rmin(e)
            ratio = f"{em / om:.2f}" if om and em else "—"
            if omin and emin:
                ratio += f" (min {emin / omin:.2f})"
            row += f" {fmt_ms(em)} (min {fmt_ms(emin)}) | {ratio} |"
            cvs.append(fmt_cv(e))
            if contended(e):
                flag = "!"
        row += f" {fmt_gf(o)} | {' / '.join(cvs)} | {flag} |"
        print(row)
    print()
    print("Times are medians (and minima) over the repetitions, wall clock. GFLOP/s use the naive count "
          "5·(4m²n + 2m³), m = min side, n = max side, the same count for every implementation; orthopt performs fewer real flops (syrk for both symmetric "
          "products: about 5·(3m²n + m³)). CV: standard deviation / mean of the repetitions. '!': the median "
          "main-thread CPU time was under 85 % of the wall time (other load shared the cores); treat "
          "the row's absolute times as disturbed and prefer the minima.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
