"""The forward pass, loss and BPTT of a stack of recurrent layers, composed in Python over one
backend's layer kernels: the executable specification of the model.

A *layer* runs one cell (``cyrnn.cells``: Elman, LSTM, GRU; gate width G) over time in one
direction; everything not sequential is one product over all ``T*B`` rows (written here for the
Elman cell, whose ``dR`` is ``dP``; see ``cyrnn.cells`` for the gated ones)::

    forward    for each layer l, direction d (j = l*D + d):
                   P  = X_l Wxh^T + bh                 (T*B, G): one GEMM, or a row gather of ids
                   hs = rnn_forward(P, h0[j], Whh)      h_t = f(P_t + h_{t-1} Whh^T), per step
               X_{l+1} = [S_{l,0} | S_{l,1}] * mask_l  both directions' states side by side,
                                                       dropout multipliers between layers
               z = X_L Why^T + by                      the output layer, then the loss on z
    backward   dX_L = dz Why
               for l from the top, each direction:
                   da = rnn_backward(dX_{l+1} part of d, hs, Whh)    BPTT, per step
                   dWhh = da^T h_{t-1}   dbh = sum da   dWxh = da^T X_l   dX_l += da Wxh
               dX_l *= mask_{l-1} on its way to the layer below

The reverse direction (``d = 1``) is a forward layer run over each sequence reversed within its
own length (PyTorch's packed sequences: it starts at each sequence's last valid step, and padded
steps stay where they are). Its truncation (look-back windows, carry scales) therefore applies
in its own processing order, and ``h_last`` is its state after step 0.

The model calls ``loss_and_grad`` and ``forward`` here for every case the fused kernels
(``_stack_step``, ``_stack_outputs``) do not cover; the NumPy backend's fused kernels are this
composition over the NumPy kernels, and the compiled ones do the same arithmetic in one call.
"""
from __future__ import annotations

import types
from typing import Any, Optional

import numpy as np

from . import losses, norms
from ._typing import LossName, OutputName, Reduction
from .layers import Architecture


class Reversal:
    """The time reversal of every sequence within its own length: step ``t`` of sequence ``b``
    and step ``lengths[b] - 1 - t`` trade places; padded steps stay. Its own inverse."""

    def __init__(self, T: int, B: int, lengths: Optional[np.ndarray]) -> None:
        self.steps = self.rows = None
        if lengths is not None:
            t = np.arange(T)[:, None]
            self.steps = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
            self.rows = np.arange(B)[None, :]

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """``a`` (T, B, ...) reversed, as a new C-contiguous array."""
        if self.steps is None:
            return np.ascontiguousarray(a[::-1])
        return a[self.steps, self.rows]

    def norms(self, norms: np.ndarray) -> Optional[np.ndarray]:
        """Per-step norms of the reversed frame in natural time; None where sequences of several
        lengths make a step of the reversed frame several natural steps."""
        return norms[::-1] if self.steps is None else None


def _cell(weights, arch, j):
    p = weights[0]
    return tuple(p[name] for name in arch.cell_names(j))


def _project(X, Wxh, bh):
    """P (T, B, H) = X Wxh^T + bh (without ``bh`` for None): a row gather of Wxh^T for token ids
    (T, B), else one GEMM."""
    if X.dtype.kind in "iu":
        P = Wxh.T.take(X, axis=0)
    else:
        T, B, n_in = X.shape
        # (T*B, H) = (T*B, in) (in, H)
        P = (X.reshape(T * B, n_in) @ Wxh.T).reshape(T, B, -1)
    if bh is not None:
        P += bh
    return P


def _regular_cell(params, lay):
    """The cell parameters a normalized or regularized layer-direction runs with: ``Whh``
    weight-dropped (``Whh * wmask``) in training."""
    if lay.wmask is None:
        return params
    return (params[0], params[1] * lay.wmask) + params[2:]


