"""Tests of the text-generation kernel ``sample_tokens`` (compiled ``cyrnn._sample`` and its NumPy
twin ``cyrnn.kernels.numpy_sample``).

The reference ``ref_sample`` below is written from the documented contract, in float64 with plain
Python loops for the choice of each id (sorted() for top-k, a running sum for the inverse CDF),
so that it shares no code with either backend. It also returns each step's *margin*: how close
the uniform came to a CDF boundary (or, greedy, how close the two largest logits were). float32
results may differ from it, or from each other, only at a step whose margin is tiny.
"""
import math
import threading

import numpy as np
import pytest
from conftest import reference_activation
from hypothesis import given, settings
from hypothesis import strategies as st

from cyrnn import kernels

NONLINEARITIES = ("tanh", "relu", "sigmoid", "leaky_relu", "identity")
SLOPE = 0.2  # negative_slope used for leaky_relu throughout
# a float32 run may leave the float64 reference only at a step whose margin is below this
F32_MARGIN = 1e-4
# states against the reference: absolute, and relative for the (relu, identity) runs whose
# state grows large
H_TOL = {np.float32: 1e-4, np.float64: 1e-12}
H_RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def sampler(backend):
    return kernels.get_backend(backend).sample_tokens


# ---------------------------------------------------------------------------------------------
# model parameters and the reference
# ---------------------------------------------------------------------------------------------


def make_params(rng, V, H, dtype=np.float64, logit_scale=3.0):
    """(WxhT, bh, Whh, Why, by, h0) of a stable model (recurrent gain 0.9) whose logits have a
    spread of about ``logit_scale / 2``: distributions neither flat nor one-hot."""
    WxhT = rng.normal(0, 0.5, (V, H))
    bh = rng.normal(0, 0.1, H)
    Whh = rng.normal(0, 0.9 / np.sqrt(H), (H, H))
    Why = rng.normal(0, logit_scale / np.sqrt(H), (V, H))
    by = rng.normal(0, 0.3, V)
    h0 = rng.normal(0, 0.5, H)
    return tuple(a.astype(dtype) for a in (WxhT, bh, Whh, Why, by, h0))


def act(a, nl, slope=SLOPE):
    """f(a) in float64 (the shared reference of conftest)."""
    return reference_activation(a, nl, slope)


def ref_choose(z, u, temperature, top_k):
    """(id, margin) from logits z (list of floats) and a uniform u, per the documented rule."""
    V = len(z)
    ranked = sorted(range(V), key=lambda j: (-z[j], j))  # decreasing logit, then index
    if temperature == 0:
        margin = z[ranked[0]] - z[ranked[1]] if V > 1 else math.inf
        return ranked[0], margin
    keep = set(ranked[:top_k]) if 0 < top_k < V else set(range(V))
    zmax = z[ranked[0]]
    total, cdf = 0.0, []
    for j in range(V):
        if j in keep:
            total += math.exp((z[j] - zmax) / temperature)
        cdf.append(total)
    target = u * total
    choice = next(j for j in range(V) if cdf[j] > target)
    boundaries = [abs(c - target) / total for c in cdf[:-1]]
    return choice, min(boundaries, default=math.inf)


def ref_sample(params, first_id, uniforms, nl="tanh", slope=SLOPE, temperature=1.0, top_k=0):
    """(ids, h_last, margins) in float64."""
    WxhT, bh, Whh, Why, by, h0 = (np.asarray(a, dtype=np.float64) for a in params)
    h, token = h0.copy(), first_id
    ids, margins = [], []
    for u in uniforms:
        h = act(WxhT[token] + bh + Whh @ h, nl, slope)
        z = [float(v) for v in Why @ h + by]
        token, margin = ref_choose(z, float(u), temperature, top_k)
        ids.append(token)
        margins.append(margin)
    return np.array(ids, dtype=np.intp), h, np.array(margins)


def first_difference(a, b):
    """Index of the first step where two id sequences differ, or None."""
    diff = np.flatnonzero(np.asarray(a) != np.asarray(b))
    return int(diff[0]) if diff.size else None


