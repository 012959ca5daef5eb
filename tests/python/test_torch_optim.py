# SPDX-License-Identifier: Apache-2.0
"""orthopt.torch: the optimizers as torch.optim.Optimizer classes."""
import copy
import io
import math
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import orthopt  # noqa: E402
import orthopt.torch as ot  # noqa: E402

CLASSES = [ot.Muon, ot.AdaMuon, ot.NAMO, ot.NAMOD]


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24), torch.nn.Tanh(), torch.nn.Linear(24, 3)
    ).to(dtype)


def batch(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(32, 12, generator=g, dtype=dtype)
    return x, torch.sin(x[:, :3] * 2)


def train(model, opt, steps, start=0, batches=None):
    """Steps on batch t (or t mod `batches`: a fixed small data set)."""
    losses = []
    for t in range(start, start + steps):
        x, y = batch(t if batches is None else t % batches, next(model.parameters()).dtype)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


# ---- The torch.optim.Muon drop-in ------------------------------------------------------------------


def muon_transcription(params, grads, bufs, lr, wd, momentum, nesterov, coeffs, eps, ns_steps, adjust_lr_fn):
    """torch.optim.Muon's published update (torch/optim/_muon.py, PyTorch 2.9), with its Newton–Schulz in
    the parameter's dtype instead of bfloat16."""
    a, b, c = coeffs
    for p, g, buf in zip(params, grads, bufs):
        buf.lerp_(g, 1 - momentum)
        update = g.lerp(buf, momentum) if nesterov else buf
        X = update.clone()
        tall = X.size(0) > X.size(1)
        if tall:
            X = X.T
        X = X / X.norm().clamp(min=eps)
        for _ in range(ns_steps):
            A = X @ X.T
            B = b * A + c * A @ A
            X = a * X + B @ X
        if tall:
            X = X.T
        A_, B_ = p.shape[:2]
        if adjust_lr_fn in (None, "original"):
            adj = lr * math.sqrt(max(1, A_ / B_))
        else:
            adj = 0.2 * math.sqrt(max(A_, B_)) * lr
        p.mul_(1 - lr * wd)
        p.add_(X, alpha=-adj)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lr": 0.01},
        {"weight_decay": 0.2},
        {"momentum": 0.8},
        {"ns_steps": 6},
        {"ns_coefficients": (3.4, -4.7, 2.0)},
        {"nesterov": False},
        {"adjust_lr_fn": "match_rms_adamw"},
    ],
)
def test_muon_is_a_drop_in_for_torch_optim_muon(kwargs):
    torch.manual_seed(3)
    shapes = [(16, 8), (8, 16), (12, 12)]
    ws = [torch.randn(s, dtype=torch.float64) for s in shapes]
    ref = [w.clone() for w in ws]
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = ot.Muon(params, **kwargs)
    d = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, coeffs=(3.4445, -4.775, 2.0315), eps=1e-7,
             ns_steps=5, adjust_lr_fn=None)
    d.update({("coeffs" if k == "ns_coefficients" else k): v for k, v in kwargs.items()})
    bufs = [torch.zeros_like(w) for w in ws]
    for t in range(4):
        grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        muon_transcription(ref, grads, bufs, d["lr"], d["weight_decay"], d["momentum"], d["nesterov"], d["coeffs"],
                           d["eps"], d["ns_steps"], d["adjust_lr_fn"])
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r, atol=1e-12, rtol=0)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon (PyTorch >= 2.9)")
def test_muon_against_torch_optim_muon_itself():
    torch.manual_seed(4)
    w = torch.randn(32, 16)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    mine, theirs = ot.Muon([a]), torch.optim.Muon([b])
    for _ in range(3):
        g = torch.randn(32, 16)
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        theirs.step()
    # torch runs Newton–Schulz in bfloat16: agreement to bfloat16's rounding of the update (lr 1e-3).
    assert (a - b).abs().max().item() < 3 * 1e-3 * 2.0**-7 * math.sqrt(2) * 4


def test_adamw_equals_torch_adamw():
    model_a, model_b = mlp(1), mlp(1)
    opt_a = ot.AdamW(model_a.parameters(), lr=3e-3, weight_decay=0.05)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=3e-3, weight_decay=0.05)
    train(model_a, opt_a, 5)
    train(model_b, opt_b, 5)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-13, rtol=1e-12)


# ---- In place, skipping, schedulers ------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES + [ot.AdamW])
def test_steps_in_place_and_loss_falls(cls):
    model = mlp(2)
    ptrs = [p.data_ptr() for p in model.parameters()]
    before = snapshot(model)
    groups = ot.route(model, verbose=False) if cls is not ot.AdamW else model.parameters()
    opt = cls(groups, lr=0.02) if cls is not ot.AdamW else cls(groups, lr=0.01)
    losses = train(model, opt, 60, batches=2)
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses


