"""The NumPy twin of the fused training step ``elman_loss_and_grad`` in ``pyx/cyrnn/_rnn.pyx``.

One call does what ``RNN.loss_and_grad`` does for the common case (every step carries a loss,
no padding, full BPTT or a carry scale): input projection, recurrence, output layer, loss,
BPTT and every weight gradient. At small sizes the compiled version saves the dozen Python-level
NumPy calls that otherwise cost more than the arithmetic. The checks of the arguments live here
and are shared by both backends.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import numpy.typing as npt

from .. import _checks, losses, norms, stack
from .._typing import ArrayDict, FloatArray, Nonlinearity, OutputName, Reduction, StepLossName
from ..layers import Architecture
from . import numpy_backend

STEP_LOSSES = ("cross_entropy", "mse")


def _model_args(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope):
    """Checked, contiguous inputs and parameters shared by the fused kernels:
    ``(inputs, h0, Wxh, Whh, bh, Why, by, code, slope)``."""
    code = _checks.nonlinearity_code(nonlinearity, negative_slope)
    Whh = _checks.float_array("Whh", Whh, 2)
    dtype, H = Whh.dtype, Whh.shape[0]
    _checks.expect_shape("Whh", Whh, (H, H))
    Wxh = _checks.float_array("Wxh", Wxh, 2, dtype)
    I = Wxh.shape[1]
    _checks.expect_shape("Wxh", Wxh, (H, I))
    Why = _checks.float_array("Why", Why, 2, dtype)
    O = Why.shape[0]
    _checks.expect_shape("Why", Why, (O, H))
    if min(H, I, O) < 1:
        raise ValueError(f"expected hidden, input and output sizes >= 1, got H = {H}, I = {I}, "
                         f"O = {O}")
    bh = _checks.float_array("bh", bh, 1, dtype)
    _checks.expect_shape("bh", bh, (H,))
    by = _checks.float_array("by", by, 1, dtype)
    _checks.expect_shape("by", by, (O,))
    inputs = np.asarray(inputs)
    if inputs.dtype.kind in "iu":
        if inputs.ndim != 2:
            raise ValueError(f"inputs: token ids must have shape (T, B), got {inputs.shape}")
        _checks.id_range("inputs", inputs, I)
        inputs = _checks.aligned_array(inputs, dtype=np.intp)
    else:
        inputs = _checks.float_array("inputs", inputs, 3, dtype)
        _checks.expect_shape("inputs", inputs, inputs.shape[:2] + (I,))
    T, B = inputs.shape[:2]
    if T < 1 or B < 1:
        raise ValueError(f"inputs: expected at least one step and one sequence, got {inputs.shape}")
    if T * B > 2**31 - 1 or max(H, I, O) > 2**31 - 1:
        raise ValueError("sizes too large for 32-bit BLAS")
    h0 = _checks.float_array("h0", h0, 2, dtype)
    _checks.expect_shape("h0", h0, (B, H))
    return inputs, h0, Wxh, Whh, bh, Why, by, code, float(negative_slope)


def _step_args(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope, loss,
               reduction, carry, window):
    """Checked, contiguous arguments of ``elman_loss_and_grad``."""
    if loss not in STEP_LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(STEP_LOSSES)}, got {loss!r}")
    if reduction not in losses.REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    inputs, h0, Wxh, Whh, bh, Why, by, code, slope = _model_args(
        inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope)
    T, B = inputs.shape[:2]
    O, dtype = Why.shape[0], Whh.dtype
    targets = np.asarray(targets)
    if loss == "cross_entropy":
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets: cross_entropy needs integer class ids, got dtype {targets.dtype}")
        _checks.expect_shape("targets", targets, (T, B))
        _checks.id_range("targets", targets, O)
        targets = _checks.aligned_array(targets, dtype=np.intp)
    else:
        targets = _checks.float_array("targets", targets, 3, dtype)
        _checks.expect_shape("targets", targets, (T, B, O))
    carry = _checks.carry_array(carry, T, dtype)
    longest, windows = (0, None) if window is None else _checks.window_sizes(window, T)
    if longest and carry is not None:
        raise ValueError("carry, window: pass one truncation, not both")
    return (inputs, targets, h0, Wxh, Whh, bh, Why, by, code, slope, carry, longest, windows)


def _output_code(output):
    if output not in losses.OUTPUTS:
        raise ValueError(f"output: expected one of {', '.join(losses.OUTPUTS)}, got {output!r}")
    return losses.OUTPUTS.index(output)


def elman_forward(inputs: npt.ArrayLike, h0: FloatArray, Wxh: FloatArray, Whh: FloatArray,
                  bh: FloatArray, Why: FloatArray, by: FloatArray,
                  nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                  output: OutputName = "linear",
                  threads: Optional[int] = None) -> tuple[FloatArray, FloatArray]:
    """Outputs of an Elman RNN with an output layer, in one call.

    ``y_t = g(h_t Why^T + by)`` with ``h_t = f(x_t Wxh^T + bh + h_{t-1} Whh^T)`` for every step.

    Parameters
    ----------
    inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope :
        As in ``elman_loss_and_grad``.
    output : {"linear", "softmax", "sigmoid"}
        The output function ``g``.
    threads : int >= 1, optional
        As in ``elman_loss_and_grad``: the compiled pass runs a large enough batch in shards on
        up to this many threads (same results on any number); the NumPy twin ignores it.

    Returns
    -------
    y : ndarray (T, B, O)
    h_last : ndarray (B, H)
    """
    inputs, h0, Wxh, Whh, bh, Why, by, code, slope = _model_args(
        inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope)
    _output_code(output)
    _checks.optional_positive_int("threads", threads)
    T, B = inputs.shape[:2]
    xw = Wxh.T[inputs] if inputs.dtype.kind in "iu" else inputs @ Wxh.T
    xw += bh
    hs = numpy_backend.rnn_forward(xw, h0, Whh, nonlinearity, negative_slope=slope)
    z = hs[1:] @ Why.T + by
    return losses.apply_output(output, z), hs[-1].copy()


def elman_loss_and_grad(
    inputs: npt.ArrayLike, targets: npt.ArrayLike, h0: FloatArray, Wxh: FloatArray,
    Whh: FloatArray, bh: FloatArray, Why: FloatArray, by: FloatArray,
    nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
    loss: StepLossName = "cross_entropy", reduction: Reduction = "mean",
    carry: Optional[npt.ArrayLike] = None, window: Union[int, npt.ArrayLike, None] = None,
    input_grad: bool = True, threads: Optional[int] = None,
) -> tuple[float, ArrayDict, FloatArray, Optional[FloatArray]]:
    """Loss and every gradient of an Elman RNN with an output layer, in one call.

    ``h_t = f(x_t Wxh^T + bh + h_{t-1} Whh^T)``, ``z_t = h_t Why^T + by``; the loss sits on every
    step: softmax cross-entropy of the logits ``z_t`` against class ids, or the squared error of
    ``z_t`` against values.

    Parameters
    ----------
    inputs : ndarray of int (T, B), or float (T, B, I)
        Token ids (``0 <= id < I``, projected by a row gather) or dense inputs.
    targets : ndarray of int (T, B) for cross_entropy, float (T, B, O) for mse
    h0 : ndarray (B, H)
    Wxh (H, I), Whh (H, H), bh (H,), Why (O, H), by (O,) : ndarray
        Parameters, one float dtype for all.
    nonlinearity, negative_slope : as in ``rnn_forward``.
    loss : {"cross_entropy", "mse"}
    reduction : {"mean", "sum"}
        Mean over positions (cross-entropy) or elements (mse), as PyTorch; or the sum.
    carry : array (T,), optional
        Carry scale of ``rnn_backward`` (truncated BPTT); full BPTT without it.
    window : int or array of int (T,), optional
        Look-back of ``rnn_backward_window`` instead (not with ``carry``).
    input_grad : bool
        Also return the gradient of dense inputs, ``grads["x"]``.
    threads : int >= 1, optional
        Threads the compiled step may use (None: ``cyrnn.get_num_threads()``). It splits a
        large enough batch into shards of consecutive sequences, as many as the sizes alone
        decide, and sums their gradients in shard order: the results are the same on any number
        of threads. The NumPy twin runs on one thread and ignores it.

    Returns
    -------
    loss : float
    grads : dict
        ``Wxh, Whh, bh, Why, by, h0`` and, for dense inputs with ``input_grad``, ``x``.
    h_last : ndarray (B, H)
    grad_norms : ndarray (T,) or None
        ``||dL/dh_t||`` per step, as ``rnn_backward`` returns them (None with a window).
    """
    return _elman_step(*_step_args(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity,
                                   negative_slope, loss, reduction, carry, window),
                       loss == "cross_entropy", reduction == "sum", input_grad,
                       _checks.optional_positive_int("threads", threads))


def _elman_step(inputs, targets, h0, Wxh, Whh, bh, Why, by, code, slope, carry, longest,
                windows, cross_entropy, sum_reduction, input_grad, threads=None):
    """``elman_loss_and_grad`` on arguments already checked (see the compiled twin)."""
    nonlinearity = _checks.NONLINEARITIES[code]
    reduction = "sum" if sum_reduction else "mean"
    T, B = inputs.shape[:2]
    H, I = Wxh.shape
    tokens = inputs.dtype.kind in "iu"
    xw = Wxh.T[inputs] if tokens else inputs @ Wxh.T
    xw += bh
    hs = numpy_backend.rnn_forward(xw, h0, Whh, nonlinearity, negative_slope=slope)
    z = (hs[1:].reshape(T * B, H) @ Why.T) + by
    if cross_entropy:
        value, dz = losses.cross_entropy(z, targets.reshape(-1), reduction)
    else:
        value, dz = losses.mse(z, targets.reshape(T * B, -1), reduction)
    grads = {}
    dh_out = (dz @ Why).reshape(T, B, H)
    if longest:
        da, dh0 = numpy_backend.rnn_backward_window(
            dh_out, hs, Whh, longest if windows is None else windows, nonlinearity,
            negative_slope=slope)
        grad_norms = None
    else:
        da, dh0, grad_norms = numpy_backend.rnn_backward(dh_out, hs, Whh, nonlinearity,
                                                         negative_slope=slope, carry=carry)
    da2 = da.reshape(T * B, H)
    if tokens:
        grads["Wxh"] = np.ascontiguousarray(numpy_backend.embedding_grad(inputs.reshape(-1), da2, I).T)
    else:
        grads["Wxh"] = da2.T @ inputs.reshape(T * B, I)
    grads["Whh"] = da2.T @ hs[:-1].reshape(T * B, H)
    grads["bh"] = da2.sum(axis=0)
    grads["Why"] = dz.T @ hs[1:].reshape(T * B, H)
    grads["by"] = dz.sum(axis=0)
    grads["h0"] = dh0
    if input_grad and not tokens:
        grads["x"] = (da2 @ Wxh).reshape(T, B, I)
    return value, grads, hs[-1].copy(), grad_norms


def _numpy_kernels():
    """The NumPy backend's layer kernels (Elman and gated), which the stack twin composes."""
    from . import get_backend
    return get_backend("numpy")


