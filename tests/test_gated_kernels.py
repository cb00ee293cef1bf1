"""Kernel-level tests of the gated cells' layer kernels: ``lstm_forward``, ``lstm_backward``,
``lstm_backward_window``, ``gru_forward``, ``gru_backward``, ``gru_backward_window``.

Every kernel runs on both backends (compiled ``cyrnn._gated`` and ``numpy_gated``) in both
dtypes, against PyTorch in float64: ``torch.nn.LSTM`` / ``torch.nn.GRU`` themselves (gate order,
bias convention, weight gradients formed as the caller will form them), and the cell equations
written in torch ops with autograd for what the modules cannot express (padding, carry scales,
look-back windows by detaching states, the gradient-norm diagnostic).
"""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cyrnn import kernels  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # between backends
REF_TOL = {np.float32: 2e-4, np.float64: 1e-10}  # against the float64 torch reference

torch.set_num_threads(1)


def get(backend):
    return kernels.get_backend(backend)


def close(got, expected, dtype, tol=None, what=""):
    tol = REF_TOL[dtype] if tol is None else tol
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, what
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(got - expected).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------------------------------------
# references in torch (float64)
# ---------------------------------------------------------------------------------------------


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def scale_grad(x, s):
    """x in the forward pass; the gradient through it scaled by s in the backward pass."""
    return x.detach() + s * (x - x.detach())


