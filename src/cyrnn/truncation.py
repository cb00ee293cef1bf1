"""Truncated backpropagation through time, every flavour, as specifications for
``RNN.loss_and_grad(..., truncate=...)``.

All of them reduce to the two mechanisms of the kernels (see ``cyrnn.kernels``):

- a per-step **carry scale** ``c_t`` on the gradient that step ``t`` passes back into the state
  before it (``rnn_backward(..., carry=c)``): 0 cuts the graph there, ``xi_t / p`` keeps the
  gradient unbiased in expectation;
- a per-output **look-back window** ``k_t``: the error of the output at step ``t`` reaches the
  pre-activations of steps ``t - k_t + 1 .. t`` only (``rnn_backward_window``).

A worked example, the scalar recurrence ``x_t = w x_{t-1}`` with ``x_0 = 0.9`` and ``w = 0.2``.
Full BPTT sums one term per step back: ``dx_t/dw = sum_{j<t} w^j x_{t-1-j}``, so
``dx_1/dw = 0.9``, ``dx_2/dw = x_1 + w x_0 = 0.18 + 0.18 = 0.36`` and
``dx_3/dw = x_2 + w x_1 + w^2 x_0 = 0.036 + 0.036 + 0.036 = 0.108``. A look-back of ``k`` keeps
the first ``k`` terms (``k = 1``: 0.9, 0.18, 0.036; ``k = 2``: 0.9, 0.36, 0.072);
``TBPTT(2, 2)`` cuts at the chunk start, step 3: 0.9, 0.36, 0.036.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from . import _checks
from ._typing import FloatArray, IntArray, Seed


class TBPTT:
    """Williams & Peng's truncated BPTT(k1, k2): every ``k1`` steps, backpropagate ``k2`` steps.

    Within one call of ``T`` steps the outputs fall into blocks of ``k1`` steps starting at step
    0; the error of an output in the block ending at step ``e`` flows back to step
    ``e - k2 + 1``, so the output at step ``t`` looks back ``k2 - (e - t)`` steps. Choose ``T``
    a multiple of ``k1``: a short last block is windowed as if it ran to its full length, which
    keeps ``TBPTT(k, k)`` exactly chunked truncation. Windows that
    reach past step 0 end in ``h0`` (its gradient is ``grads["h0"]``: the state carried from the
    previous call).

    - ``TBPTT(k, k)`` is chunked truncation (min-char-rnn, d2l's sequential partitioning): the
      gradient stops at every chunk start. It runs as a carry scale, 0 at chunk starts.
    - ``TBPTT(1, k)`` is the per-output look-back window, the same as ``truncate=k``.
    - Otherwise, per-output windows.

    Parameters
    ----------
    k1 : int >= 1
        Steps between updates (the block length).
    k2 : int >= k1, optional
        Steps to backpropagate from each block's end; defaults to ``k1``.
    """

    k1: int
    k2: int

    def __init__(self, k1: int, k2: Optional[int] = None) -> None:
        self.k1 = _checks.positive_int("k1", k1)
        self.k2 = self.k1 if k2 is None else _checks.positive_int("k2", k2)
        if self.k2 < self.k1:
            raise ValueError(f"k2: expected k2 >= k1 = {self.k1}, got {self.k2}")

    def __repr__(self) -> str:
        return f"TBPTT(k1={self.k1}, k2={self.k2})"

    def windows(self, T: int) -> IntArray:
        """Look-back of each output, (T,) ints: ``k2 - (e - t)`` with ``e`` the end of t's block."""
        t = np.arange(T)
        block_end = (t // self.k1) * self.k1 + self.k1 - 1
        return self.k2 - (block_end - t)

    def carry(self, T: int) -> FloatArray:
        """Carry scale (T,) for ``k1 == k2``: 0 at the start of every chunk, 1 elsewhere."""
        if self.k1 != self.k2:
            raise ValueError("carry: only TBPTT(k, k) is a carry scale; use windows()")
        return (np.arange(T) % self.k1 != 0).astype(np.float64)


class RandomizedTruncation:
    """Randomized truncation (Tallec & Ollivier 2017; d2l, "Backpropagation Through Time").

    At every step the gradient flows on into the earlier state with probability ``p``, scaled
    by ``1 / p``, and stops otherwise: ``c_t = xi_t / p`` with ``xi_t ~ Bernoulli(p)``. Products
    of independent carries have expectation 1, so the gradient is unbiased: its mean over many
    draws is full BPTT. Fewer long paths are followed, at the price of variance.

    Parameters
    ----------
    p : float in (0, 1]
        Probability of carrying the gradient across a step; 1 is full BPTT.
    seed : int or numpy.random.Generator, optional
        Source of the draws; the object keeps its own generator (no global state).
    """

    p: float
    rng: np.random.Generator

    def __init__(self, p: float, seed: Seed = None) -> None:
        p = float(p)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p: expected a probability in (0, 1], got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"RandomizedTruncation(p={self.p})"

    def carry(self, T: int) -> FloatArray:
        """Draw a fresh carry scale (T,): ``xi_t / p``."""
        return (self.rng.random(T) < self.p) / self.p


#: What ``truncate=`` accepts: full BPTT (None), a look-back, or one of the classes above.
Truncate = Union[int, TBPTT, RandomizedTruncation, None]


def resolve(truncate: Truncate,
            T: int) -> tuple[Union[int, IntArray, None], Optional[FloatArray]]:
    """``truncate`` as the kernels' arguments: ``(window, carry)``, at most one not None.

    ``None``: full BPTT. An int ``k``: a look-back of ``k`` for every output. A ``TBPTT`` or a
    ``RandomizedTruncation``: as documented there.
    """
    if truncate is None:
        return None, None
    if isinstance(truncate, TBPTT):
        if truncate.k1 == truncate.k2:
            return None, truncate.carry(T)
        return truncate.windows(T), None
    if isinstance(truncate, RandomizedTruncation):
        return None, truncate.carry(T)
    if isinstance(truncate, (int, np.integer)) and not isinstance(truncate, (bool, np.bool_)):
        return _checks.positive_int("truncate", truncate), None
    raise TypeError(
        f"truncate: expected None, an int >= 1, a TBPTT or a RandomizedTruncation, got {truncate!r}"
    )
