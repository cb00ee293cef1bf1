"""Compiled Elman RNN kernels: the recurrences of the forward pass and of BPTT, and the fused
training step and forward pass that wrap them.

``rnn_forward``, ``rnn_backward``, ``rnn_backward_window`` and ``embedding_grad`` (this file)
run only what must run step by step. ``_stack.pxi`` runs a whole training step or forward pass
of a stack of layers (Elman, or the gated cells through their epilogues in ``_gated.h``), one or
two directions each (projections, recurrences, output layer, loss, BPTT, weight gradients) in
one call, on shards of the batch on threads of its own:
``_stack_step`` and ``_stack_outputs``, and the single-layer case ``elman_loss_and_grad`` and
``elman_forward``. ``_hooks.pxi`` holds the test hooks of the C helpers.
``cyrnn.kernels.numpy_backend`` and ``numpy_fused`` are the twins of this module, with the same
functions, arguments, results and errors.

Each ``def`` checks and converts its arguments in Python (``cyrnn._checks``), allocates results
and workspaces with the NumPy C API, then runs the whole time loop in one ``nogil`` block of
pointer arithmetic, matrix products (``_blas.pxd``: cyrnn's own kernel or BLAS) and fused
elementwise loops (``_act.pxd``). Arrays are time-major and C-contiguous: a (T, B, H) array is
T blocks of B*H values.
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport log, sqrt
from libc.string cimport memcpy, memset

from cyrnn._act cimport (SIGMOID, activate, add_row_sums, add_to_rows, elementwise_build,
                         elementwise_widest, exp_build, exp_f32_build, exp_inplace,
                         rows_build_f32, rows_build_f64, times_derivative)
from cyrnn._blas cimport (BLAS_GEMV_SINGLE_THREAD_MAX_WORK, BLAS_SINGLE_THREAD_MAX_WORK,
                          OWN_KERNEL_MAX_WORK_AVX2, blas_threads, dgemm_build, dgemm_small,
                          dpack_panels, dpack_panels_t, gemm, gemm_panels, on_own_kernel,
                          own_kernel_available, panel_columns, sgemm_build, sgemm_small,
                          spack_panels, spack_panels_t, sum_of_squares)
from scipy.linalg.cython_blas cimport sgemm

import threading

import numpy as np

from cyrnn import _checks, _threads
from cyrnn.kernels.numpy_fused import _model_args, _output_code, _step_args

cnp.import_array()

cdef enum:
    # rows of a BPTT block in the fused step (see shard_buffers)
    BLOCK_ROWS = 256
    # a gated weight gradient of at most this many columns is computed transposed (see
    # weight_gradient)
    NARROW_GRADIENT = 128
    # the training step in shards of the batch (see shard_count): at most this many, and only
    # from this much work, T*B*H*(H + I + O) multiply-adds of the forward pass, on (about 0.1 ms
    # of arithmetic at one core's speed: starting a thread costs tens of microseconds)
    MAX_SHARDS = 8
    MIN_SHARDED_WORK = 1 << 23
    # ... and with at least 32 sequences a shard where Whh has more values than this (8 MiB of
    # float32, past the L2 caches and most of a shared L3)
    LARGE_WEIGHTS = 1 << 21
    # workspaces kept between calls, per thread (see Workspace): sets of buffers, bytes in all
    KEPT_SETS = 4
    MAX_KEPT_BYTES = 256 << 20
    # from this batch size on, rnn_forward multiplies by a transposed copy of Whh (see there)
    TRANSPOSE_MIN_BATCH = 2
    # a gated layer's dense input projection runs step by step inside the recurrence (see
    # projects_per_step) where Wxh^T has at most this many bytes, so that it stays in cache
    # beside Whh^T from step to step
    STEP_PROJECTION_MAX_BYTES = 1 << 20
    # values per exp call of a softmax: rows of logits are shifted by their maximum, then
    # exponentiated together, in blocks of about this many values (short rows, one call for many)
    EXP_BLOCK = 1024


cdef inline void* data(object a):
    """Pointer to the first element of a checked C-contiguous ndarray, or NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray> a)


cdef cnp.ndarray empty(tuple shape, object dtype):
    """Uninitialised C-contiguous array, allocated through the NumPy C API."""
    cdef cnp.npy_intp dims[3]
    cdef int nd = len(shape), i
    for i in range(nd):
        dims[i] = shape[i]
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32 if dtype == np.float32 else cnp.NPY_FLOAT64, 0)


