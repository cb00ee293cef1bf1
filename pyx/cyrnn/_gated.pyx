"""Compiled layer kernels of the gated cells, LSTM and GRU: the recurrences of one layer's forward
pass, of its BPTT and of its windowed BPTT.

``cyrnn.kernels.numpy_gated`` is the line-by-line twin of this module (same functions,
arguments, results and errors) and documents the contract; ``cyrnn.kernels`` copies its
docstrings onto these functions. Each public ``def`` checks its arguments (``cyrnn._checks``) and
allocates its results with the NumPy C API, then calls a private ``def`` over typed memoryviews
of the ``floating`` fused type (Cython dispatches float32/float64 there, once), which runs the
whole time loop in one ``nogil`` block: per step one matrix product (``_blas.pxd``) and one fused
elementwise epilogue (``_gated.h``). Arrays are time-major and C-contiguous: a (T, B, G) array is
T blocks of B rows of G values; the gate rows hold PyTorch's gate blocks side by side.
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport sqrt
from libc.string cimport memcpy, memset

from cyrnn._blas cimport gemm, sum_of_squares

import numpy as np

from cyrnn import _checks

cnp.import_array()

include "_cells.pxi"  # the cells' epilogues (_gated.h), over `rows` consecutive rows of one step


cdef inline void add(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    """y[i] += x[i]."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] += x[i]


cdef inline void add_active_rows(floating* g, const floating* x, const Py_ssize_t* lengths,
                                 Py_ssize_t t, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """g (B, H) += x (B, H) on the rows of the sequences that have a step t (all without
    lengths): the output gradient of padded steps is ignored."""
    cdef Py_ssize_t b
    if lengths == NULL:
        add(g, x, B * H)
        return
    for b in range(B):
        if t < lengths[b]:
            add(g + b * H, x + b * H, H)


cdef cnp.ndarray empty(tuple shape, object dtype):
    """Uninitialised C-contiguous array, allocated through the NumPy C API."""
    cdef cnp.npy_intp dims[3]
    cdef int nd = len(shape), i
    for i in range(nd):
        dims[i] = shape[i]
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32 if dtype == np.float32 else cnp.NPY_FLOAT64, 0)


cdef cnp.ndarray zeros(tuple shape, object dtype):
    """Zero-filled C-contiguous array, allocated through the NumPy C API."""
    cdef cnp.npy_intp dims[3]
    cdef int nd = len(shape), i
    for i in range(nd):
        dims[i] = shape[i]
    return cnp.PyArray_ZEROS(nd, dims, cnp.NPY_FLOAT32 if dtype == np.float32 else cnp.NPY_FLOAT64, 0)


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------

cdef void lstm_forward_loop(const floating* xw, const floating* h0, const floating* c0,
                       const floating* WhhT, const Py_ssize_t* lengths, floating* hs,
                       floating* cs, floating* gates, Py_ssize_t T, Py_ssize_t B,
                       Py_ssize_t H) noexcept nogil:
    cdef Py_ssize_t BH = B * H, G = 4 * H, BG = B * G, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating* a
    cdef const floating* h_prev
    cdef const floating* c_prev
    memcpy(hs, h0, BH * sizeof(floating))
    memcpy(cs, c0, BH * sizeof(floating))
    for t in range(T):
        a = gates + t * BG
        h_prev = hs + t * BH
        c_prev = cs + t * BH
        memcpy(a, xw + t * BG, BG * sizeof(floating))
        # a_t (B, 4H) = xw_t (B, 4H) + h_{t-1} (B, H) Whh^T (H, 4H)
        gemm(False, False, <int> B, <int> G, <int> H, 1, h_prev, <int> H, WhhT, <int> G, 1, a,
             <int> G)
        if lengths == NULL:
            lstm_cell_forward(a, c_prev, cs + (t + 1) * BH, hs + (t + 1) * BH, B, H)
            continue
        for b in range(B):
            if t < lengths[b]:
                lstm_cell_forward(a + b * G, c_prev + b * H, cs + (t + 1) * BH + b * H,
                                  hs + (t + 1) * BH + b * H, 1, H)
            else:
                # padding: the sequence keeps its states, its gates are zero
                memset(a + b * G, 0, G * sizeof(floating))
                memcpy(cs + (t + 1) * BH + b * H, c_prev + b * H, row_bytes)
                memcpy(hs + (t + 1) * BH + b * H, h_prev + b * H, row_bytes)


