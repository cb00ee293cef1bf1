"""Stacked and bidirectional models without torch: central-difference gradient checks (full
BPTT and dropout with a fixed ``dropout_seed``), the two backends against each other in every
mode, dropout semantics, the API and shapes of states, clear errors, and the seed's meaning.

The PyTorch oracle (and the truncation references) live in ``test_stack_oracle.py``.
"""
import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn.data import Vocabulary
from cyrnn.init import INITS, init_head, init_params

T, B, I, H, O = 5, 2, 3, 3, 4
LENGTHS = np.array([5, 3])
EPS = 1e-6
STATE_TOL = {np.float32: 1e-5, np.float64: 1e-12}

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def numeric_grads(fn, arrays, eps=EPS):
    """Central differences of the scalar ``fn()`` with respect to every entry of every array in
    ``arrays`` (perturbed in place, restored afterwards)."""
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


# ---------------------------------------------------------------------------------------------
# 2. central differences: full BPTT and dropout with a fixed dropout_seed
# ---------------------------------------------------------------------------------------------

# (layers, bidirectional, dropout, tokens, lengths, target_steps, output, loss, nonlinearity)
GRADCHECK_CASES = [
    (2, True, 0.0, False, True, "all", "softmax", "cross_entropy", "tanh"),
    (3, False, 0.0, True, False, "last", "sigmoid", "bce", "sigmoid"),
    (2, False, 0.4, False, False, "all", "linear", "mse", "tanh"),
    (2, True, 0.4, False, True, "last", "softmax", "cross_entropy", "tanh"),
    (3, True, 0.5, True, True, "all", "sigmoid", "bce", "leaky_relu"),
    (3, False, 0.3, False, False, "all", "sigmoid", "mse", "sigmoid"),
    (2, True, 0.2, False, False, "all", "linear", "cross_entropy", "tanh"),
]
GRADCHECK_IDS = [
    f"L{c[0]}-{'bi' if c[1] else 'uni'}-p{c[2]}-{'tok' if c[3] else 'dense'}-"
    f"{'len' if c[4] else 'full'}-{c[5]}-{c[6]}-{c[7]}-{c[8]}" for c in GRADCHECK_CASES
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=GRADCHECK_IDS)
def test_gradients_match_central_differences(backend, case):
    L, bi, p, tokens, use_lengths, ts, output, loss, nonlinearity = case
    rng = np.random.default_rng(1)
    S = num_states(L, bi)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, dropout=p, output=output,
                      nonlinearity=nonlinearity, negative_slope=0.2, dtype="float64", seed=3,
                      backend=backend)
    x = rng.integers(0, I, size=(T, B)) if tokens else rng.normal(size=(T, B, I))
    h0 = rng.normal(scale=0.5, size=(S, B, H))
    lengths = LENGTHS if use_lengths else None
    target = make_target(rng, loss, (T, B) if ts == "all" else (B,), O)
    kwargs = dict(lengths=lengths, loss=loss, target_steps=ts, reduction="sum",
                  dropout_seed=21)

    value, grads, _ = model.loss_and_grad(x, target, h0, **kwargs)
    # a fixed dropout_seed fixes the masks: the loss is a deterministic function of the weights
    assert model.loss_and_grad(x, target, h0, **kwargs)[0] == value

    def loss_fn():
        return model.loss_and_grad(x, target, h0, input_grad=False, **kwargs)[0]

    variables = dict(model.params, h0=h0)  # the live parameter arrays: perturbed in place
    if not tokens:
        variables["x"] = x
    want = numeric_grads(loss_fn, variables)
    assert set(grads) == set(want)
    for name, g in want.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-5, atol=1e-7, err_msg=name)
    if p:
        # the masks matter: the same weights without dropout give another loss
        no_drop = cyrnn.RNN.from_params(model.params, output=output, nonlinearity=nonlinearity,
                                        negative_slope=0.2, dtype="float64", backend=backend)
        assert no_drop.loss_and_grad(x, target, h0, **kwargs)[0] != pytest.approx(value)


# ---------------------------------------------------------------------------------------------
# 3. the backends agree
# ---------------------------------------------------------------------------------------------

