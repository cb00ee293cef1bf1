"""Compiled layer kernels of the normalized and regularized recurrences: one layer of any cell
(Elman, LSTM, GRU) with layer or batch normalization of the recurrent term (and of the LSTM's
cell state), variational recurrent dropout, zoneout, lengths and carry scales.

``cyrnn.kernels.numpy_recurrence`` is the twin of this module (same functions, arguments,
results and errors) and documents the contract and the equations; ``cyrnn.kernels`` copies its
docstrings onto these functions. Each public ``def`` checks its arguments and allocates its
results, then calls a private ``def`` over the ``floating`` fused type (Cython dispatches
float32/float64 there, once) that runs the whole time loop in one ``nogil`` block: per step one
matrix product (``_blas.pxd``) and fused loops over raw pointers for the epilogues: the cells'
own (``_cells.pxi``, ``_gated.h``, ``_act.pxd``), the per-row loops of layer normalization and
of the LSTM's normalized output (``_recurrence.h``, SIMD builds chosen at run time like
``_gated.h``), and here the column loops of batch normalization, zoneout, lengths and carry.

Arrays are time-major and C-contiguous: a (T, B, G) array is T blocks of B rows of G values. A
step's loops run over all B rows as the twin does, then the rows of sequences that have ended
(``t >= lengths[b]``) get their frozen states and zero gradients; the batch statistics of
``norm=2`` leave those rows out.
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport sqrt
from libc.string cimport memcpy, memset

from cyrnn._act cimport activate, tanh_, times_derivative
from cyrnn._blas cimport (dpack_panels, gemm, gemm_panels, on_own_kernel, panel_columns,
                         spack_panels, sum_of_squares)

import numpy as np

from cyrnn import _checks

cnp.import_array()

include "_cells.pxi"
include "_norms.pxi"  # layer normalization and the LSTM's normalized output (_recurrence.h)

# codes of the cells and of the normalizations, as cyrnn.kernels.numpy_recurrence
cdef enum:
    ELMAN = 0
    LSTM = 1
    GRU = 2
cdef enum:
    NONE = 0
    LAYER = 1
    BATCH = 2
    BATCH_FIXED = 3

# the constants above by the twin's names, for the test that keeps the two in step
CONSTANTS = {"ELMAN": ELMAN, "LSTM": LSTM, "GRU": GRU, "NONE": NONE, "LAYER": LAYER,
             "BATCH": BATCH, "BATCH_FIXED": BATCH_FIXED, "EPS": EPS}
_GATES = (1, 4, 3)  # gate blocks per cell: G = _GATES[cell] * H
_INT32_MAX = 2**31 - 1  # BLAS takes sizes as 32-bit ints


cdef inline void* data(object a):
    """The data of a checked (C-contiguous, aligned) array, or NULL for None."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray> a)


cdef inline Py_ssize_t count_active(const Py_ssize_t* lengths, Py_ssize_t t,
                                    Py_ssize_t B) noexcept nogil:
    cdef Py_ssize_t b, n = 0
    for b in range(B):
        n += active(lengths, t, b)
    return n


cdef inline floating inverse_std(floating var) noexcept nogil:
    """1 / sqrt(var + eps), in the float type."""
    cdef floating eps = <floating> EPS
    cdef floating one = 1
    return one / <floating> sqrt(var + eps)


# ---------------------------------------------------------------------------------------------
# the normalizations N of x (rows, n), forward: xhat, rstd (and the batch statistics), then
# x <- xhat * gain where a gain (n,) is given (the recurrent term; the cell state has none).
# Layer normalization's loops, shared with the fused stack step, are in _norms.pxi.
# ---------------------------------------------------------------------------------------------

cdef inline void batch_norm(floating* x, floating* xhat, floating* rstd, floating* mean,
                            floating* var, const floating* gain, Py_ssize_t rows, Py_ssize_t n,
                            const Py_ssize_t* lengths, Py_ssize_t t,
                            double* acc) noexcept nogil:
    """Each column over the rows active at step t: mean, var (n,) (biased), rstd (n,), xhat
    zero in inactive rows; with no active row xhat 0, rstd 1, mean and var 0. acc: n doubles."""
    cdef Py_ssize_t b, j, count = count_active(lengths, t, rows)
    cdef floating d
    cdef const floating* xb
    if count == 0:
        memset(xhat, 0, rows * n * sizeof(floating))
        for j in range(n):
            rstd[j] = 1
            mean[j] = 0
            var[j] = 0
        if gain != NULL:
            scale_columns(x, xhat, gain, rows, n)
        return
    # mean (n,) = the sum of the active rows of x (rows, n) / count
    memset(acc, 0, n * sizeof(double))
    for b in range(rows):
        if active(lengths, t, b):
            xb = x + b * n
            for j in range(n):
                acc[j] += xb[j]
    for j in range(n):
        mean[j] = <floating> (acc[j] / count)
    memset(acc, 0, n * sizeof(double))
    for b in range(rows):
        if active(lengths, t, b):
            xb = x + b * n
            for j in range(n):
                d = xb[j] - mean[j]
                acc[j] += d * d
    for j in range(n):
        var[j] = <floating> (acc[j] / count)
        rstd[j] = inverse_std(var[j])
    for b in range(rows):
        if active(lengths, t, b):
            for j in range(n):
                xhat[b * n + j] = (x[b * n + j] - mean[j]) * rstd[j]
        else:
            memset(xhat + b * n, 0, n * sizeof(floating))
    if gain != NULL:
        scale_columns(x, xhat, gain, rows, n)


