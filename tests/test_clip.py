"""Tests of ``cyrnn.clip``: the norm returned, the in-place scaling (PyTorch's convention, checked
against ``torch.nn.utils.clip_grad_norm_``), key selection (input gradients "h0"/"x" untouched
by default), non-finite norms, value clipping and argument checks."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyrnn import RNN
from cyrnn.clip import INPUT_GRAD_KEYS, clip_grad_norm, clip_grad_value

SHAPES = {"Wxh": (4, 3), "Whh": (4, 4), "bh": (4,), "Why": (2, 4), "by": (2,)}
INPUT_SHAPES = {"h0": (2, 4), "x": (5, 2, 3)}


def make_grads(dtype, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    shapes = dict(SHAPES, **INPUT_SHAPES)
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def norm64(arrays):
    """Reference norm: float64 sum of squares of every element."""
    return math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays))


def copy_dict(d):
    return {k: v.copy() for k, v in d.items()}


# -------------------------------------------------------------------------------------------
# clip_grad_norm
# -------------------------------------------------------------------------------------------


def test_norm_is_sqrt_of_sum_of_squares_of_parameter_grads(dtype):
    grads = make_grads(dtype)
    expected = norm64(grads[k] for k in SHAPES)
    norm = clip_grad_norm(grads, max_norm=1e6)
    assert isinstance(norm, float)
    assert norm == pytest.approx(expected, rel=1e-12)
    assert norm != pytest.approx(norm64(grads.values()), rel=1e-6)  # "h0"/"x" not counted


def test_clipped_to_max_norm_when_above(dtype):
    grads = make_grads(dtype, scale=10.0)
    before = copy_dict(grads)
    total = norm64(before[k] for k in SHAPES)
    assert total > 5.0
    norm = clip_grad_norm(grads, max_norm=5.0)
    assert norm == pytest.approx(total, rel=1e-12)
    assert norm64(grads[k] for k in SHAPES) == pytest.approx(5.0, rel=1e-6)
    coef = 5.0 / (total + 1e-6)  # PyTorch's convention
    for k in SHAPES:
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(grads[k], before[k] * coef, rtol=1e-6 if dtype == np.float32 else 1e-14)
    for k in [k for k in INPUT_GRAD_KEYS if k in grads]:  # an Elman model has no c0
        np.testing.assert_array_equal(grads[k], before[k])


def test_epsilon_convention_is_visible_for_small_norms():
    # with norm 1e-5 and max_norm 1e-6 the coefficient is 1e-6 / (1e-5 + 1e-6) = 1/11
    grads = {"w": np.array([6e-6, 8e-6])}
    norm = clip_grad_norm(grads, max_norm=1e-6)
    assert norm == pytest.approx(1e-5, rel=1e-14)
    np.testing.assert_allclose(grads["w"], np.array([6e-6, 8e-6]) / 11.0, rtol=1e-14)


def test_unchanged_when_below(dtype):
    grads = make_grads(dtype)
    ids = {k: id(v) for k, v in grads.items()}
    before = copy_dict(grads)
    total = norm64(before[k] for k in SHAPES)
    assert clip_grad_norm(grads, max_norm=2 * total) == pytest.approx(total, rel=1e-12)
    for k in grads:
        assert id(grads[k]) == ids[k]
        np.testing.assert_array_equal(grads[k], before[k])


def test_in_place_same_objects(dtype):
    grads = make_grads(dtype, scale=10.0)
    ids = {k: id(v) for k, v in grads.items()}
    clip_grad_norm(grads, 1.0)
    assert {k: id(v) for k, v in grads.items()} == ids


def test_matches_torch_clip_grad_norm(dtype):
    torch = pytest.importorskip("torch")
    for scale, max_norm in [(10.0, 1.0), (0.01, 1.0), (1.0, 3.0)]:
        grads = make_grads(dtype, scale=scale, seed=7)
        tensors = []
        for k in SHAPES:
            t = torch.zeros(SHAPES[k], dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
            t.grad = torch.tensor(grads[k].copy())
            tensors.append(t)
        expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
        norm = clip_grad_norm(grads, max_norm)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        assert norm == pytest.approx(expected_norm, rel=tol)
        for k, t in zip(SHAPES, tensors):
            np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=tol, atol=tol * 1e-3, err_msg=k)


def test_explicit_keys():
    grads = make_grads(np.float64, scale=10.0)
    before = copy_dict(grads)
    keys = ["Whh", "h0"]
    total = norm64(before[k] for k in keys)
    assert clip_grad_norm(grads, 1.0, keys=keys) == pytest.approx(total, rel=1e-12)
    assert norm64(grads[k] for k in keys) == pytest.approx(1.0, rel=1e-6)
    for k in set(grads) - set(keys):
        np.testing.assert_array_equal(grads[k], before[k], err_msg=k)
    assert clip_grad_norm(grads, 1.0, keys=[]) == 0.0


def test_unknown_key_raises():
    grads = make_grads(np.float64)
    with pytest.raises(KeyError, match=r"Wfoo"):
        clip_grad_norm(grads, 1.0, keys=["Whh", "Wfoo"])
    with pytest.raises(KeyError, match=r"Wfoo"):
        clip_grad_value(grads, 1.0, keys=["Wfoo"])
    with pytest.raises(TypeError, match=r"keys: expected a list of key names or None"):
        clip_grad_norm(grads, 1.0, keys="Whh")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_norm_returned_and_grads_unchanged(dtype, bad):
    grads = make_grads(dtype, scale=10.0)
    grads["Whh"][1, 2] = bad
    before = copy_dict(grads)
    norm = clip_grad_norm(grads, 1.0)
    assert not math.isfinite(norm)
    if bad == np.inf:
        assert norm == math.inf
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


def test_non_finite_input_gradient_ignored_by_default():
    grads = make_grads(np.float64, scale=10.0)
    grads["h0"][0, 0] = np.nan
    assert math.isfinite(clip_grad_norm(grads, 1.0))
    assert norm64(grads[k] for k in SHAPES) == pytest.approx(1.0, rel=1e-6)


def test_float32_norm_accumulates_in_float64():
    # squares of 1e20 overflow float32 (max ~3.4e38) but not float64
    grads = {"w": np.full((300, 300), 1e20, dtype=np.float32)}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(float(np.float32(1e20)) * 300, rel=1e-12)
    assert grads["w"].dtype == np.float32
    np.testing.assert_allclose(grads["w"], np.float32(1.0 / 300), rtol=1e-6)


def test_float32_norm_accurate_over_many_elements():
    # 2e6 equal elements plus one odd: float64 accumulation gives the exact norm
    w = np.full(2_000_001, 0.1, dtype=np.float32)
    w[-1] = 3.0
    exact = math.sqrt(2_000_000 * float(np.float32(0.1)) ** 2 + 9.0)
    assert clip_grad_norm({"w": w}, 1e9) == pytest.approx(exact, rel=1e-13)


def test_non_contiguous_gradients():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    grads = {"w": base[:, ::2]}
    expected = norm64([base[:, ::2]])
    assert clip_grad_norm(grads, 1.0) == pytest.approx(expected, rel=1e-12)
    assert norm64([base[:, ::2]]) == pytest.approx(1.0, rel=1e-6)  # the view was scaled in place
    np.testing.assert_array_equal(base[:, 1::2], np.arange(24, dtype=np.float32).reshape(4, 6)[:, 1::2])


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30),
    max_norm=st.floats(1e-3, 1e3),
)
def test_property_result_norm(values, max_norm):
    g = np.array(values)
    total = norm64([g])
    grads = {"w": g.copy()}
    assert clip_grad_norm(grads, max_norm) == pytest.approx(total, rel=1e-12, abs=1e-300)
    expected = total * min(1.0, max_norm / (total + 1e-6))
    assert norm64([grads["w"]]) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert norm64([grads["w"]]) <= max_norm * (1 + 1e-12)


def test_with_rnn_gradients(dtype):
    rng = np.random.default_rng(0)
    model = RNN(3, 5, 2, dtype=dtype, seed=0)
    _, grads, _ = model.loss_and_grad(rng.standard_normal((4, 2, 3)), 100 * rng.standard_normal((4, 2, 2)))
    before = copy_dict(grads)
    norm = clip_grad_norm(grads, 0.5)
    assert norm == pytest.approx(norm64(before[k] for k in model.params), rel=1e-12)
    assert norm64(grads[k] for k in model.params) == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_array_equal(grads["h0"], before["h0"])
    np.testing.assert_array_equal(grads["x"], before["x"])


# -------------------------------------------------------------------------------------------
# clip_grad_value
# -------------------------------------------------------------------------------------------


def test_clip_value(dtype):
    grads = make_grads(dtype, scale=3.0)
    before = copy_dict(grads)
    ids = {k: id(v) for k, v in grads.items()}
    assert clip_grad_value(grads, 1.5) is None
    for k in SHAPES:
        assert id(grads[k]) == ids[k] and grads[k].dtype == dtype
        np.testing.assert_array_equal(grads[k], np.clip(before[k], -1.5, 1.5))
        assert np.abs(grads[k]).max() == pytest.approx(1.5)  # scale 3: some entries were clipped
    for k in [k for k in INPUT_GRAD_KEYS if k in grads]:  # an Elman model has no c0
        np.testing.assert_array_equal(grads[k], before[k])


def test_clip_value_hand_computed(dtype):
    grads = {"w": np.array([-3.0, -0.5, 0.0, 0.25, 2.0], dtype=dtype), "x": np.array([5.0], dtype=dtype)}
    clip_grad_value(grads, 1.0)
    np.testing.assert_array_equal(grads["w"], np.array([-1.0, -0.5, 0.0, 0.25, 1.0], dtype=dtype))
    np.testing.assert_array_equal(grads["x"], [5.0])
    clip_grad_value(grads, 0.5, keys=["x"])
    np.testing.assert_array_equal(grads["x"], [0.5])


def test_clip_value_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    grads = make_grads(dtype, scale=3.0, seed=4)
    tensors = []
    for k in SHAPES:
        t = torch.zeros(SHAPES[k], dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
        t.grad = torch.tensor(grads[k].copy())
        tensors.append(t)
    torch.nn.utils.clip_grad_value_(tensors, 0.7)
    clip_grad_value(grads, 0.7)
    for k, t in zip(SHAPES, tensors):
        np.testing.assert_array_equal(grads[k], t.grad.numpy())


# -------------------------------------------------------------------------------------------
# argument checks
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("func, name", [(clip_grad_norm, "max_norm"), (clip_grad_value, "limit")])
@pytest.mark.parametrize(
    "value, exc, match",
    [
        (0.0, ValueError, r"expected a finite number > 0, got 0.0"),
        (-1, ValueError, r"expected a finite number > 0, got -1"),
        (float("nan"), ValueError, r"expected a finite number > 0"),
        (float("inf"), ValueError, r"expected a finite number > 0"),
        ("1", TypeError, r"expected a number, got '1'"),
        (True, TypeError, r"expected a number"),
    ],
)
def test_bad_limit(func, name, value, exc, match):
    grads = make_grads(np.float64)
    before = copy_dict(grads)
    with pytest.raises(exc, match=rf"^{name}: {match}"):
        func(grads, value)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("func", [clip_grad_norm, clip_grad_value])
def test_bad_grads(func):
    with pytest.raises(TypeError, match=r"grads: expected a dict"):
        func([np.zeros(3)], 1.0)
    with pytest.raises(TypeError, match=r"grads\['w'\]: expected a numpy.ndarray"):
        func({"w": [1.0, 2.0]}, 1.0)
    with pytest.raises(TypeError, match=r"grads\['w'\]: expected a floating dtype"):
        func({"w": np.array([1, 2])}, 1.0)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\['w'\]: the array is read-only"):
        func({"w": ro}, 1.0)
