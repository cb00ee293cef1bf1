"""Compiled Elman RNN kernels: the sequential recurrences of the forward pass and of BPTT.

Only the parts that must run step by step live here; the class API does every product that is
not sequential (input projection, output layer, loss, weight gradients) as one large NumPy
matrix product. ``cyrnn.kernels.numpy_backend`` is the line-by-line twin of this module, with the
same functions, arguments, results and errors.

Each ``def`` checks and converts its arguments in Python (``cyrnn._checks``), allocates results
and workspaces with the NumPy C API, then runs the whole time loop in one ``nogil`` block of
pointer arithmetic, BLAS calls (``scipy.linalg.cython_blas``) and fused elementwise loops.
Arrays are time-major and C-contiguous: a (T, B, H) array is T blocks of B*H values.
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport sqrt
from libc.string cimport memcpy, memset

from cyrnn._act cimport activate, times_derivative
from cyrnn._blas cimport dot, gemm

import numpy as np

from cyrnn import _checks

cnp.import_array()


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

cdef void forward(const floating* xw, const floating* h0, const floating* Whh, floating* hs,
                  const Py_ssize_t* lengths, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                  int code, floating slope) noexcept nogil:
    cdef Py_ssize_t BH = B * H, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* h
    cdef const floating* h_prev
    memcpy(hs, h0, B * row_bytes)
    for t in range(T):
        h_prev = hs + t * BH
        h = hs + (t + 1) * BH
        memcpy(h, xw + t * BH, B * row_bytes)
        # a_t (B, H) = xw_t (B, H) + h_{t-1} (B, H) Whh^T (H, H)
        gemm(False, True, <int> B, <int> H, <int> H, 1, h_prev, <int> H, Whh, <int> H, 1, h, <int> H)
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

    Run the Elman recurrence ``hs[t + 1] = f(xw[t] + hs[t] @ Whh.T)`` over all time steps.

    Parameters
    ----------
    xw : ndarray (T, B, H), float32 or float64
        Input projection plus hidden bias for every step, ``x_t @ Wxh.T + bh``.
    h0 : ndarray (B, H)
        Initial hidden state.
    Whh : ndarray (H, H)
        Recurrent weights (PyTorch's ``weight_hh`` orientation).
    nonlinearity : {"tanh", "relu", "sigmoid", "leaky_relu", "identity"}
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs (>= 0).
    lengths : array of int (B,), optional
        Valid steps per sequence; a sequence's state is frozen after its last step.
    out : ndarray (T + 1, B, H), optional
        Writeable C-contiguous buffer for the result.

    Returns
    -------
    hs : ndarray (T + 1, B, H)
        ``hs[0] = h0`` and ``hs[t + 1]`` the state after step ``t``.
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
    if xw.dtype == np.float32:
        with nogil:
            forward(<float*> p_xw, <float*> p_h0, <float*> p_Whh, <float*> p_hs, p_len, T, B, H,
                    c, <float> s)
    else:
        with nogil:
            forward(<double*> p_xw, <double*> p_h0, <double*> p_Whh, <double*> p_hs, p_len, T, B,
                    H, c, s)
    return hs


# ---------------------------------------------------------------------------------------------
# full BPTT
# ---------------------------------------------------------------------------------------------

cdef void backward(const floating* dh_out, const floating* hs, const floating* Whh,
                   const floating* dh_last, const floating* carry, const Py_ssize_t* lengths,
                   floating* da, floating* dh0, floating* grad_norms, floating* work,
                   Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, int code,
                   floating slope) noexcept nogil:
    # g holds dL/dh for the state after step t: first what later steps sent back (and dh_last),
    # then plus the state's own output gradient. `work` is two (B, H) buffers, swapped each step.
    cdef Py_ssize_t BH = B * H, t, b, row
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* g = work
    cdef floating* g_back = work + BH
    cdef floating* swap
    cdef floating scale
    if dh_last != NULL:
        memcpy(g, dh_last, B * row_bytes)
    else:
        memset(g, 0, B * row_bytes)
    for t in range(T - 1, -1, -1):
        if lengths == NULL:
            # g_{t+1} += dh_out_t
            add(g, dh_out + t * BH, BH)
            # da_t = g_{t+1} * f'(h_{t+1})
            times_derivative(da + t * BH, g, hs + (t + 1) * BH, BH, code, slope)
        else:
            for b in range(B):
                row = b * H
                if t < lengths[b]:
                    add(g + row, dh_out + t * BH + row, H)
                    times_derivative(da + t * BH + row, g + row, hs + (t + 1) * BH + row, H,
                                     code, slope)
                else:
                    memset(da + t * BH + row, 0, row_bytes)
        grad_norms[t] = sqrt(dot(<int> BH, g, g))

        # g_t = carry_t da_t Whh, plus the unchanged g_{t+1} of sequences frozen at step t
        scale = 1 if carry == NULL else carry[t]
        if lengths == NULL:
            memset(g_back, 0, B * row_bytes)
        else:
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

    Backpropagate through time over the whole sequence.

    With ``g_t = dL/dh_t`` (the total gradient reaching state ``hs[t]``) the recursion is::

        g_T     = dh_out[T-1] + dh_last
        da[t]   = g_{t+1} * f'(hs[t+1])
        g_t     = dh_out[t-1] + carry[t] * da[t] @ Whh
        dh0     = carry[0] * da[0] @ Whh

    Parameters
    ----------
    dh_out : ndarray (T, B, H)
        Gradient reaching each state ``hs[t + 1]`` from its own output (``dz_t @ Why``).
    hs : ndarray (T + 1, B, H)
        States from ``rnn_forward``.
    Whh : ndarray (H, H)
    nonlinearity, negative_slope : as in ``rnn_forward``.
    dh_last : ndarray (B, H), optional
        Gradient into the final state (of each sequence's last valid step).
    carry : array (T,), optional
        Scale of the gradient that step ``t`` passes back into the state before it: 1 everywhere
        is full BPTT, 0 at a chunk start truncates there, ``xi_t / p`` is randomized truncation.
        Frozen (padded) steps pass gradients through unscaled.
    lengths : array of int (B,), optional

    Returns
    -------
    da : ndarray (T, B, H)
        Gradient of the loss with respect to every pre-activation.
    dh0 : ndarray (B, H)
        Gradient with respect to the initial state.
    grad_norms : ndarray (T,)
        ``||dL/dh_t||`` over the batch for the state after each step (the vanishing/exploding
        gradient diagnostic).
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
# windowed BPTT: each output's error flows back at most k steps
# ---------------------------------------------------------------------------------------------

cdef void mask_times_derivative(floating* out, const floating* g, const floating* hs,
                                const Py_ssize_t* lengths, Py_ssize_t S, Py_ssize_t B,
                                Py_ssize_t H, int code, floating slope) noexcept nogil:
    """out[s] = g[s] * f'(hs[s + 1]) for the first S steps; zero on padded steps."""
    cdef Py_ssize_t BH = B * H, s, b, row
    if lengths == NULL:
        times_derivative(out, g, hs + BH, S * BH, code, slope)
        return
    for s in range(S):
        for b in range(B):
            row = s * BH + b * H
            if s < lengths[b]:
                times_derivative(out + row, g + row, hs + BH + row, H, code, slope)
            else:
                memset(out + row, 0, H * sizeof(floating))


