#!/usr/bin/python3
"""numpy's side of orthopt's CPU benchmark suite (benchmarks/run_cpu.sh): the same benchmarks as bench_cpu
where numpy is a peer, written as the Muon codebases write Newton–Schulz in numpy/PyTorch, and timed the
way Google Benchmark times bench_cpu (a warm-up call, then calls until 0.5 s, one call when a call takes
0.25 s or more; mean wall time per call). Writes Google Benchmark's JSON so run_cpu.sh can pair it with
bench_cpu's output round by round.

  bench_numpy.py --out FILE [--filter REGEX] [--include_4096]

numpy must use the same BLAS as bench_cpu (Debian's python3-numpy links libblas.so.3, which the
alternatives point at OpenBLAS when libopenblas0-openmp is installed); the JSON's context records it.
"""
import argparse
import io
import contextlib
import json
import os
import platform
import re
import time

import numpy as np

KELLER = [(3.4445, -4.7750, 2.0315)]
# Polar Express (Amsel et al. 2025) rows with the safety factor 1.01, as orthopt's preset.
_PE_RAW = [(8.28721201814563, -23.595886519098837, 17.300387312530933),
           (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
           (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
           (3.3184196573706015, -2.488488024314874, 0.51004894012372),
           (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
           (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
           (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
           (1.875, -1.25, 0.375)]
POLAR_EXPRESS = [(a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in _PE_RAW[:-1]] + [_PE_RAW[-1]]
SCHEDULES = {"keller": (KELLER, 0.0), "polar_express": (POLAR_EXPRESS, 0.01)}
SHAPES = [(256, 256), (768, 768), (768, 3072), (3072, 768), (1024, 4096), (2048, 2048)]


def ns(G, table, safety, steps=5, eps=1e-7):
    """Newton–Schulz as numpy users write it: A = X@X.T (numpy calls ?syrk for a@a.T), B = b*A + c*(A@A),
    X = a*X + B@X, on the wide orientation."""
    X = G / (np.linalg.norm(G) * (1.0 + safety) + eps)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for k in range(steps):
        a, b, c = table[min(k, len(table) - 1)]
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if tall else X


def ns_stack(G, table, steps=5, eps=1e-7):
    """A stack (E, m, n) at once with numpy's batched matmul."""
    X = G / (np.linalg.norm(G, axis=(1, 2), keepdims=True) + eps)
    for k in range(steps):
        a, b, c = table[min(k, len(table) - 1)]
        A = X @ X.transpose(0, 2, 1)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X


def gaussian(rows, cols, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)


def timed(fn, min_time=0.5):
    """Google Benchmark's rule, simplified: warm up, then run until min_time; one call if it is slow."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if warm >= 0.25:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, 1
    n, total = 0, 0.0
    while total < min_time:
        t0 = time.perf_counter()
        fn()
        total += time.perf_counter() - t0
        n += 1
    return total / n, n


def benchmarks(include_4096):
    shapes = SHAPES + ([(4096, 4096)] if include_4096 else [])
    out = []
    for schedule, (table, safety) in SCHEDULES.items():
        for dtype, tname in ((np.float32, "f32"), (np.float64, "f64")):
            for r, c in shapes:
                name = f"NS/{schedule}/standard/{tname}/{r}x{c}/numpy"
                out.append((name, lambda r=r, c=c, dtype=dtype, table=table, safety=safety:
                            (lambda G=gaussian(r, c, dtype): (lambda: ns(G, table, safety)))()))
    for dtype, tname in ((np.float32, "f32"), (np.float64, "f64")):
        name = f"BATCH/keller/{tname}/64x128x128/numpy"
        out.append((name, lambda dtype=dtype: (lambda G=gaussian(64 * 128, 128, dtype).reshape(64, 128, 128):
                                               (lambda: ns_stack(G, KELLER)))()))
        name = f"GEMM/{tname}/4096/numpy"
        out.append((name, lambda dtype=dtype: (lambda A=gaussian(4096, 4096, dtype), B=gaussian(4096, 4096, dtype, 1):
                                               (lambda: A @ B))()))
    return out


def blas_info():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        np.show_config()
    lib = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
    return f"numpy {np.__version__}; libblas.so.3 -> {lib}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--filter", default=".")
    p.add_argument("--include_4096", action="store_true")
    a = p.parse_args()
    pattern = re.compile(a.filter)
    results = []
    for name, make in benchmarks(a.include_4096):
        if not pattern.search(name):
            continue
        fn = make()
        seconds, iterations = timed(fn)
        results.append({"name": name, "run_name": name, "run_type": "iteration", "repetitions": 1,
                        "repetition_index": 0, "iterations": iterations, "real_time": seconds * 1e3,
                        "cpu_time": seconds * 1e3, "time_unit": "ms"})
        print(f"{name:60s} {seconds * 1e3:10.2f} ms  ({iterations} calls)", flush=True)
    context = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "host_name": platform.node(),
               "executable": "bench_numpy.py", "numpy": blas_info(),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)")}
    with open(a.out, "w") as f:
        json.dump({"context": context, "benchmarks": results}, f, indent=1)


if __name__ == "__main__":
    main()