def forward(kern: Any, arch: Architecture, weights: tuple, inputs: np.ndarray, h0: np.ndarray,
            lengths: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None,
            c0: Optional[np.ndarray] = None, regime: Optional[list] = None,
            running: Optional[dict] = None) -> types.SimpleNamespace:
    """States of every layer-direction for time-major ``inputs`` (T, B) ids or (T, B, I) values
    and ``h0`` (L*D, B, H) (and, for LSTM, the cell states ``c0`` (L*D, B, H)). Returns a
    namespace with ``inputs`` (each layer's input), ``records`` (each layer-direction's
    ``cyrnn.cells`` record, in its processing order: ``hs`` (T + 1, B, H) and what its backward
    pass needs), ``top`` (T, B, D*H) (the last layer's output), ``h_last`` and ``c_last``
    (L*D, B, H) (None but for LSTM) and ``reversal``.

    ``regime`` (``cyrnn.norms.regime``, None for the plain cells) holds each layer-direction's
    normalization and regularization; with batch normalization in training, the running
    statistics in ``running`` are updated in place."""
    _, nonlinearity, slope = weights
    T, B = inputs.shape[:2]
    D, cell = arch.num_directions, arch.cell_type
    reversal = Reversal(T, B, lengths)
    h_last = np.empty((arch.num_states, B, arch.hidden_size), dtype=h0.dtype)
    c_last = None if c0 is None else np.empty_like(h_last)
    layer_inputs, records = [], []
    X = inputs
    for layer in range(arch.num_layers):
        layer_inputs.append(X)
        outputs = []
        for d in range(D):
            j = layer * D + d
            params = _cell(weights, arch, j)
            lay = None if regime is None else regime[j]
            P = _project(X, params[0], params[2] if lay is None else None)
            if d:
                P = reversal(P)
            state0 = (h0[j],) if c0 is None else (h0[j], c0[j])
            if lay is None:
                record = cell.forward(kern, P, state0, params, lengths, (nonlinearity, slope))
            else:
                xrec = None
                if lay.norm:  # P = N_x(X Wxh^T) * gx + bh
                    P, xrec = norms.normalize_inputs(kern, P, lay, lengths)
                P += params[2]
                record = cell.forward_with(kern, P, state0, _regular_cell(params, lay), lengths,
                                           (nonlinearity, slope), lay)
                record.xrec = xrec
                if running is not None and lay.norm == norms.BATCH:
                    norms.update_running(running, arch, j, xrec, record.rec)
            records.append(record)
            h_last[j] = record.last[0]
            if c_last is not None:
                c_last[j] = record.last[1]
            outputs.append(reversal(record.hs[1:]) if d else record.hs[1:])
        X = outputs[0] if D == 1 else np.concatenate(outputs, axis=-1)
        if masks is not None and layer < arch.num_layers - 1:
            X = X * masks[layer]
    return types.SimpleNamespace(inputs=layer_inputs, records=records, top=X, h_last=h_last,
                                 c_last=c_last, reversal=reversal)


def logits(arch: Architecture, weights: tuple, top: np.ndarray) -> np.ndarray:
    """z (T, B, O) = X_L Why^T + by, or the top states themselves without an output layer."""
    if arch.output_size is None:
        return top
    p = weights[0]
    T, B, width = top.shape
    z = top.reshape(T * B, width) @ p["Why"].T
    z += p["by"]
    return z.reshape(T, B, -1)