cdef inline void fixed_norm(floating* x, floating* xhat, floating* rstd, const floating* mean,
                            const floating* var, const floating* gain, Py_ssize_t rows,
                            Py_ssize_t n) noexcept nogil:
    """With the given statistics mean, var (n,): xhat = (x - mean) * rstd, rstd (n,)."""
    cdef Py_ssize_t b, j
    for j in range(n):
        rstd[j] = inverse_std(var[j])
    for b in range(rows):
        for j in range(n):
            xhat[b * n + j] = (x[b * n + j] - mean[j]) * rstd[j]
    if gain != NULL:
        scale_columns(x, xhat, gain, rows, n)


cdef inline void normalize(int norm, floating* x, floating* xhat, floating* rstd,
                           floating* batch_mean, floating* batch_var, const floating* fixed_mean,
                           const floating* fixed_var, const floating* gain, Py_ssize_t rows,
                           Py_ssize_t n, const Py_ssize_t* lengths, Py_ssize_t t,
                           double* acc) noexcept nogil:
    if norm == LAYER:
        layer_norm(x, xhat, rstd, gain, rows, n)
    elif norm == BATCH:
        batch_norm(x, xhat, rstd, batch_mean, batch_var, gain, rows, n, lengths, t, acc)
    else:
        fixed_norm(x, xhat, rstd, fixed_mean, fixed_var, gain, rows, n)


# backward: d (rows, n) holds dL/dxhat on entry and dL/dx on return,
# dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means over the row or active column

cdef inline void batch_norm_backward(floating* d, const floating* xhat, const floating* rstd,
                                     Py_ssize_t rows, Py_ssize_t n, const Py_ssize_t* lengths,
                                     Py_ssize_t t, double* acc) noexcept nogil:
    """acc: 2n doubles. Inactive rows get zero."""
    cdef Py_ssize_t b, j, count = count_active(lengths, t, rows)
    cdef double* m1 = acc
    cdef double* m2 = acc + n
    cdef floating* db
    cdef const floating* xb
    if count == 0:
        memset(d, 0, rows * n * sizeof(floating))
        return
    memset(acc, 0, 2 * n * sizeof(double))
    for b in range(rows):
        if active(lengths, t, b):
            db = d + b * n
            xb = xhat + b * n
            for j in range(n):
                m1[j] += db[j]
                m2[j] += <floating> (db[j] * xb[j])
    for j in range(n):
        m1[j] /= count
        m2[j] /= count
    for b in range(rows):
        db = d + b * n
        xb = xhat + b * n
        if active(lengths, t, b):
            for j in range(n):
                db[j] = rstd[j] * (db[j] - <floating> m1[j] - xb[j] * <floating> m2[j])
        else:
            memset(db, 0, n * sizeof(floating))


cdef inline void normalize_backward(int norm, floating* d, const floating* xhat,
                                    const floating* rstd, Py_ssize_t rows, Py_ssize_t n,
                                    const Py_ssize_t* lengths, Py_ssize_t t,
                                    double* acc) noexcept nogil:
    cdef Py_ssize_t b, j
    if norm == LAYER:
        layer_norm_backward(d, xhat, rstd, rows, n)
    elif norm == BATCH:
        batch_norm_backward(d, xhat, rstd, rows, n, lengths, t, acc)
    else:
        for b in range(rows):
            for j in range(n):
                d[b * n + j] *= rstd[j]


# ---------------------------------------------------------------------------------------------
# elementwise steps of the epilogues
# ---------------------------------------------------------------------------------------------