# the stack kernels' cell codes (argument ``cell``)
STACK_CELLS = ("elman", "lstm", "gru")


def _stack_weights(layers, num_directions, Why, by, code, slope, cell=0, gains=None):
    """The architecture and the ``(params, nonlinearity, slope)`` snapshot that ``cyrnn.stack``
    composes, from a stack kernel's arguments."""
    Wxh0, Whh0 = layers[0][:2]
    H, I = Whh0.shape[1], Wxh0.shape[1]
    arch = Architecture(I, H, Why.shape[0], len(layers) // num_directions, num_directions,
                        cell=STACK_CELLS[cell], norm=None if gains is None else "layer")
    params = {}
    for j, cell in enumerate(layers):
        params.update(zip(arch.cell_names(j), cell))
        if gains is not None:
            params.update(zip(arch.norm_names(j), gains[j]))
    params["Why"], params["by"] = Why, by
    return arch, (params, _checks.NONLINEARITIES[code], slope)


def _regime(arch, params, regular):
    """The ``cyrnn.norms.regime`` namespaces of a stack kernel's layer normalization (the
    gains in ``params``) and regularizers' masks ``regular`` (weight drop already in the
    weights), or None for a plain stack."""
    if arch.norm is None and regular is None:
        return None
    return [norms.options(arch, params, j,
                          *(() if regular is None or regular[j] is None else regular[j]))
            for j in range(arch.num_states)]


