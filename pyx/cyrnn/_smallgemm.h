/* Register-blocked float32 and float64 products for the recurrences, for AVX-512 and AVX2.
 *
 * Each time step of an RNN multiplies a (B, H) state block by the same (H, H) matrix. OpenBLAS
 * copies ("packs") both operands into its own layout on every call (its SkylakeX build skips
 * that for products of M*N*K up to about 1e6, with small-matrix kernels this one only ties), and
 * at B = 32..64, H = 256..1024 the copy costs 25-40% of the product. This kernel reads W in the
 * layout the caller already keeps (or, for a recurrence, packs once per call: cyrnn_pack_panels
 * below), and holds a block of the result in vector registers while the shared dimension streams
 * past: one pass over W per block of rows. It copies W itself only for a product of a thousand
 * rows or more on a W whose rows are a page apart, where that pays (see CYRNN_GEMM). A block is
 * 6 rows x 4 vectors on AVX-512 (24 of 32 registers: 64 floats or 32 doubles across), 4 x 3 on
 * AVX2 (12 of 16). A single row of C (a batch of one, text generation) holds up to 16 (AVX2: 8)
 * vectors instead and reads W in memory order.
 *
 *   cyrnn_sgemm_small(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc)   float32
 *   cyrnn_dgemm_small(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc)   float64
 *       C (M, N) = alpha * op(A) W (K, N) + beta * C, row-major, beta 0 or 1, where op(A) is
 *       A (M, K), or with trans_a the transpose of A (K, M), as in a weight gradient da^T h
 *
 * Each runs the widest build this CPU has and returns 1, or returns 0, without touching C,
 * where it has neither (or the compiler cannot build them): the caller then uses BLAS. With
 * beta = 0, C is only written, never read. Products are summed over K in order with fused
 * multiply-adds, so results differ from BLAS's in the last bits only. Where each build beats
 * OpenBLAS (and so where _blas.pxd uses it) was measured: see there.
 */
#ifndef CYRNN_SMALLGEMM_H
#define CYRNN_SMALLGEMM_H

#include <stdlib.h>

#include "_cpu.h"

/* products of at least this many rows, against a W whose rows are at least a page apart and
 * of at most this many bytes, copy W into panels first (see CYRNN_GEMM) */
#define CYRNN_PACK_MIN_ROWS 1024
#define CYRNN_PAGE_BYTES 4096
#define CYRNN_PACK_MAX_BYTES 67108864.0

/* Wp (K * N values) = W (K, N), leading dimension ldw, as panels of `panel` columns (the last
 * one narrower), one after the other, each its K rows of `width` values contiguous: the layout
 * the kernel reads with `panels` (cyrnn_pack_panels below packs for the widest build here) */
#define CYRNN_PACK_COLUMNS(P, REAL)                                                            \
static inline void cyrnn_##P##pack_columns(const REAL* W, long K, long N, long ldw,            \
                                           long panel, REAL* Wp)                               \
{                                                                                              \
    long j0, k, j, width;                                                                      \
    for (j0 = 0; j0 < N; j0 += panel) {                                                        \
        width = N - j0 < panel ? N - j0 : panel;                                               \
        for (k = 0; k < K; k++)                                                                \
            for (j = 0; j < width; j++)                                                        \
                Wp[j0 * K + k * width + j] = W[k * ldw + j0 + j];                              \
    }                                                                                          \
}
CYRNN_PACK_COLUMNS(s, float)
CYRNN_PACK_COLUMNS(d, double)
#undef CYRNN_PACK_COLUMNS

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
#define CYRNN_HAVE_X86_KERNELS 1
#include <immintrin.h>
#endif

#ifdef CYRNN_HAVE_X86_KERNELS

/* The vector operations of each build, for CYRNN_GEMM: Z* AVX-512 (16 floats, 8 doubles per
 * vector, masks in mask registers), Y* AVX2 (8 floats, 4 doubles, masks in vectors). */
