"""Kernel-level tests of ``rnn_forward``, ``rnn_backward`` and ``rnn_backward_window``.

Every kernel is checked on both backends (compiled ``cyrnn._rnn`` and ``numpy_backend``) against
references written here from the documented contract, in float64 and with per-sequence loops so
that they share no code with either backend:

- ``ref_forward``: ``h = f(xw[t] + h @ Whh.T)``, frozen after each sequence's length;
- ``ref_backward``: the BPTT recursion of the ``rnn_backward`` docstring;
- ``ref_window``: brute force, every output's error walked back at most ``k`` steps on its own.

The references themselves are validated by central differences of a scalar loss.
"""
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyrnn import _checks, kernels

from conftest import TOL, reference_activation

NONLINEARITIES = _checks.NONLINEARITIES  # every nonlinearity the library knows
SLOPE = 0.2  # negative_slope used for leaky_relu throughout
KERNEL_NAMES = ("rnn_forward", "rnn_backward", "rnn_backward_window")


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


def act(a, nl, slope=SLOPE):
    """f(a) in float64 (the shared reference of conftest)."""
    return reference_activation(a, nl, slope)


def act_prime(h, nl, slope=SLOPE):
    """f'(a) written in terms of h = f(a)."""
    if nl == "tanh":
        return 1.0 - h**2
    if nl == "relu":
        return (h > 0).astype(np.float64)
    if nl == "sigmoid":
        return h * (1.0 - h)
    if nl == "leaky_relu":
        return np.where(h > 0, 1.0, slope)
    return np.ones_like(h)


def seq_lengths(lengths, T, B):
    return [T] * B if lengths is None else [int(n) for n in lengths]


def ref_forward(xw, h0, Whh, nl, slope=SLOPE, lengths=None, bump=None):
    """States ``hs`` (T + 1, B, H) in float64, one sequence at a time.

    ``bump`` (T, B, H), if given, is added to the state right after step t (to differentiate
    the loss with respect to the states by finite differences).
    """
    xw, h0, Whh = (np.asarray(a, dtype=np.float64) for a in (xw, h0, Whh))
    T, B, H = xw.shape
    hs = np.empty((T + 1, B, H))
    hs[0] = h0
    for b, L in enumerate(seq_lengths(lengths, T, B)):
        h = h0[b].copy()
        for t in range(T):
            if t < L:
                h = act(xw[t, b] + h @ Whh.T, nl, slope)
            if bump is not None:
                h = h + bump[t, b]
            hs[t + 1, b] = h
    return hs


def ref_backward(dh_out, hs, Whh, nl, slope=SLOPE, dh_last=None, carry=None, lengths=None):
    """``(da, dh0, grad_norms)`` by the docstring recursion, one sequence at a time.

    Padded steps ignore ``dh_out``, have ``da = 0`` and pass ``g`` through unscaled by carry.
    """
    dh_out, hs, Whh = (np.asarray(a, dtype=np.float64) for a in (dh_out, hs, Whh))
    T, B, H = dh_out.shape
    carry = np.ones(T) if carry is None else np.asarray(carry, dtype=np.float64)
    da = np.zeros((T, B, H))
    dh0 = np.zeros((B, H))
    g_state = np.zeros((T, B, H))  # total dL/dh for the state after step t
    for b, L in enumerate(seq_lengths(lengths, T, B)):
        g = np.zeros(H) if dh_last is None else np.asarray(dh_last[b], dtype=np.float64).copy()
        for t in range(T - 1, -1, -1):
            if t < L:
                g = g + dh_out[t, b]
                g_state[t, b] = g
                da[t, b] = g * act_prime(hs[t + 1, b], nl, slope)
                g = carry[t] * (da[t, b] @ Whh)
            else:
                g_state[t, b] = g
        dh0[b] = g
    grad_norms = np.sqrt((g_state**2).sum(axis=(1, 2)))
    return da, dh0, grad_norms


def ref_window(dh_out, hs, Whh, k, nl, slope=SLOPE, dh_last=None, lengths=None):
    """``(da, dh0)`` by brute force: each output's error alone, walked back through steps
    ``t, t-1, ..., t-k+1``; it reaches ``h0`` only when ``t <= k - 2``. ``dh_last`` is extra error
    on each sequence's last valid step (straight into ``dh0`` for a sequence of length 0)."""
    dh_out, hs, Whh = (np.asarray(a, dtype=np.float64) for a in (dh_out, hs, Whh))
    T, B, H = dh_out.shape
    da = np.zeros((T, B, H))
    dh0 = np.zeros((B, H))
    for b, L in enumerate(seq_lengths(lengths, T, B)):
        if dh_last is not None and L == 0:
            dh0[b] += dh_last[b]
        for t in range(L):
            delta = dh_out[t, b].copy()
            if dh_last is not None and t == L - 1:
                delta += dh_last[b]
            for s in range(t, max(t - k + 1, 0) - 1, -1):
                d = delta * act_prime(hs[s + 1, b], nl, slope)
                da[s, b] += d
                delta = d @ Whh
            if t <= k - 2:
                dh0[b] += delta
    return da, dh0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def get(backend):
    return kernels.get_backend(backend)


def make_inputs(rng, T, B, H, dtype=np.float64, radius=0.9):
    """Random ``xw, h0, Whh`` (Whh of spectral radius about ``radius``)."""
    xw = rng.normal(size=(T, B, H))
    h0 = rng.normal(scale=0.5, size=(B, H))
    Whh = rng.normal(size=(H, H)) * (radius / np.sqrt(H))
    return xw.astype(dtype), h0.astype(dtype), Whh.astype(dtype)


def make_backward_inputs(rng, T, B, H, dtype, nl, lengths=None):
    """``(dh_out, hs, Whh, dh_last)``, with ``hs`` true states of the forward recurrence."""
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    hs = ref_forward(xw, h0, Whh, nl, lengths=lengths).astype(dtype)
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    dh_last = rng.normal(size=(B, H)).astype(dtype)
    return dh_out, hs, Whh, dh_last