cdef inline void add(floating* out, const floating* x, const floating* y,
                     Py_ssize_t n) noexcept nogil:
    """out = x + y."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = x[i] + y[i]


cdef inline void normalized_output_backward(const floating* g, const floating* gates,
                                            const floating* chat, const floating* gc,
                                            const floating* bc, floating* u, floating* dchat,
                                            floating* dgc, floating* dbc, Py_ssize_t rows,
                                            Py_ssize_t H, const Py_ssize_t* lengths,
                                            Py_ssize_t t) noexcept nogil:
    """Through h = o u, u = tanh(chat gc + bc), from g = dL/dh (rows, H): u, dL/dchat = du gc
    with du = g o (1 - u^2); the gradients of gc and bc (H,) grow by the active rows' du chat
    and du. Rows of inactive sequences are skipped (nothing reads them)."""
    cdef Py_ssize_t b, G = 4 * H
    if lengths == NULL:
        normalized_output_rows_backward(g, gates, chat, gc, bc, u, dchat, dgc, dbc, rows, H)
        return
    for b in range(rows):
        if active(lengths, t, b):
            normalized_output_rows_backward(g + b * H, gates + b * G, chat + b * H, gc, bc,
                                            u + b * H, dchat + b * H, dgc, dbc, 1, H)


cdef inline void zero_inactive_rows(floating* x, const Py_ssize_t* lengths, Py_ssize_t t,
                                    Py_ssize_t B, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t b
    if lengths == NULL:
        return
    for b in range(B):
        if not active(lengths, t, b):
            memset(x + b * n, 0, n * sizeof(floating))


cdef inline void add_active_rows(floating* g, const floating* x, const Py_ssize_t* lengths,
                                 Py_ssize_t t, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    """g (B, H) += x (B, H) on the rows of active sequences."""
    cdef Py_ssize_t b, j
    for b in range(B):
        if active(lengths, t, b):
            for j in range(H):
                g[b * H + j] += x[b * H + j]


# ---------------------------------------------------------------------------------------------
# the time loops
# ---------------------------------------------------------------------------------------------

def _forward(const floating[:, :, ::1] P, a, dict rec):
    """Fill the record ``rec`` (allocated, hs[0] and cs[0] set) from the checked arguments
    ``a`` (``_forward_args``)."""
    cdef Py_ssize_t T = P.shape[0], B = P.shape[1], G = P.shape[2], H = a.H
    cdef Py_ssize_t BH = B * H, BG = B * G, t
    cdef int cell = a.cell, norm = a.norm, code = a.code
    cdef floating slope = a.slope
    # inputs
    cdef const floating* WhhT = <const floating*> data(a.WhhT)  # (H, G)
    cdef const floating* WhhT_panels = <const floating*> data(a.WhhT_panels)  # or NULL
    cdef const floating* bhn = <const floating*> data(a.bhn)
    cdef const floating* gh = <const floating*> data(a.gh)
    cdef const floating* gc = <const floating*> data(a.gc)
    cdef const floating* bc = <const floating*> data(a.bc)
    cdef const floating* fixed_mean_h = <const floating*> data(a.stats[0])
    cdef const floating* fixed_var_h = <const floating*> data(a.stats[1])
    cdef const floating* fixed_mean_c = <const floating*> data(a.stats[2])
    cdef const floating* fixed_var_c = <const floating*> data(a.stats[3])
    cdef const floating* rmask = <const floating*> data(a.rmask)
    cdef const floating* zh = <const floating*> data(a.zh)
    cdef const floating* zc = <const floating*> data(a.zc)
    cdef const Py_ssize_t* lengths = <const Py_ssize_t*> data(a.lengths)
    # the record
    cdef floating* hs = <floating*> data(rec["hs"])
    cdef floating* gates = <floating*> data(rec["gates"])
    cdef floating* cs = <floating*> data(rec.get("cs"))
    cdef floating* hn = <floating*> data(rec.get("hn"))
    cdef floating* ctil = <floating*> data(rec.get("ctil"))
    cdef floating* rhat = <floating*> data(rec.get("rhat"))
    cdef floating* rstd_h = <floating*> data(rec.get("rstd_h"))
    cdef floating* chat = <floating*> data(rec.get("chat"))
    cdef floating* rstd_c = <floating*> data(rec.get("rstd_c"))
    cdef floating* mean_h = <floating*> data(rec.get("mean_h"))
    cdef floating* var_h = <floating*> data(rec.get("var_h"))
    cdef floating* mean_c = <floating*> data(rec.get("mean_c"))
    cdef floating* var_c = <floating*> data(rec.get("var_c"))
    # per-step widths of rstd: one per row (layer norm) or per column
    cdef Py_ssize_t wh = B if norm == LAYER else G, wc = B if norm == LAYER else H
    # workspaces: R (B, G), hin (B, H) with recurrent dropout, column sums
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] R_ws = np.empty((B, G), dtype)
    cdef floating* R = &R_ws[0, 0]
    hin_ws = np.empty((B, H), dtype) if rmask != NULL else None
    cdef floating* hin_buf = <floating*> data(hin_ws)
    cdef double[::1] acc_ws = np.empty(max(G, H), np.float64)
    cdef double* acc = &acc_ws[0]
    cdef const floating* h_prev
    cdef const floating* hin
    cdef floating* gates_t
    cdef floating* h
    cdef floating* c
    cdef floating* c_new
    with nogil:
        for t in range(T):
            h_prev = hs + t * BH
            h = hs + (t + 1) * BH
            gates_t = gates + t * BG
            hin = h_prev
            if rmask != NULL:
                multiply(hin_buf, h_prev, rmask, BH)
                hin = hin_buf
            # R_t (B, G) = hin (B, H) Whh^T (H, G)
            if WhhT_panels != NULL:
                gemm_panels(<int> B, <int> G, <int> H, 1, hin, <int> H, WhhT_panels, 0, R,
                            <int> G)
            else:
                gemm(False, False, <int> B, <int> G, <int> H, 1, hin, <int> H, WhhT, <int> G,
                     0, R, <int> G)
            if norm:
                # rhat_t (B, G), rstd; R <- rhat_t * gh
                normalize(norm, R, rhat + t * BG, rstd_h + t * wh,
                          mean_h + t * G if mean_h != NULL else NULL,
                          var_h + t * G if var_h != NULL else NULL,
                          fixed_mean_h + t * G if fixed_mean_h != NULL else NULL,
                          fixed_var_h + t * G if fixed_var_h != NULL else NULL,
                          gh, B, G, lengths, t, acc)
            c = NULL
            if cell == ELMAN:
                add(gates_t, &P[t, 0, 0], R, BG)  # ~h = f(P_t + R)
                activate(gates_t, BG, code, slope)
                memcpy(h, gates_t, BH * sizeof(floating))
            elif cell == LSTM:
                c = cs + (t + 1) * BH
                c_new = ctil + t * BH if zc != NULL else c  # ~c_t before zoneout
                add(gates_t, &P[t, 0, 0], R, BG)
                lstm_cell_forward(gates_t, cs + t * BH, c_new, h, B, H)
                if norm:
                    # chat_t (B, H) = N_c(~c_t); h = o tanh(chat gc + bc)
                    normalize(norm, c_new, chat + t * BH, rstd_c + t * wc,
                              mean_c + t * H if mean_c != NULL else NULL,
                              var_c + t * H if var_c != NULL else NULL,
                              fixed_mean_c + t * H if fixed_mean_c != NULL else NULL,
                              fixed_var_c + t * H if fixed_var_c != NULL else NULL,
                              NULL, B, H, lengths, t, acc)
                    normalized_output(gates_t, chat + t * BH, gc, bc, h, B, H)
            else:
                gru_cell_forward(&P[t, 0, 0], R, bhn, h_prev, gates_t, hn + t * BH, h, B, H)
            commit(h, h_prev, gates_t, zh + t * BH if zh != NULL else NULL, c,
                   cs + t * BH if c != NULL else NULL, ctil + t * BH if zc != NULL else NULL,
                   zc + t * BH if zc != NULL else NULL, lengths, t, B, H, G)


def _backward(const floating[:, :, ::1] dh_out, a, dict rec, dict out):
    """Fill the results ``out`` (allocated, dh0 = dc0 = extra = 0) from the checked arguments
    ``a`` (``_backward_args``) and the record ``rec``."""
    cdef Py_ssize_t T = dh_out.shape[0], B = dh_out.shape[1], H = dh_out.shape[2], G = a.G
    cdef Py_ssize_t BH = B * H, BG = B * G, t
    cdef int cell = a.cell, norm = a.norm, code = a.code
    cdef floating slope = a.slope, scale
    # inputs
    cdef const floating* Whh = <const floating*> data(a.Whh)  # (G, H)
    cdef const floating* Whh_panels = <const floating*> data(a.Whh_panels)  # or NULL
    cdef const floating* gh = <const floating*> data(a.gh)
    cdef const floating* gc = <const floating*> data(a.gc)
    cdef const floating* bc = <const floating*> data(a.bc)
    cdef const floating* rmask = <const floating*> data(a.rmask)
    cdef const floating* zh = <const floating*> data(a.zh)
    cdef const floating* zc = <const floating*> data(a.zc)
    cdef const floating* carry = <const floating*> data(a.carry)
    cdef const Py_ssize_t* lengths = <const Py_ssize_t*> data(a.lengths)
    cdef const floating* hs = <const floating*> data(rec["hs"])
    cdef const floating* gates = <const floating*> data(rec["gates"])
    cdef const floating* cs = <const floating*> data(rec["cs"])
    cdef const floating* hn = <const floating*> data(rec["hn"])
    cdef const floating* ctil = <const floating*> data(rec["ctil"])
    cdef const floating* rhat = <const floating*> data(rec["rhat"])
    cdef const floating* rstd_h = <const floating*> data(rec["rstd_h"])
    cdef const floating* chat = <const floating*> data(rec["chat"])
    cdef const floating* rstd_c = <const floating*> data(rec["rstd_c"])
    cdef Py_ssize_t wh = B if norm == LAYER else G, wc = B if norm == LAYER else H
    # results
    cdef floating* dP = <floating*> data(out["dP"])
    cdef floating* dR = <floating*> data(out["dR"])  # may be dP
    cdef floating* g_h = <floating*> data(out["dh0"])  # dL/dh_t, then dL/dh_0
    cdef floating* g_c = <floating*> data(out["dc0"])  # dL/dc_t, then dL/dc_0 (LSTM)
    cdef floating* grad_norms = <floating*> data(out["grad_norms"])
    cdef floating* dgh = <floating*> data(out["gh"])
    cdef floating* dgc = <floating*> data(out["gc"])
    cdef floating* dbc = <floating*> data(out["bc"])
    cdef floating* dbhn = <floating*> data(out["bhn"])
    # workspaces (B, H) but dRn (B, G)
    cdef floating* g_cell = <floating*> data(out["g_cell"])  # (1 - zh) g_h, zoneout
    cdef floating* dcf = <floating*> data(out["dcf"])  # dL/d~c_t, then dc f (LSTM)
    cdef floating* u = <floating*> data(out["u"])  # tanh(chat gc + bc) (LSTM, norm)
    cdef floating* dchat = <floating*> data(out["dchat"])
    cdef floating* gz = <floating*> data(out["gz"])  # g z (GRU)
    cdef floating* dRn = <floating*> data(out["dRn"])  # dL/dRn_t (GRU with norm)
    cdef floating* back = <floating*> data(out["back"])  # dR_t Whh
    cdef double* acc = <double*> data(out["acc"])
    cdef floating* dP_t
    cdef floating* dR_t
    cdef floating* dRn_t
    cdef const floating* gates_t
    cdef Py_ssize_t i
    with nogil:
        for t in range(T - 1, -1, -1):
            gates_t = gates + t * BG
            dP_t = dP + t * BG
            dR_t = dR + t * BG
            add_active_rows(g_h, &dh_out[t, 0, 0], lengths, t, B, H)
            grad_norms[t] = <floating> sqrt(sum_of_squares(BH, g_h))
            if zh != NULL:
                kept_part(g_cell, zh + t * BH, g_h, BH)
            else:
                g_cell = g_h
            # the cell's backward epilogue: dP_t and dRn_t, the gradient of N_h(R_t) gh
            if cell == ELMAN:
                times_derivative(dP_t, g_cell, gates_t, BH, code, slope)
                dRn_t = dP_t
            elif cell == LSTM:
                if zc != NULL:
                    kept_part(dcf, zc + t * BH, g_c, BH)
                else:
                    memcpy(dcf, g_c, BH * sizeof(floating))
                if norm:
                    # dL/d~c_t += N_c backward of du gc, through h = o tanh(chat gc + bc)
                    normalized_output_backward(g_cell, gates_t, chat + t * BH, gc, bc, u, dchat,
                                               dgc, dbc, B, H, lengths, t)
                    normalize_backward(norm, dchat, chat + t * BH, rstd_c + t * wc, B, H,
                                       lengths, t, acc)
                    for i in range(BH):
                        dcf[i] = dcf[i] + dchat[i]
                    lstm_backward_from_dc(dcf, g_cell, u, gates_t, cs + t * BH, dP_t, B, H)
                else:
                    lstm_cell_backward(g_cell, dcf, gates_t, cs + t * BH,
                                       ctil + t * BH if zc != NULL else cs + (t + 1) * BH,
                                       dP_t, 1, B, H)
                dRn_t = dP_t
            else:
                dRn_t = dRn if norm else dR_t
                gru_cell_backward(g_cell, gates_t, hn + t * BH, hs + t * BH, dP_t, dRn_t, gz, 1,
                                  B, H)
            zero_inactive_rows(dP_t, lengths, t, B, G)
            if dRn_t != dP_t:
                zero_inactive_rows(dRn_t, lengths, t, B, G)
            if cell == GRU:
                add_column_sums(dbhn, dRn_t + 2 * H, NULL, B, H, G)  # hn = Rn_n + bhn
            if norm:
                # dgh += sum over rows of dRn_t rhat_t; dR_t = N_h backward of dRn_t gh
                add_column_sums(dgh, dRn_t, rhat + t * BG, B, G, G)
                scale_columns(dR_t, dRn_t, gh, B, G)
                normalize_backward(norm, dR_t, rhat + t * BG, rstd_h + t * wh, B, G, lengths,
                                   t, acc)
            scale = 1 if carry == NULL else carry[t]
            if scale != 0:
                # back (B, H) = dR_t (B, G) Whh (G, H)
                if Whh_panels != NULL:
                    gemm_panels(<int> B, <int> H, <int> G, 1, dR_t, <int> G, Whh_panels, 0,
                                back, <int> H)
                else:
                    gemm(False, False, <int> B, <int> H, <int> G, 1, dR_t, <int> G, Whh,
                         <int> H, 0, back, <int> H)
            carry_back(g_h, back, rmask, zh + t * BH if zh != NULL else NULL,
                       gz if cell == GRU else NULL, g_c, dcf, zc + t * BH if zc != NULL else NULL,
                       scale, lengths, t, B, H)


# ---------------------------------------------------------------------------------------------
# the public kernels: check, allocate, run
# ---------------------------------------------------------------------------------------------

def _panels(W, Py_ssize_t M):
    """``W`` (K, N) packed in panels for ``gemm_panels`` where the per-step product
    (M, K) x (K, N) runs on cyrnn's own kernel (the same bits, with the weights read panel by
    panel rather than a row per page; see ``pyx/cyrnn/_smallgemm.h``), else None."""
    cdef Py_ssize_t K = W.shape[0], N = W.shape[1]
    cdef bint single = W.dtype == np.float32
    if M < 2 or panel_columns(single) == 0 or not on_own_kernel(M, N, K):
        return None
    out = np.empty(K * N, W.dtype)
    cdef void* src = data(W)
    cdef void* dst = data(out)
    with nogil:
        if single:
            spack_panels(<const float*> src, K, N, N, <float*> dst)
        else:
            dpack_panels(<const double*> src, K, N, N, <double*> dst)
    return out


def _code(name, value, count):
    """``value`` as an int in ``range(count)``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int in [0, {count}), got {value!r}")
    if not 0 <= value < count:
        raise ValueError(f"{name}: expected an int in [0, {count}), got {value}")
    return int(value)