cdef void backward_window(const floating* error, const floating* hs, const floating* Whh,
                          const Py_ssize_t* lengths, floating* da, floating* dh0,
                          floating* depth, floating* depth_next, floating* reach_h0,
                          Py_ssize_t window, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                          int code, floating slope) noexcept nogil:
    # depth[s] is what the output at step s + j sends to the pre-activation a_s, for s < T - j.
    # reach_h0 sums depth[0] over j <= window - 2: the errors whose window still includes step -1.
    cdef Py_ssize_t BH = B * H, j, i, rows
    cdef floating* swap
    # D_0[s] = e_s * f'(h_s)
    mask_times_derivative(depth, error, hs, lengths, T, B, H, code, slope)
    memcpy(da, depth, T * BH * sizeof(floating))
    if window >= 2:
        memcpy(reach_h0, depth, BH * sizeof(floating))
    else:
        memset(reach_h0, 0, BH * sizeof(floating))
    for j in range(1, min(window, T)):
        rows = (T - j) * B
        # D_j[s] ((T-j)*B, H) = D_{j-1}[s + 1] ((T-j)*B, H) Whh (H, H), all s at once
        gemm(False, False, <int> rows, <int> H, <int> H, 1, depth + BH, <int> H, Whh, <int> H, 0,
             depth_next, <int> H)
        # D_j[s] *= f'(h_s)
        mask_times_derivative(depth_next, depth_next, hs, lengths, T - j, B, H, code, slope)
        add(da, depth_next, rows * H)
        if j <= window - 2:
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

    Backpropagate each output's error at most ``window`` steps back.

    The error of the output at step ``t`` reaches the pre-activations of steps
    ``t - window + 1 .. t`` and no earlier; it reaches ``h0`` only if its window would still
    include step -1 (``t <= window - 2``). Rather than ``T * window`` small products, the
    contributions are computed by depth: ``D_j[s]`` is what the output at step ``s + j`` sends
    to ``a_s``; ``D_0 = e * f'`` and ``D_j[s] = (D_{j-1}[s + 1] @ Whh) * f'(hs[s + 1])``, one
    large product per depth, and ``da = sum_j D_j``.

    Parameters
    ----------
    dh_out, hs, Whh, nonlinearity, negative_slope, lengths : as in ``rnn_backward``.
    window : int >= 1
        Look-back ``k``; ``window >= T + 1`` is full BPTT.
    dh_last : ndarray (B, H), optional
        Extra error on each sequence's last valid state, windowed like that step's output.

    Returns
    -------
    da : ndarray (T, B, H)
    dh0 : ndarray (B, H)
    """
    dh_out, hs, Whh, code, slope, dh_last, lengths = _checks.backward_args(
        dh_out, hs, Whh, nonlinearity, negative_slope, dh_last, lengths
    )
    cdef Py_ssize_t k = _checks.window_size(window)
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2]
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
    cdef void* p_da = data(da)
    cdef void* p_dh0 = data(dh0)
    cdef void* p_depth = data(depth)
    cdef void* p_next = data(depth_next)
    cdef void* p_reach = data(reach_h0)
    if dtype == np.float32:
        with nogil:
            backward_window(<float*> p_error, <float*> p_hs, <float*> p_Whh, p_len, <float*> p_da,
                            <float*> p_dh0, <float*> p_depth, <float*> p_next, <float*> p_reach,
                            k, T, B, H, c, <float> s)
    else:
        with nogil:
            backward_window(<double*> p_error, <double*> p_hs, <double*> p_Whh, p_len,
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

    Gradient of a row gather ``out[n] = W[ids[n]]``: ``dW[i] = sum of grad[n] with ids[n] == i``.

    Parameters
    ----------
    ids : array of int (N,)
        Row indices, ``0 <= ids[n] < num_rows``.
    grad : ndarray (N, H), float32 or float64
        Gradient with respect to the gathered rows.
    num_rows : int
        Rows of ``W``.

    Returns
    -------
    dW : ndarray (num_rows, H)
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
