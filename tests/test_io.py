"""Saving and loading: ``cyrnn.io.save`` / ``load`` / ``load_checkpoint`` and ``RNN.save``.

A round trip is bit-exact; an optimizer restored from a checkpoint continues exactly as the one
that was saved; a damaged or foreign file raises ``ValueError`` naming the file and never runs
anything stored in it.
"""
import json
import os
import pathlib
import pickle

import numpy as np
import pytest

import cyrnn
from cyrnn import RNN, Vocabulary, kernels, optim
from cyrnn.io import load, load_checkpoint, save


def _trained_model(backend, dtype, **kwargs):
    """A small model whose parameters are not the initial ones (a few SGD steps)."""
    kwargs = {"output_size": 5, "output": "softmax", **kwargs}
    model = RNN(5, 8, kwargs.pop("output_size"), dtype=dtype, seed=3, backend=backend, **kwargs)
    rng = np.random.default_rng(0)
    # values that do not round-trip through float32 or a decimal text form
    for p in model.params.values():
        p += (rng.standard_normal(p.shape) * 1e-3).astype(p.dtype)
    return model


def _read_npz(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _meta(arrays):
    return json.loads(arrays["metadata.json"].tobytes().decode("utf-8"))


def _write_npz(path, arrays, meta=None):
    arrays = dict(arrays)
    if meta is not None:
        arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _assert_same_model(a, b):
    for key in ("input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
                "output", "init", "dtype", "batch_first"):
        assert getattr(a, key) == getattr(b, key), key
    assert list(a.params) == list(b.params)
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype
        assert a.params[name].tobytes() == b.params[name].tobytes(), name


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    {},
    {"nonlinearity": "leaky_relu", "negative_slope": 0.2},
    {"nonlinearity": "relu", "init": "identity", "output": "linear"},
    {"nonlinearity": "sigmoid", "output": "sigmoid", "output_size": 2},
    {"nonlinearity": "identity", "init": "orthogonal", "batch_first": True},
    {"output_size": None, "output": "linear", "init": "xavier"},
])
def test_round_trip_is_bit_exact(backend, dtype, tmp_path, config):
    model = _trained_model(backend, dtype, **config)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load(path, backend=backend)
    _assert_same_model(model, loaded)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.backend == backend
    assert loaded.vocab is None
    # the loaded model computes the same thing
    x = np.random.default_rng(1).integers(0, 5, size=(4, 3))
    y1, h1 = model.forward(x)
    y2, h2 = loaded.forward(x)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)
    # the loaded arrays are independent of the model that was saved
    model.params["Whh"] += 1
    assert not np.array_equal(model.params["Whh"], loaded.params["Whh"])


def test_leaky_relu_slope_survives(backend, tmp_path):
    model = RNN(3, 4, 3, nonlinearity="leaky_relu", negative_slope=0.3141592653589793,
                backend=backend, seed=0)
    model.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert loaded.nonlinearity == "leaky_relu"
    assert loaded.negative_slope == 0.3141592653589793


def test_round_trip_with_vocabulary(backend, dtype, tmp_path):
    text = "héllo wörld\n\t€ 😀"
    vocab = Vocabulary.from_text(text)
    model = RNN(len(vocab), 8, len(vocab), output="softmax", dtype=dtype, seed=0, backend=backend)
    model.vocab = vocab
    save(model, str(tmp_path / "v.npz"))
    loaded = load(str(tmp_path / "v.npz"), backend=backend)
    assert loaded.vocab == vocab
    assert loaded.vocab.chars == vocab.chars
    assert loaded.vocab.decode(loaded.vocab.encode(text)) == text
    _assert_same_model(model, loaded)


def test_vocabulary_with_unknown_token(tmp_path):
    vocab = Vocabulary.from_text("abc", unknown="?")
    model = RNN(len(vocab), 4, len(vocab), output="softmax", seed=0)
    model.vocab = vocab
    model.save(tmp_path / "u.npz")
    loaded = load(tmp_path / "u.npz")
    assert loaded.vocab.unknown == "?"
    assert loaded.vocab == vocab


def test_paths_as_str_and_pathlike(tmp_path):
    model = _trained_model(None, np.float32)
    model.save(str(tmp_path / "a.npz"))
    save(model, pathlib.Path(tmp_path) / "b.npz")
    # written as given: no suffix added
    save(model, tmp_path / "c.model")
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz", "c.model"]
    for name in ("a.npz", "b.npz", "c.model"):
        _assert_same_model(model, load(tmp_path / name))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.mark.parametrize("backend_name", ["cython", "numpy"])
def test_load_chooses_backend(tmp_path, backend_name):
    model = RNN(3, 4, 3, seed=0, backend="numpy" if backend_name == "cython" else "cython")
    model.save(tmp_path / "m.npz")
    assert load(tmp_path / "m.npz", backend=backend_name).backend == backend_name
    assert load_checkpoint(tmp_path / "m.npz", backend=backend_name)[0].backend == backend_name
    # default: the process default, whatever backend saved the file
    assert load(tmp_path / "m.npz").backend == kernels.DEFAULT_BACKEND
    with pytest.raises(ValueError, match="backend"):
        load(tmp_path / "m.npz", backend="fortran")


