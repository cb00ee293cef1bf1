"""Tests of the public class API ``cyrnn.RNN``: input validation, accepted input forms, no
mutation or aliasing, layouts, semantics of lengths / truncation / reductions / target steps,
initialisation, the torch weight exchange, backend plumbing and thread safety.

Every test that can runs on both kernel backends (``backend`` fixture) and both dtypes.
"""
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import cyrnn
from cyrnn import RNN, _checks

# sizes of the small models: input features / vocabulary, hidden, outputs, steps, batch
I, H, O, T, B = 5, 4, 3, 6, 2
# agreement of the same maths computed two ways (other backend, batch shape, algorithm)
TOL = {np.float32: 2e-5, np.float64: 1e-12}
LOSSES_OF_OUTPUT = {"linear": "mse", "softmax": "cross_entropy", "sigmoid": "bce"}

# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------


def make(backend, dtype, output_size=O, *, seed=0, **kwargs):
    """A small model with deterministic weights."""
    return RNN(I, H, output_size, backend=backend, dtype=dtype, seed=seed, **kwargs)


def data(rng, *, tokens=False, loss="mse", t=T, b=B, out=O):
    """Inputs ``x`` (dense (t, b, I) float64 or token ids (t, b)), ``h0`` (b, H) and a target of
    ``loss`` for every step."""
    x = rng.integers(0, I, (t, b)) if tokens else rng.standard_normal((t, b, I))
    h0 = 0.5 * rng.standard_normal((b, H))
    return x, h0, target_for(rng, loss, (t, b), out)


def target_for(rng, loss, shape, out=O):
    """Class ids ``shape`` for cross-entropy, values ``shape + (out,)`` for mse / bce."""
    if loss == "cross_entropy":
        return rng.integers(0, out, shape)
    if loss == "bce":
        return rng.uniform(0.0, 1.0, shape + (out,))
    return rng.standard_normal(shape + (out,))


def tree(result):
    """Flatten a (loss, grads, h_last) / (y, h_last) result into a dict of arrays."""
    if len(result) == 3:
        loss, grads, h_last = result
        flat = {"loss": np.asarray(loss), "h_last": h_last}
        flat.update({f"grad_{k}": v for k, v in grads.items()})
        return flat
    y, h_last = result
    return {"y": y, "h_last": h_last}