def _lstm_forward(const floating[:, :, ::1] xw, const floating[:, ::1] h0,
                  const floating[:, ::1] c0, const floating[:, ::1] WhhT,
                  const Py_ssize_t[::1] lengths, floating[:, :, ::1] hs,
                  floating[:, :, ::1] cs, floating[:, :, ::1] gates):
    cdef Py_ssize_t T = xw.shape[0], B = xw.shape[1], H = h0.shape[1]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    with nogil:
        lstm_forward_loop(&xw[0, 0, 0], &h0[0, 0], &c0[0, 0], &WhhT[0, 0], p_len, &hs[0, 0, 0],
                     &cs[0, 0, 0], &gates[0, 0, 0], T, B, H)


def lstm_forward(xw, h0, c0, Whh, *, lengths=None):
    """lstm_forward(xw, h0, c0, Whh, *, lengths=None)

    One LSTM layer over all steps: per step one GEMM into the gate block, then one fused pass.
    The full contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    xw, h0, c0, Whh, lengths = _checks.lstm_forward_args(xw, h0, c0, Whh, lengths)
    T, B, G = xw.shape
    H = G // 4
    hs = empty((T + 1, B, H), xw.dtype)
    cs = empty((T + 1, B, H), xw.dtype)
    gates = empty((T, B, G), xw.dtype)
    # the per-step product reads Whh^T (H, 4H) as a contiguous copy: OpenBLAS reads a
    # transposed operand more slowly (see rnn_forward in _rnn.pyx)
    _lstm_forward(xw, h0, c0, np.ascontiguousarray(Whh.T), lengths, hs, cs, gates)
    return hs, cs, gates


cdef void lstm_backward_loop(const floating* dh_out, const floating* cs, const floating* gates,
                        const floating* Whh, const floating* carry, const Py_ssize_t* lengths,
                        floating* da, floating* gc, floating* grad_norms, floating* gh,
                        floating* gh_back, Py_ssize_t T, Py_ssize_t B,
                        Py_ssize_t H) noexcept nogil:
    # gh and gc hold dL/dh and dL/dc of the states after step t (on entry: dh_last and
    # dc_last, or zeros); on return, of h0 and c0. gh_back is a (B, H) workspace.
    cdef Py_ssize_t BH = B * H, G = 4 * H, BG = B * G, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating scale
    cdef floating* swap
    cdef floating* da_t
    cdef const floating* gates_t
    cdef const floating* c_prev
    for t in range(T - 1, -1, -1):
        add_active_rows(gh, dh_out + t * BH, lengths, t, B, H)
        grad_norms[t] = sqrt(sum_of_squares(BH, gh))
        scale = 1 if carry == NULL else carry[t]
        da_t = da + t * BG
        gates_t = gates + t * BG
        c_prev = cs + t * BH
        if lengths == NULL:
            # da_t (B, 4H); gc <- scale dc f
            lstm_cell_backward(gh, gc, gates_t, c_prev, c_prev + BH, da_t, scale, B, H)
            if scale == 0:
                memset(gh, 0, BH * sizeof(floating))
            else:
                # gh (B, H) = scale da_t (B, 4H) Whh (4H, H)
                gemm(False, False, <int> B, <int> H, <int> G, scale, da_t, <int> G, Whh, <int> H,
                     0, gh, <int> H)
            continue
        # padded rows pass gh and gc through unchanged; their da is zero
        for b in range(B):
            if t < lengths[b]:
                lstm_cell_backward(gh + b * H, gc + b * H, gates_t + b * G, c_prev + b * H,
                                   c_prev + BH + b * H, da_t + b * G, scale, 1, H)
                memset(gh_back + b * H, 0, row_bytes)
            else:
                memset(da_t + b * G, 0, G * sizeof(floating))
                memcpy(gh_back + b * H, gh + b * H, row_bytes)
        if scale != 0:
            # gh_back (B, H) += scale da_t (B, 4H) Whh (4H, H)
            gemm(False, False, <int> B, <int> H, <int> G, scale, da_t, <int> G, Whh, <int> H, 1,
                 gh_back, <int> H)
        swap = gh
        gh = gh_back
        gh_back = swap
    if lengths != NULL and T % 2:
        # an odd number of swaps: the result is in the caller's workspace, not in dh0
        memcpy(gh_back, gh, BH * sizeof(floating))


def _lstm_backward(const floating[:, :, ::1] dh_out, const floating[:, :, ::1] cs,
                   const floating[:, :, ::1] gates, const floating[:, ::1] Whh,
                   const floating[::1] carry, const Py_ssize_t[::1] lengths,
                   floating[:, :, ::1] da, floating[:, ::1] dh0, floating[:, ::1] dc0,
                   floating[::1] grad_norms, floating[:, ::1] work):
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2]
    cdef const floating* p_carry = NULL
    if carry is not None:
        p_carry = &carry[0]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    with nogil:
        lstm_backward_loop(&dh_out[0, 0, 0], &cs[0, 0, 0], &gates[0, 0, 0], &Whh[0, 0], p_carry,
                      p_len, &da[0, 0, 0], &dc0[0, 0], &grad_norms[0], &dh0[0, 0], &work[0, 0],
                      T, B, H)


def lstm_backward(dh_out, hs, cs, gates, Whh, *, dh_last=None, dc_last=None, carry=None,
                  lengths=None):
    """lstm_backward(dh_out, hs, cs, gates, Whh, *, dh_last=None, dc_last=None, carry=None, lengths=None)

    BPTT over one LSTM layer; per step one fused pass (``da_t`` and ``dc f`` from the saved
    gates and cell states), one dot for the gradient norm and one GEMM (``da_t Whh``). The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    dh_out, hs, cs, gates, Whh, dh_last, dc_last, lengths = _checks.lstm_backward_args(
        dh_out, hs, cs, gates, Whh, dh_last, dc_last, lengths)
    T, B, H = dh_out.shape
    dtype = dh_out.dtype
    carry = _checks.carry_array(carry, T, dtype)
    da = empty((T, B, 4 * H), dtype)
    dh0 = zeros((B, H), dtype) if dh_last is None else dh_last.copy()
    dc0 = zeros((B, H), dtype) if dc_last is None else dc_last.copy()
    grad_norms = empty((T,), dtype)
    _lstm_backward(dh_out, cs, gates, Whh, carry, lengths, da, dh0, dc0, grad_norms,
                   empty((B, H), dtype))
    return da, dh0, dc0, grad_norms