def assert_close(actual, expected, tol, err_msg=""):
    """Elementwise ``|actual - expected| <= tol * (|expected| + max|expected|)``."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, err_msg
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(
        actual, expected, rtol=tol, atol=tol * (scale if scale > 0 else 1.0), err_msg=err_msg
    )


def numgrad(fun, x, eps=1e-6):
    """Central-difference gradient of the scalar ``fun()`` w.r.t. the array ``x`` (in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        orig = x[idx]
        x[idx] = orig + eps
        plus = fun()
        x[idx] = orig - eps
        minus = fun()
        x[idx] = orig
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def valid_mask(lengths, T, B):
    """(T, B, 1) float mask of the non-padded steps."""
    if lengths is None:
        return np.ones((T, B, 1))
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None].astype(np.float64)


T_, B_, H_ = 6, 3, 5  # default non-square problem
LENGTHS = np.array([0, 6, 3, 1, 5])  # B = 5: empty, full, and partial sequences


# ---------------------------------------------------------------------------------------------
# 0. backend selection
# ---------------------------------------------------------------------------------------------


def test_get_backend_returns_both_kernel_sets():
    assert kernels.get_backend("numpy") is kernels.numpy_kernels
    assert kernels.get_backend("cython") is kernels.cython_kernels
    assert kernels.get_backend("numpy").rnn_forward is kernels.numpy_backend.rnn_forward
    assert kernels.get_backend("cython").rnn_forward is kernels.cython_backend.rnn_forward
    for name in ("cython", "numpy"):
        for fn in KERNEL_NAMES:
            assert callable(getattr(kernels.get_backend(name), fn))
    with pytest.raises(ValueError, match="backend: expected one of cython, numpy"):
        kernels.get_backend("torch")


# ---------------------------------------------------------------------------------------------
# 1. forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_forward_matches_reference(backend, dtype, nl, rng):
    xw, h0, Whh = make_inputs(rng, T_, B_, H_, dtype)
    hs = get(backend).rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE)
    assert hs.shape == (T_ + 1, B_, H_)
    assert hs.dtype == dtype
    assert hs.flags.c_contiguous
    np.testing.assert_array_equal(hs[0], h0)
    assert_close(hs, ref_forward(xw, h0, Whh, nl), TOL[dtype])


def test_forward_default_nonlinearity_and_slope(backend, dtype, rng):
    """Defaults are tanh and ``negative_slope=0.01``."""
    k = get(backend)
    xw, h0, Whh = make_inputs(rng, T_, B_, H_, dtype)
    assert_close(k.rnn_forward(xw, h0, Whh), ref_forward(xw, h0, Whh, "tanh"), TOL[dtype])
    hs = k.rnn_forward(xw, h0, Whh, "leaky_relu")
    assert_close(hs, ref_forward(xw, h0, Whh, "leaky_relu", slope=0.01), TOL[dtype])
    # and the slope argument matters
    assert not np.allclose(hs, k.rnn_forward(xw, h0, Whh, "leaky_relu", negative_slope=SLOPE))


@pytest.mark.parametrize("shape", [(1, 3, 5), (6, 1, 5), (6, 3, 1), (1, 1, 1), (4, 7, 2)])
@pytest.mark.parametrize("nl", ["tanh", "leaky_relu"])
def test_forward_edge_shapes(backend, dtype, shape, nl, rng):
    xw, h0, Whh = make_inputs(rng, *shape, dtype)
    hs = get(backend).rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE)
    assert hs.shape == (shape[0] + 1,) + shape[1:]
    assert_close(hs, ref_forward(xw, h0, Whh, nl), TOL[dtype])


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_forward_ragged_lengths(backend, dtype, nl, rng):
    """Frozen sequences keep their state; each equals that sequence run alone for its length."""
    k = get(backend)
    T, B, H = 6, len(LENGTHS), 4
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    hs = k.rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE, lengths=LENGTHS)
    assert_close(hs, ref_forward(xw, h0, Whh, nl, lengths=LENGTHS), TOL[dtype])
    for b, L in enumerate(LENGTHS):
        # frozen: bitwise copies of the last valid state
        for t in range(L, T + 1):
            np.testing.assert_array_equal(hs[t, b], hs[L, b])
        if L == 0:
            np.testing.assert_array_equal(hs[:, b], np.broadcast_to(h0[b], (T + 1, H)))
            continue
        alone = k.rnn_forward(xw[:L, b : b + 1], h0[b : b + 1], Whh, nl, negative_slope=SLOPE)
        assert_close(hs[: L + 1, b], alone[:, 0], TOL[dtype], err_msg=f"sequence {b}")
    # full lengths equal no lengths
    full = k.rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE, lengths=np.full(B, T))
    np.testing.assert_array_equal(full, k.rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE))


@pytest.mark.parametrize("lengths", [None, LENGTHS[:3]])
def test_forward_out_buffer(backend, dtype, lengths, rng):
    k = get(backend)
    xw, h0, Whh = make_inputs(rng, T_, B_, H_, dtype)
    out = np.full((T_ + 1, B_, H_), np.nan, dtype=dtype)
    hs = k.rnn_forward(xw, h0, Whh, "tanh", lengths=lengths, out=out)
    assert hs is out
    np.testing.assert_array_equal(out, k.rnn_forward(xw, h0, Whh, "tanh", lengths=lengths))


# ---------------------------------------------------------------------------------------------
# 2. full BPTT
# ---------------------------------------------------------------------------------------------

BACKWARD_CASES = {
    "plain": dict(),
    "dh_last": dict(dh_last=True),
    "carry": dict(carry=[1.0, 0.5, 0.0, 2.0, -1.0, 1.5]),
    "lengths": dict(lengths=LENGTHS),
    "all": dict(dh_last=True, carry=[1.0, 0.5, 0.0, 2.0, -1.0, 1.5], lengths=LENGTHS),
}


