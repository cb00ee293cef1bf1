"""Every tool of the library on LSTM and GRU models: the model file (the ``cell`` key), the
``cyrnn`` command, ``fit``/``evaluate`` (the LSTM state pair carried between chunks of a
stream), ``gradient_check`` (full BPTT and the truncation surrogate), the scikit-learn
estimators and ``fit_many``/pickling."""
import copy
import json
import pickle
import zipfile

import numpy as np
import pytest

import cyrnn
from cyrnn import GRU, LSTM, RNN, TBPTT, RandomizedTruncation, clip, optim
from cyrnn import _modelfile
from cyrnn import train as train_mod
from cyrnn.cli import main
from cyrnn.diagnostics import gradient_check
from cyrnn.io import ModelFileError, load, load_checkpoint, save

GATED = [LSTM, GRU]
GATED_IDS = ["lstm", "gru"]
#: The configuration keys of a cyrnn 0.1 file, all of them (0.1 refuses any other).
CONFIG_KEYS_0_1 = {"input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
                   "output", "init", "dtype", "batch_first"}


def _model(cls, backend="cython", dtype=np.float32, **kwargs):
    """A small char model whose parameters are not the initial ones."""
    kwargs = {"output_size": 5, "output": "softmax", **kwargs}
    model = cls(5, 6, kwargs.pop("output_size"), dtype=dtype, seed=3, backend=backend, **kwargs)
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += (rng.standard_normal(p.shape) * 1e-3).astype(p.dtype)
    return model


def _meta(path):
    with np.load(path) as f:
        return json.loads(bytes(f["metadata.json"]).decode())


