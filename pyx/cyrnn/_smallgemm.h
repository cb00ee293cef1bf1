/* Register-blocked float32 and float64 products for the recurrences, on CPUs with AVX-512.
 *
 * Each time step of an RNN multiplies a (B, H) state block by the same (H, H) matrix. OpenBLAS
 * runs tiny products (M*N*K up to about 1e6) through its own unpacked small-matrix kernels,
 * which this one only ties; above that it copies ("packs") both operands into its own layout
 * on every call, and at B = 32..64, H = 256..1024 that copy costs 25-40% of the product. This
 * kernel reads W in the layout the caller already keeps, and holds a block of up to 6 rows x 4
 * vectors (64 floats or 32 doubles) of the result in 24 vector registers while the shared
 * dimension streams past: one pass over W per block of rows, no packing. A single row of C (a
 * batch of one, text generation) holds up to 16 vectors instead and reads W in memory order.
 *
 *   cyrnn_sgemm_small(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc)   float32
 *   cyrnn_dgemm_small(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc)   float64
 *       C (M, N) = alpha * op(A) W (K, N) + beta * C, row-major, beta 0 or 1, where op(A) is
 *       A (M, K), or with trans_a the transpose of A (K, M), as in a weight gradient da^T h
 *
 * Each returns 1 when it ran, and 0, without touching C, when this CPU (or compiler) has no
 * AVX-512: the caller then uses BLAS. With beta = 0, C is only written, never read.
 * Products are summed over K in order with fused multiply-adds, so results differ from BLAS's
 * in the last bits only.
 */
#ifndef CYRNN_SMALLGEMM_H
#define CYRNN_SMALLGEMM_H

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

/* How many threads the BLAS behind `blas_function` (a function of the module that provides it,
 * such as scipy.linalg.cython_blas) may use: OpenBLAS's own count, which threadpoolctl and
 * OPENBLAS_NUM_THREADS set; -1 when it cannot be told (not OpenBLAS, or no dladdr). The
 * OpenBLAS function that tells is looked up once, in that module's dependency tree, and then
 * called on every query, so that a limit set a moment ago counts. */
typedef int (*cyrnn_threads_function)(void);

static cyrnn_threads_function cyrnn_find_threads_function(void* blas_function)
{
#if defined(__unix__) || defined(__APPLE__)
    static const char* const names[] = {
        "scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
        "openblas_get_num_threads", "openblas_get_num_threads64_"};
    Dl_info info;
    void* handle;
    cyrnn_threads_function found = NULL;
    size_t i;
    if (!dladdr(blas_function, &info) || info.dli_fname == NULL)
        return NULL;
    /* the module is loaded (blas_function is in it): this only takes a reference to it */
    handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL)
        return NULL;
    for (i = 0; i < sizeof names / sizeof names[0] && found == NULL; i++)
        found = (cyrnn_threads_function) dlsym(handle, names[i]);
    dlclose(handle);  /* the module stays loaded: Python never unloads extension modules */
    return found;
#else
    (void) blas_function;
    return NULL;
#endif
}

