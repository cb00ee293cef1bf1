# The epilogues of the normalized and regularized recurrences that both of their compiled paths
# run: layer normalization of rows and the LSTM's output through its normalized cell state
# (_recurrence.h, SIMD builds chosen at run time like _gated.h), as fused float32/float64
# functions; the column loops of a gain's gradient; and the step ends of recurrent dropout and
# zoneout (commit, carry_back). Included by _recurrence.pyx (the layer kernels) and by _rnn.pyx
# (the fused stack step, _stack.pxi), so that both compile the same loops.

cdef extern from "_recurrence.h" nogil:
    void layer_norm_f32 "cyrnn_layer_norm_f32"(float* x, float* xhat, float* rstd,
                                               const float* gain, float eps, long rows, long n)
    void layer_norm_f64 "cyrnn_layer_norm_f64"(double* x, double* xhat, double* rstd,
                                               const double* gain, double eps, long rows,
                                               long n)
    void layer_norm_backward_f32 "cyrnn_layer_norm_backward_f32"(float* d, const float* xhat,
                                                                 const float* rstd, long rows,
                                                                 long n)
    void layer_norm_backward_f64 "cyrnn_layer_norm_backward_f64"(double* d, const double* xhat,
                                                                 const double* rstd, long rows,
                                                                 long n)
    void layer_norm_gain_backward_f32 "cyrnn_layer_norm_gain_backward_f32"(
        const float* dy, const float* xhat, const float* rstd, const float* gain, float* dgain,
        float* dx, long rows, long n)
    void layer_norm_gain_backward_f64 "cyrnn_layer_norm_gain_backward_f64"(
        const double* dy, const double* xhat, const double* rstd, const double* gain,
        double* dgain, double* dx, long rows, long n)
    void normalized_output_f32 "cyrnn_normalized_output_f32"(
        const float* gates, const float* chat, const float* gc, const float* bc, float* h,
        long rows, long H)
    void normalized_output_f64 "cyrnn_normalized_output_f64"(
        const double* gates, const double* chat, const double* gc, const double* bc, double* h,
        long rows, long H)
    void normalized_output_backward_f32 "cyrnn_normalized_output_backward_f32"(
        const float* g, const float* gates, const float* chat, const float* gc, const float* bc,
        float* u, float* dchat, float* dgc, float* dbc, long rows, long H)
    void normalized_output_backward_f64 "cyrnn_normalized_output_backward_f64"(
        const double* g, const double* gates, const double* chat, const double* gc,
        const double* bc, double* u, double* dchat, double* dgc, double* dbc, long rows, long H)
    void lstm_backward_from_dc_f32 "cyrnn_lstm_backward_from_dc_f32"(
        float* dc, const float* g, const float* u, const float* gates, const float* c_prev,
        float* da, long rows, long H)
    void lstm_backward_from_dc_f64 "cyrnn_lstm_backward_from_dc_f64"(
        double* dc, const double* g, const double* u, const double* gates,
        const double* c_prev, double* da, long rows, long H)

cdef double EPS = 1e-5  # inside the square root of every normalization


