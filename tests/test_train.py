"""``cyrnn.fit``, ``cyrnn.evaluate``, ``History`` and the callbacks.

Every test trains a tiny model (H <= 16, a few dozen updates) so the file runs in seconds. Where
``fit`` is a composition of public pieces (batches from ``cyrnn.data``, ``loss_and_grad``,
``clip_grad_norm``, an optimizer) it is compared bit for bit with the same loop written by hand.
"""
import math
import re

import numpy as np
import pytest

import cyrnn
from cyrnn import RNN, Checkpoint, EarlyStopping, History, evaluate, fit, optim
from cyrnn.data import random_batches, sequential_batches

TIMING_KEYS = {"tokens_per_second", "seconds"}
EPOCH_KEYS = {"epoch", "loss", "grad_norm", "tokens_per_second", "seconds", "skipped"}
STEP_KEYS = {"step", "epoch", "loss", "grad_norm", "lr", "skipped"}

# "abcabc...": the next token is a function of the current one, learnable in a few updates
PATTERN = np.tile(np.arange(3), 200)


def _lm(backend="cython", dtype=np.float64, H=16, V=3, seed=0, **kwargs):
    return RNN(V, H, V, output="softmax", dtype=dtype, seed=seed, backend=backend, **kwargs)


def _params_equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _copy(params):
    return {k: v.copy() for k, v in params.items()}


def _no_timing(history):
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in history.epochs]


def _delay_dataset(rng, T=8, N=24, F=2):
    """Dense regression: the target at step t is the input at step t - 1 (needs memory)."""
    x = rng.standard_normal((T, N, F))
    y = np.zeros_like(x)
    y[1:] = x[:-1]
    return x, y


def _inject_nonfinite(model, at_call, where):
    """Make ``model.loss_and_grad`` return a NaN loss (or a NaN gradient) on call ``at_call``."""
    original = model.loss_and_grad
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        value, grads, h = original(*args, **kwargs)
        if len(calls) == at_call:
            if where == "loss":
                value = math.nan
            else:
                grads["Whh"][0, 0] = np.nan
        return value, grads, h

    model.loss_and_grad = wrapped
    return calls


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["sequential", "random"])
def test_token_stream_learns_repeating_pattern(backend, partition):
    model = _lm(backend, dtype=np.float32)
    before = evaluate(model, PATTERN, batch_size=8)
    history = fit(model, PATTERN, epochs=5, batch_size=8, seq_len=10, partition=partition,
                  lr=0.02, seed=0)
    losses = history["loss"]
    assert len(losses) == 5
    assert before > 0.9  # ~log(3) for an untrained model
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] < 0.05
    assert evaluate(model, PATTERN, batch_size=8) < 0.05


def test_dataset_time_major_learns(backend, rng):
    x, y = _delay_dataset(rng)
    model = RNN(2, 16, 2, seed=0, backend=backend, dtype=np.float64)
    history = fit(model, (x, y), epochs=15, batch_size=8, lr=0.02, seed=0)
    assert len(history) == 15
    assert len(history.steps) == 15 * 3  # 24 sequences in batches of 8
    assert "perplexity" not in history.epochs[-1]  # mse
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    assert evaluate(model, (x, y)) < 0.25 * evaluate(RNN(2, 16, 2, seed=0, dtype=np.float64), (x, y))


@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
def test_dataset_batch_first_matches_time_major(backend, rng, tokens):
    if tokens:
        x = rng.integers(0, 3, size=(7, 10))
        y = (x + 1) % 3
        make = lambda bf: _lm(backend, batch_first=bf)  # noqa: E731
    else:
        x, y = _delay_dataset(rng, T=7, N=10)
        make = lambda bf: RNN(2, 8, 2, seed=0, backend=backend, dtype=np.float64,  # noqa: E731
                              batch_first=bf)
    tm, bf = make(False), make(True)
    h_tm = fit(tm, (x, y), epochs=3, batch_size=4, lr=0.01, seed=3)
    h_bf = fit(bf, (np.swapaxes(x, 0, 1), np.swapaxes(y, 0, 1)), epochs=3, batch_size=4,
               lr=0.01, seed=3)
    assert len(h_tm.steps) == len(h_bf.steps) == 9
    np.testing.assert_allclose(h_bf["loss"], h_tm["loss"], rtol=1e-12)
    for name in tm.params:
        np.testing.assert_allclose(bf.params[name], tm.params[name], rtol=1e-10, atol=1e-12)