def backward(kern: Any, arch: Architecture, weights: tuple, fwd: types.SimpleNamespace,
             dz: np.ndarray, lengths: Optional[np.ndarray] = None, window: Any = None,
             carry: Optional[np.ndarray] = None, input_grad: bool = True,
             masks: Optional[np.ndarray] = None,
             regime: Optional[list] = None) -> tuple[dict, Optional[np.ndarray]]:
    """Every gradient from dL/dz (T, B, O) (dL/d top states without an output layer).

    Returns ``(grads, grad_norms)``: ``grads`` keyed by parameter name plus ``"h0"`` (L*D, B, H)
    (and ``"c0"`` for LSTM) and, for dense inputs with ``input_grad``, ``"x"`` (T, B, I);
    ``grad_norms`` (T,) is
    ``||dL/dh_t||`` over every layer-direction's state at step t (None with a look-back window,
    or where a reverse direction meets sequences of several lengths).
    """
    p, nonlinearity, slope = weights
    H, D = arch.hidden_size, arch.num_directions
    top = fwd.top
    T, B = top.shape[:2]
    grads: dict = {}
    if arch.output_size is None:
        dtop = dz
    else:
        dz2 = dz.reshape(T * B, -1)
        # dWhy (O, D*H) = dz^T (O, T*B) X_L (T*B, D*H);  dby = sum over steps and sequences
        grads["Why"] = dz2.T @ top.reshape(T * B, -1)
        grads["by"] = dz2.sum(axis=0)
        # dX_L (T*B, D*H) = dz (T*B, O) Why (O, D*H)
        dtop = (dz2 @ p["Why"]).reshape(T, B, -1)
    dh0 = np.empty((arch.num_states, B, H), dtype=dz.dtype)
    dc0 = np.empty_like(dh0) if fwd.c_last is not None else None
    squares: Optional[np.ndarray] = None if window is not None else np.zeros(T, dtype=np.float64)
    cell, activation = arch.cell_type, (nonlinearity, slope)
    G = arch.gate_size
    dout = dtop
    for layer in range(arch.num_layers - 1, -1, -1):
        X = fwd.inputs[layer]
        tokens = X.dtype.kind in "iu"
        need_dX = layer > 0 or (input_grad and not tokens)
        dX: Optional[np.ndarray] = None
        for d in range(D):
            j = layer * D + d
            names = arch.cell_names(j)
            params = _cell(weights, arch, j)
            record = fwd.records[j]
            g = dout if D == 1 else np.ascontiguousarray(dout[..., d * H:(d + 1) * H])
            if d:
                g = fwd.reversal(g)
            lay = None if regime is None else regime[j]
            # the cell's BPTT: dP (pre-activations), dR (recurrent product), d(initial state)
            if lay is None:
                dP, dR, dstate0, step_norms, extra = cell.backward(kern, record, g, params,
                                                                   lengths, activation, window,
                                                                   carry)
                hin = record.hs[:-1]
            else:
                dP, dR, dstate0, step_norms, extra = cell.backward_with(
                    kern, record, g, _regular_cell(params, lay), lengths, activation, lay, carry)
                hin = record.hs[:-1] if lay.rmask is None else record.hs[:-1] * lay.rmask
            dh0[j] = dstate0[0]
            if dc0 is not None:
                dc0[j] = dstate0[1]
            if step_norms is not None and d:
                step_norms = fwd.reversal.norms(step_norms)
            if squares is not None and step_norms is not None:
                squares += np.square(step_norms, dtype=np.float64)
            else:
                squares = None
            # dWhh (G, H) = dR^T (G, T*B) h_{t-1} (T*B, H);  dbh = sum of dP (any order of rows)
            grads[names[1]] = dR.reshape(T * B, G).T @ hin.reshape(T * B, H)
            grads[names[2]] = dP.reshape(T * B, G).sum(axis=0)
            if lay is not None and lay.wmask is not None:
                grads[names[1]] *= lay.wmask  # through Whh * wmask
            for name, key in zip(names[3:], cell.extra_params):  # the cell's own (GRU: bhn)
                grads[name] = extra[key]
            if lay is not None and lay.norm:
                nnames = arch.norm_names(j)
                dP, grads[nnames[0]] = norms.normalize_inputs_backward(kern, dP, record.xrec, lay,
                                                                       lengths)
                for name, key in zip(nnames[1:], ("gh", "gc", "bc")):
                    grads[name] = extra[key]
            dP2 = (fwd.reversal(dP) if d else dP).reshape(T * B, G)  # in step with X
            if tokens:
                # the projection gathered row id of Wxh^T: scatter-add dP's rows back there
                grads[names[0]] = np.ascontiguousarray(
                    kern.embedding_grad(X.reshape(-1), dP2, arch.input_size).T)
            else:
                # dWxh (G, in) = dP^T (G, T*B) X (T*B, in)
                grads[names[0]] = dP2.T @ X.reshape(T * B, -1)
            if need_dX:
                # dX (T*B, in) += dP (T*B, G) Wxh (G, in)
                part = (dP2 @ params[0]).reshape(T, B, -1)
                dX = part if dX is None else dX + part
        if layer > 0:
            assert dX is not None
            dout = dX if masks is None else dX * masks[layer - 1]
        elif need_dX:
            grads["x"] = dX
    grads["h0"] = dh0
    if dc0 is not None:
        grads["c0"] = dc0
    return grads, (None if squares is None else np.sqrt(squares).astype(dz.dtype))