MODES = {
    "full": {},
    "tokens": {"tokens": True},
    "lengths": {"lengths": True},
    "last": {"target_steps": "last"},
    "last-lengths": {"target_steps": "last", "lengths": True},
    "sum": {"reduction": "sum"},
    "batch_first": {"batch_first": True, "lengths": True},
    "relu": {"nonlinearity": "relu"},
    "truncate-2": {"truncate": lambda: 2},
    "truncate-2-lengths": {"truncate": lambda: 2, "lengths": True},
    "tbptt(2,3)": {"truncate": lambda: cyrnn.TBPTT(2, 3)},
    "tbptt(2,2)-lengths": {"truncate": lambda: cyrnn.TBPTT(2, 2), "lengths": True},
    "randomized": {"truncate": lambda: cyrnn.RandomizedTruncation(0.5, seed=3)},
    "dropout": {"dropout": 0.4},
    "dropout-lengths-tokens": {"dropout": 0.4, "lengths": True, "tokens": True},
    "no-input-grad": {"input_grad": False},
    "sigmoid-bce": {"output": "sigmoid", "loss": "bce"},
    # mse on a softmax output is refused (losses.COMPATIBLE_OUTPUTS, see
    # test_softmax_output_refuses_mse): mse through a sigmoid, and logits losses on linear outputs
    "sigmoid-mse": {"output": "sigmoid", "loss": "mse"},
    "linear-bce": {"output": "linear", "loss": "bce", "lengths": True},
    "linear-cross_entropy": {"output": "linear", "loss": "cross_entropy"},
    "no-output-layer": {"output_size": None, "loss": "mse"},
    "no-output-layer-lengths": {"output_size": None, "loss": "mse", "lengths": True},
    "unbatched": {"unbatched": True},
    "unbatched-tokens-last": {"unbatched": True, "tokens": True, "target_steps": "last"},
}
AGREE_ARCHS = [(2, True), (3, False)]


def agree_case(backend, dtype, L, bi, mode, seed=0):
    """Forward and loss_and_grad of one mode on one backend."""
    rng = np.random.default_rng(seed)
    opts = dict(MODES[mode])
    output_size = opts.get("output_size", O)
    output = opts.get("output", "softmax")
    loss = opts.get("loss", "cross_entropy")
    bf = opts.get("batch_first", False)
    unbatched = opts.get("unbatched", False)
    Tn, Bn = 6, 3
    S = num_states(L, bi)
    model = cyrnn.RNN(I, H, output_size, num_layers=L, bidirectional=bi,
                      dropout=opts.get("dropout", 0.0),
                      nonlinearity=opts.get("nonlinearity", "tanh"),
                      output=output if output_size else "linear", dtype=dtype, seed=seed,
                      backend=backend, batch_first=bf)
    width = output_size if output_size else (2 if bi else 1) * H
    if opts.get("tokens"):
        x = rng.integers(0, I, size=(Tn, Bn))
    else:
        x = rng.normal(size=(Tn, Bn, I)).astype(dtype)
    h0 = rng.normal(scale=0.5, size=(S, Bn, H)).astype(dtype)
    lengths = np.array([6, 2, 4]) if opts.get("lengths") else None
    ts = opts.get("target_steps", "all")
    target = make_target(rng, loss, (Tn, Bn) if ts == "all" else (Bn,), width)
    if loss != "cross_entropy":
        target = target.astype(dtype)
    if unbatched:
        x, h0, target = x[:, 0], h0[:, 0], (target[:, 0] if ts == "all" else target[0])
        lengths = None
    elif bf:
        x = np.swapaxes(x, 0, 1).copy()
        if ts == "all":
            target = np.swapaxes(target, 0, 1).copy()
    truncate = opts["truncate"]() if "truncate" in opts else None
    y, h_fwd = model.forward(x, h0, lengths)
    value, grads, h_last = model.loss_and_grad(
        x, target, h0, lengths, loss=loss, reduction=opts.get("reduction", "mean"),
        target_steps=ts, truncate=truncate, input_grad=opts.get("input_grad", True),
        dropout_seed=17)
    ev, h_ev = model.evaluate(x, target, h0, lengths, loss=loss, target_steps=ts)
    return dict(y=y, h_fwd=h_fwd, loss=value, h_last=h_last, eval=ev, h_eval=h_ev,
                **{"grad " + k: v for k, v in grads.items()}), lengths


def _agree_params():
    out = []
    for (L, bi), mode in itertools.product(AGREE_ARCHS, MODES):
        out.append(pytest.param(L, bi, mode,
                                id=f"L{L}-{'bi' if bi else 'uni'}-{mode}"))
    return out


@pytest.mark.parametrize("L, bi, mode", _agree_params())
def test_backends_agree(dtype, L, bi, mode):
    got, lengths = agree_case("cython", dtype, L, bi, mode)
    want, _ = agree_case("numpy", dtype, L, bi, mode)
    assert set(got) == set(want)
    if MODES[mode].get("input_grad") is False:
        assert "grad x" not in got
    tol = STATE_TOL[dtype]
    for name in want:
        a, b = got[name], want[name]
        if name == "y" and lengths is not None:  # outputs at padded steps are meaningless
            bf = MODES[mode].get("batch_first", False)
            valid = np.arange(a.shape[1 if bf else 0])[:, None] < lengths[None, :]
            a, b = (a.swapaxes(0, 1), b.swapaxes(0, 1)) if bf else (a, b)
            a, b = a[valid], b[valid]
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype == np.dtype(dtype), name
        assert_close(a, b, tol, f"{name} [{mode}]")