@pytest.mark.parametrize("case", BACKWARD_CASES)
@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_backward_matches_reference(backend, dtype, nl, case, rng):
    opts = BACKWARD_CASES[case]
    lengths = opts.get("lengths")
    T, B, H = 6, 5, 4
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, T, B, H, dtype, nl, lengths)
    dh_last = dh_last if opts.get("dh_last") else None
    carry = opts.get("carry")
    da, dh0, norms = get(backend).rnn_backward(
        dh_out, hs, Whh, nl, negative_slope=SLOPE, dh_last=dh_last, carry=carry, lengths=lengths
    )
    assert da.shape == (T, B, H) and dh0.shape == (B, H) and norms.shape == (T,)
    assert da.dtype == dh0.dtype == norms.dtype == dtype
    r_da, r_dh0, r_norms = ref_backward(dh_out, hs, Whh, nl, SLOPE, dh_last, carry, lengths)
    tol = TOL[dtype]
    assert_close(da, r_da, tol, "da")
    assert_close(dh0, r_dh0, tol, "dh0")
    assert_close(norms, r_norms, tol, "grad_norms")
    if lengths is not None:
        # padded steps: exactly zero da
        pad = valid_mask(lengths, T, B)[..., 0] == 0
        assert np.all(da[pad] == 0)


def _pre_activation_margin(xw, hs, Whh, lengths):
    T, B, _ = xw.shape
    a = xw + np.einsum("tbj,ij->tbi", hs[:-1], Whh)
    return np.abs(a[valid_mask(lengths, T, B)[..., 0] > 0]).min()


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_backward_gradient_check(backend, nl, with_lengths, rng):
    """Central differences of ``L = sum(hs[1:] * R) + sum(hs[-1] * R_last)`` (float64).

    ``da == dL/dxw`` (xw enters the pre-activation additively), ``dh0 == dL/dh0``, and
    ``grad_norms[t] == ||dL/dhs[t + 1]||``. With lengths, outputs on padded steps do not enter
    the loss, and the kernel must ignore ``dh_out`` there (it is passed unmasked).
    """
    T, B, H = 6, 4, 3
    lengths = np.array([0, 6, 2, 4]) if with_lengths else None
    xw, h0, Whh = make_inputs(rng, T, B, H, np.float64)
    if nl in ("relu", "leaky_relu"):
        assert _pre_activation_margin(xw, ref_forward(xw, h0, Whh, nl, lengths=lengths),
                                      Whh, lengths) > 1e-3, "test input too close to the kink"
    R = rng.normal(size=(T, B, H))
    R_last = rng.normal(size=(B, H))
    mask = valid_mask(lengths, T, B)
    bump = np.zeros((T, B, H))

    def loss():
        hs = ref_forward(xw, h0, Whh, nl, lengths=lengths, bump=bump)
        return np.sum(hs[1:] * R * mask) + np.sum(hs[-1] * R_last)

    k = get(backend)
    hs = k.rnn_forward(xw, h0, Whh, nl, negative_slope=SLOPE, lengths=lengths)
    da, dh0, norms = k.rnn_backward(
        R, hs, Whh, nl, negative_slope=SLOPE, dh_last=R_last, lengths=lengths
    )
    assert_close(da, numgrad(loss, xw), 1e-6, "da vs dL/dxw")
    assert_close(dh0, numgrad(loss, h0), 1e-6, "dh0 vs dL/dh0")
    g_states = numgrad(loss, bump)
    assert_close(norms, np.sqrt((g_states**2).sum(axis=(1, 2))), 1e-6, "grad_norms")
    # the docstring reference agrees as well
    r_da, r_dh0, r_norms = ref_backward(R, hs, Whh, nl, SLOPE, R_last, None, lengths)
    assert_close(da, r_da, 1e-12)
    assert_close(dh0, r_dh0, 1e-12)


def test_backward_gradient_check_window_full(backend, rng):
    """``rnn_backward_window`` with ``window = T + 1`` is also the exact gradient."""
    T, B, H = 5, 3, 4
    lengths = np.array([5, 0, 3])
    xw, h0, Whh = make_inputs(rng, T, B, H, np.float64)
    R, R_last = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    mask = valid_mask(lengths, T, B)

    def loss():
        hs = ref_forward(xw, h0, Whh, "sigmoid", lengths=lengths)
        return np.sum(hs[1:] * R * mask) + np.sum(hs[-1] * R_last)

    k = get(backend)
    hs = k.rnn_forward(xw, h0, Whh, "sigmoid", lengths=lengths)
    da, dh0 = k.rnn_backward_window(R, hs, Whh, T + 1, "sigmoid", dh_last=R_last, lengths=lengths)
    assert_close(da, numgrad(loss, xw), 1e-6)
    assert_close(dh0, numgrad(loss, h0), 1e-6)


# ---------------------------------------------------------------------------------------------
# 3. carry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_carry_ones_equals_no_carry(backend, dtype, lengths, rng):
    k = get(backend)
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, 6, 5, 4, dtype, "tanh", lengths)
    plain = k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last, lengths=lengths)
    ones = k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last, lengths=lengths, carry=np.ones(6))
    for a, b in zip(plain, ones):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_carry_zero_splits_into_independent_chunks(backend, dtype, nl, rng):
    """carry = 0 at chunk starts == backward run separately on each chunk (no crossing)."""
    k = get(backend)
    T, B, H = 9, 3, 5
    starts = [0, 3, 7]
    ends = starts[1:] + [T]
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, T, B, H, dtype, nl)
    carry = np.ones(T)
    carry[starts[1:]] = 0.0
    da, dh0, norms = k.rnn_backward(dh_out, hs, Whh, nl, dh_last=dh_last, carry=carry)
    for s, e in zip(starts, ends):
        c_da, c_dh0, c_norms = k.rnn_backward(
            dh_out[s:e], hs[s : e + 1], Whh, nl, dh_last=dh_last if e == T else None
        )
        assert_close(da[s:e], c_da, TOL[dtype], f"chunk {s}:{e}")
        assert_close(norms[s:e], c_norms, TOL[dtype], f"chunk {s}:{e}")
        if s == 0:
            assert_close(dh0, c_dh0, TOL[dtype])
    # and the truncation did change something
    full_da = k.rnn_backward(dh_out, hs, Whh, nl, dh_last=dh_last)[0]
    assert not np.allclose(full_da[:7], da[:7])


def test_carry_zero_at_step0_gives_zero_dh0(backend, dtype, rng):
    k = get(backend)
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, 6, 3, 5, dtype, "tanh")
    carry = np.ones(6)
    carry[0] = 0
    da, dh0, _ = k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last, carry=carry)
    assert np.all(dh0 == 0)
    # da is untouched by the carry at step 0
    np.testing.assert_array_equal(da, k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last)[0])


