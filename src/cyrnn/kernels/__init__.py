"""Low-level kernels and backend selection.

Two backends implement the same kernels (``KERNEL_NAMES``) with the same arguments and results:

- ``"cython"``: the compiled extensions ``cyrnn._rnn``, ``cyrnn._sample``, ``cyrnn._gated`` and
  ``cyrnn._recurrence`` (built from ``pyx/cyrnn/*.pyx``);
- ``"numpy"``: ``cyrnn.kernels.numpy_backend``, ``numpy_sample``, ``numpy_fused``,
  ``numpy_gated`` and ``numpy_recurrence``, pure NumPy.

The process default is the compiled backend when it imports, else NumPy (with a warning). The
environment variable ``CYRNN_BACKEND=numpy`` (or ``cython``) sets it explicitly; asking for the
compiled backend when it cannot be imported is an error, never a silent slow fallback.

The module-level ``rnn_forward``, ``rnn_backward``, ``rnn_backward_window``, ``embedding_grad``
and ``sample_tokens`` are those of the default backend; ``get_backend(name)`` returns either one.
"""
from __future__ import annotations

import functools
import importlib
import os
import types
import warnings
from typing import Optional

from .._typing import BackendName
from . import numpy_backend

BACKENDS: tuple[BackendName, ...] = ("cython", "numpy")
KERNEL_NAMES = ("rnn_forward", "rnn_backward", "rnn_backward_window", "embedding_grad",
                "sample_tokens", "elman_loss_and_grad", "elman_forward",
                "lstm_forward", "lstm_backward", "lstm_backward_window",
                "gru_forward", "gru_backward", "gru_backward_window",
                "recurrence_forward", "recurrence_backward", "layer_norm_rows",
                "layer_norm_rows_backward")
# where each backend's kernels live: compiled extension modules, and their NumPy twins
_CYTHON_MODULES = ("cyrnn._rnn", "cyrnn._sample", "cyrnn._gated", "cyrnn._recurrence")
_NUMPY_MODULES = ("cyrnn.kernels.numpy_backend", "cyrnn.kernels.numpy_sample",
                  "cyrnn.kernels.numpy_fused", "cyrnn.kernels.numpy_gated",
                  "cyrnn.kernels.numpy_recurrence")
# compiled modules a build may lack: their kernels fall back to the NumPy twins (below)
_OPTIONAL_CYTHON_MODULES = ("cyrnn._recurrence",)


# entry points on pre-checked arguments, for the model class, which checks them itself: the
# fused training step of one layer and of a stack, and a stack's forward pass (the NumPy twins
# of the stack kernels are cyrnn.stack's composition over the NumPy layer kernels)
_PRIVATE_NAMES = ("_elman_step", "_stack_step", "_stack_outputs")


def _collect(name, module_names):
    """A namespace with every kernel of ``KERNEL_NAMES`` found in ``module_names``."""
    backend = types.SimpleNamespace(name=name)
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if module_name not in _OPTIONAL_CYTHON_MODULES:
                raise
            continue
        for kernel in KERNEL_NAMES + _PRIVATE_NAMES:
            if hasattr(module, kernel):
                setattr(backend, kernel, getattr(module, kernel))
    if not hasattr(backend, "_stack_step"):
        # a build without the compiled stack step: the composition over its own layer kernels
        from . import numpy_fused
        backend._stack_step = functools.partial(numpy_fused._stack_step, kern=backend)
        backend._stack_outputs = functools.partial(numpy_fused._stack_outputs, kern=backend)
    if not hasattr(backend, "recurrence_forward"):
        # a build without cyrnn._recurrence (the normalized/regularized layer): its NumPy twin
        from . import numpy_recurrence
        for kernel in ("recurrence_forward", "recurrence_backward", "layer_norm_rows",
                       "layer_norm_rows_backward"):
            setattr(backend, kernel, getattr(numpy_recurrence, kernel))
    missing = [k for k in KERNEL_NAMES + _PRIVATE_NAMES if not hasattr(backend, k)]
    if missing:
        raise ImportError(f"backend {name!r} lacks kernels {missing}")
    return backend


numpy_kernels = _collect("numpy", _NUMPY_MODULES)
try:
    cython_kernels = _collect("cython", _CYTHON_MODULES)
    _IMPORT_ERROR = None
except ImportError as exc:  # the extension was not built
    cython_kernels = None
    _IMPORT_ERROR = exc

if cython_kernels is not None:
    # one contract, documented once: the compiled kernels show the twin's docstrings in help()
    for _name in KERNEL_NAMES:
        getattr(cython_kernels, _name).__doc__ = getattr(numpy_kernels, _name).__doc__


def _choose_default():
    requested = os.environ.get("CYRNN_BACKEND", "").strip().lower()
    if requested == "numpy":
        return "numpy", "CYRNN_BACKEND=numpy"
    if requested == "cython":
        if cython_kernels is None:
            raise ImportError(
                f"CYRNN_BACKEND=cython but the compiled extension cyrnn._rnn cannot be imported: "
                f"{_IMPORT_ERROR}"
            )
        return "cython", "CYRNN_BACKEND=cython"
    if requested:
        raise ValueError(f"CYRNN_BACKEND: expected one of {', '.join(BACKENDS)}, got {requested!r}")
    if cython_kernels is None:
        warnings.warn(
            f"cyrnn: the compiled extension is not available ({_IMPORT_ERROR}); using the slower "
            "NumPy backend. Reinstall with a C compiler to build it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numpy", f"compiled extension not available: {_IMPORT_ERROR}"
    return "cython", "compiled extension available"


DEFAULT_BACKEND, DEFAULT_REASON = _choose_default()


def get_backend(name: Optional[BackendName] = None) -> types.SimpleNamespace:
    """Return the kernels of backend ``name`` (``None``: the process default) as a namespace
    with one attribute per kernel and ``name``."""
    if name is None:
        name = DEFAULT_BACKEND
    if name == "numpy":
        return numpy_kernels
    if name == "cython":
        if cython_kernels is None:
            raise ImportError(f"backend 'cython' is not available: {_IMPORT_ERROR}")
        return cython_kernels
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)} or None, got {name!r}")


def available_backends() -> tuple[BackendName, ...]:
    """Names of the backends that can be used in this process."""
    return tuple(name for name in BACKENDS if name == "numpy" or cython_kernels is not None)


_default = get_backend()
rnn_forward = _default.rnn_forward
rnn_backward = _default.rnn_backward
rnn_backward_window = _default.rnn_backward_window
embedding_grad = _default.embedding_grad
sample_tokens = _default.sample_tokens
elman_loss_and_grad = _default.elman_loss_and_grad
elman_forward = _default.elman_forward
# the compiled module itself (None when not built), for code that wants it directly
cython_backend = importlib.import_module("cyrnn._rnn") if cython_kernels is not None else None

__all__ = [
    "rnn_forward",
    "rnn_backward",
    "rnn_backward_window",
    "embedding_grad",
    "sample_tokens",
    "elman_loss_and_grad",
    "elman_forward",
    "get_backend",
    "available_backends",
    "DEFAULT_BACKEND",
    "numpy_kernels",
    "cython_kernels",
]