def test_extra_metadata(tmp_path):
    model = RNN(3, 4, 3, seed=0)
    extra = {"epoch": 7, "note": "ünïcode", "losses": [1.5, 0.25], "nested": {"a": None}}
    model.save(tmp_path / "m.npz", extra=extra)
    loaded, opt_state, got = load_checkpoint(tmp_path / "m.npz")
    assert got == extra
    assert opt_state is None
    model.save(tmp_path / "plain.npz")
    assert load_checkpoint(tmp_path / "plain.npz")[2] == {}


def test_extra_must_be_json(tmp_path):
    model = RNN(3, 4, 3, seed=0)
    with pytest.raises(TypeError, match="extra"):
        model.save(tmp_path / "m.npz", extra={"array": np.zeros(2)})


@pytest.mark.parametrize("name, kwargs", [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.05}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 1e-3}),
    ("adamw", {"lr": 0.01}),
])
def test_optimizer_resume_is_bit_identical(backend, dtype, tmp_path, name, kwargs):
    rng = np.random.default_rng(11)
    batches = [(rng.integers(0, 5, size=(6, 3)), rng.integers(0, 5, size=(6, 3))) for _ in range(7)]
    k = 4

    def make():
        return RNN(5, 8, 5, output="softmax", dtype=dtype, seed=2, backend=backend)

    # uninterrupted k + m steps
    full = make()
    full_opt = optim.make_optimizer(name, full.params, **kwargs)
    for x, y in batches:
        full_opt.step(full.loss_and_grad(x, y)[1])

    # k steps, save, load, rebuild, m more steps
    first = make()
    first_opt = optim.make_optimizer(name, first.params, **kwargs)
    for x, y in batches[:k]:
        first_opt.step(first.loss_and_grad(x, y)[1])
    path = tmp_path / "ckpt.npz"
    first.save(path, optimizer=first_opt, extra={"step": k})
    model, state, extra = load_checkpoint(path, backend=backend)
    assert extra == {"step": k}
    assert state["steps"] == k
    assert state["type"].lower() == name
    opt = optim.make_optimizer(state["type"], model.params, **state["config"])
    opt.load_state_dict(state)
    assert opt.steps == k
    for x, y in batches[k:]:
        opt.step(model.loss_and_grad(x, y)[1])
    assert opt.steps == full_opt.steps
    for p in model.params:
        assert model.params[p].tobytes() == full.params[p].tobytes(), p
    # the buffers came back too, not just reset ones
    for key, buf in full_opt.state_dict()["buffers"].items():
        assert opt.state_dict()["buffers"][key].tobytes() == buf.tobytes(), key


def test_optimizer_buffers_stored_as_arrays(tmp_path):
    model = RNN(3, 4, 3, seed=0, output="softmax")
    opt = optim.Adam(model.params)
    opt.step(model.loss_and_grad(np.array([[0], [1]]), np.array([[1], [2]]))[1])
    model.save(tmp_path / "m.npz", optimizer=opt)
    arrays = _read_npz(tmp_path / "m.npz")
    expected = {f"optim/{k}" for k in opt.state_dict()["buffers"]}
    assert expected == {k for k in arrays if k.startswith("optim/")}
    assert {k for k in arrays if k.startswith("param/")} == {f"param/{k}" for k in model.params}
    meta = _meta(arrays)
    assert meta["format"] == "cyrnn-model" and meta["version"] == 1
    assert meta["optimizer"]["steps"] == 1 and "buffers" not in meta["optimizer"]


# ---------------------------------------------------------------------------------------------
# no pickle
# ---------------------------------------------------------------------------------------------


def test_saved_file_has_no_object_arrays(tmp_path):
    model = _trained_model(None, np.float64)
    model.vocab = Vocabulary.from_text("abcde")
    opt = optim.SGD(model.params, lr=0.1, momentum=0.9)
    model.save(tmp_path / "m.npz", optimizer=opt, extra={"k": 1})
    for name, array in _read_npz(tmp_path / "m.npz").items():  # allow_pickle=False
        assert array.dtype != object, name


