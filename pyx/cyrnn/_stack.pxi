# The fused training step and forward pass of a stack of Elman, LSTM or GRU layers, and the
# threads that run them on shards of the batch. Included by _rnn.pyx: one compilation unit with the recurrences
# (forward, backward_in_place, backward_window), which the C compiler inlines into the step. A
# module of its own would reach them through a .pxd, that is through function pointers across
# extension modules, without inlining.
#
# Per call, Python fills one StepArgs per shard (sizes and void* pointers, with one LayerArgs
# per layer-direction j = l*D + d); run_step chooses the dtype once and runs stack_step or
# stack_outputs, fused over float/double, which read every pointer from the structs.
#
# The gated cells (LSTM, GRU) run in the same pipeline: per step one recurrent GEMM and the cell's
# fused epilogue from _gated.h (the same C functions the layer kernels of _gated.pyx call), per
# layer-direction the backward epilogue and one GEMM per step, and the weight gradients as
# whole-sequence GEMMs. StepArgs.cell says which cell every layer runs (CELL_ELMAN, CELL_LSTM,
# CELL_GRU); a plain Elman layer keeps its own path (forward, backward_in_place, by blocks).
#
# Layer normalization (norm="layer", cyrnn.norms: LayerArgs.gx not NULL), recurrent dropout and
# zoneout (LayerArgs.rmask, zh, zc; weight drop is Whh's mask, applied by the caller) run in the
# same pipeline, in the epilogues (regime_forward, regime_backward; StepArgs.regime): the input
# term N_x(x Wxh^T) gx + bh after the whole-sequence projection, per step the masked h_prev into
# the recurrent GEMM, N_h(R_t) gh between it and the cell's epilogue (the LSTM's h = o
# tanh(N_c(~c_t) gc + bc), ~c_t its cell state before zoneout), zoneout after it, and the gains'
# gradients beside the weights'. Every cell, Elman too, then runs the gated cells' buffers.

cdef enum:
    CELL_ELMAN = 0
    CELL_LSTM = 1
    CELL_GRU = 2


include "_cells.pxi"  # the gated cells' epilogues (_gated.h)
include "_norms.pxi"  # layer normalization and the LSTM's normalized output (_recurrence.h)


# ---------------------------------------------------------------------------------------------
# a whole training step of a stack of layers in one call: projections, recurrences (both
# directions), output layer, loss, BPTT through every layer, gradients
# ---------------------------------------------------------------------------------------------

cdef void shift_by_row_max(floating* z, Py_ssize_t N, Py_ssize_t O) noexcept nogil:
    """Each row of z (N, O) minus its maximum, in place (the softmax's shift: exps <= 1)."""
    cdef Py_ssize_t n, o
    cdef floating m
    cdef floating* row
    for n in range(N):
        row = z + n * O
        m = row[0]
        for o in range(1, O):
            m = row[o] if row[o] > m else m
        for o in range(O):
            row[o] = row[o] - m