def _array(name, a, shape, dtype):
    """``a`` checked as a C-contiguous aligned array of ``dtype`` and ``shape``."""
    a = _checks.float_array(name, a, len(shape), dtype)
    _checks.expect_shape(name, a, shape)
    return a


def _options(a, cell, norm, act, gh, gc, bc, rmask, zh, zc, lengths, T, B, H, G, dtype):
    """Check the options both kernels share into the namespace ``a``."""
    try:
        code, slope = act
    except (TypeError, ValueError):
        raise TypeError(f"act: expected a pair (code, slope), got {act!r}") from None
    a.code = _code("act[0]", code, len(_checks.NONLINEARITIES))
    _checks.nonlinearity_code(_checks.NONLINEARITIES[a.code], slope)
    a.slope = float(slope)
    a.cell, a.norm, a.T, a.B, a.H, a.G = cell, norm, T, B, H, G
    a.gh = _array("gh", gh, (G,), dtype) if norm else None
    a.gc = _array("gc", gc, (H,), dtype) if norm and cell == LSTM else None
    a.bc = _array("bc", bc, (H,), dtype) if norm and cell == LSTM else None
    a.rmask = None if rmask is None else _array("rmask", rmask, (B, H), dtype)
    a.zh = None if zh is None else _array("zh", zh, (T, B, H), dtype)
    a.zc = None if zc is None or cell != LSTM else _array("zc", zc, (T, B, H), dtype)
    a.lengths = _checks.lengths_array(lengths, T, B)
    if max(B, G, H) > _INT32_MAX:
        raise ValueError(f"sizes too large for 32-bit BLAS: B = {B}, G = {G}, H = {H}")
    # nothing to run for an empty batch or sequence: the twin handles those
    a.empty = T == 0 or B == 0 or H == 0


