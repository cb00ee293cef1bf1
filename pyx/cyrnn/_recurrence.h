/* The per-row loops of the normalized recurrences (pyx/cyrnn/_recurrence.pyx) that run over every
 * element of a step: layer normalization of rows, forward and backward, and the LSTM's output
 * through its normalized cell state, h = o tanh(chat gc + bc), forward and backward.
 *
 * Written once as macros over the float type and its tanh, like _gated.h: float32 compiled three
 * times (AVX-512, AVX2 with FMA, the baseline; the widest this CPU runs chosen at each call) with
 * the vectorizable rational tanh of _elementwise.h, float64 once with libm's tanh. Restrict
 * pointers (the blocks a function reads and writes never overlap, but for the in/out blocks that
 * go through one pointer) let the compiler vectorize without alias checks. Row sums use sixteen
 * partial sums in a fixed order: vectorizable without reassociation flags, and the same result
 * in every build up to the rounding of fused multiply-adds.
 */
#ifndef CYRNN_RECURRENCE_H
#define CYRNN_RECURRENCE_H

#include "_gated.h"

#define CYRNN_PARTIALS 16

#define CYRNN_RECURRENCE_BODIES(REAL, T, TANH, SQRT)                                               \
/* sum_j x[j] (y == NULL) or sum_j x[j] y[j] over n values */                                      \
CYRNN_INLINE REAL cyrnn_row_sum_##T(const REAL* CYRNN_RESTRICT x, const REAL* CYRNN_RESTRICT y,    \
                                    long n)                                                        \
{                                                                                                  \
    REAL p[CYRNN_PARTIALS] = {0};                                                                  \
    long i = 0, j;                                                                                 \
    if (y == NULL) {                                                                               \
        for (; i + CYRNN_PARTIALS <= n; i += CYRNN_PARTIALS)                                       \
            for (j = 0; j < CYRNN_PARTIALS; j++)                                                   \
                p[j] += x[i + j];                                                                  \
        for (; i < n; i++)                                                                         \
            p[0] += x[i];                                                                          \
    } else {                                                                                       \
        for (; i + CYRNN_PARTIALS <= n; i += CYRNN_PARTIALS)                                       \
            for (j = 0; j < CYRNN_PARTIALS; j++)                                                   \
                p[j] += x[i + j] * y[i + j];                                                       \
        for (; i < n; i++)                                                                         \
            p[0] += x[i] * y[i];                                                                   \
    }                                                                                              \
    for (j = CYRNN_PARTIALS / 2; j > 0; j /= 2)                                                    \
        for (i = 0; i < j; i++)                                                                    \
            p[i] += p[i + j];                                                                      \
    return p[0];                                                                                   \
}                                                                                                  \
/* sum_j (x[j] - m)^2 */                                                                           \
CYRNN_INLINE REAL cyrnn_row_deviation_##T(const REAL* CYRNN_RESTRICT x, REAL m, long n)            \
{                                                                                                  \
    REAL p[CYRNN_PARTIALS] = {0};                                                                  \
    long i = 0, j;                                                                                 \
    for (; i + CYRNN_PARTIALS <= n; i += CYRNN_PARTIALS)                                           \
        for (j = 0; j < CYRNN_PARTIALS; j++)                                                       \
            p[j] += (x[i + j] - m) * (x[i + j] - m);                                               \
    for (; i < n; i++)                                                                             \
        p[0] += (x[i] - m) * (x[i] - m);                                                           \
    for (j = CYRNN_PARTIALS / 2; j > 0; j /= 2)                                                    \
        for (i = 0; i < j; i++)                                                                    \
            p[i] += p[i + j];                                                                      \
    return p[0];                                                                                   \
}                                                                                                  \
/* layer normalization of each row of x (rows, n): xhat = (x - mean) rstd, rstd (rows,) =         \
 * 1 / sqrt(var + eps) with the biased variance; then x <- xhat gain where a gain (n,) is given */ \
