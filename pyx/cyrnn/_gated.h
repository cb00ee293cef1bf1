/* The fused elementwise epilogues of the gated cells (LSTM, GRU) around their per-step products,
 * over blocks of `rows` consecutive rows of one time step: gate rows of n*H values (gate blocks
 * side by side, PyTorch's order), state rows of H values.
 *
 * Written once as macros over the float type and its tanh; float32 is compiled three times like
 * the loops of _elementwise.h (AVX-512, AVX2 with FMA, the baseline; the widest this CPU runs
 * chosen at each call) with its vectorizable rational tanh, float64 once with libm's tanh (as
 * _act.pxd does: accuracy first). sigmoid(x) = 0.5 + 0.5 tanh(x / 2): exact in real arithmetic,
 * free of exp overflow, within 5e-7 of the true value in float32.
 *
 * A zero `scale` (a carry that cuts the graph) writes zeros where the scaled gradient would go,
 * rather than multiplying: nothing crosses a cut, not even 0 * inf.
 */
#ifndef CYRNN_GATED_H
#define CYRNN_GATED_H

#include "_elementwise.h"

/* The row functions take restrict pointers: the blocks a row reads and writes never overlap (an
 * in/out block, gc of the LSTM's backward pass, goes through one pointer). Without them the
 * compiler must assume any store may change any load and does not vectorize the loops (nor
 * with restrict pointers declared inside the loop over rows, in GCC 12). */
#if defined(__GNUC__) || defined(__clang__)
#define CYRNN_RESTRICT __restrict__
#else
#define CYRNN_RESTRICT
#endif

#define CYRNN_SIGMOID(REAL, TANH, x) ((REAL)0.5 + (REAL)0.5 * TANH((REAL)0.5 * (x)))

#define CYRNN_GATED_BODIES(REAL, T, TANH)                                                          \
/* LSTM forward, one row: the pre-activations ai, af, ag, ao (H each) replaced by the gates        \
 * after activation; c = f c_prev + i g, h = o tanh(c) */                                          \
CYRNN_INLINE void cyrnn_lstm_forward_row_##T(REAL* CYRNN_RESTRICT ai, REAL* CYRNN_RESTRICT af,     \
                                             REAL* CYRNN_RESTRICT ag, REAL* CYRNN_RESTRICT ao,     \
                                             const REAL* CYRNN_RESTRICT c_prev,                    \
                                             REAL* CYRNN_RESTRICT c, REAL* CYRNN_RESTRICT h,       \
                                             long H)                                               \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < H; j++) {                                                                      \
        REAL i = CYRNN_SIGMOID(REAL, TANH, ai[j]);                                                 \
        REAL f = CYRNN_SIGMOID(REAL, TANH, af[j]);                                                 \
        REAL g = TANH(ag[j]);                                                                      \
        REAL o = CYRNN_SIGMOID(REAL, TANH, ao[j]);                                                 \
        REAL cc = f * c_prev[j] + i * g;                                                           \
        ai[j] = i;                                                                                 \
        af[j] = f;                                                                                 \
        ag[j] = g;                                                                                 \
        ao[j] = o;                                                                                 \
        c[j] = cc;                                                                                 \
        h[j] = o * TANH(cc);                                                                       \
    }                                                                                              \
}                                                                                                  \
/* over `rows` rows: a (rows, 4H) [i f g o], c_prev, c, h (rows, H) */                             \
CYRNN_INLINE void cyrnn_lstm_forward_body_##T(REAL* a, const REAL* c_prev, REAL* c, REAL* h,       \
                                              long rows, long H)                                   \
{                                                                                                  \
    long r;                                                                                        \
    for (r = 0; r < rows; r++) {                                                                   \
        REAL* ar = a + r * 4 * H;                                                                  \
        cyrnn_lstm_forward_row_##T(ar, ar + H, ar + 2 * H, ar + 3 * H, c_prev + r * H,             \
                                   c + r * H, h + r * H, H);                                       \
    }                                                                                              \
}                                                                                                  \
/* LSTM backward, one row: from gh = dL/dh_t and gc = dL/dc_t, the gates and the cell states       \
 * before and after the step: da (4 blocks of H), and gc <- scale * dc * f in place (the           \
 * gradient that crosses to c_{t-1}) */                                                            \
