# The gated cells' fused epilogues of _gated.h, over `rows` consecutive rows of one step, as
# fused float32/float64 functions (float32: the widest SIMD build this CPU runs, chosen at each
# call; float64: one build with libm's tanh). Included by the modules that run a gated cell.

cdef extern from "_gated.h" nogil:
    void lstm_forward_f32 "cyrnn_lstm_forward_f32"(float* a, const float* c_prev, float* c,
                                                   float* h, long rows, long H)
    void lstm_forward_f64 "cyrnn_lstm_forward_f64"(double* a, const double* c_prev, double* c,
                                                   double* h, long rows, long H)
    void lstm_backward_f32 "cyrnn_lstm_backward_f32"(const float* gh, float* gc,
                                                     const float* gates, const float* c_prev,
                                                     const float* c, float* da, float scale,
                                                     long rows, long H)
    void lstm_backward_f64 "cyrnn_lstm_backward_f64"(const double* gh, double* gc,
                                                     const double* gates, const double* c_prev,
                                                     const double* c, double* da, double scale,
                                                     long rows, long H)
    void gru_forward_f32 "cyrnn_gru_forward_f32"(const float* xw, const float* R,
                                                 const float* bhn, const float* h_prev,
                                                 float* gates, float* hn, float* h, long rows,
                                                 long H)
    void gru_forward_f64 "cyrnn_gru_forward_f64"(const double* xw, const double* R,
                                                 const double* bhn, const double* h_prev,
                                                 double* gates, double* hn, double* h,
                                                 long rows, long H)
    void gru_backward_f32 "cyrnn_gru_backward_f32"(const float* g, const float* gates,
                                                   const float* hn, const float* h_prev,
                                                   float* dxw, float* dR, float* gz,
                                                   float scale, long rows, long H)
    void gru_backward_f64 "cyrnn_gru_backward_f64"(const double* g, const double* gates,
                                                   const double* hn, const double* h_prev,
                                                   double* dxw, double* dR, double* gz,
                                                   double scale, long rows, long H)


cdef inline void lstm_cell_forward(floating* a, const floating* c_prev, floating* c, floating* h,
                                   Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    """a (rows, 4H) pre-activations -> gates [i, f, g, o]; c = f c_prev + i g; h = o tanh(c)."""
    if floating is float:
        lstm_forward_f32(a, c_prev, c, h, rows, H)
    else:
        lstm_forward_f64(a, c_prev, c, h, rows, H)


cdef inline void lstm_cell_backward(const floating* gh, floating* gc, const floating* gates,
                                    const floating* c_prev, const floating* c, floating* da,
                                    floating scale, Py_ssize_t rows,
                                    Py_ssize_t H) noexcept nogil:
    """da (rows, 4H) from gh, gc (rows, H); gc <- scale * dc * f in place (0 for scale 0)."""
    if floating is float:
        lstm_backward_f32(gh, gc, gates, c_prev, c, da, scale, rows, H)
    else:
        lstm_backward_f64(gh, gc, gates, c_prev, c, da, scale, rows, H)


cdef inline void gru_cell_forward(const floating* xw, const floating* R, const floating* bhn,
                                  const floating* h_prev, floating* gates, floating* hn,
                                  floating* h, Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    """gates [r, z, n] (rows, 3H), hn = R_n + bhn and h (rows, H) from xw and R (rows, 3H)."""
    if floating is float:
        gru_forward_f32(xw, R, bhn, h_prev, gates, hn, h, rows, H)
    else:
        gru_forward_f64(xw, R, bhn, h_prev, gates, hn, h, rows, H)


cdef inline void gru_cell_backward(const floating* g, const floating* gates, const floating* hn,
                                   const floating* h_prev, floating* dxw, floating* dR,
                                   floating* gz, floating scale, Py_ssize_t rows,
                                   Py_ssize_t H) noexcept nogil:
    """dxw, dR (rows, 3H) from g (rows, H); gz = scale * g * z (0 for scale 0)."""
    if floating is float:
        gru_backward_f32(g, gates, hn, h_prev, dxw, dR, gz, scale, rows, H)
    else:
        gru_backward_f64(g, gates, hn, h_prev, dxw, dR, gz, scale, rows, H)
