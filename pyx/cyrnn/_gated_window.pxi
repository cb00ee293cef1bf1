# The windowed BPTT loops of the gated cells (look-back windows, by depth), over C pointers:
# included by _gated.pyx (the layer kernels lstm_backward_window, gru_backward_window) and by
# _stack.pxi (the fused stack step), so that both compile the same loop. The includer provides
# lstm_cell_backward, gru_cell_backward (the epilogues of _gated.h), add, gemm, memset.


cdef void lstm_backward_window_loop(const floating* cs, const floating* gates, const floating* Whh,
                               const Py_ssize_t* lengths, const Py_ssize_t* windows,
                               Py_ssize_t longest, floating* Gh, floating* Gc, floating* dA,
                               floating* da, floating* reach_a, floating* dh0, floating* dc0,
                               Py_ssize_t T, Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    # Gh, Gc (T, B, H) are indexed by output t: at depth j, what the output at step t sends into
    # the states after step s = t - j (on entry Gh = dh_out, Gc = 0). dA (T, B, 4H) is indexed
    # by step s: that output's share of da_s. `windows` is NULL when every output looks back
    # `longest` steps. On entry da, reach_a and dc0 are zero.
    cdef Py_ssize_t BH = B * H, G = 4 * H, BG = B * G, j, S, s, t, b
    cdef Py_ssize_t row
    for j in range(min(longest, T)):
        S = T - j
        # the epilogue of step s = t - j for the outputs t = j .. T-1, all at once; zero where
        # output t does not reach back to step s (j >= k_t) or step s is padding
        if windows == NULL and lengths == NULL:
            lstm_cell_backward(Gh + j * BH, Gc + j * BH, gates, cs, cs + BH, dA, 1, S * B, H)
        else:
            for s in range(S):
                t = s + j
                if windows != NULL and j >= windows[t]:
                    memset(dA + s * BG, 0, BG * sizeof(floating))
                    memset(Gc + t * BH, 0, BH * sizeof(floating))
                elif lengths == NULL:
                    lstm_cell_backward(Gh + t * BH, Gc + t * BH, gates + s * BG, cs + s * BH,
                                       cs + (s + 1) * BH, dA + s * BG, 1, B, H)
                else:
                    for b in range(B):
                        row = s * BH + b * H
                        if s < lengths[b]:
                            lstm_cell_backward(Gh + j * BH + row, Gc + j * BH + row,
                                               gates + s * BG + b * G, cs + row, cs + BH + row,
                                               dA + s * BG + b * G, 1, 1, H)
                        else:
                            memset(dA + s * BG + b * G, 0, G * sizeof(floating))
                            memset(Gc + j * BH + row, 0, H * sizeof(floating))
        add(da, dA, S * BG)
        if j <= (longest if windows == NULL else windows[j]) - 2:
            # output j's window includes step -1: what it sends through step 0 goes on to h0, c0
            add(reach_a, dA, BG)
            add(dc0, Gc + j * BH, BH)
        if S > 1:
            # Gh_{j+1}[t] ((S-1)*B, H) = dA_j[t - j] ((S-1)*B, 4H) Whh (4H, H), t = j+1 .. T-1
            gemm(False, False, <int> ((S - 1) * B), <int> H, <int> G, 1, dA + BG, <int> G, Whh,
                 <int> H, 0, Gh + (j + 1) * BH, <int> H)
    # dh0 (B, H) = reach_a (B, 4H) Whh (4H, H)
    gemm(False, False, <int> B, <int> H, <int> G, 1, reach_a, <int> G, Whh, <int> H, 0, dh0,
         <int> H)


cdef void gru_backward_window_loop(const floating* hs, const floating* gates, const floating* hn,
                                   const floating* Whh, const Py_ssize_t* lengths,
                                   const Py_ssize_t* windows, Py_ssize_t longest, floating* Gh,
                                   floating* Gnext, floating* dX, floating* dRj, floating* dxw,
                                   floating* dR, floating* reach_R, floating* dh0, Py_ssize_t T,
                                   Py_ssize_t B, Py_ssize_t H) noexcept nogil:
    # As lstm_backward_window_loop: Gh and Gnext (T, B, H) indexed by output t (on entry Gh =
    # dh_out), swapped each depth; dX and dRj (T, B, 3H) by step s = t - j. On entry dxw, dR,
    # reach_R and dh0 are zero.
    cdef Py_ssize_t BH = B * H, G = 3 * H, BG = B * G, j, S, s, t, b, row
    cdef floating* swap
    for j in range(min(longest, T)):
        S = T - j
        # the epilogue of step s = t - j for the outputs t = j .. T-1; Gnext[t] = Gh[t] z
        if windows == NULL and lengths == NULL:
            gru_cell_backward(Gh + j * BH, gates, hn, hs, dX, dRj, Gnext + j * BH, 1, S * B, H)
        else:
            for s in range(S):
                t = s + j
                if windows != NULL and j >= windows[t]:
                    memset(dX + s * BG, 0, BG * sizeof(floating))
                    memset(dRj + s * BG, 0, BG * sizeof(floating))
                    memset(Gnext + t * BH, 0, BH * sizeof(floating))
                elif lengths == NULL:
                    gru_cell_backward(Gh + t * BH, gates + s * BG, hn + s * BH, hs + s * BH,
                                      dX + s * BG, dRj + s * BG, Gnext + t * BH, 1, B, H)
                else:
                    for b in range(B):
                        row = s * BH + b * H
                        if s < lengths[b]:
                            gru_cell_backward(Gh + j * BH + row, gates + s * BG + b * G,
                                              hn + row, hs + row, dX + s * BG + b * G,
                                              dRj + s * BG + b * G, Gnext + j * BH + row, 1, 1,
                                              H)
                        else:
                            memset(dX + s * BG + b * G, 0, G * sizeof(floating))
                            memset(dRj + s * BG + b * G, 0, G * sizeof(floating))
                            memset(Gnext + j * BH + row, 0, H * sizeof(floating))
        add(dxw, dX, S * BG)
        add(dR, dRj, S * BG)
        if j <= (longest if windows == NULL else windows[j]) - 2:
            # output j's window includes step -1: what it sends through step 0 goes on to h0
            add(reach_R, dRj, BG)
            add(dh0, Gnext + j * BH, BH)
        if S > 1:
            # Gh_{j+1}[t] ((S-1)*B, H) = dR_j[t - j] ((S-1)*B, 3H) Whh (3H, H) + Gh_j[t] z
            gemm(False, False, <int> ((S - 1) * B), <int> H, <int> G, 1, dRj + BG, <int> G, Whh,
                 <int> H, 1, Gnext + (j + 1) * BH, <int> H)
        swap = Gh
        Gh = Gnext
        Gnext = swap
    # dh0 (B, H) += reach_R (B, 3H) Whh (3H, H)
    gemm(False, False, <int> B, <int> H, <int> G, 1, reach_R, <int> G, Whh, <int> H, 1, dh0,
         <int> H)