class _Args:
    pass


def _forward_args(cell, P, h0, c0, Whh, bhn, act, norm, gh, gc, bc, stats, rmask, zh, zc,
                  lengths):
    a = _Args()
    cell = _code("cell", cell, 3)
    norm = _code("norm", norm, 4)
    a.P = P = _checks.float_array("P", P, 3)
    dtype = P.dtype
    T, B, G = P.shape
    h0 = _checks.float_array("h0", h0, 2, dtype)
    H = h0.shape[1]
    _checks.expect_shape("h0", h0, (B, H))
    _checks.expect_shape("P", P, (T, B, _GATES[cell] * H))
    a.h0 = h0
    a.c0 = _array("c0", c0, (B, H), dtype) if cell == LSTM else None
    a.Whh = _array("Whh", Whh, (G, H), dtype)
    a.WhhT = np.ascontiguousarray(a.Whh.T)
    a.WhhT_panels = _panels(a.WhhT, B)
    a.bhn = _array("bhn", bhn, (H,), dtype) if cell == GRU else None
    _options(a, cell, norm, act, gh, gc, bc, rmask, zh, zc, lengths, T, B, H, G, dtype)
    a.stats = (None, None, None, None)
    if norm == BATCH_FIXED:
        names = ("mean_h", "var_h", "mean_c", "var_c")[:4 if cell == LSTM else 2]
        if not isinstance(stats, (tuple, list)) or len(stats) < len(names):
            raise ValueError(f"stats: expected ({', '.join(names)}) with norm={BATCH_FIXED}, "
                             f"got {stats!r:.80}")
        a.stats = tuple(_array(f"stats[{k}] ({name})", stats[k],
                               (T, G if name.endswith("h") else H), dtype)
                        for k, name in enumerate(names)) + (None, None)
    return a


