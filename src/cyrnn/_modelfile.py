"""The model file below the model class: a configuration, parameters, a vocabulary, optimizer
state and user metadata in (``write``), the same out (``read``).

This module knows nothing of ``cyrnn.RNN``: ``RNN.save`` writes with it and ``cyrnn.io.load``
builds the model from what it reads, so the dependency runs one way (rnn -> _modelfile <- io
-> rnn). The format and the checks made on reading are described in ``cyrnn.io``.

Configuration keys: those of cyrnn 0.1 (``CONFIG_KEYS``) and the shape of a stack
(``LAYER_KEYS``: ``num_layers``, ``bidirectional``, ``dropout``). The writer stores a layer key
only when its value differs from the 0.1 behaviour (1 layer, one direction, no dropout), so the
file of a single-layer model is exactly a 0.1 file; the reader fills in missing layer keys with
those defaults, so 0.1 files load. A cyrnn 0.1 reader refuses a configuration with keys it does
not know, so it refuses the file of a stack instead of loading it as one layer.

The cell (``CELL_KEY``: ``"elman"``, ``"lstm"`` or ``"gru"``) is stored the same way: only when
it is not ``"elman"``, so an Elman file is byte for byte what it was, and a 0.1 reader refuses
the file of an LSTM or GRU (an unknown key) instead of loading its gate-stacked arrays as an
Elman model. A gated cell has no nonlinearity of its own (its sigmoids and tanh are part of the
cell), yet its file keeps every key of ``CONFIG_KEYS`` (every file has them) with the defaults
``nonlinearity="tanh"``, ``negative_slope=0.01``; any other value is refused, on writing and on
reading, as is ``init="identity"`` (an Elman initialisation): a file claiming a ``relu`` LSTM
describes no model cyrnn has, and loading it silently as an ordinary LSTM would hide that.

The normalization and the regularizers inside the recurrence (``RECURRENCE_KEYS``: ``norm``,
``recurrent_dropout``, ``zoneout``, ``weight_drop``, see ``cyrnn.norms``) are stored the same
way again: only when they differ from the plain cell (``None`` and ``0.0``), so the file of a
model without them is byte for byte what it was, and a reader that does not know them refuses
the file (an unknown key) instead of running the model without them. A normalized model's
gains (``gx``, ``gh``, an LSTM's ``gc``, ``bc``) are parameters like the others. A
``norm="batch"`` model also stores its running statistics (``model.running``): the metadata's
``running_steps`` gives their number of steps ``S`` (0 before any training) and each one is a
member ``running/<name>.npy`` of shape ``(S, width)`` in the model's dtype, checked like the
parameters; missing, mis-shaped or non-finite statistics (or a negative variance) are refused
with their names, as is ``running_steps`` in the file of a model without batch normalization.
"""
import json
import math
import os
import reprlib
import stat
import zipfile
import zlib
from collections import Counter
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.lib import format as npy_format

from . import losses, optim
from ._checks import NONLINEARITIES
from .data import Vocabulary
from .init import INITS
from . import cells
from .cells import CELLS
from .layers import NORMS, Architecture
from .norms import running_names

__all__ = ["ModelFileError", "Contents", "write", "read", "FORMAT", "VERSION", "CONFIG_KEYS",
           "LAYER_KEYS", "CELL_KEY", "GATED_DEFAULTS", "RECURRENCE_KEYS", "MAX_LAYERS",
           "MAX_RUNNING_STEPS"]

FORMAT = "cyrnn-model"
VERSION = 1
_META = "metadata.json"
#: The configuration of a cyrnn 0.1 file: every file has these keys.
CONFIG_KEYS = ("input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
               "output", "init", "dtype", "batch_first")
#: The shape of a stack, with the value a file without the key stands for.
LAYER_KEYS = {"num_layers": 1, "bidirectional": False, "dropout": 0.0}
#: The recurrent cell (``cyrnn.cells.CELLS``); a file without the key holds an Elman model.
CELL_KEY = "cell"
#: What a gated cell's file holds for the Elman-only keys of ``CONFIG_KEYS``: their defaults.
GATED_DEFAULTS = {"nonlinearity": "tanh", "negative_slope": 0.01}
#: The normalization and regularizers inside the recurrence, with the value a file without the
#: key stands for (the plain cell).
RECURRENCE_KEYS = {"norm": None, "recurrent_dropout": 0.0, "zoneout": 0.0, "weight_drop": 0.0}
#: Most steps of running statistics a file may describe (bounds the listing work like
#: ``MAX_LAYERS``; the bytes they imply are bounded with the parameters').
MAX_RUNNING_STEPS = 1 << 24
#: Most layers a file may describe: bounds the work of listing the members a configuration
#: implies, which happens before the size of the arrays is checked against the file's.
MAX_LAYERS = 1024
_META_KEYS = {"format", "version", "config", "vocab", "optimizer", "extra", "running_steps"}
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

    __module__ = "cyrnn.io"

    def __init__(self, path, problem):
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self):
        path = os.fsdecode(self.path) if isinstance(self.path, bytes) else self.path
        return f"{path}: {self.problem}"


