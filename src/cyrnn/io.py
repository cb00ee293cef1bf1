"""Saving and loading models: a versioned ``.npz`` with JSON metadata, no pickle.

The file is a zip archive of ``.npy`` members (what ``np.savez`` writes): ``param/<name>.npy``
for each parameter in its own dtype (a round trip is bit-exact), ``optim/<buffer>/<param>.npy``
for the optimizer's buffers when one is given, and ``metadata.json.npy``, one JSON document
stored as UTF-8 bytes, with the format version, the model's configuration, the vocabulary and the
optimizer's type, hyperparameters and step count.

Loading treats the file as hostile. It opens the archive itself (not ``np.load``) and, before
it decompresses the data of any array:

- reads only ``metadata.json.npy`` at first, at most 1 MiB of JSON, and checks every value of it
  (types, sizes, names);
- derives from the configuration the exact list of members, with the shape and dtype of each:
  a missing, unexpected or duplicate member is an error;
- bounds the total: the arrays the configuration implies may hold at most
  ``max(16 MiB, 32 x the file's size)`` bytes, and each member's declared size in the archive
  must be its ``.npy`` header plus exactly the bytes its shape implies. A file written by
  ``save`` is stored without compression, so it is always within this bound; deflate
  (``np.savez_compressed``) gains little on float parameters (1.1x on random ones), so only
  files of mostly degenerate arrays exceed it (zeros; the untrained identity ``Whh`` of a large
  IRNN);
- reads the ``.npy`` header of a member and compares its shape and dtype with the expected ones:
  only the model's float dtype in little-endian or native byte order (uint8 for the metadata),
  so no object array and no pickle can get through.

Members are then decompressed with a cap at the declared size (the zip reader stops there and
checks the CRC), so a file of ``n`` bytes makes ``load`` decompress at most
``max(16 MiB, 32 n)`` bytes of arrays and 1 MiB of metadata, and the model is built from the
arrays (``RNN.from_params``, which copies the parameters), with no random initialisation of a
size the file chooses. Only stored (``np.savez``) and deflated (``np.savez_compressed``)
members are read.

Every failure to read a file that exists (not a zip, a truncated or corrupted member, bad JSON,
a wrong type or size anywhere, non-finite values, ...) raises ``ModelFileError``, a
``ValueError`` whose message names the file and the problem. Errors opening the path itself
(``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``) are raised as they are.
"""
import json
import math
import os
import reprlib
import stat
import zipfile
import zlib
from collections import Counter

import numpy as np
from numpy.lib import format as npy_format

from . import kernels, losses, optim
from ._checks import NONLINEARITIES
from .data import Vocabulary
from .init import INITS
from .layers import Architecture
from .rnn import RNN

__all__ = ["ModelFileError", "save", "load", "load_checkpoint"]

FORMAT = "cyrnn-model"
VERSION = 1
_META = "metadata.json"
_CONFIG_KEYS = ("input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
                "output", "init", "dtype", "batch_first")
_META_KEYS = {"format", "version", "config", "vocab", "optimizer", "extra"}
_OPTIMIZER_KEYS = {"type", "config", "steps"}

#: Largest metadata document read (bytes of JSON).
_MAX_METADATA_BYTES = 1 << 20
#: Arrays may expand a file to this many times its size ...
_MAX_EXPANSION = 32
#: ... or to this many bytes, whichever is more.
_MIN_ARRAY_BUDGET = 16 << 20
#: Largest ``.npy`` preamble (magic, version, header length and header) accepted.
_MAX_NPY_HEADER = 4096
#: Largest finite float: JSON integers beyond it are refused rather than overflowing.
_FLOAT_MAX = float(np.finfo(np.float64).max)
#: Bytes decompressed per read.
_CHUNK = 1 << 20
#: What the zip reader raises on a damaged member (NotImplementedError: features it lacks).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError)


class ModelFileError(ValueError):
    """A file that exists is not a readable cyrnn model file.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    problem : str
        What is wrong with it.

    Attributes
    ----------
    path, problem
        As given; ``str(error)`` is ``"<path>: <problem>"``.
    """

    def __init__(self, path, problem):
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self):
        path = os.fsdecode(self.path) if isinstance(self.path, bytes) else self.path
        return f"{path}: {self.problem}"


