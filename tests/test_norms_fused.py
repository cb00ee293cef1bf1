"""The fused stack step and forward pass with layer normalization and the regularizers:
``_stack_step`` and ``_stack_outputs`` with ``gains`` and ``regular`` (the compiled one in
``pyx/cyrnn/_stack.pxi``: regime_forward, regime_backward; the twin in
``cyrnn.kernels.numpy_fused``) against the composition ``cyrnn.stack.loss_and_grad`` /
``outputs`` with the same regime over the same backend's layer kernels; bit-identical across
thread counts; and the models with ``norm="layer"``, ``recurrent_dropout``, ``zoneout`` or
``weight_drop``, which take the fused step where neither batch normalization nor lengths ask
for the composition.
"""
import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn import kernels, norms, stack
from cyrnn.kernels import numpy_fused
from test_gated_fused import close  # the same measure of agreement as the plain fused step
from test_gated_fused import make as make_stack

BACKENDS = ["numpy"] + (["cython"] if kernels.cython_kernels is not None else [])
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def make(cell, L, D, I, H, O, T, B, tokens, dtype, rng):
    """test_gated_fused's stack, and layer-norm gains away from 1 (so that they matter)."""
    layers, Why, by, inputs, h0, c0 = make_stack(cell, L, D, I, H, O, T, B, tokens, dtype, rng)
    G = H * (1, 4, 3)[cell]
    gains = []
    for j in range(L * D):
        g = [1 + rng.standard_normal(G) * .3, 1 + rng.standard_normal(G) * .3]
        if cell == 1:
            g += [1 + rng.standard_normal(H) * .3, rng.standard_normal(H) * .1]
        gains.append(tuple(np.ascontiguousarray(a, dtype) for a in g))
    return layers, tuple(gains), Why, by, inputs, h0, c0


def draw_masks(cell, LD, T, B, H, dtype, rng, which="rzc"):
    """Recurrent dropout (r) and zoneout (z; c: the LSTM's cell state) masks of each
    layer-direction, as cyrnn.norms.regime draws them; the first layer-direction none."""
    regular = [None]
    for j in range(1, LD):
        rmask = ((rng.random((B, H)) >= .3) / .7).astype(dtype) if "r" in which else None
        zh = (rng.random((T, B, H)) < .25).astype(dtype) if "z" in which else None
        zc = ((rng.random((T, B, H)) < .25).astype(dtype)
              if "c" in which and cell == 1 else None)
        regular.append((rmask, zh, zc))
    return tuple(regular)


def reference(cell, layers, gains, D, Why, by, regular=None):
    """The architecture, weights (as the twin reads a stack kernel's arguments) and regime that
    cyrnn.stack composes (``gains`` None: no normalization)."""
    arch, weights = numpy_fused._stack_weights(layers, D, Why, by, 0, 0.0, cell, gains)
    regime = [norms.options(arch, weights[0], j,
                            *(() if regular is None or regular[j] is None else regular[j]))
              for j in range(len(layers))]
    return arch, weights, regime


