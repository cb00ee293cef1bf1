"""First-order optimizers and learning-rate schedules for a dict of NumPy parameter arrays.

An optimizer holds a reference to ``params`` (for example ``model.params``) and updates its arrays
in place, never replacing them, in the arrays' own dtype (float32 stays float32)::

    opt = Adam(model.params, lr=1e-3, schedule=CosineLR(total_steps=1000))
    loss, grads, h_last = model.loss_and_grad(x, target)
    opt.step(grads)        # reads grads[name] for every name of params; "h0"/"x" are ignored

Update rules (``g`` the gradient, ``p`` the parameter, ``lr`` the scheduled learning rate, ``wd``
the weight decay; all operations elementwise). Except for AdamW, weight decay is an L2 penalty
added to the gradient first: ``g <- g + wd * p``.

SGD (PyTorch's rule)::

    b <- g                                   on the first update
    b <- momentum * b + (1 - dampening) * g  afterwards
    g <- g + momentum * b  (nesterov)   or   g <- b  (otherwise)          (only if momentum > 0)
    p <- p - lr * g

Adagrad (min-char-rnn's rule: ``eps`` inside the square root)::

    s <- s + g * g                         (s starts at initial_accumulator)
    p <- p - lr * g / sqrt(s + eps)

RMSprop (PyTorch's rule, not centered)::

    v <- alpha * v + (1 - alpha) * g * g
    u <- g / (sqrt(v) + eps)
    b <- momentum * b + u,  p <- p - lr * b  (momentum > 0)   or   p <- p - lr * u

Adam (PyTorch's rule; ``t`` counts updates from 1) and AdamW (``p <- p - lr * wd * p`` first,
no L2 term)::

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g * g
    p <- p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

Schedules are callables ``schedule(step) -> factor``: the update number ``k`` (from 0 for the
first update) uses ``lr = base_lr * schedule(k)``.

Every update is checked first: all gradients must be present, of the parameter's shape and finite,
otherwise nothing is updated. The arithmetic runs in place in preallocated work arrays of the
parameter dtype, so a step allocates no array the size of a parameter. A gradient is finite when
its values are finite in the parameter dtype: a float64 gradient of 1e300 is refused for float32
parameters, where it would become inf.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from ._typing import FloatArray

__all__ = [
    "Optimizer",
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "StepLR",
    "ExponentialLR",
    "CosineLR",
    "OPTIMIZERS",
    "make_optimizer",
]


# -------------------------------------------------------------------------------------------
# argument checks
# -------------------------------------------------------------------------------------------


def _number(name, value, *, low=None, low_open=False, high=None, high_open=False):
    """Return ``value`` as a finite Python float within the given bounds, or raise naming it.

    A Python float (rather than a NumPy float64 scalar) keeps float32 arithmetic in float32.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    x = float(value)
    ok = math.isfinite(x)
    if low is not None:
        ok = ok and (x > low if low_open else x >= low)
    if high is not None:
        ok = ok and (x < high if high_open else x <= high)
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        detail = f" {' and '.join(bounds)}" if bounds else ""
        raise ValueError(f"{name}: expected a finite number{detail}, got {value!r}")
    return x


def _integer(name, value, *, low):
    """Return ``value`` as a Python int ``>= low``, or raise naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _finite_in(g, dtype):
    """Whether every value of ``g`` is finite once cast to ``dtype`` (the cast the update makes:
    a finite float64 1e300 is inf in float32). NaN propagates through min and max and infinities
    sit at the ends, so the two extremes decide, without an array the size of ``g``."""
    if g.dtype.kind not in "fiu" or g.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.array([g.min(), g.max()]).astype(dtype)
    return bool(np.isfinite(ends).all())


def _describe(a):
    """Shape and dtype of an array, or the type of anything else, for messages."""
    if isinstance(a, np.ndarray):
        return f"shape {a.shape} and dtype {a.dtype}"
    return f"a {type(a).__name__}"


def _check_params(params):
    """Validate the parameter dict: a non-empty mapping of names to writeable float arrays."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of numpy arrays, got {type(params).__name__}")
    if not params:
        raise ValueError("params: expected at least one parameter, got an empty dict")
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params: expected string keys, got {name!r}")
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{name!r}]: expected a numpy.ndarray, got {type(p).__name__}")
        if p.dtype.kind != "f":
            raise TypeError(f"params[{name!r}]: expected a floating dtype, got {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}]: the array is read-only; it is updated in place")