def test_same_dropout_seed_same_masks_on_both_backends():
    """The masks are drawn in Python from the seed: the two backends use the same ones (a
    dropout model, float64, where any other mask would change the loss by far more than 1e-12)."""
    values = []
    for backend in ("cython", "numpy"):
        got, _ = agree_case(backend, np.float64, 3, True, "dropout")
        values.append(got["loss"])
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    other, _ = agree_case("numpy", np.float64, 3, True, "full")
    assert other["loss"] != pytest.approx(values[1], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. dropout semantics
# ---------------------------------------------------------------------------------------------


def dropout_pair(backend, p=0.5, L=2, bi=True, seed=0):
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, dropout=p, output="softmax",
                      dtype="float64", seed=seed, backend=backend)
    plain = cyrnn.RNN.from_params(model.params, output="softmax", dtype="float64",
                                  backend=backend)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, I))
    target = rng.integers(0, O, size=(T, B))
    return model, plain, x, target


def generator_state(model):
    return model.generator.bit_generator.state


def test_forward_and_evaluate_never_drop(backend):
    model, plain, x, target = dropout_pair(backend)
    before = generator_state(model)
    y1, h1 = model.forward(x)
    y2, h2 = model.forward(x)
    np.testing.assert_array_equal(y1, y2)
    y0, h0 = plain.forward(x)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(h1, h0)
    for lengths in (None, LENGTHS):
        e1 = model.evaluate(x, target, lengths=lengths)
        e2 = model.evaluate(x, target, lengths=lengths)
        e0 = plain.evaluate(x, target, lengths=lengths)
        assert e1[0] == e2[0] == e0[0]
        np.testing.assert_array_equal(e1[1], e0[1])
    assert generator_state(model) == before  # nothing drawn


def test_training_drops_and_the_generator_moves(backend):
    model, plain, x, target = dropout_pair(backend)
    twin, _, _, _ = dropout_pair(backend)  # same seed
    plain_value = plain.loss_and_grad(x, target)[0]
    values = [model.loss_and_grad(x, target)[0] for _ in range(3)]
    assert all(v != pytest.approx(plain_value) for v in values)
    assert len(set(values)) == 3  # successive calls draw new masks
    # the generator is seeded by `seed`: a model with the same seed draws the same masks
    assert [twin.loss_and_grad(x, target)[0] for _ in range(3)] == values
    other = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, dropout=0.5, output="softmax",
                      dtype="float64", seed=1, backend=backend)
    other.set_params(model.params)
    assert other.loss_and_grad(x, target)[0] != values[0]
    # dropout_seed fixes the masks and leaves the generator alone
    before = generator_state(model)
    a = model.loss_and_grad(x, target, dropout_seed=5)
    b = model.loss_and_grad(x, target, dropout_seed=np.random.default_rng(5))
    assert a[0] == b[0]
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name])
    assert generator_state(model) == before
    # the generator's stream does not move the initialisation
    assert all(np.array_equal(model.params[k], cyrnn.RNN(
        I, H, O, num_layers=2, bidirectional=True, output="softmax", dtype="float64",
        seed=0).params[k]) for k in model.params)


