# SPDX-License-Identifier: Apache-2.0
"""orthopt.newton_schulz / polar / orthogonality_residual on numpy and torch arrays."""
import numpy as np
import pytest

import orthopt
from conftest import tol

KELLER = (3.4445, -4.7750, 2.0315)


def keller_reference(x, steps=5, eps=1e-7):
    """KellerJordan/Muon's iteration in float64 on the wide orientation, with orthopt's relative eps."""
    X = np.array(x, dtype=np.float64)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (np.linalg.norm(X) * (1 + eps))
    a, b, c = KELLER
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def polar_reference(x):
    u, _, vt = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    return u @ vt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_newton_schulz_matches_float64_reference(rng, dtype, shape):
    for backend in orthopt._core.cpu_backends:
        orthopt.set_cpu_backend(backend)
        for seed in range(5):
            x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
            q = orthopt.newton_schulz(x, schedule="keller", steps=5)
            ref = keller_reference(x)
            assert q.dtype == dtype and q.shape == shape
            # Five iterations amplify the rounding by a bounded factor; 200 units covers it.
            np.testing.assert_allclose(q, ref, atol=tol(dtype, 200 * max(shape)), rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_polar_is_the_svd_polar_factor(rng, dtype):
    for seed in range(5):
        x = np.random.default_rng(seed).standard_normal((20, 35)).astype(dtype)
        q = orthopt.polar(x)
        np.testing.assert_allclose(q, polar_reference(x), atol=tol(dtype, 2000), rtol=0)
        assert orthopt.orthogonality_residual(q) < tol(dtype, 1000)


def test_batches_strides_out_and_in_place(rng):
    x = rng.standard_normal((2, 3, 16, 24)).astype(np.float64)
    q = orthopt.newton_schulz(x, schedule="polar_express")
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(q[i, j], orthopt.newton_schulz(np.ascontiguousarray(x[i, j]), schedule="polar_express"))
    # A transposed (strided) view is read in place, and equals the same matrix made contiguous.
    xt = x[0, 0].T
    assert not xt.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(orthopt.newton_schulz(xt), orthopt.newton_schulz(np.ascontiguousarray(xt)), atol=1e-13)
    # out= and in place
    out = np.empty_like(x)
    r = orthopt.newton_schulz(x, out=out)
    assert r is out
    np.testing.assert_array_equal(out, q)
    y = x.copy()
    orthopt.newton_schulz(y, out=y)
    np.testing.assert_array_equal(y, q)
    # A non-collapsible batch (every other matrix) works too.
    sub = x[:, ::2]
    np.testing.assert_array_equal(orthopt.newton_schulz(sub), q[:, ::2])


def test_residual_shape_and_value(rng):
    x = rng.standard_normal((4, 8, 12))
    q = orthopt.polar(x)
    r = orthopt.orthogonality_residual(q)
    assert r.shape == (4,)
    assert np.all(r < 1e-12)
    assert orthopt.orthogonality_residual(np.eye(5)) == 0.0
    assert orthopt.orthogonality_residual(2 * np.eye(4)) == pytest.approx(3.0)


def test_gram_algorithm_and_schedules(rng):
    x = rng.standard_normal((64, 256)).astype(np.float32)
    for schedule in ["keller", "polar_express", "quintic", "cans", "aol", "you", "cubic", "polar_express_nanogpt"]:
        q = orthopt.newton_schulz(x, schedule=schedule)
        assert np.isfinite(q).all()
        assert orthopt.orthogonality_residual(q) < 0.5, schedule
    std = orthopt.newton_schulz(x, schedule="polar_express")
    gram = orthopt.newton_schulz(x, schedule="polar_express", algorithm="gram")
    assert np.abs(std - gram).max() < 1e-2
    # "fastest": the Gram algorithm on a 1:4 matrix, the standard one on a square matrix, bit for bit.
    keller_gram = orthopt.newton_schulz(x, algorithm="gram")
    assert np.array_equal(orthopt.newton_schulz(x, algorithm="fastest"), keller_gram)
    assert not np.array_equal(orthopt.newton_schulz(x), keller_gram)
    square = rng.standard_normal((64, 64)).astype(np.float32)
    assert np.array_equal(orthopt.newton_schulz(square, algorithm="fastest"), orthopt.newton_schulz(square))


def test_torch_tensors_zero_copy():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 20, 30, dtype=torch.float64)
    out = torch.empty_like(x)
    ptr = out.data_ptr()
    r = orthopt.newton_schulz(x, out=out)
    assert r is out and out.data_ptr() == ptr
    np.testing.assert_array_equal(out.numpy(), orthopt.newton_schulz(x.numpy()))
    # requires_grad tensors are read detached
    w = torch.randn(10, 12, requires_grad=True)
    assert orthopt.newton_schulz(w).shape == (10, 12)


def test_refusals_name_the_problem():
    x = np.zeros((4, 6), dtype=np.float16)
    with pytest.raises(orthopt.BadTypeError, match="float32 or float64"):
        orthopt.newton_schulz(x)
    with pytest.raises(TypeError):
        orthopt.newton_schulz(x)
    with pytest.raises(orthopt.ShapeError, match="needs"):
        orthopt.newton_schulz(np.zeros(5))
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        orthopt.newton_schulz(np.ones((3, 3)), schedule="nope")
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(orthopt.BadValueError, match="NaN"):
        orthopt.newton_schulz(bad)
    with pytest.raises(orthopt.ShapeError, match="out has shape"):
        orthopt.newton_schulz(np.ones((3, 4)), out=np.ones((4, 3)))
    with pytest.raises(orthopt.BadTypeError):
        orthopt.newton_schulz(np.ones((3, 4)), out=np.ones((3, 4), dtype=np.float32))


def test_version_and_backend_choice():
    major, minor, patch = (int(v) for v in orthopt.__version__.split("."))
    assert (major, minor) >= (0, 2)
    orthopt.set_cpu_backend("eigen")
    assert orthopt.cpu_backend() == ("eigen", "set by set_cpu_backend")
    with pytest.raises(orthopt.BadValueError, match="not one of"):
        orthopt.set_cpu_backend("cobol")