def test_dataset_with_lengths_ignores_padding(backend, rng):
    x, y = _delay_dataset(rng, T=8, N=12)
    lengths = rng.integers(2, 9, size=12)
    lengths[0] = 8
    pad = np.arange(8)[:, None] >= lengths[None, :]
    garbage_x, garbage_y = x.copy(), y.copy()
    garbage_x[pad] = 1e3
    garbage_y[pad] = -1e3
    runs = []
    for xs, ys in ((x, y), (garbage_x, garbage_y)):
        model = RNN(2, 8, 2, seed=0, backend=backend, dtype=np.float64)
        history = fit(model, (xs, ys, lengths), epochs=2, batch_size=5, lr=0.01, seed=0)
        runs.append((model, history))
    (m1, h1), (m2, h2) = runs
    assert _params_equal(m1.params, m2.params)
    assert h1["loss"] == h2["loss"]
    # and the lengths were used: without them the garbage changes everything
    m3 = RNN(2, 8, 2, seed=0, backend=backend, dtype=np.float64)
    h3 = fit(m3, (garbage_x, garbage_y), epochs=2, batch_size=5, lr=0.01, seed=0)
    assert h3["loss"][0] > 100 * h1["loss"][0]


def test_dataset_last_step_targets(backend, rng):
    """Many-to-one: targets (N, O) with target_steps="last"; learns the sum of the inputs."""
    x = rng.standard_normal((5, 32, 1))
    y = x.sum(axis=0) / 3
    model = RNN(1, 16, 1, seed=0, backend=backend, dtype=np.float64)
    history = fit(model, (x, y), epochs=20, batch_size=8, lr=0.02, seed=0, target_steps="last")
    assert history["loss"][-1] < 0.2 * history["loss"][0]


