"""cyrnn's own threading: results never depend on a thread count, and the sharded compiled step
equals the one-piece computation to float tolerance."""
import threading

import numpy as np
import pytest

import cyrnn
from cyrnn import _threads, kernels

threadpoolctl = pytest.importorskip("threadpoolctl")

# T*B*H*(H+I+O) above the sharding threshold: the compiled step runs in several shards
SHARDED = dict(T=60, B=33, I=8, H=64, O=8)


def _model(backend, tokens, dtype="float32", threads=None, I=8, H=64, O=8):
    if tokens:
        return cyrnn.RNN(I, H, I, output="softmax", seed=1, backend=backend, dtype=dtype,
                         threads=threads)
    return cyrnn.RNN(I, H, O, seed=1, backend=backend, dtype=dtype, threads=threads)


def _batch(tokens, T, B, I, O, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if tokens:
        ids = rng.integers(0, I, (T, B))
        return ids, rng.integers(0, I, (T, B))
    return (rng.standard_normal((T, B, I)).astype(dtype),
            rng.standard_normal((T, B, O)).astype(dtype))


def _assert_same(a, b):
    loss_a, grads_a, h_a = a
    loss_b, grads_b, h_b = b
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)
    np.testing.assert_array_equal(h_a, h_b)


def test_the_sharded_size_is_sharded():
    s = SHARDED
    assert kernels.cython_backend.shard_count(s["T"], s["B"], s["I"], s["H"], s["O"]) == 2


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncate", [None, 7, cyrnn.TBPTT(10, 10)], ids=["full", "window", "carry"])
def test_results_are_bit_identical_on_any_thread_count(backend, dtype, tokens, truncate):
    s = SHARDED
    x, y = _batch(tokens, s["T"], s["B"], s["I"], s["O"], dtype)
    results = []
    for threads in (1, 2, 3, 8):
        model = _model(backend, tokens, dtype, threads)
        results.append(model.loss_and_grad(x, y, truncate=truncate))
    for other in results[1:]:
        _assert_same(results[0], other)


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_results_do_not_depend_on_the_blas_thread_count(tokens):
    """Products that used to switch between cyrnn's kernel and OpenBLAS by BLAS's thread count
    (M*N*K >= 2^20 here) give the same bits under any threadpool limit. (The NumPy twin's
    products are NumPy's, which follow NumPy's BLAS and its thread count.)"""
    backend = "cython"
    T, B, I, H = 40, 32, 16, 256
    x, y = _batch(tokens, T, B, I, I)
    model = _model(backend, tokens, I=I, H=H, O=I)
    reference = model.loss_and_grad(x, y)
    for limit in (1, 2):
        with threadpoolctl.threadpool_limits(limits=limit):
            _assert_same(model.loss_and_grad(x, y), reference)
    forward = model.forward(x)
    with threadpoolctl.threadpool_limits(limits=1):
        for a, b in zip(model.forward(x), forward):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_training_is_bit_identical_on_one_or_two_threads(backend, tokens):
    """The guarantee users see: the same seed trains the same weights on one or two threads."""
    s = SHARDED
    x, y = _batch(tokens, s["T"], s["B"], s["I"], s["O"])
    trained = []
    for threads in (1, 2):
        model = _model(backend, tokens, threads=threads)
        optimizer = cyrnn.optim.Adam(model.params, lr=1e-2)
        for _ in range(3):
            loss, grads, _ = model.loss_and_grad(x, y, input_grad=False)
            cyrnn.clip_grad_norm(grads, 1.0)
            optimizer.step(grads)
        trained.append((loss, {k: v.copy() for k, v in model.params.items()}))
    assert trained[0][0] == trained[1][0]
    for name in trained[0][1]:
        np.testing.assert_array_equal(trained[0][1][name], trained[1][1][name], err_msg=name)


