"""Truncated BPTT: the hand-computed scalar case, TBPTT(k1, k2), randomized truncation."""
import numpy as np
import pytest

import cyrnn
from cyrnn import TBPTT, RandomizedTruncation, kernels


def _scalar_derivatives(backend, window=None, carry=None):
    """d x_t / d w for t = 1, 2, 3 of x_t = w x_{t-1}, x_0 = 0.9, w = 0.2, one output at a time.

    With a linear unit and no input, x_t is the state after step t; its derivative with respect
    to w is dWhh when the loss is x_t itself (dh_out = 1 at step t, 0 elsewhere).
    """
    k = kernels.get_backend(backend)
    w = np.array([[0.2]])
    hs = k.rnn_forward(np.zeros((3, 1, 1)), np.array([[0.9]]), w, "identity")
    np.testing.assert_allclose(hs.ravel(), [0.9, 0.18, 0.036, 0.0072])
    out = []
    for t in range(3):
        dh_out = np.zeros((3, 1, 1))
        dh_out[t] = 1.0
        if window is None:
            da, _, _ = k.rnn_backward(dh_out, hs, w, "identity", carry=carry)
        else:
            da, _ = k.rnn_backward_window(dh_out, hs, w, window, "identity")
        out.append(float(np.sum(da[:, 0, 0] * hs[:-1, 0, 0])))  # dWhh = sum_t da_t h_{t-1}
    return out