def save(model, path, *, optimizer=None, extra=None):
    """Write ``model`` (and optionally ``optimizer``'s state) to ``path`` (``.npz``).

    Parameters
    ----------
    model : cyrnn.RNN
    path : str or os.PathLike
        Written as given (NumPy appends ``.npz`` when missing; this function does not).
    optimizer : cyrnn.optim.Optimizer, optional
        Its ``state_dict()`` is stored so that training can resume bit-identically.
    extra : dict, optional
        JSON-serializable user metadata (e.g. the epoch), returned by ``load_checkpoint``.
    """
    config = {key: getattr(model, key) for key in _CONFIG_KEYS}
    config["dtype"] = model.dtype.name
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "vocab": None if getattr(model, "vocab", None) is None else model.vocab.to_json(),
        "optimizer": None,
        "extra": extra if extra is not None else {},
    }
    arrays = {f"param/{name}": p for name, p in model.params.items()}
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {k: v for k, v in state.items() if k != "buffers"}
        arrays.update({f"optim/{name}": a for name, a in state["buffers"].items()})
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise TypeError(f"extra: metadata must be JSON-serializable ({exc})") from None
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with open(os.fspath(path), "wb") as fh:
        np.savez(fh, **arrays)


def load(path, *, backend=None):
    """Read a model written by ``save``; its vocabulary, if any, is ``model.vocab``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"} or None
        Kernel backend of the loaded model.

    Returns
    -------
    cyrnn.RNN

    Raises
    ------
    ModelFileError
        The file exists but is not a readable cyrnn model file (see the module docstring).
    OSError
        The path cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    return load_checkpoint(path, backend=backend)[0]


def load_checkpoint(path, *, backend=None):
    """Read a model and what else ``save`` stored with it.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"} or None
        Kernel backend of the loaded model.

    Returns
    -------
    model : cyrnn.RNN
    optimizer_state : dict or None
        In the form of ``Optimizer.state_dict()``; rebuild with
        ``cyrnn.optim.make_optimizer(state["type"], model.params, **state["config"])``
        followed by ``load_state_dict(state)`` (pass ``schedule=`` again: schedules are code,
        not state). The state is checked: this succeeds.
    extra : dict
        The user metadata given to ``save``.

    Raises
    ------
    ModelFileError
        The file exists but is not a readable cyrnn model file (see the module docstring).
    OSError
        The path cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    kernels.get_backend(backend)  # a bad argument is the caller's error, not the file's
    with open(os.fspath(path), "rb") as fh:
        try:
            return _load(fh, path, backend)
        except ModelFileError:
            raise
        except Exception as exc:  # anything else a hostile file provokes, e.g. in the zip reader
            raise ModelFileError(path, f"unreadable ({type(exc).__name__}: {_short(exc)})") from exc


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _load(fh, path, backend):
    """``load_checkpoint`` on an open file: every check before the allocation it guards."""
    info = os.fstat(fh.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(path, "not a regular file")
    try:
        archive = zipfile.ZipFile(fh)
    except _ZIP_ERRORS + (ValueError,) as exc:
        raise ModelFileError(path, f"not a cyrnn model file (not a zip archive: {_short(exc)})") from None
    with archive:
        members = _members(archive, path)
        meta_member = members.pop(f"{_META}.npy", None)
        if meta_member is None:
            raise ModelFileError(path, f"not a cyrnn model file (no {_META})")
        raw = _read_member(archive, meta_member, path, _META, np.dtype(np.uint8), None)
        meta = _parse_metadata(raw, path)
        config = _check_config(meta["config"], path)
        dtype = np.dtype(config["dtype"])
        shapes = Architecture(config["input_size"], config["hidden_size"], config["output_size"],
                              config.get("num_layers", 1),
                              2 if config.get("bidirectional", False) else 1).param_shapes()
        vocab = _check_vocabulary(meta["vocab"], config, path)
        optimizer_state, buffer_shapes = _check_optimizer(meta["optimizer"], shapes, dtype, path)

        expected = {f"param/{name}.npy": (f"parameter {name}", shape)
                    for name, shape in shapes.items()}
        expected.update({f"optim/{key}.npy": (f"optimizer buffer {key}", shape)
                         for key, shape in buffer_shapes.items()})
        missing = [what for name, (what, _) in expected.items() if name not in members]
        if missing:
            raise ModelFileError(path, f"{', '.join(missing)} missing")
        unexpected = sorted(set(members) - set(expected))
        if unexpected:
            raise ModelFileError(path, f"unexpected members {_listed(unexpected)}")
        total = sum(math.prod(shape) for _, shape in expected.values()) * dtype.itemsize
        budget = max(_MIN_ARRAY_BUDGET, _MAX_EXPANSION * info.st_size)
        if total > budget:
            raise ModelFileError(
                path, f"the configuration implies {total} bytes of arrays, more than a file of "
                      f"{info.st_size} bytes may hold ({budget}: at most {_MAX_EXPANSION} times "
                      f"its size or {_MIN_ARRAY_BUDGET} bytes)")
        arrays = {}
        for name, (what, shape) in expected.items():
            arrays[name] = _read_member(archive, members[name], path, what, dtype, shape)

    params = {name: arrays.pop(f"param/{name}.npy") for name in shapes}
    try:
        model = RNN.from_params(params, **{key: config[key] for key in (
            "nonlinearity", "negative_slope", "output", "init", "dtype", "batch_first")},
            backend=backend)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(path, f"invalid parameters: {_short(exc)}") from None
    del params
    model.vocab = vocab
    if optimizer_state is not None:
        optimizer_state["buffers"] = {key: arrays.pop(f"optim/{key}.npy") for key in buffer_shapes}
    return model, optimizer_state, meta["extra"]


def _members(archive, path):
    """The archive's members by name, refusing duplicates and what this reader cannot read."""
    infos = archive.infolist()
    counts = Counter(info.filename for info in infos)
    duplicates = sorted(name for name, n in counts.items() if n > 1)
    if duplicates:
        raise ModelFileError(path, f"duplicate members {_listed(duplicates)}")
    for info in infos:
        if info.flag_bits & 0x1:
            raise ModelFileError(path, f"member {_shown(info.filename)} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(
                path, f"member {_shown(info.filename)}: compression method {info.compress_type} "
                      "(only stored and deflated members are read)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ModelFileError(
                path, f"member {_shown(info.filename)}: stored with {info.compress_size} bytes but "
                      f"declares {info.file_size}")
    return {info.filename: info for info in infos}


def _read_member(archive, info, path, what, dtype, shape):
    """The array of one ``.npy`` member, checked against ``dtype`` and ``shape`` before its data
    is read; ``shape=None`` means one dimension of at most ``_MAX_METADATA_BYTES`` items."""
    if shape is None:
        low, high = 0, _MAX_NPY_HEADER + _MAX_METADATA_BYTES * dtype.itemsize
        expected = f"at most {high}"
    else:
        nbytes = math.prod(shape) * dtype.itemsize
        low, high = nbytes, nbytes + _MAX_NPY_HEADER
        expected = f"{nbytes} of data and a .npy header of at most {_MAX_NPY_HEADER}"
    if not low < info.file_size <= high:
        raise ModelFileError(
            path, f"{what}: the archive declares {info.file_size} bytes, expected {expected}")
    try:
        with archive.open(info) as stream:
            got_shape, fortran_order, got_dtype = _read_npy_header(stream, path, what)
            if got_dtype not in (dtype.newbyteorder("<"), dtype.newbyteorder("=")):
                raise ModelFileError(path, f"{what}: expected dtype {dtype}, got {got_dtype}")
            if shape is None:
                if len(got_shape) != 1 or not 0 <= got_shape[0] <= _MAX_METADATA_BYTES:
                    raise ModelFileError(
                        path, f"{what}: expected shape (n,) with n <= {_MAX_METADATA_BYTES}, "
                              f"got {got_shape}")
                shape = got_shape
                nbytes = got_shape[0] * dtype.itemsize
            elif got_shape != shape:
                raise ModelFileError(path, f"{what}: expected shape {shape}, got {got_shape}")
            if info.file_size != stream.tell() + nbytes:
                raise ModelFileError(
                    path, f"{what}: the archive declares {info.file_size} bytes, the .npy "
                          f"header {stream.tell()} and {nbytes} of data")
            # the zip reader stops at the declared size (and checks the CRC there): what a
            # deflated member inflates to beyond it is never produced
            data = np.empty(nbytes, dtype=np.uint8)
            done = 0
            while done < nbytes:
                chunk = stream.read(min(_CHUNK, nbytes - done))
                if not chunk:
                    raise ModelFileError(path, f"{what}: truncated at {done} of {nbytes} bytes")
                data[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                done += len(chunk)
    except _ZIP_ERRORS as exc:
        raise ModelFileError(path, f"{what}: corrupted ({type(exc).__name__}: {_short(exc)})") from None
    array = data.view(got_dtype)
    if fortran_order:
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


def _read_npy_header(stream, path, what):
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header at the start of ``stream``."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(stream, max_header_size=_MAX_NPY_HEADER)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(stream, max_header_size=_MAX_NPY_HEADER)
        problem = f"unsupported .npy format version {version}"
    except _ZIP_ERRORS:
        raise
    except Exception as exc:  # ValueError, and what a hostile header provokes in its parser
        problem = f"{type(exc).__name__}: {_short(exc)}"
    raise ModelFileError(path, f"{what}: not a .npy array ({problem})")


def _parse_metadata(raw, path):
    """The metadata document, with its top level checked; missing optional keys filled in."""
    try:
        text = raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFileError(path, f"corrupted metadata (not UTF-8: {exc})") from None
    try:
        meta = json.loads(text)
    except RecursionError:
        raise ModelFileError(path, "corrupted metadata (JSON nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError, and integers of too many digits
        raise ModelFileError(path, f"corrupted metadata ({_short(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, "not a cyrnn model file (no cyrnn-model format in metadata)")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:
        raise ModelFileError(path, f"format version {_shown(version)}, this cyrnn reads {VERSION}")
    unexpected = sorted(set(meta) - _META_KEYS)
    if unexpected:
        raise ModelFileError(path, f"metadata: unexpected keys {_listed(unexpected)}")
    if "config" not in meta:
        raise ModelFileError(path, "model configuration missing")
    meta.setdefault("vocab", None)
    meta.setdefault("optimizer", None)
    meta.setdefault("extra", {})
    return meta


def _check_config(config, path):
    """The model configuration, every value checked for its type and range."""
    def fail(problem):
        raise ModelFileError(path, f"model configuration: {problem}")

    if not isinstance(config, dict):
        fail(f"expected a JSON object, got {_json_type(config)}")
    if set(config) != set(_CONFIG_KEYS):
        missing = [key for key in _CONFIG_KEYS if key not in config]
        fail(f"missing {missing}, unexpected {sorted(set(config) - set(_CONFIG_KEYS))}")
    for key in ("input_size", "hidden_size", "output_size"):
        value = config[key]
        if key == "output_size" and value is None:
            continue
        if type(value) is not int or value < 1:
            fail(f"{key}: expected an int >= 1, got {_shown(value)}")
    for key, names in (("nonlinearity", NONLINEARITIES), ("output", losses.OUTPUTS),
                       ("init", INITS), ("dtype", ("float32", "float64"))):
        if not isinstance(config[key], str) or config[key] not in names:
            fail(f"{key}: expected one of {', '.join(names)}, got {_shown(config[key])}")
    slope = config["negative_slope"]
    if type(slope) not in (int, float) or not 0 <= slope <= _FLOAT_MAX:  # NaN fails too
        fail(f"negative_slope: expected a finite number >= 0, got {_shown(slope)}")
    if config["output_size"] is None and config["output"] != "linear":
        fail(f"output: {config['output']!r} needs an output layer, got output_size None")
    if not isinstance(config["batch_first"], bool):
        fail(f"batch_first: expected true or false, got {_shown(config['batch_first'])}")
    return config


def _check_vocabulary(data, config, path):
    """The vocabulary of the metadata (or None), of the model's input size."""
    if data is None:
        return None
    try:
        vocab = Vocabulary.from_json(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(path, f"invalid vocabulary: {_short(exc)}") from None
    if len(vocab) != config["input_size"]:
        raise ModelFileError(
            path, f"vocabulary of {len(vocab)} for input_size {config['input_size']}")
    return vocab


def _check_optimizer(state, shapes, dtype, path):
    """The optimizer state of the metadata (without buffers) and the shape of each buffer its
    configuration implies; ``(None, {})`` without an optimizer.

    The state is checked by restoring it into an optimizer of the same type over parameters of
    one element each (so nothing of a size the file chooses is allocated): the restore that
    ``load_checkpoint`` promises then succeeds on the model's parameters too.
    """
    if state is None:
        return None, {}

    def fail(problem):
        raise ModelFileError(path, f"optimizer state: {problem}")

    if not isinstance(state, dict):
        fail(f"expected a JSON object, got {_json_type(state)}")
    if set(state) != _OPTIMIZER_KEYS:
        fail(f"expected keys {sorted(_OPTIMIZER_KEYS)}, got {sorted(state)}")
    kind, config, steps = state["type"], state["config"], state["steps"]
    if not isinstance(kind, str) or kind.lower() not in optim.OPTIMIZERS:
        fail(f"type: expected one of {', '.join(optim.OPTIMIZERS)}, got {_shown(kind)}")
    if not isinstance(config, dict):
        fail(f"config: expected a JSON object, got {_json_type(config)}")
    if type(steps) is not int or steps < 0:
        fail(f"steps: expected an int >= 0, got {_shown(steps)}")
    probe_params = {name: np.zeros((1,) * len(shape), dtype) for name, shape in shapes.items()}
    try:
        probe = optim.make_optimizer(kind, probe_params, **config)
        buffers = probe.state_dict()["buffers"]
        probe.load_state_dict({"type": kind, "config": config, "steps": steps,
                               "buffers": buffers})
        problem = None
    except (TypeError, ValueError, KeyError) as exc:
        problem = _short(exc)
    if problem is not None:
        fail(problem)
    buffer_shapes = {key: shapes[key.rsplit("/", 1)[1]] for key in buffers}
    return {"type": kind, "config": config, "steps": steps}, buffer_shapes


def _listed(names, most=5):
    """Up to ``most`` names for a message."""
    shown = ", ".join(_shown(name) for name in names[:most])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > most else shown


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 60, 40, 60


def _shown(value):
    """A repr of a value from the file for a message, bounded in length (reprlib)."""
    return _REPR.repr(value)


def _short(text, limit=300):
    """``str(text)`` for a message, cut at ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")
