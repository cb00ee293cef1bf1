"""How many threads cyrnn's calls run on.

cyrnn decides its own threading. Its compiled kernels never let BLAS start threads: a product
runs on BLAS only while BLAS keeps it on the calling thread, else on cyrnn's own kernel (see
``pyx/cyrnn/_blas.pxd``). With NumPy and SciPy from PyPI a process holds two OpenBLAS builds,
each with a pool of spinning threads, and a training step that woke both pools ran 10x slower
than one pinned thread. The second core is used by cyrnn itself: the compiled training step
splits the batch into shards of consecutive sequences, as many as the problem's sizes alone
decide, runs them on up to ``threads`` threads with the GIL released, and sums their gradients in
shard order. So the same inputs give bit-identical results on any number of threads.

The thread count of a call is, in order: the model's ``threads=`` (or the kernel's argument); the
process setting of ``cyrnn.set_num_threads``; the environment variable ``CYRNN_NUM_THREADS``;
else the CPUs this process may run on, but one when OpenBLAS is limited to one thread
(``OPENBLAS_NUM_THREADS=1``, or threadpoolctl's ``threadpool_limits(1)`` around the call), the
usual way to ask a library for one thread per worker.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

from . import _checks

_setting = None  # set_num_threads; None: automatic
_blas_threads = None  # SciPy's OpenBLAS thread-count function, looked up once (or False)


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads cyrnn's calls may use in this process (``None``: automatic).

    Models built with ``threads=`` keep their own. Results never depend on it, only speed.
    """
    global _setting
    _setting = _checks.optional_positive_int("n", n)


def get_num_threads() -> int:
    """The number of threads a cyrnn call made now would use (see ``cyrnn._threads``)."""
    return resolve(None)


def resolve(threads: Optional[int]) -> int:
    """``threads`` (an int >= 1, or None for the process setting or the automatic choice)."""
    if threads is not None:
        return _checks.positive_int("threads", threads)
    if _setting is not None:
        return _setting
    requested = os.environ.get("CYRNN_NUM_THREADS", "").strip()
    if requested:
        try:
            return _checks.positive_int("CYRNN_NUM_THREADS", int(requested))
        except (TypeError, ValueError):
            raise ValueError(f"CYRNN_NUM_THREADS: expected an int >= 1, got {requested!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 1 if _openblas_threads() == 1 else max(1, cpus)


def _openblas_threads():
    """The thread count of the OpenBLAS behind ``scipy.linalg.cython_blas``, -1 if unknown."""
    global _blas_threads
    if _blas_threads is None:
        found = False  # the same for every caller: a race only looks it up twice
        try:
            import scipy.linalg.cython_blas as cython_blas

            lib = ctypes.CDLL(cython_blas.__file__)
            for name in ("scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                         "openblas_get_num_threads", "openblas_get_num_threads64_"):
                function = getattr(lib, name, None)
                if function is not None:
                    function.restype, function.argtypes = ctypes.c_int, []
                    found = function
                    break
        except (ImportError, OSError):
            pass
        _blas_threads = found
    return _blas_threads() if _blas_threads else -1
