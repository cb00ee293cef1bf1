"""cyrnn's own SIMD code: the product kernel (``_smallgemm.h``), built for AVX-512 and AVX2,
and the elementwise loops and float64 exp (``_elementwise.h``), built for AVX-512, AVX2 and the
baseline. Every build this CPU runs is tested, not just the one chosen at run time.

Products ``C = op(A) B`` (float32 and float64) of a single row, and those with M*N*K >= 2^20
while BLAS runs on one thread, run on the kernel instead of BLAS. The kernel is tested directly,
at every block shape, column tail and split of the shared dimension, through a private hook;
the kernels that use it are checked at sizes past the threshold on both backends against a
float64 reference.
"""
import numpy as np
import pytest

from cyrnn import kernels

from conftest import TOL

try:
    from cyrnn import _rnn
except ImportError:  # pragma: no cover - the backend fixture reports a missing build
    _rnn = None

needs_build = pytest.mark.skipif(_rnn is None, reason="the compiled extension is not built")


# the builds of the product kernel: 1 AVX2, 2 AVX-512
PRODUCT_BUILDS = {1: "avx2", 2: "avx512"}


@pytest.fixture(params=list(PRODUCT_BUILDS), ids=list(PRODUCT_BUILDS.values()))
def build(request):
    return request.param


def own_product(A, W, C, alpha, accumulate, trans_a=False, build=0):
    """Run the kernel (one build, or the widest here); skip, rather than pass vacuously, where
    this CPU cannot run it."""
    before = C.copy()
    if not _rnn._own_kernel_product(A, W, C, alpha, accumulate, trans_a, build):
        np.testing.assert_array_equal(C, before)  # untouched: the caller falls back to BLAS
        pytest.skip(f"this CPU cannot run the {PRODUCT_BUILDS.get(build, 'widest')} build; "
                    f"products run on BLAS")


def close(actual, expected, tol):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# ---------------------------------------------------------------------------------------------
# the kernel itself
# ---------------------------------------------------------------------------------------------


@needs_build
@pytest.mark.parametrize("M", [1, 2, 5, 6, 7, 8, 12, 13, 19])
@pytest.mark.parametrize("N", [1, 15, 16, 17, 48, 63, 64, 65, 100, 129, 256, 257, 300])
@pytest.mark.parametrize("K", [1, 3, 64])
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A.T"])
def test_product_at_every_block_shape(rng, dtype, build, M, N, K, trans_a):
    # rows: 1..6 (AVX2: 1..4) per block, blocks split evenly; columns: 1..4 (1..3) vectors per
    # panel, with tails of 1..16 floats or 1..8 doubles (AVX2: 1..8, 1..4)
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    C = rng.normal(size=(M, N)).astype(dtype)
    expected = -0.5 * (A.astype(np.float64) @ W) + C
    own_product(np.ascontiguousarray(A.T) if trans_a else A, W, C, -0.5, True, trans_a, build)
    close(C, expected, TOL[dtype])


@needs_build
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (7, 17, 5), (6, 64, 9), (13, 100, 33)])
def test_product_without_accumulate_never_reads_the_output(rng, dtype, build, M, N, K):
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    C = np.full((M, N), np.nan, dtype=dtype)
    own_product(A, W, C, 2.0, False, build=build)
    close(C, 2.0 * (A.astype(np.float64) @ W), TOL[dtype])


@needs_build
@pytest.mark.parametrize("M, N, K", [(1, 1, 2), (5, 17, 4), (7, 65, 3), (12, 129, 8)])
def test_product_writes_inside_its_output_only(rng, dtype, build, M, N, K):
    # C is the front of a larger buffer: the masked column tails must not spill past row ends
    buffer = rng.normal(size=M * N + 64).astype(dtype)
    sentinel = buffer[M * N:].copy()
    C = buffer[: M * N].reshape(M, N)
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    own_product(A, W, C, 1.0, False, build=build)
    np.testing.assert_array_equal(buffer[M * N:], sentinel)
    close(C, A.astype(np.float64) @ W, TOL[dtype])