# -------------------------------------------------------------------------------------------
# schedules
# -------------------------------------------------------------------------------------------


class _Schedule:
    """Base of the schedules: ``schedule(step) -> factor`` with ``step >= 0`` an integer."""

    def __call__(self, step: int) -> float:
        return self._factor(_integer("step", step, low=0))

    def _factor(self, step):
        raise NotImplementedError


#: ``schedule(step) -> factor``, e.g. ``StepLR``, ``ExponentialLR``, ``CosineLR``.
Schedule = Callable[[int], float]


class StepLR(_Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` updates.

    ``factor(step) = gamma ** (step // step_size)``.

    Parameters
    ----------
    step_size : int
        Updates per stage, ``>= 1``.
    gamma : float
        Factor per stage, finite and ``> 0``.
    """

    step_size: int
    gamma: float

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _integer("step_size", step_size, low=1)
        self.gamma = _number("gamma", gamma, low=0.0, low_open=True)

    def _factor(self, step):
        return self.gamma ** (step // self.step_size)

    def __repr__(self):
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma!r})"


class ExponentialLR(_Schedule):
    """Multiply the learning rate by ``gamma`` every update: ``factor(step) = gamma ** step``.

    Parameters
    ----------
    gamma : float
        Factor per update, finite and ``> 0``.
    """

    gamma: float

    def __init__(self, gamma: float) -> None:
        self.gamma = _number("gamma", gamma, low=0.0, low_open=True)

    def _factor(self, step):
        return self.gamma**step

    def __repr__(self):
        return f"ExponentialLR(gamma={self.gamma!r})"


class CosineLR(_Schedule):
    """Cosine decay from 1 to ``min_factor`` over ``total_steps`` updates, then constant.

    ``factor(step) = min_factor + (1 - min_factor) * (1 + cos(pi * step / total_steps)) / 2`` for
    ``step < total_steps`` and ``min_factor`` afterwards (so ``factor(0) = 1`` and
    ``factor(total_steps) = min_factor``). Unlike PyTorch's ``CosineAnnealingLR`` it does not
    rise again after ``total_steps``.

    Parameters
    ----------
    total_steps : int
        Length of the decay, ``>= 1``.
    min_factor : float
        Final factor, in ``[0, 1]``.
    """

    total_steps: int
    min_factor: float

    def __init__(self, total_steps: int, min_factor: float = 0.0) -> None:
        self.total_steps = _integer("total_steps", total_steps, low=1)
        self.min_factor = _number("min_factor", min_factor, low=0.0, high=1.0)

    def _factor(self, step):
        if step >= self.total_steps:
            return self.min_factor
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return self.min_factor + (1.0 - self.min_factor) * cosine

    def __repr__(self):
        return f"CosineLR(total_steps={self.total_steps}, min_factor={self.min_factor!r})"


# -------------------------------------------------------------------------------------------
# optimizers
# -------------------------------------------------------------------------------------------


class Optimizer:
    """Base class: holds the parameters, the step count, the schedule and per-parameter buffers.

    Subclasses define ``_buffer_init`` (buffer name -> initial value), ``_update`` (one
    parameter's update) and ``_config`` (hyperparameters as passed to the constructor).

    Parameters
    ----------
    params : dict of str to ndarray
        The parameters, e.g. ``model.params``; float32 or float64 arrays, writeable. The
        optimizer keeps a reference to this dict and updates its arrays in place. The names are
        fixed at construction, as are the shapes and dtypes.
    lr : float
        Base learning rate, finite and ``> 0``.
    weight_decay : float
        Finite, ``>= 0``. L2 penalty added to the gradient (``g + weight_decay * p``), except in
        ``AdamW`` where it is decoupled.
    schedule : callable or None
        ``schedule(step) -> factor`` (e.g. ``StepLR``, ``ExponentialLR``, ``CosineLR``);
        update number ``k`` (from 0) uses ``lr * schedule(k)``. Not part of ``state_dict``: pass
        it again to the new optimizer when restoring.

    Attributes
    ----------
    params : dict of ndarray
        The parameter dict passed in (same object).
    base_lr : float
        The learning rate before the schedule.
    weight_decay : float
    schedule : callable or None
    """

    #: Weight decay is decoupled from the gradient (AdamW) rather than an L2 term.
    _decoupled_weight_decay = False

    params: Mapping[str, FloatArray]
    base_lr: float
    weight_decay: float
    schedule: Optional[Schedule]

    def __init__(self, params: Mapping[str, FloatArray], lr: float, *, weight_decay: float = 0.0,
                 schedule: Optional[Schedule] = None) -> None:
        _check_params(params)
        if schedule is not None and not callable(schedule):
            raise TypeError(
                f"schedule: expected a callable step -> factor or None, got {schedule!r}"
            )
        self.params = params
        self.base_lr = _number("lr", lr, low=0.0, low_open=True)
        self.weight_decay = _number("weight_decay", weight_decay, low=0.0)
        self.schedule = schedule
        self._steps = 0
        self._names = tuple(params)
        self._shapes = {name: p.shape for name, p in params.items()}
        self._dtypes = {name: p.dtype for name, p in params.items()}
        # per-parameter state: buffer name -> parameter name -> array (parameter dtype)
        self._buffers = {
            buffer: {name: np.full_like(p, value) for name, p in params.items()}
            for buffer, value in self._buffer_init().items()
        }
        # work memory: per dtype two flat arrays as long as the largest parameter
        sizes = {}
        for p in params.values():
            sizes[p.dtype] = max(sizes.get(p.dtype, 0), p.size)
        self._work = {dtype: np.empty((2, size), dtype) for dtype, size in sizes.items()}

    # --- to define in subclasses -----------------------------------------------------------

    def _buffer_init(self):
        """Names of the per-parameter buffers and their initial values."""
        return {}

    def _config(self):
        """Hyperparameters (JSON-serializable) such that ``type(self)(params, **config)``
        reconstructs this optimizer (without its schedule)."""
        return {"lr": self.base_lr, "weight_decay": self.weight_decay}

    def _update(self, name, p, g, lr, work):
        """Update ``p`` in place from the effective gradient ``g`` (never written to).

        ``work`` is a scratch array of ``p``'s shape and dtype, free to overwrite; it is
        distinct from ``g``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define an update rule")

    # --- public API ------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Number of updates made so far (restored by ``load_state_dict``)."""
        return self._steps

    @property
    def lr(self) -> float:
        """Learning rate of the next update: ``base_lr * schedule(steps)``."""
        if self.schedule is None:
            return self.base_lr
        factor = self.schedule(self._steps)
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise TypeError(
                f"schedule: expected a number at step {self._steps}, got {factor!r}"
            ) from None
        if not (math.isfinite(factor) and factor >= 0.0):
            raise ValueError(
                f"schedule: expected a finite factor >= 0 at step {self._steps}, got {factor!r}"
            )
        return self.base_lr * factor

    def step(self, grads: Mapping[str, npt.ArrayLike]) -> None:
        """Update every parameter in place from its gradient.

        Parameters
        ----------
        grads : dict of str to ndarray
            ``grads[name]`` for every name of ``params``, of the parameter's shape (any real
            dtype; values are cast to the parameter dtype). Other keys (e.g. the input gradients
            ``"h0"`` and ``"x"`` of ``RNN.loss_and_grad``) are ignored. Not modified.

        Raises
        ------
        KeyError
            A parameter has no gradient.
        ValueError
            A gradient has the wrong shape, or a parameter array changed shape or dtype.
        FloatingPointError
            A gradient holds nan or inf. All gradients are checked before any update, so no
            parameter, buffer or the step count has changed.
        """
        items = self._checked(grads)
        lr = self.lr
        for name, p, g in items:
            work = self._work[p.dtype]
            w0 = work[0, : p.size].reshape(p.shape)
            w1 = work[1, : p.size].reshape(p.shape)
            g = self._effective_grad(p, g, w0, w1)
            if self._decoupled_weight_decay and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            self._update(name, p, g, lr, w1)
        self._steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, to save and restore with ``load_state_dict``.

        Returns
        -------
        dict
            ``{"type": class name, "config": hyperparameters (JSON-serializable), "steps": int,
            "buffers": {"<buffer>/<param>": ndarray copy}}``, e.g. ``"exp_avg/Whh"``. The
            buffers can go in an ``.npz`` and the rest in JSON. The schedule is not included.
        """
        return {
            "type": type(self).__name__,
            "config": self._config(),
            "steps": self._steps,
            "buffers": {
                f"{buffer}/{name}": arr.copy()
                for buffer, arrays in self._buffers.items()
                for name, arr in arrays.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state made by ``state_dict`` (possibly through JSON and ``np.savez``).

        The hyperparameters of ``state["config"]``, the step count and the buffers replace this
        optimizer's; the parameters and the schedule are kept. Continuing then gives exactly the
        same updates as the optimizer that made the state. Nothing is changed if the state is
        rejected.

        Parameters
        ----------
        state : dict
            ``type``, ``config``, ``steps``, ``buffers`` as returned by ``state_dict``; the
            buffers may be any mapping of names to arrays (e.g. an ``NpzFile``), whose values are
            cast to the parameter dtype.

        Raises
        ------
        ValueError
            Wrong type, bad config or step count, missing or unexpected buffers, a buffer of the
            wrong shape.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        expected = {"type", "config", "steps", "buffers"}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
            raise ValueError(
                f"state: expected keys {sorted(expected)}; missing {missing}, unexpected {extra}"
            )
        kind = type(self).__name__
        if state["type"] != kind:
            raise ValueError(f"state['type']: expected {kind!r}, got {state['type']!r}")
        config = state["config"]
        if not isinstance(config, Mapping):
            raise ValueError(f"state['config']: expected a dict, got {type(config).__name__}")
        try:
            steps = _integer("state['steps']", state["steps"], low=0)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        # Validate the config by building a fresh optimizer from it on the same parameters; it
        # also tells which buffers the config implies (e.g. SGD without momentum has none).
        try:
            fresh = type(self)(self.params, schedule=self.schedule, **config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"state['config']: {exc}") from None
        buffers = state["buffers"]
        if not isinstance(buffers, Mapping):
            raise ValueError(
                f"state['buffers']: expected a dict of arrays, got {type(buffers).__name__}"
            )
        wanted = {
            f"{buffer}/{name}": arr
            for buffer, arrays in fresh._buffers.items()
            for name, arr in arrays.items()
        }
        missing = sorted(set(wanted) - set(buffers))
        extra = sorted(set(buffers) - set(wanted), key=str)
        if missing or extra:
            raise ValueError(f"state['buffers']: missing {missing}, unexpected {extra}")
        for key, target in wanted.items():
            value = np.asarray(buffers[key])
            if value.dtype.kind != "f":
                raise ValueError(
                    f"state['buffers'][{key!r}]: expected floats, got dtype {value.dtype}"
                )
            if value.shape != target.shape:
                raise ValueError(
                    f"state['buffers'][{key!r}]: expected shape {target.shape}, got {value.shape}"
                )
            np.copyto(target, value, casting="same_kind")
        fresh._steps = steps
        self.__dict__.update(fresh.__dict__)

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        schedule = f", schedule={self.schedule!r}" if self.schedule is not None else ""
        return f"{type(self).__name__}({config}{schedule})"

    # --- internals ------------------------------------------------------------------------

    def _checked(self, grads):
        """Check every gradient (presence, shape, dtype, finiteness) before any update."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
        items = []
        for name in self._names:
            if name not in self.params:
                raise KeyError(f"params: parameter {name!r} was removed from the dict")
            p = self.params[name]
            shape, dtype = self._shapes[name], self._dtypes[name]
            if not isinstance(p, np.ndarray) or p.shape != shape or p.dtype != dtype:
                raise ValueError(
                    f"params[{name!r}]: expected an array of shape {shape} and dtype {dtype} as "
                    f"at construction, got {_describe(p)}"
                )
            if name not in grads:
                raise KeyError(f"grads: no gradient for parameter {name!r}")
            g = np.asarray(grads[name])
            if g.dtype.kind not in "fiu":
                raise TypeError(f"grads[{name!r}]: expected real numbers, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{name!r}]: expected shape {p.shape} like the parameter, got {g.shape}"
                )
            items.append((name, p, g))
        for name, p, g in items:
            if not _finite_in(g, p.dtype):
                raise FloatingPointError(
                    f"grads[{name!r}]: non-finite values in {p.dtype} (nan, inf, or too large "
                    f"for the parameter dtype); no parameter was updated"
                )
        return items

    def _effective_grad(self, p, g, w0, w1):
        """``g`` in ``p``'s dtype plus the L2 term, in ``w0`` if anything must be computed."""
        l2 = 0.0 if self._decoupled_weight_decay else self.weight_decay
        if g.dtype != p.dtype:
            np.copyto(w0, g, casting="unsafe")  # checked real and same shape; ints -> floats
            g = w0
        if l2:
            np.multiply(p, l2, out=w1)
            np.add(g, w1, out=w0)
            g = w0
        return g


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's rule.

    ``g <- g + weight_decay * p``; with ``momentum > 0`` the buffer is ``b <- g`` on the first
    update and ``b <- momentum * b + (1 - dampening) * g`` afterwards, and the step direction is
    ``g + momentum * b`` (Nesterov) or ``b``; then ``p <- p - lr * direction``.

    Parameters
    ----------
    params : dict of str to ndarray
        Updated in place, see ``Optimizer``.
    lr : float
        Finite, ``> 0``.
    momentum : float
        In ``[0, 1)``.
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float
        L2 penalty, ``>= 0``.
    dampening : float
        In ``[0, 1]``.
    schedule : callable or None
        See ``Optimizer``.

    Notes
    -----
    Buffer (with ``momentum > 0``): ``momentum_buffer`` (parameter shape).
    """

    momentum: float
    dampening: float
    nesterov: bool

    def __init__(self, params: Mapping[str, FloatArray], lr: float, *, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0,
                 schedule: Optional[Schedule] = None) -> None:
        self.momentum = _number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.dampening = _number("dampening", dampening, low=0.0, high=1.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov: expected a bool, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError(
                f"nesterov: needs momentum > 0 and dampening == 0, got momentum={momentum!r}, "
                f"dampening={dampening!r}"
            )
        super().__init__(params, lr, weight_decay=weight_decay, schedule=schedule)

    def _buffer_init(self):
        return {"momentum_buffer": 0.0} if self.momentum else {}

    def _config(self):
        return {
            "lr": self.base_lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "dampening": self.dampening,
        }

    def _update(self, name, p, g, lr, work):
        if self.momentum:
            buf = self._buffers["momentum_buffer"][name]
            if self._steps == 0:
                np.copyto(buf, g)
            else:
                buf *= self.momentum
                if self.dampening:
                    np.multiply(g, 1.0 - self.dampening, out=work)
                    buf += work
                else:
                    buf += g
            if self.nesterov:
                np.multiply(buf, self.momentum, out=work)
                work += g
                direction = work
            else:
                direction = buf
        else:
            direction = g
        np.multiply(direction, lr, out=work)
        p -= work


class Adagrad(Optimizer):
    """Adagrad as in min-char-rnn: ``s <- s + g*g; p <- p - lr * g / sqrt(s + eps)``.

    Note that ``eps`` is INSIDE the square root, as in Karpathy's min-char-rnn, whereas PyTorch's
    ``torch.optim.Adagrad`` uses ``g / (sqrt(s) + eps)``. (This rule equals PyTorch's with
    ``eps=0`` and ``initial_accumulator_value = initial_accumulator + eps``.) Weight decay is an
    L2 term ``g <- g + weight_decay * p`` applied first.

    Parameters
    ----------
    params : dict of str to ndarray
        Updated in place, see ``Optimizer``.
    lr : float
        Finite, ``> 0``.
    eps : float
        ``>= 0``; may be 0 only if ``initial_accumulator > 0`` (else a zero gradient gives 0/0).
    initial_accumulator : float
        Initial value of the sum of squares ``s``, ``>= 0``.
    weight_decay : float
        L2 penalty, ``>= 0``.
    schedule : callable or None
        See ``Optimizer``.

    Notes
    -----
    Buffer: ``sum`` (parameter shape).
    """

    eps: float
    initial_accumulator: float

    def __init__(self, params: Mapping[str, FloatArray], lr: float = 0.01, *, eps: float = 1e-8,
                 initial_accumulator: float = 0.0, weight_decay: float = 0.0,
                 schedule: Optional[Schedule] = None) -> None:
        self.eps = _number("eps", eps, low=0.0)
        self.initial_accumulator = _number("initial_accumulator", initial_accumulator, low=0.0)
        if self.eps == 0.0 and self.initial_accumulator == 0.0:
            raise ValueError("eps: expected a number > 0 when initial_accumulator is 0, got 0")
        super().__init__(params, lr, weight_decay=weight_decay, schedule=schedule)

    def _buffer_init(self):
        return {"sum": self.initial_accumulator}

    def _config(self):
        return {
            "lr": self.base_lr,
            "eps": self.eps,
            "initial_accumulator": self.initial_accumulator,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, p, g, lr, work):
        total = self._buffers["sum"][name]
        np.multiply(g, g, out=work)
        total += work
        np.add(total, self.eps, out=work)
        np.sqrt(work, out=work)
        np.divide(g, work, out=work)
        work *= lr
        p -= work


class RMSprop(Optimizer):
    """RMSprop, PyTorch's (non-centered) rule.

    ``v <- alpha * v + (1 - alpha) * g*g``, ``u = g / (sqrt(v) + eps)``; with momentum
    ``b <- momentum * b + u`` and ``p <- p - lr * b``, else ``p <- p - lr * u``. Weight decay is
    an L2 term ``g <- g + weight_decay * p`` applied first.

    Parameters
    ----------
    params : dict of str to ndarray
        Updated in place, see ``Optimizer``.
    lr : float
        Finite, ``> 0``.
    alpha : float
        Smoothing constant, in ``[0, 1)``.
    eps : float
        ``>= 0``, added outside the square root.
    momentum : float
        In ``[0, 1)``.
    weight_decay : float
        L2 penalty, ``>= 0``.
    schedule : callable or None
        See ``Optimizer``.

    Notes
    -----
    Buffers: ``square_avg`` and, with ``momentum > 0``, ``momentum_buffer``.
    """

    alpha: float
    eps: float
    momentum: float

    def __init__(self, params: Mapping[str, FloatArray], lr: float = 0.01, *, alpha: float = 0.99,
                 eps: float = 1e-8, momentum: float = 0.0, weight_decay: float = 0.0,
                 schedule: Optional[Schedule] = None) -> None:
        self.alpha = _number("alpha", alpha, low=0.0, high=1.0, high_open=True)
        self.eps = _number("eps", eps, low=0.0)
        self.momentum = _number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        super().__init__(params, lr, weight_decay=weight_decay, schedule=schedule)

    def _buffer_init(self):
        init = {"square_avg": 0.0}
        if self.momentum:
            init["momentum_buffer"] = 0.0
        return init

    def _config(self):
        return {
            "lr": self.base_lr,
            "alpha": self.alpha,
            "eps": self.eps,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, p, g, lr, work):
        square_avg = self._buffers["square_avg"][name]
        square_avg *= self.alpha
        np.multiply(g, g, out=work)
        work *= 1.0 - self.alpha
        square_avg += work
        np.sqrt(square_avg, out=work)
        work += self.eps
        np.divide(g, work, out=work)
        if self.momentum:
            buf = self._buffers["momentum_buffer"][name]
            buf *= self.momentum
            buf += work
            np.multiply(buf, lr, out=work)
        else:
            work *= lr
        p -= work


class Adam(Optimizer):
    """Adam with bias correction, PyTorch's rule; weight decay is an L2 term on the gradient.

    With ``t`` the update number from 1 and ``g <- g + weight_decay * p``::

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g*g
        p <- p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : dict of str to ndarray
        Updated in place, see ``Optimizer``.
    lr : float
        Finite, ``> 0``.
    betas : (float, float)
        Decay rates of the moment estimates, each in ``[0, 1)``.
    eps : float
        ``>= 0``, added outside the square root.
    weight_decay : float
        L2 penalty, ``>= 0``.
    schedule : callable or None
        See ``Optimizer``.

    Notes
    -----
    Buffers: ``exp_avg`` (``m``) and ``exp_avg_sq`` (``v``).
    """

    beta1: float
    beta2: float
    eps: float

    def __init__(self, params: Mapping[str, FloatArray], lr: float = 1e-3, *,
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, schedule: Optional[Schedule] = None) -> None:
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.beta1 = _number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        self.beta2 = _number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        self.eps = _number("eps", eps, low=0.0)
        super().__init__(params, lr, weight_decay=weight_decay, schedule=schedule)

    def _buffer_init(self):
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def _config(self):
        return {
            "lr": self.base_lr,
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, p, g, lr, work):
        t = self._steps + 1
        exp_avg = self._buffers["exp_avg"][name]
        exp_avg_sq = self._buffers["exp_avg_sq"][name]
        exp_avg *= self.beta1
        np.multiply(g, 1.0 - self.beta1, out=work)
        exp_avg += work
        exp_avg_sq *= self.beta2
        np.multiply(g, g, out=work)
        work *= 1.0 - self.beta2
        exp_avg_sq += work
        step_size = lr / (1.0 - self.beta1**t)
        np.sqrt(exp_avg_sq, out=work)
        work /= math.sqrt(1.0 - self.beta2**t)
        work += self.eps
        np.divide(exp_avg, work, out=work)
        work *= step_size
        p -= work


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule.

    Each update first shrinks the parameter, ``p <- p - lr * weight_decay * p`` (with the
    scheduled ``lr``), then takes the Adam step of ``Adam`` with the raw gradient (no L2 term).

    Parameters
    ----------
    params : dict of str to ndarray
        Updated in place, see ``Optimizer``.
    lr : float
        Finite, ``> 0``.
    betas : (float, float)
        Each in ``[0, 1)``.
    eps : float
        ``>= 0``.
    weight_decay : float
        Decoupled decay rate, ``>= 0`` (default 0.01, as PyTorch).
    schedule : callable or None
        See ``Optimizer``.

    Notes
    -----
    Buffers: ``exp_avg`` and ``exp_avg_sq``.
    """

    _decoupled_weight_decay = True

    def __init__(self, params: Mapping[str, FloatArray], lr: float = 1e-3, *,
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, schedule: Optional[Schedule] = None) -> None:
        super().__init__(
            params, lr, betas=betas, eps=eps, weight_decay=weight_decay, schedule=schedule
        )


#: Optimizer classes by the names ``make_optimizer`` accepts.
OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def make_optimizer(name: str, params: Mapping[str, FloatArray], **kwargs: Any) -> Optimizer:
    """Build an optimizer by name.

    Parameters
    ----------
    name : {"sgd", "adagrad", "rmsprop", "adam", "adamw"}
        Case-insensitive.
    params : dict of str to ndarray
        The parameters to update in place.
    **kwargs
        The class's hyperparameters (``lr``, ``schedule``, ...).

    Returns
    -------
    Optimizer

    Examples
    --------
    Rebuild an optimizer from a saved state::

        opt = make_optimizer(state["type"], model.params, **state["config"])
        opt.load_state_dict(state)
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {name!r}")
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"name: expected one of {', '.join(OPTIMIZERS)}, got {name!r}") from None
    return cls(params, **kwargs)
