"""Generation (``RNN.sample``, ``greedy``, ``forecast``) and ``cyrnn.diagnostics``.

The references are written here from ``RNN.forward`` and the parameters alone: a greedy loop
that reruns ``forward`` and takes the argmax, an inverse-CDF sampler, a forecast loop, and a
NumPy BPTT for the per-step gradient norms.
"""
import numpy as np
import pytest

import cyrnn
from cyrnn import RNN, TBPTT, RandomizedTruncation, Vocabulary
from cyrnn.diagnostics import gradient_decay, gradient_norms

TEXT = "hello world, the quick brown fox. " * 3


def _char_model(backend, dtype=np.float64, H=16, seed=0, output="softmax", scale=3.0, **kwargs):
    """A character model with large enough weights that its distributions are far from uniform."""
    vocab = Vocabulary.from_text(TEXT)
    V = len(vocab)
    model = RNN(V, H, V, output=output, dtype=dtype, seed=seed, backend=backend, **kwargs)
    for p in model.params.values():
        p *= scale
    model.vocab = vocab
    return model


def _logits_after(model, ids, h0=None):
    """Logits of the next token after ``ids`` (1-D) and the state, from ``forward``."""
    _, h = model.forward(np.asarray(ids), h0=h0)
    z = model.params["Why"] @ h + model.params["by"]
    return z.astype(np.float64), h


def _reference_sample(model, prime_ids, n, seed, temperature=1.0, top_k=None):
    """Inverse-CDF sampling as documented, each step rerunning ``forward`` over the whole text."""
    u = np.random.default_rng(seed).random(n)
    ids = list(prime_ids)
    for i in range(n):
        z, _ = _logits_after(model, ids)
        w = np.exp((z - z.max()) / temperature)
        if top_k:
            keep = np.argsort(-z, kind="stable")[:top_k]
            mask = np.zeros_like(w, dtype=bool)
            mask[keep] = True
            w[~mask] = 0.0
        c = np.cumsum(w)
        ids.append(int(np.flatnonzero(c > u[i] * c[-1])[0]))
    return np.array(ids[len(prime_ids):])


def _reference_greedy(model, prime_ids, n):
    ids = list(prime_ids)
    for _ in range(n):
        probs, _ = model.forward(np.array(ids))
        ids.append(int(np.argmax(probs[-1])))
    return np.array(ids[len(prime_ids):])


# ---------------------------------------------------------------------------------------------
# sample and greedy
# ---------------------------------------------------------------------------------------------


def test_sample_text_in_text_out(backend, dtype):
    model = _char_model(backend, dtype)
    out = model.sample("hello", 40, seed=0)
    assert isinstance(out, str)
    assert len(out) == 40
    assert set(out) <= set(TEXT)
    # one-character prime
    assert len(model.sample("h", 7, seed=0)) == 7


@pytest.mark.parametrize("prime", [[3, 1, 4], np.array([3, 1, 4]), np.array([3, 1, 4], np.int32),
                                   np.array([3, 1, 4], np.uint8), (3, 1, 4)])
def test_sample_ids_in_ids_out(backend, prime):
    model = _char_model(backend)
    model.vocab = None  # ids need no vocabulary
    out = model.sample(prime, 25, seed=1)
    assert isinstance(out, np.ndarray)
    assert out.shape == (25,)
    assert out.dtype.kind in "iu"
    assert out.min() >= 0 and out.max() < model.input_size
    np.testing.assert_array_equal(out, model.sample(np.array([3, 1, 4]), 25, seed=1))


def test_sample_text_equals_sample_ids(backend):
    model = _char_model(backend)
    ids = model.vocab.encode("the quick")
    assert model.sample("the quick", 30, seed=4) == model.vocab.decode(
        model.sample(ids, 30, seed=4))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, None), (1.5, 4), (1.0, 2)])
