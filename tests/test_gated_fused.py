"""The fused stack step and forward pass for the gated cells (LSTM, GRU): ``_stack_step`` and
``_stack_outputs`` with ``cell`` 1 or 2 (the compiled one in ``pyx/cyrnn/_stack.pxi``, the twin
in ``cyrnn.kernels.numpy_fused``) against the composition ``cyrnn.stack.loss_and_grad`` /
``outputs`` over the same backend's layer kernels; bit-identical across thread counts; and the
models (``cyrnn.LSTM``, ``cyrnn.GRU``), which now take the fused step, against ``torch.nn``.
"""
import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn import kernels, stack
from cyrnn.kernels import numpy_fused
from cyrnn.layers import Architecture

BACKENDS = ["numpy"] + (["cython"] if kernels.cython_kernels is not None else [])
CELLS = {1: "lstm", 2: "gru"}
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def make(cell, L, D, I, H, O, T, B, tokens, dtype, rng):
    """Weights, inputs and states of a stack of cells ``cell`` (0 Elman, 1 LSTM, 2 GRU)."""
    G = H * (1, 4, 3)[cell]
    layers = []
    for j in range(L * D):
        n_in = I if j < D else D * H
        t = [rng.standard_normal((G, n_in)) * .3, rng.standard_normal((G, H)) * .3,
             rng.standard_normal(G) * .1]
        if cell == 2:
            t.append(rng.standard_normal(H) * .1)
        layers.append(tuple(np.ascontiguousarray(a, dtype) for a in t))
    Why = (rng.standard_normal((O, D * H)) * .3).astype(dtype)
    by = (rng.standard_normal(O) * .1).astype(dtype)
    if tokens:
        inputs = rng.integers(0, I, (T, B)).astype(np.intp)
    else:
        inputs = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((L * D, B, H)) * .5).astype(dtype)
    c0 = (rng.standard_normal((L * D, B, H)) * .5).astype(dtype)
    return tuple(layers), Why, by, inputs, h0, c0


