# Row-major wrappers over scipy.linalg.cython_blas, fused over float32/float64.
#
# BLAS is column-major; a row-major matrix X (r, c) with leading dimension ld is, to BLAS, the
# column-major matrix X^T (c, r). So the row-major product C = op(A) op(B) is computed as the
# column-major product C^T = op(B)^T op(A)^T: swap the operands and the sizes M and N, keep the
# transpose flags.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sdot, ddot


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating* A, int lda,
                      const floating* B, int ldb,
                      floating beta, floating* C, int ldc) noexcept nogil:
    """C (M, N) = alpha op(A) (M, K) op(B) (K, N) + beta C, all row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*> B, &ldb, <float*> A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*> B, &ldb, <double*> A, &lda, &beta, C, &ldc)


cdef inline floating dot(int n, const floating* x, const floating* y) noexcept nogil:
    """sum_i x[i] y[i] for contiguous vectors."""
    cdef int one = 1
    if floating is float:
        return sdot(&n, <float*> x, &one, <float*> y, &one)
    else:
        return ddot(&n, <double*> x, &one, <double*> y, &one)
