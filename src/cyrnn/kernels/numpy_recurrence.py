"""One layer of any cell with normalized and regularized recurrences, forward and full BPTT:
the NumPy twin of ``pyx/cyrnn/_recurrence.pyx`` and the readable reference of what it computes.

The plain layer kernels (``numpy_backend``, ``numpy_gated``) run the cell between one product
per step and the next. This kernel runs the same cells (Elman, LSTM, GRU: ``cyrnn.cells``) with
what may sit around that product and that epilogue, each one optional::

    hin   = h_{t-1} * rmask                       variational recurrent dropout (Gal &
                                                  Ghahramani 2016): one mask per sequence
    R_t   = hin Whh^T                             (B, G): one product (Whh is already
                                                  weight-dropped by the caller, Merity et al.)
    Rn_t  = N_h(R_t) * gh                         normalization of the recurrent term
    ~h_t  = epilogue(P_t, Rn_t, h_{t-1}, c_{t-1}) the cell's own, with ``Rn_t`` for ``R_t``
    h_t   = zh_t * h_{t-1} + (1 - zh_t) * ~h_t    zoneout (Krueger et al. 2016); LSTM also
    c_t   = zc_t * c_{t-1} + (1 - zc_t) * ~c_t    on the cell state

and for the LSTM with normalization, ``~h_t = o * tanh(N_c(~c_t) * gc + bc)``: the recurrence
carries the raw ``c_t``; only ``h_t`` sees the normalized one. The input term ``P_t`` (with its
own normalization, ``N_x(x_t Wxh^T) * gx + bh``) is computed by the caller over all steps at
once (``cyrnn.stack``). The normalizations ``N``, with ``eps = 1e-5``:

- ``norm=1``, layer normalization (Ba et al. 2016): each row over its ``G`` (or ``H``) values,
  ``N(x) = (x - mean(x)) / sqrt(var(x) + eps)``, biased variance (``torch.nn.LayerNorm``);
- ``norm=2``, batch normalization in training (Cooijmans et al. 2016): each column over the
  batch's active rows at step t (``torch.nn.BatchNorm1d`` in training, one per step);
- ``norm=3``, batch normalization at inference: ``(x - mean_t) / sqrt(var_t + eps)`` with the
  given per-step statistics.

Zoneout's ``zh``, ``zc`` are 0/1 masks in training (1 keeps the previous value) and the rate
``p`` everywhere at inference (the expectation). Conventions as ``numpy_gated``: ``hs[0] = h0``;
steps ``t >= lengths[b]`` keep sequence ``b``'s states and pass gradients through unchanged,
and batch statistics leave those rows out; the carry scales everything that reaches
``h_{t-1}`` and ``c_{t-1}``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from .._typing import FloatArray
from .numpy_backend import _activate, _derivative
from .numpy_gated import GRUCell, LSTMCell, _active_rows, _norm, _scaled

ELMAN, LSTM, GRU = range(3)
NONE, LAYER, BATCH, BATCH_FIXED = range(4)
EPS = 1e-5


def normalize(x, norm, active=None, stats=None):
    """``(xhat, rstd, mean, var)`` of ``x`` (B, N): per row (``LAYER``), per column over the
    active rows (``BATCH``; ``active`` (B, 1) bool or None), or with the given ``stats``
    ``(mean, var)`` (``BATCH_FIXED``). ``rstd = 1 / sqrt(var + eps)``; ``xhat`` is zero in
    inactive rows; ``mean``, ``var`` are the batch statistics (``BATCH``, else None)."""
    if norm == LAYER:
        mean = x.mean(axis=1, keepdims=True)
        var = np.square(x - mean).mean(axis=1, keepdims=True)
        rstd = 1 / np.sqrt(var + EPS)
        return (x - mean) * rstd, rstd, None, None
    if norm == BATCH_FIXED:
        mean, var = stats
        rstd = 1 / np.sqrt(var + EPS)
        return (x - mean) * rstd, rstd, None, None
    if active is None:
        mean = x.mean(axis=0)
        var = np.square(x - mean).mean(axis=0)
    else:
        n = int(active.sum())
        if n == 0:  # no sequence reaches this step: nothing to normalize
            zero = np.zeros(x.shape[1], x.dtype)
            return np.zeros_like(x), zero + 1, zero, zero
        mean = np.where(active, x, 0).sum(axis=0) / n
        var = np.where(active, np.square(x - mean), 0).sum(axis=0) / n
    rstd = 1 / np.sqrt(var + EPS)
    xhat = (x - mean) * rstd
    if active is not None:
        xhat = np.where(active, xhat, 0)
    return xhat, rstd, mean, var


def normalize_backward(dxhat, xhat, rstd, norm, active=None):
    """The gradient reaching ``x`` from ``dxhat`` (B, N) through ``normalize``:
    ``rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, means over the row
    (``LAYER``) or the active rows of each column (``BATCH``); ``rstd * dxhat`` with fixed
    statistics."""
    if norm == BATCH_FIXED:
        return dxhat * rstd
    if norm == LAYER:
        m1 = dxhat.mean(axis=1, keepdims=True)
        m2 = (dxhat * xhat).mean(axis=1, keepdims=True)
        return rstd * (dxhat - m1 - xhat * m2)
    if active is None:
        n = dxhat.shape[0]
    else:
        n = int(active.sum())
        if n == 0:
            return np.zeros_like(dxhat)
        dxhat = np.where(active, dxhat, 0)
    m1 = dxhat.sum(axis=0) / n
    m2 = (dxhat * xhat).sum(axis=0) / n
    dx = rstd * (dxhat - m1 - xhat * m2)
    return dx if active is None else np.where(active, dx, 0)


def recurrence_forward(
    cell: int, P: FloatArray, h0: FloatArray, c0: Optional[FloatArray], Whh: FloatArray,
    bhn: Optional[FloatArray], *, act: tuple = (0, 0.0), norm: int = 0,
    gh: Optional[FloatArray] = None, gc: Optional[FloatArray] = None,
    bc: Optional[FloatArray] = None, stats: Optional[tuple] = None,
    rmask: Optional[FloatArray] = None, zh: Optional[FloatArray] = None,
    zc: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None
) -> dict[str, Any]:
    """Run one layer of cell ``cell`` (``ELMAN``, ``LSTM``, ``GRU``) over all steps.

    Arguments (time-major, C-contiguous, one float dtype; checked by the caller):
    ``P`` (T, B, G) input terms, ``h0`` (B, H), ``c0`` (B, H) (LSTM, else None), ``Whh`` (G, H),
    ``bhn`` (H,) (GRU, else None); ``act`` the Elman nonlinearity ``(code, slope)``;
    ``norm`` and its gains ``gh`` (G,), and for the LSTM ``gc``, ``bc`` (H,); ``stats``
    (``BATCH_FIXED``) ``(mean_h, var_h, mean_c, var_c)`` per step, (T, G) and (T, H);
    ``rmask`` (B, H) recurrent dropout multipliers; ``zh``, ``zc`` (T, B, H) zoneout weights;
    ``lengths`` (B,).

    Returns the record ``backward`` reads: ``hs`` (T + 1, B, H), ``cs`` (LSTM), ``gates``
    (T, B, G) after activation (Elman: ``~h_t``), ``hn`` (GRU: ``Rn_n + bhn``); with a
    normalization ``rhat`` (T, B, G), ``rstd_h`` ((T, B, 1) per row or (T, G) per column),
    for the LSTM ``chat`` (T, B, H) and ``rstd_c``; with ``BATCH`` the batch statistics
    ``mean_h``, ``var_h`` (T, G), ``mean_c``, ``var_c`` (T, H) (biased) and ``count`` (T,).
    """
    T, B, G = P.shape
    H = h0.shape[-1]
    dtype = P.dtype
    active = _active_rows(lengths, T, B)
    hs = np.empty((T + 1, B, H), dtype)
    hs[0] = h0
    rec: dict[str, Any] = {"hs": hs, "gates": np.empty((T, B, G), dtype)}
    if cell == LSTM:
        rec["cs"] = cs = np.empty((T + 1, B, H), dtype)
        cs[0] = c0
    if cell == GRU:
        rec["hn"] = np.empty((T, B, H), dtype)
    if cell == LSTM and zc is not None:
        rec["ctil"] = np.empty((T, B, H), dtype)  # ~c_t before zoneout: what ~h_t reads
    if norm:
        rec["rhat"] = np.empty((T, B, G), dtype)
        rec["rstd_h"] = np.empty((T, B, 1) if norm == LAYER else (T, G), dtype)
        if cell == LSTM:
            rec["chat"] = np.empty((T, B, H), dtype)
            rec["rstd_c"] = np.empty((T, B, 1) if norm == LAYER else (T, H), dtype)
    if norm == BATCH:
        for name, width in (("mean_h", G), ("var_h", G), ("mean_c", H), ("var_c", H)):
            if name.endswith("h") or cell == LSTM:
                rec[name] = np.zeros((T, width), dtype)
        rec["count"] = (np.full(T, B) if lengths is None
                        else (np.arange(T)[:, None] < lengths[None, :]).sum(axis=1))
    WhhT = Whh.T
    for t in range(T):
        on = None if active is None else active[t]
        h_prev = hs[t]
        hin = h_prev if rmask is None else h_prev * rmask
        R = hin @ WhhT  # (B, G) = (B, H) (H, G)
        if norm:
            fixed = None if stats is None else (stats[0][t], stats[1][t])
            rhat, rstd, mean, var = normalize(R, norm, on, fixed)
            rec["rhat"][t], rec["rstd_h"][t] = rhat, rstd
            if mean is not None:
                rec["mean_h"][t], rec["var_h"][t] = mean, var
            R = rhat * gh
        if cell == ELMAN:
            h = _activate(P[t] + R, *act)
            gates = h
        elif cell == LSTM:
            gates, c, h = LSTMCell.forward(P[t] + R, cs[t])
            if norm:
                fixed = None if stats is None else (stats[2][t], stats[3][t])
                chat, rstd, mean, var = normalize(c, norm, on, fixed)
                rec["chat"][t], rec["rstd_c"][t] = chat, rstd
                if mean is not None:
                    rec["mean_c"][t], rec["var_c"][t] = mean, var
                h = gates[:, 3 * H:] * np.tanh(chat * gc + bc)
            if zc is not None:
                rec["ctil"][t] = c
                c = zc[t] * cs[t] + (1 - zc[t]) * c
            cs[t + 1] = c if on is None else np.where(on, c, cs[t])
        else:
            gates, hn, h = GRUCell.forward(P[t], R, h_prev, bhn)
            rec["hn"][t] = hn
        if zh is not None:
            h = zh[t] * h_prev + (1 - zh[t]) * h
        rec["gates"][t] = gates if on is None else np.where(on, gates, 0)
        hs[t + 1] = h if on is None else np.where(on, h, h_prev)
    return rec


def recurrence_backward(
    cell: int, rec: dict[str, Any], dh_out: FloatArray, Whh: FloatArray, *,
    act: tuple = (0, 0.0), norm: int = 0, gh: Optional[FloatArray] = None,
    gc: Optional[FloatArray] = None, bc: Optional[FloatArray] = None,
    rmask: Optional[FloatArray] = None, zh: Optional[FloatArray] = None,
    zc: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None,
    carry: Optional[npt.ArrayLike] = None
) -> tuple:
    """Full BPTT through ``recurrence_forward``'s layer (same arguments, its record ``rec``,
    ``dh_out`` (T, B, H) the gradient reaching each ``h_t`` from its own output, ``carry`` (T,)
    the scale of what step t passes back).

    Returns ``(dP, dR, dh0, dc0, grad_norms, extra)``: ``dP`` (T, B, G) for the input terms,
    ``dR`` (T, B, G) for the raw recurrent product (``dWhh = dR^T hin``), ``dc0`` None but for
    the LSTM, ``grad_norms`` (T,) = ``||dL/dh_t||``, and ``extra`` the gradients of ``gh``,
    ``gc``, ``bc`` (with a normalization) and ``bhn`` (GRU).
    """
    T, B, H = dh_out.shape
    G = Whh.shape[0]
    dtype = dh_out.dtype
    active = _active_rows(lengths, T, B)
    hs, gates = rec["hs"], rec["gates"]
    cs = rec.get("cs")
    dP = np.empty((T, B, G), dtype)
    dR = np.empty((T, B, G), dtype) if (norm or cell == GRU) else dP
    grad_norms = np.empty(T, dtype)
    extra: dict[str, Any] = {}
    if norm:
        extra["gh"] = np.zeros(G, dtype)
        if cell == LSTM:
            extra["gc"], extra["bc"] = np.zeros(H, dtype), np.zeros(H, dtype)
    if cell == GRU:
        extra["bhn"] = np.zeros(H, dtype)
    g_h = np.zeros((B, H), dtype)
    g_c = np.zeros((B, H), dtype) if cell == LSTM else None
    for t in range(T - 1, -1, -1):
        on = None if active is None else active[t]
        g_h = g_h + (dh_out[t] if on is None else np.where(on, dh_out[t], 0))
        grad_norms[t] = _norm(g_h)
        # zoneout: the part of dL/dh_t that reaches h_{t-1} directly, and the cell's part
        g_direct = 0 if zh is None else zh[t] * g_h
        g_cell = g_h if zh is None else (1 - zh[t]) * g_h
        c_direct = 0
        if cell == ELMAN:
            da = g_cell * _derivative(gates[t], *act)
            dPt = dRn = da
        elif cell == LSTM:
            g_cc = g_c if zc is None else (1 - zc[t]) * g_c
            c_direct = 0 if zc is None else zc[t] * g_c
            if norm:
                # ~h = o tanh(u), u = chat gc + bc: fold the path through u into d~c, then the
                # plain epilogue with no gradient on h (its only use of tanh(c) is replaced)
                o = gates[t][:, 3 * H:]
                u = np.tanh(rec["chat"][t] * gc + bc)
                du = g_cell * o * (1 - u * u)
                extra["gc"] += (du * rec["chat"][t]).sum(axis=0) if on is None else \
                    np.where(on, du * rec["chat"][t], 0).sum(axis=0)
                extra["bc"] += du.sum(axis=0) if on is None else np.where(on, du, 0).sum(axis=0)
                g_cc = g_cc + normalize_backward(du * gc, rec["chat"][t], rec["rstd_c"][t],
                                                 norm, on)
                da, dcf = LSTMCell.backward(np.zeros_like(g_cell), g_cc, gates[t], cs[t],
                                            cs[t + 1])
                da[:, 3 * H:] = g_cell * u * (o * (1 - o))
            else:
                c_new = cs[t + 1] if zc is None else rec["ctil"][t]
                da, dcf = LSTMCell.backward(g_cell, g_cc, gates[t], cs[t], c_new)
            dPt = dRn = da
        else:
            dPt, dRn, gz = GRUCell.backward(g_cell, gates[t], rec["hn"][t], hs[t])
            g_direct = g_direct + gz
            extra["bhn"] += (dRn[:, 2 * H:].sum(axis=0) if on is None
                             else np.where(on, dRn[:, 2 * H:], 0).sum(axis=0))
        if on is not None:
            dPt, dRn = np.where(on, dPt, 0), np.where(on, dRn, 0)
        if norm:
            rhat = rec["rhat"][t]
            extra["gh"] += (dRn * rhat).sum(axis=0)
            dRt = normalize_backward(dRn * gh, rhat, rec["rstd_h"][t], norm, on)
        else:
            dRt = dRn
        dP[t] = dPt
        if dR is not dP:
            dR[t] = dRt
        # dL/dh_{t-1}: through the product (B, H) = dR_t (B, G) Whh (G, H), masked like hin
        back = dRt @ Whh
        if rmask is not None:
            back = back * rmask
        back = back + g_direct
        scale = 1 if carry is None else carry[t]
        back = _scaled(back, scale)
        if on is None:
            g_h = back
        else:
            g_h = np.where(on, back, g_h)
        if cell == LSTM:
            back_c = _scaled(dcf + c_direct, scale)
            g_c = back_c if on is None else np.where(on, back_c, g_c)
    return dP, dR, g_h, g_c, grad_norms, extra


def layer_norm_rows(x: FloatArray, gain: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Layer normalization of every row of ``x`` (N, G) over its G values, times ``gain`` (G,):
    ``(y, xhat, rstd)`` with ``xhat = (x - mean) * rstd``, ``rstd`` (N, 1) ``= 1 / sqrt(var +
    eps)`` (biased variance, eps = 1e-5) and ``y = xhat * gain``. The input term of a
    layer-normed recurrence, over all steps at once (``cyrnn.norms``)."""
    xhat, rstd, _, _ = normalize(x, LAYER)
    return xhat * gain, xhat, rstd


def layer_norm_rows_backward(dy: FloatArray, xhat: FloatArray, rstd: FloatArray,
                             gain: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``(dx, dgain)`` from ``dy = dL/dy`` (N, G) through ``layer_norm_rows``."""
    dgain = (dy * xhat).sum(axis=0)
    return normalize_backward(dy * gain, xhat, rstd, LAYER), dgain
