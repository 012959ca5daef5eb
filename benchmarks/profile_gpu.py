"""Where the time of one Newton-Schulz call goes on the GPU, for orthopt and for PyTorch's eager NS5:
per-kernel durations of orthopt's bench_cuda case under Nsight Compute (one metric,
gpu__time_duration.sum, so one replay pass per kernel) and of torch's newton_schulz5 under
torch.profiler, each summed by kernel over one call.

    python3 benchmarks/profile_gpu.py BENCH_CUDA [--shape 4096x4096] [--type bf16] > profile.md

Needs ncu (Nsight Compute) with access to the GPU's counters, and PyTorch with CUDA.
"""
import argparse
import collections
import csv
import io
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def orthopt_kernels(bench, name):
    """[(kernel, microseconds)] of every kernel bench_cuda launched for `name`, in launch order."""
    cmd = ["ncu", "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--csv", "--page", "raw",
           bench, f"--benchmark_filter={name}", "--benchmark_min_time=0.001", "--benchmark_repetitions=1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    text = run.stdout
    start = text.find('"ID"')
    if start < 0:
        sys.stderr.write(f"ncu exit code {run.returncode}; its output ends:\n{text[-3000:]}\n{run.stderr[-3000:]}\n")
    rows = list(csv.DictReader(io.StringIO(text[start:]))) if start >= 0 else []
    # The first row holds the units; values may carry thousands separators ("1,234").
    to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6}
    scale = to_us.get(rows[0].get("gpu__time_duration.sum", "").strip(), 1e-3) if rows else 1e-3
    out = []
    for r in rows[1:]:
        try:
            t = float(r.get("gpu__time_duration.sum", "").replace(",", ""))
        except ValueError:
            continue
        out.append((r.get("Kernel Name", "?"), t * scale))
    if not out:
        sys.stderr.write(f"ncu: no kernel durations parsed; its output ends:\n{text[-3000:]}\n")
    return out


def torch_kernels(rows, cols, dtype_name):
    import torch
    from bench_torch_ns import newton_schulz5

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    g = torch.randn(rows, cols, device="cuda")
    for _ in range(3):
        newton_schulz5(g, dtype=dtype)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        newton_schulz5(g, dtype=dtype)
        torch.cuda.synchronize()
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.name, e.device_time if hasattr(e, "device_time") else e.cuda_time))
    return out


def table(kernels, calls):
    by = collections.OrderedDict()
    for k, t in kernels:
        c, s = by.get(k, (0, 0.0))
        by[k] = (c + 1, s + t)
    total = sum(s for _, s in by.values()) / calls
    lines = [f"| kernel | launches per call | us per call | share |", "|---|---:|---:|---:|"]
    for k, (c, s) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| `{k[:110]}` | {c / calls:g} | {s / calls:.1f} | {100 * s / calls / total:.1f} % |")
    lines.append(f"| total | {sum(c for c, _ in by.values()) / calls:g} | {total:.1f} | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bench")
    parser.add_argument("--shape", default="4096x4096")
    parser.add_argument("--type", default="bf16")
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.shape.split("x"))
    name = f"NS/keller/{args.type}/{args.shape}"
    ours = orthopt_kernels(args.bench, name)
    # bench_cuda makes one warm-up call, then one timed call (4 ms >> min_time), then measures the GEMM
    # ceiling (21 products at 8192^3): keep the two NS calls, the launches before the first 8192^3 GEMM.
    long = [i for i, (_, t) in enumerate(ours) if t > 1000.0]
    ns_part = ours[: long[0]] if long else ours
    print(f"## orthopt NS/keller/{args.type}/{args.shape} (Nsight Compute, 2 calls: warm-up and timed)\n")
    print(table(ns_part, 2))
    print(f"\n## torch eager NS5 {args.type} {args.shape} (torch.profiler, 1 call)\n")
    print(table(torch_kernels(rows, cols, args.type), 1))


if __name__ == "__main__":
    main()