def test_dataset_last_step_targets_when_output_size_equals_sequence_count(backend, rng):
    """Targets (N, O) for target_steps="last" are split along N even when O happens to equal N:
    the same updates as a hand-written loop over the same shuffled batches."""
    N = O = 4
    x = rng.standard_normal((5, N, 3))
    y = rng.standard_normal((N, O))
    model = RNN(3, 8, O, seed=0, backend=backend, dtype=np.float64)
    start = _copy(model.params)
    history = fit(model, (x, y), epochs=1, batch_size=2, optimizer="sgd", lr=0.1, seed=0,
                  target_steps="last")
    # reference: the same shuffled order, targets taken row-wise with the sequences
    ref = RNN(3, 8, O, seed=0, backend=backend, dtype=np.float64)
    ref.set_params(start)
    opt = optim.SGD(ref.params, lr=0.1)
    order = np.random.default_rng(0).permutation(N)
    losses = []
    for s in range(0, N, 2):
        idx = order[s:s + 2]
        value, grads, _ = ref.loss_and_grad(x[:, idx], y[idx], target_steps="last")
        opt.step(grads)
        losses.append(value)
    np.testing.assert_allclose([s["loss"] for s in history.steps], losses, rtol=1e-12)
    for name in ref.params:
        np.testing.assert_allclose(model.params[name], ref.params[name], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# steps, history
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_steps_stops_exactly(backend, steps):
    model = _lm(backend)
    opt = optim.Adam(model.params, lr=0.01)
    # 3 batches per epoch: (600 - 9 - 1) // 8 // 20 = 3 with the largest random offset
    history = fit(model, PATTERN, epochs=100, steps=steps, batch_size=8, seq_len=20,
                  optimizer=opt, seed=0)
    assert len(history.steps) == steps
    assert opt.steps == steps
    assert [s["step"] for s in history.steps] == list(range(1, steps + 1))
    assert len(history) == math.ceil(steps / 3)
    assert history.steps[-1]["epoch"] == len(history)


def test_history_records(backend):
    model = _lm(backend)
    train, val = PATTERN[:450], PATTERN[450:]
    history = fit(model, train, val, epochs=3, batch_size=4, seq_len=10, lr=0.01, seed=1)
    assert isinstance(history, History)
    assert len(history) == 3 and len(history.epochs) == 3
    assert "3 epochs" in repr(history)
    for epoch, record in enumerate(history.epochs, start=1):
        assert set(record) == EPOCH_KEYS | {"val_loss", "perplexity", "val_perplexity"}
        assert record["epoch"] == epoch
        steps = [s for s in history.steps if s["epoch"] == epoch]
        assert len(steps) == 11  # (450 - 9 - 1) // 4 // 10, with the largest offset 9
        assert record["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-12)
        assert record["grad_norm"] == pytest.approx(np.mean([s["grad_norm"] for s in steps]),
                                                    rel=1e-12)
        assert record["perplexity"] == pytest.approx(math.exp(record["loss"]), rel=1e-12)
        assert record["val_perplexity"] == pytest.approx(math.exp(record["val_loss"]), rel=1e-12)
        assert record["skipped"] == 0
        assert record["seconds"] > 0
        assert record["tokens_per_second"] == pytest.approx(4 * 10 * 11 / record["seconds"])
    for step in history.steps:
        assert set(step) == STEP_KEYS
        assert step["skipped"] is False
        assert step["lr"] == 0.01
        assert step["grad_norm"] > 0
    assert history["val_loss"] == [e["val_loss"] for e in history.epochs]
    assert history["no such key"] == [None, None, None]
    # the last val_loss is the model's loss on val after training
    assert history["val_loss"][-1] == evaluate(model, val, batch_size=4)
    assert history["loss"][-1] < history["loss"][0]


def test_history_without_validation_or_cross_entropy(backend, rng):
    x, y = _delay_dataset(rng, N=8)
    history = fit(RNN(2, 8, 2, seed=0, backend=backend), (x, y), epochs=2, batch_size=4, seed=0)
    for record in history.epochs:
        assert set(record) == EPOCH_KEYS
    history = fit(_lm(backend), PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0)
    assert set(history.epochs[0]) == EPOCH_KEYS | {"perplexity"}


def test_evaluate_stream_is_mean_cross_entropy(backend):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 5, size=103)
    model = RNN(5, 8, 5, output="softmax", seed=0, backend=backend, dtype=np.float64)
    B = 4
    L = (len(ids) - 1) // B
    terms = []
    for b in range(B):  # B contiguous streams, each from a zero state
        chunk = ids[b * L:(b + 1) * L + 1]
        probs, _ = model.forward(chunk[:-1])
        terms.extend(-np.log(probs[np.arange(L), chunk[1:]]))
    expected = np.mean(terms)
    assert evaluate(model, ids, batch_size=B) == pytest.approx(expected, rel=1e-12)
    # one stream: the mean over the whole sequence, as model.evaluate computes it
    assert evaluate(model, ids, batch_size=1) == pytest.approx(
        model.evaluate(ids[:-1], ids[1:])[0], rel=1e-12)
    # the layout of the model does not matter
    bf = RNN(5, 8, 5, output="softmax", seed=0, backend=backend, dtype=np.float64,
             batch_first=True)
    assert evaluate(bf, ids, batch_size=B) == pytest.approx(expected, rel=1e-12)
    # a list works like an array
    assert evaluate(model, list(ids), batch_size=B) == pytest.approx(expected, rel=1e-12)


def test_evaluate_dataset_equals_whole_batch(backend, rng):
    x, y = _delay_dataset(rng, T=6, N=7)
    model = RNN(2, 8, 2, seed=0, backend=backend, dtype=np.float64)
    whole = model.evaluate(x, y)[0]
    for batch_size in (1, 3, 7, 32):
        assert evaluate(model, (x, y), batch_size=batch_size) == pytest.approx(whole, rel=1e-12)
    assert evaluate(model, (x, y), reduction="sum", batch_size=3) == pytest.approx(
        model.evaluate(x, y, reduction="sum")[0], rel=1e-12)


def test_evaluate_dataset_with_lengths_does_not_depend_on_batch_size(backend, rng):
    """The mean over valid positions, as ``model.evaluate`` gives for the whole dataset at once;
    batching for memory must not reweight the sequences by their count instead of their steps."""
    x, y = _delay_dataset(rng, T=6, N=4)
    lengths = np.array([1, 6, 2, 6])
    model = RNN(2, 8, 2, seed=0, backend=backend, dtype=np.float64)
    whole = model.evaluate(x, y, lengths=lengths)[0]
    for batch_size in (4, 2, 1):
        assert evaluate(model, (x, y, lengths), batch_size=batch_size) == pytest.approx(
            whole, rel=1e-12), batch_size


# ---------------------------------------------------------------------------------------------
# reproducibility and equivalence with hand-written loops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["sequential", "random", "dataset"])
def test_same_seeds_are_bit_identical(backend, dtype, data):
    def run(seed):
        model = _lm(backend, dtype=dtype, H=8)
        if data == "dataset":
            x = np.random.default_rng(0).integers(0, 3, size=(6, 20))
            history = fit(model, (x, (x + 1) % 3), epochs=3, batch_size=6, lr=0.01, seed=seed)
        else:
            history = fit(model, PATTERN, epochs=3, batch_size=4, seq_len=12, partition=data,
                          lr=0.01, seed=seed)
        return model, history

    (m1, h1), (m2, h2), (m3, h3) = run(5), run(5), run(6)
    assert _params_equal(m1.params, m2.params)
    assert h1.steps == h2.steps
    assert _no_timing(h1) == _no_timing(h2)
    assert not _params_equal(m1.params, m3.params)
    assert [s["loss"] for s in h1.steps] != [s["loss"] for s in h3.steps]


def test_different_model_seeds_differ(backend):
    a, b = _lm(backend, seed=0), _lm(backend, seed=1)
    fit(a, PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0)
    fit(b, PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0)
    assert not _params_equal(a.params, b.params)


def test_sequential_partition_carries_state(backend, dtype):
    B, S, seed, epochs = 4, 10, 7, 2
    model = _lm(backend, dtype=dtype, H=8)
    start = _copy(model.params)
    history = fit(model, PATTERN, epochs=epochs, batch_size=B, seq_len=S, partition="sequential",
                  optimizer="adam", lr=0.01, seed=seed)

    def manual(carry):
        ref = _lm(backend, dtype=dtype, H=8)
        ref.set_params(start)
        opt = optim.Adam(ref.params, lr=0.01)
        batches = sequential_batches(PATTERN, B, S, rng=np.random.default_rng(seed))
        losses = []
        for _ in range(epochs):
            h = None
            for x, y in batches:
                value, grads, h_last = ref.loss_and_grad(x, y, h0=h)
                h = h_last if carry else None
                opt.step(grads)
                losses.append(value)
        return ref, losses

    ref, losses = manual(carry=True)
    assert _params_equal(model.params, ref.params)
    assert [s["loss"] for s in history.steps] == losses
    # the comparison can tell: without the carried state the result differs
    other, _ = manual(carry=False)
    assert not _params_equal(model.params, other.params)


def test_random_partition_resets_state(backend):
    B, S, seed = 4, 10, 3
    model = _lm(backend, H=8)
    start = _copy(model.params)
    fit(model, PATTERN, epochs=2, batch_size=B, seq_len=S, partition="random",
        optimizer="sgd", lr=0.5, seed=seed)
    ref = _lm(backend, H=8)
    ref.set_params(start)
    opt = optim.SGD(ref.params, lr=0.5)
    batches = random_batches(PATTERN, B, S, rng=np.random.default_rng(seed))
    for _ in range(2):
        for x, y in batches:
            _, grads, _ = ref.loss_and_grad(x, y)
            opt.step(grads)
    assert _params_equal(model.params, ref.params)


# ---------------------------------------------------------------------------------------------
# clipping, optimizers
# ---------------------------------------------------------------------------------------------


def test_clip_norm_bounds_every_update(backend):
    clip, lr = 1e-3, 1.0
    model = _lm(backend)
    start = _copy(model.params)
    opt = optim.SGD(model.params, lr=lr)
    sizes = []
    original_step = opt.step

    def recording_step(grads):
        before = _copy(model.params)
        original_step(grads)
        sizes.append(math.sqrt(sum(np.sum((model.params[k] - before[k]) ** 2) for k in before)))

    opt.step = recording_step
    history = fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer=opt,
                  clip_norm=clip, seed=0)
    assert len(sizes) == len(history.steps) > 10
    assert max(sizes) <= lr * clip * (1 + 1e-9)
    assert min(sizes) > 0.9 * lr * clip  # the raw gradients are far larger: all were clipped
    # grad_norm in the history is the norm before clipping
    assert min(s["grad_norm"] for s in history.steps) > 10 * clip

    # and it is exactly clip_grad_norm followed by the optimizer
    ref = _lm(backend)
    ref.set_params(start)
    ref_opt = optim.SGD(ref.params, lr=lr)
    norms = []
    batches = sequential_batches(PATTERN, 4, 10, rng=np.random.default_rng(0))
    for _ in range(2):
        h = None
        for x, y in batches:
            _, grads, h = ref.loss_and_grad(x, y, h0=h)
            norms.append(cyrnn.clip_grad_norm(grads, clip))
            ref_opt.step(grads)
    assert _params_equal(model.params, ref.params)
    assert [s["grad_norm"] for s in history.steps] == norms


