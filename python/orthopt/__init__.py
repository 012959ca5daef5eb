# SPDX-License-Identifier: Apache-2.0
"""orthopt: Newton–Schulz, the exact polar factor and orthogonalized optimizers.

Functions on any array that speaks DLPack or the buffer protocol (numpy, torch, ...), zero-copy:

    orthopt.newton_schulz(x, schedule="polar_express", steps=5, out=None, ...)
    orthopt.polar(x, out=None)
    orthopt.orthogonality_residual(x)

The optimizers for PyTorch are in ``orthopt.torch`` (Muon, AdaMuon, NAMO, NAMOD, AdamW, route).

On the CPU two backends exist: Eigen's kernels built for this machine, and the system's BLAS.
``cpu_backend()`` says which one runs and why (by default the faster of the two, measured once per
process on a Newton–Schulz call); ``set_cpu_backend("eigen" | "blas")`` or the environment variable
``ORTHOPT_CPU_BACKEND`` overrides it.
"""

from __future__ import annotations

import os
import threading
import time

from . import _core
from ._core import BadTypeError, BadValueError, OrthoptError, ShapeError

__version__ = _core.version
__all__ = [
    "BadTypeError",
    "BadValueError",
    "OrthoptError",
    "ShapeError",
    "__version__",
    "cpu_backend",
    "has_cuda",
    "newton_schulz",
    "orthogonality_residual",
    "polar",
    "set_cpu_backend",
    "set_num_threads",
]

has_cuda: bool = _core.has_cuda
"""Whether this build has the CUDA backend (it steps and orthogonalizes CUDA tensors)."""
cuda_host_emulation: bool = _core.cuda_host_emulation
"""A test build whose "CUDA" backend runs on the host (tests/python only)."""

_lock = threading.Lock()
_choice: tuple[str, str] | None = None
_threads = 0


def set_num_threads(n: int) -> None:
    """Threads of the CPU backends for optimizers made and calls run from now on (0: OpenMP's default)."""
    global _threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise BadValueError(f"orthopt.set_num_threads: n = {n!r} must be an integer >= 0")
    _threads = n


def num_threads() -> int:
    """The thread count set by set_num_threads (0: OpenMP's default)."""
    return _threads


def set_cpu_backend(name: str) -> None:
    """Use the CPU backend ``name`` ("eigen" or "blas") from now on, instead of the measured choice."""
    global _choice
    if name not in _core.cpu_backends:
        raise BadValueError(
            f"orthopt.set_cpu_backend: '{name}' is not one of this build's CPU backends: {', '.join(_core.cpu_backends)}"
        )
    with _lock:
        _choice = (name, "set by set_cpu_backend")


def _measure(backend: str) -> float:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((512, 1536)).astype(np.float32)
    out = np.empty_like(x)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _core.orthogonalize(x, out, backend, _threads, {"ns": "polar_express"})
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_backend() -> tuple[str, str]:
    """The CPU backend in use and why: (name, reason). Measured on first use unless set."""
    global _choice
    with _lock:
        if _choice is not None:
            return _choice
        env = os.environ.get("ORTHOPT_CPU_BACKEND", "")
        if env:
            if env not in _core.cpu_backends:
                raise BadValueError(
                    f"ORTHOPT_CPU_BACKEND = '{env}' is not one of this build's CPU backends: {', '.join(_core.cpu_backends)}"
                )
            _choice = (env, "set by ORTHOPT_CPU_BACKEND")
        elif len(_core.cpu_backends) == 1:
            _choice = (_core.cpu_backends[0], "the only CPU backend of this build")
        else:
            times = {b: _measure(b) for b in _core.cpu_backends}
            best = min(times, key=times.get)
            detail = ", ".join(f"{b} {1e3 * t:.1f} ms" for b, t in times.items())
            _choice = (best, f"measured faster on a 512x1536 float32 Newton-Schulz call ({detail})")
        return _choice