static inline int cyrnn_blas_threads(void* blas_function)
{
    /* a cache of a symbol's address, the same for every caller: threads that race here all
     * store the same value */
    static volatile int looked_up = 0;
    static cyrnn_threads_function volatile get = NULL;
    if (!looked_up) {
        get = cyrnn_find_threads_function(blas_function);
        looked_up = 1;
    }
    return get != NULL ? get() : -1;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CYRNN_HAVE_AVX512_KERNELS 1
#include <immintrin.h>
#endif

#ifdef CYRNN_HAVE_AVX512_KERNELS

#define CYRNN_MR 6    /* rows of a register block */
#define CYRNN_NV 4    /* vectors across a register block: 64 floats or 32 doubles */
#define CYRNN_KC 512  /* rows of W per pass: a 4-vector panel of W is at most 128 KiB */
#define CYRNN_ROW_NV 16  /* vectors of a single row of C held at once: 256 floats, 128 doubles */

static inline int cyrnn_have_avx512(void)
{
    return __builtin_cpu_supports("avx512f");
}

/* whether products can run on these kernels here (this CPU, this compiler) */
static inline int cyrnn_own_kernel_available(void)
{
    return cyrnn_have_avx512();
}

/* The kernel, written once for both float types: CYRNN_GEMM(prefix, real, vector, mask type,
 * lanes, intrinsic suffix) defines cyrnn_<prefix>gemm_small. */
#define CYRNN_GEMM(P, REAL, VEC, MASK, LANES, SFX)                                             \
                                                                                               \
/* One block: rows [0, mr) and vectors [0, nv) of C, the last vector masked by `tail`. With    \
 * constant arguments (every call below passes literals) the loops unroll into straight code. */\
__attribute__((target("avx512f"), always_inline)) static inline void                          \
cyrnn_##P##block(int trans_a, int mr, int nv, MASK tail, long K, REAL alpha, const REAL* A,   \
                 long lda, const REAL* W, long ldw, int beta, REAL* C, long ldc)              \
{                                                                                              \
    VEC acc[CYRNN_MR][CYRNN_NV], w[CYRNN_NV], va;                                              \
    long k;                                                                                    \
    int r, v;                                                                                  \
    for (r = 0; r < mr; r++)                                                                   \
        for (v = 0; v < nv; v++)                                                               \
            acc[r][v] = _mm512_setzero_##SFX();                                                \
    for (k = 0; k < K; k++) {                                                                  \
        /* row k of the W panel, then each row's A[r, k] times it */                          \
        for (v = 0; v < nv - 1; v++)                                                           \
            w[v] = _mm512_loadu_##SFX(W + k * ldw + LANES * v);                                \
        w[nv - 1] = _mm512_maskz_loadu_##SFX(tail, W + k * ldw + LANES * (nv - 1));            \
        for (r = 0; r < mr; r++) {                                                             \
            VEC a = _mm512_set1_##SFX(trans_a ? A[k * lda + r] : A[r * lda + k]);              \
            for (v = 0; v < nv; v++)                                                           \
                acc[r][v] = _mm512_fmadd_##SFX(a, w[v], acc[r][v]);                            \
        }                                                                                      \
    }                                                                                          \
    va = _mm512_set1_##SFX(alpha);                                                             \
    for (r = 0; r < mr; r++)                                                                   \
        for (v = 0; v < nv; v++) {                                                             \
            MASK m = v == nv - 1 ? tail : (MASK) ~0u;                                          \
            REAL* c = C + r * ldc + LANES * v;                                                 \
            VEC out = _mm512_mul_##SFX(va, acc[r][v]);                                         \
            if (beta)                                                                          \
                out = _mm512_add_##SFX(out, _mm512_maskz_loadu_##SFX(m, c));                   \
            _mm512_mask_storeu_##SFX(c, m, out);                                               \
        }                                                                                      \
}                                                                                              \
                                                                                               \
/* A single row of C: up to CYRNN_ROW_NV vectors of it in registers while the rows of W stream \
 * past in memory order (a one-row product has no reuse of W to block for). */                \
__attribute__((target("avx512f"), always_inline)) static inline void                          \
cyrnn_##P##row(int nv, MASK tail, long K, REAL alpha, const REAL* a, long inc_a,              \
               const REAL* W, long ldw, int beta, REAL* c)                                    \
{                                                                                              \
    VEC acc[CYRNN_ROW_NV], va;                                                                 \
    long k;                                                                                    \
    int v;                                                                                     \
    for (v = 0; v < nv; v++)                                                                   \
        acc[v] = _mm512_setzero_##SFX();                                                       \
    for (k = 0; k < K; k++) {                                                                  \
        VEC x = _mm512_set1_##SFX(a[k * inc_a]);                                               \
        for (v = 0; v < nv - 1; v++)                                                           \
            acc[v] = _mm512_fmadd_##SFX(x, _mm512_loadu_##SFX(W + k * ldw + LANES * v), acc[v]);\
        acc[nv - 1] = _mm512_fmadd_##SFX(                                                      \
            x, _mm512_maskz_loadu_##SFX(tail, W + k * ldw + LANES * (nv - 1)), acc[nv - 1]);   \
    }                                                                                          \
    va = _mm512_set1_##SFX(alpha);                                                             \
    for (v = 0; v < nv; v++) {                                                                 \
        MASK m = v == nv - 1 ? tail : (MASK) ~0u;                                              \
        VEC out = _mm512_mul_##SFX(va, acc[v]);                                                \
        if (beta)                                                                              \
            out = _mm512_add_##SFX(out, _mm512_maskz_loadu_##SFX(m, c + LANES * v));           \
        _mm512_mask_storeu_##SFX(c + LANES * v, m, out);                                       \
    }                                                                                          \
}                                                                                              \
                                                                                               \
