"""Diagnostics of gradient flow: how ``||dL/dh_t||`` decays or explodes with time.

The compiled backward kernel records the norm of the total gradient reaching every state as it
runs, at no extra cost; these helpers return it for a batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import numpy.typing as npt

from . import _checks
from ._typing import FloatArray, LossName, Reduction, Seed, TargetSteps
from . import stack
from .rnn import RNN
from .truncation import Truncate


def gradient_norms(model: RNN, x: npt.ArrayLike, target: npt.ArrayLike,
                   h0: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None,
                   loss: Optional[LossName] = None, reduction: Reduction = "mean",
                   target_steps: TargetSteps = "all", truncate: Truncate = None) -> FloatArray:
    """Per-step norms ``||dL/dh_t||`` (Frobenius over the batch) of one batch, by full BPTT (or a
    carry-based truncation).

    Arguments as in ``RNN.loss_and_grad``; a look-back window (an int or ``TBPTT(k1, k2)`` with
    ``k1 != k2``) has no per-state total gradient and is refused.

    Returns
    -------
    ndarray (T,)
        ``norms[t]`` for the states after step ``t`` (every layer's and direction's). With ``target_steps="last"`` the loss sits
        at the end only, so ``norms[T - 1 - j]`` shows the gradient ``j`` steps back: a
        geometric decay is the vanishing gradient, a growth the exploding one.
    """
    result = model.backprop(x, target, h0, lengths, loss, reduction, target_steps, truncate)
    if result.grad_norms is None:
        raise ValueError("truncate: a look-back window has no per-step gradient norms; "
                         "use None, TBPTT(k, k) or RandomizedTruncation")
    return result.grad_norms


def gradient_decay(model: RNN, T: int, *, batch_size: int = 16, seed: Seed = None) -> FloatArray:
    """``||dL/dh_t||`` for a loss on the last state only, over random dense inputs of ``T`` steps.

    A loss ``L = sum(h_T * r)`` with a fixed random unit direction ``r`` makes ``dL/dh_T = r``;
    the returned norms, normalised by ``||r||``, are then the norms of ``r^T dh_T/dh_t``: how
    much of a unit error ``T - t`` steps later reaches state ``t``.

    Parameters
    ----------
    model : cyrnn.RNN
    T : int
    batch_size : int
    seed : int, optional

    Returns
    -------
    ndarray (T,)
    """
    T = _checks.positive_int("T", T)
    rng = np.random.default_rng(seed)
    arch = model.architecture
    x = rng.standard_normal((T, batch_size, model.input_size)).astype(model.dtype)
    weights = model.weights()
    h0 = np.zeros((arch.num_states, batch_size, arch.hidden_size), dtype=model.dtype)
    fwd = stack.forward(model.kernels, arch, weights, x, h0)
    r = rng.standard_normal((batch_size, arch.top_size)).astype(model.dtype)
    r /= np.linalg.norm(r)
    # the error on the last layer's states at the last step only (no output layer)
    d_top = np.zeros((T, batch_size, arch.top_size), dtype=model.dtype)
    d_top[-1] = r
    _, norms = stack.backward(model.kernels, dataclasses.replace(arch, output_size=None), weights,
                              fwd, d_top)
    assert norms is not None  # full BPTT, no lengths: every step has its norm
    return norms
