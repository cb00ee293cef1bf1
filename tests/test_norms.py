"""Normalized and regularized recurrences without an oracle library: central differences,
determinism, inference behaviour and input checks.

1. Central differences (float64) of ``loss_and_grad`` with a fixed ``dropout_seed`` (the same
   masks on every call) for each regularizer (``recurrent_dropout``, ``zoneout``,
   ``weight_drop``) and all of them together, without a normalization and with ``"layer"`` or
   ``"batch"``, every cell and both backends: every parameter array (gains included), ``h0``,
   ``c0`` and ``x``, each along a random direction of its own.
2. The same seed gives bit-identical losses and gradients on a repeated call, another seed other
   ones; the two backends agree to float tolerance.
3. Inference: zoneout is its expectation (two steps written out by hand); recurrent dropout and
   weight drop do nothing.
4. Bad arguments, inputs left unchanged, ``model.running`` touched by training calls only;
   float32 follows float64; ``batch_first`` is a transpose.
5. Persistence: pickling and model files keep the options, the gains and the running
   statistics.
"""
import numpy as np
import pytest

import cyrnn

T, B, I, H, O = 4, 3, 4, 3, 2
LENGTHS = np.array([4, 2, 3])
CELLS = {"elman": cyrnn.RNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}
SEED = 1234
FD_STEP = 1e-6

REGULARIZERS = {
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout=0.4),
    "weight_drop": dict(weight_drop=0.4),
    "all": dict(recurrent_dropout=0.3, zoneout=0.3, weight_drop=0.3),
}
# per cell, a different shape: a stack, both directions, lengths
SHAPES = {
    "elman": dict(num_layers=2, bidirectional=True, lengths=True),
    "lstm": dict(num_layers=1, bidirectional=True, lengths=True),
    "gru": dict(num_layers=2, bidirectional=False, lengths=False),
}


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def make_model(cell, backend, norm=None, seed=0, shape=None, **options):
    shape = dict(SHAPES[cell] if shape is None else shape)
    shape.pop("lengths", None)
    model = CELLS[cell](I, H, O, dtype="float64", seed=seed, backend=backend, norm=norm,
                        **shape, **options)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():  # gains away from their initial values
        if name.startswith(("gx", "gh", "gc")):
            p[...] = rng.uniform(0.5, 1.5, size=p.shape)
        elif name.startswith("bc"):
            p[...] = rng.normal(scale=0.3, size=p.shape)
    return model


def make_batch(model, rng, Tn=T, Bn=B):
    S = model.num_layers * (2 if model.bidirectional else 1)
    x = rng.normal(size=(Tn, Bn, I))
    h0 = rng.normal(scale=0.5, size=(S, Bn, H))
    c0 = rng.normal(scale=0.5, size=(S, Bn, H))
    target = rng.normal(size=(Tn, Bn, O))
    state = (h0, c0) if isinstance(model, cyrnn.LSTM) else h0
    return x, h0, c0, state, target


# ---------------------------------------------------------------------------------------------
# 1. central differences
# ---------------------------------------------------------------------------------------------

# each regularizer without a normalization and with one or both; all of them with each
GRAD_CASES = [("recurrent_dropout", None), ("recurrent_dropout", "layer"), ("zoneout", None),
              ("zoneout", "layer"), ("zoneout", "batch"), ("weight_drop", None),
              ("weight_drop", "batch"), ("all", None), ("all", "layer"), ("all", "batch")]