def test_carry_does_not_scale_padded_steps(backend, dtype, rng):
    """Frozen steps pass gradients through unscaled: a length-0 sequence gets dh0 == dh_last
    even with carry 0 everywhere; the others get dh0 == 0."""
    k = get(backend)
    lengths = np.array([0, 6, 2])
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, 6, 3, 4, dtype, "tanh", lengths)
    da, dh0, _ = k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last, carry=np.zeros(6),
                                lengths=lengths)
    np.testing.assert_array_equal(dh0[0], dh_last[0])
    assert np.all(dh0[1:] == 0)
    # with carry 0 everywhere, each valid step's da is its own output's error only...
    fp = 1 - hs[1:].astype(np.float64) ** 2
    expected = dh_out * fp * valid_mask(lengths, 6, 3)
    # ...plus dh_last on the last valid step, carried unscaled through the padding
    expected[1, 2] += dh_last[2] * fp[1, 2]
    expected[5, 1] += dh_last[1] * fp[5, 1]
    assert_close(da, expected, TOL[dtype])


# ---------------------------------------------------------------------------------------------
# 4. windowed BPTT
# ---------------------------------------------------------------------------------------------

WINDOW_OPTS = {
    "plain": dict(),
    "dh_last": dict(dh_last=True),
    "lengths": dict(lengths=LENGTHS),
    "lengths+dh_last": dict(dh_last=True, lengths=LENGTHS),
}


@pytest.mark.parametrize("opts", WINDOW_OPTS)
@pytest.mark.parametrize("extra", [1, 2, 10], ids=lambda e: f"T+{e}")
def test_window_at_least_T_plus_1_is_full_bptt(backend, dtype, extra, opts, rng):
    k = get(backend)
    o = WINDOW_OPTS[opts]
    lengths = o.get("lengths")
    T, B, H = 6, 5, 4
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, T, B, H, dtype, "tanh", lengths)
    dh_last = dh_last if o.get("dh_last") else None
    da, dh0 = k.rnn_backward_window(dh_out, hs, Whh, T + extra, dh_last=dh_last, lengths=lengths)
    f_da, f_dh0, _ = k.rnn_backward(dh_out, hs, Whh, dh_last=dh_last, lengths=lengths)
    assert da.dtype == dh0.dtype == dtype
    assert_close(da, f_da, TOL[dtype], "da")
    assert_close(dh0, f_dh0, TOL[dtype], "dh0")


@pytest.mark.parametrize("opts", WINDOW_OPTS)
@pytest.mark.parametrize("window", ["1", "2", "3", "T-1", "T", "T+1"])  # T = 6
@pytest.mark.parametrize("nl", ["tanh", "leaky_relu", "sigmoid"])
def test_window_matches_bruteforce(backend, dtype, nl, window, opts, rng):
    k = get(backend)
    o = WINDOW_OPTS[opts]
    lengths = o.get("lengths")
    T, B, H = 6, 5, 4
    win = {"1": 1, "2": 2, "3": 3, "T-1": T - 1, "T": T, "T+1": T + 1}[window]
    dh_out, hs, Whh, dh_last = make_backward_inputs(rng, T, B, H, dtype, nl, lengths)
    dh_last = dh_last if o.get("dh_last") else None
    da, dh0 = k.rnn_backward_window(
        dh_out, hs, Whh, win, nl, negative_slope=SLOPE, dh_last=dh_last, lengths=lengths
    )
    r_da, r_dh0 = ref_window(dh_out, hs, Whh, win, nl, SLOPE, dh_last, lengths)
    assert_close(da, r_da, TOL[dtype], "da")
    assert_close(dh0, r_dh0, TOL[dtype], "dh0")


def test_window_T_differs_from_T_plus_1_only_in_dh0(backend, rng):
    """Window T covers every step but not h0 for the last output."""
    k = get(backend)
    T = 6
    dh_out, hs, Whh, _ = make_backward_inputs(rng, T, 3, 4, np.float64, "tanh")
    da_T, dh0_T = k.rnn_backward_window(dh_out, hs, Whh, T)
    da_T1, dh0_T1 = k.rnn_backward_window(dh_out, hs, Whh, T + 1)
    assert_close(da_T, da_T1, 1e-12)
    assert not np.allclose(dh0_T, dh0_T1)


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_window_one_is_local(backend, dtype, nl, rng):
    """window=1: ``da = dh_out * f'(h)`` and ``dh0 = 0``."""
    k = get(backend)
    dh_out, hs, Whh, _ = make_backward_inputs(rng, T_, B_, H_, dtype, nl)
    da, dh0 = k.rnn_backward_window(dh_out, hs, Whh, 1, nl, negative_slope=SLOPE)
    expected = dh_out.astype(np.float64) * act_prime(hs[1:].astype(np.float64), nl)
    assert_close(da, expected, TOL[dtype])
    assert np.all(dh0 == 0)


# ---------------------------------------------------------------------------------------------
# 5. Cython vs NumPy parity
# ---------------------------------------------------------------------------------------------


def _both():
    return kernels.get_backend("cython"), kernels.get_backend("numpy")


def _assert_parity(T, B, H, dtype, nl, rng, tol, lengths=None, window=3):
    cy, nu = _both()
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    kw = dict(negative_slope=SLOPE, lengths=lengths)
    hs_c = cy.rnn_forward(xw, h0, Whh, nl, **kw)
    hs_n = nu.rnn_forward(xw, h0, Whh, nl, **kw)
    assert_close(hs_c, hs_n, tol, "forward")
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    dh_last = rng.normal(size=(B, H)).astype(dtype)
    carry = rng.uniform(0, 2, size=T)
    # feed the same states to both backward kernels
    for c, n, name in zip(
        cy.rnn_backward(dh_out, hs_n, Whh, nl, dh_last=dh_last, carry=carry, **kw),
        nu.rnn_backward(dh_out, hs_n, Whh, nl, dh_last=dh_last, carry=carry, **kw),
        ("da", "dh0", "grad_norms"),
    ):
        assert_close(c, n, tol, f"backward {name}")
    for c, n, name in zip(
        cy.rnn_backward_window(dh_out, hs_n, Whh, window, nl, dh_last=dh_last, **kw),
        nu.rnn_backward_window(dh_out, hs_n, Whh, window, nl, dh_last=dh_last, **kw),
        ("da", "dh0"),
    ):
        assert_close(c, n, tol, f"window {name}")


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_parity_random(dtype, nl, with_lengths, rng):
    B = 5
    lengths = LENGTHS if with_lengths else None
    _assert_parity(6, B, 7, dtype, nl, rng, TOL[dtype], lengths=lengths)


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_parity_long_sequence(dtype, nl, rng):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    lengths = np.array([200, 0, 137, 1, 199, 50, 200, 3])
    _assert_parity(200, 8, 16, dtype, nl, rng, tol, lengths=lengths, window=25)