def check_against_reference(result, params, first_id, uniforms, dtype, **kw):
    """ids and h_last of a backend against ``ref_sample``: identical in float64; in float32
    identical up to the first step whose margin is tiny (then the runs may part ways)."""
    ids, h_last = result
    ref_ids, ref_h, margins = ref_sample(params, first_id, uniforms, **kw)
    assert ids.dtype == np.intp and ids.shape == ref_ids.shape
    assert h_last.dtype == dtype and h_last.shape == ref_h.shape
    i = first_difference(ids, ref_ids)
    if dtype == np.float64:
        assert i is None, f"ids differ from step {i} on (margin {margins[i]:.3g})"
    elif i is not None:
        assert margins[i] < F32_MARGIN, f"float32 ids differ at step {i}, margin {margins[i]:.3g}"
        return False
    np.testing.assert_allclose(h_last, ref_h, rtol=H_RTOL[dtype], atol=H_TOL[dtype])
    return True


SETTINGS = [
    dict(temperature=1.0, top_k=0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.5, top_k=12),  # top_k = V - 1
    dict(temperature=0.0, top_k=0),
    dict(temperature=2.0, top_k=13),  # top_k = V: no restriction
    dict(temperature=0.5, top_k=1),
]


# ---------------------------------------------------------------------------------------------
# 1. against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nl", NONLINEARITIES)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"T{s['temperature']}-k{s['top_k']}")
def test_matches_reference(backend, dtype, nl, setting):
    # fixed seeds, chosen (checked) so that float32 agrees with the reference on every step
    rng = np.random.default_rng(7)
    params = make_params(rng, 13, 9, dtype)
    uniforms = rng.random(60)
    result = sampler(backend)(*params, 4, uniforms, nl, negative_slope=SLOPE, **setting)
    assert check_against_reference(result, params, 4, uniforms, dtype, nl=nl, **setting)


def test_default_arguments(backend, dtype):
    """tanh, temperature 1 and no top-k by default."""
    rng = np.random.default_rng(3)
    params = make_params(rng, 10, 6, dtype)
    uniforms = rng.random(30)
    result = sampler(backend)(*params, 0, uniforms)
    assert check_against_reference(result, params, 0, uniforms, dtype, nl="tanh")


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_reference_float64(backend, seed):
    rng = np.random.default_rng(1000 + seed)
    V, H = int(rng.integers(1, 70)), int(rng.integers(1, 40))
    params = make_params(rng, V, H)
    uniforms = rng.random(int(rng.integers(1, 80)))
    kw = dict(
        nl=NONLINEARITIES[seed % 5],
        temperature=float(rng.choice([0.0, 0.25, 1.0, 3.0])),
        top_k=int(rng.integers(0, V + 1)),
    )
    first_id = int(rng.integers(0, V))
    result = sampler(backend)(*params, first_id, uniforms, kw["nl"], negative_slope=SLOPE,
                              temperature=kw["temperature"], top_k=kw["top_k"])
    check_against_reference(result, params, first_id, uniforms, np.float64, **kw)


def test_h_last_is_the_final_state(backend, dtype):
    """h_last is the state after the last step, for odd and even lengths (the compiled kernel
    double-buffers the state), and n = 1."""
    rng = np.random.default_rng(11)
    params = make_params(rng, 8, 5, dtype)
    for n in (1, 2, 3, 10, 11):
        uniforms = rng.random(n)
        ids, h_last = sampler(backend)(*params, 2, uniforms)
        _, ref_h, _ = ref_sample(params, 2, uniforms, nl="tanh")
        np.testing.assert_allclose(h_last, ref_h, rtol=0, atol=H_TOL[dtype])
        # and continuing from h_last with the last id is the same as one longer run
        more = rng.random(4)
        ids2, h2 = sampler(backend)(params[0], *params[1:5], h_last, int(ids[-1]), more)
        ids_all, h_all = sampler(backend)(*params, 2, np.concatenate([uniforms, more]))
        np.testing.assert_array_equal(np.concatenate([ids, ids2]), ids_all)
        np.testing.assert_allclose(h2, h_all, rtol=0, atol=H_TOL[dtype])