def lstm_step(x_t, h, c, W):
    a = x_t + h @ W.T
    i, f, g, o = a.chunk(4, -1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return o * torch.tanh(c), c, torch.cat([i, f, g, o], -1)


def gru_step(x_t, h, W, bhn, probe_R=None):
    R = h @ W.T
    if probe_R is not None:
        R = R + probe_R
    H = h.shape[-1]
    r = torch.sigmoid(x_t[..., :H] + R[..., :H])
    z = torch.sigmoid(x_t[..., H:2 * H] + R[..., H:2 * H])
    hn = R[..., 2 * H:] + bhn
    n = torch.tanh(x_t[..., 2 * H:] + r * hn)
    return (1 - z) * n + z * h, torch.cat([r, z, n], -1), hn


def active_mask(lengths, T, B):
    if lengths is None:
        return torch.ones(T, B, 1, dtype=torch.bool)
    return torch.as_tensor(np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]


def ref_lstm(xw, h0, c0, Whh, dh_out=None, dh_last=None, dc_last=None, lengths=None,
             carry=None):
    """Forward states and, given dh_out, every gradient of the backward contract."""
    T, B, G = xw.shape
    X, H0, C0, W = t64(xw, True), t64(h0, True), t64(c0, True), t64(Whh)
    m = active_mask(lengths, T, B)
    h, c, hs, cs, gates, probes = H0, C0, [H0], [C0], [], []
    for t in range(T):
        s = 1.0 if carry is None else float(carry[t])
        h_new, c_new, g_t = lstm_step(X[t], scale_grad(h, s), scale_grad(c, s), W)
        probe = torch.zeros_like(h, requires_grad=True)
        h = torch.where(m[t], h_new, h) + probe
        c = torch.where(m[t], c_new, c)
        hs.append(h), cs.append(c), gates.append(torch.where(m[t], g_t, 0.0))
        probes.append(probe)
    out = dict(hs=torch.stack(hs).detach().numpy(), cs=torch.stack(cs).detach().numpy(),
               gates=torch.stack(gates).detach().numpy())
    if dh_out is not None:
        loss = (t64(dh_out) * m * torch.stack(hs[1:])).sum()
        if dh_last is not None:
            loss = loss + (t64(dh_last) * hs[-1]).sum()
        if dc_last is not None:
            loss = loss + (t64(dc_last) * cs[-1]).sum()
        loss.backward()
        out.update(da=X.grad.numpy(), dh0=H0.grad.numpy(), dc0=C0.grad.numpy(),
                   norms=np.array([p.grad.norm().item() for p in probes]))
    return out


def ref_gru(xw, h0, Whh, bhn, dh_out=None, dh_last=None, lengths=None, carry=None):
    T, B, G = xw.shape
    X, H0, W, bn = t64(xw, True), t64(h0, True), t64(Whh), t64(bhn)
    m = active_mask(lengths, T, B)
    h, hs, gates, hns, probes, probes_R = H0, [H0], [], [], [], []
    for t in range(T):
        s = 1.0 if carry is None else float(carry[t])
        probe_R = torch.zeros(B, G, dtype=torch.float64, requires_grad=True)
        h_new, g_t, hn_t = gru_step(X[t], scale_grad(h, s), W, bn, probe_R)
        probe = torch.zeros_like(h, requires_grad=True)
        h = torch.where(m[t], h_new, h) + probe
        hs.append(h), gates.append(torch.where(m[t], g_t, 0.0))
        hns.append(torch.where(m[t], hn_t, 0.0))
        probes.append(probe), probes_R.append(probe_R)
    out = dict(hs=torch.stack(hs).detach().numpy(), gates=torch.stack(gates).detach().numpy(),
               hn=torch.stack(hns).detach().numpy())
    if dh_out is not None:
        loss = (t64(dh_out) * m * torch.stack(hs[1:])).sum()
        if dh_last is not None:
            loss = loss + (t64(dh_last) * hs[-1]).sum()
        loss.backward()
        out.update(dxw=X.grad.numpy(), dR=np.stack([p.grad.numpy() for p in probes_R]),
                   dh0=H0.grad.numpy(), norms=np.array([p.grad.norm().item() for p in probes]))
    return out


def ref_window(cell, xw, h0, c0, Whh, bhn, dh_out, window, lengths=None):
    """Brute force: the loss of output t computed from the states detached k_t steps before
    (h0, c0 themselves where the window includes step -1), one output at a time."""
    T, B, G = xw.shape
    windows = [window] * T if np.ndim(window) == 0 else list(window)
    fwd = (ref_lstm(xw, h0, c0, Whh, lengths=lengths) if cell == "lstm"
           else ref_gru(xw, h0, Whh, bhn, lengths=lengths))
    X, H0, W = t64(xw, True), t64(h0, True), t64(Whh)
    C0 = t64(c0, True) if cell == "lstm" else None
    bn = None if cell == "lstm" else t64(bhn)
    m = active_mask(lengths, T, B)
    probes_R = [torch.zeros(B, G, dtype=torch.float64, requires_grad=True) for _ in range(T)]
    for t in range(T):
        start = t - int(windows[t]) + 1
        if start <= -1:
            h, c, start = H0, C0, 0
        else:
            h = t64(fwd["hs"][start])
            c = t64(fwd["cs"][start]) if cell == "lstm" else None
        for s in range(start, t + 1):
            if cell == "lstm":
                h_new, c_new, _ = lstm_step(X[s], h, c, W)
                h, c = torch.where(m[s], h_new, h), torch.where(m[s], c_new, c)
            else:
                h_new, _, _ = gru_step(X[s], h, W, bn, probes_R[s])
                h = torch.where(m[s], h_new, h)
        loss = (t64(dh_out[t]) * m[t] * h).sum()
        if loss.requires_grad:
            loss.backward()

    def grad(a, shape):
        return np.zeros(shape) if a.grad is None else a.grad.numpy()

    out = dict(da=grad(X, xw.shape), dxw=grad(X, xw.shape), dh0=grad(H0, h0.shape),
               dR=np.stack([grad(p, (B, G)) for p in probes_R]))
    if cell == "lstm":
        out["dc0"] = grad(C0, h0.shape)
    return out


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def lstm_inputs(rng, T, B, H, dtype):
    return (rng.normal(0, 0.8, (T, B, 4 * H)).astype(dtype),
            rng.normal(0, 0.5, (B, H)).astype(dtype), rng.normal(0, 0.5, (B, H)).astype(dtype),
            rng.normal(0, 0.6 / np.sqrt(H), (4 * H, H)).astype(dtype))


def gru_inputs(rng, T, B, H, dtype):
    return (rng.normal(0, 0.8, (T, B, 3 * H)).astype(dtype),
            rng.normal(0, 0.5, (B, H)).astype(dtype),
            rng.normal(0, 0.6 / np.sqrt(H), (3 * H, H)).astype(dtype),
            rng.normal(0, 0.5, H).astype(dtype))


def grads_in(rng, T, B, H, dtype):
    return (rng.normal(size=(T, B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype),
            rng.normal(size=(B, H)).astype(dtype))


LENGTHS = np.array([5, 0, 3, 1, 5, 2])  # T = 5, B = 6: full, empty, middle, one step


# ---------------------------------------------------------------------------------------------
# 1. against torch.nn.LSTM / torch.nn.GRU: gate order, biases, the caller's weight gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T, B, I, H", [(6, 4, 3, 5), (1, 1, 7, 2), (4, 1, 2, 6)])
def test_lstm_matches_torch_module(backend, dtype, T, B, I, H, rng):
    k = get(backend)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, dtype=torch.float64)
    x = rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    dy, dhn, dcn = rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    X, H0, C0 = t64(x, True), t64(h0[None], True), t64(c0[None], True)
    y, (hn, cn) = lstm(X, (H0, C0))
    (y * t64(dy)).sum().add((hn[0] * t64(dhn)).sum()).add((cn[0] * t64(dcn)).sum()).backward()
    W_ih, W_hh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    xw = (x @ W_ih.T + b).astype(dtype)
    hs, cs, gates = k.lstm_forward(xw, h0.astype(dtype), c0.astype(dtype), W_hh.astype(dtype))
    close(hs[1:], y.detach().numpy(), dtype, what="hs")
    close(cs[-1], cn[0].detach().numpy(), dtype, what="c_n")
    da, dh0, dc0, _ = k.lstm_backward(dy.astype(dtype), hs, cs, gates, W_hh.astype(dtype),
                                      dh_last=dhn.astype(dtype), dc_last=dcn.astype(dtype))
    da2 = da.reshape(T * B, 4 * H).astype(np.float64)
    hp = hs[:-1].reshape(T * B, H).astype(np.float64)
    close(da2 @ W_ih, X.grad.numpy().reshape(T * B, I), dtype, what="dx")
    close(da2.T @ x.reshape(T * B, I), lstm.weight_ih_l0.grad.numpy(), dtype, what="dW_ih")
    close(da2.T @ hp, lstm.weight_hh_l0.grad.numpy(), dtype, what="dW_hh")
    close(da2.sum(0), lstm.bias_ih_l0.grad.numpy(), dtype, what="db")
    close(dh0, H0.grad.numpy()[0], dtype, what="dh0")
    close(dc0, C0.grad.numpy()[0], dtype, what="dc0")


@pytest.mark.parametrize("T, B, I, H", [(6, 4, 3, 5), (1, 1, 7, 2), (4, 1, 2, 6)])
def test_gru_matches_torch_module(backend, dtype, T, B, I, H, rng):
    k = get(backend)
    torch.manual_seed(0)
    gru = torch.nn.GRU(I, H, dtype=torch.float64)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    dy, dhn = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    X, H0 = t64(x, True), t64(h0[None], True)
    y, hn = gru(X, H0)
    (y * t64(dy)).sum().add((hn[0] * t64(dhn)).sum()).backward()
    W_ih, W_hh = gru.weight_ih_l0.detach().numpy(), gru.weight_hh_l0.detach().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
    xw = (x @ W_ih.T + b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H)])).astype(dtype)
    hs, gates, hn_saved = k.gru_forward(xw, h0.astype(dtype), W_hh.astype(dtype),
                                        b_hh[2 * H:].astype(dtype))
    close(hs[1:], y.detach().numpy(), dtype, what="hs")
    dxw, dR, dh0, _ = k.gru_backward(dy.astype(dtype), hs, gates, hn_saved, W_hh.astype(dtype),
                                     dh_last=dhn.astype(dtype))
    dxw2 = dxw.reshape(T * B, 3 * H).astype(np.float64)
    dR2 = dR.reshape(T * B, 3 * H).astype(np.float64)
    hp = hs[:-1].reshape(T * B, H).astype(np.float64)
    close(dxw2 @ W_ih, X.grad.numpy().reshape(T * B, I), dtype, what="dx")
    close(dxw2.T @ x.reshape(T * B, I), gru.weight_ih_l0.grad.numpy(), dtype, what="dW_ih")
    close(dR2.T @ hp, gru.weight_hh_l0.grad.numpy(), dtype, what="dW_hh")
    close(dxw2.sum(0), gru.bias_ih_l0.grad.numpy(), dtype, what="db_ih")
    close(dR2.sum(0), gru.bias_hh_l0.grad.numpy(), dtype, what="db_hh")
    close(dh0, H0.grad.numpy()[0], dtype, what="dh0")


