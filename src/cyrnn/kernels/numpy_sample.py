"""The NumPy twin of the compiled sampling kernel in ``pyx/cyrnn/_sample.pyx``.

``sample_tokens`` generates a sequence of token ids from an Elman RNN language model, one step
at a time, feeding each drawn id back in as the next input. The random numbers are drawn by the
caller (``uniforms``), so both backends make the same choices for the same seed, up to rounding:
the two compute the probabilities to float tolerance, not bit for bit, and a uniform within
rounding of a boundary between two tokens can pick either.

``_sample_args`` (the argument checks) and ``_nonfinite_logits`` (the error of a step whose
logits are NaN or infinite) are shared with the compiled module, which imports them from here:
a bad argument raises the same exception with the same message on either backend.
"""
from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt

from .. import _checks
from .._typing import FloatArray, IntArray, Nonlinearity
from .numpy_backend import _activate

_INT32_MAX = 2**31 - 1  # BLAS (LP64) takes sizes as 32-bit ints


def _int_arg(name, value, low, high, high_open):
    """``value`` as an int in [low, high) (or [low, high] when not ``high_open``); TypeError for
    a non-integer (bool included), ValueError out of range."""
    interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int in {interval}, got {value!r}")
    value = int(value)
    if value < low or value > high or (high_open and value == high):
        raise ValueError(f"{name}: expected an int in {interval}, got {value}")
    return value


def _temperature(temperature):
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature: expected a real number >= 0, got {temperature!r}")
    value = float(temperature)
    if not (np.isfinite(value) and value >= 0.0):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    return value


def _uniforms(uniforms):
    """``uniforms`` as a C-contiguous float64 array (n,), n >= 1, values in [0, 1). float16 and
    float32 are widened (exactly); any other dtype is a TypeError."""
    u = np.asarray(uniforms)
    if u.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"uniforms: expected float64 values in [0, 1), got dtype {u.dtype}")
    if u.ndim != 1 or u.shape[0] < 1:
        raise ValueError(f"uniforms: expected a non-empty 1-D array, got shape {u.shape}")
    u = _checks.aligned_array(u, dtype=np.float64)
    # written so that NaN fails too
    if not ((u >= 0.0) & (u < 1.0)).all():
        raise ValueError(f"uniforms: expected values in [0, 1), got min {u.min()} max {u.max()}")
    return u


def _sample_args(WxhT, bh, Whh, Why, by, h0, first_id, uniforms, nonlinearity, negative_slope,
                 temperature, top_k):
    """Checked, contiguous arguments of ``sample_tokens``, in order, followed by the
    nonlinearity code and the slope: ``(WxhT, bh, Whh, Why, by, h0, first_id, uniforms,
    temperature, top_k, code, slope)``."""
    code = _checks.nonlinearity_code(nonlinearity, negative_slope)
    WxhT = _checks.float_array("WxhT", WxhT, 2)
    V, H = WxhT.shape
    if V < 1 or H < 1:
        raise ValueError(f"WxhT: expected vocabulary and hidden sizes >= 1, got shape {WxhT.shape}")
    if V > _INT32_MAX or H > _INT32_MAX:
        raise ValueError(f"WxhT: sizes too large for 32-bit BLAS, got shape {WxhT.shape}")
    dtype = WxhT.dtype
    arrays = []
    for name, a, shape in (("bh", bh, (H,)), ("Whh", Whh, (H, H)), ("Why", Why, (V, H)),
                           ("by", by, (V,)), ("h0", h0, (H,))):
        a = _checks.float_array(name, a, len(shape), dtype)
        _checks.expect_shape(name, a, shape)
        arrays.append(a)
    bh, Whh, Why, by, h0 = arrays
    first_id = _int_arg("first_id", first_id, 0, V, True)
    uniforms = _uniforms(uniforms)
    temperature = _temperature(temperature)
    top_k = _int_arg("top_k", top_k, 0, V, False)
    return (WxhT, bh, Whh, Why, by, h0, first_id, uniforms, temperature, top_k, code,
            float(negative_slope))


def _nonfinite_logits(step):
    """The exception for a step whose logits are not all finite."""
    return FloatingPointError(
        f"sample_tokens: non-finite logits at step {step} (NaN or Inf in the weights, or the "
        "hidden state overflowed)"
    )


def _top_k_mask(z, k):
    """Boolean mask of the ``k`` largest entries of ``z``; among equal values the lower indices
    win, so exactly ``k`` entries are kept (the first ``k`` of a stable sort by decreasing z)."""
    keep = np.zeros(z.shape[0], dtype=bool)
    keep[np.argsort(-z, kind="stable")[:k]] = True
    return keep


