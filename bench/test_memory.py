"""Peak memory of one training step against the analytic minimum.

The minimum is what a training step must hold at its peak: the parameters, their gradients,
the stored states ``(T + 1, B, H)``, one output block ``(T, B, O)`` and, because
``loss_and_grad`` returns it, the gradient of dense inputs ``(T, B, I)``. Measured with
``tracemalloc`` (NumPy reports its buffers to it), as the peak above what was allocated before
the call. Not timed; the ratios go into bench/RESULTS.md.

    python -m pytest bench/test_memory.py -s
"""
import tracemalloc

import numpy as np
import pytest

import cyrnn

CONFIGS = {
    "charlm": (1, 25, 65, 100, 65, True),
    "small": (8, 100, 16, 64, 16, False),
    "medium": (32, 100, 128, 256, 128, False),
    "large": (64, 50, 512, 1024, 512, False),
}


def analytic_minimum(B, T, I, H, O, tokens, itemsize=4):
    params = H * I + H * H + H + O * H + O
    floats = 2 * params + (T + 1) * B * H + T * B * O + (0 if tokens else T * B * I)
    return floats * itemsize


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_peak_memory_of_a_training_step(config, backend, benchmark):
    B, T, I, H, O, tokens = CONFIGS[config]
    rng = np.random.default_rng(0)
    model = cyrnn.RNN(I, H, O, output="softmax" if tokens else "linear", seed=0, backend=backend)
    if tokens:
        x, target = rng.integers(0, I, (T, B)), rng.integers(0, O, (T, B))
    else:
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        target = rng.standard_normal((T, B, O)).astype(np.float32)
    model.loss_and_grad(x, target)  # warm-up: caches, lazy imports
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = model.loss_and_grad(x, target)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    params = sum(p.nbytes for p in model.params.values())
    minimum = analytic_minimum(B, T, I, H, O, tokens)
    # the parameters exist before the call: count them in both
    ratio = (peak + params) / minimum
    benchmark.extra_info.update(config=config, backend=backend, peak_bytes=peak + params,
                                minimum_bytes=minimum, ratio=ratio)
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\n{config} {backend}: peak {(peak + params) / 1e6:.2f} MB, minimum "
          f"{minimum / 1e6:.2f} MB, ratio {ratio:.2f}")
    assert np.isfinite(result[0])