def assert_same(a, b):
    """Bit-identical results: same keys, shapes, dtypes and values."""
    a, b = tree(a), tree(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_close(a, b, tol):
    """Arrays equal up to ``tol`` relative to the largest magnitude of ``b``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-30)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


def assert_results_close(a, b, tol):
    a, b = tree(a), tree(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert_close(a[k], b[k], tol)


def params_copy(model):
    return {k: v.copy() for k, v in model.params.items()}


def assert_params_equal(model, params):
    assert model.params.keys() == params.keys()
    for k, v in params.items():
        assert model.params[k].dtype == v.dtype
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)


def readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


def numeric_grad(f, p, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to every entry of ``p`` (in place)."""
    g = np.zeros(p.shape)
    for idx in np.ndindex(p.shape):
        old = p[idx]
        p[idx] = old + eps
        up = f()
        p[idx] = old - eps
        down = f()
        p[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def sgd_train(model, batches, lr=0.1):
    """A few plain SGD steps; returns the final parameters."""
    for x, h0, target in batches:
        _, grads, _ = model.loss_and_grad(x, target, h0=h0)
        for name, p in model.params.items():
            p -= model.dtype.type(lr) * grads[name]
    return params_copy(model)


def run_python(code, **env_overrides):
    """Run ``code`` in a fresh interpreter that imports the same cyrnn as this process."""
    env = dict(os.environ)
    env.update(env_overrides)
    src = os.path.dirname(os.path.dirname(os.path.abspath(cyrnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


# module-level inputs for the bad-input table (the table is built at collection time)
_r = np.random.default_rng(7)
X = _r.standard_normal((T, B, I))
TOK = _r.integers(0, I, (T, B))
H0 = _r.standard_normal((B, H))
Y_MSE = _r.standard_normal((T, B, O))
Y_BCE = _r.uniform(0, 1, (T, B, O))
Y_CE = _r.integers(0, O, (T, B))
FULL = np.full(B, T)


def _with(a, index, value):
    a = np.array(a)
    a[index] = value
    return a


# -------------------------------------------------------------------------------------------
# 1. bad input
# -------------------------------------------------------------------------------------------

# (id, output function of the model, call on the model, exception type, message regex)
BAD_CALLS = [
    # dense x: rank and feature size
    ("x-rank1", "linear", lambda m: m.forward(X[0, 0]), ValueError, r"x: expected shape \(T, B, 5\)"),
    ("x-rank4", "linear", lambda m: m.forward(X[None]), ValueError, r"x: expected shape \(T, B, 5\)"),
    ("x-features", "linear", lambda m: m.forward(X[..., :4]), ValueError, r"x: expected shape \(T, B, 5\).*got \(6, 2, 4\)"),
    ("x-features-unbatched", "linear", lambda m: m.forward(X[:, 0, :3]), ValueError, r"x: expected shape .*\(T, 5\)"),
    ("x-features-loss", "linear", lambda m: m.loss_and_grad(X[..., :4], Y_MSE), ValueError, r"x: expected shape \(T, B, 5\)"),
    # x dtype
    ("x-bool", "linear", lambda m: m.forward(X > 0), TypeError, r"x: .*dtype bool"),
    ("x-complex", "linear", lambda m: m.forward(X + 1j), TypeError, r"x: .*dtype complex128"),
    ("x-object", "linear", lambda m: m.forward(X.astype(object)), TypeError, r"x: .*dtype object"),
    ("x-str", "linear", lambda m: m.forward(np.full((T, B), "a")), TypeError, r"x: .*dtype <U1"),
    # token ids
    ("tokens-rank3", "linear", lambda m: m.forward(TOK[..., None]), ValueError, r"x: token ids must have shape \(T, B\)"),
    ("token-negative", "linear", lambda m: m.forward(_with(TOK, (2, 1), -1)), ValueError, r"x: token id -1 out of range \[0, 5\)"),
    ("token-equal-size", "linear", lambda m: m.forward(_with(TOK, (0, 0), I)), ValueError, r"x: token id 5 out of range \[0, 5\)"),
    ("token-large", "linear", lambda m: m.loss_and_grad(_with(TOK, (5, 1), 99), Y_MSE), ValueError, r"x: token id 99 out of range \[0, 5\)"),
    ("token-unbatched", "linear", lambda m: m.forward(_with(TOK[:, 0], 3, 17)), ValueError, r"x: token id 17 out of range \[0, 5\)"),
    # lengths
    ("lengths-negative", "linear", lambda m: m.forward(X, lengths=[-1, T]), ValueError, r"lengths: expected values in \[0, 6\].*min -1"),
    ("lengths-too-long", "linear", lambda m: m.forward(X, lengths=[T + 1, 2]), ValueError, r"lengths: expected values in \[0, 6\].*max 7"),
    ("lengths-shape", "linear", lambda m: m.forward(X, lengths=[T, T, T]), ValueError, r"lengths: expected shape \(2,\), got \(3,\)"),
    ("lengths-2d", "linear", lambda m: m.forward(X, lengths=[[T, T]]), ValueError, r"lengths: expected shape \(2,\), got \(1, 2\)"),
    ("lengths-scalar", "linear", lambda m: m.forward(X, lengths=T), ValueError, r"lengths: expected shape \(2,\), got \(\)"),
    ("lengths-float", "linear", lambda m: m.forward(X, lengths=[6.0, 3.0]), TypeError, r"lengths: expected integers, got dtype float64"),
    ("lengths-float-loss", "linear", lambda m: m.loss_and_grad(X, Y_MSE, lengths=np.array([6, 3], np.float32)), TypeError, r"lengths: expected integers"),
    ("lengths-bool", "linear", lambda m: m.forward(X, lengths=[True, True]), TypeError, r"lengths: expected integers"),
    # non-finite values
    ("x-nan", "linear", lambda m: m.forward(_with(X, (3, 1, 2), np.nan)), ValueError, r"x: contains NaN or Inf"),
    ("x-inf", "linear", lambda m: m.forward(_with(X, (0, 0, 0), np.inf)), ValueError, r"x: contains NaN or Inf"),
    ("x-neginf-loss", "linear", lambda m: m.loss_and_grad(_with(X, (5, 1, 4), -np.inf), Y_MSE), ValueError, r"x: contains NaN or Inf"),
    ("h0-nan", "linear", lambda m: m.forward(X, h0=_with(H0, (1, 3), np.nan)), ValueError, r"h0: contains NaN or Inf"),
    ("h0-inf-loss", "linear", lambda m: m.loss_and_grad(X, Y_MSE, h0=_with(H0, (0, 0), np.inf)), ValueError, r"h0: contains NaN or Inf"),
    ("mse-target-nan", "linear", lambda m: m.loss_and_grad(X, _with(Y_MSE, (2, 0, 1), np.nan)), ValueError, r"target: contains NaN or Inf"),
    ("mse-target-inf", "linear", lambda m: m.loss_and_grad(X, _with(Y_MSE, (5, 1, 2), np.inf)), ValueError, r"target: contains NaN or Inf"),
    ("mse-target-overflows-float32", "linear", lambda m: m.loss_and_grad(X, _with(Y_MSE, (0, 0, 0), 1e300) if m.dtype == np.float32 else _with(Y_MSE, (0, 0, 0), np.inf)), ValueError, r"target: contains (NaN or Inf|values too large for float32)"),
    ("bce-target-nan", "sigmoid", lambda m: m.loss_and_grad(X, _with(Y_BCE, (1, 1, 1), np.nan)), ValueError, r"target: contains NaN or Inf"),
    ("bce-target-inf", "sigmoid", lambda m: m.loss_and_grad(X, _with(Y_BCE, (1, 1, 1), -np.inf)), ValueError, r"target: contains NaN or Inf"),
    ("bce-target-above-1", "sigmoid", lambda m: m.loss_and_grad(X, _with(Y_BCE, (4, 0, 2), 1.5)), ValueError, r"target: bce needs values in \[0, 1\]"),
    ("bce-target-below-0", "sigmoid", lambda m: m.loss_and_grad(X, _with(Y_BCE, (0, 1, 0), -0.1)), ValueError, r"target: bce needs values in \[0, 1\]"),
    ("bce-on-linear-target-range", "linear", lambda m: m.loss_and_grad(X, Y_BCE + 2, loss="bce"), ValueError, r"target: bce needs values in \[0, 1\]"),
    # cross-entropy targets
    ("ce-class-negative", "softmax", lambda m: m.loss_and_grad(X, _with(Y_CE, (2, 1), -1)), ValueError, r"target: class id -1 out of range \[0, 3\)"),
    ("ce-class-equal-size", "softmax", lambda m: m.loss_and_grad(X, _with(Y_CE, (0, 0), O)), ValueError, r"target: class id 3 out of range \[0, 3\)"),
    ("ce-class-last", "softmax", lambda m: m.loss_and_grad(X, np.array([0, 7]), target_steps="last"), ValueError, r"target: class id 7 out of range \[0, 3\)"),
    ("ce-float-target", "softmax", lambda m: m.loss_and_grad(X, Y_CE.astype(float)), TypeError, r"target: cross_entropy needs integer class ids, got dtype float64"),
    ("ce-bool-target", "softmax", lambda m: m.loss_and_grad(X, Y_CE > 0), TypeError, r"target: cross_entropy needs integer class ids"),
    ("mse-complex-target", "linear", lambda m: m.loss_and_grad(X, Y_MSE + 0j), TypeError, r"target: expected real numbers"),
    # empty batches
    ("T0-dense", "linear", lambda m: m.forward(X[:0]), ValueError, r"x: expected at least one time step, got T = 0"),
    ("T0-tokens", "linear", lambda m: m.forward(TOK[:0]), ValueError, r"x: expected at least one time step, got T = 0"),
    ("T0-unbatched", "linear", lambda m: m.forward(np.zeros(0, dtype=np.int64)), ValueError, r"T = 0"),
    ("T0-loss", "softmax", lambda m: m.loss_and_grad(X[:0], Y_CE[:0]), ValueError, r"T = 0"),
    ("B0-dense", "linear", lambda m: m.forward(X[:, :0]), ValueError, r"x: expected at least one sequence, got B = 0"),
    ("B0-tokens", "linear", lambda m: m.forward(TOK[:, :0]), ValueError, r"x: expected at least one sequence, got B = 0"),
    ("B0-loss", "linear", lambda m: m.loss_and_grad(X[:, :0], Y_MSE[:, :0]), ValueError, r"B = 0"),
    # h0
    ("h0-batch", "linear", lambda m: m.forward(X, h0=np.zeros((B + 1, H))), ValueError, r"h0: expected shape \(2, 4\) or \(1, 2, 4\), got \(3, 4\)"),
    ("h0-hidden", "linear", lambda m: m.forward(X, h0=np.zeros((B, H + 1))), ValueError, r"h0: expected shape \(2, 4\) or \(1, 2, 4\), got \(2, 5\)"),
    ("h0-unbatched-for-batch", "linear", lambda m: m.forward(X, h0=np.zeros(H)), ValueError, r"h0: expected shape \(2, 4\) or \(1, 2, 4\), got \(4,\)"),
    ("h0-batched-for-unbatched", "linear", lambda m: m.forward(X[:, 0], h0=np.zeros((2, H))), ValueError, r"h0: expected shape \(4,\) or \(1, 4\), got \(2, 4\)"),
    ("h0-complex", "linear", lambda m: m.forward(X, h0=H0 + 0j), TypeError, r"h0: expected real numbers, got dtype complex128"),
    # target shapes
    ("mse-target-shape", "linear", lambda m: m.loss_and_grad(X, Y_MSE[..., 0]), ValueError, r"target: expected shape \(6, 2, 3\), got \(6, 2\)"),
    ("mse-target-outputs", "linear", lambda m: m.loss_and_grad(X, Y_MSE[..., :2]), ValueError, r"target: expected shape \(6, 2, 3\), got \(6, 2, 2\)"),
    ("bce-target-shape", "sigmoid", lambda m: m.loss_and_grad(X, Y_BCE[:-1]), ValueError, r"target: expected shape \(6, 2, 3\), got \(5, 2, 3\)"),
    ("ce-target-shape", "softmax", lambda m: m.loss_and_grad(X, Y_CE[..., None]), ValueError, r"target: expected shape \(6, 2\), got \(6, 2, 1\)"),
    ("ce-target-transposed", "softmax", lambda m: m.loss_and_grad(X, Y_CE.T), ValueError, r"target: expected shape \(6, 2\), got \(2, 6\)"),
    ("ce-last-shape", "softmax", lambda m: m.loss_and_grad(X, Y_CE, target_steps="last"), ValueError, r"target: expected shape \(2,\), got \(6, 2\)"),
    ("mse-last-shape", "linear", lambda m: m.loss_and_grad(X, Y_MSE, target_steps="last"), ValueError, r"target: expected shape \(2, 3\), got \(6, 2, 3\)"),
    ("bce-last-shape", "sigmoid", lambda m: m.loss_and_grad(X, Y_BCE[-1, :, 0], target_steps="last"), ValueError, r"target: expected shape \(2, 3\), got \(2,\)"),
    ("last-empty-sequence", "linear", lambda m: m.loss_and_grad(X, Y_MSE[-1], lengths=[0, 3], target_steps="last"), ValueError, r"lengths: target_steps='last' needs every sequence"),
    ("all-sequences-empty", "linear", lambda m: m.loss_and_grad(X, Y_MSE, lengths=[0, 0]), ValueError, r"lengths: every sequence is empty"),
    # the shape is wrong for a reason the message names
    ("ce-one-hot-target", "softmax", lambda m: m.loss_and_grad(X, np.eye(O)[Y_CE]), ValueError, r"target: cross_entropy takes class ids of shape \(6, 2\), not one-hot vectors \(got shape \(6, 2, 3\)\); use target\.argmax\(-1\)"),
    ("ce-one-hot-int-last", "softmax", lambda m: m.loss_and_grad(X, np.eye(O, dtype=int)[Y_CE[-1]], target_steps="last"), ValueError, r"target: cross_entropy takes class ids of shape \(2,\), not one-hot vectors"),
    ("ce-one-hot-on-linear", "linear", lambda m: m.loss_and_grad(X, np.eye(O)[Y_CE], loss="cross_entropy"), ValueError, r"not one-hot vectors .*target\.argmax\(-1\)"),
    ("class-ids-on-linear", "linear", lambda m: m.loss_and_grad(X, Y_CE), ValueError, r"target: mse with output='linear' expects values of shape \(6, 2, 3\), got integers of shape \(6, 2\); class ids need output='softmax' or loss='cross_entropy'$"),
    ("class-ids-on-linear-last", "linear", lambda m: m.loss_and_grad(X, Y_CE[-1], target_steps="last"), ValueError, r"got integers of shape \(2,\); class ids need output='softmax'"),
    ("class-ids-on-sigmoid", "sigmoid", lambda m: m.loss_and_grad(X, Y_CE), ValueError, r"target: bce with output='sigmoid' expects values of shape \(6, 2, 3\), got integers of shape \(6, 2\); class ids need output='softmax'$"),
    ("float-values-missing-axis", "linear", lambda m: m.loss_and_grad(X, Y_MSE[..., 0]), ValueError, r"^target: expected shape \(6, 2, 3\), got \(6, 2\)$"),
    ("x-float-token-ids", "linear", lambda m: m.forward(TOK.astype(float)), TypeError, r"x: token ids must be integers; got floats of shape \(6, 2\) \(use x\.astype\(int\)\); dense inputs need shape \(T, B, 5\)"),
    ("x-float-token-ids-unbatched", "linear", lambda m: m.forward(TOK[:, 0].astype(np.float32)), TypeError, r"x: token ids must be integers; got floats of shape \(6,\)"),
    ("x-float-token-ids-loss", "softmax", lambda m: m.loss_and_grad(TOK.astype(float), Y_CE), TypeError, r"x: token ids must be integers"),
    ("x-whole-floats-out-of-id-range", "linear", lambda m: m.forward(TOK.astype(float) + I), ValueError, r"^x: expected shape \(T, B, 5\) or \(T, 5\), got \(6, 2\)$"),
    ("x-floats-missing-feature-axis", "linear", lambda m: m.forward(X[..., 0]), ValueError, r"^x: expected shape \(T, B, 5\) or \(T, 5\), got \(6, 2\)$"),
    # unknown names and incompatible losses
    ("loss-unknown", "linear", lambda m: m.loss_and_grad(X, Y_MSE, loss="hinge"), ValueError, r"loss: expected one of cross_entropy, mse, bce, got 'hinge'"),
    ("reduction-unknown", "linear", lambda m: m.loss_and_grad(X, Y_MSE, reduction="avg"), ValueError, r"reduction: expected 'mean' or 'sum', got 'avg'"),
    ("reduction-none", "linear", lambda m: m.loss_and_grad(X, Y_MSE, reduction=None), ValueError, r"reduction: expected 'mean' or 'sum', got None"),
    ("target-steps-unknown", "linear", lambda m: m.loss_and_grad(X, Y_MSE, target_steps="first"), ValueError, r"target_steps: expected 'all' or 'last', got 'first'"),
    ("ce-with-sigmoid", "sigmoid", lambda m: m.loss_and_grad(X, Y_CE, loss="cross_entropy"), ValueError, r"loss: 'cross_entropy' does not apply to output='sigmoid'"),
    ("bce-with-softmax", "softmax", lambda m: m.loss_and_grad(X, Y_BCE, loss="bce"), ValueError, r"loss: 'bce' does not apply to output='softmax'"),
    ("mse-with-softmax", "softmax", lambda m: m.loss_and_grad(X, Y_MSE, loss="mse"), ValueError, r"loss: 'mse' does not apply to output='softmax'"),
    # truncate
    ("truncate-0", "linear", lambda m: m.loss_and_grad(X, Y_MSE, truncate=0), ValueError, r"truncate: .*>= 1.*got 0"),
    ("truncate-negative", "linear", lambda m: m.loss_and_grad(X, Y_MSE, truncate=-3), ValueError, r"truncate: .*>= 1.*got -3"),
    ("truncate-float", "linear", lambda m: m.loss_and_grad(X, Y_MSE, truncate=2.0), TypeError, r"truncate: .*int"),
    ("truncate-bool", "linear", lambda m: m.loss_and_grad(X, Y_MSE, truncate=True), TypeError, r"truncate: .*int"),
    ("truncate-str", "linear", lambda m: m.loss_and_grad(X, Y_MSE, truncate="3"), TypeError, r"truncate: .*int"),
]


@pytest.mark.parametrize("output, call, exc, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises(backend, dtype, output, call, exc, match):
    model = make(backend, dtype, output=output)
    before = params_copy(model)
    with pytest.raises(exc, match=match):
        call(model)
    assert_params_equal(model, before)


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "output_size"])
@pytest.mark.parametrize("value, exc", [
    (0, ValueError), (-2, ValueError), (np.int64(0), ValueError),
    (3.0, TypeError), (2.5, TypeError), (True, TypeError), ("4", TypeError),
], ids=repr)
def test_constructor_bad_sizes(backend, name, value, exc):
    """Below 1 is a ValueError; not an integer at all (bool included) is a TypeError."""
    sizes = {"input_size": I, "hidden_size": H, "output_size": O}
    sizes[name] = value
    shown = re.escape(repr(value) if exc is TypeError else str(value))
    with pytest.raises(exc, match=rf"{name}: expected an int >= 1, got {shown}"):
        RNN(**sizes, backend=backend)


@pytest.mark.parametrize("dtype_arg", [None, "float16", "int32", "complex64"])
def test_constructor_rejects_other_dtypes(backend, dtype_arg):
    with pytest.raises(ValueError, match="dtype: expected 'float32' or 'float64'"):
        RNN(I, H, O, dtype=dtype_arg, backend=backend)


@pytest.mark.parametrize("where", ["x", "h0", "target"])
def test_values_that_overflow_float32_are_rejected(backend, where):
    """1e300 is finite in float64 but would silently become inf in a float32 model."""
    model = make(backend, np.float32)
    x, h0, target = X.astype(np.float64), np.zeros((B, H)), Y_MSE.astype(np.float64)
    {"x": x, "h0": h0, "target": target}[where].flat[0] = 1e300
    with pytest.raises(ValueError, match=f"{where}: contains values too large for float32"):
        model.loss_and_grad(x, target, h0=h0)


@pytest.mark.parametrize("where", ["x", "h0", "target"])
def test_large_finite_values_whose_sum_overflows_are_accepted(backend, dtype, where):
    # the finiteness check sums the array first; a sum that overflows must fall back to the
    # elementwise test, not reject finite values
    model = make(backend, dtype)
    big = np.finfo(dtype).max / 2
    x, h0, target = X.astype(dtype), np.zeros((B, H), dtype), Y_MSE.astype(dtype)
    a = {"x": x, "h0": h0, "target": target}[where]
    a.flat[0] = a.flat[1] = a.flat[2] = big
    with np.errstate(over="ignore"):
        assert not np.isfinite(a.sum())
    # the check itself must not warn either (the model's arithmetic on such values may)
    _checks.finite_array(where, a, dtype)
    with np.errstate(all="ignore"):
        loss, _, _ = model.loss_and_grad(x, target, h0=h0)
    assert isinstance(loss, float)


def test_constructor_accepts_numpy_ints(backend):
    model = RNN(np.int64(I), np.int32(H), np.uint8(O), backend=backend)
    assert (model.input_size, model.hidden_size, model.output_size) == (I, H, O)
    assert type(model.input_size) is int
    assert model.params["Why"].shape == (O, H)


BAD_OPTIONS = [
    ({"output": "tanh"}, r"output: expected one of linear, softmax, sigmoid, got 'tanh'"),
    ({"output": "softmax", "output_size": None}, r"output: 'softmax' needs an output layer; pass output_size"),
    ({"output": "sigmoid", "output_size": None}, r"output: 'sigmoid' needs an output layer"),
    ({"init": "he"}, r"init: expected one of uniform, xavier, orthogonal, identity, normal, got 'he'"),
    ({"nonlinearity": "gelu"}, r"nonlinearity: expected one of tanh, relu, sigmoid, leaky_relu, identity, got 'gelu'"),
    ({"nonlinearity": "leaky_relu", "negative_slope": -0.1}, r"negative_slope: expected a finite number >= 0, got -0.1"),
    ({"nonlinearity": "leaky_relu", "negative_slope": np.nan}, r"negative_slope: expected a finite number >= 0"),
    ({"dtype": "float16"}, r"dtype: expected 'float32' or 'float64', got 'float16'"),
    ({"dtype": np.int32}, r"dtype: expected 'float32' or 'float64'"),
    ({"dtype": "bogus"}, r"dtype: expected 'float32' or 'float64', got 'bogus'"),
    ({"dtype": "complex128"}, r"dtype: expected 'float32' or 'float64'"),
    ({"backend": "bogus"}, r"backend: expected one of cython, numpy or None, got 'bogus'"),
    ({"backend": "NumPy"}, r"backend: expected one of cython, numpy or None, got 'NumPy'"),
]


@pytest.mark.parametrize("options, match", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_constructor_bad_options(options, match):
    kwargs = {"output_size": O, **options}
    with pytest.raises(ValueError, match=match):
        RNN(I, H, **kwargs)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda p: p.pop("by"), KeyError, r"params: missing \['by'\], unexpected \[\]"),
        (lambda p: p.update(foo=np.zeros(3)), KeyError, r"params: missing \[\], unexpected \['foo'\]"),
        (lambda p: p.update(Whh=np.zeros((H, H + 1))), ValueError, r"Whh: expected shape \(4, 4\), got \(4, 5\)"),
        (lambda p: p.update(bh=np.zeros((1, H))), ValueError, r"bh: expected shape \(4,\), got \(1, 4\)"),
        (lambda p: p.update(Why=p["Why"].T), ValueError, r"Why: expected shape \(3, 4\), got \(4, 3\)"),
        (lambda p: p.update(by=_with(p["by"], 1, np.nan)), ValueError, r"by: contains NaN or Inf"),
        (lambda p: p.update(Wxh=_with(p["Wxh"], (0, 0), np.inf)), ValueError, r"Wxh: contains NaN or Inf"),
        (lambda p: p.update(Whh=p["Whh"] + 0j), TypeError, r"Whh: expected real numbers, got dtype complex128"),
        (lambda p: p.update(bh=p["bh"] > 0), TypeError, r"bh: expected real numbers, got dtype bool"),
    ],
    ids=["missing", "extra", "shape", "bias-rank", "transposed", "nan", "inf", "complex", "bool"],
)
def test_set_params_rejects_and_leaves_params_unchanged(backend, dtype, change, exc, match):
    model = make(backend, dtype)
    before = params_copy(model)
    # a valid first entry changed too: a partial update would show
    new = {k: np.full(v.shape, 0.25) for k, v in model.params.items()}
    change(new)
    with pytest.raises(exc, match=match):
        model.set_params(new)
    assert_params_equal(model, before)


def test_set_params_copies_and_casts(backend, dtype, rng):
    model = make(backend, dtype)
    new = {k: rng.standard_normal(v.shape) for k, v in model.params.items()}
    kept = {k: v.copy() for k, v in new.items()}
    model.set_params(new)
    for k, v in model.params.items():
        assert v.dtype == dtype and v.flags.c_contiguous
        np.testing.assert_array_equal(v, kept[k].astype(dtype))
        assert not np.shares_memory(v, new[k])
    new["Whh"][...] = 7.0
    np.testing.assert_array_equal(model.params["Whh"], kept["Whh"].astype(dtype))


def _torch_state(rng, prefix="rnn.", out="fc.", hidden=H, inp=I, outputs=O):
    return {
        prefix + "weight_ih_l0": rng.standard_normal((hidden, inp)),
        prefix + "weight_hh_l0": rng.standard_normal((hidden, hidden)),
        prefix + "bias_ih_l0": rng.standard_normal(hidden),
        prefix + "bias_hh_l0": rng.standard_normal(hidden),
        out + "weight": rng.standard_normal((outputs, hidden)),
        out + "bias": rng.standard_normal(outputs),
    }


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda s: s.pop("rnn.weight_hh_l0"), KeyError, r"state_dict: missing weight_hh_l0 \(a layer of a 1-layer"),
        (lambda s: s.pop("rnn.weight_ih_l0"), KeyError, r"state_dict: missing weight_ih_l0 \(a layer of a 1-layer"),
        (
            # layer 2 without layer 1
            lambda s: s.update({"rnn.weight_ih_l2": np.zeros((H, H)), "rnn.weight_hh_l2": np.zeros((H, H))}),
            KeyError,
            r"state_dict: missing weight_ih_l1 \(a layer of a 3-layer, 1-direction RNN\)",
        ),
        (
            lambda s: s.update({"rnn.bias_ih_l1": np.zeros(H)}),
            KeyError,
            r"state_dict: missing weight_ih_l1 \(a layer of a 2-layer",
        ),
        (
            lambda s: s.update({"rnn.weight_ih_l0_reverse": np.zeros((H, I))}),
            KeyError,
            r"state_dict: missing weight_hh_l0_reverse \(a direction of a 1-layer, 2-direction RNN\)",
        ),
        (
            lambda s: s.update({"other.rnn.weight_ih_l0": np.zeros((H, I))}),
            ValueError,
            r"state_dict: several keys for 'weight_ih_l0'",
        ),
        (
            lambda s: s.update({"emb.weight": np.zeros((7, I))}),
            ValueError,
            r"several candidate output layers .*pass output_prefix",
        ),
        (lambda s: s.update({"rnn.weight_hh_l0": np.zeros((H, H + 1))}), ValueError, r"weight_hh_l0: expected shape \(4, 4\), got \(4, 5\)"),
        (lambda s: s.update({"rnn.weight_ih_l0": np.zeros(H)}), ValueError, r"weight_ih_l0: expected 2 dimensions"),
        (lambda s: s.update({"fc.weight": np.zeros(O)}), ValueError, r"fc\.weight: expected 2 dimensions"),
        # a bias of the wrong shape must not be broadcast into bh
        (lambda s: s.update({"rnn.bias_ih_l0": np.array([0.5])}), ValueError, r"(bias_ih_l0|bh): expected shape \(4,\)"),
        (lambda s: s.update({"rnn.bias_hh_l0": np.array(0.5)}), ValueError, r"(bias_hh_l0|bh): expected shape \(4,\)"),
        (lambda s: s.update({"rnn.bias_ih_l0": np.zeros(H + 1)}), ValueError, r"(bias_ih_l0|bh): expected shape \(4,\)"),
        (lambda s: s.update({"fc.bias": np.zeros(O + 1)}), ValueError, r"by: expected shape \(3,\)"),
    ],
    ids=[
        "no-hh", "no-ih", "two-layers", "two-layers-bias-only", "bidirectional", "two-rnns", "ambiguous-output",
        "bad-hh-shape", "ih-rank", "out-rank", "bias-ih-1", "bias-hh-scalar", "bias-ih-long", "out-bias-long",
    ],
)
def test_from_torch_rejects(backend, rng, change, exc, match):
    state = _torch_state(rng)
    change(state)
    with pytest.raises(exc, match=match):
        RNN.from_torch(state, backend=backend)


