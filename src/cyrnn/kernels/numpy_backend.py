"""The NumPy twin of the compiled kernels in ``pyx/cyrnn/_rnn.pyx``.

Same function names, arguments, results and error messages as the Cython backend; used when the
extension is not built or when asked for (``backend="numpy"``). It is also the readable reference
of the recurrences: the compiled code does exactly this, step by step, with raw pointers.

Conventions (time-major, states stored with the initial one):

- ``hs[0] = h0`` and ``hs[t + 1] = f(xw[t] + hs[t] @ Whh.T)`` for steps ``t = 0 .. T-1``.
- With ``lengths``, steps ``t >= lengths[b]`` are padding: sequence ``b`` keeps its state
  (``hs[t + 1, b] = hs[t, b]``), its ``dh_out`` there is ignored and its ``da`` there is zero.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import numpy.typing as npt

from .. import _checks
from .._typing import FloatArray, Nonlinearity

TANH, RELU, SIGMOID, LEAKY_RELU, IDENTITY = range(len(_checks.NONLINEARITIES))


def _activate(a, code, slope):
    """f(a) for a pre-activation block."""
    if code == TANH:
        return np.tanh(a)
    if code == RELU:
        return np.maximum(a, 0)
    if code == SIGMOID:
        # 1 / (1 + exp(-a)) without overflow warnings for large negative a
        return 0.5 + 0.5 * np.tanh(0.5 * a)
    if code == LEAKY_RELU:
        return np.where(a > 0, a, a * a.dtype.type(slope))
    return a.copy()


def _derivative(h, code, slope):
    """f'(a) written in terms of the output h = f(a)."""
    if code == TANH:
        return 1 - h * h
    if code == RELU:
        return (h > 0).astype(h.dtype)
    if code == SIGMOID:
        return h * (1 - h)
    if code == LEAKY_RELU:
        return np.where(h > 0, h.dtype.type(1), h.dtype.type(slope))
    return np.ones_like(h)


class ElmanCell:
    """The Elman cell as a layer runs it (see ``cyrnn.stack``): gate width ``G = H``, and two
    fused elementwise epilogues around the per-step products.

    forward:  ``h_t = f(P_t + R_t)`` with ``P_t = x_t Wxh^T + bh`` (precomputed for all steps)
              and ``R_t = h_{t-1} Whh^T`` (one GEMM per step); nothing to keep but ``h_t``.
    backward: ``da_t = g_t * f'(h_t)`` from ``g_t = dL/dh_t``; the pre-activation gradient
              serves as both ``dP_t`` and ``dR_t`` (then ``g_{t-1} += dR_t Whh``, one GEMM).

    A gated cell (LSTM ``G = 4H``, GRU ``G = 3H``) has the same two methods over its gates, with
    a cell state and saved gates; the loops that call them stay the same.
    """

    def __init__(self, code: int, slope: float) -> None:
        self.code, self.slope = code, slope

    def forward(self, P_t: FloatArray, R_t: FloatArray) -> FloatArray:
        return _activate(P_t + R_t, self.code, self.slope)

    def derivative(self, h: FloatArray) -> FloatArray:
        """``f'`` at the pre-activations of the states ``h``: ``da = g * derivative(h)``."""
        return _derivative(h, self.code, self.slope)

    def backward(self, g_t: FloatArray, h_t: FloatArray) -> FloatArray:
        return g_t * self.derivative(h_t)