# ---------------------------------------------------------------------------------------------
# 2. the two backends agree
# ---------------------------------------------------------------------------------------------


def random_case(seed, dtype):
    rng = np.random.default_rng(seed)
    V, H = int(rng.integers(2, 80)), int(rng.integers(1, 64))
    params = make_params(rng, V, H, dtype)
    uniforms = rng.random(50)
    kw = dict(temperature=float(rng.choice([0.0, 0.3, 1.0, 2.0])), top_k=int(rng.integers(0, V + 1)),
              negative_slope=SLOPE)
    return params, int(rng.integers(0, V)), uniforms, NONLINEARITIES[seed % 5], kw


def test_backends_identical_float64_many_seeds():
    cy, np_ = sampler("cython"), sampler("numpy")
    for seed in range(200):
        params, first_id, uniforms, nl, kw = random_case(seed, np.float64)
        ids_c, h_c = cy(*params, first_id, uniforms, nl, **kw)
        ids_n, h_n = np_(*params, first_id, uniforms, nl, **kw)
        np.testing.assert_array_equal(ids_c, ids_n, err_msg=f"seed {seed}")
        # relative: with relu or identity the state can grow to 1e4 and more
        np.testing.assert_allclose(h_c, h_n, rtol=1e-12, atol=1e-12, err_msg=f"seed {seed}")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_backends_identical_float32_fixed_seeds(seed):
    # seeds checked to agree; float32 may only part at a uniform within ~1e-6 of a CDF boundary
    params, first_id, uniforms, nl, kw = random_case(seed, np.float32)
    ids_c, h_c = sampler("cython")(*params, first_id, uniforms, nl, **kw)
    ids_n, h_n = sampler("numpy")(*params, first_id, uniforms, nl, **kw)
    np.testing.assert_array_equal(ids_c, ids_n)
    np.testing.assert_allclose(h_c, h_n, rtol=0, atol=1e-4)


def test_backends_agree_float32_at_least_99_percent():
    cy, np_ = sampler("cython"), sampler("numpy")
    cases, agree = 300, 0
    for seed in range(10_000, 10_000 + cases):
        params, first_id, uniforms, nl, kw = random_case(seed, np.float32)
        ids_c, _ = cy(*params, first_id, uniforms, nl, **kw)
        ids_n, _ = np_(*params, first_id, uniforms, nl, **kw)
        agree += np.array_equal(ids_c, ids_n)
    assert agree / cases >= 0.99


def test_float32_departures_only_near_boundaries():
    """Where a float32 run leaves the float64 reference at all, the uniform was within
    F32_MARGIN of a CDF boundary (or the two top logits within it, greedy)."""
    for backend in ("cython", "numpy"):
        for seed in range(20_000, 20_060):
            params, first_id, uniforms, nl, kw = random_case(seed, np.float32)
            result = sampler(backend)(*params, first_id, uniforms, nl, **kw)
            check_against_reference(result, params, first_id, uniforms, np.float32, nl=nl,
                                    slope=SLOPE, temperature=kw["temperature"], top_k=kw["top_k"])


# ---------------------------------------------------------------------------------------------
# 3. greedy, temperature and top-k
# ---------------------------------------------------------------------------------------------


def argmax_chain(params, first_id, n):
    """Greedy decoding written out: the argmax of each step's logits, fed back."""
    WxhT, bh, Whh, Why, by, h0 = (a.astype(np.float64) for a in params)
    h, token, ids = h0, first_id, []
    for _ in range(n):
        h = np.tanh(WxhT[token] + bh + Whh @ h)
        token = int(np.argmax(Why @ h + by))
        ids.append(token)
    return ids


