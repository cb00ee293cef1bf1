"""Argument checks shared by both kernel backends.

Every kernel, compiled or NumPy, runs these before touching memory, so a bad argument raises the
same Python exception with the same message whichever backend is active. The compiled kernels
drop bounds checks; these checks are what makes that safe.
"""
import numpy as np

NONLINEARITIES = ("tanh", "relu", "sigmoid", "leaky_relu", "identity")

_INT32_MAX = 2**31 - 1  # BLAS (LP64) takes sizes and strides as 32-bit ints


def nonlinearity_code(nonlinearity, negative_slope):
    """Return the index of ``nonlinearity`` in NONLINEARITIES, checking the slope as well (for
    every nonlinearity, so that a bad value is reported even where it is not used)."""
    try:
        code = NONLINEARITIES.index(nonlinearity)
    except ValueError:
        raise ValueError(
            f"nonlinearity: expected one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}"
        ) from None
    try:
        slope = float(negative_slope)
    except (TypeError, ValueError):
        raise TypeError(f"negative_slope: expected a number, got {negative_slope!r}") from None
    if not (np.isfinite(slope) and slope >= 0.0):
        raise ValueError(f"negative_slope: expected a finite number >= 0, got {negative_slope!r}")
    return code


def aligned_array(a, dtype=None):
    """``a`` as a C-contiguous array aligned for its dtype, copied only when it is not already
    one (``np.ascontiguousarray`` keeps a view offset by one byte, which compiled code must not
    read as if aligned)."""
    return np.require(a, dtype, ("C_CONTIGUOUS", "ALIGNED"))


def float_array(name, a, ndim, dtype=None):
    """Return ``a`` as a C-contiguous float32/float64 array of rank ``ndim``.

    A non-contiguous array is copied; the dtype is never changed silently: if ``dtype`` is given
    ``a`` must already have it.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} like the other arrays, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return aligned_array(a)


def id_range(name, ids, n, kind="id"):
    """Raise ValueError naming the first of ``ids`` outside ``[0, n)``:
    ``"{name}: {kind} {bad} out of range [0, {n})"``."""
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)].flat[0]
        raise ValueError(f"{name}: {kind} {bad} out of range [0, {n})")


def expect_shape(name, a, shape):
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


def lengths_array(lengths, T, B):
    """Validate sequence lengths: integers with ``0 <= lengths[b] <= T``, shape (B,)."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: expected values in [0, {T}], got min {arr.min()} max {arr.max()}")
    return aligned_array(arr, dtype=np.intp)


def _check_sizes(T, B, H):
    if T < 1:
        raise ValueError(f"expected at least one time step, got T = {T}")
    if B < 1 or H < 1:
        raise ValueError(f"expected batch and hidden sizes >= 1, got B = {B}, H = {H}")
    if T * B > _INT32_MAX or H > _INT32_MAX:
        raise ValueError(f"sizes too large for 32-bit BLAS: T*B = {T * B}, H = {H}")


def forward_args(xw, h0, Whh, nonlinearity, negative_slope, lengths, out):
    """Checked, contiguous arguments of ``rnn_forward``."""
    code = nonlinearity_code(nonlinearity, negative_slope)
    xw = float_array("xw", xw, 3)
    T, B, H = xw.shape
    _check_sizes(T, B, H)
    h0 = float_array("h0", h0, 2, xw.dtype)
    expect_shape("h0", h0, (B, H))
    Whh = float_array("Whh", Whh, 2, xw.dtype)
    expect_shape("Whh", Whh, (H, H))
    lengths = lengths_array(lengths, T, B)
    if out is None:
        out = np.empty((T + 1, B, H), dtype=xw.dtype)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != xw.dtype:
            raise TypeError(f"out: expected a numpy.ndarray of dtype {xw.dtype}")
        expect_shape("out", out, (T + 1, B, H))
        if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
            raise ValueError("out: expected a writeable, aligned C-contiguous array")
        if any(a is not None and np.shares_memory(out, a) for a in (xw, h0, Whh, lengths)):
            raise ValueError("out: must not overlap the inputs (xw, h0, Whh, lengths)")
    return xw, h0, Whh, code, float(negative_slope), lengths, out