def test_sample_equals_reference(backend, temperature, top_k):
    model = _char_model(backend)
    prime = model.vocab.encode("the qu")
    for seed in (0, 1, 2):
        got = model.sample(prime, 30, temperature=temperature, top_k=top_k, seed=seed)
        expected = _reference_sample(model, prime, 30, seed, temperature, top_k)
        np.testing.assert_array_equal(got, expected)


def test_same_seed_same_text_other_seed_other_text(backend, dtype):
    model = _char_model(backend, dtype)
    a = model.sample("hel", 60, seed=11)
    assert model.sample("hel", 60, seed=11) == a
    assert model.sample("hel", 60, seed=np.random.default_rng(11)) == a
    assert len({model.sample("hel", 60, seed=s) for s in range(12, 16)} | {a}) > 1
    # nothing persists between calls: sampling does not change the model
    before = {k: v.copy() for k, v in model.params.items()}
    model.sample("hel", 60)
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_backends_give_the_same_text_in_float64():
    models = [_char_model(b, np.float64, seed=5) for b in ("cython", "numpy")]
    for seed in range(5):
        for kwargs in ({}, {"temperature": 0.5}, {"top_k": 3}, {"temperature": 0.0}):
            texts = [m.sample("quick ", 80, seed=seed, **kwargs) for m in models]
            assert texts[0] == texts[1], (seed, kwargs)


def test_greedy_equals_argmax_of_forward(backend):
    model = _char_model(backend, scale=2.0)
    for prime_text in ("t", "hello w", "fox. "):
        prime = model.vocab.encode(prime_text)
        expected = _reference_greedy(model, prime, 40)
        np.testing.assert_array_equal(model.greedy(prime, 40), expected)
        assert model.greedy(prime_text, 40) == model.vocab.decode(expected)


def test_greedy_is_temperature_zero_and_top_k_one(backend):
    model = _char_model(backend)
    g = model.greedy("brown", 50)
    assert model.sample("brown", 50, temperature=0.0, seed=3) == g
    for seed in (0, 1, 2):
        assert model.sample("brown", 50, top_k=1, seed=seed) == g
        assert model.sample("brown", 50, top_k=1, temperature=2.5, seed=seed) == g
    # and greedy is not what random sampling gives
    assert any(model.sample("brown", 50, seed=s) != g for s in range(3))


def test_greedy_on_linear_output_uses_logits(backend):
    model = _char_model(backend, output="linear")
    prime = model.vocab.encode("row")
    ids = list(prime)
    for _ in range(20):
        y, _ = model.forward(np.array(ids))
        ids.append(int(np.argmax(y[-1])))
    np.testing.assert_array_equal(model.greedy(prime, 20), ids[len(prime):])


def test_state_after_prime_is_forward_over_prime(backend, dtype):
    model = _char_model(backend, dtype)
    prime = model.vocab.encode("the quick")
    _, h = model.forward(prime[:-1])
    # continuing from the last character with the state of the others is the same draw
    for seed in (0, 7):
        np.testing.assert_array_equal(model.sample(prime, 30, seed=seed),
                                      model.sample(prime[-1:], 30, seed=seed, h0=h))
    # the first greedy token is the argmax of forward's last output over the prime
    probs, _ = model.forward(prime)
    assert model.greedy(prime, 1)[0] == np.argmax(probs[-1])


def test_sample_h0(backend):
    model = _char_model(backend)
    rng = np.random.default_rng(0)
    h0 = rng.uniform(-1, 1, model.hidden_size)
    prime = model.vocab.encode("own")
    _, h = model.forward(prime[:-1], h0=h0)
    with_h0 = model.sample(prime, 40, seed=2, h0=h0)
    np.testing.assert_array_equal(with_h0, model.sample(prime[-1:], 40, seed=2, h0=h))
    np.testing.assert_array_equal(with_h0, _reference_sample_from(model, prime, 40, 2, h0))
    assert not np.array_equal(with_h0, model.sample(prime, 40, seed=2))
    with pytest.raises(ValueError, match="h0"):
        model.sample(prime, 5, h0=np.zeros(model.hidden_size + 1))