def test_greedy_is_the_argmax_chain_and_ignores_uniforms(backend, dtype):
    rng = np.random.default_rng(5)
    params = make_params(rng, 30, 16, dtype)
    expected = argmax_chain(params, 3, 40)
    for uniforms in (rng.random(40), np.zeros(40), np.full(40, np.nextafter(1.0, 0.0))):
        ids, _ = sampler(backend)(*params, 3, uniforms, temperature=0.0)
        assert ids.tolist() == expected
    # top_k is irrelevant when greedy
    ids, _ = sampler(backend)(*params, 3, rng.random(40), temperature=0, top_k=7)
    assert ids.tolist() == expected


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0, 1e6])
def test_top_k_1_is_greedy(backend, dtype, temperature):
    rng = np.random.default_rng(6)
    params = make_params(rng, 30, 16, dtype)
    greedy, h_greedy = sampler(backend)(*params, 3, rng.random(40), temperature=0.0)
    ids, h_last = sampler(backend)(*params, 3, rng.random(40), temperature=temperature, top_k=1)
    np.testing.assert_array_equal(ids, greedy)
    np.testing.assert_array_equal(h_last, h_greedy)


def test_small_temperature_approaches_greedy(backend, dtype):
    rng = np.random.default_rng(8)
    params = make_params(rng, 30, 16, dtype)
    greedy, _ = sampler(backend)(*params, 3, rng.random(100), temperature=0.0)
    ids, _ = sampler(backend)(*params, 3, rng.random(100), temperature=1e-3)
    np.testing.assert_array_equal(ids, greedy)
    # and at a large temperature it does not (the draws spread over the vocabulary)
    hot, _ = sampler(backend)(*params, 3, rng.random(100), temperature=100.0)
    assert len(set(hot.tolist())) > 10


def first_step_logits(params, first_id):
    WxhT, bh, Whh, Why, by, h0 = (a.astype(np.float64) for a in params)
    return Why @ np.tanh(WxhT[first_id] + bh + Whh @ h0) + by


@pytest.mark.parametrize("top_k", [1, 2, 5, 19])
def test_top_k_restricts_the_support(backend, dtype, top_k):
    """Over a fine grid of uniforms the first draw covers exactly the top-k ids, each about as
    often as its renormalised probability."""
    rng = np.random.default_rng(9)
    params = make_params(rng, 20, 12, dtype, logit_scale=2.0)
    z = first_step_logits(params, 1)
    top = np.argsort(-z, kind="stable")[:top_k]
    grid = (np.arange(2000) + 0.5) / 2000
    draws = np.array([sampler(backend)(*params, 1, [u], top_k=top_k)[0][0] for u in grid])
    assert set(draws.tolist()) == set(top.tolist())
    p = np.exp(z[top] - z.max())
    p /= p.sum()
    freq = np.array([(draws == j).mean() for j in top])
    np.testing.assert_allclose(freq, p, atol=2e-3)


def test_full_distribution_frequencies(backend, dtype):
    """Without top-k, the inverse CDF over a grid reproduces softmax(z / T)."""
    rng = np.random.default_rng(10)
    params = make_params(rng, 12, 8, dtype, logit_scale=2.0)
    z = first_step_logits(params, 0)
    grid = (np.arange(4000) + 0.5) / 4000
    draws = np.array([sampler(backend)(*params, 0, [u], temperature=0.8)[0][0] for u in grid])
    p = np.exp((z - z.max()) / 0.8)
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=12) / grid.size, p, atol=1e-3)


def tied_params(by, dtype, H=4):
    """A model whose logits are exactly ``by`` (Why = 0) whatever the state."""
    V = len(by)
    rng = np.random.default_rng(0)
    WxhT, bh, Whh, _, _, h0 = make_params(rng, V, H, dtype)
    return WxhT, bh, Whh, np.zeros((V, H), dtype), np.asarray(by, dtype), h0


