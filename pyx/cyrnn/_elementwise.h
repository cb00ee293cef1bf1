/* float32 activations and their derivatives, exps in float32 and float64, and row sums (a bias
 * and its gradient) over contiguous blocks, compiled three times: for AVX-512, for AVX2 with FMA, and for
 * the baseline the extension is built for (SSE2 on x86-64), the widest one this CPU runs chosen
 * at each call. The loops are plain C that the compiler vectorizes; each build is the same
 * source, so all three give the same results up to the rounding of fused multiply-adds.
 *
 * tanh(x) = x P(x^2) / Q(x^2) on the clamped range |x| <= 7.905 (tanh rounds to +-1 in float32
 * beyond it), with the minimax coefficients published with the Eigen library: absolute error
 * below 1e-6 (tests check it against numpy.tanh). libm's tanhf is a scalar call that blocks
 * vectorization. Every constant is a float: a bare literal is a double and would promote the
 * arithmetic.
 *
 * Codes of the nonlinearities: 0 tanh, 1 relu, 2 sigmoid, 3 leaky_relu, 4 identity, as in
 * _act.pxd and cyrnn._checks.NONLINEARITIES.
 */
#ifndef CYRNN_ELEMENTWISE_H
#define CYRNN_ELEMENTWISE_H

#include "_cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define CYRNN_INLINE __attribute__((always_inline)) static inline
#else
#define CYRNN_INLINE static __inline
#endif

CYRNN_INLINE float cyrnn_tanh_f32(float x)
{
    const float clamp = 7.90531110763549805f;
    const float a1 = 4.89352455891786e-03f, a3 = 6.37261928875436e-04f;
    const float a5 = 1.48572235717979e-05f, a7 = 5.12229709037114e-08f;
    const float a9 = -8.60467152213735e-11f, a11 = 2.00018790482477e-13f;
    const float a13 = -2.76076847742355e-16f;
    const float b0 = 4.89352518554385e-03f, b2 = 2.26843463243900e-03f;
    const float b4 = 1.18534705686654e-04f, b6 = 1.19825839466702e-06f;
    float x2, p, q;
    x = x > clamp ? clamp : x;
    x = x < -clamp ? -clamp : x;
    x2 = x * x;
    /* x P(x^2) with P of degree 6, Q(x^2) of degree 3, both by Horner's rule */
    p = x2 * a13 + a11;
    p = x2 * p + a9;
    p = x2 * p + a7;
    p = x2 * p + a5;
    p = x2 * p + a3;
    p = x2 * p + a1;
    p = x * p;
    q = x2 * b6 + b4;
    q = x2 * q + b2;
    q = x2 * q + b0;
    return p / q;
}

/* exp(x) in float64, within 2 ulp of the correctly rounded value from x = -708 to the overflow
 * threshold 709.78; 0 below -708 (results under the normal range, 2.2e-308, are flushed to 0),
 * +inf above, NaN for NaN. Written for vectorization: exp(x) = 2^n e^r with n = round(x / ln 2)
 * (by the 1.5 * 2^52 shifter), r = x - n ln 2 in two parts (Cody and Waite), |r| <= ln(2) / 2,
 * e^r by its Taylor polynomial of degree 13 (remainder below 5e-18), and 2^n, as 2 * 2^(n-1) so
 * that n = 1024 stays finite, from the low bits of the shifted sum. */
CYRNN_INLINE double cyrnn_exp_f64(double x)
{
    const double log2e = 1.4426950408889634, shifter = 6755399441055744.0;
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double overflow = 709.782712893384;
    double n, r, p, kd, scale, keep = x >= -708.0 ? 1.0 : 0.0, inf = x > overflow ? 1.0 : 0.0;
    unsigned long long bits;
    x = x < -708.0 ? -708.0 : x;
    x = x > overflow ? overflow : x;
    kd = x * log2e + shifter;
    n = kd - shifter;
    r = (x - n * ln2_hi) - n * ln2_lo;
    p = 1.0 / 6227020800.0;                 /* 1/13! */
    p = p * r + 1.0 / 479001600.0;          /* 1/12! */
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* kd's low mantissa bits hold n (|n| < 2^51): n + 1022 into the exponent field is 2^(n-1) */
    memcpy(&bits, &kd, sizeof bits);
    bits = (bits + 1022ULL) << 52;
    memcpy(&scale, &bits, sizeof scale);
    return inf != 0.0 ? HUGE_VAL : p * scale * 2.0 * keep;
}