def test_from_torch_missing_output_prefix(backend, rng):
    with pytest.raises(KeyError, match=r"state_dict: no key 'head\.weight'"):
        RNN.from_torch(_torch_state(rng), output_prefix="head.", backend=backend)


# -------------------------------------------------------------------------------------------
# 2. inputs that must work
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
def test_readonly_inputs(backend, dtype, rng, tokens, output):
    model = make(backend, dtype, output=output)
    loss = LOSSES_OF_OUTPUT[output]
    x, h0, target = data(rng, tokens=tokens, loss=loss)
    x = x if tokens else x.astype(dtype)
    h0 = h0.astype(dtype)
    lengths = np.array([T, 3])
    ref_f = model.forward(x.copy(), h0.copy(), lengths.copy())
    ref_l = model.loss_and_grad(x.copy(), target.copy(), h0=h0.copy(), lengths=lengths.copy())
    ro = [readonly(a) for a in (x, h0, target, lengths)]
    assert not any(a.flags.writeable for a in ro)
    assert_same(model.forward(ro[0], ro[1], ro[3]), ref_f)
    assert_same(model.loss_and_grad(ro[0], ro[2], h0=ro[1], lengths=ro[3]), ref_l)
    assert_same(
        model.loss_and_grad(ro[0], ro[2], h0=ro[1], lengths=ro[3], truncate=2),
        model.loss_and_grad(x, target, h0=h0, lengths=lengths, truncate=2),
    )