# lstm_backward_window_loop and gru_backward_window_loop: _gated_window.pxi (shared with the
# fused stack step of _rnn.pyx)
include "_gated_window.pxi"


def _lstm_backward_window(const floating[:, :, ::1] cs, const floating[:, :, ::1] gates,
                          const floating[:, ::1] Whh, const Py_ssize_t[::1] lengths,
                          const Py_ssize_t[::1] windows, Py_ssize_t longest,
                          floating[:, :, ::1] Gh, floating[:, :, ::1] Gc, floating[:, :, ::1] dA,
                          floating[:, :, ::1] da, floating[:, ::1] reach_a,
                          floating[:, ::1] dh0, floating[:, ::1] dc0):
    cdef Py_ssize_t T = Gh.shape[0], B = Gh.shape[1], H = Gh.shape[2]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    cdef const Py_ssize_t* p_win = NULL
    if windows is not None:
        p_win = &windows[0]
    with nogil:
        lstm_backward_window_loop(&cs[0, 0, 0], &gates[0, 0, 0], &Whh[0, 0], p_len, p_win, longest,
                             &Gh[0, 0, 0], &Gc[0, 0, 0], &dA[0, 0, 0], &da[0, 0, 0],
                             &reach_a[0, 0], &dh0[0, 0], &dc0[0, 0], T, B, H)


