"""Benchmark set-up: BLAS at one thread, and the BLAS in use recorded with every result."""
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def one_blas_thread(benchmark):
    """Limit every BLAS in the process (NumPy's and SciPy's) to one thread for the measurement."""
    with threadpoolctl.threadpool_limits(limits=1):
        benchmark.extra_info["threadpool_info"] = threadpoolctl.threadpool_info()
        yield
