"""The NumPy twin of the compiled gated-cell kernels in ``pyx/cyrnn/_gated.pyx``: one layer of
LSTM or GRU cells over time, forward, full BPTT and windowed BPTT.

Same function names, arguments, results and error messages as the compiled kernels, and the
readable reference of what they compute. The equations, gate orders and bias conventions are
PyTorch's (``torch.nn.LSTM``, ``torch.nn.GRU``); arrays are time-major and C-contiguous.

Each layer is the structure of the Elman layer (``numpy_backend``): the input projection
``xw = x W_ih^T + b`` of every step is computed beforehand by the caller (one large product),
and per step the kernel runs one product with the recurrent weights and one fused elementwise
epilogue, forward and backward. The forward pass keeps what the backward pass needs (the gates
after activation, the cell states, and for the GRU the recurrent part ``hn`` of its n gate), so
the backward pass recomputes nothing but ``tanh(c_t)``.

Conventions shared by every kernel here:

- ``hs[0] = h0`` (and ``cs[0] = c0``); ``hs[t + 1]`` is the state after step ``t``.
- With ``lengths``, steps ``t >= lengths[b]`` are padding: sequence ``b`` keeps its states
  (``hs[t + 1, b] = hs[t, b]``, likewise ``cs``), its gates there are zero, its ``dh_out`` there
  is ignored, its gradients there are zero, and the gradients reaching its frozen states pass
  through unchanged (unscaled by ``carry``).
- ``sigmoid(x)`` is computed as ``0.5 + 0.5 * tanh(0.5 * x)``: exact in real arithmetic, free of
  overflow, and what the compiled kernels vectorize.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import numpy.typing as npt

from .. import _checks
from .._typing import FloatArray


def _sigmoid(a):
    return 0.5 + 0.5 * np.tanh(0.5 * a)


def _active_rows(lengths, T, B):
    """(T, B, 1) mask of the steps that belong to each sequence, or None for all of them."""
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _norm(g):
    return np.sqrt(np.dot(g.ravel(), g.ravel()))


def _scaled(x, scale):
    """``scale * x``, or zeros for a zero scale: a cut passes nothing, not even 0 * inf."""
    return x * scale if scale != 0 else np.zeros_like(x)


class LSTMCell:
    """The LSTM cell's two fused epilogues around its per-step products (gate width ``4H``).

    forward:  ``a_t = xw_t + R_t`` with ``R_t = h_{t-1} Whh^T``; ``i, f, o = sigmoid(a_i, a_f,
              a_o)``, ``g = tanh(a_g)``; ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``.
    backward: from ``gh = dL/dh_t`` and ``gc = dL/dc_t`` (totals), with ``tc = tanh(c_t)``:
              ``dc = gc + gh o (1 - tc^2)``, ``da_t = [dc g i(1-i), dc c_{t-1} f(1-f),
              dc i (1 - g^2), gh tc o(1-o)]`` and ``dc f`` towards ``c_{t-1}``; ``da_t`` is
              both ``dxw_t`` and ``dR_t``, and ``dL/dh_{t-1} = da_t Whh`` (one product).
    """

    blocks = 4

    @staticmethod
    def forward(a, c_prev):
        """Gates (B, 4H) after activation, ``c_t`` and ``h_t`` from the pre-activations ``a``."""
        H = c_prev.shape[-1]
        gates = np.empty_like(a)
        gates[:, : 2 * H] = _sigmoid(a[:, : 2 * H])
        gates[:, 2 * H: 3 * H] = np.tanh(a[:, 2 * H: 3 * H])
        gates[:, 3 * H:] = _sigmoid(a[:, 3 * H:])
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        return gates, c, h

    @staticmethod
    def backward(gh, gc, gates, c_prev, c):
        """``(da, dc * f)``: the pre-activation gradient (B, 4H) and the gradient that crosses
        to ``c_{t-1}`` (before any carry scale)."""
        i, f, g, o = np.split(gates, 4, axis=-1)
        tc = np.tanh(c)
        do = gh * tc
        dc = gc + gh * o * (1 - tc * tc)
        da = np.concatenate([dc * g * (i * (1 - i)), dc * c_prev * (f * (1 - f)),
                             dc * i * (1 - g * g), do * (o * (1 - o))], axis=-1)
        return da, dc * f


class GRUCell:
    """The GRU cell's two fused epilogues around its per-step products (gate width ``3H``).

    forward:  ``R_t = h_{t-1} Whh^T``; ``r = sigmoid(xw_r + R_r)``, ``z = sigmoid(xw_z + R_z)``,
              ``hn_t = R_n + b_hn``, ``n = tanh(xw_n + r hn_t)``, ``h_t = (1 - z) n + z h_{t-1}``.
    backward: from ``g = dL/dh_t``: ``dan = g (1 - z)(1 - n^2)``, ``dar = dan hn_t r(1-r)``,
              ``daz = g (h_{t-1} - n) z(1-z)``; ``dxw_t = [dar, daz, dan]``, ``dR_t = [dar, daz,
              dan r]``, and ``dL/dh_{t-1} = dR_t Whh + g z`` (one product).
    """

    blocks = 3

    @staticmethod
    def forward(xw, R, h_prev, bhn):
        """Gates (B, 3H) ``[r, z, n]``, ``hn_t`` (B, H) and ``h_t``."""
        H = h_prev.shape[-1]
        r = _sigmoid(xw[:, :H] + R[:, :H])
        z = _sigmoid(xw[:, H: 2 * H] + R[:, H: 2 * H])
        hn = R[:, 2 * H:] + bhn
        n = np.tanh(xw[:, 2 * H:] + r * hn)
        h = (1 - z) * n + z * h_prev
        return np.concatenate([r, z, n], axis=1), hn, h

    @staticmethod
    def backward(g, gates, hn, h_prev):
        """``(dxw, dR, g z)``: the gradients (B, 3H) of the input part and of the recurrent part
        of the pre-activations, and the part of ``dL/dh_{t-1}`` that bypasses ``Whh``."""
        r, z, n = np.split(gates, 3, axis=-1)
        dan = g * (1 - z) * (1 - n * n)
        dar = dan * hn * (r * (1 - r))
        daz = g * (h_prev - n) * (z * (1 - z))
        dxw = np.concatenate([dar, daz, dan], axis=-1)
        dR = np.concatenate([dar, daz, dan * r], axis=-1)
        return dxw, dR, g * z


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------


def lstm_forward(xw: FloatArray, h0: FloatArray, c0: FloatArray, Whh: FloatArray, *,
                 lengths: Optional[npt.ArrayLike] = None
                 ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run one LSTM layer over all time steps (PyTorch's equations and gate order).

    Per step one product, ``a_t = xw[t] + hs[t] @ Whh.T``, then one fused pass::

        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
        cs[t + 1] = f * cs[t] + i * g;   hs[t + 1] = o * tanh(cs[t + 1])

    Parameters
    ----------
    xw : ndarray (T, B, 4H), float32 or float64
        Input projection plus bias for every step, ``x_t @ W_ih.T + b_ih + b_hh``, in gate
        blocks ``[i, f, g, o]``.
    h0, c0 : ndarray (B, H)
        Initial hidden and cell states.
    Whh : ndarray (4H, H)
        Recurrent weights (PyTorch's ``weight_hh_l0``), gate blocks ``[i, f, g, o]``.
    lengths : array of int (B,), optional
        Valid steps per sequence; after its last one a sequence's states are frozen and its
        gates are zero.

    Returns
    -------
    hs, cs : ndarray (T + 1, B, H)
        Hidden and cell states, ``hs[0] = h0``, ``cs[0] = c0``.
    gates : ndarray (T, B, 4H)
        ``[i, f, g, o]`` after activation, kept for ``lstm_backward``.

    Raises
    ------
    TypeError
        An argument that is not an ndarray, not float32/float64, or of another dtype than
        ``xw``; ``lengths`` that are not integers.
    ValueError
        A wrong shape (naming the argument and the expected shape), ``T``, ``B`` or ``H`` of 0,
        ``lengths`` outside ``[0, T]``.
    """
    xw, h0, c0, Whh, lengths = _checks.lstm_forward_args(xw, h0, c0, Whh, lengths)
    T, B, G = xw.shape
    H = G // 4
    active = _active_rows(lengths, T, B)
    hs = np.empty((T + 1, B, H), xw.dtype)
    cs = np.empty((T + 1, B, H), xw.dtype)
    gates = np.empty((T, B, G), xw.dtype)
    hs[0], cs[0] = h0, c0
    WhhT = Whh.T
    for t in range(T):
        # a_t (B, 4H) = xw_t (B, 4H) + h_{t-1} (B, H) Whh^T (H, 4H), then the epilogue
        gates_t, c, h = LSTMCell.forward(xw[t] + hs[t] @ WhhT, cs[t])
        if active is None:
            gates[t], cs[t + 1], hs[t + 1] = gates_t, c, h
        else:
            gates[t] = np.where(active[t], gates_t, 0)
            cs[t + 1] = np.where(active[t], c, cs[t])
            hs[t + 1] = np.where(active[t], h, hs[t])
    return hs, cs, gates