@pytest.mark.parametrize("L, p", [(2, 0.0), (1, 0.5)], ids=["L2-p0", "L1-p0.5"])
def test_nothing_drawn_without_dropout(backend, L, p):
    """dropout=0, or a single layer (nothing between layers), draws nothing and changes nothing."""
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=True, dropout=p, output="softmax",
                      dtype="float64", seed=0, backend=backend)
    plain = cyrnn.RNN.from_params(model.params, output="softmax", dtype="float64",
                                  backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    before = generator_state(model)
    value, grads, _ = model.loss_and_grad(x, target)
    assert generator_state(model) == before
    value0, grads0, _ = plain.loss_and_grad(x, target)
    assert value == value0
    for name in grads0:
        np.testing.assert_array_equal(grads[name], grads0[name])


@pytest.mark.parametrize("L", [2, 3])
def test_masks_zero_with_p_and_scale_by_inverse_keep(backend, L):
    """An identity stack whose top states are the inputs times the product of the masks:
    ``Wxh = I``, ``Whh = 0``, ``bh = 0`` everywhere, identity activations, no output layer. With
    ``x = 1`` and mse (sum) against 0, ``grads["x"] = 2 m^2`` for ``m`` the product of the L - 1
    masks, so every ``m`` is read back: it is 0 or ``(1 / (1 - p))^(L-1)``, zero with probability
    ``1 - (1 - p)^(L-1)``, and ``E[m] = 1``."""
    p, Tn, Bn, Hn = 0.3, 40, 8, 4
    params = {}
    for layer in range(L):
        s = "" if layer == 0 else f"_l{layer}"
        params.update({"Wxh" + s: np.eye(Hn), "Whh" + s: np.zeros((Hn, Hn)),
                       "bh" + s: np.zeros(Hn)})
    model = cyrnn.RNN.from_params(params, nonlinearity="identity", dropout=p, dtype="float64",
                                  backend=backend)
    assert model.num_layers == L and model.output_size is None
    x = np.ones((Tn, Bn, Hn))
    value, grads, _ = model.loss_and_grad(x, np.zeros((Tn, Bn, Hn)), reduction="sum",
                                          dropout_seed=8)
    m = np.sqrt(grads["x"] / 2)
    kept = (1 / (1 - p)) ** (L - 1)
    assert np.all((m == 0) | np.isclose(m, kept, rtol=1e-12, atol=0))
    assert value == pytest.approx(np.sum(m ** 2), rel=1e-12)
    n = m.size
    q = 1 - (1 - p) ** (L - 1)  # probability that some mask zeroes an element
    assert abs(np.mean(m == 0) - q) < 5 * np.sqrt(q * (1 - q) / n)
    assert abs(np.mean(m) - 1) < 5 * np.sqrt(kept - 1) / np.sqrt(n)  # Var[m] = kept - 1
    # masks differ by step and by sequence, not one per unit
    assert len({tuple(row) for row in m.reshape(-1, Hn)}) > 2


@pytest.mark.parametrize("L, bi", [(2, True), (3, False)], ids=["L2-bi", "L3-uni"])
def test_padding_is_invisible(backend, L, bi):
    """With ``lengths``, each sequence gets exactly what it gets alone, cut to its length (the
    reverse direction starts at its own last step): outputs at valid steps, ``h_last``, the
    summed loss and every gradient; padded inputs get a zero gradient."""
    rng = np.random.default_rng(6)
    S = num_states(L, bi)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, output="softmax",
                      dtype="float64", seed=1, backend=backend)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(S, B, H))
    target = rng.integers(0, O, size=(T, B))
    lengths = np.array([2, 4])
    y, h_last = model.forward(x, h0, lengths)
    value, grads, _ = model.loss_and_grad(x, target, h0, lengths, reduction="sum")
    total, summed = 0.0, {name: np.zeros_like(p) for name, p in model.params.items()}
    for b, n in enumerate(lengths):
        y_b, h_b = model.forward(x[:n, b], h0[:, b])
        np.testing.assert_allclose(y[:n, b], y_b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_last[:, b], h_b, rtol=1e-12, atol=1e-14)
        v_b, g_b, _ = model.loss_and_grad(x[:n, b], target[:n, b], h0[:, b], reduction="sum")
        total += v_b
        for name in summed:
            summed[name] += g_b[name]
        np.testing.assert_allclose(grads["x"][:n, b], g_b["x"], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(grads["x"][n:, b], 0.0)
        np.testing.assert_allclose(grads["h0"][:, b], g_b["h0"], rtol=1e-12, atol=1e-14)
    assert value == pytest.approx(total, rel=1e-12)
    for name in summed:
        np.testing.assert_allclose(grads[name], summed[name], rtol=1e-11, atol=1e-13,
                                   err_msg=name)


# ---------------------------------------------------------------------------------------------
# 5. API and shapes
# ---------------------------------------------------------------------------------------------


def test_state_layouts_of_a_stack(backend):
    L, bi = 2, True
    S = num_states(L, bi)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, output="softmax", seed=0,
                      dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    h0 = rng.normal(size=(S, B, H))
    # batched: (L*D, B, H) in, out, and as the default
    for h in (h0, None):
        _, h_last = model.forward(x, h)
        assert h_last.shape == (S, B, H)
        _, grads, h_last = model.loss_and_grad(x, target, h)
        assert h_last.shape == grads["h0"].shape == (S, B, H)
    # unbatched: (L*D, H)
    y_u, h_u = model.forward(x[:, 1], h0[:, 1])
    assert h_u.shape == (S, H) and y_u.shape == (T, O)
    _, grads_u, h_last_u = model.loss_and_grad(x[:, 1], target[:, 1], h0[:, 1])
    assert grads_u["h0"].shape == h_last_u.shape == (S, H)
    assert model.forward(x[:, 1])[1].shape == (S, H)
    # ... equal to the batched results of that sequence
    y, h_last = model.forward(x, h0)
    np.testing.assert_allclose(y_u, y[:, 1], rtol=1e-12)
    np.testing.assert_allclose(h_u, h_last[:, 1], rtol=1e-12)
    # the (B, H) layout is a single unidirectional layer's only
    with pytest.raises(ValueError, match=r"num_layers \* num_directions = 4"):
        model.forward(x, h0[0])
    with pytest.raises(ValueError, match=r"num_layers \* num_directions = 4"):
        model.forward(x[:, 0], h0[0, 0])


def test_state_layouts_of_a_single_layer(backend):
    model = cyrnn.RNN(I, H, O, output="softmax", seed=0, dtype="float64", backend=backend)
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(T, B, I)), rng.integers(0, O, size=(T, B))
    h0 = rng.normal(size=(B, H))
    results = {}
    for layout, h in (("flat", h0), ("stacked", h0[None]), ("default", None)):
        _, h_fwd = model.forward(x, h)
        _, grads, h_last = model.loss_and_grad(x, target, h)
        shape = (1, B, H) if layout == "stacked" else (B, H)
        assert h_fwd.shape == h_last.shape == grads["h0"].shape == shape, layout
        results[layout] = (h_last.reshape(B, H), grads["h0"].reshape(B, H))
    for a, b in zip(results["flat"], results["stacked"]):
        np.testing.assert_array_equal(a, b)
    # unbatched: (H,) or (1, H)
    assert model.forward(x[:, 0], h0[0])[1].shape == (H,)
    assert model.forward(x[:, 0], h0[:1])[1].shape == (1, H)
    assert model.forward(x[:, 0])[1].shape == (H,)
    assert model.loss_and_grad(x[:, 0], target[:, 0], h0[:1])[1]["h0"].shape == (1, H)
    # a single bidirectional layer has two states: (B, H) is refused
    bi = cyrnn.RNN(I, H, O, bidirectional=True, seed=0, backend=backend)
    with pytest.raises(ValueError, match=r"num_layers \* num_directions = 2"):
        bi.forward(x, h0)