def _rewrite_meta(path, change):
    """The file at ``path`` with its metadata changed by ``change(meta)`` (members kept)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    meta = _meta(path)
    change(meta)
    text = json.dumps(meta).encode()
    buf = __import__("io").BytesIO()
    np.save(buf, np.frombuffer(text, dtype=np.uint8))
    members["metadata.json.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
@pytest.mark.parametrize("shape", [{}, {"num_layers": 2, "dropout": 0.25},
                                   {"bidirectional": True},
                                   {"output_size": None, "output": "linear", "batch_first": True}],
                         ids=["one", "L2-dropout", "bi", "no-head"])
def test_gated_round_trip_is_bit_exact(backend, dtype, tmp_path, cls, shape):
    model = _model(cls, backend, dtype, **shape)
    for i, writer in enumerate((model.save, lambda p: save(model, p))):
        path = tmp_path / f"m{i}.npz"
        writer(path)
        loaded = load(path, backend=backend)
        assert type(loaded) is cls and loaded.architecture == model.architecture
        assert loaded.config() == model.config()
        assert list(loaded.params) == list(model.params)
        for name, p in model.params.items():
            assert loaded.params[name].dtype == p.dtype
            assert loaded.params[name].tobytes() == p.tobytes(), name
        x = np.random.default_rng(1).integers(0, 5, (6, 2))
        if model.batch_first:
            x = x.T
        (y, h), (y2, h2) = model.forward(x), loaded.forward(x)
        assert y.tobytes() == y2.tobytes()
        for a, b in zip(h if cls is LSTM else (h,), h2 if cls is LSTM else (h2,)):
            assert a.tobytes() == b.tobytes()
    if cls is GRU:
        assert any(name.startswith("bhn") for name in loaded.params)


def test_cell_key_is_stored_only_for_gated_cells(tmp_path):
    RNN(4, 5, 4, seed=0).save(tmp_path / "elman.npz")
    assert set(_meta(tmp_path / "elman.npz")["config"]) == CONFIG_KEYS_0_1
    for cls, cell in ((LSTM, "lstm"), (GRU, "gru")):
        cls(4, 5, 4, seed=0).save(tmp_path / f"{cell}.npz")
        config = _meta(tmp_path / f"{cell}.npz")["config"]
        # every 0.1 key, with the Elman-only ones at their defaults, and the cell
        assert set(config) == CONFIG_KEYS_0_1 | {"cell"}
        assert config["cell"] == cell
        assert (config["nonlinearity"], config["negative_slope"]) == ("tanh", 0.01)


def _read_as_0_1(path):
    """What cyrnn 0.1's reader does with a configuration: refuse keys it does not know (its
    check, as it was: ``missing [...], unexpected [...]``)."""
    config = _meta(path)["config"]
    unexpected = sorted(set(config) - CONFIG_KEYS_0_1)
    if unexpected:
        raise ModelFileError(path, f"model configuration: missing [], unexpected {unexpected}")
    return config


def test_a_0_1_reader_refuses_gated_files_and_reads_elman_ones(tmp_path):
    RNN(4, 5, 4, num_layers=1, seed=0).save(tmp_path / "elman.npz")
    _read_as_0_1(tmp_path / "elman.npz")
    for cls in GATED:
        cls(4, 5, 4, seed=0).save(tmp_path / "gated.npz")
        with pytest.raises(ModelFileError, match=r"unexpected \['cell'\]"):
            _read_as_0_1(tmp_path / "gated.npz")


def test_elman_file_bytes_do_not_depend_on_the_writer(tmp_path):
    """``RNN.save`` (no cell in ``config()``) and ``cyrnn.io.save`` (cell "elman") write the
    same bytes: the Elman file is the 0.1 file."""
    model = RNN(4, 5, 4, seed=0, nonlinearity="relu")
    model.save(tmp_path / "a.npz")
    save(model, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
@pytest.mark.parametrize("name, kwargs", [("adam", {"lr": 0.01}),
                                          ("sgd", {"lr": 0.1, "momentum": 0.9})])
def test_gated_optimizer_resume_is_bit_identical(backend, tmp_path, cls, name, kwargs):
    rng = np.random.default_rng(5)
    batches = [(rng.integers(0, 5, (6, 3)), rng.integers(0, 5, (6, 3))) for _ in range(5)]

    def make():
        return cls(5, 6, 5, num_layers=2, bidirectional=True, dropout=0.3, output="softmax",
                   seed=4, backend=backend)

    def step(model, opt, i):
        x, y = batches[i]
        opt.step(model.loss_and_grad(x, y, dropout_seed=i)[1])

    full = make()
    full_opt = optim.make_optimizer(name, full.params, **kwargs)
    for i in range(5):
        step(full, full_opt, i)
    first = make()
    first_opt = optim.make_optimizer(name, first.params, **kwargs)
    for i in range(2):
        step(first, first_opt, i)
    first.save(tmp_path / "ckpt.npz", optimizer=first_opt)
    model, state, _ = load_checkpoint(tmp_path / "ckpt.npz", backend=backend)
    assert type(model) is cls
    assert {key.split("/")[1] for key in state["buffers"]} == set(model.params)
    opt = optim.make_optimizer(state["type"], model.params, **state["config"])
    opt.load_state_dict(state)
    for i in range(2, 5):
        step(model, opt, i)
    for p in model.params:
        assert model.params[p].tobytes() == full.params[p].tobytes(), p


def _config_change(**values):
    def change(meta):
        for key, value in values.items():
            if value is _DELETE:
                del meta["config"][key]
            else:
                meta["config"][key] = value
    return change


_DELETE = object()


@pytest.mark.parametrize("cls, values, match", [
    (LSTM, {"cell": "LSTM"}, "cell: expected one of elman, lstm, gru, got 'LSTM'"),
    (LSTM, {"cell": None}, "cell: expected one of elman, lstm, gru, got None"),
    (LSTM, {"cell": 1}, "cell: expected one of elman, lstm, gru, got 1"),
    (GRU, {"cell": ["gru"]}, r"cell: expected one of elman, lstm, gru, got \['gru'\]"),
    (LSTM, {"nonlinearity": "relu"}, "nonlinearity: a lstm cell has none; its file holds 'tanh'"),
    (GRU, {"negative_slope": 0.3}, "negative_slope: a gru cell has none; its file holds 0.01"),
    (GRU, {"negative_slope": 0}, "negative_slope: a gru cell has none"),
    (LSTM, {"init": "identity"}, r"init: 'identity' \(IRNN\) is for Elman cells, not lstm"),
    # the members no longer match the configuration
    (LSTM, {"cell": _DELETE}, r"parameter Wxh: expected shape \(6, 5\), got \(24, 5\)"),
    (LSTM, {"cell": "gru"}, "parameter bhn, optimizer buffer exp_avg/bhn, .* missing"),
    (GRU, {"cell": "lstm"}, "unexpected members 'optim/exp_avg/bhn.npy'"),
    (LSTM, {"cell": "elman"}, r"parameter Wxh: expected shape \(6, 5\), got \(24, 5\)"),
])
def test_cell_key_is_checked(tmp_path, cls, values, match):
    path = tmp_path / "m.npz"
    _model(cls).save(path, optimizer=optim.Adam(_model(cls).params))
    _rewrite_meta(path, _config_change(**values))
    for reader in (load, load_checkpoint):
        with pytest.raises(ModelFileError, match=match) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")


def test_a_gru_file_without_bhn_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    GRU(4, 5, 4, seed=0).save(path)
    with zipfile.ZipFile(path) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    del members["param/bhn.npy"]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match="parameter bhn missing"):
        load(path)


def test_writer_refuses_what_the_reader_refuses(tmp_path):
    model = LSTM(4, 5, 4, seed=0)
    config = {**model.config(), "cell": "lstm"}
    for bad, match in [({"nonlinearity": "relu"}, "nonlinearity: a lstm cell has none"),
                       ({"negative_slope": 0.2}, "negative_slope: a lstm cell has none"),
                       ({"init": "identity"}, "init: 'identity'"),
                       ({"cell": "peephole"}, "cell: expected one of elman, lstm, gru")]:
        with pytest.raises(ValueError, match=match):
            _modelfile.write(tmp_path / "x.npz", {**config, **bad}, model.params)
    # the cell and the parameters disagree
    with pytest.raises(ValueError, match=r"params\['Wxh'\]: expected shape \(15, 4\)"):
        _modelfile.write(tmp_path / "x.npz", {**config, "cell": "gru"},
                         {**model.params, "bhn": np.zeros(5, np.float32)} | {})
    assert not (tmp_path / "x.npz").exists()


def test_elman_files_of_0_1_and_of_stacks_still_load(tmp_path):
    """An Elman stack with a non-default nonlinearity: unchanged by the cell key."""
    model = RNN(4, 5, 4, num_layers=2, nonlinearity="leaky_relu", negative_slope=0.3, seed=0)
    model.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert type(loaded) is RNN and loaded.config() == model.config()


# ---------------------------------------------------------------------------------------------
# the cyrnn command
# ---------------------------------------------------------------------------------------------

TEXT = ("the quick brown fox jumps over the lazy dog; "
        "pack my box with five dozen liquor jugs.\n") * 12


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize("cell, cls", [("lstm", LSTM), ("gru", GRU), ("elman", RNN)])
def test_cli_trains_and_samples_each_cell(tmp_path, corpus, capsys, cell, cls):
    ckpt = tmp_path / f"{cell}.npz"
    assert main(["train", str(corpus), "--cell", cell, "--steps", "4", "--hidden", "8",
                 "--num-layers", "2", "--dropout", "0.1", "--batch-size", "2", "--seq-len", "8",
                 "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cls.__name__}(input_size=")
    model = load(ckpt)
    assert type(model) is cls and model.num_layers == 2 and model.vocab is not None
    assert main(["sample", str(ckpt), "-n", "30", "--prime", "the", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the") and len(text.rstrip("\n")) >= 3
    assert text == "the" + model.sample("the", 30, seed=1) + "\n"
    assert main(["sample", str(ckpt), "-n", "10", "--greedy"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cli_refuses_nonlinearity_for_gated_cells(tmp_path, corpus, capsys, cell):
    for value in ("relu", "tanh"):
        code = main(["train", str(corpus), "--cell", cell, "--nonlinearity", value,
                     "--checkpoint", str(tmp_path / "m.npz")])
        assert code == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"cyrnn train: --nonlinearity is for --cell elman; the gates of "
                              f"--cell {cell}")
    assert not (tmp_path / "m.npz").exists()


def test_cli_cell_help_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--cell {elman,lstm,gru}" in out
    with pytest.raises(SystemExit) as info:
        main(["train", "x.txt", "--cell", "peephole"])
    assert info.value.code == 2
    assert "invalid choice: 'peephole'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# fit and evaluate
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_sequential_stream_carries_the_state_and_cuts_the_gradient(backend, cls, layers):
    """``fit`` on a stream with partition="sequential" is the manual loop that passes each
    chunk's last states (the LSTM pair) as the next chunk's constant initial states: the same
    updates, bit for bit; the first chunk of each epoch starts from zeros."""
    ids = np.random.default_rng(0).integers(0, 5, 400)

    def make():
        return cls(5, 6, 5, num_layers=layers, output="softmax", seed=1, backend=backend)

    seen = []
    model = make()
    real = model.loss_and_grad

    def spy(x, target, h0=None, **kwargs):
        seen.append(h0)
        result = real(x, target, h0=h0, **kwargs)
        seen.append(result[2])
        return result

    model.loss_and_grad = spy
    history = cyrnn.fit(model, ids, epochs=2, batch_size=4, seq_len=10, lr=0.01, seed=7)
    del model.loss_and_grad
    starts, ends = seen[0::2], seen[1::2]
    per_epoch = len(starts) // 2
    assert starts[0] is None and starts[per_epoch] is None
    for i in range(1, len(starts)):
        if i == per_epoch:
            continue
        assert starts[i] is ends[i - 1]  # the last states, handed on as they came back
        if cls is LSTM:
            assert isinstance(starts[i], tuple) and len(starts[i]) == 2

    reference = make()
    opt = optim.make_optimizer("adam", reference.params, lr=0.01)
    rng = np.random.default_rng(7)
    batches = train_mod._stream_batches(ids, 4, 10, "sequential", rng)
    losses = []
    for _ in range(2):
        h = None
        for x, y in batches:
            # the carried state is a constant: detached copies give the same update
            h0 = None if h is None else copy.deepcopy(h)
            value, grads, h = reference.loss_and_grad(x, y, h0=h0, input_grad=False)
            losses.append(value)
            opt.step(grads)
    assert [s["loss"] for s in history.steps] == losses
    for name, p in reference.params.items():
        assert model.params[name].tobytes() == p.tobytes(), name


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_the_carried_state_changes_the_loss(cls):
    """Carrying matters: the second chunk's loss from the carried state is not the loss from
    zeros (so the test above would notice a dropped state)."""
    model = cls(5, 6, 5, output="softmax", seed=1)
    x = np.random.default_rng(0).integers(0, 5, (10, 4))
    _, _, h = model.loss_and_grad(x, x)
    assert model.evaluate(x, x, h0=h)[0] != model.evaluate(x, x)[0]


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_grad_norm_counts_parameters_only(cls):
    model = cls(5, 6, 5, output="softmax", seed=1)
    ids = np.random.default_rng(0).integers(0, 5, 200)
    probe = cls(5, 6, 5, output="softmax", seed=1)
    batches = train_mod._stream_batches(ids, 4, 10, "sequential", np.random.default_rng(3))
    x, y = next(iter(batches))
    _, grads, _ = probe.loss_and_grad(x, y, input_grad=False)
    expected = clip.grad_norm({k: g for k, g in grads.items() if k in probe.params})
    history = cyrnn.fit(model, ids, steps=1, batch_size=4, seq_len=10, seed=3, clip_norm=1e-3)
    assert history.steps[0]["grad_norm"] == pytest.approx(expected, rel=1e-12)


def test_clip_skips_the_lstm_initial_cell_state_gradient():
    model = LSTM(3, 4, 3, output="softmax", seed=0)
    x = np.random.default_rng(0).integers(0, 3, (5, 2))
    _, grads, _ = model.loss_and_grad(x, x, input_grad=False)
    params_only = {k: g for k, g in grads.items() if k in model.params}
    assert clip.grad_norm(grads) == clip.grad_norm(params_only)


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_fit_on_sequences_with_lengths_early_stopping_and_checkpoint(backend, tmp_path, cls):
    rng = np.random.default_rng(0)
    N, T = 40, 7
    x = rng.standard_normal((N, T, 3))
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float64)[:, None]
    lengths = rng.integers(2, T + 1, N)
    model = cls(3, 8, 1, num_layers=2, bidirectional=True, output="sigmoid", dtype="float64",
                seed=0, backend=backend, batch_first=True)
    ckpt = tmp_path / "best.npz"
    stop = cyrnn.EarlyStopping(patience=2, restore_best=True)
    history = cyrnn.fit(model, (x[:30], y[:30], lengths[:30]), (x[30:], y[30:], lengths[30:]),
                        epochs=40, batch_size=8, lr=0.02, target_steps="last", seed=1,
                        callbacks=[stop, cyrnn.Checkpoint(ckpt, best_only=True)])
    assert len(history.epochs) >= 3 and "val_loss" in history.epochs[0]
    assert history.epochs[0]["loss"] > history.epochs[-1]["loss"]
    saved, state, extra = load_checkpoint(ckpt, backend=backend)
    assert type(saved) is cls and state is not None and extra["epoch"] >= 1
    value = cyrnn.evaluate(model, (x[30:], y[30:], lengths[30:]), target_steps="last")
    assert value == pytest.approx(min(e["val_loss"] for e in history.epochs), rel=1e-12)
    # the checkpoint is the best epoch: the model EarlyStopping restored
    assert cyrnn.evaluate(saved, (x[30:], y[30:], lengths[30:]), target_steps="last") == \
        pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_fit_random_partition_truncation_and_stream_evaluate(backend, cls):
    ids = np.random.default_rng(0).integers(0, 5, 600)
    model = cls(5, 8, 5, output="softmax", seed=0, backend=backend)
    before = cyrnn.evaluate(model, ids)
    history = cyrnn.fit(model, ids[:500], ids[500:], epochs=3, batch_size=8, seq_len=12,
                        partition="random", truncate=TBPTT(4, 4), lr=0.02, seed=0,
                        clip_norm=1.0)
    assert np.isfinite(history.epochs[-1]["val_loss"])
    assert cyrnn.evaluate(model, ids) < before


# ---------------------------------------------------------------------------------------------
# gradient_check
# ---------------------------------------------------------------------------------------------

TOL = 1e-6


def _check_all(errors, names):
    assert set(names) <= set(errors), (names, errors)
    for name, err in errors.items():
        assert err < TOL, (name, errors)


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_gradient_check_full_bptt(backend, cls):
    rng = np.random.default_rng(0)
    model = cls(3, 3, 2, num_layers=2, bidirectional=True, seed=0, backend=backend)
    x = rng.standard_normal((5, 2, 3))
    y = rng.standard_normal((5, 2, 2))
    states = ["h0", "c0"] if cls is LSTM else ["h0"]
    errors = gradient_check(model, x, y, lengths=[5, 3])
    _check_all(errors, [*model.params, *states, "x"])
    h0 = rng.standard_normal((4, 2, 3))
    h0 = (h0, rng.standard_normal((4, 2, 3))) if cls is LSTM else h0
    errors = gradient_check(model, x, y[-1], h0=h0, target_steps="last", input_grad=False)
    _check_all(errors, [*model.params, *states])
    assert "x" not in errors and (cls is GRU or "c0" in errors)


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_gradient_check_with_dropout_seed(cls):
    rng = np.random.default_rng(1)
    model = cls(3, 3, 3, num_layers=3, dropout=0.4, output="softmax", seed=0)
    x = rng.integers(0, 3, (4, 2))
    y = rng.integers(0, 3, (4, 2))
    with pytest.raises(ValueError, match="dropout_seed"):
        gradient_check(model, x, y)
    _check_all(gradient_check(model, x, y, dropout_seed=5), model.params)


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
@pytest.mark.parametrize("truncate", [2, 3, TBPTT(2, 2), TBPTT(2, 3),
                                      RandomizedTruncation(0.5, seed=0)],
                         ids=["k2", "k3", "tbptt22", "tbptt23", "randomized"])
@pytest.mark.parametrize("shape", [{}, {"num_layers": 2, "bidirectional": True}],
                         ids=["one", "L2-bi"])
def test_gradient_check_truncation_surrogate(backend, cls, truncate, shape):
    """The truncated gradient of a gated model is the derivative of the surrogate (which runs
    the cell's own layer kernel), and is not the full gradient (the check discriminates)."""
    rng = np.random.default_rng(2)
    model = cls(3, 3, 2, seed=0, backend=backend, **shape)
    T = 6
    x = rng.standard_normal((T, 2, 3))
    y = rng.standard_normal((T, 2, 2))
    lengths = [T, 4] if shape else None
    states = ["h0", "c0"] if cls is LSTM else ["h0"]
    errors = gradient_check(model, x, y, truncate=copy.deepcopy(truncate), lengths=lengths)
    _check_all(errors, [*model.params, *states, "x"])
    m64 = cls.from_params(model.params, dtype="float64", backend=backend)
    full = m64.loss_and_grad(x, y, lengths=lengths)[1]
    cut = m64.loss_and_grad(x, y, lengths=lengths, truncate=copy.deepcopy(truncate))[1]
    assert not np.allclose(full["Whh"], cut["Whh"], rtol=1e-4, atol=0)


def test_gradient_check_catches_a_wrong_lstm_gradient(monkeypatch):
    """A gradient wrong in one entry is reported (the check is not vacuous for gated cells)."""
    model = LSTM(2, 2, 2, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 2)), rng.standard_normal((4, 1, 2))
    real = LSTM.loss_and_grad
    calls = []

    def wrong(self, *args, **kwargs):
        value, grads, h = real(self, *args, **kwargs)
        if not calls:
            grads["c0"] = grads["c0"] * 1.01
        calls.append(1)
        return value, grads, h

    monkeypatch.setattr(LSTM, "loss_and_grad", wrong)
    errors = gradient_check(model, x, y)
    assert 1e-3 < errors["c0"] < 0.1 and errors["Whh"] < TOL