def backward_args(dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths):
    """Checked, contiguous arguments common to ``rnn_backward`` and ``rnn_backward_window``."""
    code = nonlinearity_code(nonlinearity, negative_slope)
    dh_out = float_array("dh_out", dh_out, 3)
    T, B, H = dh_out.shape
    _check_sizes(T, B, H)
    hs = float_array("hs", hs, 3, dh_out.dtype)
    expect_shape("hs", hs, (T + 1, B, H))
    Whh = float_array("Whh", Whh, 2, dh_out.dtype)
    expect_shape("Whh", Whh, (H, H))
    if dh_last is not None:
        dh_last = float_array("dh_last", dh_last, 2, dh_out.dtype)
        expect_shape("dh_last", dh_last, (B, H))
    lengths = lengths_array(lengths, T, B)
    return dh_out, hs, Whh, code, float(negative_slope), dh_last, lengths


def carry_array(carry, T, dtype):
    if carry is None:
        return None
    arr = np.asarray(carry)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"carry: expected real numbers, got dtype {arr.dtype}")
    if arr.shape != (T,):
        raise ValueError(f"carry: expected shape ({T},), got {arr.shape}")
    arr = aligned_array(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        raise ValueError("carry: expected finite values")
    return arr


def int_at_least(name, value, minimum):
    """``value`` as an int >= ``minimum``; TypeError for a non-integer (bool included),
    ValueError below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def positive_int(name, value):
    """``value`` as an int >= 1 (see ``int_at_least``)."""
    return int_at_least(name, value, 1)


def probability(name, value):
    """``value`` as a float in [0, 1) (a dropout rate); TypeError for a non-number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return float(value)


def optional_positive_int(name, value):
    """``None``, or ``value`` as an int >= 1 (see ``positive_int``)."""
    return None if value is None else positive_int(name, value)


def window_sizes(window, T):
    """Look-back of every output: ``(longest, per_output)`` where ``per_output`` is None when
    ``window`` is one int for all, else a C-contiguous intp array (T,) of values >= 1.

    A look-back of ``T + 1`` steps or more is full BPTT (every output reaches ``h0``), so larger
    values are taken as ``T + 1``: any size of integer, up to ``2**64 - 1`` in a uint64 array,
    gives that one result."""
    if isinstance(window, (int, np.integer)) and not isinstance(window, (bool, np.bool_)):
        return min(positive_int("window", window), T + 1), None
    if not isinstance(window, (list, tuple, np.ndarray)):
        raise TypeError(f"window: expected an int >= 1 or an array of them (T,), got {window!r}")
    arr = np.asarray(window)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"window: expected integers, got dtype {arr.dtype}")
    if arr.shape != (T,):
        raise ValueError(f"window: expected an int or shape ({T},), got shape {arr.shape}")
    if arr.min() < 1:
        raise ValueError(f"window: expected values >= 1, got {arr.min()}")
    sizes = np.full(T, T + 1, dtype=np.intp)
    inside = arr <= T + 1  # compared in the caller's integer type: no value wraps
    sizes[inside] = arr[inside]
    return int(sizes.max()), sizes