cdef inline void add(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    """y[i] += x[i]."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] += x[i]


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

cdef void forward(const floating* xw, const floating* h0, const floating* W, bint W_is_WhhT,
                  floating* hs, const Py_ssize_t* lengths, Py_ssize_t T, Py_ssize_t B,
                  Py_ssize_t H, int code, floating slope, bint reverse) noexcept nogil:
    # W is Whh, or its transpose (a contiguous copy) when W_is_WhhT. hs[t + 1] is the state at
    # step t. Forward: hs[0] = h0, steps 0 .. T-1. With `reverse` (the second direction of a
    # bidirectional layer; no lengths), hs has T + 2 blocks, hs[T + 1] = h0, and the steps run
    # from T-1 down to 0, each from the state of the step after it.
    cdef Py_ssize_t BH = B * H, t, b, s
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* h
    cdef const floating* h_prev
    memcpy(hs + (T + 1) * BH if reverse else hs, h0, B * row_bytes)
    for s in range(T):
        t = T - 1 - s if reverse else s
        h = hs + (t + 1) * BH
        h_prev = h + BH if reverse else h - BH
        if h != xw + t * BH:  # the fused step projects straight into hs[1:]
            memcpy(h, xw + t * BH, B * row_bytes)
        # a_t (B, H) = xw_t (B, H) + h_{t-1} (B, H) Whh^T (H, H)
        gemm(False, not W_is_WhhT, <int> B, <int> H, <int> H, 1, h_prev, <int> H, W, <int> H, 1, h,
             <int> H)
        if lengths == NULL:
            # h_t = f(a_t)
            activate(h, BH, code, slope)
        else:
            for b in range(B):
                if t < lengths[b]:
                    activate(h + b * H, H, code, slope)
                else:
                    # padding: the sequence keeps its state
                    memcpy(h + b * H, h_prev + b * H, row_bytes)


def rnn_forward(xw, h0, Whh, nonlinearity="tanh", *, negative_slope=0.01, lengths=None, out=None):
    """rnn_forward(xw, h0, Whh, nonlinearity="tanh", *, negative_slope=0.01, lengths=None, out=None)

    Run the Elman recurrence ``hs[t + 1] = f(xw[t] + hs[t] @ Whh.T)``: per step one GEMM into the
    state block, then one fused activation pass. The full contract (shapes, lengths, errors) is
    the docstring of the NumPy twin, which ``cyrnn.kernels`` copies here at import.
    """
    xw, h0, Whh, code, slope, lengths, hs = _checks.forward_args(
        xw, h0, Whh, nonlinearity, negative_slope, lengths, out
    )
    cdef Py_ssize_t T = xw.shape[0], B = xw.shape[1], H = xw.shape[2]
    cdef int c = code
    cdef double s = slope
    cdef void* p_xw = data(xw)
    cdef void* p_h0 = data(h0)
    cdef void* p_Whh = data(Whh)
    cdef void* p_hs = data(hs)
    cdef const Py_ssize_t* p_len = <const Py_ssize_t*> data(lengths)
    # OpenBLAS's GEMM reads a transposed operand more slowly (measured: 106 ms vs 89 ms for the
    # whole forward at T=50, B=64, H=1024; 1.25 vs 0.74 ms at T=100, B=16, H=128); from B = 2 on,
    # one transposed copy of Whh per call pays for itself. For B = 1 it does not (a GEMV either
    # way), except where the GEMV is large enough for OpenBLAS to run it on several threads.
    cdef bint transposed = B >= TRANSPOSE_MIN_BATCH or H * H > BLAS_GEMV_SINGLE_THREAD_MAX_WORK
    if transposed:
        WhhT = np.ascontiguousarray(Whh.T)
        p_Whh = data(WhhT)
    if xw.dtype == np.float32:
        with nogil:
            forward(<float*> p_xw, <float*> p_h0, <float*> p_Whh, transposed, <float*> p_hs, p_len,
                    T, B, H, c, <float> s, False)
    else:
        with nogil:
            forward(<double*> p_xw, <double*> p_h0, <double*> p_Whh, transposed, <double*> p_hs,
                    p_len, T, B, H, c, s, False)
    return hs


# ---------------------------------------------------------------------------------------------
# full BPTT
# ---------------------------------------------------------------------------------------------

cdef void backward_in_place(floating* g, const floating* hs, const floating* Whh,
                            const floating* dh_last, const floating* carry, double* squares,
                            floating* dh0, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, int code,
                            floating slope, bint reverse) noexcept nogil:
    # On entry g[t] holds dh_out_t, on return da_t. Step t's error reaches the state it started
    # from as one GEMM accumulating into that state's g, which then holds all of dL/dh there: no
    # other buffer, and one elementwise pass per step. squares[t] += ||dL/dh_t||^2. dh_last may
    # be dh0 (read first, written last). hs[t + 1] is the state at step t. Forward, step t
    # starts from step t - 1 and carry[t] scales its error into it; with `reverse` (steps run
    # from T-1 down to 0), step t starts from step t + 1 and its carry is carry[-t] (the caller
    # points carry at the scale of step 0 in the processing order of this block's step 0).
    cdef Py_ssize_t BH = B * H, t, i
    cdef floating* g_t
    cdef floating scale
    if dh_last != NULL:
        add(g if reverse else g + (T - 1) * BH, dh_last, BH)
    for i in range(T):
        t = i if reverse else T - 1 - i
        g_t = g + t * BH
        squares[t] += sum_of_squares(BH, g_t)
        # da_t = g_t * f'(h_t), in place
        times_derivative(g_t, g_t, hs + (t + 1) * BH, BH, code, slope)
        # g_{t-1} (B, H) += c_t da_t (B, H) Whh (H, H); from the last step, dh0 = c da Whh
        scale = 1 if carry == NULL else carry[-t if reverse else t]
        if scale == 0:
            if i == T - 1:
                memset(dh0, 0, BH * sizeof(floating))
        elif i < T - 1:
            gemm(False, False, <int> B, <int> H, <int> H, scale, g_t, <int> H, Whh, <int> H, 1,
                 g_t + BH if reverse else g_t - BH, <int> H)
        else:
            gemm(False, False, <int> B, <int> H, <int> H, scale, g_t, <int> H, Whh, <int> H, 0,
                 dh0, <int> H)


cdef void backward(const floating* dh_out, const floating* hs, const floating* Whh,
                   const floating* dh_last, const floating* carry, const Py_ssize_t* lengths,
                   floating* da, floating* dh0, double* squares, floating* work,
                   Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, int code,
                   floating slope) noexcept nogil:
    # Without padding: BPTT in place of a copy of dh_out (backward_in_place). With padding, g
    # holds dL/dh for the state after step t: first what later steps sent back (and dh_last),
    # then plus the state's own output gradient. `work` is two (B, H) buffers, swapped each step.
    cdef Py_ssize_t BH = B * H, t, b, row
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* g = work
    cdef floating* g_back = work + BH
    cdef floating* swap
    cdef floating scale
    if lengths == NULL:
        memcpy(da, dh_out, T * BH * sizeof(floating))
        backward_in_place(da, hs, Whh, dh_last, carry, squares, dh0, T, B, H, code, slope, False)
        return
    if dh_last != NULL:
        memcpy(g, dh_last, B * row_bytes)
    else:
        memset(g, 0, B * row_bytes)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            row = b * H
            if t < lengths[b]:
                add(g + row, dh_out + t * BH + row, H)
                times_derivative(da + t * BH + row, g + row, hs + (t + 1) * BH + row, H,
                                 code, slope)
            else:
                memset(da + t * BH + row, 0, row_bytes)
        squares[t] = sum_of_squares(BH, g)

        # g_t = carry_t da_t Whh, plus the unchanged g_{t+1} of sequences frozen at step t
        scale = 1 if carry == NULL else carry[t]
        for b in range(B):
            if t < lengths[b]:
                memset(g_back + b * H, 0, row_bytes)
            else:
                memcpy(g_back + b * H, g + b * H, row_bytes)
        if scale != 0:
            # (B, H) += scale * da_t (B, H) Whh (H, H)
            gemm(False, False, <int> B, <int> H, <int> H, scale, da + t * BH, <int> H, Whh,
                 <int> H, 1, g_back, <int> H)
        swap = g
        g = g_back
        g_back = swap
    memcpy(dh0, g, B * row_bytes)


def rnn_backward(dh_out, hs, Whh, nonlinearity="tanh", *, negative_slope=0.01, dh_last=None,
                 carry=None, lengths=None):
    """rnn_backward(dh_out, hs, Whh, nonlinearity="tanh", *, negative_slope=0.01, dh_last=None, carry=None, lengths=None)

    Backpropagate through time over the whole sequence; per step one fused pass
    (``da_t = g * f'(h)``), one dot for the gradient norm and one GEMM (``g_t = c_t da_t Whh``).
    The full contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    dh_out, hs, Whh, code, slope, dh_last, lengths = _checks.backward_args(
        dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths
    )
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2]
    carry = _checks.carry_array(carry, T, dh_out.dtype)
    dtype = dh_out.dtype
    da = empty((T, B, H), dtype)
    dh0 = empty((B, H), dtype)
    squares = np.zeros(T)  # ||dL/dh_t||^2, in double
    work = empty((2, B, H), dtype)
    cdef int c = code
    cdef double s = slope
    cdef void* p_dh_out = data(dh_out)
    cdef void* p_hs = data(hs)
    cdef void* p_Whh = data(Whh)
    cdef void* p_dh_last = data(dh_last)
    cdef void* p_carry = data(carry)
    cdef const Py_ssize_t* p_len = <const Py_ssize_t*> data(lengths)
    cdef void* p_da = data(da)
    cdef void* p_dh0 = data(dh0)
    cdef double* p_squares = <double*> data(squares)
    cdef void* p_work = data(work)
    if dtype == np.float32:
        with nogil:
            backward(<float*> p_dh_out, <float*> p_hs, <float*> p_Whh, <float*> p_dh_last,
                     <float*> p_carry, p_len, <float*> p_da, <float*> p_dh0, p_squares,
                     <float*> p_work, T, B, H, c, <float> s)
    else:
        with nogil:
            backward(<double*> p_dh_out, <double*> p_hs, <double*> p_Whh, <double*> p_dh_last,
                     <double*> p_carry, p_len, <double*> p_da, <double*> p_dh0,
                     p_squares, <double*> p_work, T, B, H, c, s)
    return da, dh0, np.sqrt(squares).astype(dtype)


# ---------------------------------------------------------------------------------------------
# windowed BPTT: each output's error flows back at most k (or k_t) steps
# ---------------------------------------------------------------------------------------------

cdef void mask_times_derivative(floating* out, const floating* g, const floating* hs,
                                const Py_ssize_t* lengths, const Py_ssize_t* windows,
                                Py_ssize_t depth, Py_ssize_t S, Py_ssize_t B, Py_ssize_t H,
                                int code, floating slope) noexcept nogil:
    """out[s] = g[s] * f'(hs[s + 1]) for the first S steps; zero on padded steps and where the
    output at step s + depth does not reach back to s (windows[s + depth] <= depth)."""
    cdef Py_ssize_t BH = B * H, s, b, row
    for s in range(S):
        if windows != NULL and depth >= windows[s + depth]:
            memset(out + s * BH, 0, BH * sizeof(floating))
        elif lengths == NULL:
            times_derivative(out + s * BH, g + s * BH, hs + BH + s * BH, BH, code, slope)
        else:
            for b in range(B):
                row = s * BH + b * H
                if s < lengths[b]:
                    times_derivative(out + row, g + row, hs + BH + row, H, code, slope)
                else:
                    memset(out + row, 0, H * sizeof(floating))


cdef void backward_window(const floating* error, const floating* hs, const floating* Whh,
                          const Py_ssize_t* lengths, const Py_ssize_t* windows, floating* da,
                          floating* dh0, floating* depth, floating* depth_next,
                          floating* reach_h0, Py_ssize_t longest, Py_ssize_t T, Py_ssize_t B,
                          Py_ssize_t H, int code, floating slope) noexcept nogil:
    # depth[s] is what the output at step s + j sends to the pre-activation a_s, for s < T - j.
    # reach_h0 sums depth[0] over the j whose output's window still includes step -1
    # (j <= k_j - 2). `windows` is NULL when every output looks back `longest` steps.
    cdef Py_ssize_t BH = B * H, j, rows
    cdef floating* swap
    # D_0[s] = e_s * f'(h_s)
    mask_times_derivative(depth, error, hs, lengths, windows, 0, T, B, H, code, slope)
    memcpy(da, depth, T * BH * sizeof(floating))
    if (longest if windows == NULL else windows[0]) >= 2:
        memcpy(reach_h0, depth, BH * sizeof(floating))
    else:
        memset(reach_h0, 0, BH * sizeof(floating))
    for j in range(1, min(longest, T)):
        rows = (T - j) * B
        # D_j[s] ((T-j)*B, H) = D_{j-1}[s + 1] ((T-j)*B, H) Whh (H, H), all s at once
        gemm(False, False, <int> rows, <int> H, <int> H, 1, depth + BH, <int> H, Whh, <int> H, 0,
             depth_next, <int> H)
        # D_j[s] *= f'(h_s), or 0 beyond the window of output s + j
        mask_times_derivative(depth_next, depth_next, hs, lengths, windows, j, T - j, B, H, code,
                              slope)
        add(da, depth_next, rows * H)
        if j <= (longest if windows == NULL else windows[j]) - 2:
            add(reach_h0, depth_next, BH)
        swap = depth
        depth = depth_next
        depth_next = swap
    # dh0 (B, H) += reach_h0 (B, H) Whh (H, H)
    gemm(False, False, <int> B, <int> H, <int> H, 1, reach_h0, <int> H, Whh, <int> H, 1, dh0,
         <int> H)


def rnn_backward_window(dh_out, hs, Whh, window, nonlinearity="tanh", *, negative_slope=0.01,
                        dh_last=None, lengths=None):
    """rnn_backward_window(dh_out, hs, Whh, window, nonlinearity="tanh", *, negative_slope=0.01, dh_last=None, lengths=None)

    Backpropagate each output's error at most ``window`` (or ``window[t]``) steps back, by
    depth: one ``((T - j) * B, H) x (H, H)`` GEMM per depth ``j`` below the longest window. The
    full contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    dh_out, hs, Whh, code, slope, dh_last, lengths = _checks.backward_args(
        dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths
    )
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2]
    longest, windows = _checks.window_sizes(window, T)
    cdef Py_ssize_t k = longest
    error, dh0 = _checks.window_error(dh_out, dh_last, lengths)
    dtype = dh_out.dtype
    da = empty((T, B, H), dtype)
    depth = empty((T, B, H), dtype)
    depth_next = empty((T, B, H), dtype)
    reach_h0 = empty((B, H), dtype)
    cdef int c = code
    cdef double s = slope
    cdef void* p_error = data(error)
    cdef void* p_hs = data(hs)
    cdef void* p_Whh = data(Whh)
    cdef const Py_ssize_t* p_len = <const Py_ssize_t*> data(lengths)
    cdef const Py_ssize_t* p_win = <const Py_ssize_t*> data(windows)
    cdef void* p_da = data(da)
    cdef void* p_dh0 = data(dh0)
    cdef void* p_depth = data(depth)
    cdef void* p_next = data(depth_next)
    cdef void* p_reach = data(reach_h0)
    if dtype == np.float32:
        with nogil:
            backward_window(<float*> p_error, <float*> p_hs, <float*> p_Whh, p_len, p_win,
                            <float*> p_da, <float*> p_dh0, <float*> p_depth, <float*> p_next,
                            <float*> p_reach, k, T, B, H, c, <float> s)
    else:
        with nogil:
            backward_window(<double*> p_error, <double*> p_hs, <double*> p_Whh, p_len, p_win,
                            <double*> p_da, <double*> p_dh0, <double*> p_depth,
                            <double*> p_next, <double*> p_reach, k, T, B, H, c, s)
    return da, dh0


# ---------------------------------------------------------------------------------------------
# gradient of the token-id projection (a row gather)
# ---------------------------------------------------------------------------------------------

cdef void scatter_add_rows(floating* dW, const Py_ssize_t* ids, const floating* grad,
                           Py_ssize_t N, Py_ssize_t H) noexcept nogil:
    cdef Py_ssize_t n
    for n in range(N):
        # dW[ids[n]] (H,) += grad[n] (H,)
        add(dW + ids[n] * H, grad + n * H, H)


def embedding_grad(ids, grad, num_rows):
    """embedding_grad(ids, grad, num_rows)

    Gradient of a row gather ``out[n] = W[ids[n]]``: a scatter-add of the rows of ``grad``. The
    full contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    ids, grad, num_rows = _checks.embedding_grad_args(ids, grad, num_rows)
    cdef Py_ssize_t N = grad.shape[0], H = grad.shape[1]
    dW = np.zeros((num_rows, H), dtype=grad.dtype)
    cdef const Py_ssize_t* p_ids = <const Py_ssize_t*> data(ids)
    cdef void* p_grad = data(grad)
    cdef void* p_dW = data(dW)
    if grad.dtype == np.float32:
        with nogil:
            scatter_add_rows(<float*> p_dW, p_ids, <float*> p_grad, N, H)
    else:
        with nogil:
            scatter_add_rows(<double*> p_dW, p_ids, <double*> p_grad, N, H)
    return dW


# the whole training step and forward pass of a stack of layers, on shards of the batch
include "_stack.pxi"

# what runs on this machine, and hooks for the tests of the C helpers
include "_hooks.pxi"
