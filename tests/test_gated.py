"""``cyrnn.LSTM`` and ``cyrnn.GRU`` without torch: central-difference gradient checks (full
BPTT, dropout with a fixed ``dropout_seed``), the two backends against each other in every
mode, the API (state layouts, generation, forecasting, ``from_params``/``config``, ``repr``,
initialisation), the Keras 3 weight exchange (against real keras when installed, against
Keras's documented layout and equations written out in NumPy otherwise), and clear errors.

The PyTorch oracle and the truncation references live in ``test_gated_oracle.py``.
"""
import itertools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import cyrnn  # noqa: E402
from cyrnn.data import Vocabulary  # noqa: E402

T, B, I, H, O = 4, 2, 3, 2, 3
LENGTHS = np.array([4, 2])
EPS = 1e-6
CELLS = {"lstm": cyrnn.LSTM, "gru": cyrnn.GRU}
STATE_TOL = {np.float32: 1e-5, np.float64: 1e-12}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def numeric_grads(fn, arrays, eps=EPS):
    """Central differences of ``fn()`` for every entry of every array (perturbed in place)."""
    out = {}
    for name, a in arrays.items():
        g = np.zeros_like(a, dtype=np.float64)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + eps
            plus = fn()
            a[idx] = keep - eps
            minus = fn()
            a[idx] = keep
            g[idx] = (plus - minus) / (2 * eps)
        out[name] = g
    return out


def assert_close(got, want, tol, name=""):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} vs {want.shape}"
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=name)


def make_target(rng, loss, shape, width):
    if loss == "cross_entropy":
        return rng.integers(0, width, size=shape)
    if loss == "bce":
        return rng.uniform(0, 1, size=shape + (width,))
    return rng.normal(size=shape + (width,))


def num_states(L, bi):
    return L * (2 if bi else 1)


def flatten_state(s):
    """A state as a dict of arrays: {"h"} or {"h", "c"}."""
    return {"h": s[0], "c": s[1]} if isinstance(s, tuple) else {"h": s}


# ---------------------------------------------------------------------------------------------
# 1. central differences: full BPTT, dropout with a fixed dropout_seed
# ---------------------------------------------------------------------------------------------

# (cell, layers, bidirectional, dropout, tokens, lengths, target_steps, output, loss)
GRADCHECK_CASES = [
    ("lstm", 2, True, 0.4, False, True, "all", "softmax", "cross_entropy"),
    ("lstm", 3, False, 0.5, True, False, "last", "sigmoid", "bce"),
    ("lstm", 1, False, 0.0, False, True, "all", "linear", "mse"),
    ("gru", 2, True, 0.4, False, False, "last", "linear", "mse"),
    ("gru", 3, False, 0.3, False, True, "all", "sigmoid", "bce"),
    ("gru", 2, False, 0.0, True, True, "all", "softmax", "cross_entropy"),
]
GRADCHECK_IDS = [
    f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}-p{c[3]}-{'tok' if c[4] else 'dense'}-"
    f"{'len' if c[5] else 'full'}-{c[6]}-{c[8]}" for c in GRADCHECK_CASES
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=GRADCHECK_IDS)
def test_gradients_match_central_differences(backend, case):
    cell, L, bi, p, tokens, use_lengths, ts, output, loss = case
    rng = np.random.default_rng(1)
    S = num_states(L, bi)
    model = CELLS[cell](I, H, O, num_layers=L, bidirectional=bi, dropout=p, output=output,
                        dtype="float64", seed=3, backend=backend)
    x = rng.integers(0, I, size=(T, B)) if tokens else rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(scale=0.5, size=(S, B, H)), rng.normal(scale=0.5, size=(S, B, H))
    state = (h0, c0) if cell == "lstm" else h0  # the arrays themselves: perturbed in place
    lengths = LENGTHS if use_lengths else None
    target = make_target(rng, loss, (T, B) if ts == "all" else (B,), O)
    kwargs = dict(lengths=lengths, loss=loss, target_steps=ts, reduction="sum", dropout_seed=21)

    value, grads, _ = model.loss_and_grad(x, target, state, **kwargs)
    assert model.loss_and_grad(x, target, state, **kwargs)[0] == value  # masks fixed by seed

    def loss_fn():
        return model.loss_and_grad(x, target, state, input_grad=False, **kwargs)[0]

    variables = dict(model.params, h0=h0)
    if cell == "lstm":
        variables["c0"] = c0
    if not tokens:
        variables["x"] = x
    want = numeric_grads(loss_fn, variables)
    assert set(grads) == set(want)
    for name, g in want.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-7, err_msg=name)
    if p:
        no_drop = CELLS[cell].from_params(model.params, output=output, dtype="float64",
                                          backend=backend)
        assert no_drop.loss_and_grad(x, target, state, **kwargs)[0] != pytest.approx(value)


