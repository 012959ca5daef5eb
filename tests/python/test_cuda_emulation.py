# SPDX-License-Identifier: Apache-2.0
"""The module's CUDA code path (Optimizer_cuda_*, the array functions on CUDA arrays) on the CUDA
backend's host emulation: a build with ORTHOPT_PYTHON_CUDA=HOST_EMULATION (tests/python/run.sh makes
one) runs the CUDA backend's source on the host, so "CUDA" DLPack arrays are host memory. Arrays are
numpy's, exported through DLPack with the device type changed to CUDA (and uint16 bit patterns relabelled
bfloat16). What only a real GPU can confirm is listed in docs/python.md."""
import ctypes

import numpy as np
import pytest

import orthopt
from orthopt import _core

pytestmark = pytest.mark.skipif(not _core.cuda_host_emulation, reason="not a CUDA host-emulation build")

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
KDL_CUDA, KDL_BFLOAT = 2, 4


def as_cuda(a, bfloat16=False):
    """A DLPack capsule of numpy array `a` that says it lives on CUDA device 0 (DLTensor: data at 0,
    device at 8, ndim at 16, dtype code at 20)."""
    capsule = a.__dlpack__()
    tensor = _get_pointer(capsule, b"dltensor")
    ctypes.c_int32.from_address(tensor + 8).value = KDL_CUDA
    ctypes.c_int32.from_address(tensor + 12).value = 0
    if bfloat16:
        assert a.dtype == np.uint16
        ctypes.c_uint8.from_address(tensor + 20).value = KDL_BFLOAT
    return capsule