/* exp(x) in float32, relative error about 1e-7, finite and normal from x = -87.3365 (FLT_MIN) to
 * the overflow threshold 88.7228; 0 below (and for -inf), +inf above, NaN for NaN. exp(x) =
 * 2^n e^r with n = round(x / ln 2) in [-126, 128] (by the 1.5 * 2^23 shifter), r = x - n ln 2 in
 * two parts, |r| <= ln(2) / 2, and e^r = 1 + r + r^2 P(r) with the degree-5 minimax P of the
 * Cephes library. 2^n is built from the low bits of the shifted sum in unsigned arithmetic, as
 * 2^(n-1) * 2 for n > 0 so that n = 128 stays finite: no float is converted to an integer, so
 * that NaN and infinities (softmax of logits that overflowed, inf - inf) are well defined. */
CYRNN_INLINE float cyrnn_exp_f32(float x)
{
    const float hi = 88.7228317f, lo = -87.3365479f;
    const float log2e = 1.44269504088896341f, shifter = 12582912.0f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float p0 = 1.9875691500e-4f, p1 = 1.3981999507e-3f, p2 = 8.3334519073e-3f;
    const float p3 = 4.1665795894e-2f, p4 = 1.6666665459e-1f, p5 = 5.0000001201e-1f;
    float n, r, p, kd, j, scale, keep = x >= lo ? 1.0f : 0.0f, inf = x > hi ? 1.0f : 0.0f;
    uint32_t bits;
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    kd = x * log2e + shifter;
    n = kd - shifter;
    r = (x - n * ln2_hi) - n * ln2_lo;
    p = r * p0 + p1;
    p = r * p + p2;
    p = r * p + p3;
    p = r * p + p4;
    p = r * p + p5;
    p = (r * r) * p + r + 1.0f;
    /* kd's low mantissa bits hold n + 2^22: with 127 added, the low 9 bits are the exponent
     * field of 2^n; j = 1 takes 2^(n-1) instead */
    j = n > 0.0f ? 1.0f : 0.0f;
    kd = kd - j;
    memcpy(&bits, &kd, sizeof bits);
    bits = (bits + 127u) << 23;
    memcpy(&scale, &bits, sizeof scale);
    return inf != 0.0f ? HUGE_VALF : p * scale * (1.0f + j) * keep;
}

/* x[i] <- exp(x[i]) for i < n, in place (float32) */
CYRNN_INLINE void cyrnn_exp_f32_body(float* x, long n)
{
    long i;
    for (i = 0; i < n; i++)
        x[i] = cyrnn_exp_f32(x[i]);
}

/* x[i] <- exp(x[i]) for i < n, in place (float64) */
CYRNN_INLINE void cyrnn_exp_body(double* x, long n)
{
    long i;
    for (i = 0; i < n; i++)
        x[i] = cyrnn_exp_f64(x[i]);
}

/* a[i] <- f(a[i]) for i < n, in place; the activation chosen outside the loops */
CYRNN_INLINE void cyrnn_activate_body(float* a, long n, int code, float slope)
{
    long i;
    switch (code) {
    case 0:
        for (i = 0; i < n; i++)
            a[i] = cyrnn_tanh_f32(a[i]);
        break;
    case 1:
        /* written so that NaN passes through, as NumPy's maximum does */
        for (i = 0; i < n; i++)
            a[i] = a[i] < 0 ? 0.0f : a[i];
        break;
    case 2:
        /* sigmoid(x) = (1 + tanh(x / 2)) / 2: vectorizable and free of exp overflow */
        for (i = 0; i < n; i++)
            a[i] = 0.5f + 0.5f * cyrnn_tanh_f32(0.5f * a[i]);
        break;
    case 3:
        for (i = 0; i < n; i++)
            a[i] = a[i] > 0 ? a[i] : slope * a[i];
        break;
    default:  /* identity */
        break;
    }
}

