"""The PyTorch peer of bench_cuda: the Newton-Schulz iteration as Muon implementations run it in eager
PyTorch (Jordan 2024's quintic, a, b, c = 3.4445, -4.7750, 2.0315, five steps, in bf16; batched with
matmul's own batching for a stack), torch.optim.Muon's whole step (where this PyTorch has it: 2.9 and
later; a stack is that many 2-D parameters, as torch.optim.Muon takes only matrices), and torch's own
bf16 GEMM rate at 8192^3, timed with CUDA events on the same shapes as bench_cuda.

    python3 benchmarks/bench_torch_ns.py [--quick] --out bench_torch.json

Writes {"device": ..., "results": {"NS/keller/bf16/1024x1024": milliseconds, ...}} (median of the
repetitions). Without CUDA it writes an empty result and says so.
"""
import argparse
import json
import statistics

import torch

SHAPES = [(1, 1024, 1024), (1, 4096, 4096), (1, 8192, 8192), (1, 1024, 4096), (1, 4096, 16384), (64, 128, 128)]


def newton_schulz5(g, steps=5, dtype=torch.bfloat16):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.mT if tall else x


def muon_step(batch, rows, cols, dtype):
    """torch.optim.Muon's step over `batch` parameters of rows x cols with fixed gradients, or None."""
    if not hasattr(torch.optim, "Muon"):
        return None
    params = [torch.randn(rows, cols, device="cuda", dtype=dtype, requires_grad=True) for _ in range(batch)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Muon(params)  # defaults: lr 1e-3, wd 0.1, momentum 0.95, Nesterov, NS5 keller, eps 1e-7
    return opt.step


def gemm_ceiling(reps):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, reps, 10)
    return ms, 2 * 8192**3 / (ms / 1e3)


def shape_name(batch, rows, cols):
    return (f"{batch}x" if batch > 1 else "") + f"{rows}x{cols}"


def time_ms(fn, reps, inner):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / inner)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"device": None, "torch": torch.__version__, "cuda": torch.version.cuda, "results": {}, "flops": {}}
    if not torch.cuda.is_available():
        print("bench_torch_ns: no CUDA device; nothing measured")
    else:
        result["device"] = torch.cuda.get_device_name(0)
        shapes = SHAPES[:2] + SHAPES[-1:] if args.quick else SHAPES
        for batch, rows, cols in shapes:
            g = torch.randn((batch, rows, cols) if batch > 1 else (rows, cols), device="cuda", dtype=torch.float32)
            for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
                ms = time_ms(lambda: newton_schulz5(g, dtype=dtype), 3 if args.quick else 7, 3)
                key = f"NS/keller/{name}/{shape_name(batch, rows, cols)}"
                result["results"][key] = ms
                print(f"{key:40s} {ms:9.3f} ms")
        for batch, rows, cols in shapes:
            for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
                key = f"step/muon/{name}/{shape_name(batch, rows, cols)}"
                try:
                    step = muon_step(batch, rows, cols, dtype)
                    if step is None:
                        continue
                    with torch.no_grad():
                        ms = time_ms(step, 3 if args.quick else 7, 3)
                except Exception as e:  # a dtype this torch.optim.Muon refuses: say so, measure the rest
                    print(f"{key:40s} not measured: {type(e).__name__}: {e}")
                    continue
                result["results"][key] = ms
                print(f"{key:40s} {ms:9.3f} ms  (torch.optim.Muon)")
        ms, rate = gemm_ceiling(3 if args.quick else 7)
        result["results"]["ceiling/gemm/bf16/8192"] = ms
        result["flops"]["ceiling/gemm/bf16/8192"] = rate
        print(f"{'ceiling/gemm/bf16/8192':40s} {ms:9.3f} ms  ({rate / 1e12:.0f} TFLOP/s)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
