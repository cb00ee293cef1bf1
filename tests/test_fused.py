"""The fused training step ``elman_loss_and_grad``: both backends, against the step-by-step path."""
import numpy as np
import pytest

import cyrnn
from cyrnn import _checks, kernels

from conftest import TOL

NONLINEARITIES = _checks.NONLINEARITIES  # every nonlinearity the library knows


def _case(rng, dtype, tokens, loss, T=7, B=3, I=5, H=6, O=4):
    model = cyrnn.RNN(I, H, O, dtype=dtype, seed=1)
    p = model.params
    x = rng.integers(0, I, (T, B)) if tokens else rng.normal(size=(T, B, I)).astype(dtype)
    y = rng.integers(0, O, (T, B)) if loss == "cross_entropy" else rng.normal(size=(T, B, O)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    return (x, y, h0, p["Wxh"], p["Whh"], p["bh"], p["Why"], p["by"])


def _general_path(args, nonlinearity, loss, reduction, carry=None, window=None):
    """The same step from the separate kernels and the loss functions (NumPy backend)."""
    x, y, h0, Wxh, Whh, bh, Why, by = args
    nb = kernels.get_backend("numpy")
    T, B = x.shape[:2]
    xw = (Wxh.T[x] if x.dtype.kind == "i" else x @ Wxh.T) + bh
    hs = nb.rnn_forward(xw, h0, Whh, nonlinearity, negative_slope=0.2)
    z = hs[1:].reshape(T * B, -1) @ Why.T + by
    value, dz = (cyrnn.losses.cross_entropy(z, y.reshape(-1), reduction) if loss == "cross_entropy"
                 else cyrnn.losses.mse(z, y.reshape(T * B, -1), reduction))
    dh_out = (dz @ Why).reshape(T, B, -1)
    if window is None:
        da, dh0, _ = nb.rnn_backward(dh_out, hs, Whh, nonlinearity, negative_slope=0.2, carry=carry)
    else:
        da, dh0 = nb.rnn_backward_window(dh_out, hs, Whh, window, nonlinearity, negative_slope=0.2)
    da2 = da.reshape(T * B, -1)
    grads = {"Whh": da2.T @ hs[:-1].reshape(T * B, -1), "bh": da2.sum(0),
             "Why": dz.T @ hs[1:].reshape(T * B, -1), "by": dz.sum(0), "h0": dh0}
    if x.dtype.kind == "i":
        onehot = np.eye(Wxh.shape[1])[x.reshape(-1)]
        grads["Wxh"] = da2.T @ onehot
    else:
        grads["Wxh"] = da2.T @ x.reshape(T * B, -1)
        grads["x"] = (da2 @ Wxh).reshape(x.shape)
    return value, grads, hs[-1]


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("tokens, loss", [(True, "cross_entropy"), (False, "mse"),
                                          (False, "cross_entropy"), (True, "mse")])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("truncation", ["full", "carry", "window", "windows"])
def test_fused_step_equals_the_general_path(backend, dtype, rng, nonlinearity, tokens, loss,
                                            reduction, truncation):
    args = _case(rng, dtype, tokens, loss)
    T = args[0].shape[0]
    carry = rng.uniform(0, 2, T) if truncation == "carry" else None
    window = {"window": 3, "windows": np.array([1, 2, 3, 1, 2, 3, 1])}.get(truncation)
    value, grads, h_last, norms = kernels.get_backend(backend).elman_loss_and_grad(
        *args, nonlinearity, negative_slope=0.2, loss=loss, reduction=reduction, carry=carry,
        window=window)
    ref_value, ref_grads, ref_h = _general_path(args, nonlinearity, loss, reduction, carry, window)
    tol = TOL[dtype] * 5
    assert value == pytest.approx(ref_value, rel=tol)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        assert grads[name].dtype == dtype
        np.testing.assert_allclose(grads[name], g, rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(h_last, ref_h, rtol=tol, atol=tol)
    assert (norms is None) == (window is not None)


def test_input_grad_can_be_skipped(backend, rng):
    args = _case(rng, np.float64, False, "mse")
    _, grads, _, _ = kernels.get_backend(backend).elman_loss_and_grad(*args, loss="mse",
                                                                      input_grad=False)
    assert "x" not in grads


@pytest.mark.parametrize("change, exc, message", [
    (lambda a: a.__setitem__(4, a[4][:, :-1]), ValueError, r"Whh: expected shape"),
    (lambda a: a.__setitem__(7, a[7][:-1]), ValueError, r"by: expected shape \(4,\), got \(3,\)"),
    (lambda a: a.__setitem__(0, a[0] + 10), ValueError, r"inputs: id 1\d out of range \[0, 5\)"),
    (lambda a: a.__setitem__(1, a[1] - 9), ValueError, r"targets: id -\d out of range \[0, 4\)"),
    (lambda a: a.__setitem__(2, a[2][:1]), ValueError, r"h0: expected shape \(3, 6\)"),
    (lambda a: a.__setitem__(3, a[3].astype(np.float32)), TypeError, r"Wxh: expected dtype float64"),
])
def test_bad_arguments(backend, rng, change, exc, message):
    args = list(_case(rng, np.float64, True, "cross_entropy"))
    change(args)
    with pytest.raises(exc, match=message):
        kernels.get_backend(backend).elman_loss_and_grad(*args)


def test_carry_and_window_together_are_refused(backend, rng):
    args = _case(rng, np.float64, True, "cross_entropy")
    with pytest.raises(ValueError, match="carry, window: pass one truncation"):
        kernels.get_backend(backend).elman_loss_and_grad(*args, carry=np.ones(7), window=2)


@pytest.mark.parametrize("backend_name", ["cython", "numpy"])
def test_model_uses_the_fused_step_with_identical_results_to_lengths_path(backend_name, rng):
    """Full lengths take the fused path; lengths with one short sequence the general one: the
    full-length sequences' contributions must not depend on which path ran."""
    model = cyrnn.RNN(5, 6, 4, output="softmax", dtype="float64", seed=0, backend=backend_name)
    x = rng.integers(0, 5, (7, 2))
    y = rng.integers(0, 4, (7, 2))
    fused = model.loss_and_grad(x, y, reduction="sum")
    general = model.loss_and_grad(x, y, lengths=[7, 7], reduction="sum")  # lengths dropped: fused
    padded = model.loss_and_grad(np.concatenate([x, x[:, :1]], 1), np.concatenate([y, y[:, :1]], 1),
                                 lengths=[7, 7, 0], reduction="sum")       # general path
    for other in (general, padded):
        assert other[0] == pytest.approx(fused[0], rel=1e-12)
        for name in ("Wxh", "Whh", "bh", "Why", "by"):
            np.testing.assert_allclose(other[1][name], fused[1][name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
def test_fused_forward_equals_the_general_path(backend, dtype, rng, nonlinearity, tokens, output):
    x, _, h0, Wxh, Whh, bh, Why, by = _case(rng, dtype, tokens, "mse")
    y, h_last = kernels.get_backend(backend).elman_forward(
        x, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope=0.2, output=output)
    nb = kernels.get_backend("numpy")
    xw = (Wxh.T[x] if tokens else x @ Wxh.T) + bh
    hs = nb.rnn_forward(xw, h0, Whh, nonlinearity, negative_slope=0.2)
    ref = cyrnn.losses.apply_output(output, hs[1:] @ Why.T + by)
    assert y.dtype == dtype and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=5 * TOL[dtype], atol=5 * TOL[dtype])
    np.testing.assert_allclose(h_last, hs[-1], rtol=5 * TOL[dtype], atol=5 * TOL[dtype])
    if output == "softmax":
        np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=5 * TOL[dtype])


def test_fused_forward_rejects_unknown_output(backend, rng):
    x, _, h0, Wxh, Whh, bh, Why, by = _case(rng, np.float64, True, "mse")
    with pytest.raises(ValueError, match="output: expected one of linear, softmax, sigmoid"):
        kernels.get_backend(backend).elman_forward(x, h0, Wxh, Whh, bh, Why, by, output="tanh")


def test_float32_exp_accuracy():
    """The vectorized float32 exp of the softmax, through a one-step softmax output."""
    z = np.concatenate([np.linspace(-87, 0, 20001), [-1e-8, -30.5, -0.693147]]).astype(np.float32)
    O = z.size
    # one step, H = 1, Why = z as a column, h = 1 (identity unit, input bias 1): logits = z
    y, _ = kernels.get_backend("cython").elman_forward(
        np.zeros((1, 1), dtype=np.intp), np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32),
        np.zeros((1, 1), np.float32), np.ones(1, np.float32), z.reshape(O, 1).copy(),
        np.zeros(O, np.float32), "identity", output="softmax")
    exact = np.exp(z.astype(np.float64) - z.max())
    exact /= exact.sum()
    np.testing.assert_allclose(y.ravel(), exact, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("replace", [
    lambda p: p.__setitem__("Whh", np.zeros((6, 5), p["Whh"].dtype)),
    lambda p: p.__setitem__("Why", np.asfortranarray(p["Why"])),
    lambda p: p.__setitem__("by", p["by"].astype(np.float32)),
    lambda p: p.__setitem__("bh", list(p["bh"])),
], ids=["shape", "layout", "dtype", "type"])
def test_model_refuses_replaced_parameters_before_the_fused_step(backend, rng, replace):
    """The fused step trusts the model's own checks; a parameter replaced behind its back (not
    updated in place) must be an error, never a wrong read of memory."""
    model = cyrnn.RNN(5, 6, 4, output="softmax", dtype="float64", seed=0, backend=backend)
    replace(model.params)
    with pytest.raises(ValueError, match=r"params\['\w+'\]: expected a C-contiguous float64 array"):
        model.loss_and_grad(rng.integers(0, 5, (7, 2)), rng.integers(0, 4, (7, 2)))


def test_model_refuses_a_removed_parameter_before_the_fused_step(backend, rng):
    model = cyrnn.RNN(5, 6, 4, output="softmax", dtype="float64", seed=0, backend=backend)
    model.params.pop("Wxh")
    with pytest.raises(KeyError, match="params: parameter 'Wxh' is missing"):
        model.loss_and_grad(rng.integers(0, 5, (7, 2)), rng.integers(0, 4, (7, 2)))


@pytest.mark.parametrize("T, B", [(40, 32), (130, 16), (1100, 1)], ids=["B=32", "B=16", "B=1"])
@pytest.mark.parametrize("tokens, loss", [(True, "cross_entropy"), (False, "mse")])
@pytest.mark.parametrize("truncation", ["full", "carry"])
def test_blocked_bptt_equals_the_general_path(backend, dtype, rng, T, B, tokens, loss, truncation):
    """Long enough for the compiled step to run BPTT in several blocks of ~256 rows: the
    gradient carried from block to block must make it exactly the one-pass result."""
    args = _case(rng, dtype, tokens, loss, T=T, B=B, I=5, H=6, O=4)
    carry = rng.uniform(0, 2, T) if truncation == "carry" else None
    value, grads, h_last, norms = kernels.get_backend(backend).elman_loss_and_grad(
        *args, "tanh", negative_slope=0.2, loss=loss, carry=carry)
    ref_value, ref_grads, ref_h = _general_path(args, "tanh", loss, "mean", carry)
    _, _, ref_norms = kernels.get_backend("numpy").rnn_backward(
        *_dh_out_and_states(args, loss), args[4], "tanh", carry=carry)
    tol = TOL[dtype] * 50
    assert value == pytest.approx(ref_value, rel=tol)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_allclose(norms, ref_norms, rtol=tol, atol=tol)


def _dh_out_and_states(args, loss):
    """dh_out and hs of the general path, for the per-step gradient norms."""
    x, y, h0, Wxh, Whh, bh, Why, by = args
    nb = kernels.get_backend("numpy")
    T, B = x.shape[:2]
    xw = (Wxh.T[x] if x.dtype.kind == "i" else x @ Wxh.T) + bh
    hs = nb.rnn_forward(xw, h0, Whh, "tanh")
    z = hs[1:].reshape(T * B, -1) @ Why.T + by
    _, dz = (cyrnn.losses.cross_entropy(z, y.reshape(-1), "mean") if loss == "cross_entropy"
             else cyrnn.losses.mse(z, y.reshape(T * B, -1), "mean"))
    return (dz @ Why).reshape(T, B, -1), hs
