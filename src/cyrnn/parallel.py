"""Train many independent models at once: ``fit_many``.

Sweeps, ensembles and a model per series are independent trainings. ``fit_many`` hands each one
to an existing engine and never schedules anything itself:

- threads of this process (the default): the compiled kernels release the GIL, so the models of
  a pool run side by side; each model is trained in place;
- joblib processes (``executor="processes"``; under ``joblib.parallel_config(backend="dask")``
  they go wherever that backend sends them);
- any ``concurrent.futures.Executor`` (a ``ThreadPoolExecutor`` trains in place, a
  ``ProcessPoolExecutor`` returns trained copies);
- a ``dask.distributed.Client`` (``executor=client``): the same call on a laptop's
  ``LocalCluster`` or on a cluster; trained copies come back.

Every worker runs one model at a time on one core: BLAS is limited to one thread (threadpoolctl;
the limit is taken once per process while any ``fit_many`` work runs in it, so concurrent workers
never race on it) and the model's own kernels get ``threads=1``. Each model's randomness comes from
its own seed (initialisation, dropout) and ``fit``'s ``seed`` (shuffling), so the trained weights
are bit-identical to a serial run, whatever the executor or the number of workers.

The models may be ``cyrnn.RNN``, ``cyrnn.LSTM`` and ``cyrnn.GRU``, mixed: processes and Dask
receive and return them pickled (``RNN.__getstate__``: the constructor arguments and the
arrays; pickle records the class, so an LSTM comes back an LSTM).
"""
from __future__ import annotations

import copy
import os
import pickle
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Optional, Union

from . import _checks
from .rnn import RNN
from .train import History, fit

__all__ = ["fit_many"]

EXECUTORS = ("threads", "processes")


def fit_many(
    models: Sequence[RNN],
    data: Any,
    *,
    n_jobs: Optional[int] = None,
    executor: Union[None, str, Executor, Any] = None,
    per_model: Optional[Sequence[Mapping[str, Any]]] = None,
    **fit_kwargs: Any,
) -> list[tuple[RNN, History]]:
    """Train independent models concurrently with ``cyrnn.fit``; one ``(model, history)`` each.

    Parameters
    ----------
    models : sequence of cyrnn.RNN (LSTM and GRU included)
    data : dataset, or list of datasets
        One ``fit`` dataset (a token stream, or ``(inputs, targets[, lengths])``) that every model
        trains on, or a list with one dataset per model (e.g. a model per series). A ``list`` is
        read as one dataset per model when it has one entry per model and each entry is a tuple
        or an array of more than one dimension; a flat list of ints is a token stream.
    n_jobs : int, optional
        Workers for the local executors (threads, processes); default: the CPUs this process may
        use, at most one per model. ``1`` trains one model after the other in this thread (still
        on one core each, so the results equal any parallel run). Ignored for an executor or
        client passed in (its own size decides).
    executor : None, "threads", "processes", concurrent.futures.Executor or dask Client
        ``None``/``"threads"``: a thread pool of this process, models trained in place.
        ``"processes"``: ``joblib.Parallel(prefer="processes")`` (needs joblib), trained copies
        returned. An ``Executor`` or a ``dask.distributed.Client``: its ``submit``; a client
        first scatters a shared dataset once to the workers.
    per_model : sequence of dict, optional
        ``fit`` arguments for each model (e.g. its own ``seed`` or ``lr``), over ``fit_kwargs``.
    **fit_kwargs
        Arguments of ``cyrnn.fit`` shared by every model (``epochs``, ``batch_size``, ``lr``,
        ``seed``, ``callbacks``, ...). Each model gets its own deep copy of ``callbacks`` (an
        ``EarlyStopping`` keeps per-run state); callbacks sent to other processes must pickle.

    Returns
    -------
    list of (model, cyrnn.History)
        In the order of ``models``. With threads, the models are the ones passed in (trained in
        place); with processes or Dask, trained copies (the ones passed in are unchanged).

    Notes
    -----
    Pass ``seed`` (or one per model in ``per_model``) to make the shuffling reproducible; the
    models' own seeds fix their initialisation and dropout masks. ``model.threads`` is set to 1
    during training and restored afterwards (threads) or in the returned copies.
    """
    models = list(models)
    for i, model in enumerate(models):
        if not isinstance(model, RNN):
            raise TypeError(f"models[{i}]: expected a cyrnn.RNN, got {type(model).__name__}")
    if not models:
        return []
    datasets = _datasets(data, len(models))
    kind = _executor_kind(executor)
    if kind == "processes":
        _check_picklable(fit_kwargs, per_model, "a joblib process pool", cloud=True)
    elif kind == "dask":
        _check_picklable(fit_kwargs, per_model, "Dask workers", cloud=True)
    elif kind == "submit":
        _check_picklable(fit_kwargs, per_model, f"a {type(executor).__name__}", cloud=False)
    jobs = _jobs(models, data, datasets, per_model, fit_kwargs)
    if kind == "threads":
        return _run_threads(jobs, _n_jobs(n_jobs, len(models)))
    if kind == "processes":
        return _run_joblib(jobs, _n_jobs(n_jobs, len(models)))
    if kind == "dask":
        return _run_dask(executor, jobs, data if datasets is None else None)
    if kind == "thread pool":
        with _blas_pinned():
            return _gather([executor.submit(_train, *job, pin=False) for job in jobs])
    return _gather([executor.submit(_train, *job) for job in jobs])


