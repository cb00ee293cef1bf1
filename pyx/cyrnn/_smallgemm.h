/* A register-blocked float32 product for the per-step recurrence, on CPUs with AVX-512.
 *
 * Each time step of an RNN multiplies a (B, H) state block by the same (H, H) matrix. OpenBLAS
 * runs tiny products (M*N*K up to about 1e6) through its own unpacked small-matrix kernels,
 * which this one only ties; above that it copies ("packs") both operands into its own layout
 * on every call, and at B = 32..64, H = 256..1024 that copy costs 25-40% of the product. This
 * kernel reads W in the layout the caller already keeps, and holds a block of up to 6 rows x 64
 * columns of the result in 24 vector registers while the shared dimension streams past: one
 * pass over W per block of rows, no packing.
 *
 *   cyrnn_sgemm_small(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc):
 *       C (M, N) = alpha * op(A) W (K, N) + beta * C, row-major, beta 0 or 1, where op(A) is
 *       A (M, K), or with trans_a the transpose of A (K, M), as in a weight gradient da^T h
 *
 * It returns 1 when it ran, and 0, without touching C, when this CPU (or compiler) has no
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
    static cyrnn_threads_function get = NULL;
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

#define CYRNN_TARGET __attribute__((target("avx512f"), always_inline)) static inline
#define CYRNN_MR 6  /* rows of a register block */
#define CYRNN_NV 4  /* 16-float vectors across a register block: 64 columns */
#define CYRNN_KC 512  /* rows of W per pass (see cyrnn_sgemm_avx512) */

/* One block: rows [0, mr) and vectors [0, nv) of C, the last vector masked by `tail`. With
 * constant mr and nv (every call below passes literals) the loops unroll into straight code. */
CYRNN_TARGET void cyrnn_block(int trans_a, int mr, int nv, __mmask16 tail, long K, float alpha,
                              const float* A, long lda, const float* W, long ldw, int beta,
                              float* C, long ldc)
{
    __m512 acc[CYRNN_MR][CYRNN_NV];
    __m512 w[CYRNN_NV];
    long k;
    int r, v;
    for (r = 0; r < mr; r++)
        for (v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (k = 0; k < K; k++) {
        /* row k of the W panel, then each row's A[r, k] times it */
        for (v = 0; v < nv - 1; v++)
            w[v] = _mm512_loadu_ps(W + k * ldw + 16 * v);
        w[nv - 1] = _mm512_maskz_loadu_ps(tail, W + k * ldw + 16 * (nv - 1));
        for (r = 0; r < mr; r++) {
            __m512 a = _mm512_set1_ps(trans_a ? A[k * lda + r] : A[r * lda + k]);
            for (v = 0; v < nv; v++)
                acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha);
    for (r = 0; r < mr; r++)
        for (v = 0; v < nv; v++) {
            __mmask16 m = v == nv - 1 ? tail : (__mmask16) 0xFFFF;
            float* c = C + r * ldc + 16 * v;
            __m512 out = _mm512_mul_ps(va, acc[r][v]);
            if (beta)
                out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(m, c));
            _mm512_mask_storeu_ps(c, m, out);
        }
}

/* dispatch on the row count, so that each block shape is compiled with constant loop bounds */
#define CYRNN_ROWS(ta, nv)                                                                     \
    switch (mr) {                                                                              \
    case 6: cyrnn_block(ta, 6, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;    \
    case 5: cyrnn_block(ta, 5, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;    \
    case 4: cyrnn_block(ta, 4, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;    \
    case 3: cyrnn_block(ta, 3, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;    \
    case 2: cyrnn_block(ta, 2, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;    \
    default: cyrnn_block(ta, 1, nv, tail, Kp, alpha, Ab, lda, Wb, ldw, beta, Cb, ldc); break;   \
    }

#define CYRNN_COLUMNS(ta)                                                                      \
    switch (nv) {                                                                              \
    case 4: CYRNN_ROWS(ta, 4) break;                                                           \
    case 3: CYRNN_ROWS(ta, 3) break;                                                           \
    case 2: CYRNN_ROWS(ta, 2) break;                                                           \
    default: CYRNN_ROWS(ta, 1) break;                                                          \
    }

__attribute__((target("avx512f"))) static void
cyrnn_sgemm_avx512(int trans_a, long M, long N, long K, float alpha, const float* A, long lda,
                   const float* W, long ldw, int beta, float* C, long ldc)
{
    long k0, j0, i0, Kp;
    int mr;
    /* the shared dimension in parts of CYRNN_KC, so that a 64-column panel of W (at most
     * CYRNN_KC x 64 floats, 128 KiB) stays in L2 while every block of rows passes it */
    for (k0 = 0; k0 < K; k0 += Kp, beta = 1) {
        Kp = K - k0 < CYRNN_KC ? K - k0 : CYRNN_KC;  /* this part's share of K */
        const float* Ak = trans_a ? A + k0 * lda : A + k0;
        for (j0 = 0; j0 < N; j0 += 16 * CYRNN_NV) {
            long width = N - j0 < 16 * CYRNN_NV ? N - j0 : 16 * CYRNN_NV;
            int nv = (int) ((width + 15) / 16);
            int rest = (int) (width - 16 * (nv - 1));  /* 1..16 columns in the last vector */
            __mmask16 tail = (__mmask16) (rest == 16 ? 0xFFFF : (1u << rest) - 1);
            const float* Wb = W + k0 * ldw + j0;
            /* as few row blocks as CYRNN_MR allows, of even sizes: 8 rows run as 4 + 4 */
            long blocks = (M + CYRNN_MR - 1) / CYRNN_MR, b;
            for (b = 0, i0 = 0; b < blocks; b++, i0 += mr) {
                const float* Ab = trans_a ? Ak + i0 : Ak + i0 * lda;
                float* Cb = C + i0 * ldc + j0;
                mr = (int) (M / blocks + (b < M % blocks));
                if (trans_a) {
                    CYRNN_COLUMNS(1)
                } else {
                    CYRNN_COLUMNS(0)
                }
            }
        }
    }
}

#undef CYRNN_COLUMNS
#undef CYRNN_ROWS

static inline int cyrnn_have_avx512(void)
{
    return __builtin_cpu_supports("avx512f");
}

static inline int cyrnn_sgemm_small(int trans_a, long M, long N, long K, float alpha,
                                    const float* A, long lda, const float* W, long ldw, int beta,
                                    float* C, long ldc)
{
    if (M <= 0 || N <= 0 || K <= 0 || !cyrnn_have_avx512())
        return 0;
    cyrnn_sgemm_avx512(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
    return 1;
}

#else  /* no AVX-512 kernels: every call falls back to BLAS */

static inline int cyrnn_sgemm_small(int trans_a, long M, long N, long K, float alpha,
                                    const float* A, long lda, const float* W, long ldw, int beta,
                                    float* C, long ldc)
{
    (void) trans_a; (void) M; (void) N; (void) K; (void) alpha; (void) A; (void) lda; (void) W; (void) ldw;
    (void) beta; (void) C; (void) ldc;
    return 0;
}

#endif
#endif