GRAD_IDS = [f"{reg}-{norm or 'nonorm'}" for reg, norm in GRAD_CASES]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reg, norm", GRAD_CASES, ids=GRAD_IDS)
def test_numerical_gradients(backend, cell, reg, norm):
    """Every array (each weight, gain, ``h0``, ``c0``, ``x``) along a random direction ``v`` of
    its own: ``(L(a + e v) - L(a - e v)) / 2e = <grad, v>`` (one direction per array keeps the
    number of calls small; a wrong entry of any size moves the product)."""
    rng = np.random.default_rng(3)
    model = make_model(cell, backend, norm, **REGULARIZERS[reg])
    x, h0, c0, state, target = make_batch(model, rng)
    # lengths on every other case, starting with or without by cell
    flip = GRAD_CASES.index((reg, norm)) % 2 == 1
    lengths = LENGTHS if SHAPES[cell]["lengths"] != flip else None
    lstm = cell == "lstm"

    def loss():
        return model.loss_and_grad(x, target, (h0, c0) if lstm else h0, lengths, loss="mse",
                                   reduction="sum", dropout_seed=SEED)[0]

    _, grads, _ = model.loss_and_grad(x, target, state, lengths, loss="mse", reduction="sum",
                                      dropout_seed=SEED)
    arrays = dict(model.params, h0=h0, x=x)
    if lstm:
        arrays["c0"] = c0
    assert set(grads) == set(arrays)
    for name, a in arrays.items():
        v = rng.normal(size=a.shape)
        keep = a.copy()
        a += FD_STEP * v
        up = loss()
        a[...] = keep - FD_STEP * v
        down = loss()
        a[...] = keep
        numeric = (up - down) / (2 * FD_STEP)
        g = grads[name].reshape(a.shape)
        analytic = float(np.sum(g * v))
        scale = float(np.linalg.norm(g) * np.linalg.norm(v)) + 1e-3
        assert abs(analytic - numeric) <= 1e-5 * scale, (
            f"grad {name}: <grad, v> = {analytic!r}, central differences {numeric!r} "
            f"[{model!r}]")
    # the masks act: another seed gives another loss
    value = loss()
    other = model.loss_and_grad(x, target, state, lengths, loss="mse", reduction="sum",
                                dropout_seed=SEED + 1)[0]
    assert value != other


