# Row-major matrix products, fused over float32/float64: cyrnn's own kernel (_smallgemm.h) where
# it measured faster, else scipy.linalg.cython_blas.
#
# BLAS is column-major; a row-major matrix X (r, c) with leading dimension ld is, to BLAS, the
# column-major matrix X^T (c, r). So the row-major product C = op(A) op(B) is computed as the
# column-major product C^T = op(B)^T op(A)^T: swap the operands and the sizes M and N, keep the
# transpose flags.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv, sdot, ddot

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

cdef enum:
    # Where cyrnn's own product kernel (_smallgemm.h) runs rather than BLAS, by M*N*K, while
    # BLAS runs on one thread (with more, OpenBLAS splits the larger products between threads);
    # single rows always. Measured on one core, side by side on the same data:
    # AVX-512 from 2^20 on: below, OpenBLAS's SkylakeX small-matrix kernels are as fast; above,
    # 1.0-1.8x OpenBLAS in float32. float64 only up to 2^24: above, packed dgemm is 2-8% ahead.
    OWN_KERNEL_MIN_WORK = 1 << 20
    OWN_KERNEL_MAX_WORK_F64 = 1 << 24
    # AVX2 up to 2^22: 1.1-3.7x OpenBLAS's Haswell kernels there (no small-matrix path), and
    # 0.5-0.6x at (64, 1024) x (1024, 1024) and larger
    OWN_KERNEL_MAX_WORK_AVX2 = 1 << 22
    # the parts of a long dot product (see dot): the largest power of two a 32-bit count holds
    DOT_CHUNK = 1 << 30


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating* A, int lda,
                      const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """C (M, N) = alpha op(A) (M, K) op(B) (K, N) + beta C, all row-major, beta 0 or 1.

    Products with B untransposed run on cyrnn's own kernel where the CPU has a build of it: a
    single row always, the sizes measured faster (see OWN_KERNEL_*) while BLAS runs on one
    thread. Otherwise a single row (M = 1, e.g. a batch of one) goes to GEMV, which OpenBLAS
    runs with less overhead, c (N,) = alpha op(B)^T a (K,) + beta c, and the rest to GEMM.
    """
    cdef long long work = <long long> M * N * K
    cdef int build = own_kernel_available()  # 2 AVX-512, 1 AVX2, 0 none
    if build and not trans_b and (M == 1 or (
            (work <= OWN_KERNEL_MAX_WORK_AVX2 if build == 1 else
             work >= OWN_KERNEL_MIN_WORK and (floating is float
                                             or work <= OWN_KERNEL_MAX_WORK_F64))
            and blas_threads(<void*> sgemm) == 1)):
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


cdef inline floating dot(Py_ssize_t n, const floating* x, const floating* y,
                         Py_ssize_t chunk) noexcept nogil:
    """sum_i x[i] y[i] for contiguous vectors of any length n. BLAS counts are 32-bit ints, and
    n (a B*H block, say) is not bounded by the argument checks: one call per part of at most
    `chunk` values (1 <= chunk <= 2^31 - 1; DOT_CHUNK but in tests), the parts summed in double.
    A vector of one part gives exactly the single call's result."""
    cdef int part, one = 1
    cdef Py_ssize_t start = 0
    cdef double total = 0
    while start < n:
        part = <int> (chunk if n - start > chunk else n - start)
        if floating is float:
            total += sdot(&part, <float*> x + start, &one, <float*> y + start, &one)
        else:
            total += ddot(&part, <double*> x + start, &one, <double*> y + start, &one)
        start += part
    return <floating> total
