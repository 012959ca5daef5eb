# SPDX-License-Identifier: Apache-2.0
"""orthopt's optimizers as ``torch.optim.Optimizer`` classes: Muon, AdaMuon, NAMO, NAMOD, AdamW.

Replacing ``torch.optim.AdamW``::

    import orthopt.torch as ot
    groups = ot.route(model)                      # hidden matrices → Muon, the rest → AdamW; prints why
    opt = ot.Muon(groups, preset="moonlight", lr=1e-3)
    ...
    loss.backward(); opt.step(); opt.zero_grad()

Parameters are stepped in place and gradients read in place (no copies); a parameter without a
gradient is skipped. Each group may run another rule (``"rule": "adamw"``) and override any option.
Every keyword of orthopt's C++ options is a keyword here, with the same name; enumerations are strings;
the orthogonalizer's keywords are ns, ns_steps, ns_coefficients, ns_normalization, ns_eps, ns_safety,
ns_absolute_eps, ns_algorithm, ns_gram_restart_after, ns_check_finite, exact_polar (fixed once a
group is made, but ns_steps). The learning rate and the other hyper-parameters are read from
``param_groups`` at every step, so ``torch.optim.lr_scheduler`` works unchanged. A step is
all-or-nothing: a refused step (NaN gradient, wrong shape, ...) raises an orthopt error (a ValueError or
TypeError) naming the parameter and changes no parameter and no state.

All parameters of one optimizer share one dtype (float32 or float64; bfloat16 on CUDA) and one device;
they must keep their storage (make the optimizer after ``model.to(...)``). On CUDA the step runs on
torch's current stream (the one current when the optimizer was made) without waiting for the device.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterable

import torch
import torch.utils.dlpack

import orthopt as _orthopt
from orthopt import BadTypeError, BadValueError, _core

__all__ = ["AdaMuon", "AdamW", "Muon", "NAMO", "NAMOD", "OrthoptOptimizer", "route"]

_ORTHO_KEYS = (
    "ns",
    "ns_steps",
    "ns_coefficients",
    "ns_normalization",
    "ns_eps",
    "ns_safety",
    "ns_absolute_eps",
    "ns_algorithm",
    "ns_gram_restart_after",
    "ns_check_finite",
    "exact_polar",
)
_RULE_KEYS = {
    "muon": ("lr", "weight_decay", "momentum", "momentum_type", "nesterov", "scale", "check_finite") + _ORTHO_KEYS,
    "adamuon": ("lr", "weight_decay", "form", "beta", "eps", "sign", "beta2", "check_finite") + _ORTHO_KEYS,
    "namo": ("lr", "weight_decay", "form", "mu1", "mu2", "eps", "nesterov", "rms_scale", "column_clamp", "check_finite")
    + _ORTHO_KEYS,
    "adamw": ("lr", "weight_decay", "form", "beta1", "beta2", "eps", "check_finite"),
}
_RULE_KEYS["namo_d"] = _RULE_KEYS["namo"]
_DEFAULT_PRESET = {"muon": "torch", "adamuon": "code", "namo": "code", "namo_d": "code", "adamw": "torch"}
# Keys of a group that are not rule options.
_LAYOUT_KEYS = ("params", "rule", "preset", "names", "row_blocks", "batch", "initial_lr")

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


def _core_class(dtype: torch.dtype, device: torch.device, name: str):
    if dtype not in _DTYPES:
        raise BadTypeError(
            f"orthopt: parameter '{name}' is {dtype}; orthopt steps float32 and float64 (and bfloat16 on CUDA)"
        )
    if device.type == "cuda":
        if not _core.has_cuda:
            raise BadTypeError(
                f"orthopt: parameter '{name}' is on {device}, but this build of orthopt has no CUDA backend "
                "(reinstall where nvcc is on PATH, or with --config-settings=cmake.define.ORTHOPT_PYTHON_CUDA=ON)"
            )
        backend = "cuda"
    elif device.type == "cpu":
        if dtype == torch.bfloat16:
            raise BadTypeError(f"orthopt: parameter '{name}' is bfloat16; bfloat16 storage is supported on CUDA only")
        backend = _orthopt.cpu_backend()[0]
    else:
        raise BadTypeError(f"orthopt: parameter '{name}' is on {device}; orthopt runs on the CPU and on CUDA")
    return getattr(_core, f"Optimizer_{backend}_{_DTYPES[dtype]}"), backend


class OrthoptOptimizer(torch.optim.Optimizer):
    """The common class of orthopt's torch optimizers; ``rule`` is the rule of groups that name none."""

    rule = "muon"

    def __init__(self, params, defaults: dict, *, preset: str | None = None, threads: int | None = None,
                 parallel_parameters: bool = True):
        if not isinstance(parallel_parameters, bool):
            raise BadTypeError(f"orthopt: parallel_parameters = {parallel_parameters!r} must be True or False")
        self._parallel_parameters = parallel_parameters
        self._core = None
        self._broken = None
        self._backend = None
        self._params: list[torch.Tensor] = []
        self._names: list[str] = []
        self._ptrs: list[tuple] = []
        self._group_ids: list[int] = []
        self._pushed: list[Any] = []
        self._ortho: list[dict] = []
        self._threads = _orthopt.num_threads() if threads is None else threads
        self._class_preset = preset
        defaults = {k: v for k, v in defaults.items() if v is not None}
        super().__init__(params, defaults)

    # ---- Groups and parameters ------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group["params"] = params
        explicit = set(group) - set(_LAYOUT_KEYS)
        rule = group.get("rule", self.rule)
        if rule not in _RULE_KEYS:
            raise BadValueError(f"orthopt: group rule '{rule}' is not one of {', '.join(_RULE_KEYS)}")
        preset = group.get("preset") or (self._class_preset if rule == self.rule else None) or _DEFAULT_PRESET[rule]
        known = _RULE_KEYS[rule]

        def foreign(k):  # not an option of this rule ("betas" is AdamW's, as torch spells beta1 and beta2)
            return k not in known and not (k == "betas" and rule == "adamw")

        unknown = [k for k in explicit if foreign(k)]
        if rule == self.rule:
            unknown += [k for k in self.defaults if foreign(k) and k not in unknown]
        if unknown:
            raise BadTypeError(f"orthopt: a {rule} group has no option {', '.join(repr(k) for k in sorted(unknown))}")
        index = len(self.param_groups)
        names = group.get("names") or [f"param_groups[{index}].params[{i}]" for i in range(len(params))]
        row_blocks = group.get("row_blocks") or [1] * len(params)
        batch = group.get("batch") or [False] * len(params)
        if not (len(names) == len(row_blocks) == len(batch) == len(params)):
            raise BadValueError("orthopt: a group's names, row_blocks and batch must each have one entry per parameter")
        # Options given: the optimizer's defaults that this rule has, then the group's own; the preset
        # supplies the rest (shown in the group for reading).
        given = {}
        for key, value in self.defaults.items():
            if key in known and (rule == self.rule or key == "lr"):
                given[key] = value
        for key in explicit:
            given[key] = group[key]
        betas = group.get("betas", self.defaults.get("betas") if rule == self.rule else None)
        if rule == "adamw" and betas is not None:
            given["beta1"], given["beta2"] = float(betas[0]), float(betas[1])
            given.pop("betas", None)
        options = dict(_core.preset_options(rule, preset))
        options.update(given)
        for p, name in zip(params, names):
            if not isinstance(p, torch.Tensor):
                raise BadTypeError(f"orthopt: parameter '{name}' is a {type(p).__name__}, not a torch.Tensor")
            if rule != "adamw" and p.dim() < 2:
                raise BadValueError(
                    f"orthopt: parameter '{name}' of shape {tuple(p.shape)} is not a matrix; {rule} orthogonalizes "
                    "matrices (send vectors to an AdamW group: orthopt.torch.route does)"
                )
            if p.is_sparse or p.is_complex():
                raise BadTypeError(f"orthopt: parameter '{name}' is sparse or complex; orthopt steps dense real tensors")
        for p in params:
            for g in self.param_groups:
                if any(p is q for q in g["params"]):
                    raise BadValueError("orthopt: some parameters appear in more than one parameter group")
        # Everything is checked; now the core optimizer and its group.
        if self._core is None and params:
            cls, self._backend = _core_class(params[0].dtype, params[0].device, names[0])
            self._device = params[0].device
            self._dtype = params[0].dtype
            self._stream = 0
            with self._on_device():
                if self._backend == "cuda":
                    self._stream = torch.cuda.current_stream(self._device).cuda_stream
                self._core = cls(self._threads, self._stream)
                self._core.set_parallel_parameters(self._parallel_parameters)
        for p, name in zip(params, names):
            if p.dtype != self._dtype or p.device != self._device:
                raise BadTypeError(
                    f"orthopt: parameter '{name}' is {p.dtype} on {p.device}; this optimizer's parameters are "
                    f"{self._dtype} on {self._device} (one optimizer per dtype and device)"
                )
        core_options = {k: v for k, v in given.items() if k in known}
        gid = self._core.add_group(f"group{index}", rule, preset, core_options) if self._core is not None else -1
        for p, name, blocks, b in zip(params, names, row_blocks, batch):
            try:
                with self._on_device():
                    self._core.add_param(name, gid, self._export(p.detach()), b, int(blocks))
            except Exception as e:
                # The core keeps what it registered before the refusal: this optimizer cannot step.
                self._broken = f"parameter '{name}' was refused when its group was added ({e})"
                raise
            self._params.append(p)
            self._names.append(name)
            self._ptrs.append((p.data_ptr(), tuple(p.shape), p.stride()))
        group.setdefault("rule", rule)
        group.setdefault("preset", preset)
        group["names"] = list(names)
        for key in known:
            if key not in _ORTHO_KEYS:
                group.setdefault(key, options.get(key))
        for key in _ORTHO_KEYS:
            if key in options:
                group.setdefault(key, options[key])
        self.param_groups.append(group)
        self._group_ids.append(gid)
        self._pushed.append(None)
        self._ortho.append({k: group.get(k) for k in _ORTHO_KEYS})

    def _sync_groups(self) -> None:
        """Pushes changed hyper-parameters of every group to the core (read at every step)."""
        for index, group in enumerate(self.param_groups):
            if self._group_ids[index] < 0:  # an empty group added before any parameter: nothing to step
                continue
            rule = group["rule"]
            ortho = self._ortho[index]
            for key in _ORTHO_KEYS:
                if group.get(key) != ortho[key]:
                    if key == "ns_steps":
                        self._core.set_ns_steps_group(self._group_ids[index], int(group[key]))
                        ortho[key] = group[key]
                    else:
                        raise BadValueError(
                            f"orthopt: '{key}' of param_groups[{index}] changed from {ortho[key]!r} to {group.get(key)!r}; "
                            "it is fixed when the group is made (make a new optimizer)"
                        )
            values = {k: group[k] for k in _RULE_KEYS[rule] if k not in _ORTHO_KEYS and group.get(k) is not None}
            if rule == "adamw" and "betas" in group:
                values["beta1"], values["beta2"] = float(group["betas"][0]), float(group["betas"][1])
            lr = values.get("lr")
            if isinstance(lr, torch.Tensor):
                values["lr"] = float(lr)
            key = tuple(sorted(values.items()))
            if key != self._pushed[index]:
                self._core.set_group_options(self._group_ids[index], values)
                self._pushed[index] = key

    # ---- Stepping ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every parameter that has a gradient. Returns closure()'s loss when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._core is None:
            return loss
        if self._broken:
            raise BadValueError(f"orthopt: this optimizer cannot step: {self._broken}")
        grads = []
        for i, p in enumerate(self._params):
            if (p.data_ptr(), tuple(p.shape), p.stride()) != self._ptrs[i]:
                raise BadValueError(
                    f"orthopt: parameter '{self._names[i]}' no longer has the storage it was registered with "
                    "(moved with .to()/.cuda(), or .data replaced); make the optimizer after moving the model"
                )
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            if g.is_sparse:
                raise BadTypeError(f"orthopt: the gradient of '{self._names[i]}' is sparse; orthopt steps dense gradients")
            grads.append(self._export(g.detach() if g.requires_grad else g))
        if self._backend == "cuda" and torch.cuda.current_stream(self._device).cuda_stream != self._stream:
            raise BadValueError(
                "orthopt: torch's current stream is not the one this optimizer was made on; step on that stream "
                "(with torch.cuda.stream(...)) or make the optimizer on this one"
            )
        self._sync_groups()
        with self._on_device():
            self._core.step(grads)
        return loss

    def _export(self, t: torch.Tensor):
        """CUDA tensors go through torch's DLPack export (no stream synchronization), CPU tensors as they are."""
        if self._backend == "cuda":
            return torch.utils.dlpack.to_dlpack(t)
        return t

    def _on_device(self):
        if self._backend == "cuda":
            return torch.cuda.device(self._device)
        return contextlib.nullcontext()

    # ---- Newton–Schulz settings, the adaptive budget ---------------------------------------------

    def ns_steps(self, param: torch.Tensor) -> int:
        """The Newton–Schulz iterations the parameter runs per step."""
        return self._core.ns_steps(self._index(param))

    def set_ns_steps(self, param: torch.Tensor, steps: int) -> None:
        self._core.set_ns_steps_param(self._index(param), steps)

    def record_ns_residuals(self, group_index: int = 0, on: bool = True) -> None:
        """Record each call's residuals r_0 … r_T in group group_index (read with ns_residuals)."""
        self._core.record_ns_residuals(self._group_ids[group_index], on)

    def ns_residuals(self, param: torch.Tensor, item: int = 0) -> list[float]:
        """The residuals ‖XXᵀ − I‖_F/√m of the parameter's last Newton–Schulz call, one per iteration."""
        return self._core.ns_residuals(self._index(param), item)

    def set_ns_budget(self, **options) -> None:
        """The adaptive Newton–Schulz budget (keywords as ns_budget_options: observe_window, budget_fraction,
        min_ns_steps, max_ns_steps, observe_ns_steps, residual_target, start_step, reobserve_every,
        spend_whole_budget, roles). Register every parameter first."""
        self._core.set_ns_budget(options)

    def clear_ns_budget(self) -> None:
        self._core.clear_ns_budget()

    def ns_budget_phase(self) -> str:
        return self._core.ns_budget_phase()

    def ns_budget_report(self) -> dict | None:
        """The last commit's report (None before the first): counts per parameter and a text table."""
        return self._core.ns_budget_report()

    def routing_table(self) -> str:
        """Each parameter's group and rule, one line each."""
        return self._core.routing_table() if self._core is not None else ""

    def _index(self, param: torch.Tensor) -> int:
        for i, p in enumerate(self._params):
            if p is param:
                return i
        raise BadValueError("orthopt: the tensor is not a parameter of this optimizer")

    # ---- State ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The whole state as torch tensors (CPU copies): per parameter index its step count, Newton–Schulz
        count and slots (momentum and second_moment shaped like the parameter; column_moment and
        ns_observation float64), the param_groups (hyper-parameters), and the optimizer's step count and
        budget phase under 'orthopt'. Round-trips through torch.save / torch.load."""
        groups = []
        index = 0
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(g)
        state: dict = {}
        extra = {"version": _orthopt.__version__, "steps_taken": 0, "ns_budget_phase": 0, "ns_budget_phase_start": 0}
        if self._core is not None:
            exported = self._core.export_state()
            extra.update(
                steps_taken=exported["steps_taken"],
                ns_budget_phase=exported["ns_budget_phase"],
                ns_budget_phase_start=exported["ns_budget_phase_start"],
            )
            for i, e in enumerate(exported["params"]):
                p = self._params[i]
                entry = {k: e[k] for k in ("name", "rule", "rows", "cols", "count", "ns_steps")}
                entry["step"] = torch.tensor(e["step"], dtype=torch.int64)
                for slot, (data, size) in e["slots"].items():
                    typed = slot in ("momentum", "second_moment")
                    dtype = self._dtype if typed else torch.float64
                    t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
                    entry[slot] = t.reshape(p.shape) if typed else t
                state[i] = entry
        return {"state": state, "param_groups": groups, "orthopt": extra}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores a state_dict() of an optimizer over the same parameters (by name). All-or-nothing:
        every check of orthopt's checkpoint loader applies, and a refusal changes nothing."""
        if not isinstance(state_dict, dict) or "orthopt" not in state_dict:
            raise BadValueError("orthopt: not a state_dict of an orthopt optimizer (it has no 'orthopt' entry)")
        groups = state_dict.get("param_groups", [])
        if len(groups) != len(self.param_groups):
            raise BadValueError(
                f"orthopt: the state_dict has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        for k, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise BadValueError(
                    f"orthopt: param_groups[{k}] has {len(saved['params'])} parameters in the state_dict, "
                    f"{len(group['params'])} in the optimizer"
                )
            for key in _ORTHO_KEYS:
                if key != "ns_steps" and saved.get(key) != group.get(key):
                    raise BadValueError(
                        f"orthopt: param_groups[{k}] '{key}' is {saved.get(key)!r} in the state_dict, "
                        f"{group.get(key)!r} in the optimizer"
                    )
        extra = state_dict["orthopt"]
        params = []
        for i in range(len(self._params)):
            if i not in state_dict["state"]:
                raise BadValueError(f"orthopt: the state_dict has no state for parameter {i} ('{self._names[i]}')")
            e = state_dict["state"][i]
            slots = {}
            for slot in ("momentum", "second_moment", "column_moment", "ns_observation"):
                if slot not in e:
                    continue
                t = e[slot]
                typed = slot in ("momentum", "second_moment")
                dtype = self._dtype if typed else torch.float64
                t = t.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
                slots[slot] = (t.view(torch.uint8).numpy().tobytes(), t.element_size())
            params.append(
                {
                    "name": e["name"],
                    "rule": e["rule"],
                    "rows": int(e["rows"]),
                    "cols": int(e["cols"]),
                    "count": int(e["count"]),
                    "step": int(e["step"]),
                    "ns_steps": int(e["ns_steps"]),
                    "slots": slots,
                }
            )
        self._core.import_state(
            {
                "steps_taken": int(extra["steps_taken"]),
                "ns_budget_phase": int(extra["ns_budget_phase"]),
                "ns_budget_phase_start": int(extra["ns_budget_phase_start"]),
                "params": params,
            }
        )
        for index, (saved, group) in enumerate(zip(groups, self.param_groups)):
            for key, value in saved.items():
                if key not in ("params", "names"):
                    group[key] = value
            self._ortho[index]["ns_steps"] = group.get("ns_steps")
        self._pushed = [None] * len(self.param_groups)