def _noncontiguous_variants(a):
    """Views of ``a``'s values that are not C-contiguous."""
    big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
    strided = big[tuple(slice(None, None, 2) for _ in a.shape)]
    strided[...] = a
    reversed_twice = np.ascontiguousarray(a[::-1])[::-1]
    transposed = np.ascontiguousarray(a.T).T
    variants = {"strided": strided, "fortran": np.asfortranarray(a), "transposed": transposed, "reversed": reversed_twice}
    for v in variants.values():
        np.testing.assert_array_equal(v, a)
    return variants


@pytest.mark.parametrize("layout", ["strided", "fortran", "transposed", "reversed"])
@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
def test_noncontiguous_inputs(backend, dtype, rng, layout, tokens):
    model = make(backend, dtype)
    x, h0, target = data(rng, tokens=tokens)
    x = x if tokens else x.astype(dtype)
    h0, target = h0.astype(dtype), target.astype(dtype)
    lengths = np.array([4, T])
    args = [x, h0, target, lengths]
    views = [_noncontiguous_variants(a)[layout] for a in args]
    assert not views[0].flags.c_contiguous and not views[1].flags.c_contiguous
    assert_same(model.forward(views[0], views[1], views[3]), model.forward(x, h0, lengths))
    assert_same(
        model.loss_and_grad(views[0], views[2], h0=views[1], lengths=views[3]),
        model.loss_and_grad(x, target, h0=h0, lengths=lengths),
    )


def test_batch_first_transposed_view_input(backend, dtype, rng):
    """A (B, T, I) view of a time-major array (and vice versa) is read correctly."""
    model = make(backend, dtype)
    model_bf = make(backend, dtype, batch_first=True)
    x, h0, _ = data(rng)
    x = x.astype(dtype)
    assert_same(model_bf.forward(x.transpose(1, 0, 2), h0), model_bf.forward(x.transpose(1, 0, 2).copy(), h0))
    y, h_last = model.forward(np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2), h0)
    assert_same((y, h_last), model.forward(x, h0))


def test_other_float_dtype_and_lists(backend, dtype, rng):
    other = np.float64 if dtype == np.float32 else np.float32
    model = make(backend, dtype)
    x, h0, target = data(rng)
    lengths = np.array([T, 2])
    # the reference gets arrays already in the model dtype
    ref_f = model.forward(x.astype(dtype), h0.astype(dtype), lengths)
    ref_l = model.loss_and_grad(x.astype(dtype), target.astype(dtype), h0=h0.astype(dtype), lengths=lengths)
    assert ref_f[0].dtype == dtype and ref_l[1]["Wxh"].dtype == dtype
    assert_same(model.forward(x, h0, lengths), ref_f)
    assert_same(model.loss_and_grad(x, target, h0=h0, lengths=lengths), ref_l)
    xo, h0o, to = x.astype(other), h0.astype(other), target.astype(other)
    assert_same(
        model.loss_and_grad(xo, to, h0=h0o, lengths=lengths),
        model.loss_and_grad(xo.astype(dtype), to.astype(dtype), h0=h0o.astype(dtype), lengths=lengths),
    )
    assert_same(model.forward(x.tolist(), h0.tolist(), lengths.tolist()), ref_f)
    assert_same(model.loss_and_grad(x.tolist(), target.tolist(), h0=h0.tolist(), lengths=lengths.tolist()), ref_l)
    # integer h0 is accepted as numbers
    h0_int = np.arange(B * H).reshape(B, H) % 2
    assert_same(model.forward(x, h0_int), model.forward(x, h0_int.astype(dtype)))


def test_token_lists(backend, dtype, rng):
    model = make(backend, dtype, output="softmax")
    x, h0, target = data(rng, tokens=True, loss="cross_entropy")
    assert_same(model.forward(x.tolist()), model.forward(x))
    assert_same(model.loss_and_grad(x.tolist(), target.tolist()), model.loss_and_grad(x, target))


