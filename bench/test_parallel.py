"""Throughput of ``cyrnn.parallel.fit_many``: 8 character models of the char-LM batch size
(V=65, H=256, 32 sequences of 50 steps per update, 60 updates each), trained one after the other
(``n_jobs=1``), on two threads (``n_jobs=2``), on two joblib processes, and on a Dask
``LocalCluster`` of two single-threaded worker processes; plus the per-model round trip of Dask
on a tiny model (what a task costs beyond its training).

Run (see bench/PARALLEL.md for the table and the exact command):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_parallel.py \
        -p no:cacheprovider --benchmark-json=bench/parallel.json
    python bench/parallel_report.py bench/parallel.json > bench/PARALLEL.md

Every run's weights are compared with the serial run's: they must be bit-identical.
"""
import os

import numpy as np
import pytest

import cyrnn
from cyrnn.parallel import fit_many

V, H, B, T, STEPS, MODELS = 65, 256, 32, 50, 60, 8
FIT = dict(epochs=1, steps=STEPS, batch_size=B, seq_len=T, lr=2e-3, clip_norm=5.0, seed=0)
ROUNDS = 3


@pytest.fixture(scope="module")
def stream():
    rng = np.random.default_rng(0)
    return rng.integers(0, V, B * T * STEPS + 1)


def models():
    return [cyrnn.RNN(V, H, V, output="softmax", seed=i) for i in range(MODELS)]


@pytest.fixture(scope="module")
def reference(stream):
    return [m.params for m, _ in fit_many(models(), stream, n_jobs=1, **FIT)]


def _run(benchmark, reference, stream, label, **kwargs):
    results = []

    def go():
        results.append(fit_many(models(), stream, **kwargs, **FIT))

    load_before = os.getloadavg()[0]
    benchmark.pedantic(go, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    identical = all(np.array_equal(m.params[k], ref[k])
                    for run in results for (m, _), ref in zip(run, reference) for k in ref)
    updates = MODELS * STEPS
    benchmark.extra_info.update(
        setting=label, models=MODELS, load_average=(load_before, os.getloadavg()[0]), updates=updates, bit_identical=identical,
        updates_per_second=updates / benchmark.stats.stats.min,
        tokens_per_second=updates * B * T / benchmark.stats.stats.min)
    assert identical


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_threads(benchmark, reference, stream, n_jobs):
    _run(benchmark, reference, stream, f"threads, n_jobs={n_jobs}", n_jobs=n_jobs)


def test_joblib_processes(benchmark, reference, stream):
    pytest.importorskip("joblib")
    _run(benchmark, reference, stream, "joblib processes, n_jobs=2", n_jobs=2,
         executor="processes")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_dask(benchmark, reference, stream, client):
    _run(benchmark, reference, stream, "dask LocalCluster, 2 workers x 1 thread",
         executor=client)


def test_dask_round_trip_per_model(benchmark, client):
    """A tiny model (H=8, one update of 1x2 steps) per task: the time is the overhead of
    shipping 2 x 32 models to the workers and back, per model."""
    stream = np.arange(64) % 5
    tiny = dict(epochs=1, steps=1, batch_size=1, seq_len=2, seed=0)
    n = 64

    def go():
        fit_many([cyrnn.RNN(5, 8, 5, output="softmax", seed=i) for i in range(n)], stream,
                 executor=client, **tiny)

    benchmark.pedantic(go, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    threads = []
    import time
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fit_many([cyrnn.RNN(5, 8, 5, output="softmax", seed=i) for i in range(n)], stream,
                 n_jobs=2, **tiny)
        threads.append(time.perf_counter() - start)
    benchmark.extra_info.update(
        setting="dask round trip, tiny models", models=n,
        seconds_per_model_dask=benchmark.stats.stats.min / n,
        seconds_per_model_threads=min(threads) / n)
