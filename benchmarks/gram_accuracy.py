# SPDX-License-Identifier: Apache-2.0
"""How far float32 Newton-Schulz lands from a float64 reference, standard iteration against the Gram
algorithm, on 512x2048 inputs: Gaussian, and with singular values spaced log-uniformly over condition
numbers 1e1 to 1e5. Prints the largest entry error relative to the largest entry of the reference.

    python3 benchmarks/gram_accuracy.py [--schedule keller] [--rows 512] [--cols 2048]
"""
import argparse

import numpy as np

import orthopt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedule", default="keller")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    args = parser.parse_args()
    m, n = args.rows, args.cols
    rng = np.random.default_rng(1)
    inputs = [("Gaussian", rng.standard_normal((m, n)))]
    k = min(m, n)
    for cond in (1e1, 1e2, 1e3, 1e5):
        u, _ = np.linalg.qr(rng.standard_normal((m, k)))
        v, _ = np.linalg.qr(rng.standard_normal((n, k)))
        inputs.append((f"condition {cond:.0e}", (u * np.logspace(0, -np.log10(cond), k)) @ v.T))
    print(f"| {m}x{n}, {args.schedule} | standard, float32 | Gram, float32 | Gram / standard |")
    print("|---|---|---|---|")
    for name, x in inputs:
        ref = orthopt.newton_schulz(x, schedule=args.schedule, algorithm="standard")
        err = {}
        for alg in ("standard", "gram"):
            q = orthopt.newton_schulz(x.astype(np.float32), schedule=args.schedule, algorithm=alg)
            err[alg] = float(np.abs(q - ref).max() / np.abs(ref).max())
        print(f"| {name} | {err['standard']:.2e} | {err['gram']:.2e} | {err['gram'] / err['standard']:.2f} |")


if __name__ == "__main__":
    main()
