"""Saving and loading: ``cyrnn.io.save`` / ``load`` / ``load_checkpoint`` and ``RNN.save``.

A round trip is bit-exact; an optimizer restored from a checkpoint continues exactly as the one
that was saved; a damaged, foreign or hostile file raises ``ModelFileError`` (a ``ValueError``)
naming the file, never runs anything stored in it, and costs bounded time and memory whatever it
claims.
"""
import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest

import cyrnn
from cyrnn import RNN, Vocabulary, kernels, optim
from cyrnn.io import ModelFileError, load, load_checkpoint, save


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
    assert calls == []  # the archive is read member by member, never through np.load
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
    with pytest.raises(ModelFileError, match=str(path)):
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
def test_damaged_file_raises_model_file_error_naming_it(tmp_path, kind):
    good = _good_file(tmp_path)
    load(good)  # the original is fine
    path = tmp_path / f"bad-{kind}.npz"
    _corrupt(kind, good, path)
    for reader in (load, load_checkpoint):
        with pytest.raises(ModelFileError) as info:
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
    with pytest.raises(ModelFileError, match=match):
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
    with pytest.raises(ModelFileError):
        load(bad)
    for k in before:
        np.testing.assert_array_equal(a.params[k], before[k])


def test_package_level_aliases():
    assert cyrnn.load is load and cyrnn.load_checkpoint is load_checkpoint


def test_model_file_error_type(tmp_path):
    assert cyrnn.ModelFileError is ModelFileError
    assert issubclass(ModelFileError, ValueError)
    error = ModelFileError(tmp_path / "m.npz", "parameter Whh missing")
    assert str(error) == f"{tmp_path / 'm.npz'}: parameter Whh missing"
    assert error.path == tmp_path / "m.npz" and error.problem == "parameter Whh missing"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ModelFileError and str(copy) == str(error)


# ---------------------------------------------------------------------------------------------
# files written by hand: older writers, compression, Fortran order
# ---------------------------------------------------------------------------------------------


def test_file_written_by_np_savez_loads(backend, tmp_path):
    """What ``save`` has always written (``np.savez``, stored members) stays readable."""
    good = _good_file(tmp_path)
    arrays = _read_npz(good)
    path = tmp_path / "savez.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    model, state, extra = load_checkpoint(path, backend=backend)
    _assert_same_model(load(good), model)
    assert state["type"] == "Adam" and extra == {}


def test_compressed_file_loads_bit_exact(backend, dtype, tmp_path):
    model = _trained_model(backend, dtype)
    model.vocab = Vocabulary(list("abcde"))
    opt = optim.RMSprop(model.params, lr=0.01, momentum=0.5)
    opt.step(model.loss_and_grad(np.array([[0], [1]]), np.array([[1], [2]]))[1])
    model.save(tmp_path / "m.npz", optimizer=opt)
    path = tmp_path / "compressed.npz"
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **_read_npz(tmp_path / "m.npz"))
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    loaded, state, _ = load_checkpoint(path, backend=backend)
    _assert_same_model(model, loaded)
    assert loaded.vocab == model.vocab
    for key, buf in opt.state_dict()["buffers"].items():
        assert state["buffers"][key].tobytes() == buf.tobytes(), key


def test_fortran_order_array_loads_bit_exact(backend, tmp_path):
    good = _good_file(tmp_path)
    arrays = _read_npz(good)
    arrays["param/Wxh"] = np.asfortranarray(arrays["param/Wxh"])
    arrays["optim/exp_avg/Whh"] = np.asfortranarray(arrays["optim/exp_avg/Whh"] + 1)
    path = tmp_path / "fortran.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    assert _npy_info(path, "param/Wxh")[1] is True  # the file does hold Fortran order
    model, state, _ = load_checkpoint(path, backend=backend)
    np.testing.assert_array_equal(model.params["Wxh"], arrays["param/Wxh"])
    np.testing.assert_array_equal(state["buffers"]["exp_avg/Whh"], arrays["optim/exp_avg/Whh"])
    opt = optim.make_optimizer(state["type"], model.params, **state["config"])
    opt.load_state_dict(state)


def _npy_info(path, name):
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as stream:
        np.lib.format.read_magic(stream)
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    return shape, fortran_order, dtype


# ---------------------------------------------------------------------------------------------
# hostile files: one error type, bounded time and memory whatever the file claims
# ---------------------------------------------------------------------------------------------

GiB = 1 << 30
MAX_FILE = 2_000_000  # the files below are all at most this big ...
MAX_MEMORY = 200 << 20  # ... and may cost at most this much memory ...
MAX_SECONDS = 5.0  # ... and this much time to load or refuse


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_header(descr, shape, fortran_order=False):
    """A version 1.0 ``.npy`` header claiming anything."""
    header = repr({"descr": descr, "fortran_order": fortran_order, "shape": tuple(shape)})
    header = header.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _meta_npy(meta):
    text = meta if isinstance(meta, (str, bytes)) else json.dumps(meta)
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return _npy(np.frombuffer(raw, dtype=np.uint8))


def _deflate(payload):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush()


def _entry(name, payload, *, deflate=False, **declared):
    """A zip member: ``payload`` stored or deflated, with honest sizes and CRC unless
    ``declared`` overrides ``size``, ``csize``, ``crc``, ``method`` or ``flags``."""
    data = _deflate(payload) if deflate else payload
    entry = {"name": name, "data": data, "method": zipfile.ZIP_DEFLATED if deflate else 0,
             "crc": zlib.crc32(payload), "size": len(payload), "csize": len(data), "flags": 0}
    entry.update(declared)
    return entry


_BOMBS = {}


def _bomb(name, prefix, count, fill=b"\0"):
    """A deflated member of ``prefix`` and then ``count`` bytes ``fill`` (a gigabyte of them packs
    into about a megabyte), with its true size and CRC, built without compressing it all: after a
    full flush the compressor emits the same bytes for every further chunk of the same bytes."""
    key = (prefix, count, fill)
    if key not in _BOMBS:
        chunk = 1 << 20
        assert count % chunk == 0
        filled = fill * chunk
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = compressor.compress(prefix + filled) + compressor.flush(zlib.Z_FULL_FLUSH)
        block = compressor.compress(filled) + compressor.flush(zlib.Z_FULL_FLUSH)
        assert compressor.compress(filled) + compressor.flush(zlib.Z_FULL_FLUSH) == block
        data = head + block * (count // chunk - 1) + compressor.flush()
        crc = zlib.crc32(prefix + filled)
        for _ in range(count // chunk - 1):
            crc = zlib.crc32(filled, crc)
        _BOMBS[key] = (data, crc)
    data, crc = _BOMBS[key]
    return {"name": name, "data": data, "method": zipfile.ZIP_DEFLATED, "crc": crc,
            "size": len(prefix) + count, "csize": len(data), "flags": 0}


def _write_zip(path, entries):
    """A zip archive written field by field, so that it can lie (sizes, CRC, duplicate names)."""
    body, directory = bytearray(), bytearray()
    for e in entries:
        name = e["name"].encode("utf-8")
        fields = (e["flags"], e["method"], 0, 0x21, e["crc"], e["csize"], e["size"], len(name))
        directory += struct.pack("<IHH", 0x02014B50, 20, 20)
        directory += struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, len(body)) + name
        body += struct.pack("<IH", 0x04034B50, 20)
        body += struct.pack("<HHHHIIIHH", *fields, 0) + name + e["data"]
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory),
                      len(body), 0)
    path.write_bytes(bytes(body + directory + end))


