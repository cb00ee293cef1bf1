"""The cells a layer can run: what each one computes per step, its parameters and its state.

A *cell* is fixed by its gate width ``G`` (a multiple of the hidden size ``H``) and two fused
elementwise epilogues around the per-step product ``R_t = h_{t-1} Whh^T`` (see ``cyrnn.stack``
and ``../DESIGN.md``, "Cells and layers"); the layer kernels of each backend run them over time:

===========  =====  ==================================================================
cell         G      per step (``P_t = x_t Wxh^T + bh`` precomputed for every step)
===========  =====  ==================================================================
``elman``    H      ``h_t = f(P_t + R_t)``
``lstm``     4H     ``[i f g o] = P_t + R_t`` (sigmoid, sigmoid, tanh, sigmoid);
                    ``c_t = f c_{t-1} + i g``; ``h_t = o tanh(c_t)``
``gru``      3H     ``r, z = sigmoid(P_r + R_r), sigmoid(P_z + R_z)``;
                    ``n = tanh(P_n + r (R_n + bhn))``; ``h_t = (1 - z) n + z h_{t-1}``
===========  =====  ==================================================================

Gate orders and weight layouts are PyTorch's (``nn.LSTM``: i, f, g, o; ``nn.GRU``: r, z, n), so
weights move between the two without reordering; ``bh`` is PyTorch's ``bias_ih + bias_hh``,
except GRU's n-part, which is ``bias_ih``'s alone: its ``bias_hh`` n-part sits inside the reset
product and is the parameter ``bhn``.

Each ``Cell`` runs one layer-direction through the backend's layer kernels:
``forward(kern, P, state0, cell_params, lengths, activation)`` returns a record of what the
backward pass needs, and ``backward(kern, record, dh_out, ...)`` the gradients of the
pre-activations ``dP`` (for ``Wxh``, ``bh`` and the layer's input) and of the recurrent product
``dR`` (for ``Whh``), of the initial state, and of any extra parameter.
"""
from __future__ import annotations

import types
from typing import Any, Optional

import numpy as np

from . import _checks

CELLS = ("elman", "lstm", "gru")


class Cell:
    """One cell's shape: its name, gate multiple ``G / H``, state names and extra parameters."""

    name = "elman"
    gates = 1
    states: tuple[str, ...] = ("h",)
    extra_params: tuple[str, ...] = ()

    def extra_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the cell's parameters beyond ``Wxh``, ``Whh`` and ``bh``."""
        return {}

    @property
    def code(self) -> int:
        """The kernels' number of this cell (its index in ``CELLS``)."""
        return CELLS.index(self.name)

    # a normalized or regularized recurrence (cyrnn.norms): one kernel pair for every cell

    def forward_with(self, kern: Any, P: np.ndarray, state0: tuple, cell_params: tuple,
                     lengths: Optional[np.ndarray], activation: tuple,
                     lay: Any) -> types.SimpleNamespace:
        """``forward`` with the options ``lay`` of ``cyrnn.norms.regime`` (``cell_params``
        holding the weight-dropped ``Whh``)."""
        act = (_checks.NONLINEARITIES.index(activation[0]), activation[1])
        c0 = state0[1] if len(state0) > 1 else None
        bhn = cell_params[3] if len(cell_params) > 3 else None
        rec = kern.recurrence_forward(
            self.code, P, state0[0], c0, cell_params[1], bhn, act=act, norm=lay.norm,
            gh=lay.gh, gc=lay.gc, bc=lay.bc, stats=lay.stats, rmask=lay.rmask, zh=lay.zh,
            zc=lay.zc, lengths=lengths)
        hs = rec["hs"]
        last = (hs[-1],) if c0 is None else (hs[-1], rec["cs"][-1])
        return types.SimpleNamespace(hs=hs, last=last, rec=rec)

    def backward_with(self, kern: Any, record: types.SimpleNamespace, dh_out: np.ndarray,
                      cell_params: tuple, lengths: Optional[np.ndarray], activation: tuple,
                      lay: Any, carry: Optional[np.ndarray] = None) -> tuple:
        """``backward`` through ``forward_with``: ``(dP, dR, dstate0, grad_norms, extra)``,
        ``extra`` holding the gradients of the gains ``gh``, ``gc``, ``bc`` and GRU's
        ``bhn``."""
        act = (_checks.NONLINEARITIES.index(activation[0]), activation[1])
        dP, dR, dh0, dc0, norms, extra = kern.recurrence_backward(
            self.code, record.rec, dh_out, cell_params[1], act=act, norm=lay.norm, gh=lay.gh,
            gc=lay.gc, bc=lay.bc, rmask=lay.rmask, zh=lay.zh, zc=lay.zc, lengths=lengths,
            carry=carry)
        return dP, dR, ((dh0,) if dc0 is None else (dh0, dc0)), norms, extra


