"""Saving and loading models: a versioned ``.npz`` with JSON metadata, no pickle.

The file holds the parameters in their own dtype (a round trip is bit-exact), the optimizer's
buffers when given, and one JSON document (stored as UTF-8 bytes) with the format version, the
model's configuration, the vocabulary and the optimizer's type, hyperparameters and step count.
Loading never executes anything from the file (``allow_pickle=False``) and checks every array
against the configuration, so a truncated, corrupted or mismatched file raises ``ValueError``.
"""
import json
import os
import zipfile

import numpy as np

FORMAT = "cyrnn-model"
VERSION = 1
_META = "metadata.json"
_CONFIG_KEYS = ("input_size", "hidden_size", "output_size", "nonlinearity", "negative_slope",
                "output", "init", "dtype", "batch_first")


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
    """
    return load_checkpoint(path, backend=backend)[0]


def load_checkpoint(path, *, backend=None):
    """Read a model and what else ``save`` stored with it.

    Returns
    -------
    model : cyrnn.RNN
    optimizer_state : dict or None
        In the form of ``Optimizer.state_dict()``; rebuild with
        ``cyrnn.optim.make_optimizer(state["type"], model.params, **state["config"])``
        followed by ``load_state_dict(state)`` (pass ``schedule=`` again: schedules are code,
        not state).
    extra : dict
        The user metadata given to ``save``.
    """
    from .data import Vocabulary
    from .rnn import RNN

    meta, arrays = _read(path)
    config = meta.get("config")
    if not isinstance(config, dict) or set(config) != set(_CONFIG_KEYS):
        raise ValueError(f"{path}: model configuration missing or incomplete")
    try:
        model = RNN(**config, backend=backend)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid model configuration: {exc}") from None
    params = {}
    for name, p in model.params.items():
        stored = arrays.pop(f"param/{name}", None)
        if stored is None:
            raise ValueError(f"{path}: parameter {name} missing")
        if stored.shape != p.shape or stored.dtype != p.dtype:
            raise ValueError(
                f"{path}: parameter {name}: expected {p.dtype} {p.shape}, got {stored.dtype} {stored.shape}"
            )
        params[name] = stored
    try:
        model.set_params(params)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if meta.get("vocab") is not None:
        try:
            model.vocab = Vocabulary.from_json(meta["vocab"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: invalid vocabulary: {exc}") from None
        if len(model.vocab) != model.input_size:
            raise ValueError(f"{path}: vocabulary of {len(model.vocab)} for input_size {model.input_size}")
    optimizer_state = None
    if meta.get("optimizer") is not None:
        optimizer_state = dict(meta["optimizer"])
        optimizer_state["buffers"] = {name[len("optim/"):]: a for name, a in arrays.items()
                                      if name.startswith("optim/")}
    return model, optimizer_state, meta.get("extra", {})


def _read(path):
    """Metadata and arrays of a cyrnn file, with every failure as a ValueError naming the file."""
    try:
        data = np.load(os.fspath(path), allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not a cyrnn model file (a single array, not an .npz)")
        with data:
            if _META not in data.files:
                raise ValueError(f"{path}: not a cyrnn model file (no {_META})")
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable cyrnn model file ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable cyrnn model file ({exc})") from None
    raw = arrays.pop(_META)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupted metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cyrnn model file")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: format version {meta.get('version')!r}, this cyrnn reads {VERSION}")
    return meta, arrays