# ---------------------------------------------------------------------------------------------
# 2. determinism and the backends
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", [None, "layer", "batch"], ids=["nonorm", "layer", "batch"])
def test_same_seed_same_result_on_both_backends(cell, norm):
    options = dict(REGULARIZERS["all"], dropout=0.2 if SHAPES[cell]["num_layers"] > 1 else 0.0)
    rng = np.random.default_rng(8)
    models = {b: make_model(cell, b, norm, seed=5, **options) for b in ("cython", "numpy")}
    x, h0, c0, state, target = make_batch(models["numpy"], rng)
    lengths = LENGTHS if SHAPES[cell]["lengths"] else None
    results = {}
    for backend, model in models.items():
        first = model.loss_and_grad(x, target, state, lengths, loss="mse", dropout_seed=SEED)
        again = model.loss_and_grad(x, target, state, lengths, loss="mse", dropout_seed=SEED)
        assert first[0] == again[0], backend
        assert first[1].keys() == again[1].keys()
        for name in first[1]:
            np.testing.assert_array_equal(first[1][name], again[1][name],
                                          err_msg=f"{backend}: grad {name} on a repeated call")
        other = model.loss_and_grad(x, target, state, lengths, loss="mse",
                                    dropout_seed=SEED + 1)
        assert other[0] != first[0]
        # a Generator works as a seed too, and gives the int seed's masks
        gen = model.loss_and_grad(x, target, state, lengths, loss="mse",
                                  dropout_seed=np.random.default_rng(SEED))
        assert gen[0] == first[0]
        results[backend] = first
    (v1, g1, s1), (v2, g2, s2) = results["cython"], results["numpy"]
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    for name in g2:
        scale = np.max(np.abs(g2[name]), initial=0.0) or 1.0
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-11, atol=1e-12 * scale,
                                   err_msg=f"grad {name}: cython vs numpy")
    for a, b in zip(s1 if cell == "lstm" else (s1,), s2 if cell == "lstm" else (s2,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if norm == "batch":
        for name in models["numpy"].running:
            np.testing.assert_allclose(models["cython"].running[name],
                                       models["numpy"].running[name], rtol=1e-12, atol=1e-14)
    # inference agrees too
    y1, _ = models["cython"].forward(x, state, lengths)
    y2, _ = models["numpy"].forward(x, state, lengths)
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# 3. inference
# ---------------------------------------------------------------------------------------------


def hand_zoneout(cell, p, x, h0, c0):
    """States of a one-layer model at inference with zoneout ``p``, written out step by step:
    ``h_t = p h_{t-1} + (1-p) ~h_t`` (and ``c_t`` likewise), the cell reading ``h_{t-1}``."""
    h, c = h0, c0
    hs = []
    for t in range(x.shape[0]):
        a = x[t] @ p["Wxh"].T + p["bh"]
        r = h @ p["Whh"].T
        if cell == "elman":
            h_new, c_new = np.tanh(a + r), None
        elif cell == "lstm":
            i, f, g, o = np.split(a + r, 4, axis=-1)
            c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h_new = sigmoid(o) * np.tanh(c_new)
        else:
            rg = sigmoid(a[:, :H] + r[:, :H])
            z = sigmoid(a[:, H:2 * H] + r[:, H:2 * H])
            n = np.tanh(a[:, 2 * H:] + rg * (r[:, 2 * H:] + p["bhn"]))
            h_new, c_new = (1 - z) * n + z * h, None
        h = ZONEOUT * h + (1 - ZONEOUT) * h_new
        if cell == "lstm":
            c = ZONEOUT * c + (1 - ZONEOUT) * c_new
        hs.append(h)
    return np.stack(hs), h, c


ZONEOUT = 0.3


@pytest.mark.parametrize("cell", list(CELLS))
def test_zoneout_at_inference_is_the_expectation(backend, cell):
    rng = np.random.default_rng(4)
    shape = dict(num_layers=1, bidirectional=False)
    model = make_model(cell, backend, shape=shape, zoneout=ZONEOUT)
    x, h0, c0, state, target = make_batch(model, rng, Tn=2)
    y, s_last = model.forward(x, state)
    hs, h_want, c_want = hand_zoneout(cell, model.params, x, h0[0], c0[0])
    p = model.params
    np.testing.assert_allclose(y, hs @ p["Why"].T + p["by"], rtol=1e-12, atol=1e-14)
    h_last = s_last[0] if cell == "lstm" else s_last
    np.testing.assert_allclose(h_last.reshape(B, H), h_want, rtol=1e-12, atol=1e-14)
    if cell == "lstm":
        np.testing.assert_allclose(s_last[1].reshape(B, H), c_want, rtol=1e-12, atol=1e-14)
    # evaluate: the loss of those outputs
    value, _ = model.evaluate(x, target, state, loss="mse")
    np.testing.assert_allclose(value, np.mean((hs @ p["Why"].T + p["by"] - target) ** 2),
                               rtol=1e-12)
    # and not the plain cell's
    plain = CELLS[cell](I, H, O, dtype="float64", backend=backend)
    for name in plain.params:
        plain.params[name][...] = model.params[name]
    assert not np.allclose(plain.forward(x, state)[0], y)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", [None, "layer", "batch"], ids=["nonorm", "layer", "batch"])
def test_dropouts_do_nothing_at_inference(backend, cell, norm):
    """recurrent_dropout and weight_drop: a model with them infers as one without them."""
    rng = np.random.default_rng(6)
    model = make_model(cell, backend, norm, recurrent_dropout=0.5, weight_drop=0.5)
    plain = make_model(cell, backend, norm)
    x, h0, c0, state, target = make_batch(model, rng)
    lengths = LENGTHS if SHAPES[cell]["lengths"] else None
    if norm == "batch":  # running statistics worth the name, the same in both
        model.loss_and_grad(x, target, state, lengths, dropout_seed=1)
        plain.running = {k: v.copy() for k, v in model.running.items()}
    for name in plain.params:
        plain.params[name][...] = model.params[name]
    y1, s1 = model.forward(x, state, lengths)
    y2, s2 = plain.forward(x, state, lengths)
    np.testing.assert_allclose(y1, y2, rtol=1e-13, atol=1e-15)
    for a, b in zip(s1 if cell == "lstm" else (s1,), s2 if cell == "lstm" else (s2,)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    v1, _ = model.evaluate(x, target, state, lengths)
    v2, _ = plain.evaluate(x, target, state, lengths)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    # while training, they act
    t1 = model.loss_and_grad(x, target, state, lengths, dropout_seed=2)[0]
    t2 = plain.loss_and_grad(x, target, state, lengths, dropout_seed=2)[0]
    assert t1 != t2


# ---------------------------------------------------------------------------------------------
# 4. arguments, inputs and running statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", ["group", "Layer", "", "instance"])
def test_unknown_norm(cell, norm):
    with pytest.raises(ValueError, match="norm"):
        CELLS[cell](I, H, O, norm=norm)


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "weight_drop"])
@pytest.mark.parametrize("value", [1.0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_probability_out_of_range(name, value):
    for cls in CELLS.values():
        with pytest.raises(ValueError, match=name):
            cls(I, H, O, **{name: value})


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "weight_drop"])
@pytest.mark.parametrize("value", ["0.5", None, True, [0.1], np.array([0.1]), 0.2j])
def test_probability_not_a_number(name, value):
    for cls in CELLS.values():
        with pytest.raises(TypeError, match=name):
            cls(I, H, O, **{name: value})


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "weight_drop"])
def test_probability_accepts_numbers_in_range(name):
    for value in (0, 0.0, 0.5, np.float32(0.25), np.int64(0), 0.999):
        model = cyrnn.GRU(I, H, O, **{name: value})
        assert getattr(model, name) == pytest.approx(float(value))
        assert isinstance(getattr(model, name), float)