cdef double softmax_cross_entropy(floating* z, const Py_ssize_t* target, Py_ssize_t N,
                                  Py_ssize_t O, floating scale) noexcept nogil:
    """Rows of logits z (N, O) -> scale * (softmax(z) - onehot(target)) in place; returns the
    summed loss sum_n log(sum_o exp z_no) - z_n,target (accumulated in double)."""
    cdef Py_ssize_t n, o, first = 0, last, rows = max(1, EXP_BLOCK // O)
    cdef floating total_exp, inv
    cdef floating* row
    cdef double loss = 0
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        shift_by_row_max(z + first * O, last - first, O)
        for n in range(first, last):
            loss -= z[n * O + target[n]]
        exp_inplace(z + first * O, (last - first) * O)
        for n in range(first, last):
            row = z + n * O
            total_exp = 0
            for o in range(O):
                total_exp += row[o]
            loss += log(total_exp)
            inv = scale / total_exp
            for o in range(O):
                row[o] *= inv
            row[target[n]] -= scale
        first = last
    return loss


cdef double squared_error(floating* z, const floating* target, Py_ssize_t n,
                          floating scale) noexcept nogil:
    """z (n,) -> 2 scale (z - target) in place; returns sum (z - target)^2. As in the NumPy twin,
    the difference is taken in the dtype of z and squared and summed in double: in float32 a
    difference above 1.8e19 would square to inf."""
    cdef Py_ssize_t i
    cdef double loss = 0, d
    cdef floating diff
    for i in range(n):
        diff = z[i] - target[i]
        d = diff
        loss += d * d
        z[i] = 2 * scale * diff
    return loss


cdef void softmax_rows(floating* z, Py_ssize_t N, Py_ssize_t O) noexcept nogil:
    """Each row of z (N, O) replaced by its softmax (shifted by the row maximum)."""
    cdef Py_ssize_t n, o, first = 0, last, rows = max(1, EXP_BLOCK // O)
    cdef floating total
    cdef floating* row
    while first < N:
        last = min(N, first + rows)
        # z_n - max_n z_n for a block of rows, then their exps in one call
        shift_by_row_max(z + first * O, last - first, O)
        exp_inplace(z + first * O, (last - first) * O)
        for n in range(first, last):
            row = z + n * O
            total = 0
            for o in range(O):
                total += row[o]
            total = 1 / total
            for o in range(O):
                row[o] *= total
        first = last




# ---------------------------------------------------------------------------------------------
# one shard's step or forward pass, on a struct of sizes and pointers filled once per call
# ---------------------------------------------------------------------------------------------

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil,
                       void* arg)
    int pthread_join(pthread_t thread, void** result)




ctypedef struct LayerArgs:
    # one direction d of one layer l (j = l * D + d, torch's order) in one shard of the batch:
    # float arrays as void*, of the dtype StepArgs.single says; NULL where not used
    void* Wxh       # (H, n_in)
    void* WxhT      # (n_in, H), a contiguous copy of Wxh^T (see transposed_weights)
    void* Whh       # (H, H)
    void* WhhT      # (H, H), a contiguous copy of Whh^T
    void* WhhT_panels  # the gated cells' Whh^T (H, G) and Whh (G, H) packed for gemm_panels
    void* Whh_panels   # (see transposed_weights), or NULL; WhhT is then NULL
    void* bh        # (H,)
    void* h0        # (B, H)
    # states, hs[t + 1] the state at step t (both directions): forward, (T + 1, B, H) and
    # hs[0] = h0; reverse (steps T-1 down to 0), (T + 2, B, H) and hs[T + 1] = h0
    void* hs
    void* x         # the layer's inputs (T*B, n_in); NULL for token ids
    void* dx        # dL/dx (T*B, n_in) goes here (direction 1 adds to direction 0's), or NULL
    void* dWxh      # (H, n_in)
    void* dWxhT     # (n_in, H): the token ids' scatter-add, row-wise, or NULL
    void* dWhh      # (H, H)
    void* dbh       # (H,)
    void* dh0       # (B, H)
    # the gated cells' (NULL for Elman, and where the cell has none): Wxh, Whh, bh and their
    # gradients are then (G, n_in), (G, H), (G,) with G = 4H (LSTM) or 3H (GRU)
    void* bhn       # GRU (H,): the n-part of bias_hh, inside the reset product
    void* c0        # LSTM (B, H)
    void* cs        # LSTM cell states, laid out as hs
    void* gates     # (T, B, G) the gates after activation (LSTM: the projection first)
    void* xw        # GRU (T, B, G): the projection
    void* hn        # GRU (T, B, H): R_n + bhn, kept for the backward pass
    # (a forward pass that projects step by step keeps only one step of gates and hn, and a GRU
    # projecting step by step only one step of xw: see gated_forward)
    void* dbhn      # GRU (H,)
    void* dc0       # LSTM (B, H)
    # layer normalization (NULL without): the gains gx, gh (G,) and, LSTM, gc, bc (H,); what the
    # backward pass reads: xhat (T*B, G), xrstd (T*B,) of the input term, rhat (T, B, G),
    # rstd_h (T*B,) of the recurrent one, LSTM chat (T, B, H), rstd_c (T*B,) of the cell state;
    # the gains' gradients dgx, dgh (G,), dgc, dbc (H,)
    void* gx
    void* gh
    void* gc
    void* bc
    void* xhat
    void* xrstd
    void* rhat
    void* rstd_h
    void* chat
    void* rstd_c
    void* dgx
    void* dgh
    void* dgc
    void* dbc
    # recurrent dropout and zoneout (NULL without): rmask (B, H), zh, zc (T, B, H) by processing
    # order; hin (T, B, H) the masked h_prev of each step (rmask); ctil (T, B, H) the LSTM's c
    # before zoneout (zc); Elman under zoneout keeps ~h_t in `gates` (T, B, H)
    void* rmask
    void* zh
    void* zc
    void* hin
    void* ctil
    Py_ssize_t n_in  # I for layer 0, D*H above it
    bint reverse


ctypedef struct StepArgs:
    # one shard's training step (or, with `forward_only`, forward pass: z holds the outputs y,
    # `output` their function: 0 linear, 1 softmax, 2 sigmoid), filled once per call
    bint single     # float32, else float64
    bint forward_only
    int output
    const Py_ssize_t* tokens       # (T*B,) token ids, or NULL for dense inputs (layers[0].x)
    const Py_ssize_t* target_ids   # (T*B,) class ids (cross-entropy), or NULL
    const Py_ssize_t* windows      # (T,) look-back windows, or NULL
    void* target_values            # (T*B, O) for the squared error, or NULL
    void* carry                    # (T,) carry scales, or NULL
    void* masks     # (L-1, T*B, D*H): layer l + 1's inputs are layer l's states times masks[l]
    void* top       # (T*B, D*H) the output layer's inputs: the last layer's states, joined
    void* Why       # (O, D*H)
    void* WhyT      # (D*H, O) or NULL
    void* by        # (O,)
    void* z         # (T*B, O) logits, then dL/dz
    void* da        # (block, B, H): one BPTT block of one layer-direction
    void* work      # (2, B, H)
    void* depth     # (T, B, H) look-back windows' buffers, or NULL
    void* depth_next
    double* squares  # (T,) sum over the layers of ||dL/dh_t||^2
    void* grad_norms  # (T,)
    void* dWhy      # (O, D*H)
    void* dby       # (O,)
    LayerArgs* layers  # L * D of them
    # the gated cells' (and a regime's) workspaces: R (B, G) the step's recurrent product (GRU,
    # a regime); dout (T*B, H) one layer-direction's dL/dh_out; dP (T*B, G) its
    # pre-activations' gradient; dR (T*B, G) its recurrent product's (GRU, layer norm; else dP);
    # work (3, B, H) the gradients of the states (a regime's: 8 blocks, see regime_backward)
    void* R
    void* dout
    void* dP
    void* dR
    void* gradT     # (NARROW_GRADIENT * G) the transpose of a narrow weight gradient
    Py_ssize_t L, D, longest, T, B, H, O, block  # (no field I: complex.h defines a macro I)
    Py_ssize_t G    # gate width: H (Elman), 4H (LSTM), 3H (GRU)
    int cell        # CELL_ELMAN, CELL_LSTM or CELL_GRU
    bint regime     # normalized or regularized layers (regime_forward, regime_backward)
    int code
    double slope, scale, loss



cdef extern from *:
    """
    /* the next shard to run: a counter the workers share (each shard runs once, on whichever
       worker is free first; what a shard computes does not depend on which one) */
    static inline Py_ssize_t cyrnn_next_shard(Py_ssize_t* counter)
    {
        return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    }
    """
    Py_ssize_t next_shard "cyrnn_next_shard"(Py_ssize_t* counter) nogil


ctypedef struct Worker:
    # one thread's view of the work: the shards of `steps`, taken in turn from `next`
    StepArgs* steps
    Py_ssize_t* next
    Py_ssize_t count


cdef void output_function(floating* y, Py_ssize_t N, Py_ssize_t O, int output) noexcept nogil:
    """y (N, O) = g(z) in place of the logits z: 0 linear (unchanged), 1 softmax, 2 sigmoid."""
    if output == 1:
        softmax_rows(y, N, O)
    elif output == 2:
        activate(y, N * O, SIGMOID, 0)



cdef void layer_forward(const StepArgs* a, const LayerArgs* p, const Py_ssize_t* tokens,
                        floating* hs) noexcept nogil:
    """One layer-direction's states: projection of its inputs (token ids or dense) straight
    into hs[1:] (the gated cells: into their gates (LSTM) or xw (GRU), G values a row; or step
    by step inside the recurrence, see projects_per_step), then the recurrence in place.
    ``WxhT`` and ``WhhT``, where not NULL, are contiguous copies of the transposed weights: rows
    of WxhT gather without striding, and products with untransposed operands run faster (on
    cyrnn's own kernel, which needs them; OpenBLAS reads a transposed operand more slowly)."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, TB = T * B, BH = B * H
    cdef bint norm = p.gx != NULL
    # (decided once: the rule reads the BLAS thread count, which another thread may change)
    cdef bint per_step = projects_per_step(a, p, tokens)
    cdef floating* proj = hs + BH
    if a.cell == CELL_LSTM:
        proj = <floating*> p.gates
    elif a.cell == CELL_GRU:
        proj = <floating*> p.xw
    # 1. input projection, straight into its buffer: proj (T*B, G) = x Wxh^T + bh (normalized
    # layers: + bh after the normalization)
    if not per_step:
        project(a, p, tokens, 0, TB, proj, False)
    if norm:
        # proj <- N_x(proj) gx + bh, each row over its G values (xhat, xrstd kept)
        layer_norm(proj, <floating*> p.xhat, <floating*> p.xrstd, <const floating*> p.gx, TB, G)
        add_to_rows(proj, <const floating*> p.bh, TB, G)
    # 2. the recurrence, in place: hs[t + 1] = f(hs[t + 1] + h_prev Whh^T), in its direction
    if a.regime:
        regime_forward(a, p, hs)
    elif a.cell != CELL_ELMAN:
        gated_forward(a, p, tokens, per_step, hs)
    elif p.WhhT != NULL:
        forward(hs + BH, <const floating*> p.h0, <const floating*> p.WhhT, True, hs, NULL, T, B,
                H, a.code, <floating> a.slope, p.reverse)
    else:
        forward(hs + BH, <const floating*> p.h0, <const floating*> p.Whh, False, hs, NULL, T, B,
                H, a.code, <floating> a.slope, p.reverse)


cdef bint projects_per_step(const StepArgs* a, const LayerArgs* p,
                            const Py_ssize_t* tokens) noexcept nogil:
    """Whether a gated layer-direction (no regime) projects its inputs step by step, just
    before each step's recurrent product adds to them, rather than over the whole sequence
    first: the step's rows of the projection are then still in cache when the product and the
    epilogue read them, instead of a (T, B, G) array making a round trip through memory. Where
    the result is the same to the bit: token ids gathered from Wxh^T; dense inputs where the
    whole-sequence product would run on cyrnn's own kernel, whose blocks of rows sum alike
    however many rows there are (but a single row, which it sums differently: hence a batch of
    two or more), with a Wxh^T small enough to stay in cache beside Whh^T."""
    if a.regime or a.cell == CELL_ELMAN or p.WxhT == NULL:
        return False
    if tokens != NULL:
        return True
    return (a.B >= 2 and p.n_in * a.G * (4 if a.single else 8) <= STEP_PROJECTION_MAX_BYTES
            and on_own_kernel(a.T * a.B, a.G, p.n_in))


cdef void project(const StepArgs* a, const LayerArgs* p, const Py_ssize_t* tokens,
                  Py_ssize_t start, Py_ssize_t rows, floating* proj, bint own) noexcept nogil:
    """proj (rows, G) = x Wxh^T (+ bh, but for normalized layers) for rows start .. start + rows
    - 1 of the layer's inputs (T*B rows: token ids or dense), proj pointing at row `start` of the
    projection. With `own`, a dense product runs on cyrnn's own kernel whatever its size (the
    steps of a projection that projects_per_step splits: the bits of the whole product)."""
    cdef Py_ssize_t G = a.G, I = p.n_in, n, j
    cdef const floating* Wxh = <const floating*> p.Wxh
    cdef const floating* WxhT = <const floating*> p.WxhT
    cdef const floating* bh = <const floating*> p.bh
    cdef const floating* x = <const floating*> p.x
    cdef const floating* src
    cdef floating* row
    cdef bint norm = p.gx != NULL
    if tokens != NULL and WxhT != NULL:
        for n in range(rows):
            # a row gather: row tokens[n] of Wxh^T (I, G)
            row = proj + n * G
            src = WxhT + tokens[start + n] * G
            if norm:
                memcpy(row, src, G * sizeof(floating))
            else:
                for j in range(G):
                    row[j] = src[j] + bh[j]
        return
    if tokens != NULL:
        for n in range(rows):
            # the same from Wxh itself: column tokens[n] of Wxh (G, I)
            row = proj + n * G
            for j in range(G):
                row[j] = Wxh[j * I + tokens[start + n]]
            if not norm:
                add(row, bh, G)
        return
    # (rows, G) = x (rows, I) Wxh^T (I, G)
    if own:
        if floating is float:
            sgemm_small(False, rows, G, I, 1, x + start * I, I, WxhT, G, 0, proj, G)
        else:
            dgemm_small(False, rows, G, I, 1, x + start * I, I, WxhT, G, 0, proj, G)
    elif WxhT != NULL:
        gemm(False, False, <int> rows, <int> G, <int> I, 1, x + start * I, <int> I, WxhT,
             <int> G, 0, proj, <int> G)
    else:
        gemm(False, True, <int> rows, <int> G, <int> I, 1, x + start * I, <int> I, Wxh,
             <int> I, 0, proj, <int> G)
    if not norm:
        add_to_rows(proj, bh, rows, G)


cdef void gated_forward(const StepArgs* a, const LayerArgs* p, const Py_ssize_t* tokens,
                        bint per_step, floating* hs) noexcept nogil:
    """A gated layer-direction's recurrence over its projection (made here, step by step, with
    `per_step`: see projects_per_step): per step one GEMM, R_t = h_prev Whh^T (B, G) (LSTM:
    added into the gates, which hold the projection), then the cell's fused epilogue. States
    laid out as the Elman ones (hs[t + 1] the state after step t; the reverse direction runs
    t = T-1 .. 0 from hs[T + 1] = h0); LSTM's c in cs alike. A forward pass with `per_step`
    keeps no step's gates (GRU: nor hn), which only the backward pass reads: every step works
    in the first step's rows, which stay in cache; a GRU's projection, made step by step, is
    never kept."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, BH = B * H, BG = B * G, s, t
    cdef Py_ssize_t kept = 0 if a.forward_only and per_step else 1  # steps apart in the gates
    cdef bint reverse = p.reverse, lstm = a.cell == CELL_LSTM
    cdef const floating* Whh = <const floating*> p.Whh
    cdef const floating* WhhT = <const floating*> p.WhhT
    cdef floating* cs = <floating*> p.cs
    cdef floating* gates = <floating*> p.gates
    cdef floating* xw = <floating*> p.xw
    cdef floating* R = <floating*> a.R
    cdef floating* h
    cdef floating* c
    cdef floating* out
    cdef const floating* h_prev
    memcpy(hs + (T + 1) * BH if reverse else hs, p.h0, BH * sizeof(floating))
    if lstm:
        memcpy(cs + (T + 1) * BH if reverse else cs, p.c0, BH * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if reverse else s
        h = hs + (t + 1) * BH
        h_prev = h + BH if reverse else h - BH
        if per_step:
            # (GRU: the projection is read only here, in this step's epilogue)
            project(a, p, tokens, t * B, B, gates + kept * t * BG if lstm else xw, True)
        # LSTM: a_t (B, 4H) = P_t + h_prev Whh^T, in place; GRU: R (B, 3H) = h_prev Whh^T
        out = gates + kept * t * BG if lstm else R
        if p.WhhT_panels != NULL:
            gemm_panels(<int> B, <int> G, <int> H, 1, h_prev, <int> H,
                        <const floating*> p.WhhT_panels, 1 if lstm else 0, out, <int> G)
        elif WhhT != NULL:
            gemm(False, False, <int> B, <int> G, <int> H, 1, h_prev, <int> H, WhhT, <int> G,
                 1 if lstm else 0, out, <int> G)
        else:
            gemm(False, True, <int> B, <int> G, <int> H, 1, h_prev, <int> H, Whh, <int> H,
                 1 if lstm else 0, out, <int> G)
        if lstm:
            c = cs + (t + 1) * BH
            lstm_cell_forward(out, c + BH if reverse else c - BH, c, h, B, H)
        else:
            gru_cell_forward(xw if per_step else xw + t * BG, R, <const floating*> p.bhn,
                             h_prev, gates + kept * t * BG, <floating*> p.hn + kept * t * BH,
                             h, B, H)


cdef void regime_forward(const StepArgs* a, const LayerArgs* p, floating* hs) noexcept nogil:
    """The recurrence of a layer-direction with layer normalization, recurrent dropout or
    zoneout (cyrnn.norms) over its projection (Elman: in hs[1:]; LSTM: in the gates; GRU: in
    xw; normalized where p.gx is set), states laid out as in gated_forward. Per step one GEMM,
    R_t = (h_prev rmask) Whh^T (B, G) into a.R (the masked h_prev kept in p.hin for dWhh);
    R_t <- N_h(R_t) gh (rhat, rstd_h kept); the cell's epilogue: Elman ~h_t = f(P_t + R_t);
    LSTM its gates from P_t + R_t, ~c_t and ~h_t = o tanh(~c_t), or o tanh(N_c(~c_t) gc + bc)
    (chat, rstd_c kept); GRU its own on P_t and R_t; then zoneout, h_t = zh h_prev + (1 - zh)
    ~h_t (LSTM's c_t likewise with zc; ~h_t kept in the gates for Elman, ~c_t in p.ctil). The
    masks zh, zc are indexed by the step's place in this direction's processing order."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, BH = B * H, BG = B * G, s, t
    cdef bint reverse = p.reverse, norm = p.gx != NULL
    cdef int cell = a.cell
    cdef const floating* Whh = <const floating*> p.Whh
    cdef const floating* WhhT = <const floating*> p.WhhT
    cdef const floating* WhhT_panels = <const floating*> p.WhhT_panels
    cdef const floating* gain_h = <const floating*> p.gh
    cdef const floating* rmask = <const floating*> p.rmask
    cdef const floating* zh = <const floating*> p.zh
    cdef const floating* zc = <const floating*> p.zc
    cdef floating* cs = <floating*> p.cs
    cdef floating* gates = <floating*> p.gates
    cdef floating* rhat = <floating*> p.rhat
    cdef floating* rstd_h = <floating*> p.rstd_h
    cdef floating* chat = <floating*> p.chat
    cdef floating* rstd_c = <floating*> p.rstd_c
    cdef floating* ctil = <floating*> p.ctil
    cdef floating* R = <floating*> a.R
    cdef floating slope = <floating> a.slope
    cdef floating* h
    cdef floating* c = NULL
    cdef floating* c_new
    cdef floating* gates_t
    cdef const floating* h_prev
    cdef const floating* c_prev = NULL
    cdef const floating* hin
    memcpy(hs + (T + 1) * BH if reverse else hs, p.h0, BH * sizeof(floating))
    if cell == CELL_LSTM:
        memcpy(cs + (T + 1) * BH if reverse else cs, p.c0, BH * sizeof(floating))
    for s in range(T):
        t = T - 1 - s if reverse else s
        h = hs + (t + 1) * BH
        h_prev = h + BH if reverse else h - BH
        gates_t = gates + t * BG
        hin = h_prev
        if rmask != NULL:
            multiply(<floating*> p.hin + t * BH, h_prev, rmask, BH)
            hin = <const floating*> p.hin + t * BH
        # R (B, G) = hin Whh^T, then N_h(R) gh in place
        if WhhT_panels != NULL:
            gemm_panels(<int> B, <int> G, <int> H, 1, hin, <int> H, WhhT_panels, 0, R, <int> G)
        elif WhhT != NULL:
            gemm(False, False, <int> B, <int> G, <int> H, 1, hin, <int> H, WhhT, <int> G, 0, R,
                 <int> G)
        else:
            gemm(False, True, <int> B, <int> G, <int> H, 1, hin, <int> H, Whh, <int> H, 0, R,
                 <int> G)
        if norm:
            layer_norm(R, rhat + t * BG, rstd_h + t * B, gain_h, B, G)
        if cell == CELL_ELMAN:
            add(h, R, BH)  # h holds P_t
            activate(h, BH, a.code, slope)
            if zh != NULL:
                memcpy(gates_t, h, BH * sizeof(floating))  # ~h_t, for the backward pass
        elif cell == CELL_LSTM:
            add(gates_t, R, BG)  # the gates hold P_t
            c = cs + (t + 1) * BH
            c_prev = c + BH if reverse else c - BH
            c_new = ctil + t * BH if zc != NULL else c  # ~c_t, before zoneout
            lstm_cell_forward(gates_t, c_prev, c_new, h, B, H)
            if norm:
                layer_norm(c_new, chat + t * BH, rstd_c + t * B, NULL, B, H)  # c stays raw
                normalized_output(gates_t, chat + t * BH, <const floating*> p.gc,
                                  <const floating*> p.bc, h, B, H)
        else:
            gru_cell_forward(<const floating*> p.xw + t * BG, R, <const floating*> p.bhn, h_prev,
                             gates_t, <floating*> p.hn + t * BH, h, B, H)
        if zh != NULL or zc != NULL:
            commit(h, h_prev, gates_t, zh + s * BH if zh != NULL else NULL, c, c_prev,
                   ctil + t * BH if zc != NULL else NULL, zc + s * BH if zc != NULL else NULL,
                   NULL, t, B, H, G)


cdef void join_states(const StepArgs* a, Py_ssize_t l, floating* out,
                      const floating* mask) noexcept nogil:
    """out (T*B, D*H) = layer l's states, direction d in columns [d*H, (d+1)*H), times the
    dropout multipliers mask (T*B, D*H) unless NULL."""
    cdef Py_ssize_t H = a.H, DH = a.D * H, TB = a.T * a.B, n, d, i
    cdef const floating* states
    cdef const floating* src
    cdef const floating* m
    cdef floating* dst
    for d in range(a.D):
        states = <const floating*> a.layers[l * a.D + d].hs + a.B * H
        for n in range(TB):
            src = states + n * H
            dst = out + n * DH + d * H
            if mask == NULL:
                memcpy(dst, src, H * sizeof(floating))
            else:
                m = mask + n * DH + d * H
                for i in range(H):
                    dst[i] = src[i] * m[i]


cdef void stack_forward(const StepArgs* a, floating* z) noexcept nogil:
    """Every layer's states, bottom up, and the logits z (T*B, O)."""
    cdef Py_ssize_t L = a.L, D = a.D, TB = a.T * a.B, DH = a.D * a.H, O = a.O, l, d
    cdef const floating* masks = <const floating*> a.masks
    cdef const floating* top = <const floating*> a.top
    for l in range(L):
        for d in range(D):
            layer_forward(a, &a.layers[l * D + d], a.tokens if l == 0 else NULL,
                          <floating*> a.layers[l * D + d].hs)
        # the next layer's inputs: these states (both directions side by side), dropped out;
        # one direction without dropout reads them where they are
        if l + 1 < L and (D == 2 or masks != NULL):
            join_states(a, l, <floating*> a.layers[(l + 1) * D].x,
                        masks + l * TB * DH if masks != NULL else NULL)
        elif l + 1 == L and D == 2:
            join_states(a, l, <floating*> a.top, NULL)
    # 3. logits (T*B, O) = top (T*B, D*H) Why^T (D*H, O) + by
    if a.WhyT != NULL:
        gemm(False, False, <int> TB, <int> O, <int> DH, 1, top, <int> DH,
             <const floating*> a.WhyT, <int> O, 0, z, <int> O)
    else:
        gemm(False, True, <int> TB, <int> O, <int> DH, 1, top, <int> DH,
             <const floating*> a.Why, <int> DH, 0, z, <int> O)
    add_to_rows(z, <const floating*> a.by, TB, O)


cdef void take_columns(floating* out, const floating* src, const floating* mask, Py_ssize_t rows,
                       Py_ssize_t H, Py_ssize_t ld) noexcept nogil:
    """out (rows, H) = H columns of src (rows, ld), times the same columns of mask unless
    NULL."""
    cdef Py_ssize_t n, i
    cdef floating* o
    cdef const floating* s
    cdef const floating* m
    for n in range(rows):
        o = out + n * H
        s = src + n * ld
        if mask == NULL:
            memcpy(o, s, H * sizeof(floating))
        else:
            m = mask + n * ld
            for i in range(H):
                o[i] = s[i] * m[i]


cdef void reverse_steps(floating* a, Py_ssize_t T, Py_ssize_t BH) noexcept nogil:
    """The T blocks of BH values of a, in reverse order, in place."""
    cdef Py_ssize_t t, i
    cdef floating* p
    cdef floating* q
    cdef floating v
    for t in range(T // 2):
        p = a + t * BH
        q = a + (T - 1 - t) * BH
        for i in range(BH):
            v = p[i]
            p[i] = q[i]
            q[i] = v


cdef void layer_backward(const StepArgs* a, Py_ssize_t l, Py_ssize_t d,
                         floating* da) noexcept nogil:
    """BPTT through one layer-direction and its weight gradients, by blocks of `block` steps
    in its backward order (from its last step), so that da needs a (block*B, H) buffer rather
    than (T, B, H); dh0 carries the gradient from one block into the state before it (the next
    block's dh_last). The error reaching its states comes from the output layer (the top
    layer) or from the layer above's input gradient, times the dropout mask. Writes dL/dx
    into p.dx (direction 1 adding to direction 0's) for the layer below."""
    cdef const LayerArgs* p = &a.layers[l * a.D + d]
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, O = a.O, I = p.n_in, D = a.D
    cdef Py_ssize_t DH = D * H, BH = B * H, TB = T * B
    cdef Py_ssize_t block = T if a.longest else a.block
    cdef Py_ssize_t done = 0, start, n_steps, rows, n, j
    cdef bint reverse = p.reverse, first = True
    cdef floating slope = <floating> a.slope
    cdef floating* hs = <floating*> p.hs
    cdef const floating* Whh = <const floating*> p.Whh
    cdef const floating* Wxh = <const floating*> p.Wxh
    cdef const floating* x = <const floating*> p.x
    cdef const floating* z = <const floating*> a.z
    cdef const floating* carry = <const floating*> a.carry
    cdef const floating* carry_block
    cdef const floating* above = NULL
    cdef const floating* mask = NULL
    cdef const floating* grad_row
    cdef floating* dx = <floating*> p.dx
    cdef floating* dWxh = <floating*> p.dWxh
    cdef floating* dWxhT = <floating*> p.dWxhT
    cdef floating* dWhh = <floating*> p.dWhh
    cdef floating* dbh = <floating*> p.dbh
    cdef floating* dh0 = <floating*> p.dh0
    cdef const Py_ssize_t* tokens = a.tokens if l == 0 else NULL
    if l + 1 < a.L:
        above = <const floating*> a.layers[(l + 1) * D].dx
        if a.masks != NULL:
            mask = <const floating*> a.masks + l * TB * DH
    if tokens != NULL:
        memset(dWxhT if dWxhT != NULL else dWxh, 0, H * I * sizeof(floating))
    memset(dbh, 0, H * sizeof(floating))
    while done < T:
        n_steps = min(block, T - done)
        start = done if reverse else T - done - n_steps
        rows = n_steps * B
        if above == NULL:
            # dh_out (rows, H) = dz (rows, O) Why[:, dH:(d+1)H] (O, H), into da: BPTT turns it
            # into da in place
            gemm(False, False, <int> rows, <int> H, <int> O, 1, z + start * B * O, <int> O,
                 <const floating*> a.Why + d * H, <int> DH, 0, da, <int> H)
        else:
            # dh_out = this direction's columns of the layer above's dL/dx, times the mask
            take_columns(da, above + start * B * DH + d * H,
                         mask + start * B * DH + d * H if mask != NULL else NULL, rows, H, DH)
        # da_t = (dh_out_t + c da Whh from the step after it) * f'(h_t), or by look-back windows
        if a.longest == 0:
            carry_block = NULL
            if carry != NULL:
                # indexed by the step's place in this direction's order
                carry_block = carry + (T - 1 - start) if reverse else carry + start
            backward_in_place(da, hs + start * BH, Whh, NULL if first else dh0, carry_block,
                              a.squares + start, dh0, n_steps, B, H, a.code, slope, reverse)
        else:
            # one block of all T steps; the reverse direction runs it in its own order
            memset(dh0, 0, BH * sizeof(floating))
            if reverse:
                reverse_steps(da, T, BH)
                reverse_steps(hs + BH, T + 1, BH)
            backward_window(da, hs + BH if reverse else hs, Whh, NULL, a.windows, da, dh0,
                            <floating*> a.depth, <floating*> a.depth_next, <floating*> a.work,
                            a.longest, T, B, H, a.code, slope)
            if reverse:
                reverse_steps(da, T, BH)
                reverse_steps(hs + BH, T + 1, BH)
        # dWhh (H, H) (+)= da^T (H, rows) h_prev (rows, H), the states the steps started from;
        # dbh += column sums of da
        gemm(True, False, <int> H, <int> H, <int> rows, 1, da, <int> H,
             hs + (start + 2 if reverse else start) * BH, <int> H, 0 if first else 1, dWhh,
             <int> H)
        add_row_sums(dbh, da, rows, H)
        # dWxh: scatter-add of da's rows into the token columns, or (+)= da^T x
        if tokens != NULL and dWxhT != NULL:
            for n in range(rows):
                add(dWxhT + tokens[start * B + n] * H, da + n * H, H)
        elif tokens != NULL:
            for n in range(rows):
                grad_row = da + n * H
                for j in range(H):
                    dWxh[j * I + tokens[start * B + n]] += grad_row[j]
        else:
            # dWxh (H, I) (+)= da^T (H, rows) x (rows, I)
            gemm(True, False, <int> H, <int> I, <int> rows, 1, da, <int> H, x + start * B * I,
                 <int> I, 0 if first else 1, dWxh, <int> I)
            if dx != NULL:
                # dx (rows, I) (+)= da (rows, H) Wxh (H, I)
                gemm(False, False, <int> rows, <int> I, <int> H, 1, da, <int> H, Wxh, <int> I,
                     0 if d == 0 else 1, dx + start * B * I, <int> I)
        first = False
        done += n_steps
    if tokens != NULL and dWxhT != NULL:
        # one transposition of the row-wise sums into dWxh (H, I)
        transpose_into(dWxh, <const floating*> dWxhT, I, H)


cdef void weight_gradient(floating* dW, const floating* dA, const floating* X, Py_ssize_t G,
                          Py_ssize_t N, Py_ssize_t rows, floating* work) noexcept nogil:
    """dW (G, N) = dA^T (G, rows) X (rows, N), for dA (rows, G) and X (rows, N). Where N is at
    most NARROW_GRADIENT and below G (a gated weight gradient with few inputs or a small H), as
    its transpose dW^T (N, G) = X^T dA into work (N*G values), then transposed into dW: the
    same sums, but on rows of G columns, which fill the product kernel's blocks, rather than of
    N, which leave most of them empty."""
    if N <= NARROW_GRADIENT and N < G and work != NULL:
        gemm(True, False, <int> N, <int> G, <int> rows, 1, X, <int> N, dA, <int> G, 0, work,
             <int> G)
        transpose_into(dW, work, N, G)
    else:
        gemm(True, False, <int> G, <int> N, <int> rows, 1, dA, <int> G, X, <int> N, 0, dW,
             <int> N)


cdef void gated_backward(const StepArgs* a, Py_ssize_t l, Py_ssize_t d,
                         floating* dout) noexcept nogil:
    """BPTT through one gated layer-direction and its weight gradients (see layer_backward):
    dL/dh_out of every step into dout, then per step (in its backward order) the cell's backward
    epilogue (dP_t, dR_t and the part of dL/dh_prev, dL/dc_prev that bypasses Whh) and one GEMM
    (dL/dh_prev += scale dR_t Whh); then dWhh = dR^T h_prev, dbh = sum dP (GRU: dbhn = sum of
    dR's n-part), dWxh = dP^T x and dx (+)= dP Wxh as whole-sequence products."""
    cdef const LayerArgs* p = &a.layers[l * a.D + d]
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, BH = B * H, BG = B * G, TB = T * B, s, t
    cdef Py_ssize_t n
    cdef bint reverse = p.reverse, lstm = a.cell == CELL_LSTM
    cdef floating scale
    cdef floating* hs = <floating*> p.hs
    cdef floating* cs = <floating*> p.cs
    cdef floating* gates = <floating*> p.gates
    cdef const floating* Whh = <const floating*> p.Whh
    cdef const floating* Whh_panels = <const floating*> p.Whh_panels
    cdef const floating* carry = <const floating*> a.carry
    cdef floating* dP = <floating*> a.dP
    cdef floating* dR = <floating*> a.dR if not lstm else dP
    cdef floating* gh = <floating*> a.work
    cdef floating* gc = gh + BH
    cdef floating* gb = gh + 2 * BH
    cdef floating* swap
    cdef floating* c
    cdef floating* dbhn = <floating*> p.dbhn
    # 1. dL/dh_out (T*B, H)
    output_errors(a, l, d, dout)
    # 2. BPTT
    if a.longest == 0:
        memset(gh, 0, 2 * BH * sizeof(floating))
        for s in range(T):
            t = s if reverse else T - 1 - s
            add(gh, dout + t * BH, BH)
            a.squares[t] += sum_of_squares(BH, gh)
            # the carry scale of the step's place in this direction's order
            scale = 1 if carry == NULL else carry[T - 1 - t if reverse else t]
            if lstm:
                c = cs + (t + 1) * BH
                lstm_cell_backward(gh, gc, gates + t * BG, c + BH if reverse else c - BH, c,
                                   dP + t * BG, scale, B, H)
                if scale == 0:
                    memset(gh, 0, BH * sizeof(floating))
                elif Whh_panels != NULL:
                    # gh (B, H) = scale da_t (B, 4H) Whh (4H, H)
                    gemm_panels(<int> B, <int> H, <int> G, scale, dP + t * BG, <int> G,
                                Whh_panels, 0, gh, <int> H)
                else:
                    gemm(False, False, <int> B, <int> H, <int> G, scale, dP + t * BG, <int> G,
                         Whh, <int> H, 0, gh, <int> H)
            else:
                gru_cell_backward(gh, gates + t * BG, <const floating*> p.hn + t * BH,
                                  hs + (t + 2 if reverse else t) * BH, dP + t * BG, dR + t * BG,
                                  gb, scale, B, H)
                if scale != 0 and Whh_panels != NULL:
                    # gb (B, H) += scale dR_t (B, 3H) Whh (3H, H)
                    gemm_panels(<int> B, <int> H, <int> G, scale, dR + t * BG, <int> G,
                                Whh_panels, 1, gb, <int> H)
                elif scale != 0:
                    gemm(False, False, <int> B, <int> H, <int> G, scale, dR + t * BG, <int> G,
                         Whh, <int> H, 1, gb, <int> H)
                swap = gh
                gh = gb
                gb = swap
        memcpy(p.dh0, gh, BH * sizeof(floating))
        if lstm:
            memcpy(p.dc0, gc, BH * sizeof(floating))
    else:
        gated_backward_window(a, p, dout, dP, dR)
    # 3. dWhh (G, H) = dR^T (G, T*B) h_prev (T*B, H); dbh = column sums of dP; GRU: dbhn =
    # column sums of dR's n-part
    weight_gradient(<floating*> p.dWhh, dR, hs + (2 if reverse else 0) * BH, G, H, TB,
                    <floating*> a.gradT)
    memset(p.dbh, 0, G * sizeof(floating))
    add_row_sums(<floating*> p.dbh, dP, TB, G)
    if not lstm:
        memset(dbhn, 0, H * sizeof(floating))
        for n in range(TB):
            add(dbhn, dR + n * G + 2 * H, H)
    # 4. dWxh and dx
    input_gradients(a, l, d, dP)


cdef void regime_backward(const StepArgs* a, Py_ssize_t l, Py_ssize_t d,
                          floating* dout) noexcept nogil:
    """BPTT through one layer-direction of regime_forward and its gradients, as gated_backward:
    per step (in its backward order) the part through zoneout, g_cell = (1 - zh) dL/dh_t (LSTM:
    dL/d~c_t = (1 - zc) dL/dc_t); the cell's backward epilogue, which gives dP_t and the
    gradient of its recurrent term, dRn_t (Elman, LSTM: dP_t; GRU: its dR_t, whose n-part sums
    into dbhn), the LSTM's through h = o tanh(N_c(~c_t) gc + bc) first where normalized (dgc,
    dbc); dgh += sum of dRn_t rhat_t and dR_t = N_h backward of dRn_t gh where normalized; one
    GEMM, back = dR_t Whh; then carry_back: dL/dh_prev = scale (back rmask + zh dL/dh_t + GRU's
    direct part), dL/dc_prev = scale (dL/d~c_t f + zc dL/dc_t). After the loop the
    whole-sequence products: dWhh = dR^T (h_prev rmask), dbh = sum dP, and where normalized dgx
    = sum dP xhat and dP <- N_x backward of dP gx; dWxh and dx as gated_backward."""
    cdef const LayerArgs* p = &a.layers[l * a.D + d]
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, BH = B * H, BG = B * G, TB = T * B, s, t
    cdef bint reverse = p.reverse, norm = p.gx != NULL
    cdef int cell = a.cell
    cdef floating scale
    cdef floating slope = <floating> a.slope
    cdef floating* hs = <floating*> p.hs
    cdef floating* cs = <floating*> p.cs
    cdef floating* gates = <floating*> p.gates
    cdef const floating* Whh = <const floating*> p.Whh
    cdef const floating* Whh_panels = <const floating*> p.Whh_panels
    cdef const floating* carry = <const floating*> a.carry
    cdef const floating* rmask = <const floating*> p.rmask
    cdef const floating* zh = <const floating*> p.zh
    cdef const floating* zc = <const floating*> p.zc
    cdef const floating* zh_s
    cdef const floating* zc_s
    cdef const floating* gain_h = <const floating*> p.gh
    cdef const floating* rhat = <const floating*> p.rhat
    cdef const floating* rstd_h = <const floating*> p.rstd_h
    cdef const floating* chat = <const floating*> p.chat
    cdef const floating* rstd_c = <const floating*> p.rstd_c
    cdef floating* dP = <floating*> a.dP
    # the recurrent term's gradient: dP itself for Elman and LSTM without normalization
    cdef floating* dR = <floating*> a.dR if norm or cell == CELL_GRU else dP
    cdef floating* gh = <floating*> a.work  # dL/dh_t
    cdef floating* gc = gh + BH  # dL/dc_t (LSTM)
    cdef floating* gz = gh + 2 * BH  # GRU: the part of dL/dh_prev through z
    cdef floating* u = gh + 3 * BH  # LSTM, normalized: tanh(chat gc + bc)
    cdef floating* dchat = gh + 4 * BH
    cdef floating* back = gh + 5 * BH  # dR_t Whh
    cdef floating* g_cell = gh + 6 * BH  # (1 - zh) dL/dh_t: what reaches the cell (zoneout)
    cdef floating* dcf = gh + 7 * BH  # dL/d~c_t, then times f (LSTM)
    cdef floating* dgh = <floating*> p.dgh
    cdef floating* dbhn = <floating*> p.dbhn
    cdef floating* c
    cdef floating* dP_t
    cdef floating* dR_t
    cdef floating* dRn_t
    cdef const floating* gates_t
    cdef const floating* c_prev
    # 1. dL/dh_out (T*B, H)
    output_errors(a, l, d, dout)
    # 2. BPTT
    memset(gh, 0, 2 * BH * sizeof(floating))
    if norm:
        memset(dgh, 0, G * sizeof(floating))
        if cell == CELL_LSTM:
            memset(p.dgc, 0, H * sizeof(floating))
            memset(p.dbc, 0, H * sizeof(floating))
    if cell == CELL_GRU:
        memset(dbhn, 0, H * sizeof(floating))
    for s in range(T):
        t = s if reverse else T - 1 - s
        zh_s = zh + (T - 1 - s) * BH if zh != NULL else NULL  # by processing order
        zc_s = zc + (T - 1 - s) * BH if zc != NULL else NULL
        add(gh, dout + t * BH, BH)
        a.squares[t] += sum_of_squares(BH, gh)
        # the carry scale of the step's place in this direction's order
        scale = 1 if carry == NULL else carry[T - 1 - t if reverse else t]
        if zh != NULL:
            kept_part(g_cell, zh_s, gh, BH)
        else:
            g_cell = gh
        gates_t = gates + t * BG
        dP_t = dP + t * BG
        dR_t = dR + t * BG
        if cell == CELL_ELMAN:
            # f'(~h_t): ~h_t kept in the gates under zoneout, else the state itself
            times_derivative(dP_t, g_cell, gates_t if zh != NULL else hs + (t + 1) * BH, BH,
                             a.code, slope)
            dRn_t = dP_t
        elif cell == CELL_LSTM:
            c = cs + (t + 1) * BH
            c_prev = c + BH if reverse else c - BH
            if zc != NULL:
                kept_part(dcf, zc_s, gc, BH)
            else:
                memcpy(dcf, gc, BH * sizeof(floating))
            if norm:
                # dL/d~c_t += N_c backward of du gc, through h = o tanh(chat gc + bc)
                normalized_output_rows_backward(g_cell, gates_t, chat + t * BH,
                                                <const floating*> p.gc, <const floating*> p.bc,
                                                u, dchat, <floating*> p.dgc, <floating*> p.dbc,
                                                B, H)
                layer_norm_backward(dchat, chat + t * BH, rstd_c + t * B, B, H)
                add(dcf, dchat, BH)
                lstm_backward_from_dc(dcf, g_cell, u, gates_t, c_prev, dP_t, B, H)
            else:
                lstm_cell_backward(g_cell, dcf, gates_t, c_prev,
                                   <const floating*> p.ctil + t * BH if zc != NULL else c, dP_t,
                                   1, B, H)
            dRn_t = dP_t
        else:
            gru_cell_backward(g_cell, gates_t, <const floating*> p.hn + t * BH,
                              hs + (t + 2 if reverse else t) * BH, dP_t, dR_t, gz, 1, B, H)
            add_column_sums(dbhn, dR_t + 2 * H, NULL, B, H, G)  # hn = Rn_n + bhn
            dRn_t = dR_t
        if norm:
            # dgh += sum over rows of dRn_t rhat_t; dR_t = N_h backward of dRn_t gh
            layer_norm_gain_backward(dRn_t, rhat + t * BG, rstd_h + t * B, gain_h, dgh, dR_t, B,
                                     G)
        if scale != 0:
            # back (B, H) = dR_t (B, G) Whh (G, H)
            if Whh_panels != NULL:
                gemm_panels(<int> B, <int> H, <int> G, 1, dR_t, <int> G, Whh_panels, 0, back,
                            <int> H)
            else:
                gemm(False, False, <int> B, <int> H, <int> G, 1, dR_t, <int> G, Whh, <int> H, 0,
                     back, <int> H)
        carry_back(gh, back, rmask, zh_s, gz if cell == CELL_GRU else NULL,
                   gc if cell == CELL_LSTM else NULL, dcf, zc_s, scale, NULL, t, B, H)
    memcpy(p.dh0, gh, BH * sizeof(floating))
    if cell == CELL_LSTM:
        memcpy(p.dc0, gc, BH * sizeof(floating))
    # 3. dWhh (G, H) = dR^T (G, T*B) (h_prev rmask) (T*B, H); dbh = column sums of dP
    weight_gradient(<floating*> p.dWhh, dR,
                    <const floating*> p.hin if rmask != NULL
                    else hs + (2 if reverse else 0) * BH, G, H, TB, <floating*> a.gradT)
    memset(p.dbh, 0, G * sizeof(floating))
    add_row_sums(<floating*> p.dbh, dP, TB, G)
    if norm:
        # 4. the input term: dgx = column sums of dP xhat; dP <- N_x backward of dP gx
        memset(p.dgx, 0, G * sizeof(floating))
        layer_norm_gain_backward(dP, <const floating*> p.xhat, <const floating*> p.xrstd,
                                 <const floating*> p.gx, <floating*> p.dgx, dP, TB, G)
    # 5. dWxh and dx
    input_gradients(a, l, d, dP)


cdef void output_errors(const StepArgs* a, Py_ssize_t l, Py_ssize_t d,
                        floating* dout) noexcept nogil:
    """dL/dh_out (T*B, H) of layer-direction j = l*D + d into dout: dz (T*B, O) Why[:,
    dH:(d+1)H] for the top layer, else this direction's columns of the layer above's dL/dx
    times the dropout mask."""
    cdef Py_ssize_t TB = a.T * a.B, H = a.H, DH = a.D * a.H
    cdef const floating* above
    cdef const floating* mask = NULL
    if l + 1 == a.L:
        gemm(False, False, <int> TB, <int> H, <int> a.O, 1, <const floating*> a.z, <int> a.O,
             <const floating*> a.Why + d * H, <int> DH, 0, dout, <int> H)
        return
    above = <const floating*> a.layers[(l + 1) * a.D].dx
    if a.masks != NULL:
        mask = <const floating*> a.masks + l * TB * DH
    take_columns(dout, above + d * H, mask + d * H if mask != NULL else NULL, TB, H, DH)


cdef void input_gradients(const StepArgs* a, Py_ssize_t l, Py_ssize_t d,
                          const floating* dP) noexcept nogil:
    """From dP (T*B, G), the gradient of layer-direction j = l*D + d's projection: dWxh (a
    scatter-add of dP's rows into the token columns, or dP^T x) and dL/dx (+)= dP Wxh (direction
    1 adding to direction 0's), where the layer below (or the caller) needs it."""
    cdef const LayerArgs* p = &a.layers[l * a.D + d]
    cdef Py_ssize_t TB = a.T * a.B, G = a.G, I = p.n_in, n, j
    cdef const floating* Wxh = <const floating*> p.Wxh
    cdef const floating* x = <const floating*> p.x
    cdef const floating* grad_row
    cdef floating* dx = <floating*> p.dx
    cdef floating* dWxh = <floating*> p.dWxh
    cdef floating* dWxhT = <floating*> p.dWxhT
    cdef const Py_ssize_t* tokens = a.tokens if l == 0 else NULL
    if tokens != NULL and dWxhT != NULL:
        memset(dWxhT, 0, G * I * sizeof(floating))
        for n in range(TB):
            add(dWxhT + tokens[n] * G, dP + n * G, G)
        # one transposition of the row-wise sums into dWxh (G, I)
        transpose_into(dWxh, <const floating*> dWxhT, I, G)
    elif tokens != NULL:
        memset(dWxh, 0, G * I * sizeof(floating))
        for n in range(TB):
            grad_row = dP + n * G
            for j in range(G):
                dWxh[j * I + tokens[n]] += grad_row[j]
    else:
        # dWxh (G, I) = dP^T (G, T*B) x (T*B, I)
        weight_gradient(dWxh, dP, x, G, I, TB, <floating*> a.gradT)
        if dx != NULL:
            # dx (T*B, I) (+)= dP (T*B, G) Wxh (G, I)
            gemm(False, False, <int> TB, <int> I, <int> G, 1, dP, <int> G, Wxh, <int> I,
                 0 if d == 0 else 1, dx, <int> I)


# the gated cells' windowed BPTT loops, the ones the layer kernels of _gated.pyx run
include "_gated_window.pxi"


cdef void gated_backward_window(const StepArgs* a, const LayerArgs* p, floating* dout,
                                floating* dP, floating* dR) noexcept nogil:
    """Look-back windows (a.longest, a.windows) through a gated layer-direction: the layer
    kernels' loop (_gated_window.pxi) over this direction's steps in its processing order (the
    reverse direction's arrays reversed in place for it, and back). dout is consumed. Uses
    depth (T, B, H), depth_next (T, B, 2G) and work[3:] (B, G) as workspaces."""
    cdef Py_ssize_t T = a.T, B = a.B, H = a.H, G = a.G, BH = B * H, BG = B * G
    cdef bint reverse = p.reverse, lstm = a.cell == CELL_LSTM
    cdef floating* hs = <floating*> p.hs
    cdef floating* cs = <floating*> p.cs
    cdef floating* gates = <floating*> p.gates
    cdef floating* hn = <floating*> p.hn
    cdef floating* G2 = <floating*> a.depth
    cdef floating* dA = <floating*> a.depth_next
    cdef floating* reach = <floating*> a.work + 3 * BH
    if reverse:
        reverse_steps(dout, T, BH)
        reverse_steps(gates, T, BG)
        if lstm:
            reverse_steps(cs + BH, T + 1, BH)
        else:
            reverse_steps(hs + BH, T + 1, BH)
            reverse_steps(hn, T, BH)
    memset(dP, 0, T * BG * sizeof(floating))
    memset(reach, 0, BG * sizeof(floating))
    if lstm:
        memset(G2, 0, T * BH * sizeof(floating))
        memset(p.dc0, 0, BH * sizeof(floating))
        lstm_backward_window_loop(cs + BH if reverse else cs, gates,
                                  <const floating*> p.Whh, NULL, a.windows, a.longest, dout, G2,
                                  dA, dP, reach, <floating*> p.dh0, <floating*> p.dc0, T, B, H)
    else:
        memset(dR, 0, T * BG * sizeof(floating))
        memset(p.dh0, 0, BH * sizeof(floating))
        gru_backward_window_loop(hs + BH if reverse else hs, gates, hn, <const floating*> p.Whh,
                                 NULL, a.windows, a.longest, dout, G2, dA, dA + T * BG, dP, dR,
                                 reach, <floating*> p.dh0, T, B, H)
    if reverse:
        reverse_steps(dP, T, BG)
        reverse_steps(gates, T, BG)
        if lstm:
            reverse_steps(cs + BH, T + 1, BH)
        else:
            reverse_steps(dR, T, BG)
            reverse_steps(hs + BH, T + 1, BH)
            reverse_steps(hn, T, BH)


cdef void stack_step(StepArgs* a, floating scale) noexcept nogil:
    """One shard's training step; a.loss is its summed loss (`scale` scales dL/dz only)."""
    cdef Py_ssize_t TB = a.T * a.B, O = a.O, DH = a.D * a.H, l, d, t
    cdef floating* z = <floating*> a.z
    cdef floating* grad_norms = <floating*> a.grad_norms
    # 1-3. projections, recurrences, logits z
    stack_forward(a, z)
    # 4. loss, and dL/dz in place of z (the loss stored at once: a local double kept across the
    # calls below lives on the stack, and so did the sum in the loss's loop, when inlined)
    if a.target_ids != NULL:
        a.loss = softmax_cross_entropy(z, a.target_ids, TB, O, scale)
    else:
        a.loss = squared_error(z, <const floating*> a.target_values, TB * O, scale)
    # 5. dWhy (O, D*H) = dz^T (O, T*B) top (T*B, D*H);  dby = column sums of dz
    gemm(True, False, <int> O, <int> DH, <int> TB, 1, z, <int> O, <const floating*> a.top,
         <int> DH, 0, <floating*> a.dWhy, <int> DH)
    memset(a.dby, 0, O * sizeof(floating))
    add_row_sums(<floating*> a.dby, z, TB, O)
    # 6-9. BPTT and the weight gradients, top layer down (each layer's dL/dx is the error of
    # the states below), each direction in turn
    if a.longest == 0:
        memset(a.squares, 0, a.T * sizeof(double))
    for l in range(a.L - 1, -1, -1):
        for d in range(a.D):
            if a.regime:
                regime_backward(a, l, d, <floating*> a.dout)
            elif a.cell == CELL_ELMAN:
                layer_backward(a, l, d, <floating*> a.da)
            else:
                gated_backward(a, l, d, <floating*> a.dout)
    if a.longest == 0:
        for t in range(a.T):
            grad_norms[t] = sqrt(a.squares[t])


cdef void stack_outputs(const StepArgs* a, floating* y) noexcept nogil:
    """One shard's forward pass: the outputs y = g(z) (T*B, O)."""
    stack_forward(a, y)
    output_function(y, a.T * a.B, a.O, a.output)


cdef void run_step(StepArgs* a) noexcept nogil:
    # the one place where the dtype is chosen
    if a.single and a.forward_only:
        stack_outputs(a, <float*> a.z)
    elif a.single:
        stack_step(a, <float> a.scale)
    elif a.forward_only:
        stack_outputs(a, <double*> a.z)
    else:
        stack_step(a, <double> a.scale)


cdef void* run_worker(void* arg) noexcept nogil:
    cdef Worker* w = <Worker*> arg
    cdef Py_ssize_t i = next_shard(w.next)
    while i < w.count:
        run_step(&w.steps[i])
        i = next_shard(w.next)
    return NULL


cdef void run_shards(StepArgs* steps, Py_ssize_t count, Worker* workers,
                     int threads) noexcept nogil:
    """Run every shard: on the calling thread and on threads - 1 threads started here and
    joined before returning, each taking the next shard not yet taken (so a thread slowed down
    by another process does less of the work). If no thread can be started, the caller runs
    every shard; the results never depend on which thread ran which shard."""
    cdef pthread_t handles[MAX_SHARDS]
    cdef bint started[MAX_SHARDS]
    cdef Py_ssize_t next = 0
    cdef int t
    for t in range(threads):
        workers[t].steps = steps
        workers[t].next = &next
        workers[t].count = count
    for t in range(1, threads):
        started[t] = pthread_create(&handles[t], NULL, run_worker, &workers[t]) == 0
    run_worker(&workers[0])
    for t in range(1, threads):
        if started[t]:
            pthread_join(handles[t], NULL)




# ---------------------------------------------------------------------------------------------
# the Python side: buffers kept per thread, shards of the batch, results for the caller
# ---------------------------------------------------------------------------------------------

class Workspace(threading.local):
    """The buffers of each thread's last KEPT_SETS calls of different sizes or kinds (training
    step, forward pass), reused by its next call of the same ones: fresh buffers cost page
    faults on every call (a tenth of a char-LM step), and the allocator hands large ones back to
    the system each time. Several sets, so that a training step and its validation pass, or two
    models trained in turn, keep theirs. The least recently used go first, to keep at most
    MAX_KEPT_BYTES per thread; results handed to the caller are always copies."""

    def __init__(self):
        self.kept = {}  # key: (buffers, bytes), least recently used first

    def get(self, key):
        found = self.kept.pop(key, None)
        if found is None:
            return None
        self.kept[key] = found  # now the most recently used
        return found[0]

    def keep(self, key, buffers, size):
        if size > MAX_KEPT_BYTES:
            return
        self.kept[key] = (buffers, size)
        total = sum([kept[1] for kept in self.kept.values()])
        while len(self.kept) > KEPT_SETS or total > MAX_KEPT_BYTES:
            total -= self.kept.pop(next(iter(self.kept)))[1]


_workspace = Workspace()


def shard_count(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O,
                Py_ssize_t num_layers=1, Py_ssize_t num_directions=1, Py_ssize_t gate_width=0):
    """How many shards of the batch the compiled training step runs: fixed by the problem's
    sizes alone, never by the thread count, so that a step gives bit-identical results on any
    number of threads. One shard for small steps (starting a thread costs more than it saves)
    and for batches under 16; else a power of two, with at least 16 sequences per shard from a
    batch of 32 on (8 below), 32 where Whh (G, H) has more than LARGE_WEIGHTS values, and at
    most MAX_SHARDS. The work is the forward pass's multiply-adds: T*B*D*(G*((I + H) + (L - 1)
    *(D*H + H)) + H*O) for L layers of D directions, with the gate width G = ``gate_width``
    (4H for LSTM, 3H for GRU; H for Elman, the default).

    Every shard streams Whh once a step: where it is larger than the caches, a product of few
    rows waits on memory, and each shard more adds a full pass over Whh at every step."""
    cdef Py_ssize_t G = gate_width if gate_width > 0 else H
    cdef Py_ssize_t shards = 1, low = 16 if B >= 32 else 8
    cdef Py_ssize_t D = num_directions
    cdef Py_ssize_t per_row = D * (G * ((I + H) + (num_layers - 1) * (D * H + H)) + H * O)
    if B < 16 or T * B * per_row < MIN_SHARDED_WORK:
        return 1
    if G * H > LARGE_WEIGHTS:
        low = 32
    while shards * 2 <= MAX_SHARDS and B // (shards * 2) >= low:
        shards *= 2
    return shards


cdef void transpose_into(floating* dst, const floating* src, Py_ssize_t R,
                         Py_ssize_t C) noexcept nogil:
    """dst (C, R) = src (R, C)^T, by 16 x 16 blocks (both stay in cache), each written a row of
    dst at a time: with power-of-two row lengths (a (1024, 256) Whh), a block's 16 rows of src
    and of dst each fall in one set of the L1 cache, and written strided, dst's lines were
    evicted before they were full; this order measured four times faster there."""
    cdef Py_ssize_t i0, j0, i, j, i1, j1
    for j0 in range(0, C, 16):
        j1 = min(C, j0 + 16)
        for i0 in range(0, R, 16):
            i1 = min(R, i0 + 16)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j * R + i] = src[i * C + j]


cdef object transposed_copy(W):
    """A C-contiguous copy of W.T for a C-contiguous 2-D float array W: the same values as
    np.ascontiguousarray(W.T), several times faster (NumPy copies a transpose element by
    element, strided: 21 us for a (400, 100) float32 LSTM Whh, a tenth of a char-LM step)."""
    cdef Py_ssize_t R = W.shape[0], C = W.shape[1]
    out = empty((C, R), W.dtype)
    cdef void* src = data(W)
    cdef void* dst = data(out)
    if W.dtype == np.float32:
        with nogil:
            transpose_into(<float*> dst, <const float*> src, R, C)
    else:
        with nogil:
            transpose_into(<double*> dst, <const double*> src, R, C)
    return out


cdef object panel_copy(W, bint transposed=False):
    """W (K, N), C-contiguous, packed as pack_panels lays it out for gemm_panels: a new 1-D
    array of K*N values. With `transposed`, the same for W^T, read from W's rows (no transposed
    copy first)."""
    cdef Py_ssize_t R = W.shape[0], C = W.shape[1]
    out = empty((R * C,), W.dtype)
    cdef void* src = data(W)
    cdef void* dst = data(out)
    if W.dtype == np.float32:
        with nogil:
            if transposed:
                spack_panels_t(<const float*> src, C, R, C, <float*> dst)
            else:
                spack_panels(<const float*> src, R, C, C, <float*> dst)
    else:
        with nogil:
            if transposed:
                dpack_panels_t(<const double*> src, C, R, C, <double*> dst)
            else:
                dpack_panels(<const double*> src, R, C, C, <double*> dst)
    return out


cdef tuple transposed_weights(Wxh, Whh, Py_ssize_t T, Py_ssize_t B, bint tokens, bint gated,
                              bint backward):
    """Copies of the weights for layer_forward, gated_backward and a regime's loops, or None
    where not worth one: ``(WxhT, WhhT, WhhT_panels, Whh_panels)``.

    Contiguous Wxh^T and Whh^T: Whh^T serves from a batch of two on (a single row is a GEMV
    either way). For token ids, Wxh^T's rows gather and scatter faster than Wxh's strided
    columns once there are at least as many tokens as rows to transpose. For the whole-sequence
    products, from the size on which products may run on cyrnn's own kernel (which needs the
    untransposed operand); below it the copy costs more than it saves.

    The gated cells' per-step products, R_t = h_prev Whh^T (B, H) x (H, G) forward and dh_prev =
    dP_t Whh (B, G) x (G, H) backward, where they run on cyrnn's own kernel for a batch of two
    or more: Whh^T and Whh (``backward`` only) packed in panels (pack_panels, which says why),
    in place of WhhT."""
    cdef Py_ssize_t G = Whh.shape[0], H = Whh.shape[1], I = Wxh.shape[1]
    cdef bint single = Whh.dtype == np.float32
    cdef bint panels = (gated and B >= 2 and panel_columns(single) != 0
                        and on_own_kernel(B, G, H))
    # (for a batch of one only where a GEMV would be large enough for BLAS to thread it)
    WhhT = (transposed_copy(Whh)
            if not panels and (B >= TRANSPOSE_MIN_BATCH
                               or G * H > BLAS_GEMV_SINGLE_THREAD_MAX_WORK) else None)
    if tokens:
        WxhT = transposed_copy(Wxh) if I <= T * B else None
    else:
        WxhT = transposed_copy(Wxh) if T * B * I * G > BLAS_SINGLE_THREAD_MAX_WORK else None
    WhhT_panels = Whh_panels = None
    if panels:
        WhhT_panels = panel_copy(Whh, transposed=True)
        Whh_panels = panel_copy(Whh) if backward else None
    return WxhT, WhhT, WhhT_panels, Whh_panels


cdef class Shard:
    """One shard's results and workspaces, kept between calls of the same sizes: a training
    step's, or (without `step`) a forward pass's, whose other fields are None."""
    # per layer-direction j: states (the reverse direction keeps h0 in a last block), weight
    # gradients; per layer l = 1 .. L-1 its inputs where not the states themselves (x[l - 1]);
    # dL/dx of the layers above the first, alternately (layer l writes dX[(l - 1) % 2])
    # the gated cells' (empty lists and None for a plain Elman layer): per layer-direction cs
    # (LSTM), gates (Elman: under a regime), xw and hn (GRU), dbhn (GRU); R, dout, dP, dR, dc0
    # (LSTM) as in StepArgs
    cdef list hs, x, dX, dWxh, dWxhT, dWhh, dbh, cs, gates, xw, hn, dbhn
    # layer normalization's (empty lists without): per layer-direction as in LayerArgs
    cdef list xhat, xrstd, rhat, rstd_h, chat, rstd_c, dgx, dgh, dgc, dbc
    # a regime's: per layer-direction hin, ctil (LSTM) as in LayerArgs
    cdef list hin, ctil
    cdef object top, z, layer_args, da, work, squares, grad_norms, depth, depth_next
    cdef object dWhy, dby, dh0, dx, R, dout, dP, dR, dc0, gradT
    cdef Py_ssize_t block, nbytes, B

    def __init__(self, bint step, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 Py_ssize_t O, Py_ssize_t L, Py_ssize_t D, Py_ssize_t k, bint tokens,
                 bint need_dWxhT, bint input_grad, bint masks, dtype, int cell=CELL_ELMAN,
                 bint norm=False, bint regime=False):
        # norm: layer normalization; regime: it or regularizers (regime_forward)
        cdef Py_ssize_t DH = D * H, j, LD = L * D
        cdef Py_ssize_t G = H * (4 if cell == CELL_LSTM else 3 if cell == CELL_GRU else 1)
        cdef bint lstm = cell == CELL_LSTM, gru = cell == CELL_GRU
        # the paths of the gated cells (R, dout, dP kept apart) serve every cell of a regime
        cdef bint gated = cell != CELL_ELMAN or regime
        self.B = B
        self.cs = [empty((T + 1 + j % D, B, H), dtype) for j in range(LD)] if lstm else []
        self.gates = [empty((T, B, G), dtype) for j in range(LD)] if gated else []
        self.xw = [empty((T, B, G), dtype) for j in range(LD)] if gru else []
        self.hn = [empty((T, B, H), dtype) for j in range(LD)] if gru else []
        self.R = empty((B, G), dtype) if gru or regime else None
        self.hin = [empty((T, B, H), dtype) for j in range(LD if regime else 0)]
        self.ctil = [empty((T, B, H), dtype) for j in range(LD if regime and lstm else 0)]
        n = LD if norm else 0
        self.xhat = [empty((T, B, G), dtype) for j in range(n)]
        self.xrstd = [empty((T * B,), dtype) for j in range(n)]
        self.rhat = [empty((T, B, G), dtype) for j in range(n)]
        self.rstd_h = [empty((T * B,), dtype) for j in range(n)]
        self.chat = [empty((T, B, H), dtype) for j in range(n if lstm else 0)]
        self.rstd_c = [empty((T * B,), dtype) for j in range(n if lstm else 0)]
        self.hs = [empty((T + 1 + j % D, B, H), dtype) for j in range(L * D)]
        self.x = [empty((T, B, DH), dtype) if (D == 2 or masks) else None for j in range(L - 1)]
        self.top = empty((T, B, DH), dtype) if D == 2 else None
        self.z = empty((T * B, O), dtype) if step else empty((T, B, O), dtype)
        self.layer_args = np.zeros(L * D * sizeof(LayerArgs), dtype=np.uint8)
        arrays = self.hs + self.x + [self.top, self.z] + self.cs + self.gates + self.xw + self.hn
        arrays.append(self.R)
        arrays += self.xhat + self.xrstd + self.rhat + self.rstd_h + self.chat + self.rstd_c
        arrays += self.hin + self.ctil
        self.dbhn = []
        self.dout = self.dP = self.dR = self.dc0 = self.gradT = None
        n = LD if step and norm else 0
        self.dgx = [empty((G,), dtype) for j in range(n)]
        self.dgh = [empty((G,), dtype) for j in range(n)]
        self.dgc = [empty((H,), dtype) for j in range(n if lstm else 0)]
        self.dbc = [empty((H,), dtype) for j in range(n if lstm else 0)]
        arrays += self.dgx + self.dgh + self.dgc + self.dbc
        if step and gated:
            self.gradT = empty((NARROW_GRADIENT * G,), dtype)
            self.dout = empty((T, B, H), dtype)
            self.dP = empty((T, B, G), dtype)
            self.dR = empty((T, B, G), dtype) if gru or norm else None
            self.dc0 = empty((LD, B, H), dtype) if lstm else None
            self.dbhn = [empty((H,), dtype) for j in range(LD)] if gru else []
            arrays += self.dbhn + [self.dout, self.dP, self.dR, self.dc0, self.gradT]
        if step:
            # BPTT by blocks of about BLOCK_ROWS (step, sequence) rows: large enough for
            # efficient GEMMs, small enough that da is a fraction of the states (a window
            # needs all T steps)
            self.block = T if k else min(T, max(1, (BLOCK_ROWS + B - 1) // B))
            self.da = empty((self.block, B, H), dtype) if not gated else None
            # gated: gh, gc, gb and (windows) a (B, G) block; a regime's: see regime_backward
            self.work = empty((8 if regime else 3 + (G // H if k else 0) if cell else 2, B, H),
                              dtype)
            self.squares = np.empty(T)
            self.grad_norms = empty((T,), dtype)
            # the window's depth buffers (its dh0 accumulator uses `work`); none for full BPTT
            self.depth = empty((T, B, H), dtype) if k else None
            self.depth_next = empty((T, B, 2 * G if cell else H), dtype) if k else None
            self.dX = [empty((T, B, DH), dtype) for j in range(min(2, L - 1))]
            self.dWxh = [empty((G, I if j < D else DH), dtype) for j in range(L * D)]
            self.dWxhT = [empty((I, G), dtype) if need_dWxhT and j < D else None
                          for j in range(L * D)]
            self.dWhh = [empty((G, H), dtype) for j in range(L * D)]
            self.dbh = [empty((G,), dtype) for j in range(L * D)]
            self.dWhy = empty((O, DH), dtype)
            self.dby = empty((O,), dtype)
            self.dh0 = empty((L * D, B, H), dtype)
            self.dx = empty((T, B, I), dtype) if (input_grad and not tokens) else None
            arrays += (self.dX + self.dWxh + self.dWxhT + self.dWhh + self.dbh
                       + [self.da, self.work, self.squares, self.grad_norms, self.depth,
                          self.depth_next, self.dWhy, self.dby, self.dh0, self.dx])
        self.nbytes = sum(a.nbytes for a in arrays if a is not None)


cdef inline void* at(object a, Py_ssize_t offset):
    """Pointer `offset` bytes into a's data."""
    return <char*> cnp.PyArray_DATA(<cnp.ndarray> a) + offset


cdef int fill_step(StepArgs* a, Shard buf, inputs, targets, h0, masks, layers, list transposed,
                   Why, WhyT, by, carry, windows, Py_ssize_t k, Py_ssize_t D, int code,
                   double slope, double scale, int output, int cell, c0, gains,
                   regular) except -1:
    cdef bint tokens = inputs.dtype.kind in "iu", step = targets is not None
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], H = Why.shape[1] // D
    cdef Py_ssize_t L = len(layers) // D, j, l
    cdef Py_ssize_t item = Why.itemsize, state_bytes = B * H * item
    cdef LayerArgs* p
    cdef list hs = buf.hs
    a.single = Why.dtype == np.float32
    a.forward_only = not step
    a.output = output
    a.tokens = <const Py_ssize_t*> data(inputs) if tokens else NULL
    a.target_ids = NULL
    a.target_values = NULL
    if step and targets.dtype.kind in "iu":
        a.target_ids = <const Py_ssize_t*> data(targets)
    elif step:
        a.target_values = data(targets)
    a.windows = <const Py_ssize_t*> data(windows)
    a.carry, a.masks = data(carry), data(masks)
    a.Why, a.WhyT, a.by = data(Why), data(WhyT), data(by)
    a.top = data(buf.top) if D == 2 else at(hs[(L - 1) * D], state_bytes)
    a.z = data(buf.z)
    a.layers = <LayerArgs*> data(buf.layer_args)
    a.L, a.D, a.longest, a.T, a.B, a.H, a.O = L, D, k, T, B, H, Why.shape[0]
    a.code, a.slope, a.scale = code, slope, scale
    a.cell, a.G = cell, layers[0][1].shape[0]
    a.regime = gains is not None or regular is not None
    a.R, a.dout, a.dP, a.dR = data(buf.R), data(buf.dout), data(buf.dP), data(buf.dR)
    a.gradT = data(buf.gradT)
    if step:
        # a forward pass has states and outputs only: the step's other buffers are for it
        a.da, a.work = data(buf.da), data(buf.work)
        a.depth, a.depth_next = data(buf.depth), data(buf.depth_next)
        a.squares, a.grad_norms = <double*> data(buf.squares), data(buf.grad_norms)
        a.dWhy, a.dby = data(buf.dWhy), data(buf.dby)
        a.block = buf.block
    for j in range(L * D):
        l = j // D
        Wxh, Whh, bh = layers[j][0], layers[j][1], layers[j][2]
        WxhT, WhhT, WhhT_panels, Whh_panels = transposed[j]
        p = &a.layers[j]
        if cell:
            p.gates = data(buf.gates[j])
            if cell == CELL_LSTM:
                p.c0, p.cs = at(c0, j * state_bytes), data(buf.cs[j])
                p.dc0 = at(buf.dc0, j * state_bytes) if step else NULL
            else:
                p.bhn, p.xw, p.hn = data(layers[j][3]), data(buf.xw[j]), data(buf.hn[j])
                p.dbhn = data(buf.dbhn[j]) if step else NULL
        p.Wxh, p.WxhT, p.Whh, p.WhhT, p.bh = data(Wxh), data(WxhT), data(Whh), data(WhhT), data(bh)
        p.WhhT_panels, p.Whh_panels = data(WhhT_panels), data(Whh_panels)
        p.h0 = at(h0, j * state_bytes)
        p.hs = data(hs[j])
        p.n_in = Wxh.shape[1]
        p.reverse = j % D == 1
        if l == 0:
            p.x = NULL if tokens else data(inputs)
        elif buf.x[l - 1] is not None:
            p.x = data(buf.x[l - 1])
        else:
            p.x = at(hs[(l - 1) * D], state_bytes)
        if step:
            p.dx = data(buf.dx) if l == 0 else data(buf.dX[(l - 1) % 2])
            p.dWxh, p.dWxhT = data(buf.dWxh[j]), data(buf.dWxhT[j])
            p.dWhh, p.dbh = data(buf.dWhh[j]), data(buf.dbh[j])
            p.dh0 = at(buf.dh0, j * state_bytes)
        p.gx = p.gh = p.gc = p.bc = NULL
        p.xhat = p.xrstd = p.rhat = p.rstd_h = p.chat = p.rstd_c = NULL
        p.dgx = p.dgh = p.dgc = p.dbc = NULL
        if gains is not None:
            p.gx, p.gh = data(gains[j][0]), data(gains[j][1])
            p.xhat, p.xrstd = data(buf.xhat[j]), data(buf.xrstd[j])
            p.rhat, p.rstd_h = data(buf.rhat[j]), data(buf.rstd_h[j])
            if step:
                p.dgx, p.dgh = data(buf.dgx[j]), data(buf.dgh[j])
            if cell == CELL_LSTM:
                p.gc, p.bc = data(gains[j][2]), data(gains[j][3])
                p.chat, p.rstd_c = data(buf.chat[j]), data(buf.rstd_c[j])
                if step:
                    p.dgc, p.dbc = data(buf.dgc[j]), data(buf.dbc[j])
        p.rmask = p.zh = p.zc = p.hin = p.ctil = NULL
        if a.regime:
            p.hin = data(buf.hin[j])
            if cell == CELL_LSTM:
                p.ctil = data(buf.ctil[j])
            if cell == CELL_ELMAN:
                p.gates = data(buf.gates[j])
            if regular is not None and regular[j] is not None:
                rmask, zh, zc = regular[j]
                # the cell state's zoneout is the LSTM's alone: the others have no c (the layer
                # kernels ignore a zc given for them too)
                p.rmask, p.zh = data(rmask), data(zh)
                p.zc = data(zc) if cell == CELL_LSTM else NULL
    return 0


cdef tuple run_sharded(inputs, targets, h0, layers, Py_ssize_t D, Why, by, int code,
                       double slope, carry, Py_ssize_t k, windows, double scale, bint input_grad,
                       int output, masks, threads, int cell=CELL_ELMAN, c0=None,
                       gains=None, regular=None):
    """Run a training step (or, with ``targets`` None, a forward pass) of a stack of layers
    over the batch in ``shard_count(...)`` shards of consecutive sequences (a forward pass with
    large weights: in as few as it has threads, see below), on at most ``threads`` threads.
    Returns ``(shards, loss)``: the shards' buffers (a list of Shard) and the sum of their
    losses, in shard order. ``gains``, ``regular``: None, or layer
    normalization's gains and the regularizers' masks of each layer-direction (see
    ``_stack_step``)."""
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], O = Why.shape[0]
    cdef Py_ssize_t LD = len(layers), L = LD // D, H = Why.shape[1] // D
    cdef Py_ssize_t I = layers[0][0].shape[1]
    cdef bint tokens = inputs.dtype.kind in "iu"
    cdef Py_ssize_t G = layers[0][1].shape[0]
    cdef Py_ssize_t shards = shard_count(T, B, I, H, O, L, D, G)
    cdef Py_ssize_t rows = T * (B // shards)  # the fewest rows a shard has
    if (targets is None and G * H > LARGE_WEIGHTS and shards > 1
            and (tokens or rows * G * I > OWN_KERNEL_MAX_WORK_AVX2)
            and rows * D * H * O > OWN_KERNEL_MAX_WORK_AVX2):
        # A forward pass sums nothing over the batch: its rows come out the same on any number
        # of shards, as long as each product runs on the same kernel (BLAS or cyrnn's own, by
        # its size: the sizes checked here are past every threshold either way). Weights this
        # large stream from memory once per shard and step, so it runs on as few shards as it
        # has threads.
        shards = max(1, min(shards, _threads.resolve(threads)))
    cdef Py_ssize_t per = B // shards, extra = B % shards, s, b0, b1, j
    # the thread count matters only when there are shards to share (and is looked up only then)
    cdef int n_threads = 1 if shards == 1 else max(1, min(_threads.resolve(threads), shards))
    cdef bint norm = gains is not None, regime = norm or regular is not None
    cdef list transposed = [transposed_weights(layers[j][0], layers[j][1], T, per,
                                               tokens and j < D, cell != CELL_ELMAN or regime,
                                               targets is not None)
                            for j in range(LD)]
    WhyT = (transposed_copy(Why)
            if T * per * D * H * O > BLAS_SINGLE_THREAD_MAX_WORK else None)
    step_args = np.zeros(shards * sizeof(StepArgs), dtype=np.uint8)
    worker_args = np.zeros(MAX_SHARDS * sizeof(Worker), dtype=np.uint8)
    cdef StepArgs* steps = <StepArgs*> data(step_args)
    cdef Worker* workers = <Worker*> data(worker_args)
    cdef bint need_dWxhT = tokens and transposed[0][0] is not None
    cdef Shard buf
    cdef double loss = 0
    # every shard's results and workspaces, kept for this thread's next call of the same sizes
    key = (targets is None, T, B, I, H, O, L, D, k, tokens, need_dWxhT, input_grad,
           masks is not None, Why.dtype, shards, cell, norm, regime)
    cdef list buffers = _workspace.get(key)
    cdef bint fresh = buffers is None
    if fresh:
        buffers = [Shard(targets is not None, T, per + (1 if s < extra else 0), I, H, O, L, D,
                         k, tokens, need_dWxhT, input_grad, masks is not None, Why.dtype, cell,
                         norm, regime)
                   for s in range(shards)]
    if shards == 1:
        fill_step(steps, buffers[0], inputs, targets, h0, masks, layers, transposed, Why, WhyT,
                  by, carry, windows, k, D, code, slope, scale, output, cell, c0, gains,
                  regular)
        with nogil:
            run_shards(steps, 1, workers, 1)
        loss = steps[0].loss
    else:
        parts = []  # the shards' inputs, alive until the shards have run
        for s in range(shards):
            b0 = s * per + min(s, extra)
            b1 = b0 + per + (1 if s < extra else 0)
            # each shard a run of consecutive sequences, copied contiguous
            part = (np.ascontiguousarray(inputs[:, b0:b1]),
                    None if targets is None else np.ascontiguousarray(targets[:, b0:b1]),
                    np.ascontiguousarray(h0[:, b0:b1]),
                    None if masks is None else np.ascontiguousarray(masks[:, :, b0:b1]),
                    None if c0 is None else np.ascontiguousarray(c0[:, b0:b1]),
                    None if regular is None else shard_masks(regular, b0, b1))
            parts.append(part)
            fill_step(&steps[s], buffers[s], part[0], part[1], part[2], part[3], layers,
                      transposed, Why, WhyT, by, carry, windows, k, D, code, slope, scale,
                      output, cell, part[4], gains, part[5])
        with nogil:
            run_shards(steps, shards, workers, n_threads)
        for s in range(shards):
            loss += steps[s].loss
    if fresh:
        _workspace.keep(key, buffers, sum([(<Shard> b).nbytes for b in buffers]))
    return buffers, loss


cdef list shard_masks(regular, Py_ssize_t b0, Py_ssize_t b1):
    """The regularizers' masks of sequences b0 .. b1 - 1, each made contiguous: rmask (B, H)
    rows, zh and zc (T, B, H) columns; None stays None."""
    out = []
    for masks in regular:
        if masks is None:
            out.append(None)
            continue
        rmask, zh, zc = masks
        out.append((None if rmask is None else np.ascontiguousarray(rmask[b0:b1]),
                    None if zh is None else np.ascontiguousarray(zh[:, b0:b1]),
                    None if zc is None else np.ascontiguousarray(zc[:, b0:b1])))
    return out


cdef object last_states(list bufs, Py_ssize_t T, Py_ssize_t D, bint cells=False):
    """h_last (L*D, B, H) (with `cells`, an LSTM's c_last), a new array: each layer-direction's
    state after its last step (the reverse direction's after step 0), the shards joined along
    the batch axis."""
    cdef Shard first = bufs[0], buf
    cdef list states = first.cs if cells else first.hs
    cdef Py_ssize_t LD = len(states), B = 0, j, b0 = 0
    a = states[0]
    if len(bufs) == 1:
        out = empty((LD, a.shape[1], a.shape[2]), a.dtype)
        for j in range(LD):
            out[j] = states[j][1 if j % D else T]
        return out
    for buf in bufs:
        B += buf.B
    out = empty((LD, B, a.shape[2]), a.dtype)
    for buf in bufs:
        states = buf.cs if cells else buf.hs
        for j in range(LD):
            out[j, b0:b0 + buf.B] = states[j][1 if j % D else T]
        b0 += buf.B
    return out


cdef tuple step_results(inputs, targets, h0, layers, Py_ssize_t D, Why, by, int code,
                        double slope, carry, Py_ssize_t k, windows, bint cross_entropy,
                        bint sum_reduction, bint input_grad, masks, threads,
                        int cell=CELL_ELMAN, c0=None, gains=None, regular=None):
    """``_stack_step``'s work: ``(loss, layer_grads, dWhy, dby, dh0, dx, h_last, grad_norms,
    dc0, c_last)``, every array new (the buffers are kept for the next call): sums over the
    shards in shard order, the per-sequence results joined along the batch axis. GRU's
    layer_grads hold dbhn after dbh, then (with ``gains``) the gains' gradients; dc0 and c_last
    are None but for LSTM."""
    cdef Py_ssize_t T = inputs.shape[0], B = inputs.shape[1], O = Why.shape[0], j
    cdef Py_ssize_t LD = len(layers)
    cdef double count = T * B if cross_entropy else T * B * O
    cdef double scale = 1.0 if sum_reduction else 1.0 / count
    cdef list bufs
    cdef double value
    bufs, value = run_sharded(inputs, targets, h0, layers, D, Why, by, code, slope, carry, k,
                              windows, scale, input_grad, 0, masks, threads, cell, c0, gains,
                              regular)
    if not sum_reduction:
        value /= count
    cdef Shard first = bufs[0], buf

    def per_layer(Shard buf, Py_ssize_t j):
        """Layer-direction j's gradients in one shard, in ``grads["layers"][j]`` order."""
        found = [buf.dWxh[j], buf.dWhh[j], buf.dbh[j]]
        if cell == CELL_GRU:
            found.append(buf.dbhn[j])
        if gains is not None:
            found += [buf.dgx[j], buf.dgh[j]]
            if cell == CELL_LSTM:
                found += [buf.dgc[j], buf.dbc[j]]
        return found

    layer_grads = [[g.copy() for g in per_layer(first, j)] for j in range(LD)]
    dWhy, dby = first.dWhy.copy(), first.dby.copy()
    dc0 = c_last = None
    if len(bufs) == 1:
        grad_norms = None if k else first.grad_norms.copy()
        dh0 = first.dh0.copy()
        dx = None if first.dx is None else first.dx.copy()
        if cell == CELL_LSTM:
            dc0, c_last = first.dc0.copy(), last_states(bufs, T, D, True)
        return (value, layer_grads, dWhy, dby, dh0, dx, last_states(bufs, T, D), grad_norms,
                dc0, c_last)
    for buf in bufs[1:]:
        for j in range(LD):
            for total, part in zip(layer_grads[j], per_layer(buf, j)):
                total += part
        dWhy += buf.dWhy
        dby += buf.dby
    grad_norms = None
    if not k:
        squares = first.grad_norms * first.grad_norms
        for buf in bufs[1:]:
            squares += buf.grad_norms * buf.grad_norms
        grad_norms = np.sqrt(squares)
    dh0 = np.concatenate([buf.dh0 for buf in bufs], axis=1)
    dx = None if first.dx is None else np.concatenate([buf.dx for buf in bufs], axis=1)
    if cell == CELL_LSTM:
        dc0 = np.concatenate([buf.dc0 for buf in bufs], axis=1)
        c_last = last_states(bufs, T, D, True)
    return (value, layer_grads, dWhy, dby, dh0, dx, last_states(bufs, T, D), grad_norms, dc0,
            c_last)


def _stack_step(inputs, targets, h0, layers, int num_directions, Why, by, int code,
                double slope, carry, Py_ssize_t k, windows, bint cross_entropy,
                bint sum_reduction, bint input_grad, masks, threads=None, int cell=0, c0=None,
                gains=None, regular=None):
    """The training step of a stack of ``L = len(layers) / num_directions`` Elman layers with
    an output layer and a loss, on arguments already checked by the model: C-contiguous arrays
    of one float dtype, consistent shapes, ids in range. ``layers[l * D + d] = (Wxh, Whh,
    bh)``; ``h0`` (L*D, B, H); ``masks`` (L-1, T, B, D*H) dropout multipliers of the inputs of
    layers 1 .. L-1, or None. The batch runs in ``shard_count(...)`` shards of consecutive
    sequences, on at most ``threads`` threads; the shards' gradients are summed in shard order,
    so the result is the same on any number. Returns ``(loss, grads, h_last, grad_norms)`` with
    ``grads = {"layers": [(dWxh, dWhh, dbh), ...], "Why", "by", "h0"[, "x"]}``; the NumPy twin
    (``numpy_fused._stack_step``) is the specification.

    Gated cells: ``cell`` 1 (LSTM, ``c0`` (L*D, B, H) required) or 2 (GRU, each ``layers[j] =
    (Wxh, Whh, bh, bhn)``), weights of G = 4H or 3H rows (``code``, ``slope`` unused). Then
    ``grads["layers"][j]`` has GRU's ``dbhn`` last, LSTM's ``grads["c0"]`` is there and
    ``h_last`` is the pair ``(h_last, c_last)``.

    Layer normalization (``norm="layer"``, ``cyrnn.norms``): ``gains[j] = (gx, gh)`` (G,) and,
    for LSTM, ``(gx, gh, gc, bc)``, of every layer-direction; ``grads["layers"][j]`` then ends
    with their gradients in that order. ``regular``: None, or each layer-direction's
    regularizers' masks ``(rmask (B, H), zh (T, B, H), zc (T, B, H))`` (each None where not
    used; the whole entry None for none; zh and zc in the direction's processing order),
    as ``cyrnn.norms.regime`` draws them; weight drop is the caller's: ``Whh * wmask`` in
    ``layers`` and ``wmask`` times its gradient. Full BPTT or carry scales only with either
    (``k`` 0)."""
    if (gains is not None or regular is not None) and k:
        raise ValueError("_stack_step: look-back windows do not run with layer normalization, "
                         "recurrent dropout or zoneout")
    value, layer_grads, dWhy, dby, dh0, dx, h_last, grad_norms, dc0, c_last = step_results(
        inputs, targets, h0, layers, num_directions, Why, by, code, slope, carry, k, windows,
        cross_entropy, sum_reduction, input_grad, masks, threads, cell, c0, gains, regular)
    grads = {"layers": [tuple(g) for g in layer_grads], "Why": dWhy, "by": dby, "h0": dh0}
    if dx is not None:
        grads["x"] = dx
    if dc0 is not None:
        grads["c0"] = dc0
        h_last = (h_last, c_last)
    return value, grads, h_last, grad_norms


def _stack_outputs(inputs, h0, layers, int num_directions, Why, by, int code, double slope,
                   int out_code, threads=None, int cell=0, c0=None, gains=None,
                   regular=None):
    """The forward pass of a stack (see ``_stack_step``): ``(y (T, B, O), h_last (L*D, B,
    H))``, y = g(z) with out_code 0 linear, 1 softmax, 2 sigmoid; an LSTM's ``h_last`` is the
    pair ``(h_last, c_last)``."""
    cdef Py_ssize_t T = inputs.shape[0]
    cdef list bufs
    cdef Shard buf
    bufs, _ = run_sharded(inputs, None, h0, layers, num_directions, Why, by, code, slope, None,
                          0, None, 1.0, False, out_code, None, threads, cell, c0, gains,
                          regular)
    # new arrays for the caller (the buffers are kept), the shards joined along the batch axis
    if len(bufs) == 1:
        y = (<Shard> bufs[0]).z.copy()
    else:
        y = np.concatenate([buf.z for buf in bufs], axis=1)
    if cell == CELL_LSTM:
        return y, (last_states(bufs, T, num_directions),
                   last_states(bufs, T, num_directions, True))
    return y, last_states(bufs, T, num_directions)


def elman_loss_and_grad(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *,
                        negative_slope=0.01, loss="cross_entropy", reduction="mean", carry=None,
                        window=None, input_grad=True, threads=None):
    """elman_loss_and_grad(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, loss="cross_entropy", reduction="mean", carry=None, window=None, input_grad=True, threads=None)

    A whole training step in one ``nogil`` call: the projection written straight into the state
    buffer, the recurrence in place, the output layer and the loss (dL/dz in place of the
    logits), BPTT in place of dh_out, and every weight gradient as one large GEMM. The full
    contract is the docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    return _elman_step(*_step_args(inputs, targets, h0, Wxh, Whh, bh, Why, by, nonlinearity,
                                   negative_slope, loss, reduction, carry, window),
                       loss == "cross_entropy", reduction == "sum", input_grad,
                       _checks.optional_positive_int("threads", threads))


def _elman_step(inputs, targets, h0, Wxh, Whh, bh, Why, by, int code, double slope, carry,
                Py_ssize_t k, windows, bint cross_entropy, bint sum_reduction, bint input_grad,
                threads=None):
    """``elman_loss_and_grad`` on arguments already checked by ``_step_args`` (or by the model,
    which checks the same things once for its own messages): a stack of one layer in one
    direction (see ``_stack_step``)."""
    value, layer_grads, dWhy, dby, dh0, dx, h_last, grad_norms, _, _ = step_results(
        inputs, targets, h0[None], ((Wxh, Whh, bh),), 1, Why, by, code, slope, carry, k, windows,
        cross_entropy, sum_reduction, input_grad, None, threads)
    dWxh, dWhh, dbh = layer_grads[0]
    result = {"Wxh": dWxh, "Whh": dWhh, "bh": dbh, "Why": dWhy, "by": dby, "h0": dh0[0]}
    if dx is not None:
        result["x"] = dx
    return value, result, h_last[0], grad_norms


def elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01,
                  output="linear", threads=None):
    """elman_forward(inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity="tanh", *, negative_slope=0.01, output="linear", threads=None)

    Projection, recurrence, output layer and output function in one ``nogil`` call, in shards
    of the batch on up to ``threads`` threads as the training step (with weights past
    LARGE_WEIGHTS, in as few shards as it has threads). The full contract is the
    docstring of the NumPy twin, copied here by ``cyrnn.kernels``.
    """
    inputs, h0, Wxh, Whh, bh, Why, by, code, slope = _model_args(
        inputs, h0, Wxh, Whh, bh, Why, by, nonlinearity, negative_slope)
    out_code = _output_code(output)  # 0 linear, 1 softmax, 2 sigmoid
    return _elman_outputs(inputs, h0, Wxh, Whh, bh, Why, by, code, slope, out_code,
                          _checks.optional_positive_int("threads", threads))


def _elman_outputs(inputs, h0, Wxh, Whh, bh, Why, by, int code, double slope, int out_code,
                   threads=None):
    """``elman_forward`` on checked arguments: a stack of one layer in one direction."""
    y, h_last = _stack_outputs(inputs, h0[None], ((Wxh, Whh, bh),), 1, Why, by, code, slope,
                               out_code, threads)
    return y, h_last[0]
