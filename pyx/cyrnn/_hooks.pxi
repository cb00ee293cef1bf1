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


def _panel_product(A, W, C, double alpha, bint accumulate):
    """``C = alpha A @ W (+ C if accumulate)`` in place as the recurrences of the gated cells
    run it, on W packed in panels (``panel_copy``, ``gemm_panels``), on the widest build here,
    for C-contiguous 2-D arrays of one float dtype. Returns False, with C untouched, where the
    CPU has no build of cyrnn's own kernel."""
    for name, a in (("A", A), ("W", W), ("C", C)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                and a.dtype == C.dtype and a.ndim == 2 and a.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous 2-D float32 or float64 array, of "
                            f"C's dtype")
    if not C.flags.writeable:
        raise ValueError("C must be writeable")
    cdef int M = A.shape[0], K = A.shape[1], N = W.shape[1]
    if K != W.shape[0] or C.shape != (M, N):
        raise ValueError(f"shapes {A.shape} @ {W.shape} -> {C.shape} do not match")
    if panel_columns(C.dtype == np.float32) == 0:
        return False
    Wp = panel_copy(W)
    cdef void* p_A = data(A)
    cdef void* p_W = data(Wp)
    cdef void* p_C = data(C)
    if C.dtype == np.float32:
        with nogil:
            gemm_panels(M, N, K, <float> alpha, <const float*> p_A, K, <const float*> p_W,
                        <float> accumulate, <float*> p_C, N)
    else:
        with nogil:
            gemm_panels(M, N, K, alpha, <const double*> p_A, K, <const double*> p_W,
                        <double> accumulate, <double*> p_C, N)
    return True


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

