# SPDX-License-Identifier: Apache-2.0
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261205)


def tol(dtype, factor=1.0):
    """A tolerance from the element type's unit roundoff."""
    return factor * float(np.finfo(dtype).eps)