def _checked(name, value, check):
    if value is not None and not check(value):
        raise BadValueError(f"orthopt: {name} = {value!r} is out of range")
    return value


class Muon(OrthoptOptimizer):
    """Muon. With the default preset ("torch") and torch.optim.Muon's arguments it is a drop-in for
    torch.optim.Muon (PyTorch 2.9): the same update, within the rounding of the element type (torch runs
    Newton–Schulz in bfloat16; orthopt in the parameter's type). Other presets: "keller"
    (KellerJordan/Muon), "moonlight" (Liu et al. 2025: 0.2·√max(A, B), one lr for Muon and AdamW).
    Unlike torch.optim.Muon, N-D parameters are accepted (d0 × the rest, as KellerJordan/Muon)."""

    rule = "muon"

    def __init__(
        self,
        params,
        lr: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
        nesterov: bool | None = None,
        ns_coefficients=None,
        eps: float | None = None,
        ns_steps: int | None = None,
        adjust_lr_fn: str | None = None,
        *,
        preset: str = "torch",
        threads: int | None = None,
        parallel_parameters: bool = True,
        **options,
    ):
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise BadValueError(f"orthopt: adjust_lr_fn = {adjust_lr_fn!r} is not one of None, 'original', 'match_rms_adamw'")
        if ns_steps is not None and not (isinstance(ns_steps, int) and 1 <= ns_steps < 100):
            raise BadValueError(f"orthopt: ns_steps = {ns_steps!r} must be an integer in [1, 100)")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        if ns_coefficients is not None:
            defaults["ns_coefficients"] = tuple(float(c) for c in ns_coefficients)
        if eps is not None:
            defaults["ns_eps"] = float(eps)
        if adjust_lr_fn is not None:
            defaults["scale"] = adjust_lr_fn
        if preset == "torch":
            defaults.setdefault("ns_absolute_eps", True)  # X / max(‖X‖_F, eps), as torch.optim.Muon
        defaults.update(options)
        super().__init__(params, defaults, preset=preset, threads=threads, parallel_parameters=parallel_parameters)


