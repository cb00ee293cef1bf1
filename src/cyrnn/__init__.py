"""cyrnn: Elman recurrent networks (single layers, stacks, bidirectional) trained by backpropagation through time, with Cython kernels.

>>> import numpy as np, cyrnn
>>> model = cyrnn.RNN(input_size=4, hidden_size=8, output_size=2, seed=0)
>>> y, h_last = model.forward(np.zeros((5, 3, 4), dtype=np.float32))
>>> y.shape, h_last.shape
((5, 3, 2), (3, 8))
"""
from __future__ import annotations

from typing import Any

from . import clip, data, diagnostics, interop, kernels, layers, optim, stack
from ._threads import get_num_threads, set_num_threads
from .clip import clip_grad_norm, clip_grad_value
from .data import Vocabulary
from .io import ModelFileError, load, load_checkpoint
from .rnn import RNN
from .train import Checkpoint, EarlyStopping, History, evaluate, fit
from .truncation import TBPTT, RandomizedTruncation

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "TBPTT",
    "RandomizedTruncation",
    "Vocabulary",
    "fit",
    "evaluate",
    "History",
    "EarlyStopping",
    "Checkpoint",
    "clip_grad_norm",
    "clip_grad_value",
    "load",
    "load_checkpoint",
    "ModelFileError",
    "backend_info",
    "set_num_threads",
    "get_num_threads",
    "kernels",
    "optim",
    "data",
    "clip",
    "diagnostics",
    "__version__",
]


def backend_info() -> dict[str, Any]:
    """Which kernel backend is the process default, why, and which BLAS the kernels call.

    Returns
    -------
    dict
        ``backend`` ("cython" or "numpy"), ``reason``, ``available`` (usable backends),
        ``blas`` (the BLAS behind ``scipy.linalg.cython_blas``, which the compiled kernels call,
        and behind NumPy, which does the large products), ``simd`` (for the compiled backend:
        ``own_product_kernel``, whether products run on cyrnn's own AVX-512 kernel here while
        BLAS has one thread; ``elementwise``, the build of the elementwise loops in use,
        "avx512", "avx2" or "baseline"; ``blas_threads``, the thread count of the BLAS the
        kernels call, -1 if unknown; None without the extension), ``threads`` (what
        ``cyrnn.get_num_threads()`` returns now: the threads a call may use, see there),
        ``version``.
    """
    return {
        "backend": kernels.DEFAULT_BACKEND,
        "reason": kernels.DEFAULT_REASON,
        "available": kernels.available_backends(),
        "blas": _blas_info(),
        "simd": None if kernels.cython_backend is None else kernels.cython_backend._simd_info(),
        "threads": get_num_threads(),
        "version": __version__,
    }



def _blas_info():
    """Names and versions of the BLAS libraries NumPy and SciPy were built with."""
    info = {}
    for name in ("numpy", "scipy"):
        try:
            module = __import__(name)
            config = module.show_config(mode="dicts")
            blas = config["Build Dependencies"]["blas"]
            info[name] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        except Exception as exc:  # an old or unusual build without the dict form
            info[name] = f"unknown ({type(exc).__name__})"
    return info