@pytest.mark.parametrize("int_dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.int64, np.uint64])
def test_integer_token_dtypes(backend, dtype, rng, int_dtype):
    model = make(backend, dtype, output="softmax")
    x, h0, target = data(rng, tokens=True, loss="cross_entropy")
    lengths = np.array([T, 4])
    ref_f = model.forward(x, h0, lengths)
    ref_l = model.loss_and_grad(x, target, h0=h0, lengths=lengths)
    assert "x" not in ref_l[1]
    xi, ti, li = x.astype(int_dtype), target.astype(int_dtype), lengths.astype(int_dtype)
    assert_same(model.forward(xi, h0, li), ref_f)
    assert_same(model.loss_and_grad(xi, ti, h0=h0, lengths=li), ref_l)
    assert_same(model.forward(xi[:, 0]), model.forward(x[:, 0]))


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize(
    "loss, output, garbage",
    [
        ("cross_entropy", "softmax", [-7, 99]),
        ("cross_entropy", "linear", [O, -1]),
        ("mse", "linear", [np.nan, np.inf]),
        ("mse", "sigmoid", [-np.inf, 1e300]),
        ("bce", "sigmoid", [np.nan, 5.0]),
        ("bce", "linear", [-3.0, np.inf]),
    ],
)
def test_padded_targets_ignored(backend, dtype, rng, tokens, loss, output, garbage):
    model = make(backend, dtype, output=output)
    x, h0, target = data(rng, tokens=tokens, loss=loss)
    lengths = np.array([3, 5])
    dirty = target.astype(np.float64) if loss != "cross_entropy" else target.copy()
    dirty[3:, 0] = garbage[0]
    dirty[5:, 1] = garbage[1]
    dirty[4, 0] = garbage[1]
    for reduction in ("mean", "sum"):
        for truncate in (None, 2):
            kw = dict(h0=h0, lengths=lengths, loss=loss, reduction=reduction, truncate=truncate)
            clean_result = model.loss_and_grad(x, target, **kw)
            assert np.isfinite(clean_result[0])
            assert_same(model.loss_and_grad(x, dirty, **kw), clean_result)


def test_padded_target_garbage_counts_without_lengths(backend, dtype, rng):
    """The same garbage without ``lengths`` is checked: the ignoring above is really lengths."""
    model = make(backend, dtype, output="softmax")
    x, h0, target = data(rng, loss="cross_entropy")
    target[4, 1] = 99
    with pytest.raises(ValueError, match=r"class id 99"):
        model.loss_and_grad(x, target, h0=h0)


# -------------------------------------------------------------------------------------------
# 3. no mutation, no aliasing
# -------------------------------------------------------------------------------------------


def _bits(a):
    return (a.shape, a.dtype, a.strides, a.tobytes())


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
def test_inputs_not_mutated(backend, dtype, rng, batch_first, tokens, output):
    model = make(backend, dtype, output=output, batch_first=batch_first)
    loss = LOSSES_OF_OUTPUT[output]
    x, h0, target = data(rng, tokens=tokens, loss=loss)
    if batch_first:
        x, target = np.ascontiguousarray(np.swapaxes(x, 0, 1)), np.ascontiguousarray(np.swapaxes(target, 0, 1))
    # inputs already in the model dtype and C-contiguous are the ones a lazy implementation would reuse
    x = x if tokens else x.astype(dtype)
    h0 = h0.astype(dtype)
    target = target if loss == "cross_entropy" else target.astype(dtype)
    lengths = np.array([T, 2], dtype=np.intp)
    inputs = {"x": x, "h0": h0, "target": target, "lengths": lengths}
    before = {k: _bits(v) for k, v in inputs.items()}
    params_before = params_copy(model)
    model.forward(x, h0, lengths)
    model.forward(x, h0)
    for kw in ({}, {"truncate": 2}, {"reduction": "sum"}):
        model.loss_and_grad(x, target, h0=h0, lengths=lengths, **kw)
        model.loss_and_grad(x, target, h0=h0, **kw)
    last = target[-1] if not batch_first else target[:, -1]
    last_before = _bits(last)
    model.loss_and_grad(x, last, h0=h0, target_steps="last")
    assert _bits(last) == last_before
    for k, v in inputs.items():
        assert _bits(v) == before[k], f"{k} was mutated"
    assert_params_equal(model, params_before)


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output_size", [O, None], ids=["output-layer", "no-output-layer"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_results_do_not_alias(backend, dtype, rng, tokens, output_size, batched):
    model = make(backend, dtype, output_size)
    out = O if output_size else H
    x, h0, target = data(rng, tokens=tokens, out=out)
    x = x if tokens else x.astype(dtype)
    h0, target = h0.astype(dtype), target.astype(dtype)
    if not batched:
        x, h0, target = x[:, 0], h0[0], target[:, 0]
    inputs = [x, h0, target]
    inputs_before = [a.copy() for a in inputs]
    params_before = params_copy(model)
    y, h_last = model.forward(x, h0)
    loss, grads, h_last2 = model.loss_and_grad(x, target, h0=h0)
    results = [y, h_last, h_last2, *grads.values()]
    for r in results:
        for a in [*model.params.values(), *inputs]:
            assert not np.shares_memory(r, a)
    for r in results:
        r[...] = 123.0
    assert_params_equal(model, params_before)
    for a, b in zip(inputs, inputs_before):
        np.testing.assert_array_equal(a, b)
    # and the next call is unaffected
    assert_same(model.forward(x, h0), model.forward(x.copy(), h0.copy()))
    assert model.loss_and_grad(x, target, h0=h0)[0] == loss


def test_h_last_does_not_alias_h0_when_nothing_runs(backend, dtype, rng):
    """A sequence of length 0 returns its h0 as h_last: still a copy."""
    model = make(backend, dtype)
    x, h0, _ = data(rng)
    h0 = h0.astype(dtype)
    _, h_last = model.forward(x, h0, lengths=[0, 0])
    np.testing.assert_array_equal(h_last, h0)
    assert not np.shares_memory(h_last, h0)
    h_last[...] = 5
    assert not (h0 == 5).any()


# -------------------------------------------------------------------------------------------
# 4. layouts and shapes
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
def test_batch_first_is_transposed_time_major(backend, dtype, rng, tokens, output):
    loss = LOSSES_OF_OUTPUT[output]
    tm = make(backend, dtype, output=output)
    bf = make(backend, dtype, output=output, batch_first=True)
    assert_params_equal(bf, tm.params)
    x, h0, target = data(rng, tokens=tokens, loss=loss)
    xb, tb = np.swapaxes(x, 0, 1).copy(), np.swapaxes(target, 0, 1).copy()
    for lengths in (None, np.array([T, 3])):
        y, h_last = tm.forward(x, h0, lengths)
        yb, h_lastb = bf.forward(xb, h0, lengths)
        assert yb.shape == (B, T, O)
        np.testing.assert_array_equal(yb, np.swapaxes(y, 0, 1))
        np.testing.assert_array_equal(h_lastb, h_last)
        for kw in ({}, {"truncate": 2}, {"reduction": "sum"}):
            loss_t, g_t, hl_t = tm.loss_and_grad(x, target, h0=h0, lengths=lengths, **kw)
            loss_b, g_b, hl_b = bf.loss_and_grad(xb, tb, h0=h0, lengths=lengths, **kw)
            assert loss_b == loss_t
            np.testing.assert_array_equal(hl_b, hl_t)
            assert g_b.keys() == g_t.keys()
            for k in g_t:
                expected = np.swapaxes(g_t[k], 0, 1) if k == "x" else g_t[k]
                np.testing.assert_array_equal(g_b[k], expected, err_msg=k)
        # many-to-one targets have no time axis, so they are the same in both layouts
        last = target[-1] if lengths is None else target[lengths - 1, np.arange(B)]
        assert_same(
            bf.loss_and_grad(xb, last, h0=h0, lengths=lengths, target_steps="last"),
            _transpose_x_grad(tm.loss_and_grad(x, last, h0=h0, lengths=lengths, target_steps="last")),
        )


def _transpose_x_grad(result):
    loss, grads, h_last = result
    grads = dict(grads)
    if "x" in grads:
        grads["x"] = np.ascontiguousarray(np.swapaxes(grads["x"], 0, 1))
    return loss, grads, h_last


def test_batch_first_wrong_layout_rejected(backend, dtype, rng):
    bf = make(backend, dtype, batch_first=True)
    x = rng.standard_normal((B, T, I))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, 5\)"):
        bf.forward(x[..., :2])
    with pytest.raises(ValueError, match=r"target: expected shape \(2, 6, 3\), got \(6, 2, 3\)"):
        bf.loss_and_grad(x, rng.standard_normal((T, B, O)))


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output_size", [O, None], ids=["output-layer", "no-output-layer"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_unbatched_equals_batch_of_one(backend, dtype, rng, tokens, output_size, batch_first):
    model = make(backend, dtype, output_size, batch_first=batch_first)
    out = output_size or H
    x, h0, target = data(rng, tokens=tokens, b=1, out=out)
    xu, h0u, tu = x[:, 0], h0[0], target[:, 0]
    if batch_first:
        x, target = np.swapaxes(x, 0, 1), np.swapaxes(target, 0, 1)
    y, h_last = model.forward(x, h0)
    yu, h_lastu = model.forward(xu, h0u)
    assert yu.shape == (T, out) and h_lastu.shape == (H,)
    np.testing.assert_array_equal(yu, y[0] if batch_first else y[:, 0])
    np.testing.assert_array_equal(h_lastu, h_last[0])
    # without h0 too
    np.testing.assert_array_equal(model.forward(xu)[1], model.forward(x)[1][0])
    for kw in ({}, {"truncate": 3}, {"lengths": [4]}, {"reduction": "sum"}):
        kw_u = dict(kw)
        if "lengths" in kw:
            kw_u["lengths"] = 4 if tokens else [4]  # a scalar and a 1-list are both fine unbatched
        loss, grads, h_last = model.loss_and_grad(x, target, h0=h0, **kw)
        loss_u, grads_u, h_last_u = model.loss_and_grad(xu, tu, h0=h0u, **kw_u)
        assert loss_u == loss
        assert h_last_u.shape == (H,) and grads_u["h0"].shape == (H,)
        np.testing.assert_array_equal(h_last_u, h_last[0])
        assert grads_u.keys() == grads.keys()
        for k in grads:
            if k == "h0":
                expected = grads[k][0]
            elif k == "x":
                expected = grads[k][0] if batch_first else grads[k][:, 0]
                assert grads_u[k].shape == (T, I)
            else:
                expected = grads[k]
            np.testing.assert_array_equal(grads_u[k], expected, err_msg=k)
    # many-to-one: target () / (O,)
    last_u = tu[-1]
    assert last_u.shape == (out,)
    loss, grads, _ = model.loss_and_grad(x, target[:, -1] if batch_first else target[-1], h0=h0, target_steps="last")
    loss_u, grads_u, _ = model.loss_and_grad(xu, last_u, h0=h0u, target_steps="last")
    assert loss_u == loss
    np.testing.assert_array_equal(grads_u["Whh"], grads["Whh"])
    np.testing.assert_array_equal(grads_u["h0"], grads["h0"][0])


def test_unbatched_cross_entropy_scalar_target(backend, dtype, rng):
    model = make(backend, dtype, output="softmax")
    x, h0, target = data(rng, tokens=True, loss="cross_entropy", b=1)
    loss, grads, _ = model.loss_and_grad(x, target[-1], h0=h0, target_steps="last")
    loss_u, grads_u, _ = model.loss_and_grad(x[:, 0], target[-1, 0], h0=h0[0], target_steps="last")
    assert np.ndim(target[-1, 0]) == 0
    assert loss_u == loss
    np.testing.assert_array_equal(grads_u["Wxh"], grads["Wxh"])
    np.testing.assert_array_equal(grads_u["h0"], grads["h0"][0])
    # and a Python int works
    assert model.loss_and_grad(x[:, 0], int(target[-1, 0]), h0=h0[0], target_steps="last")[0] == loss


