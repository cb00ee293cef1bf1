"""What the PyTorch oracle tests share (``test_stack_oracle``, ``test_gated_oracle``,
``test_norms_oracle``): float64 leaves, their gradients as arrays, one comparison rule, and torch
on one thread. Import it after ``pytest.importorskip("torch")``."""
import numpy as np
import pytest
import torch

RTOL = 1e-9  # relative to each array's largest entry: float64 agreement, not bit equality


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds spin-waits (several times slower on a busy
    machine); restored for the modules after this one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_close(name, got, want, context=""):
    """``got`` (cyrnn) equals ``want`` (the reference) to ``RTOL`` of ``want``'s scale."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: cyrnn shape {got.shape}, reference {want.shape} {context}"
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale,
                               err_msg=f"{name} differs from the reference {context}")


def leaf(a):
    """A float64 tensor that collects its gradient."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def np_grad(t):
    """``t``'s gradient as an array (zeros where nothing reached it)."""
    return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.detach().numpy()