CYRNN_INLINE void cyrnn_layer_norm_body_##T(REAL* CYRNN_RESTRICT x, REAL* CYRNN_RESTRICT xhat,     \
                                            REAL* CYRNN_RESTRICT rstd,                             \
                                            const REAL* CYRNN_RESTRICT gain, REAL eps, long rows,  \
                                            long n)                                                \
{                                                                                                  \
    long b, j;                                                                                     \
    for (b = 0; b < rows; b++) {                                                                   \
        REAL* xb = x + b * n;                                                                      \
        REAL* hb = xhat + b * n;                                                                   \
        REAL m = cyrnn_row_sum_##T(xb, NULL, n) / (REAL)n;                                         \
        REAL r = (REAL)1 / SQRT(cyrnn_row_deviation_##T(xb, m, n) / (REAL)n + eps);                \
        rstd[b] = r;                                                                               \
        for (j = 0; j < n; j++)                                                                    \
            hb[j] = (xb[j] - m) * r;                                                               \
        if (gain != NULL)                                                                          \
            for (j = 0; j < n; j++)                                                                \
                xb[j] = hb[j] * gain[j];                                                           \
    }                                                                                              \
}                                                                                                  \
/* its backward, d (rows, n) = dL/dxhat on entry, dL/dx on return:                                 \
 * dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */                                      \
CYRNN_INLINE void cyrnn_layer_norm_backward_body_##T(REAL* CYRNN_RESTRICT d,                       \
                                                     const REAL* CYRNN_RESTRICT xhat,              \
                                                     const REAL* CYRNN_RESTRICT rstd, long rows,   \
                                                     long n)                                       \
{                                                                                                  \
    long b, j;                                                                                     \
    for (b = 0; b < rows; b++) {                                                                   \
        REAL* db = d + b * n;                                                                      \
        const REAL* xb = xhat + b * n;                                                             \
        REAL m1 = cyrnn_row_sum_##T(db, NULL, n) / (REAL)n;                                        \
        REAL m2 = cyrnn_row_sum_##T(db, xb, n) / (REAL)n;                                          \
        REAL r = rstd[b];                                                                          \
        for (j = 0; j < n; j++)                                                                    \
            db[j] = r * (db[j] - m1 - xb[j] * m2);                                                 \
    }                                                                                              \
}                                                                                                  \
/* the backward pass of y = xhat gain, then of the normalization, over rows of dy (rows, n):       \
 * dgain (n,) += the column sums of dy xhat; dx = the normalization's backward of dy gain, into  \
 * dx (rows, n): dy itself (in place) or a block of its own. One row at a time, in cache */        \
CYRNN_INLINE void cyrnn_gain_row_##T(const REAL* CYRNN_RESTRICT y, REAL* CYRNN_RESTRICT d,         \
                                     const REAL* CYRNN_RESTRICT xb,                                \
                                     const REAL* CYRNN_RESTRICT gain,                              \
                                     REAL* CYRNN_RESTRICT dgain, long n)                           \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < n; j++) {                                                                      \
        dgain[j] += y[j] * xb[j];                                                                  \
        d[j] = y[j] * gain[j];                                                                     \
    }                                                                                              \
}                                                                                                  \
CYRNN_INLINE void cyrnn_gain_row_in_place_##T(REAL* CYRNN_RESTRICT d,                              \
                                              const REAL* CYRNN_RESTRICT xb,                       \
                                              const REAL* CYRNN_RESTRICT gain,                     \
                                              REAL* CYRNN_RESTRICT dgain, long n)                  \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < n; j++) {                                                                      \
        REAL v = d[j];                                                                             \
        dgain[j] += v * xb[j];                                                                     \
        d[j] = v * gain[j];                                                                        \
    }                                                                                              \
}                                                                                                  \
CYRNN_INLINE void cyrnn_layer_norm_gain_backward_body_##T(const REAL* dy,                          \
                                                          const REAL* CYRNN_RESTRICT xhat,         \
                                                          const REAL* CYRNN_RESTRICT rstd,         \
                                                          const REAL* CYRNN_RESTRICT gain,         \
                                                          REAL* CYRNN_RESTRICT dgain, REAL* dx,    \
                                                          long rows, long n)                       \
{                                                                                                  \
    long b;                                                                                        \
    for (b = 0; b < rows; b++) {                                                                   \
        if (dx == dy)                                                                              \
            cyrnn_gain_row_in_place_##T(dx + b * n, xhat + b * n, gain, dgain, n);                 \
        else                                                                                       \
            cyrnn_gain_row_##T(dy + b * n, dx + b * n, xhat + b * n, gain, dgain, n);              \
        cyrnn_layer_norm_backward_body_##T(dx + b * n, xhat + b * n, rstd + b, 1, n);              \
    }                                                                                              \
}                                                                                                  \
/* the LSTM's output through its normalized cell state, rows of gates (4H) [i f g o] and of       \
 * chat, h (H): h = o tanh(chat gc + bc) */                                                        \
