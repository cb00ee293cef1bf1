# Row-major matrix products, fused over float32/float64: cyrnn's own kernel (_smallgemm.h) where
# it measured faster, else scipy.linalg.cython_blas.
#
# BLAS is column-major; a row-major matrix X (r, c) with leading dimension ld is, to BLAS, the
# column-major matrix X^T (c, r). So the row-major product C = op(A) op(B) is computed as the
# column-major product C^T = op(B)^T op(A)^T: swap the operands and the sizes M and N, keep the
# transpose flags.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

cdef extern from "_smallgemm.h" nogil:
    int sgemm_small "cyrnn_sgemm_small"(int trans_a, long M, long N, long K, float alpha,
                                        const float* A, long lda, const float* W, long ldw,
                                        int beta, float* C, long ldc)
    int dgemm_small "cyrnn_dgemm_small"(int trans_a, long M, long N, long K, double alpha,
                                        const double* A, long lda, const double* W, long ldw,
                                        int beta, double* C, long ldc)
    int blas_threads "cyrnn_blas_threads"(void* blas_function)
    int own_kernel_available "cyrnn_own_kernel_available"()
    int sgemm_build "cyrnn_sgemm_build"(int which, int trans_a, long M, long N, long K,
                                        float alpha, const float* A, long lda, const float* W,
                                        long ldw, int beta, float* C, long ldc)
    int dgemm_build "cyrnn_dgemm_build"(int which, int trans_a, long M, long N, long K,
                                        double alpha, const double* A, long lda,
                                        const double* W, long ldw, int beta, double* C, long ldc)
    long panel_columns "cyrnn_panel_columns"(int single)
    void spack_panels "cyrnn_spack_panels"(const float* W, long K, long N, long ldw, float* Wp)
    void dpack_panels "cyrnn_dpack_panels"(const double* W, long K, long N, long ldw,
                                           double* Wp)
    void spack_panels_t "cyrnn_spack_panels_t"(const float* V, long K, long N, long ldv,
                                               float* Wp)
    void dpack_panels_t "cyrnn_dpack_panels_t"(const double* V, long K, long N, long ldv,
                                               double* Wp)
    int sgemm_panels "cyrnn_sgemm_panels"(long M, long N, long K, float alpha, const float* A,
                                          long lda, const float* Wp, int beta, float* C,
                                          long ldc)
    int dgemm_panels "cyrnn_dgemm_panels"(long M, long N, long K, double alpha,
                                          const double* A, long lda, const double* Wp,
                                          int beta, double* C, long ldc)

cdef enum:
    # Which products run on cyrnn's own kernel (_smallgemm.h) and which on BLAS, by M*N*K.
    # The rule never looks at BLAS's thread count: cyrnn runs its own threads (shards of the
    # batch), a BLAS call inside a kernel must stay on the calling thread, and a product's
    # result must not depend on any thread count. OpenBLAS runs a GEMM on one thread up to
    # M*N*K = 65536 * GEMM_MULTITHREAD_THRESHOLD (4 by default), whatever its thread count, so:
    # up to BLAS_SINGLE_THREAD_MAX_WORK, BLAS (its small-matrix kernels tie with cyrnn's on
    # AVX-512, bench/RESULTS.md); above it, cyrnn's own kernel (1.0-1.8x OpenBLAS on one core in
    # float32; float64 within 2-8% of packed dgemm above 2^24), except on AVX2 builds above
    # OWN_KERNEL_MAX_WORK_AVX2 while BLAS runs on one thread, where OpenBLAS's Haswell kernels
    # are 1.7-2x faster (the one case where a BLAS thread setting changes the last bits).
    BLAS_SINGLE_THREAD_MAX_WORK = 1 << 18
    # and a GEMV on one thread up to M*N = 2304 * GEMM_MULTITHREAD_THRESHOLD: above it, kernels
    # multiply single rows by a transposed copy on cyrnn's own kernel instead
    BLAS_GEMV_SINGLE_THREAD_MAX_WORK = 9216
    OWN_KERNEL_MAX_WORK_AVX2 = 1 << 22


