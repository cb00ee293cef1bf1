"""Compiled text generation: draw token ids from an Elman RNN language model, step by step.

``cyrnn.kernels.numpy_sample`` is the line-by-line twin of this module, with the same function,
arguments, results and errors; its docstring is the contract. The argument checks and the error
of a non-finite step are imported from there, so both backends raise identical messages.

``sample_tokens`` checks and converts its arguments in Python, allocates the result and all
workspaces with NumPy, then runs the whole generation in one ``nogil`` block: per step a row
gather, two GEMVs (recurrent and output layer) and fused loops over the hidden state and the
V logits. The probabilities are handled in float64 in both backends, so that they agree.
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport isfinite
from libc.string cimport memcpy

from cyrnn._act cimport activate, exp_f64_inplace
from cyrnn._blas cimport gemm

import numpy as np

from cyrnn.kernels.numpy_sample import _nonfinite_logits, _sample_args

cnp.import_array()


cdef inline void* data(object a):
    """Pointer to the first element of a checked C-contiguous ndarray."""
    return cnp.PyArray_DATA(<cnp.ndarray> a)


cdef floating top_k_threshold(const floating* z, Py_ssize_t V, Py_ssize_t k, floating* best,
                             Py_ssize_t* n_ties) noexcept nogil:
    """The k-th largest value t of z (counted with multiplicity), by a partial insertion sort
    into best (k,): O(V k) at worst, about O(V) for random logits. Also writes to n_ties how many
    entries equal to t are kept, so that exactly k are: every z[j] > t, then the n_ties lowest
    indices with z[j] == t."""
    cdef Py_ssize_t j, pos, filled = 0, greater = 0
    cdef floating v, t
    for j in range(V):
        v = z[j]
        if filled < k:
            pos = filled
            filled += 1
        elif v > best[k - 1]:
            pos = k - 1
        else:
            continue
        # best[:filled] stays sorted by decreasing value
        while pos > 0 and best[pos - 1] < v:
            best[pos] = best[pos - 1]
            pos -= 1
        best[pos] = v
    t = best[k - 1]
    for j in range(V):
        greater += z[j] > t
    n_ties[0] = k - greater
    return t


cdef Py_ssize_t choose(const floating* z, Py_ssize_t V, double u, double temperature,
                       Py_ssize_t top_k, floating* best, double* cdf) noexcept nogil:
    """One token id from the logits z (V,) and the uniform u; -1 if a logit is not finite."""
    cdef Py_ssize_t j, first_max = 0, n_ties = 0
    cdef floating zmax = z[0], t = 0
    cdef double total = 0, target
    cdef bint restrict = 0 < top_k < V, keep
    # finite check and greedy choice (the first maximum) in one pass
    for j in range(V):
        if not isfinite(z[j]):
            return -1
        if z[j] > zmax:
            zmax = z[j]
            first_max = j
    if temperature == 0:
        return first_max
    if restrict:
        t = top_k_threshold(z, V, top_k, best, &n_ties)
    # cdf[j] = sum_{i <= j} w_i, w_i = exp((z_i - zmax) / temperature) or 0 outside the top k,
    # in float64 and left to right (as NumPy's cumsum); the exps in one vectorized pass
    for j in range(V):
        cdf[j] = (<double> z[j] - <double> zmax) / temperature
    exp_f64_inplace(cdf, V)
    for j in range(V):
        if restrict:
            keep = z[j] > t
            if z[j] == t and n_ties > 0:
                keep = True
                n_ties -= 1
            if not keep:
                cdf[j] = total
                continue
        total += cdf[j]
        cdf[j] = total
    # inverse CDF: the first j with cdf[j] > u * total (one exists: u < 1 and total >= 1)
    target = u * total
    for j in range(V):
        if cdf[j] > target:
            return j
    return first_max  # unreachable


cdef Py_ssize_t generate(const floating* WxhT, const floating* bh, const floating* WhhT,
                         const floating* WhyT, const floating* by, floating* h, floating* a,
                         floating* z, floating* best, double* cdf, Py_ssize_t token,
                         const double* uniforms, Py_ssize_t* ids, Py_ssize_t n, Py_ssize_t V,
                         Py_ssize_t H, int code, floating slope, double temperature,
                         Py_ssize_t top_k) noexcept nogil:
    """Run the n steps from the state in h; the final state is left in h. Returns -1, or the
    first step whose logits are not finite."""
    cdef Py_ssize_t i, j
    cdef floating* swap
    for i in range(n):
        # a (H,) = WxhT[token] (H,) + bh (H,), the one-hot input's projection plus bias
        for j in range(H):
            a[j] = WxhT[token * H + j] + bh[j]
        # a (1, H) += h (1, H) Whh^T (H, H): a one-row product, which runs on cyrnn's own
        # kernel where the CPU has AVX-512 (faster than a GEMV on Whh), else as a GEMV
        gemm(False, False, 1, <int> H, <int> H, 1, h, <int> H, WhhT, <int> H, 1, a, <int> H)
        # h_new = f(a), and it becomes the state
        activate(a, H, code, slope)
        swap = h
        h = a
        a = swap
        # z (1, V) = h (1, H) Why^T (H, V) + by: a one-row product on cyrnn's own kernel (never
        # a threaded GEMV), else a GEMV of Why (V, H)
        memcpy(z, by, V * sizeof(floating))
        gemm(False, False, 1, <int> V, <int> H, 1, h, <int> H, WhyT, <int> V, 1, z, <int> V)
        token = choose(z, V, uniforms[i], temperature, top_k, best, cdf)
        if token < 0:
            return i
        ids[i] = token
    # the buffers swap every step: after an odd number of steps the final state is in the
    # caller's `a` buffer (now our h), so copy it back into the caller's `h` (now our a)
    if n % 2 == 1:
        memcpy(a, h, H * sizeof(floating))
    return -1


def sample_tokens(WxhT, bh, Whh, Why, by, h0, first_id, uniforms, nonlinearity="tanh", *,
                  negative_slope=0.01, temperature=1.0, top_k=0):
    """sample_tokens(WxhT, bh, Whh, Why, by, h0, first_id, uniforms, nonlinearity="tanh", *, negative_slope=0.01, temperature=1.0, top_k=0)

    Generate ``len(uniforms)`` token ids, feeding each back as the next input: per step a row
    gather, two GEMVs and fused loops, the whole loop without the GIL. The full contract is the
    docstring of the NumPy twin, which ``cyrnn.kernels`` copies here at import.
    """
    (WxhT, bh, Whh, Why, by, h0, first_id, uniforms, temperature, top_k, code,
     slope) = _sample_args(WxhT, bh, Whh, Why, by, h0, first_id, uniforms, nonlinearity,
                           negative_slope, temperature, top_k)
    cdef Py_ssize_t V = WxhT.shape[0], H = WxhT.shape[1], n = uniforms.shape[0]
    cdef Py_ssize_t token = first_id, k = top_k, failed
    cdef int c = code
    cdef double s = slope, temp = temperature
    dtype = WxhT.dtype
    ids = np.empty(n, dtype=np.intp)
    # the state, double-buffered: h_last is one buffer, and holds the final state on return
    h_last = h0.copy()
    work = np.empty(H, dtype=dtype)
    z = np.empty(V, dtype=dtype)
    best = np.empty(max(k, 1), dtype=dtype)
    cdf = np.empty(V, dtype=np.float64)
    cdef void* p_WxhT = data(WxhT)
    cdef void* p_bh = data(bh)
    # Whh^T, read row by row: one copy per call, amortized over the characters
    WhhT = np.ascontiguousarray(Whh.T)
    cdef void* p_WhhT = data(WhhT)
    WhyT = np.ascontiguousarray(Why.T)
    cdef void* p_Why = data(WhyT)
    cdef void* p_by = data(by)
    cdef void* p_h = data(h_last)
    cdef void* p_work = data(work)
    cdef void* p_z = data(z)
    cdef void* p_best = data(best)
    cdef double* p_cdf = <double*> data(cdf)
    cdef const double* p_u = <const double*> data(uniforms)
    cdef Py_ssize_t* p_ids = <Py_ssize_t*> data(ids)
    if dtype == np.float32:
        with nogil:
            failed = generate(<float*> p_WxhT, <float*> p_bh, <float*> p_WhhT, <float*> p_Why,
                              <float*> p_by, <float*> p_h, <float*> p_work, <float*> p_z,
                              <float*> p_best, p_cdf, token, p_u, p_ids, n, V, H, c,
                              <float> s, temp, k)
    else:
        with nogil:
            failed = generate(<double*> p_WxhT, <double*> p_bh, <double*> p_WhhT,
                              <double*> p_Why, <double*> p_by, <double*> p_h,
                              <double*> p_work, <double*> p_z, <double*> p_best, p_cdf,
                              token, p_u, p_ids, n, V, H, c, s, temp, k)
    if failed >= 0:
        raise _nonfinite_logits(failed)
    return ids, h_last