# ---------------------------------------------------------------------------------------------
# scikit-learn
# ---------------------------------------------------------------------------------------------

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 6, 3))
    y = np.where(X[:, :, 0].sum(axis=1) > 0, "up", "down")
    return X, y


@pytest.mark.parametrize("cell, cls", [("lstm", LSTM), ("gru", GRU), ("elman", RNN)])
def test_estimators_build_the_cell(sequences, cell, cls):
    from cyrnn.sklearn import RNNClassifier, RNNRegressor

    X, y = sequences
    clf = RNNClassifier(cell=cell, max_iter=15, random_state=0, num_layers=2).fit(X, y)
    assert type(clf.model_) is cls and clf.model_.batch_first
    assert clf.score(X, y) > 0.7
    reg = RNNRegressor(cell=cell, max_iter=3, random_state=0).fit(X, X[:, :, 0].sum(axis=1))
    assert type(reg.model_) is cls
    # ragged sequences (lengths) and sample weights
    ragged = [X[i, : 3 + i % 4] for i in range(len(X))]
    w = np.linspace(0.5, 2, len(X))
    clf = RNNClassifier(cell=cell, max_iter=2, random_state=0).fit(ragged, y, sample_weight=w)
    assert clf.predict(ragged).shape == (len(X),)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nonlinearity_is_ignored_for_gated_cells(sequences, cell):
    from cyrnn.sklearn import RNNClassifier

    X, y = sequences
    a = RNNClassifier(cell=cell, nonlinearity="tanh", max_iter=2, random_state=0).fit(X, y)
    b = RNNClassifier(cell=cell, nonlinearity="relu", max_iter=2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not hasattr(a.model_, "nonlinearity") or type(a.model_) is not RNN


def test_grid_search_over_cell(sequences):
    from sklearn.model_selection import GridSearchCV

    from cyrnn.sklearn import RNNClassifier

    X, y = sequences
    search = GridSearchCV(RNNClassifier(max_iter=3, random_state=0),
                          {"cell": ["elman", "lstm", "gru"], "nonlinearity": ["tanh", "relu"]},
                          cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.model_.architecture.cell == search.best_params_["cell"]


# ---------------------------------------------------------------------------------------------
# fit_many and pickling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_pickle_round_trips_the_class(backend, cls):
    model = _model(cls, backend, num_layers=2, bidirectional=True, dropout=0.2)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(copied) is cls and copied.config() == model.config()
        assert copied.architecture == model.architecture
        for name, p in model.params.items():
            assert copied.params[name].tobytes() == p.tobytes()
        x = np.random.default_rng(0).integers(0, 5, (5, 2))
        assert copied.forward(x)[0].tobytes() == model.forward(x)[0].tobytes()


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_fit_many_gated_models_equals_serial(executor):
    ids = np.random.default_rng(0).integers(0, 5, 500)

    def models():
        return [LSTM(5, 6, 5, output="softmax", seed=0, num_layers=2),
                GRU(5, 6, 5, output="softmax", seed=1), RNN(5, 6, 5, output="softmax", seed=2)]

    kwargs = {"epochs": 2, "batch_size": 4, "seq_len": 10, "seed": 0, "lr": 0.01}
    reference = [(m, cyrnn.fit(m, ids, **kwargs)) for m in models()]
    results = cyrnn.fit_many(models(), ids, executor=executor, n_jobs=3, **kwargs)
    for (model, history), (ref, ref_history) in zip(results, reference):
        assert type(model) is type(ref)
        assert [s["loss"] for s in history.steps] == [s["loss"] for s in ref_history.steps]
        for name, p in ref.params.items():
            assert model.params[name].tobytes() == p.tobytes(), name


@pytest.mark.parametrize("cls", GATED, ids=GATED_IDS)
def test_gradient_norms_and_decay(backend, cls):
    from cyrnn.diagnostics import gradient_decay, gradient_norms

    model = cls(3, 4, 3, num_layers=2, output="softmax", seed=0, backend=backend)
    x = np.random.default_rng(0).integers(0, 3, (6, 2))
    norms = gradient_norms(model, x, x[-1], target_steps="last", truncate=TBPTT(3, 3))
    assert norms.shape == (6,) and np.isfinite(norms).all()
    decay = gradient_decay(model, 8, batch_size=4, seed=0)
    assert decay.shape == (8,) and np.isfinite(decay).all()
    assert decay[-1] == pytest.approx(1.0, rel=0.2)  # the unit error itself (plus layer 0's)
    assert decay[0] < decay[-1]
