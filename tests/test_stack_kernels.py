"""The compiled step and forward pass of a stack of Elman layers (``_stack_step``,
``_stack_outputs``): against a composition of the NumPy backend's separate kernels, against
PyTorch, against the single-layer step, and across thread counts."""
import numpy as np
import pytest

import cyrnn
from cyrnn import _checks, kernels
from cyrnn import _rnn as rnn  # the compiled extension is required: never skip these tests

nb = kernels.get_backend("numpy")

TOL = {np.float32: 1e-5, np.float64: 1e-11}


def _problem(rng, dtype, L, D, T, B, I, H, O, tokens, cross_entropy, masks=False, p=0.3):
    """Inputs, targets, h0, layers, Why, by, masks of a stack, C-contiguous in dtype."""
    inputs = rng.integers(0, I, (T, B)) if tokens else rng.normal(size=(T, B, I)).astype(dtype)
    targets = (rng.integers(0, O, (T, B)) if cross_entropy
               else rng.normal(size=(T, B, O)).astype(dtype))
    h0 = (rng.normal(size=(L * D, B, H)) * 0.3).astype(dtype)
    layers = []
    for j in range(L * D):
        n_in = I if j < D else D * H
        layers.append(tuple((rng.normal(size=s) * 0.4 / np.sqrt(s[-1])).astype(dtype)
                            for s in [(H, n_in), (H, H), (H,)]))
    Why = (rng.normal(size=(O, D * H)) * 0.3).astype(dtype)
    by = (rng.normal(size=O) * 0.1).astype(dtype)
    m = None
    if masks and L > 1:
        keep = rng.random((L - 1, T, B, D * H)) >= p
        m = (keep / (1 - p)).astype(dtype)
    return inputs, targets, h0, tuple(layers), Why, by, m


def _reference(inputs, targets, h0, layers, D, Why, by, code, slope, carry, k, windows,
               cross_entropy, sum_reduction, input_grad, masks):
    """The stack's step in float64 from the NumPy backend's kernels: each direction a forward
    RNN over its own time order; the states of both directions side by side; dropout on every
    layer's inputs above the first; BPTT per layer with the error of the layer above."""
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    nl = _checks.NONLINEARITIES[code]
    tokens = inputs.dtype.kind in "iu"
    x = inputs if tokens else f64(inputs)
    h0, Why, by, masks, carry = f64(h0), f64(Why), f64(by), f64(masks), f64(carry)
    layers = [tuple(f64(w) for w in layer) for layer in layers]
    T, B = inputs.shape[:2]
    L, H = len(layers) // D, layers[0][1].shape[0]
    DH = D * H
    X, Xs, hs_all, h_last = x, [], {}, np.empty((L * D, B, H))
    for l in range(L):
        Xs.append(X)
        states = []
        for d in range(D):
            j = l * D + d
            Wxh, Whh, bh = layers[j]
            xw = (Wxh.T[X] if (tokens and l == 0) else X @ Wxh.T) + bh
            if d == 1:
                xw = xw[::-1]
            hs = nb.rnn_forward(np.ascontiguousarray(xw), h0[j], Whh, nl, negative_slope=slope)
            hs_all[j] = hs  # in this direction's order
            h_last[j] = hs[-1]
            states.append(hs[1:] if d == 0 else hs[1:][::-1])
        X = np.concatenate(states, axis=2)
        if l + 1 < L and masks is not None:
            X = X * masks[l]
    top = X.reshape(T * B, DH)
    z = top @ Why.T + by
    reduction = "sum" if sum_reduction else "mean"
    if cross_entropy:
        value, dz = cyrnn.losses.cross_entropy(z, targets.reshape(-1), reduction)
    else:
        value, dz = cyrnn.losses.mse(z, f64(targets).reshape(T * B, -1), reduction)
    grads = {"layers": [None] * (L * D), "Why": dz.T @ top, "by": dz.sum(0),
             "h0": np.empty((L * D, B, H))}
    squares = np.zeros(T)
    dS = (dz @ Why).reshape(T, B, DH)
    for l in range(L - 1, -1, -1):
        Xl = Xs[l]
        dX = None if (tokens and l == 0) else np.zeros(Xl.shape)
        for d in range(D):
            j = l * D + d
            Wxh, Whh, bh = layers[j]
            hs = hs_all[j]
            dh_out = dS[:, :, d * H:(d + 1) * H]
            if d == 1:
                dh_out = dh_out[::-1]
            dh_out = np.ascontiguousarray(dh_out)
            if k:
                da, dh0 = nb.rnn_backward_window(dh_out, hs, Whh,
                                                 k if windows is None else windows, nl,
                                                 negative_slope=slope)
            else:
                da, dh0, norms = nb.rnn_backward(dh_out, hs, Whh, nl, negative_slope=slope,
                                                 carry=carry)
                squares += (norms ** 2)[::-1] if d == 1 else norms ** 2
            h_prev = hs[:-1]
            if d == 1:  # back to natural time order
                da, h_prev = da[::-1], h_prev[::-1]
            da2 = da.reshape(T * B, H)
            if tokens and l == 0:
                dWxh = (da2.T @ np.eye(Wxh.shape[1])[Xl.reshape(-1)])
            else:
                dWxh = da2.T @ Xl.reshape(T * B, -1)
                dX += (da2 @ Wxh).reshape(dX.shape)
            grads["layers"][j] = (dWxh, da2.T @ h_prev.reshape(T * B, H), da2.sum(0))
            grads["h0"][j] = dh0
        if l > 0:
            dS = dX * masks[l - 1] if masks is not None else dX
        elif dX is not None and input_grad:
            grads["x"] = dX
    return value, grads, h_last, (None if k else np.sqrt(squares))