def test_clip_value_matches_manual_loop(backend):
    model = _lm(backend)
    start = _copy(model.params)
    fit(model, PATTERN, epochs=1, batch_size=4, seq_len=10, optimizer="sgd", lr=0.5,
        clip_value=1e-3, seed=0)
    ref = _lm(backend)
    ref.set_params(start)
    opt = optim.SGD(ref.params, lr=0.5)
    h = None
    for x, y in sequential_batches(PATTERN, 4, 10, rng=np.random.default_rng(0)):
        _, grads, h = ref.loss_and_grad(x, y, h0=h)
        cyrnn.clip_grad_value(grads, 1e-3)
        opt.step(grads)
    assert _params_equal(model.params, ref.params)
    # and unclipped training is different
    other = _lm(backend)
    fit(other, PATTERN, epochs=1, batch_size=4, seq_len=10, optimizer="sgd", lr=0.5, seed=0)
    assert not _params_equal(model.params, other.params)


def test_optimizer_instance_is_used(backend):
    model = _lm(backend)
    opt = optim.RMSprop(model.params, lr=0.005)
    history = fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer=opt, seed=0)
    assert opt.steps == len(history.steps) > 0
    assert all(s["lr"] == 0.005 for s in history.steps)
    # training continues with the same optimizer: its step count keeps advancing
    history2 = fit(model, PATTERN, epochs=1, batch_size=4, seq_len=10, optimizer=opt, seed=0)
    assert opt.steps == len(history.steps) + len(history2.steps)