CYRNN_INLINE void cyrnn_lstm_backward_row_##T(const REAL* CYRNN_RESTRICT gh,                       \
                                              REAL* CYRNN_RESTRICT gc,                             \
                                              const REAL* CYRNN_RESTRICT gates,                    \
                                              const REAL* CYRNN_RESTRICT c_prev,                   \
                                              const REAL* CYRNN_RESTRICT c,                        \
                                              REAL* CYRNN_RESTRICT da, REAL scale, long H)         \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < H; j++) {                                                                      \
        REAL i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];           \
        REAL tc = TANH(c[j]);                                                                      \
        REAL dc = gc[j] + gh[j] * o * ((REAL)1 - tc * tc);                                         \
        da[j] = dc * g * (i * ((REAL)1 - i));                                                      \
        da[H + j] = dc * c_prev[j] * (f * ((REAL)1 - f));                                          \
        da[2 * H + j] = dc * i * ((REAL)1 - g * g);                                                \
        da[3 * H + j] = gh[j] * tc * (o * ((REAL)1 - o));                                          \
        gc[j] = scale != 0 ? scale * (dc * f) : (REAL)0;                                           \
    }                                                                                              \
}                                                                                                  \
/* over `rows` rows: gh, gc, c_prev, c (rows, H), gates and da (rows, 4H) */                       \
CYRNN_INLINE void cyrnn_lstm_backward_body_##T(const REAL* gh, REAL* gc, const REAL* gates,        \
                                               const REAL* c_prev, const REAL* c, REAL* da,        \
                                               REAL scale, long rows, long H)                      \
{                                                                                                  \
    long r;                                                                                        \
    for (r = 0; r < rows; r++)                                                                     \
        cyrnn_lstm_backward_row_##T(gh + r * H, gc + r * H, gates + r * 4 * H, c_prev + r * H,     \
                                    c + r * H, da + r * 4 * H, scale, H);                          \
}                                                                                                  \
/* GRU forward, one row: from xw and R = h_prev Whh^T (3 blocks of H), bhn and h_prev: the         \
 * gates [r z n], hn = R_n + bhn and h */                                                          \
CYRNN_INLINE void cyrnn_gru_forward_row_##T(const REAL* CYRNN_RESTRICT xw,                         \
                                            const REAL* CYRNN_RESTRICT R,                          \
                                            const REAL* CYRNN_RESTRICT bhn,                        \
                                            const REAL* CYRNN_RESTRICT h_prev,                     \
                                            REAL* CYRNN_RESTRICT gates, REAL* CYRNN_RESTRICT hn,   \
                                            REAL* CYRNN_RESTRICT h, long H)                        \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < H; j++) {                                                                      \
        REAL r = CYRNN_SIGMOID(REAL, TANH, xw[j] + R[j]);                                          \
        REAL z = CYRNN_SIGMOID(REAL, TANH, xw[H + j] + R[H + j]);                                  \
        REAL hnj = R[2 * H + j] + bhn[j];                                                          \
        REAL n = TANH(xw[2 * H + j] + r * hnj);                                                    \
        gates[j] = r;                                                                              \
        gates[H + j] = z;                                                                          \
        gates[2 * H + j] = n;                                                                      \
        hn[j] = hnj;                                                                               \
        h[j] = ((REAL)1 - z) * n + z * h_prev[j];                                                  \
    }                                                                                              \
}                                                                                                  \
/* over `rows` rows: xw, R, gates (rows, 3H), h_prev, hn, h (rows, H) */                           \
CYRNN_INLINE void cyrnn_gru_forward_body_##T(const REAL* xw, const REAL* R, const REAL* bhn,       \
                                             const REAL* h_prev, REAL* gates, REAL* hn,            \
                                             REAL* h, long rows, long H)                           \
{                                                                                                  \
    long r;                                                                                        \
    for (r = 0; r < rows; r++)                                                                     \
        cyrnn_gru_forward_row_##T(xw + r * 3 * H, R + r * 3 * H, bhn, h_prev + r * H,              \
                                  gates + r * 3 * H, hn + r * H, h + r * H, H);                    \
}                                                                                                  \
/* GRU backward, one row: from g = dL/dh_t, the gates, hn and h_prev: dxw and dR (3 blocks of      \
 * H), and gz = scale * g * z, the part of dL/dh_{t-1} that bypasses Whh */                        \