class Contents(NamedTuple):
    """What a model file holds, checked."""

    #: Every key of ``CONFIG_KEYS``, ``LAYER_KEYS``, ``CELL_KEY`` and ``RECURRENCE_KEYS`` (the
    #: defaults filled in).
    config: dict
    #: Parameter arrays by name, in ``Architecture.param_shapes()`` order.
    params: dict
    vocab: Optional[Vocabulary]
    #: ``Optimizer.state_dict()`` form (buffers included), or None.
    optimizer_state: Optional[dict]
    extra: Any
    #: The running statistics of a ``norm="batch"`` model by name (``(S, width)`` each); empty
    #: for any other model.
    running: Optional[dict] = None


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def architecture(config):
    """The ``Architecture`` of a configuration (missing layer, cell and recurrence keys: their
    defaults)."""
    options = {key: config.get(key, default) for key, default in RECURRENCE_KEYS.items()}
    return Architecture(config["input_size"], config["hidden_size"], config["output_size"],
                        config.get("num_layers", 1), 2 if config.get("bidirectional", False) else 1,
                        config.get(CELL_KEY, "elman"), **options)


def running_shapes(arch):
    """Name and width of every running statistic of a ``norm="batch"`` architecture (each is
    ``(S, width)``): ``G`` for the input and recurrent terms, ``H`` for an LSTM's cell state."""
    widths = {}
    for j in range(arch.num_states):
        for term, names in running_names(arch, j).items():
            for name in names:
                widths[name] = arch.hidden_size if term == "c" else arch.gate_size
    return widths


def file_config(config):
    """The configuration a file stores, from a model's ``config()`` plus its ``cell`` (or any
    mapping with the keys of ``CONFIG_KEYS`` and optionally ``LAYER_KEYS`` and ``CELL_KEY``; a
    gated cell may leave out ``nonlinearity`` and ``negative_slope``, which its ``config()``
    lacks; other keys, such as ``backend`` and ``threads``, are choices of the process that runs
    the model, not of the model, and are left out). Layer keys at their default and the cell
    ``"elman"`` are left out (see the module docstring)."""
    cell = config.get(CELL_KEY, "elman")
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")
    if cell != "elman":
        for key, default in GATED_DEFAULTS.items():
            if key in config and config[key] != default:
                raise ValueError(f"{key}: a {cell} cell has none (its gates are part of the "
                                 f"cell); expected {default!r} or no value, got {config[key]!r}")
        if config.get("init") == "identity":
            raise ValueError(f"init: 'identity' (IRNN) is for Elman cells, not {cell}")
        config = {**GATED_DEFAULTS, **config}
    stored = {key: config[key] for key in CONFIG_KEYS}
    stored["dtype"] = np.dtype(stored["dtype"]).name
    stored["negative_slope"] = float(stored["negative_slope"])
    stored["batch_first"] = bool(stored["batch_first"])
    num_layers = int(config.get("num_layers", 1))
    if not 1 <= num_layers <= MAX_LAYERS:
        raise ValueError(f"num_layers: a model file holds 1 to {MAX_LAYERS} layers, got {num_layers}")
    values = {"num_layers": num_layers,
              "bidirectional": bool(config.get("bidirectional", False)),
              "dropout": float(config.get("dropout", 0.0))}
    stored.update({key: value for key, value in values.items() if value != LAYER_KEYS[key]})
    if cell != "elman":
        stored[CELL_KEY] = cell
    norm = config.get("norm")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm: expected None, {', '.join(map(repr, NORMS))}, got {norm!r}")
    if norm is not None:
        stored["norm"] = norm
    for key in ("recurrent_dropout", "zoneout", "weight_drop"):
        value = float(config.get(key, 0.0))
        if not 0 <= value < 1:  # NaN fails too
            raise ValueError(f"{key}: expected a number in [0, 1), got {value!r}")
        if value != RECURRENCE_KEYS[key]:
            stored[key] = value
    return stored