@pytest.mark.parametrize(
    "top_k, support",
    [
        (1, {1}),  # four logits tie at the top: the lowest index
        (2, {1, 2}),
        (4, {1, 2, 4, 6}),
        (5, {1, 2, 4, 6, 5}),  # then the lowest index of the next value, 2
        (6, {1, 2, 4, 6, 5, 0}),  # two 1s (indices 0 and 7): index 0
        (7, {1, 2, 4, 6, 5, 0, 7}),
        (8, set(range(8))),
    ],
)
def test_top_k_ties_keep_exactly_k_lowest_indices(backend, dtype, top_k, support):
    params = tied_params([1, 3, 3, 0, 3, 2, 3, 1], dtype)
    grid = (np.arange(500) + 0.5) / 500
    ids, _ = sampler(backend)(*params, 0, grid, top_k=top_k)
    assert set(ids.tolist()) == support
    greedy, _ = sampler(backend)(*params, 0, grid[:5], temperature=0)
    assert greedy.tolist() == [1] * 5


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    V=st.integers(1, 30),
    temperature=st.sampled_from([0.0, 0.05, 0.5, 1.0, 4.0]),
)
def test_property_choice_rule_with_many_ties(data, V, temperature):
    """Logits from a few integer values (many ties): both backends make the reference's choice
    at every step; the state does not matter (Why = 0), so this isolates the choice rule."""
    by = data.draw(st.lists(st.integers(-2, 2), min_size=V, max_size=V), label="by")
    top_k = data.draw(st.integers(0, V), label="top_k")
    uniforms = np.array(data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=1,
                                           max_size=20), label="uniforms"))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    params = tied_params(by, dtype)
    expected = [ref_choose([float(b) for b in by], float(u), temperature, top_k)[0]
                for u in uniforms]
    for backend in ("cython", "numpy"):
        ids, _ = sampler(backend)(*params, 0, uniforms, temperature=temperature, top_k=top_k)
        assert ids.tolist() == expected, backend


def test_extreme_uniforms(backend, dtype):
    """u = 0 draws the first id of positive weight; u just below 1 the last one."""
    params = tied_params([0.0, 5.0, -1.0, 2.0, 5.0, -3.0], dtype)
    ids, _ = sampler(backend)(*params, 0, [0.0, np.nextafter(1.0, 0.0)], top_k=3)
    assert ids.tolist() == [1, 4]  # the top 3 are ids 1, 4 (both 5.0) and 3 (2.0)
    ids, _ = sampler(backend)(*params, 0, [0.0, np.nextafter(1.0, 0.0)])
    assert ids.tolist() == [0, 5]


def test_vocabulary_of_one(backend, dtype):
    params = make_params(np.random.default_rng(0), 1, 3, dtype)
    for kw in (dict(), dict(temperature=0), dict(top_k=1)):
        ids, h = sampler(backend)(*params, 0, [0.3, 0.9], **kw)
        assert ids.tolist() == [0, 0] and h.shape == (3,)


def test_large_vocabulary_top_k(backend):
    """A word-level-sized vocabulary exercises the top-k selection beyond its small buffer."""
    rng = np.random.default_rng(12)
    params = make_params(rng, 3000, 16, logit_scale=6.0)
    uniforms = rng.random(15)
    for k in (1, 40, 2999):
        result = sampler(backend)(*params, 5, uniforms, top_k=k)
        check_against_reference(result, params, 5, uniforms, np.float64, top_k=k)


# ---------------------------------------------------------------------------------------------
# 4. argument handling
# ---------------------------------------------------------------------------------------------

V0, H0 = 65, 100
ARG_NAMES = ("WxhT", "bh", "Whh", "Why", "by", "h0")


def valid_args(dtype=np.float64):
    params = make_params(np.random.default_rng(0), V0, H0, dtype)
    kwargs = dict(zip(ARG_NAMES, params))
    kwargs.update(first_id=3, uniforms=np.array([0.1, 0.5, 0.9]))
    return kwargs


def call(backend, args, **options):
    return sampler(backend)(*(args[name] for name in ARG_NAMES), args["first_id"],
                            args["uniforms"], **options)


