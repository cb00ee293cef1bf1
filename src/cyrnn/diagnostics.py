"""Diagnostics of gradients: how ``||dL/dh_t||`` decays or explodes with time, and whether the
gradients a model computes are right.

The compiled backward kernel records the norm of the total gradient reaching every state as it
runs, at no extra cost; ``gradient_norms`` and ``gradient_decay`` return it for a batch.
``gradient_check`` compares ``loss_and_grad`` with central differences.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from . import _checks, losses, stack, truncation
from ._typing import FloatArray, LossName, Reduction, Seed, TargetSteps
from .rnn import RNN
from .truncation import RandomizedTruncation, Truncate

__all__ = ["gradient_norms", "gradient_decay", "gradient_check"]


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

    For an LSTM the norms are those of the gradient reaching ``h_t`` (its cell state ``c_t``
    carries the gradient too, and is not counted).

    Parameters
    ----------
    model : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
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
    c0 = np.zeros_like(h0) if "c" in arch.cell_type.states else None  # an LSTM's cell state
    fwd = stack.forward(model.kernels, arch, weights, x, h0, c0=c0)
    r = rng.standard_normal((batch_size, arch.top_size)).astype(model.dtype)
    r /= np.linalg.norm(r)
    # the error on the last layer's states at the last step only (no output layer)
    d_top = np.zeros((T, batch_size, arch.top_size), dtype=model.dtype)
    d_top[-1] = r
    _, norms = stack.backward(model.kernels, dataclasses.replace(arch, output_size=None), weights,
                              fwd, d_top)
    assert norms is not None  # full BPTT, no lengths: every step has its norm
    return norms


#: Step of the central differences unless ``eps`` is given.
DEFAULT_EPS = 1e-6
#: What ``gradient_check`` passes on to ``loss_and_grad``.
_CALL_ARGS = ("h0", "lengths", "loss", "reduction", "target_steps", "truncate", "input_grad",
              "dropout_seed")
#: The configuration that comes from the parameters' names and shapes.
_SHAPE_KEYS = ("input_size", "hidden_size", "output_size", "num_layers", "bidirectional")


def gradient_check(model: RNN, x: npt.ArrayLike, target: npt.ArrayLike, *,
                   eps: Optional[float] = None, **loss_and_grad_args: Any) -> dict[str, float]:
    """The worst relative error of each gradient ``model.loss_and_grad`` computes, against
    central differences in float64.

    The check runs on a float64 copy of the model with the same parameters, options and backend
    (``type(model).from_params(model.params, dtype="float64", ...)``), so a float32 model's
    weights are checked without float32 rounding in the differences; ``model`` itself is not
    changed. Each entry ``v`` of each parameter (and of ``h0`` and dense ``x``) is moved to
    ``v + eps`` and ``v - eps`` and the loss ``L`` evaluated: ``n = (L(v + eps) - L(v - eps)) /
    (2 eps)``. This costs two evaluations per entry: use small models and batches.

    What is differentiated is what ``loss_and_grad`` claims to differentiate:

    - full BPTT: the model's loss itself (``copy.loss_and_grad(...)[0]``);
    - a truncation (``truncate=k``, ``TBPTT``, ``RandomizedTruncation``): a truncated gradient is
      not the derivative of the loss but of a *surrogate* with the same value, in which every
      layer-direction's state at step ``t`` is recomputed from its own state ``k_t`` steps
      earlier held fixed at its forward value (a look-back window; the perturbed ``h0`` only
      when the window reaches past step 0), or in which the state entering step ``s`` is
      ``fixed + c_s (h - fixed)`` (a carry scale ``c``; TBPTT(k, k) and randomized
      truncation), in each direction's own processing order; the layers above read these
      states. A ``RandomizedTruncation`` is copied, so that the analytic gradient and the
      surrogate use the same draws (the one passed in is not advanced).
      The states are those of the model's cell (an LSTM's ``h`` and ``c`` alike), stepped by
      the backend's layer kernels (``rnn_forward``, ``lstm_forward``, ``gru_forward``).
    - dropout (a model with ``dropout > 0`` and several layers): pass ``dropout_seed``; every
      evaluation draws its masks from that same seed, so they are fixed.
    - a normalized or regularized recurrence (``norm``, ``recurrent_dropout``, ``zoneout``,
      ``weight_drop``): the training call's function, with batch statistics for
      ``norm="batch"`` (which needs at least 2 sequences) and the masks of ``dropout_seed``;
      without one, the check fixes ``dropout_seed=0`` for a model with recurrent
      regularizers, so every evaluation applies the same masks (the model's generator is not
      used). Truncation is checked for plain recurrences only (full BPTT here).

    Parameters
    ----------
    model : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
    x, target : array-like
        As in ``loss_and_grad`` (dense inputs are cast to float64).
    eps : float, optional
        Step of the differences (default 1e-6).
    **loss_and_grad_args
        ``h0``, ``lengths``, ``loss``, ``reduction``, ``target_steps``, ``truncate``,
        ``input_grad``, ``dropout_seed``: as in ``loss_and_grad``.

    Returns
    -------
    dict of str to float
        For every parameter, then ``"h0"`` (the gradient with respect to the initial states,
        zeros when ``h0`` is not given; for an LSTM also ``"c0"``, its initial cell states,
        ``h0`` then being the pair ``(h0, c0)``) and, for dense inputs unless ``input_grad=False``,
        ``"x"``: ``max |a - n| / max(max |a|, max |n|)`` over the entries, where ``a`` is the
        analytic gradient and ``n`` the central difference (0 when both are zero). The error
        is relative to the largest entry of that gradient rather than entry by entry: entries
        near zero carry the differences' absolute error (about ``1e-16 |L| / eps``), which
        would make an entrywise ratio meaningless there. With the default ``eps``, a correct
        gradient gives about 1e-8 or less for smooth units (``relu`` and ``leaky_relu`` too,
        unless a pre-activation lies within ``eps`` of 0); a gradient wrong by a factor
        ``1 + r`` in some entry of the largest size gives about ``r``.

    Raises
    ------
    ValueError
        A model with dropout between layers and no ``dropout_seed``: each call would draw other
        masks, and the differences would mix them.
    """
    unknown = sorted(set(loss_and_grad_args) - set(_CALL_ARGS))
    if unknown:
        raise TypeError(f"gradient_check: unexpected arguments {unknown}")
    eps = DEFAULT_EPS if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or \
            not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    eps = float(eps)
    args = dict(loss_and_grad_args)
    seed = args.pop("dropout_seed", None)
    truncate = args.pop("truncate", None)
    h0 = args.pop("h0", None)
    if model.dropout > 0 and model.num_layers > 1 and seed is None:
        raise ValueError(
            "dropout_seed: a model with dropout between layers draws new masks at every call; "
            "pass dropout_seed= so that every evaluation of the check uses the same masks")
    arch = model.architecture
    if seed is None and (arch.recurrent_dropout or arch.zoneout or arch.weight_drop):
        seed = 0  # the regularizers' masks: the same in every evaluation
    if truncate is not None and not arch.plain:
        raise ValueError(
            "truncate: gradient_check's truncation surrogate runs the plain cell; a model with "
            "norm, recurrent_dropout, zoneout or weight_drop is checked with full BPTT "
            "(truncate=None)")

    options = {k: v for k, v in model.config().items() if k not in _SHAPE_KEYS}
    options["dtype"] = "float64"
    checked = type(model).from_params(model.params, **options)
    x = np.array(x, copy=True)
    if x.dtype.kind == "f":
        x = x.astype(np.float64)

    def fresh(value):
        # the same draws at every call: a generator or randomized truncation is copied
        if isinstance(value, (np.random.Generator, RandomizedTruncation)):
            return copy.deepcopy(value)
        return value

    _, grads, _ = checked.loss_and_grad(x, target, h0=h0, truncate=fresh(truncate),
                                        dropout_seed=fresh(seed), **args)
    # the initial states (an LSTM's h0 and c0, each perturbed in place): zeros when not given
    names = [f"{state}0" for state in checked.architecture.cell_type.states]
    if h0 is None:
        states = [np.zeros_like(grads[name]) for name in names]
    else:  # the call above checked h0: an array, or an LSTM's pair
        states = [np.array(a, dtype=np.float64) for a in (h0 if len(names) > 1 else (h0,))]
    h0 = states[0] if len(states) == 1 else tuple(states)
    variables = dict(checked.params)  # the live arrays: perturbed in place
    variables.update(zip(names, states))
    if "x" in grads:
        variables["x"] = x

    if truncate is None:
        def loss_value():
            return checked.loss_and_grad(x, target, h0=h0, dropout_seed=fresh(seed),
                                         **{**args, "input_grad": False})[0]
    else:
        loss_value = _surrogate(checked, x, target, h0, fresh(truncate), fresh(seed), args)

    errors = {}
    for name, a in variables.items():
        numeric = np.empty(a.shape)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + eps
            plus = loss_value()
            a[idx] = keep - eps
            minus = loss_value()
            a[idx] = keep
            numeric[idx] = (plus - minus) / (2 * eps)
        errors[name] = _relative_error(grads[name], numeric)
    return errors


def _relative_error(analytic, numeric):
    """``max |a - n| / max(max |a|, max |n|)``; 0 when both are zero."""
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = max(float(np.abs(analytic).max(initial=0)), float(np.abs(numeric).max(initial=0)))
    if scale == 0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / scale)


def _surrogate(model, x, target, h0, truncate, seed, args):
    """The loss a truncated gradient is the derivative of, as a function of the (perturbed in
    place) parameters, ``x`` and ``h0``; see ``gradient_check``."""
    arch = model.architecture
    loss = model.resolve_loss(args.get("loss"))
    reduction = args.get("reduction", "mean")
    target_steps = args.get("target_steps", "all")
    lengths = args.get("lengths")
    def checked_batch():
        return _checks.batch(x, h0, lengths, arch, model.dtype, model.batch_first)

    batch = checked_batch()
    window, carry = truncation.resolve(truncate, batch.T)
    positions = _checks.loss_positions(batch, target_steps)
    width = arch.output_size if arch.output_size is not None else arch.top_size
    selected = _checks.loss_targets(target, loss, model.output, width, batch, target_steps,
                                    positions, model.dtype, model.batch_first)
    masks = model.dropout_masks(batch.T, batch.B, seed)
    kern = model.kernels
    # every layer-direction's states (an LSTM's h and c) at the point of the check, held fixed
    # by the truncation
    cell = arch.cell_type
    fixed = [tuple(getattr(record, f"{state}s") for state in cell.states)
             for record in stack.forward(kern, arch, model.weights(), batch.inputs, batch.h0,
                                         batch.lengths, masks, c0=batch.c0).records]
    expected = model.loss_and_grad(x, target, h0=h0, truncate=None, dropout_seed=seed,
                                   **{**args, "input_grad": False})[0]

    def loss_value():
        b = checked_batch()
        weights = model.weights()
        p, nonlinearity, slope = weights
        reversal = stack.Reversal(b.T, b.B, b.lengths)
        X = b.inputs
        for layer in range(arch.num_layers):
            outputs = []
            for d in range(arch.num_directions):
                j = layer * arch.num_directions + d
                cell_params = tuple(p[name] for name in arch.cell_names(j))
                P = stack._project(X, cell_params[0], cell_params[2])
                if d:
                    P = reversal(P)
                state0 = (b.h0[j],) if b.c0 is None else (b.h0[j], b.c0[j])
                states = _truncated_states(kern, cell, P, state0, cell_params, fixed[j], window,
                                           carry, b.lengths, (nonlinearity, slope))
                outputs.append(reversal(states) if d else states)
            X = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
            if masks is not None and layer < arch.num_layers - 1:
                X = X * masks[layer]
        z = stack.logits(arch, weights, X)
        t_idx, b_idx = positions
        z_sel = z.reshape(-1, z.shape[-1]) if t_idx is None else z[t_idx, b_idx]
        return losses.loss_and_dz(loss, model.output, z_sel, selected, reduction)[0]

    # the surrogate has the loss's value: a check of the surrogate itself
    value = loss_value()
    if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
        raise RuntimeError(f"gradient_check: the truncation surrogate gives {value}, the model "
                           f"{expected}")
    return loss_value


def _truncated_states(kern, cell, P, state0, cell_params, fixed, window, carry, lengths,
                      activation):
    """One layer-direction's output states h (T, B, H), in its processing order, recomputed as
    a truncation sees them: each from the fixed state (every state of the cell: an LSTM's
    ``h`` and ``c``) ``window[t]`` steps earlier, or with each step's entering state
    ``fixed + carry (state - fixed)``; steps run by the cell's layer kernel
    (``cyrnn.cells``)."""
    T = P.shape[0]

    def run(segment, state, valid):
        record = cell.forward(kern, np.ascontiguousarray(segment),
                              tuple(np.ascontiguousarray(s) for s in state), cell_params, valid,
                              activation)
        return record.last

    out = np.empty(P.shape[:2] + state0[0].shape[-1:], dtype=P.dtype)
    if window is not None:
        looks = np.broadcast_to(np.asarray(window), (T,))
        for t in range(T):
            start = t - int(looks[t]) + 1
            first, state = (0, state0) if start < 0 else (start, tuple(f[start] for f in fixed))
            valid = None if lengths is None else np.clip(lengths - first, 0, t + 1 - first)
            out[t] = run(P[first:t + 1], state, valid)[0]
        return out
    state = state0
    for s in range(T):
        entering = state if carry is None else tuple(
            f[s] + carry[s] * (h - f[s]) for f, h in zip(fixed, state))
        valid = None if lengths is None else np.clip(lengths - s, 0, 1)
        state = run(P[s:s + 1], entering, valid)
        out[s] = state[0]
    return out
