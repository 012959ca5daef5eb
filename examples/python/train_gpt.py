# SPDX-License-Identifier: Apache-2.0
"""A byte-level GPT on Debian's `fortunes` corpus, trained with orthopt's Muon (hidden matrices) and
AdamW (the rest) against torch.optim.AdamW, same model, data and steps. The GPT demo's model
(examples/gpt) in plain PyTorch: d_model 128, 4 layers, 4 heads, context 64.

    python3 examples/python/train_gpt.py [--steps 300] [--optimizers adamw,muon,adamuon,namo,namo_d]

Needs the orthopt package (pip install .; docs/python.md) and the corpus (apt-get install fortunes; any
text file works with --data FILE).
"""

import argparse
import glob
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import orthopt
import orthopt.torch as ot


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # fused: route() splits it into Q, K, V for Muon
        self.proj = nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, d=128, layers=4, heads=4, context=64):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, 256, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_optimizer(name, model, lr):
    if name == "adamw":  # the baseline: torch's own AdamW on every parameter
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    # orthopt: hidden matrices to the Muon-family rule, the rest to AdamW, one learning rate for both
    # (each rule's AdamW-matched preset), the decay as the demo's.
    groups = ot.route(model, rule=name, adamw={"beta1": 0.9, "beta2": 0.95}, verbose=False)
    cls = {"muon": ot.Muon, "adamuon": ot.AdaMuon, "namo": ot.NAMO, "namo_d": ot.NAMOD}[name]
    preset = {"muon": "moonlight", "adamuon": "code", "namo": "code", "namo_d": "code"}[name]
    return cls(groups, lr=lr, weight_decay=0.1, preset=preset)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizers", default="adamw,muon")
    parser.add_argument("--data", default="/usr/share/games/fortunes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # The learning rates the C++ demo's sweep chose for this model (examples/gpt/sweep.md).
    rates = {"adamw": 2e-3, "muon": 8e-3, "adamuon": 4e-3, "namo": 1.6e-2, "namo_d": 1.6e-2}

    files = sorted(f for f in glob.glob(os.path.join(args.data, "*")) if "." not in os.path.basename(f))
    text = b"".join(open(f, "rb").read() for f in files) if os.path.isdir(args.data) else open(args.data, "rb").read()
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    split = int(0.95 * len(data))
    print(f"corpus: {len(data)} bytes; orthopt {orthopt.__version__}, CPU backend {orthopt.cpu_backend()[0]}, "
          f"{torch.get_num_threads()} threads")

    def batches(source, seed, n=32, t=64):
        g = torch.Generator().manual_seed(seed)
        while True:
            i = torch.randint(len(source) - t - 1, (n,), generator=g)
            yield torch.stack([source[j:j + t] for j in i]), torch.stack([source[j + 1:j + t + 1] for j in i])

    results = {}
    for name in args.optimizers.split(","):
        torch.manual_seed(args.seed)
        model = GPT()
        opt = make_optimizer(name, model, rates[name])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))  # 20 warm-up steps
        train, t0 = batches(data[:split], args.seed), time.perf_counter()
        for step in range(args.steps):
            x, y = next(train)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0 or step == args.steps - 1:
                print(f"{name:8s} step {step:4d}  train loss {loss.item():.3f}")
        with torch.no_grad():
            val = batches(data[split:], 12345)
            vloss = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in (next(val) for _ in range(8))) / 8
        results[name] = (vloss, time.perf_counter() - t0)

    print("\n| optimizer | validation loss | seconds |\n|---|---|---|")
    for name, (vloss, seconds) in results.items():
        print(f"| {name} | {vloss:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