# ---------------------------------------------------------------------------------------------
# 2. against the cell equations in torch: padding, carry, gradient norms
# ---------------------------------------------------------------------------------------------

CASES = {
    "plain": {},
    "last": {"last": True},
    "lengths": {"lengths": LENGTHS, "last": True},
    "carry": {"carry": [1.0, 0.5, 0.0, 2.0, 1.0]},
    "all": {"lengths": LENGTHS, "last": True, "carry": [0.3, 0.0, 1.0, 1.5, 0.7]},
}


@pytest.mark.parametrize("case", CASES)
def test_lstm_against_torch(backend, dtype, case, rng):
    opts = CASES[case]
    k = get(backend)
    T, B, H = 5, 6, 3
    xw, h0, c0, Whh = lstm_inputs(rng, T, B, H, dtype)
    dh_out, dh_last, dc_last = grads_in(rng, T, B, H, dtype)
    if not opts.get("last"):
        dh_last = dc_last = None
    lengths, carry = opts.get("lengths"), opts.get("carry")
    ref = ref_lstm(xw, h0, c0, Whh, dh_out, dh_last, dc_last, lengths, carry)
    hs, cs, gates = k.lstm_forward(xw, h0, c0, Whh, lengths=lengths)
    close(hs, ref["hs"], dtype, what="hs")
    close(cs, ref["cs"], dtype, what="cs")
    close(gates, ref["gates"], dtype, what="gates")
    da, dh0, dc0, norms = k.lstm_backward(dh_out, hs, cs, gates, Whh, dh_last=dh_last,
                                          dc_last=dc_last, carry=carry, lengths=lengths)
    assert da.dtype == dh0.dtype == dc0.dtype == norms.dtype == dtype
    close(da, ref["da"], dtype, what="da")
    close(dh0, ref["dh0"], dtype, what="dh0")
    close(dc0, ref["dc0"], dtype, what="dc0")
    close(norms, ref["norms"], dtype, what="grad_norms")


