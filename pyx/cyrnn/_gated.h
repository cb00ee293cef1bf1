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

#define CYRNN_SIGMOID(REAL, TANH, x) ((REAL)0.5 + (REAL)0.5 * TANH((REAL)0.5 * (x)))

#define CYRNN_GATED_BODIES(REAL, T, TANH)                                                       \
/* LSTM forward: a (rows, 4H) pre-activations [i f g o], replaced by the gates after          \
 * activation; c = f c_prev + i g, h = o tanh(c) (rows, H) */                                  \
CYRNN_INLINE void cyrnn_lstm_forward_body_##T(REAL* a, const REAL* c_prev, REAL* c, REAL* h,   \
                                              long rows, long H)                               \
{                                                                                              \
    long r, j;                                                                                 \
    for (r = 0; r < rows; r++) {                                                               \
        REAL* ai = a + r * 4 * H;                                                              \
        REAL* af = ai + H;                                                                     \
        REAL* ag = ai + 2 * H;                                                                 \
        REAL* ao = ai + 3 * H;                                                                 \
        const REAL* cp = c_prev + r * H;                                                       \
        REAL* cr = c + r * H;                                                                  \
        REAL* hr = h + r * H;                                                                  \
        for (j = 0; j < H; j++) {                                                              \
            REAL i = CYRNN_SIGMOID(REAL, TANH, ai[j]);                                         \
            REAL f = CYRNN_SIGMOID(REAL, TANH, af[j]);                                         \
            REAL g = TANH(ag[j]);                                                              \
            REAL o = CYRNN_SIGMOID(REAL, TANH, ao[j]);                                         \
            REAL cc = f * cp[j] + i * g;                                                       \
            ai[j] = i;                                                                         \
            af[j] = f;                                                                         \
            ag[j] = g;                                                                         \
            ao[j] = o;                                                                         \
            cr[j] = cc;                                                                        \
            hr[j] = o * TANH(cc);                                                              \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
/* LSTM backward: from gh = dL/dh_t and gc = dL/dc_t (rows, H), the gates (rows, 4H) and the   \
 * cell states before and after the step: da (rows, 4H), and gc <- scale * dc * f in place    \
 * (the gradient that crosses to c_{t-1}) */                                                   \
CYRNN_INLINE void cyrnn_lstm_backward_body_##T(const REAL* gh, REAL* gc, const REAL* gates,    \
                                               const REAL* c_prev, const REAL* c, REAL* da,    \
                                               REAL scale, long rows, long H)                  \
{                                                                                              \
    long r, j;                                                                                 \
    for (r = 0; r < rows; r++) {                                                               \
        const REAL* gi = gates + r * 4 * H;                                                    \
        const REAL* ghr = gh + r * H;                                                          \
        const REAL* cp = c_prev + r * H;                                                       \
        const REAL* cr = c + r * H;                                                            \
        REAL* gcr = gc + r * H;                                                                \
        REAL* di = da + r * 4 * H;                                                             \
        for (j = 0; j < H; j++) {                                                              \
            REAL i = gi[j], f = gi[H + j], g = gi[2 * H + j], o = gi[3 * H + j];               \
            REAL tc = TANH(cr[j]);                                                             \
            REAL dc = gcr[j] + ghr[j] * o * ((REAL)1 - tc * tc);                               \
            di[j] = dc * g * (i * ((REAL)1 - i));                                              \
            di[H + j] = dc * cp[j] * (f * ((REAL)1 - f));                                      \
            di[2 * H + j] = dc * i * ((REAL)1 - g * g);                                        \
            di[3 * H + j] = ghr[j] * tc * (o * ((REAL)1 - o));                                 \
            gcr[j] = scale != 0 ? scale * (dc * f) : (REAL)0;                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
/* GRU forward: from xw (rows, 3H), R = h_prev Whh^T (rows, 3H), bhn (H,) and h_prev: the      \
 * gates [r z n] (rows, 3H), hn = R_n + bhn and h (rows, H) */                                 \
CYRNN_INLINE void cyrnn_gru_forward_body_##T(const REAL* xw, const REAL* R, const REAL* bhn,   \
                                             const REAL* h_prev, REAL* gates, REAL* hn,        \
                                             REAL* h, long rows, long H)                       \
{                                                                                              \
    long r, j;                                                                                 \
    for (r = 0; r < rows; r++) {                                                               \
        const REAL* x = xw + r * 3 * H;                                                        \
        const REAL* Rr = R + r * 3 * H;                                                        \
        const REAL* hp = h_prev + r * H;                                                       \
        REAL* gr = gates + r * 3 * H;                                                          \
        REAL* hnr = hn + r * H;                                                                \
        REAL* hr = h + r * H;                                                                  \
        for (j = 0; j < H; j++) {                                                              \
            REAL rg = CYRNN_SIGMOID(REAL, TANH, x[j] + Rr[j]);                                 \
            REAL z = CYRNN_SIGMOID(REAL, TANH, x[H + j] + Rr[H + j]);                          \
            REAL hnj = Rr[2 * H + j] + bhn[j];                                                 \
            REAL n = TANH(x[2 * H + j] + rg * hnj);                                            \
            gr[j] = rg;                                                                        \
            gr[H + j] = z;                                                                     \
            gr[2 * H + j] = n;                                                                 \
            hnr[j] = hnj;                                                                      \
            hr[j] = ((REAL)1 - z) * n + z * hp[j];                                             \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
/* GRU backward: from g = dL/dh_t (rows, H), the gates (rows, 3H), hn and h_prev: dxw and dR   \
 * (rows, 3H), and gz = scale * g * z (rows, H), the part of dL/dh_{t-1} that bypasses Whh */  \
CYRNN_INLINE void cyrnn_gru_backward_body_##T(const REAL* g, const REAL* gates, const REAL* hn, \
                                              const REAL* h_prev, REAL* dxw, REAL* dR,         \
                                              REAL* gz, REAL scale, long rows, long H)         \
{                                                                                              \
    long r, j;                                                                                 \
    for (r = 0; r < rows; r++) {                                                               \
        const REAL* gr = g + r * H;                                                            \
        const REAL* gt = gates + r * 3 * H;                                                    \
        const REAL* hnr = hn + r * H;                                                          \
        const REAL* hp = h_prev + r * H;                                                       \
        REAL* dx = dxw + r * 3 * H;                                                            \
        REAL* dr = dR + r * 3 * H;                                                             \
        REAL* gzr = gz + r * H;                                                                \
        for (j = 0; j < H; j++) {                                                              \
            REAL rg = gt[j], z = gt[H + j], n = gt[2 * H + j];                                 \
            REAL dan = gr[j] * ((REAL)1 - z) * ((REAL)1 - n * n);                              \
            REAL dar = dan * hnr[j] * (rg * ((REAL)1 - rg));                                   \
            REAL daz = gr[j] * (hp[j] - n) * (z * ((REAL)1 - z));                              \
            dx[j] = dar;                                                                       \
            dx[H + j] = daz;                                                                   \
            dx[2 * H + j] = dan;                                                               \
            dr[j] = dar;                                                                       \
            dr[H + j] = daz;                                                                   \
            dr[2 * H + j] = dan * rg;                                                          \
            gzr[j] = scale != 0 ? scale * (gr[j] * z) : (REAL)0;                               \
        }                                                                                      \
    }                                                                                          \
}

CYRNN_GATED_BODIES(float, f32, cyrnn_tanh_f32)
CYRNN_GATED_BODIES(double, f64, tanh)

/* each float32 epilogue in its three builds and its dispatch; float64 calls its body */
#ifdef CYRNN_ELEMENTWISE_DISPATCH
#define CYRNN_GATED_DISPATCH(NAME, PARAMS, ARGS)                                                \
CYRNN_AVX512 void NAME##_avx512 PARAMS { NAME##_body_f32 ARGS; }                               \
CYRNN_AVX2 void NAME##_avx2 PARAMS { NAME##_body_f32 ARGS; }                                   \
static void NAME##_base PARAMS { NAME##_body_f32 ARGS; }                                       \
static inline void NAME##_f32 PARAMS                                                           \
{                                                                                              \
    if (cyrnn_cpu_build() >= 2)                                                                \
        NAME##_avx512 ARGS;                                                                    \
    else if (cyrnn_cpu_build() >= 1)                                                           \
        NAME##_avx2 ARGS;                                                                      \
    else                                                                                       \
        NAME##_base ARGS;                                                                      \
}
#else
#define CYRNN_GATED_DISPATCH(NAME, PARAMS, ARGS)                                                \
static inline void NAME##_f32 PARAMS { NAME##_body_f32 ARGS; }
#endif

CYRNN_GATED_DISPATCH(cyrnn_lstm_forward,
                     (float* a, const float* c_prev, float* c, float* h, long rows, long H),
                     (a, c_prev, c, h, rows, H))
CYRNN_GATED_DISPATCH(cyrnn_lstm_backward,
                     (const float* gh, float* gc, const float* gates, const float* c_prev,
                      const float* c, float* da, float scale, long rows, long H),
                     (gh, gc, gates, c_prev, c, da, scale, rows, H))
CYRNN_GATED_DISPATCH(cyrnn_gru_forward,
                     (const float* xw, const float* R, const float* bhn, const float* h_prev,
                      float* gates, float* hn, float* h, long rows, long H),
                     (xw, R, bhn, h_prev, gates, hn, h, rows, H))
CYRNN_GATED_DISPATCH(cyrnn_gru_backward,
                     (const float* g, const float* gates, const float* hn, const float* h_prev,
                      float* dxw, float* dR, float* gz, float scale, long rows, long H),
                     (g, gates, hn, h_prev, dxw, dR, gz, scale, rows, H))

#define cyrnn_lstm_forward_f64 cyrnn_lstm_forward_body_f64
#define cyrnn_lstm_backward_f64 cyrnn_lstm_backward_body_f64
#define cyrnn_gru_forward_f64 cyrnn_gru_forward_body_f64
#define cyrnn_gru_backward_f64 cyrnn_gru_backward_body_f64

#undef CYRNN_GATED_BODIES
#undef CYRNN_GATED_DISPATCH

#endif