def test_optimizer_name_and_lr(backend):
    model = _lm(backend)
    history = fit(model, PATTERN, steps=3, batch_size=4, seq_len=10, optimizer="SGD", lr=0.25,
                  seed=0)
    assert [s["lr"] for s in history.steps] == [0.25] * 3
    # weight decay reaches the optimizer: with lr and decay only, the result differs
    a, b = _lm(backend), _lm(backend)
    fit(a, PATTERN, steps=3, batch_size=4, seq_len=10, optimizer="sgd", lr=0.1, seed=0)
    fit(b, PATTERN, steps=3, batch_size=4, seq_len=10, optimizer="sgd", lr=0.1,
        weight_decay=0.5, seed=0)
    assert not _params_equal(a.params, b.params)


def test_scheduled_lr_recorded(backend):
    model = _lm(backend)
    opt = optim.SGD(model.params, lr=1.0, schedule=optim.ExponentialLR(0.5))
    history = fit(model, PATTERN, steps=4, batch_size=4, seq_len=10, optimizer=opt, seed=0)
    assert [s["lr"] for s in history.steps] == [1.0, 0.5, 0.25, 0.125]


@pytest.mark.parametrize("kwargs", [{"lr": 0.1}, {"weight_decay": 0.1}])
def test_optimizer_instance_with_lr_raises(backend, kwargs):
    model = _lm(backend)
    opt = optim.Adam(model.params)
    before = _copy(model.params)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        fit(model, PATTERN, batch_size=4, seq_len=10, optimizer=opt, **kwargs)
    assert opt.steps == 0
    assert _params_equal(model.params, before)


# ---------------------------------------------------------------------------------------------
# non-finite values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_raises_naming_the_step(backend, where):
    model = _lm(backend)
    opt = optim.SGD(model.params, lr=0.1)
    states = []
    original_step = opt.step

    def recording_step(grads):
        original_step(grads)
        states.append(_copy(model.params))

    opt.step = recording_step
    _inject_nonfinite(model, at_call=3, where=where)
    with pytest.raises(FloatingPointError, match=rf"{where}.*\bstep 3\b"):
        fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer=opt, seed=0)
    assert len(states) == 2 and opt.steps == 2
    assert _params_equal(model.params, states[-1])  # nothing of step 3 reached the weights


