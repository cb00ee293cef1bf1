"""Normalized and regularized recurrences: what a call needs beyond the plain cell.

A model built with ``norm``, ``recurrent_dropout``, ``zoneout`` or ``weight_drop`` runs each
layer-direction ``j`` as (``cyrnn.kernels.numpy_recurrence`` has the per-step equations)::

    P   = N_x(X Wxh^T) * gx + bh                    the input term, over all steps at once
    R_t = (h_{t-1} * rmask) (Whh * wmask)^T          one product per step
    ~h_t, ~c_t = cell(P_t, N_h(R_t) * gh, ...)       LSTM: ~h_t = o tanh(N_c(~c_t) gc + bc)
    h_t = zh_t h_{t-1} + (1 - zh_t) ~h_t             zoneout (LSTM: c_t likewise with zc_t)

- ``norm="layer"`` (Ba, Kiros & Hinton 2016): ``N`` normalizes each row over its G (or H)
  values with the biased variance and ``eps = 1e-5`` inside the root (``torch.nn.LayerNorm``);
  gains start at 1.
- ``norm="batch"`` (Cooijmans et al. 2016): ``N`` normalizes each unit over the batch, per time
  step: with the batch's statistics (biased variance) in training (``loss_and_grad``, ``fit``),
  which also update running statistics per step with momentum 0.1 (unbiased variance, as
  ``torch.nn.BatchNorm1d``); with the running ones in ``forward``, ``evaluate`` and generation
  (steps beyond the longest seen in training use the last step's). ``lengths`` leave padded rows
  out of the statistics. Gains start at 0.1.
- ``recurrent_dropout=p`` (Gal & Ghahramani 2016): one mask per sequence on ``h_{t-1}`` in the
  recurrent product, reused at every step (kept units scaled by ``1/(1-p)``); training only.
- ``zoneout=p`` (Krueger et al. 2016): each unit of ``h`` (and the LSTM's ``c``) keeps its
  previous value with probability ``p`` at each step in training; at inference the
  expectation, ``h_t = p h_{t-1} + (1-p) ~h_t``.
- ``weight_drop=p`` (DropConnect on ``Whh``, Merity et al. 2017): one mask per call, kept
  weights scaled by ``1/(1-p)``; training only.

Where the model runs a whole step in one compiled call (``_stack_step``, ``_stack_outputs``),
layer normalization and the regularizers run inside it (``fusable``, ``kernel_options``); batch
normalization, whose statistics span the whole batch, runs in the composition ``cyrnn.stack``.

The masks of a call are drawn from one generator in a fixed order (each layer-direction in
``h0`` order: recurrent dropout (B, H), zoneout of ``h`` then ``c`` (T, B, H), weight drop
(G, H)), after the dropout between layers, so one seed gives the same masks on both backends.
"""
from __future__ import annotations

import types
from typing import Any, Optional

import numpy as np

from .kernels.numpy_recurrence import BATCH, BATCH_FIXED, LAYER, NONE, normalize, \
    normalize_backward
from .layers import Architecture

MOMENTUM = 0.1  # of the running statistics, as torch.nn.BatchNorm1d
STATS = ("x", "h", "c")  # the normalized terms: input, recurrent, the LSTM's cell state