def test_parameter_names_and_shapes():
    model = cyrnn.RNN(I, H, O, num_layers=3, bidirectional=True, seed=0)
    D = 2
    assert list(model.params) == [
        "Wxh", "Whh", "bh", "Wxh_reverse", "Whh_reverse", "bh_reverse",
        "Wxh_l1", "Whh_l1", "bh_l1", "Wxh_l1_reverse", "Whh_l1_reverse", "bh_l1_reverse",
        "Wxh_l2", "Whh_l2", "bh_l2", "Wxh_l2_reverse", "Whh_l2_reverse", "bh_l2_reverse",
        "Why", "by"]
    assert model.params["Wxh"].shape == model.params["Wxh_reverse"].shape == (H, I)
    assert model.params["Wxh_l1"].shape == model.params["Wxh_l2_reverse"].shape == (H, D * H)
    assert model.params["Why"].shape == (O, D * H)
    uni = cyrnn.RNN(I, H, O, num_layers=2, seed=0)
    assert uni.params["Wxh_l1"].shape == (H, H) and uni.params["Why"].shape == (O, H)


@pytest.mark.parametrize("L, bi", [(2, True), (3, False), (1, True)], ids=["L2-bi", "L3", "L1-bi"])
def test_forward_without_output_layer_is_the_top_states(backend, L, bi):
    D = 2 if bi else 1
    model = cyrnn.RNN(I, H, None, num_layers=L, bidirectional=bi, dtype="float64", seed=0,
                      backend=backend)
    x = np.random.default_rng(0).normal(size=(T, B, I))
    y, h_last = model.forward(x)
    assert y.shape == (T, B, D * H)
    # the forward direction's top state at the last step, the reverse one's at step 0
    np.testing.assert_allclose(y[-1, :, :H], h_last[(L - 1) * D], rtol=1e-12)
    if bi:
        np.testing.assert_allclose(y[0, :, H:], h_last[(L - 1) * D + 1], rtol=1e-12)
    bf = cyrnn.RNN.from_params(model.params, dtype="float64", backend=backend, batch_first=True)
    y_bf, _ = bf.forward(np.swapaxes(x, 0, 1))
    assert y_bf.shape == (B, T, D * H)
    np.testing.assert_allclose(np.swapaxes(y_bf, 0, 1), y, rtol=1e-12)