class _CodePresetOptimizer(OrthoptOptimizer):
    """The constructor AdaMuon, NAMO and NAMOD share: lr and weight_decay by position, the authors' code
    as the default preset, every other option as a keyword."""

    def __init__(self, params, lr=None, weight_decay=None, *, preset: str = "code", threads=None,
                 parallel_parameters: bool = True, **options):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, **options), preset=preset, threads=threads,
                         parallel_parameters=parallel_parameters)


class AdaMuon(_CodePresetOptimizer):
    """AdaMuon (Si, Zhang, Shen 2025). Presets: "code" (the authors' code, default), "paper"
    (Algorithm 1), "code_gpt2", "v1"."""

    rule = "adamuon"


class NAMO(_CodePresetOptimizer):
    """NAMO ("Adam Improves Muon", 2026). Presets: "code" (the authors' code, default), "paper"."""

    rule = "namo"


class NAMOD(_CodePresetOptimizer):
    """NAMO-D: NAMO with a per-column second moment. Presets: "code" (default), "gpt2_small"."""

    rule = "namo_d"


class AdamW(OrthoptOptimizer):
    """AdamW with torch.optim.AdamW's arguments and defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    weight_decay 0.01). amsgrad, maximize, foreach, fused and capturable are not offered."""

    rule = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, amsgrad=False,
                 maximize=False, preset: str = "torch", threads=None, parallel_parameters: bool = True, **options):
        if amsgrad or maximize:
            raise BadValueError("orthopt: AdamW has no amsgrad or maximize form")
        for key in ("foreach", "fused", "capturable", "differentiable"):
            options.pop(key, None)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **options)
        super().__init__(params, defaults, preset=preset, threads=threads, parallel_parameters=parallel_parameters)


