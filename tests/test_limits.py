"""The compiled kernels at the limits of their number types: exps of infinities, NaN and
huge arguments (softmax of logits that overflowed), squared errors beyond the float32 range, and
dot products longer than a 32-bit BLAS count. Each case is checked against the NumPy twin, which
defines what the kernels return."""
import numpy as np
import pytest

from cyrnn import kernels

from conftest import TOL

try:
    from cyrnn import _rnn
except ImportError:  # pragma: no cover - the backend fixture reports a missing build
    _rnn = None

needs_build = pytest.mark.skipif(_rnn is None, reason="the compiled extension is not built")

BUILDS = {0: "baseline", 1: "avx2", 2: "avx512"}
FINFO = {np.float32: np.finfo(np.float32), np.float64: np.finfo(np.float64)}


def _exp(which, x):
    y = _rnn._exp_build(which, x)
    if y is None:
        pytest.skip(f"this CPU cannot run the {BUILDS[which]} build")
    assert y.dtype == x.dtype  # the build of x's own precision, not the other one
    return y


# ---------------------------------------------------------------------------------------------
# exp: every build, both precisions
# ---------------------------------------------------------------------------------------------


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
def test_every_build_of_the_exps_at_special_values(dtype, which):
    # NaN in, NaN out; +inf and anything past the overflow threshold, inf; -inf and anything
    # below the normal range, 0. Converting NaN to an integer, or shifting a negative one, would
    # be undefined behaviour (the sanitizer build stops on it).
    big = FINFO[dtype].max
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, big, -big, 1e30, -1e30, 1000.0, -1000.0,
                  -110.0, 0.0, -0.0], dtype=dtype)
    expected = np.array([np.nan, np.nan, np.inf, 0, np.inf, 0, np.inf, 0, np.inf, 0,
                         0 if dtype == np.float32 else np.exp(-110.0), 1, 1], dtype=dtype)
    y = _exp(which, x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_allclose(y[~np.isnan(y)], expected[~np.isnan(expected)], rtol=1e-15,
                               atol=0)


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
def test_every_build_of_the_float32_exp_over_its_range(which):
    # relative error ~1e-7 from the smallest normal result to the largest finite one, including
    # the arguments whose 2^n is 2^128 (x > 88.38), which must not overflow early
    lo, hi = np.float32(-87.3365479), np.float32(88.7228317)
    x = np.concatenate([np.linspace(lo, hi, 400_001, dtype=np.float32),
                        np.nextafter(hi, np.float32(0)) - np.arange(8, dtype=np.float32) * 1e-5,
                        [lo, hi, np.float32(88.4), np.float32(-87.0)]]).astype(np.float32)
    y = _exp(which, x)
    exact = np.exp(x.astype(np.float64))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, exact, rtol=3e-7, atol=0)
    # just past the largest finite result: inf, as float32(exp(x)) rounds it
    past = np.nextafter(hi, np.float32(np.inf), dtype=np.float32)
    assert _exp(which, np.array([past], np.float32))[0] == np.inf


@needs_build
def test_exp_builds_agree():
    x = np.linspace(-100, 100, 100_001).astype(np.float32)
    builds = [_rnn._exp_build(which, x) for which in BUILDS]
    runnable = [y for y in builds if y is not None]
    for y in runnable[1:]:
        np.testing.assert_allclose(y, runnable[0], rtol=2e-7, atol=0)


# ---------------------------------------------------------------------------------------------
# the softmax of the fused kernels with logits at the edge of the range
# ---------------------------------------------------------------------------------------------


def _one_step_logits(z, dtype):
    """Arguments of elman_forward / elman_loss_and_grad whose one step has logits z: one token,
    H = 1 identity unit with input bias 1 (h = 1), Why = z as a column, by = 0."""
    z = np.asarray(z, dtype=dtype)
    O = z.size
    one = np.ones((1, 1), dtype)
    zero = np.zeros((1, 1), dtype)
    return (np.zeros((1, 1), dtype=np.intp), zero, zero, zero, one[0],
            z.reshape(O, 1).copy(), np.zeros(O, dtype))


LOGITS = {
    # the shift by the maximum overflows to -inf: exp gives exactly 0 (not the smallest normal)
    "opposite-extremes": lambda big: [big, -big, 0.0],
    # an infinite logit: inf - inf is NaN, so is the softmax (NumPy's result)
    "infinite": lambda big: [np.inf, 1.0, -1.0],
    "two-infinite": lambda big: [np.inf, np.inf, 0.0],
    "minus-infinite": lambda big: [-np.inf, 0.0, 1.0],
    "all-minus-infinite": lambda big: [-np.inf, -np.inf, -np.inf],
    "nan": lambda big: [np.nan, 0.0, 1.0],
    # results below the normal range: 0 in float32, NumPy's subnormals are below any tolerance
    "tiny": lambda big: [0.0, -95.0, -200.0],
}