def test_parameters_without_gradient_are_skipped():
    model = mlp(3)
    opt = ot.Muon(ot.route(model, verbose=False), lr=0.02)
    train(model, opt, 2)
    frozen = model[2].weight
    state_before = opt.state_dict()["state"]
    value = frozen.detach().clone()
    x, y = batch(9)
    opt.zero_grad(set_to_none=True)
    ((model(x) - y) ** 2).mean().backward()
    frozen.grad = None
    opt.step()
    assert torch.equal(frozen, value)
    index = opt._index(frozen)
    after = opt.state_dict()["state"][index]
    assert int(after["step"]) == int(state_before[index]["step"]) == 2
    assert torch.equal(after["momentum"], state_before[index]["momentum"])


def test_lr_scheduler_drives_the_rate():
    m1, m2 = mlp(4), mlp(4)
    o1 = ot.Muon(m1.parameters() if False else ot.route(m1, verbose=False), lr=0.02)
    o2 = ot.Muon(ot.route(m2, verbose=False), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(o1, step_size=1, gamma=0.5)
    for t in range(3):
        train(m1, o1, 1, start=t)
        sched.step()
        for g in o2.param_groups:
            g["lr"] = g["lr"]  # o2 is set by hand below
        train(m2, o2, 1, start=t)
        for g in o2.param_groups:
            g["lr"] *= 0.5
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert o1.param_groups[0]["lr"] == pytest.approx(0.02 / 8)


def test_closure_returns_the_loss():
    model = mlp(5)
    opt = ot.NAMO(ot.route(model, verbose=False))
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0


# ---- State ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip_and_bit_exact_resume(cls):
    straight = mlp(6)
    opt = cls(ot.route(straight, verbose=False), lr=0.01)
    train(straight, opt, 6)

    resumed = mlp(6)
    opt_r = cls(ot.route(resumed, verbose=False), lr=0.01)
    train(resumed, opt_r, 3)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": opt_r.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    fresh = mlp(99)
    fresh.load_state_dict(saved["model"])
    opt_f = cls(ot.route(fresh, verbose=False), lr=0.01)
    opt_f.load_state_dict(saved["opt"])
    assert opt_f.state_dict()["orthopt"]["steps_taken"] == 3
    train(fresh, opt_f, 3, start=3)
    for p, q in zip(straight.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_a_refused_load_changes_nothing():
    model = mlp(7)
    opt = ot.Muon(ot.route(model, verbose=False), lr=0.01)
    train(model, opt, 2)
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    bad["state"][0]["momentum"] = bad["state"][0]["momentum"][:-1]  # wrong size
    bad["state"][1]["momentum"][0, 0] = float("nan")
    before = opt.state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for i in before["state"]:
        for k, v in before["state"][i].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after["state"][i][k])
    with pytest.raises(orthopt.BadValueError, match="not a state_dict of an orthopt"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=1).state_dict())


# ---- Refusals -------------------------------------------------------------------------------------


def params_and_state(model, opt):
    return snapshot(model), opt.state_dict()


def assert_unchanged(model, opt, before):
    values, sd = before
    for a, b in zip(values, model.parameters()):
        assert torch.equal(a, b)
    now = opt.state_dict()
    assert now["orthopt"]["steps_taken"] == sd["orthopt"]["steps_taken"]
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, now["state"][i][k]), (i, k)


@pytest.mark.parametrize("cls", CLASSES)
def test_a_refused_step_changes_nothing(cls):
    model = mlp(8)
    opt = cls(ot.route(model, verbose=False), lr=0.01)
    train(model, opt, 2)
    x, y = batch(5)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    before = params_and_state(model, opt)
    model[4].bias.grad[1] = float("nan")  # the last parameter: every other would be written first
    with pytest.raises(orthopt.BadValueError, match=r"4\.bias"):
        opt.step()
    assert_unchanged(model, opt, before)
    model[4].bias.grad[1] = 0.0
    model[0].weight.grad[3, 2] = float("inf")
    with pytest.raises(orthopt.BadValueError, match=r"0\.weight"):
        opt.step()
    assert_unchanged(model, opt, before)
    model[0].weight.grad[3, 2] = 0.0
    # torch's .grad cannot have another shape or dtype; the binding under it refuses them too.
    grads = [p.grad for p in opt._params]
    grads[1] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(orthopt.ShapeError, match="has shape"):
        opt._core.step(grads)
    grads[1] = opt._params[1].grad.float()
    with pytest.raises(orthopt.BadTypeError, match="float64"):
        opt._core.step(grads)
    assert_unchanged(model, opt, before)
    opt.step()  # the same gradients, now finite: accepted
    assert opt.state_dict()["orthopt"]["steps_taken"] == 3