# ---- Routing ----------------------------------------------------------------------------------------

#: Names of fused query-key-value projections split into 3 row blocks (each orthogonalized alone).
FUSED_QKV = (re.compile(r"(^|\.)(qkv|qkv_proj|Wqkv|query_key_value|in_proj_weight)(\.|$)"),)


def route(
    model: torch.nn.Module,
    *,
    rule: str | None = None,
    adamw: dict | None = None,
    matrix: dict | None = None,
    embedding_patterns: Iterable[tuple[str, bool]] | None = None,
    head_patterns: Iterable[tuple[str, bool]] | None = None,
    overrides: dict | None = None,
    split_qkv: bool = True,
    verbose: bool = True,
) -> list[dict]:
    """Parameter groups for an orthopt optimizer, decided as orthopt's C++ router decides: hidden
    matrices (and N-D filters) to `rule` (None: the rule of the optimizer that takes the groups); vectors, embeddings (names with "embed", "wte", "wpe") and
    the output head ("lm_head", "head") to AdamW. Fused QKV matrices (FUSED_QKV names, rows divisible by
    3) are split into their three row blocks. `overrides` maps exact names to "matrix" or "adamw";
    `adamw` and `matrix` add options to the two groups. Prints the table unless verbose is False.
    Parameters that do not require grad are left out."""
    default_embed, default_head = _core.default_router_patterns()
    embed = list(embedding_patterns) if embedding_patterns is not None else default_embed
    head = list(head_patterns) if head_patterns is not None else default_head
    overrides = dict(overrides or {})
    groups = {"matrix": {"params": [], "names": [], "row_blocks": []},
              "adamw": {"params": [], "names": [], "row_blocks": [], "rule": "adamw"}}
    if rule is not None:  # else the optimizer's own rule (Muon for ot.Muon, AdaMuon for ot.AdaMuon ...)
        groups["matrix"]["rule"] = rule
    lines = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rows = p.shape[0] if p.dim() >= 1 else 1
        cols = math.prod(p.shape[1:]) if p.dim() >= 2 else (p.shape[0] if p.dim() == 1 else 1)
        if p.dim() == 1:
            rows, cols = 1, p.shape[0]
        if name in overrides:
            target, why = overrides.pop(name), "override"
            if target not in groups:
                raise BadValueError(f"orthopt.route: override for '{name}' is {target!r}, not 'matrix' or 'adamw'")
        else:
            target, _, why = _core.route(name, rows, cols, embed, head)
        blocks = 1
        if target == "matrix" and split_qkv and p.dim() == 2 and rows % 3 == 0 and any(r.search(name) for r in FUSED_QKV):
            blocks = 3
            why += ", split into 3 row blocks (fused QKV)"
        g = groups[target]
        g["params"].append(p)
        g["names"].append(name)
        g["row_blocks"].append(blocks)
        lines.append(f"{name:40s} {str(tuple(p.shape)):18s} -> {g.get('rule', 'matrix rule')}: {why}")
    if overrides:
        raise BadValueError(f"orthopt.route: overrides name no parameter of the model: {', '.join(sorted(overrides))}")
    groups["adamw"].update(adamw or {})
    groups["matrix"].update(matrix or {})
    if verbose:
        print("\n".join(lines))
    return [g for g in groups.values() if g["params"]]
