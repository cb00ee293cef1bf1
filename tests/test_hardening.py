"""Regression tests of the hardening round: every path checks the one snapshot of the parameters
it uses, misaligned arrays are copied at the boundary, casts cannot overflow into the weights,
and the kernels' edge cases have one behaviour on both backends."""
import re
import threading

import numpy as np
import pytest

import cyrnn
from cyrnn import kernels


def _char_model(backend, dtype="float32", **kwargs):
    return cyrnn.RNN(7, 6, 7, output="softmax", seed=0, backend=backend, dtype=dtype, **kwargs)


def _misaligned(a):
    """A copy of ``a`` whose data starts one byte past an aligned address (C-contiguous)."""
    raw = np.zeros(a.nbytes + a.itemsize + 1, dtype=np.uint8)
    start = 1 if raw.ctypes.data % a.itemsize == 0 else 0
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


# ---------------------------------------------------------------------------------------------
# F1: one checked snapshot of the parameters per call
# ---------------------------------------------------------------------------------------------


class _TwoFaced(dict):
    """A params dict whose ``get`` shows the model's own arrays and whose ``[]`` shows a smaller
    Wxh: the old code checked through one and computed through the other."""

    def __init__(self, params, small):
        super().__init__(params)
        self._small = small

    def __getitem__(self, name):
        return self._small if name == "Wxh" else super().__getitem__(name)


@pytest.mark.parametrize("call", ["loss_and_grad", "forward", "evaluate", "sample", "composed"])
def test_parameters_checked_and_used_are_the_same_objects(backend, call):
    model = _char_model(backend)
    small = np.zeros((6, 2), dtype=np.float32)  # valid ids 0..6 index past its 2 columns
    model.params = _TwoFaced(model.params, small)
    ids = np.full((5, 3), 6)
    with pytest.raises(ValueError, match=re.escape("params['Wxh']: expected a C-contiguous "
                                                   "float32 array of shape (6, 7)")):
        if call == "loss_and_grad":
            model.loss_and_grad(ids, ids)
        elif call == "forward":
            model.forward(ids)
        elif call == "evaluate":
            model.evaluate(ids, ids)
        elif call == "sample":
            model.sample([6, 6], 3, seed=0)
        else:  # padding sends the step through the composed path
            model.loss_and_grad(ids, ids, lengths=[5, 4, 3])


def test_parameters_replaced_by_another_thread_never_reach_the_kernels(backend):
    """A thread swapping Wxh between the right array and a smaller one while another trains:
    every call either runs on the right array or raises, and the results of the calls that ran
    are the ones of the right array (no read or write past the small one)."""
    model = _char_model(backend)
    good = model.params["Wxh"]
    small = np.zeros((6, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (20, 4))
    reference = model.loss_and_grad(ids, ids)[0]
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            model.params["Wxh"] = small
            model.params["Wxh"] = good

    thread = threading.Thread(target=swap)
    thread.start()
    ran = refused = 0
    try:
        for _ in range(300):
            try:
                value = model.loss_and_grad(ids, ids)[0]
            except ValueError as exc:
                assert "params['Wxh']" in str(exc)
                refused += 1
            else:
                assert value == reference
                ran += 1
    finally:
        stop.set()
        thread.join()
    assert ran + refused == 300


@pytest.mark.parametrize("call", ["loss_and_grad", "forward", "sample", "composed"])
def test_nan_slope_set_on_the_model_is_refused_on_every_path(backend, call):
    model = _char_model(backend, nonlinearity="leaky_relu")
    model.negative_slope = float("nan")
    ids = np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match="negative_slope: expected a finite number >= 0"):
        if call == "loss_and_grad":
            model.loss_and_grad(ids, ids)
        elif call == "forward":
            model.forward(ids)
        elif call == "sample":
            model.sample([1], 2, seed=0)
        else:
            model.loss_and_grad(ids, ids, lengths=[4, 3])


