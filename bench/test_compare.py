"""cyrnn against its peers: forward and forward+backward of one Elman RNN, float32.

Peers (see bench/peers.py): cyrnn's compiled backend and its NumPy twin through the public API, a
naive per-step NumPy loop in the style of min-char-rnn, PyTorch (nn.RNN) and JAX (lax.scan under
jit), each at 1 and 2 threads and with nothing pinned ("default"), on the configurations of ``peers.CONFIGS``; plus one NumPy matmul
per configuration as the machine limit. Every peer's outputs, loss and gradients are checked
against cyrnn's (same weights) before it is timed.

``test_compare_stack``: the stacked and bidirectional models of ``peers.STACK_CONFIGS`` (cyrnn's
``num_layers`` / ``bidirectional``, torch's ``nn.RNN(num_layers=L, bidirectional=...)``, JAX's
``lax.scan`` per layer and direction); cyrnn is checked against torch there (the naive loop has
one layer), torch and JAX against cyrnn. Only these rows:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_compare.py \
        -k test_compare_stack --benchmark-json=bench/compare_stack.json

``test_compare_gated`` / ``test_gemm_limit_gated``: LSTM and GRU at the six configurations
(``<config>_lstm`` / ``<config>_gru``: ``cyrnn.LSTM`` / ``cyrnn.GRU`` and their NumPy twins,
torch's ``nn.LSTM`` / ``nn.GRU``, JAX ``lax.scan`` cells), forward and training step, THREADS;
cyrnn is checked against torch, torch, JAX and the twin against cyrnn. The GEMM limit is one
float32 ``(T*B, H) x (H, G)`` NumPy matmul (G = 4H or 3H) at the same thread count. Only these
rows (``-k "gated and lstm"`` / ``-k "gated and gru"`` for one cell):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_compare.py \
        -k gated --benchmark-json=bench/compare_gated.json
    python bench/compare_report.py --gated-only bench/compare_gated.json > bench/GATED.md

Run (see bench/COMPARE.md for the results and the exact command):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_compare.py \
        --benchmark-json=bench/compare.json
    python bench/compare_report.py bench/compare.json > bench/COMPARE.md

``CYRNN_COMPARE_BUDGET`` (seconds of timing per benchmark, default 1.0) trades time for noise.
"""
import math
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402

# pinned to 1 and 2 threads, and nothing pinned: what a user who sets nothing runs
THREADS = (1, 2, "default")
# timing: each benchmark gets about BUDGET seconds, as rounds of at least MIN_ROUND seconds
BUDGET = float(os.environ.get("CYRNN_COMPARE_BUDGET", "1.0"))
MIN_ROUND = 2e-3
MIN_ROUNDS, MAX_ROUNDS = 5, 200
SLOW_CALL = 1.0  # seconds; calls slower than this get 3 rounds
NAIVE_LIMIT = 20.0  # seconds; the naive loop is skipped when one call takes longer

# agreement with cyrnn (cython backend) for the same weights and data
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3  # relative Frobenius error of each parameter's gradient
OUTPUT_RTOL = 1e-4  # relative Frobenius error of the forward outputs

_peers = {}
_reference = {}
_independent = {}
_checked = {}
_versions = None


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _get_peer(peer, config):
    key = peer, config
    if key not in _peers:
        if peer == "torch":
            pytest.importorskip("torch")
        elif peer == "jax":
            pytest.importorskip("jax")
        _peers[key] = peers.build(peer, config)
    return _peers[key]


def _get_reference(config):
    if config not in _reference:
        ref = peers.build("cyrnn-cython", config)
        y = ref.check_forward()
        loss, grads = ref.check_forward_backward()
        _reference[config] = y, loss, grads
    return _reference[config]


def _get_independent(config):
    """The naive loop's results (torch's for a stack): cyrnn itself is checked against them (it
    is edited while the benchmarks run; a broken build must not be timed either)."""
    if config not in _independent:
        if config in peers.CONFIGS:
            independent = peers.build("naive-numpy", config)
        else:
            independent = _get_peer("torch", config)
        y = independent.check_forward()
        loss, grads = independent.check_forward_backward()
        _independent[config] = y, loss, grads
    return _independent[config]


def _check(peer_obj, peer, config):
    """Outputs, loss and every parameter gradient against cyrnn's, once per config and peer
    (cyrnn's against the naive loop's)."""
    key = peer, config
    if key not in _checked:
        if peer == "cyrnn-cython":
            y_ref, loss_ref, grads_ref = _get_independent(config)
        else:
            y_ref, loss_ref, grads_ref = _get_reference(config)
        y = peer_obj.check_forward()
        loss, grads = peer_obj.check_forward_backward()
        _checked[key] = {
            "output_rel_err": _rel(y, y_ref),
            "loss": loss,
            "loss_ref": loss_ref,
            "loss_rel_err": abs(loss - loss_ref) / abs(loss_ref),
            "grad_rel_err": {k: _rel(grads[k], grads_ref[k]) for k in peers.param_names(config)},
        }
    found = _checked[key]
    assert found["loss_rel_err"] <= LOSS_RTOL, f"{peer} loss {found['loss']} vs cyrnn {found['loss_ref']}"
    assert found["output_rel_err"] <= OUTPUT_RTOL, f"{peer} outputs differ from cyrnn's: {found}"
    worst = max(found["grad_rel_err"].values())
    assert worst <= GRAD_RTOL, f"{peer} gradients differ from cyrnn's: {found['grad_rel_err']}"
    return found