def _active_steps(lengths, T, B):
    """(T, B, 1) mask of the steps that belong to each sequence, or None for all of them."""
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def rnn_forward(xw: FloatArray, h0: FloatArray, Whh: FloatArray,
                nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                lengths: Optional[npt.ArrayLike] = None,
                out: Optional[FloatArray] = None) -> FloatArray:
    """Run the Elman recurrence over all time steps.

    Parameters
    ----------
    xw : ndarray (T, B, H), float32 or float64
        Input projection plus hidden bias for every step, ``x_t @ Wxh.T + bh``.
    h0 : ndarray (B, H)
        Initial hidden state.
    Whh : ndarray (H, H)
        Recurrent weights (PyTorch's ``weight_hh`` orientation).
    nonlinearity : {"tanh", "relu", "sigmoid", "leaky_relu", "identity"}
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs (>= 0).
    lengths : array of int (B,), optional
        Valid steps per sequence; a sequence's state is frozen after its last step.
    out : ndarray (T + 1, B, H), optional
        Writeable C-contiguous buffer for the result.

    Returns
    -------
    hs : ndarray (T + 1, B, H)
        ``hs[0] = h0`` and ``hs[t + 1]`` the state after step ``t``.
    """
    xw, h0, Whh, code, slope, lengths, hs = _checks.forward_args(
        xw, h0, Whh, nonlinearity, negative_slope, lengths, out
    )
    T, B, _ = xw.shape
    cell = ElmanCell(code, slope)
    active = _active_steps(lengths, T, B)
    WhhT = Whh.T
    hs[0] = h0
    for t in range(T):
        # R_t (B, H) = h_{t-1} (B, H) Whh^T (H, H), then the cell's epilogue
        h = cell.forward(xw[t], hs[t] @ WhhT)
        hs[t + 1] = h if active is None else np.where(active[t], h, hs[t])
    return hs