def test_setup_refusals_are_python_exceptions_naming_the_problem():
    model = mlp(9)
    with pytest.raises(orthopt.BadValueError, match=r"not a matrix"):
        ot.Muon(model.parameters())
    with pytest.raises(TypeError, match="has no option 'momentun'"):
        ot.Muon([model[0].weight], momentun=0.9)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        ot.Muon([model[0].weight], adjust_lr_fn="arbitrary")
    with pytest.raises(ValueError, match="momentum"):
        ot.Muon([model[0].weight], momentum=1.5)
    with pytest.raises(ValueError, match="preset"):
        ot.Muon([model[0].weight], preset="nope")
    with pytest.raises(orthopt.BadTypeError, match="one optimizer per dtype"):
        ot.AdamW([model[0].weight, torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(orthopt.BadTypeError, match="complex"):
        ot.AdamW([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))])
    opt = ot.Muon([model[0].weight])
    opt.param_groups[0]["ns"] = "cans"
    model[0].weight.grad = torch.ones_like(model[0].weight)
    with pytest.raises(orthopt.BadValueError, match="fixed when the group is made"):
        opt.step()


def test_a_moved_parameter_is_refused():
    w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = ot.Muon([w])
    w.data = w.data.clone()
    w.grad = torch.ones_like(w)
    with pytest.raises(orthopt.BadValueError, match="no longer has the storage"):
        opt.step()


# ---- Budget, residuals, threads -----------------------------------------------------------------------


def test_budget_and_residuals_reachable():
    model = mlp(10)
    opt = ot.Muon(ot.route(model, verbose=False), lr=0.01)
    opt.record_ns_residuals(0)
    train(model, opt, 1)
    r = opt.ns_residuals(model[0].weight)
    assert len(r) == opt.ns_steps(model[0].weight) + 1 and r[-1] < r[0]
    opt.record_ns_residuals(0, False)
    opt.set_ns_budget(observe_window=2)
    assert opt.ns_budget_phase() in ("waiting", "observing")
    train(model, opt, 4)
    report = opt.ns_budget_report()
    assert report is not None and opt.ns_budget_phase() == "committed"
    assert {p["name"] for p in report["params"]} == {"0.weight", "2.weight", "4.weight"}