#define Zs_VEC __m512
#define Zs_MASK __mmask16
#define Zs_TAIL(rest) ((__mmask16) ((1u << (rest)) - 1))
#define Zs_ZERO() _mm512_setzero_ps()
#define Zs_LOAD(p) _mm512_loadu_ps(p)
#define Zs_MLOAD(m, p) _mm512_maskz_loadu_ps(m, p)
#define Zs_STORE(p, v) _mm512_storeu_ps(p, v)
#define Zs_MSTORE(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define Zs_SET1(x) _mm512_set1_ps(x)
#define Zs_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define Zs_MUL(a, b) _mm512_mul_ps(a, b)
#define Zs_ADD(a, b) _mm512_add_ps(a, b)

#define Zd_VEC __m512d
#define Zd_MASK __mmask8
#define Zd_TAIL(rest) ((__mmask8) ((1u << (rest)) - 1))
#define Zd_ZERO() _mm512_setzero_pd()
#define Zd_LOAD(p) _mm512_loadu_pd(p)
#define Zd_MLOAD(m, p) _mm512_maskz_loadu_pd(m, p)
#define Zd_STORE(p, v) _mm512_storeu_pd(p, v)
#define Zd_MSTORE(p, m, v) _mm512_mask_storeu_pd(p, m, v)
#define Zd_SET1(x) _mm512_set1_pd(x)
#define Zd_FMA(a, b, c) _mm512_fmadd_pd(a, b, c)
#define Zd_MUL(a, b) _mm512_mul_pd(a, b)
#define Zd_ADD(a, b) _mm512_add_pd(a, b)

#define Ys_VEC __m256
#define Ys_MASK __m256i
#define Ys_TAIL(rest) _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), \
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define Ys_ZERO() _mm256_setzero_ps()
#define Ys_LOAD(p) _mm256_loadu_ps(p)
#define Ys_MLOAD(m, p) _mm256_maskload_ps(p, m)
#define Ys_STORE(p, v) _mm256_storeu_ps(p, v)
#define Ys_MSTORE(p, m, v) _mm256_maskstore_ps(p, m, v)
#define Ys_SET1(x) _mm256_set1_ps(x)
#define Ys_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define Ys_MUL(a, b) _mm256_mul_ps(a, b)
#define Ys_ADD(a, b) _mm256_add_ps(a, b)

#define Yd_VEC __m256d
#define Yd_MASK __m256i
#define Yd_TAIL(rest) _mm256_cmpgt_epi64(_mm256_set1_epi64x(rest), _mm256_setr_epi64x(0, 1, 2, 3))
#define Yd_ZERO() _mm256_setzero_pd()
#define Yd_LOAD(p) _mm256_loadu_pd(p)
#define Yd_MLOAD(m, p) _mm256_maskload_pd(p, m)
#define Yd_STORE(p, v) _mm256_storeu_pd(p, v)
#define Yd_MSTORE(p, m, v) _mm256_maskstore_pd(p, m, v)
#define Yd_SET1(x) _mm256_set1_pd(x)
#define Yd_FMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define Yd_MUL(a, b) _mm256_mul_pd(a, b)
#define Yd_ADD(a, b) _mm256_add_pd(a, b)

/* The kernel, written once for each build and float type: CYRNN_GEMM(name, s|d, ops, real,
 * lanes, MR, NV, ROW_NV, target) defines cyrnn_<name>(trans_a, M, N, K, ...). A block holds
 * MR rows x NV vectors of C (AVX-512: 6 x 4 in 24 of its 32 registers; AVX2: 4 x 3 in 12 of
 * 16); a single row holds up to ROW_NV vectors. */
#define CYRNN_GEMM(NAME, P, O, REAL, LANES, MR, NV, ROW_NV, KC, MC, TARGET)                    \
                                                                                               \
/* One block: rows [0, mr) and vectors [0, nv) of C, the last vector masked by `tail`. With    \
 * constant arguments (every call below passes literals) the loops unroll into straight code. */\