def _stack_step(inputs, targets, h0, layers, num_directions, Why, by, code, slope, carry,
                longest, windows, cross_entropy, sum_reduction, input_grad, masks, threads=None,
                cell=0, c0=None, gains=None, regular=None, kern=None):
    """A stack's training step on checked arguments (the twin of the compiled one).

    ``layers``: per layer-direction ``j = l*D + d`` its ``(Wxh, Whh, bh)``; ``h0`` (L*D, B, H);
    ``masks``: None or the dropout multipliers (L-1, T, B, D*H) of the layer outputs that feed
    the next layer; the rest as ``_elman_step``. Returns ``(loss, grads, h_last, grad_norms)``
    with ``grads = {"layers": [(dWxh, dWhh, dbh) per j], "Why", "by", "h0", "x"}``. ``kern``:
    the layer kernels it composes (None: the NumPy backend's).

    ``cell``: 0 Elman, 1 LSTM, 2 GRU (``STACK_CELLS``; ``code`` and ``slope`` then unused).
    The gated cells' weights have G = 4H (LSTM) or 3H (GRU) rows, PyTorch's gate order; GRU's
    ``layers[j]`` is ``(Wxh, Whh, bh, bhn)`` and its ``grads["layers"][j]`` ends with ``dbhn``.
    LSTM takes ``c0`` (L*D, B, H), adds ``grads["c0"]`` and returns ``h_last`` as the pair
    ``(h_last, c_last)``.

    ``gains``: None, or layer normalization (``norm="layer"``, ``cyrnn.norms``) with each
    layer-direction's gains ``(gx, gh)`` (G,) and, for LSTM, ``(gx, gh, gc, bc)``;
    ``grads["layers"][j]`` then ends with their gradients in that order. ``regular``: None, or
    each layer-direction's regularizers' masks ``(rmask (B, H), zh (T, B, H), zc (T, B, H))``
    (each None where not used, the entry None for none; zh and zc in the direction's
    processing order), as ``cyrnn.norms.regime`` draws them; weight drop is the caller's
    (``Whh * wmask`` in ``layers``, ``wmask`` times its gradient). Neither with look-back
    windows (``longest`` 0).
    """
    if (gains is not None or regular is not None) and longest:
        raise ValueError("_stack_step: look-back windows do not run with layer normalization, "
                         "recurrent dropout or zoneout")
    arch, weights = _stack_weights(layers, num_directions, Why, by, code, slope, cell, gains)
    kern = _numpy_kernels() if kern is None else kern
    T, B = inputs.shape[:2]
    result = stack.loss_and_grad(
        kern, arch, weights, inputs, h0,
        targets.reshape(T * B) if cross_entropy else targets.reshape(T * B, -1),
        loss="cross_entropy" if cross_entropy else "mse", output="linear",
        reduction="sum" if sum_reduction else "mean",
        window=(longest if windows is None else windows) if longest else None, carry=carry,
        masks=masks, input_grad=input_grad, c0=c0 if cell == 1 else None,
        regime=_regime(arch, weights[0], regular))
    g = result.grads
    grads = {"layers": [tuple(g[name] for name in arch.cell_names(j) + arch.norm_names(j))
                        for j in range(arch.num_states)],
             "Why": g["Why"], "by": g["by"], "h0": g["h0"]}
    if "x" in g:
        grads["x"] = g["x"]
    h_last = result.h_last
    if cell == 1:
        grads["c0"] = g["c0"]
        h_last = (h_last, result.c_last)
    return result.loss, grads, h_last, result.grad_norms


def _stack_outputs(inputs, h0, layers, num_directions, Why, by, code, slope, out_code,
                   threads=None, cell=0, c0=None, gains=None, regular=None, kern=None):
    """A stack's outputs ``(y (T, B, O), h_last (L*D, B, H))`` on checked arguments (an LSTM's
    ``h_last`` the pair ``(h_last, c_last)``; ``gains`` and the rest as ``_stack_step``)."""
    arch, weights = _stack_weights(layers, num_directions, Why, by, code, slope, cell, gains)
    kern = _numpy_kernels() if kern is None else kern
    y, h_last, c_last = stack.outputs(kern, arch, weights, inputs, h0, losses.OUTPUTS[out_code],
                                      c0=c0 if cell == 1 else None,
                                      regime=_regime(arch, weights[0], regular))
    return y, (h_last if cell != 1 else (h_last, c_last))