# ---------------------------------------------------------------------------------------------
# 6. float32 tanh / sigmoid accuracy
# ---------------------------------------------------------------------------------------------

SPECIAL = [0.0, 1e-8, -1e-8, 7.9, -7.9, 8.0, -8.0, 30.0, -30.0, 1e30, -1e30, np.inf, -np.inf]


def _activation_f32(backend, x, nl):
    """f(x) elementwise through ``rnn_forward`` (T=1, Whh=0, h0=0)."""
    x = np.asarray(x, dtype=np.float32)
    xw = x.reshape(1, -1, 1)
    hs = get(backend).rnn_forward(
        xw, np.zeros((x.size, 1), np.float32), np.zeros((1, 1), np.float32), nl
    )
    return hs[1].reshape(x.shape)


def _grid():
    return np.concatenate([np.linspace(-20, 20, 400_001), SPECIAL]).astype(np.float32)


def test_float32_tanh_accuracy(backend):
    x = _grid()
    y = _activation_f32(backend, x, "tanh")
    assert y.dtype == np.float32
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(y - exact).max() <= 2e-6
    assert y.min() >= -1 and y.max() <= 1
    assert y[x == 0][0] == 0
    # odd symmetry, bitwise
    np.testing.assert_array_equal(_activation_f32(backend, -x, "tanh"), -y)


def test_float32_sigmoid_accuracy(backend):
    x = _grid()
    y = _activation_f32(backend, x, "sigmoid")
    assert y.dtype == np.float32
    x64 = x.astype(np.float64)
    exact = np.exp(-np.logaddexp(0, -x64))  # 1 / (1 + exp(-x)) without overflow
    assert np.abs(y - exact).max() <= 2e-6
    assert y.min() >= 0 and y.max() <= 1
    assert_close(y + _activation_f32(backend, -x, "sigmoid"), np.ones_like(x64), 2e-6)


@pytest.mark.parametrize("nl", ["tanh", "sigmoid", "relu", "leaky_relu", "identity"])
def test_nan_propagates(backend, dtype, nl):
    xw = np.array([np.nan, 0.5, np.nan, -3.0], dtype=dtype).reshape(1, 4, 1)
    hs = get(backend).rnn_forward(xw, np.zeros((4, 1), dtype), np.zeros((1, 1), dtype), nl)
    np.testing.assert_array_equal(np.isnan(hs[1, :, 0]), [True, False, True, False])


# ---------------------------------------------------------------------------------------------
# 7. input handling
# ---------------------------------------------------------------------------------------------


def _all_kernel_calls(k, xw, h0, Whh, dh_out, hs, dh_last, carry, lengths, out=None):
    """Run every kernel once with every optional argument; return all results."""
    fwd = k.rnn_forward(xw, h0, Whh, "leaky_relu", negative_slope=SLOPE, lengths=lengths, out=out)
    bwd = k.rnn_backward(dh_out, hs, Whh, "leaky_relu", negative_slope=SLOPE, dh_last=dh_last,
                         carry=carry, lengths=lengths)
    win = k.rnn_backward_window(dh_out, hs, Whh, 2, "leaky_relu", negative_slope=SLOPE,
                                dh_last=dh_last, lengths=lengths)
    return (fwd,) + tuple(bwd) + tuple(win)


def _standard_args(rng, dtype):
    T, B, H = 6, 5, 4
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    hs = ref_forward(xw, h0, Whh, "leaky_relu", lengths=LENGTHS).astype(dtype)
    return dict(
        xw=xw, h0=h0, Whh=Whh, dh_out=rng.normal(size=(T, B, H)).astype(dtype), hs=hs,
        dh_last=rng.normal(size=(B, H)).astype(dtype), carry=rng.uniform(0, 1, T),
        lengths=LENGTHS.copy(),
    )


def test_readonly_inputs(backend, dtype, rng):
    k = get(backend)
    args = _standard_args(rng, dtype)
    expected = _all_kernel_calls(k, **{n: a.copy() for n, a in args.items()})
    for a in args.values():
        a.setflags(write=False)
    got = _all_kernel_calls(k, **args)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_inputs_not_mutated(backend, dtype, rng):
    k = get(backend)
    args = _standard_args(rng, dtype)
    before = {n: a.copy() for n, a in args.items()}
    _all_kernel_calls(k, **args, out=np.empty((7, 5, 4), dtype))
    # also the window path without dh_last, where the error is dh_out itself
    k.rnn_backward_window(args["dh_out"], args["hs"], args["Whh"], 3)
    k.rnn_backward(args["dh_out"], args["hs"], args["Whh"])
    for name, a in args.items():
        np.testing.assert_array_equal(a, before[name], err_msg=name)


def _strided_copy(a):
    """A non-contiguous array with the values of ``a``."""
    if a.ndim == 1:
        big = np.zeros(2 * a.size, dtype=a.dtype)
        big[::2] = a
        return big[::2]
    if a.ndim == 2:
        return np.asfortranarray(a)
    return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)  # (B, T, H) in memory