__attribute__((target(TARGET), always_inline)) static inline void                             \
NAME##_block(int trans_a, int mr, int nv, O##MASK tail, long K, REAL alpha, const REAL* A,    \
             long lda, const REAL* W, long ldw, int beta, REAL* C, long ldc)                  \
{                                                                                              \
    O##VEC acc[6][4], w[4], va;                                                                \
    long k;                                                                                    \
    int r, v;                                                                                  \
    for (r = 0; r < mr; r++)                                                                   \
        for (v = 0; v < nv; v++)                                                               \
            acc[r][v] = O##ZERO();                                                             \
    for (k = 0; k < K; k++) {                                                                  \
        /* row k of the W panel, then each row's A[r, k] times it */                          \
        for (v = 0; v < nv - 1; v++)                                                           \
            w[v] = O##LOAD(W + k * ldw + LANES * v);                                           \
        w[nv - 1] = O##MLOAD(tail, W + k * ldw + LANES * (nv - 1));                            \
        for (r = 0; r < mr; r++) {                                                             \
            O##VEC a = O##SET1(trans_a ? A[k * lda + r] : A[r * lda + k]);                     \
            for (v = 0; v < nv; v++)                                                           \
                acc[r][v] = O##FMA(a, w[v], acc[r][v]);                                        \
        }                                                                                      \
    }                                                                                          \
    va = O##SET1(alpha);                                                                       \
    for (r = 0; r < mr; r++)                                                                   \
        for (v = 0; v < nv; v++) {                                                             \
            REAL* c = C + r * ldc + LANES * v;                                                 \
            O##VEC out = O##MUL(va, acc[r][v]);                                                \
            if (v < nv - 1) {                                                                  \
                if (beta)                                                                      \
                    out = O##ADD(out, O##LOAD(c));                                             \
                O##STORE(c, out);                                                              \
            } else {                                                                           \
                if (beta)                                                                      \
                    out = O##ADD(out, O##MLOAD(tail, c));                                      \
                O##MSTORE(c, tail, out);                                                       \
            }                                                                                  \
        }                                                                                      \
}                                                                                              \
                                                                                               \
/* A single row of C: up to ROW_NV vectors of it in registers while the rows of W stream past \
 * in memory order (a one-row product has no reuse of W to block for). */                     \