def _choose(z, u, temperature, top_k):
    """One token id from finite logits ``z`` (V,) and a uniform ``u`` in [0, 1)."""
    if temperature == 0.0:
        return int(np.argmax(z))  # the first maximum
    z64 = z.astype(np.float64)
    # unnormalised softmax of z / temperature, shifted by the max (which gets weight 1)
    w = np.exp((z64 - z64.max()) / temperature)
    if 0 < top_k < z.shape[0]:
        w[~_top_k_mask(z, top_k)] = 0.0
    # inverse CDF: the first j with cumsum(w)[j] > u * sum(w), sums accumulated left to right
    cdf = np.cumsum(w)
    return int(np.searchsorted(cdf, u * cdf[-1], side="right"))


def sample_tokens(WxhT: FloatArray, bh: FloatArray, Whh: FloatArray, Why: FloatArray,
                  by: FloatArray, h0: FloatArray, first_id: int, uniforms: npt.ArrayLike,
                  nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                  temperature: float = 1.0, top_k: int = 0) -> tuple[IntArray, FloatArray]:
    """Generate ``n = len(uniforms)`` token ids, feeding each one back as the next input.

    For step ``i = 0 .. n-1``, starting from ``h = h0`` and ``id = first_id``::

        h      = f(WxhT[id] + bh + Whh @ h)       # one-hot input: a row of Wxh^T
        z      = Why @ h + by                     # logits (V,)
        id     = choose(z, uniforms[i])
        ids[i] = id

    ``choose`` is greedy when ``temperature == 0``: the index of the largest logit (the lowest
    one on ties; ``uniforms`` are then ignored). Otherwise it samples from
    ``softmax(z / temperature)``, restricted to the ``top_k`` largest logits when ``top_k > 0``,
    by the inverse CDF: with weights ``w[j] = exp((z[j] - max(z)) / temperature)`` (zero outside
    the top k), computed and summed left to right in float64 whatever the model dtype, the draw
    is the smallest ``j`` with ``cumsum(w)[j] > uniforms[i] * sum(w)``.

    Top-k ties: the kept logits are the first ``top_k`` of the indices sorted by decreasing
    logit, equal logits by increasing index; so exactly ``top_k`` ids can be drawn, and where
    several logits equal the k-th largest value the lower indices are kept. ``top_k = 0`` or
    ``top_k = V`` keeps all of them.

    Parameters
    ----------
    WxhT : ndarray (V, H), float32 or float64
        Transposed input weights (``Wxh.T``); all arrays share its dtype (a different one is a
        TypeError, never a silent cast).
    bh : ndarray (H,)
    Whh : ndarray (H, H)
        Recurrent weights (PyTorch's ``weight_hh`` orientation).
    Why : ndarray (V, H)
    by : ndarray (V,)
    h0 : ndarray (H,)
        Initial hidden state.
    first_id : int in [0, V)
        The input of the first step.
    uniforms : array (n,) of floats in [0, 1), n >= 1
        One uniform per step, drawn by the caller (e.g. ``rng.random(n)``); float64, or float16
        / float32 which are widened exactly.
    nonlinearity : {"tanh", "relu", "sigmoid", "leaky_relu", "identity"}
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs (>= 0).
    temperature : float >= 0
        Divides the logits; 0 is greedy decoding.
    top_k : int in [0, V]
        Sample among the ``top_k`` largest logits only; 0 means all.

    Returns
    -------
    ids : ndarray (n,) of intp
        The generated ids (``first_id`` is not included).
    h_last : ndarray (H,)
        The hidden state after the last step (the input of the step that would consume
        ``ids[-1]`` is ``h_last``), in the model dtype.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, each message naming the argument.
    FloatingPointError
        When a step's logits are NaN or infinite (the message gives the step).
    """
    (WxhT, bh, Whh, Why, by, h, token, uniforms, temperature, top_k, code,
     slope) = _sample_args(WxhT, bh, Whh, Why, by, h0, first_id, uniforms, nonlinearity,
                           negative_slope, temperature, top_k)
    n = uniforms.shape[0]
    ids = np.empty(n, dtype=np.intp)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(n):
            h = _activate(WxhT[token] + bh + Whh @ h, code, slope)
            z = Why @ h + by
            if not np.isfinite(z).all():
                raise _nonfinite_logits(i)
            token = _choose(z, uniforms[i], temperature, top_k)
            ids[i] = token
    return ids, h