def write(path, config, params, *, vocab=None, optimizer_state=None, extra=None, running=None):
    """Write a model file.

    Parameters
    ----------
    path : str or os.PathLike
        Written as given (NumPy appends ``.npz`` when missing; this function does not).
    config : mapping
        The model's configuration (``RNN.config()``) and its ``cell`` (``"elman"`` when not
        given), see ``file_config``.
    params : mapping of str to ndarray
        Exactly the parameters the configuration implies (``Architecture.param_shapes()``),
        with their shapes, stored in their own dtype.
    vocab : cyrnn.Vocabulary, optional
    optimizer_state : dict, optional
        ``Optimizer.state_dict()``.
    extra : dict, optional
        JSON-serializable user metadata.
    running : mapping of str to ndarray, optional
        The running statistics (``model.running``) of a ``norm="batch"`` model, which needs
        them: every one its architecture implies, ``(S, width)`` with one ``S``; refused for
        any other model unless empty.
    """
    config = {CELL_KEY: "elman", **config}
    stored = file_config(config)
    arch = architecture(stored)
    shapes = arch.param_shapes()
    if set(params) != set(shapes):
        raise ValueError(f"params: expected {sorted(shapes)} for this configuration, got "
                         f"{sorted(params)}")
    for name, shape in shapes.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape} for this "
                             f"configuration, got {np.shape(params[name])}")
    stats = _running_to_write(arch, running)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": stored,
        "vocab": None if vocab is None else vocab.to_json(),
        "optimizer": None,
        "extra": extra if extra is not None else {},
    }
    if stats is not None:
        meta["running_steps"] = next(iter(stats.values())).shape[0] if stats else 0
    arrays = {f"param/{name}": params[name] for name in shapes}
    if stats:
        arrays.update({f"running/{name}": a for name, a in stats.items()})
    if optimizer_state is not None:
        meta["optimizer"] = {k: v for k, v in optimizer_state.items() if k != "buffers"}
        arrays.update({f"optim/{name}": a for name, a in optimizer_state["buffers"].items()})
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise TypeError(f"extra: metadata must be JSON-serializable ({exc})") from None
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with open(os.fspath(path), "wb") as fh:
        np.savez(fh, **arrays)


def _running_to_write(arch, running):
    """The running statistics a file of ``arch`` stores (None: no ``norm="batch"``), checked:
    what the writer refuses, the reader would refuse too."""
    widths = running_shapes(arch)
    if not widths:
        if running:
            raise ValueError(f"running: a model without norm='batch' has no running statistics, "
                             f"got {sorted(running)}")
        return None
    if running is None:
        raise ValueError("running: a norm='batch' model is saved with its running statistics "
                         f"(model.running: {', '.join(widths)}); pass running=")
    missing, extra = set(widths) - set(running), set(running) - set(widths)
    if missing or extra:
        raise ValueError(f"running: missing {sorted(missing)}, unexpected {sorted(extra)}")
    steps = {np.shape(running[name])[0] if np.ndim(running[name]) else None for name in widths}
    if len(steps) != 1 or None in steps:
        raise ValueError("running: expected every statistic of shape (S, width) with one S, got "
                         f"shapes {[np.shape(running[name]) for name in widths]}")
    S = steps.pop()
    if S > MAX_RUNNING_STEPS:
        raise ValueError(f"running: a model file holds at most {MAX_RUNNING_STEPS} steps of "
                         f"running statistics, got {S}")
    stats = {}
    for name, width in widths.items():
        a = np.asarray(running[name])
        if a.shape != (S, width):
            raise ValueError(f"running[{name!r}]: expected shape {(S, width)}, got {a.shape}")
        if not np.isfinite(a).all() or (name.startswith("var_") and (a < 0).any()):
            raise ValueError(f"running[{name!r}]: expected finite values"
                             + (" >= 0" if name.startswith("var_") else ""))
        stats[name] = a
    return stats