@pytest.mark.parametrize("case", CASES)
def test_gru_against_torch(backend, dtype, case, rng):
    opts = CASES[case]
    k = get(backend)
    T, B, H = 5, 6, 3
    xw, h0, Whh, bhn = gru_inputs(rng, T, B, H, dtype)
    dh_out, dh_last, _ = grads_in(rng, T, B, H, dtype)
    if not opts.get("last"):
        dh_last = None
    lengths, carry = opts.get("lengths"), opts.get("carry")
    ref = ref_gru(xw, h0, Whh, bhn, dh_out, dh_last, lengths, carry)
    hs, gates, hn = k.gru_forward(xw, h0, Whh, bhn, lengths=lengths)
    close(hs, ref["hs"], dtype, what="hs")
    close(gates, ref["gates"], dtype, what="gates")
    close(hn, ref["hn"], dtype, what="hn")
    dxw, dR, dh0, norms = k.gru_backward(dh_out, hs, gates, hn, Whh, dh_last=dh_last,
                                         carry=carry, lengths=lengths)
    assert dxw.dtype == dR.dtype == dh0.dtype == norms.dtype == dtype
    close(dxw, ref["dxw"], dtype, what="dxw")
    close(dR, ref["dR"], dtype, what="dR")
    close(dh0, ref["dh0"], dtype, what="dh0")
    close(norms, ref["norms"], dtype, what="grad_norms")


def test_lengths_each_sequence_as_if_alone(backend, dtype, rng):
    """Padding is invisible: each sequence gives what it gives run alone over its own steps,
    its states frozen and its gates and gradients zero after them."""
    k = get(backend)
    T, B, H = 5, 6, 3
    lx, lh0, lc0, lW = lstm_inputs(rng, T, B, H, dtype)
    gx, gh0, gW, gb = gru_inputs(rng, T, B, H, dtype)
    dh_out, dh_last, dc_last = grads_in(rng, T, B, H, dtype)
    L = k.lstm_forward(lx, lh0, lc0, lW, lengths=LENGTHS)
    Lb = k.lstm_backward(dh_out, *L, lW, dh_last=dh_last, dc_last=dc_last, lengths=LENGTHS)
    G = k.gru_forward(gx, gh0, gW, gb, lengths=LENGTHS)
    Gb = k.gru_backward(dh_out, *G, gW, dh_last=dh_last, lengths=LENGTHS)
    tol = TOL[dtype] * 10
    for b, n in enumerate(LENGTHS):
        if n:
            one = slice(b, b + 1)
            L1 = k.lstm_forward(lx[:n, one], lh0[one], lc0[one], lW)
            Lb1 = k.lstm_backward(dh_out[:n, one], *L1, lW, dh_last=dh_last[one],
                                  dc_last=dc_last[one])
            for got, alone in zip(L, L1):
                close(got[:len(alone), one], alone, dtype, tol)
            close(Lb[0][:n, one], Lb1[0], dtype, tol)
            close(Lb[1][one], Lb1[1], dtype, tol)
            close(Lb[2][one], Lb1[2], dtype, tol)
            G1 = k.gru_forward(gx[:n, one], gh0[one], gW, gb)
            Gb1 = k.gru_backward(dh_out[:n, one], *G1, gW, dh_last=dh_last[one])
            for got, alone in zip(G, G1):
                close(got[:len(alone), one], alone, dtype, tol)
            for got, alone in zip(Gb[:2], Gb1[:2]):
                close(got[:n, one], alone, dtype, tol)
            close(Gb[2][one], Gb1[2], dtype, tol)
        # frozen states, zero gates and gradients after the sequence's end
        for states in (L[0], L[1], G[0]):
            assert (states[n:, b] == states[n, b]).all()
        for zeros in (L[2], G[1], G[2], Lb[0], Gb[0], Gb[1]):
            assert (zeros[n:, b] == 0).all()
    # an empty sequence hands dh_last / dc_last straight to dh0 / dc0
    np.testing.assert_array_equal(Lb[1][1], dh_last[1])
    np.testing.assert_array_equal(Lb[2][1], dc_last[1])
    np.testing.assert_array_equal(Gb[2][1], dh_last[1])


# ---------------------------------------------------------------------------------------------
# 3. carry
# ---------------------------------------------------------------------------------------------


