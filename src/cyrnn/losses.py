"""Losses on the output layer's logits ``z`` and their gradients ``dL/dz``.

Every function takes the logits of the ``N`` positions that carry a loss, stacked as ``(N, O)``,
and returns ``(loss, dz)`` with the loss as a Python float (accumulated in float64) and ``dz`` in
the dtype of ``z``. ``reduction="mean"`` follows PyTorch's defaults: cross-entropy averages over
positions, MSE and BCE over elements (positions times outputs); ``"sum"`` sums.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._typing import FloatArray, IntArray, LossName, OutputName, Reduction

LOSSES = ("cross_entropy", "mse", "bce")
REDUCTIONS = ("mean", "sum")
OUTPUTS = ("linear", "softmax", "sigmoid")

# the loss an output function implies when none is named
DEFAULT_LOSS = {"softmax": "cross_entropy", "linear": "mse", "sigmoid": "bce"}

# which output functions each loss accepts; cross_entropy and bce read a linear output as logits
COMPATIBLE_OUTPUTS = {
    "cross_entropy": ("softmax", "linear"),
    "bce": ("sigmoid", "linear"),
    "mse": ("linear", "sigmoid"),
}


def softmax(z: FloatArray) -> FloatArray:
    """Softmax over the last axis, shifted by the maximum for stability."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def sigmoid(z: FloatArray) -> FloatArray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def apply_output(output: OutputName, z: FloatArray) -> FloatArray:
    """The output function g of ``y = g(z)``."""
    if output == "softmax":
        return softmax(z)
    if output == "sigmoid":
        return sigmoid(z)
    return z


def cross_entropy(z: FloatArray, target: IntArray,
                  reduction: Reduction) -> tuple[float, FloatArray]:
    """Softmax cross-entropy with integer class targets ``(N,)``; ``dz = softmax(z) - onehot``."""
    N = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    rows = np.arange(N)
    # -log p[target] = log(sum exp) - z[target], both after the same shift
    loss = float(np.sum(np.log(total[:, 0], dtype=np.float64) - shifted[rows, target]))
    dz = e / total
    dz[rows, target] -= 1
    if reduction == "mean":
        loss /= N
        dz /= N
    return loss, dz


def mse(z: FloatArray, target: FloatArray, reduction: Reduction,
        output: OutputName = "linear") -> tuple[float, FloatArray]:
    """Squared error between ``y = g(z)`` and ``target`` ``(N, O)``."""
    y = apply_output(output, z)
    diff = y - target
    loss = float(np.sum(np.square(diff, dtype=np.float64)))
    dz = 2 * diff
    if output == "sigmoid":
        dz *= y * (1 - y)
    if reduction == "mean":
        loss /= diff.size
        dz /= diff.size
    return loss, dz


def bce(z: FloatArray, target: FloatArray, reduction: Reduction) -> tuple[float, FloatArray]:
    """Binary cross-entropy of ``sigmoid(z)`` against targets in [0, 1], in the stable
    logits form ``max(z, 0) - z t + log(1 + exp(-|z|))``; ``dz = sigmoid(z) - t``."""
    z64 = z.astype(np.float64)
    loss = float(np.sum(np.maximum(z64, 0) - z64 * target + np.log1p(np.exp(-np.abs(z64)))))
    dz = sigmoid(z) - target
    if reduction == "mean":
        loss /= z.size
        dz /= z.size
    return loss, dz


def loss_and_dz(loss: LossName, output: OutputName, z: FloatArray, target: npt.NDArray[Any],
                reduction: Reduction) -> tuple[float, FloatArray]:
    """Dispatch to the named loss; ``z`` (N, O) logits, ``target`` checked by the caller."""
    if loss == "cross_entropy":
        return cross_entropy(z, target, reduction)
    if loss == "mse":
        return mse(z, target, reduction, output)
    return bce(z, target, reduction)