def _truncation(rng, kind, T, dtype):
    """(carry, k, windows) of a truncation mode, as the model passes them."""
    if kind == "carry":
        carry = rng.uniform(0, 2, T)
        carry[rng.random(T) < 0.3] = 0
        return carry.astype(dtype), 0, None
    if kind == "window":
        return None, 3, None
    if kind == "windows":
        windows = rng.integers(1, 5, T).astype(np.intp)
        return None, int(windows.max()), windows
    return None, 0, None


def _assert_close(got, ref, tol):
    value, grads, h_last, norms = got
    r_value, r_grads, r_h_last, r_norms = ref
    np.testing.assert_allclose(value, r_value, rtol=tol, atol=tol)
    assert set(grads) == set(r_grads)
    assert len(grads["layers"]) == len(r_grads["layers"])
    for j, (g, r) in enumerate(zip(grads["layers"], r_grads["layers"])):
        for name, a, b in zip(("Wxh", "Whh", "bh"), g, r):
            assert a.shape == b.shape, (j, name)
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"layer {j} {name}")
    for name in ("Why", "by", "h0", "x"):
        if name in r_grads:
            assert grads[name].shape == r_grads[name].shape, name
            np.testing.assert_allclose(grads[name], r_grads[name], rtol=tol, atol=tol,
                                       err_msg=name)
    np.testing.assert_allclose(h_last, r_h_last, rtol=tol, atol=tol)
    if r_norms is None:
        assert norms is None
    else:
        np.testing.assert_allclose(norms, r_norms, rtol=tol, atol=tol)


def _assert_same(a, b):
    assert a[0] == b[0]
    for j, (g, h) in enumerate(zip(a[1]["layers"], b[1]["layers"])):
        for x, y in zip(g, h):
            np.testing.assert_array_equal(x, y)
    for name in a[1]:
        if name != "layers":
            np.testing.assert_array_equal(a[1][name], b[1][name])
    np.testing.assert_array_equal(a[2], b[2])
    if a[3] is None:
        assert b[3] is None
    else:
        np.testing.assert_array_equal(a[3], b[3])


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncation", ["full", "carry", "window", "windows"])
@pytest.mark.parametrize("masks", [False, True], ids=["no masks", "masks"])
@pytest.mark.parametrize("loss", ["cross_entropy mean", "mse sum", "cross_entropy sum",
                                  "mse mean"])