def read(path):
    """The ``Contents`` of a model file, every value checked (see ``cyrnn.io``).

    Raises
    ------
    ModelFileError
        The file exists but is not a readable cyrnn model file.
    OSError
        The path cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    with open(os.fspath(path), "rb") as fh:
        try:
            return _read(fh, path)
        except ModelFileError:
            raise
        except Exception as exc:  # anything else a hostile file provokes, e.g. in the zip reader
            raise ModelFileError(path, f"unreadable ({type(exc).__name__}: {_short(exc)})") from exc


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _read(fh, path):
    """``read`` on an open file: every check before the allocation it guards."""
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
        arch = architecture(config)
        shapes = arch.param_shapes()
        running_widths = running_shapes(arch)
        steps = _check_running_steps(meta, running_widths, config, path)
        vocab = _check_vocabulary(meta["vocab"], config, path)
        optimizer_state, buffer_shapes = _check_optimizer(meta["optimizer"], shapes, dtype, path)

        expected = {f"param/{name}.npy": (f"parameter {name}", shape)
                    for name, shape in shapes.items()}
        expected.update({f"optim/{key}.npy": (f"optimizer buffer {key}", shape)
                         for key, shape in buffer_shapes.items()})
        expected.update({f"running/{name}.npy": (f"running statistic {name}", (steps, width))
                         for name, width in running_widths.items()})
        missing = [what for name, (what, _) in expected.items() if name not in members]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise ModelFileError(path, f"{shown} missing")
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
    if optimizer_state is not None:
        optimizer_state["buffers"] = {key: arrays.pop(f"optim/{key}.npy") for key in buffer_shapes}
    running = {name: arrays.pop(f"running/{name}.npy") for name in running_widths}
    for name, a in running.items():
        if not np.isfinite(a).all():
            raise ModelFileError(path, f"running statistic {name}: non-finite values")
        if name.startswith("var_") and (a < 0).any():
            raise ModelFileError(path, f"running statistic {name}: negative variances")
    return Contents(config, params, vocab, optimizer_state, meta["extra"], running)


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
    missing = [key for key in CONFIG_KEYS if key not in config]
    unexpected = sorted(set(config) - set(CONFIG_KEYS) - set(LAYER_KEYS) - {CELL_KEY}
                        - set(RECURRENCE_KEYS))
    if missing or unexpected:
        fail(f"missing {missing}, unexpected {_shown(unexpected)}")
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
    # the shape of a stack (absent in files of cyrnn 0.1 and of single-layer models)
    config = {**LAYER_KEYS, **config}
    layers = config["num_layers"]
    if type(layers) is not int or not 1 <= layers <= MAX_LAYERS:
        fail(f"num_layers: expected an int in [1, {MAX_LAYERS}], got {_shown(layers)}")
    if not isinstance(config["bidirectional"], bool):
        fail(f"bidirectional: expected true or false, got {_shown(config['bidirectional'])}")
    dropout = config["dropout"]
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:  # NaN fails too
        fail(f"dropout: expected a number in [0, 1), got {_shown(dropout)}")
    config["dropout"] = float(dropout)
    # the cell (absent in files of cyrnn 0.1 and of Elman models)
    cell = config.setdefault(CELL_KEY, "elman")
    if not isinstance(cell, str) or cell not in CELLS:
        fail(f"cell: expected one of {', '.join(CELLS)}, got {_shown(cell)}")
    if cell != "elman":
        for key, default in GATED_DEFAULTS.items():
            if config[key] != default or type(config[key]) is not type(default):
                fail(f"{key}: a {cell} cell has none; its file holds {default!r}, got "
                     f"{_shown(config[key])}")
        if config["init"] == "identity":
            fail(f"init: 'identity' (IRNN) is for Elman cells, not {cell}")
    # the recurrence's normalization and regularizers (absent in files of plain models)
    config = {**RECURRENCE_KEYS, **config}
    norm = config["norm"]
    if norm is not None and (not isinstance(norm, str) or norm not in NORMS):
        fail(f"norm: expected null, {', '.join(map(repr, NORMS))}, got {_shown(norm)}")
    for key in ("recurrent_dropout", "zoneout", "weight_drop"):
        value = config[key]
        if type(value) not in (int, float) or not 0 <= value < 1:  # NaN fails too
            fail(f"{key}: expected a number in [0, 1), got {_shown(value)}")
        config[key] = float(value)
    return config


def _check_running_steps(meta, widths, config, path):
    """The number of steps ``S`` of the running statistics (None without ``norm="batch"``)."""
    steps = meta.get("running_steps")
    if not widths:
        if steps is not None:
            raise ModelFileError(
                path, f"metadata: running_steps {_shown(steps)} for a model without "
                      f"norm='batch' (norm={config['norm']!r})")
        return None
    if steps is None:
        raise ModelFileError(
            path, "running statistics missing: a norm='batch' model's file holds them "
                  f"(metadata running_steps and members running/<name>.npy for "
                  f"{_listed(list(widths), most=6)}); this file has none")
    if type(steps) is not int or not 0 <= steps <= MAX_RUNNING_STEPS:
        raise ModelFileError(path, f"metadata: running_steps: expected an int in "
                                   f"[0, {MAX_RUNNING_STEPS}], got {_shown(steps)}")
    return steps


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