@pytest.mark.parametrize("cell", list(CELLS))
def test_randomized_truncation_is_its_seeded_carry(backend, cell):
    """``RandomizedTruncation(p, seed)``: one fresh carry draw per call, reproduced by a new
    object with the same seed; ``p = 1`` is full BPTT; its draw is a carry scale, the
    mechanism of ``TBPTT(k, k)``, so a draw equal to ``TBPTT(2, 2)``'s carry gives that
    truncation's gradients. (Against torch with detach: ``test_gated_oracle``.)"""
    rng = np.random.default_rng(5)
    model = CELLS[cell](I, H, O, num_layers=2, bidirectional=True, output="softmax",
                        dtype="float64", seed=1, backend=backend)
    Tn = 6
    x, target = rng.normal(size=(Tn, B, I)), rng.integers(0, O, size=(Tn, B))

    def grads(truncate):
        return model.loss_and_grad(x, target, truncate=truncate)[1]

    first = grads(cyrnn.RandomizedTruncation(0.5, seed=9))
    again = grads(cyrnn.RandomizedTruncation(0.5, seed=9))
    for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)
    full = grads(None)
    for name, g in grads(cyrnn.RandomizedTruncation(1.0, seed=0)).items():
        np.testing.assert_allclose(g, full[name], rtol=1e-13, atol=1e-15, err_msg=name)
    # only the draw matters: a RandomizedTruncation whose draw is TBPTT(2, 2)'s carry
    # (0, 1, 0, 1, ...) gives TBPTT(2, 2)'s gradients
    chunked = grads(cyrnn.TBPTT(2, 2))

    class Fixed(cyrnn.RandomizedTruncation):
        def carry(self, T):
            return cyrnn.TBPTT(2, 2).carry(T)

    for name, g in grads(Fixed(0.5, seed=0)).items():
        np.testing.assert_allclose(g, chunked[name], rtol=1e-13, atol=1e-15, err_msg=name)
    # a carry of 1/p on kept steps scales the gradient through them: p < 1 differs
    other = grads(cyrnn.RandomizedTruncation(0.5, seed=10))
    assert any(not np.allclose(other[n], first[n]) for n in first if n.startswith("Whh"))


# ---------------------------------------------------------------------------------------------
# 2. the backends agree
# ---------------------------------------------------------------------------------------------

MODES = {
    "full": {},
    "tokens": {"tokens": True},
    "lengths": {"lengths": True},
    "last-lengths": {"target_steps": "last", "lengths": True},
    "sum": {"reduction": "sum"},
    "batch_first": {"batch_first": True, "lengths": True},
    "truncate-2-lengths": {"truncate": lambda: 2, "lengths": True},
    "tbptt(2,3)": {"truncate": lambda: cyrnn.TBPTT(2, 3)},
    "tbptt(2,2)-lengths": {"truncate": lambda: cyrnn.TBPTT(2, 2), "lengths": True},
    "randomized": {"truncate": lambda: cyrnn.RandomizedTruncation(0.5, seed=3)},
    "dropout": {"dropout": 0.4},
    "dropout-lengths-tokens": {"dropout": 0.4, "lengths": True, "tokens": True},
    "no-input-grad": {"input_grad": False},
    "sigmoid-bce": {"output": "sigmoid", "loss": "bce"},
    "linear-mse": {"output": "linear", "loss": "mse", "lengths": True},
    "no-output-layer": {"output_size": None, "loss": "mse"},
    "no-output-layer-lengths": {"output_size": None, "loss": "mse", "lengths": True},
    "unbatched": {"unbatched": True},
    "unbatched-tokens-last": {"unbatched": True, "tokens": True, "target_steps": "last"},
}
AGREE_ARCHS = [(2, True), (1, False)]


def agree_case(backend, dtype, cell, L, bi, mode, seed=0):
    rng = np.random.default_rng(seed)
    opts = dict(MODES[mode])
    output_size = opts.get("output_size", O)
    output = opts.get("output", "softmax")
    loss = opts.get("loss", "cross_entropy")
    bf = opts.get("batch_first", False)
    unbatched = opts.get("unbatched", False)
    Tn, Bn = 6, 3
    S = num_states(L, bi)
    model = CELLS[cell](I, H, output_size, num_layers=L, bidirectional=bi,
                        dropout=opts.get("dropout", 0.0) if L > 1 else 0.0,
                        output=output if output_size else "linear", dtype=dtype, seed=seed,
                        backend=backend, batch_first=bf)
    width = output_size if output_size else (2 if bi else 1) * H
    x = rng.integers(0, I, size=(Tn, Bn)) if opts.get("tokens") else (
        rng.normal(size=(Tn, Bn, I)).astype(dtype))
    h0 = rng.normal(scale=0.5, size=(S, Bn, H)).astype(dtype)
    c0 = rng.normal(scale=0.5, size=(S, Bn, H)).astype(dtype)
    lengths = np.array([6, 2, 4]) if opts.get("lengths") else None
    ts = opts.get("target_steps", "all")
    target = make_target(rng, loss, (Tn, Bn) if ts == "all" else (Bn,), width)
    if loss != "cross_entropy":
        target = target.astype(dtype)
    if unbatched:
        x, h0, c0 = x[:, 0], h0[:, 0], c0[:, 0]
        target = target[:, 0] if ts == "all" else target[0]
        lengths = None
    elif bf:
        x = np.swapaxes(x, 0, 1).copy()
        if ts == "all":
            target = np.swapaxes(target, 0, 1).copy()
    state = (h0, c0) if cell == "lstm" else h0
    truncate = opts["truncate"]() if "truncate" in opts else None
    y, s_fwd = model.forward(x, state, lengths)
    value, grads, s_last = model.loss_and_grad(
        x, target, state, lengths, loss=loss, reduction=opts.get("reduction", "mean"),
        target_steps=ts, truncate=truncate, input_grad=opts.get("input_grad", True),
        dropout_seed=17)
    ev, s_ev = model.evaluate(x, target, state, lengths, loss=loss, target_steps=ts)
    out = dict(y=y, loss=value, eval=ev, **{"grad " + k: v for k, v in grads.items()})
    for prefix, s in (("fwd ", s_fwd), ("last ", s_last), ("eval ", s_ev)):
        assert isinstance(s, tuple) == (cell == "lstm")
        out.update({prefix + k: v for k, v in flatten_state(s).items()})
    return out, lengths