def test_stack_step_equals_the_composed_kernels(dtype, L, D, tokens, truncation, masks, loss):
    rng = np.random.default_rng(L * 100 + D * 10 + len(truncation))
    cross_entropy, sum_reduction = loss.startswith("cross"), loss.endswith("sum")
    T, B, I, H, O = 7, 3, 5, 6, 4
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, L, D, T, B, I, H, O, tokens,
                                                       cross_entropy, masks)
    carry, k, windows = _truncation(rng, truncation, T, dtype)
    args = (inputs, targets, h0, layers, D, Why, by, 0, 0.01, carry, k, windows, cross_entropy,
            sum_reduction, True, m)
    got = rnn._stack_step(*args)
    _assert_close(got, _reference(*args), TOL[dtype])
    assert got[2].shape == (L * D, B, H) and got[2].dtype == dtype
    assert got[1]["h0"].shape == (L * D, B, H)


@pytest.mark.parametrize("nonlinearity", _checks.NONLINEARITIES)
@pytest.mark.parametrize("D", [1, 2])
def test_every_nonlinearity(dtype, nonlinearity, D):
    rng = np.random.default_rng(7)
    code = _checks.NONLINEARITIES.index(nonlinearity)
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, 2, D, 6, 2, 4, 5, 3, False,
                                                       False, True)
    args = (inputs, targets, h0, layers, D, Why, by, code, 0.2, None, 0, None, False, False, True,
            m)
    _assert_close(rnn._stack_step(*args), _reference(*args), TOL[dtype])


@pytest.mark.parametrize("T, B", [(1, 1), (1, 4), (9, 1)], ids=["T=1 B=1", "T=1", "B=1"])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("truncation", ["full", "carry", "windows"])
def test_one_step_and_one_sequence(dtype, T, B, D, truncation):
    rng = np.random.default_rng(T * 10 + B)
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, 2, D, T, B, 5, 7, 3, True,
                                                       True, True)
    carry, k, windows = _truncation(rng, truncation, T, dtype)
    args = (inputs, targets, h0, layers, D, Why, by, 0, 0.01, carry, k, windows, True, False,
            True, m)
    _assert_close(rnn._stack_step(*args), _reference(*args), TOL[dtype])


@pytest.mark.parametrize("D", [1, 2])
def test_input_grad_off_leaves_out_x(dtype, D):
    rng = np.random.default_rng(3)
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, 2, D, 5, 3, 4, 6, 3, False,
                                                       False)
    on = rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.01, None, 0, None, False,
                         False, True, None)
    off = rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.01, None, 0, None,
                          False, False, False, None)
    assert "x" in on[1] and "x" not in off[1]
    assert on[1]["x"].shape == inputs.shape
    del on[1]["x"]
    _assert_same(on, off)
    tokens = rng.integers(0, 4, (5, 3))
    assert "x" not in rnn._stack_step(tokens, targets, h0, layers, D, Why, by, 0, 0.01, None, 0,
                                      None, False, False, True, None)[1]


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncation", ["full", "carry", "windows"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_one_layer_is_the_elman_step_bit_for_bit(dtype, tokens, truncation, loss):
    for (T, B, I, H, O) in [(9, 3, 5, 6, 4), (60, 33, 7, 64, 5)]:
        rng = np.random.default_rng(B)
        ce = loss == "cross_entropy"
        inputs, targets, h0, layers, Why, by, _ = _problem(rng, dtype, 1, 1, T, B, I, H, O,
                                                           tokens, ce)
        carry, k, windows = _truncation(rng, truncation, T, dtype)
        (Wxh, Whh, bh), = layers
        for threads in (1, 2):
            value, grads, h_last, norms = rnn._stack_step(
                inputs, targets, h0, layers, 1, Why, by, 0, 0.01, carry, k, windows, ce, False,
                True, None, threads)
            e_value, e_grads, e_h_last, e_norms = rnn._elman_step(
                inputs, targets, h0[0], Wxh, Whh, bh, Why, by, 0, 0.01, carry, k, windows, ce,
                False, True, threads)
            assert value == e_value
            for a, name in zip(grads["layers"][0], ("Wxh", "Whh", "bh")):
                np.testing.assert_array_equal(a, e_grads[name])
            for name in ("Why", "by"):
                np.testing.assert_array_equal(grads[name], e_grads[name])
            np.testing.assert_array_equal(grads["h0"][0], e_grads["h0"])
            if not tokens:
                np.testing.assert_array_equal(grads["x"], e_grads["x"])
            np.testing.assert_array_equal(h_last[0], e_h_last)
            if norms is None:
                assert e_norms is None
            else:
                np.testing.assert_array_equal(norms, e_norms)