def _reference_sample_from(model, prime_ids, n, seed, h0):
    u = np.random.default_rng(seed).random(n)
    ids = list(prime_ids)
    for i in range(n):
        z, _ = _logits_after(model, ids, h0=h0)
        w = np.exp(z - z.max())
        c = np.cumsum(w)
        ids.append(int(np.flatnonzero(c > u[i] * c[-1])[0]))
    return np.array(ids[len(prime_ids):])


@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu", "sigmoid", "identity"])
def test_sample_other_nonlinearities(backend, nonlinearity):
    model = _char_model(backend, nonlinearity=nonlinearity, negative_slope=0.3,
                        scale=0.5 if nonlinearity == "identity" else 3.0)
    prime = model.vocab.encode("fox")
    np.testing.assert_array_equal(model.sample(prime, 20, seed=0),
                                  _reference_sample(model, prime, 20, 0))
    np.testing.assert_array_equal(model.greedy(prime, 20), _reference_greedy(model, prime, 20))


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: m.sample("hello", 0), ValueError, "n"),
    (lambda m: m.sample("hello", -3), ValueError, "n"),
    (lambda m: m.sample("hello", 2.0), TypeError, "n"),
    (lambda m: m.sample("", 5), ValueError, "prime"),
    (lambda m: m.sample(np.array([], dtype=np.intp), 5), ValueError, "prime"),
    (lambda m: m.sample("hello Z", 5), ValueError, "not in the vocabulary"),
    (lambda m: m.sample([0, 999], 5), ValueError, "999"),
    (lambda m: m.sample([999, 0], 5), ValueError, "999"),
    (lambda m: m.sample([-1], 5), ValueError, "-1"),
    (lambda m: m.sample([[1, 2]], 5), TypeError, "prime"),
    (lambda m: m.sample([1.0, 2.0], 5), TypeError, "prime"),
    (lambda m: m.sample("he", 5, temperature=-1.0), ValueError, "temperature"),
    (lambda m: m.sample("he", 5, temperature=float("nan")), ValueError, "temperature"),
    (lambda m: m.sample("he", 5, top_k=1000), ValueError, "top_k"),
    (lambda m: m.sample("he", 5, top_k=-1), ValueError, "top_k"),
    (lambda m: m.greedy("he", 0), ValueError, "n"),
])
def test_sample_errors(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(_char_model(backend))


def test_text_prime_needs_vocab(backend):
    model = _char_model(backend)
    model.vocab = None
    with pytest.raises(ValueError, match="vocab"):
        model.sample("hello", 5)
    with pytest.raises(ValueError, match="vocab"):
        model.greedy("hello", 5)


@pytest.mark.parametrize("sizes, output, match", [
    ((4, 8, 5), "softmax", "output_size"),
    ((4, 8, None), "linear", "output_size"),
    ((4, 8, 4), "sigmoid", "softmax"),
])
def test_sample_needs_a_token_model(backend, sizes, output, match):
    model = RNN(*sizes, output=output, seed=0, backend=backend)
    for call in (lambda: model.sample([1, 2], 5), lambda: model.greedy([1, 2], 5)):
        with pytest.raises(ValueError, match=match):
            call()


# ---------------------------------------------------------------------------------------------
# forecast
# ---------------------------------------------------------------------------------------------


def _regression_model(backend, batch_first=False, dtype=np.float64):
    model = RNN(3, 12, 3, seed=1, backend=backend, dtype=dtype, batch_first=batch_first)
    for p in model.params.values():
        p *= 1.5
    return model


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_forecast_equals_feedback_loop(backend, batch_first, batched):
    rng = np.random.default_rng(2)
    model = _regression_model(backend, batch_first)
    T, B, n = 6, 4, 7
    if batched:
        context = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    else:
        context = rng.standard_normal((T, 3))
    time_axis = 1 if (batch_first and batched) else 0

    # the loop, one step at a time, each prediction fed back as the next input
    y, h = model.forward(context)
    last = np.take(y, [-1], axis=time_axis)
    expected = []
    for _ in range(n):
        expected.append(last)
        last, h = model.forward(last, h0=h)
    expected = np.concatenate(expected, axis=time_axis)

    got = model.forecast(context, n)
    expected_shape = (n, 3) if not batched else ((B, n, 3) if batch_first else (n, B, 3))
    assert got.shape == expected_shape
    np.testing.assert_array_equal(got, expected)

    # and, independently: one forward over context + predictions[:-1] reproduces them
    full = np.concatenate([context, np.take(got, np.arange(n - 1), axis=time_axis)],
                          axis=time_axis)
    y_full, _ = model.forward(full)
    np.testing.assert_allclose(np.take(y_full, np.arange(T - 1, T - 1 + n), axis=time_axis), got,
                               rtol=1e-10, atol=1e-12)


def test_forecast_h0_and_backends_agree(rng):
    context = rng.standard_normal((5, 2, 3))
    h0 = rng.uniform(-1, 1, (2, 12))
    a = _regression_model("cython").forecast(context, 4, h0=h0)
    b = _regression_model("numpy").forecast(context, 4, h0=h0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert not np.allclose(a, _regression_model("cython").forecast(context, 4))


def test_forecast_single_step_is_next_output(backend, rng):
    model = _regression_model(backend)
    context = rng.standard_normal((5, 3))
    y, _ = model.forward(context)
    np.testing.assert_array_equal(model.forecast(context, 1), y[-1:])


@pytest.mark.parametrize("call, match", [
    (lambda m, c: m.forecast(c, 0), "n"),
    (lambda m, c: RNN(3, 4, 2, seed=0).forecast(c, 3), "output_size"),
    (lambda m, c: RNN(3, 4, seed=0).forecast(c, 3), "output_size"),
    (lambda m, c: m.forecast(c[:, :2], 3), "x"),
])
def test_forecast_errors(backend, rng, call, match):
    with pytest.raises(ValueError, match=match):
        call(_regression_model(backend), rng.standard_normal((5, 3)))


@pytest.mark.parametrize("context", [
    np.array([0, 2, 1, 1]), np.array([[0, 1], [2, 2], [1, 0]], dtype=np.int32), [0, 1, 2], "ab",
], ids=["ids", "batched-int32", "list", "text"])
@pytest.mark.parametrize("output", ["linear", "softmax"])
def test_forecast_refuses_token_ids(backend, context, output):
    """Feeding probabilities (or logits) back as the next input is not generation: tokens
    come from sample / greedy, which the error names."""
    model = RNN(3, 4, 3, output=output, seed=0, backend=backend)
    with pytest.raises(TypeError, match=r"forecast: context holds token ids.*sample \(or greedy\)"):
        model.forecast(context, 2)


def test_forecast_refuses_softmax_models(backend, rng):
    model = RNN(3, 4, 3, output="softmax", seed=0, backend=backend)
    with pytest.raises(ValueError, match=r"forecast: output='softmax' gives probabilities.*sample"):
        model.forecast(rng.standard_normal((5, 3)), 2)


def test_forecast_with_sigmoid_output_feeds_values_back(backend, rng):
    """Values in [0, 1] (bce on real-valued targets): the outputs go back in as they are."""
    model = RNN(3, 6, 3, output="sigmoid", seed=0, backend=backend, dtype=np.float64)
    context = rng.uniform(0, 1, (5, 3))
    got = model.forecast(context, 3)
    y, h = model.forward(context)
    last, expected = y[-1:], []
    for _ in range(3):
        expected.append(last)
        last, h = model.forward(last, h0=h)
    np.testing.assert_array_equal(got, np.concatenate(expected))
    assert ((got > 0) & (got < 1)).all()


# ---------------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------------


def _reference_grad_norms(model, x, target):
    """||dL/dh_t|| for every step of a tanh model with an mse loss (mean), by NumPy BPTT."""
    p = {k: v.astype(np.float64) for k, v in model.params.items()}
    T, B, _ = x.shape
    H = model.hidden_size
    hs = [np.zeros((B, H))]
    for t in range(T):
        hs.append(np.tanh(x[t] @ p["Wxh"].T + hs[-1] @ p["Whh"].T + p["bh"]))
    hs = np.array(hs)
    z = hs[1:] @ p["Why"].T + p["by"]
    dz = 2.0 * (z - target) / z.size
    dh_out = dz @ p["Why"]
    norms = np.zeros(T)
    g = np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        g = g + dh_out[t]
        norms[t] = np.linalg.norm(g)
        g = (g * (1.0 - hs[t + 1] ** 2)) @ p["Whh"]
    return norms


def test_gradient_norms_equal_reference(backend, dtype, rng):
    model = RNN(3, 10, 2, seed=4, backend=backend, dtype=dtype)
    model.params["Whh"] *= 3.0
    x = rng.standard_normal((9, 5, 3))
    target = rng.standard_normal((9, 5, 2))
    got = gradient_norms(model, x, target)
    assert got.shape == (9,)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, _reference_grad_norms(model, x, target), rtol=rtol)


def test_gradient_norms_backends_agree_and_match_kernel(rng):
    models = [RNN(4, 8, 4, output="softmax", seed=0, backend=b, dtype=np.float64)
              for b in ("cython", "numpy")]
    ids = rng.integers(0, 4, size=(12, 3))
    target = rng.integers(0, 4, size=(12, 3))
    a, b = (gradient_norms(m, ids, target) for m in models)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    # the norms are those of the kernel's total gradients: ||g_t|| with da_t = g_t * f'(h_t)
    m = models[1]
    fwd = cyrnn.stack.forward(m.kernels, m.architecture, m.weights(), ids, np.zeros((1, 3, 8)))
    hs = fwd.records[0].hs
    z = cyrnn.stack.logits(m.architecture, m.weights(), fwd.top)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    dz = probs.copy()
    np.put_along_axis(dz, target[..., None], np.take_along_axis(dz, target[..., None], -1) - 1, -1)
    dz /= target.size
    da, _, norms = m.kernels.rnn_backward(dz @ m.params["Why"], hs, m.params["Whh"], "tanh")
    np.testing.assert_allclose(a, norms, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(da / (1 - hs[1:] ** 2), axis=(1, 2)), a, rtol=1e-10)


def test_gradient_norms_last_step_loss(backend, rng):
    model = RNN(3, 8, 2, seed=0, backend=backend, dtype=np.float64)
    x = rng.standard_normal((10, 4, 3))
    target = rng.standard_normal((4, 2))
    norms = gradient_norms(model, x, target, target_steps="last")
    # only the last state has an output error; earlier ones get it through the recurrence
    y, _ = model.forward(x)
    dh_last = (2.0 * (y[-1] - target) / target.size) @ model.params["Why"]
    assert norms[-1] == pytest.approx(np.linalg.norm(dh_last), rel=1e-12)
    assert np.all(np.diff(norms) > 0)  # small tanh weights: vanishing toward the start


def test_gradient_norms_with_carry_truncation(backend, rng):
    model = RNN(3, 8, 2, seed=0, backend=backend, dtype=np.float64)
    x = rng.standard_normal((8, 2, 3))
    target = rng.standard_normal((8, 2, 2))
    assert gradient_norms(model, x, target, truncate=TBPTT(4, 4)).shape == (8,)
    assert gradient_norms(model, x, target, truncate=RandomizedTruncation(0.5)).shape == (8,)
    # without carries past step 4, the last block's norms do not depend on earlier targets
    full = gradient_norms(model, x, target)
    cut = gradient_norms(model, x, target, truncate=TBPTT(4, 4))
    np.testing.assert_allclose(cut[4:], full[4:], rtol=1e-12)
    assert not np.allclose(cut[:4], full[:4])


@pytest.mark.parametrize("truncate", [3, 100, TBPTT(2, 4)])
def test_gradient_norms_refuse_a_window(backend, rng, truncate):
    model = RNN(3, 8, 2, seed=0, backend=backend)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    target = rng.standard_normal((6, 2, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="truncate"):
        gradient_norms(model, x, target, truncate=truncate)


def test_gradient_decay_vanishes_for_small_tanh_weights(backend, dtype):
    model = RNN(4, 16, 4, seed=0, backend=backend, dtype=dtype)
    model.params["Whh"] *= 0.5
    norms = gradient_decay(model, 20, seed=0)
    assert norms.shape == (20,)
    assert norms[-1] == pytest.approx(1.0, rel=1e-5)  # a unit error on the last state
    assert norms[0] < norms[-1]
    assert norms[0] < 1e-4
    assert np.all(np.diff(norms) > 0)


@pytest.mark.parametrize("nonlinearity", ["identity", "relu"])
def test_gradient_decay_explodes_for_scaled_identity(backend, nonlinearity):
    model = RNN(4, 16, 4, nonlinearity=nonlinearity, init="identity", seed=0, backend=backend,
                dtype=np.float64)
    model.params["Whh"] *= 1.5
    T = 12
    norms = gradient_decay(model, T, seed=1)
    assert norms[0] > norms[-1]
    assert norms[0] > 10
    if nonlinearity == "identity":
        # dh_T/dh_t = (1.5 I)^(T - t): exactly geometric
        np.testing.assert_allclose(norms[::-1], 1.5 ** np.arange(T), rtol=1e-12)


def test_gradient_decay_is_seeded_and_backends_agree():
    models = [RNN(3, 8, 3, seed=0, backend=b, dtype=np.float64) for b in ("cython", "numpy")]
    a = gradient_decay(models[0], 15, batch_size=5, seed=7)
    np.testing.assert_array_equal(a, gradient_decay(models[0], 15, batch_size=5, seed=7))
    np.testing.assert_allclose(a, gradient_decay(models[1], 15, batch_size=5, seed=7), rtol=1e-12)
    assert not np.array_equal(a, gradient_decay(models[0], 15, batch_size=5, seed=8))


@pytest.mark.parametrize("T", [5, 4])
def test_gradient_decay_batch_first_model(backend, T):
    """The layout of the model's inputs is not part of the diagnostic: a batch-first model with
    the same weights gives the same curve (T != batch_size and T == batch_size)."""
    tm = RNN(3, 8, 3, seed=0, backend=backend, dtype=np.float64)
    bf = RNN(3, 8, 3, seed=0, backend=backend, dtype=np.float64, batch_first=True)
    expected = gradient_decay(tm, T, batch_size=4, seed=1)
    np.testing.assert_allclose(gradient_decay(bf, T, batch_size=4, seed=1), expected, rtol=1e-12)


def test_gradient_decay_bad_T(backend):
    model = RNN(3, 8, 3, seed=0, backend=backend)
    with pytest.raises(ValueError, match="T"):
        gradient_decay(model, 0)
    with pytest.raises(TypeError, match="T"):
        gradient_decay(model, 2.5)


def test_diagnostics_exported():
    assert cyrnn.diagnostics.gradient_norms is gradient_norms


def test_empty_id_prime_is_a_value_error(backend):
    model = RNN(5, 8, 5, output="softmax", seed=0, backend=backend)
    with pytest.raises(ValueError, match="prime: expected at least one token"):
        model.sample([], 3)