def _new_record(a):
    """The record ``_forward`` fills, with the twin's keys in the twin's order."""
    T, B, H, G, dtype = a.T, a.B, a.H, a.G, a.P.dtype
    hs = np.empty((T + 1, B, H), dtype)
    hs[0] = a.h0
    rec = {"hs": hs, "gates": np.empty((T, B, G), dtype)}
    if a.cell == LSTM:
        rec["cs"] = np.empty((T + 1, B, H), dtype)
        rec["cs"][0] = a.c0
    if a.cell == GRU:
        rec["hn"] = np.empty((T, B, H), dtype)
    if a.zc is not None:
        rec["ctil"] = np.empty((T, B, H), dtype)
    if a.norm:
        rec["rhat"] = np.empty((T, B, G), dtype)
        rec["rstd_h"] = np.empty((T, B, 1) if a.norm == LAYER else (T, G), dtype)
        if a.cell == LSTM:
            rec["chat"] = np.empty((T, B, H), dtype)
            rec["rstd_c"] = np.empty((T, B, 1) if a.norm == LAYER else (T, H), dtype)
    if a.norm == BATCH:
        rec["mean_h"], rec["var_h"] = np.zeros((T, G), dtype), np.zeros((T, G), dtype)
        if a.cell == LSTM:
            rec["mean_c"], rec["var_c"] = np.zeros((T, H), dtype), np.zeros((T, H), dtype)
        rec["count"] = (np.full(T, B) if a.lengths is None
                        else (np.arange(T)[:, None] < a.lengths[None, :]).sum(axis=1))
    return rec