@pytest.mark.parametrize("L, D", [(1, 1), (2, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncation", ["full", "windows"])
def test_sharded_step_is_the_same_on_any_thread_count(dtype, L, D, tokens, truncation):
    T, B, I, H, O = 100, 37, 6, 64, 5
    assert rnn.shard_count(T, B, I, H, O, L, D) > 1
    rng = np.random.default_rng(11)
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, L, D, T, B, I, H, O, tokens,
                                                       tokens, True)
    carry, k, windows = _truncation(rng, truncation, T, dtype)
    args = (inputs, targets, h0, layers, D, Why, by, 0, 0.01, carry, k, windows, tokens, False,
            True, m)
    runs = [rnn._stack_step(*args, threads=n) for n in (1, 2, 4)]
    for other in runs[1:]:
        _assert_same(runs[0], other)
    # looser than on small sizes: sums over 37 sequences and 100 steps
    _assert_close(runs[0], _reference(*args), {np.float32: 1e-4, np.float64: 1e-10}[dtype])
    outputs = [rnn._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.01, 1, threads=n)
               for n in (1, 2, 4)]
    for y, h in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0][0])
        np.testing.assert_array_equal(h, outputs[0][1])


def test_shard_count_of_a_stack_counts_every_layer():
    count = rnn.shard_count
    assert count(50, 32, 65, 256, 65) == count(50, 32, 65, 256, 65, 1, 1) == 2
    assert count(8, 32, 8, 64, 8) == 1
    assert count(8, 32, 8, 64, 8, 3, 2) == 2  # the same sizes, six times the work
    for B in range(1, 300, 7):
        n = count(100, B, 16, 64, 16, 2, 2)
        assert n & (n - 1) == 0 and n <= 8 and (n == 1 or B // n >= 8)


@pytest.mark.parametrize("output", [0, 1, 2], ids=["linear", "softmax", "sigmoid"])
@pytest.mark.parametrize("L, D", [(1, 1), (2, 1), (1, 2), (3, 2)])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_stack_outputs_equal_the_reference(dtype, output, L, D, tokens):
    rng = np.random.default_rng(5)
    T, B, I, H, O = 6, 4, 5, 7, 3
    inputs, targets, h0, layers, Why, by, _ = _problem(rng, dtype, L, D, T, B, I, H, O, tokens,
                                                       True)
    y, h_last = rnn._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.01, output)
    # the last states from the composed kernels, the logits from a loop written out here
    r_h_last = _reference(inputs, np.zeros((T, B, O)), h0, layers, D, Why, by, 0, 0.01, None, 0,
                          None, False, True, False, None)[2]
    states = _reference_logits(inputs, h0, layers, D, Why, by)
    expected = [states, cyrnn.losses.softmax(states), cyrnn.losses.sigmoid(states)][output]
    tol = TOL[dtype]
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(h_last, r_h_last, rtol=tol, atol=tol)
    assert y.shape == (T, B, O) and y.dtype == dtype and h_last.shape == (L * D, B, H)
    if L == D == 1:
        e_y, e_h = rnn._elman_outputs(inputs, h0[0], *layers[0], Why, by, 0, 0.01, output)
        np.testing.assert_array_equal(y, e_y)
        np.testing.assert_array_equal(h_last[0], e_h)