def running_names(arch: Architecture, j: int) -> dict[str, tuple[str, str]]:
    """Layer-direction ``j``'s running statistics by term: ``{"x": ("mean_x", "var_x"), ...}``
    with the parameters' suffix (empty but for ``norm="batch"``)."""
    if arch.norm != "batch":
        return {}
    s = arch.suffix(j // arch.num_directions, j % arch.num_directions)
    terms = STATS if arch.cell == "lstm" else STATS[:2]
    return {term: (f"mean_{term}{s}", f"var_{term}{s}") for term in terms}


def init_running(arch: Architecture, dtype: Any) -> dict[str, np.ndarray]:
    """Empty running statistics (0 steps seen) of every layer-direction: ``(0, G)`` for the
    input and recurrent terms, ``(0, H)`` for the cell state."""
    stats = {}
    for j in range(arch.num_states):
        for term, names in running_names(arch, j).items():
            width = arch.hidden_size if term == "c" else arch.gate_size
            for name in names:
                stats[name] = np.zeros((0, width), dtype)
    return stats


def _per_step(mean, var, T, width, dtype, start=0):
    """Running statistics (S, width) of steps ``start .. start + T - 1``: steps beyond S take
    the last one's; with none seen, BatchNorm's initial mean 0 and variance 1."""
    if mean.shape[0] == 0:
        return np.zeros((T, width), dtype), np.ones((T, width), dtype)
    idx = np.minimum(np.arange(start, start + T), mean.shape[0] - 1)
    return mean[idx], var[idx]


def options(arch: Architecture, params: dict, j: int, rmask: Optional[np.ndarray] = None,
            zh: Optional[np.ndarray] = None,
            zc: Optional[np.ndarray] = None) -> types.SimpleNamespace:
    """Layer-direction ``j``'s recurrence options with the masks given and nothing drawn: the
    namespace ``regime`` fills (``norm`` NONE or LAYER; batch normalization's code and
    statistics depend on the call, and ``regime`` sets them)."""
    gains = dict(zip(("gx", "gh", "gc", "bc"), (params[n] for n in arch.norm_names(j))))
    return types.SimpleNamespace(norm=LAYER if arch.norm == "layer" else NONE, xstats=None,
                                 stats=None, rmask=rmask, zh=zh, zc=zc, wmask=None,
                                 **{k: gains.get(k) for k in ("gx", "gh", "gc", "bc")})


def regime(arch: Architecture, params: dict, T: int, B: int, dtype: Any, training: bool,
           rng: Optional[np.random.Generator], running: Optional[dict],
           start: int = 0) -> Optional[list]:
    """Each layer-direction's recurrence options for one call (None for a plain model): a
    namespace with ``norm`` (the kernels' code), the gains, fixed statistics at inference
    (those of steps ``start ..``: generation goes on one step at a time), and the training
    masks drawn from ``rng`` in the documented order."""
    if arch.plain:
        return None
    layers = []
    H, G = arch.hidden_size, arch.gate_size
    for j in range(arch.num_states):
        lay = options(arch, params, j)
        if arch.norm == "batch":
            lay.norm = BATCH if training else BATCH_FIXED
            if not training:
                fixed = []
                for term, (m, v) in running_names(arch, j).items():
                    width = H if term == "c" else G
                    fixed += _per_step(running[m], running[v], T, width, dtype, start)
                lay.xstats = tuple(fixed[:2])
                lay.stats = tuple(fixed[2:]) + ((None, None) if arch.cell != "lstm" else ())
        p = arch.recurrent_dropout
        if training and p:
            lay.rmask = (rng.random((B, H)) >= p).astype(dtype) * dtype.type(1 / (1 - p))
        p = arch.zoneout
        if p:
            if training:
                lay.zh = (rng.random((T, B, H)) < p).astype(dtype)
                if arch.cell == "lstm":
                    lay.zc = (rng.random((T, B, H)) < p).astype(dtype)
            else:
                lay.zh = np.full((T, B, H), dtype.type(p))
                if arch.cell == "lstm":
                    lay.zc = lay.zh
        p = arch.weight_drop
        if training and p:
            lay.wmask = (rng.random((G, H)) >= p).astype(dtype) * dtype.type(1 / (1 - p))
        layers.append(lay)
    return layers


def fusable(regime: list) -> bool:
    """Whether the fused kernels (``_stack_step``, ``_stack_outputs``) run a call's ``regime``:
    layer normalization and the regularizers, not batch normalization (its statistics span the
    batch, which the fused kernels run in shards)."""
    return all(lay.norm in (NONE, LAYER) for lay in regime)


def kernel_options(regime: list) -> tuple[Optional[tuple], Optional[tuple]]:
    """``(gains, regular)`` of a fusable ``regime`` as the fused kernels take them: each
    layer-direction's layer-norm gains ``(gx, gh)`` (LSTM ``(gx, gh, gc, bc)``) and its masks
    ``(rmask, zh, zc)``, each None where none is used."""
    gains = None
    if regime[0].norm == LAYER:
        gains = tuple((lay.gx, lay.gh) + ((lay.gc, lay.bc) if lay.gc is not None else ())
                      for lay in regime)
    regular = tuple(None if lay.rmask is None and lay.zh is None and lay.zc is None
                    else (lay.rmask, lay.zh, lay.zc) for lay in regime)
    return gains, (None if all(masks is None for masks in regular) else regular)


def normalize_inputs(kern: Any, P: np.ndarray, lay: Any, lengths: Optional[np.ndarray]):
    """``(N_x(P) * gx, record)`` for the input terms ``P`` (T, B, G) of one layer-direction in
    its processing order; ``record`` is what ``normalize_inputs_backward`` needs and, in
    training with batch statistics, the statistics per step. Layer normalization runs the
    backend's ``layer_norm_rows`` over all ``T*B`` rows at once."""
    T, B, G = P.shape
    if lay.norm == LAYER:
        y, xhat, rstd = kern.layer_norm_rows(P.reshape(T * B, G), lay.gx)
        rec = types.SimpleNamespace(xhat=xhat.reshape(T, B, G), rstd=rstd.reshape(T, B, 1))
        return y.reshape(T, B, G), rec
    elif lay.norm == BATCH_FIXED:
        mean, var = lay.xstats
        rstd = 1 / np.sqrt(var + P.dtype.type(1e-5))
        xhat = (P - mean[:, None, :]) * rstd[:, None, :]
        rec = types.SimpleNamespace(xhat=xhat, rstd=rstd[:, None, :])
    else:
        active = _active(lengths, T, B)
        xhat = np.empty_like(P)
        rstd = np.empty((T, 1, G), P.dtype)
        rec = types.SimpleNamespace(xhat=xhat, rstd=rstd, mean=np.empty((T, G), P.dtype),
                                    var=np.empty((T, G), P.dtype))
        for t in range(T):
            on = None if active is None else active[t]
            xhat[t], rstd[t, 0], rec.mean[t], rec.var[t] = normalize(P[t], BATCH, on)
    return rec.xhat * lay.gx, rec


def normalize_inputs_backward(kern: Any, dPn: np.ndarray, rec: Any, lay: Any,
                              lengths: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(dP, dgx)``: the gradients of the raw input terms and of the gain ``gx`` from those of
    the normalized ones, ``dPn`` (T, B, G)."""
    T, B, G = dPn.shape
    if lay.norm == LAYER:
        dP, dgx = kern.layer_norm_rows_backward(dPn.reshape(T * B, G),
                                                rec.xhat.reshape(T * B, G),
                                                rec.rstd.reshape(T * B, 1), lay.gx)
        return dP.reshape(T, B, G), dgx
    dgx = (dPn * rec.xhat).reshape(T * B, G).sum(axis=0)
    dxhat = dPn * lay.gx
    if lay.norm == BATCH_FIXED:
        dP = dxhat * rec.rstd
    else:
        active = _active(lengths, T, B)
        dP = np.empty_like(dPn)
        for t in range(T):
            on = None if active is None else active[t]
            dP[t] = normalize_backward(dxhat[t], rec.xhat[t], rec.rstd[t, 0], BATCH, on)
    return dP, dgx


def update_running(running: dict, arch: Architecture, j: int, xrec: Any, record: dict) -> None:
    """Fold one training call's batch statistics of layer-direction ``j`` into the running
    ones, per step: ``running = (1 - momentum) running + momentum * batch`` with the unbiased
    variance; running statistics grow to the last step that at least two sequences of the
    batch reach (new steps start at mean 0, variance 1): steps that fewer sequences reach (the
    padding past them, or one sequence alone) leave them unchanged."""
    count = record["count"]
    T = int((count >= 2).sum())  # counts never grow with t: the steps that two sequences reach
    if T == 0:
        return
    count = count[:T]
    batch = {"x": (xrec.mean, xrec.var), "h": (record["mean_h"], record["var_h"])}
    if "mean_c" in record:
        batch["c"] = (record["mean_c"], record["var_c"])
    unbias = (count / (count - 1))[:, None]
    for term, (m_name, v_name) in running_names(arch, j).items():
        mean, var = running[m_name], running[v_name]
        if mean.shape[0] < T:
            width = mean.shape[1]
            more = T - mean.shape[0]
            mean = np.concatenate([mean, np.zeros((more, width), mean.dtype)])
            var = np.concatenate([var, np.ones((more, width), var.dtype)])
        b_mean, b_var = batch[term][0][:T], batch[term][1][:T]
        head_m, head_v = mean[:T], var[:T]
        new_m = (1 - MOMENTUM) * head_m + MOMENTUM * b_mean
        new_v = (1 - MOMENTUM) * head_v + MOMENTUM * (b_var * unbias)
        head_m[...] = new_m
        head_v[...] = new_v
        running[m_name], running[v_name] = mean, var


def _active(lengths, T, B):
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