def other(args):
    """The float dtype that the valid arguments do not have."""
    return np.float32 if args["WxhT"].dtype == np.float64 else np.float64


BAD_ARGUMENTS = [
    # (argument, value (a function of the valid arguments), exception, message fragment with
    # {dtype} for the model dtype)
    ("WxhT", lambda a: a["WxhT"].tolist(), TypeError, "WxhT: expected a numpy.ndarray"),
    ("WxhT", lambda a: a["WxhT"].astype(np.int64), TypeError, "WxhT: expected dtype float32 or float64"),
    ("WxhT", lambda a: a["WxhT"][0], ValueError, "WxhT: expected 2 dimensions"),
    ("WxhT", lambda a: a["WxhT"][:0], ValueError, "WxhT: expected vocabulary and hidden sizes >= 1"),
    ("bh", lambda a: a["bh"].astype(other(a)), TypeError,
     "bh: expected dtype {dtype} like the other arrays"),
    ("bh", lambda a: a["bh"][:-1], ValueError, "bh: expected shape (100,), got (99,)"),
    ("Whh", lambda a: a["Whh"][:, :-1], ValueError, "Whh: expected shape (100, 100), got (100, 99)"),
    ("Whh", lambda a: a["Whh"].astype(other(a)), TypeError,
     "Whh: expected dtype {dtype} like the other arrays"),
    ("Why", lambda a: a["Why"][:-1], ValueError, "Why: expected shape (65, 100), got (64, 100)"),
    ("Why", lambda a: a["Why"].T, ValueError, "Why: expected shape (65, 100), got (100, 65)"),
    ("Why", lambda a: a["Why"].astype(other(a)), TypeError,
     "Why: expected dtype {dtype} like the other arrays"),
    ("Why", lambda a: None, TypeError, "Why: expected a numpy.ndarray"),
    ("by", lambda a: a["by"][:, None], ValueError, "by: expected 1 dimensions"),
    ("by", lambda a: a["by"][1:], ValueError, "by: expected shape (65,), got (64,)"),
    ("h0", lambda a: a["h0"][None], ValueError, "h0: expected 1 dimensions"),
    ("h0", lambda a: a["h0"].astype(other(a)), TypeError,
     "h0: expected dtype {dtype} like the other arrays"),
    ("first_id", lambda a: 65, ValueError, "first_id: expected an int in [0, 65), got 65"),
    ("first_id", lambda a: -1, ValueError, "first_id: expected an int in [0, 65), got -1"),
    ("first_id", lambda a: 1.0, TypeError, "first_id: expected an int in [0, 65)"),
    ("first_id", lambda a: True, TypeError, "first_id: expected an int in [0, 65)"),
    ("first_id", lambda a: np.array([1]), TypeError, "first_id: expected an int in [0, 65)"),
    ("uniforms", lambda a: np.array([]), ValueError, "uniforms: expected a non-empty 1-D array"),
    ("uniforms", lambda a: np.full((2, 2), 0.5), ValueError, "uniforms: expected a non-empty 1-D"),
    ("uniforms", lambda a: 0.5, ValueError, "uniforms: expected a non-empty 1-D array"),
    ("uniforms", lambda a: [0.2, 1.0], ValueError, "uniforms: expected values in [0, 1)"),
    ("uniforms", lambda a: [-1e-9], ValueError, "uniforms: expected values in [0, 1)"),
    ("uniforms", lambda a: [0.5, np.nan], ValueError, "uniforms: expected values in [0, 1)"),
    ("uniforms", lambda a: np.array([0, 0]), TypeError, "uniforms: expected float64 values"),
    ("uniforms", lambda a: np.array([0.5j]), TypeError, "uniforms: expected float64 values"),
    ("uniforms", lambda a: ["0.5"], TypeError, "uniforms: expected float64 values"),
]