CYRNN_INLINE void cyrnn_normalized_output_body_##T(const REAL* CYRNN_RESTRICT gates,               \
                                                   const REAL* CYRNN_RESTRICT chat,                \
                                                   const REAL* CYRNN_RESTRICT gc,                  \
                                                   const REAL* CYRNN_RESTRICT bc,                  \
                                                   REAL* CYRNN_RESTRICT h, long rows, long H)      \
{                                                                                                  \
    long b, j;                                                                                     \
    for (b = 0; b < rows; b++) {                                                                   \
        const REAL* o = gates + b * 4 * H + 3 * H;                                                 \
        const REAL* cb = chat + b * H;                                                             \
        REAL* hb = h + b * H;                                                                      \
        for (j = 0; j < H; j++)                                                                    \
            hb[j] = o[j] * TANH(cb[j] * gc[j] + bc[j]);                                            \
    }                                                                                              \
}                                                                                                  \
/* its backward from g = dL/dh (rows, H): u = tanh(chat gc + bc), du = g o (1 - u^2),              \
 * dchat = du gc, and the gradients of gc and bc (H,) grow by du chat and du */                    \
CYRNN_INLINE void cyrnn_normalized_output_backward_body_##T(                                       \
    const REAL* CYRNN_RESTRICT g, const REAL* CYRNN_RESTRICT gates,                                \
    const REAL* CYRNN_RESTRICT chat, const REAL* CYRNN_RESTRICT gc,                                \
    const REAL* CYRNN_RESTRICT bc, REAL* CYRNN_RESTRICT u, REAL* CYRNN_RESTRICT dchat,             \
    REAL* CYRNN_RESTRICT dgc, REAL* CYRNN_RESTRICT dbc, long rows, long H)                         \
{                                                                                                  \
    long b, j;                                                                                     \
    for (b = 0; b < rows; b++) {                                                                   \
        const REAL* o = gates + b * 4 * H + 3 * H;                                                 \
        const REAL* gb = g + b * H;                                                                \
        const REAL* cb = chat + b * H;                                                             \
        REAL* ub = u + b * H;                                                                      \
        REAL* db = dchat + b * H;                                                                  \
        for (j = 0; j < H; j++) {                                                                  \
            REAL uu = TANH(cb[j] * gc[j] + bc[j]);                                                 \
            REAL du = gb[j] * o[j] * ((REAL)1 - uu * uu);                                          \
            ub[j] = uu;                                                                            \
            db[j] = du * gc[j];                                                                    \
            dgc[j] += du * cb[j];                                                                  \
            dbc[j] += du;                                                                          \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* the LSTM's backward epilogue when h = o u does not read c: from dc = dL/dc_t (rows, H), in      \
 * place (dc f on return, towards c_{t-1}), g = dL/dh_t and u: da (rows, 4H) */                    \
CYRNN_INLINE void cyrnn_lstm_backward_from_dc_body_##T(                                            \
    REAL* CYRNN_RESTRICT dc, const REAL* CYRNN_RESTRICT g, const REAL* CYRNN_RESTRICT u,           \
    const REAL* CYRNN_RESTRICT gates, const REAL* CYRNN_RESTRICT c_prev,                           \
    REAL* CYRNN_RESTRICT da, long rows, long H)                                                    \
{                                                                                                  \
    long b, j;                                                                                     \
    for (b = 0; b < rows; b++) {                                                                   \
        const REAL* gt = gates + b * 4 * H;                                                        \
        REAL* db = da + b * 4 * H;                                                                 \
        long k = b * H;                                                                            \
        for (j = 0; j < H; j++) {                                                                  \
            REAL i = gt[j], f = gt[H + j], gg = gt[2 * H + j], o = gt[3 * H + j];                  \
            REAL d = dc[k + j];                                                                    \
            db[j] = d * gg * (i * ((REAL)1 - i));                                                  \
            db[H + j] = d * c_prev[k + j] * (f * ((REAL)1 - f));                                   \
            db[2 * H + j] = d * i * ((REAL)1 - gg * gg);                                           \
            db[3 * H + j] = g[k + j] * u[k + j] * (o * ((REAL)1 - o));                             \
            dc[k + j] = d * f;                                                                     \
        }                                                                                          \
    }                                                                                              \
}

CYRNN_RECURRENCE_BODIES(float, f32, cyrnn_tanh_f32, sqrtf)
CYRNN_RECURRENCE_BODIES(double, f64, tanh, sqrt)

/* each float32 loop in its three builds and its dispatch (_gated.h's); float64 calls its body */

CYRNN_SIMD_DISPATCH(cyrnn_layer_norm,
                          (float* x, float* xhat, float* rstd, const float* gain, float eps,
                           long rows, long n),
                          (x, xhat, rstd, gain, eps, rows, n))
CYRNN_SIMD_DISPATCH(cyrnn_layer_norm_backward,
                          (float* d, const float* xhat, const float* rstd, long rows, long n),
                          (d, xhat, rstd, rows, n))
CYRNN_SIMD_DISPATCH(cyrnn_layer_norm_gain_backward,
                          (const float* dy, const float* xhat, const float* rstd,
                           const float* gain, float* dgain, float* dx, long rows, long n),
                          (dy, xhat, rstd, gain, dgain, dx, rows, n))
CYRNN_SIMD_DISPATCH(cyrnn_normalized_output,
                          (const float* gates, const float* chat, const float* gc,
                           const float* bc, float* h, long rows, long H),
                          (gates, chat, gc, bc, h, rows, H))
CYRNN_SIMD_DISPATCH(cyrnn_normalized_output_backward,
                          (const float* g, const float* gates, const float* chat,
                           const float* gc, const float* bc, float* u, float* dchat, float* dgc,
                           float* dbc, long rows, long H),
                          (g, gates, chat, gc, bc, u, dchat, dgc, dbc, rows, H))
CYRNN_SIMD_DISPATCH(cyrnn_lstm_backward_from_dc,
                          (float* dc, const float* g, const float* u, const float* gates,
                           const float* c_prev, float* da, long rows, long H),
                          (dc, g, u, gates, c_prev, da, rows, H))

#define cyrnn_layer_norm_f64 cyrnn_layer_norm_body_f64
#define cyrnn_layer_norm_backward_f64 cyrnn_layer_norm_backward_body_f64
#define cyrnn_layer_norm_gain_backward_f64 cyrnn_layer_norm_gain_backward_body_f64
#define cyrnn_normalized_output_f64 cyrnn_normalized_output_body_f64
#define cyrnn_normalized_output_backward_f64 cyrnn_normalized_output_backward_body_f64
#define cyrnn_lstm_backward_from_dc_f64 cyrnn_lstm_backward_from_dc_body_f64

#undef CYRNN_RECURRENCE_BODIES

#endif