@pytest.mark.parametrize("mode, expected", [
    # full BPTT: dx_t/dw = sum_{j<t} w^j x_{t-1-j}
    ("full", [0.9, 0.36, 0.108]),
    # look-back 1: only the last term, x_{t-1}
    ("window 1", [0.9, 0.18, 0.036]),
    # look-back 2: the last two terms, x_{t-1} + w x_{t-2}
    ("window 2", [0.9, 0.36, 0.072]),
    # look-back 3 reaches every term for t <= 3
    ("window 3", [0.9, 0.36, 0.108]),
    # TBPTT(2, 2): chunks {1, 2}, {3}; x_3's gradient stops at its chunk start
    ("tbptt 2 2", [0.9, 0.36, 0.036]),
    # TBPTT(1, 2) is the look-back 2
    ("tbptt 1 2", [0.9, 0.36, 0.072]),
    # TBPTT(2, 3): blocks {1, 2}, {3, 4}, each backpropagated 3 steps from its end: x_1 looks
    # back 2 steps and x_2 3 (both reach every term); x_3 opens the block ending at step 4, so
    # it looks back 2 steps: x_2 + w x_1
    ("tbptt 2 3", [0.9, 0.36, 0.072]),
    # TBPTT(3, 4) on 3 steps: one block ending at step 3; x_1 looks back 2 steps, x_3 4
    ("tbptt 3 4", [0.9, 0.36, 0.108]),
])
def test_scalar_recurrence_by_hand(backend, mode, expected):
    if mode == "full":
        got = _scalar_derivatives(backend)
    elif mode.startswith("window"):
        got = _scalar_derivatives(backend, window=int(mode.split()[1]))
    else:
        spec = TBPTT(*map(int, mode.split()[1:]))
        if spec.k1 == spec.k2:
            got = _scalar_derivatives(backend, carry=spec.carry(3))
        else:
            got = _scalar_derivatives(backend, window=spec.windows(3))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_tbptt_windows():
    np.testing.assert_array_equal(TBPTT(3, 3).windows(7), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(TBPTT(2, 5).windows(6), [4, 5, 4, 5, 4, 5])
    np.testing.assert_array_equal(TBPTT(2, 3).windows(5), [2, 3, 2, 3, 2])  # short last block
    np.testing.assert_array_equal(TBPTT(1, 4).windows(3), [4, 4, 4])
    np.testing.assert_array_equal(TBPTT(3).carry(7), [0, 1, 1, 0, 1, 1, 0])


def _model_and_batch(backend, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    model = cyrnn.RNN(3, 5, 2, nonlinearity="tanh", dtype=dtype, seed=seed, backend=backend)
    x = rng.normal(size=(9, 2, 3))
    target = rng.normal(size=(9, 2, 2))
    h0 = rng.normal(size=(2, 5))
    return model, x, target, h0


@pytest.mark.parametrize("k", [1, 2, 4])
def test_tbptt_chunks_equal_the_window_formulation(backend, dtype, k):
    """TBPTT(k, k) runs as a carry scale; it must equal per-output windows k_t = t % k + 1."""
    model, x, target, h0 = _model_and_batch(backend, dtype)
    _, by_carry, _ = model.loss_and_grad(x, target, h0=h0, truncate=TBPTT(k, k))
    # the same step with the per-output windows of TBPTT(k, k), through the composition
    weights, arch = model.weights(), model.architecture
    result = cyrnn.stack.loss_and_grad(
        model.kernels, arch, weights, x.astype(dtype), h0.astype(dtype)[None],
        target.astype(dtype).reshape(-1, 2), loss="mse", output="linear", reduction="mean",
        window=TBPTT(k, k).windows(9))
    by_window = dict(result.grads, h0=result.grads["h0"][0])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in by_carry:
        np.testing.assert_allclose(by_carry[name], by_window[name], rtol=tol, atol=tol, err_msg=name)


def test_tbptt_one_k_is_the_look_back_window(backend):
    model, x, target, h0 = _model_and_batch(backend)
    _, a, _ = model.loss_and_grad(x, target, h0=h0, truncate=TBPTT(1, 3))
    _, b, _ = model.loss_and_grad(x, target, h0=h0, truncate=3)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_randomized_truncation_is_unbiased(backend):
    """The mean of many randomized-truncation gradients converges to full BPTT."""
    model, x, target, h0 = _model_and_batch(backend, seed=1)
    _, full, _ = model.loss_and_grad(x, target, h0=h0)
    spec = RandomizedTruncation(0.5, seed=7)
    draws = 4000
    total = {name: np.zeros_like(g) for name, g in full.items()}
    squares = {name: np.zeros_like(g) for name, g in full.items()}
    for _ in range(draws):
        _, g, _ = model.loss_and_grad(x, target, h0=h0, truncate=spec)
        for name in g:
            total[name] += g[name]
            squares[name] += g[name] ** 2
    for name, g in full.items():
        mean = total[name] / draws
        stderr = np.sqrt(np.maximum(squares[name] / draws - mean**2, 0) / draws)
        # within 5 standard errors everywhere (deterministic seed: not flaky), and the estimate
        # is not trivially exact: truncation did change individual draws
        assert np.all(np.abs(mean - g) <= 5 * stderr + 1e-12), name
    _, one, _ = model.loss_and_grad(x, target, h0=h0, truncate=RandomizedTruncation(0.5, seed=3))
    assert not np.allclose(one["Whh"], full["Whh"])


def test_randomized_truncation_p1_is_full_bptt(backend):
    model, x, target, h0 = _model_and_batch(backend)
    _, full, _ = model.loss_and_grad(x, target, h0=h0)
    _, same, _ = model.loss_and_grad(x, target, h0=h0, truncate=RandomizedTruncation(1.0, seed=0))
    for name in full:
        np.testing.assert_array_equal(full[name], same[name])


def test_randomized_truncation_is_reproducible():
    a = RandomizedTruncation(0.3, seed=5).carry(50)
    b = RandomizedTruncation(0.3, seed=5).carry(50)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1 / 0.3}


@pytest.mark.parametrize("make, exc, message", [
    (lambda: TBPTT(3, 2), ValueError, r"k2: expected k2 >= k1 = 3, got 2"),
    (lambda: TBPTT(0), ValueError, r"k1: expected an int >= 1, got 0"),
    (lambda: TBPTT(2.0), TypeError, r"k1: expected an int >= 1, got 2.0"),
    (lambda: RandomizedTruncation(0.0), ValueError, r"p: expected a probability in \(0, 1\], got 0.0"),
    (lambda: RandomizedTruncation(1.5), ValueError, r"p: expected a probability"),
    (lambda: TBPTT(2, 3).carry(5), ValueError, r"only TBPTT\(k, k\) is a carry scale"),
])
def test_bad_specifications(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_bad_truncate_argument(backend):
    model, x, target, h0 = _model_and_batch(backend)
    with pytest.raises(TypeError, match="truncate: expected None, an int >= 1, a TBPTT"):
        model.loss_and_grad(x, target, truncate="3")
