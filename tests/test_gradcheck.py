"""Central-difference gradient checks of ``RNN.loss_and_grad`` in float64.

Every nonlinearity x loss x input kind x truncation x lengths x target_steps, on both backends.

Full BPTT is checked against the derivative of the model's own loss. A truncated gradient is not
the derivative of the loss, so it is checked against the derivative of the *surrogate* loss that
truncation differentiates: the output at step t is recomputed from the state ``hs[t - k + 1]``
held fixed at its forward value, so only steps ``t - k + 1 .. t`` see the perturbation; the
perturbed ``h0`` is used only when the window reaches past step 0 (``t <= k - 2``).
"""
import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn import _checks
from cyrnn.kernels import numpy_backend

NONLINEARITIES = _checks.NONLINEARITIES  # every nonlinearity the library knows
# (output, loss) pairs: the three defaults, the logits forms, mse through a sigmoid, no output layer
COMBOS = (
    ("softmax", "cross_entropy"),
    ("linear", "mse"),
    ("sigmoid", "bce"),
    ("linear", "cross_entropy"),
    ("linear", "bce"),
    ("sigmoid", "mse"),
    (None, "mse"),
)
T, B, I, H, O = 5, 2, 3, 4, 3
LENGTHS = np.array([5, 3])
EPS = 1e-6


def _activate(a, nonlinearity):
    return numpy_backend._activate(a, _checks.NONLINEARITIES.index(nonlinearity), 0.2)


def _position_loss(z, target, output, loss):
    """The loss of one position (before any mean) from its logits z (O,)."""
    if loss == "cross_entropy":
        m = z.max()
        return m + np.log(np.exp(z - m).sum()) - z[target]
    if loss == "bce":
        return np.sum(np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z))))
    y = 1 / (1 + np.exp(-z)) if output == "sigmoid" else z
    return np.sum((y - target) ** 2)


def _reduced(total, model, positions, loss, reduction):
    """The summed position losses, divided as reduction="mean" does (positions for
    cross-entropy, elements for mse/bce)."""
    if reduction == "mean":
        width = 1 if loss == "cross_entropy" else (model.output_size or H)
        total /= len(positions) * width
    return total


def _surrogate_loss(model, params, x, h0, positions, targets, fixed_hs, window, reduction, loss):
    """Sum (or mean) over loss positions of each output's loss, recomputed through at most
    ``window`` steps from fixed states (``window=None``: from h0, i.e. the true loss)."""
    f = model.nonlinearity
    total = 0.0
    for (t, b), target in zip(positions, targets):
        start = 0 if window is None else t - (window if np.isscalar(window) else window[t]) + 1
        if start < 0 or window is None:
            h, first = h0[b], 0
        else:
            h, first = fixed_hs[start, b], start
        for s in range(first, t + 1):
            xs = params["Wxh"][:, x[s, b]] if x.dtype.kind == "i" else params["Wxh"] @ x[s, b]
            h = _activate(xs + params["bh"] + params["Whh"] @ h, f)
        z = h if model.output_size is None else params["Why"] @ h + params["by"]
        total += _position_loss(z, target, model.output, loss)
    return _reduced(total, model, positions, loss, reduction)


def _numeric(fn, arrays):
    """Central differences of fn() with respect to every entry of every array (perturbed in place)."""
    grads = {}
    for name, a in arrays.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + EPS
            plus = fn()
            a[idx] = keep - EPS
            minus = fn()
            a[idx] = keep
            g[idx] = (plus - minus) / (2 * EPS)
        grads[name] = g
    return grads


def _case(backend, nonlinearity, output, loss, tokens, target_steps, use_lengths, seed=0):
    rng = np.random.default_rng(seed)
    model = cyrnn.RNN(I, H, None if output is None else O, nonlinearity=nonlinearity,
                      negative_slope=0.2, output=output or "linear", dtype="float64", seed=seed,
                      backend=backend)
    x = rng.integers(0, I, (T, B)) if tokens else rng.normal(size=(T, B, I))
    h0 = rng.normal(scale=0.5, size=(B, H))
    lengths = LENGTHS if use_lengths else None
    valid = LENGTHS if use_lengths else np.full(B, T)
    if target_steps == "all":
        positions = [(t, b) for t in range(T) for b in range(B) if t < valid[b]]
    else:
        positions = [(valid[b] - 1, b) for b in range(B)]
    width = O if output is not None else H
    if loss == "cross_entropy":
        full = rng.integers(0, width, (T, B) if target_steps == "all" else (B,))
    else:
        low = 0.0 if loss == "bce" else -1.0
        full = rng.uniform(low, 1.0, ((T, B) if target_steps == "all" else (B,)) + (width,))
    targets = [full[t, b] if target_steps == "all" else full[b] for t, b in positions]
    return model, x, h0, lengths, full, positions, targets


PRODUCT = list(itertools.product(NONLINEARITIES, COMBOS, (False, True), (None, 1, 3),
                                 (False, True), ("all", "last")))


