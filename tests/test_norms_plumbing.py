"""Normalized and regularized recurrences (``norm``, ``recurrent_dropout``, ``zoneout``,
``weight_drop``) through the tools around the model: ``fit`` and ``evaluate``, pickling,
``gradient_check``, and the refusal to export them to the torch and Keras layouts.

(Model files: tests/test_io.py; the command line: tests/test_cli.py; the scikit-learn
estimators: tests/test_sklearn.py.)
"""
import copy
import pickle

import numpy as np
import pytest

import cyrnn
from cyrnn import GRU, LSTM, RNN
from cyrnn.diagnostics import gradient_check
from cyrnn.train import Callback, Checkpoint, EarlyStopping, evaluate, fit

CELLS = [RNN, LSTM, GRU]
OPTIONS = {
    "layer": {"norm": "layer"},
    "batch": {"norm": "batch"},
    "regularizers": {"recurrent_dropout": 0.3, "zoneout": 0.2, "weight_drop": 0.25},
    "batch-zoneout-L2-bi": {"norm": "batch", "zoneout": 0.2, "num_layers": 2,
                            "bidirectional": True},
}


def _delay_task(n=48, T=8, seed=0):
    """Sequences ``(T, n, 2)``, time-major, whose target at each step is the input of the step
    before (a one-step memory): learnable in a few epochs by a small model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n, 2))
    y = np.zeros_like(x)
    y[1:] = x[:-1]
    return x, y


# ---------------------------------------------------------------------------------------------
# fit and evaluate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, options", [(LSTM, {"norm": "layer"}), (GRU, {"zoneout": 0.2}),
                                          (RNN, {"norm": "batch", "recurrent_dropout": 0.1})],
                         ids=["lstm-layer", "gru-zoneout", "elman-batch-recurrent-dropout"])
def test_fit_trains_a_normalized_or_regularized_model(backend, cls, options):
    train, val = _delay_task(seed=0), _delay_task(n=16, seed=1)
    model = cls(2, 12, 2, seed=0, backend=backend, dtype="float64", **options)
    before = evaluate(model, val)
    history = fit(model, train, val, epochs=12, batch_size=8, lr=0.02, seed=0)
    losses = history["loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    assert history["val_loss"][-1] < 0.6 * before
    assert np.isfinite(losses).all()


def test_fit_with_batch_norm_validates_with_the_running_statistics(backend):
    train, val = _delay_task(seed=0), _delay_task(n=15, seed=1)
    model = LSTM(2, 8, 2, norm="batch", seed=0, backend=backend, dtype="float64")
    assert all(a.shape == (0, a.shape[1]) for a in model.running.values())
    history = fit(model, train, val, epochs=3, batch_size=8, lr=0.02, seed=0)
    assert all(a.shape[0] == 8 for a in model.running.values())  # a statistic per step
    running = copy.deepcopy(model.running)
    params = {k: p.copy() for k, p in model.params.items()}
    # the last epoch's validation is evaluate on the trained model, and changes nothing
    assert evaluate(model, val) == pytest.approx(history["val_loss"][-1], rel=1e-12)
    for name, a in running.items():
        np.testing.assert_array_equal(model.running[name], a)
    for name, p in params.items():
        np.testing.assert_array_equal(model.params[name], p)
    # running statistics, not the batch's: each sequence's loss does not depend on the others
    # in its batch (batch statistics of one sequence would be degenerate)
    together = evaluate(model, val, batch_size=15)
    assert evaluate(model, val, batch_size=1) == pytest.approx(together, rel=1e-10)
    assert evaluate(model, val, batch_size=4) == pytest.approx(together, rel=1e-10)
    # and they are what it reads: other statistics, another loss
    model.running["mean_h"] += 1.0
    assert evaluate(model, val) != pytest.approx(together, rel=1e-6)


def test_fit_on_a_stream_with_batch_norm_validates_chunk_by_chunk():
    """Sequential partition: statistics per step of a chunk (S = seq_len), validation in chunks
    of seq_len with the state carried, as documented in ``fit``."""
    rng = np.random.default_rng(0)
    ids = np.tile(np.arange(6), 60) + 0 * rng.integers(0, 1, 360)
    model = GRU(6, 10, 6, output="softmax", norm="batch", seed=0, dtype="float64")
    history = fit(model, ids[:300], ids[300:], epochs=3, batch_size=4, seq_len=7, lr=0.02,
                  seed=0)
    assert {a.shape[0] for a in model.running.values()} == {7}
    assert history["loss"][-1] < history["loss"][0]
    chunked = evaluate(model, ids[300:], batch_size=4, seq_len=7)
    assert history["val_loss"][-1] == pytest.approx(chunked, rel=1e-12)
    # one call instead: steps 7 and beyond meet the last step's statistics, another loss
    assert evaluate(model, ids[300:], batch_size=4) != pytest.approx(chunked, rel=1e-9)
    # the random partition (a fresh state per subsequence) validates in one call
    model = GRU(6, 10, 6, output="softmax", norm="batch", seed=0, dtype="float64")
    history = fit(model, ids[:300], ids[300:], epochs=1, batch_size=4, seq_len=7,
                  partition="random", seed=0)
    assert history["val_loss"][-1] == pytest.approx(evaluate(model, ids[300:], batch_size=4),
                                                    rel=1e-12)


@pytest.mark.parametrize("cls, options", [(RNN, {}), (LSTM, {"norm": "layer"}),
                                          (GRU, {"zoneout": 0.3})])
def test_chunked_evaluation_of_a_stream_equals_one_call_without_batch_norm(cls, options):
    """For a model whose steps do not depend on their index, chunks with the state carried are
    the same computation as one call."""
    ids = np.random.default_rng(1).integers(0, 5, 203)
    model = cls(5, 6, 5, output="softmax", seed=0, dtype="float64", **options)
    whole = evaluate(model, ids, batch_size=3)
    for seq_len in (1, 7, 67, 1000):
        assert evaluate(model, ids, batch_size=3, seq_len=seq_len) == \
            pytest.approx(whole, rel=1e-12)
    assert evaluate(model, ids, batch_size=3, seq_len=7, reduction="sum") == \
        pytest.approx(evaluate(model, ids, batch_size=3, reduction="sum"), rel=1e-12)
    with pytest.raises(ValueError, match="seq_len"):
        evaluate(model, ids, seq_len=0)


def test_fit_needs_two_sequences_per_batch_with_batch_norm():
    model = RNN(2, 4, 2, norm="batch", seed=0)
    with pytest.raises(ValueError, match=r"norm='batch': training needs at least 2 sequences "
                                         r"per batch \(batch statistics\), got 1"):
        fit(model, _delay_task(n=4), batch_size=1)
    # 9 sequences in batches of 4: the last one joins the batch before
    history = fit(model, _delay_task(n=9), batch_size=4, epochs=2, seed=0)
    assert len(history.steps) == 4
    # without batch normalization, it is a batch of its own
    assert len(fit(RNN(2, 4, 2, seed=0), _delay_task(n=9), batch_size=4, seed=0).steps) == 3


def test_checkpoint_callback_keeps_the_running_statistics(tmp_path):
    train, val = _delay_task(seed=0), _delay_task(n=8, seed=1)
    model = GRU(2, 6, 2, norm="batch", seed=0)
    fit(model, train, val, epochs=2, batch_size=8, seed=0,
        callbacks=[Checkpoint(tmp_path / "best.npz", best_only=True)])
    loaded, state, extra = cyrnn.load_checkpoint(tmp_path / "best.npz")
    assert loaded.norm == "batch" and extra["epoch"] in (1, 2)
    assert set(loaded.running) == set(model.running)
    assert all(a.shape[0] == 8 for a in loaded.running.values())
    assert {key.split("/")[1] for key in state["buffers"]} == set(model.params)


def test_early_stopping_restores_the_running_statistics_with_the_weights():
    train, val = _delay_task(seed=0), _delay_task(n=8, seed=1)

    class Snapshot(Callback):
        """The model after each epoch (parameters and running statistics)."""

        def __init__(self):
            self.taken = []

        def on_epoch_end(self, state):
            self.taken.append(copy.deepcopy((state.model.params, state.model.running)))
            return False

    snapshot = Snapshot()
    stopper = EarlyStopping(monitor="loss", patience=1, min_delta=1e9)  # epoch 1 stays best
    model = LSTM(2, 6, 2, norm="batch", seed=0)
    fit(model, train, val, epochs=4, batch_size=8, seed=0, callbacks=[snapshot, stopper])
    assert stopper.best_epoch == 1 and len(snapshot.taken) == 2
    params, running = snapshot.taken[0]
    assert any(not np.array_equal(running[k], a) for k, a in snapshot.taken[1][1].items())
    for name, a in running.items():
        np.testing.assert_array_equal(model.running[name], a)
    for name, p in params.items():
        np.testing.assert_array_equal(model.params[name], p)


# ---------------------------------------------------------------------------------------------
# pickling (processes, joblib, deepcopy)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("cls", CELLS, ids=["elman", "lstm", "gru"])
def test_pickle_round_trip(cls, name):
    model = cls(3, 4, 2, seed=0, **OPTIONS[name])
    rng = np.random.default_rng(0)
    for steps in (3, 5):
        model.loss_and_grad(rng.standard_normal((steps, 4, 3)),
                            rng.standard_normal((steps, 4, 2)))
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone) is cls and clone.config() == model.config()
        for key, p in model.params.items():
            assert clone.params[key].tobytes() == p.tobytes(), key
        assert list(clone.running) == list(model.running)
        for key, a in model.running.items():
            assert clone.running[key].tobytes() == a.tobytes(), key
        x = rng.standard_normal((6, 2, 3))
        a, b = model.forward(x)[0], clone.forward(x)[0]
        assert a.tobytes() == b.tobytes()
        # the generator travels too: the same masks next
        x, y = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 2))
        twin = pickle.loads(pickle.dumps(clone))
        assert clone.loss_and_grad(x, y)[0] == twin.loss_and_grad(x, y)[0]


# ---------------------------------------------------------------------------------------------
# export to torch and Keras layouts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, named", [
    ({"norm": "layer"}, ["norm='layer'"]),
    ({"norm": "batch"}, ["norm='batch'", "running statistics"]),
    ({"zoneout": 0.1}, ["zoneout=0.1"]),
    ({"recurrent_dropout": 0.2}, ["recurrent_dropout=0.2", "from_params"]),
    ({"weight_drop": 0.5}, ["weight_drop=0.5", "from_params"]),
    ({"norm": "layer", "weight_drop": 0.5}, ["norm='layer'", "weight_drop=0.5",
                                             "different network"]),
])
@pytest.mark.parametrize("cls", CELLS, ids=["elman", "lstm", "gru"])
def test_export_of_an_option_the_layouts_lack_is_refused(cls, options, named):
    model = cls(3, 4, 2, seed=0, **options)
    grads = {k: np.ones_like(p) for k, p in model.params.items()}
    for export, layout in ((model.to_torch_state, "torch.nn.RNN/LSTM/GRU"),
                           (lambda: model.to_torch_state(grads), "torch.nn.RNN/LSTM/GRU"),
                           (model.to_keras_weights, "Keras SimpleRNN/LSTM/GRU")):
        with pytest.raises(ValueError, match=f"cannot export to the {layout} layout") as info:
            export()
        for text in named:
            assert text in str(info.value)


def test_training_only_regularizers_export_through_a_plain_copy():
    """What the message of a training-only option proposes works: the same parameters in a
    model without it give the same outputs at inference, and export."""
    model = LSTM(3, 4, 2, seed=0, recurrent_dropout=0.3, weight_drop=0.2, output="linear")
    with pytest.raises(ValueError, match=r"computes the same at inference but would train "
                                         r"without recurrent_dropout and weight_drop"):
        model.to_torch_state()
    plain = LSTM.from_params(model.params, output=model.output)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(plain.forward(x)[0], model.forward(x)[0])
    state = plain.to_torch_state()
    np.testing.assert_array_equal(state["rnn.weight_hh_l0"], model.params["Whh"])
    layers, dense = plain.to_keras_weights()
    assert len(layers) == 1 and dense is not None


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("cls", CELLS, ids=["elman", "lstm", "gru"])
def test_import_into_a_normalized_model_is_refused(cls, norm):
    """torch and Keras layers have no gains: from_torch and from_keras refuse a norm, naming it
    (a bare KeyError of missing gains before); the regularizers import."""
    plain = cls(3, 4, 2, seed=0)
    state = plain.to_torch_state()
    layers, dense = plain.to_keras_weights()
    for load, framework in ((lambda **k: cls.from_torch(state, **k), "torch"),
                            (lambda **k: cls.from_keras(layers, dense, **k), "Keras")):
        with pytest.raises(ValueError, match=f"norm='{norm}': {framework}'s recurrent layers "
                                             "have no normalization"):
            load(norm=norm)
        model = load(zoneout=0.1, weight_drop=0.2)
        assert model.architecture.zoneout == 0.1
        np.testing.assert_array_equal(model.params["Whh"], plain.params["Whh"])


# ---------------------------------------------------------------------------------------------
# gradient_check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("cls", CELLS, ids=["elman", "lstm", "gru"])
def test_gradient_check_of_normalized_and_regularized_models(backend, cls, name):
    options = OPTIONS[name]
    H, T = (2, 3) if options.get("num_layers", 1) > 1 else (3, 4)  # the stack: smaller
    model = cls(2, H, 2, seed=1, backend=backend, **options)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, 3, 2)), rng.standard_normal((T, 3, 2))
    # nonzero initial states: a layer normalization of the zero recurrent term of step 0 is
    # so curved that central differences lose their accuracy there
    D = model.num_layers * (2 if model.bidirectional else 1)
    h0 = rng.standard_normal((D, 3, H))
    h0 = (h0, rng.standard_normal((D, 3, H))) if cls is LSTM else h0
    if D == 1:
        h0 = tuple(h[0] for h in h0) if cls is LSTM else h0[0]
    before = model.generator.bit_generator.state
    # eps 1e-5: the normalizations' gradients of h0 are about 1e-6 from rounding at eps 1e-6
    errors = gradient_check(model, x, y, h0=h0, eps=1e-5)
    assert model.generator.bit_generator.state == before  # the model is not touched
    expected = set(model.params) | {"h0", "x"} | ({"c0"} if cls is LSTM else set())
    assert set(errors) == expected
    for key, error in errors.items():
        assert error < 1e-6, (key, error)


def test_gradient_check_fixes_the_masks_of_regularizers():
    """Without dropout_seed, a regularized model is checked with dropout_seed=0: the same as
    passing it; another seed checks other masks, just as well."""
    model = GRU(2, 3, 2, seed=1, zoneout=0.4, recurrent_dropout=0.4, weight_drop=0.4)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2))
    assert gradient_check(model, x, y) == gradient_check(model, x, y, dropout_seed=0)
    assert max(gradient_check(model, x, y, dropout_seed=9).values()) < 1e-6
    # the masks matter: the gradients of two seeds differ
    a = model.loss_and_grad(x, y, dropout_seed=0)[1]["Whh"]
    b = model.loss_and_grad(x, y, dropout_seed=9)[1]["Whh"]
    assert not np.allclose(a, b)


def test_gradient_check_of_a_normalized_model_refuses_truncation():
    model = LSTM(2, 3, 2, norm="layer", seed=0)
    x, y = np.ones((4, 2, 2)), np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match=r"truncate: gradient_check's truncation surrogate runs "
                                         r"the plain cell"):
        gradient_check(model, x, y, truncate=cyrnn.TBPTT(2))
    with pytest.raises(ValueError, match=r"at least 2 sequences"):
        gradient_check(LSTM(2, 3, 2, norm="batch", seed=0), x[:, :1], y[:, :1])