/* out[i] <- g[i] * f'(a[i]), with f' written in terms of h[i] = f(a[i]); out may be g */
CYRNN_INLINE void cyrnn_times_derivative_body(float* out, const float* g, const float* h, long n,
                                              int code, float slope)
{
    long i;
    switch (code) {
    case 0:
        for (i = 0; i < n; i++)
            out[i] = g[i] * (1.0f - h[i] * h[i]);
        break;
    case 1:
        for (i = 0; i < n; i++)
            out[i] = h[i] > 0 ? g[i] : 0.0f;
        break;
    case 2:
        for (i = 0; i < n; i++)
            out[i] = g[i] * (h[i] * (1.0f - h[i]));
        break;
    case 3:
        for (i = 0; i < n; i++)
            out[i] = h[i] > 0 ? g[i] : slope * g[i];
        break;
    default:
        for (i = 0; i < n; i++)
            out[i] = g[i];
        break;
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CYRNN_ELEMENTWISE_DISPATCH 1
/* 512-bit vectors in the AVX-512 build (compilers may prefer 256 by default): GCC takes the
 * preference in the target string, clang as its own attribute */
#if defined(__clang__)
#define CYRNN_AVX512 __attribute__((target("avx512f"), min_vector_width(512))) static
#else
#define CYRNN_AVX512 __attribute__((target("avx512f,prefer-vector-width=512"))) static
#endif
#define CYRNN_AVX2 __attribute__((target("avx2,fma"))) static

CYRNN_AVX512 void cyrnn_activate_avx512(float* a, long n, int code, float slope)
{
    cyrnn_activate_body(a, n, code, slope);
}

CYRNN_AVX2 void cyrnn_activate_avx2(float* a, long n, int code, float slope)
{
    cyrnn_activate_body(a, n, code, slope);
}

CYRNN_AVX512 void cyrnn_exp_avx512(double* x, long n)
{
    cyrnn_exp_body(x, n);
}

CYRNN_AVX2 void cyrnn_exp_avx2(double* x, long n)
{
    cyrnn_exp_body(x, n);
}

CYRNN_AVX512 void cyrnn_exp_f32_avx512(float* x, long n)
{
    cyrnn_exp_f32_body(x, n);
}

CYRNN_AVX2 void cyrnn_exp_f32_avx2(float* x, long n)
{
    cyrnn_exp_f32_body(x, n);
}

CYRNN_AVX512 void cyrnn_times_derivative_avx512(float* out, const float* g, const float* h,
                                                long n, int code, float slope)
{
    cyrnn_times_derivative_body(out, g, h, n, code, slope);
}

CYRNN_AVX2 void cyrnn_times_derivative_avx2(float* out, const float* g, const float* h, long n,
                                            int code, float slope)
{
    cyrnn_times_derivative_body(out, g, h, n, code, slope);
}
#endif

static void cyrnn_activate_base(float* a, long n, int code, float slope)
{
    cyrnn_activate_body(a, n, code, slope);
}

static void cyrnn_exp_base(double* x, long n)
{
    cyrnn_exp_body(x, n);
}

static void cyrnn_exp_f32_base(float* x, long n)
{
    cyrnn_exp_f32_body(x, n);
}

static void cyrnn_times_derivative_base(float* out, const float* g, const float* h, long n,
                                        int code, float slope)
{
    cyrnn_times_derivative_body(out, g, h, n, code, slope);
}

static inline void cyrnn_activate_f32(float* a, long n, int code, float slope)
{
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (cyrnn_cpu_build() >= 2)
        cyrnn_activate_avx512(a, n, code, slope);
    else if (cyrnn_cpu_build() >= 1)
        cyrnn_activate_avx2(a, n, code, slope);
    else
#endif
        cyrnn_activate_base(a, n, code, slope);
}

static inline void cyrnn_exp_f64_inplace(double* x, long n)
{
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (cyrnn_cpu_build() >= 2)
        cyrnn_exp_avx512(x, n);
    else if (cyrnn_cpu_build() >= 1)
        cyrnn_exp_avx2(x, n);
    else
#endif
        cyrnn_exp_base(x, n);
}

static inline void cyrnn_exp_f32_inplace(float* x, long n)
{
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (cyrnn_cpu_build() >= 2)
        cyrnn_exp_f32_avx512(x, n);
    else if (cyrnn_cpu_build() >= 1)
        cyrnn_exp_f32_avx2(x, n);
    else
#endif
        cyrnn_exp_f32_base(x, n);
}

static inline void cyrnn_times_derivative_f32(float* out, const float* g, const float* h, long n,
                                              int code, float slope)
{
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (cyrnn_cpu_build() >= 2)
        cyrnn_times_derivative_avx512(out, g, h, n, code, slope);
    else if (cyrnn_cpu_build() >= 1)
        cyrnn_times_derivative_avx2(out, g, h, n, code, slope);
    else
#endif
        cyrnn_times_derivative_base(out, g, h, n, code, slope);
}

/* Row-wise sums over a (rows, n) block, float32 and float64, in the same three builds:
 *   cyrnn_rows_<t>(y, x, rows, n, 0): y (rows, n) += x (n,) on every row (a bias)
 *   cyrnn_rows_<t>(y, x, rows, n, 1): y (n,) += the column sums of x (rows, n) (its gradient)
 * One call per block, so that the dispatch is paid once and the loops run the full width. */
#define CYRNN_ROWS(REAL, T)                                                                    \
CYRNN_INLINE void cyrnn_rows_body_##T(REAL* y, const REAL* x, long rows, long n, int sum)     \
{                                                                                              \
    long r, j;                                                                                 \
    if (sum) {                                                                                 \
        for (r = 0; r < rows; r++)                                                             \
            for (j = 0; j < n; j++)                                                            \
                y[j] += x[r * n + j];                                                          \
    } else {                                                                                   \
        for (r = 0; r < rows; r++)                                                             \
            for (j = 0; j < n; j++)                                                            \
                y[r * n + j] += x[j];                                                          \
    }                                                                                          \
}                                                                                              \
CYRNN_ROWS_BUILDS(REAL, T)                                                                     \
static void cyrnn_rows_base_##T(REAL* y, const REAL* x, long rows, long n, int sum)           \
{                                                                                              \
    cyrnn_rows_body_##T(y, x, rows, n, sum);                                                   \
}                                                                                              \
static inline void cyrnn_rows_##T(REAL* y, const REAL* x, long rows, long n, int sum)         \
{                                                                                              \
    CYRNN_ROWS_DISPATCH(T)                                                                     \
    cyrnn_rows_base_##T(y, x, rows, n, sum);                                                   \
}

#ifdef CYRNN_ELEMENTWISE_DISPATCH
#define CYRNN_ROWS_BUILDS(REAL, T)                                                             \
CYRNN_AVX512 void cyrnn_rows_avx512_##T(REAL* y, const REAL* x, long rows, long n, int sum)   \
{                                                                                              \
    cyrnn_rows_body_##T(y, x, rows, n, sum);                                                   \
}                                                                                              \
CYRNN_AVX2 void cyrnn_rows_avx2_##T(REAL* y, const REAL* x, long rows, long n, int sum)       \
{                                                                                              \
    cyrnn_rows_body_##T(y, x, rows, n, sum);                                                   \
}
#define CYRNN_ROWS_DISPATCH(T)                                                                 \
    if (cyrnn_cpu_build() >= 2) {                                                   \
        cyrnn_rows_avx512_##T(y, x, rows, n, sum);                                             \
        return;                                                                                \
    }                                                                                          \
    if (cyrnn_cpu_build() >= 1) {                     \
        cyrnn_rows_avx2_##T(y, x, rows, n, sum);                                               \
        return;                                                                                \
    }
#else
#define CYRNN_ROWS_BUILDS(REAL, T)
#define CYRNN_ROWS_DISPATCH(T)
#endif

CYRNN_ROWS(float, f32)
CYRNN_ROWS(double, f64)

/* For the tests: one build (0 the baseline, 1 AVX2, 2 AVX-512) of cyrnn_rows_<t>; 0 where this
 * CPU cannot run it. */
#ifdef CYRNN_ELEMENTWISE_DISPATCH
#define CYRNN_ROWS_OTHER_BUILDS(T)                                                             \
    if (which == 1 && cyrnn_cpu_build() >= 1) {       \
        cyrnn_rows_avx2_##T(y, x, rows, n, sum);                                               \
        return 1;                                                                              \
    }                                                                                          \
    if (which == 2 && cyrnn_cpu_build() >= 2) {                                     \
        cyrnn_rows_avx512_##T(y, x, rows, n, sum);                                             \
        return 1;                                                                              \
    }
#else
#define CYRNN_ROWS_OTHER_BUILDS(T)
#endif
#define CYRNN_ROWS_BUILD(REAL, T)                                                              \
static inline int cyrnn_rows_build_##T(int which, REAL* y, const REAL* x, long rows, long n,  \
                                       int sum)                                               \
{                                                                                              \
    if (which == 0) {                                                                          \
        cyrnn_rows_base_##T(y, x, rows, n, sum);                                               \
        return 1;                                                                              \
    }                                                                                          \
    CYRNN_ROWS_OTHER_BUILDS(T)                                                                 \
    return 0;                                                                                  \
}
CYRNN_ROWS_BUILD(float, f32)
CYRNN_ROWS_BUILD(double, f64)
#undef CYRNN_ROWS_BUILD
#undef CYRNN_ROWS_OTHER_BUILDS

#undef CYRNN_ROWS
#undef CYRNN_ROWS_BUILDS
#undef CYRNN_ROWS_DISPATCH

/* The build each call runs here: 2 AVX-512, 1 AVX2, 0 the baseline. */
static inline int cyrnn_elementwise_widest(void)
{
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    return cyrnn_cpu_build();
#else
    return 0;
#endif
}

/* For the tests: run one build, 0 the baseline, 1 AVX2, 2 AVX-512, of activate (in place on
 * out) or, with `derivative`, of times_derivative. Returns 0 where this CPU cannot run it. The
 * float64 and float32 exps likewise, in place on x. */
static inline int cyrnn_exp_build(int which, double* x, long n)
{
    if (which == 0) {
        cyrnn_exp_base(x, n);
        return 1;
    }
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (which == 1 && cyrnn_cpu_build() >= 1) {
        cyrnn_exp_avx2(x, n);
        return 1;
    }
    if (which == 2 && cyrnn_cpu_build() >= 2) {
        cyrnn_exp_avx512(x, n);
        return 1;
    }
#endif
    return 0;
}

static inline int cyrnn_exp_f32_build(int which, float* x, long n)
{
    if (which == 0) {
        cyrnn_exp_f32_base(x, n);
        return 1;
    }
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (which == 1 && cyrnn_cpu_build() >= 1) {
        cyrnn_exp_f32_avx2(x, n);
        return 1;
    }
    if (which == 2 && cyrnn_cpu_build() >= 2) {
        cyrnn_exp_f32_avx512(x, n);
        return 1;
    }
#endif
    return 0;
}

static inline int cyrnn_elementwise_build(int which, int derivative, float* out, const float* g,
                                          const float* h, long n, int code, float slope)
{
    if (which == 0) {
        if (derivative)
            cyrnn_times_derivative_base(out, g, h, n, code, slope);
        else
            cyrnn_activate_base(out, n, code, slope);
        return 1;
    }
#ifdef CYRNN_ELEMENTWISE_DISPATCH
    if (which == 1 && cyrnn_cpu_build() >= 1) {
        if (derivative)
            cyrnn_times_derivative_avx2(out, g, h, n, code, slope);
        else
            cyrnn_activate_avx2(out, n, code, slope);
        return 1;
    }
    if (which == 2 && cyrnn_cpu_build() >= 2) {
        if (derivative)
            cyrnn_times_derivative_avx512(out, g, h, n, code, slope);
        else
            cyrnn_activate_avx512(out, n, code, slope);
        return 1;
    }
#endif
    return 0;
}

#endif