def test_non_contiguous_inputs(backend, dtype, rng):
    k = get(backend)
    args = _standard_args(rng, dtype)
    strided = {n: _strided_copy(a) for n, a in args.items()}
    for n, a in strided.items():
        assert not a.flags.c_contiguous, n
        np.testing.assert_array_equal(a, args[n])
    # a sliced (H, H) view as well
    big = np.zeros((8, 8), dtype)
    big[::2, ::2] = args["Whh"]
    strided["Whh"] = big[::2, ::2]
    assert not strided["Whh"].flags.c_contiguous
    for g, e in zip(_all_kernel_calls(k, **strided), _all_kernel_calls(k, **args)):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("lengths", [
    [0, 6, 3, 1, 5],
    np.array([0, 6, 3, 1, 5], dtype=np.int32),
    np.array([0, 6, 3, 1, 5], dtype=np.uint8),
], ids=["list", "int32", "uint8"])
def test_lengths_accepts_any_integer_type(backend, lengths, rng):
    k = get(backend)
    args = _standard_args(rng, np.float64)
    expected = _all_kernel_calls(k, **args)
    got = _all_kernel_calls(k, **{**args, "lengths": lengths})
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def _call(k, kernel, **kw):
    """Call ``kernel`` on valid float64 arguments (T=6, B=3, H=5), overridden by ``kw``."""
    rng = np.random.default_rng(0)
    T, B, H = 6, 3, 5
    base = {
        "rnn_forward": dict(xw=np.zeros((T, B, H)), h0=np.zeros((B, H)), Whh=np.zeros((H, H))),
        "rnn_backward": dict(dh_out=rng.normal(size=(T, B, H)), hs=np.zeros((T + 1, B, H)),
                             Whh=np.zeros((H, H))),
        "rnn_backward_window": dict(dh_out=rng.normal(size=(T, B, H)),
                                    hs=np.zeros((T + 1, B, H)), Whh=np.zeros((H, H)), window=2),
    }[kernel]
    base.update(kw)
    return getattr(k, kernel)(**base)


F, B3, W = "rnn_forward", "rnn_backward", "rnn_backward_window"