def lstm_backward(
    dh_out: FloatArray, hs: FloatArray, cs: FloatArray, gates: FloatArray, Whh: FloatArray, *,
    dh_last: Optional[FloatArray] = None, dc_last: Optional[FloatArray] = None,
    carry: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Backpropagate through time over one LSTM layer.

    With ``gh`` and ``gc`` the total gradients reaching ``hs[t + 1]`` and ``cs[t + 1]``
    (starting from ``dh_last`` and ``dc_last``), for ``t = T-1 .. 0``::

        gh += dh_out[t];  grad_norms[t] = ||gh||
        tc = tanh(cs[t + 1]);  dc = gc + gh * o * (1 - tc^2)
        da[t] = [dc * g * i(1-i), dc * cs[t] * f(1-f), dc * i * (1 - g^2), gh * tc * o(1-o)]
        gh = carry[t] * (da[t] @ Whh);  gc = carry[t] * (dc * f)

    and ``dh0, dc0`` are the final ``gh, gc``. The input projection's gradient is ``da``
    itself (``dxw = dR = da``); the caller forms ``dWhh = da^T h_{t-1}``, ``db = sum da`` and
    ``dW_ih = da^T x``.

    Parameters
    ----------
    dh_out : ndarray (T, B, H)
        Gradient reaching each ``hs[t + 1]`` from its own output.
    hs, cs, gates : ndarray (T + 1, B, H), (T + 1, B, H), (T, B, 4H)
        The results of ``lstm_forward``.
    Whh : ndarray (4H, H)
    dh_last, dc_last : ndarray (B, H), optional
        Gradients into the final states (each sequence's last valid ones).
    carry : array (T,), optional
        Scale of the gradient that step ``t`` passes back into ``h_{t-1}`` and ``c_{t-1}``
        alike: 1 is full BPTT, 0 truncates there (nothing crosses, not even ``0 * inf``), a
        fraction scales. Finite values; frozen (padded) steps pass gradients through unscaled.
    lengths : array of int (B,), optional

    Returns
    -------
    da : ndarray (T, B, 4H)
        Gradient with respect to every pre-activation, gate blocks ``[i, f, g, o]``.
    dh0, dc0 : ndarray (B, H)
        Gradients with respect to the initial states.
    grad_norms : ndarray (T,)
        ``||dL/dh_t||`` over the batch for the state after each step, before its epilogue.

    Raises
    ------
    TypeError, ValueError
        As ``lstm_forward``, for these arguments; ``carry`` of another shape or not finite.
    """
    dh_out, hs, cs, gates, Whh, dh_last, dc_last, lengths = _checks.lstm_backward_args(
        dh_out, hs, cs, gates, Whh, dh_last, dc_last, lengths)
    T, B, H = dh_out.shape
    carry = _checks.carry_array(carry, T, dh_out.dtype)
    active = _active_rows(lengths, T, B)
    da = np.empty((T, B, 4 * H), dh_out.dtype)
    grad_norms = np.empty(T, dh_out.dtype)
    gh = np.zeros((B, H), dh_out.dtype) if dh_last is None else dh_last.copy()
    gc = np.zeros((B, H), dh_out.dtype) if dc_last is None else dc_last.copy()
    for t in range(T - 1, -1, -1):
        gh += dh_out[t] if active is None else np.where(active[t], dh_out[t], 0)
        grad_norms[t] = _norm(gh)
        da_t, dcf = LSTMCell.backward(gh, gc, gates[t], cs[t], cs[t + 1])
        scale = 1 if carry is None else carry[t]
        # (B, H) = da_t (B, 4H) Whh (4H, H)
        gh_back, gc_back = _scaled(da_t @ Whh, scale), _scaled(dcf, scale)
        if active is None:
            da[t], gh, gc = da_t, gh_back, gc_back
        else:
            da[t] = np.where(active[t], da_t, 0)
            gh = np.where(active[t], gh_back, gh)
            gc = np.where(active[t], gc_back, gc)
    return da, gh, gc, grad_norms


def lstm_backward_window(
    dh_out: FloatArray, hs: FloatArray, cs: FloatArray, gates: FloatArray, Whh: FloatArray,
    window: Union[int, npt.ArrayLike], *, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Backpropagate each output's error at most ``window`` steps back through one LSTM layer.

    The error of the output at step ``t`` reaches the pre-activations of steps
    ``t - k_t + 1 .. t`` and no earlier, ``k_t`` being ``window`` or ``window[t]``; it reaches
    ``h0`` and ``c0`` only if its window would still include step -1 (``t <= k_t - 2``). This
    is the gradient of ``sum_t dh_out[t] . hs[t + 1]`` with each output computed from the
    states ``(hs, cs)[t - k_t + 1]`` detached. By depth, as ``rnn_backward_window``: the pair
    ``(Gh_j[t], Gc_j[t])`` is what the output at step ``t`` sends into the states after step
    ``t - j``; ``Gh_0 = dh_out``, ``Gc_0 = 0``; the epilogue of step ``t - j`` turns it into
    ``da_j[t]`` and ``dc f``, and ``Gh_{j+1}[t] = da_j[t] @ Whh``, ``Gc_{j+1}[t] = dc f``, zero
    once ``j >= k_t``: one product over all outputs per depth, and ``da[s] = sum_j da_j[s + j]``.

    Parameters
    ----------
    dh_out, hs, cs, gates, Whh, lengths : as in ``lstm_backward``.
    window : int >= 1, or array of int (T,) with values >= 1
        Look-back of every output, or of each; ``window >= T + 1`` is full BPTT.

    Returns
    -------
    da : ndarray (T, B, 4H)
    dh0, dc0 : ndarray (B, H)

    Raises
    ------
    TypeError, ValueError
        As ``lstm_backward``; a ``window`` that is not an int >= 1 or such an array (T,).
    """
    dh_out, hs, cs, gates, Whh, _, _, lengths = _checks.lstm_backward_args(
        dh_out, hs, cs, gates, Whh, None, None, lengths)
    T, B, H = dh_out.shape
    longest, windows = _checks.window_sizes(window, T)
    if windows is None:
        windows = np.full(T, longest)
    active = _active_rows(lengths, T, B)
    da = np.zeros((T, B, 4 * H), dh_out.dtype)
    reach_a = np.zeros((B, 4 * H), dh_out.dtype)  # what reaches step -1: into dh0 through Whh
    dc0 = np.zeros((B, H), dh_out.dtype)
    Gh = dh_out.copy()  # indexed by output t
    Gc = np.zeros_like(Gh)
    for j in range(min(longest, T)):
        S = T - j  # outputs t = j .. T-1 meet step s = t - j
        alive = (j < windows[j:])[:, None, None]  # does output t reach back to step t - j?
        if active is not None:
            alive = alive & active[:S]  # and is step t - j one of the sequence's own?
        da_j, dcf = LSTMCell.backward(Gh[j:], Gc[j:], gates[:S], cs[:S], cs[1: S + 1])
        da_j = np.where(alive, da_j, 0)
        Gc[j:] = np.where(alive, dcf, 0)
        da[:S] += da_j
        if j <= windows[j] - 2:  # output j's window includes step -1
            reach_a += da_j[0]
            dc0 += Gc[j]
        # Gh_{j+1}[t] ((S-1)*B, H) = da_j[t] ((S-1)*B, 4H) Whh (4H, H) for t = j+1 .. T-1
        Gh[j + 1:] = da_j[1:] @ Whh
    # dh0 (B, H) = reach_a (B, 4H) Whh (4H, H)
    return da, reach_a @ Whh, dc0


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------


def gru_forward(xw: FloatArray, h0: FloatArray, Whh: FloatArray, bhn: FloatArray, *,
                lengths: Optional[npt.ArrayLike] = None
                ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run one GRU layer over all time steps (PyTorch's equations and gate order).

    Per step one product, ``R_t = hs[t] @ Whh.T``, then one fused pass::

        r = sigmoid(xw_r + R_r);  z = sigmoid(xw_z + R_z)
        hn[t] = R_n + bhn;  n = tanh(xw_n + r * hn[t])
        hs[t + 1] = (1 - z) * n + z * hs[t]

    Parameters
    ----------
    xw : ndarray (T, B, 3H), float32 or float64
        Input projection plus bias for every step, in gate blocks ``[r, z, n]``:
        ``x_t @ W_ih.T + [b_ir + b_hr, b_iz + b_hz, b_in]`` (the n gate's recurrent bias
        ``b_hn`` is scaled by ``r`` and so stays apart).
    h0 : ndarray (B, H)
    Whh : ndarray (3H, H)
        Recurrent weights (PyTorch's ``weight_hh_l0``), gate blocks ``[r, z, n]``.
    bhn : ndarray (H,)
        ``b_hn``, the last block of PyTorch's ``bias_hh_l0``.
    lengths : array of int (B,), optional
        Valid steps per sequence; after its last one a sequence's state is frozen and its
        gates and ``hn`` are zero.

    Returns
    -------
    hs : ndarray (T + 1, B, H)
        ``hs[0] = h0``.
    gates : ndarray (T, B, 3H)
        ``[r, z, n]`` after activation.
    hn : ndarray (T, B, H)
        ``R_n + bhn`` of every step; ``gates`` and ``hn`` are kept for ``gru_backward``.

    Raises
    ------
    TypeError, ValueError
        As ``lstm_forward``, for these arguments.
    """
    xw, h0, Whh, bhn, lengths = _checks.gru_forward_args(xw, h0, Whh, bhn, lengths)
    T, B, G = xw.shape
    H = G // 3
    active = _active_rows(lengths, T, B)
    hs = np.empty((T + 1, B, H), xw.dtype)
    gates = np.empty((T, B, G), xw.dtype)
    hn = np.empty((T, B, H), xw.dtype)
    hs[0] = h0
    WhhT = Whh.T
    for t in range(T):
        # R_t (B, 3H) = h_{t-1} (B, H) Whh^T (H, 3H), then the epilogue
        gates_t, hn_t, h = GRUCell.forward(xw[t], hs[t] @ WhhT, hs[t], bhn)
        if active is None:
            gates[t], hn[t], hs[t + 1] = gates_t, hn_t, h
        else:
            gates[t] = np.where(active[t], gates_t, 0)
            hn[t] = np.where(active[t], hn_t, 0)
            hs[t + 1] = np.where(active[t], h, hs[t])
    return hs, gates, hn


def gru_backward(
    dh_out: FloatArray, hs: FloatArray, gates: FloatArray, hn: FloatArray, Whh: FloatArray, *,
    dh_last: Optional[FloatArray] = None, carry: Optional[npt.ArrayLike] = None,
    lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Backpropagate through time over one GRU layer.

    With ``g`` the total gradient reaching ``hs[t + 1]`` (starting from ``dh_last``), for
    ``t = T-1 .. 0``::

        g += dh_out[t];  grad_norms[t] = ||g||
        dan = g * (1 - z) * (1 - n^2);  dar = dan * hn[t] * r(1-r)
        daz = g * (hs[t] - n) * z(1-z)
        dxw[t] = [dar, daz, dan];  dR[t] = [dar, daz, dan * r]
        g = carry[t] * (dR[t] @ Whh + g * z)

    and ``dh0`` is the final ``g``. The carry scales the whole gradient into ``h_{t-1}``,
    through ``Whh`` and through ``z`` alike. The caller forms ``dWhh = dR^T h_{t-1}``,
    ``db_hn = sum of dR's n block``, ``dW_ih = dxw^T x`` and ``db = sum dxw``.

    Parameters
    ----------
    dh_out : ndarray (T, B, H)
    hs, gates, hn : ndarray (T + 1, B, H), (T, B, 3H), (T, B, H)
        The results of ``gru_forward``.
    Whh : ndarray (3H, H)
    dh_last : ndarray (B, H), optional
    carry, lengths : as in ``lstm_backward``.

    Returns
    -------
    dxw : ndarray (T, B, 3H)
        Gradient with respect to the input projection ``xw``, gate blocks ``[r, z, n]``.
    dR : ndarray (T, B, 3H)
        Gradient with respect to the recurrent part ``R_t = h_{t-1} Whh^T``.
    dh0 : ndarray (B, H)
    grad_norms : ndarray (T,)

    Raises
    ------
    TypeError, ValueError
        As ``lstm_backward``, for these arguments.
    """
    dh_out, hs, gates, hn, Whh, dh_last, lengths = _checks.gru_backward_args(
        dh_out, hs, gates, hn, Whh, dh_last, lengths)
    T, B, H = dh_out.shape
    carry = _checks.carry_array(carry, T, dh_out.dtype)
    active = _active_rows(lengths, T, B)
    dxw = np.empty((T, B, 3 * H), dh_out.dtype)
    dR = np.empty((T, B, 3 * H), dh_out.dtype)
    grad_norms = np.empty(T, dh_out.dtype)
    g = np.zeros((B, H), dh_out.dtype) if dh_last is None else dh_last.copy()
    for t in range(T - 1, -1, -1):
        g += dh_out[t] if active is None else np.where(active[t], dh_out[t], 0)
        grad_norms[t] = _norm(g)
        dxw_t, dR_t, gz = GRUCell.backward(g, gates[t], hn[t], hs[t])
        scale = 1 if carry is None else carry[t]
        # (B, H) = dR_t (B, 3H) Whh (3H, H) + g z
        back = _scaled(dR_t @ Whh + gz, scale)
        if active is None:
            dxw[t], dR[t], g = dxw_t, dR_t, back
        else:
            dxw[t] = np.where(active[t], dxw_t, 0)
            dR[t] = np.where(active[t], dR_t, 0)
            g = np.where(active[t], back, g)
    return dxw, dR, g, grad_norms


def gru_backward_window(
    dh_out: FloatArray, hs: FloatArray, gates: FloatArray, hn: FloatArray, Whh: FloatArray,
    window: Union[int, npt.ArrayLike], *, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Backpropagate each output's error at most ``window`` steps back through one GRU layer.

    The look-back of ``lstm_backward_window`` for this cell: ``G_j[t]`` is what the output at
    step ``t`` sends into the state after step ``t - j``; ``G_0 = dh_out``, and the epilogue of
    step ``t - j`` turns it into ``dxw_j[t]``, ``dR_j[t]`` and
    ``G_{j+1}[t] = dR_j[t] @ Whh + G_j[t] * z``, zero once ``j >= k_t``. ``h0`` receives what
    the outputs ``t <= k_t - 2`` send through step 0.

    Parameters
    ----------
    dh_out, hs, gates, hn, Whh, lengths : as in ``gru_backward``.
    window : int >= 1, or array of int (T,) with values >= 1
        Look-back of every output, or of each; ``window >= T + 1`` is full BPTT.

    Returns
    -------
    dxw, dR : ndarray (T, B, 3H)
    dh0 : ndarray (B, H)

    Raises
    ------
    TypeError, ValueError
        As ``gru_backward``; a ``window`` that is not an int >= 1 or such an array (T,).
    """
    dh_out, hs, gates, hn, Whh, _, lengths = _checks.gru_backward_args(
        dh_out, hs, gates, hn, Whh, None, lengths)
    T, B, H = dh_out.shape
    longest, windows = _checks.window_sizes(window, T)
    if windows is None:
        windows = np.full(T, longest)
    active = _active_rows(lengths, T, B)
    dxw = np.zeros((T, B, 3 * H), dh_out.dtype)
    dR = np.zeros((T, B, 3 * H), dh_out.dtype)
    reach_R = np.zeros((B, 3 * H), dh_out.dtype)  # what reaches step -1 through Whh
    dh0 = np.zeros((B, H), dh_out.dtype)  # and past it through z
    G = dh_out.copy()  # indexed by output t
    for j in range(min(longest, T)):
        S = T - j
        alive = (j < windows[j:])[:, None, None]
        if active is not None:
            alive = alive & active[:S]
        dxw_j, dR_j, gz = GRUCell.backward(G[j:], gates[:S], hn[:S], hs[:S])
        dxw_j = np.where(alive, dxw_j, 0)
        dR_j = np.where(alive, dR_j, 0)
        gz = np.where(alive, gz, 0)
        dxw[:S] += dxw_j
        dR[:S] += dR_j
        if j <= windows[j] - 2:
            reach_R += dR_j[0]
            dh0 += gz[0]
        # G_{j+1}[t] ((S-1)*B, H) = dR_j[t] ((S-1)*B, 3H) Whh (3H, H) + G_j[t] z
        G[j + 1:] = dR_j[1:] @ Whh + gz[1:]
    # dh0 (B, H) += reach_R (B, 3H) Whh (3H, H)
    dh0 += reach_R @ Whh
    return dxw, dR, dh0