def _reference_states(params, x, h0, nonlinearity=np.tanh):
    """h_t = f(x_t Wxh^T + h_{t-1} Whh^T + bh) in float64, step by step."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    h, hs = h0.astype(np.float64), []
    for t in range(x.shape[0]):
        h = nonlinearity(x[t] @ p["Wxh"].T + h @ p["Whh"].T + p["bh"])
        hs.append(h)
    return np.stack(hs)


def test_no_output_layer_returns_states(backend, dtype, rng):
    model = make(backend, dtype, None)
    assert model.output_size is None
    assert set(model.params) == {"Wxh", "Whh", "bh"}
    x, h0, target = data(rng, out=H)
    y, h_last = model.forward(x, h0)
    assert y.shape == (T, B, H) and y.dtype == dtype
    np.testing.assert_array_equal(y[-1], h_last)
    assert_close(y, _reference_states(model.params, x, h0), 50 * TOL[dtype])
    loss, grads, h_last2 = model.loss_and_grad(x, target, h0=h0)
    assert type(loss) is float and np.isfinite(loss)
    assert set(grads) == {"Wxh", "Whh", "bh", "h0", "x"}
    np.testing.assert_array_equal(h_last2, h_last)
    # mse on the states, mean over T*B*H elements
    expected = float(np.mean((y.astype(np.float64) - target) ** 2))
    assert loss == pytest.approx(expected, rel=10 * TOL[dtype])
    with pytest.raises(ValueError, match=r"target: expected shape \(6, 2, 4\)"):
        model.loss_and_grad(x, target[..., :O])


def test_no_output_layer_gradient_matches_finite_differences(backend, rng):
    model = make(backend, np.float64, None)
    x, h0, target = data(rng, out=H)
    _, grads, _ = model.loss_and_grad(x, target, h0=h0, reduction="sum")

    def f():
        y, _ = model.forward(x, h0)
        return float(np.sum((y - target) ** 2))

    for name in ("Wxh", "Whh", "bh"):
        assert_close(grads[name], numeric_grad(f, model.params[name]), 1e-6)


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output_size", [O, None], ids=["output-layer", "no-output-layer"])
@pytest.mark.parametrize("target_steps", ["all", "last"])
def test_grads_keys_shapes_dtypes(backend, dtype, rng, tokens, output_size, target_steps):
    model = make(backend, dtype, output_size)
    out = output_size or H
    x, h0, target = data(rng, tokens=tokens, out=out)
    if target_steps == "last":
        target = target[-1]
    for kw in ({}, {"h0": h0}, {"lengths": [2, T]}, {"truncate": 2}):
        loss, grads, h_last = model.loss_and_grad(x, target, target_steps=target_steps, **kw)
        assert type(loss) is float
        expected_keys = list(model.params) + ["h0"] + ([] if tokens else ["x"])
        assert list(grads) == expected_keys
        for k, g in grads.items():
            assert isinstance(g, np.ndarray) and g.dtype == dtype, k
            if k in model.params:
                assert g.shape == model.params[k].shape, k
        assert grads["h0"].shape == (B, H)
        if not tokens:
            assert grads["x"].shape == (T, B, I)
        assert h_last.shape == (B, H) and h_last.dtype == dtype
        y, _ = model.forward(x, **{k: v for k, v in kw.items() if k != "truncate"})
        assert y.shape == (T, B, out) and y.dtype == dtype


# -------------------------------------------------------------------------------------------
# 5. semantics
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_lengths_equal_separate_runs(backend, dtype, rng, tokens, nonlinearity):
    model = make(backend, dtype, nonlinearity=nonlinearity)
    lengths = np.array([T, 1, 0, 4])
    x, h0, _ = data(rng, tokens=tokens, b=len(lengths))
    y, h_last = model.forward(x, h0, lengths)
    for b, L in enumerate(lengths):
        if L == 0:
            np.testing.assert_array_equal(h_last[b], h0[b].astype(dtype))
            continue
        y_b, h_b = model.forward(x[:L, b], h0[b])
        assert_close(h_last[b], h_b, TOL[dtype])
        assert_close(y[:L, b], y_b, TOL[dtype])
    # the full-length sequence is exactly what runs without lengths
    np.testing.assert_array_equal(h_last[0], model.forward(x, h0)[1][0])


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
@pytest.mark.parametrize("truncate", [None, 2])
def test_loss_and_grad_lengths_equal_separate_runs(backend, dtype, rng, tokens, output, truncate):
    loss = LOSSES_OF_OUTPUT[output]
    model = make(backend, dtype, output=output)
    lengths = np.array([T, 2, 0, 5])
    nb = len(lengths)
    x, h0, target = data(rng, tokens=tokens, loss=loss, b=nb)
    total, grads, h_last = model.loss_and_grad(x, target, h0=h0, lengths=lengths, reduction="sum", truncate=truncate)
    sum_loss = 0.0
    sum_grads = {k: np.zeros(v.shape) for k, v in model.params.items()}
    for b, L in enumerate(lengths):
        if L == 0:
            np.testing.assert_array_equal(h_last[b], h0[b].astype(dtype))
            assert not grads["h0"][b].any()
            if not tokens:
                assert not grads["x"][:, b].any()
            continue
        loss_b, grads_b, h_b = model.loss_and_grad(x[:L, b], target[:L, b], h0=h0[b], reduction="sum", truncate=truncate)
        sum_loss += loss_b
        for k in sum_grads:
            sum_grads[k] += grads_b[k]
        assert_close(h_last[b], h_b, TOL[dtype])
        assert_close(grads["h0"][b], grads_b["h0"], 5 * TOL[dtype])
        if not tokens:
            assert_close(grads["x"][:L, b], grads_b["x"], 5 * TOL[dtype])
            assert not grads["x"][L:, b].any(), "padded steps must get a zero input gradient"
    assert total == pytest.approx(sum_loss, rel=5 * TOL[dtype])
    for k in sum_grads:
        assert_close(grads[k], sum_grads[k], 5 * TOL[dtype])
    # "mean" divides by the count of valid positions (cross-entropy) or elements (mse, bce)
    count = lengths.sum() * (1 if loss == "cross_entropy" else O)
    mean, grads_mean, _ = model.loss_and_grad(x, target, h0=h0, lengths=lengths, truncate=truncate)
    assert mean == pytest.approx(total / count, rel=1e-12)
    for k in grads:
        assert_close(grads_mean[k], grads[k] / count, 5 * TOL[dtype])


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "softmax"])
def test_last_step_with_lengths_equals_separate_runs(backend, dtype, rng, tokens, output):
    loss = LOSSES_OF_OUTPUT[output]
    model = make(backend, dtype, output=output)
    lengths = np.array([T, 1, 3])
    nb = len(lengths)
    x, h0, target = data(rng, tokens=tokens, loss=loss, b=nb)
    last = target[lengths - 1, np.arange(nb)]
    total, grads, _ = model.loss_and_grad(x, last, h0=h0, lengths=lengths, reduction="sum", target_steps="last")
    sum_loss, sum_whh = 0.0, np.zeros((H, H))
    for b, L in enumerate(lengths):
        loss_b, grads_b, _ = model.loss_and_grad(x[:L, b], last[b], h0=h0[b], reduction="sum", target_steps="last")
        sum_loss += loss_b
        sum_whh += grads_b["Whh"]
        assert_close(grads["h0"][b], grads_b["h0"], 5 * TOL[dtype])
    assert total == pytest.approx(sum_loss, rel=5 * TOL[dtype])
    assert_close(grads["Whh"], sum_whh, 5 * TOL[dtype])


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid", "leaky_relu", "identity"])
@pytest.mark.parametrize("lengths", [None, [T, 3]], ids=["full", "padded"])
def test_truncate_beyond_sequence_is_full_bptt(backend, dtype, rng, tokens, nonlinearity, lengths):
    model = make(backend, dtype, nonlinearity=nonlinearity, init="orthogonal" if nonlinearity == "identity" else "uniform")
    x, h0, target = data(rng, tokens=tokens)
    full = model.loss_and_grad(x, target, h0=h0, lengths=lengths)
    for k in (T + 1, T + 3, 1000):
        assert_results_close(model.loss_and_grad(x, target, h0=h0, lengths=lengths, truncate=k), full, 5 * TOL[dtype])
    # a short window really truncates: the recurrent gradient changes
    short = model.loss_and_grad(x, target, h0=h0, lengths=lengths, truncate=1)
    assert short[0] == full[0]
    assert not np.allclose(short[1]["Whh"], full[1]["Whh"], rtol=1e-3, atol=0)


def test_truncate_window_semantics(backend, rng):
    """With truncate=k, the output of step t reaches h0 only if t <= k - 2 (float64)."""
    model = make(backend, np.float64)
    x, h0, target = data(rng)
    for k in range(1, T + 2):
        _, grads, _ = model.loss_and_grad(x, target, h0=h0, truncate=k, reduction="sum")
        # the same gradient from a target that is only "live" at the steps t <= k - 2
        # is obtained by zeroing the error elsewhere: set those targets equal to the outputs
        y, _ = model.forward(x, h0)
        masked = target.copy()
        masked[max(k - 1, 0):] = y[max(k - 1, 0):]
        _, grads_masked, _ = model.loss_and_grad(x, masked, h0=h0, reduction="sum")
        assert_close(grads["h0"], grads_masked["h0"], 1e-12)


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("linear", "cross_entropy"), ("linear", "mse"), ("sigmoid", "mse"), ("sigmoid", "bce"), ("linear", "bce")])
@pytest.mark.parametrize("target_steps", ["all", "last"])
def test_mean_is_sum_over_pytorch_count(backend, dtype, rng, tokens, output, loss, target_steps):
    model = make(backend, dtype, output=output)
    x, h0, target = data(rng, tokens=tokens, loss=loss)
    if target_steps == "last":
        target = target[-1]
    kw = dict(h0=h0, loss=loss, target_steps=target_steps)
    positions = T * B if target_steps == "all" else B
    count = positions * (1 if loss == "cross_entropy" else O)
    s, gs, hs_ = model.loss_and_grad(x, target, reduction="sum", **kw)
    m, gm, hm = model.loss_and_grad(x, target, reduction="mean", **kw)
    assert m == pytest.approx(s / count, rel=1e-12)
    np.testing.assert_array_equal(hm, hs_)
    for k in gs:
        assert_close(gm[k], gs[k] / count, 5 * TOL[dtype])


def test_mean_matches_closed_form(backend, rng):
    """The loss values themselves, from forward's outputs (float64)."""
    x, h0, _ = data(rng)
    for output, loss in (("softmax", "cross_entropy"), ("linear", "mse"), ("sigmoid", "bce"), ("sigmoid", "mse")):
        model = make(backend, np.float64, output=output)
        target = target_for(rng, loss, (T, B))
        y, _ = model.forward(x, h0)
        if loss == "cross_entropy":
            expected = -np.mean(np.log(np.take_along_axis(y, target[..., None], axis=-1)))
        elif loss == "mse":
            expected = np.mean((y - target) ** 2)
        else:
            expected = -np.mean(target * np.log(y) + (1 - target) * np.log1p(-y))
        assert model.loss_and_grad(x, target, h0=h0, loss=loss)[0] == pytest.approx(expected, rel=1e-10), (output, loss)


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
@pytest.mark.parametrize("output", ["linear", "sigmoid"])
def test_last_step_equals_loss_on_last_step_only(backend, dtype, rng, tokens, output):
    """mse with targets equal to the outputs elsewhere has zero error there: only the last
    step counts, which is what target_steps="last" computes."""
    model = make(backend, dtype, output=output)
    x, h0, target = data(rng, tokens=tokens)
    y, _ = model.forward(x, h0)
    only_last = y.astype(np.float64)
    only_last[-1] = target[-1]
    ref = model.loss_and_grad(x, only_last, h0=h0, loss="mse", reduction="sum")
    got = model.loss_and_grad(x, target[-1], h0=h0, loss="mse", reduction="sum", target_steps="last")
    assert_results_close(got, ref, 5 * TOL[dtype])
    # forward runs as one fused kernel, loss_and_grad here on the general path: the outputs
    # agree to rounding (float32 output functions are vectorized approximations), not bitwise
    np.testing.assert_allclose(got[1]["Whh"], ref[1]["Whh"], rtol=5 * TOL[dtype], atol=5 * TOL[dtype])


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
def test_last_step_cross_entropy_finite_differences(backend, rng, tokens):
    model = make(backend, np.float64, output="softmax")
    x, h0, target = data(rng, tokens=tokens, loss="cross_entropy")
    last = target[-1]
    loss, grads, _ = model.loss_and_grad(x, last, h0=h0, target_steps="last")

    def f():
        y, _ = model.forward(x, h0)
        return float(-np.mean(np.log(y[-1, np.arange(B), last])))

    assert loss == pytest.approx(f(), rel=1e-12)
    for name in model.params:
        assert_close(grads[name], numeric_grad(f, model.params[name]), 1e-6)
    h0_var = h0.copy()

    def f_h0():
        y, _ = model.forward(x, h0_var)
        return float(-np.mean(np.log(y[-1, np.arange(B), last])))

    assert_close(grads["h0"], numeric_grad(f_h0, h0_var), 1e-6)


