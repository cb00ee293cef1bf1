"""Gradient clipping, in place, on the gradient dicts of ``RNN.loss_and_grad``.

By default only parameter gradients are clipped: every key except ``"h0"`` and ``"x"``, which are
gradients with respect to the inputs (initial state and dense inputs), not parameters. Pass
``keys`` to choose explicitly.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Optional

import numpy as np

from ._typing import FloatArray

__all__ = ["INPUT_GRAD_KEYS", "grad_norm", "clip_grad_norm", "clip_grad_value"]

#: Keys of ``loss_and_grad``'s gradients that belong to inputs, skipped when ``keys=None``.
INPUT_GRAD_KEYS = ("h0", "c0", "x")

_CHUNK = 1 << 16  # elements per float64 block when summing squares of lower-precision arrays


def _positive(name, value):
    """Return ``value`` as a finite Python float ``> 0``, or raise naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    x = float(value)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return x


def _selected(grads, keys):
    """The arrays to clip: checked writeable float ndarrays, in key order."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
    if keys is None:
        names = [k for k in grads if k not in INPUT_GRAD_KEYS]
    else:
        if isinstance(keys, (str, bytes)):
            raise TypeError(f"keys: expected a list of key names or None, got the string {keys!r}")
        names = list(keys)
        for name in names:
            if name not in grads:
                raise KeyError(f"grads: no gradient {name!r} (named in keys)")
    arrays = []
    for name in names:
        g = grads[name]
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{name!r}]: expected a numpy.ndarray, got {type(g).__name__}")
        if g.dtype.kind != "f":
            raise TypeError(f"grads[{name!r}]: expected a floating dtype, got {g.dtype}")
        if not g.flags.writeable:
            raise ValueError(f"grads[{name!r}]: the array is read-only; it is clipped in place")
        arrays.append(g)
    return arrays


def _sum_of_squares(g):
    """Sum of squares of ``g`` accumulated in float64, without a float64 copy of ``g``."""
    flat = g.reshape(-1)  # a view when g is contiguous
    # einsum's own loops rather than BLAS's dot, which OpenBLAS splits between its threads for
    # long vectors: the sum must not depend on a thread count
    if flat.dtype == np.float64:
        return float(np.einsum("i,i->", flat, flat))
    block = np.empty(min(flat.size, _CHUNK), np.float64)
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        part = block[: min(_CHUNK, flat.size - start)]
        np.copyto(part, flat[start : start + part.size])
        total += float(np.einsum("i,i->", part, part))
    return total


def grad_norm(grads: Mapping[str, FloatArray], keys: Optional[Iterable[str]] = None) -> float:
    """The joint L2 norm of the selected gradients (accumulated in float64), without clipping.

    ``keys=None`` selects every key except ``"h0"`` and ``"x"``, as ``clip_grad_norm`` does.
    """
    return math.sqrt(sum(_sum_of_squares(g) for g in _selected(grads, keys)))


def clip_grad_norm(grads: Mapping[str, FloatArray], max_norm: float,
                   keys: Optional[Iterable[str]] = None) -> float:
    """Scale gradients in place so that their joint L2 norm is at most about ``max_norm``.

    With ``norm = sqrt(sum of g**2 over all selected arrays)`` (accumulated in float64), every
    selected gradient becomes ``g * min(1, max_norm / (norm + 1e-6))``. This is exactly the
    convention of PyTorch's ``torch.nn.utils.clip_grad_norm_`` (``clip_coef = max_norm /
    (total_norm + 1e-6)``, clamped to 1), so a clipped norm ends just below ``max_norm``.

    Parameters
    ----------
    grads : dict of str to ndarray
        Gradients, e.g. from ``RNN.loss_and_grad``; the selected ones must be writeable float
        arrays and are modified in place (dtype kept).
    max_norm : float
        Finite, ``> 0``.
    keys : iterable of str or None
        Gradients to include. ``None``: every key except ``"h0"`` and ``"x"`` (the gradients of
        the initial state and of dense inputs, which are not parameters); those are neither
        counted nor scaled.

    Returns
    -------
    float
        The total norm BEFORE clipping. If it is not finite (inf or nan), it is returned and the
        gradients are left unchanged (PyTorch would scale them by nan); the caller decides (e.g.
        skip the update).

    Raises
    ------
    KeyError
        A name in ``keys`` is not in ``grads``.
    """
    max_norm = _positive("max_norm", max_norm)
    arrays = _selected(grads, keys)
    norm = grad_norm(grads, keys)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in arrays:
            g *= coef
    return norm


def clip_grad_value(grads: Mapping[str, FloatArray], limit: float,
                    keys: Optional[Iterable[str]] = None) -> None:
    """Clip every selected gradient elementwise to ``[-limit, limit]``, in place.

    Parameters
    ----------
    grads : dict of str to ndarray
        Gradients; the selected ones must be writeable float arrays (dtype kept). nan stays nan.
    limit : float
        Finite, ``> 0``.
    keys : iterable of str or None
        Gradients to clip. ``None``: every key except ``"h0"`` and ``"x"`` (input gradients).

    Raises
    ------
    KeyError
        A name in ``keys`` is not in ``grads``.
    """
    limit = _positive("limit", limit)
    for g in _selected(grads, keys):
        np.clip(g, -limit, limit, out=g)
