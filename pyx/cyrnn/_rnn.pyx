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
from cyrnn._blas cimport (DOT_CHUNK, OWN_KERNEL_MIN_WORK, blas_threads, dgemm_build, dot, gemm,
                          own_kernel_available, sgemm_build)
from scipy.linalg.cython_blas cimport sgemm

import numpy as np

from cyrnn import _checks
from cyrnn.kernels.numpy_fused import _model_args, _output_code, _step_args

cnp.import_array()

cdef enum:
    # rows of a BPTT block in the fused step (see _elman_step)
    BLOCK_ROWS = 256
    # from this batch size on, rnn_forward multiplies by a transposed copy of Whh (see there)
    TRANSPOSE_MIN_BATCH = 2
    # values per exp call of a softmax: rows of logits are shifted by their maximum, then
    # exponentiated together, in blocks of about this many values (short rows, one call for many)
    EXP_BLOCK = 1024


# the parts of the gradient norms' dot products (B*H values per step may exceed a 32-bit BLAS
# count); only the tests change it, through _set_dot_chunk, to check the splitting at small sizes
cdef Py_ssize_t dot_chunk = DOT_CHUNK


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
    # one transposed copy of Whh per call pays for itself. For B = 1 it does not (a GEMV either way).
    cdef bint transposed = B >= TRANSPOSE_MIN_BATCH
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
        grad_norms[t] = sqrt(dot(BH, g_t, g_t, dot_chunk))
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
        grad_norms[t] = sqrt(dot(BH, g, g, dot_chunk))

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