@needs_build
@pytest.mark.parametrize("K", [511, 512, 513, 1500])
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A.T"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_product_in_parts_of_the_shared_dimension(rng, dtype, build, K, trans_a, accumulate):
    # K is taken in parts of 512 rows of W; the parts after the first always accumulate
    M, N = 7, 70
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    C = rng.normal(size=(M, N)).astype(dtype)
    expected = 0.25 * (A.astype(np.float64) @ W) + (C if accumulate else 0)
    own_product(np.ascontiguousarray(A.T) if trans_a else A, W, C, 0.25, accumulate, trans_a,
                build)
    close(C, expected, TOL[dtype])


@needs_build
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A.T"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_product_of_many_rows_on_wide_weights_packs_them_to_the_same_bits(rng, dtype, build,
                                                                          trans_a, accumulate):
    # from 1024 rows on, a W whose rows are a page apart (1024 floats, 512 doubles) is copied
    # into panels inside the kernel: the same sums as the smaller products that read it in place
    # (K past one part of 512 rows: the panels' later parts are read at their offset too)
    M, K = 1040, 600
    N = (4096 // np.dtype(dtype).itemsize) + 7  # a page and a tail
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    C = rng.normal(size=(M, N)).astype(dtype)
    whole, halves = C.copy(), C.copy()
    own_product(np.ascontiguousarray(A.T) if trans_a else A, W, whole, -0.5, accumulate, trans_a,
                build)
    for rows in (slice(0, 520), slice(520, M)):  # 520 rows: below the packing threshold
        part = np.ascontiguousarray(halves[rows])
        own_product(np.ascontiguousarray(A[rows].T) if trans_a else A[rows], W, part, -0.5,
                    accumulate, trans_a, build)
        halves[rows] = part
    np.testing.assert_array_equal(whole, halves)
    close(whole, -0.5 * (A.astype(np.float64) @ W) + (C if accumulate else 0), TOL[dtype])


@needs_build
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (2, 17, 5), (7, 64, 3), (13, 100, 33),
                                     (16, 257, 513), (6, 129, 1500), (19, 300, 64)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_product_on_packed_panels_is_the_same_product(rng, dtype, M, N, K, accumulate):
    # the gated cells' recurrences multiply by Whh packed in panels: the same arithmetic as on
    # Whh in place, so the same bits (a single row included: it takes the blocked path)
    A = rng.normal(size=(M, K)).astype(dtype)
    W = rng.normal(size=(K, N)).astype(dtype)
    C = rng.normal(size=(M, N)).astype(dtype)
    expected = C.copy()
    if M > 1:
        own_product(A, W, expected, -0.5, accumulate)
    else:  # (a single row in place runs the row kernel: compare with float64)
        expected = -0.5 * (A.astype(np.float64) @ W) + (C if accumulate else 0)
    if not _rnn._panel_product(A, W, C, -0.5, accumulate):
        pytest.skip("this CPU has no build of cyrnn's own kernel")
    if M > 1:
        np.testing.assert_array_equal(C, expected)
    else:
        close(C, expected, TOL[dtype])


@needs_build
def test_product_hook_rejects_bad_arrays():
    A = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="of C's dtype"):
        _rnn._own_kernel_product(A.astype(np.float64), np.ones((3, 4), np.float32),
                                 np.ones((2, 4), np.float32), 1.0, False)
    with pytest.raises(ValueError, match="do not match"):
        _rnn._own_kernel_product(A, np.ones((4, 4), np.float32), np.ones((2, 4), np.float32), 1.0,
                                 False)


@needs_build
def test_blas_thread_count_follows_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads = lambda: _rnn._simd_info()["blas_threads"]  # noqa: E731
    if threads() == -1:
        pytest.skip("the BLAS behind scipy.linalg.cython_blas does not report its threads")
    with threadpoolctl.threadpool_limits(1):
        assert threads() == 1
    with threadpoolctl.threadpool_limits(2):
        assert threads() == 2


# ---------------------------------------------------------------------------------------------
# the kernels that use it, at sizes past the threshold
# ---------------------------------------------------------------------------------------------