def lstm_backward_window(dh_out, hs, cs, gates, Whh, window, *, lengths=None):
    """lstm_backward_window(dh_out, hs, cs, gates, Whh, window, *, lengths=None)

    Backpropagate each output's error at most ``window`` (or ``window[t]``) steps back through
    one LSTM layer, by depth: per depth ``j`` one fused pass over the outputs still reaching
    back and one ``((T - j - 1) * B, 4H) x (4H, H)`` GEMM. The full contract is the docstring of
    the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    dh_out, hs, cs, gates, Whh, _, _, lengths = _checks.lstm_backward_args(
        dh_out, hs, cs, gates, Whh, None, None, lengths)
    T, B, H = dh_out.shape
    longest, windows = _checks.window_sizes(window, T)
    dtype = dh_out.dtype
    da = zeros((T, B, 4 * H), dtype)
    dh0 = empty((B, H), dtype)
    dc0 = zeros((B, H), dtype)
    _lstm_backward_window(cs, gates, Whh, lengths, windows, longest, dh_out.copy(),
                          zeros((T, B, H), dtype), empty((T, B, 4 * H), dtype), da,
                          zeros((B, 4 * H), dtype), dh0, dc0)
    return da, dh0, dc0


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------

cdef void gru_forward_loop(const floating* xw, const floating* h0, const floating* WhhT,
                      const floating* bhn, const Py_ssize_t* lengths, floating* hs,
                      floating* gates, floating* hn, floating* R, Py_ssize_t T, Py_ssize_t B,
                      Py_ssize_t H) noexcept nogil:
    # R is a (B, 3H) workspace
    cdef Py_ssize_t BH = B * H, G = 3 * H, BG = B * G, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef const floating* h_prev
    memcpy(hs, h0, BH * sizeof(floating))
    for t in range(T):
        h_prev = hs + t * BH
        # R_t (B, 3H) = h_{t-1} (B, H) Whh^T (H, 3H)
        gemm(False, False, <int> B, <int> G, <int> H, 1, h_prev, <int> H, WhhT, <int> G, 0, R,
             <int> G)
        if lengths == NULL:
            gru_cell_forward(xw + t * BG, R, bhn, h_prev, gates + t * BG, hn + t * BH,
                             hs + (t + 1) * BH, B, H)
            continue
        for b in range(B):
            if t < lengths[b]:
                gru_cell_forward(xw + t * BG + b * G, R + b * G, bhn, h_prev + b * H,
                                 gates + t * BG + b * G, hn + t * BH + b * H,
                                 hs + (t + 1) * BH + b * H, 1, H)
            else:
                # padding: the sequence keeps its state, its gates and hn are zero
                memset(gates + t * BG + b * G, 0, G * sizeof(floating))
                memset(hn + t * BH + b * H, 0, row_bytes)
                memcpy(hs + (t + 1) * BH + b * H, h_prev + b * H, row_bytes)


def _gru_forward(const floating[:, :, ::1] xw, const floating[:, ::1] h0,
                 const floating[:, ::1] WhhT, const floating[::1] bhn,
                 const Py_ssize_t[::1] lengths, floating[:, :, ::1] hs,
                 floating[:, :, ::1] gates, floating[:, :, ::1] hn, floating[:, ::1] R):
    cdef Py_ssize_t T = xw.shape[0], B = xw.shape[1], H = h0.shape[1]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    with nogil:
        gru_forward_loop(&xw[0, 0, 0], &h0[0, 0], &WhhT[0, 0], &bhn[0], p_len, &hs[0, 0, 0],
                    &gates[0, 0, 0], &hn[0, 0, 0], &R[0, 0], T, B, H)


def gru_forward(xw, h0, Whh, bhn, *, lengths=None):
    """gru_forward(xw, h0, Whh, bhn, *, lengths=None)

    One GRU layer over all steps: per step one GEMM (``R_t = h_{t-1} Whh^T``), then one fused
    pass. The full contract is the docstring of the NumPy twin, copied here by
    ``cyrnn.kernels``.
    """
    xw, h0, Whh, bhn, lengths = _checks.gru_forward_args(xw, h0, Whh, bhn, lengths)
    T, B, G = xw.shape
    H = G // 3
    hs = empty((T + 1, B, H), xw.dtype)
    gates = empty((T, B, G), xw.dtype)
    hn = empty((T, B, H), xw.dtype)
    _gru_forward(xw, h0, np.ascontiguousarray(Whh.T), bhn, lengths, hs, gates, hn,
                 empty((B, G), xw.dtype))
    return hs, gates, hn


cdef void gru_backward_loop(const floating* dh_out, const floating* hs, const floating* gates,
                       const floating* hn, const floating* Whh, const floating* carry,
                       const Py_ssize_t* lengths, floating* dxw, floating* dR,
                       floating* grad_norms, floating* g, floating* g_back, Py_ssize_t T,
                       Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    # g holds dL/dh of the state after step t (on entry: dh_last or zeros); g_back receives
    # dL/dh of the state before it. On return the result is in g_back's buffer if T is odd.
    cdef Py_ssize_t BH = B * H, G = 3 * H, BG = B * G, t, b
    cdef size_t row_bytes = H * sizeof(floating)
    cdef floating scale
    cdef floating* swap
    cdef const floating* h_prev
    for t in range(T - 1, -1, -1):
        add_active_rows(g, dh_out + t * BH, lengths, t, B, H)
        grad_norms[t] = sqrt(sum_of_squares(BH, g))
        scale = 1 if carry == NULL else carry[t]
        h_prev = hs + t * BH
        if lengths == NULL:
            # dxw_t, dR_t (B, 3H); g_back = scale g z
            gru_cell_backward(g, gates + t * BG, hn + t * BH, h_prev, dxw + t * BG, dR + t * BG,
                              g_back, scale, B, H)
        else:
            # padded rows pass g through unchanged; their dxw and dR are zero
            for b in range(B):
                if t < lengths[b]:
                    gru_cell_backward(g + b * H, gates + t * BG + b * G, hn + t * BH + b * H,
                                      h_prev + b * H, dxw + t * BG + b * G, dR + t * BG + b * G,
                                      g_back + b * H, scale, 1, H)
                else:
                    memset(dxw + t * BG + b * G, 0, G * sizeof(floating))
                    memset(dR + t * BG + b * G, 0, G * sizeof(floating))
                    memcpy(g_back + b * H, g + b * H, row_bytes)
        if scale != 0:
            # g_back (B, H) += scale dR_t (B, 3H) Whh (3H, H)
            gemm(False, False, <int> B, <int> H, <int> G, scale, dR + t * BG, <int> G, Whh,
                 <int> H, 1, g_back, <int> H)
        swap = g
        g = g_back
        g_back = swap


def _gru_backward(const floating[:, :, ::1] dh_out, const floating[:, :, ::1] hs,
                  const floating[:, :, ::1] gates, const floating[:, :, ::1] hn,
                  const floating[:, ::1] Whh, const floating[::1] carry,
                  const Py_ssize_t[::1] lengths, floating[:, :, ::1] dxw,
                  floating[:, :, ::1] dR, floating[::1] grad_norms, floating[:, :, ::1] work):
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2]
    cdef const floating* p_carry = NULL
    if carry is not None:
        p_carry = &carry[0]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    with nogil:
        gru_backward_loop(&dh_out[0, 0, 0], &hs[0, 0, 0], &gates[0, 0, 0], &hn[0, 0, 0], &Whh[0, 0],
                     p_carry, p_len, &dxw[0, 0, 0], &dR[0, 0, 0], &grad_norms[0],
                     &work[0, 0, 0], &work[1, 0, 0], T, B, H)


def gru_backward(dh_out, hs, gates, hn, Whh, *, dh_last=None, carry=None, lengths=None):
    """gru_backward(dh_out, hs, gates, hn, Whh, *, dh_last=None, carry=None, lengths=None)

    BPTT over one GRU layer; per step one fused pass (``dxw_t``, ``dR_t`` and ``g z`` from the
    saved gates and ``hn``), one dot for the gradient norm and one GEMM (``dR_t Whh``). The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    dh_out, hs, gates, hn, Whh, dh_last, lengths = _checks.gru_backward_args(
        dh_out, hs, gates, hn, Whh, dh_last, lengths)
    T, B, H = dh_out.shape
    dtype = dh_out.dtype
    carry = _checks.carry_array(carry, T, dtype)
    dxw = empty((T, B, 3 * H), dtype)
    dR = empty((T, B, 3 * H), dtype)
    grad_norms = empty((T,), dtype)
    work = empty((2, B, H), dtype)
    if dh_last is None:
        work[0] = 0
    else:
        work[0] = dh_last
    _gru_backward(dh_out, hs, gates, hn, Whh, carry, lengths, dxw, dR, grad_norms, work)
    # T swaps of the two buffers: dL/dh0 ends in work[T % 2]
    return dxw, dR, work[T % 2].copy(), grad_norms