def check_step(backend, cell, L, D, tokens, ce, sum_red, carry, use_masks, input_grad, T, B,
               dtype, seed=0, threads=None, sizes=(7, 5, 6), norm=True, which=""):
    """The kernel's step against the composition, with layer normalization (``norm``) and the
    regularizers' masks ``which`` ("r", "z", "c", see draw_masks)."""
    rng = np.random.default_rng(seed)
    kern = kernels.get_backend(backend)
    I, H, O = sizes
    layers, gains, Why, by, inputs, h0, c0 = make(cell, L, D, I, H, O, T, B, tokens, dtype, rng)
    gains = gains if norm else None
    regular = draw_masks(cell, L * D, T, B, H, dtype, rng, which) if which else None
    targets = (rng.integers(0, O, (T, B)).astype(np.intp) if ce
               else rng.standard_normal((T, B, O)).astype(dtype))
    scales = np.resize(np.array([1, 0.5, 0, 1.0], dtype), T) if carry else None
    masks = None
    if use_masks and L > 1:
        masks = ((rng.random((L - 1, T, B, D * H)) > .3) / .7).astype(dtype)
    given = [a for g in (gains or ()) + (regular or ()) for a in (g or ()) if a is not None]
    before = [a.copy() for a in given]
    value, grads, h_last, grad_norms = kern._stack_step(
        inputs, targets, h0, layers, D, Why, by, 0, 0.0, scales, 0, None, ce, sum_red,
        input_grad, masks, threads, cell, c0, gains, regular)
    assert all(np.array_equal(a, b) for a, b in zip(before, given))  # inputs left as they were
    arch, weights, regime = reference(cell, layers, gains, D, Why, by, regular)
    ref = stack.loss_and_grad(kern, arch, weights, inputs, h0,
                              targets.reshape(T * B) if ce else targets.reshape(T * B, -1),
                              loss="cross_entropy" if ce else "mse", output="linear",
                              reduction="sum" if sum_red else "mean", carry=scales, masks=masks,
                              input_grad=input_grad, c0=c0 if cell == 1 else None,
                              regime=regime)
    tol = TOL[dtype]
    close(value, ref.loss, tol)
    for j, got in enumerate(grads["layers"]):
        names = arch.cell_names(j) + arch.norm_names(j)
        assert len(got) == len(names)
        for a, name in zip(got, names):
            close(a, ref.grads[name], tol)
    for name in ("Why", "by", "h0"):
        close(grads[name], ref.grads[name], tol)
    assert ("x" in grads) == ("x" in ref.grads)
    if "x" in grads:
        close(grads["x"], ref.grads["x"], tol)
    if cell == 1:
        close(grads["c0"], ref.grads["c0"], tol)
        h_last, c_last = h_last
        close(c_last, ref.c_last, tol)
    close(h_last, ref.h_last, tol)
    close(grad_norms, ref.grad_norms, tol)
    return value, grads, h_last


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("L,D", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("tokens", [False, True])
def test_step_equals_the_composition(backend, cell, L, D, tokens):
    check_step(backend, cell, L, D, tokens, ce=tokens, sum_red=False, carry=False,
               use_masks=False, input_grad=True, T=6, B=3, dtype=np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("ce,sum_red,carry,use_masks,input_grad", [
    (True, True, True, True, False),
    (False, False, True, False, True),
    (False, True, False, True, True),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_step_options_equal_the_composition(backend, cell, ce, sum_red, carry, use_masks,
                                            input_grad, dtype):
    check_step(backend, cell, 2, 2, False, ce, sum_red, carry, use_masks, input_grad, T=9, B=4,
               dtype=dtype, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("T,B", [(1, 1), (5, 1), (1, 4)])
def test_edge_sizes(backend, cell, T, B):
    check_step(backend, cell, 1, 2, False, True, False, False, False, True, T=T, B=B,
               dtype=np.float64, seed=7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "layer"])
@pytest.mark.parametrize("which", ["r", "z", "zc", "rzc"])
@pytest.mark.parametrize("L,D,tokens", [(1, 2, True), (2, 2, False)])
def test_regularized_step_equals_the_composition(backend, cell, norm, which, L, D, tokens):
    check_step(backend, cell, L, D, tokens, ce=tokens, sum_red=False, carry=True,
               use_masks=True, input_grad=True, T=7, B=3, dtype=np.float64, seed=4, norm=norm,
               which=which)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 2])
def test_a_cell_state_mask_is_ignored_without_a_cell_state(backend, cell):
    """zc is the LSTM's: given for Elman or GRU, it changes nothing (as in the layer kernels)."""
    rng = np.random.default_rng(8)
    kern = kernels.get_backend(backend)
    T, B, H = 5, 3, 5
    layers, _, Why, by, inputs, h0, c0 = make(cell, 1, 2, 7, H, 6, T, B, False, np.float64, rng)
    targets = rng.standard_normal((T, B, 6))
    zh = (rng.random((T, B, H)) < .3).astype(np.float64)
    zc = np.ones((T, B, H))
    results = [kern._stack_step(inputs, targets, h0, layers, 2, Why, by, 0, 0.0, None, 0, None,
                                False, False, True, None, None, cell, None, None,
                                ((None, zh, masks), (None, zh, masks)))
               for masks in (None, zc)]
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1]["layers"][1], results[1][1]["layers"][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif("cython" not in BACKENDS, reason="compiled backend not built")
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("D", [1, 2])
def test_sharded_step_is_bit_identical_across_threads(cell, D):
    from cyrnn import _rnn
    T, B, I, H, O = 20, 64, 32, 64, 40
    G = H * (1, 4, 3)[cell]
    assert _rnn.shard_count(T, B, I, H, O, 2, D, G) > 1
    rng = np.random.default_rng(5)
    layers, gains, Why, by, inputs, h0, c0 = make(cell, 2, D, I, H, O, T, B, False, np.float32,
                                                  rng)
    targets = rng.integers(0, O, (T, B)).astype(np.intp)
    regular = draw_masks(cell, 2 * D, T, B, H, np.float32, rng)
    results = [_rnn._stack_step(inputs, targets, h0, layers, D, Why, by, 0, 0.0, None, 0, None,
                                True, False, True, None, threads, cell, c0, gains, regular)
               for threads in (1, 2, 4)]
    first = results[0]
    for other in results[1:]:
        assert other[0] == first[0]
        for a, b in zip(first[1]["layers"], other[1]["layers"]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        for name in first[1]:
            if name != "layers":
                assert np.array_equal(first[1][name], other[1][name])
    # and the sharded step equals the composition
    check_step("cython", cell, 2, D, False, True, False, False, False, True, T=T, B=B,
               dtype=np.float32, seed=5, threads=2, sizes=(I, H, O), which="rzc")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [0, 1, 2])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("tokens,out_code", [(True, 1), (False, 0), (False, 2)])
@pytest.mark.parametrize("zoneout", [False, True])
def test_outputs_equal_the_composition(backend, cell, D, tokens, out_code, zoneout):
    rng = np.random.default_rng(11)
    kern = kernels.get_backend(backend)
    T, B = 6, 3
    layers, gains, Why, by, inputs, h0, c0 = make(cell, 2, D, 7, 5, 6, T, B, tokens, np.float64,
                                                  rng)
    regular = None
    if zoneout:  # at inference, the expectation: zh = zc = p everywhere
        full = np.full((T, B, 5), .3)
        regular = tuple((None, full, full if cell == 1 else None) for _ in layers)
    y, h_last = kern._stack_outputs(inputs, h0, layers, D, Why, by, 0, 0.0, out_code, None,
                                    cell, c0, gains, regular)
    arch, weights, regime = reference(cell, layers, gains, D, Why, by, regular)
    ry, rh, rc = stack.outputs(kern, arch, weights, inputs, h0,
                               ("linear", "softmax", "sigmoid")[out_code],
                               c0=c0 if cell == 1 else None, regime=regime)
    close(y, ry, 1e-12)
    if cell == 1:
        close(h_last[0], rh, 1e-12)
        close(h_last[1], rc, 1e-12)
    else:
        close(h_last, rh, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_look_back_windows_are_refused(backend):
    rng = np.random.default_rng(0)
    kern = kernels.get_backend(backend)
    layers, gains, Why, by, inputs, h0, c0 = make(0, 1, 1, 7, 5, 6, 6, 2, False, np.float64, rng)
    targets = rng.standard_normal((6, 2, 6))
    with pytest.raises(ValueError, match="look-back windows"):
        kern._stack_step(inputs, targets, h0, layers, 1, Why, by, 0, 0.0, None, 2, None, False,
                         False, True, None, None, 0, None, gains)
    regular = draw_masks(0, 2, 6, 2, 5, np.float64, rng)[1:]
    with pytest.raises(ValueError, match="look-back windows"):
        kern._stack_step(inputs, targets, h0, layers, 1, Why, by, 0, 0.0, None, 2, None, False,
                         False, True, None, None, 0, None, None, regular)


# ---------------------------------------------------------------------------------------------
# the models: layer-normalized ones take the fused kernels, the rest the composition
# ---------------------------------------------------------------------------------------------

MODELS = {"elman": cyrnn.RNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}


def counted(model, monkeypatch, name):
    """Count the model's calls of its kernel ``name``."""
    calls = []
    real = getattr(model._kernels, name)
    monkeypatch.setattr(model, "_kernels", type(model._kernels)(**vars(model._kernels)))
    setattr(model._kernels, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
@pytest.mark.parametrize("truncate", [None, cyrnn.TBPTT(3)])
def test_model_fused_equals_composed(backend, name, L, bi, truncate, monkeypatch):
    model = MODELS[name](5, 4, 6, num_layers=L, bidirectional=bi, output="softmax",
                         dtype="float64", seed=1, backend=backend, norm="layer",
                         dropout=0.3 if L > 1 else 0)
    rng = np.random.default_rng(0)
    for key, value in model.params.items():  # gains away from their initial 1 and 0
        value += rng.standard_normal(value.shape) * .2
    x = rng.integers(0, 5, (7, 3))
    y = rng.integers(0, 6, (7, 3))
    calls = counted(model, monkeypatch, "_stack_step")
    fused = model.backprop(x, y, truncate=truncate, dropout_seed=4)
    assert calls, "the fused step was not taken"
    monkeypatch.setattr(model, "_fusable", lambda *a: False)
    comp = model.backprop(x, y, truncate=truncate, dropout_seed=4)
    assert abs(fused.loss - comp.loss) <= 1e-12
    assert list(fused.grads) == list(comp.grads)
    assert list(fused.grads)[:len(model.params)] == list(model.params)  # in params order
    for k in comp.grads:
        close(fused.grads[k], comp.grads[k], 1e-12)
    close(fused.grad_norms, comp.grad_norms, 1e-12)
    for a, b in zip(np.atleast_1d(fused.h_last), np.atleast_1d(comp.h_last)):
        close(a, b, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_model_forward_takes_the_fused_kernel(backend, name, monkeypatch):
    model = MODELS[name](5, 4, 6, num_layers=2, output="softmax", dtype="float64", seed=2,
                         backend=backend, norm="layer")
    x = np.random.default_rng(1).integers(0, 5, (7, 3))
    calls = counted(model, monkeypatch, "_stack_outputs")
    y, h = model.forward(x)
    assert calls
    regime = model._inference_regime(model.weights(), 7, 3)
    ry, rh, rc = stack.outputs(model._kernels, model.architecture, model.weights(),
                               x.astype(np.intp), np.zeros((2, 3, 4)), "softmax",
                               c0=np.zeros((2, 3, 4)) if name == "lstm" else None, regime=regime)
    close(y, ry, 1e-12)
    close(h[0] if name == "lstm" else h, rh, 1e-12)


REGIMES = [dict(recurrent_dropout=0.3), dict(zoneout=0.25), dict(weight_drop=0.3),
           dict(recurrent_dropout=0.3, zoneout=0.2, weight_drop=0.2),
           dict(norm="layer", recurrent_dropout=0.3, zoneout=0.2, weight_drop=0.2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("options", REGIMES, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_regularized_model_fused_equals_composed(backend, name, options, L, bi, monkeypatch):
    model = MODELS[name](5, 4, 6, num_layers=L, bidirectional=bi, output="linear",
                         dtype="float64", seed=1, backend=backend, **options)
    rng = np.random.default_rng(2)
    for value in model.params.values():
        value += rng.standard_normal(value.shape) * .2
    x = rng.standard_normal((7, 3, 5))
    y = rng.standard_normal((7, 3, 6))
    step = counted(model, monkeypatch, "_stack_step")
    fused = model.backprop(x, y, truncate=cyrnn.TBPTT(3), dropout_seed=4)
    assert step, "the fused step was not taken"
    outputs = counted(model, monkeypatch, "_stack_outputs")
    single = counted(model, monkeypatch, "elman_forward")  # a plain Elman layer's at inference
    y_fused, h_fused = model.forward(x)
    assert outputs or single, "the fused forward pass was not taken"
    monkeypatch.setattr(model, "_fusable", lambda *a: False)
    comp = model.backprop(x, y, truncate=cyrnn.TBPTT(3), dropout_seed=4)
    assert abs(fused.loss - comp.loss) <= 1e-12 * abs(comp.loss)
    assert list(fused.grads) == list(comp.grads)
    for k in comp.grads:
        close(fused.grads[k], comp.grads[k], 1e-12)
    close(fused.grad_norms, comp.grad_norms, 1e-12)
    batch = model._inputs(x, None, None)
    regime = model._inference_regime(model.weights(), 7, 3)
    ry, rh, _ = stack.outputs(model._kernels, model.architecture, model.weights(),
                              batch.inputs, batch.h0, "linear", c0=batch.c0, regime=regime)
    close(y_fused, ry, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_takes_the_composition(backend, monkeypatch):
    """Batch statistics span the batch, which the fused kernels run in shards."""
    model = cyrnn.LSTM(5, 4, 6, output="softmax", dtype="float64", seed=2, backend=backend,
                       norm="batch", zoneout=0.2)
    x = np.random.default_rng(1).integers(0, 5, (7, 3))
    step = counted(model, monkeypatch, "_stack_step")
    outputs = counted(model, monkeypatch, "_stack_outputs")
    model.backprop(x, x % 6, dropout_seed=1)
    model.forward(x)
    assert not step and not outputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_with_lengths_takes_the_composition(backend, monkeypatch):
    rng = np.random.default_rng(3)
    model = cyrnn.GRU(5, 4, 6, output="softmax", dtype="float64", seed=2, backend=backend,
                      norm="layer")
    x = rng.integers(0, 5, (7, 3))
    calls = counted(model, monkeypatch, "_stack_step")
    model.backprop(x, x % 6, lengths=[7, 4, 7])
    assert not calls
    full = model.backprop(x, x % 6, lengths=[7, 7, 7])  # every sequence whole: no lengths
    assert calls
    monkeypatch.setattr(model, "_fusable", lambda *a: False)
    comp = model.backprop(x, x % 6)
    for k in comp.grads:
        close(full.grads[k], comp.grads[k], 1e-12)


def test_backends_agree_on_a_layer_normed_model():
    if "cython" not in BACKENDS:
        pytest.skip("compiled backend not built")
    rng = np.random.default_rng(9)
    for name, bi in itertools.product(MODELS, (False, True)):
        models = [MODELS[name](8, 16, 5, bidirectional=bi, dtype="float64", seed=3, backend=b,
                               norm="layer") for b in ("cython", "numpy")]
        x = rng.standard_normal((12, 40, 8))
        y = rng.standard_normal((12, 40, 5))
        a, b = (m.backprop(x, y) for m in models)
        assert abs(a.loss - b.loss) <= 1e-12 * abs(b.loss)
        for k in b.grads:
            close(a.grads[k], b.grads[k], 1e-12)