@pytest.mark.parametrize("output, default, other", [("linear", "mse", "bce"), ("sigmoid", "bce", "mse"), ("softmax", "cross_entropy", None)])
def test_default_loss_per_output(backend, dtype, rng, output, default, other):
    model = make(backend, dtype, output=output)
    x, h0, target = data(rng, loss="cross_entropy" if default == "cross_entropy" else "bce")  # valid for both
    got = model.loss_and_grad(x, target, h0=h0)
    assert_same(got, model.loss_and_grad(x, target, h0=h0, loss=default))
    if other is not None:  # the other compatible loss gives another value, so the check can fail
        assert model.loss_and_grad(x, target, h0=h0, loss=other)[0] != got[0]
    else:  # softmax: -mean log p[target]
        y, _ = model.forward(x, h0)
        expected = -np.mean(np.log(np.take_along_axis(y.astype(np.float64), target[..., None], axis=-1)))
        assert got[0] == pytest.approx(expected, rel=10 * TOL[dtype])


def test_dense_and_one_hot_tokens_agree(backend, dtype, rng):
    model = make(backend, dtype, output="softmax")
    x, h0, target = data(rng, tokens=True, loss="cross_entropy")
    one_hot = np.eye(I)[x]
    r_tok = model.loss_and_grad(x, target, h0=h0, lengths=[T, 3])
    r_dense = model.loss_and_grad(one_hot, target, h0=h0, lengths=[T, 3])
    grads_dense = dict(r_dense[1])
    grads_dense.pop("x")
    assert_results_close(r_tok, (r_dense[0], grads_dense, r_dense[2]), 5 * TOL[dtype])


# initialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["uniform", "xavier", "orthogonal", "identity", "normal"])
def test_seeds(backend, dtype, init):
    a = make(backend, dtype, init=init, seed=3)
    b = make(backend, dtype, init=init, seed=3)
    c = make(backend, dtype, init=init, seed=4)
    assert_params_equal(b, a.params)
    random_names = [k for k in a.params if not (init != "uniform" and k in ("bh", "by")) and not (init == "identity" and k == "Whh")]
    assert random_names
    for k in random_names:
        assert not np.array_equal(a.params[k], c.params[k]), k
    # the backend does not change the draw
    other = make("numpy" if backend == "cython" else "cython", dtype, init=init, seed=3)
    assert_params_equal(other, a.params)
    # unseeded models differ
    u1, u2 = RNN(I, H, O, init=init, backend=backend), RNN(I, H, O, init=init, backend=backend)
    assert not np.array_equal(u1.params["Wxh"], u2.params["Wxh"])


@pytest.mark.parametrize("init", ["uniform", "xavier", "orthogonal", "identity", "normal"])
@pytest.mark.parametrize("output_size", [O, None], ids=["output-layer", "no-output-layer"])
def test_params_dtype_and_layout(backend, dtype, init, output_size):
    model = make(backend, dtype, output_size, init=init)
    expected = {"Wxh": (H, I), "Whh": (H, H), "bh": (H,)}
    if output_size:
        expected.update(Why=(O, H), by=(O,))
    assert {k: v.shape for k, v in model.params.items()} == expected
    for k, v in model.params.items():
        assert v.dtype == dtype and v.flags.c_contiguous and v.flags.writeable, k
        assert np.isfinite(v).all()
    assert model.dtype == dtype


BIG_I, BIG_H, BIG_O = 40, 60, 30


def _big(backend, dtype, init, **kw):
    return RNN(BIG_I, BIG_H, BIG_O, init=init, dtype=dtype, backend=backend, seed=11, **kw)


def _assert_uniform(a, bound):
    """Inside (-bound, bound) and filling it (a draw of hundreds of values reaches near both ends)."""
    assert np.abs(a).max() <= bound
    assert a.max() > 0.9 * bound and a.min() < -0.9 * bound
    assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound


def test_init_uniform(backend, dtype):
    p = _big(backend, dtype, "uniform").params
    k = 1 / np.sqrt(BIG_H)
    for name in ("Wxh", "Whh", "Why"):
        _assert_uniform(p[name], k)
    # by ~ U(-k, k) (nn.Linear, fan-in H); bh is the sum of two such draws
    assert np.abs(p["by"]).max() <= k and np.abs(p["bh"]).max() <= 2 * k
    assert np.abs(p["bh"]).max() > k  # really a sum: it leaves (-k, k)
    assert p["bh"].any() and p["by"].any()


def test_init_xavier(backend, dtype):
    p = _big(backend, dtype, "xavier").params
    _assert_uniform(p["Wxh"], np.sqrt(6 / (BIG_I + BIG_H)))
    _assert_uniform(p["Whh"], np.sqrt(6 / (2 * BIG_H)))
    _assert_uniform(p["Why"], np.sqrt(6 / (BIG_H + BIG_O)))
    assert not p["bh"].any() and not p["by"].any()


def test_init_orthogonal(backend, dtype):
    p = _big(backend, dtype, "orthogonal").params
    W = p["Whh"].astype(np.float64)
    eye = np.eye(BIG_H)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(W @ W.T, eye, atol=tol)
    np.testing.assert_allclose(W.T @ W, eye, atol=tol)
    assert not np.allclose(np.abs(W), eye)  # not a signed permutation / identity
    _assert_uniform(p["Wxh"], np.sqrt(6 / (BIG_I + BIG_H)))
    _assert_uniform(p["Why"], np.sqrt(6 / (BIG_H + BIG_O)))
    assert not p["bh"].any() and not p["by"].any()


def test_init_identity(backend, dtype):
    p = _big(backend, dtype, "identity", nonlinearity="relu").params
    np.testing.assert_array_equal(p["Whh"], np.eye(BIG_H))
    for name in ("Wxh", "Why"):
        assert p[name].std() == pytest.approx(1e-3, rel=0.1), name
        assert abs(p[name].mean()) < 2e-4, name
    assert not p["bh"].any() and not p["by"].any()


def test_init_normal(backend, dtype):
    p = _big(backend, dtype, "normal").params
    for name in ("Wxh", "Whh", "Why"):
        assert p[name].std() == pytest.approx(0.01, rel=0.1), name
        assert abs(p[name].mean()) < 2e-3, name
        assert np.abs(p[name]).max() > 0.02  # Gaussian tails, not a uniform in +-0.01
    assert not p["bh"].any() and not p["by"].any()