@pytest.mark.parametrize("L, bi, mode", [
    pytest.param(L, bi, mode, id=f"L{L}-{'bi' if bi else 'uni'}-{mode}")
    for (L, bi), mode in itertools.product(AGREE_ARCHS, MODES)])
@pytest.mark.parametrize("cell", list(CELLS))
def test_backends_agree(dtype, cell, L, bi, mode):
    got, lengths = agree_case("cython", dtype, cell, L, bi, mode)
    want, _ = agree_case("numpy", dtype, cell, L, bi, mode)
    assert set(got) == set(want)
    if MODES[mode].get("input_grad") is False or MODES[mode].get("tokens"):
        assert "grad x" not in got
    assert ("grad c0" in got) == (cell == "lstm")
    tol = STATE_TOL[dtype]
    for name in want:
        a, b = got[name], want[name]
        if name == "y" and lengths is not None:
            bf = MODES[mode].get("batch_first", False)
            valid = np.arange(a.shape[1 if bf else 0])[:, None] < lengths[None, :]
            a, b = (a.swapaxes(0, 1), b.swapaxes(0, 1)) if bf else (a, b)
            a, b = a[valid], b[valid]
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype == np.dtype(dtype), name
        assert_close(a, b, tol, f"{name} [{cell} {mode}]")