def recurrence_forward(cell, P, h0, c0, Whh, bhn, *, act=(0, 0.0), norm=NONE, gh=None, gc=None,
                       bc=None, stats=None, rmask=None, zh=None, zc=None, lengths=None):
    """recurrence_forward(cell, P, h0, c0, Whh, bhn, *, act=(0, 0.0), norm=0, gh=None, gc=None, bc=None, stats=None, rmask=None, zh=None, zc=None, lengths=None)

    One layer of cell ``cell`` with a normalized and regularized recurrence over all steps: per
    step one GEMM (``R_t = (h_{t-1} rmask) Whh^T``) and fused passes (normalization, the cell's
    epilogue, zoneout, lengths). The full contract is the docstring of the NumPy twin, copied
    here by ``cyrnn.kernels``.
    """
    a = _forward_args(cell, P, h0, c0, Whh, bhn, act, norm, gh, gc, bc, stats, rmask, zh, zc,
                      lengths)
    if a.empty:
        from cyrnn.kernels import numpy_recurrence
        return numpy_recurrence.recurrence_forward(
            a.cell, a.P, a.h0, a.c0, a.Whh, a.bhn, act=act, norm=a.norm, gh=a.gh, gc=a.gc,
            bc=a.bc, stats=stats, rmask=a.rmask, zh=a.zh, zc=a.zc, lengths=a.lengths)
    rec = _new_record(a)
    _forward(a.P, a, rec)
    return rec


def _record_shapes(cell, norm, zc, T, B, H, G):
    """The shape of each array of the record that the backward pass reads (None: unread)."""
    per_row = norm == LAYER
    return {
        "hs": (T + 1, B, H),
        "gates": (T, B, G),
        "cs": (T + 1, B, H) if cell == LSTM else None,
        "hn": (T, B, H) if cell == GRU else None,
        "ctil": (T, B, H) if cell == LSTM and zc and not norm else None,
        "rhat": (T, B, G) if norm else None,
        "rstd_h": ((T, B, 1) if per_row else (T, G)) if norm else None,
        "chat": (T, B, H) if cell == LSTM and norm else None,
        "rstd_c": ((T, B, 1) if per_row else (T, H)) if cell == LSTM and norm else None,
    }


def _backward_args(cell, rec, dh_out, Whh, act, norm, gh, gc, bc, rmask, zh, zc, lengths,
                   carry):
    a = _Args()
    cell = _code("cell", cell, 3)
    norm = _code("norm", norm, 4)
    a.dh_out = dh_out = _checks.float_array("dh_out", dh_out, 3)
    dtype = dh_out.dtype
    T, B, H = dh_out.shape
    G = _GATES[cell] * H
    a.Whh = _array("Whh", Whh, (G, H), dtype)
    a.Whh_panels = _panels(a.Whh, B)
    _options(a, cell, norm, act, gh, gc, bc, rmask, zh, zc, lengths, T, B, H, G, dtype)
    a.carry = _checks.carry_array(carry, T, dtype)
    if not isinstance(rec, dict):
        raise TypeError(f"rec: expected the dict recurrence_forward returns, got "
                        f"{type(rec).__name__}")
    a.rec = {}
    for name, shape in _record_shapes(cell, norm, a.zc is not None, T, B, H, G).items():
        if shape is None:
            a.rec[name] = None
            continue
        if name not in rec:
            raise ValueError(f"rec: missing {name!r}, which cell={cell} norm={norm} needs")
        a.rec[name] = _array(f"rec[{name!r}]", rec[name], shape, dtype)
    return a