@pytest.mark.parametrize("B", [16, 33, 64, 200], ids=lambda b: f"B={b}")
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("truncation", ["full", "carry", "window"])
def test_sharded_step_equals_the_twin(tokens, truncation, B):
    """Shards of uneven sizes, every truncation, input gradients and per-step norms: the
    compiled step in shards against the NumPy twin in one piece (float64)."""
    T, I, H, O = 120, 6, 64, 5
    assert kernels.cython_backend.shard_count(T, B, I, H, O) > 1
    rng = np.random.default_rng(B)
    if tokens:
        inputs, targets = rng.integers(0, I, (T, B)), rng.integers(0, O, (T, B))
        loss = "cross_entropy"
    else:
        inputs, targets = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))
        loss = "mse"
    h0 = rng.standard_normal((B, H)) * 0.3
    params = [rng.standard_normal(s) * 0.2 for s in [(H, I), (H, H), (H,), (O, H), (O,)]]
    params[1] *= 0.4  # a contracting recurrence: rounding does not grow over 120 steps
    kwargs = dict(loss=loss, negative_slope=0.1)
    if truncation == "carry":
        kwargs["carry"] = rng.uniform(0, 1.5, T)
    elif truncation == "window":
        kwargs["window"] = rng.integers(1, T + 2, T)
    got = kernels.get_backend("cython").elman_loss_and_grad(inputs, targets, h0, *params,
                                                            "tanh", threads=2, **kwargs)
    ref = kernels.get_backend("numpy").elman_loss_and_grad(inputs, targets, h0, *params, "tanh",
                                                           **kwargs)
    assert got[0] == pytest.approx(ref[0], rel=1e-12)
    assert got[1].keys() == ref[1].keys()
    for name in ref[1]:
        np.testing.assert_allclose(got[1][name], ref[1][name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-10, atol=1e-12)
    if truncation == "window":
        assert got[3] is None and ref[3] is None
    else:
        np.testing.assert_allclose(got[3], ref[3], rtol=1e-10, atol=1e-12)


def test_shard_count_depends_on_sizes_only():
    count = kernels.cython_backend.shard_count
    assert count(100, 8, 16, 64, 16) == 1      # small batch
    assert count(2, 64, 4, 8, 4) == 1          # little work
    assert count(50, 32, 65, 256, 65) == 2
    assert count(50, 64, 512, 1024, 512) == 4
    assert count(1000, 16, 32, 128, 32) == 2
    for B in range(1, 600, 7):
        n = count(200, B, 64, 256, 64)
        assert n & (n - 1) == 0 and n <= 8
        assert n == 1 or B // n >= 8


def test_shard_count_of_gated_cells_counts_the_gates():
    count = kernels.cython_backend.shard_count
    # the gate width G counts in the work: an LSTM of this size is sharded, Elman is not
    assert count(30, 16, 16, 64, 16) == 1
    assert count(30, 16, 16, 64, 16, gate_width=256) == 2
    # a Whh (G, H) past the caches: at least 32 sequences a shard (Elman's H*H is not past)
    assert count(50, 64, 512, 1024, 512, gate_width=4096) == 2
    assert count(50, 64, 512, 1024, 512, gate_width=3072) == 2
    assert count(50, 64, 512, 1024, 512, gate_width=1024) == 4
    assert count(50, 32, 512, 1024, 512, gate_width=4096) == 1
    assert count(50, 32, 128, 256, 128, gate_width=1024) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_thread_arguments_are_checked(bad):
    exc = TypeError if not isinstance(bad, int) or isinstance(bad, bool) else ValueError
    with pytest.raises(exc, match="threads: expected an int >= 1"):
        cyrnn.RNN(3, 4, 2, threads=bad)
    with pytest.raises(exc, match="n: expected an int >= 1"):
        cyrnn.set_num_threads(bad)


def test_thread_count_settings(monkeypatch):
    monkeypatch.setattr(_threads, "_setting", None)
    monkeypatch.delenv("CYRNN_NUM_THREADS", raising=False)
    automatic = cyrnn.get_num_threads()
    assert automatic >= 1
    with threadpoolctl.threadpool_limits(limits=1):
        assert cyrnn.get_num_threads() == 1  # OpenBLAS limited to one thread: honoured
    monkeypatch.setenv("CYRNN_NUM_THREADS", "3")
    assert cyrnn.get_num_threads() == 3
    cyrnn.set_num_threads(5)
    assert cyrnn.get_num_threads() == 5 and cyrnn.backend_info()["threads"] == 5
    cyrnn.set_num_threads(None)
    assert cyrnn.get_num_threads() == 3
    monkeypatch.setenv("CYRNN_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="CYRNN_NUM_THREADS: expected an int >= 1"):
        cyrnn.get_num_threads()


def test_models_train_in_parallel_threads_as_in_series():
    """Two models stepping in two Python threads, each step itself on shards: the same results
    as one after the other."""
    s = SHARDED
    x, y = _batch(True, s["T"], s["B"], s["I"], s["O"])
    serial = [_model("cython", True, threads=2).loss_and_grad(x, y) for _ in range(2)]
    out = [None, None]

    def run(i):
        out[i] = _model("cython", True, threads=2).loss_and_grad(x, y)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for a, b in zip(serial, out):
        _assert_same(a, b)


@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_sharded_forward_equals_the_twin_and_ignores_threads(tokens, output, dtype):
    T, B, I, H, O = 120, 33, 6, 64, 5
    assert kernels.cython_backend.shard_count(T, B, I, H, O) > 1
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, I, (T, B)) if tokens else rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.3).astype(dtype)
    params = [(rng.standard_normal(s) * 0.2).astype(dtype)
              for s in [(H, I), (H, H), (H,), (O, H), (O,)]]
    params[1] *= 0.4
    compiled = kernels.get_backend("cython").elman_forward
    runs = [compiled(inputs, h0, *params, output=output, threads=n) for n in (1, 2, 5)]
    for y, h in runs[1:]:
        np.testing.assert_array_equal(y, runs[0][0])
        np.testing.assert_array_equal(h, runs[0][1])
    y_ref, h_ref = kernels.get_backend("numpy").elman_forward(inputs, h0, *params, output=output)
    tol = {np.float32: 2e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(runs[0][0], y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(runs[0][1], h_ref, rtol=tol, atol=tol)
    assert runs[0][0].flags.c_contiguous and runs[0][0].shape == (T, B, O)


@pytest.mark.parametrize("B", [4, 33], ids=["one shard", "shards"])
def test_kept_workspaces_never_leak_into_results(B):
    """The compiled step and forward keep their buffers for the next call of the same sizes:
    what a call returned must not change when the next call runs."""
    T, I, H, O = 120, 6, 64, 5
    k = kernels.get_backend("cython")
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s) * 0.2 for s in [(H, I), (H, H), (H,), (O, H), (O,)]]
    calls = []
    for seed in (1, 2):
        r = np.random.default_rng(seed)
        x, y = r.standard_normal((T, B, I)), r.standard_normal((T, B, O))
        h0 = r.standard_normal((B, H)) * 0.1
        step = k.elman_loss_and_grad(x, y, h0, *params, loss="mse")
        forward = k.elman_forward(x, h0, *params)
        calls.append((step, forward, [a.copy() for a in (*step[1].values(), step[2], step[3])],
                      [a.copy() for a in forward]))
    for step, forward, step_copy, forward_copy in calls:
        for a, b in zip((*step[1].values(), step[2], step[3]), step_copy):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(forward, forward_copy):
            np.testing.assert_array_equal(a, b)
    assert calls[0][0][0] != calls[1][0][0]