def to_bf16_bits(x):
    """float32 → bfloat16 bit patterns, rounded to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_schulz_on_cuda_arrays_matches_the_cpu(dtype):
    rng = np.random.default_rng(1)
    for shape in [(24, 40), (40, 24), (3, 16, 16)]:
        x = rng.standard_normal(shape).astype(dtype)
        out = np.zeros_like(x)
        _core.orthogonalize(as_cuda(x), as_cuda(out), "cuda", 0, {"ns": "keller"}, 0)
        ref = orthopt.newton_schulz(x, schedule="keller")
        np.testing.assert_allclose(out, ref, atol=300 * np.finfo(dtype).eps * max(shape), rtol=0)
    x = rng.standard_normal((12, 20)).astype(dtype)
    out = np.zeros_like(x)
    _core.orthogonalize(as_cuda(x), as_cuda(out), "cuda", 0, {"exact_polar": True}, 0)
    np.testing.assert_allclose(out, orthopt.polar(x), atol=3000 * np.finfo(dtype).eps)


def test_bfloat16_storage_on_cuda():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 48)).astype(np.float32)
    xb = to_bf16_bits(x)
    out = np.zeros_like(xb)
    _core.orthogonalize(as_cuda(xb, True), as_cuda(out, True), "cuda", 0, {"ns": "polar_express"}, 0)
    ref = orthopt.newton_schulz(from_bf16_bits(xb), schedule="polar_express")
    # bf16 storage: each iterate rounded to 8 significant bits
    assert np.abs(from_bf16_bits(out) - ref).max() < 0.05


def test_cpu_bfloat16_and_mixed_devices_are_refused():
    with pytest.raises(orthopt.BadTypeError, match="CUDA only"):
        b = to_bf16_bits(np.ones((3, 3), np.float32))
        capsule = b.__dlpack__()
        ctypes.c_uint8.from_address(_get_pointer(capsule, b"dltensor") + 20).value = KDL_BFLOAT
        _core.orthogonalize(capsule, np.zeros((3, 3), np.uint16), "eigen", 0, {}, 0)
    with pytest.raises(orthopt.BadTypeError, match="not in CUDA memory"):
        x = np.ones((3, 4))
        _core.orthogonalize(as_cuda(x), np.zeros((3, 4)), "cuda", 0, {}, 0)


def make_pair(dtype, values, check_finite=True):
    """The same parameters in a CUDA-emulated optimizer and a CPU (BLAS) one."""
    name = {np.float32: "float32", np.float64: "float64"}[dtype]
    gpu = getattr(_core, f"Optimizer_cuda_{name}")(0, 0)
    cpu = getattr(_core, f"Optimizer_blas_{name}")(1, 0)
    for opt in (gpu, cpu):
        opt.add_group("muon", "muon", "moonlight", {"check_finite": check_finite, "ns_check_finite": check_finite})
        opt.add_group("adamw", "adamw", "torch", {"check_finite": check_finite})
    gpu_params = [v.copy() for v in values]
    cpu_params = [v.copy() for v in values]
    for i, (g, c) in enumerate(zip(gpu_params, cpu_params)):
        group = 0 if g.ndim == 2 else 1
        gpu.add_param(f"p{i}", group, as_cuda(g))
        cpu.add_param(f"p{i}", group, c)
    return gpu, cpu, gpu_params, cpu_params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_on_cuda_arrays_steps_like_the_cpu(dtype):
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s).astype(dtype) for s in [(16, 24), (24, 16), (24,)]]
    gpu, cpu, gpu_params, cpu_params = make_pair(dtype, values)
    for step in range(3):
        grads = [rng.standard_normal(v.shape).astype(dtype) for v in values]
        gpu.step([as_cuda(g.copy()) for g in grads])
        cpu.step(grads)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for g, c in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(g, c, atol=tol, rtol=0)
    state_g, state_c = gpu.export_state(), cpu.export_state()
    assert [p["step"] for p in state_g["params"]] == [p["step"] for p in state_c["params"]] == [3, 3, 3]
    # A NaN gradient is refused before anything is written (the check reads the device's answer).
    before = [g.copy() for g in gpu_params]
    grads = [rng.standard_normal(v.shape).astype(dtype) for v in values]
    grads[2][5] = np.nan
    with pytest.raises(orthopt.BadValueError, match="p2"):
        gpu.step([as_cuda(g) for g in grads])
    for a, b in zip(before, gpu_params):
        np.testing.assert_array_equal(a, b)
    # The state round-trips through the checkpoint path.
    gpu.import_state(state_g)
    assert gpu.export_state()["params"][0]["slots"]["momentum"] == state_g["params"][0]["slots"]["momentum"]


def test_a_step_without_value_checks_neither_waits_nor_allocates():
    rng = np.random.default_rng(4)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(32, 48), (48,)]]
    gpu, _, _, _ = make_pair(np.float32, values, check_finite=False)
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in values]
    gpu.step([as_cuda(g.copy()) for g in grads])  # the first step
    syncs, allocations, _ = _core.cuda_host_counters()
    gpu.step([as_cuda(g.copy()) for g in grads])
    syncs_after, allocations_after, _ = _core.cuda_host_counters()
    assert syncs_after == syncs
    assert allocations_after == allocations
    # The counter sees a synchronization where there is one: a step with value checks reads their answer.
    checked, _, _, _ = make_pair(np.float32, values, check_finite=True)
    checked.step([as_cuda(g.copy()) for g in grads])
    syncs, _, _ = _core.cuda_host_counters()
    checked.step([as_cuda(g.copy()) for g in grads])
    assert _core.cuda_host_counters()[0] > syncs


def test_bfloat16_optimizer_steps():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    wb = to_bf16_bits(w)
    opt = _core.Optimizer_cuda_bfloat16(0, 0)
    opt.add_group("muon", "muon", "keller", {"lr": 0.02})
    opt.add_param("w", 0, as_cuda(wb, True))
    g = to_bf16_bits(rng.standard_normal((16, 32)).astype(np.float32))
    opt.step([as_cuda(g, True)])
    step = from_bf16_bits(wb) - from_bf16_bits(to_bf16_bits(w))
    # Muon's update: 0.02 × an orthogonalized direction (entries about 1/√32), not zero, finite.
    assert np.isfinite(step).all() and 0.001 < np.abs(step).max() < 0.05
    state = opt.export_state()["params"][0]
    assert state["slots"]["momentum"][1] == 2  # bf16 momentum (2-byte elements)