@pytest.mark.parametrize(
    "nonlinearity, combo, tokens, truncate, use_lengths, target_steps", PRODUCT,
    ids=[f"{n}-{c[0]}-{c[1]}-{'tok' if k else 'dense'}-k{t}-{'len' if l else 'full'}-{s}"
         for n, c, k, t, l, s in PRODUCT],
)
def test_gradients_match_central_differences(backend, nonlinearity, combo, tokens, truncate,
                                              use_lengths, target_steps):
    output, loss = combo
    reduction = "mean" if (truncate or 0) % 2 else "sum"  # both reductions across the grid
    model, x, h0, lengths, target, positions, targets = _case(
        backend, nonlinearity, output, loss, tokens, target_steps, use_lengths)
    value, grads, _ = model.loss_and_grad(x, target, h0=h0, lengths=lengths, loss=loss,
                                          reduction=reduction, target_steps=target_steps,
                                          truncate=truncate)
    params = {name: p.copy() for name, p in model.params.items()}
    fixed_hs = model._kernels.rnn_forward(
        *_projection(model, x), h0, model.params["Whh"], nonlinearity, negative_slope=0.2)
    h0_var, x_var = h0.copy(), x.astype(np.float64) if not tokens else x

    def surrogate():
        return _surrogate_loss(model, params, x_var, h0_var, positions, targets, fixed_hs,
                               truncate, reduction, loss)

    # the surrogate at the unperturbed point is the reported loss when nothing is truncated
    if truncate is None:
        assert surrogate() == pytest.approx(value, rel=1e-12)
    variables = dict(params, h0=h0_var)
    if not tokens:
        variables["x"] = x_var
    expected = _numeric(surrogate, variables)
    assert set(grads) == set(expected)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-8, err_msg=name)


def _projection(model, x):
    p = model.params
    xw = p["Wxh"].T[x] if x.dtype.kind == "i" else x @ p["Wxh"].T
    return (xw + p["bh"],)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_full_bptt_is_the_derivative_of_the_models_own_loss(backend, nonlinearity):
    """Independent of the surrogate helper: perturb the model's parameters and call it again."""
    model, x, h0, lengths, target, _, _ = _case(backend, nonlinearity, "softmax", "cross_entropy",
                                                False, "all", True, seed=3)
    _, grads, _ = model.loss_and_grad(x, target, h0=h0, lengths=lengths)
    variables = dict(model.params, h0=h0, x=x)
    expected = _numeric(lambda: model.loss_and_grad(x, target, h0=h0, lengths=lengths)[0], variables)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-8, err_msg=name)


def _carry_surrogate_loss(model, params, x, h0, positions, targets, fixed_hs, carry, reduction, loss):
    """The loss whose derivative a carry scale computes: the state entering step s is
    ``fixed + c_s (h - fixed)``: the same value, with the gradient across the step scaled by c_s."""
    f = model.nonlinearity
    total = 0.0
    for (t, b), target in zip(positions, targets):
        h = h0[b]
        for s in range(t + 1):
            entering = fixed_hs[s, b] + carry[s] * (h - fixed_hs[s, b])
            xs = params["Wxh"][:, x[s, b]] if x.dtype.kind == "i" else params["Wxh"] @ x[s, b]
            h = _activate(xs + params["bh"] + params["Whh"] @ entering, f)
        z = h if model.output_size is None else params["Why"] @ h + params["by"]
        total += _position_loss(z, target, model.output, loss)
    return _reduced(total, model, positions, loss, reduction)


TRUNCATIONS = ("tbptt(2,3)", "tbptt(2,2)", "randomized(0.5)")
SPEC_PRODUCT = list(itertools.product(NONLINEARITIES, COMBOS[:3], (False, True), TRUNCATIONS,
                                      (False, True), ("all", "last")))


@pytest.mark.parametrize(
    "nonlinearity, combo, tokens, spec, use_lengths, target_steps", SPEC_PRODUCT,
    ids=[f"{n}-{c[0]}-{c[1]}-{'tok' if k else 'dense'}-{t}-{'len' if l else 'full'}-{s}"
         for n, c, k, t, l, s in SPEC_PRODUCT],
)
def test_truncation_specs_match_central_differences(backend, nonlinearity, combo, tokens, spec,
                                                    use_lengths, target_steps):
    """TBPTT(k1, k2) as per-output windows, TBPTT(k, k) and randomized truncation as carries."""
    output, loss = combo
    model, x, h0, lengths, target, positions, targets = _case(
        backend, nonlinearity, output, loss, tokens, target_steps, use_lengths)
    if spec == "tbptt(2,3)":
        truncate, windows, carry = cyrnn.TBPTT(2, 3), cyrnn.TBPTT(2, 3).windows(T), None
    elif spec == "tbptt(2,2)":
        truncate, windows, carry = cyrnn.TBPTT(2, 2), None, cyrnn.TBPTT(2, 2).carry(T)
    else:  # the same seed draws the same carries as the one loss_and_grad uses
        truncate = cyrnn.RandomizedTruncation(0.5, seed=11)
        windows, carry = None, cyrnn.RandomizedTruncation(0.5, seed=11).carry(T)
    value, grads, _ = model.loss_and_grad(x, target, h0=h0, lengths=lengths, loss=loss,
                                          reduction="sum", target_steps=target_steps,
                                          truncate=truncate)
    params = {name: p.copy() for name, p in model.params.items()}
    fixed_hs = model._kernels.rnn_forward(
        *_projection(model, x), h0, model.params["Whh"], nonlinearity, negative_slope=0.2)
    h0_var, x_var = h0.copy(), x.astype(np.float64) if not tokens else x
    if carry is None:
        def surrogate():
            return _surrogate_loss(model, params, x_var, h0_var, positions, targets, fixed_hs,
                                   windows, "sum", loss)
    else:
        def surrogate():
            return _carry_surrogate_loss(model, params, x_var, h0_var, positions, targets,
                                         fixed_hs, carry, "sum", loss)
    assert surrogate() == pytest.approx(value, rel=1e-12)
    variables = dict(params, h0=h0_var)
    if not tokens:
        variables["x"] = x_var
    expected = _numeric(surrogate, variables)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-8, err_msg=name)