def test_carry_ones_is_full_and_zero_splits_into_chunks(backend, dtype, rng):
    k = get(backend)
    T, B, H = 6, 3, 4
    lx, lh0, lc0, lW = lstm_inputs(rng, T, B, H, dtype)
    gx, gh0, gW, gb = gru_inputs(rng, T, B, H, dtype)
    dh_out, dh_last, dc_last = grads_in(rng, T, B, H, dtype)
    L = k.lstm_forward(lx, lh0, lc0, lW)
    G = k.gru_forward(gx, gh0, gW, gb)
    full_l = k.lstm_backward(dh_out, *L, lW, dh_last=dh_last, dc_last=dc_last)
    full_g = k.gru_backward(dh_out, *G, gW, dh_last=dh_last)
    for got, want in zip(k.lstm_backward(dh_out, *L, lW, dh_last=dh_last, dc_last=dc_last,
                                         carry=np.ones(T)), full_l):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(k.gru_backward(dh_out, *G, gW, dh_last=dh_last, carry=np.ones(T)),
                         full_g):
        np.testing.assert_array_equal(got, want)
    # a zero at step 3: steps 3.. are an independent chunk starting from hs[3]
    carry = np.ones(T)
    carry[3] = 0
    cut_l = k.lstm_backward(dh_out, *L, lW, dh_last=dh_last, dc_last=dc_last, carry=carry)
    tail_l = k.lstm_backward(dh_out[3:], L[0][3:], L[1][3:], L[2][3:], lW, dh_last=dh_last,
                             dc_last=dc_last)
    head_l = k.lstm_backward(dh_out[:3], L[0][:4], L[1][:4], L[2][:3], lW)
    close(cut_l[0], np.concatenate([head_l[0], tail_l[0]]), dtype, TOL[dtype])
    close(cut_l[1], head_l[1], dtype, TOL[dtype])
    close(cut_l[2], head_l[2], dtype, TOL[dtype])
    cut_g = k.gru_backward(dh_out, *G, gW, dh_last=dh_last, carry=carry)
    tail_g = k.gru_backward(dh_out[3:], G[0][3:], G[1][3:], G[2][3:], gW, dh_last=dh_last)
    head_g = k.gru_backward(dh_out[:3], G[0][:4], G[1][:3], G[2][:3], gW)
    close(cut_g[0], np.concatenate([head_g[0], tail_g[0]]), dtype, TOL[dtype])
    close(cut_g[1], np.concatenate([head_g[1], tail_g[1]]), dtype, TOL[dtype])
    close(cut_g[2], head_g[2], dtype, TOL[dtype])


def test_zero_carry_cuts_even_infinite_gradients(backend):
    k = get(backend)
    T, B, H = 2, 1, 1
    dh_out = np.array([[[np.inf]], [[1.0]]])
    xw, h0, c0, W = np.zeros((T, B, 4)), np.zeros((B, H)), np.ones((B, H)), np.ones((4, 1))
    hs, cs, gates = k.lstm_forward(xw, h0, c0, W)
    da, dh0, dc0, _ = k.lstm_backward(dh_out, hs, cs, gates, W, carry=[0.0, 1.0])
    np.testing.assert_array_equal(dh0, [[0.0]])
    np.testing.assert_array_equal(dc0, [[0.0]])
    assert np.isinf(da[0]).any()
    hs, gates, hn = k.gru_forward(np.zeros((T, B, 3)), h0, np.ones((3, 1)), np.zeros(1))
    dxw, dR, dh0, _ = k.gru_backward(dh_out, hs, gates, hn, np.ones((3, 1)), carry=[0.0, 1.0])
    np.testing.assert_array_equal(dh0, [[0.0]])
    assert np.isinf(dxw[0]).any()


# ---------------------------------------------------------------------------------------------
# 4. look-back windows
# ---------------------------------------------------------------------------------------------

WINDOWS = [1, 2, 3, 5, 6, [1, 3, 2, 6, 4], [7, 1, 1, 2, 100]]


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_lstm_window_against_torch(backend, dtype, window, with_lengths, rng):
    k = get(backend)
    T, B, H = 5, 6, 3
    lengths = LENGTHS if with_lengths else None
    xw, h0, c0, Whh = lstm_inputs(rng, T, B, H, dtype)
    dh_out = grads_in(rng, T, B, H, dtype)[0]
    ref = ref_window("lstm", xw, h0, c0, Whh, None, dh_out, window, lengths)
    hs, cs, gates = k.lstm_forward(xw, h0, c0, Whh, lengths=lengths)
    da, dh0, dc0 = k.lstm_backward_window(dh_out, hs, cs, gates, Whh, window, lengths=lengths)
    close(da, ref["da"], dtype, what="da")
    close(dh0, ref["dh0"], dtype, what="dh0")
    close(dc0, ref["dc0"], dtype, what="dc0")


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gru_window_against_torch(backend, dtype, window, with_lengths, rng):
    k = get(backend)
    T, B, H = 5, 6, 3
    lengths = LENGTHS if with_lengths else None
    xw, h0, Whh, bhn = gru_inputs(rng, T, B, H, dtype)
    dh_out = grads_in(rng, T, B, H, dtype)[0]
    ref = ref_window("gru", xw, h0, None, Whh, bhn, dh_out, window, lengths)
    hs, gates, hn = k.gru_forward(xw, h0, Whh, bhn, lengths=lengths)
    dxw, dR, dh0 = k.gru_backward_window(dh_out, hs, gates, hn, Whh, window, lengths=lengths)
    close(dxw, ref["dxw"], dtype, what="dxw")
    close(dR, ref["dR"], dtype, what="dR")
    close(dh0, ref["dh0"], dtype, what="dh0")