__attribute__((target(TARGET), always_inline)) static inline void                             \
NAME##_row(int nv, O##MASK tail, long K, REAL alpha, const REAL* a, long inc_a,               \
           const REAL* W, long ldw, int beta, REAL* c)                                        \
{                                                                                              \
    O##VEC acc[16], va;                                                                        \
    long k;                                                                                    \
    int v;                                                                                     \
    for (v = 0; v < nv; v++)                                                                   \
        acc[v] = O##ZERO();                                                                    \
    for (k = 0; k < K; k++) {                                                                  \
        O##VEC x = O##SET1(a[k * inc_a]);                                                      \
        for (v = 0; v < nv - 1; v++)                                                           \
            acc[v] = O##FMA(x, O##LOAD(W + k * ldw + LANES * v), acc[v]);                      \
        acc[nv - 1] = O##FMA(x, O##MLOAD(tail, W + k * ldw + LANES * (nv - 1)), acc[nv - 1]);  \
    }                                                                                          \
    va = O##SET1(alpha);                                                                       \
    for (v = 0; v < nv; v++) {                                                                 \
        O##VEC out = O##MUL(va, acc[v]);                                                       \
        if (v < nv - 1) {                                                                      \
            if (beta)                                                                          \
                out = O##ADD(out, O##LOAD(c + LANES * v));                                     \
            O##STORE(c + LANES * v, out);                                                      \
        } else {                                                                               \
            if (beta)                                                                          \
                out = O##ADD(out, O##MLOAD(tail, c + LANES * v));                              \
            O##MSTORE(c + LANES * v, tail, out);                                               \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* W is row-major (K, N) with leading dimension ldw, or with `panels` (ldw unused) packed as \
 * cyrnn_pack_panels lays it out: the panels of LANES * NV columns one after the other, each  \
 * its K rows contiguous. The arithmetic is the same either way (the same bits result).        \
 */                                                                                            \
__attribute__((target(TARGET), always_inline)) static inline void                             \
NAME##_any(int trans_a, long M, long N, long K, REAL alpha, const REAL* A, long lda,          \
           const REAL* W, long ldw, int panels, int beta, REAL* C, long ldc)                  \
{                                                                                              \
    long k0, g0, j0, i0, Kp, width, blocks, b, ldb;                                            \
    int mr, nv, rest;                                                                          \
    O##MASK tail;                                                                              \
    if (M == 1 && !panels) {                                                                   \
        long inc_a = trans_a ? lda : 1;                                                        \
        for (j0 = 0; j0 < N; j0 += LANES * ROW_NV) {                                           \
            width = N - j0 < LANES * ROW_NV ? N - j0 : LANES * ROW_NV;                         \
            nv = (int) ((width + LANES - 1) / LANES);                                          \
            rest = (int) (width - LANES * (nv - 1));                                           \
            tail = O##TAIL(rest);                                                              \
            CYRNN_ROW_VECTORS(NAME, ROW_NV, K, A, inc_a, W + j0, C + j0)                       \
        }                                                                                      \
        return;                                                                                \
    }                                                                                          \
    /* the shared dimension in parts of KC, so that a panel of W stays in cache while every    \
     * block of rows passes it; the parts after the first accumulate. The rows in groups of    \
     * MC, so that the part of A they read stays in cache while every panel of W passes it     \
     * (a weight gradient, dP^T h, has thousands of rows) */                                   \
    for (k0 = 0; k0 < K; k0 += Kp, beta = 1)                                                   \
    for (g0 = 0; g0 < M; g0 += MC) {                                                           \
        const REAL* Ak = trans_a ? A + k0 * lda + g0 : A + g0 * lda + k0;                      \
        REAL* Cg = C + g0 * ldc;                                                               \
        long Mg = M - g0 < MC ? M - g0 : MC;                                                   \
        Kp = K - k0 < KC ? K - k0 : KC;                                                        \
        for (j0 = 0; j0 < N; j0 += LANES * NV) {                                               \
            const REAL* Wb;                                                                    \
            width = N - j0 < LANES * NV ? N - j0 : LANES * NV;                                 \
            /* the panel of W: rows k0 .. k0 + Kp of columns j0 .. j0 + width */               \
            ldb = panels ? width : ldw;                                                        \
            Wb = panels ? W + j0 * K + k0 * width : W + k0 * ldw + j0;                         \
            nv = (int) ((width + LANES - 1) / LANES);                                          \
            rest = (int) (width - LANES * (nv - 1));  /* 1..LANES in the last vector */        \
            tail = O##TAIL(rest);                                                              \
            /* as few row blocks as MR allows, of even sizes: 8 rows run as 4 + 4, not 6 + 2 */\
            blocks = (Mg + MR - 1) / MR;                                                       \
            for (b = 0, i0 = 0; b < blocks; b++, i0 += mr) {                                   \
                const REAL* Ab = trans_a ? Ak + i0 : Ak + i0 * lda;                            \
                REAL* Cb = Cg + i0 * ldc + j0;                                                 \
                mr = (int) (Mg / blocks + (b < Mg % blocks));                                  \
                if (trans_a) {                                                                 \
                    CYRNN_COLUMNS(NAME, MR, NV, 1)                                             \
                } else {                                                                       \
                    CYRNN_COLUMNS(NAME, MR, NV, 0)                                             \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
__attribute__((target(TARGET))) static void                                                    \
NAME(int trans_a, long M, long N, long K, REAL alpha, const REAL* A, long lda, const REAL* W,  \
     long ldw, int beta, REAL* C, long ldc)                                                    \
{                                                                                              \
    /* Many rows against a W whose rows are a page or more apart: read in place, every row     \
     * of a panel is a new page, for every block of rows (TLB misses the prefetcher does not   \
     * cover); copied once into panels, W streams. The same sums, so the same bits. The copy   \
     * pays for itself only over many rows (a recurrence's per-step product, a batch's rows,   \
     * would copy W at every step), and is kept to CYRNN_PACK_MAX_BYTES. */                    \
    if (M >= CYRNN_PACK_MIN_ROWS && ldw * (long) sizeof(REAL) >= CYRNN_PAGE_BYTES              \
            && K >= 16 && (double) K * N * sizeof(REAL) <= CYRNN_PACK_MAX_BYTES) {             \
        REAL* Wp = (REAL*) malloc(sizeof(REAL) * K * N);                                       \
        if (Wp != NULL) {                                                                      \
            cyrnn_##P##pack_columns(W, K, N, ldw, LANES * NV, Wp);                             \
            NAME##_any(trans_a, M, N, K, alpha, A, lda, Wp, 0, 1, beta, C, ldc);               \
            free(Wp);                                                                          \
            return;                                                                            \
        }                                                                                      \
    }                                                                                          \
    NAME##_any(trans_a, M, N, K, alpha, A, lda, W, ldw, 0, beta, C, ldc);                      \
}                                                                                              \
                                                                                               \
__attribute__((target(TARGET))) static void                                                   \
NAME##_panels(long M, long N, long K, REAL alpha, const REAL* A, long lda, const REAL* Wp,    \
              int beta, REAL* C, long ldc)                                                    \
{                                                                                              \
    NAME##_any(0, M, N, K, alpha, A, lda, Wp, 0, 1, beta, C, ldc);                            \
}

/* dispatch on the block shape, so that each is compiled with constant loop bounds; shapes
 * beyond a build's MR x NV (or ROW_NV) are never called and compile to nothing */
#define CYRNN_BLOCK(NAME, MR, NV, ta, m, n)                                                    \
    if ((m) <= (MR) && (n) <= (NV))                                                            \
        NAME##_block(ta, m, n, tail, Kp, alpha, Ab, lda, Wb, ldb, beta, Cb, ldc);
#define CYRNN_ROWS(NAME, MR, NV, ta, n)                                                        \
    switch (mr) {                                                                              \
    case 6: CYRNN_BLOCK(NAME, MR, NV, ta, 6, n) break;                                         \
    case 5: CYRNN_BLOCK(NAME, MR, NV, ta, 5, n) break;                                         \
    case 4: CYRNN_BLOCK(NAME, MR, NV, ta, 4, n) break;                                         \
    case 3: CYRNN_BLOCK(NAME, MR, NV, ta, 3, n) break;                                         \
    case 2: CYRNN_BLOCK(NAME, MR, NV, ta, 2, n) break;                                         \
    default: CYRNN_BLOCK(NAME, MR, NV, ta, 1, n) break;                                        \
    }
#define CYRNN_COLUMNS(NAME, MR, NV, ta)                                                        \
    switch (nv) {                                                                              \
    case 4: CYRNN_ROWS(NAME, MR, NV, ta, 4) break;                                             \
    case 3: CYRNN_ROWS(NAME, MR, NV, ta, 3) break;                                             \
    case 2: CYRNN_ROWS(NAME, MR, NV, ta, 2) break;                                             \
    default: CYRNN_ROWS(NAME, MR, NV, ta, 1) break;                                            \
    }
#define CYRNN_ROW(NAME, ROW_NV, n, K, A, inc_a, Wj, Cj)                                        \
    if ((n) <= (ROW_NV))                                                                       \
        NAME##_row(n, tail, K, alpha, A, inc_a, Wj, ldw, beta, Cj);
#define CYRNN_ROW_VECTORS(NAME, ROW_NV, K, A, inc_a, Wj, Cj)                                   \
    switch (nv) {                                                                              \
    case 16: CYRNN_ROW(NAME, ROW_NV, 16, K, A, inc_a, Wj, Cj) break;                           \
    case 15: CYRNN_ROW(NAME, ROW_NV, 15, K, A, inc_a, Wj, Cj) break;                           \
    case 14: CYRNN_ROW(NAME, ROW_NV, 14, K, A, inc_a, Wj, Cj) break;                           \
    case 13: CYRNN_ROW(NAME, ROW_NV, 13, K, A, inc_a, Wj, Cj) break;                           \
    case 12: CYRNN_ROW(NAME, ROW_NV, 12, K, A, inc_a, Wj, Cj) break;                           \
    case 11: CYRNN_ROW(NAME, ROW_NV, 11, K, A, inc_a, Wj, Cj) break;                           \
    case 10: CYRNN_ROW(NAME, ROW_NV, 10, K, A, inc_a, Wj, Cj) break;                           \
    case 9: CYRNN_ROW(NAME, ROW_NV, 9, K, A, inc_a, Wj, Cj) break;                             \
    case 8: CYRNN_ROW(NAME, ROW_NV, 8, K, A, inc_a, Wj, Cj) break;                             \
    case 7: CYRNN_ROW(NAME, ROW_NV, 7, K, A, inc_a, Wj, Cj) break;                             \
    case 6: CYRNN_ROW(NAME, ROW_NV, 6, K, A, inc_a, Wj, Cj) break;                             \
    case 5: CYRNN_ROW(NAME, ROW_NV, 5, K, A, inc_a, Wj, Cj) break;                             \
    case 4: CYRNN_ROW(NAME, ROW_NV, 4, K, A, inc_a, Wj, Cj) break;                             \
    case 3: CYRNN_ROW(NAME, ROW_NV, 3, K, A, inc_a, Wj, Cj) break;                             \
    case 2: CYRNN_ROW(NAME, ROW_NV, 2, K, A, inc_a, Wj, Cj) break;                             \
    default: CYRNN_ROW(NAME, ROW_NV, 1, K, A, inc_a, Wj, Cj) break;                            \
    }

/* KC, the rows of W per pass: 512 (a 4-vector AVX-512 panel of 512 rows is 128 KiB, in L2;
 * for AVX2, 96-512 measured alike or worse the smaller). MC, the rows of C per group: 96 (16
 * AVX-512 blocks; 512 x 96 floats of A are 192 KiB, beside the panel in L2); 48-192 measured
 * alike, no groups (all rows at once) a sixth slower at M = 1024..4096 */
CYRNN_GEMM(cyrnn_sgemm_avx512, s, Zs_, float, 16, 6, 4, 16, 512, 96, "avx512f")
CYRNN_GEMM(cyrnn_dgemm_avx512, d, Zd_, double, 8, 6, 4, 16, 512, 96, "avx512f")
CYRNN_GEMM(cyrnn_sgemm_avx2, s, Ys_, float, 8, 4, 3, 8, 512, 96, "avx2,fma")
CYRNN_GEMM(cyrnn_dgemm_avx2, d, Yd_, double, 4, 4, 3, 8, 512, 96, "avx2,fma")

#undef CYRNN_GEMM
#undef CYRNN_BLOCK
#undef CYRNN_ROWS
#undef CYRNN_COLUMNS
#undef CYRNN_ROW
#undef CYRNN_ROW_VECTORS

#define CYRNN_RUN_BUILD(P)                                                                     \
    if (which == 2)                                                                            \
        cyrnn_##P##gemm_avx512(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);        \
    else                                                                                       \
        cyrnn_##P##gemm_avx2(trans_a, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
#define CYRNN_RUN_PANELS(P)                                                                    \
    if (which == 2)                                                                            \
        cyrnn_##P##gemm_avx512_panels(M, N, K, alpha, A, lda, Wp, beta, C, ldc);              \
    else                                                                                       \
        cyrnn_##P##gemm_avx2_panels(M, N, K, alpha, A, lda, Wp, beta, C, ldc);
/* the columns of a panel of each build: LANES * NV above */
#define CYRNN_PANEL_COLUMNS(single, which)                                                     \
    ((which) == 2 ? ((single) ? 64 : 32) : (which) == 1 ? ((single) ? 24 : 12) : 0)

#else  /* no x86 kernels: cyrnn_own_kernel_available() is 0, every product goes to BLAS */

#define CYRNN_RUN_BUILD(P)
#define CYRNN_RUN_PANELS(P)
#define CYRNN_PANEL_COLUMNS(single, which) 0

#endif

/* The widest build this CPU runs: 2 AVX-512, 1 AVX2 with FMA, 0 none (products go to BLAS). */
static inline int cyrnn_own_kernel_available(void)
{
    return cyrnn_cpu_build();
}

/* cyrnn_<s|d>gemm_build(which, ...): run the given build (2 AVX-512, 1 AVX2); 0 where this CPU
 * cannot. cyrnn_<s|d>gemm_small(...): run the widest build here; 0 where there is none. */
#define CYRNN_ENTRY(P, REAL)                                                                   \
static inline int cyrnn_##P##gemm_build(int which, int trans_a, long M, long N, long K,       \
                                        REAL alpha, const REAL* A, long lda, const REAL* W,   \
                                        long ldw, int beta, REAL* C, long ldc)                \
{                                                                                              \
    if (M <= 0 || N <= 0 || K <= 0 || which < 1 || which > cyrnn_own_kernel_available())      \
        return 0;                                                                              \
    CYRNN_RUN_BUILD(P)                                                                         \
    return 1;                                                                                  \
}                                                                                              \
static inline int cyrnn_##P##gemm_small(int trans_a, long M, long N, long K, REAL alpha,      \
                                        const REAL* A, long lda, const REAL* W, long ldw,     \
                                        int beta, REAL* C, long ldc)                          \
{                                                                                              \
    return cyrnn_##P##gemm_build(cyrnn_own_kernel_available(), trans_a, M, N, K, alpha, A,    \
                                 lda, W, ldw, beta, C, ldc);                                  \
}
CYRNN_ENTRY(s, float)
CYRNN_ENTRY(d, double)
#undef CYRNN_ENTRY
#undef CYRNN_RUN_BUILD

/* A weight matrix that a recurrence multiplies by at every step, packed once per call for the
 * widest build here. Read in place, a row-major W (K, N) is a panel of LANES * NV columns at a
 * time, K rows a full row of W apart: at K, N ~ 1024..4096 each row of a panel is a new page
 * (a TLB miss) and the hardware prefetcher does not follow: a product with few rows (a batch
 * of 16..64) runs much slower than the same product on a packed copy, which it streams.
 *
 *   cyrnn_panel_columns(single)   the columns of a panel (0: no build here, do not pack)
 *   cyrnn_<s|d>pack_panels(W, K, N, ldw, Wp)
 *       Wp (K * N values) = W (K, N) as panels of cyrnn_panel_columns columns (the last one
 *       narrower), one after the other, each its K rows of `width` values contiguous
 *   cyrnn_<s|d>pack_panels_t(V, K, N, ldv, Wp)
 *       the same Wp for W = V^T, from V (N, K) with leading dimension ldv (no transposed copy)
 *   cyrnn_<s|d>gemm_panels(M, N, K, alpha, A, lda, Wp, beta, C, ldc)
 *       C (M, N) = alpha * A (M, K) W (K, N) + beta * C as cyrnn_<s|d>gemm_small with W so
 *       packed: the same arithmetic, the same bits; 0 (C untouched) where there is no build
 */
static inline long cyrnn_panel_columns(int single)
{
    return CYRNN_PANEL_COLUMNS(single, cyrnn_own_kernel_available());
}

#define CYRNN_PANELS(P, REAL, SINGLE)                                                          \
static inline void cyrnn_##P##pack_panels(const REAL* W, long K, long N, long ldw, REAL* Wp)   \
{                                                                                              \
    cyrnn_##P##pack_columns(W, K, N, ldw, cyrnn_panel_columns(SINGLE), Wp);                    \
}                                                                                              \
static inline void cyrnn_##P##pack_panels_t(const REAL* V, long K, long N, long ldv,           \
                                            REAL* Wp)                                          \
{                                                                                              \
    /* the same panels of W = V^T from V (N, K) itself: each row of V, read in order (which    \
     * the hardware prefetcher follows), is a column of its panel, which stays in cache */     \
    long panel = cyrnn_panel_columns(SINGLE), j0, k, j, width;                                 \
    for (j0 = 0; j0 < N; j0 += panel) {                                                        \
        REAL* panel_start = Wp + j0 * K;                                                       \
        width = N - j0 < panel ? N - j0 : panel;                                               \
        for (j = 0; j < width; j++) {                                                          \
            const REAL* v = V + (j0 + j) * ldv;                                                \
            for (k = 0; k < K; k++)                                                            \
                panel_start[k * width + j] = v[k];                                             \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static inline int cyrnn_##P##gemm_panels(long M, long N, long K, REAL alpha, const REAL* A,   \
                                         long lda, const REAL* Wp, int beta, REAL* C,         \
                                         long ldc)                                             \
{                                                                                              \
    int which = cyrnn_own_kernel_available();                                                  \
    if (M <= 0 || N <= 0 || K <= 0 || which < 1)                                               \
        return 0;                                                                              \
    CYRNN_RUN_PANELS(P)                                                                        \
    return 1;                                                                                  \
}
CYRNN_PANELS(s, float, 1)
CYRNN_PANELS(d, double, 0)
#undef CYRNN_PANELS
#undef CYRNN_RUN_PANELS
#undef CYRNN_PANEL_COLUMNS

#endif