BAD_OPTIONS = [
    (dict(temperature=-0.5), ValueError, "temperature: expected a finite number >= 0"),
    (dict(temperature=np.nan), ValueError, "temperature: expected a finite number >= 0"),
    (dict(temperature=np.inf), ValueError, "temperature: expected a finite number >= 0"),
    (dict(temperature="1"), TypeError, "temperature: expected a real number"),
    (dict(temperature=None), TypeError, "temperature: expected a real number"),
    (dict(temperature=True), TypeError, "temperature: expected a real number"),
    (dict(top_k=-1), ValueError, "top_k: expected an int in [0, 65], got -1"),
    (dict(top_k=66), ValueError, "top_k: expected an int in [0, 65], got 66"),
    (dict(top_k=2.0), TypeError, "top_k: expected an int in [0, 65]"),
    (dict(top_k=True), TypeError, "top_k: expected an int in [0, 65]"),
    (dict(top_k=None), TypeError, "top_k: expected an int in [0, 65]"),
    (dict(nonlinearity="gelu"), ValueError, "nonlinearity: expected one of"),
    (dict(nonlinearity=None), ValueError, "nonlinearity: expected one of"),
    (dict(negative_slope=-1.0), ValueError, "negative_slope:"),
    (dict(negative_slope="a"), TypeError, "negative_slope:"),
]


def raised(backend, args, options):
    with pytest.raises(Exception) as info:
        call(backend, args, **options)
    return info.value


@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, value, exc, message", BAD_ARGUMENTS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments(backend, dtype_, name, value, exc, message):
    args = valid_args(dtype_)
    args[name] = value(args)
    message = message.format(dtype=np.dtype(dtype_).name)
    with pytest.raises(exc) as info:
        call(backend, args)
    assert message in str(info.value)
    assert str(info.value).startswith(name + ":")


@pytest.mark.parametrize("options, exc, message", BAD_OPTIONS,
                         ids=[f"{next(iter(c[0]))}-{i}" for i, c in enumerate(BAD_OPTIONS)])
def test_bad_options(backend, options, exc, message):
    with pytest.raises(exc) as info:
        call(backend, valid_args(), **options)
    assert message in str(info.value)


def test_both_backends_raise_identical_errors():
    cases = [({name: value}, {}) for name, value, _, _ in BAD_ARGUMENTS]
    cases += [({}, options) for options, _, _ in BAD_OPTIONS]
    for changes, options in cases:
        args = valid_args()
        args.update({k: v(args) for k, v in changes.items()})
        errors = [raised(backend, args, options) for backend in ("cython", "numpy")]
        assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])


def test_the_first_array_sets_the_dtype(backend):
    """float32 weights with a float64 h0 are a TypeError naming h0, never a silent cast."""
    args = valid_args(np.float32)
    args["h0"] = args["h0"].astype(np.float64)
    with pytest.raises(TypeError, match=r"^h0: expected dtype float32 like the other arrays"):
        call(backend, args)


def test_nonfinite_logits_raise_at_the_same_step():
    # NaN in the weights: the first step
    args = valid_args()
    args["Why"] = args["Why"].copy()
    args["Why"][7, 3] = np.nan
    for backend in ("cython", "numpy"):
        with pytest.raises(FloatingPointError, match=r"non-finite logits at step 0 "):
            call(backend, args)
    # a relu state growing tenfold per step overflows float64 after about 300 steps
    H = 4
    params = (np.ones((3, H)), np.zeros(H), 10.0 * np.eye(H), np.ones((3, H)), np.zeros(3),
              np.ones(H))
    messages = set()
    for backend in ("cython", "numpy"):
        with pytest.raises(FloatingPointError) as info:
            sampler(backend)(*params, 0, np.full(400, 0.5), "relu")
        messages.add(str(info.value))
    assert len(messages) == 1
    step = int(messages.pop().split("at step ")[1].split()[0])
    assert 290 < step < 320