def test_nonfinite_from_divergence_raises(backend):
    model = _lm(backend, dtype=np.float32, nonlinearity="identity")
    with pytest.raises(FloatingPointError, match=r"step \d+ \(epoch 1\)"):
        with np.errstate(all="ignore"):
            fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer="sgd", lr=1e6,
                seed=0)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_skip(backend, where):
    model = _lm(backend)
    calls = _inject_nonfinite(model, at_call=3, where=where)
    history = fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer="sgd", lr=0.1,
                  seed=0, on_nonfinite="skip")
    assert len(calls) == len(history.steps)
    assert [s["skipped"] for s in history.steps].count(True) == 1
    assert history.steps[2]["skipped"] is True
    assert history["skipped"] == [1, 0]
    assert all(np.isfinite(p).all() for p in model.params.values())
    # the skipped loss is not part of the epoch mean
    kept = [s["loss"] for s in history.steps if s["epoch"] == 1 and not s["skipped"]]
    assert history["loss"][0] == pytest.approx(np.mean(kept), rel=1e-12)
    assert math.isfinite(history["loss"][0])


def test_nonfinite_skip_after_divergence_keeps_params_finite(backend):
    model = _lm(backend, dtype=np.float32, nonlinearity="relu")
    with np.errstate(all="ignore"):
        history = fit(model, PATTERN, epochs=2, batch_size=4, seq_len=10, optimizer="sgd",
                      lr=1e6, seed=0, on_nonfinite="skip")
    assert sum(history["skipped"]) > 0
    assert all(np.isfinite(p).all() for p in model.params.values())
    assert not any(np.isnan(p).any() for p in model.params.values())


# ---------------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------------

# train on "abc...", validate on "acb...": the better the model learns, the worse val gets
TRAIN_ABC = np.tile(np.arange(3), 60)
VAL_ACB = np.tile(np.array([0, 2, 1]), 30)


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping(backend, restore_best):
    model = _lm(backend)
    stopper = EarlyStopping(patience=2, restore_best=restore_best)
    history = fit(model, TRAIN_ABC, VAL_ACB, epochs=30, batch_size=4, seq_len=10, lr=0.02,
                  seed=0, callbacks=[stopper])
    val = history["val_loss"]
    best = int(np.argmin(val)) + 1
    assert stopper.best_epoch == best
    assert stopper.best == val[best - 1]
    assert len(history) == best + 2 < 30  # stopped after `patience` epochs without progress
    assert val[-1] > val[best - 1]
    final = evaluate(model, VAL_ACB, batch_size=4)
    if restore_best:
        assert final == val[best - 1]
    else:
        assert final == val[-1]


def test_early_stopping_on_training_loss_and_min_delta(backend):
    model = _lm(backend)
    # the training loss keeps falling, but not by 10 nats per epoch
    stopper = EarlyStopping(monitor="loss", patience=3, min_delta=10.0)
    history = fit(model, PATTERN, epochs=30, batch_size=8, seq_len=10, lr=0.02, seed=0,
                  callbacks=[stopper])
    assert len(history) == 4
    assert stopper.best_epoch == 1


def test_early_stopping_needs_its_monitor(backend):
    with pytest.raises(KeyError, match="val_loss"):
        fit(_lm(backend), PATTERN, epochs=2, batch_size=4, seq_len=10, seed=0,
            callbacks=[EarlyStopping()])


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"patience": 0}, ValueError, "patience"),
    ({"patience": 1.5}, TypeError, "patience"),
    ({"min_delta": -1}, ValueError, "min_delta"),
])
def test_early_stopping_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EarlyStopping(**kwargs)


def test_checkpoint_every_epoch(backend, tmp_path):
    path = tmp_path / "ckpt.npz"
    model = _lm(backend)
    model.vocab = cyrnn.Vocabulary(list("abc"))
    history = fit(model, PATTERN, epochs=3, batch_size=4, seq_len=10, lr=0.01, seed=0,
                  callbacks=[Checkpoint(path)])
    loaded, opt_state, extra = cyrnn.load_checkpoint(path, backend=backend)
    assert extra == {"epoch": 3}
    assert _params_equal(loaded.params, model.params)
    assert loaded.vocab == model.vocab
    assert opt_state["type"] == "Adam"
    assert opt_state["steps"] == len(history.steps)