@pytest.mark.parametrize("name, shape", [("Whh", (6, 5)), ("bh", (5,)), ("by", (6,)),
                                         ("Why", (6, 7))])
@pytest.mark.parametrize("call", ["loss_and_grad", "forward", "composed", "sample"])
def test_misshaped_parameters_refused_on_every_path(backend, name, shape, call):
    model = _char_model(backend)
    model.params[name] = np.zeros(shape, dtype=np.float32)
    ids = np.zeros((4, 2), dtype=int)
    with pytest.raises(ValueError, match=re.escape(f"params[{name!r}]: expected")):
        if call == "loss_and_grad":
            model.loss_and_grad(ids, ids)
        elif call == "forward":
            model.forward(ids)
        elif call == "sample":
            model.sample([1, 2], 2, seed=0)
        else:
            model.loss_and_grad(ids, ids, lengths=[4, 3])


def test_missing_parameter_is_a_key_error(backend):
    model = _char_model(backend)
    del model.params["bh"]
    with pytest.raises(KeyError, match="params: parameter 'bh' is missing"):
        model.forward(np.zeros((3, 1), dtype=int))


# ---------------------------------------------------------------------------------------------
# F5: optimizers check finiteness in the parameter dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
@pytest.mark.parametrize("value", [1e300, -1e300, 3.5e38])
def test_gradient_too_large_for_float32_weights_is_refused(opt, value):
    params = {"w": np.ones(3, dtype=np.float32)}
    optimizer = cyrnn.optim.make_optimizer(opt, params, lr=0.1)
    grad = np.array([0.0, value, 1.0])  # finite in float64, inf in float32
    with pytest.raises(FloatingPointError, match=r"grads\['w'\]: non-finite values in float32"):
        optimizer.step({"w": grad})
    assert np.array_equal(params["w"], np.ones(3, dtype=np.float32))
    assert optimizer.steps == 0