@pytest.mark.parametrize("cell", list(CELLS))
def test_batch_norm_training_needs_two_sequences(backend, cell):
    model = make_model(cell, backend, "batch", shape=dict(num_layers=1, bidirectional=False))
    rng = np.random.default_rng(0)
    x, h0, c0, state, target = make_batch(model, rng, Bn=1)
    with pytest.raises(ValueError, match="at least 2"):
        model.loss_and_grad(x, target, state)
    with pytest.raises(ValueError, match="at least 2"):  # unbatched: one sequence
        model.loss_and_grad(x[:, 0], target[:, 0])
    # inference on one sequence is fine (running statistics), and so is layer norm training
    model.forward(x, state)
    model.evaluate(x, target, state)
    make_model(cell, backend, "layer").loss_and_grad(x, target)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("options", [dict(norm="layer"), dict(norm="batch"),
                                     dict(zoneout=0.2), dict(recurrent_dropout=0.2),
                                     dict(weight_drop=0.2)],
                         ids=["layer", "batch", "zoneout", "recurrent_dropout", "weight_drop"])
@pytest.mark.parametrize("truncate", [2, cyrnn.TBPTT(2, 3)], ids=["k2", "tbptt(2,3)"])
def test_look_back_window_refused(backend, cell, options, truncate):
    model = make_model(cell, backend, **options)
    x, h0, c0, state, target = make_batch(model, np.random.default_rng(0))
    before = {k: v.copy() for k, v in model.running.items()}
    with pytest.raises(ValueError, match="truncate"):
        model.loss_and_grad(x, target, state, truncate=truncate)
    for name, v in model.running.items():  # refused before anything ran
        np.testing.assert_array_equal(v, before[name])
    # the carry forms are accepted
    model.loss_and_grad(x, target, state, truncate=cyrnn.TBPTT(2, 2))
    model.loss_and_grad(x, target, state, truncate=cyrnn.RandomizedTruncation(0.5, seed=0))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", [None, "layer", "batch"], ids=["nonorm", "layer", "batch"])
def test_inputs_and_parameters_not_mutated(backend, cell, norm):
    model = make_model(cell, backend, norm, **REGULARIZERS["all"])
    rng = np.random.default_rng(1)
    x, h0, c0, state, target = make_batch(model, rng)
    lengths = LENGTHS.copy()
    inputs = [x, h0, c0, target, lengths]
    copies = [a.copy() for a in inputs]
    params = {k: v.copy() for k, v in model.params.items()}
    model.loss_and_grad(x, target, state, lengths, dropout_seed=3)
    model.forward(x, state, lengths)
    model.evaluate(x, target, state, lengths)
    model.backprop(x, target, state, lengths, dropout_seed=4)
    for a, b in zip(inputs, copies):
        np.testing.assert_array_equal(a, b)
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, params[name], err_msg=f"{name} changed")