CYRNN_INLINE void cyrnn_gru_backward_row_##T(const REAL* CYRNN_RESTRICT g,                         \
                                             const REAL* CYRNN_RESTRICT gates,                     \
                                             const REAL* CYRNN_RESTRICT hn,                        \
                                             const REAL* CYRNN_RESTRICT h_prev,                    \
                                             REAL* CYRNN_RESTRICT dxw, REAL* CYRNN_RESTRICT dR,    \
                                             REAL* CYRNN_RESTRICT gz, REAL scale, long H)          \
{                                                                                                  \
    long j;                                                                                        \
    for (j = 0; j < H; j++) {                                                                      \
        REAL r = gates[j], z = gates[H + j], n = gates[2 * H + j];                                 \
        REAL dan = g[j] * ((REAL)1 - z) * ((REAL)1 - n * n);                                       \
        REAL dar = dan * hn[j] * (r * ((REAL)1 - r));                                              \
        REAL daz = g[j] * (h_prev[j] - n) * (z * ((REAL)1 - z));                                   \
        dxw[j] = dar;                                                                              \
        dxw[H + j] = daz;                                                                          \
        dxw[2 * H + j] = dan;                                                                      \
        dR[j] = dar;                                                                               \
        dR[H + j] = daz;                                                                           \
        dR[2 * H + j] = dan * r;                                                                   \
        gz[j] = scale != 0 ? scale * (g[j] * z) : (REAL)0;                                         \
    }                                                                                              \
}                                                                                                  \
/* over `rows` rows: g, hn, h_prev, gz (rows, H), gates, dxw, dR (rows, 3H) */                     \
CYRNN_INLINE void cyrnn_gru_backward_body_##T(const REAL* g, const REAL* gates, const REAL* hn,    \
                                              const REAL* h_prev, REAL* dxw, REAL* dR,             \
                                              REAL* gz, REAL scale, long rows, long H)             \
{                                                                                                  \
    long r;                                                                                        \
    for (r = 0; r < rows; r++)                                                                     \
        cyrnn_gru_backward_row_##T(g + r * H, gates + r * 3 * H, hn + r * H, h_prev + r * H,       \
                                   dxw + r * 3 * H, dR + r * 3 * H, gz + r * H, scale, H);         \
}

CYRNN_GATED_BODIES(float, f32, cyrnn_tanh_f32)
CYRNN_GATED_BODIES(double, f64, tanh)

/* each float32 epilogue in its three builds and its dispatch; float64 calls its body (also
 * used by _recurrence.h, which includes this file) */
#ifdef CYRNN_ELEMENTWISE_DISPATCH
#define CYRNN_SIMD_DISPATCH(NAME, PARAMS, ARGS)                                                \
CYRNN_AVX512 void NAME##_avx512 PARAMS { NAME##_body_f32 ARGS; }                                \
CYRNN_AVX2 void NAME##_avx2 PARAMS { NAME##_body_f32 ARGS; }                                    \
static void NAME##_base PARAMS { NAME##_body_f32 ARGS; }                                        \
static inline void NAME##_f32 PARAMS                                                            \
{                                                                                               \
    if (cyrnn_cpu_build() >= 2)                                                                 \
        NAME##_avx512 ARGS;                                                                     \
    else if (cyrnn_cpu_build() >= 1)                                                            \
        NAME##_avx2 ARGS;                                                                       \
    else                                                                                        \
        NAME##_base ARGS;                                                                       \
}
#else
#define CYRNN_SIMD_DISPATCH(NAME, PARAMS, ARGS)                                                \
static inline void NAME##_f32 PARAMS { NAME##_body_f32 ARGS; }
#endif

CYRNN_SIMD_DISPATCH(cyrnn_lstm_forward,
                     (float* a, const float* c_prev, float* c, float* h, long rows, long H),
                     (a, c_prev, c, h, rows, H))
CYRNN_SIMD_DISPATCH(cyrnn_lstm_backward,
                     (const float* gh, float* gc, const float* gates, const float* c_prev,
                      const float* c, float* da, float scale, long rows, long H),
                     (gh, gc, gates, c_prev, c, da, scale, rows, H))
CYRNN_SIMD_DISPATCH(cyrnn_gru_forward,
                     (const float* xw, const float* R, const float* bhn, const float* h_prev,
                      float* gates, float* hn, float* h, long rows, long H),
                     (xw, R, bhn, h_prev, gates, hn, h, rows, H))
CYRNN_SIMD_DISPATCH(cyrnn_gru_backward,
                     (const float* g, const float* gates, const float* hn, const float* h_prev,
                      float* dxw, float* dR, float* gz, float scale, long rows, long H),
                     (g, gates, hn, h_prev, dxw, dR, gz, scale, rows, H))

#define cyrnn_lstm_forward_f64 cyrnn_lstm_forward_body_f64
#define cyrnn_lstm_backward_f64 cyrnn_lstm_backward_body_f64
#define cyrnn_gru_forward_f64 cyrnn_gru_forward_body_f64
#define cyrnn_gru_backward_f64 cyrnn_gru_backward_body_f64

#undef CYRNN_GATED_BODIES

#endif