def recurrence_backward(cell, rec, dh_out, Whh, *, act=(0, 0.0), norm=NONE, gh=None, gc=None,
                        bc=None, rmask=None, zh=None, zc=None, lengths=None, carry=None):
    """recurrence_backward(cell, rec, dh_out, Whh, *, act=(0, 0.0), norm=0, gh=None, gc=None, bc=None, rmask=None, zh=None, zc=None, lengths=None, carry=None)

    Full BPTT through ``recurrence_forward``'s layer: per step fused passes (the cell's
    epilogue, the normalizations' backward, zoneout, lengths, carry) and one GEMM
    (``dR_t Whh``). The full contract is the docstring of the NumPy twin, copied here by
    ``cyrnn.kernels``.
    """
    a = _backward_args(cell, rec, dh_out, Whh, act, norm, gh, gc, bc, rmask, zh, zc, lengths,
                       carry)
    if a.empty:
        from cyrnn.kernels import numpy_recurrence
        return numpy_recurrence.recurrence_backward(
            a.cell, rec, a.dh_out, a.Whh, act=act, norm=a.norm, gh=a.gh, gc=a.gc, bc=a.bc,
            rmask=a.rmask, zh=a.zh, zc=a.zc, lengths=a.lengths, carry=a.carry)
    T, B, H, G, dtype = a.T, a.B, a.H, a.G, a.dh_out.dtype
    lstm, gru, norm = a.cell == LSTM, a.cell == GRU, a.norm

    def state(needed=True):
        return np.empty((B, H), dtype) if needed else None

    dP = np.empty((T, B, G), dtype)
    out = {
        "dP": dP, "dR": np.empty((T, B, G), dtype) if (norm or gru) else dP,
        "dh0": np.zeros((B, H), dtype), "dc0": np.zeros((B, H), dtype) if lstm else None,
        "grad_norms": np.empty(T, dtype),
        "gh": np.zeros(G, dtype) if norm else None,
        "gc": np.zeros(H, dtype) if norm and lstm else None,
        "bc": np.zeros(H, dtype) if norm and lstm else None,
        "bhn": np.zeros(H, dtype) if gru else None,
        "g_cell": state(a.zh is not None), "dcf": state(lstm), "u": state(lstm and norm),
        "dchat": state(lstm and norm), "gz": state(gru),
        "dRn": np.empty((B, G), dtype) if gru and norm else None,
        "back": state(), "acc": np.empty(2 * max(G, H), np.float64),
    }
    _backward(a.dh_out, a, a.rec, out)
    extra = {name: out[name] for name in ("gh", "gc", "bc", "bhn") if out[name] is not None}
    return out["dP"], out["dR"], out["dh0"], out["dc0"], out["grad_norms"], extra


# ---------------------------------------------------------------------------------------------
# layer normalization of whole-sequence rows: the input term N_x(X Wxh^T) * gx of every step
# ---------------------------------------------------------------------------------------------

def _rows_forward(floating[:, ::1] y, floating[:, ::1] xhat, floating[:, ::1] rstd,
                  const floating[::1] gain):
    cdef Py_ssize_t rows = y.shape[0], n = y.shape[1]
    if rows and n:
        with nogil:
            layer_norm(&y[0, 0], &xhat[0, 0], &rstd[0, 0], &gain[0], rows, n)


def _rows_backward(const floating[:, ::1] dy, const floating[:, ::1] xhat,
                   const floating[:, ::1] rstd, const floating[::1] gain,
                   floating[::1] dgain, floating[:, ::1] d):
    cdef Py_ssize_t rows = d.shape[0], n = d.shape[1]
    if rows and n:
        with nogil:
            layer_norm_gain_backward(&dy[0, 0], &xhat[0, 0], &rstd[0, 0], &gain[0], &dgain[0],
                                     &d[0, 0], rows, n)


def _rows_args(name, x, gain):
    """``x`` (N, G) and ``gain`` (G,) checked: C-contiguous float arrays of one dtype."""
    x = _checks.float_array(name, x, 2, None)
    gain = _array("gain", gain, (x.shape[1],), x.dtype)
    return x, gain


def layer_norm_rows(x, gain):
    x, gain = _rows_args("x", x, gain)
    y = np.array(x, order="C")  # normalized in place: the caller's x stays as it was
    xhat = np.empty_like(y)
    rstd = np.empty((y.shape[0], 1), y.dtype)
    _rows_forward(y, xhat, rstd, gain)
    return y, xhat, rstd


def layer_norm_rows_backward(dy, xhat, rstd, gain):
    dy, gain = _rows_args("dy", dy, gain)
    xhat = _array("xhat", xhat, dy.shape, dy.dtype)
    rstd = _array("rstd", rstd, (dy.shape[0], 1), dy.dtype)
    dgain = np.zeros(dy.shape[1], dy.dtype)
    d = np.empty_like(dy)
    _rows_backward(dy, xhat, rstd, gain, dgain, d)  # the fused stack step's loop (_norms.pxi)
    return d, dgain