def _like(x):
    """An uninitialised array of x's kind, shape, strides and device (numpy or torch)."""
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        return torch.empty_like(x)
    if module.startswith("numpy"):
        import numpy as np

        return np.empty_like(x)
    raise BadTypeError(f"orthopt: pass out= for an input of type {type(x).__name__} (only numpy and torch outputs are made here)")


def _plain(x):
    """torch tensors that require grad are exported detached (DLPack refuses them otherwise)."""
    if getattr(x, "requires_grad", False):
        return x.detach()
    return x


def _run(x, out, config):
    x = _plain(x)
    if out is None:
        out = _like(x)
    target = _plain(out)
    if _is_torch_cuda(x):
        # Through torch's own DLPack export (no stream synchronization on import), on the tensor's device
        # and torch's current stream there, without waiting for the device.
        import torch
        from torch.utils.dlpack import to_dlpack

        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream(x.device).cuda_stream
            _core.orthogonalize(to_dlpack(x), to_dlpack(target), "cuda", _threads, config, stream)
        return out
    backend = "cuda" if _dlpack_on_cuda(x) else cpu_backend()[0]
    _core.orthogonalize(x, target, backend, _threads, config, 0)
    return out


def _is_torch_cuda(x) -> bool:
    return type(x).__module__.startswith("torch") and bool(getattr(x, "is_cuda", False))


def _dlpack_on_cuda(x) -> bool:
    device = getattr(x, "__dlpack_device__", None)
    return device is not None and device()[0] == 2  # kDLCUDA


def newton_schulz(
    x,
    *,
    schedule: str = "polar_express",
    steps: int | None = None,
    coefficients=None,
    normalization: str | None = None,
    eps: float | None = None,
    absolute_eps: bool | None = None,
    safety: float | None = None,
    algorithm: str | None = None,
    gram_restart_after: int | None = None,
    check_finite: bool = True,
    out=None,
):
    """The Newton–Schulz approximation of the polar factor of every matrix of x ([..., m, n]).

    schedule: "polar_express" (default), "keller", "polar_express_nanogpt", "quintic", "cans", "aol",
    "you", "cubic"; steps: iterations (the schedule's own count by default); coefficients: an (a, b, c)
    triple or a table of them, replacing the schedule's; normalization: "frobenius",
    "frobenius_clamp", "safety", "aol"; algorithm: "standard", "gram" or "fastest". out: an array like x (x itself
    for in place); made with x's library when None. float32 and float64; on CUDA (a build with
    the CUDA backend) also bfloat16, on torch's current stream without waiting for the device. Strided inputs are read in place. The GIL is released while it runs. Each call makes a plan
    (allocates); an optimizer keeps its plans.
    """
    config: dict = {"ns": schedule}
    for key, value in (
        ("ns_steps", steps),
        ("ns_coefficients", coefficients),
        ("ns_normalization", normalization),
        ("ns_eps", eps),
        ("ns_absolute_eps", absolute_eps),
        ("ns_safety", safety),
        ("ns_algorithm", algorithm),
        ("ns_gram_restart_after", gram_restart_after),
    ):
        if value is not None:
            config[key] = value
    config["ns_check_finite"] = check_finite
    return _run(x, out, config)


def polar(x, *, out=None, check_finite: bool = True):
    """The exact polar factor U Vᵀ of every matrix of x ([..., m, n]) by SVD: the reference Newton–Schulz
    approximates. Same arrays and out= as newton_schulz."""
    return _run(x, out, {"exact_polar": True, "ns_check_finite": check_finite})


def orthogonality_residual(x):
    """‖X Xᵀ − I‖_F / √m of every matrix of x (m the smaller side), computed in float64: a numpy array
    of shape x.shape[:-2] (a float for one matrix). CPU arrays."""
    import numpy as np

    x = _plain(x)
    values = _core.orthogonality_residual(x)
    shape = tuple(x.shape[:-2])
    if not shape:
        return float(values[0])
    return np.asarray(values, dtype=np.float64).reshape(shape)