def test_accepts_integer_types_and_float32_uniforms(backend):
    args = valid_args()
    expected, _ = call(backend, args)
    args["first_id"] = np.int16(3)
    args["uniforms"] = args["uniforms"].astype(np.float32).astype(np.float64)
    same_u, _ = call(backend, args, top_k=np.uint8(0), temperature=np.float32(1.0))
    args["uniforms"] = args["uniforms"].astype(np.float32)
    widened, _ = call(backend, args, top_k=np.int64(0))
    np.testing.assert_array_equal(widened, same_u)
    args["uniforms"] = list(args["uniforms"].astype(np.float64))
    as_list, _ = call(backend, args)
    np.testing.assert_array_equal(as_list, same_u)
    assert expected.shape == same_u.shape


def test_inputs_not_mutated(backend, dtype):
    args = valid_args(dtype)
    before = {k: np.copy(v) for k, v in args.items()}
    ids, h_last = call(backend, args, top_k=5, temperature=0.8)
    for k, v in args.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert not np.shares_memory(h_last, args["h0"])


def test_read_only_inputs(backend, dtype):
    args = valid_args(dtype)
    expected = call(backend, args, top_k=5)
    for v in args.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    ids, h_last = call(backend, args, top_k=5)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(h_last, expected[1])
    assert h_last.flags.writeable and ids.flags.writeable


def test_non_contiguous_inputs(backend, dtype):
    args = valid_args(dtype)
    expected = call(backend, args, temperature=0.7)
    strided = {}
    for k, v in args.items():
        if isinstance(v, np.ndarray) and v.ndim == 2:
            strided[k] = np.asfortranarray(v)
        elif isinstance(v, np.ndarray):
            wide = np.zeros(2 * v.shape[0], dtype=v.dtype)
            wide[::2] = v
            strided[k] = wide[::2]
        else:
            strided[k] = v
    ids, h_last = call(backend, strided, temperature=0.7)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_allclose(h_last, expected[1], rtol=0, atol=H_TOL[dtype])


def test_registered_in_both_backends():
    assert "sample_tokens" in kernels.KERNEL_NAMES
    cy, nb = kernels.get_backend("cython").sample_tokens, kernels.get_backend("numpy").sample_tokens
    assert cy.__module__ == "cyrnn._sample" and nb.__module__ == "cyrnn.kernels.numpy_sample"
    assert cy.__doc__ == nb.__doc__  # one contract, documented once
    assert kernels.sample_tokens is kernels.get_backend().sample_tokens


# ---------------------------------------------------------------------------------------------
# 5. threads and a micro sanity check
# ---------------------------------------------------------------------------------------------


def test_threads_match_sequential(dtype):
    """The compiled loop runs without the GIL; concurrent calls must not share workspaces."""
    cases = []
    for seed in range(8):
        params, first_id, uniforms, nl, kw = random_case(seed, dtype)
        cases.append((params, first_id, np.resize(uniforms, 400), nl, kw))
    cy = sampler("cython")
    expected = [cy(*p, f, u, nl, **kw) for p, f, u, nl, kw in cases]
    results = [None] * len(cases)

    def work(i):
        p, f, u, nl, kw = cases[i]
        for _ in range(5):
            results[i] = cy(*p, f, u, nl, **kw)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (ids, h), (ids_e, h_e) in zip(results, expected):
        np.testing.assert_array_equal(ids, ids_e)
        np.testing.assert_array_equal(h, h_e)


def test_micro_sanity_long_generation(capsys):
    """A char-RNN-sized run (V = 65, H = 256, 2000 characters) on both backends: sane output,
    identical ids in float64, and nothing printed. Not a timing test."""
    rng = np.random.default_rng(13)
    params = make_params(rng, 65, 256)
    uniforms = rng.random(2000)
    out = {b: sampler(b)(*params, 10, uniforms, temperature=0.9, top_k=20)
           for b in ("cython", "numpy")}
    ids, h_last = out["cython"]
    assert ids.shape == (2000,) and ids.min() >= 0 and ids.max() < 65
    assert np.isfinite(h_last).all()
    assert len(set(ids.tolist())) > 10
    np.testing.assert_array_equal(ids, out["numpy"][0])
    np.testing.assert_allclose(h_last, out["numpy"][1], rtol=0, atol=1e-12)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
