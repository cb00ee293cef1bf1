"""Fast by default: cyrnn with nothing pinned against cyrnn pinned to one thread, on an idle
machine and while another CPU-bound process keeps one core busy; the `cyrnn demo` command as a
new user runs it; and the composed path (padding, BCE, last-step targets).

Run (see bench/THREADS.md for the table and the exact command):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_threads.py \
        -p no:cacheprovider --benchmark-json=bench/threads.json
    python bench/threads_report.py bench/threads.json > bench/THREADS.md

"pinned" is ``threadpool_limits(1)`` (cyrnn follows a BLAS limit of one thread), "default" sets
nothing. The demo runs as a subprocess, with ``OPENBLAS_NUM_THREADS=1`` for "pinned".
"""
import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cyrnn

sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402

SETTINGS = (1, "default")
BUDGET = float(os.environ.get("CYRNN_COMPARE_BUDGET", "1.0"))


@contextlib.contextmanager
def busy_core(load):
    """``load == "busy"``: another process spinning on the CPU for as long as the block runs."""
    if load != "busy":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it be scheduled
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _rounds(fn):
    fn()
    start = time.perf_counter()
    fn()
    t = time.perf_counter() - start
    return max(3, min(100, int(BUDGET / max(t, 1e-6))))


def _record(benchmark, **info):
    benchmark.extra_info.update(info, cyrnn_threads_used=cyrnn.get_num_threads())


@pytest.mark.parametrize("load", ["idle", "busy"])
@pytest.mark.parametrize("blas_threads", SETTINGS, indirect=True, ids=["pinned", "default"])
@pytest.mark.parametrize("config", list(peers.CONFIGS))
def test_step(benchmark, blas_threads, config, load):
    """A training step (forward+backward, the fused path) of every COMPARE configuration."""
    model = peers.make_model(config)
    x, target = peers.make_data(config)
    fn = lambda: model.loss_and_grad(x, target, input_grad=False)  # noqa: E731
    benchmark.group = f"step {config} {load}"
    _record(benchmark, kind="step", config=config, setting=str(blas_threads), load=load)
    with busy_core(load):
        rounds = _rounds(fn)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("case", ["padded", "bce", "last"])
@pytest.mark.parametrize("blas_threads", SETTINGS, indirect=True, ids=["pinned", "default"])
def test_composed_path(benchmark, blas_threads, case):
    """Steps that compose the separate kernels with NumPy's products: padded sequences
    (``lengths``), a sigmoid output with BCE, a loss on the last step only (medium's sizes)."""
    B, T, I, H, O = 32, 100, 128, 256, 128
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    kwargs = {}
    if case == "bce":
        model = cyrnn.RNN(I, H, O, output="sigmoid", seed=0)
        target = rng.uniform(0, 1, (T, B, O)).astype(np.float32)
    else:
        model = cyrnn.RNN(I, H, O, seed=0)
        if case == "padded":
            target = rng.standard_normal((T, B, O)).astype(np.float32)
            kwargs["lengths"] = rng.integers(T // 2, T + 1, B)
        else:
            target = rng.standard_normal((B, O)).astype(np.float32)
            kwargs["target_steps"] = "last"
    fn = lambda: model.loss_and_grad(x, target, input_grad=False, **kwargs)  # noqa: E731
    benchmark.group = f"composed {case}"
    _record(benchmark, kind="composed", config=case, setting=str(blas_threads), load="idle")
    benchmark.pedantic(fn, rounds=_rounds(fn), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("blas_threads", SETTINGS, indirect=True, ids=["pinned", "default"])
def test_demo(benchmark, blas_threads):
    """``cyrnn demo`` end to end in a fresh process, as a new user runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "CYRNN_NUM_THREADS")}
    if blas_threads == 1:
        env["OPENBLAS_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "cyrnn", "demo"]
    run = lambda: subprocess.run(command, env=env, check=True, capture_output=True)  # noqa: E731
    benchmark.group = "demo"
    _record(benchmark, kind="demo", config="demo", setting=str(blas_threads), load="idle")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
