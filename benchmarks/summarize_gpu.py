"""Pairs bench_cuda's Google Benchmark JSON with the PyTorch peer's JSON (benchmarks/run_gpu.sh) and
prints a Markdown table: per benchmark, orthopt's time, its share of the GEMM ceiling, and, where the
peer ran the same case, torch's time and the ratio torch/orthopt (> 1: orthopt is faster).

    python3 benchmarks/summarize_gpu.py bench_cuda.json bench_torch.json
"""
import json
import sys


def orthopt_results(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data.get("benchmarks", []):
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).split("/manual_time")[0]
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ms")]
        rows[name] = (b["real_time"] * scale, b.get("pct_ceiling"))
    return data.get("context", {}).get("device", "?"), rows


def main():
    device, ours = orthopt_results(sys.argv[1])
    peer = {}
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            peer = json.load(f).get("results", {})
    print(f"Device: {device}. Times in ms (median); ratio = torch / orthopt.\n")
    print("| benchmark | orthopt ms | % of GEMM ceiling | torch ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, (ms, pct) in sorted(ours.items()):
        p = peer.get(name)
        pct_s = f"{pct:.1f}" if pct is not None else ""
        peer_s = f"{p:.3f}" if p is not None else ""
        ratio = f"{p / ms:.2f}" if p is not None and ms > 0 else ""
        print(f"| {name} | {ms:.3f} | {pct_s} | {peer_s} | {ratio} |")


if __name__ == "__main__":
    main()