# (T, B, H): B*H*H = 7*390*390 ~ 1.06e6 >= 2^20, 390 = 6*64 + 6 columns (a 6-wide tail);
# each runs on the kernel while BLAS has one thread, and on BLAS with more
SIZES = [(4, 7, 390), (2, 64, 1040)]


def _recurrence(rng, T, B, H, dtype):
    xw = rng.normal(size=(T, B, H)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    Whh = (rng.normal(size=(H, H)) / np.sqrt(H)).astype(dtype)
    return xw, h0, Whh


def _both_thread_counts():
    """Contexts for one BLAS thread and for the default count."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [threadpoolctl.threadpool_limits(1), None]


@pytest.mark.parametrize("T, B, H", SIZES)
def test_forward_and_backward_past_the_threshold(backend, dtype, rng, T, B, H):
    k = kernels.get_backend(backend)
    ref = kernels.get_backend("numpy")
    xw, h0, Whh = _recurrence(rng, T, B, H, dtype)
    dh_out = rng.normal(size=(T, B, H)).astype(dtype)
    carry = np.linspace(1.0, 0.5, T).astype(dtype)
    hs64 = ref.rnn_forward(xw.astype(np.float64), h0.astype(np.float64), Whh.astype(np.float64))
    da64, dh064, _ = ref.rnn_backward(dh_out.astype(np.float64), hs64, Whh.astype(np.float64),
                                      carry=carry.astype(np.float64))
    for context in _both_thread_counts():
        if context is not None:
            context.__enter__()
        try:
            hs = k.rnn_forward(xw, h0, Whh)
            da, dh0, _ = k.rnn_backward(dh_out, hs64.astype(dtype), Whh, carry=carry)
        finally:
            if context is not None:
                context.__exit__(None, None, None)
        close(hs, hs64, TOL[dtype])
        close(da, da64, TOL[dtype])
        close(dh0, dh064, TOL[dtype])


@pytest.mark.parametrize("one_thread", [True, False], ids=["1-thread", "default-threads"])
@pytest.mark.parametrize("tokens", [False, True], ids=["dense", "tokens"])
def test_fused_step_past_the_threshold(backend, dtype, rng, tokens, one_thread):
    # the fused training step with every product past 2^20 (T*B = 280 rows, B*H*H ~ 1.06e6 per
    # step); the logits have an 11-column tail. Against the float64 NumPy twin.
    import cyrnn

    T, B, I, H, O = 40, 7, 12, 390, 11
    output = "softmax" if tokens else "linear"
    model = cyrnn.RNN(I, H, O, output=output, dtype=dtype, seed=3, backend=backend)
    model64 = cyrnn.RNN(I, H, O, output=output, dtype="float64", seed=3, backend="numpy")
    model64.set_params({name: value.astype(np.float64) for name, value in model.params.items()})
    if tokens:
        x, y = rng.integers(0, I, (T, B)), rng.integers(0, O, (T, B))
        x64, y64 = x, y
    else:
        x = rng.normal(size=(T, B, I)).astype(dtype)
        y = rng.normal(size=(T, B, O)).astype(dtype)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if one_thread:
        # the products run on cyrnn's own kernel only while BLAS has one thread
        with pytest.importorskip("threadpoolctl").threadpool_limits(1):
            loss, grads, _ = model.loss_and_grad(x, y)
            outputs, _ = model.forward(x)
    else:
        loss, grads, _ = model.loss_and_grad(x, y)
        outputs, _ = model.forward(x)
    loss64, grads64, _ = model64.loss_and_grad(x64, y64)
    close(outputs, model64.forward(x64)[0], TOL[dtype])
    assert abs(loss - loss64) <= TOL[dtype] * abs(loss64)
    for name, g64 in grads64.items():
        close(grads[name], g64, TOL[dtype])


# ---------------------------------------------------------------------------------------------
# the float32 elementwise loops (_elementwise.h): every build this CPU runs, not just the one
# chosen at run time
# ---------------------------------------------------------------------------------------------

BUILDS = {0: "baseline", 1: "avx2", 2: "avx512"}
CODES = {"tanh": 0, "relu": 1, "sigmoid": 2, "leaky_relu": 3, "identity": 4}


def _build(which, x, h=None, code=0, slope=0.2):
    out = _rnn._elementwise_build(which, x, h, code, slope)
    if out is None:
        pytest.skip(f"this CPU cannot run the {BUILDS[which]} build")
    return out


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
@pytest.mark.parametrize("nl", list(CODES))
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
def test_every_build_of_the_activations(rng, which, nl, n):
    # odd lengths leave a scalar tail after the vector loop
    from conftest import reference_activation

    x = (rng.normal(size=n) * 4).astype(np.float32)
    x[0] = np.nan if n > 1 else x[0]
    y = _build(which, x, code=CODES[nl])
    expected = reference_activation(x.astype(np.float64), nl, 0.2)
    expected[np.isnan(x)] = np.nan  # every activation passes NaN through (relu included)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=0, atol=2e-6)


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
@pytest.mark.parametrize("nl", list(CODES))
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
def test_every_build_of_the_derivatives(rng, which, nl, n):
    g = rng.normal(size=n).astype(np.float32)
    h = reference_activation_of_normal(rng, n, nl)
    out = _build(which, g, h, code=CODES[nl])
    g64, h64 = g.astype(np.float64), h.astype(np.float64)
    derivative = {"tanh": 1 - h64**2, "relu": (h64 > 0) * 1.0, "sigmoid": h64 * (1 - h64),
                  "leaky_relu": np.where(h64 > 0, 1.0, 0.2), "identity": np.ones(n)}[nl]
    np.testing.assert_allclose(out, g64 * derivative, rtol=0, atol=2e-6)


def reference_activation_of_normal(rng, n, nl):
    from conftest import reference_activation

    return reference_activation(rng.normal(size=n), nl, 0.2).astype(np.float32)


@needs_build
def test_builds_agree_on_a_wide_grid():
    # the same source compiled three times: equal up to the rounding of fused multiply-adds
    x = np.linspace(-10, 10, 100_001).astype(np.float32)
    builds = [_rnn._elementwise_build(which, x) for which in BUILDS]
    runnable = [y for y in builds if y is not None]
    assert len(runnable) >= 1 and builds[0] is not None
    for y in runnable[1:]:
        np.testing.assert_allclose(y, runnable[0], rtol=0, atol=5e-7)
    np.testing.assert_allclose(runnable[0], np.tanh(x.astype(np.float64)), rtol=0, atol=2e-6)


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
def test_every_build_of_the_float64_exp(which):
    # the sampler's exp: within 2 ulp of NumPy's (itself within 1 ulp) down to -708, where
    # results are still normal; 0 below, inf past the overflow threshold, NaN for NaN
    x = np.concatenate([np.linspace(-708, 709.78, 200_001), [0.0, 1e-300, -1e-300, 709.78]])
    y = _rnn._exp_build(which, x)
    if y is None:
        pytest.skip(f"this CPU cannot run the {BUILDS[which]} build")
    np.testing.assert_allclose(y, np.exp(x), rtol=4.5e-16, atol=0)
    special = np.array([-708.5, -745.0, -1e308, -np.inf, 709.79, 1e308, np.inf, np.nan])
    np.testing.assert_array_equal(_rnn._exp_build(which, special),
                                  [0, 0, 0, 0, np.inf, np.inf, np.inf, np.nan])


@needs_build
@pytest.mark.parametrize("which", list(BUILDS), ids=list(BUILDS.values()))
@pytest.mark.parametrize("rows, n", [(1, 1), (3, 7), (5, 16), (37, 65)])
def test_every_build_of_the_row_sums(rng, dtype, which, rows, n):
    # a bias added to every row, and its gradient: the column sums
    block = rng.normal(size=(rows, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    added = _rnn._rows_build(which, block, bias, False)
    if added is None:
        pytest.skip(f"this CPU cannot run the {BUILDS[which]} build")
    np.testing.assert_allclose(added, block.astype(np.float64) + bias, rtol=0, atol=TOL[dtype])
    summed = _rnn._rows_build(which, bias, block, True)
    np.testing.assert_allclose(summed, bias + block.astype(np.float64).sum(axis=0), rtol=0,
                               atol=TOL[dtype] * rows)