def _executor_kind(executor):
    """"threads", "processes", "dask", "thread pool" (a ThreadPoolExecutor passed in) or
    "submit" (any other Executor)."""
    if executor is None or (isinstance(executor, str) and executor == "threads"):
        return "threads"
    if isinstance(executor, str):
        if executor == "processes":
            return "processes"
        raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}, an Executor or a "
                         f"dask Client, got {executor!r}")
    if _is_dask_client(executor):
        return "dask"
    if isinstance(executor, ThreadPoolExecutor):
        return "thread pool"
    if isinstance(executor, Executor) or callable(getattr(executor, "submit", None)):
        return "submit"
    raise TypeError(f"executor: expected one of {', '.join(EXECUTORS)}, a "
                    f"concurrent.futures.Executor or a dask Client, got {type(executor).__name__}")


# ---------------------------------------------------------------------------------------------
# the work of one model
# ---------------------------------------------------------------------------------------------


def _train(model: RNN, data: Any, kwargs: dict[str, Any], pin: bool = True):
    """Train ``model`` on one core: BLAS at one thread (unless the caller pinned it for the whole
    pool) and ``model.threads = 1``, restored afterwards."""
    threads = model.threads
    model.threads = 1
    try:
        if pin:
            with _blas_pinned():
                history = fit(model, data, **kwargs)
        else:
            history = fit(model, data, **kwargs)
    finally:
        model.threads = threads
    return model, history


_pin_lock = threading.Lock()
_pin_count = 0
_pin_limits = None


@contextmanager
def _blas_pinned():
    """BLAS limited to one thread while any caller in this process is inside.

    threadpoolctl's limits are process-wide: two threads that each set and later restore them
    would undo each other's limit mid-training. Here the first caller in sets the limit and the
    last one out restores it."""
    global _pin_count, _pin_limits
    with _pin_lock:
        if _pin_count == 0:
            _pin_limits = _threadpool_limits()
        _pin_count += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_count -= 1
            if _pin_count == 0 and _pin_limits is not None:
                _pin_limits.restore_original_limits()
                _pin_limits = None


def _threadpool_limits():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        raise ImportError("cyrnn.parallel needs threadpoolctl: pip install threadpoolctl") from None
    return threadpool_limits(limits=1)


# ---------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------


def _run_threads(jobs, n_jobs):
    with _blas_pinned():
        if n_jobs == 1:
            return [_train(*job, pin=False) for job in jobs]
        with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="cyrnn-fit") as pool:
            return _gather([pool.submit(_train, *job, pin=False) for job in jobs])


def _run_joblib(jobs, n_jobs):
    try:
        import joblib
    except ImportError:
        raise ImportError('fit_many(executor="processes") needs joblib: '
                          'pip install "cyrnn[dask]" (or joblib)') from None
    return list(joblib.Parallel(n_jobs=n_jobs, prefer="processes")(
        joblib.delayed(_train)(*job) for job in jobs))


def _run_dask(client, jobs, shared):
    if shared is not None:
        # one copy of a shared dataset per worker that needs it, not one per task
        [future] = client.scatter([shared], hash=False)
        jobs = [(model, future, kwargs) for model, _, kwargs in jobs]
    futures = [client.submit(_train, *job, pure=False) for job in jobs]
    try:
        return [tuple(result) for result in client.gather(futures)]
    except BaseException:
        client.cancel(futures)
        raise


def _gather(futures):
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _is_dask_client(executor):
    if "distributed" not in sys.modules:
        return False
    from distributed import Client

    return isinstance(executor, Client)


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


def _datasets(data, n):
    """One dataset per model, or None when ``data`` is one dataset for all."""
    if isinstance(data, list) and len(data) == n and all(
            isinstance(d, tuple) or (hasattr(d, "ndim") and d.ndim > 1) for d in data):
        return data
    return None


def _jobs(models, data, datasets, per_model, fit_kwargs):
    if per_model is not None:
        per_model = list(per_model)
        if len(per_model) != len(models):
            raise ValueError(f"per_model: expected {len(models)} dicts (one per model), "
                             f"got {len(per_model)}")
    jobs = []
    for i, model in enumerate(models):
        kwargs = dict(fit_kwargs)
        if per_model is not None:
            if not isinstance(per_model[i], Mapping):
                raise TypeError(f"per_model[{i}]: expected a dict of fit arguments, "
                                f"got {type(per_model[i]).__name__}")
            kwargs.update(per_model[i])
        if kwargs.get("callbacks"):
            try:
                kwargs["callbacks"] = copy.deepcopy(list(kwargs["callbacks"]))
            except Exception as exc:
                raise TypeError(
                    f"callbacks: each model needs its own copy of the callbacks, and copying them "
                    f"failed ({type(exc).__name__}: {exc}); pass fresh callbacks per model with "
                    f"per_model=[{{'callbacks': [...]}}, ...]") from exc
        jobs.append((model, data if datasets is None else datasets[i], kwargs))
    return jobs


def _n_jobs(n_jobs, n_models):
    if n_jobs is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        n_jobs = cpus
    else:
        n_jobs = _checks.positive_int("n_jobs", n_jobs)
    return max(1, min(n_jobs, n_models))


def _check_picklable(fit_kwargs, per_model, where, cloud):
    """Fail before anything starts when a fit argument cannot travel to another process,
    naming it."""
    dumps = pickle.dumps
    if cloud:
        try:
            import cloudpickle
            dumps = cloudpickle.dumps
        except ImportError:
            pass
    sources = [("", fit_kwargs)] + [(f" of model {i}", kw) for i, kw in enumerate(per_model or ())
                                    if isinstance(kw, Mapping)]
    for owner, kwargs in sources:
        for name, value in kwargs.items():
            try:
                dumps(value)
            except Exception as exc:
                what = "callbacks" if name == "callbacks" else f"fit argument {name!r}"
                raise TypeError(
                    f"{what}{owner} cannot be sent to {where}: it does not pickle "
                    f"({type(exc).__name__}: {exc}). Use executor='threads', or callbacks "
                    f"defined at module level without open files, locks or sockets") from exc
