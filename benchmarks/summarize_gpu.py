"""Pairs bench_cuda's Google Benchmark JSON with the PyTorch peer's JSON (benchmarks/run_gpu.sh) and
prints Markdown: per benchmark, orthopt's time, its share of the GEMM ceiling, and, where the peer ran
the same computation, torch's time and the ratio orthopt/torch (< 1: orthopt is faster); then the
GPU speed targets, each with the measured value and whether it was met.

    python3 benchmarks/summarize_gpu.py bench_cuda.json bench_torch.json

Pairs: NS/keller/<type>/<shape> with torch's eager NS5 of the same type and shape; orthopt's Gram
Newton-Schulz (NS/keller/gram/...) with the same torch NS5 (the same polynomial, computed another way);
step/muon/<type>/<shape> (the torch preset) with torch.optim.Muon's step on parameters of that type.
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
        rows[name] = (b["real_time"] * scale, b.get("pct_ceiling"), b.get("FLOP/s"))
    return data.get("context", {}).get("device", "?"), rows


def peer_name(name):
    """The torch result that computes what orthopt's `name` computes, or None."""
    parts = name.split("/")
    if parts[:3] == ["NS", "keller", "gram"]:
        return "/".join(["NS", "keller"] + parts[3:])
    if parts[:2] == ["NS", "keller"] or parts[:2] == ["step", "muon"]:
        return name
    return None


def main():
    device, ours = orthopt_results(sys.argv[1])
    peer, peer_meta = {}, {}
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            peer_meta = json.load(f)
        peer = peer_meta.get("results", {})
    print(f"Device: {device}; PyTorch {peer_meta.get('torch', '?')} (CUDA {peer_meta.get('cuda', '?')}). "
          "Times in ms (median); ratio = orthopt / torch (< 1: orthopt faster).\n")
    print("| benchmark | orthopt ms | TFLOP/s | % of GEMM ceiling | torch ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (ms, pct, flops) in sorted(ours.items()):
        p = peer.get(peer_name(name) or "")
        pct_s = f"{pct:.1f}" if pct is not None else ""
        flops_s = f"{flops / 1e12:.1f}" if flops else ""
        peer_s = f"{p:.3f}" if p is not None else ""
        ratio = f"{ms / p:.2f}" if p is not None and p > 0 else ""
        print(f"| {name} | {ms:.3f} | {flops_s} | {pct_s} | {peer_s} | {ratio} |")

    print("\nTargets:\n")
    print("| target | measured | met |")
    print("|---|---:|---|")

    def row(label, value, fmt, ok):
        if value is None:
            print(f"| {label} | not measured | — |")
        else:
            met = "—" if ok is None else ("yes" if ok(value) else "NO")
            print(f"| {label} | {fmt.format(value)} | {met} |")

    for shape in ("4096x4096", "1024x4096"):
        o, t = ours.get(f"NS/keller/bf16/{shape}"), peer.get(f"NS/keller/bf16/{shape}")
        row(f"NS5 bf16 {shape}: orthopt / torch eager <= 0.75", o[0] / t if o and t else None, "{:.2f}", lambda v: v <= 0.75)
        o = ours.get(f"NS/keller/gram/bf16/{shape}")
        row(f"Gram NS5 bf16 {shape}: orthopt / torch eager (no target; for reference)", o[0] / t if o and t else None,
            "{:.2f}", None)
    o = ours.get("NS/keller/bf16/4096x4096")
    row("NS5 bf16 4096²: >= 70 % of the bf16 GEMM ceiling (naive flops)", o[1] if o else None, "{:.1f} %",
        lambda v: v >= 70.0)
    stack, loop = ours.get("NS/keller/bf16/64x128x128"), ours.get("NS/keller/bf16/loop64x128x128")
    row("64×128² bf16 stack in one launch per product: loop of 64 calls / stack >= 5",
        loop[0] / stack[0] if stack and loop else None, "{:.1f}×", lambda v: v >= 5.0)
    c = ours.get("ceiling/gemm/bf16/8192")
    tc = peer_meta.get("flops", {}).get("ceiling/gemm/bf16/8192")
    if c and c[2] and tc:
        print(f"\nbf16 GEMM at 8192³: orthopt's cuBLAS call {c[2] / 1e12:.0f} TFLOP/s, torch's matmul {tc / 1e12:.0f} TFLOP/s.")


if __name__ == "__main__":
    main()