def test_gradient_within_float32_range_still_steps():
    params = {"w": np.ones(2, dtype=np.float32)}
    optimizer = cyrnn.optim.SGD(params, lr=1e-40)
    optimizer.step({"w": np.array([3e38, -3e38])})
    assert np.isfinite(params["w"]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_still_refused(bad):
    params = {"w": np.ones(2)}
    optimizer = cyrnn.optim.Adam(params, lr=0.1)
    with pytest.raises(FloatingPointError):
        optimizer.step({"w": np.array([0.0, bad])})


# ---------------------------------------------------------------------------------------------
# misaligned arrays are copied to aligned memory at the boundary
# ---------------------------------------------------------------------------------------------


def test_misaligned_inputs_give_the_aligned_result(backend, dtype, rng):
    k = kernels.get_backend(backend)
    T, B, I, H, O = 5, 3, 4, 6, 4
    args = [rng.standard_normal(s).astype(dtype) for s in
            [(T, B, I), (T, B, O), (B, H), (H, I), (H, H), (H,), (O, H), (O,)]]
    for a in args[3:]:
        a *= 0.3
    ref = k.elman_loss_and_grad(*args, loss="mse")
    moved = [_misaligned(a) for a in args]
    before = [a.copy() for a in moved]
    got = k.elman_loss_and_grad(*moved, loss="mse")
    assert got[0] == ref[0]
    for name in ref[1]:
        np.testing.assert_array_equal(got[1][name], ref[1][name])
    for a, b in zip(moved, before):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    xw = rng.standard_normal((T, B, H)).astype(dtype)
    hs_ref = k.rnn_forward(xw, args[2], args[4])
    np.testing.assert_array_equal(k.rnn_forward(_misaligned(xw), _misaligned(args[2]),
                                                _misaligned(args[4])), hs_ref)
    lengths = _misaligned(np.array([5, 2, 0], dtype=np.intp))
    np.testing.assert_array_equal(k.rnn_forward(xw, args[2], args[4], lengths=lengths),
                                  k.rnn_forward(xw, args[2], args[4], lengths=[5, 2, 0]))


def test_misaligned_out_is_refused(backend):
    k = kernels.get_backend(backend)
    out = _misaligned(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="out: expected a writeable, aligned C-contiguous array"):
        k.rnn_forward(np.zeros((3, 2, 3)), np.zeros((2, 3)), np.zeros((3, 3)), out=out)


def test_misaligned_parameters_on_the_model(backend):
    model = _char_model(backend)
    model.params["Whh"] = _misaligned(model.params["Whh"])
    with pytest.raises(ValueError, match="got a misaligned C-contiguous float32 array"):
        model.forward(np.zeros((3, 1), dtype=int))


def test_misaligned_token_ids_on_the_model(backend):
    model = _char_model(backend)
    ids = np.random.default_rng(1).integers(0, 7, (6, 2))
    ref = model.loss_and_grad(ids, ids)
    got = model.loss_and_grad(_misaligned(ids), _misaligned(ids))
    assert got[0] == ref[0]


# ---------------------------------------------------------------------------------------------
# kernel edge cases: out overlapping lengths, huge windows, empty sizes
# ---------------------------------------------------------------------------------------------


def test_out_overlapping_lengths_is_refused(backend):
    k = kernels.get_backend(backend)
    T, B, H = 3, 2, 4
    out = np.zeros((T + 1, B, H))
    lengths = out.reshape(-1).view(np.intp)[:B]
    lengths[:] = [3, 1]
    with pytest.raises(ValueError, match="out: must not overlap the inputs"):
        k.rnn_forward(np.ones((T, B, H)), np.zeros((B, H)), np.eye(H), lengths=lengths, out=out)


@pytest.mark.parametrize("window", [2**63, 2**64 - 1, 2**63 + 7])
def test_uint64_windows_beyond_int64_are_full_bptt(backend, rng, window):
    k = kernels.get_backend(backend)
    T, B, H = 6, 2, 3
    hs = k.rnn_forward(rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
                       0.5 * rng.standard_normal((H, H)))
    dh_out = rng.standard_normal((T, B, H))
    Whh = 0.5 * np.eye(H)
    full = k.rnn_backward_window(dh_out, hs, Whh, T + 1)
    per_output = np.full(T, window, dtype=np.uint64)
    for got in (k.rnn_backward_window(dh_out, hs, Whh, per_output),
                k.rnn_backward_window(dh_out, hs, Whh, window)):
        for a, b in zip(got, full):
            np.testing.assert_array_equal(a, b)


def test_model_truncate_beyond_int64_is_full_bptt(backend, rng):
    model = cyrnn.RNN(3, 4, 2, seed=0, backend=backend, dtype="float64")
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 2))
    ref = model.loss_and_grad(x, y, truncate=6)
    got = model.loss_and_grad(x, y, truncate=np.uint64(2**64 - 1))
    for name in ref[1]:
        np.testing.assert_array_equal(got[1][name], ref[1][name])


@pytest.mark.parametrize("sizes", [(0, 3, 2), (4, 0, 2), (4, 3, 0)], ids=["H=0", "I=0", "O=0"])
def test_fused_kernels_refuse_empty_sizes(backend, sizes):
    k = kernels.get_backend(backend)
    H, I, O = sizes
    T, B = 3, 2
    args = (np.zeros((T, B, I)), np.zeros((T, B, O)), np.zeros((B, H)), np.zeros((H, I)),
            np.zeros((H, H)), np.zeros(H), np.zeros((O, H)), np.zeros(O))
    message = re.escape(f"expected hidden, input and output sizes >= 1, got H = {H}, I = {I}, O = {O}")
    with pytest.raises(ValueError, match=message):
        k.elman_loss_and_grad(*args, loss="mse")
    with pytest.raises(ValueError, match=message):
        k.elman_forward(args[0], *args[2:])
