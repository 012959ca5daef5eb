# SPDX-License-Identifier: Apache-2.0
"""A full optimizer step from Python: orthopt.torch against torch's own optimizers, on one GPT-like
model's parameters (d_model 512, 4 layers, MLP 4x, vocabulary 8192, context 256: bench_cpu's OPT model),
float32, on the CPU, with the same threads.

    python3 benchmarks/bench_python.py [--rounds 5] [--steps 5] [--threads N]

Pairs, each timed in the same round (ratios are medians over rounds of a / b in one round):
  - orthopt.torch.Muon (Muon on the hidden matrices, AdamW on the rest, via route, with the fused QKV
    kept whole as torch.optim.Muon keeps it, so that every row computes the same update; keller NS5
    with the standard algorithm, and with ns_algorithm="fastest", which runs the Gram algorithm on the
    1:3 QKV and 1:4 MLP matrices, with parallel steps (the default) and without) against a Muon in
    torch operations with torch.optim.AdamW (its fastest form here) on the rest: torch.optim.Muon where
    the installed torch has it (PyTorch >= 2.9; its Newton-Schulz runs in bfloat16), else a
    transcription of its update with Newton-Schulz in float32;
  - orthopt.torch.AdamW against torch.optim.AdamW's fastest form here (fused, foreach or the loop, each
    measured; the fastest is the peer);
  - the Python overhead per parameter: opt.step() against the extension's step on the same gradient
    list, over 256 parameters of 4 values.
Prints a markdown report (the CPU, OpenBLAS core and versions first).
"""

import argparse
import math
import os
import platform
import statistics
import time

import torch

import orthopt
import orthopt.torch as ot

D, LAYERS, VOCAB, CONTEXT = 512, 4, 8192, 256


class Params(torch.nn.Module):
    """The parameters of the GPT-like model, named as the C++ benchmark names them."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        shapes = {"embed_tokens": (VOCAB, D), "embed_positions": (CONTEXT, D)}
        for layer in range(LAYERS):
            p = f"layers.{layer}."
            shapes.update({p + "ln1.weight": (D,), p + "ln1.bias": (D,), p + "attn.qkv": (3 * D, D),
                           p + "attn.out": (D, D), p + "ln2.weight": (D,), p + "ln2.bias": (D,),
                           p + "mlp.fc1": (4 * D, D), p + "mlp.fc2": (D, 4 * D)})
        shapes.update({"ln_f.weight": (D,), "lm_head": (VOCAB, D)})
        self.names = list(shapes)
        self.plist = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes.values())

    def named(self):
        return list(zip(self.names, self.plist))

    def named_parameters(self, *args, **kwargs):
        return iter(self.named())


def fill_gradients(model, seed):
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named():
        p.grad = torch.randn(p.shape, generator=g)


def hidden_and_rest(model):
    """The hidden matrices and the rest, as route() splits them (the torch peer gets the same split)."""
    matrix, adamw = ot.route(model, verbose=False)
    return matrix["params"], adamw["params"]


class TorchOpsMuon:
    """torch.optim.Muon's update (torch/optim/_muon.py) in torch operations, Newton-Schulz in float32."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.1, ns_steps=5):
        self.params = list(params)
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.lr, self.momentum, self.wd, self.ns_steps = lr, momentum, weight_decay, ns_steps

    @torch.no_grad()
    def step(self):
        a, b, c = 3.4445, -4.775, 2.0315
        for p, buf in zip(self.params, self.bufs):
            g = p.grad
            buf.lerp_(g, 1 - self.momentum)
            update = g.lerp(buf, self.momentum)
            X = update.T if update.size(0) > update.size(1) else update
            X = X / X.norm().clamp(min=1e-7)
            for _ in range(self.ns_steps):
                A = X @ X.T
                B = torch.addmm(A, A, A, beta=b, alpha=c)
                X = torch.addmm(X, B, X, beta=a)
            if update.size(0) > update.size(1):
                X = X.T
            p.mul_(1 - self.lr * self.wd)
            p.add_(X, alpha=-self.lr * math.sqrt(max(1, p.size(0) / p.size(1))))


