"""Forward and forward+backward timings of the class API on both backends.

Run (see bench/RESULTS.md for the table and the exact command):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_bench.py bench/test_memory.py --benchmark-json=bench/results.json
    python bench/report.py bench/results.json   # the tables of bench/RESULTS.md
"""
import numpy as np
import pytest

import cyrnn

# name: (B, T, I, H, O, token inputs)
CONFIGS = {
    "charlm": (1, 25, 65, 100, 65, True),
    "medium": (32, 100, 128, 256, 128, False),
    "large": (64, 50, 512, 1024, 512, False),
}


def _setup(config, backend):
    B, T, I, H, O, tokens = CONFIGS[config]
    rng = np.random.default_rng(0)
    output = "softmax" if tokens else "linear"
    model = cyrnn.RNN(I, H, O, output=output, dtype="float32", seed=0, backend=backend)
    if tokens:
        x = rng.integers(0, I, (T, B))
        target = rng.integers(0, O, (T, B))
    else:
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        target = rng.standard_normal((T, B, O)).astype(np.float32)
    return model, x, target


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward(benchmark, config, backend):
    model, x, _ = _setup(config, backend)
    benchmark.group = f"{config} forward"
    benchmark.extra_info.update(config=config, op="forward", backend=backend)
    y, h = benchmark(model.forward, x)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_backward(benchmark, config, backend):
    model, x, target = _setup(config, backend)
    benchmark.group = f"{config} forward+backward"
    benchmark.extra_info.update(config=config, op="forward+backward", backend=backend)
    loss, grads, _ = benchmark(model.loss_and_grad, x, target)
    assert np.isfinite(loss)


# name: (V, H, characters generated per call)
GENERATION = {"charlm-H100": (65, 100, 500), "charlm-H256": (65, 256, 500)}


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("config", list(GENERATION))
def test_generation(benchmark, config, backend):
    V, H, n = GENERATION[config]
    model = cyrnn.RNN(V, H, V, output="softmax", dtype="float32", seed=0, backend=backend)
    benchmark.group = f"{config} generation"
    benchmark.extra_info.update(config=config, op="generate", backend=backend, characters=n)
    ids = benchmark(model.sample, [0], n, seed=1)
    assert ids.shape == (n,)