def finite_array(name, a, dtype):
    """``a`` as a C-contiguous array of ``dtype``, rejecting NaN and Inf, including values that
    only overflow on the conversion (1e300 into float32)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
        out = a  # already in shape: no conversion, so nothing can overflow (the common case)
    else:
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
        with np.errstate(over="ignore"):
            out = aligned_array(a, dtype=dtype)
    # float32: a NaN or Inf anywhere makes the sum NaN or Inf, and summed in float64 it cannot
    # overflow (nor warn), so a finite sum clears the array without the elementwise test's mask
    if out.dtype == np.float32:
        finite = np.isfinite(np.add.reduce(out, axis=None, dtype=np.float64))
    else:
        finite = np.isfinite(out).all()
    if not finite:
        too_big = np.isfinite(a).all() if a.dtype.kind == "f" else True
        detail = f"values too large for {np.dtype(dtype)}" if too_big else "NaN or Inf"
        raise ValueError(f"{name}: contains {detail}")
    return out


def window_error(dh_out, dh_last, lengths):
    """The error that ``rnn_backward_window`` propagates, and the part of ``dh0`` it bypasses.

    ``dh_last`` joins the error of each sequence's last valid step; a sequence of length 0 hands
    it straight to ``dh0``. Returns ``(error, dh0)``; ``error`` is ``dh_out`` itself (not a copy)
    when there is no ``dh_last``.
    """
    T, B, H = dh_out.shape
    dh0 = np.zeros((B, H), dtype=dh_out.dtype)
    if dh_last is None:
        return dh_out, dh0
    error = dh_out.copy()
    last = np.full(B, T, dtype=np.intp) if lengths is None else lengths
    rows = np.flatnonzero(last > 0)
    error[last[rows] - 1, rows] += dh_last[rows]
    empty = np.flatnonzero(last == 0)
    dh0[empty] = dh_last[empty]
    return error, dh0


def embedding_grad_args(ids, grad, num_rows):
    """Checked arguments of ``embedding_grad``: ids (N,) in [0, num_rows), grad (N, H)."""
    grad = float_array("grad", grad, 2)
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids: expected integers, got dtype {ids.dtype}")
    if ids.shape != (grad.shape[0],):
        raise ValueError(f"ids: expected shape ({grad.shape[0]},), got {ids.shape}")
    num_rows = int(num_rows)
    if num_rows < 1:
        raise ValueError(f"num_rows: expected an int >= 1, got {num_rows}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
        raise ValueError(f"ids: expected values in [0, {num_rows}), got min {ids.min()} max {ids.max()}")
    return aligned_array(ids, dtype=np.intp), grad, num_rows


# ---------------------------------------------------------------------------------------------
# the model's inputs: one batch, its targets and the positions that carry a loss
# ---------------------------------------------------------------------------------------------

class Batch:
    """Validated inputs of one call, time-major: ``x`` (T, B, I) floats or (T, B) token ids."""

    __slots__ = ("x", "tokens", "h0", "c0", "lengths", "T", "B", "batched", "stacked")

    def __init__(self, x, tokens, h0, lengths, batched, stacked, c0=None):
        # h0 (L*D, B, H) (and an LSTM's c0); `stacked`: the caller's states have the leading
        # L*D axis
        self.x, self.tokens, self.h0, self.lengths, self.batched = x, tokens, h0, lengths, batched
        self.stacked, self.c0 = stacked, c0
        self.T, self.B = (tokens if tokens is not None else x).shape[:2]

    @property
    def inputs(self):
        """Token ids (T, B) or dense inputs (T, B, I)."""
        return self.tokens if self.tokens is not None else self.x


def batch(x, h0, lengths, arch, dtype, batch_first):
    """Check and cast a model's ``x``, ``h0`` and ``lengths`` into a time-major ``Batch``, for
    a model of architecture ``arch`` (``cyrnn.layers.Architecture``) and float ``dtype``."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    I, H = arch.input_size, arch.hidden_size
    tokens = dense = None
    if x.dtype.kind in "iu":
        if x.ndim not in (1, 2):
            raise ValueError(f"x: token ids must have shape (T, B) or (T,), got {x.shape}")
        batched = x.ndim == 2
        ids = x if batched else x[:, None]
        if batch_first and batched:
            ids = ids.T
        id_range("x", ids, I, "token id")
        tokens = aligned_array(ids, dtype=np.intp)
    elif x.dtype.kind == "f":
        if x.ndim not in (2, 3) or x.shape[-1] != I:
            expected = "(B, T, {0}) or (T, {0})" if batch_first else "(T, B, {0}) or (T, {0})"
            # whole numbers in [0, I) without a feature axis: token ids cast to float
            if (x.ndim in (1, 2) and x.size and np.isfinite(x).all()
                    and (x == np.floor(x)).all() and x.min() >= 0 and x.max() < I):
                raise TypeError(
                    f"x: token ids must be integers; got floats of shape {x.shape} (use "
                    f"x.astype(int)); dense inputs need shape {expected.format(I)}")
            raise ValueError(f"x: expected shape {expected.format(I)}, got {x.shape}")
        batched = x.ndim == 3
        values = x if batched else x[:, None, :]
        if batch_first and batched:
            values = values.transpose(1, 0, 2)
        dense = finite_array("x", values, dtype)
    else:
        raise TypeError(f"x: expected floats (dense inputs) or integers (token ids), got dtype {x.dtype}")
    T, B = (tokens if tokens is not None else dense).shape[:2]
    if T == 0:
        raise ValueError("x: expected at least one time step, got T = 0")
    if B == 0:
        raise ValueError("x: expected at least one sequence, got B = 0")

    c0 = None
    if arch.cell == "lstm":
        # the state is the pair (h, c)
        if h0 is not None:
            if not isinstance(h0, (tuple, list)) or len(h0) != 2:
                raise TypeError(f"h0: an LSTM's state is a pair (h0, c0), got {_kind(h0)}")
            h0, c0 = h0
    h0, stacked = _initial_state("h0", h0, arch.num_states, B, H, batched, dtype)
    if arch.cell == "lstm":
        c0, _ = _initial_state("c0", c0, arch.num_states, B, H, batched, dtype,
                               stacked if c0 is not None and h0 is not None else None)

    if lengths is not None:
        if not batched:
            lengths = np.asarray(lengths).reshape(-1)
        lengths = lengths_array(lengths, T, B)
        if (lengths == T).all():
            lengths = None  # nothing is padded
    return Batch(dense, tokens, h0, lengths, batched, stacked, c0)