def _reference_logits(inputs, h0, layers, D, Why, by):
    """z (T, B, O) of the stack, in float64, tanh."""
    tokens = inputs.dtype.kind in "iu"
    X = inputs if tokens else inputs.astype(np.float64)
    L = len(layers) // D
    for l in range(L):
        states = []
        for d in range(D):
            Wxh, Whh, bh = (w.astype(np.float64) for w in layers[l * D + d])
            xw = (Wxh.T[X] if (tokens and l == 0) else X @ Wxh.T) + bh
            h = h0[l * D + d].astype(np.float64)
            out = np.empty(xw.shape)
            for t in (range(len(xw)) if d == 0 else range(len(xw) - 1, -1, -1)):
                h = np.tanh(xw[t] + h @ Whh.T)
                out[t] = h
            states.append(out)
        X = np.concatenate(states, axis=2)
    return X @ Why.T.astype(np.float64) + by


@pytest.mark.parametrize("L, D", [(2, 2), (3, 1), (1, 2)])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_equals_torch(L, D, tokens):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    T, B, I, H, O = 8, 3, 5, 6, 4
    inputs, targets, h0, layers, Why, by, _ = _problem(rng, np.float64, L, D, T, B, I, H, O,
                                                       tokens, True)
    model = torch.nn.RNN(I, H, num_layers=L, bidirectional=D == 2, dtype=torch.float64)
    with torch.no_grad():
        for j, (Wxh, Whh, bh) in enumerate(layers):
            suffix = f"l{j // D}" + ("_reverse" if j % D else "")
            getattr(model, "weight_ih_" + suffix).copy_(torch.from_numpy(Wxh))
            getattr(model, "weight_hh_" + suffix).copy_(torch.from_numpy(Whh))
            getattr(model, "bias_ih_" + suffix).copy_(torch.from_numpy(bh))
            getattr(model, "bias_hh_" + suffix).zero_()
    x = torch.from_numpy(np.eye(I)[inputs] if tokens else inputs)
    x.requires_grad_(not tokens)
    th0 = torch.from_numpy(h0.copy()).requires_grad_(True)
    tWhy = torch.from_numpy(Why.copy()).requires_grad_(True)
    tby = torch.from_numpy(by.copy()).requires_grad_(True)
    out, h_n = model(x, th0)
    z = out.reshape(T * B, D * H) @ tWhy.T + tby
    loss = torch.nn.functional.cross_entropy(z, torch.from_numpy(targets.reshape(-1)))
    loss.backward()
    value, grads, h_last, _ = rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.0,
                                              None, 0, None, True, False, True, None)
    tol = 1e-11
    np.testing.assert_allclose(value, loss.item(), rtol=tol)
    np.testing.assert_allclose(h_last, h_n.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["h0"], th0.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["Why"], tWhy.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["by"], tby.grad.numpy(), rtol=tol, atol=tol)
    for j, (dWxh, dWhh, dbh) in enumerate(grads["layers"]):
        suffix = f"l{j // D}" + ("_reverse" if j % D else "")
        np.testing.assert_allclose(dWxh, getattr(model, "weight_ih_" + suffix).grad.numpy(),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(dWhh, getattr(model, "weight_hh_" + suffix).grad.numpy(),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(dbh, getattr(model, "bias_ih_" + suffix).grad.numpy(),
                                   rtol=tol, atol=tol)
    if not tokens:
        np.testing.assert_allclose(grads["x"], x.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("B", [4, 37], ids=["one shard", "shards"])
def test_kept_workspaces_never_leak_into_results(B):
    """Buffers are kept for the next call of the same sizes: what a call returned must not
    change when the next call runs."""
    T, I, H, O, L, D = 40, 6, 48, 5, 2, 2
    calls = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        inputs, targets, h0, layers, Why, by, m = _problem(rng, np.float64, L, D, T, B, I, H, O,
                                                           False, False, True)
        step = rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.01, None, 0, None,
                               False, False, True, m)
        forward = rnn._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.01, 0)
        arrays = [*step[1]["layers"][0], *step[1]["layers"][-1], step[1]["Why"], step[1]["h0"],
                  step[1]["x"], step[2], step[3], *forward]
        calls.append((arrays, [a.copy() for a in arrays]))
    for arrays, copies in calls:
        for a, b in zip(arrays, copies):
            np.testing.assert_array_equal(a, b)


def test_workspace_keeps_the_last_sets_within_its_bytes():
    """Each thread keeps the buffer sets of its last KEPT_SETS (4) calls of different sizes, the
    least recently used going first, and never more than MAX_KEPT_BYTES (256 MiB) in all."""
    w = rnn.Workspace()
    for key in "abcde":
        w.keep(key, [key], 10)
    assert w.get("a") is None  # the oldest of five went
    assert w.get("b") == ["b"]  # and "b" is now the most recently used
    w.keep("f", ["f"], 10)
    assert w.get("c") is None and w.get("b") == ["b"]
    w.keep("big", ["big"], (256 << 20) - 15)  # room for one set of 10 bytes beside it
    assert set(w.kept) == {"b", "big"}
    w.keep("huge", ["huge"], (256 << 20) + 1)  # larger than the whole allowance: not kept
    assert w.get("huge") is None and w.get("big") == ["big"]


def test_models_in_turn_give_what_each_gives_alone():
    """Two problems of different sizes in turn reuse their own kept buffers: the results equal
    those of each problem run alone, on fresh buffers."""
    problems = []
    for seed, B in ((1, 5), (2, 37)):
        rng = np.random.default_rng(seed)
        problems.append(_problem(rng, np.float64, 2, 2, 30, B, 6, 48, 5, False, False, True))

    def step(p):
        inputs, targets, h0, layers, Why, by, m = p
        return rnn._stack_step(inputs, targets, h0, layers, 2, Why, by, 0, 0.01, None, 0, None,
                               False, False, True, m)

    alone = [step(p) for p in problems]
    for _ in range(2):
        for p, want in zip(problems, alone):
            got = step(p)
            assert got[0] == want[0]
            for a, b in zip(got[1]["layers"][-1], want[1]["layers"][-1]):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(got[1]["x"], want[1]["x"])


@pytest.mark.parametrize("L, D", [(1, 1), (2, 1), (1, 2), (3, 2)])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncation", ["full", "carry", "windows"])
@pytest.mark.parametrize("masks", [False, True], ids=["no masks", "masks"])
def test_stack_step_and_outputs_equal_the_numpy_twin(dtype, L, D, tokens, truncation, masks):
    rng = np.random.default_rng(L + 7 * D)
    T, B, I, H, O = 8, 3, 5, 6, 4
    inputs, targets, h0, layers, Why, by, m = _problem(rng, dtype, L, D, T, B, I, H, O, tokens,
                                                       tokens, masks)
    carry, k, windows = _truncation(rng, truncation, T, dtype)
    args = (inputs, targets, h0, layers, D, Why, by, 0, 0.01, carry, k, windows, tokens,
            not tokens, True, m)
    twin = kernels.get_backend("numpy")
    _assert_close(rnn._stack_step(*args), twin._stack_step(*args), TOL[dtype])
    for out_code in (0, 1, 2):
        got = rnn._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.01, out_code)
        ref = twin._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.01, out_code)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])