def rnn_backward(
    dh_out: FloatArray, hs: FloatArray, Whh: FloatArray, nonlinearity: Nonlinearity = "tanh", *,
    negative_slope: float = 0.01, dh_last: Optional[FloatArray] = None,
    carry: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Backpropagate through time over the whole sequence.

    With ``g_t = dL/dh_t`` (the total gradient reaching state ``hs[t]``) the recursion is::

        g_T     = dh_out[T-1] + dh_last
        da[t]   = g_{t+1} * f'(hs[t+1])
        g_t     = dh_out[t-1] + carry[t] * da[t] @ Whh
        dh0     = carry[0] * da[0] @ Whh

    Parameters
    ----------
    dh_out : ndarray (T, B, H)
        Gradient reaching each state ``hs[t + 1]`` from its own output (``dz_t @ Why``).
    hs : ndarray (T + 1, B, H)
        States from ``rnn_forward``.
    Whh : ndarray (H, H)
    nonlinearity, negative_slope : as in ``rnn_forward``.
    dh_last : ndarray (B, H), optional
        Gradient into the final state (of each sequence's last valid step).
    carry : array (T,), optional
        Scale of the gradient that step ``t`` passes back into the state before it: 1 everywhere
        is full BPTT, 0 at a chunk start truncates there, ``xi_t / p`` is randomized truncation.
        Frozen (padded) steps pass gradients through unscaled.
    lengths : array of int (B,), optional

    Returns
    -------
    da : ndarray (T, B, H)
        Gradient of the loss with respect to every pre-activation.
    dh0 : ndarray (B, H)
        Gradient with respect to the initial state.
    grad_norms : ndarray (T,)
        ``||dL/dh_t||`` over the batch for the state after each step (the vanishing/exploding
        gradient diagnostic).
    """
    dh_out, hs, Whh, code, slope, dh_last, lengths = _checks.backward_args(
        dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths
    )
    T, B, H = dh_out.shape
    carry = _checks.carry_array(carry, T, dh_out.dtype)
    cell = ElmanCell(code, slope)
    active = _active_steps(lengths, T, B)
    da = np.empty_like(dh_out)
    grad_norms = np.empty(T, dtype=dh_out.dtype)
    g = np.zeros((B, H), dh_out.dtype) if dh_last is None else dh_last.copy()
    for t in range(T - 1, -1, -1):
        if active is None:
            g += dh_out[t]
        else:
            g += np.where(active[t], dh_out[t], 0)
        grad_norms[t] = np.sqrt(np.dot(g.ravel(), g.ravel()))
        # the cell's backward epilogue: dP_t = dR_t = da_t
        da[t] = cell.backward(g, hs[t + 1])
        if active is not None:
            da[t] *= active[t]
        scale = 1 if carry is None else carry[t]
        # a zero carry cuts the graph: nothing crosses, not even 0 * inf
        back = (da[t] @ Whh) * scale if scale != 0 else np.zeros_like(g)
        g = back if active is None else back + np.where(active[t], 0, g)
    return da, g, grad_norms


def rnn_backward_window(
    dh_out: FloatArray, hs: FloatArray, Whh: FloatArray, window: Union[int, npt.ArrayLike],
    nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
    dh_last: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray]:
    """Backpropagate each output's error at most ``window`` steps back.

    The error of the output at step ``t`` reaches the pre-activations of steps
    ``t - k_t + 1 .. t`` and no earlier, where ``k_t`` is ``window`` (one int for every output)
    or ``window[t]``; it reaches ``h0`` only if its window would still include step -1
    (``t <= k_t - 2``), as ``h0`` stands for the state made by step -1 of an earlier chunk.
    Rather than ``T * k`` small products, the contributions are computed by depth: ``D_j[s]`` is
    what the output at step ``s + j`` sends to ``a_s``; ``D_0 = e * f'`` and
    ``D_j[s] = (D_{j-1}[s + 1] @ Whh) * f'(hs[s + 1])``, zero once ``j >= k_{s+j}``: one large
    product per depth, and ``da = sum_j D_j``.

    Per-output windows express Williams & Peng's TBPTT(k1, k2) inside one call: the output at
    step t of a block of k1 steps ending at step e reaches back ``k2 - (e - t)`` steps.

    Parameters
    ----------
    dh_out, hs, Whh, nonlinearity, negative_slope, lengths : as in ``rnn_backward``.
    window : int >= 1, or array of int (T,) with values >= 1
        Look-back ``k`` of every output, or of each; ``window >= T + 1`` is full BPTT.
    dh_last : ndarray (B, H), optional
        Extra error on each sequence's last valid state, windowed like that step's output.

    Returns
    -------
    da : ndarray (T, B, H)
    dh0 : ndarray (B, H)
    """
    dh_out, hs, Whh, code, slope, dh_last, lengths = _checks.backward_args(
        dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths
    )
    T, B, H = dh_out.shape
    longest, windows = _checks.window_sizes(window, T)
    if windows is None:
        windows = np.full(T, longest)
    active = _active_steps(lengths, T, B)
    error, dh0 = _checks.window_error(dh_out, dh_last, lengths)
    if active is not None:
        error = error * active
    slope_factor = ElmanCell(code, slope).derivative(hs[1:])
    if active is not None:
        slope_factor *= active
    depth = error * slope_factor
    da = depth.copy()
    # the outputs whose window passes step 0 send their D_j[0] on into h0
    reach_h0 = depth[0] if windows[0] >= 2 else np.zeros((B, H), dh_out.dtype)
    for j in range(1, min(longest, T)):
        depth = (depth[1:] @ Whh) * slope_factor[: T - j]
        depth *= (j < windows[j:])[:, None, None]  # output s + j reaches back to s?
        da[: T - j] += depth
        if j <= windows[j] - 2:
            reach_h0 = reach_h0 + depth[0]
    dh0 += reach_h0 @ Whh
    return da, dh0


def embedding_grad(ids: npt.ArrayLike, grad: FloatArray, num_rows: int) -> FloatArray:
    """Gradient of a row gather ``out[n] = W[ids[n]]``: ``dW[i] = sum of grad[n] with ids[n] == i``.

    Parameters
    ----------
    ids : array of int (N,)
        Row indices, ``0 <= ids[n] < num_rows``.
    grad : ndarray (N, H), float32 or float64
        Gradient with respect to the gathered rows.
    num_rows : int
        Rows of ``W``.

    Returns
    -------
    dW : ndarray (num_rows, H)
    """
    ids, grad, num_rows = _checks.embedding_grad_args(ids, grad, num_rows)
    dW = np.zeros((num_rows, grad.shape[1]), dtype=grad.dtype)
    np.add.at(dW, ids, grad)
    return dW
