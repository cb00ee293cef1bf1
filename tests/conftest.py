"""Shared fixtures: every test that takes ``backend`` runs on both kernel backends."""
import numpy as np
import pytest

from cyrnn import kernels

BACKENDS = ("cython", "numpy")
DTYPES = (np.float32, np.float64)
# Agreement between backends / against references, per dtype.
TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Backend name; the compiled one is required (CI must never pass on the fallback alone)."""
    if request.param == "cython" and kernels.cython_backend is None:
        pytest.fail("the compiled extension cyrnn._rnn is not built")
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def reference_activation(a, nonlinearity, slope):
    """f(a) in float64, written independently of the library (the tests' reference)."""
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.where(a > 0, a, 0.0)
    if nonlinearity == "sigmoid":
        return 1.0 / (1.0 + np.exp(-a))
    if nonlinearity == "leaky_relu":
        return np.where(a > 0, a, slope * a)
    assert nonlinearity == "identity"
    return a