def loss_and_grad(kern: Any, arch: Architecture, weights: tuple, inputs: np.ndarray,
                  h0: np.ndarray, target: np.ndarray, *, loss: LossName, output: OutputName,
                  reduction: Reduction, lengths: Optional[np.ndarray] = None,
                  positions: tuple = (None, None), window: Any = None,
                  carry: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None,
                  need_grads: bool = True, input_grad: bool = True,
                  c0: Optional[np.ndarray] = None, regime: Optional[list] = None,
                  running: Optional[dict] = None) -> types.SimpleNamespace:
    """Forward pass, loss and (with ``need_grads``) BPTT of one batch.

    ``positions`` are the time and sequence indices of the outputs that carry a loss (each
    (N,)), or ``(None, None)`` for every step of every sequence; ``target`` holds their targets,
    (N,) class ids or (N, O) values. Returns a namespace with ``loss``, ``h_last`` and
    ``c_last`` (L*D, B, H) (None but for LSTM), ``grads`` (see ``backward``; None without
    ``need_grads``) and ``grad_norms``.
    """
    fwd = forward(kern, arch, weights, inputs, h0, lengths, masks, c0, regime, running)
    z = logits(arch, weights, fwd.top)
    t_idx, b_idx = positions
    # (N, O) logits of the positions that carry a loss -> loss and dL/dz there
    z_sel = z.reshape(-1, z.shape[-1]) if t_idx is None else z[t_idx, b_idx]
    value, dz_sel = losses.loss_and_dz(loss, output, z_sel, target, reduction)
    result = types.SimpleNamespace(loss=value, h_last=fwd.h_last, c_last=fwd.c_last, grads=None,
                                   grad_norms=None)
    if need_grads:
        if t_idx is None:
            dz = dz_sel.reshape(z.shape)
        else:
            dz = np.zeros_like(z)
            dz[t_idx, b_idx] = dz_sel
        result.grads, result.grad_norms = backward(kern, arch, weights, fwd, dz, lengths, window,
                                                   carry, input_grad, masks, regime)
    return result


def outputs(kern: Any, arch: Architecture, weights: tuple, inputs: np.ndarray, h0: np.ndarray,
            output: OutputName, lengths: Optional[np.ndarray] = None,
            c0: Optional[np.ndarray] = None,
            regime: Optional[list] = None) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(y, h_last, c_last)``: ``y = g(z)`` (T, B, O) (the top states without an output
    layer), the last states (``c_last`` None but for LSTM)."""
    fwd = forward(kern, arch, weights, inputs, h0, lengths, c0=c0, regime=regime)
    z = logits(arch, weights, fwd.top)
    y = losses.apply_output(output, z) if arch.output_size is not None else z
    return y, fwd.h_last, fwd.c_last
