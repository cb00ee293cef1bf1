"""Saving and loading models: a versioned ``.npz`` with JSON metadata, no pickle.

The file is a zip archive of ``.npy`` members (what ``np.savez`` writes): ``param/<name>.npy``
for each parameter in its own dtype (a round trip is bit-exact), ``optim/<buffer>/<param>.npy``
for the optimizer's buffers when one is given, and ``metadata.json.npy``, one JSON document
stored as UTF-8 bytes, with the format version, the model's configuration, the vocabulary and the
optimizer's type, hyperparameters and step count.

The configuration holds the sizes and options of the model (``RNN.config()`` without
``backend`` and ``threads``, which belong to the process that runs it) and, for a stack, its
shape: ``num_layers``, ``bidirectional`` and ``dropout``. These three are stored only when they
differ from a single-layer unidirectional model without dropout, whose file is therefore exactly
what cyrnn 0.1 wrote (and reads); a file without them is read as such a model, so files written
by cyrnn 0.1 load. cyrnn 0.1 refuses a configuration with keys it does not know: it cannot
mistake the file of a stack for a single layer. The cell is stored the same way, as ``"cell":
"lstm"`` or ``"gru"`` and never for Elman: an Elman file is unchanged, and cyrnn 0.1 refuses the
file of an LSTM or GRU; ``load`` builds ``cyrnn.RNN``, ``cyrnn.LSTM`` or ``cyrnn.GRU`` (GRU files
hold the extra parameters ``bhn``). A gated cell has no nonlinearity: its file holds the defaults
``nonlinearity="tanh"`` and ``negative_slope=0.01``, and any other value is refused (as is
``init="identity"``, an Elman initialisation). The parameters a configuration implies, with
their names and shapes, are ``cyrnn.layers.Architecture(...).param_shapes()``.

The normalization and regularizers of the recurrence (``norm``, ``recurrent_dropout``,
``zoneout``, ``weight_drop``) are stored the same way again, only when set: a file without
them is unchanged, and a cyrnn that does not know them refuses the file rather than running the
model without them. A normalized model's gains are parameters like the others. A
``norm="batch"`` model's running statistics (``model.running``) are stored as
``running/<name>.npy`` members of shape ``(S, width)``, ``S`` (possibly 0) given by the
metadata's ``running_steps``; a ``norm="batch"`` file without them, or with statistics of the
wrong shape or dtype, non-finite values or negative variances, is refused with their names.

Loading treats the file as hostile. It opens the archive itself (not ``np.load``) and, before
it decompresses the data of any array:

- reads only ``metadata.json.npy`` at first, at most 1 MiB of JSON, and checks every value of it
  (types, sizes, names; at most 1024 layers);
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
import numpy as np

from . import _modelfile, kernels
from ._modelfile import ModelFileError, _short
from .rnn import GRU, LSTM, RNN

__all__ = ["ModelFileError", "save", "load", "load_checkpoint"]

FORMAT = _modelfile.FORMAT
VERSION = _modelfile.VERSION
#: The model options a file stores besides the shape (which the parameters' names give).
_OPTIONS = ("dropout", "nonlinearity", "negative_slope", "output", "init", "dtype", "batch_first",
            "norm", "recurrent_dropout", "zoneout", "weight_drop")
#: The options of an Elman cell only: a gated cell's file holds their defaults.
_ELMAN_OPTIONS = ("nonlinearity", "negative_slope")
#: The class ``load`` builds for each cell of a file.
MODEL_CLASSES = {"elman": RNN, "lstm": LSTM, "gru": GRU}


def save(model, path, *, optimizer=None, extra=None):
    """Write ``model`` (and optionally ``optimizer``'s state) to ``path`` (``.npz``).

    Parameters
    ----------
    model : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
    path : str or os.PathLike
        Written as given (NumPy appends ``.npz`` when missing; this function does not).
    optimizer : cyrnn.optim.Optimizer, optional
        Its ``state_dict()`` is stored so that training can resume bit-identically.
    extra : dict, optional
        JSON-serializable user metadata (e.g. the epoch), returned by ``load_checkpoint``.

    A ``norm="batch"`` model's running statistics (``model.running``) are stored with it.
    """
    _modelfile.write(path, {**model.config(), "cell": model.architecture.cell}, model.params,
                     vocab=getattr(model, "vocab", None),
                     optimizer_state=None if optimizer is None else optimizer.state_dict(),
                     extra=extra, running=getattr(model, "running", None))


def load(path, *, backend=None):
    """Read a model written by ``save``; its vocabulary, if any, is ``model.vocab``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"} or None
        Kernel backend of the loaded model.

    Returns
    -------
    cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
        The class of the file's cell (``"cell"`` in its configuration; Elman when absent).

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
    model : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
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
    contents = _modelfile.read(path)
    config = contents.config
    cls = MODEL_CLASSES[config["cell"]]
    options = {key: config[key] for key in _OPTIONS
               if cls is RNN or key not in _ELMAN_OPTIONS}  # a gated file holds their defaults
    try:
        # from_params copies the arrays; the layers and directions come from their names
        model = cls.from_params(contents.params, **options, backend=backend)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(path, f"invalid parameters: {_short(exc)}") from None
    except Exception as exc:  # anything else a hostile file could provoke
        raise ModelFileError(path, f"unreadable ({type(exc).__name__}: {_short(exc)})") from exc
    model.vocab = contents.vocab
    # norm="batch": the statistics as read (shapes, dtype and values checked), as new arrays
    model.running = {name: np.array(a, dtype=model.dtype, order="C")
                     for name, a in (contents.running or {}).items()}
    return model, contents.optimizer_state, contents.extra