def _gru_backward_window(const floating[:, :, ::1] hs, const floating[:, :, ::1] gates,
                         const floating[:, :, ::1] hn, const floating[:, ::1] Whh,
                         const Py_ssize_t[::1] lengths, const Py_ssize_t[::1] windows,
                         Py_ssize_t longest, floating[:, :, ::1] Gh,
                         floating[:, :, ::1] Gnext, floating[:, :, ::1] dX,
                         floating[:, :, ::1] dRj, floating[:, :, ::1] dxw,
                         floating[:, :, ::1] dR, floating[:, ::1] reach_R,
                         floating[:, ::1] dh0):
    cdef Py_ssize_t T = Gh.shape[0], B = Gh.shape[1], H = Gh.shape[2]
    cdef const Py_ssize_t* p_len = NULL
    if lengths is not None:
        p_len = &lengths[0]
    cdef const Py_ssize_t* p_win = NULL
    if windows is not None:
        p_win = &windows[0]
    with nogil:
        gru_backward_window_loop(&hs[0, 0, 0], &gates[0, 0, 0], &hn[0, 0, 0], &Whh[0, 0], p_len,
                                 p_win, longest, &Gh[0, 0, 0], &Gnext[0, 0, 0], &dX[0, 0, 0],
                                 &dRj[0, 0, 0],
                            &dxw[0, 0, 0], &dR[0, 0, 0], &reach_R[0, 0], &dh0[0, 0], T, B, H)