@pytest.mark.parametrize("extra", [1, 2, 10**6, 2**64 - 1])
def test_window_at_least_T_plus_1_is_full_bptt(backend, dtype, extra, rng):
    k = get(backend)
    T, B, H = 5, 6, 3
    window = T + extra if extra < 2**63 else np.full(T, extra, dtype=np.uint64)
    lx, lh0, lc0, lW = lstm_inputs(rng, T, B, H, dtype)
    gx, gh0, gW, gb = gru_inputs(rng, T, B, H, dtype)
    dh_out = grads_in(rng, T, B, H, dtype)[0]
    L = k.lstm_forward(lx, lh0, lc0, lW, lengths=LENGTHS)
    full = k.lstm_backward(dh_out, *L, lW, lengths=LENGTHS)
    win = k.lstm_backward_window(dh_out, *L, lW, window, lengths=LENGTHS)
    for got, want in zip(win, full[:3]):
        close(got, want, dtype, TOL[dtype])
    G = k.gru_forward(gx, gh0, gW, gb, lengths=LENGTHS)
    full = k.gru_backward(dh_out, *G, gW, lengths=LENGTHS)
    win = k.gru_backward_window(dh_out, *G, gW, window, lengths=LENGTHS)
    for got, want in zip(win, full[:3]):
        close(got, want, dtype, TOL[dtype])


# ---------------------------------------------------------------------------------------------
# 5. the two backends agree
# ---------------------------------------------------------------------------------------------


def all_calls(k, lstm, gru, dh_out, dh_last, dc_last, carry, lengths, window):
    lx, lh0, lc0, lW = lstm
    gx, gh0, gW, gb = gru
    L = k.lstm_forward(lx, lh0, lc0, lW, lengths=lengths)
    G = k.gru_forward(gx, gh0, gW, gb, lengths=lengths)
    return (L + k.lstm_backward(dh_out, *L, lW, dh_last=dh_last, dc_last=dc_last, carry=carry,
                                lengths=lengths)
            + k.lstm_backward_window(dh_out, *L, lW, window, lengths=lengths)
            + G + k.gru_backward(dh_out, *G, gW, dh_last=dh_last, carry=carry, lengths=lengths)
            + k.gru_backward_window(dh_out, *G, gW, window, lengths=lengths))


def standard_args(rng, dtype, T=5, B=6, H=3):
    dh_out, dh_last, dc_last = grads_in(rng, T, B, H, dtype)
    return dict(lstm=lstm_inputs(rng, T, B, H, dtype), gru=gru_inputs(rng, T, B, H, dtype),
                dh_out=dh_out, dh_last=dh_last, dc_last=dc_last,
                carry=rng.uniform(0, 1.5, T), lengths=LENGTHS if B == 6 and T >= 5 else None,
                window=np.array([1, 3, 2, 6, 4][:T]) if T == 5 else 3)


@pytest.mark.parametrize("T, B, H", [(5, 6, 3), (6, 6, 4), (40, 7, 33), (1, 1, 1), (3, 1, 64)])
def test_backends_agree(dtype, T, B, H, rng):
    if kernels.cython_kernels is None:
        pytest.fail("the compiled extension is not built")
    args = standard_args(rng, dtype, T, B, H)
    got = all_calls(get("cython"), **args)
    want = all_calls(get("numpy"), **args)
    for n, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype == dtype and g.shape == w.shape
        close(g, w, dtype, TOL[dtype], what=f"result {n}")


# ---------------------------------------------------------------------------------------------
# 6. input handling and errors
# ---------------------------------------------------------------------------------------------


def test_inputs_not_mutated_and_readonly_accepted(backend, dtype, rng):
    k = get(backend)
    args = standard_args(rng, dtype)
    arrays = [a for v in args.values() for a in (v if isinstance(v, tuple) else (v,))
              if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    expected = all_calls(k, **args)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)
    for a in arrays:
        a.setflags(write=False)
    for g, e in zip(all_calls(k, **args), expected):
        np.testing.assert_array_equal(g, e)