def test_two_threads_step_two_optimizers():
    def run(models, opts, results):
        for m, o in zip(models, opts):
            train(m, o, 5)
            results.append(snapshot(m))

    ref_models = [mlp(11), mlp(12)]
    ref_opts = [ot.NAMOD(ot.route(m, verbose=False), lr=0.01) for m in ref_models]
    ref = []
    run(ref_models, ref_opts, ref)
    models = [mlp(11), mlp(12)]
    opts = [ot.NAMOD(ot.route(m, verbose=False), lr=0.01) for m in models]
    out = [[], []]
    threads = [threading.Thread(target=run, args=([models[k]], [opts[k]], out[k])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for a, b in zip(ref[k], out[k][0]):
            assert torch.equal(a, b)


def test_parallel_steps_give_the_one_thread_update():
    # Matrices large enough that a two-thread handle would split their products: in a parallel step each
    # runs on one thread, so the result is a one-thread optimizer's (bit for bit on the Eigen backend; on
    # the BLAS backend up to the BLAS library's own threads outside the parallel region).
    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(96, 128), torch.nn.Tanh(), torch.nn.Linear(128, 112), torch.nn.Tanh(),
            torch.nn.Linear(112, 96), torch.nn.Tanh(), torch.nn.Linear(96, 12)
        ).to(torch.float64)

    def run(threads, parallel):
        m = model(5)
        opt = ot.Muon(ot.route(m, verbose=False), lr=0.02, threads=threads, parallel_parameters=parallel)
        g = torch.Generator().manual_seed(6)
        for _ in range(3):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        return opt, snapshot(m)

    parallel_opt, parallel = run(2, True)
    assert parallel_opt._core.parallel_parameters()
    in_turn_opt, in_turn = run(2, False)
    assert not in_turn_opt._core.parallel_parameters()
    _, one_thread = run(1, True)
    for a, b, c in zip(parallel, one_thread, in_turn):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
        torch.testing.assert_close(c, b, atol=1e-13, rtol=0)
    with pytest.raises(TypeError, match="parallel_parameters = 'yes'"):
        ot.Muon(model(5).parameters(), parallel_parameters="yes")


def test_route_splits_fused_qkv_and_applies_overrides():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(50, 16)
            self.qkv = torch.nn.Linear(16, 48)
            self.fc = torch.nn.Linear(16, 32)
            self.lm_head = torch.nn.Linear(16, 50, bias=False)

    m = Block().double()
    groups = ot.route(m, overrides={"fc.weight": "adamw"}, verbose=False)
    matrix, adamw = groups
    assert matrix["names"] == ["qkv.weight"] and matrix["row_blocks"] == [3]
    assert set(adamw["names"]) == {"wte.weight", "qkv.bias", "fc.weight", "fc.bias", "lm_head.weight"}
    opt = ot.Muon(groups)
    assert "qkv.weight" in opt.routing_table()
    with pytest.raises(orthopt.BadValueError, match="name no parameter"):
        ot.route(m, overrides={"nope": "adamw"}, verbose=False)


def test_groups_of_one_rule_with_their_own_options_round_trip():
    def make(model):
        hidden = [model[0].weight, model[2].weight]
        rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "2.weight")]
        return ot.Muon(
            [
                {"params": [hidden[0]], "lr": torch.tensor(0.01)},  # torch allows a one-element tensor lr
                {"params": [hidden[1]], "lr": 0.005, "momentum": 0.9, "ns_steps": 6},
                {"params": rest, "rule": "adamw", "lr": 3e-3, "betas": (0.8, 0.99)},
            ],
            preset="keller",
        )

    a, b = mlp(13), mlp(13)
    opt_a, opt_b = make(a), make(b)
    train(a, opt_a, 4)
    train(b, opt_b, 2)
    assert opt_b.ns_steps(b[2].weight) == 6 and opt_b.ns_steps(b[0].weight) == 5
    buffer = io.BytesIO()
    torch.save(opt_b.state_dict(), buffer)
    buffer.seek(0)
    c = mlp(13)
    c.load_state_dict(b.state_dict())
    opt_c = make(c)
    opt_c.param_groups[1]["momentum"] = 0.5  # overwritten by the load, as torch's load_state_dict does
    opt_c.load_state_dict(torch.load(buffer))
    assert opt_c.param_groups[1]["momentum"] == 0.9
    train(c, opt_c, 2, start=2)
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_an_option_for_another_rule_is_refused():
    model = mlp(14)
    with pytest.raises(orthopt.BadTypeError, match="betas"):
        ot.Muon([{"params": [model[0].weight], "betas": (0.9, 0.95)}])
    with pytest.raises(orthopt.BadTypeError, match="momentum"):
        ot.Muon([{"params": [model[0].bias], "rule": "adamw", "momentum": 0.9}])


@pytest.mark.parametrize(
    "cls, rule, preset, options",
    [
        (ot.Muon, "muon", "moonlight", {"momentum": 0.9, "ns": "polar_express"}),
        (ot.AdaMuon, "adamuon", "paper", {"beta": 0.9}),
        (ot.NAMO, "namo", "code", {"mu2": 0.98, "ns_algorithm": "gram"}),
        (ot.NAMOD, "namo_d", "gpt2_small", {"column_clamp": 0.5}),
    ],
)
def test_float64_steps_equal_the_extensions_optimizer_bit_for_bit(cls, rule, preset, options):
    """orthopt.torch (options, groups, parameter order, lr read each step) gives the bits of the C++
    optimizer the extension exposes, driven directly with numpy arrays on the same backend."""
    orthopt.set_cpu_backend("eigen")
    model = mlp(20)
    opt = cls(ot.route(model, verbose=False), lr=0.01, preset=preset, **options)
    values = [p.detach().numpy().copy() for p in opt._params]
    core = orthopt._core.Optimizer_eigen_float64(0, 0)
    core.add_group("m", rule, preset, dict(options, lr=0.01))
    core.add_group("a", "adamw", "torch", {"lr": 0.01})
    for name, v, p in zip(opt._names, values, opt._params):
        core.add_param(name, 1 if p.dim() == 1 else 0, v)
    for t in range(4):
        x, y = batch(t)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad.numpy().copy() for p in opt._params]
        opt.step()
        core.step(grads)
        for g in opt.param_groups:
            g["lr"] *= 0.7  # a schedule, read by orthopt.torch at the next step
        core.set_group_options(0, {"lr": opt.param_groups[0]["lr"]})
        core.set_group_options(1, {"lr": opt.param_groups[1]["lr"]})
    for p, v in zip(opt._params, values):
        assert np.array_equal(p.detach().numpy(), v)


def test_an_empty_first_group_is_allowed():
    w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = ot.Muon([{"params": []}, {"params": [w], "lr": 0.01}])
    w.grad = torch.ones_like(w)
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(before, w)
    assert opt.state_dict()["param_groups"][0]["params"] == []
