"""Benchmark set-up: BLAS at one thread (or as many as a test asks for), and the BLAS in use
recorded with every result."""
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def blas_threads(request, benchmark):
    """Limit every BLAS in the process (NumPy's and SciPy's) to one thread for the measurement.

    A test can ask for another count by parametrizing this fixture indirectly, e.g.
    ``@pytest.mark.parametrize("blas_threads", [1, 2, "default"], indirect=True)``; the count is
    the fixture's value. ``"default"`` sets no limit at all: what a user who sets nothing runs.
    """
    import contextlib

    import cyrnn  # first: threadpoolctl only limits the BLAS libraries already loaded

    threads = getattr(request, "param", 1)
    limit = (contextlib.nullcontext() if threads == "default"
             else threadpoolctl.threadpool_limits(limits=threads))
    with limit:
        benchmark.extra_info["threadpool_info"] = threadpoolctl.threadpool_info()
        benchmark.extra_info["cyrnn_simd"] = cyrnn.backend_info()["simd"]
        benchmark.extra_info["cyrnn_threads"] = cyrnn.get_num_threads()
        yield threads