def _kind(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _initial_state(name, state, S, B, H, batched, dtype, stacked=None):
    """An initial state as (S, B, H) (zeros for None) and whether the caller's layout has the
    leading S = num_layers * num_directions axis: ``(S, B, H)``, or ``(B, H)`` where S is 1
    (unbatched: without B). ``stacked``, when given, is the layout the state must have."""
    stacked_shape = (S, B, H) if batched else (S, H)
    flat_shape = (B, H) if batched else (H,)
    if state is None:
        return np.zeros((S, B, H), dtype=dtype), S > 1 if stacked is None else stacked
    state = np.asarray(state)
    found = state.shape == stacked_shape
    allowed = [stacked_shape] if S > 1 else [flat_shape, stacked_shape]
    if stacked is not None:
        allowed = [stacked_shape if stacked else flat_shape]
    if state.shape not in allowed:
        expected = " or ".join(str(shape) for shape in allowed)
        if S > 1:
            expected += (f" (num_layers * num_directions = {S}{', batch' if batched else ''}, "
                         f"hidden_size)")
        elif stacked is not None:
            expected += " (the layout of h0)"
        raise ValueError(f"{name}: expected shape {expected}, got {state.shape}")
    return finite_array(name, state.reshape(S, B, H), dtype), found


def loss_positions(batch, target_steps):
    """Time and batch indices of the positions with a loss, or (None, None) for all."""
    T, B, lengths = batch.T, batch.B, batch.lengths
    if target_steps == "last":
        last = np.full(B, T - 1) if lengths is None else lengths - 1
        if (last < 0).any():
            raise ValueError("lengths: target_steps='last' needs every sequence to have a step")
        return last, np.arange(B)
    if lengths is None:
        return None, None
    t_idx, b_idx = np.nonzero(np.arange(T)[:, None] < lengths[None, :])
    if t_idx.size == 0:
        raise ValueError("lengths: every sequence is empty, there is nothing to compute a loss on")
    return t_idx, b_idx

def loss_targets(target, loss, output, width, batch, target_steps, positions, dtype, batch_first):
    """The targets of the loss positions (``loss_positions``): (N,) class ids or (N, width)
    values, for a model whose outputs have ``width`` values (its output size, or the width of
    its last layer's states without an output layer) and output function ``output``."""
    t_idx, b_idx = positions
    target = np.asarray(target)
    O = width
    T, B = batch.T, batch.B
    per_step = target_steps == "all"
    classes = loss == "cross_entropy"
    if per_step:
        shape = (T, B) if batch.batched else (T,)
        if batch_first and batch.batched:
            shape = (B, T)
    else:
        shape = (B,) if batch.batched else ()
    if not classes:
        shape = shape + (O,)
    if target.shape != shape:
        if classes and target.shape == shape + (O,):
            raise ValueError(
                f"target: cross_entropy takes class ids of shape {shape}, not one-hot vectors "
                f"(got shape {target.shape}); use target.argmax(-1)")
        if not classes and O > 1 and target.shape == shape[:-1] and target.dtype.kind in "iu":
            fix = " or loss='cross_entropy'" if output == "linear" else ""
            raise ValueError(
                f"target: {loss} with output={output!r} expects values of shape {shape}, "
                f"got integers of shape {target.shape}; class ids need output='softmax'{fix}")
        raise ValueError(f"target: expected shape {shape}, got {target.shape}")
    if classes and target.dtype.kind not in "iu":
        raise TypeError(f"target: cross_entropy needs integer class ids, got dtype {target.dtype}")
    if not classes and target.dtype.kind not in "fiu":
        raise TypeError(f"target: expected real numbers, got dtype {target.dtype}")
    # time-major with a batch axis
    if per_step:
        if not batch.batched:
            target = target[:, None]
        elif batch_first:
            target = np.swapaxes(target, 0, 1)
        selected = target.reshape((T * B,) + target.shape[2:]) if t_idx is None else target[t_idx, b_idx]
    else:
        selected = target.reshape((B,) + target.shape[(1 if batch.batched else 0):])
    if classes:
        id_range("target", selected, O, "class id")
        return aligned_array(selected, dtype=np.intp)
    selected = finite_array("target", selected, dtype)
    if loss == "bce" and (selected.min() < 0 or selected.max() > 1):
        raise ValueError("target: bce needs values in [0, 1]")
    return selected