@pytest.mark.parametrize("kernel, arg, value, message", [
    (F, "xw", np.zeros((6, 3, 5), np.float32), "h0: expected dtype float32 like the other arrays, got float64"),
    (F, "h0", np.zeros((3, 5), np.float32), "h0: expected dtype float64 like the other arrays, got float32"),
    (F, "Whh", np.zeros((5, 5), np.float32), "Whh: expected dtype float64"),
    (F, "xw", np.zeros((6, 3, 5), np.int64), "xw: expected dtype float32 or float64, got int64"),
    (F, "xw", np.zeros((6, 3, 5), np.float16), "xw: expected dtype float32 or float64, got float16"),
    (F, "xw", np.zeros((6, 3, 5), np.complex128), "xw: expected dtype float32 or float64"),
    (F, "xw", [[[0.0] * 5] * 3] * 6, "xw: expected a numpy.ndarray, got list"),
    (F, "h0", 0.0, "h0: expected a numpy.ndarray, got float"),
    (B3, "hs", np.zeros((7, 3, 5), np.float32), "hs: expected dtype float64"),
    (B3, "Whh", np.zeros((5, 5), np.float32), "Whh: expected dtype float64"),
    (B3, "dh_last", np.zeros((3, 5), np.float32), "dh_last: expected dtype float64"),
    (B3, "dh_out", np.zeros((6, 3, 5), np.int32), "dh_out: expected dtype float32 or float64"),
    (B3, "carry", np.zeros(6, np.complex128), "carry: expected real numbers"),
    (W, "hs", np.zeros((7, 3, 5), np.float32), "hs: expected dtype float64"),
    (W, "dh_last", np.zeros((3, 5), np.float32), "dh_last: expected dtype float64"),
    (F, "lengths", np.array([1.0, 2.0, 3.0]), "lengths: expected integers, got dtype float64"),
    (B3, "lengths", np.array([1.0, 2.0, 3.0]), "lengths: expected integers"),
    (W, "lengths", np.array([True, False, True]), "lengths: expected integers"),
    (W, "window", 2.0, "window: expected an int >= 1 or an array of them (T,), got 2.0"),
    (W, "window", True, "window: expected an int >= 1 or an array of them (T,), got True"),
    (W, "window", "3", "window: expected an int >= 1"),
    (W, "window", None, "window: expected an int >= 1"),
    (F, "out", np.zeros((7, 3, 5), np.float32), "out: expected a numpy.ndarray of dtype float64"),
    (F, "out", [0.0], "out: expected a numpy.ndarray of dtype float64"),
])
def test_type_errors(backend, kernel, arg, value, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        _call(get(backend), kernel, **{arg: value})


@pytest.mark.parametrize("kernel, arg, value, message", [
    (F, "h0", np.zeros((3, 4)), "h0: expected shape (3, 5), got (3, 4)"),
    (F, "h0", np.zeros((5, 3)), "h0: expected shape (3, 5), got (5, 3)"),
    (F, "h0", np.zeros((3, 5, 1)), "h0: expected 2 dimensions, got shape (3, 5, 1)"),
    (F, "Whh", np.zeros((5, 4)), "Whh: expected shape (5, 5), got (5, 4)"),
    (F, "xw", np.zeros((6, 15)), "xw: expected 3 dimensions, got shape (6, 15)"),
    (B3, "hs", np.zeros((6, 3, 5)), "hs: expected shape (7, 3, 5), got (6, 3, 5)"),
    (B3, "Whh", np.zeros((3, 3)), "Whh: expected shape (5, 5), got (3, 3)"),
    (B3, "dh_last", np.zeros((1, 5)), "dh_last: expected shape (3, 5), got (1, 5)"),
    (B3, "carry", np.ones(5), "carry: expected shape (6,), got (5,)"),
    (B3, "carry", np.ones((6, 1)), "carry: expected shape (6,), got (6, 1)"),
    (B3, "carry", np.array([1, 1, np.nan, 1, 1, 1]), "carry: expected finite values"),
    (B3, "carry", np.array([1, 1, np.inf, 1, 1, 1]), "carry: expected finite values"),
    (W, "hs", np.zeros((7, 3, 4)), "hs: expected shape (7, 3, 5), got (7, 3, 4)"),
    (W, "dh_last", np.zeros((3, 4)), "dh_last: expected shape (3, 5), got (3, 4)"),
    (F, "lengths", [0, 7, 3], "lengths: expected values in [0, 6], got min 0 max 7"),
    (F, "lengths", [-1, 6, 3], "lengths: expected values in [0, 6], got min -1 max 6"),
    (F, "lengths", [1, 2], "lengths: expected shape (3,), got (2,)"),
    (F, "lengths", [[1, 2, 3]], "lengths: expected shape (3,), got (1, 3)"),
    (B3, "lengths", [0, 7, 3], "lengths: expected values in [0, 6]"),
    (B3, "lengths", [1, 2, 3, 4], "lengths: expected shape (3,)"),
    (W, "lengths", [0, 1, -2], "lengths: expected values in [0, 6]"),
    (W, "lengths", 3, "lengths: expected shape (3,), got ()"),
    (W, "window", 0, "window: expected an int >= 1, got 0"),
    (W, "window", -3, "window: expected an int >= 1, got -3"),
    (W, "window", np.int64(0), "window: expected an int >= 1, got 0"),
])
def test_value_errors(backend, kernel, arg, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _call(get(backend), kernel, **{arg: value})


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_zero_steps_and_empty_sizes_raise(backend, kernel):
    k = get(backend)
    with pytest.raises(ValueError, match="expected at least one time step, got T = 0"):
        if kernel == "rnn_forward":
            _call(k, kernel, xw=np.zeros((0, 3, 5)))
        else:
            _call(k, kernel, dh_out=np.zeros((0, 3, 5)), hs=np.zeros((1, 3, 5)))
    with pytest.raises(ValueError, match="expected batch and hidden sizes >= 1"):
        if kernel == "rnn_forward":
            _call(k, kernel, xw=np.zeros((6, 0, 5)), h0=np.zeros((0, 5)))
        else:
            _call(k, kernel, dh_out=np.zeros((6, 3, 0)), hs=np.zeros((7, 3, 0)),
                  Whh=np.zeros((0, 0)))


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("bad", ["Tanh", "softmax", "", None])
def test_unknown_nonlinearity(backend, kernel, bad):
    with pytest.raises(ValueError, match=re.escape(
        "nonlinearity: expected one of tanh, relu, sigmoid, leaky_relu, identity, got " + repr(bad)
    )):
        _call(get(backend), kernel, nonlinearity=bad)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("slope", [-0.01, -1, float("nan"), float("inf")])
def test_invalid_negative_slope(backend, kernel, slope):
    with pytest.raises(ValueError, match=re.escape("negative_slope: expected a finite number >= 0")):
        _call(get(backend), kernel, nonlinearity="leaky_relu", negative_slope=slope)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_negative_slope_checked_for_every_nonlinearity(backend, kernel):
    with pytest.raises(ValueError, match=re.escape("negative_slope: expected a finite number >= 0")):
        _call(get(backend), kernel, nonlinearity="tanh", negative_slope=-1)
    with pytest.raises(TypeError, match="negative_slope: expected a number"):
        _call(get(backend), kernel, nonlinearity="leaky_relu", negative_slope="x")


def test_zero_carry_cuts_even_infinite_gradients(backend):
    """carry = 0 means no gradient crosses the boundary at all: 0 * inf must not leak NaN."""
    dh_out = np.array([[[np.inf]], [[1.0]]])
    da, dh0, _ = get(backend).rnn_backward(dh_out, np.zeros((3, 1, 1)), np.ones((1, 1)),
                                           "identity", carry=[0.0, 1.0])
    np.testing.assert_array_equal(dh0, [[0.0]])
    assert np.isinf(da[0]).all()


def test_zero_negative_slope_is_relu(backend, dtype, rng):
    k = get(backend)
    xw, h0, Whh = make_inputs(rng, T_, B_, H_, dtype)
    np.testing.assert_array_equal(
        k.rnn_forward(xw, h0, Whh, "leaky_relu", negative_slope=0.0),
        k.rnn_forward(xw, h0, Whh, "relu"),
    )


def test_out_buffer_errors(backend):
    k = get(backend)
    T, B, H = 6, 3, 5
    ok = dict(xw=np.zeros((T, B, H)), h0=np.zeros((B, H)), Whh=np.zeros((H, H)))
    with pytest.raises(ValueError, match=re.escape("out: expected shape (7, 3, 5), got (6, 3, 5)")):
        k.rnn_forward(**ok, out=np.empty((T, B, H)))
    with pytest.raises(TypeError, match="out: expected a numpy.ndarray of dtype float64"):
        k.rnn_forward(**ok, out=np.empty((T + 1, B, H), np.float32))
    readonly = np.zeros((T + 1, B, H))
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="out: expected a writeable, aligned C-contiguous array"):
        k.rnn_forward(**ok, out=readonly)
    strided = np.zeros((T + 1, B, 2 * H))[:, :, ::2]
    with pytest.raises(ValueError, match="out: expected a writeable, aligned C-contiguous array"):
        k.rnn_forward(**ok, out=strided)
    buf = np.zeros((T + 1, B, H))
    with pytest.raises(ValueError, match="out: must not overlap the inputs"):
        k.rnn_forward(buf[1:], ok["h0"], ok["Whh"], out=buf)
    assert np.all(readonly == 0)


# ---------------------------------------------------------------------------------------------
# 8. GIL release: threads on the compiled backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_threads_match_sequential(dtype, nl):
    """Two threads running the compiled kernels concurrently on independent inputs give the
    sequential results (the nogil sections share no state)."""
    k = kernels.get_backend("cython")
    T, B, H, repeats = 80, 16, 48, 8
    problems = []
    for seed in (1, 2):
        r = np.random.default_rng(seed)
        xw, h0, Whh = make_inputs(r, T, B, H, dtype)
        lengths = r.integers(0, T + 1, size=B)
        dh_out = r.normal(size=(T, B, H)).astype(dtype)
        problems.append((xw, h0, Whh, lengths, dh_out))

    def run(p):
        xw, h0, Whh, lengths, dh_out = p
        hs = k.rnn_forward(xw, h0, Whh, nl, lengths=lengths)
        da, dh0, norms = k.rnn_backward(dh_out, hs, Whh, nl, lengths=lengths, carry=np.ones(T))
        wda, wdh0 = k.rnn_backward_window(dh_out, hs, Whh, 5, nl, lengths=lengths)
        return hs, da, dh0, norms, wda, wdh0

    expected = [run(p) for p in problems]
    results = [[], []]
    errors = []
    barrier = threading.Barrier(2)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(repeats):
                results[i].append(run(problems[i]))
        except BaseException as exc:  # surface failures in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(2):
        assert len(results[i]) == repeats
        for res in results[i]:
            for got, exp in zip(res, expected[i]):
                assert_close(got, exp, TOL[dtype])
    # the two problems really are different
    assert not np.allclose(expected[0][0], expected[1][0])


# ---------------------------------------------------------------------------------------------
# 9. property test: backends agree
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_backends_agree(data):
    T = data.draw(st.integers(1, 8), label="T")
    B = data.draw(st.integers(1, 4), label="B")
    H = data.draw(st.integers(1, 6), label="H")
    nl = data.draw(st.sampled_from(NONLINEARITIES), label="nl")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B),
                        label="lengths")
    use_dh_last = data.draw(st.booleans(), label="dh_last")
    window = data.draw(st.integers(1, T + 2), label="window")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    r = np.random.default_rng(seed)
    lengths = None if lengths is None else np.array(lengths)
    xw, h0, Whh = make_inputs(r, T, B, H, dtype)
    dh_out = r.normal(size=(T, B, H)).astype(dtype)
    dh_last = r.normal(size=(B, H)).astype(dtype) if use_dh_last else None
    carry = r.uniform(0, 2, size=T)
    cy, nu = _both()
    tol = TOL[dtype]
    kw = dict(negative_slope=SLOPE, lengths=lengths)
    hs = nu.rnn_forward(xw, h0, Whh, nl, **kw)
    assert_close(cy.rnn_forward(xw, h0, Whh, nl, **kw), hs, tol, "forward")
    for c, n in zip(cy.rnn_backward(dh_out, hs, Whh, nl, dh_last=dh_last, carry=carry, **kw),
                    nu.rnn_backward(dh_out, hs, Whh, nl, dh_last=dh_last, carry=carry, **kw)):
        assert_close(c, n, tol, "backward")
    for c, n in zip(cy.rnn_backward_window(dh_out, hs, Whh, window, nl, dh_last=dh_last, **kw),
                    nu.rnn_backward_window(dh_out, hs, Whh, window, nl, dh_last=dh_last, **kw)):
        assert_close(c, n, tol, "window")