def gru_backward_window(dh_out, hs, gates, hn, Whh, window, *, lengths=None):
    """gru_backward_window(dh_out, hs, gates, hn, Whh, window, *, lengths=None)

    Backpropagate each output's error at most ``window`` (or ``window[t]``) steps back through
    one GRU layer, by depth: per depth one fused pass and one ``((T - j - 1) * B, 3H) x (3H, H)``
    GEMM. The full contract is the docstring of the NumPy twin, copied here by
    ``cyrnn.kernels``.
    """
    dh_out, hs, gates, hn, Whh, _, lengths = _checks.gru_backward_args(
        dh_out, hs, gates, hn, Whh, None, lengths)
    T, B, H = dh_out.shape
    longest, windows = _checks.window_sizes(window, T)
    dtype = dh_out.dtype
    dxw = zeros((T, B, 3 * H), dtype)
    dR = zeros((T, B, 3 * H), dtype)
    dh0 = zeros((B, H), dtype)
    _gru_backward_window(hs, gates, hn, Whh, lengths, windows, longest, dh_out.copy(),
                         empty((T, B, H), dtype), empty((T, B, 3 * H), dtype),
                         empty((T, B, 3 * H), dtype), dxw, dR, zeros((B, 3 * H), dtype), dh0)
    return dxw, dR, dh0