def _versions_once():
    """Versions and the cyrnn build, taken when the first test runs (the library on disk may
    change during the session; the modules in memory do not)."""
    global _versions
    if _versions is None:
        _versions = peers.versions()
    return _versions


def _measure(benchmark, fn, skip_slower_than=None):
    """Calibrate on a few calls, then time with enough rounds for a stable median."""
    fn()  # warm-up (caches, lazy allocations)
    first = peers.time_once(fn)
    t = first if first >= SLOW_CALL else min(first, peers.time_once(fn))
    if skip_slower_than is not None and t > skip_slower_than:
        pytest.skip(f"one call takes {t:.1f} s > {skip_slower_than:.0f} s")
    iterations = max(1, math.ceil(MIN_ROUND / t)) if t < MIN_ROUND else 1
    if t >= SLOW_CALL:
        rounds = 3
    else:
        rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(BUDGET / (t * iterations))))
    benchmark.extra_info.update(rounds=rounds, iterations=iterations)
    before = _cpu_snapshot()
    result = benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)
    benchmark.extra_info.update(_foreign_load(before, _cpu_snapshot()))
    return result


def _cpu_snapshot():
    """(wall time, machine busy CPU seconds from /proc/stat, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def _foreign_load(before, after):
    """Cores kept busy by other processes (and the hypervisor) while the benchmark ran: the
    machine is noisy, so every result says how much of it was shared."""
    wall = after[0] - before[0]
    busy = after[1] - before[1]
    own = after[2] - before[2]
    return {"foreign_cores": round(max(busy - own, 0.0) / wall, 3), "own_cores": round(own / wall, 3)}


def _ids(values, prefix=""):
    return [f"{prefix}{v}" for v in values]


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("op", peers.OPS)
@pytest.mark.parametrize("peer", peers.PEERS)
@pytest.mark.parametrize("config", list(peers.CONFIGS))
def test_compare(benchmark, blas_threads, config, peer, op):
    threads = blas_threads
    peer_obj = _get_peer(peer, config)
    found = _check(peer_obj, peer, config)
    benchmark.group = f"{config} {op} {threads} thread(s)"
    benchmark.extra_info.update(
        config=config, peer=peer, op=op, threads=threads, flops=peers.flops(config, op),
        config_shape=peers.shape_of(config)._asdict(), stack=peers.stack_of(config)._asdict(),
        check=found, versions=_versions_once(),
    )
    cell = peers.cell_of(config)[0]
    if cell != "elman":
        benchmark.extra_info.update(cell=cell, base_config=peers.cell_of(config)[1],
                                    gate_size=peers.gate_size(config))
    fn = peer_obj.forward if op == "forward" else peer_obj.forward_backward
    skip = NAIVE_LIMIT if peer == "naive-numpy" else None
    with peers.peer_threads_context(peer, threads):
        peer_obj.set_threads(threads)
        benchmark.extra_info["threads_note"] = peer_obj.threads_note
        _measure(benchmark, fn, skip_slower_than=skip)


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("op", peers.OPS)
@pytest.mark.parametrize("peer", peers.STACK_PEERS)
@pytest.mark.parametrize("config", peers.STACK_CONFIGS)
def test_compare_stack(benchmark, blas_threads, config, peer, op):
    """The stacked / bidirectional rows: same measurement as ``test_compare``."""
    test_compare(benchmark, blas_threads, config, peer, op)


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("op", peers.OPS)
@pytest.mark.parametrize("peer", peers.GATED_PEERS)
@pytest.mark.parametrize("cell", peers.CELLS)
@pytest.mark.parametrize("config", list(peers.CONFIGS))
def test_compare_gated(benchmark, blas_threads, config, cell, peer, op):
    """The LSTM / GRU rows (config ``<config>_<cell>``): same measurement as ``test_compare``."""
    test_compare(benchmark, blas_threads, f"{config}_{cell}", peer, op)


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("cell", peers.CELLS)
@pytest.mark.parametrize("config", list(peers.CONFIGS))
def test_gemm_limit_gated(benchmark, blas_threads, config, cell):
    """The GEMM limit of the gated rows: one NumPy float32 product (T*B, H) x (H, G), G = 4H
    (LSTM) or 3H (GRU)."""
    test_machine_limit(benchmark, blas_threads, f"{config}_{cell}")
    benchmark.extra_info.update(cell=cell, base_config=config)


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("config", list(peers.CONFIGS))
def test_machine_limit(benchmark, blas_threads, config):
    """One NumPy float32 product (T*B, H) x (H, H) (x (H, G) for a gated config name): what the
    BLAS reaches at this size."""
    M, K, N = peers.machine_limit_shape(config)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), dtype=np.float32)
    benchmark.group = f"{config} matmul {blas_threads} thread(s)"
    benchmark.extra_info.update(
        config=config, peer="numpy-matmul", op="matmul", threads=blas_threads,
        flops=2 * M * K * N, shape=[M, K, N], versions=_versions_once(),
    )
    _measure(benchmark, lambda: np.matmul(a, b, out=out))