class Elman(Cell):
    """``h_t = f(P_t + R_t)``; the nonlinearity ``f`` comes with each call (``activation``)."""

    def forward(self, kern: Any, P: np.ndarray, state0: tuple, cell_params: tuple,
                lengths: Optional[np.ndarray], activation: tuple) -> types.SimpleNamespace:
        nonlinearity, slope = activation
        hs = kern.rnn_forward(P, state0[0], cell_params[1], nonlinearity, negative_slope=slope,
                              lengths=lengths)
        return types.SimpleNamespace(hs=hs, last=(hs[-1],))

    def backward(self, kern: Any, record: types.SimpleNamespace, dh_out: np.ndarray,
                 cell_params: tuple, lengths: Optional[np.ndarray], activation: tuple,
                 window: Any = None, carry: Optional[np.ndarray] = None) -> tuple:
        """``(dP, dR, dstate0, grad_norms, extra_grads)``; ``dR = dP`` for this cell."""
        nonlinearity, slope = activation
        Whh = cell_params[1]
        if window is None:
            da, dh0, norms = kern.rnn_backward(dh_out, record.hs, Whh, nonlinearity,
                                               negative_slope=slope, lengths=lengths, carry=carry)
        else:
            da, dh0 = kern.rnn_backward_window(dh_out, record.hs, Whh, window, nonlinearity,
                                               negative_slope=slope, lengths=lengths)
            norms = None
        return da, da, (dh0,), norms, {}


class LSTM(Cell):
    """Long short-term memory: gates ``i, f, g, o``, a cell state ``c`` beside ``h``."""

    name = "lstm"
    gates = 4
    states = ("h", "c")

    def forward(self, kern, P, state0, cell_params, lengths, activation):
        hs, cs, gates = kern.lstm_forward(P, state0[0], state0[1], cell_params[1],
                                          lengths=lengths)
        return types.SimpleNamespace(hs=hs, cs=cs, gates=gates, last=(hs[-1], cs[-1]))

    def backward(self, kern, record, dh_out, cell_params, lengths, activation, window=None,
                 carry=None):
        Whh = cell_params[1]
        if window is None:
            da, dh0, dc0, norms = kern.lstm_backward(dh_out, record.hs, record.cs, record.gates,
                                                     Whh, carry=carry, lengths=lengths)
        else:
            da, dh0, dc0 = kern.lstm_backward_window(dh_out, record.hs, record.cs, record.gates,
                                                     Whh, window, lengths=lengths)
            norms = None
        return da, da, (dh0, dc0), norms, {}


class GRU(Cell):
    """Gated recurrent unit, PyTorch's (linear-before-reset) form: one recurrent product per
    step, its n-part ``R_n + bhn`` scaled by the reset gate."""

    name = "gru"
    gates = 3
    extra_params = ("bhn",)

    def extra_shapes(self, hidden_size):
        return {"bhn": (hidden_size,)}

    def forward(self, kern, P, state0, cell_params, lengths, activation):
        hs, gates, hn = kern.gru_forward(P, state0[0], cell_params[1], cell_params[3],
                                         lengths=lengths)
        return types.SimpleNamespace(hs=hs, gates=gates, hn=hn, last=(hs[-1],))

    def backward(self, kern, record, dh_out, cell_params, lengths, activation, window=None,
                 carry=None):
        Whh = cell_params[1]
        if window is None:
            dP, dR, dh0, norms = kern.gru_backward(dh_out, record.hs, record.gates, record.hn,
                                                   Whh, carry=carry, lengths=lengths)
        else:
            dP, dR, dh0 = kern.gru_backward_window(dh_out, record.hs, record.gates, record.hn,
                                                   Whh, window, lengths=lengths)
            norms = None
        H = dh_out.shape[-1]
        # dbhn = the n-part of dR summed over steps and sequences (bhn sits inside R_n + bhn)
        dbhn = dR[..., 2 * H:].reshape(-1, H).sum(axis=0)
        return dP, dR, (dh0,), norms, {"bhn": dbhn}


BY_NAME: dict[str, Cell] = {"elman": Elman(), "lstm": LSTM(), "gru": GRU()}


def get(name: str) -> Cell:
    """The cell called ``name`` (one of ``CELLS``)."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {name!r}") from None