def composed(kern, cell, layers, D, Why, by, inputs, targets, h0, c0, ce, sum_red, carry, window,
             masks, input_grad):
    """The reference: cyrnn.stack's composition over the backend's layer kernels."""
    H, I = layers[0][1].shape[1], layers[0][0].shape[1]
    arch = Architecture(I, H, Why.shape[0], len(layers) // D, D, cell=CELLS[cell])
    params = {}
    for j, p in enumerate(layers):
        params.update(zip(arch.cell_names(j), p))
    params["Why"], params["by"] = Why, by
    T, B = inputs.shape[:2]
    r = stack.loss_and_grad(kern, arch, (params, "tanh", 0.0), inputs, h0,
                            targets.reshape(T * B) if ce else targets.reshape(T * B, -1),
                            loss="cross_entropy" if ce else "mse", output="linear",
                            reduction="sum" if sum_red else "mean", window=window, carry=carry,
                            masks=masks, input_grad=input_grad,
                            c0=c0 if cell == 1 else None)
    layer_grads = [tuple(r.grads[n] for n in arch.cell_names(j)) for j in range(len(layers))]
    return r, layer_grads


def close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= tol * scale, (err, tol * scale)


def check_step(backend, cell, L, D, tokens, ce, sum_red, trunc, use_masks, input_grad, T, B,
               dtype, seed=0, threads=None, sizes=(7, 5, 6)):
    rng = np.random.default_rng(seed)
    kern = kernels.get_backend(backend)
    I, H, O = sizes
    layers, Why, by, inputs, h0, c0 = make(cell, L, D, I, H, O, T, B, tokens, dtype, rng)
    targets = (rng.integers(0, O, (T, B)).astype(np.intp) if ce
               else rng.standard_normal((T, B, O)).astype(dtype))
    carry = window = windows = None
    k = 0
    if trunc == "carry":
        carry = np.resize(np.array([1, 0.5, 0, 1.0], dtype), T)
    elif trunc == "window":
        k, window = 2, 2
    elif trunc == "windows":
        windows = np.resize(np.array([1, 3, 2, 3], np.intp), T)
        k, window = int(windows.max()), windows
    masks = None
    if use_masks and L > 1:
        masks = ((rng.random((L - 1, T, B, D * H)) > .3) / .7).astype(dtype)
    value, grads, h_last, norms = kern._stack_step(
        inputs, targets, h0, layers, D, Why, by, 0, 0.0, carry, k, windows, ce, sum_red,
        input_grad, masks, threads, cell, c0)
    ref, ref_layers = composed(kern, cell, layers, D, Why, by, inputs, targets, h0, c0, ce,
                               sum_red, carry, window, masks, input_grad)
    tol = TOL[dtype]
    close(value, ref.loss, tol)
    for got, want in zip(grads["layers"], ref_layers):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            close(a, b, tol)
    for name in ("Why", "by", "h0"):
        close(grads[name], ref.grads[name], tol)
    assert ("x" in grads) == ("x" in ref.grads)
    if "x" in grads:
        close(grads["x"], ref.grads["x"], tol)
    if cell == 1:
        close(grads["c0"], ref.grads["c0"], tol)
        h_last, c_last = h_last
        close(c_last, ref.c_last, tol)
    else:
        assert "c0" not in grads
    close(h_last, ref.h_last, tol)
    if ref.grad_norms is None:
        assert norms is None
    else:
        close(norms, ref.grad_norms, tol)
    return value, grads, h_last, norms


AXES = list(itertools.product([1, 2], [1, 2, 3], [1, 2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,L,D", AXES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_equals_composition(backend, cell, L, D, dtype):
    # the other axes rotate through the rows, so every value meets every architecture
    rows = list(itertools.product([True, False], [True, False], [False, True],
                                  [None, "carry", "window", "windows"]))
    for i, (tokens, ce, sum_red, trunc) in enumerate(rows):
        check_step(backend, cell, L, D, tokens, ce, sum_red, trunc, use_masks=i % 2 == 0,
                   input_grad=i % 3 != 0, T=4, B=3, dtype=dtype, seed=i)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("trunc", [None, "carry", "window"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_at_sizes_with_packed_weights(backend, cell, D, trunc, dtype):
    # B * G * H past BLAS_SINGLE_THREAD_MAX_WORK: the compiled recurrences multiply by Whh
    # packed in panels (transposed_weights); 7 sequences: none of them a multiple of a block
    check_step(backend, cell, 2, D, False, True, False, trunc, use_masks=True, input_grad=True,
               T=5, B=7, dtype=dtype, sizes=(16, 136, 10))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (5, 1)])
@pytest.mark.parametrize("trunc", [None, "carry", "window"])
def test_step_edge_sizes(backend, cell, T, B, trunc):
    for L, D in [(1, 1), (2, 2)]:
        check_step(backend, cell, L, D, True, True, False, trunc, True, True, T, B, np.float64)
        check_step(backend, cell, L, D, False, False, True, trunc, True, True, T, B, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("L,D", [(1, 1), (2, 2)])
@pytest.mark.parametrize("out_code", [0, 1, 2])
def test_outputs_equal_composition(backend, cell, L, D, out_code):
    rng = np.random.default_rng(3)
    kern = kernels.get_backend(backend)
    layers, Why, by, inputs, h0, c0 = make(cell, L, D, 7, 5, 6, 4, 3, out_code == 1,
                                           np.float64, rng)
    y, h_last = kern._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.0, out_code, None,
                                    cell, c0)
    arch = Architecture(7, 5, 6, L, D, cell=CELLS[cell])
    params = {}
    for j, p in enumerate(layers):
        params.update(zip(arch.cell_names(j), p))
    params["Why"], params["by"] = Why, by
    ry, rh, rc = stack.outputs(kern, arch, (params, "tanh", 0.0), inputs, h0,
                               ("linear", "softmax", "sigmoid")[out_code],
                               c0=c0 if cell == 1 else None)
    close(y, ry, 1e-12)
    if cell == 1:
        close(h_last[0], rh, 1e-12)
        close(h_last[1], rc, 1e-12)
    else:
        close(h_last, rh, 1e-12)


@pytest.mark.skipif("cython" not in BACKENDS, reason="compiled backend not built")
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("trunc", [None, "window"])
def test_bit_identical_across_threads(cell, D, trunc):
    from cyrnn import _rnn
    T, B, I, H, O = 20, 64, 32, 64, 40
    assert _rnn.shard_count(T, B, I, H, O, 2, D) > 1
    rng = np.random.default_rng(5)
    layers, Why, by, inputs, h0, c0 = make(cell, 2, D, I, H, O, T, B, False, np.float32, rng)
    targets = rng.integers(0, O, (T, B)).astype(np.intp)
    k, windows = (0, None) if trunc is None else (5, None)
    results = []
    for threads in (1, 2, 4):
        results.append(_rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.0, None,
                                        k, windows, True, False, True, None, threads, cell, c0))
    first = results[0]
    for other in results[1:]:
        assert other[0] == first[0]
        for a, b in zip(first[1]["layers"], other[1]["layers"]):
            for x, y in zip(a, b):
                assert np.array_equal(x, y)
        for name in first[1]:
            if name != "layers":
                assert np.array_equal(first[1][name], other[1][name])
        if cell == 1:
            assert np.array_equal(first[2][0], other[2][0])
            assert np.array_equal(first[2][1], other[2][1])
        else:
            assert np.array_equal(first[2], other[2])
    # and the sharded step still equals the composition
    ref, ref_layers = composed(kernels.get_backend("cython"), cell, layers, D, Why, by, inputs,
                               targets, h0, c0, True, False, None,
                               None if trunc is None else 5, None, True)
    close(first[0], ref.loss, 1e-5)
    for got, want in zip(first[1]["layers"], ref_layers):
        for a, b in zip(got, want):
            close(a, b, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_with_the_projection_made_step_by_step(backend, cell, D, tokens, dtype):
    # sizes at which the compiled kernel projects the inputs inside the recurrence, step by step
    # (token rows; dense products on its own kernel) and, in a forward pass, keeps no step's gates
    T, B, I, H, O = 8, 16, 32, 64, 24
    rng = np.random.default_rng(11)
    kern = kernels.get_backend(backend)
    layers, Why, by, inputs, h0, c0 = make(cell, 2, D, I, H, O, T, B, tokens, dtype, rng)
    y, h_last = kern._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.0, 0, None, cell, c0)
    arch = Architecture(I, H, O, 2, D, cell=CELLS[cell])
    params = {}
    for j, p in enumerate(layers):
        params.update(zip(arch.cell_names(j), p))
    params["Why"], params["by"] = Why, by
    ry, rh, rc = stack.outputs(kern, arch, (params, "tanh", 0.0), inputs, h0, "linear",
                               c0=c0 if cell == 1 else None)
    tol = TOL[dtype]
    close(y, ry, tol)
    close(h_last[0] if cell == 1 else h_last, rh, tol)
    if cell == 1:
        close(h_last[1], rc, tol)
    # the training step's forward pass (which keeps every step's gates) gives the same states
    targets = rng.standard_normal((T, B, O)).astype(dtype)
    _, _, step_last, _ = kern._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.0, None,
                                          0, None, False, False, False, None, None, cell, c0)
    for a, b in zip(step_last if cell == 1 else [step_last], h_last if cell == 1 else [h_last]):
        assert np.array_equal(a, b)


@pytest.mark.skipif("cython" not in BACKENDS, reason="compiled backend not built")
@pytest.mark.parametrize("cell", [1, 2])
@pytest.mark.parametrize("tokens", [False, True])
def test_forward_of_large_weights_is_the_same_on_any_thread_count(cell, tokens):
    # Whh past LARGE_WEIGHTS: a forward pass runs on as few shards as it has threads
    from cyrnn import _rnn
    T, B, I, H, O = 2, 64, 32, 768 if cell == 1 else 840, 96
    G = (4 if cell == 1 else 3) * H
    assert G * H > 1 << 21 and _rnn.shard_count(T, B, I, H, O, 1, 1, G) > 1
    rng = np.random.default_rng(6)
    layers, Why, by, inputs, h0, c0 = make(cell, 1, 1, I, H, O, T, B, tokens, np.float32, rng)
    runs = [_rnn._stack_outputs(inputs, h0, layers, 1, Why, by, 0, 0.0, 0, threads, cell, c0)
            for threads in (1, 2, 4)]
    for y, h_last in runs[1:]:
        assert np.array_equal(y, runs[0][0])
        for a, b in zip(h_last if cell == 1 else [h_last],
                        runs[0][1] if cell == 1 else [runs[0][1]]):
            assert np.array_equal(a, b)
    twin_y, _ = kernels.get_backend("numpy")._stack_outputs(inputs, h0, layers, 1, Why, by, 0,
                                                             0.0, 0, None, cell, c0)
    close(runs[0][0], twin_y, TOL[np.float32])


# ---------------------------------------------------------------------------------------------
# the models take the fused step; same results as the composition and as torch
# ---------------------------------------------------------------------------------------------

MODELS = {"lstm": cyrnn.LSTM, "gru": cyrnn.GRU}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
@pytest.mark.parametrize("truncate", [None, 3])
def test_model_fused_equals_composed(backend, name, L, bi, truncate, monkeypatch):
    model = MODELS[name](5, 4, 6, num_layers=L, bidirectional=bi, output="softmax",
                         dtype="float64", seed=1, backend=backend, dropout=0.3 if L > 1 else 0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (7, 3))
    y = rng.integers(0, 6, (7, 3))
    calls = []
    real = model._kernels._stack_step
    monkeypatch.setattr(model, "_kernels", type(model._kernels)(**vars(model._kernels)))
    model._kernels._stack_step = lambda *a, **k: calls.append(1) or real(*a, **k)
    fused = model.backprop(x, y, truncate=truncate, dropout_seed=4)
    assert calls, "the fused step was not taken"
    monkeypatch.setattr(model, "_fusable", lambda *a: False)
    comp = model.backprop(x, y, truncate=truncate, dropout_seed=4)
    assert abs(fused.loss - comp.loss) <= 1e-12
    assert list(fused.grads) == list(comp.grads)
    for k in comp.grads:
        close(fused.grads[k], comp.grads[k], 1e-12)
    if name == "lstm":
        for a, b in zip(fused.h_last, comp.h_last):
            close(a, b, 1e-12)
    else:
        close(fused.h_last, comp.h_last, 1e-12)


torch = None
try:
    import torch  # noqa: F811
except ImportError:  # pragma: no cover
    pass


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("L,bi", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_model_against_torch(backend, name, L, bi, loss):
    T, B, I, H, O = 6, 3, 4, 3, 5
    output = "softmax" if loss == "cross_entropy" else "linear"
    model = MODELS[name](I, H, O, num_layers=L, bidirectional=bi, output=output,
                         dtype="float64", seed=2, backend=backend)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    D = 2 if bi else 1
    h0 = rng.standard_normal((L * D, B, H)) * .5
    c0 = rng.standard_normal((L * D, B, H)) * .5
    y = rng.integers(0, O, (T, B)) if loss == "cross_entropy" else rng.standard_normal((T, B, O))
    state = (h0, c0) if name == "lstm" else h0
    value, grads, h_last = model.loss_and_grad(x, y, state, loss=loss)
    module = (torch.nn.LSTM if name == "lstm" else torch.nn.GRU)(I, H, num_layers=L,
                                                                 bidirectional=bi).double()
    fc = torch.nn.Linear(D * H, O).double()
    sd = model.to_torch_state(rnn_prefix="")
    module.load_state_dict({k: torch.tensor(v) for k, v in sd.items()
                            if not k.startswith("fc.")}, strict=True)
    fc.weight.data = torch.tensor(model.params["Why"])
    fc.bias.data = torch.tensor(model.params["by"])
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    tc0 = torch.tensor(c0, requires_grad=True)
    out, last = module(tx, (th0, tc0) if name == "lstm" else th0)
    z = fc(out)
    if loss == "cross_entropy":
        tl = torch.nn.functional.cross_entropy(z.reshape(T * B, O), torch.tensor(y.reshape(-1)))
    else:
        tl = torch.nn.functional.mse_loss(z, torch.tensor(y))
    tl.backward()
    assert abs(value - tl.item()) <= 1e-10
    close(grads["x"], tx.grad.numpy(), 1e-10)
    close(grads["h0"], th0.grad.numpy(), 1e-10)
    close(grads["Why"], fc.weight.grad.numpy(), 1e-10)
    tgrads = model.to_torch_state({k: v for k, v in grads.items() if k in model.params},
                                  rnn_prefix="")
    for k, p in module.named_parameters():
        if k.startswith("bias_hh"):
            # cyrnn's bh is bias_ih + bias_hh (their gradients are equal); GRU's n-part is bhn
            if name == "gru":
                close(tgrads[k][2 * H:], p.grad.numpy()[2 * H:], 1e-10)
            continue
        close(tgrads[k], p.grad.numpy(), 1e-10)
    if name == "lstm":
        close(grads["c0"], tc0.grad.numpy(), 1e-10)
        close(h_last[0], last[0].detach().numpy(), 1e-10)
        close(h_last[1], last[1].detach().numpy(), 1e-10)
    else:
        close(h_last, last.detach().numpy(), 1e-10)