def test_load_never_unpickles(tmp_path, monkeypatch):
    model = _trained_model(None, np.float32)
    model.vocab = Vocabulary.from_text("abcde")
    model.save(tmp_path / "m.npz", optimizer=optim.Adam(model.params))
    calls = []
    real_load = np.load

    def checking_load(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle", False))
        return real_load(*args, **kwargs)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(np, "load", checking_load)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    loaded, state, _ = load_checkpoint(tmp_path / "m.npz")
    assert calls and not any(calls)  # np.load called, never with allow_pickle=True
    _assert_same_model(model, loaded)
    assert state["type"] == "Adam"


class _Trap:
    """Unpickling this touches a marker file: evidence that the file's code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("where", ["param/Whh", "metadata.json", "param/extra"])
def test_pickled_object_array_is_refused_without_running_it(tmp_path, where):
    marker = tmp_path / "pwned"
    model = RNN(3, 4, 3, seed=0)
    model.save(tmp_path / "good.npz")
    arrays = _read_npz(tmp_path / "good.npz")
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    arrays[where] = trap
    path = tmp_path / "evil.npz"
    with open(path, "wb") as fh:
        np.savez(fh, allow_pickle=True, **arrays)
    # the file does hold a pickle that would run on an unsafe load
    with np.load(path, allow_pickle=True) as data:
        data[where]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=str(path)):
        load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# damaged and foreign files
# ---------------------------------------------------------------------------------------------


def _good_file(tmp_path):
    model = RNN(4, 5, 4, output="softmax", seed=0)
    model.vocab = Vocabulary(list("abcd"))
    opt = optim.Adam(model.params)
    path = tmp_path / "good.npz"
    model.save(path, optimizer=opt)
    return path


def _corrupt(kind, good, path):
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_tail":
        path.write_bytes(data[:-10])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "text":
        path.write_text("this is not a model\n" * 10)
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.arange(10))
        os.replace(path.with_suffix(".npy"), path)
    elif kind == "flipped_bytes":
        raw = bytearray(data)
        for i in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        arrays = _read_npz(good)
        meta = _meta(arrays)
        del arrays["metadata.json"]
        if kind == "no_metadata":
            meta = None
        elif kind == "garbage_json":
            arrays["metadata.json"] = np.frombuffer(b"{not json", dtype=np.uint8)
            meta = None
        elif kind == "not_utf8":
            arrays["metadata.json"] = np.frombuffer(b"\xff\xfe\x00{", dtype=np.uint8)
            meta = None
        elif kind == "json_list":
            meta = [1, 2, 3]
        elif kind == "wrong_format":
            meta["format"] = "something-else"
        elif kind == "no_format":
            del meta["format"]
        elif kind == "wrong_version":
            meta["version"] = 2
        elif kind == "string_version":
            meta["version"] = "1"
        elif kind == "config_missing_key":
            del meta["config"]["hidden_size"]
        elif kind == "config_extra_key":
            meta["config"]["layers"] = 2
        elif kind == "config_bad_value":
            meta["config"]["nonlinearity"] = "softsign"
        elif kind == "config_bad_type":
            meta["config"]["hidden_size"] = "5"
        elif kind == "config_not_dict":
            meta["config"] = "RNN"
        elif kind == "param_wrong_shape":
            arrays["param/Whh"] = np.zeros((5, 4), np.float32)
        elif kind == "param_wrong_dtype":
            arrays["param/Whh"] = arrays["param/Whh"].astype(np.float64)
        elif kind == "param_missing":
            del arrays["param/by"]
        elif kind == "param_nan":
            arrays["param/bh"] = arrays["param/bh"].copy()
            arrays["param/bh"][1] = np.nan
        elif kind == "vocab_size":
            meta["vocab"]["chars"] = list("abc")
        elif kind == "vocab_garbage":
            meta["vocab"] = {"chars": ["ab", "c"]}
        elif kind == "vocab_not_dict":
            meta["vocab"] = 42
        else:
            raise AssertionError(kind)
        _write_npz(path, arrays, meta)


CORRUPTIONS = [
    "truncated", "truncated_tail", "empty", "random_bytes", "text", "npy", "flipped_bytes",
    "no_metadata", "garbage_json", "not_utf8", "json_list", "wrong_format", "no_format",
    "wrong_version", "string_version", "config_missing_key", "config_extra_key",
    "config_bad_value", "config_bad_type", "config_not_dict", "param_wrong_shape",
    "param_wrong_dtype", "param_missing", "param_nan", "vocab_size", "vocab_garbage",
    "vocab_not_dict",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damaged_file_raises_value_error_naming_it(tmp_path, kind):
    good = _good_file(tmp_path)
    load(good)  # the original is fine
    path = tmp_path / f"bad-{kind}.npz"
    _corrupt(kind, good, path)
    for reader in (load, load_checkpoint):
        with pytest.raises(ValueError) as info:
            reader(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("kind, match", [
    ("wrong_version", "version 2"),
    ("param_wrong_shape", "Whh"),
    ("param_missing", "by"),
    ("vocab_size", "vocabulary"),
    ("no_metadata", "metadata"),
])
def test_damaged_file_message_says_what(tmp_path, kind, match):
    good = _good_file(tmp_path)
    path = tmp_path / "bad.npz"
    _corrupt(kind, good, path)
    with pytest.raises(ValueError, match=match):
        load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        load(path)
    assert "nope.npz" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(path))


def test_directory_is_refused(tmp_path):
    with pytest.raises((ValueError, IsADirectoryError, PermissionError)) as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_failed_load_does_not_touch_other_models(tmp_path):
    good = _good_file(tmp_path)
    a = load(good)
    before = {k: v.copy() for k, v in a.params.items()}
    bad = tmp_path / "bad.npz"
    _corrupt("param_wrong_shape", good, bad)
    with pytest.raises(ValueError):
        load(bad)
    for k in before:
        np.testing.assert_array_equal(a.params[k], before[k])


def test_package_level_aliases():
    assert cyrnn.load is load and cyrnn.load_checkpoint is load_checkpoint