def test_checkpoint_best_only(backend, tmp_path):
    path = tmp_path / "best.npz"
    model = _lm(backend)
    history = fit(model, TRAIN_ABC, VAL_ACB, epochs=5, batch_size=4, seq_len=10, lr=0.02,
                  seed=0, callbacks=[Checkpoint(path, best_only=True)])
    val = history["val_loss"]
    best = int(np.argmin(val)) + 1
    assert best < len(history)  # the test needs a later, worse epoch
    loaded, opt_state, extra = cyrnn.load_checkpoint(path, backend=backend)
    assert extra == {"epoch": best}
    assert evaluate(loaded, VAL_ACB, batch_size=4) == val[best - 1]
    assert not _params_equal(loaded.params, model.params)
    assert opt_state["steps"] == sum(1 for s in history.steps if s["epoch"] <= best)


def test_checkpoint_best_only_on_training_loss(backend, tmp_path):
    path = tmp_path / "best.npz"
    model = _lm(backend)
    fit(model, PATTERN, epochs=3, batch_size=8, seq_len=10, lr=0.02, seed=0,
        callbacks=[Checkpoint(path, monitor="loss", best_only=True)])
    loaded, _, extra = cyrnn.load_checkpoint(path)
    assert extra == {"epoch": 3}  # the training loss fell every epoch
    assert _params_equal(loaded.params, model.params)


def test_callbacks_can_stop_and_see_state(backend):
    seen = []

    class StopAtTwo(cyrnn.train.Callback):
        def on_epoch_end(self, state):
            seen.append((state.epoch, state.optimizer.steps, len(state.history), state.model))
            return state.epoch == 2

        def on_train_end(self, state):
            seen.append("end")

    model = _lm(backend)
    history = fit(model, PATTERN, epochs=10, batch_size=8, seq_len=20, seed=0,
                  callbacks=[StopAtTwo()])
    assert len(history) == 2
    assert seen == [(1, 3, 1, model), (2, 6, 2, model), "end"]


# ---------------------------------------------------------------------------------------------
# output, arguments
# ---------------------------------------------------------------------------------------------


def test_verbose_prints_one_line_per_epoch(backend, capsys):
    fit(_lm(backend), PATTERN[:300], PATTERN[300:], epochs=3, batch_size=4, seq_len=10, seed=0,
        verbose=True)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines, start=1):
        assert line.split()[:2] == ["epoch", str(epoch)]
        assert "loss" in line and "val_loss" in line and "ppl" in line


def test_quiet_by_default(backend, capsys):
    fit(_lm(backend), PATTERN, PATTERN[:100], epochs=2, batch_size=4, seq_len=10, seed=0)
    fit(_lm(backend), PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0, verbose=False)
    assert capsys.readouterr() == ("", "")
    # log_every alone does not make fit talk
    fit(_lm(backend), PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0, log_every=0)
    assert capsys.readouterr() == ("", "")


PROGRESS_LINE = re.compile(r"epoch +(\d+)  step (\d+)/(\d+)  loss (\d+\.\d{4}|nan)  [\d,]+ tok/s")


@pytest.mark.parametrize("steps", [None, 7])
def test_verbose_progress_lines_on_stderr(backend, capsys, steps):
    """Without a progress bar (no terminal here), a plain line every ``log_every`` seconds on
    standard error: 0 writes one per update. Standard output keeps the epoch lines only."""
    # 600 tokens in 4 streams of 149 inputs: 14 batches of 10 steps per epoch
    history = fit(_lm(backend), PATTERN, epochs=2, steps=steps, batch_size=4, seq_len=10,
                  seed=0, verbose=True, log_every=0)
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["epoch", str(e)] for e in range(1, len(history) + 1)]
    lines = err.splitlines()
    assert len(lines) == len(history.steps) == (steps or 28)
    for n, (line, record) in enumerate(zip(lines, history.steps), start=1):
        match = PROGRESS_LINE.fullmatch(line)
        assert match, line
        epoch, done, total = map(int, match.groups()[:3])
        assert (epoch, done, total) == (record["epoch"], n, steps or 28)
    # the loss shown is the mean over the epoch so far
    first_epoch = [r["loss"] for r in history.steps if r["epoch"] == 1]
    assert float(PROGRESS_LINE.fullmatch(lines[2]).group(4)) == pytest.approx(
        np.mean(first_epoch[:3]), abs=1e-4)