def test_non_contiguous_inputs(backend, dtype, rng):
    k = get(backend)
    args = standard_args(rng, dtype)

    def strided(a):
        if not isinstance(a, np.ndarray):
            return a
        if a.ndim == 1:
            big = np.zeros(2 * a.size, a.dtype)
            big[::2] = a
            return big[::2]
        if a.ndim == 2:
            return np.asfortranarray(a)
        return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)

    other = {n: tuple(strided(a) for a in v) if isinstance(v, tuple) else strided(v)
             for n, v in args.items()}
    for g, e in zip(all_calls(k, **other), all_calls(k, **args)):
        np.testing.assert_array_equal(g, e)


def _call(k, kernel, **over):
    """Call ``kernel`` with valid float64 arguments (T=6, B=3, H=5), some replaced."""
    T, B, H = 6, 3, 5
    n = 4 if kernel.startswith("lstm") else 3
    a = dict(xw=np.zeros((T, B, n * H)), h0=np.zeros((B, H)), c0=np.zeros((B, H)),
             Whh=np.zeros((n * H, H)), bhn=np.zeros(H), dh_out=np.zeros((T, B, H)),
             hs=np.zeros((T + 1, B, H)), cs=np.zeros((T + 1, B, H)),
             gates=np.zeros((T, B, n * H)), hn=np.zeros((T, B, H)), window=2)
    a.update(over)
    f = getattr(k, kernel)
    opt = {name: a[name] for name in ("lengths", "carry", "dh_last", "dc_last") if name in a}
    if kernel == "lstm_forward":
        return f(a["xw"], a["h0"], a["c0"], a["Whh"], **opt)
    if kernel == "gru_forward":
        return f(a["xw"], a["h0"], a["Whh"], a["bhn"], **opt)
    if kernel == "lstm_backward":
        return f(a["dh_out"], a["hs"], a["cs"], a["gates"], a["Whh"], **opt)
    if kernel == "gru_backward":
        return f(a["dh_out"], a["hs"], a["gates"], a["hn"], a["Whh"], **opt)
    if kernel == "lstm_backward_window":
        return f(a["dh_out"], a["hs"], a["cs"], a["gates"], a["Whh"], a["window"], **opt)
    return f(a["dh_out"], a["hs"], a["gates"], a["hn"], a["Whh"], a["window"], **opt)


LF, LB, LW = "lstm_forward", "lstm_backward", "lstm_backward_window"
GF, GB, GW = "gru_forward", "gru_backward", "gru_backward_window"
f32 = np.float32

TYPE_ERRORS = [
    (LF, "xw", np.zeros((6, 3, 20), f32), "h0: expected dtype float32 like the other arrays, got float64"),
    (LF, "c0", np.zeros((3, 5), f32), "c0: expected dtype float64 like the other arrays, got float32"),
    (LF, "Whh", np.zeros((20, 5), f32), "Whh: expected dtype float64"),
    (LF, "xw", np.zeros((6, 3, 20), np.int64), "xw: expected dtype float32 or float64, got int64"),
    (LF, "xw", [[[0.0] * 20] * 3] * 6, "xw: expected a numpy.ndarray, got list"),
    (GF, "bhn", np.zeros(5, f32), "bhn: expected dtype float64 like the other arrays, got float32"),
    (GF, "h0", 0.0, "h0: expected a numpy.ndarray, got float"),
    (LB, "cs", np.zeros((7, 3, 5), f32), "cs: expected dtype float64"),
    (LB, "gates", np.zeros((6, 3, 20), f32), "gates: expected dtype float64"),
    (LB, "dc_last", np.zeros((3, 5), f32), "dc_last: expected dtype float64"),
    (LB, "carry", np.zeros(6, np.complex128), "carry: expected real numbers"),
    (GB, "hn", np.zeros((6, 3, 5), f32), "hn: expected dtype float64"),
    (GB, "dh_last", np.zeros((3, 5), f32), "dh_last: expected dtype float64"),
    (GB, "dh_out", np.zeros((6, 3, 5), np.int32), "dh_out: expected dtype float32 or float64"),
    (LF, "lengths", np.array([1.0, 2.0, 3.0]), "lengths: expected integers, got dtype float64"),
    (GW, "lengths", np.array([True, False, True]), "lengths: expected integers"),
    (LW, "window", 2.0, "window: expected an int >= 1 or an array of them (T,), got 2.0"),
    (GW, "window", None, "window: expected an int >= 1"),
]


