"""Compiled Elman RNN kernels: the recurrences of the forward pass and of BPTT, and the fused
training step and forward pass that wrap them.

``rnn_forward``, ``rnn_backward``, ``rnn_backward_window`` and ``embedding_grad`` run only what
must run step by step; ``elman_loss_and_grad`` and ``elman_forward`` run a whole training step
or forward pass (projection, recurrence, output layer, loss, BPTT, weight gradients) in one
call. ``cyrnn.kernels.numpy_backend`` and ``numpy_fused`` are the line-by-line twins of this
module, with the same functions, arguments, results and errors.

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
                          blas_threads, dgemm_build, gemm, own_kernel_available, sgemm_build,
                          sum_of_squares)
from scipy.linalg.cython_blas cimport sgemm

import threading

import numpy as np

from cyrnn import _checks, _threads
from cyrnn.kernels.numpy_fused import _model_args, _output_code, _step_args

cnp.import_array()

cdef enum:
    # rows of a BPTT block in the fused step (see step_buffers)
    BLOCK_ROWS = 256
    # the training step in shards of the batch (see shard_count): at most this many, and only
    # from this much work, T*B*H*(H + I + O) multiply-adds of the forward pass, on (about 0.1 ms
    # of arithmetic at one core's speed: starting a thread costs tens of microseconds)
    MAX_SHARDS = 8
    MIN_SHARDED_WORK = 1 << 23
    # workspaces kept between calls, per thread (see Workspace)
    MAX_KEPT_BYTES = 256 << 20
    # from this batch size on, rnn_forward multiplies by a transposed copy of Whh (see there)
    TRANSPOSE_MIN_BATCH = 2
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
                  Py_ssize_t H, int code, floating slope) noexcept nogil:
    # W is Whh, or its transpose (a contiguous copy) when W_is_WhhT
    cdef Py_ssize_t BH = B * H, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* h
    cdef const floating* h_prev
    memcpy(hs, h0, B * row_bytes)
    for t in range(T):
        h_prev = hs + t * BH
        h = hs + (t + 1) * BH
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
                    T, B, H, c, <float> s)
    else:
        with nogil:
            forward(<double*> p_xw, <double*> p_h0, <double*> p_Whh, transposed, <double*> p_hs,
                    p_len, T, B, H, c, s)
    return hs


# ---------------------------------------------------------------------------------------------
# full BPTT
# ---------------------------------------------------------------------------------------------

cdef void backward_in_place(floating* g, const floating* hs, const floating* Whh,
                            const floating* dh_last, const floating* carry, floating* grad_norms,
                            floating* dh0, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, int code,
                            floating slope) noexcept nogil:
    # On entry g[t] holds dh_out_t, on return da_t. Step t's error reaches step t - 1 as one
    # GEMM accumulating into g[t - 1], which then holds all of dL/dh there: no other buffer, and
    # one elementwise pass per step. dh_last may be dh0 (read first, written last).
    cdef Py_ssize_t BH = B * H, t
    cdef floating* g_t
    cdef floating scale
    if dh_last != NULL:
        add(g + (T - 1) * BH, dh_last, BH)
    for t in range(T - 1, -1, -1):
        g_t = g + t * BH
        grad_norms[t] = sqrt(sum_of_squares(BH, g_t))
        # da_t = g_t * f'(h_t), in place
        times_derivative(g_t, g_t, hs + (t + 1) * BH, BH, code, slope)
        # g_{t-1} (B, H) += c_t da_t (B, H) Whh (H, H); from step 0, dh0 = c_0 da_0 Whh
        scale = 1 if carry == NULL else carry[t]
        if scale == 0:
            if t == 0:
                memset(dh0, 0, BH * sizeof(floating))
        elif t > 0:
            gemm(False, False, <int> B, <int> H, <int> H, scale, g_t, <int> H, Whh, <int> H, 1,
                 g_t - BH, <int> H)
        else:
            gemm(False, False, <int> B, <int> H, <int> H, scale, g_t, <int> H, Whh, <int> H, 0,
                 dh0, <int> H)


cdef void backward(const floating* dh_out, const floating* hs, const floating* Whh,
                   const floating* dh_last, const floating* carry, const Py_ssize_t* lengths,
                   floating* da, floating* dh0, floating* grad_norms, floating* work,
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
        backward_in_place(da, hs, Whh, dh_last, carry, grad_norms, dh0, T, B, H, code, slope)
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
        grad_norms[t] = sqrt(sum_of_squares(BH, g))

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
    grad_norms = empty((T,), dtype)
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
    cdef void* p_norms = data(grad_norms)
    cdef void* p_work = data(work)
    if dtype == np.float32:
        with nogil:
            backward(<float*> p_dh_out, <float*> p_hs, <float*> p_Whh, <float*> p_dh_last,
                     <float*> p_carry, p_len, <float*> p_da, <float*> p_dh0, <float*> p_norms,
                     <float*> p_work, T, B, H, c, <float> s)
    else:
        with nogil:
            backward(<double*> p_dh_out, <double*> p_hs, <double*> p_Whh, <double*> p_dh_last,
                     <double*> p_carry, p_len, <double*> p_da, <double*> p_dh0,
                     <double*> p_norms, <double*> p_work, T, B, H, c, s)
    return da, dh0, grad_norms


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


# ---------------------------------------------------------------------------------------------
# a whole training step in one call: projection, recurrence, output layer, loss, BPTT, gradients
# ---------------------------------------------------------------------------------------------

cdef void shift_by_row_max(floating* z, Py_ssize_t N, Py_ssize_t O) noexcept nogil:
    """Each row of z (N, O) minus its maximum, in place (the softmax's shift: exps <= 1)."""
    cdef Py_ssize_t n, o
    cdef floating m
    cdef floating* row
    for n in range(N):
        row = z + n * O
        m = row[0]
        for o in range(1, O):
            m = row[o] if row[o] > m else m
        for o in range(O):
            row[o] = row[o] - m


cdef double softmax_cross_entropy(floating* z, const Py_ssize_t* target, Py_ssize_t N,
                                  Py_ssize_t O, floating scale) noexcept nogil:
    """Rows of logits z (N, O) -> scale * (softmax(z) - onehot(target)) in place; returns the
    summed loss sum_n log(sum_o exp z_no) - z_n,target (accumulated in double)."""
    cdef Py_ssize_t n, o, first = 0, last, rows = max(1, EXP_BLOCK // O)
    cdef floating total_exp, inv
    cdef floating* row
    cdef double loss = 0
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        shift_by_row_max(z + first * O, last - first, O)
        for n in range(first, last):
            loss -= z[n * O + target[n]]
        exp_inplace(z + first * O, (last - first) * O)
        for n in range(first, last):
            row = z + n * O
            total_exp = 0
            for o in range(O):
                total_exp += row[o]
            loss += log(total_exp)
            inv = scale / total_exp
            for o in range(O):
                row[o] *= inv
            row[target[n]] -= scale
        first = last
    return loss


cdef double squared_error(floating* z, const floating* target, Py_ssize_t n,
                          floating scale) noexcept nogil:
    """z (n,) -> 2 scale (z - target) in place; returns sum (z - target)^2. As in the NumPy twin,
    the difference is taken in the dtype of z and squared and summed in double: in float32 a
    difference above 1.8e19 would square to inf."""
    cdef Py_ssize_t i
    cdef double loss = 0, d
    cdef floating diff
    for i in range(n):
        diff = z[i] - target[i]
        d = diff
        loss += d * d
        z[i] = 2 * scale * diff
    return loss


cdef void forward_layers(
        const Py_ssize_t* tokens, const floating* x, const floating* h0, const floating* Wxh,
        const floating* WxhT, const floating* Whh, const floating* WhhT, const floating* bh,
        const floating* Why, const floating* WhyT,
        const floating* by, floating* hs, floating* z, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
        Py_ssize_t H, Py_ssize_t O, int code, floating slope) noexcept nogil:
    """States hs (T + 1, B, H) and logits z (T*B, O) of token ids or dense inputs x. ``WxhT``,
    ``WhhT`` and ``WhyT``, where not NULL, are contiguous copies of the transposed weights: rows
    of WxhT gather without striding, and products with untransposed operands run faster (on
    cyrnn's own kernel, which needs them; OpenBLAS reads a transposed operand more slowly)."""
    cdef Py_ssize_t TB = T * B, BH = B * H, n, j
    cdef floating* row
    # 1. input projection, straight into the state buffer: hs[1:] = x Wxh^T + bh
    if tokens != NULL and WxhT != NULL:
        for n in range(TB):
            # a row gather: row tokens[n] of Wxh^T (I, H)
            row = hs + BH + n * H
            for j in range(H):
                row[j] = WxhT[tokens[n] * H + j] + bh[j]
    elif tokens != NULL:
        for n in range(TB):
            # the same from Wxh itself: column tokens[n] of Wxh (H, I)
            row = hs + BH + n * H
            for j in range(H):
                row[j] = Wxh[j * I + tokens[n]] + bh[j]
    else:
        # (T*B, H) = x (T*B, I) Wxh^T (I, H)
        if WxhT != NULL:
            gemm(False, False, <int> TB, <int> H, <int> I, 1, x, <int> I, WxhT, <int> H, 0,
                 hs + BH, <int> H)
        else:
            gemm(False, True, <int> TB, <int> H, <int> I, 1, x, <int> I, Wxh, <int> I, 0,
                 hs + BH, <int> H)
        add_to_rows(hs + BH, bh, TB, H)
    # 2. the recurrence, in place: hs[t + 1] = f(hs[t + 1] + hs[t] Whh^T)
    if WhhT != NULL:
        forward(hs + BH, h0, WhhT, True, hs, NULL, T, B, H, code, slope)
    else:
        forward(hs + BH, h0, Whh, False, hs, NULL, T, B, H, code, slope)
    # 3. logits (T*B, O) = hs[1:] (T*B, H) Why^T (H, O) + by
    if WhyT != NULL:
        gemm(False, False, <int> TB, <int> O, <int> H, 1, hs + BH, <int> H, WhyT, <int> O, 0, z,
             <int> O)
    else:
        gemm(False, True, <int> TB, <int> O, <int> H, 1, hs + BH, <int> H, Why, <int> H, 0, z,
             <int> O)
    add_to_rows(z, by, TB, O)


cdef void softmax_rows(floating* z, Py_ssize_t N, Py_ssize_t O) noexcept nogil:
    """Each row of z (N, O) replaced by its softmax (shifted by the row maximum)."""
    cdef Py_ssize_t n, o, first = 0, last, rows = max(1, EXP_BLOCK // O)
    cdef floating total
    cdef floating* row
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        shift_by_row_max(z + first * O, last - first, O)
        exp_inplace(z + first * O, (last - first) * O)
        for n in range(first, last):
            row = z + n * O
            total = 0
            for o in range(O):
                total += row[o]
            total = 1 / total
            for o in range(O):
                row[o] *= total
        first = last


cdef tuple transposed_weights(Wxh, Whh, Why, Py_ssize_t T, Py_ssize_t B, bint tokens):
    """Contiguous copies of Whh^T, Wxh^T and Why^T for forward_layers, or None where not worth
    one. Whh^T serves from a batch of two on (a single row is a GEMV either way). For token ids,
    Wxh^T's rows gather and scatter faster than Wxh's strided columns once there are at least as
    many tokens as rows to transpose. For the whole-sequence products, from the size on which
    products may run on cyrnn's own kernel (which needs the untransposed operand); below it the
    copy costs more than it saves."""
    cdef Py_ssize_t H = Whh.shape[0], I = Wxh.shape[1], O = Why.shape[0]
    # (for a batch of one only where a GEMV would be large enough for BLAS to thread it)
    WhhT = (np.ascontiguousarray(Whh.T)
            if B >= TRANSPOSE_MIN_BATCH or H * H > BLAS_GEMV_SINGLE_THREAD_MAX_WORK else None)
    if tokens:
        WxhT = np.ascontiguousarray(Wxh.T) if I <= T * B else None
    else:
        WxhT = np.ascontiguousarray(Wxh.T) if T * B * I * H > BLAS_SINGLE_THREAD_MAX_WORK else None
    WhyT = np.ascontiguousarray(Why.T) if T * B * H * O > BLAS_SINGLE_THREAD_MAX_WORK else None
    return WhhT, WxhT, WhyT


cdef double loss_and_grad_step(
        const Py_ssize_t* tokens, const floating* x, const Py_ssize_t* target_ids,
        const floating* target_values, const floating* h0, const floating* Wxh,
        const floating* WxhT, floating* dWxhT, const floating* Whh, const floating* WhhT,
        const floating* bh, const floating* Why, const floating* WhyT, const floating* by,
        const floating* carry,
        const Py_ssize_t* windows,
        Py_ssize_t longest, floating* hs, floating* z, floating* da, floating* work,
        floating* depth, floating* depth_next, floating* grad_norms, floating* dWxh,
        floating* dWhh, floating* dbh,
        floating* dWhy, floating* dby, floating* dh0, floating* dx, Py_ssize_t T, Py_ssize_t B,
        Py_ssize_t I, Py_ssize_t H, Py_ssize_t O, Py_ssize_t block, int code, floating slope,
        floating scale) noexcept nogil:
    cdef Py_ssize_t TB = T * B, BH = B * H, n, j
    cdef const floating* grad_row
    cdef double loss
    # 1-3. projection, recurrence, logits z
    forward_layers(tokens, x, h0, Wxh, WxhT, Whh, WhhT, bh, Why, WhyT, by, hs, z, T, B, I, H, O,
                   code, slope)
    # 4. loss, and dL/dz in place of z
    if target_ids != NULL:
        loss = softmax_cross_entropy(z, target_ids, TB, O, scale)
    else:
        loss = squared_error(z, target_values, TB * O, scale)
    # 5. dWhy (O, H) = dz^T (O, T*B) hs[1:] (T*B, H);  dby = column sums of dz
    gemm(True, False, <int> O, <int> H, <int> TB, 1, z, <int> O, hs + BH, <int> H, 0, dWhy,
         <int> H)
    memset(dby, 0, O * sizeof(floating))
    add_row_sums(dby, z, TB, O)
    # 6-9. BPTT and the input-side weight gradients, by blocks of `block` steps from the end,
    # so that da needs a (block*B, H) buffer rather than (T, B, H); dh0 carries the gradient
    # from one block into the state before it (the next block's dh_last)
    cdef Py_ssize_t stop = T, start, n_steps, rows
    cdef bint first = True
    cdef const floating* carry_block
    if tokens != NULL:
        memset(dWxhT if dWxhT != NULL else dWxh, 0, H * I * sizeof(floating))
    memset(dbh, 0, H * sizeof(floating))
    if longest != 0:
        block = T  # a look-back window needs every step's error at once
    while stop > 0:
        start = stop - block if stop > block else 0
        n_steps = stop - start
        rows = n_steps * B
        # dh_out (rows, H) = dz (rows, O) Why (O, H), into da: BPTT turns it into da in place
        gemm(False, False, <int> rows, <int> H, <int> O, 1, z + start * B * O, <int> O, Why,
             <int> H, 0, da, <int> H)
        # da_t = (dh_out_t + c_{t+1} da_{t+1} Whh) * f'(h_t), or by look-back windows
        if longest == 0:
            carry_block = carry
            if carry != NULL:
                carry_block = carry + start
            backward_in_place(da, hs + start * BH, Whh, NULL if first else dh0, carry_block,
                              grad_norms + start, dh0, n_steps, B, H, code, slope)
        else:
            memset(dh0, 0, BH * sizeof(floating))
            backward_window(da, hs, Whh, NULL, windows, da, dh0, depth, depth_next, work,
                            longest, T, B, H, code, slope)
        # dWhh (H, H) (+)= da^T (H, rows) h_prev (rows, H);  dbh += column sums of da
        gemm(True, False, <int> H, <int> H, <int> rows, 1, da, <int> H, hs + start * BH, <int> H,
             0 if first else 1, dWhh, <int> H)
        add_row_sums(dbh, da, rows, H)
        # dWxh: scatter-add of da's rows into the token columns, or (+)= da^T x
        if tokens != NULL and dWxhT != NULL:
            for n in range(rows):
                add(dWxhT + tokens[start * B + n] * H, da + n * H, H)
        elif tokens != NULL:
            for n in range(rows):
                grad_row = da + n * H
                for j in range(H):
                    dWxh[j * I + tokens[start * B + n]] += grad_row[j]
        else:
            # dWxh (H, I) (+)= da^T (H, rows) x (rows, I)
            gemm(True, False, <int> H, <int> I, <int> rows, 1, da, <int> H, x + start * B * I,
                 <int> I, 0 if first else 1, dWxh, <int> I)
            if dx != NULL:
                # dx (rows, I) = da (rows, H) Wxh (H, I)
                gemm(False, False, <int> rows, <int> I, <int> H, 1, da, <int> H, Wxh, <int> I, 0,
                     dx + start * B * I, <int> I)
        first = False
        stop = start
    if tokens != NULL and dWxhT != NULL:
        # one transposition of the row-wise sums into dWxh (H, I)
        for j in range(H):
            for n in range(I):
                dWxh[j * I + n] = dWxhT[n * H + j]
    return loss


def elman_loss_and_grad(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *,
                        negative_slope=0.01, loss="cross_entropy", reduction="mean", carry=None,
                        window=None, input_grad=True, threads=None):
    """elman_loss_and_grad(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, loss="cross_entropy", reduction="mean", carry=None, window=None, input_grad=True, threads=None)

    A whole training step in one ``nogil`` call: the projection written straight into the state
    buffer, the recurrence in place, the output layer and the loss (dL/dz in place of the
    logits), BPTT in place of dh_out, and every weight gradient as one large GEMM. The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    return _elman_step(*_step_args(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity,
                                   negative_slope, loss, reduction, carry, window),
                       loss == "cross_entropy", reduction == "sum", input_grad,
                       _checks.optional_positive_int("threads", threads))


# ---------------------------------------------------------------------------------------------
# the training step split by sequences: shards of the batch on threads of cyrnn's own
# ---------------------------------------------------------------------------------------------

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil,
                       void* arg)
    int pthread_join(pthread_t thread, void** result)


ctypedef struct StepArgs:
    # loss_and_grad_step's arguments for one shard of the batch (or all of it), filled once per
    # call; the float arrays as void*, float32 or float64 as `single` says. With `forward_only`
    # the shard runs forward_layers instead, z being the outputs y and `output` their function
    # (0 linear, 1 softmax, 2 sigmoid).
    bint single
    bint forward_only
    int output
    const Py_ssize_t* tokens
    const Py_ssize_t* target_ids
    const Py_ssize_t* windows
    void* x
    void* target_values
    void* h0
    void* Wxh
    void* WxhT
    void* dWxhT
    void* Whh
    void* WhhT
    void* bh
    void* Why
    void* WhyT
    void* by
    void* carry
    void* hs
    void* z
    void* da
    void* work
    void* depth
    void* depth_next
    void* grad_norms
    void* dWxh
    void* dWhh
    void* dbh
    void* dWhy
    void* dby
    void* dh0
    void* dx
    Py_ssize_t longest, T, B, n_in, H, O, block  # n_in: I (complex.h defines a macro I)
    int code
    double slope, scale, loss


cdef extern from *:
    """
    /* the next shard to run: a counter the workers share (each shard runs once, on whichever
       worker is free first; what a shard computes does not depend on which one) */
    static inline Py_ssize_t cyrnn_next_shard(Py_ssize_t* counter)
    {
        return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    }
    """
    Py_ssize_t next_shard "cyrnn_next_shard"(Py_ssize_t* counter) nogil


ctypedef struct Worker:
    # one thread's view of the work: the shards of `steps`, taken in turn from `next`
    StepArgs* steps
    Py_ssize_t* next
    Py_ssize_t count


cdef void output_function(floating* y, Py_ssize_t N, Py_ssize_t O, int output) noexcept nogil:
    """y (N, O) = g(z) in place of the logits z: 0 linear (unchanged), 1 softmax, 2 sigmoid."""
    if output == 1:
        softmax_rows(y, N, O)
    elif output == 2:
        activate(y, N * O, SIGMOID, 0)


cdef void run_forward(StepArgs* a) noexcept nogil:
    if a.single:
        forward_layers(a.tokens, <float*> a.x, <float*> a.h0, <float*> a.Wxh, <float*> a.WxhT,
                       <float*> a.Whh, <float*> a.WhhT, <float*> a.bh, <float*> a.Why,
                       <float*> a.WhyT, <float*> a.by, <float*> a.hs, <float*> a.z, a.T, a.B,
                       a.n_in, a.H, a.O, a.code, <float> a.slope)
        output_function(<float*> a.z, a.T * a.B, a.O, a.output)
    else:
        forward_layers(a.tokens, <double*> a.x, <double*> a.h0, <double*> a.Wxh,
                       <double*> a.WxhT, <double*> a.Whh, <double*> a.WhhT, <double*> a.bh,
                       <double*> a.Why, <double*> a.WhyT, <double*> a.by, <double*> a.hs,
                       <double*> a.z, a.T, a.B, a.n_in, a.H, a.O, a.code, a.slope)
        output_function(<double*> a.z, a.T * a.B, a.O, a.output)


cdef void run_step(StepArgs* a) noexcept nogil:
    if a.forward_only:
        run_forward(a)
    elif a.single:
        a.loss = loss_and_grad_step(
            a.tokens, <float*> a.x, a.target_ids, <float*> a.target_values, <float*> a.h0,
            <float*> a.Wxh, <float*> a.WxhT, <float*> a.dWxhT, <float*> a.Whh, <float*> a.WhhT,
            <float*> a.bh, <float*> a.Why, <float*> a.WhyT, <float*> a.by, <float*> a.carry,
            a.windows, a.longest, <float*> a.hs, <float*> a.z, <float*> a.da, <float*> a.work,
            <float*> a.depth, <float*> a.depth_next, <float*> a.grad_norms, <float*> a.dWxh,
            <float*> a.dWhh, <float*> a.dbh, <float*> a.dWhy, <float*> a.dby, <float*> a.dh0,
            <float*> a.dx, a.T, a.B, a.n_in, a.H, a.O, a.block, a.code, <float> a.slope,
            <float> a.scale)
    else:
        a.loss = loss_and_grad_step(
            a.tokens, <double*> a.x, a.target_ids, <double*> a.target_values, <double*> a.h0,
            <double*> a.Wxh, <double*> a.WxhT, <double*> a.dWxhT, <double*> a.Whh,
            <double*> a.WhhT, <double*> a.bh, <double*> a.Why, <double*> a.WhyT, <double*> a.by,
            <double*> a.carry, a.windows, a.longest, <double*> a.hs, <double*> a.z,
            <double*> a.da, <double*> a.work, <double*> a.depth, <double*> a.depth_next,
            <double*> a.grad_norms, <double*> a.dWxh, <double*> a.dWhh, <double*> a.dbh,
            <double*> a.dWhy, <double*> a.dby, <double*> a.dh0, <double*> a.dx, a.T, a.B,
            a.n_in, a.H, a.O, a.block, a.code, a.slope, a.scale)


cdef void* run_worker(void* arg) noexcept nogil:
    cdef Worker* w = <Worker*> arg
    cdef Py_ssize_t i = next_shard(w.next)
    while i < w.count:
        run_step(&w.steps[i])
        i = next_shard(w.next)
    return NULL


cdef void run_shards(StepArgs* steps, Py_ssize_t count, Worker* workers,
                     int threads) noexcept nogil:
    """Run every shard: on the calling thread and on threads - 1 threads started here and
    joined before returning, each taking the next shard not yet taken (so a thread slowed down
    by another process does less of the work). If no thread can be started, the caller runs
    every shard; the results never depend on which thread ran which shard."""
    cdef pthread_t handles[MAX_SHARDS]
    cdef bint started[MAX_SHARDS]
    cdef Py_ssize_t next = 0
    cdef int t
    for t in range(threads):
        workers[t].steps = steps
        workers[t].next = &next
        workers[t].count = count
    for t in range(1, threads):
        started[t] = pthread_create(&handles[t], NULL, run_worker, &workers[t]) == 0
    run_worker(&workers[0])
    for t in range(1, threads):
        if started[t]:
            pthread_join(handles[t], NULL)


def shard_count(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O):
    """How many shards of the batch the compiled training step runs: fixed by the problem's
    sizes alone, never by the thread count, so that a step gives bit-identical results on any
    number of threads. One shard for small steps (starting a thread costs more than it saves)
    and for batches under 16; else a power of two, with at least 16 sequences per shard from a
    batch of 32 on (8 below), and at most MAX_SHARDS."""
    cdef Py_ssize_t shards = 1, low = 16 if B >= 32 else 8
    if B < 16 or T * B * H * (H + I + O) < MIN_SHARDED_WORK:
        return 1
    while shards * 2 <= MAX_SHARDS and B // (shards * 2) >= low:
        shards *= 2
    return shards


cdef dict forward_buffers(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t O, dtype):
    """Results of one shard's forward pass: states and outputs y (in `z`)."""
    return {"hs": empty((T + 1, B, H), dtype), "z": empty((T, B, O), dtype)}


cdef dict step_buffers(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O,
                       Py_ssize_t k, bint tokens, bint need_dWxhT, bint input_grad, dtype):
    """Results and workspaces of one shard's step."""
    # BPTT by blocks of about BLOCK_ROWS (step, sequence) rows: large enough for efficient
    # GEMMs, small enough that da is a fraction of the states (a window needs all T steps)
    cdef Py_ssize_t block = T if k else min(T, max(1, (BLOCK_ROWS + B - 1) // B))
    return {
        "block": block,
        "hs": empty((T + 1, B, H), dtype),
        "z": empty((T * B, O), dtype),
        "da": empty((block, B, H), dtype),
        "work": empty((2, B, H), dtype),
        "grad_norms": empty((T,), dtype),
        # the window's depth buffers (its dh0 accumulator uses `work`); none for full BPTT
        "depth": empty((T, B, H), dtype) if k else None,
        "depth_next": empty((T, B, H), dtype) if k else None,
        "dWxh": empty((H, I), dtype),
        "dWxhT": empty((I, H), dtype) if need_dWxhT else None,
        "dWhh": empty((H, H), dtype),
        "dbh": empty((H,), dtype),
        "dWhy": empty((O, H), dtype),
        "dby": empty((O,), dtype),
        "dh0": empty((B, H), dtype),
        "dx": empty((T, B, I), dtype) if (input_grad and not tokens) else None,
    }


cdef void fill_step(StepArgs* a, dict buf, inputs, targets, h0, tuple weights, carry, windows,
                    Py_ssize_t k, int code, double slope, double scale):
    Wxh, WxhT, Whh, WhhT, bh, Why, WhyT, by = weights
    cdef bint tokens = inputs.dtype.kind in "iu"
    a.single = Whh.dtype == np.float32
    a.forward_only = targets is None
    a.output = 0
    a.tokens = <const Py_ssize_t*> data(inputs) if tokens else NULL
    a.x = NULL if tokens else data(inputs)
    a.target_ids = NULL
    a.target_values = NULL
    if targets is not None and targets.dtype.kind in "iu":
        a.target_ids = <const Py_ssize_t*> data(targets)
    elif targets is not None:
        a.target_values = data(targets)
    a.windows = <const Py_ssize_t*> data(windows)
    a.h0, a.carry = data(h0), data(carry)
    a.Wxh, a.WxhT, a.Whh, a.WhhT = data(Wxh), data(WxhT), data(Whh), data(WhhT)
    a.bh, a.Why, a.WhyT, a.by = data(bh), data(Why), data(WhyT), data(by)
    # a forward pass has states and outputs only: the step's other buffers are NULL for it
    a.hs, a.z = data(buf["hs"]), data(buf["z"])
    a.da, a.work = data(buf.get("da")), data(buf.get("work"))
    a.depth, a.depth_next = data(buf.get("depth")), data(buf.get("depth_next"))
    a.grad_norms, a.dWxh = data(buf.get("grad_norms")), data(buf.get("dWxh"))
    a.dWxhT, a.dWhh, a.dbh = data(buf.get("dWxhT")), data(buf.get("dWhh")), data(buf.get("dbh"))
    a.dWhy, a.dby = data(buf.get("dWhy")), data(buf.get("dby"))
    a.dh0, a.dx = data(buf.get("dh0")), data(buf.get("dx"))
    a.T, a.B, a.n_in = inputs.shape[0], inputs.shape[1], Wxh.shape[1]
    a.H, a.O = Whh.shape[0], Why.shape[0]
    a.longest, a.block, a.code, a.slope, a.scale = k, buf.get("block", 0), code, slope, scale


cdef tuple run_sharded(inputs, targets, h0, Wxh, Whh, bh, Why, by, int code, double slope,
                       carry, Py_ssize_t k, windows, double scale, bint input_grad, int output,
                       threads):
    """Run a training step (or, with ``targets`` None, a forward pass) over the batch in
    ``shard_count(...)`` shards of consecutive sequences, on at most ``threads`` threads.
    Returns ``(shards, losses)``: per shard ``(b0, b1, buffers)``, and the shards' losses."""
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], H = Whh.shape[0]
    cdef Py_ssize_t I = Wxh.shape[1], O = Why.shape[0]
    cdef bint tokens = inputs.dtype.kind in "iu"
    cdef Py_ssize_t shards = shard_count(T, B, I, H, O)
    cdef Py_ssize_t per = B // shards, extra = B % shards, s, b0, b1
    # the thread count matters only when there are shards to share (and is looked up only then)
    cdef int n_threads = 1 if shards == 1 else max(1, min(_threads.resolve(threads), shards))
    dtype = Whh.dtype
    WhhT, WxhT, WhyT = transposed_weights(Wxh, Whh, Why, T, B // shards, tokens)
    weights = (Wxh, WxhT, Whh, WhhT, bh, Why, WhyT, by)
    step_args = np.zeros(shards * sizeof(StepArgs), dtype=np.uint8)
    worker_args = np.zeros(MAX_SHARDS * sizeof(Worker), dtype=np.uint8)
    cdef StepArgs* steps = <StepArgs*> data(step_args)
    cdef Worker* workers = <Worker*> data(worker_args)
    cdef bint need_dWxhT = tokens and WxhT is not None
    # every shard's results and workspaces, kept for this thread's next call of the same sizes
    key = (targets is None, T, B, I, H, O, k, tokens, need_dWxhT, input_grad, dtype, shards)
    buffers = _workspace.get(key)
    fresh = buffers is None
    if fresh:
        buffers = []
    parts = []
    for s in range(shards):
        b0 = s * per + min(s, extra)
        b1 = b0 + per + (1 if s < extra else 0)
        if shards == 1:
            part = (inputs, targets, h0)
        else:
            # each shard a run of consecutive sequences, copied contiguous
            part = (np.ascontiguousarray(inputs[:, b0:b1]),
                    None if targets is None else np.ascontiguousarray(targets[:, b0:b1]),
                    np.ascontiguousarray(h0[b0:b1]))
        if not fresh:
            buf = buffers[s]
        elif targets is None:
            buf = forward_buffers(T, b1 - b0, H, O, dtype)
            buffers.append(buf)
        else:
            buf = step_buffers(T, b1 - b0, I, H, O, k, tokens, need_dWxhT, input_grad, dtype)
            buffers.append(buf)
        parts.append((b0, b1, buf, part))
        fill_step(&steps[s], buf, part[0], part[1], part[2], weights, carry, windows, k, code,
                  slope, scale)
        steps[s].output = output
    with nogil:
        run_shards(steps, shards, workers, n_threads)
    if fresh:
        _workspace.keep(key, buffers)
    return [(b0, b1, buf) for b0, b1, buf, part in parts], [steps[s].loss for s in range(shards)]


class Workspace(threading.local):
    """The buffers of each thread's last training step and last forward pass, reused by its next
    call of the same sizes: fresh buffers cost page faults on every call (a tenth of a char-LM
    step), and the allocator hands large ones back to the system each time. At most
    MAX_KEPT_BYTES per thread is kept; results handed to the caller are always copies."""

    def __init__(self):
        self.kept = {}

    def get(self, key):
        found = self.kept.get(key[0])
        return found[1] if found is not None and found[0] == key else None

    def keep(self, key, buffers):
        size = sum(a.nbytes for buf in buffers for a in buf.values() if isinstance(a, np.ndarray))
        if size <= MAX_KEPT_BYTES:
            self.kept[key[0]] = (key, buffers)  # one per kind (step, forward): the last one
        else:
            self.kept.pop(key[0], None)


_workspace = Workspace()


def _elman_step(inputs, targets, h0, Wxh, Whh, bh, Why, by, int code, double slope, carry,
                Py_ssize_t k, windows, bint cross_entropy, bint sum_reduction, bint input_grad,
                threads=None):
    """``elman_loss_and_grad`` on arguments already checked by ``_step_args`` (or by the model,
    which checks the same things once for its own messages): the arrays must be C-contiguous,
    of one float dtype, of consistent shapes, and the ids in range. The batch runs in
    ``shard_count(...)`` shards of consecutive sequences, on at most ``threads`` threads; the
    shards' gradients are summed in shard order, so the result is the same on any number."""
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], O = Why.shape[0]
    cdef double count = T * B if cross_entropy else T * B * O
    cdef double scale = 1.0 if sum_reduction else 1.0 / count
    parts, losses = run_sharded(inputs, targets, h0, Wxh, Whh, bh, Why, by, code, slope, carry,
                                k, windows, scale, input_grad, 0, threads)
    cdef double value = 0
    for loss in losses:
        value += loss
    if not sum_reduction:
        value /= count
    # the buffers are kept for the next call, so the caller gets new arrays: sums over the
    # shards in shard order, the per-sequence results joined along the batch axis
    bufs = [buf for b0, b1, buf in parts]
    first = bufs[0]
    grads = {name: first[name].copy() for name in ("dWxh", "dWhh", "dbh", "dWhy", "dby")}
    for buf in bufs[1:]:
        for name, g in grads.items():
            g += buf[name]
    if len(bufs) == 1:
        grad_norms = first["grad_norms"].copy()
    else:
        squares = first["grad_norms"] * first["grad_norms"]
        for buf in bufs[1:]:
            squares += buf["grad_norms"] * buf["grad_norms"]
        grad_norms = np.sqrt(squares)
    h_last = np.concatenate([buf["hs"][T] for buf in bufs])
    grads["dh0"] = np.concatenate([buf["dh0"] for buf in bufs])
    dx = None if first["dx"] is None else np.concatenate([buf["dx"] for buf in bufs], axis=1)
    result = {"Wxh": grads["dWxh"], "Whh": grads["dWhh"], "bh": grads["dbh"],
              "Why": grads["dWhy"], "by": grads["dby"], "h0": grads["dh0"]}
    if dx is not None:
        result["x"] = dx
    return value, result, h_last, (None if k else grad_norms)


def elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01,
                  output="linear", threads=None):
    """elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, output="linear", threads=None)

    Projection, recurrence, output layer and output function in one ``nogil`` call, in shards
    of the batch on up to ``threads`` threads as the training step. The full contract is the
    docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    inputs, h0, Wxh, Whh, bh, Why, by, code, slope = _model_args(
        inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope)
    out_code = _output_code(output)  # 0 linear, 1 softmax, 2 sigmoid
    return _elman_outputs(inputs, h0, Wxh, Whh, bh, Why, by, code, slope, out_code,
                          _checks.optional_positive_int("threads", threads))


def _elman_outputs(inputs, h0, Wxh, Whh, bh, Why, by, int code, double slope, int out_code,
                   threads=None):
    """``elman_forward`` on checked arguments (see ``_elman_step``)."""
    cdef Py_ssize_t T = inputs.shape[0]
    parts, _ = run_sharded(inputs, None, h0, Wxh, Whh, bh, Why, by, code, slope, None, 0, None,
                           1.0, False, out_code, threads)
    # new arrays for the caller (the buffers are kept), the shards joined along the batch axis
    return (np.concatenate([buf["z"] for b0, b1, buf in parts], axis=1),
            np.concatenate([buf["hs"][T] for b0, b1, buf in parts]))


# ---------------------------------------------------------------------------------------------
# what runs on this machine (for cyrnn.backend_info), and hooks for the tests of _smallgemm.h
# and _elementwise.h; not part of the kernel API
# ---------------------------------------------------------------------------------------------

def _simd_info():
    """Which of cyrnn's own SIMD code runs here: the build of the product kernel (None: BLAS
    only) and of the elementwise loops, with the thread count of the BLAS the kernels call
    (-1: unknown)."""
    return {
        "own_product_kernel": (None, "avx2", "avx512")[own_kernel_available()],
        "elementwise": ("baseline", "avx2", "avx512")[elementwise_widest()],
        "blas_threads": blas_threads(<void*> sgemm),
    }


def _own_kernel_product(A, W, C, double alpha, bint accumulate, bint trans_a=False,
                        int build=0):
    """``C = alpha op(A) @ W (+ C if accumulate)`` in place, on C-contiguous 2-D arrays of one
    float dtype, where op(A) is A or, with ``trans_a``, A.T, through cyrnn's own kernel alone at
    any size: the widest build here (``build=0``), or 1 AVX2, 2 AVX-512. Returns False, with C
    untouched, where the CPU cannot run it."""
    for name, a in (("A", A), ("W", W), ("C", C)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                and a.dtype == C.dtype and a.ndim == 2 and a.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous 2-D float32 or float64 array, of "
                            f"C's dtype")
    if not C.flags.writeable:
        raise ValueError("C must be writeable")
    cdef long M = A.shape[1] if trans_a else A.shape[0], K = A.shape[0] if trans_a else A.shape[1]
    cdef long N = W.shape[1]
    if K != W.shape[0] or C.shape != (M, N):
        raise ValueError(f"shapes {A.shape} @ {W.shape} -> {C.shape} do not match")
    cdef void* p_A = data(A)
    cdef void* p_W = data(W)
    cdef void* p_C = data(C)
    cdef long lda = A.shape[1]
    cdef int ran, which = build if build else own_kernel_available()
    if C.dtype == np.float32:
        with nogil:
            ran = sgemm_build(which, trans_a, M, N, K, <float> alpha, <float*> p_A, lda,
                              <float*> p_W, N, accumulate, <float*> p_C, N)
    else:
        with nogil:
            ran = dgemm_build(which, trans_a, M, N, K, alpha, <double*> p_A, lda, <double*> p_W,
                              N, accumulate, <double*> p_C, N)
    return bool(ran)


def _elementwise_build(int which, x, h=None, int code=0, double slope=0.01):
    """f(x) (or, given h, x * f'(a) from h = f(a)) as a new float32 array, through one build of
    the float32 elementwise loops: 0 the baseline, 1 AVX2, 2 AVX-512. None where this CPU cannot
    run that build."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    hv = None if h is None else np.ascontiguousarray(h, dtype=np.float32)
    if hv is not None and hv.shape != out.shape:
        raise ValueError(f"h has shape {hv.shape}, x has {out.shape}")
    cdef float* p_out = <float*> data(out)
    cdef const float* p_h = <const float*> data(hv)
    cdef long n = out.size
    cdef int ran
    with nogil:
        ran = elementwise_build(which, p_h != NULL, p_out, p_out, p_h, n, code, <float> slope)
    return out if ran else None


def _exp_build(int which, x):
    """exp(x) as a new array through one build (0 the baseline, 1 AVX2, 2 AVX-512) of the
    float32 exp of the softmax, for a float32 x, else of the float64 exp that the sampler uses;
    None where this CPU cannot run that build."""
    cdef bint single = isinstance(x, np.ndarray) and x.dtype == np.float32
    out = np.array(x, dtype=np.float32 if single else np.float64, order="C", copy=True)
    cdef void* p_out = data(out)
    cdef long n = out.size
    cdef int ran
    with nogil:
        if single:
            ran = exp_f32_build(which, <float*> p_out, n)
        else:
            ran = exp_build(which, <double*> p_out, n)
    return out if ran else None


def _sum_of_squares(x):
    """The gradient norms' sum of squares (a 64-bit loop in a fixed order; B*H values per step
    may exceed a 32-bit BLAS count) of a contiguous float32 or float64 vector (a test hook)."""
    x = np.ascontiguousarray(x)
    cdef Py_ssize_t n = x.size
    cdef void* p = data(x)
    if x.dtype == np.float32:
        return sum_of_squares(n, <float*> p)
    return sum_of_squares(n, <double*> p)


def _rows_build(int which, y, x, bint sum_rows):
    """One build (0 the baseline, 1 AVX2, 2 AVX-512) of the row sums, on copies: with
    ``sum_rows``, y (n,) plus the column sums of x (rows, n); else y (rows, n) plus x (n,) on
    every row. Returns the new y, or None where this CPU cannot run that build."""
    out = np.array(y, order="C", copy=True)
    xv = np.ascontiguousarray(x, dtype=out.dtype)
    if out.dtype not in (np.float32, np.float64):
        raise TypeError("y must be float32 or float64")
    block, row = (xv, out) if sum_rows else (out, xv)
    if block.ndim != 2 or row.shape != (block.shape[1],):
        raise ValueError(f"shapes {out.shape} and {xv.shape} do not match")
    cdef long rows = block.shape[0], n = block.shape[1]
    cdef void* p_out = data(out)
    cdef void* p_x = data(xv)
    cdef int ran
    if out.dtype == np.float32:
        ran = rows_build_f32(which, <float*> p_out, <float*> p_x, rows, n, sum_rows)
    else:
        ran = rows_build_f64(which, <double*> p_out, <double*> p_x, rows, n, sum_rows)
    return out if ran else None

