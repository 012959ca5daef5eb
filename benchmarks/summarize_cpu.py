#!/usr/bin/python3
"""Summarize a benchmarks/run_cpu.sh run: medians over rounds, ratios paired within each round, the
speed targets, and (optionally) docs/benchmarks.md, its plot and the README's speed section.

  summarize_cpu.py RUN_DIR [--md FILE] [--png FILE] [--readme FILE] [--raw FILE]

RUN_DIR holds round-N.json (bench_cpu) and numpy-round-N.json (bench_numpy.py) for N = 1, 2, ...
A paired ratio a/b is the median over rounds of time(a)/time(b) measured in the same round.
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

SHAPE_ORDER = ["256x256", "768x768", "768x3072", "3072x768", "1024x4096", "2048x2048", "4096x4096"]
IMPL_LABEL = {"orthopt_eigen": "orthopt Eigen", "orthopt_blas": "orthopt BLAS", "eigen": "plain Eigen",
              "torch": "libtorch", "numpy": "numpy"}


def load(run_dir):
    """times[name][round] = ms; context dicts of bench_cpu and numpy."""
    times, ctx, np_ctx = {}, {}, {}
    for path in sorted(glob.glob(os.path.join(run_dir, "*round-*.json"))):
        r = int(re.search(r"round-(\d+)\.json$", path).group(1))
        with open(path) as f:
            data = json.load(f)
        if "numpy" in os.path.basename(path):
            np_ctx = data.get("context", {})
        else:
            ctx = data.get("context", {})
        for b in data["benchmarks"]:
            if b.get("run_type") != "iteration":
                continue
            name = re.sub(r"(/iterations:\d+)?/real_time$", "", b["name"])
            unit = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b.get("time_unit", "ms")]
            times.setdefault(name, {})[r] = b["real_time"] * unit
            if "FLOP/s_eff" in b:
                times.setdefault("#eff:" + name, {})[r] = b["FLOP/s_eff"]
    return times, ctx, np_ctx


class Run:
    def __init__(self, times):
        self.t = times

    def ms(self, name):
        v = self.t.get(name)
        return statistics.median(v.values()) if v else None

    def ratio(self, a, b):
        """Median over rounds of time(a)/time(b), both from the same round."""
        ta, tb = self.t.get(a), self.t.get(b)
        if not ta or not tb:
            return None
        rs = [ta[r] / tb[r] for r in ta if r in tb]
        return statistics.median(rs) if rs else None

    def ratios(self, a, b):
        ta, tb = self.t.get(a), self.t.get(b)
        if not ta or not tb:
            return []
        return sorted(ta[r] / tb[r] for r in ta if r in tb)

    def eff(self, name):
        v = self.t.get("#eff:" + name)
        return statistics.median(v.values()) if v else None


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 10 else f"{v:.0f}"


def fmt_r(v):
    return "–" if v is None else f"{v:.2f}"


def ns_name(schedule, alg, t, shape, impl):
    return f"NS/{schedule}/{alg}/{t}/{shape}/{impl}"


def gflops(m, n, steps=5):
    m, n = min(m, n), max(m, n)
    return steps * (3 * m * m * n + m ** 3)


def shapes_of(run, prefix):
    found = set()
    for name in run.t:
        if name.startswith(prefix):
            found.add(name[len(prefix):].split("/")[0])
    return [s for s in SHAPE_ORDER if s in found]


def targets(run):
    """The targets: (text, measured, met) rows, for those this run measured."""
    rows = []
    ceiling_blas = run.t.get("#eff:GEMM/f32/4096/blas")
    for shape in ("768x768", "2048x2048"):
        for impl in ("orthopt_blas", "orthopt_eigen"):
            r = run.ratio(ns_name("keller", "standard", "f32", shape, impl), ns_name("keller", "standard", "f32", shape, "numpy"))
            rows.append((f"NS5 keller fp32 standard, {shape}, {IMPL_LABEL[impl]} / numpy ≤ 0.75", fmt_r(r), r is not None and r <= 0.75))
    for impl in ("orthopt_blas", "orthopt_eigen"):
        r = run.ratio(ns_name("keller", "gram", "f32", "1024x4096", impl), ns_name("keller", "standard", "f32", "1024x4096", "numpy"))
        rows.append((f"NS5 keller fp32 Gram, 1024x4096, {IMPL_LABEL[impl]} / numpy ≤ 0.50", fmt_r(r), r is not None and r <= 0.50))
    for shape in ("2048x2048", "4096x4096"):
        for impl in ("orthopt_blas", "orthopt_eigen"):
            name = ns_name("keller", "standard", "f32", shape, impl)
            e = run.eff(name)
            g = run.eff("GEMM/f32/4096/blas")
            if e and g:
                frac = e / g
                rows.append((f"standard {shape}, {IMPL_LABEL[impl]}: ≥ 85 % of the run's sgemm (OpenBLAS, 4096³; syrk-aware count)",
                             f"{100 * frac:.0f} %", frac >= 0.85))
    for rule in ("adamuon", "namo"):
        for shape in ("768x768", "1024x4096"):
            for impl in ("orthopt_blas", "orthopt_eigen"):
                r = run.ratio(f"STEP/{rule}/f32/{shape}/{impl}", ns_name("keller", "standard", "f32", shape, impl))
                rows.append((f"full {rule} step / its NS call, {shape}, {IMPL_LABEL[impl]} ≤ 1.10", fmt_r(r), r is not None and r <= 1.10))
    for impl in ("orthopt_blas", "orthopt_eigen"):
        r = run.ratio(f"BATCH/keller/f32/64x128x128/{impl}_loop", f"BATCH/keller/f32/64x128x128/{impl}")
        rows.append((f"64×(128×128) stack: 64 separate calls / one batch call, {IMPL_LABEL[impl]} ≥ 1.6", fmt_r(r), r is not None and r >= 1.6))
    for shape in SHAPE_ORDER[1:]:
        r = run.ratio(ns_name("keller", "standard", "f32", shape, "orthopt_eigen"), ns_name("keller", "standard", "f32", shape, "orthopt_blas"))
        if r is not None:
            rows.append((f"Eigen backend / BLAS backend, standard, {shape} ≤ 1.15", fmt_r(r), r <= 1.15))
    return [row for row in rows if row[1] != "–"]


def ns_table(run, schedule, t):
    prefix = f"NS/{schedule}/standard/{t}/"
    shapes = shapes_of(run, prefix)
    impls = [("standard", "orthopt_eigen"), ("standard", "orthopt_blas"), ("gram", "orthopt_eigen"), ("gram", "orthopt_blas"),
             ("standard", "eigen"), ("standard", "torch"), ("standard", "numpy")]
    head = ["shape"] + [("Gram " if a == "gram" else "") + IMPL_LABEL[i] + " ms" for a, i in impls]
    head += ["BLAS / numpy", "Eigen / numpy", "Gram BLAS / numpy", "Gram Eigen / numpy", "BLAS / libtorch", "best standard, % of GEMM ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gemm = f"GEMM/{t}/4096/"
    ceiling = max([v for v in (run.eff(gemm + "blas"), run.eff(gemm + "eigen"), run.eff(gemm + "torch")) if v] or [0])
    for s in shapes:
        row = [s.replace("x", "×")] + [fmt_ms(run.ms(ns_name(schedule, a, t, s, i))) for a, i in impls]
        num = ns_name(schedule, "standard", t, s, "numpy")
        row += [fmt_r(run.ratio(ns_name(schedule, "standard", t, s, "orthopt_blas"), num)),
                fmt_r(run.ratio(ns_name(schedule, "standard", t, s, "orthopt_eigen"), num)),
                fmt_r(run.ratio(ns_name(schedule, "gram", t, s, "orthopt_blas"), num)),
                fmt_r(run.ratio(ns_name(schedule, "gram", t, s, "orthopt_eigen"), num)),
                fmt_r(run.ratio(ns_name(schedule, "standard", t, s, "orthopt_blas"), ns_name(schedule, "standard", t, s, "torch")))]
        best = max([v for v in (run.eff(ns_name(schedule, "standard", t, s, "orthopt_blas")),
                                run.eff(ns_name(schedule, "standard", t, s, "orthopt_eigen"))) if v] or [0])
        row.append(f"{100 * best / ceiling:.0f} %" if ceiling and best else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def simple_table(run, names, header):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in names:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(run, png):
    if not shutil.which("gnuplot"):
        print("gnuplot not found; no plot", file=sys.stderr)
        return
    series = [("standard", "orthopt_eigen"), ("standard", "orthopt_blas"), ("gram", "orthopt_eigen"), ("gram", "orthopt_blas"),
              ("standard", "eigen"), ("standard", "torch"), ("standard", "numpy")]
    shapes = shapes_of(run, "NS/keller/standard/f32/")
    ceiling = max([v for v in (run.eff("GEMM/f32/4096/blas"), run.eff("GEMM/f32/4096/eigen")) if v] or [0])
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "ns.dat")
        with open(data, "w") as f:
            f.write("# x label " + " ".join(f"{a}-{i}" for a, i in series) + " floor\n")
            for k, s in enumerate(shapes):
                m, n = map(int, s.split("x"))
                vals = [run.ms(ns_name("keller", a, "f32", s, i)) for a, i in series]
                floor = gflops(m, n) / ceiling * 1e3 if ceiling else float("nan")
                f.write(f"{k} {s} " + " ".join("nan" if v is None else f"{v:.4f}" for v in vals) + f" {floor:.4f}\n")
        titles = [("Gram " if a == "gram" else "") + IMPL_LABEL[i] for a, i in series]
        script = [f"set terminal pngcairo size 1000,600 font ',11'", f"set output '{png}'",
                  "set title 'Newton–Schulz, keller, 5 steps, fp32: median time per call (log scale)'",
                  "set logscale y", "set ylabel 'ms'", "set xlabel 'shape'", "set key left top", "set grid ytics",
                  "set xtics rotate by -20"]
        plots = []
        for c, title in enumerate(titles):
            dash = " dt 2" if "Gram" in title else ""
            plots.append(f"'{data}' using 1:{c + 3}:xtic(2) with linespoints lw 2{dash} title '{title}'")
        plots.append(f"'{data}' using 1:{len(titles) + 3} with lines lw 2 lc rgb 'black' dt 3 title 'floor: standard-iteration flops at the run’s best GEMM rate'")
        script.append("plot " + ", \\\n     ".join(plots))
        gp = os.path.join(d, "plot.gp")
        with open(gp, "w") as f:
            f.write("\n".join(script) + "\n")
        subprocess.run(["gnuplot", gp], check=True)


def markdown(run, ctx, np_ctx, run_dir, png_name):
    out = []
    a = out.append
    rounds = len({r for v in run.t.values() for r in v})
    a("# CPU benchmarks\n")
    a("Generated by `benchmarks/summarize_cpu.py` from one run of\n")
    a(f"```sh\nROUNDS={rounds} WRITE_DOCS=1 bash benchmarks/run_cpu.sh   # installs what it needs, builds bench_cpu for this machine, runs it\n```\n")
    commit_file = os.path.join(run_dir, "commit.txt")
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "?"
    a(f"on {ctx.get('cpu_model', '?')} ({ctx.get('num_cpus', '?')} CPUs, {isa_summary(ctx.get('cpu_isa', ''))}), ISA flags: {ctx.get('cpu_isa', '?')}; "
      f"{ctx.get('date', '?')[:10]}; {rounds} rounds; orthopt at commit {commit}.\n")
    a("| | |\n|---|---|")
    for k in ("compiler", "orthopt_bench_native", "eigen_version", "eigen_simd", "blas", "blas_threads", "openmp_max_threads",
              "OMP_NUM_THREADS", "torch_version", "torch_threads"):
        a(f"| {k} | {ctx.get(k, '?')} |")
    a(f"| numpy | {np_ctx.get('numpy', '?')} |\n")
    a("Each round is one process of `bench_cpu` (every selected benchmark once, in random order) followed by "
      "`bench_numpy.py` on the same benchmarks. Times are medians over rounds; **a ratio a / b is the median over "
      "rounds of a's time over b's time in the same round** (a ratio below 1 means the first is faster). The host is a "
      "shared 2-core virtual machine: absolute times move by ±10 % between rounds; paired ratios much less. "
      "`bench_cpu --check` (ctest: `bench.cpu.agree`) verifies before the run that every implementation computes the "
      "same matrix. The raw JSON of this run is in `benchmarks/results/`. (Debian's Google Benchmark warns that it was "
      "built as DEBUG: that is the harness's loop, not the timed code, and costs nothing measurable on calls of "
      "milliseconds.)\n")
    a("## Targets\n")
    rows = targets(run)
    a(simple_table(run, [(t, v, "met" if ok else "**missed**") for t, v, ok in rows], ["target", "measured", ""]))
    a("")
    missed = [t for t, _, ok in rows if not ok]
    if any("step / its NS call" in t for t in missed):
        a("\n**Rule steps against their NS call.** A step adds element-wise passes to the NS call: for AdaMuon (code "
          "form) the gradient's finiteness check, the momentum, the Nesterov mix, the sign map, the second moment, the "
          "division by its root, a norm and the update, 8 memory-bound passes over the matrix (NAMO has a few fewer). "
          "At 768² they are within the noise of the NS call; at 1024×4096 (16 MB per pass in float) they cost the "
          "excess shown. Fusing passes (the Nesterov mix with the sign map, the second moment with the division) would "
          "take some of it back; splitting them over the threads is measured in the follow-up run below.")
    if any("stack" in t for t in missed):
        a("\n**Stacks on the Eigen backend.** Splitting whole matrices over the threads gains less on the Eigen backend "
          "than on OpenBLAS because its baseline, one call per matrix with each 128×128 product split in two, is already "
          "faster (compare the `_loop` rows in the stack table): the batch call is still the fastest way to run the stack "
          "on either backend.")
    gb, ge = run.eff("GEMM/f32/4096/blas"), run.eff("GEMM/f32/4096/eigen")
    if gb and ge:
        a(f"\nThe ceiling rows use the run's OpenBLAS sgemm, as the targets state them. On this machine Eigen 3.4's own "
          f"GEMM is faster than OpenBLAS's sgemm ({ge / 1e9:.0f} against {gb / 1e9:.0f} GFLOP/s at 4096³: the `blas` "
          "row above names the kernel set OpenBLAS chose for this CPU, while Eigen is compiled for the ISA flags listed), which is why "
          "the Eigen backend exceeds 100 % of that ceiling and why the BLAS backend, bound by its BLAS, trails the Eigen "
          f"backend; against Eigen's GEMM the BLAS backend's standard iteration reaches "
          f"{100 * (run.eff(ns_name('keller', 'standard', 'f32', '2048x2048', 'orthopt_blas')) or 0) / ge:.0f} % at 2048².\n")
    a("## Newton–Schulz, keller, 5 steps, fp32\n")
    a(f"![time per call against shape](benchmarks-ns.png)\n" if png_name else "")
    a(ns_table(run, "keller", "f32"))
    a("\nThe last column: orthopt's better backend in flops actually performed (both symmetric products as rank-k "
      "updates: 3m²n + m³ per step) per second, over the fastest GEMM of the run (4096³, any library).\n")
    a("## Newton–Schulz, keller, 5 steps, fp64\n")
    a(ns_table(run, "keller", "f64"))
    a("\n## Newton–Schulz, Polar Express, fp32\n")
    a(ns_table(run, "polar_express", "f32"))
    sched_rows = []
    for name in sorted(n for n in run.t if re.match(r"NS/[a-z_]+/standard/f32/768x768/orthopt_blas$", n)):
        sch = name.split("/")[1]
        sched_rows.append((sch, fmt_ms(run.ms(name)), fmt_ms(run.ms(name.replace("orthopt_blas", "orthopt_eigen")))))
    if sched_rows:
        a("\n## Every schedule at 768×768, fp32 (orthopt, standard algorithm)\n")
        a(simple_table(run, sched_rows, ["schedule", "BLAS ms", "Eigen ms"]))
        a("\nThe schedules differ in coefficients and step count (aol: 4 steps, you: 6, cubic: 10 without the A² product); "
          "per step the cost is the same.")
    b = "BATCH/keller/f32/64x128x128/"
    batch_rows = [(IMPL_LABEL.get(i.replace("_loop", ""), i) + (" — one call per matrix" if i.endswith("_loop") else (" — one batch call" if i.startswith("orthopt") else "")),
                   fmt_ms(run.ms(b + i)), fmt_r(run.ratio(b + i, b + "numpy")))
                  for i in ("orthopt_blas", "orthopt_blas_loop", "orthopt_eigen", "orthopt_eigen_loop", "eigen_loop", "torch", "numpy")
                  if run.ms(b + i) is not None]
    a("\n## A stack of 64 matrices of 128×128, keller, fp32\n")
    a(simple_table(run, batch_rows, ["implementation", "ms", "/ numpy"]))
    a("\northopt's batch call gives each thread whole matrices (single-threaded plans made with the plan); one call per "
      "matrix splits each small product over the threads instead. libtorch and numpy run their batched matmul.")
    step_rows = []
    for shape in ("768x768", "1024x4096"):
        for impl in ("orthopt_blas", "orthopt_eigen"):
            ns = ns_name("keller", "standard", "f32", shape, impl)
            for rule in ("muon", "adamuon", "namo", "namo_d", "adamw"):
                n = f"STEP/{rule}/f32/{shape}/{impl}"
                if run.ms(n) is not None:
                    # A Newton–Schulz rule's step against its NS call; AdamW has none. Every rule: the value
                    # guard's cost, the step with check_finite against the same step without it.
                    per_ns = "–" if rule == "adamw" else fmt_r(run.ratio(n, ns))
                    guard = fmt_r(run.ratio(n, f"STEP/{rule}_unchecked/f32/{shape}/{impl}"))
                    step_rows.append((shape.replace("x", "×"), IMPL_LABEL[impl], rule, fmt_ms(run.ms(n)), per_ns, guard))
            n = f"STEP/adamw_column_major/f32/{shape}/{impl}"
            if run.ms(n) is not None:  # against the row-major step, in the guard's column
                step_rows.append((shape.replace("x", "×"), IMPL_LABEL[impl], "adamw, column-major W and G",
                                  fmt_ms(run.ms(n)), "–", f"{fmt_r(run.ratio(n, f'STEP/adamw/f32/{shape}/{impl}'))} (/ row-major)"))
    a("\n## Full rule steps, fp32 (presets: muon moonlight, adamuon/namo/namo_d code, adamw torch; keller NS)\n")
    a(simple_table(run, step_rows, ["shape", "backend", "rule", "ms", "step / NS call", "with / without check_finite"]))
    a("\nW and G are row-major, as the state is; the column-major AdamW row shows a parameter stored in the other "
      "order than its state: the backend then walks the pass in tiles, staging the other order through a buffer.")
    opt_rows = [(rule, IMPL_LABEL[impl], fmt_ms(run.ms(f"OPT/gpt_d512_l4/{rule}/f32/{impl}")),
                 fmt_r(run.ratio(f"OPT/gpt_d512_l4/{rule}/f32/{impl}", f"OPT/gpt_d512_l4/{rule}_unchecked/f32/{impl}")))
                for rule in ("muon", "adamuon") for impl in ("orthopt_blas", "orthopt_eigen") if run.ms(f"OPT/gpt_d512_l4/{rule}/f32/{impl}")]
    a("\n## optimizer::step on a transformer's parameters, fp32\n")
    a("d_model 512, 4 layers, MLP 4×, vocabulary 8192: 24 matrices to the rule (QKV as three 512² blocks), embeddings, "
      "head, norms and biases (8.5 M values) to AdamW by orthopt's router; parameters and gradients row-major. The "
      "last column: the step against the same optimizer with check_finite off in both groups.\n")
    a(simple_table(run, opt_rows, ["rule", "backend", "ms per step", "with / without check_finite"]))
    polar_rows = [(s.replace("x", "×"), fmt_ms(run.ms(f"POLAR/f32/{s}/orthopt_eigen")),
                   fmt_ms(run.ms(ns_name("keller", "standard", "f32", s, "orthopt_eigen"))))
                  for s in ("768x768", "1024x4096") if run.ms(f"POLAR/f32/{s}/orthopt_eigen")]
    a("\n## Exact polar factor (SVD) against NS5, fp32, Eigen backend\n")
    a(simple_table(run, polar_rows, ["shape", "exact polar ms", "NS5 ms"]))
    gemm_rows = []
    for t in ("f32", "f64"):
        for impl in ("blas", "eigen", "torch", "numpy"):
            n = f"GEMM/{t}/4096/{impl}"
            if run.ms(n):
                g = 2 * 4096 ** 3 / (run.ms(n) * 1e-3) / 1e9
                gemm_rows.append((t, {"blas": "OpenBLAS (cblas)", "eigen": "Eigen", "torch": "libtorch", "numpy": "numpy"}[impl],
                                  fmt_ms(run.ms(n)), f"{g:.0f}"))
    a("\n## GEMM ceiling of this run (4096³)\n")
    a(simple_table(run, gemm_rows, ["type", "library", "ms", "GFLOP/s"]))
    a("\nThe CUDA backend's benchmark (`bench_cuda`, `benchmarks/run_gpu.sh`) and what a GPU run needs are in "
      "[benchmarks-gpu.md](benchmarks-gpu.md).\n")
    return "\n".join(out)


def isa_summary(flags):
    f = flags.split()
    return "AVX-512" if "avx512f" in f else ("AVX2" if "avx2" in f else "no AVX2")


def readme_block(run, ctx, followup=None):
    rows = targets(run)
    rounds = len({r for v in run.t.values() for r in v})
    lines = [f"Measured by `ROUNDS={rounds} WRITE_DOCS=1 bash benchmarks/run_cpu.sh` on {ctx.get('cpu_model', '?')} ({ctx.get('num_cpus', '?')} CPUs, "
             f"{isa_summary(ctx.get('cpu_isa', ''))}), "
             f"{ctx.get('date', '?')[:10]}; the whole run, the machine and the method are in "
             "[docs/benchmarks.md](docs/benchmarks.md). Ratios are medians of ratios paired within a round; below 1 orthopt is faster.\n",
             "| | " + "orthopt BLAS | orthopt Eigen |", "|---|---:|---:|"]
    def r(a, b):
        return fmt_r(run.ratio(a, b))
    for shape in ("768x768", "2048x2048", "4096x4096"):
        lines.append(f"| NS5 keller fp32 {shape.replace('x', '×')}, time / numpy's | "
                     f"{r(ns_name('keller', 'standard', 'f32', shape, 'orthopt_blas'), ns_name('keller', 'standard', 'f32', shape, 'numpy'))} | "
                     f"{r(ns_name('keller', 'standard', 'f32', shape, 'orthopt_eigen'), ns_name('keller', 'standard', 'f32', shape, 'numpy'))} |")
    for shape in ("768x3072", "1024x4096"):
        lines.append(f"| NS5 keller fp32 {shape.replace('x', '×')}, Gram, time / numpy's | "
                     f"{r(ns_name('keller', 'gram', 'f32', shape, 'orthopt_blas'), ns_name('keller', 'standard', 'f32', shape, 'numpy'))} | "
                     f"{r(ns_name('keller', 'gram', 'f32', shape, 'orthopt_eigen'), ns_name('keller', 'standard', 'f32', shape, 'numpy'))} |")
    lines.append(f"| 64×(128×128) stack, one batch call vs 64 calls (speed-up) | "
                 f"{fmt_r(1 / run.ratio('BATCH/keller/f32/64x128x128/orthopt_blas', 'BATCH/keller/f32/64x128x128/orthopt_blas_loop')) if run.ratio('BATCH/keller/f32/64x128x128/orthopt_blas', 'BATCH/keller/f32/64x128x128/orthopt_blas_loop') else '–'} | "
                 f"{fmt_r(1 / run.ratio('BATCH/keller/f32/64x128x128/orthopt_eigen', 'BATCH/keller/f32/64x128x128/orthopt_eigen_loop')) if run.ratio('BATCH/keller/f32/64x128x128/orthopt_eigen', 'BATCH/keller/f32/64x128x128/orthopt_eigen_loop') else '–'} |")
    lines.append(f"| full AdaMuon step / its NS call, 1024×4096 | "
                 f"{r('STEP/adamuon/f32/1024x4096/orthopt_blas', ns_name('keller', 'standard', 'f32', '1024x4096', 'orthopt_blas'))} | "
                 f"{r('STEP/adamuon/f32/1024x4096/orthopt_eigen', ns_name('keller', 'standard', 'f32', '1024x4096', 'orthopt_eigen'))} |")
    met = sum(1 for _, _, ok in rows if ok)
    lines.append(f"\n{met} of the {len(rows)} target checks are met in this run; docs/benchmarks.md lists each.")
    if followup is not None:
        fb = followup.ratio("STEP/adamuon/f32/1024x4096/orthopt_blas", ns_name("keller", "standard", "f32", "1024x4096", "orthopt_blas"))
        fe = followup.ratio("STEP/adamuon/f32/1024x4096/orthopt_eigen", ns_name("keller", "standard", "f32", "1024x4096", "orthopt_eigen"))
        lines.append(f"A follow-up run after the element-wise passes were threaded (same page) measures the full AdaMuon step at "
                     f"{fmt_r(fb)} (BLAS) and {fmt_r(fe)} (Eigen) of its NS call at 1024×4096.")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--md")
    p.add_argument("--png")
    p.add_argument("--readme")
    p.add_argument("--raw", help="write the run's rounds, merged, as one JSON file (for the repository)")
    p.add_argument("--followup", help="a later, filtered run (run_cpu.sh with FILTER) whose targets are added to --md")
    p.add_argument("--followup-note", default="", help="what changed between the two runs (one paragraph)")
    a = p.parse_args()
    times, ctx, np_ctx = load(a.run_dir)
    if not times:
        sys.exit(f"no round-*.json in {a.run_dir}")
    run = Run(times)
    for t, v, ok in targets(run):
        print(f"{'met   ' if ok else 'MISSED'}  {v:>6}  {t}")
    print()
    print(ns_table(run, "keller", "f32"))
    if a.png:
        plot(run, a.png)
    if a.md:
        text = markdown(run, ctx, np_ctx, a.run_dir, a.png)
        if a.followup:
            f_times, f_ctx, _ = load(a.followup)
            f_run = Run(f_times)
            commit_file = os.path.join(a.followup, "commit.txt")
            commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "?"
            rounds = len({r for v in f_times.values() for r in v})
            filt = open(os.path.join(a.followup, "filter.txt")).read().strip() if os.path.exists(os.path.join(a.followup, "filter.txt")) else "?"
            text += (f"\n## Follow-up run at commit {commit}\n\n{a.followup_note}\n\n"
                     f"```sh\nROUNDS={rounds} FILTER='{filt}' bash benchmarks/run_cpu.sh\n```\n\n"
                     f"Same machine, {f_ctx.get('date', '?')[:16]}. The targets it measures:\n\n")
            text += simple_table(f_run, [(t, v, "met" if ok else "**missed**") for t, v, ok in targets(f_run)],
                                 ["target", "measured", ""]) + "\n"
        with open(a.md, "w") as f:
            f.write(text)
        print("wrote", a.md)
    if a.readme:
        with open(a.readme) as f:
            text = f.read()
        begin, end = "<!-- speed:begin -->", "<!-- speed:end -->"
        if begin in text and end in text:
            f_run = Run(load(a.followup)[0]) if a.followup else None
            text = text[:text.index(begin) + len(begin)] + "\n" + readme_block(run, ctx, f_run) + "\n" + text[text.index(end):]
            with open(a.readme, "w") as f:
                f.write(text)
            print("updated the speed section of", a.readme)
        else:
            print(f"{a.readme} has no {begin} … {end} block; not changed", file=sys.stderr)
    if a.raw:
        merged = {"context_bench_cpu": ctx, "context_numpy": np_ctx,
                  "rounds": {name: v for name, v in times.items() if not name.startswith("#")},
                  "effective_flops_per_second": {name[5:]: v for name, v in times.items() if name.startswith("#eff:")}}
        os.makedirs(os.path.dirname(a.raw), exist_ok=True)
        with open(a.raw, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        print("wrote", a.raw)


if __name__ == "__main__":
    main()