@pytest.mark.parametrize("cell", list(CELLS))
def test_same_dropout_seed_same_masks_on_both_backends(cell):
    values = [agree_case(b, np.float64, cell, 2, True, "dropout")[0]["loss"]
              for b in ("cython", "numpy")]
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    other = agree_case("numpy", np.float64, cell, 2, True, "full")[0]["loss"]
    assert other != pytest.approx(values[1], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. API: state layouts, generation, forecasting, from_params/config, repr, init
# ---------------------------------------------------------------------------------------------


def test_lstm_state_layouts_of_a_stack(backend):
    L, bi = 2, True
    S = num_states(L, bi)
    model = cyrnn.LSTM(I, H, O, num_layers=L, bidirectional=bi, output="softmax", seed=0,
                       dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    h0, c0 = rng.normal(size=(S, B, H)), rng.normal(size=(S, B, H))
    for state in ((h0, c0), [h0, c0], None):
        _, (h_last, c_last) = model.forward(x, state)
        assert h_last.shape == c_last.shape == (S, B, H)
        _, grads, (h_last, c_last) = model.loss_and_grad(x, target, state)
        assert h_last.shape == c_last.shape == grads["h0"].shape == grads["c0"].shape == (S, B, H)
    # the pair as a list is the pair as a tuple; None is zeros
    np.testing.assert_array_equal(model.forward(x, [h0, c0])[0], model.forward(x, (h0, c0))[0])
    zeros = np.zeros((S, B, H))
    np.testing.assert_array_equal(model.forward(x)[0], model.forward(x, (zeros, zeros))[0])
    # c0 matters, and its last state is not h's
    y1, (h1, c1) = model.forward(x, (h0, c0))
    y2, _ = model.forward(x, (h0, np.zeros_like(c0)))
    assert not np.allclose(y1, y2) and not np.allclose(h1, c1)
    # unbatched: (L*D, H) each, equal to the batched results of that sequence
    y_u, (h_u, c_u) = model.forward(x[:, 1], (h0[:, 1], c0[:, 1]))
    assert y_u.shape == (T, O) and h_u.shape == c_u.shape == (S, H)
    np.testing.assert_allclose(y_u, y1[:, 1], rtol=1e-12)
    np.testing.assert_allclose(h_u, h1[:, 1], rtol=1e-12)
    np.testing.assert_allclose(c_u, c1[:, 1], rtol=1e-12)
    _, grads_u, (h_lu, c_lu) = model.loss_and_grad(x[:, 1], target[:, 1], (h0[:, 1], c0[:, 1]))
    assert grads_u["h0"].shape == grads_u["c0"].shape == h_lu.shape == c_lu.shape == (S, H)
    # a unidirectional stack's last states feed back as the next call's initial state (a
    # sequence in chunks)
    uni = cyrnn.LSTM(I, H, O, num_layers=2, seed=0, dtype="float64", backend=backend)
    y_all, (h_all, c_all) = uni.forward(x, (h0[:2], c0[:2]))
    _, s_a = uni.forward(x[:2], (h0[:2], c0[:2]))
    y_b, (h_b, c_b) = uni.forward(x[2:], s_a)
    np.testing.assert_allclose(y_b, y_all[2:], rtol=1e-12)
    np.testing.assert_allclose(h_b, h_all, rtol=1e-12)
    np.testing.assert_allclose(c_b, c_all, rtol=1e-12)


def test_lstm_state_layouts_of_a_single_layer(backend):
    model = cyrnn.LSTM(I, H, O, output="softmax", seed=0, dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    h0, c0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    results = {}
    for layout, state in (("flat", (h0, c0)), ("stacked", (h0[None], c0[None])),
                          ("default", None)):
        _, (hf, cf) = model.forward(x, state)
        _, grads, (hl, cl) = model.loss_and_grad(x, target, state)
        shape = (1, B, H) if layout == "stacked" else (B, H)
        for a in (hf, cf, hl, cl, grads["h0"], grads["c0"]):
            assert a.shape == shape, layout
        results[layout] = [a.reshape(B, H) for a in (hl, cl, grads["h0"], grads["c0"])]
    for a, b in zip(results["flat"], results["stacked"]):
        np.testing.assert_array_equal(a, b)
    # unbatched: (H,) or (1, H) each
    _, (h, c) = model.forward(x[:, 0], (h0[0], c0[0]))
    assert h.shape == c.shape == (H,)
    _, (h, c) = model.forward(x[:, 0], (h0[:1], c0[:1]))
    assert h.shape == c.shape == (1, H)
    _, (h, c) = model.forward(x[:, 0])
    assert h.shape == c.shape == (H,)
    # c0 must have h0's layout
    with pytest.raises(ValueError, match=r"c0: expected shape \(1, 2, 2\) \(the layout of h0\)"):
        model.forward(x, (h0[None], c0))
    with pytest.raises(ValueError, match=r"c0: expected shape \(2, 2\) \(the layout of h0\)"):
        model.forward(x, (h0, c0[None]))


def test_gru_state_is_one_array(backend):
    model = cyrnn.GRU(I, H, O, num_layers=2, output="softmax", seed=0, dtype="float64",
                      backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    h0 = rng.normal(size=(2, B, H))
    y, h_last = model.forward(x, h0)
    assert isinstance(h_last, np.ndarray) and h_last.shape == (2, B, H)
    _, grads, h_last2 = model.loss_and_grad(x, target, h0)
    assert "c0" not in grads and grads["h0"].shape == (2, B, H)
    np.testing.assert_allclose(h_last2, h_last, rtol=1e-12)
    assert list(model.params)[:4] == ["Wxh", "Whh", "bh", "bhn"]
    assert model.params["bhn_l1"].shape == (H,)
    # a pair is not a GRU state
    with pytest.raises(ValueError, match="h0: expected shape"):
        model.forward(x, (h0, h0))
    single = cyrnn.GRU(I, H, O, seed=0, dtype="float64", backend=backend)
    assert single.forward(x)[1].shape == (B, H)
    assert single.forward(x, h0[:1])[1].shape == (1, B, H)


def char_model(cell, backend):
    vocab = Vocabulary.from_text("hello gated world")
    V = len(vocab)
    # seeds whose greedy continuation of "hel" is not one repeated token
    seed = {"lstm": 2, "gru": 4}[cell]
    model = CELLS[cell](V, 8, V, num_layers=2, output="softmax", dtype="float64", seed=seed,
                        backend=backend)
    for p in model.params.values():  # larger weights: greedy decoding does not settle at once
        p *= 5.0
    model.vocab = vocab
    return model


@pytest.mark.parametrize("cell", list(CELLS))
def test_sample_and_greedy_on_a_two_layer_char_model(backend, cell):
    model = char_model(cell, backend)
    text = model.sample("hel", 12, seed=3)
    assert isinstance(text, str) and len(text) == 12
    assert model.sample("hel", 12, seed=3) == text
    assert model.sample("hel", 12, seed=4) != text or model.sample("hel", 12, seed=5) != text
    ids = model.vocab.encode("hel")
    assert model.vocab.decode(model.sample(ids, 12, seed=3)) == text
    n = 10
    greedy = model.greedy(ids, n)
    np.testing.assert_array_equal(model.sample(ids, n, temperature=0.0), greedy)
    seq = list(ids)
    for i in range(n):
        y, _ = model.forward(np.array(seq))
        assert greedy[i] == int(np.argmax(y[-1])), f"step {i}"
        seq.append(int(greedy[i]))
    assert len(set(greedy.tolist())) > 1
    # an initial state is the state before the prime: (h0, c0) for LSTM, each (L, H)
    rng = np.random.default_rng(0)
    state = rng.normal(size=(2, 8))
    if cell == "lstm":
        state = (state, rng.normal(size=(2, 8)))
    g0 = model.greedy(ids, 4, h0=state)
    y, _ = model.forward(np.array(ids), state)
    assert g0[0] == int(np.argmax(y[-1]))
    np.testing.assert_array_equal(model.greedy(ids, 4, h0=state), g0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_generation_refuses_bidirectional_models(cell):
    model = CELLS[cell](5, 4, 5, bidirectional=True, output="softmax", seed=0)
    with pytest.raises(ValueError, match="bidirectional"):
        model.sample([1, 2], 3, seed=0)


def test_forecast_on_an_lstm_regression_model(backend):
    model = cyrnn.LSTM(3, 4, 3, num_layers=2, dtype="float64", seed=0, backend=backend)
    context = np.random.default_rng(0).normal(size=(5, 3))
    pred = model.forecast(context, 3)
    assert pred.shape == (3, 3)
    y, state = model.forward(context)
    np.testing.assert_allclose(pred[0], y[-1], rtol=1e-12)
    y1, state1 = model.forward(y[-1:], state)
    np.testing.assert_allclose(pred[1], y1[0], rtol=1e-12)
    y2, _ = model.forward(y1, state1)
    np.testing.assert_allclose(pred[2], y2[0], rtol=1e-12)
    # batched, batch_first
    bf = cyrnn.LSTM.from_params(model.params, dtype="float64", backend=backend, batch_first=True)
    ctx = np.random.default_rng(1).normal(size=(2, 5, 3))
    pb = bf.forecast(ctx, 2)
    assert pb.shape == (2, 2, 3)
    np.testing.assert_allclose(pb[1], model.forecast(ctx[1], 2), rtol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("L, bi", [(2, True), (1, False)], ids=["L2-bi", "L1"])
def test_from_params_and_config_round_trip(backend, cell, L, bi):
    cls = CELLS[cell]
    p = 0.25 if L > 1 else 0.0
    model = cls(I, H, O, num_layers=L, bidirectional=bi, output="softmax", dropout=p,
                dtype="float64", seed=4, backend=backend, batch_first=True)
    config = model.config()
    assert "nonlinearity" not in config and "negative_slope" not in config
    assert config["num_layers"] == L and config["bidirectional"] == bi
    copy = cls.from_params(model.params, output="softmax", dropout=p, dtype="float64",
                           backend=backend, batch_first=True)
    assert type(copy) is cls
    assert copy.config() == config
    assert list(copy.params) == list(model.params)
    for name in model.params:
        np.testing.assert_array_equal(copy.params[name], model.params[name])
        assert copy.params[name] is not model.params[name]
    x = np.random.default_rng(0).normal(size=(B, T, I))
    np.testing.assert_array_equal(copy.forward(x)[0], model.forward(x)[0])
    fresh = cls(**config, seed=0)
    assert {k: v.shape for k, v in fresh.params.items()} == {
        k: v.shape for k, v in model.params.items()}
    with pytest.raises(TypeError, match="unexpected arguments"):
        cls.from_params(model.params, nonlinearity="relu")
    with pytest.raises(TypeError):
        cls(I, H, O, nonlinearity="relu")


def test_repr():
    text = repr(cyrnn.LSTM(I, H, O, num_layers=2, bidirectional=True, dropout=0.1))
    assert text.startswith("LSTM(input_size=3, hidden_size=2, output_size=3")
    assert "num_layers=2" in text and "bidirectional=True" in text and "dropout=0.1" in text
    assert "nonlinearity" not in text
    plain = repr(cyrnn.GRU(I, H))
    assert plain.startswith("GRU(input_size=3, hidden_size=2, output_size=None")
    assert "num_layers" not in plain and "nonlinearity" not in plain


@pytest.mark.parametrize("cell", list(CELLS))
def test_init_schemes(cell):
    cls, gates = CELLS[cell], {"lstm": 4, "gru": 3}[cell]
    Hn = 5
    with pytest.raises(ValueError, match=r"init: 'identity' \(IRNN\) is for Elman cells"):
        cls(I, Hn, O, init="identity")
    with pytest.raises(ValueError, match="init: expected one of"):
        cls(I, Hn, O, init="he")
    for scheme in ("uniform", "xavier", "orthogonal", "normal"):
        model = cls(I, Hn, O, num_layers=2, bidirectional=True, init=scheme, dtype="float64",
                    seed=0)
        p = model.params
        assert p["Wxh_l1_reverse"].shape == (gates * Hn, 2 * Hn)
        assert p["Whh"].shape == (gates * Hn, Hn)
        if scheme != "uniform":
            for name in p:
                if name.startswith(("bh", "bhn", "by")):
                    np.testing.assert_array_equal(p[name], 0.0, err_msg=f"{scheme} {name}")
        if scheme == "orthogonal":
            for g in range(gates):
                block = p["Whh_l1"][g * Hn:(g + 1) * Hn]
                np.testing.assert_allclose(block @ block.T, np.eye(Hn), atol=1e-12)
        if scheme == "uniform":
            k = 1 / np.sqrt(Hn)
            assert all(np.abs(p[n]).max() <= k for n in p if n.startswith(("Wxh", "Whh")))
            assert all(np.abs(p[n]).max() <= 2 * k for n in p if n.startswith("bh"))
        # the seed fixes the draw
        again = cls(I, Hn, O, num_layers=2, bidirectional=True, init=scheme, dtype="float64",
                    seed=0)
        for name in p:
            np.testing.assert_array_equal(again.params[name], p[name])


# ---------------------------------------------------------------------------------------------
# 4. Keras 3 weights
# ---------------------------------------------------------------------------------------------

_sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731


def keras_reference(cell, layers, dense, x):
    """Keras's LSTM / GRU(reset_after=True) (+ Dense) forward, from the arrays of their
    ``get_weights()`` in Keras's documented layout (LSTM gates i, f, c, o; GRU gates z, r, h,
    bias (2, 3H) input/recurrent), batch-first x (B, T, I); ``Bidirectional`` layers (six
    arrays) run the second set backwards and flip its outputs back."""
    seq = x
    for arrays in layers:
        outs = []
        for d in range(len(arrays) // 3):
            kernel, rec, bias = arrays[3 * d:3 * d + 3]
            Hn = rec.shape[0]
            inp = seq[:, ::-1] if d else seq
            h = np.zeros((x.shape[0], Hn))
            c = np.zeros_like(h)
            hs = []
            for t in range(inp.shape[1]):
                if cell == "lstm":
                    a = inp[:, t] @ kernel + h @ rec + bias
                    i, f, g, o = (a[:, k * Hn:(k + 1) * Hn] for k in range(4))
                    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                    h = _sigmoid(o) * np.tanh(c)
                else:
                    xi = inp[:, t] @ kernel + bias[0]
                    hr = h @ rec + bias[1]
                    z = _sigmoid(xi[:, :Hn] + hr[:, :Hn])
                    r = _sigmoid(xi[:, Hn:2 * Hn] + hr[:, Hn:2 * Hn])
                    hh = np.tanh(xi[:, 2 * Hn:] + r * hr[:, 2 * Hn:])
                    h = z * h + (1 - z) * hh
                hs.append(h)
            out = np.stack(hs, axis=1)
            outs.append(out[:, ::-1] if d else out)
        seq = np.concatenate(outs, axis=-1)
    return seq @ dense[0] + dense[1]


def random_keras_arrays(rng, cell, L, bi, In, Hn, On):
    G = {"lstm": 4, "gru": 3}[cell] * Hn
    layers = []
    for layer in range(L):
        n_in = In if layer == 0 else (2 if bi else 1) * Hn
        arrays = []
        for _ in range(2 if bi else 1):
            bias_shape = (G,) if cell == "lstm" else (2, G)
            arrays += [rng.normal(scale=0.5, size=(n_in, G)), rng.normal(scale=0.5, size=(Hn, G)),
                       rng.normal(scale=0.5, size=bias_shape)]
        layers.append(arrays)
    dense = [rng.normal(size=((2 if bi else 1) * Hn, On)), rng.normal(size=On)]
    return layers, dense


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("L, bi", [(2, True), (1, False), (2, False)], ids=["L2-bi", "L1", "L2"])
def test_from_keras_arrays_follow_keras_equations(backend, cell, L, bi):
    """Without keras: arrays in Keras's documented layout, against Keras's equations."""
    rng = np.random.default_rng(7)
    layers, dense = random_keras_arrays(rng, cell, L, bi, I, H, O)
    model = CELLS[cell].from_keras(layers, dense, dtype="float64", backend=backend,
                                   batch_first=True)
    assert (model.num_layers, model.bidirectional, model.hidden_size) == (L, bi, H)
    x = rng.normal(size=(B, T, I))
    y, _ = model.forward(x)
    assert_close(y, keras_reference(cell, layers, dense, x), 1e-12, "y")
    # the inverse: to_keras_weights gives the arrays back (the GRU's recurrent r/z biases are
    # folded into the input ones, which Keras adds: the same function)
    back_layers, back_dense = model.to_keras_weights()
    for arrays, back in zip(layers, back_layers):
        assert [a.shape for a in back] == [a.shape for a in arrays]
        for k, (a, b) in enumerate(zip(arrays, back)):
            if cell == "gru" and k % 3 == 2:
                np.testing.assert_allclose(b.sum(axis=0)[:2 * H], a.sum(axis=0)[:2 * H],
                                           rtol=1e-14)
                np.testing.assert_array_equal(b[:, 2 * H:], a[:, 2 * H:])
                np.testing.assert_array_equal(b[1, :2 * H], 0.0)
            else:
                np.testing.assert_array_equal(b, a)
    for a, b in zip(dense, back_dense):
        np.testing.assert_array_equal(b, a)
    again = CELLS[cell].from_keras(back_layers, back_dense, dtype="float64")
    for name in model.params:
        np.testing.assert_array_equal(again.params[name], model.params[name])


def test_from_keras_single_layer_flat_list_and_no_dense():
    rng = np.random.default_rng(0)
    layers, _ = random_keras_arrays(rng, "lstm", 1, False, I, H, O)
    model = cyrnn.LSTM.from_keras(layers[0], dtype="float64")  # one layer's three arrays
    assert model.output_size is None and model.num_layers == 1
    assert model.to_keras_weights()[1] is None
    np.testing.assert_array_equal(model.to_keras_weights()[0][0][0], layers[0][0])


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def keras_stack(keras, cell, inp, L, bi, Hn, On):
    seq, rec_layers = inp, []
    for _ in range(L):
        if cell == "lstm":
            rec = keras.layers.LSTM(Hn, return_sequences=True)
        else:
            rec = keras.layers.GRU(Hn, return_sequences=True, reset_after=True)
        layer = keras.layers.Bidirectional(rec) if bi else rec
        seq = layer(seq)
        rec_layers.append(layer)
    dense = keras.layers.Dense(On)
    return dense(seq), rec_layers, dense


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forward_equals_real_keras(keras):
    """Real keras: for each cell, a stack of two ``Bidirectional`` layers and a ``Dense`` head
    (one keras model with an LSTM branch and a GRU branch: keras's set-up dominates the time).
    Random weights set in keras and read with ``get_weights``: cyrnn's forward equals keras's
    ``predict``; ``to_keras_weights -> set_weights -> get_weights -> from_keras`` is exact and
    computes keras's outputs. (One backend: the two agree elsewhere; single layers are checked
    against Keras's equations above.)"""
    L, bi, Tn = 2, True, 5
    rng = np.random.default_rng(3)
    inp = keras.Input((Tn, I))
    branches = {cell: keras_stack(keras, cell, inp, L, bi, H, O) for cell in CELLS}
    km = keras.Model(inp, [branches[cell][0] for cell in CELLS])
    x = rng.normal(size=(B, Tn, I)).astype("float32")
    models, mine = {}, {}
    for cell, (_, rec_layers, dense) in branches.items():
        for layer in (*rec_layers, dense):
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                               for w in layer.get_weights()])
        layers = [layer.get_weights() for layer in rec_layers]
        assert [len(a) for a in layers] == [6, 6]
        models[cell] = CELLS[cell].from_keras(layers, dense.get_weights(), dtype="float64",
                                              batch_first=True)
        # the independent NumPy reference of Keras's equations, on the same arrays
        models[cell].reference = keras_reference(cell, layers, dense.get_weights(), x)
    want = dict(zip(CELLS, km.predict(x, verbose=0)))
    for cell, model in models.items():
        assert want[cell].shape == (B, Tn, O)
        y, _ = model.forward(x.astype(np.float64))
        np.testing.assert_allclose(y, want[cell], rtol=2e-5, atol=2e-5, err_msg=cell)
        np.testing.assert_allclose(model.reference, want[cell], rtol=2e-5, atol=2e-5)

    # round trip from cyrnn's side: exact in float32, and keras computes cyrnn's outputs
    for cell, (_, rec_layers, dense) in branches.items():
        mine[cell] = CELLS[cell](I, H, O, num_layers=L, bidirectional=bi, seed=5,
                                 batch_first=True)
        k_layers, k_dense = mine[cell].to_keras_weights()
        for layer, arrays in zip(rec_layers, k_layers):
            layer.set_weights(arrays)
        dense.set_weights(k_dense)
        back = CELLS[cell].from_keras([layer.get_weights() for layer in rec_layers],
                                      dense.get_weights(), batch_first=True)
        assert list(back.params) == list(mine[cell].params)
        for name in mine[cell].params:
            np.testing.assert_array_equal(back.params[name], mine[cell].params[name],
                                          err_msg=f"{cell} {name}")
    for cell, out in zip(CELLS, km.predict(x, verbose=0)):
        np.testing.assert_allclose(mine[cell].forward(x)[0], out, rtol=1e-4, atol=1e-5,
                                   err_msg=cell)


# ---------------------------------------------------------------------------------------------
# 5. bad input gets clear errors
# ---------------------------------------------------------------------------------------------


def test_lstm_state_errors():
    model = cyrnn.LSTM(I, H, O, num_layers=2, seed=0)
    x = np.zeros((T, B, I), np.float32)
    target = np.zeros((T, B, O), np.float32)
    h0 = np.zeros((2, B, H), np.float32)
    with pytest.raises(TypeError, match=r"h0: an LSTM's state is a pair \(h0, c0\), got an "
                                        r"array of shape \(2, 2, 2\)"):
        model.forward(x, h0)
    with pytest.raises(TypeError, match=r"an LSTM's state is a pair \(h0, c0\), got a tuple of 3"):
        model.forward(x, (h0, h0, h0))
    with pytest.raises(TypeError, match=r"an LSTM's state is a pair \(h0, c0\), got a tuple of 1"):
        model.loss_and_grad(x, target, (h0,))
    with pytest.raises(ValueError, match=r"c0: expected shape \(2, 2, 2\) \(num_layers \* "
                                         r"num_directions = 2, batch, hidden_size\), got \(2, 3, 2\)"):
        model.forward(x, (h0, np.zeros((2, 3, H), np.float32)))
    with pytest.raises(ValueError, match=r"c0: expected shape .*got \(2, 2\)"):
        model.loss_and_grad(x, target, (h0, np.zeros((B, H), np.float32)))
    with pytest.raises(ValueError, match=r"h0: expected shape .*got \(1, 2, 2\)"):
        model.forward(x, (h0[:1], h0))


def test_keras_arrays_of_the_wrong_layout():
    rng = np.random.default_rng(0)
    layers, dense = random_keras_arrays(rng, "lstm", 1, False, I, H, O)
    kernel, rec, bias = layers[0]
    with pytest.raises(ValueError, match=r"layers\[0\]: kernel expected shape .*, got \(8, 3\)"):
        cyrnn.LSTM.from_keras([[kernel.T, rec, bias]])  # transposed kernel
    with pytest.raises(ValueError, match=r"layers\[0\]: .*expected shape"):
        cyrnn.LSTM.from_keras([[kernel, rec.T, bias]])  # transposed recurrent kernel
    # LSTM arrays (four gates) given to a GRU (three)
    with pytest.raises(ValueError, match=r"layers\[0\]: kernel expected shape \(3, 6\), "
                                         r"got \(3, 8\)"):
        cyrnn.GRU.from_keras([[kernel, rec, np.zeros((2, 8))]])
    # GRU arrays given to an LSTM
    g_layers, _ = random_keras_arrays(rng, "gru", 1, False, I, H, O)
    with pytest.raises(ValueError, match=r"kernel expected shape \(3, 8\), got \(3, 6\)"):
        cyrnn.LSTM.from_keras(g_layers)
    with pytest.raises(ValueError, match=r"bias expected shape \(8,\), got \(7,\)"):
        cyrnn.LSTM.from_keras([[kernel, rec, bias[:7]]])
    with pytest.raises(ValueError, match="3 arrays per layer"):
        cyrnn.LSTM.from_keras([[kernel, rec]])
    # a second (backward) layer of another width
    b_layers, _ = random_keras_arrays(rng, "lstm", 1, True, I, H, O)
    b_layers[0][4] = b_layers[0][4][:, :4]
    with pytest.raises(ValueError, match=r"layers\[0\]\[backward\]: recurrent_kernel"):
        cyrnn.LSTM.from_keras(b_layers)


def test_transposed_keras_kernel_message_names_the_gate_columns():
    rng = np.random.default_rng(0)
    (kernel, rec, bias), = random_keras_arrays(rng, "lstm", 1, False, I, H, O)[0]
    with pytest.raises(ValueError) as err:
        cyrnn.LSTM.from_keras([[kernel.T, rec, bias]])  # (8, 3) instead of (3, 8)
    assert "(8, 8)" not in str(err.value), str(err.value)


def test_transposed_keras_recurrent_kernel_is_named():
    rng = np.random.default_rng(0)
    (kernel, rec, bias), = random_keras_arrays(rng, "lstm", 1, False, I, H, O)[0]
    with pytest.raises(ValueError, match="recurrent_kernel"):
        cyrnn.LSTM.from_keras([[kernel, rec.T, bias]])  # (8, 2) instead of (2, 8)


def test_gru_reset_after_false_is_refused():
    rng = np.random.default_rng(0)
    layers, _ = random_keras_arrays(rng, "gru", 1, False, I, H, O)
    kernel, rec, bias = layers[0]
    with pytest.raises(ValueError, match=r"reset_after=False \(bias of shape \(6,\)\).*"
                                         r"use reset_after=True"):
        cyrnn.GRU.from_keras([[kernel, rec, bias[0]]])
    with pytest.raises(ValueError, match=r"bias expected shape \(2, 6\), got \(3, 6\)"):
        cyrnn.GRU.from_keras([[kernel, rec, np.zeros((3, 6))]])


def torch_like_dict(gates, Hn=3, L=1, In=I):
    """A torch-style state dict (NumPy arrays) of ``gates`` gate blocks."""
    rng = np.random.default_rng(0)
    out = {}
    for layer in range(L):
        n_in = In if layer == 0 else Hn
        out[f"rnn.weight_ih_l{layer}"] = rng.normal(size=(gates * Hn, n_in))
        out[f"rnn.weight_hh_l{layer}"] = rng.normal(size=(gates * Hn, Hn))
        out[f"rnn.bias_ih_l{layer}"] = rng.normal(size=gates * Hn)
        out[f"rnn.bias_hh_l{layer}"] = rng.normal(size=gates * Hn)
    return out


def test_torch_dicts_with_the_wrong_gate_count():
    # a GRU's dict (3 gates, H = 3: 9 rows) for an LSTM
    with pytest.raises(ValueError, match=r"weight_hh_l0: a lstm layer has 4 gates, so rows a "
                                         r"multiple of 4; got shape \(9, 3\)"):
        cyrnn.LSTM.from_torch(torch_like_dict(3))
    # an LSTM's dict (12 rows) for a GRU: rows a multiple of 3 too, but not of (3H, H)
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(12, 4\), got \(12, 3\)|"
                                         r"weight_ih_l0: expected shape"):
        cyrnn.GRU.from_torch(torch_like_dict(4))
    # an Elman dict (H rows)
    with pytest.raises(ValueError, match=r"a gru layer has 3 gates"):
        cyrnn.GRU.from_torch(torch_like_dict(1, Hn=4))
    # the right count loads, biases summed (GRU: n-part of bias_hh kept apart)
    d = torch_like_dict(3)
    model = cyrnn.GRU.from_torch(d, dtype="float64")
    np.testing.assert_array_equal(model.params["bhn"], d["rnn.bias_hh_l0"][6:])
    np.testing.assert_array_equal(model.params["bh"][6:], d["rnn.bias_ih_l0"][6:])
    np.testing.assert_allclose(model.params["bh"][:6],
                               d["rnn.bias_ih_l0"][:6] + d["rnn.bias_hh_l0"][:6], rtol=1e-15)
    # and back: bias_ih = bh, bias_hh = [0, 0, bhn]
    state = model.to_torch_state()
    np.testing.assert_array_equal(state["rnn.bias_hh_l0"][:6], 0.0)
    np.testing.assert_array_equal(state["rnn.bias_hh_l0"][6:], model.params["bhn"])
    lstm = cyrnn.LSTM.from_torch(torch_like_dict(4), dtype="float64")
    np.testing.assert_array_equal(lstm.to_torch_state()["rnn.bias_hh_l0"], 0.0)


# ---------------------------------------------------------------------------------------------
# 6. found while testing: the gated models elsewhere in the library
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
def test_save_and_load_round_trip(tmp_path, cell):
    model = CELLS[cell](I, H, O, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = cyrnn.load(path)
    assert type(loaded) is CELLS[cell]
    for name in model.params:
        np.testing.assert_array_equal(loaded.params[name], model.params[name])


def test_clipping_skips_the_lstm_c0_gradient():
    from cyrnn.clip import clip_grad_norm, grad_norm

    rng = np.random.default_rng(0)
    model = cyrnn.LSTM(I, H, O, dtype="float64", seed=0)
    x, target = rng.normal(size=(T, B, I)), rng.normal(size=(T, B, O))
    state = (rng.normal(size=(B, H)), rng.normal(size=(B, H)))
    _, grads, _ = model.loss_and_grad(x, target, state)
    params_only = np.sqrt(sum(np.sum(grads[name] ** 2) for name in model.params))
    c0 = grads["c0"].copy()
    assert grad_norm(grads) == pytest.approx(params_only, rel=1e-12)
    clip_grad_norm(grads, 1e-3)
    np.testing.assert_array_equal(grads["c0"], c0)


def test_from_params_of_another_cell():
    """Parameters of another cell: the gate count or the GRU's bhn tells, with a clear error."""
    elman = cyrnn.RNN(I, H, O, seed=0)
    with pytest.raises(ValueError, match=r"Wxh: expected shape \(8, 3\), got \(2, 3\)"):
        cyrnn.LSTM.from_params(elman.params)
    lstm, gru = cyrnn.LSTM(I, H, O, seed=0), cyrnn.GRU(I, H, O, seed=0)
    with pytest.raises(KeyError, match=r"missing \['bhn'\]"):
        cyrnn.GRU.from_params(lstm.params)
    with pytest.raises(KeyError, match=r"unexpected \['bhn'\]"):
        cyrnn.LSTM.from_params(gru.params)
    with pytest.raises(ValueError, match=r"layers\[0\]: kernel expected shape"):
        cyrnn.RNN.from_keras(lstm.to_keras_weights()[0])