def _same(actual, expected, dtype):
    """NaN where the twin has NaN, exactly 0 where it has 0, else close (results below the
    normal range may be 0)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(actual[ok][expected[ok] == 0], 0)
    np.testing.assert_allclose(actual[ok], expected[ok], rtol=TOL[dtype], atol=1e-37)


@pytest.mark.parametrize("case", list(LOGITS))
def test_softmax_output_of_extreme_logits(backend, dtype, case):
    args = _one_step_logits(LOGITS[case](FINFO[dtype].max), dtype)
    with np.errstate(all="ignore"):
        y, _ = kernels.get_backend(backend).elman_forward(*args, "identity", output="softmax")
        expected, _ = kernels.get_backend("numpy").elman_forward(*args, "identity",
                                                                 output="softmax")
    _same(y.ravel(), expected.ravel(), dtype)


@pytest.mark.parametrize("case", list(LOGITS))
def test_cross_entropy_step_of_extreme_logits(backend, dtype, case):
    inputs, h0, Wxh, Whh, bh, Why, by = _one_step_logits(LOGITS[case](FINFO[dtype].max), dtype)
    with np.errstate(all="ignore"):
        results = [kernels.get_backend(name).elman_loss_and_grad(
            inputs, np.array([[1]]), h0, Wxh, Whh, bh, Why, by, "identity", reduction="sum")
            for name in (backend, "numpy")]
    (loss, grads, _, _), (loss_np, grads_np, _, _) = results
    assert (np.isnan(loss) and np.isnan(loss_np)) or loss == pytest.approx(loss_np, rel=1e-6)
    for name in ("Why", "by"):
        _same(grads[name].ravel(), grads_np[name].ravel(), dtype)


# ---------------------------------------------------------------------------------------------
# the squared error of the compiled fused step, beyond the float32 range of its square
# ---------------------------------------------------------------------------------------------


def _mse_case(dtype, scale, T=3, B=2, I=4, H=5, O=3):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    Wxh = (rng.normal(size=(H, I)) * 0.3).astype(dtype)
    Whh = (rng.normal(size=(H, H)) * 0.3).astype(dtype)
    bh = rng.normal(size=H).astype(dtype)
    Why = (rng.normal(size=(O, H)) * 0.3).astype(dtype)
    by = rng.normal(size=O).astype(dtype)
    # differences of about `scale` between the logits and the targets, of both signs
    targets = (rng.choice([-1.0, 1.0], size=(T, B, O)) * scale
               * rng.uniform(0.5, 1.5, size=(T, B, O))).astype(dtype)
    return x, targets, h0, Wxh, Whh, bh, Why, by


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_mse_step_with_differences_beyond_the_float32_square(dtype, reduction, scale):
    # (1e20)^2 overflows float32 but not float64, in which the NumPy twin sums the squares
    args = _mse_case(dtype, scale)
    with np.errstate(over="ignore"):  # the gradient norms may overflow (not compared here)
        compiled = kernels.get_backend("cython").elman_loss_and_grad(
            *args, loss="mse", reduction=reduction)
        twin = kernels.get_backend("numpy").elman_loss_and_grad(
            *args, loss="mse", reduction=reduction)
    assert np.isfinite(compiled[0])
    assert compiled[0] == pytest.approx(twin[0], rel=1e-6)
    for name, g in twin[1].items():
        # the gradients 2 scale (z - target) are finite in both, in the model dtype
        assert np.isfinite(g).all(), name
        scale_g = np.abs(g).max()
        np.testing.assert_allclose(compiled[1][name], g, rtol=0, atol=TOL[dtype] * scale_g,
                                   err_msg=name)


def test_mse_step_with_differences_beyond_float32():
    # a difference that itself overflows float32 (3e38 - -3e38) is inf in both backends
    args = list(_mse_case(np.float32, 1.0))
    args[1] = np.full_like(args[1], -3e38)
    args[7] = np.full_like(args[7], 3e38)  # by: every logit about 3e38
    with np.errstate(all="ignore"):
        compiled = kernels.get_backend("cython").elman_loss_and_grad(*args, loss="mse")
        twin = kernels.get_backend("numpy").elman_loss_and_grad(*args, loss="mse")
    assert compiled[0] == twin[0] == np.inf


# ---------------------------------------------------------------------------------------------
# the gradient norms' sums of squares: a 64-bit loop, no 32-bit BLAS count
# ---------------------------------------------------------------------------------------------


@needs_build
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 1000, 4099])
def test_sum_of_squares_matches_numpy(rng, dtype, n):
    x = rng.normal(size=n).astype(dtype)
    expected = float(np.sum(x.astype(np.float64) ** 2))
    assert _rnn._sum_of_squares(x) == pytest.approx(expected, rel=1e-13, abs=0)


@needs_build
def test_gradient_norms_with_lengths_against_the_twin(rng, dtype):
    T, B, H = 4, 3, 7
    hs = np.tanh(rng.normal(size=(T + 1, B, H))).astype(dtype)
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    Whh = (rng.normal(size=(H, H)) / np.sqrt(H)).astype(dtype)
    compiled = kernels.get_backend("cython").rnn_backward(dh_out, hs, Whh, lengths=[4, 2, 0])
    twin = kernels.get_backend("numpy").rnn_backward(dh_out, hs, Whh, lengths=[4, 2, 0])
    np.testing.assert_allclose(compiled[2], twin[2], rtol=TOL[dtype], atol=0)