@pytest.mark.parametrize("L, bi", [(2, True), (3, False), (1, True)], ids=["L2-bi", "L3", "L1-bi"])
def test_from_params_round_trip(backend, L, bi):
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, nonlinearity="relu",
                      output="softmax", dropout=0.25, dtype="float64", seed=4, backend=backend)
    copy = cyrnn.RNN.from_params(model.params, nonlinearity="relu", output="softmax",
                                 dropout=0.25, dtype="float64", backend=backend)
    assert (copy.num_layers, copy.bidirectional, copy.dropout) == (L, bi, 0.25)
    assert copy.config() == model.config()
    assert list(copy.params) == list(model.params)
    for name in model.params:
        np.testing.assert_array_equal(copy.params[name], model.params[name])
        assert copy.params[name] is not model.params[name]
    x = np.random.default_rng(0).normal(size=(T, B, I))
    np.testing.assert_array_equal(copy.forward(x)[0], model.forward(x)[0])
    # RNN(**config()) builds the same shape
    fresh = cyrnn.RNN(**model.config(), seed=0)
    assert {k: v.shape for k, v in fresh.params.items()} == {
        k: v.shape for k, v in model.params.items()}


def test_repr_shows_layers_and_directions():
    text = repr(cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, dropout=0.1))
    assert "num_layers=2" in text and "bidirectional=True" in text and "dropout=0.1" in text
    plain = repr(cyrnn.RNN(I, H, O))
    assert "num_layers" not in plain and "bidirectional" not in plain


def char_model(backend):
    vocab = Vocabulary.from_text("hello stacked world")
    V = len(vocab)
    model = cyrnn.RNN(V, 8, V, num_layers=2, output="softmax", dtype="float64", seed=2,
                      backend=backend)
    # larger weights than the initialisation, so that greedy decoding does not settle at once
    for name, p in model.params.items():
        p *= 3.0
    model.vocab = vocab
    return model


def test_sample_and_greedy_on_a_two_layer_char_model(backend):
    model = char_model(backend)
    text = model.sample("hel", 12, seed=3)
    assert isinstance(text, str) and len(text) == 12
    assert model.sample("hel", 12, seed=3) == text
    assert model.sample("hel", 12, seed=4) != text or model.sample("hel", 12, seed=5) != text
    ids = model.vocab.encode("hel")
    out = model.sample(ids, 12, seed=3)
    assert model.vocab.decode(out) == text
    # greedy: each token is the argmax of forward's probabilities after the prefix
    n = 10
    greedy = model.greedy(ids, n)
    np.testing.assert_array_equal(model.sample(ids, n, temperature=0.0), greedy)
    seq = list(ids)
    for i in range(n):
        y, _ = model.forward(np.array(seq))
        assert greedy[i] == int(np.argmax(y[-1])), f"step {i}"
        seq.append(int(greedy[i]))
    assert len(set(greedy.tolist())) > 1  # a non-trivial check
    # an initial state (L, H) is the state before the prime
    h0 = np.random.default_rng(0).normal(size=(2, 8))
    g0 = model.greedy(ids, 4, h0=h0)
    y, _ = model.forward(np.array(ids), h0)
    assert g0[0] == int(np.argmax(y[-1]))


def test_generation_refuses_bidirectional_models():
    V = 5
    model = cyrnn.RNN(V, 4, V, num_layers=2, bidirectional=True, output="softmax", seed=0)
    for call in (lambda: model.sample([1, 2], 3, seed=0), lambda: model.greedy([1, 2], 3)):
        with pytest.raises(ValueError, match="bidirectional"):
            call()
    reg = cyrnn.RNN(3, 4, 3, bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="bidirectional"):
        reg.forecast(np.zeros((4, 3), np.float32), 2)


def test_forecast_on_a_stack(backend):
    model = cyrnn.RNN(3, 4, 3, num_layers=2, dtype="float64", seed=0, backend=backend)
    context = np.random.default_rng(0).normal(size=(5, 3))
    pred = model.forecast(context, 3)
    assert pred.shape == (3, 3)
    y, h = model.forward(context)
    np.testing.assert_allclose(pred[0], y[-1], rtol=1e-12)
    y1, _ = model.forward(y[-1:], h)
    np.testing.assert_allclose(pred[1], y1[0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# 6. bad input gets clear errors; inputs are never mutated
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, B, H), (3, B, H), (B, H), (4, B + 1, H), (4, B, H + 1)])
def test_h0_of_the_wrong_shape(shape):
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, seed=0)
    x = np.zeros((T, B, I), np.float32)
    message = rf"h0: expected shape \(4, {B}, {H}\) \(num_layers \* num_directions = 4"
    for call in (lambda: model.forward(x, np.zeros(shape)),
                 lambda: model.loss_and_grad(x, np.zeros((T, B, O)), np.zeros(shape)),
                 lambda: model.evaluate(x, np.zeros((T, B, O)), np.zeros(shape))):
        with pytest.raises(ValueError, match=message):
            call()


