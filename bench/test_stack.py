"""What a stack costs: cyrnn's training step (forward+backward, ``loss_and_grad(...,
input_grad=False)``) of an L-layer, D-direction model against L x D times the one-layer step of
the same sizes, at medium's and charlm_batched's sizes, pinned to one thread and with nothing
pinned.

Run (see bench/STACKS.md for the table and the exact command):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_stack.py \
        -p no:cacheprovider --benchmark-json=bench/stack.json
    python bench/stack_report.py bench/stack.json > bench/STACKS.md

Each test times the stack's step with pytest-benchmark, and then measures the ratio side by side:
``ROUNDS`` rounds, each a block of one-layer steps then a block of stack steps (a block starts
with one untimed call, as cyrnn keeps its buffers for the next call of the same sizes, which is
what a training loop makes); the ratio is the median over rounds of (median stack step / median
one-layer step), and the ratio of the fastest stack call over the fastest one-layer call (the
machine is shared: the fastest calls are the ones least slowed by other processes). For
L = D = 1 the two blocks run the same model: the ratios show the noise.
``CYRNN_STACK_BUDGET`` (seconds per block, default 0.2) trades time for noise.
"""
import math
import os
import statistics
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402
from test_compare import _cpu_snapshot, _foreign_load, _versions_once  # noqa: E402

SIZES = ("medium", "charlm_batched")
STACKS = ((1, 1), (2, 1), (3, 1), (1, 2), (2, 2))  # (layers, directions)
SETTINGS = (1, "default")
BLOCK = float(os.environ.get("CYRNN_STACK_BUDGET", "0.2"))
ROUNDS = 7
MIN_CALLS = 3

_models = {}


def _step(config):
    """The zero-argument training step of ``config``'s model (built once per session)."""
    if config not in _models:
        model = peers.make_model(config)
        x, target = peers.make_data(config)
        _models[config] = lambda: model.loss_and_grad(x, target, input_grad=False)
    return _models[config]


def _block(fn, calls):
    """The times of ``calls`` calls after an untimed one (which may set up buffers)."""
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _paired(single, stack):
    """Median over rounds of (stack step / one-layer step), blocks alternating in each round; and
    the ratio of the fastest calls over all rounds (less exposed to other processes' load)."""
    t_single = min(peers.time_once(single) for _ in range(2))
    t_stack = min(peers.time_once(stack) for _ in range(2))
    n_single = max(MIN_CALLS, math.ceil(BLOCK / t_single))
    n_stack = max(MIN_CALLS, math.ceil(BLOCK / t_stack))
    rounds, fastest = [], [math.inf, math.inf]
    for r in range(ROUNDS):
        if r % 2 == 0:
            a = _block(single, n_single)
            b = _block(stack, n_stack)
        else:
            b = _block(stack, n_stack)
            a = _block(single, n_single)
        rounds.append((statistics.median(a), statistics.median(b)))
        fastest = [min(fastest[0], *a), min(fastest[1], *b)]
    return {
        "paired_ratio": statistics.median(b / a for a, b in rounds),
        "paired_single_s": statistics.median(a for a, _ in rounds),
        "paired_stack_s": statistics.median(b for _, b in rounds),
        "fastest_ratio": fastest[1] / fastest[0],
        "fastest_single_s": fastest[0], "fastest_stack_s": fastest[1],
        "paired_rounds": ROUNDS, "paired_calls": [n_single, n_stack],
    }


@pytest.mark.parametrize("blas_threads", SETTINGS, indirect=True, ids=["pinned", "default"])
@pytest.mark.parametrize("stack", STACKS, ids=[f"L{L}D{D}" for L, D in STACKS])
@pytest.mark.parametrize("size", SIZES)
def test_stack_step(benchmark, blas_threads, size, stack):
    import cyrnn

    layers, directions = stack
    config = peers.stack_name(size, layers, directions)
    stack_fn, single_fn = _step(config), _step(size)
    benchmark.group = f"stack {size} {blas_threads}"
    benchmark.extra_info.update(
        kind="stack", config=config, size=size, layers=layers, directions=directions,
        setting=str(blas_threads), cyrnn_threads_used=cyrnn.get_num_threads(),
        flops=peers.flops(config, "forward+backward"),
        single_flops=peers.flops(size, "forward+backward"), versions=_versions_once(),
    )
    before = _cpu_snapshot()
    stack_fn()
    t = peers.time_once(stack_fn)
    rounds = max(5, min(100, int(BLOCK * ROUNDS / t)))
    benchmark.pedantic(stack_fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(_paired(single_fn, stack_fn))
    benchmark.extra_info.update(_foreign_load(before, _cpu_snapshot()))