cdef double softmax_cross_entropy(floating* z, const Py_ssize_t* target, Py_ssize_t N,
                                  Py_ssize_t O, floating scale) noexcept nogil:
    """Rows of logits z (N, O) -> scale * (softmax(z) - onehot(target)) in place; returns the
    summed loss sum_n log(sum_o exp z_no) - z_n,target (accumulated in double)."""
    cdef Py_ssize_t n, o, first = 0, last, rows = max(1, EXP_BLOCK // O)
    cdef floating m, total_exp, inv
    cdef floating* row
    cdef double loss = 0
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        for n in range(first, last):
            row = z + n * O
            m = row[0]
            for o in range(1, O):
                m = row[o] if row[o] > m else m
            loss -= row[target[n]] - m
            for o in range(O):
                row[o] = row[o] - m
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
    cdef floating m, total
    cdef floating* row
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        for n in range(first, last):
            row = z + n * O
            m = row[0]
            for o in range(1, O):
                m = row[o] if row[o] > m else m
            for o in range(O):
                row[o] = row[o] - m
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
    WhhT = np.ascontiguousarray(Whh.T) if B >= TRANSPOSE_MIN_BATCH else None
    if tokens:
        WxhT = np.ascontiguousarray(Wxh.T) if I <= T * B else None
    else:
        WxhT = np.ascontiguousarray(Wxh.T) if T * B * I * H >= OWN_KERNEL_MIN_WORK else None
    WhyT = np.ascontiguousarray(Why.T) if T * B * H * O >= OWN_KERNEL_MIN_WORK else None
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
                        window=None, input_grad=True):
    """elman_loss_and_grad(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, loss="cross_entropy", reduction="mean", carry=None, window=None, input_grad=True)

    A whole training step in one ``nogil`` call: the projection written straight into the state
    buffer, the recurrence in place, the output layer and the loss (dL/dz in place of the
    logits), BPTT in place of dh_out, and every weight gradient as one large GEMM. The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    return _elman_step(*_step_args(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity,
                                   negative_slope, loss, reduction, carry, window),
                       loss == "cross_entropy", reduction == "sum", input_grad)


def _elman_step(inputs, targets, h0, Wxh, Whh, bh, Why, by, int code, double slope, carry,
                Py_ssize_t k, windows, bint cross_entropy, bint sum_reduction, bint input_grad):
    """``elman_loss_and_grad`` on arguments already checked by ``_step_args`` (or by the model,
    which checks the same things once for its own messages): the arrays must be C-contiguous,
    of one float dtype, of consistent shapes, and the ids in range."""
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], H = Whh.shape[0]
    cdef Py_ssize_t I = Wxh.shape[1], O = Why.shape[0]
    cdef bint tokens = inputs.dtype.kind in "iu"
    dtype = Whh.dtype
    hs = empty((T + 1, B, H), dtype)
    z = empty((T * B, O), dtype)
    # BPTT by blocks of about BLOCK_ROWS (step, sequence) rows: large enough for efficient
    # GEMMs, small enough that da is a fraction of the states (a window needs all T steps)
    cdef Py_ssize_t block = T if k else min(T, max(1, (BLOCK_ROWS + B - 1) // B))
    da = empty((block, B, H), dtype)
    work = empty((2, B, H), dtype)
    grad_norms = empty((T,), dtype)
    # the window's depth buffers (its dh0 accumulator uses `work`); none for full BPTT
    depth = empty((T, B, H), dtype) if k else None
    depth_next = empty((T, B, H), dtype) if k else None
    dWxh = empty((H, I), dtype)
    dWhh = empty((H, H), dtype)
    dbh = empty((H,), dtype)
    dWhy = empty((O, H), dtype)
    dby = empty((O,), dtype)
    dh0 = empty((B, H), dtype)
    dx = empty((T, B, I), dtype) if (input_grad and not tokens) else None
    WhhT, WxhT, WhyT = transposed_weights(Wxh, Whh, Why, T, B, tokens)
    dWxhT = empty((I, H), dtype) if tokens and WxhT is not None else None
    cdef double count = T * B if cross_entropy else T * B * O
    cdef double scale = 1.0 if sum_reduction else 1.0 / count
    cdef int c = code
    cdef double s = slope
    cdef double value
    cdef const Py_ssize_t* p_tokens = <const Py_ssize_t*> data(inputs) if tokens else NULL
    cdef void* p_x = NULL if tokens else data(inputs)
    cdef const Py_ssize_t* p_tid = NULL
    cdef void* p_tval = NULL
    if cross_entropy:
        p_tid = <const Py_ssize_t*> data(targets)
    else:
        p_tval = data(targets)
    cdef void* p_h0 = data(h0)
    cdef void* p_Wxh = data(Wxh)
    cdef void* p_WxhT = data(WxhT)
    cdef void* p_dWxhT = data(dWxhT)
    cdef void* p_Whh = data(Whh)
    cdef void* p_WhhT = data(WhhT)
    cdef void* p_bh = data(bh)
    cdef void* p_Why = data(Why)
    cdef void* p_WhyT = data(WhyT)
    cdef void* p_by = data(by)
    cdef void* p_carry = data(carry)
    cdef const Py_ssize_t* p_win = <const Py_ssize_t*> data(windows)
    cdef void* p_depth = data(depth)
    cdef void* p_next = data(depth_next)
    cdef void* p_hs = data(hs)
    cdef void* p_z = data(z)
    cdef void* p_da = data(da)
    cdef void* p_work = data(work)
    cdef void* p_norms = data(grad_norms)
    cdef void* p_dWxh = data(dWxh)
    cdef void* p_dWhh = data(dWhh)
    cdef void* p_dbh = data(dbh)
    cdef void* p_dWhy = data(dWhy)
    cdef void* p_dby = data(dby)
    cdef void* p_dh0 = data(dh0)
    cdef void* p_dx = data(dx)
    if dtype == np.float32:
        with nogil:
            value = loss_and_grad_step(
                p_tokens, <float*> p_x, p_tid, <float*> p_tval, <float*> p_h0, <float*> p_Wxh,
                <float*> p_WxhT, <float*> p_dWxhT, <float*> p_Whh, <float*> p_WhhT,
                <float*> p_bh, <float*> p_Why, <float*> p_WhyT, <float*> p_by,
                <float*> p_carry, p_win, k, <float*> p_hs, <float*> p_z, <float*> p_da,
                <float*> p_work, <float*> p_depth, <float*> p_next, <float*> p_norms,
                <float*> p_dWxh, <float*> p_dWhh, <float*> p_dbh, <float*> p_dWhy,
                <float*> p_dby, <float*> p_dh0, <float*> p_dx, T, B, I, H, O, block, c,
                <float> s, <float> scale)
    else:
        with nogil:
            value = loss_and_grad_step(
                p_tokens, <double*> p_x, p_tid, <double*> p_tval, <double*> p_h0,
                <double*> p_Wxh, <double*> p_WxhT, <double*> p_dWxhT, <double*> p_Whh,
                <double*> p_WhhT, <double*> p_bh,
                <double*> p_Why, <double*> p_WhyT, <double*> p_by, <double*> p_carry, p_win, k,
                <double*> p_hs, <double*> p_z, <double*> p_da, <double*> p_work, <double*> p_depth,
                <double*> p_next, <double*> p_norms,
                <double*> p_dWxh, <double*> p_dWhh, <double*> p_dbh, <double*> p_dWhy,
                <double*> p_dby, <double*> p_dh0, <double*> p_dx, T, B, I, H, O, block, c, s,
                scale)
    if not sum_reduction:
        value /= count
    grads = {"Wxh": dWxh, "Whh": dWhh, "bh": dbh, "Why": dWhy, "by": dby, "h0": dh0}
    if dx is not None:
        grads["x"] = dx
    return value, grads, hs[T].copy(), (None if k else grad_norms)


def elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01,
                  output="linear"):
    """elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, output="linear")

    Projection, recurrence, output layer and output function in one ``nogil`` call. The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    inputs, h0, Wxh, Whh, bh, Why, by, code, slope = _model_args(
        inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope)
    cdef int out_code = _output_code(output)  # 0 linear, 1 softmax, 2 sigmoid
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], H = Whh.shape[0]
    cdef Py_ssize_t I = Wxh.shape[1], O = Why.shape[0]
    cdef bint tokens = inputs.dtype.kind in "iu"
    dtype = Whh.dtype
    hs = empty((T + 1, B, H), dtype)
    y = empty((T, B, O), dtype)
    WhhT, WxhT, WhyT = transposed_weights(Wxh, Whh, Why, T, B, tokens)
    cdef int c = code
    cdef double s = slope
    cdef const Py_ssize_t* p_tokens = <const Py_ssize_t*> data(inputs) if tokens else NULL
    cdef void* p_x = NULL if tokens else data(inputs)
    cdef void* p_h0 = data(h0)
    cdef void* p_Wxh = data(Wxh)
    cdef void* p_WxhT = data(WxhT)
    cdef void* p_Whh = data(Whh)
    cdef void* p_WhhT = data(WhhT)
    cdef void* p_bh = data(bh)
    cdef void* p_Why = data(Why)
    cdef void* p_WhyT = data(WhyT)
    cdef void* p_by = data(by)
    cdef void* p_hs = data(hs)
    cdef void* p_y = data(y)
    if dtype == np.float32:
        with nogil:
            forward_layers(p_tokens, <float*> p_x, <float*> p_h0, <float*> p_Wxh,
                           <float*> p_WxhT, <float*> p_Whh, <float*> p_WhhT, <float*> p_bh,
                           <float*> p_Why, <float*> p_WhyT, <float*> p_by, <float*> p_hs,
                           <float*> p_y, T, B, I, H, O, c, <float> s)
            if out_code == 1:
                softmax_rows(<float*> p_y, T * B, O)
            elif out_code == 2:
                activate(<float*> p_y, T * B * O, SIGMOID, <float> 0)
    else:
        with nogil:
            forward_layers(p_tokens, <double*> p_x, <double*> p_h0, <double*> p_Wxh,
                           <double*> p_WxhT, <double*> p_Whh, <double*> p_WhhT, <double*> p_bh,
                           <double*> p_Why, <double*> p_WhyT, <double*> p_by, <double*> p_hs,
                           <double*> p_y, T, B, I, H, O, c, s)
            if out_code == 1:
                softmax_rows(<double*> p_y, T * B, O)
            elif out_code == 2:
                activate(<double*> p_y, T * B * O, SIGMOID, 0)
    return y, hs[T].copy()


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


def _set_dot_chunk(Py_ssize_t n):
    """Split the gradient norms' dot products into parts of at most n values (a test hook: by
    default 2^30, so that only blocks of more than 2^30 values are split); returns the previous
    value."""
    global dot_chunk
    if not 1 <= n <= DOT_CHUNK:
        raise ValueError(f"n: expected 1 <= n <= {DOT_CHUNK}, got {n}")
    previous = dot_chunk
    dot_chunk = n
    return previous


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