def test_h0_of_a_one_layer_too_few():
    model = cyrnn.RNN(I, H, O, num_layers=2, seed=0)
    with pytest.raises(ValueError, match=r"num_layers \* num_directions = 2.*got \(1, 2, 3\)"):
        model.forward(np.zeros((T, B, I), np.float32), np.zeros((1, B, H)))


@pytest.mark.parametrize("value, error", [
    (1.0, ValueError), (-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
    ("0.1", TypeError), (None, TypeError), (True, TypeError), ([0.1], TypeError),
])
def test_bad_dropout(value, error):
    with pytest.raises(error, match=r"dropout: expected a number in \[0, 1\)"):
        cyrnn.RNN(I, H, O, num_layers=2, dropout=value)
    params = cyrnn.RNN(I, H, O, num_layers=2, seed=0).params
    with pytest.raises(error, match=r"dropout: expected a number in \[0, 1\)"):
        cyrnn.RNN.from_params(params, dropout=value)


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-1, ValueError), (2.0, TypeError), ("2", TypeError), (True, TypeError),
    (None, TypeError),
])
def test_bad_num_layers(value, error):
    with pytest.raises(error, match=r"num_layers: expected an int >= 1"):
        cyrnn.RNN(I, H, O, num_layers=value)


def test_num_layers_accepts_numpy_ints():
    assert cyrnn.RNN(I, H, O, num_layers=np.int64(2)).num_layers == 2


@pytest.mark.parametrize("value", [1, 0, "yes", None, 2.0])
def test_bidirectional_must_be_a_bool(value):
    with pytest.raises(TypeError, match="bidirectional: expected True or False"):
        cyrnn.RNN(I, H, O, bidirectional=value)
    assert cyrnn.RNN(I, H, O, bidirectional=np.bool_(True)).bidirectional is True


def test_softmax_output_refuses_mse():
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, output="softmax", seed=0)
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(ValueError, match="loss: 'mse' does not apply to output='softmax'"):
        model.loss_and_grad(x, np.zeros((T, B, O), np.float32), loss="mse")


def test_from_params_refuses_shape_arguments():
    params = cyrnn.RNN(I, H, O, num_layers=2, seed=0).params
    for name, value in (("num_layers", 2), ("bidirectional", False)):
        with pytest.raises(TypeError, match=f"from_params: {name} comes from the arrays"):
            cyrnn.RNN.from_params(params, **{name: value})


def test_from_params_names_a_missing_middle_layer_key():
    params = dict(cyrnn.RNN(I, H, O, num_layers=3, bidirectional=True, seed=0).params)
    del params["Wxh_l1"]
    with pytest.raises(KeyError, match=r"missing \['Wxh_l1'\]"):
        cyrnn.RNN.from_params(params)


def test_from_params_names_a_missing_reverse_key():
    params = dict(cyrnn.RNN(I, H, O, num_layers=3, bidirectional=True, seed=0).params)
    del params["Whh_l2_reverse"]
    with pytest.raises(KeyError, match=r"missing \['Whh_l2_reverse'\]"):
        cyrnn.RNN.from_params(params)


def torch_dict(L=3, bi=True):
    return cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, seed=0).to_torch_state()


def test_from_torch_missing_layer():
    state = {k: v for k, v in torch_dict().items() if not k.endswith("_l1")}
    with pytest.raises(KeyError, match=r"missing weight_ih_l1 \(a layer of a 3-layer"):
        cyrnn.RNN.from_torch(state)


def test_from_torch_missing_reverse_direction():
    state = {k: v for k, v in torch_dict().items() if not k.endswith("_l1_reverse")}
    with pytest.raises(KeyError, match=r"missing weight_ih_l1_reverse \(a direction of a 3-layer, "
                                       r"2-direction RNN\)"):
        cyrnn.RNN.from_torch(state)
    state = {k: v for k, v in torch_dict().items() if k != "rnn.weight_hh_l2_reverse"}
    with pytest.raises(KeyError, match=r"missing weight_hh_l2_reverse"):
        cyrnn.RNN.from_torch(state)


@pytest.mark.parametrize("key, shape, expected", [
    ("rnn.weight_ih_l1", (H, H), rf"\({H}, {2 * H}\).*\({H}, {H}\)"),          # H, not D*H
    ("rnn.weight_ih_l1_reverse", (H, I), rf"\({H}, {2 * H}\).*\({H}, {I}\)"),
    ("rnn.weight_ih_l0_reverse", (H, I + 1), rf"\({H}, {I}\).*\({H}, {I + 1}\)"),
    ("rnn.weight_hh_l2", (H, H + 1), rf"\({H}, {H}\).*\({H}, {H + 1}\)"),
    ("rnn.bias_ih_l1", (H + 1,), rf"bias_ih_l1: expected shape \({H},\)"),
    ("fc.weight", (O, H), rf"\({O}, {2 * H}\).*\({O}, {H}\)"),
])
def test_from_torch_wrong_sizes(key, shape, expected):
    state = torch_dict()
    state[key] = np.zeros(shape)
    with pytest.raises(ValueError, match=expected):
        cyrnn.RNN.from_torch(state)