def _good_members(tmp_path):
    """Name -> ``.npy`` bytes of a good file (4 -> 5 -> 4, vocabulary, Adam state)."""
    with zipfile.ZipFile(_good_file(tmp_path)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _with_meta(members, change):
    """``members`` with the metadata changed by ``change(meta)`` (which may return a new one)."""
    meta = json.loads(np.lib.format.read_array(io.BytesIO(members["metadata.json.npy"])).tobytes())
    meta = change(meta) or meta
    return {**members, "metadata.json.npy": _meta_npy(meta)}


def _zeros_model(hidden, fill, input_size=4):
    """Members of a valid-looking float32 model input_size -> hidden -> 4, ``fill(name, shape)``
    giving each parameter's member (sizes honest)."""
    config = {"input_size": input_size, "hidden_size": hidden, "output_size": 4, "nonlinearity": "tanh",
              "negative_slope": 0.01, "output": "softmax", "init": "uniform",
              "dtype": "float32", "batch_first": False}
    meta = {"format": "cyrnn-model", "version": 1, "config": config, "vocab": None,
            "optimizer": None, "extra": {}}
    shapes = {"Wxh": (hidden, input_size), "Whh": (hidden, hidden), "bh": (hidden,), "Why": (4, hidden),
              "by": (4,)}
    entries = [fill(f"param/{name}.npy", shape) for name, shape in shapes.items()]
    return entries + [_entry("metadata.json.npy", _meta_npy(meta))]


def _deflated_zeros(name, shape):
    return _entry(name, _npy(np.zeros(shape, np.float32)), deflate=True)


def _hostile(kind, tmp_path):
    """Write the hostile file ``kind`` and return its path."""
    path = tmp_path / f"hostile-{kind}.npz"
    members = _good_members(tmp_path)

    def entries(mapping, deflate=False):
        return [_entry(name, payload, deflate=deflate) for name, payload in mapping.items()]

    if kind == "bomb_unreferenced":  # F2: 1 GiB of zeros that nothing refers to
        _write_zip(path, entries(members) + [
            _bomb("junk.npy", _npy_header("<f4", (GiB // 4,)), GiB)])
    elif kind == "bomb_as_param":  # 1 GiB declared honestly as param/Whh
        others = {k: v for k, v in members.items() if k != "param/Whh.npy"}
        _write_zip(path, entries(others) + [
            _bomb("param/Whh.npy", _npy_header("<f4", (GiB // 4,)), GiB)])
    elif kind == "bomb_as_param_lying":  # 1 GiB behind a declared size of the right one
        others = {k: v for k, v in members.items() if k != "param/Whh.npy"}
        bomb = _bomb("param/Whh.npy", _npy_header("<f4", (GiB // 4,)), GiB)
        bomb["size"] = len(members["param/Whh.npy"])
        _write_zip(path, entries(others) + [bomb])
    elif kind == "bomb_consistent_model":  # a valid model of zeros, hidden 16384: 1 GiB Whh
        hidden = 16384

        def fill(name, shape):
            if name == "param/Whh.npy":
                return _bomb(name, _npy_header("<f4", shape), hidden * hidden * 4)
            return _deflated_zeros(name, shape)

        _write_zip(path, _zeros_model(hidden, fill))
    elif kind == "zeros_model_compressed":  # a deflated model of zeros, hidden 3000: 36 MB
        _write_zip(path, _zeros_model(3000, _deflated_zeros))
    elif kind == "largest_accepted":  # valid: 1.8 MB of random Wxh, 49 MiB of zeros in Whh

        def fill(name, shape):
            if name == "param/Wxh.npy":
                values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                return _entry(name, _npy(values))
            if name == "param/Whh.npy":
                return _bomb(name, _npy_header("<f4", shape), 3584 * 3584 * 4)
            return _deflated_zeros(name, shape)

        _write_zip(path, _zeros_model(3584, fill, input_size=128))
    elif kind == "header_huge_shape":  # param/Whh claims (10**6, 10**6)
        _write_zip(path, entries({**members, "param/Whh.npy":
                                  _npy_header("<f4", (10**6, 10**6)) + bytes(100)}))
    elif kind in ("config_huge", "config_large"):  # F3: sizes of the configuration, tiny arrays
        hidden = 10**6 if kind == "config_huge" else 20000

        def change(meta):
            meta["config"]["hidden_size"] = hidden
            meta["optimizer"] = meta["vocab"] = None

        _write_zip(path, entries({k: v for k, v in _with_meta(members, change).items()
                                  if not k.startswith("optim/")}, deflate=True))
    elif kind in ("size_smaller", "size_larger", "size_huge", "csize_smaller"):
        whh = members["param/Whh.npy"]
        changed = {"size_smaller": {"size": len(whh) - 1, "crc": zlib.crc32(whh[:-1])},
                   "size_larger": {"size": len(members["param/Whh.npy"]) + 1},
                   "size_huge": {"size": 2**32 - 1},
                   "csize_smaller": {"csize": 40}}[kind]
        others = {k: v for k, v in members.items() if k != "param/Whh.npy"}
        _write_zip(path, entries(others) + [
            _entry("param/Whh.npy", members["param/Whh.npy"], deflate=True, **changed)])
    elif kind == "nested_json":  # F4: RecursionError in the JSON parser
        _write_zip(path, entries({**members, "metadata.json.npy":
                                  _meta_npy("[" * 400_000 + "]" * 400_000)}, deflate=True))
    elif kind == "metadata_huge":  # 256 MiB of JSON (whitespace) in a deflated member
        others = {k: v for k, v in members.items() if k != "metadata.json.npy"}
        header = _npy_header("|u1", (2 + (256 << 20),))
        _write_zip(path, entries(others, deflate=True) + [
            _bomb("metadata.json.npy", header + b"{}", 256 << 20, fill=b" ")])
    elif kind == "duplicate_members":
        _write_zip(path, entries(members) + [
            _entry("param/Whh.npy", _npy(np.ones((5, 5), np.float32)))])
    elif kind == "many_members":
        _write_zip(path, entries(members) + [_entry(f"j{i}", b"") for i in range(20000)])
    elif kind == "not_npy_member":
        _write_zip(path, entries({**members, "param/Whh.npy": b"just some text" * 20}))
    elif kind == "metadata_not_npy":
        meta = np.lib.format.read_array(io.BytesIO(members["metadata.json.npy"])).tobytes()
        _write_zip(path, entries({**members, "metadata.json.npy": meta}))
    elif kind == "metadata_float":
        meta = np.lib.format.read_array(io.BytesIO(members["metadata.json.npy"]))
        _write_zip(path, entries({**members, "metadata.json.npy": _npy(meta.astype(np.float32))}))
    elif kind == "object_header":  # a pickle behind the header is never reached
        _write_zip(path, entries({**members, "param/Whh.npy":
                                  _npy_header("|O", (5, 5)) + pickle.dumps([0.0] * 25)}))
    elif kind == "big_endian":
        whh = np.lib.format.read_array(io.BytesIO(members["param/Whh.npy"]))
        _write_zip(path, entries({**members, "param/Whh.npy": _npy(whh.astype(">f4"))}))
    elif kind == "structured_dtype":
        _write_zip(path, entries({**members, "param/Whh.npy":
                                  _npy(np.zeros(25, dtype=[("a", "<f4")]).reshape(5, 5))}))
    elif kind == "npy_version_3":
        whh = bytearray(members["param/Whh.npy"])
        whh[6] = 3
        _write_zip(path, entries({**members, "param/Whh.npy": bytes(whh)}))
    elif kind == "header_garbage":  # a header that is not a Python literal
        whh = members["param/Whh.npy"]
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((5, 5)" + b"(" * 60
        header += b" " * (len(whh) - 200 - 10 - len(header) - 1) + b"\n"
        _write_zip(path, entries({**members, "param/Whh.npy": b"\x93NUMPY\x01\x00"
                                  + struct.pack("<H", len(header)) + header + bytes(100)}))
    elif kind == "bz2_member":
        others = {k: v for k, v in members.items() if k != "param/by.npy"}
        _write_zip(path, entries(others) + [
            _entry("param/by.npy", members["param/by.npy"], method=zipfile.ZIP_BZIP2)])
    elif kind == "encrypted_member":
        _write_zip(path, [_entry(name, payload, flags=1) for name, payload in members.items()])
    elif kind == "bad_crc":
        others = {k: v for k, v in members.items() if k != "param/by.npy"}
        _write_zip(path, entries(others) + [
            _entry("param/by.npy", members["param/by.npy"], crc=12345)])
    elif kind == "bad_deflate":
        _write_zip(path, entries({k: v for k, v in members.items() if k != "param/Whh.npy"})
                   + [_entry("param/Whh.npy", b"", data=b"\xff" * 150, method=8, csize=150,
                             size=len(members["param/Whh.npy"]))])
    elif kind.startswith("truncated_"):
        good = tmp_path / "whole.npz"
        _write_zip(good, entries(members))
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * int(kind.split("_")[1]) // 100])
    else:
        raise AssertionError(kind)
    return path


HOSTILE = [
    "bomb_unreferenced", "bomb_as_param", "bomb_as_param_lying", "bomb_consistent_model",
    "zeros_model_compressed", "header_huge_shape", "config_huge", "config_large", "size_smaller",
    "size_larger", "size_huge", "csize_smaller", "nested_json", "metadata_huge",
    "duplicate_members", "many_members", "not_npy_member", "metadata_not_npy", "metadata_float",
    "object_header", "big_endian", "structured_dtype", "npy_version_3", "header_garbage",
    "bz2_member", "encrypted_member", "bad_crc", "bad_deflate", "truncated_10", "truncated_50",
    "truncated_90", "truncated_99",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_file_raises_model_file_error(tmp_path, kind):
    path = _hostile(kind, tmp_path)
    assert path.stat().st_size <= MAX_FILE
    for reader in (load, load_checkpoint):
        with pytest.raises(ModelFileError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("kind, match", [
    ("bomb_unreferenced", "unexpected members 'junk.npy'"),
    ("bomb_as_param", "parameter Whh: the archive declares 1073741952 bytes"),
    ("bomb_as_param_lying", "parameter Whh: corrupted"),
    ("bomb_consistent_model", r"implies 1074331664 bytes of arrays, more than a file of \d+ bytes"),
    ("zeros_model_compressed", r"implies 36108016 bytes of arrays, more than a file of \d+ bytes"),
    ("header_huge_shape", r"parameter Whh: expected shape \(5, 5\), got \(1000000, 1000000\)"),
    ("config_huge", "implies"),
    ("size_smaller", r"parameter Whh: the archive declares 227 bytes, the .npy header 128 and 100"),
    ("nested_json", "nested too deeply"),
    ("metadata_huge", "metadata.json: the archive declares"),
    ("duplicate_members", "duplicate members 'param/Whh.npy'"),
    ("many_members", r"unexpected members 'j0', 'j1', 'j10', 'j100', 'j1000', ... \(20000 in all\)"),
    ("not_npy_member", "parameter Whh: not a .npy array"),
    ("metadata_float", "metadata.json: expected dtype uint8, got float32"),
    ("object_header", "parameter Whh: expected dtype float32, got object"),
    ("big_endian", "parameter Whh: expected dtype float32, got >f4"),
    ("npy_version_3", r"unsupported .npy format version \(3, 0\)"),
    ("bz2_member", "compression method 12"),
    ("encrypted_member", "encrypted"),
])
def test_hostile_file_message_says_what(tmp_path, kind, match):
    with pytest.raises(ModelFileError, match=match):
        load(_hostile(kind, tmp_path))


def test_header_shape_checked_before_data(tmp_path):
    """A member whose header disagrees is refused before its data is read."""
    members = _good_members(tmp_path)
    whh = _npy_header("<f4", (4, 5)) + bytes(80) + bytes(20)  # the size of a (5, 5) member
    path = tmp_path / "m.npz"
    _write_zip(path, [_entry(n, whh if n == "param/Whh.npy" else p) for n, p in members.items()])
    with pytest.raises(ModelFileError, match=r"parameter Whh: expected shape \(5, 5\), got \(4, 5\)"):
        load(path)


def _meta_change(kind):
    """A change to a good file's metadata, for the metadata tests."""
    def set_path(*keys, value):
        def change(meta):
            target = meta
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
        return change

    changes = {
        "config_list": set_path("config", value=[]),
        "config_null": set_path("config", value=None),
        "vocab_int": set_path("vocab", value=5),
        "vocab_list": set_path("vocab", value=["a", "b", "c", "d"]),
        "vocab_chars_nested": set_path("vocab", "chars", value=[["a"], "b", "c", "d"]),
        "vocab_unknown_int": set_path("vocab", "unknown", value=5),
        "vocab_chars_int": set_path("vocab", "chars", value=5),
        "vocab_version_list": set_path("vocab", "version", value=[1]),
        "vocab_duplicates": set_path("vocab", "chars", value=["a", "a", "c", "d"]),
        "optimizer_list": set_path("optimizer", value=[]),
        "optimizer_type_int": set_path("optimizer", "type", value=5),
        "optimizer_type_unknown": set_path("optimizer", "type", value="Lion"),
        "optimizer_type_lower": set_path("optimizer", "type", value="adam"),
        "optimizer_config_list": set_path("optimizer", "config", value=[]),
        "optimizer_config_lr_str": set_path("optimizer", "config", "lr", value="fast"),
        "optimizer_config_betas_str": set_path("optimizer", "config", "betas", value="ab"),
        "optimizer_config_betas_nested": set_path("optimizer", "config", "betas", value=[[0.9], 0.9]),
        "optimizer_config_params": set_path("optimizer", "config", "params", value=1),
        "optimizer_config_schedule": set_path("optimizer", "config", "schedule", value=None),
        "optimizer_config_unknown": set_path("optimizer", "config", "momentum", value=0.9),
        "optimizer_steps_negative": set_path("optimizer", "steps", value=-1),
        "optimizer_steps_bool": set_path("optimizer", "steps", value=True),
        "optimizer_steps_float": set_path("optimizer", "steps", value=1.5),
        "optimizer_extra_key": set_path("optimizer", "buffers", value={}),
        "version_true": set_path("version", value=True),
        "version_float": set_path("version", value=1.0),
        "format_list": set_path("format", value=["cyrnn-model"]),
        "unknown_key": set_path("layers", value=2),
        "hidden_zero": set_path("config", "hidden_size", value=0),
        "hidden_negative": set_path("config", "hidden_size", value=-5),
        "hidden_float": set_path("config", "hidden_size", value=5.0),
        "hidden_bool": set_path("config", "hidden_size", value=True),
        "hidden_list": set_path("config", "hidden_size", value=[5]),
        "hidden_huge": set_path("config", "hidden_size", value=10**400),
        "output_size_zero": set_path("config", "output_size", value=0),
        "output_size_null": set_path("config", "output_size", value=None),
        "nonlinearity_list": set_path("config", "nonlinearity", value=["tanh"]),
        "nonlinearity_dict": set_path("config", "nonlinearity", value={"tanh": 1}),
        "output_unknown": set_path("config", "output", value="relu"),
        "init_int": set_path("config", "init", value=0),
        "dtype_float16": set_path("config", "dtype", value="float16"),
        "dtype_object": set_path("config", "dtype", value="object"),
        "dtype_list": set_path("config", "dtype", value=["float32"]),
        "slope_str": set_path("config", "negative_slope", value="0.1"),
        "slope_nan": set_path("config", "negative_slope", value=float("nan")),
        "slope_inf": set_path("config", "negative_slope", value=float("inf")),
        "slope_huge_int": set_path("config", "negative_slope", value=10**400),
        "slope_negative": set_path("config", "negative_slope", value=-1.0),
        "batch_first_str": set_path("config", "batch_first", value="yes"),
        "batch_first_int": set_path("config", "batch_first", value=1),
        "hidden_long_list": set_path("config", "hidden_size", value=[7] * 100_000),
        "version_long_string": set_path("version", value="9" * 100_000),
        "lr_long_list": set_path("optimizer", "config", "lr", value=[0.5] * 100_000),
        "vocab_long_chars": set_path("vocab", "chars", value=["ab" * 50_000]),
        "vocab_format_long": set_path("vocab", "format", value="x" * 100_000),
    }
    return changes[kind]


META_KINDS = [
    "config_list", "config_null", "vocab_int", "vocab_list", "vocab_chars_nested",
    "vocab_unknown_int", "vocab_chars_int", "vocab_version_list", "vocab_duplicates",
    "optimizer_list", "optimizer_type_int", "optimizer_type_unknown", "optimizer_type_lower",
    "optimizer_config_list", "optimizer_config_lr_str", "optimizer_config_betas_str",
    "optimizer_config_betas_nested", "optimizer_config_params", "optimizer_config_schedule",
    "optimizer_config_unknown", "optimizer_steps_negative", "optimizer_steps_bool",
    "optimizer_steps_float", "optimizer_extra_key", "version_true", "version_float",
    "format_list", "unknown_key", "hidden_zero", "hidden_negative", "hidden_float",
    "hidden_bool", "hidden_list", "hidden_huge", "output_size_zero", "output_size_null",
    "nonlinearity_list", "nonlinearity_dict", "output_unknown", "init_int", "dtype_float16",
    "dtype_object", "dtype_list", "slope_str", "slope_nan", "slope_inf", "slope_huge_int",
    "slope_negative", "batch_first_str", "batch_first_int",
]


@pytest.mark.parametrize("kind", META_KINDS)
def test_metadata_of_wrong_type_raises_model_file_error(tmp_path, kind):
    """F4: any wrong value in the metadata is a ModelFileError, never AttributeError & co."""
    path = tmp_path / f"meta-{kind}.npz"
    _write_zip(path, [_entry(n, p) for n, p in
                      _with_meta(_good_members(tmp_path), _meta_change(kind)).items()])
    for reader in (load, load_checkpoint):
        with pytest.raises(ModelFileError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("kind", ["hidden_long_list", "version_long_string", "lr_long_list",
                                  "vocab_long_chars", "vocab_format_long", "long_member_name"])
def test_messages_stay_short(tmp_path, kind):
    """Values from the file are shown cut short: a message is one readable line."""
    path = tmp_path / "m.npz"
    members = _good_members(tmp_path)
    if kind == "long_member_name":
        members["x" * 60_000] = b""
    else:
        members = _with_meta(members, _meta_change(kind))
    _write_zip(path, [_entry(n, p) for n, p in members.items()])
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert len(info.value.problem) < 500, info.value.problem[:1000]


@pytest.mark.parametrize("kind, match", [
    ("config_list", "model configuration: expected a JSON object, got an array"),
    ("vocab_int", "invalid vocabulary"),
    ("optimizer_config_lr_str", "optimizer state: lr: expected a number, got 'fast'"),
    ("optimizer_type_unknown", "optimizer state: type: expected one of"),
    ("hidden_float", r"hidden_size: expected an int >= 1, got 5\.0"),
    ("slope_huge_int", "negative_slope: expected a finite number >= 0"),
    ("unknown_key", "unexpected keys 'layers'"),
])
def test_metadata_message_says_what(tmp_path, kind, match):
    path = tmp_path / "m.npz"
    _write_zip(path, [_entry(n, p) for n, p in
                      _with_meta(_good_members(tmp_path), _meta_change(kind)).items()])
    with pytest.raises(ModelFileError, match=match):
        load(path)


@pytest.mark.parametrize("kind", ["buffer_shape", "buffer_dtype", "buffer_missing",
                                  "buffer_unexpected", "buffer_without_optimizer", "buffer_nan"])
def test_optimizer_buffers_checked(tmp_path, kind):
    members = _good_members(tmp_path)
    name = "optim/exp_avg/Whh.npy"
    if kind == "buffer_shape":
        members[name] = _npy(np.zeros((5, 4), np.float32))
    elif kind == "buffer_dtype":
        members[name] = _npy(np.zeros((5, 5), np.float64))
    elif kind == "buffer_missing":
        del members[name]
    elif kind == "buffer_unexpected":
        members["optim/momentum_buffer/Whh.npy"] = members[name]
    elif kind == "buffer_without_optimizer":
        members = _with_meta(members, lambda meta: meta.update(optimizer=None))
    else:
        members[name] = _npy(np.full((5, 5), np.nan, np.float32))
    path = tmp_path / "m.npz"
    _write_zip(path, [_entry(n, p) for n, p in members.items()])
    if kind == "buffer_nan":  # a buffer's values are the optimizer's business, as before
        state = load_checkpoint(path)[1]
        assert np.isnan(state["buffers"]["exp_avg/Whh"]).all()
        return
    with pytest.raises(ModelFileError, match="exp_avg/Whh|momentum_buffer/Whh"):
        load_checkpoint(path)


def test_extra_may_be_any_json(tmp_path):
    path = tmp_path / "m.npz"
    members = _with_meta(_good_members(tmp_path), lambda meta: meta.update(extra=[1, "two"]))
    _write_zip(path, [_entry(n, p) for n, p in members.items()])
    assert load_checkpoint(path)[2] == [1, "two"]


def test_not_a_regular_file(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer, so that opening does not block
    outcome = []

    def read():
        try:
            load(fifo)
        except Exception as exc:
            outcome.append(exc)

    try:
        reader = threading.Thread(target=read, daemon=True)  # reading a pipe would block
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "load blocked reading a named pipe"
    finally:
        os.close(fd)
    assert isinstance(outcome[0], ModelFileError) and "not a regular file" in str(outcome[0])


_MEASURE = r"""
import json, resource, sys, time, tracemalloc
import cyrnn

cyrnn.load(sys.argv[1])  # imports and first-use allocations belong to the baseline
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
results = {}
for path in sys.argv[2:]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        cyrnn.load(path)
        outcome = "loaded"
    except Exception as exc:
        outcome = type(exc).__name__
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results[path] = {"outcome": outcome, "seconds": seconds, "peak": peak}
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
print(json.dumps({"files": results, "rss_growth": rss}))
"""

MEASURED = [
    "bomb_unreferenced", "bomb_as_param", "bomb_as_param_lying", "bomb_consistent_model",
    "zeros_model_compressed", "header_huge_shape", "config_huge", "config_large", "size_huge",
    "nested_json", "metadata_huge", "duplicate_members", "many_members", "truncated_90",
    "largest_accepted",  # the most a file of 2 MB may legitimately make load hold
]


def test_largest_accepted_file_loads(tmp_path):
    """A file of at most 2 MB whose arrays fill the bound (32 times its size) is valid."""
    path = _hostile("largest_accepted", tmp_path)
    assert path.stat().st_size <= MAX_FILE
    with zipfile.ZipFile(path) as archive:
        implied = sum(info.file_size for info in archive.infolist())
    assert implied > 25 * path.stat().st_size
    model = load(path)
    assert (model.input_size, model.hidden_size) == (128, 3584)
    assert not model.params["Whh"].any() and model.params["Wxh"].std() > 0.9


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
def test_hostile_files_cost_bounded_memory_and_time(tmp_path):
    """F2, F3: whatever a file of at most 2 MB claims, ``load`` refuses it within 200 MB and
    5 s (the old reader took gigabytes and tens of seconds on some of these), measured in a
    fresh process: the growth of its peak resident size over all files, and per file the time
    and the peak of the memory traced by Python and NumPy."""
    paths = []
    for kind in MEASURED:
        (tmp_path / kind).mkdir()
        paths.append(_hostile(kind, tmp_path / kind))
        assert paths[-1].stat().st_size <= MAX_FILE, kind
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(cyrnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(_good_file(tmp_path)),
                             *map(str, paths)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    for kind, path in zip(MEASURED, paths):
        figures = measured["files"][str(path)]
        expected = "loaded" if kind == "largest_accepted" else "ModelFileError"
        assert figures["outcome"] == expected, (kind, figures)
        assert figures["seconds"] < MAX_SECONDS, (kind, figures)
        assert figures["peak"] < MAX_MEMORY, (kind, figures)
    assert measured["rss_growth"] < MAX_MEMORY, measured


# ---------------------------------------------------------------------------------------------
# stacks: num_layers, bidirectional, dropout
# ---------------------------------------------------------------------------------------------

#: The configuration keys of a cyrnn 0.1 file, all of them (0.1 refuses any other).
CONFIG_KEYS_0_1 = {"input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
                   "output", "init", "dtype", "batch_first"}

STACKS = [
    {"num_layers": 2},
    {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True, "dropout": 0.25},
    {"num_layers": 2, "dropout": 0.5, "output_size": None, "output": "linear",
     "batch_first": True},
]


@pytest.mark.parametrize("config", STACKS, ids=["L2", "bi", "L3-bi-dropout", "L2-no-head"])
def test_stack_round_trip_is_bit_exact(backend, dtype, tmp_path, config):
    model = _trained_model(backend, dtype, **config)
    path = tmp_path / "stack.npz"
    model.save(path)
    loaded = load(path, backend=backend)
    _assert_same_model(model, loaded)
    for key in ("num_layers", "bidirectional", "dropout"):
        assert getattr(loaded, key) == getattr(model, key), key
    assert loaded.config() == model.config()
    x = np.random.default_rng(1).integers(0, 5, (6, 2))
    for a, b in zip(model.forward(x), loaded.forward(x)):
        assert a.tobytes() == b.tobytes()


def test_layer_keys_are_stored_only_when_they_differ_from_one_layer(tmp_path):
    """A single-layer model's file is a 0.1 file (0.1 reads it); a stack's file has the keys
    0.1 refuses, so 0.1 cannot load a stack as one layer."""
    RNN(4, 5, 4, seed=0).save(tmp_path / "one.npz")
    assert set(_meta(_read_npz(tmp_path / "one.npz"))["config"]) == CONFIG_KEYS_0_1
    for options, stored in [({"num_layers": 2}, {"num_layers": 2}),
                            ({"bidirectional": True}, {"bidirectional": True}),
                            ({"num_layers": 2, "dropout": 0.5}, {"num_layers": 2, "dropout": 0.5}),
                            ({"dropout": 0.5}, {"dropout": 0.5})]:
        RNN(4, 5, 4, seed=0, **options).save(tmp_path / "m.npz")
        config = _meta(_read_npz(tmp_path / "m.npz"))["config"]
        assert {k: config[k] for k in set(config) - CONFIG_KEYS_0_1} == stored
        assert _meta(_read_npz(tmp_path / "m.npz"))["version"] == 1


def _file_0_1(path, model, optimizer=None):
    """``model`` written as cyrnn 0.1 wrote it: its metadata layout, by hand."""
    config = {"input_size": model.input_size, "hidden_size": model.hidden_size,
              "output_size": model.output_size, "nonlinearity": model.nonlinearity,
              "negative_slope": model.negative_slope, "output": model.output,
              "init": model.init, "dtype": model.dtype.name, "batch_first": model.batch_first}
    meta = {"format": "cyrnn-model", "version": 1, "config": config,
            "vocab": None if model.vocab is None else model.vocab.to_json(),
            "optimizer": None, "extra": {"epoch": 3}}
    arrays = {f"param/{name}": p for name, p in model.params.items()}
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {k: v for k, v in state.items() if k != "buffers"}
        arrays.update({f"optim/{k}": a for k, a in state["buffers"].items()})
    _write_npz(path, arrays, meta)


def test_file_written_by_cyrnn_0_1_loads(backend, tmp_path):
    model = _trained_model(backend, np.float32, nonlinearity="leaky_relu", negative_slope=0.3)
    model.vocab = Vocabulary(list("abcde"))
    opt = optim.Adam(model.params, lr=0.01)
    opt.step(model.loss_and_grad(np.array([[0], [1]]), np.array([[1], [2]]))[1])
    path = tmp_path / "old.npz"
    _file_0_1(path, model, opt)
    loaded, state, extra = load_checkpoint(path, backend=backend)
    _assert_same_model(model, loaded)
    assert (loaded.num_layers, loaded.bidirectional, loaded.dropout) == (1, False, 0.0)
    assert loaded.vocab.chars == model.vocab.chars and extra == {"epoch": 3}
    assert state["steps"] == 1
    for key, buf in opt.state_dict()["buffers"].items():
        assert state["buffers"][key].tobytes() == buf.tobytes(), key


@pytest.mark.parametrize("name, kwargs", [("adam", {"lr": 0.01}),
                                          ("sgd", {"lr": 0.1, "momentum": 0.9})])
def test_stack_optimizer_resume_is_bit_identical(backend, tmp_path, name, kwargs):
    """Every parameter name of a 2-layer bidirectional model with dropout: its buffers are
    stored and restored (the dropout masks come from fixed seeds here: the model's generator
    is not part of the file)."""
    rng = np.random.default_rng(5)
    batches = [(rng.integers(0, 5, (6, 3)), rng.integers(0, 5, (6, 3))) for _ in range(5)]

    def make():
        return RNN(5, 6, 5, num_layers=2, bidirectional=True, dropout=0.3, output="softmax",
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
    assert {key.split("/")[1] for key in state["buffers"]} == set(model.params)
    assert "Wxh_l1_reverse" in model.params
    opt = optim.make_optimizer(state["type"], model.params, **state["config"])
    opt.load_state_dict(state)
    for i in range(2, 5):
        step(model, opt, i)
    for p in model.params:
        assert model.params[p].tobytes() == full.params[p].tobytes(), p


def _stack_members(tmp_path, change=None):
    """Members of a good file of a 2-layer bidirectional model, metadata changed by ``change``."""
    model = RNN(4, 5, 4, num_layers=2, bidirectional=True, dropout=0.25, seed=0)
    model.save(tmp_path / "stack.npz", optimizer=optim.Adam(model.params))
    with zipfile.ZipFile(tmp_path / "stack.npz") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    return members if change is None else _with_meta(members, change)


def _config_change(**values):
    def change(meta):
        for key, value in values.items():
            if value is _DELETE:
                del meta["config"][key]
            else:
                meta["config"][key] = value
    return change


_DELETE = object()


@pytest.mark.parametrize("values, match", [
    ({"num_layers": 0}, r"num_layers: expected an int in \[1, 1024\], got 0"),
    ({"num_layers": 1.0}, r"num_layers: expected an int in \[1, 1024\], got 1\.0"),
    ({"num_layers": True}, r"num_layers: expected an int in \[1, 1024\], got True"),
    ({"num_layers": "2"}, r"num_layers: expected an int in \[1, 1024\], got '2'"),
    ({"num_layers": 10**9}, r"num_layers: expected an int in \[1, 1024\], got 1000000000"),
    ({"num_layers": 10**400}, r"num_layers: expected an int in \[1, 1024\]"),
    ({"num_layers": None}, r"num_layers: expected an int in \[1, 1024\], got None"),
    ({"bidirectional": 1}, "bidirectional: expected true or false, got 1"),
    ({"bidirectional": "yes"}, "bidirectional: expected true or false, got 'yes'"),
    ({"bidirectional": None}, "bidirectional: expected true or false, got None"),
    ({"dropout": 1.0}, r"dropout: expected a number in \[0, 1\), got 1\.0"),
    ({"dropout": -0.1}, r"dropout: expected a number in \[0, 1\), got -0\.1"),
    ({"dropout": float("nan")}, r"dropout: expected a number in \[0, 1\), got nan"),
    ({"dropout": "0.5"}, r"dropout: expected a number in \[0, 1\), got '0\.5'"),
    ({"dropout": True}, r"dropout: expected a number in \[0, 1\), got True"),
    ({"dropout": [0.5]}, r"dropout: expected a number in \[0, 1\), got \[0\.5\]"),
    ({"num_directions": 2}, r"unexpected \['num_directions'\]"),
    # the members no longer match the configuration
    ({"num_layers": 3}, r"parameter Wxh_l2, parameter Whh_l2, .* \(18 in all\) missing"),
    ({"num_layers": _DELETE}, "unexpected members 'optim/exp_avg/Whh_l1.npy'"),
    ({"bidirectional": False}, "unexpected members 'optim/exp_avg/Whh_l1_reverse.npy'"),
    ({"hidden_size": 4}, r"parameter Wxh: expected shape \(4, 4\), got \(5, 4\)"),
])
def test_layer_keys_are_checked(tmp_path, values, match):
    path = tmp_path / "m.npz"
    _write_zip(path, [_entry(n, p) for n, p in
                      _stack_members(tmp_path, _config_change(**values)).items()])
    for reader in (load, load_checkpoint):
        with pytest.raises(ModelFileError, match=match) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")
        assert len(info.value.problem) < 500


def test_deepest_claim_is_refused_cheaply(tmp_path):
    """The most layers a file may claim, each wide: the members it implies are listed (a few
    thousand names), found missing and refused, nothing of their size allocated."""
    path = tmp_path / "deep.npz"
    _write_zip(path, [_entry(n, p) for n, p in _stack_members(
        tmp_path, _config_change(num_layers=1024, hidden_size=1 << 20)).items()])
    started = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"parameter Wxh_l2, .* \(18396 in all\) missing"):
        load(path)
    assert time.perf_counter() - started < 2


def test_save_refuses_more_layers_than_a_file_holds(tmp_path):
    model = RNN(1, 1, num_layers=1025, seed=0)
    with pytest.raises(ValueError, match=r"num_layers: a model file holds 1 to 1024 layers"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_single_layer_with_dropout_keeps_its_dropout(tmp_path):
    model = RNN(3, 4, 3, dropout=0.5, seed=0)
    model.save(tmp_path / "m.npz")
    assert load(tmp_path / "m.npz").dropout == 0.5


# ---------------------------------------------------------------------------------------------
# module dependencies
# ---------------------------------------------------------------------------------------------

_IMPORTS = r"""
import importlib, os, sys, types, json
# the package without running its __init__ (which imports everything, cyrnn.io included)
package = types.ModuleType("cyrnn")
package.__path__ = [sys.argv[1]]
sys.modules["cyrnn"] = package
first = sys.argv[2]
importlib.import_module(first)
seen = {"after_import": sorted(m for m in sys.modules if m.startswith("cyrnn"))}
if first == "cyrnn.rnn":
    model = sys.modules["cyrnn.rnn"].RNN(3, 4, 3, num_layers=2, seed=0, backend="numpy")
    model.save(os.path.join(sys.argv[3], "m.npz"))
    seen["after_save"] = sorted(m for m in sys.modules if m.startswith("cyrnn"))
print(json.dumps(seen))
"""


def _modules_imported(first, tmp_path):
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", _IMPORTS, os.path.dirname(cyrnn.__file__),
                             first, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_model_does_not_import_the_loader(tmp_path):
    """``cyrnn.io`` imports ``cyrnn.rnn`` (to build models); ``cyrnn.rnn`` never imports
    ``cyrnn.io``, not even to save: both use the file format module, which imports neither."""
    seen = _modules_imported("cyrnn.rnn", tmp_path)
    assert "cyrnn.io" not in seen["after_import"]
    assert "cyrnn.io" not in seen["after_save"] and "cyrnn._modelfile" in seen["after_save"]
    seen = _modules_imported("cyrnn._modelfile", tmp_path)
    assert "cyrnn.rnn" not in seen["after_import"] and "cyrnn.io" not in seen["after_import"]
    assert "cyrnn.rnn" in _modules_imported("cyrnn.io", tmp_path)["after_import"]
    assert load(tmp_path / "m.npz").num_layers == 2


def test_io_names_are_kept():
    assert cyrnn.io.ModelFileError is cyrnn.ModelFileError is cyrnn._modelfile.ModelFileError
    assert cyrnn.load is cyrnn.io.load and cyrnn.load_checkpoint is cyrnn.io.load_checkpoint
    assert cyrnn.io.VERSION == 1 and cyrnn.io.FORMAT == "cyrnn-model"


# ---------------------------------------------------------------------------------------------
# normalized and regularized recurrences: norm, recurrent_dropout, zoneout, weight_drop
# ---------------------------------------------------------------------------------------------

RECURRENCES = [
    {"norm": "layer"},
    {"norm": "batch"},
    {"recurrent_dropout": 0.25, "zoneout": 0.1, "weight_drop": 0.5},
    {"norm": "batch", "zoneout": 0.2, "num_layers": 2, "bidirectional": True},
]


def _trained_recurrence(cls, backend, dtype, **options):
    """A model with a recurrence option whose parameters (gains included) and running
    statistics are not the initial ones: two training calls on 3 sequences of 4 steps."""
    model = cls(3, 4, 2, seed=5, backend=backend, dtype=dtype, **options)
    rng = np.random.default_rng(2)
    opt = optim.SGD(model.params, lr=0.1)
    for steps in (4, 6):
        x = rng.standard_normal((steps, 3, 3))
        opt.step(model.loss_and_grad(x, rng.standard_normal((steps, 3, 2)))[1])
    return model


@pytest.mark.parametrize("options", RECURRENCES, ids=["layer", "batch", "regularizers",
                                                      "batch-L2-bi-zoneout"])
@pytest.mark.parametrize("cls", [RNN, cyrnn.LSTM, cyrnn.GRU], ids=["elman", "lstm", "gru"])
def test_recurrence_round_trip_is_bit_exact(cls, backend, dtype, tmp_path, options):
    model = _trained_recurrence(cls, backend, dtype, **options)
    path = tmp_path / "m.npz"
    save(model, path)
    loaded = load(path, backend=backend)
    assert type(loaded) is cls and loaded.config() == model.config()
    assert list(loaded.params) == list(model.params)
    gains = [name for name in model.params if name[:2] in ("gx", "gh", "gc", "bc")]
    assert bool(gains) == ("norm" in options)
    for name, p in model.params.items():
        assert loaded.params[name].tobytes() == p.tobytes(), name
    assert list(loaded.running) == list(model.running)
    if options.get("norm") == "batch":
        assert model.running["mean_x"].shape[0] == 6  # the longest sequence trained on
    for name, a in model.running.items():
        got = loaded.running[name]
        assert got.dtype == model.dtype and got.shape == a.shape and got.flags.writeable
        assert got.tobytes() == a.tobytes(), name
    x = np.random.default_rng(3).standard_normal((7, 2, 3))  # longer than any trained on
    for a, b in zip(model.forward(x), loaded.forward(x)):
        for u, v in zip(*(z if isinstance(z, tuple) else (z,) for z in (a, b))):
            assert u.tobytes() == v.tobytes()


def test_batch_norm_round_trip_before_training(tmp_path):
    """S = 0: running statistics of no step, saved and restored as such."""
    model = cyrnn.LSTM(3, 4, 2, norm="batch", seed=0)
    assert all(a.shape[0] == 0 for a in model.running.values())
    save(model, tmp_path / "m.npz")
    assert _meta(_read_npz(tmp_path / "m.npz"))["running_steps"] == 0
    loaded = load(tmp_path / "m.npz")
    assert {k: a.shape for k, a in loaded.running.items()} == \
        {k: a.shape for k, a in model.running.items()}
    x = np.ones((3, 2, 3))
    assert loaded.forward(x)[0].tobytes() == model.forward(x)[0].tobytes()


def test_recurrence_keys_are_stored_only_when_set(tmp_path):
    """A model without the options writes exactly the metadata it wrote before them (a plain
    Elman model: a 0.1 file); each option set is stored, and nothing else is."""
    model = RNN(4, 5, 4, seed=0, norm=None, recurrent_dropout=0.0, zoneout=0.0, weight_drop=0.0)
    save(model, tmp_path / "plain.npz")
    arrays = _read_npz(tmp_path / "plain.npz")
    config = {"input_size": 4, "hidden_size": 5, "output_size": 4, "nonlinearity": "tanh",
              "negative_slope": 0.01, "output": "linear", "init": "uniform",
              "dtype": "float32", "batch_first": False}
    meta = {"format": "cyrnn-model", "version": 1, "config": config, "vocab": None,
            "optimizer": None, "extra": {}}
    assert arrays["metadata.json"].tobytes() == json.dumps(meta).encode("utf-8")
    assert set(arrays) == {"metadata.json", "param/Wxh", "param/Whh", "param/bh", "param/Why",
                           "param/by"}
    cyrnn.GRU(4, 5, 4, seed=0).save(tmp_path / "gru.npz")
    meta = _meta(_read_npz(tmp_path / "gru.npz"))
    assert set(meta) == {"format", "version", "config", "vocab", "optimizer", "extra"}
    assert set(meta["config"]) == CONFIG_KEYS_0_1 | {"cell"}
    for options in RECURRENCES:
        save(cyrnn.LSTM(4, 5, 4, seed=0, **options), tmp_path / "m.npz")
        arrays = _read_npz(tmp_path / "m.npz")
        stored = _meta(arrays)["config"]
        extra = {k: stored[k] for k in set(stored) - CONFIG_KEYS_0_1 - {"cell"}}
        assert extra == options
        assert ("running_steps" in _meta(arrays)) == (options.get("norm") == "batch")
        assert any(k.startswith("running/") for k in arrays) == (options.get("norm") == "batch")


@pytest.mark.parametrize("options", RECURRENCES[:3], ids=["layer", "batch", "regularizers"])
def test_a_reader_without_the_options_refuses_their_files(tmp_path, monkeypatch, options):
    """A reader that does not know an option (here: this one with the options unknown to it)
    refuses the file, as cyrnn 0.1 refuses a stack's: it never runs the model without them."""
    save(cyrnn.GRU(3, 4, 2, seed=0, **options), tmp_path / "m.npz")
    monkeypatch.setattr(cyrnn._modelfile, "RECURRENCE_KEYS", {})
    with pytest.raises(ModelFileError, match=r"model configuration: missing \[\], unexpected "
                                             r"\[.*'" + next(iter(options)) + "'"):
        load(tmp_path / "m.npz")


def _batch_norm_file(tmp_path):
    model = _trained_recurrence(cyrnn.LSTM, None, np.float32, norm="batch")
    path = tmp_path / "bn.npz"
    save(model, path)
    return path, _read_npz(path)


def test_batch_norm_file_without_running_statistics_is_refused(tmp_path):
    path, arrays = _batch_norm_file(tmp_path)
    meta = _meta(arrays)
    # none at all: no running_steps and no members (what a writer that dropped them writes)
    bare = {k: a for k, a in arrays.items() if not k.startswith("running/")}
    del bare["metadata.json"]
    del meta["running_steps"]
    _write_npz(path, bare, meta)
    with pytest.raises(ModelFileError, match=r"running statistics missing: a norm='batch' "
                                             r"model's file holds them .*'mean_x', 'var_x', "
                                             r"'mean_h'.*this file has none"):
        load(path)
    # one statistic missing: named
    path, arrays = _batch_norm_file(tmp_path)
    del arrays["running/var_h"]
    _write_npz(path, arrays)
    with pytest.raises(ModelFileError, match=r"running statistic var_h missing"):
        load(path)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update({"running/mean_c": a["running/mean_c"][:5]}),
     r"running statistic mean_c: expected shape \(6, 4\), got \(5, 4\)"),
    (lambda a: a.update({"running/var_x": a["running/var_x"].astype(np.float64)}),
     r"running statistic var_x: .*expected dtype float32, got float64"),
    (lambda a: a["running/mean_h"].__setitem__((2, 3), np.nan),
     r"running statistic mean_h: non-finite values"),
    (lambda a: a["running/var_c"].__setitem__((0, 0), np.inf),
     r"running statistic var_c: non-finite values"),
    (lambda a: a["running/var_x"].__setitem__((1, 1), -1.0),
     r"running statistic var_x: negative variances"),
    (lambda a: a.update({"running/mean_q": a["running/mean_x"]}),
     r"unexpected members 'running/mean_q.npy'"),
], ids=["shape", "dtype", "nan", "inf", "negative-variance", "unexpected"])
def test_bad_running_statistics_are_refused(tmp_path, change, match):
    path, arrays = _batch_norm_file(tmp_path)
    arrays = {k: np.array(a) for k, a in arrays.items()}
    change(arrays)
    _write_npz(path, arrays)
    with pytest.raises(ModelFileError, match=match) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("value, match", [
    (-1, r"running_steps: expected an int in \[0, 16777216\], got -1"),
    (2.0, r"running_steps: expected an int in \[0, 16777216\], got 2\.0"),
    (True, r"running_steps: expected an int in \[0, 16777216\], got True"),
    (10**12, r"running_steps: expected an int in \[0, 16777216\], got 1000000000000"),
    (5, r"running statistic mean_x: expected shape \(5, 16\), got \(6, 16\)"),
])
def test_running_steps_is_checked(tmp_path, value, match):
    path, arrays = _batch_norm_file(tmp_path)
    meta = _meta(arrays)
    meta["running_steps"] = value
    del arrays["metadata.json"]
    _write_npz(path, arrays, meta)
    with pytest.raises(ModelFileError, match=match):
        load(path)


def test_huge_running_steps_claim_is_refused_cheaply(tmp_path):
    """S is bounded with the parameters: a claim of many steps is refused before anything of
    its size is allocated."""
    path, arrays = _batch_norm_file(tmp_path)
    meta = _meta(arrays)
    meta["running_steps"] = 1 << 24
    del arrays["metadata.json"]
    _write_npz(path, arrays, meta)
    with pytest.raises(ModelFileError, match=r"implies \d+ bytes of arrays, more than a file"):
        load(path)


def test_running_steps_in_a_model_without_batch_norm_is_refused(tmp_path):
    save(cyrnn.GRU(3, 4, 2, norm="layer", seed=0), tmp_path / "m.npz")
    arrays = _read_npz(tmp_path / "m.npz")
    meta = _meta(arrays)
    meta["running_steps"] = 0
    del arrays["metadata.json"]
    _write_npz(tmp_path / "m.npz", arrays, meta)
    with pytest.raises(ModelFileError, match=r"running_steps 0 for a model without "
                                             r"norm='batch' \(norm='layer'\)"):
        load(tmp_path / "m.npz")


@pytest.mark.parametrize("values, match", [
    ({"norm": "group"}, r"norm: expected null, 'layer', 'batch', got 'group'"),
    ({"norm": 1}, r"norm: expected null, 'layer', 'batch', got 1"),
    ({"zoneout": 1.0}, r"zoneout: expected a number in \[0, 1\), got 1\.0"),
    ({"recurrent_dropout": -0.5}, r"recurrent_dropout: expected a number in \[0, 1\), got -0\.5"),
    ({"weight_drop": "0.1"}, r"weight_drop: expected a number in \[0, 1\), got '0\.1'"),
    ({"weight_drop": float("nan")}, r"weight_drop: expected a number in \[0, 1\), got nan"),
    # the gains the configuration implies are not in the file
    ({"norm": "layer"}, r"parameter gx, parameter gh, parameter gc, parameter bc missing"),
])
def test_recurrence_keys_are_checked(tmp_path, values, match):
    save(cyrnn.LSTM(3, 4, 2, seed=0), tmp_path / "m.npz")
    arrays = _read_npz(tmp_path / "m.npz")
    meta = _meta(arrays)
    meta["config"].update(values)
    del arrays["metadata.json"]
    _write_npz(tmp_path / "m.npz", arrays, meta)
    with pytest.raises(ModelFileError, match=match):
        load(tmp_path / "m.npz")


def test_writer_needs_the_running_statistics_of_batch_norm(tmp_path):
    model = cyrnn.GRU(3, 4, 2, norm="batch", seed=0)
    args = ({**model.config(), "cell": "gru"}, model.params)
    with pytest.raises(ValueError, match=r"running: a norm='batch' model is saved with its "
                                         r"running statistics \(model.running: mean_x, var_x"):
        cyrnn._modelfile.write(tmp_path / "m.npz", *args)
    bad = dict(model.running, var_h=np.full((1, 12), -1.0, np.float32))
    with pytest.raises(ValueError, match=r"running: expected every statistic of shape \(S, "
                                         r"width\) with one S"):
        cyrnn._modelfile.write(tmp_path / "m.npz", *args, running=bad)
    with pytest.raises(ValueError, match=r"running: a model without norm='batch' has no"):
        cyrnn._modelfile.write(tmp_path / "m.npz", {**args[0], "norm": "layer"},
                               cyrnn.GRU(3, 4, 2, norm="layer").params, running=model.running)
    assert not (tmp_path / "m.npz").exists()


def test_optimizer_state_of_a_normalized_model_resumes(tmp_path):
    """The gains have optimizer buffers like every parameter."""
    model = _trained_recurrence(cyrnn.LSTM, None, np.float64, norm="batch")
    opt = optim.Adam(model.params, lr=0.01)
    x, y = np.ones((3, 2, 3)), np.zeros((3, 2, 2))
    opt.step(model.loss_and_grad(x, y, dropout_seed=0)[1])
    save(model, tmp_path / "m.npz", optimizer=opt)
    loaded, state, _ = load_checkpoint(tmp_path / "m.npz")
    assert {key.split("/")[1] for key in state["buffers"]} == set(model.params)
    opt2 = optim.make_optimizer(state["type"], loaded.params, **state["config"])
    opt2.load_state_dict(state)
    opt.step(model.loss_and_grad(x, y, dropout_seed=1)[1])
    opt2.step(loaded.loss_and_grad(x, y, dropout_seed=1)[1])
    for name, p in model.params.items():
        assert loaded.params[name].tobytes() == p.tobytes(), name
    for name, a in model.running.items():
        assert loaded.running[name].tobytes() == a.tobytes(), name


def test_model_save_of_batch_norm(tmp_path):
    model = _trained_recurrence(cyrnn.GRU, None, np.float32, norm="batch")
    model.save(tmp_path / "m.npz")
    assert load(tmp_path / "m.npz").running["mean_x"].tobytes() == \
        model.running["mean_x"].tobytes()
