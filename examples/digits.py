"""Handwritten digits as sequences: an RNNClassifier tuned by GridSearchCV, on local threads or
on a Dask cluster.

scikit-learn's bundled digits (1797 images of 8x8 pixels, no download) are read row by row: each
image is a sequence of 8 steps of 8 features. GridSearchCV searches the cell and the hidden size
with 3-fold cross-validation, the folds and candidates running in parallel: on this machine's
threads (joblib's threading backend: cyrnn's kernels release the GIL) or, with ``--dask``, on a
``dask.distributed.LocalCluster`` through joblib's Dask backend. The best model is refitted on
the whole training set and scored on a held-out quarter of the images.

    python examples/digits.py              # local threads
    python examples/digits.py --dask       # a LocalCluster of 2 worker processes
    python examples/digits.py --fast       # a small grid and few epochs (what the tests run)

Needs ``pip install "cyrnn[sklearn]"`` (and ``"cyrnn[dask]"`` for ``--dask``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def load(seed=0):
    """Digits as (n, 8, 8) sequences scaled to [0, 1], split 3:1 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)  # (1797, 8 rows = steps, 8 pixels = features)
    return train_test_split(X, digits.target, test_size=0.25, stratify=digits.target,
                            random_state=seed)


def search(X_train, y_train, *, fast=False, n_jobs=2):
    """A fitted GridSearchCV over the cell and the hidden size."""
    from sklearn.model_selection import GridSearchCV

    from cyrnn.sklearn import CELLS, RNNClassifier

    grid = {"cell": list(CELLS), "hidden_size": [16, 32] if fast else [32, 64, 128]}
    estimator = RNNClassifier(max_iter=5 if fast else 60, lr=0.01, batch_size=32,
                              dtype="float32", early_stopping=not fast, n_iter_no_change=8,
                              random_state=0, threads=1)
    return GridSearchCV(estimator, grid, cv=3, n_jobs=n_jobs, refit=True).fit(X_train, y_train)


def run(backend="threading", fast=False, n_jobs=2, seed=0):
    """Search and test under a joblib backend; returns (test accuracy, seconds, search)."""
    import joblib

    X_train, X_test, y_train, y_test = load(seed)
    started = time.perf_counter()
    with joblib.parallel_config(backend=backend):
        found = search(X_train, y_train, fast=fast, n_jobs=n_jobs)
    seconds = time.perf_counter() - started
    return found.score(X_test, y_test), seconds, found


def report(label, accuracy, seconds, found):
    print(f"{label}: test accuracy {accuracy:.4f}  ({seconds:.1f} s for the search and the refit)")
    print(f"  best {found.best_params_}  cv accuracy {found.best_score_:.4f}")
    for params, score in zip(found.cv_results_["params"], found.cv_results_["mean_test_score"]):
        print(f"    {params}  {score:.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dask", action="store_true",
                        help="run the search on a dask.distributed LocalCluster as well")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--fast", action="store_true", help="a small grid and few epochs")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    # one BLAS thread per worker thread: the searches' fits run side by side
    with threadpool_limits(1):
        results = {"threads": run("threading", fast=args.fast)}
    report("local threads", *results["threads"])
    if args.dask:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            results["dask"] = run("dask", fast=args.fast, n_jobs=-1)
        report(f"dask LocalCluster ({args.workers} workers)", *results["dask"])
    return {name: (accuracy, seconds) for name, (accuracy, seconds, _) in results.items()}


if __name__ == "__main__":
    main()