@pytest.mark.parametrize("kernel, arg, value, message", TYPE_ERRORS)
def test_type_errors(backend, kernel, arg, value, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        _call(get(backend), kernel, **{arg: value})


VALUE_ERRORS = [
    (LF, "xw", np.zeros((6, 3, 19)), "xw: expected shape (T, B, 4H) with gate blocks [i, f, g, o], got (6, 3, 19)"),
    (GF, "xw", np.zeros((6, 3, 16)), "xw: expected shape (T, B, 3H) with gate blocks [r, z, n], got (6, 3, 16)"),
    (LF, "xw", np.zeros((6, 3)), "xw: expected 3 dimensions, got shape (6, 3)"),
    (LF, "h0", np.zeros((3, 4)), "h0: expected shape (3, 5), got (3, 4)"),
    (LF, "c0", np.zeros((5, 3)), "c0: expected shape (3, 5), got (5, 3)"),
    (LF, "Whh", np.zeros((5, 20)), "Whh: expected shape (20, 5), got (5, 20)"),
    (GF, "Whh", np.zeros((20, 5)), "Whh: expected shape (15, 5), got (20, 5)"),
    (GF, "bhn", np.zeros(15), "bhn: expected shape (5,), got (15,)"),
    (GF, "bhn", np.zeros((1, 5)), "bhn: expected 1 dimensions, got shape (1, 5)"),
    (LB, "hs", np.zeros((6, 3, 5)), "hs: expected shape (7, 3, 5), got (6, 3, 5)"),
    (LB, "cs", np.zeros((7, 3, 4)), "cs: expected shape (7, 3, 5), got (7, 3, 4)"),
    (LB, "gates", np.zeros((6, 3, 15)), "gates: expected shape (6, 3, 20), got (6, 3, 15)"),
    (LB, "dh_last", np.zeros((1, 5)), "dh_last: expected shape (3, 5), got (1, 5)"),
    (LB, "dc_last", np.zeros((3, 4)), "dc_last: expected shape (3, 5), got (3, 4)"),
    (LB, "carry", np.ones(5), "carry: expected shape (6,), got (5,)"),
    (LB, "carry", np.array([1, 1, np.nan, 1, 1, 1]), "carry: expected finite values"),
    (GB, "carry", np.array([1, 1, np.inf, 1, 1, 1]), "carry: expected finite values"),
    (GB, "gates", np.zeros((6, 3, 20)), "gates: expected shape (6, 3, 15), got (6, 3, 20)"),
    (GB, "hn", np.zeros((6, 3, 15)), "hn: expected shape (6, 3, 5), got (6, 3, 15)"),
    (GW, "Whh", np.zeros((20, 5)), "Whh: expected shape (15, 5), got (20, 5)"),
    (LW, "lengths", [0, 7, 3], "lengths: expected values in [0, 6], got min 0 max 7"),
    (GF, "lengths", [1, 2], "lengths: expected shape (3,), got (2,)"),
    (LW, "window", 0, "window: expected an int >= 1, got 0"),
    (GW, "window", [1, 2], "window: expected an int or shape (6,), got shape (2,)"),
    (LF, "xw", np.zeros((0, 3, 20)), "expected at least one time step, got T = 0"),
    (GB, "dh_out", np.zeros((6, 3, 0)), "expected batch and hidden sizes >= 1, got B = 3, H = 0"),
]


@pytest.mark.parametrize("kernel, arg, value, message", VALUE_ERRORS)
def test_value_errors(backend, kernel, arg, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _call(get(backend), kernel, **{arg: value})


def test_nan_propagates(backend, dtype):
    k = get(backend)
    xw = np.zeros((1, 2, 4), dtype)
    xw[0, 0, 2] = np.nan
    hs, cs, _ = k.lstm_forward(xw, np.zeros((2, 1), dtype), np.zeros((2, 1), dtype),
                               np.zeros((4, 1), dtype))
    assert np.isnan(hs[1, 0]).all() and np.isnan(cs[1, 0]).all() and not np.isnan(hs[1, 1]).any()
    xw = np.zeros((1, 2, 3), dtype)
    xw[0, 0, 2] = np.nan
    hs, _, _ = k.gru_forward(xw, np.zeros((2, 1), dtype), np.zeros((3, 1), dtype),
                             np.zeros(1, dtype))
    assert np.isnan(hs[1, 0]).all() and not np.isnan(hs[1, 1]).any()


def test_float32_saturation_is_exact(backend):
    """Large pre-activations saturate the gates to exactly 0 and 1 in float32 without NaN."""
    k = get(backend)
    xw = np.array([[[80.0, -80.0, 80.0, 80.0], [-80.0, 80.0, -80.0, -80.0]]], np.float32)
    hs, cs, gates = k.lstm_forward(xw, np.zeros((2, 1), np.float32),
                                   np.ones((2, 1), np.float32), np.zeros((4, 1), np.float32))
    np.testing.assert_allclose(gates[0], [[1, 0, 1, 1], [0, 1, -1, 0]], atol=1e-6)
    np.testing.assert_allclose(cs[1, :, 0], [1.0, 1.0], atol=1e-6)