def torch_adamw_forms(params):
    """Every form of torch.optim.AdamW this torch offers on the CPU: name -> constructor."""
    forms = {}
    for name, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("loop", {"foreach": False})):
        try:
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **kw)
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()  # some forms refuse CPU tensors only when stepping
            forms[name] = kw
        except (RuntimeError, TypeError, ValueError):
            pass
    return forms


def time_steps(step, model, steps, seed):
    fill_gradients(model, seed)
    step()  # warm-up (first step makes states)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def report_header():
    import numpy as np

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    core = "unknown"
    try:
        import ctypes

        for lib in ("libopenblas.so.0", "libopenblasp.so.0", "libblas.so.3"):
            try:
                so = ctypes.CDLL(lib)
                so.openblas_get_corename.restype = ctypes.c_char_p
                core = so.openblas_get_corename().decode()
                break
            except (OSError, AttributeError):
                continue
    except Exception:
        pass
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; OpenBLAS core: {core}",
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"orthopt {orthopt.__version__}, orthopt CPU backend: {' - '.join(orthopt.cpu_backend())}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch's and orthopt's threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    orthopt.set_num_threads(torch.get_num_threads())
    lines = report_header()

    # The optimizers, each over its own copy of the parameters.
    models = {k: Params() for k in ("orthopt_muon", "orthopt_muon_fastest", "orthopt_muon_in_turn", "torch_muon",
                                    "orthopt_adamw")}
    # The fused QKV stays one 1536x512 matrix, as torch.optim.Muon orthogonalizes it: every Muon row
    # computes the same update.
    o_muon = ot.Muon(ot.route(models["orthopt_muon"], split_qkv=False, verbose=False), preset="keller", lr=0.02,
                     weight_decay=0.1)
    o_fastest = ot.Muon(ot.route(models["orthopt_muon_fastest"], split_qkv=False, verbose=False), preset="keller",
                        lr=0.02, weight_decay=0.1, ns_algorithm="fastest")
    # The same, with the parameters stepped in turn and each product split over the threads instead.
    o_in_turn = ot.Muon(ot.route(models["orthopt_muon_in_turn"], split_qkv=False, verbose=False), preset="keller",
                        lr=0.02, weight_decay=0.1, ns_algorithm="fastest", parallel_parameters=False)
    hidden, rest = hidden_and_rest(models["torch_muon"])
    if hasattr(torch.optim, "Muon"):
        t_muon, muon_peer = torch.optim.Muon(hidden, lr=0.02), "torch.optim.Muon"
    else:
        t_muon, muon_peer = TorchOpsMuon(hidden), "torch.optim.Muon's update in torch operations (float32 NS)"
    forms = torch_adamw_forms(list(Params().plist))
    t_rest = {name: torch.optim.AdamW(rest, lr=1e-3, weight_decay=0.1, **kw) for name, kw in forms.items()}
    o_adamw = ot.AdamW(models["orthopt_adamw"].plist, lr=1e-3, weight_decay=0.1)
    adamw_models = {name: Params() for name in forms}
    t_adamw = {name: torch.optim.AdamW(adamw_models[name].plist, lr=1e-3, weight_decay=0.1, **kw)
               for name, kw in forms.items()}

    results = {k: [] for k in ["orthopt_muon", "orthopt_muon_fastest", "orthopt_muon_in_turn", "torch_muon",
                               "orthopt_adamw"] +
               [f"adamw_{n}" for n in forms]}
    muon_ratio, fastest_ratio, in_turn_ratio, adamw_ratio = [], [], [], []
    for r in range(args.rounds):
        seed = 100 + r
        times = {}
        times["orthopt_muon"] = time_steps(o_muon.step, models["orthopt_muon"], args.steps, seed)
        times["orthopt_muon_fastest"] = time_steps(o_fastest.step, models["orthopt_muon_fastest"], args.steps, seed)
        times["orthopt_muon_in_turn"] = time_steps(o_in_turn.step, models["orthopt_muon_in_turn"], args.steps, seed)
        for name in forms:
            times[f"adamw_{name}"] = time_steps(t_adamw[name].step, adamw_models[name], args.steps, seed)
        best = min(forms, key=lambda n: times[f"adamw_{n}"])
        best_rest = best  # the torch Muon's AdamW on the rest: this round's fastest form

        def torch_muon_step():
            t_muon.step()
            t_rest[best_rest].step()

        times["torch_muon"] = time_steps(torch_muon_step, models["torch_muon"], args.steps, seed)
        times["orthopt_adamw"] = time_steps(o_adamw.step, models["orthopt_adamw"], args.steps, seed)
        for k, v in times.items():
            results[k].append(v)
        muon_ratio.append(times["orthopt_muon"] / times["torch_muon"])
        fastest_ratio.append(times["orthopt_muon_fastest"] / times["torch_muon"])
        in_turn_ratio.append(times["orthopt_muon_in_turn"] / times["torch_muon"])
        adamw_ratio.append(times["orthopt_adamw"] / times[f"adamw_{best}"])

    med = {k: statistics.median(v) * 1e3 for k, v in results.items()}
    best = min(forms, key=lambda n: med[f"adamw_{n}"])
    lines += [
        f"- {args.rounds} rounds of {args.steps} steps each (after one warm-up step); times are medians over rounds",
        "",
        "| step | ms | ratio to the torch peer (median over rounds) | target |",
        "|---|---|---|---|",
        f"| orthopt.torch.Muon (keller NS5) + AdamW | {med['orthopt_muon']:.0f} | "
        f"{statistics.median(muon_ratio):.2f} | <= 0.6 |",
        "| orthopt.torch.Muon (keller NS5, ns_algorithm=\"fastest\": Gram on the 1:3 QKV and 1:4 MLP matrices) + AdamW | "
        f"{med['orthopt_muon_fastest']:.0f} | "
        f"{statistics.median(fastest_ratio):.2f} | <= 0.6 |",
        "| the same with parallel_parameters=False (parameters in turn, each product split over the threads) | "
        f"{med['orthopt_muon_in_turn']:.0f} | {statistics.median(in_turn_ratio):.2f} | |",
        f"| {muon_peer} + torch.optim.AdamW ({best}) | {med['torch_muon']:.0f} | 1 | |",
        f"| orthopt.torch.AdamW | {med['orthopt_adamw']:.1f} | {statistics.median(adamw_ratio):.2f} | <= 1.0 |",
    ]
    for name in forms:
        lines.append(f"| torch.optim.AdamW ({name}) | {med['adamw_' + name]:.1f} | | |")

    # Python overhead per parameter: 256 parameters of 4 values (AdamW), opt.step() against the
    # extension's step on a prebuilt gradient list.
    tiny = [torch.nn.Parameter(torch.randn(4)) for _ in range(256)]
    for p in tiny:
        p.grad = torch.randn(4)
    opt = ot.AdamW(tiny)
    grads = [p.grad for p in tiny]
    opt.step()
    full, core = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(20):
            opt.step()
        full.append((time.perf_counter() - t0) / 20)
        t0 = time.perf_counter()
        for _ in range(20):
            opt._core.step(grads)
        core.append((time.perf_counter() - t0) / 20)
    per_param_full = statistics.median(full) / 256 * 1e6
    per_param_core = statistics.median(core) / 256 * 1e6
    lines += [
        "",
        f"Per parameter (256 AdamW parameters of 4 values): opt.step() {per_param_full:.1f} us, of which the "
        f"Python layer (storage checks, group sync, the gradient list) {per_param_full - per_param_core:.1f} us "
        f"and the extension's step (DLPack import of the gradient, checks, update) {per_param_core:.1f} us.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