__attribute__((target("avx512f"))) static void                                                \
cyrnn_##P##row_avx512(int trans_a, long N, long K, REAL alpha, const REAL* A, long lda,       \
                      const REAL* W, long ldw, int beta, REAL* C)                             \
{                                                                                              \
    long j0, inc_a = trans_a ? lda : 1;                                                        \
    for (j0 = 0; j0 < N; j0 += LANES * CYRNN_ROW_NV) {                                         \
        long width = N - j0 < LANES * CYRNN_ROW_NV ? N - j0 : LANES * CYRNN_ROW_NV;            \
        int nv = (int) ((width + LANES - 1) / LANES);                                          \
        int rest = (int) (width - LANES * (nv - 1));                                           \
        MASK tail = (MASK) (rest == LANES ? ~0u : (1u << rest) - 1);                           \
        const REAL* Wb = W + j0;                                                               \
        REAL* Cb = C + j0;                                                                     \
        CYRNN_ROW_VECTORS(P)                                                                   \
    }                                                                                          \
}                                                                                              \
                                                                                               \
__attribute__((target("avx512f"))) static void                                                \
cyrnn_##P##gemm_avx512(int trans_a, long M, long N, long K, REAL alpha, const REAL* A,        \
                       long lda, const REAL* W, long ldw, int beta, REAL* C, long ldc)        \
{                                                                                              \
    long k0, j0, i0, Kp;                                                                       \
    int mr;                                                                                    \
    /* the shared dimension in parts of CYRNN_KC, so that a panel of W stays in L2 while      \
     * every block of rows passes it; the parts after the first accumulate */                 \
    for (k0 = 0; k0 < K; k0 += Kp, beta = 1) {                                                 \
        Kp = K - k0 < CYRNN_KC ? K - k0 : CYRNN_KC;                                            \
        const REAL* Ak = trans_a ? A + k0 * lda : A + k0;                                      \
        for (j0 = 0; j0 < N; j0 += LANES * CYRNN_NV) {                                         \
            long width = N - j0 < LANES * CYRNN_NV ? N - j0 : LANES * CYRNN_NV;                \
            int nv = (int) ((width + LANES - 1) / LANES);                                      \
            int rest = (int) (width - LANES * (nv - 1));  /* 1..LANES in the last vector */    \
            MASK tail = (MASK) (rest == LANES ? ~0u : (1u << rest) - 1);                       \
            const REAL* Wb = W + k0 * ldw + j0;                                                \
            /* as few row blocks as CYRNN_MR allows, of even sizes: 8 rows run as 4 + 4 */     \
            long blocks = (M + CYRNN_MR - 1) / CYRNN_MR, b;                                    \
            for (b = 0, i0 = 0; b < blocks; b++, i0 += mr) {                                   \
                const REAL* Ab = trans_a ? Ak + i0 : Ak + i0 * lda;                            \
                REAL* Cb = C + i0 * ldc + j0;                                                  \
                mr = (int) (M / blocks + (b < M % blocks));                                    \
                if (trans_a) {                                                                 \
                    CYRNN_COLUMNS(P, 1)                                                        \
                } else {                                                                       \
                    CYRNN_COLUMNS(P, 0)                                                        \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
static inline int cyrnn_##P##gemm_small(int trans_a, long M, long N, long K, REAL alpha,      \
                                        const REAL* A, long lda, const REAL* W, long ldw,     \
                                        int beta, REAL* C, long ldc)                          \
{                                                                                              \
    if (M <= 0 || N <= 0 || K <= 0 || !cyrnn_have_avx512())                                   \
        return 0;                                                                              \
    if (M == 1)                                                                                \
        cyrnn_##P##row_avx512(trans_a, N, K, alpha, A, lda, W, ldw, beta, C);                  \
    else                                                                                       \
        cyrnn_##P##gemm_avx512(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);        \
    return 1;                                                                                  \
}

/* dispatch on the block shape, so that each is compiled with constant loop bounds */
#define CYRNN_BLOCK(P, ta, mr, nv)                                                             \
    cyrnn_##P##block(ta, mr, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc)
#define CYRNN_ROWS(P, ta, nv)                                                                  \
    switch (mr) {                                                                              \
    case 6: CYRNN_BLOCK(P, ta, 6, nv); break;                                                  \
    case 5: CYRNN_BLOCK(P, ta, 5, nv); break;                                                  \
    case 4: CYRNN_BLOCK(P, ta, 4, nv); break;                                                  \
    case 3: CYRNN_BLOCK(P, ta, 3, nv); break;                                                  \
    case 2: CYRNN_BLOCK(P, ta, 2, nv); break;                                                  \
    default: CYRNN_BLOCK(P, ta, 1, nv); break;                                                 \
    }
#define CYRNN_COLUMNS(P, ta)                                                                   \
    switch (nv) {                                                                              \
    case 4: CYRNN_ROWS(P, ta, 4) break;                                                        \
    case 3: CYRNN_ROWS(P, ta, 3) break;                                                        \
    case 2: CYRNN_ROWS(P, ta, 2) break;                                                        \
    default: CYRNN_ROWS(P, ta, 1) break;                                                       \
    }

#define CYRNN_ROW(P, nv) cyrnn_##P##row(nv, tail, K, alpha, A, inc_a, Wb, ldw, beta, Cb)
#define CYRNN_ROW_VECTORS(P)                                                                   \
    switch (nv) {                                                                              \
    case 16: CYRNN_ROW(P, 16); break;                                                          \
    case 15: CYRNN_ROW(P, 15); break;                                                          \
    case 14: CYRNN_ROW(P, 14); break;                                                          \
    case 13: CYRNN_ROW(P, 13); break;                                                          \
    case 12: CYRNN_ROW(P, 12); break;                                                          \
    case 11: CYRNN_ROW(P, 11); break;                                                          \
    case 10: CYRNN_ROW(P, 10); break;                                                          \
    case 9: CYRNN_ROW(P, 9); break;                                                            \
    case 8: CYRNN_ROW(P, 8); break;                                                            \
    case 7: CYRNN_ROW(P, 7); break;                                                            \
    case 6: CYRNN_ROW(P, 6); break;                                                            \
    case 5: CYRNN_ROW(P, 5); break;                                                            \
    case 4: CYRNN_ROW(P, 4); break;                                                            \
    case 3: CYRNN_ROW(P, 3); break;                                                            \
    case 2: CYRNN_ROW(P, 2); break;                                                            \
    default: CYRNN_ROW(P, 1); break;                                                           \
    }

CYRNN_GEMM(s, float, __m512, __mmask16, 16, ps)
CYRNN_GEMM(d, double, __m512d, __mmask8, 8, pd)

#undef CYRNN_GEMM
#undef CYRNN_BLOCK
#undef CYRNN_ROWS
#undef CYRNN_COLUMNS
#undef CYRNN_ROW
#undef CYRNN_ROW_VECTORS

#else  /* no AVX-512 kernels: every call falls back to BLAS */

static inline int cyrnn_own_kernel_available(void)
{
    return 0;
}

static inline int cyrnn_sgemm_small(int trans_a, long M, long N, long K, float alpha,
                                    const float* A, long lda, const float* W, long ldw, int beta,
                                    float* C, long ldc)
{
    (void) trans_a; (void) M; (void) N; (void) K; (void) alpha; (void) A; (void) lda; (void) W;
    (void) ldw; (void) beta; (void) C; (void) ldc;
    return 0;
}

static inline int cyrnn_dgemm_small(int trans_a, long M, long N, long K, double alpha,
                                    const double* A, long lda, const double* W, long ldw,
                                    int beta, double* C, long ldc)
{
    (void) trans_a; (void) M; (void) N; (void) K; (void) alpha; (void) A; (void) lda; (void) W;
    (void) ldw; (void) beta; (void) C; (void) ldc;
    return 0;
}

#endif
#endif