cdef inline bint on_own_kernel(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    """Whether gemm runs C (M, N) = A (M, K) B (K, N) (B untransposed) on cyrnn's own kernel:
    where the CPU has a build of it, a single row always, and every product above
    BLAS_SINGLE_THREAD_MAX_WORK (see there)."""
    cdef long long work = <long long> M * N * K
    cdef int build = own_kernel_available()  # 2 AVX-512, 1 AVX2, 0 none
    return build != 0 and (M == 1 or (
        work > BLAS_SINGLE_THREAD_MAX_WORK
        and not (build == 1 and work > OWN_KERNEL_MAX_WORK_AVX2
                 and blas_threads(<void*> sgemm) == 1)))


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating* A, int lda,
                      const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """C (M, N) = alpha op(A) (M, K) op(B) (K, N) + beta C, all row-major, beta 0 or 1.

    Products with B untransposed run on cyrnn's own kernel where on_own_kernel says so.
    Otherwise a single row (M = 1, e.g. a batch of one) goes to GEMV, which OpenBLAS runs with
    less overhead, c (N,) = alpha op(B)^T a (K,) + beta c, and the rest to GEMM.
    """
    if not trans_b and on_own_kernel(M, N, K):
        if floating is float:
            if sgemm_small(trans_a, M, N, K, alpha, A, lda, B, ldb, beta != 0, C, ldc):
                return
        else:
            if dgemm_small(trans_a, M, N, K, alpha, A, lda, B, ldb, beta != 0, C, ldc):
                return
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef char tv = b'T' if trans_b else b'N'
    cdef int inc_a = lda if trans_a else 1, one = 1
    if M == 1:
        # row-major B (K, N) is column-major B^T (N, K): op(B)^T a is GEMV 'N' on it (m = N,
        # n = K); a transposed B (N, K) is column-major (K, N): GEMV 'T' (m = K, n = N)
        if floating is float:
            if trans_b:
                sgemv(&tv, &K, &N, &alpha, <float*> B, &ldb, <float*> A, &inc_a, &beta, C, &one)
            else:
                sgemv(&tv, &N, &K, &alpha, <float*> B, &ldb, <float*> A, &inc_a, &beta, C, &one)
        else:
            if trans_b:
                dgemv(&tv, &K, &N, &alpha, <double*> B, &ldb, <double*> A, &inc_a, &beta, C, &one)
            else:
                dgemv(&tv, &N, &K, &alpha, <double*> B, &ldb, <double*> A, &inc_a, &beta, C, &one)
        return
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*> B, &ldb, <float*> A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*> B, &ldb, <double*> A, &lda, &beta, C, &ldc)


cdef inline void gemm_panels(int M, int N, int K, floating alpha, const floating* A, int lda,
                             const floating* Wp, floating beta, floating* C,
                             int ldc) noexcept nogil:
    """C (M, N) = alpha A (M, K) W (K, N) + beta C, row-major, beta 0 or 1, with W packed by
    pack_panels (so only where panel_columns is not 0): the same product, and the same bits, as
    gemm on cyrnn's own kernel with W in place."""
    if floating is float:
        sgemm_panels(M, N, K, alpha, A, lda, Wp, beta != 0, C, ldc)
    else:
        dgemm_panels(M, N, K, alpha, A, lda, Wp, beta != 0, C, ldc)


cdef inline double sum_of_squares(Py_ssize_t n, const floating* x) noexcept nogil:
    """sum_i x[i]^2 of a contiguous vector, in double, in a fixed order (eight partial sums,
    which the compiler vectorizes): the same on any thread count, for any 64-bit n."""
    cdef double partial[8]
    cdef Py_ssize_t i, j
    cdef double v
    for j in range(8):
        partial[j] = 0
    i = 0
    while i + 8 <= n:
        for j in range(8):
            v = x[i + j]
            partial[j] += v * v
        i += 8
    while i < n:
        v = x[i]
        partial[0] += v * v
        i += 1
    return (((partial[0] + partial[4]) + (partial[1] + partial[5]))
            + ((partial[2] + partial[6]) + (partial[3] + partial[7])))