# ---------------------------------------------------------------------------------------------
# embedding_grad: the gradient of the token-id row gather
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N, V, H", [(1, 1, 1), (25, 65, 100), (40, 3, 7)])
def test_embedding_grad_sums_rows_per_id(backend, dtype, rng, N, V, H):
    ids = rng.integers(0, V, N)
    grad = rng.normal(size=(N, H)).astype(dtype)
    expected = np.zeros((V, H))
    for n in range(N):
        expected[ids[n]] += grad[n]
    dW = get(backend).embedding_grad(ids.astype(np.int32), grad, V)
    assert dW.shape == (V, H) and dW.dtype == dtype
    np.testing.assert_allclose(dW, expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("ids, message", [
    ([0, 3], r"ids: expected values in \[0, 3\), got min 0 max 3"),
    ([-1, 0], r"ids: expected values in \[0, 3\), got min -1 max 0"),
    ([0], r"ids: expected shape \(2,\), got \(1,\)"),
])
def test_embedding_grad_rejects_bad_ids(backend, ids, message):
    with pytest.raises(ValueError, match=message):
        get(backend).embedding_grad(np.array(ids), np.ones((2, 4)), 3)
    with pytest.raises(TypeError, match="ids: expected integers"):
        get(backend).embedding_grad(np.array([0.0, 1.0]), np.ones((2, 4)), 3)


# ---------------------------------------------------------------------------------------------
# per-output windows (TBPTT(k1, k2) within one call)
# ---------------------------------------------------------------------------------------------


def _window_by_output(k, dh_out, hs, Whh, nl, lengths=None):
    """Brute force: each output t alone, with its own look-back k[t], summed."""
    T = dh_out.shape[0]
    da, dh0 = 0, 0
    for t in range(T):
        one = np.zeros_like(dh_out)
        one[t] = dh_out[t]
        d, h = get("numpy").rnn_backward_window(one, hs, Whh, int(k[t]), nl, lengths=lengths)
        da, dh0 = da + d, dh0 + h
    return da, dh0


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_per_output_windows_match_output_by_output(backend, dtype, nl, with_lengths, rng):
    T, B, H = 7, 3, 4
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    lengths = np.array([7, 4, 0]) if with_lengths else None
    hs = get(backend).rnn_forward(xw, h0, Whh, nl, lengths=lengths)
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    windows = np.array([1, 3, 2, 9, 1, 4, 5])
    da, dh0 = get(backend).rnn_backward_window(dh_out, hs, Whh, windows, nl, lengths=lengths)
    ref_da, ref_dh0 = _window_by_output(windows, dh_out, hs, Whh, nl, lengths)
    np.testing.assert_allclose(da, ref_da, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(dh0, ref_dh0, rtol=TOL[dtype], atol=TOL[dtype])


def test_uniform_window_array_equals_int(backend, dtype, rng):
    T, B, H = 6, 2, 3
    xw, h0, Whh = make_inputs(rng, T, B, H, dtype)
    hs = get(backend).rnn_forward(xw, h0, Whh)
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    for k in (1, 3, 7):
        a = get(backend).rnn_backward_window(dh_out, hs, Whh, k)
        b = get(backend).rnn_backward_window(dh_out, hs, Whh, np.full(T, k))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("window, exc, message", [
    (np.array([1, 2]), ValueError, r"window: expected an int or shape \(6,\), got shape \(2,\)"),
    (np.array([1, 2, 0, 1, 1, 1]), ValueError, r"window: expected values >= 1, got 0"),
    (np.ones(6), TypeError, r"window: expected integers, got dtype float64"),
])
def test_bad_window_arrays(backend, window, exc, message):
    T, B, H = 6, 2, 3
    z = np.zeros((T, B, H))
    with pytest.raises(exc, match=message):
        get(backend).rnn_backward_window(z, np.zeros((T + 1, B, H)), np.zeros((H, H)), window)