def test_verbose_progress_lines_follow_the_clock(backend, capsys, monkeypatch):
    """A line once ``log_every`` seconds have passed since the last one (or the epoch start)."""
    now = [0.0]
    monkeypatch.setattr(cyrnn.train.time, "perf_counter", lambda: now[0])
    model = _lm(backend)
    original = model.loss_and_grad

    def one_second_per_step(*args, **kwargs):
        now[0] += 1.0
        return original(*args, **kwargs)

    model.loss_and_grad = one_second_per_step
    fit(model, PATTERN, epochs=1, batch_size=4, seq_len=10, seed=0, verbose=True, log_every=3)
    err = capsys.readouterr().err
    assert [int(PROGRESS_LINE.fullmatch(line).group(2)) for line in err.splitlines()] == [
        3, 6, 9, 12]


def test_verbose_progress_bar_replaces_the_lines(backend, capsys, monkeypatch):
    """With a bar (tqdm in a terminal) there are no plain lines: one bar per epoch, advanced
    once per update and closed."""
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc, self.updates, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.updates += n

        def set_postfix(self, **kwargs):
            self.postfix = kwargs

        def close(self):
            self.closed = True

    monkeypatch.setattr(cyrnn.train, "_progress_bar", lambda: Bar)
    fit(_lm(backend), PATTERN, epochs=2, batch_size=4, seq_len=10, seed=0, verbose=True,
        log_every=0)
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 2
    assert [(b.desc, b.total, b.updates, b.closed) for b in bars] == [
        ("epoch 1", 14, 14, True), ("epoch 2", 14, 14, True)]
    assert set(bars[0].postfix) == {"loss"}


def test_verbose_without_progress_lines_in_short_epochs(backend, capsys):
    fit(_lm(backend), PATTERN, epochs=2, batch_size=4, seq_len=10, seed=0, verbose=True,
        log_every=1e6)
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 2


@pytest.mark.parametrize("log_every, exc", [(-1, ValueError), (math.inf, ValueError),
                                            (math.nan, ValueError), ("5", TypeError),
                                            (True, TypeError)])
def test_bad_log_every(backend, log_every, exc):
    with pytest.raises(exc, match="log_every"):
        fit(_lm(backend), PATTERN, batch_size=4, seq_len=10, verbose=True, log_every=log_every)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"epochs": 0}, ValueError, "epochs"),
    ({"epochs": 1.0}, TypeError, "epochs"),
    ({"steps": 0}, ValueError, "steps"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"seq_len": 0}, ValueError, "seq_len"),
    ({"partition": "x"}, ValueError, "partition"),
    ({"on_nonfinite": "x"}, ValueError, "on_nonfinite"),
    ({"optimizer": 3}, TypeError, "optimizer"),
    ({"optimizer": "nope"}, ValueError, "nope"),
    ({"loss": "hinge"}, ValueError, "loss"),
    ({"lr": -1.0}, ValueError, "lr"),
])
def test_bad_arguments(backend, kwargs, exc, match):
    model = _lm(backend)
    before = _copy(model.params)
    with pytest.raises(exc, match=match):
        fit(model, PATTERN, **{"batch_size": 4, "seq_len": 10, **kwargs})
    assert _params_equal(model.params, before)


@pytest.mark.parametrize("train, exc, match", [
    (np.zeros((5, 4), dtype=np.intp), TypeError, "data"),
    (np.linspace(0, 1, 100), TypeError, "dtype"),
    ((np.zeros((5, 4), dtype=np.intp),), TypeError, "data"),
    ((np.zeros((5, 4), dtype=np.intp), np.zeros((5, 3), dtype=np.intp)), ValueError, "targets"),
    ((np.zeros(5, dtype=np.intp), np.zeros(5, dtype=np.intp)), ValueError, "inputs"),
])
def test_bad_training_data(backend, train, exc, match):
    with pytest.raises(exc, match=match):
        fit(_lm(backend), train, batch_size=2, seq_len=3)


def test_stream_too_short_raises(backend):
    with pytest.raises(ValueError, match="too few"):
        fit(_lm(backend), PATTERN[:20], batch_size=4, seq_len=10)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate(_lm(backend), PATTERN[:1])


def test_checkpoint_best_only_needs_its_monitor(backend, tmp_path):
    """Like EarlyStopping: a monitored key that never appears is an error, not a silent no-op."""
    model = RNN(3, 8, 3, output="softmax", seed=0, backend=backend)
    stream = np.tile(np.arange(3), 40)
    with pytest.raises(KeyError, match="Checkpoint: no 'val_loss' in the history"):
        fit(model, stream, epochs=1, batch_size=2, seq_len=5,
            callbacks=[Checkpoint(tmp_path / "m.npz", best_only=True)])