@pytest.mark.parametrize("cell", list(CELLS))
def test_running_statistics_only_training_updates(backend, cell):
    model = make_model(cell, backend, "batch", **REGULARIZERS["all"])
    rng = np.random.default_rng(2)
    x, h0, c0, state, target = make_batch(model, rng)
    L, D = model.num_layers, 2 if model.bidirectional else 1
    terms = ("x", "h", "c") if cell == "lstm" else ("x", "h")
    names = {f"{s}_{t}{('' if l == 0 else f'_l{l}') + ('_reverse' if d else '')}"
             for s in ("mean", "var") for t in terms for l in range(L) for d in range(D)}
    assert set(model.running) == names
    for name, v in model.running.items():
        assert v.shape == (0, H if "_c" in name else model.params["bh"].shape[0])

    def snapshot():
        return {k: v.copy() for k, v in model.running.items()}

    def same(a, b):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    before = snapshot()
    model.forward(x, state)
    model.evaluate(x, target, state)
    assert same(snapshot(), before)
    model.loss_and_grad(x, target, state, dropout_seed=0)
    after = snapshot()
    assert not same(after, before)
    assert all(v.shape[0] == T for v in after.values())
    model.forward(x, state, LENGTHS)
    model.evaluate(x, target, state, LENGTHS)
    assert same(snapshot(), after)
    model.loss_and_grad(x, target, state, dropout_seed=0)
    assert not same(snapshot(), after)
    # nothing to keep without batch normalization
    assert make_model(cell, backend, "layer").running == {}
    assert make_model(cell, backend, None, zoneout=0.1).running == {}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", [None, "layer", "batch"], ids=["nonorm", "layer", "batch"])