def test_from_torch_of_a_unidirectional_stack_fed_bidirectional_widths():
    """Every reverse key dropped from a bidirectional dict: read as unidirectional, whose layer 1
    takes H inputs, not the 2H of the arrays."""
    state = {k: v for k, v in torch_dict(2).items() if "reverse" not in k}
    with pytest.raises(ValueError, match=rf"expected shape \({H}, {H}\), got \({H}, {2 * H}\)"):
        cyrnn.RNN.from_torch(state)


def test_inputs_are_never_mutated(backend):
    rng = np.random.default_rng(0)
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, dropout=0.3, output="softmax",
                      dtype="float64", seed=0, backend=backend)
    S = 4
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(S, B, H))
    target = rng.integers(0, O, size=(T, B))
    lengths = LENGTHS.copy()
    params = {k: v.copy() for k, v in model.params.items()}
    kept = [a.copy() for a in (x, h0, target, lengths)]
    for truncate in (None, 2, cyrnn.TBPTT(2, 3), cyrnn.TBPTT(2, 2)):
        for lens in (None, lengths):
            model.forward(x, h0, lens)
            model.evaluate(x, target, h0, lens)
            _, grads, _ = model.loss_and_grad(x, target, h0, lens, truncate=truncate,
                                              dropout_seed=1)
            model.loss_and_grad(x[:, 0], target[:, 0], h0[:, 0], truncate=truncate)
    for a, b in zip((x, h0, target, lengths), kept):
        np.testing.assert_array_equal(a, b)
    for k in params:
        np.testing.assert_array_equal(model.params[k], params[k])
    # from_params / from_torch / to_torch_state copy what they get
    source = {k: v.copy() for k, v in params.items()}
    copy = cyrnn.RNN.from_params(source, dtype="float64")
    copy.params["Whh_l1"][...] = 0
    np.testing.assert_array_equal(source["Whh_l1"], params["Whh_l1"])
    state = model.to_torch_state()
    state_kept = {k: v.copy() for k, v in state.items()}
    cyrnn.RNN.from_torch(state, dtype="float64").params["Wxh_l1_reverse"][...] = 0
    for k in state:
        np.testing.assert_array_equal(state[k], state_kept[k])
    grads_kept = {k: v.copy() for k, v in grads.items()}
    mapped = model.to_torch_state(grads)
    mapped["rnn.weight_hh_l1"][...] = 0
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads_kept[k])


# ---------------------------------------------------------------------------------------------
# 7. the seed keeps its meaning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("output_size", [O, None])
def test_single_layer_seed_draws_what_cyrnn_0_1_drew(init, output_size):
    want = init_params(init, I, H, output_size, np.random.default_rng(7))
    for dtype in ("float64", "float32"):
        model = cyrnn.RNN(I, H, output_size, init=init, seed=7, dtype=dtype)
        assert list(model.params) == list(want)
        for name, value in want.items():
            np.testing.assert_array_equal(model.params[name], value.astype(dtype), err_msg=name)
    # dropout (a second stream) changes nothing of it
    model = cyrnn.RNN(I, H, output_size, init=init, seed=7, dtype="float64", dropout=0.5)
    for name, value in want.items():
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)


@pytest.mark.parametrize("init", INITS)
def test_stack_seed_draws_each_layer_direction_in_h0_order_then_the_head(init):
    """The documented draw order of a stack: each layer-direction (``init_params`` with its
    input size), then the output layer (``init_head``, fan-in D*H)."""
    L, D = 2, 2
    rng = np.random.default_rng(9)
    want = {}
    for layer in range(L):
        for d in range(D):
            s = ("" if layer == 0 else f"_l{layer}") + ("_reverse" if d else "")
            drawn = init_params(init, I if layer == 0 else D * H, H, None, rng)
            want.update({"Wxh" + s: drawn["Wxh"], "Whh" + s: drawn["Whh"], "bh" + s: drawn["bh"]})
    want["Why"], want["by"] = init_head(init, D * H, O, rng)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=True, init=init, seed=9,
                      dtype="float64")
    assert list(model.params) == list(want)
    for name, value in want.items():
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)
    again = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=True, init=init, seed=9,
                      dtype="float64")
    for name in want:
        np.testing.assert_array_equal(again.params[name], model.params[name])