# -------------------------------------------------------------------------------------------
# 6. torch weight exchange (NumPy arrays only; torch itself is not used here)
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_size", [O, None], ids=["output-layer", "no-output-layer"])
@pytest.mark.parametrize("init", ["uniform", "orthogonal"])
def test_torch_state_round_trip(backend, dtype, output_size, init):
    model = make(backend, dtype, output_size, init=init, nonlinearity="relu")
    state = model.to_torch_state()
    expected_keys = {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"}
    if output_size:
        expected_keys |= {"fc.weight", "fc.bias"}
    assert set(state) == expected_keys
    np.testing.assert_array_equal(state["rnn.bias_ih_l0"], model.params["bh"])
    assert state["rnn.bias_hh_l0"].shape == (H,) and not state["rnn.bias_hh_l0"].any()
    np.testing.assert_array_equal(state["rnn.weight_ih_l0"], model.params["Wxh"])
    np.testing.assert_array_equal(state["rnn.weight_hh_l0"], model.params["Whh"])
    for v in state.values():
        for p in model.params.values():
            assert not np.shares_memory(v, p)
    back = RNN.from_torch(state, dtype=dtype, backend=backend, nonlinearity="relu")
    assert (back.input_size, back.hidden_size, back.output_size) == (I, H, output_size)
    assert back.nonlinearity == "relu" and back.backend == backend
    assert_params_equal(back, model.params)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    assert_same(back.forward(x), model.forward(x))
    # the state dict and the new model are independent
    state["rnn.weight_hh_l0"][...] = 9.0
    assert_params_equal(back, model.params)


def test_from_torch_sums_biases_and_casts(backend, dtype, rng):
    state = _torch_state(rng)
    model = RNN.from_torch(state, dtype=dtype, backend=backend, output="softmax")
    assert model.dtype == dtype and model.output == "softmax"
    np.testing.assert_array_equal(model.params["bh"], (state["rnn.bias_ih_l0"] + state["rnn.bias_hh_l0"]).astype(dtype))
    np.testing.assert_array_equal(model.params["Wxh"], state["rnn.weight_ih_l0"].astype(dtype))
    np.testing.assert_array_equal(model.params["Whh"], state["rnn.weight_hh_l0"].astype(dtype))
    np.testing.assert_array_equal(model.params["Why"], state["fc.weight"].astype(dtype))
    np.testing.assert_array_equal(model.params["by"], state["fc.bias"].astype(dtype))
    for v in model.params.values():
        assert v.dtype == dtype and v.flags.c_contiguous
    # one bias only, or none
    one = dict(state)
    del one["rnn.bias_hh_l0"]
    np.testing.assert_array_equal(RNN.from_torch(one, dtype=dtype).params["bh"], state["rnn.bias_ih_l0"].astype(dtype))
    none = {k: v for k, v in state.items() if "bias_" not in k and k != "fc.bias"}
    m = RNN.from_torch(none, dtype=dtype)
    assert not m.params["bh"].any() and not m.params["by"].any()


@pytest.mark.parametrize(
    "rnn_prefix, out_prefix, output_prefix_arg",
    [("rnn.", "fc.", None), ("", "", None), ("encoder.rnn.", "decoder.", None), ("rnn.", "head.", "head."), ("module.rnn.", "module.fc.", "module.fc.")],
)
def test_from_torch_prefixes(backend, dtype, rng, rnn_prefix, out_prefix, output_prefix_arg):
    state = _torch_state(rng, rnn_prefix, out_prefix)
    model = RNN.from_torch(state, output_prefix=output_prefix_arg, dtype=dtype, backend=backend)
    assert model.output_size == O
    np.testing.assert_array_equal(model.params["Why"], state[out_prefix + "weight"].astype(dtype))
    np.testing.assert_array_equal(model.params["by"], state[out_prefix + "bias"].astype(dtype))
    # to_torch_state with the same prefixes gives the same keys back
    again = model.to_torch_state(rnn_prefix=rnn_prefix, output_prefix=out_prefix)
    assert set(again) == set(state)
    assert_params_equal(RNN.from_torch(again, output_prefix=output_prefix_arg, dtype=dtype), model.params)


def test_from_torch_output_prefix_disambiguates(backend, dtype, rng):
    state = _torch_state(rng)
    state["emb.weight"] = rng.standard_normal((7, I))
    model = RNN.from_torch(state, output_prefix="fc.", dtype=dtype, backend=backend)
    np.testing.assert_array_equal(model.params["Why"], state["fc.weight"].astype(dtype))


def test_from_torch_accepts_lists(backend):
    state = {k: v.tolist() for k, v in _torch_state(np.random.default_rng(0)).items()}
    model = RNN.from_torch(state, dtype="float64", backend=backend)
    np.testing.assert_array_equal(model.params["Whh"], np.array(state["rnn.weight_hh_l0"]))


# -------------------------------------------------------------------------------------------
# 7. backend plumbing
# -------------------------------------------------------------------------------------------


def test_backend_info():
    info = cyrnn.backend_info()
    assert set(info) == {"backend", "reason", "available", "blas", "simd", "threads", "version"}
    assert info["threads"] == cyrnn.get_num_threads() >= 1
    assert info["backend"] == "cython"
    assert tuple(info["available"]) == ("cython", "numpy")
    assert info["version"] == cyrnn.__version__
    assert isinstance(info["reason"], str) and info["reason"]
    assert isinstance(info["blas"], dict) and set(info["blas"]) >= {"numpy", "scipy"}
    simd = info["simd"]
    assert set(simd) == {"own_product_kernel", "elementwise", "blas_threads"}
    assert simd["own_product_kernel"] in ("avx512", "avx2", None)
    assert simd["elementwise"] in ("avx512", "avx2", "baseline")
    assert simd["blas_threads"] == -1 or simd["blas_threads"] >= 1
    # both pick the widest build the CPU runs
    assert simd["own_product_kernel"] == {"baseline": None}.get(simd["elementwise"],
                                                                 simd["elementwise"])


def test_backend_selection(dtype):
    assert RNN(I, H, backend="numpy", dtype=dtype).backend == "numpy"
    assert RNN(I, H, backend="cython", dtype=dtype).backend == "cython"
    assert RNN(I, H, dtype=dtype).backend == cyrnn.backend_info()["backend"] == "cython"
    assert "backend='numpy'" in repr(RNN(I, H, backend="numpy"))


BACKEND_CASES = [
    dict(),
    dict(tokens=True, output="softmax"),
    dict(output="sigmoid"),
    dict(nonlinearity="relu", init="identity"),
    dict(nonlinearity="sigmoid"),
    dict(nonlinearity="leaky_relu", negative_slope=0.2),
    dict(nonlinearity="identity", init="orthogonal"),
    dict(output_size=None),
    dict(lengths=[T, 0, 3, 1]),
    dict(tokens=True, output="softmax", lengths=[2, T, 1, 4], truncate=2),
    dict(truncate=1),
    dict(truncate=3, lengths=[T, 4, 5, 2]),
    dict(target_steps="last", lengths=[T, 4, 5, 2]),
    dict(reduction="sum", batch_first=True),
]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in BACKEND_CASES])
def test_backends_agree(dtype, rng, case):
    case = dict(case)
    tokens = case.pop("tokens", False)
    lengths = case.pop("lengths", None)
    call = {k: case.pop(k) for k in ("truncate", "target_steps", "reduction") if k in case}
    output_size = case.pop("output_size", O)
    output = case.get("output", "linear")
    loss = LOSSES_OF_OUTPUT[output]
    nb = 4
    x, h0, target = data(rng, tokens=tokens, loss=loss, b=nb, out=output_size or H)
    if call.get("target_steps") == "last":
        last = np.full(nb, T) if lengths is None else np.asarray(lengths)
        target = target[last - 1, np.arange(nb)]
    if case.get("batch_first"):
        x, target = np.swapaxes(x, 0, 1), np.swapaxes(target, 0, 1)
    models = {name: RNN(I, H, output_size, backend=name, dtype=dtype, seed=5, **case) for name in ("cython", "numpy")}
    fw = {name: m.forward(x, h0, lengths) for name, m in models.items()}
    res = {name: m.loss_and_grad(x, target, h0=h0, lengths=lengths, **call) for name, m in models.items()}
    assert_results_close(fw["cython"], fw["numpy"], TOL[dtype])
    assert_results_close(res["cython"], res["numpy"], TOL[dtype])
    assert all(np.isfinite(v).all() for v in tree(res["cython"]).values())


def test_env_selects_numpy_default():
    code = (
        "import cyrnn; info = cyrnn.backend_info(); m = cyrnn.RNN(2, 3);"
        "print(info['backend'], info['reason'], m.backend, cyrnn.RNN(2, 3, backend='cython').backend, sep='|')"
    )
    done = run_python(code, CYRNN_BACKEND="numpy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "numpy|CYRNN_BACKEND=numpy|numpy|cython"
    # case and surrounding spaces do not matter
    done = run_python("import cyrnn; print(cyrnn.backend_info()['backend'])", CYRNN_BACKEND=" NumPy ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "numpy"
    # explicit cython and empty behave like the default here
    for value in ("cython", ""):
        done = run_python("import cyrnn; print(cyrnn.backend_info()['backend'], cyrnn.RNN(2, 3).backend)", CYRNN_BACKEND=value)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "cython cython"


def test_env_bogus_backend_fails_clearly():
    done = run_python("import cyrnn", CYRNN_BACKEND="bogus")
    assert done.returncode != 0
    assert "ValueError" in done.stderr
    assert "CYRNN_BACKEND: expected one of cython, numpy, got 'bogus'" in done.stderr


# -------------------------------------------------------------------------------------------
# 8. threads
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
def test_concurrent_training_matches_sequential(backend, dtype, tokens):
    def batches(seed):
        r = np.random.default_rng(seed)
        loss = "cross_entropy" if tokens else "mse"
        return [data(r, tokens=tokens, loss=loss, t=20, b=8) for _ in range(15)]

    output = "softmax" if tokens else "linear"
    work = [(1, batches(100)), (2, batches(200))]

    def fresh(seed):
        return RNN(I, H, O, output=output, backend=backend, dtype=dtype, seed=seed)

    sequential = [sgd_train(fresh(seed), bs) for seed, bs in work]
    assert not np.array_equal(sequential[0]["Whh"], sequential[1]["Whh"])

    for _ in range(3):
        results, errors = [None, None], []
        start = threading.Barrier(2)

        def train(i):
            try:
                seed, bs = work[i]
                model = fresh(seed)
                start.wait()
                results[i] = sgd_train(model, bs)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for got, expected in zip(results, sequential):
            assert got.keys() == expected.keys()
            for k in expected:
                np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_set_params_updates_the_arrays_in_place(backend, dtype, rng):
    """Optimizers hold references to model.params' arrays; set_params must keep them valid."""
    model = make(backend, dtype)
    held = dict(model.params)
    new = {name: rng.normal(size=p.shape) for name, p in model.params.items()}
    model.set_params(new)
    for name, p in model.params.items():
        assert p is held[name]
        np.testing.assert_array_equal(p, new[name].astype(dtype))


@pytest.mark.parametrize("lengths", [None, [6, 3]], ids=["fused", "general"])
def test_input_grad_false_skips_only_the_input_gradient(backend, dtype, rng, lengths):
    model = make(backend, dtype)
    x, h0, target = data(rng)
    loss, grads, h = model.loss_and_grad(x, target, h0=h0, lengths=lengths)
    loss2, grads2, h2 = model.loss_and_grad(x, target, h0=h0, lengths=lengths, input_grad=False)
    assert "x" in grads and "x" not in grads2
    assert loss2 == loss
    for name in grads2:
        np.testing.assert_array_equal(grads2[name], grads[name])