def test_float32_follows_float64(backend, cell, norm):
    """A float32 model computes in float32 (results, gradients, running statistics) and agrees
    with the float64 model of the same parameters to float32 precision."""
    options = dict(REGULARIZERS["all"])
    m64 = make_model(cell, backend, norm, **options)
    m32 = CELLS[cell](I, H, O, dtype="float32", backend=backend, norm=norm,
                      num_layers=m64.num_layers, bidirectional=m64.bidirectional, **options)
    for name in m32.params:
        m32.params[name][...] = m64.params[name]
    rng = np.random.default_rng(9)
    x, h0, c0, state, target = make_batch(m64, rng)
    lengths = LENGTHS
    results = {}
    for model in (m64, m32):
        value, grads, _ = model.loss_and_grad(x, target, state, lengths, dropout_seed=5)
        y, _ = model.forward(x, state, lengths)
        results[model.dtype.name] = value, grads, y
    v64, g64, y64 = results["float64"]
    v32, g32, y32 = results["float32"]
    assert y32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in g32.values()), {k: g.dtype for k, g in g32.items()}
    assert all(v.dtype == np.float32 for v in m32.running.values())
    np.testing.assert_allclose(v32, v64, rtol=1e-4)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    for name in g64:
        scale = np.max(np.abs(g64[name]), initial=0.0) or 1.0
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-3, atol=2e-4 * scale,
                                   err_msg=f"grad {name}: float32 vs float64")
    for name in m64.running:
        np.testing.assert_allclose(m32.running[name], m64.running[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_batch_first_is_a_transpose(backend, cell, norm):
    """``batch_first=True`` on (B, T, ...) equals the time-major model on (T, B, ...), with the
    same masks (one seed) and lengths."""
    options = dict(REGULARIZERS["all"])
    tm = make_model(cell, backend, norm, **options)
    bf = CELLS[cell](I, H, O, dtype="float64", backend=backend, norm=norm, batch_first=True,
                     num_layers=tm.num_layers, bidirectional=tm.bidirectional, **options)
    for name in bf.params:
        bf.params[name][...] = tm.params[name]
    x, h0, c0, state, target = make_batch(tm, np.random.default_rng(10))
    v1, g1, s1 = tm.loss_and_grad(x, target, state, LENGTHS, dropout_seed=6)
    v2, g2, s2 = bf.loss_and_grad(x.swapaxes(0, 1), target.swapaxes(0, 1), state, LENGTHS,
                                  dropout_seed=6)
    np.testing.assert_allclose(v2, v1, rtol=1e-13)
    for name in g1:
        want = g1[name].swapaxes(0, 1) if name == "x" else g1[name]
        np.testing.assert_allclose(g2[name], want, rtol=1e-12, atol=1e-14, err_msg=name)
    for name in tm.running:
        np.testing.assert_allclose(bf.running[name], tm.running[name], rtol=1e-13)
    y1, _ = tm.forward(x, state, LENGTHS)
    y2, _ = bf.forward(x.swapaxes(0, 1), state, LENGTHS)
    np.testing.assert_allclose(y2, y1.swapaxes(0, 1), rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# 5. persistence: the options and the running statistics go with the model
# ---------------------------------------------------------------------------------------------


def trained_model(cell, norm, **options):
    model = make_model(cell, "numpy", norm, **options)
    x, _, _, state, target = make_batch(model, np.random.default_rng(12))
    model.loss_and_grad(x, target, state, LENGTHS, dropout_seed=0)
    return model, x, state


def assert_same_model(loaded, model, x, state):
    assert type(loaded) is type(model)
    for name in ("norm", "recurrent_dropout", "zoneout", "weight_drop"):
        assert getattr(loaded, name) == getattr(model, name), name
    assert loaded.params.keys() == model.params.keys()
    for name in model.params:
        np.testing.assert_array_equal(loaded.params[name], model.params[name], err_msg=name)
    assert loaded.running.keys() == model.running.keys()
    for name in model.running:
        np.testing.assert_array_equal(loaded.running[name], model.running[name], err_msg=name)
    # the loaded model runs on the default backend: the same outputs up to rounding
    np.testing.assert_allclose(loaded.forward(x, state, LENGTHS)[0],
                               model.forward(x, state, LENGTHS)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", [None, "layer", "batch"], ids=["nonorm", "layer", "batch"])
def test_pickle_keeps_options_and_running_statistics(cell, norm):
    import pickle

    model, x, state = trained_model(cell, norm, zoneout=0.2, recurrent_dropout=0.1,
                                    weight_drop=0.1)
    assert_same_model(pickle.loads(pickle.dumps(model)), model, x, state)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_save_load_normalized_model(tmp_path, cell, norm):
    model, x, state = trained_model(cell, norm)
    path = tmp_path / "model.npz"
    model.save(path)
    assert_same_model(cyrnn.io.load(path), model, x, state)


@pytest.mark.parametrize("cell", list(CELLS))
def test_save_load_regularized_model(tmp_path, cell):
    model, x, state = trained_model(cell, None, zoneout=0.2, recurrent_dropout=0.1,
                                    weight_drop=0.1)
    path = tmp_path / "model.npz"
    model.save(path)
    assert_same_model(cyrnn.io.load(path), model, x, state)


@pytest.mark.parametrize("cell", list(CELLS))
def test_padding_beyond_every_length_is_not_a_trained_step(cell):
    """Trained on T = 4 with lengths at most 2, a model infers at steps 2 and 3 with step 1's
    statistics, as if it had been trained on T = 2."""
    model = make_model(cell, "numpy", "batch")
    x, _, _, state, target = make_batch(model, np.random.default_rng(14))
    short = np.array([2, 1, 2])
    model.loss_and_grad(x, target, state, short)
    cut = make_model(cell, "numpy", "batch")
    for name in cut.params:
        cut.params[name][...] = model.params[name]
    cut.loss_and_grad(x[:2], target[:2], state, short)
    for name in model.running:  # the same statistics over the steps some sequence reached
        np.testing.assert_allclose(model.running[name][:2], cut.running[name], rtol=1e-13)
    np.testing.assert_allclose(model.forward(x, state)[0], cut.forward(x, state)[0],
                               rtol=1e-12, atol=1e-14)
