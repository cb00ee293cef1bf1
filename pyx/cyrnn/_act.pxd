# Elementwise activations and their derivatives, fused over float32/float64.
#
# Each loop runs over one contiguous block with the activation chosen outside the loop, so the C
# compiler can vectorize it. The float32 loops live in _elementwise.h, built for AVX-512, AVX2
# and the baseline and chosen at run time, with a vectorizable rational tanh (libm's tanhf is a
# scalar call that blocks vectorization, and ran 2-2.5x slower than NumPy's SIMD tanh). float64
# keeps libm's tanh for accuracy.
from libc.math cimport exp as libm_exp, tanh as libm_tanh
from cython cimport floating

cdef extern from "_elementwise.h" nogil:
    float tanh_f32 "cyrnn_tanh_f32"(float x)
    void activate_f32 "cyrnn_activate_f32"(float* a, long n, int code, float slope)
    void times_derivative_f32 "cyrnn_times_derivative_f32"(float* out, const float* g,
                                                           const float* h, long n, int code,
                                                           float slope)
    void exp_f64_inplace "cyrnn_exp_f64_inplace"(double* x, long n)
    void exp_f32_inplace "cyrnn_exp_f32_inplace"(float* x, long n)
    int elementwise_widest "cyrnn_elementwise_widest"()
    void rows_f32 "cyrnn_rows_f32"(float* y, const float* x, long rows, long n, int sum)
    void rows_f64 "cyrnn_rows_f64"(double* y, const double* x, long rows, long n, int sum)
    int rows_build_f32 "cyrnn_rows_build_f32"(int which, float* y, const float* x, long rows,
                                              long n, int sum)
    int rows_build_f64 "cyrnn_rows_build_f64"(int which, double* y, const double* x, long rows,
                                              long n, int sum)
    int exp_build "cyrnn_exp_build"(int which, double* x, long n)
    int exp_f32_build "cyrnn_exp_f32_build"(int which, float* x, long n)
    int elementwise_build "cyrnn_elementwise_build"(int which, int derivative, float* out,
                                                    const float* g, const float* h, long n,
                                                    int code, float slope)

# Codes of the nonlinearities, in the order of cyrnn._checks.NONLINEARITIES (and _elementwise.h).
cdef enum:
    TANH = 0
    RELU = 1
    SIGMOID = 2
    LEAKY_RELU = 3
    IDENTITY = 4


cdef inline void exp_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    """x[i] <- exp(x[i]) for i < n, in place: float32 by _elementwise.h (0 below its normal range,
    inf above, NaN for NaN), float64 by libm."""
    cdef Py_ssize_t i
    if floating is float:
        exp_f32_inplace(x, n)
    else:
        for i in range(n):
            x[i] = libm_exp(x[i])


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanh_f32(x)
    else:
        return libm_tanh(x)


cdef inline void activate(floating* a, Py_ssize_t n, int code, floating slope) noexcept nogil:
    """a[i] <- f(a[i]) for i < n, in place."""
    cdef Py_ssize_t i
    cdef floating half = 0.5
    if floating is float:
        activate_f32(a, n, code, slope)
    elif code == TANH:
        for i in range(n):
            a[i] = tanh_(a[i])
    elif code == RELU:
        # written so that NaN passes through, as NumPy's maximum does
        for i in range(n):
            a[i] = 0 if a[i] < 0 else a[i]
    elif code == SIGMOID:
        # sigmoid(x) = (1 + tanh(x / 2)) / 2: vectorizable and free of exp overflow
        for i in range(n):
            a[i] = half + half * tanh_(half * a[i])
    elif code == LEAKY_RELU:
        for i in range(n):
            a[i] = a[i] if a[i] > 0 else slope * a[i]
    # IDENTITY: nothing to do


cdef inline void times_derivative(floating* out, const floating* g, const floating* h,
                                  Py_ssize_t n, int code, floating slope) noexcept nogil:
    """out[i] <- g[i] * f'(a[i]), with f' written in terms of h[i] = f(a[i])."""
    cdef Py_ssize_t i
    if floating is float:
        times_derivative_f32(out, g, h, n, code, slope)
    elif code == TANH:
        for i in range(n):
            out[i] = g[i] * (1 - h[i] * h[i])
    elif code == RELU:
        for i in range(n):
            out[i] = g[i] if h[i] > 0 else 0
    elif code == SIGMOID:
        for i in range(n):
            out[i] = g[i] * (h[i] * (1 - h[i]))
    elif code == LEAKY_RELU:
        for i in range(n):
            out[i] = g[i] if h[i] > 0 else slope * g[i]
    else:
        for i in range(n):
            out[i] = g[i]


cdef inline void add_to_rows(floating* y, const floating* x, Py_ssize_t rows,
                             Py_ssize_t n) noexcept nogil:
    """y (rows, n) += x (n,) on every row: a bias."""
    if floating is float:
        rows_f32(y, x, rows, n, 0)
    else:
        rows_f64(y, x, rows, n, 0)


cdef inline void add_row_sums(floating* out, const floating* a, Py_ssize_t rows,
                              Py_ssize_t n) noexcept nogil:
    """out (n,) += the sum of the rows of a (rows, n): a bias's gradient."""
    if floating is float:
        rows_f32(out, a, rows, n, 1)
    else:
        rows_f64(out, a, rows, n, 1)