cdef inline void layer_norm(floating* x, floating* xhat, floating* rstd, const floating* gain,
                            Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """Each row over its n values: xhat = (x - mean) * rstd, rstd (rows,) = 1/sqrt(var + eps),
    biased variance (_recurrence.h)."""
    if floating is float:
        layer_norm_f32(x, xhat, rstd, gain, <float> EPS, rows, n)
    else:
        layer_norm_f64(x, xhat, rstd, gain, EPS, rows, n)


cdef inline void layer_norm_backward(floating* d, const floating* xhat, const floating* rstd,
                                     Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    if floating is float:
        layer_norm_backward_f32(d, xhat, rstd, rows, n)
    else:
        layer_norm_backward_f64(d, xhat, rstd, rows, n)


cdef inline void layer_norm_gain_backward(const floating* dy, const floating* xhat,
                                          const floating* rstd, const floating* gain,
                                          floating* dgain, floating* dx, Py_ssize_t rows,
                                          Py_ssize_t n) noexcept nogil:
    """Through y = N(x) gain, layer normalization of rows (rows, n), from dy = dL/dy: dgain
    (n,) += the column sums of dy xhat, dx = dL/dx (dx may be dy itself)."""
    if floating is float:
        layer_norm_gain_backward_f32(dy, xhat, rstd, gain, dgain, dx, rows, n)
    else:
        layer_norm_gain_backward_f64(dy, xhat, rstd, gain, dgain, dx, rows, n)


cdef inline void scale_columns(floating* out, const floating* x, const floating* gain,
                               Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """out (rows, n) = x * gain, gain (n,)."""
    cdef Py_ssize_t b, j
    for b in range(rows):
        for j in range(n):
            out[b * n + j] = x[b * n + j] * gain[j]


cdef inline void normalized_output(const floating* gates, const floating* chat,
                                   const floating* gc, const floating* bc, floating* h,
                                   Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    """The LSTM's h (rows, H) = o tanh(chat gc + bc), o the last block of gates (rows, 4H)."""
    if floating is float:
        normalized_output_f32(gates, chat, gc, bc, h, rows, H)
    else:
        normalized_output_f64(gates, chat, gc, bc, h, rows, H)


cdef inline void normalized_output_rows_backward(const floating* g, const floating* gates,
                                                 const floating* chat, const floating* gc,
                                                 const floating* bc, floating* u,
                                                 floating* dchat, floating* dgc, floating* dbc,
                                                 Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    """Through h = o u, u = tanh(chat gc + bc), from g = dL/dh (rows, H): u, dL/dchat = du gc
    with du = g o (1 - u^2); the gradients of gc and bc (H,) grow by every row's du chat and
    du."""
    if floating is float:
        normalized_output_backward_f32(g, gates, chat, gc, bc, u, dchat, dgc, dbc, rows, H)
    else:
        normalized_output_backward_f64(g, gates, chat, gc, bc, u, dchat, dgc, dbc, rows, H)


cdef inline void lstm_backward_from_dc(floating* dc, const floating* g, const floating* u,
                                       const floating* gates, const floating* c_prev,
                                       floating* da, Py_ssize_t rows,
                                       Py_ssize_t H) noexcept nogil:
    """The LSTM's backward epilogue when h = o u does not read c: from dc = dL/dc_t (rows, H)
    (in place: dc f on return, towards c_{t-1}) and g = dL/dh_t: da (rows, 4H)."""
    if floating is float:
        lstm_backward_from_dc_f32(dc, g, u, gates, c_prev, da, rows, H)
    else:
        lstm_backward_from_dc_f64(dc, g, u, gates, c_prev, da, rows, H)


cdef inline void add_column_sums(floating* out, const floating* x, const floating* y,
                                 Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    """out (n,) += sum over rows of x * y (or of x for y NULL), x and y (rows, n) with leading
    dimension ld: a gain's or a bias's gradient."""
    cdef Py_ssize_t b, j
    for b in range(rows):
        if y == NULL:
            for j in range(n):
                out[j] += x[b * ld + j]
        else:
            for j in range(n):
                out[j] += x[b * ld + j] * y[b * ld + j]


# ---------------------------------------------------------------------------------------------
# the step ends of recurrent dropout (rmask) and zoneout (zh, zc), on the rows of the sequences
# that have the step (all of them for `lengths` NULL)
# ---------------------------------------------------------------------------------------------

cdef inline bint active(const Py_ssize_t* lengths, Py_ssize_t t, Py_ssize_t b) noexcept nogil:
    """Whether sequence b has a step t (all do without lengths)."""
    return lengths == NULL or t < lengths[b]


cdef inline void multiply(floating* out, const floating* x, const floating* y,
                          Py_ssize_t n) noexcept nogil:
    """out = x * y."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = x[i] * y[i]


cdef inline void kept_part(floating* out, const floating* z, const floating* g,
                           Py_ssize_t n) noexcept nogil:
    """out = (1 - z) * g: the part of a gradient that reaches the cell through zoneout."""
    cdef floating one = 1  # a typed 1: a bare literal would compute in double
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = (one - z[i]) * g[i]


cdef inline void commit(floating* h, const floating* h_prev, floating* gates, const floating* zh,
                        floating* c, const floating* c_prev, const floating* c_tilde,
                        const floating* zc, const Py_ssize_t* lengths, Py_ssize_t t,
                        Py_ssize_t B, Py_ssize_t H, Py_ssize_t G) noexcept nogil:
    """The end of a forward step: zoneout h = zh h_prev + (1 - zh) h (and the LSTM's c from
    c_tilde with zc), on the rows of active sequences; the others keep their states, their
    gates are zero."""
    cdef Py_ssize_t b, j, k
    cdef floating one = 1  # a typed 1: a bare literal would compute in double
    for b in range(B):
        if not active(lengths, t, b):
            memset(gates + b * G, 0, G * sizeof(floating))
            memcpy(h + b * H, h_prev + b * H, H * sizeof(floating))
            if c != NULL:
                memcpy(c + b * H, c_prev + b * H, H * sizeof(floating))
            continue
        if zh != NULL:
            for j in range(H):
                k = b * H + j
                h[k] = zh[k] * h_prev[k] + (one - zh[k]) * h[k]
        if zc != NULL:
            for j in range(H):
                k = b * H + j
                c[k] = zc[k] * c_prev[k] + (one - zc[k]) * c_tilde[k]


cdef inline void carry_back(floating* g_h, const floating* back, const floating* rmask,
                            const floating* zh, const floating* gz, floating* g_c,
                            const floating* dcf, const floating* zc, floating scale,
                            const Py_ssize_t* lengths, Py_ssize_t t, Py_ssize_t B,
                            Py_ssize_t H) noexcept nogil:
    """The end of a backward step, on the rows of active sequences (the others pass g_h, g_c
    through): g_h <- scale (back rmask + zh g_h + gz), g_c <- scale (dcf + zc g_c), zero for a
    zero scale (nothing crosses a cut, not even 0 * inf). back = dR_t Whh (unread for scale 0)."""
    cdef Py_ssize_t b, j, k
    cdef floating direct, x
    for b in range(B):
        if not active(lengths, t, b):
            continue
        if scale == 0:
            memset(g_h + b * H, 0, H * sizeof(floating))
            if g_c != NULL:
                memset(g_c + b * H, 0, H * sizeof(floating))
            continue
        for j in range(H):
            k = b * H + j
            direct = 0 if zh == NULL else zh[k] * g_h[k]
            if gz != NULL:
                direct = direct + gz[k]
            x = back[k] if rmask == NULL else back[k] * rmask[k]
            g_h[k] = (x + direct) * scale
        if g_c != NULL:
            for j in range(H):
                k = b * H + j
                direct = 0 if zc == NULL else zc[k] * g_c[k]
                g_c[k] = (dcf[k] + direct) * scale
