"""The compiled normalized/regularized layer kernels (``cyrnn._recurrence``) against their NumPy
twin (``cyrnn.kernels.numpy_recurrence``), which is the specification.

Every cell (Elman, LSTM, GRU) x normalization (none, layer, batch in training, batch with fixed
statistics) x subset of {recurrent dropout, zoneout, lengths, carry} x dtype: the forward
records and the backward results agree (float64 to 1e-12, float32 to 1e-4, relative to each
array's largest value), with the same keys, shapes, dtypes and aliasing; inputs are never
written; bad arguments raise before any compiled code runs.
"""
import ast
import inspect
import itertools
import pathlib
import threading

import numpy as np
import pytest

import cyrnn
from cyrnn import kernels
from cyrnn.kernels import numpy_recurrence as twin

from cyrnn import _recurrence as compiled  # required: never pass on the fallback alone

ELMAN, LSTM, GRU = range(3)
NONE, LAYER, BATCH, BATCH_FIXED = range(4)
GATES = (1, 4, 3)
TOL = {np.float32: 1e-4, np.float64: 1e-12}
OPTIONS = ("rmask", "zoneout", "lengths", "carry")
SUBSETS = [subset for k in range(len(OPTIONS) + 1)
           for subset in itertools.combinations(OPTIONS, k)]


def make_case(cell, norm, options, dtype, T=6, B=5, H=3, seed=0, code=0, slope=0.0):
    """``(forward args, forward kwargs, backward kwargs, dh_out)`` for one configuration.

    With lengths, [T - 1, 2, 1, 0, T - 1] (cut or repeated to B, at most T): the last step has
    no active sequence, steps 2 .. T - 2 have two (one with B = 3), step 1 three; a sequence is
    empty."""
    rng = np.random.default_rng(seed)
    G = GATES[cell] * H

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    P, h0, Whh = normal(T, B, G), normal(B, H), normal(G, H) * dtype(0.6)
    c0 = normal(B, H) if cell == LSTM else None
    bhn = normal(H) if cell == GRU else None
    fwd = dict(act=(code, slope), norm=norm)
    if norm:
        fwd["gh"] = 1 + normal(G) * dtype(0.2)
        if cell == LSTM:
            fwd["gc"], fwd["bc"] = 1 + normal(H) * dtype(0.2), normal(H) * dtype(0.2)
    if norm == BATCH_FIXED:
        stats = (normal(T, G), np.abs(normal(T, G)) + dtype(0.3))
        fwd["stats"] = stats + ((normal(T, H), np.abs(normal(T, H)) + dtype(0.3))
                                if cell == LSTM else (None, None))
    if "rmask" in options:
        fwd["rmask"] = (rng.random((B, H)) >= 0.3).astype(dtype) / dtype(0.7)
    if "zoneout" in options:
        fwd["zh"] = (rng.random((T, B, H)) < 0.3).astype(dtype)
        if cell == LSTM:
            fwd["zc"] = (rng.random((T, B, H)) < 0.3).astype(dtype)
    if "lengths" in options:
        fwd["lengths"] = np.minimum(np.resize(np.array([T - 1, 2, 1, 0, T - 1], np.intp), B), T)
    bwd = {k: v for k, v in fwd.items() if k != "stats"}
    if "carry" in options:
        carry = rng.uniform(0.5, 1.5, T).astype(dtype)
        carry[T // 2] = 0  # a cut
        bwd["carry"] = carry
    return (cell, P, h0, c0, Whh, bhn), fwd, bwd, normal(T, B, H)


def assert_close(got, want, dtype, name):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    if want.size:
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                   err_msg=name)


def check_against_twin(args, fwd, bwd, dh_out, dtype):
    rec = compiled.recurrence_forward(*args, **fwd)
    ref = twin.recurrence_forward(*args, **fwd)
    assert list(rec) == list(ref)
    for key in ref:
        assert_close(rec[key], ref[key], dtype, key)
    cell, Whh = args[0], args[4]
    got = compiled.recurrence_backward(cell, ref, dh_out, Whh, **bwd)
    want = twin.recurrence_backward(cell, ref, dh_out, Whh, **bwd)
    assert (got[1] is got[0]) == (want[1] is want[0])
    for name, g, w in zip(("dP", "dR", "dh0", "dc0", "grad_norms"), got[:5], want[:5]):
        if w is None:
            assert g is None, name
        else:
            assert_close(g, w, dtype, name)
    assert list(got[5]) == list(want[5])
    for key in want[5]:
        assert_close(got[5][key], want[5][key], dtype, "extra " + key)
    return rec, got


# ---------------------------------------------------------------------------------------------
# agreement with the twin
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("options", SUBSETS, ids=lambda s: "+".join(s) or "plain")
@pytest.mark.parametrize("norm", range(4), ids=["none", "layer", "batch", "batch_fixed"])
@pytest.mark.parametrize("cell", range(3), ids=["elman", "lstm", "gru"])
def test_compiled_matches_twin(cell, norm, options, dtype):
    check_against_twin(*make_case(cell, norm, options, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("norm", range(4), ids=["none", "layer", "batch", "batch_fixed"])
@pytest.mark.parametrize("cell", range(3), ids=["elman", "lstm", "gru"])
@pytest.mark.parametrize("T, B, H", [(1, 1, 1), (1, 4, 2), (7, 1, 5), (9, 3, 17), (4, 33, 8)])
def test_compiled_matches_twin_on_other_sizes(cell, norm, T, B, H, dtype):
    options = ("rmask", "zoneout", "carry") + (("lengths",) if B >= 3 else ())
    check_against_twin(*make_case(cell, norm, options, dtype, T=T, B=B, H=H, seed=T * B), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", range(3), ids=["elman", "lstm", "gru"])
def test_compiled_matches_twin_where_products_use_packed_weights(cell, dtype):
    """Sizes whose per-step products run on cyrnn's own kernel with Whh packed in panels."""
    T, B, H = 3, 32, 256
    G = GATES[cell] * H
    assert compiled._panels(np.zeros((H, G), dtype), B) is not None  # the path under test
    options = ("rmask", "zoneout", "lengths", "carry")
    check_against_twin(*make_case(cell, LAYER, options, dtype, T=T, B=B, H=H, seed=5), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("code, slope", [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.1), (4, 0.0)])
@pytest.mark.parametrize("norm", [NONE, LAYER, BATCH])
def test_every_elman_nonlinearity(code, slope, norm, dtype):
    check_against_twin(*make_case(ELMAN, norm, ("zoneout", "lengths"), dtype, code=code,
                                  slope=slope), dtype)


@pytest.mark.parametrize("cell", range(3))
def test_batch_statistics_with_zero_and_one_active_sequence(cell):
    """lengths [T-1, 2, 1, 0, T-1] leave step T-1 with no sequence and let steps with one
    sequence have zero variance: the statistics and the gradients still agree."""
    args, fwd, bwd, dh = make_case(cell, BATCH, ("lengths",), np.float64, B=3)
    rec, _ = check_against_twin(args, fwd, bwd, dh, np.float64)
    T = args[1].shape[0]
    assert rec["count"].tolist() == [3, 2] + [1] * (T - 3) + [0]
    assert np.all(rec["rhat"][-1] == 0) and np.all(rec["rstd_h"][-1] == 1)
    assert np.all(rec["var_h"][2:] == 0)


def test_strided_inputs_are_accepted_and_agree():
    args, fwd, bwd, dh = make_case(GRU, LAYER, ("rmask", "lengths"), np.float64)
    P = np.asfortranarray(args[1])
    Whh = np.ascontiguousarray(np.concatenate([args[4], args[4]], axis=1))[:, ::2]
    strided = (args[0], P, args[2][:, :], args[3], Whh, args[5][::-1][::-1])
    assert not P.flags.c_contiguous and not Whh.flags.c_contiguous
    check_against_twin(strided, fwd, bwd, np.asfortranarray(dh), np.float64)


@pytest.mark.parametrize("T, B", [(0, 3), (4, 0)])
def test_empty_sequences_and_batches_give_the_twins_results(T, B):
    args, fwd, bwd, dh = make_case(LSTM, LAYER, ("zoneout",), np.float64, T=T, B=B)
    check_against_twin(args, fwd, bwd, dh, np.float64)


def test_inputs_are_not_written():
    for cell, norm in itertools.product(range(3), range(4)):
        args, fwd, bwd, dh = make_case(cell, norm, OPTIONS, np.float32)
        inputs = [a for a in args[1:] if a is not None] + [dh] + [
            v for v in list(fwd.values()) + list(bwd.values()) if isinstance(v, np.ndarray)]
        inputs += [s for s in fwd.get("stats", ()) if s is not None]
        copies = [a.copy() for a in inputs]
        rec = compiled.recurrence_forward(*args, **fwd)
        rec_copies = {k: v.copy() for k, v in rec.items()}
        compiled.recurrence_backward(cell, rec, dh, args[4], **bwd)
        for a, c in zip(inputs, copies):
            np.testing.assert_array_equal(a, c)
        for k in rec:
            np.testing.assert_array_equal(rec[k], rec_copies[k], err_msg=k)


def test_kernels_release_the_gil_and_run_in_threads():
    args, fwd, bwd, dh = make_case(LSTM, LAYER, ("zoneout", "lengths"), np.float64, T=30,
                                   B=8, H=16)
    want = compiled.recurrence_backward(LSTM, compiled.recurrence_forward(*args, **fwd), dh,
                                        args[4], **bwd)
    results = [None] * 4

    def run(i):
        rec = compiled.recurrence_forward(*args, **fwd)
        results[i] = compiled.recurrence_backward(LSTM, rec, dh, args[4], **bwd)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got in results:
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[2], want[2])


# ---------------------------------------------------------------------------------------------
# registration, signatures
# ---------------------------------------------------------------------------------------------

def test_codes_and_eps_match_the_twin():
    assert compiled.CONSTANTS == {name: getattr(twin, name) for name in compiled.CONSTANTS}
    assert (ELMAN, LSTM, GRU, NONE, LAYER, BATCH, BATCH_FIXED) == (
        twin.ELMAN, twin.LSTM, twin.GRU, twin.NONE, twin.LAYER, twin.BATCH, twin.BATCH_FIXED)


def test_compiled_backend_runs_the_compiled_kernels():
    backend = kernels.get_backend("cython")
    assert backend.recurrence_forward is compiled.recurrence_forward
    assert backend.recurrence_backward is compiled.recurrence_backward
    assert backend.recurrence_forward.__doc__ == twin.recurrence_forward.__doc__


@pytest.mark.parametrize("name", ["recurrence_forward", "recurrence_backward"])
def test_signatures_match_the_twin_and_the_stub(name):
    def rows(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    assert rows(getattr(compiled, name)) == rows(getattr(twin, name))
    stub = pathlib.Path(cyrnn.__file__).with_name("_recurrence.pyi")
    node = next(n for n in ast.parse(stub.read_text()).body
                if isinstance(n, ast.FunctionDef) and n.name == name)
    kwonly = [(a.arg, ast.literal_eval(d)) for a, d in zip(node.args.kwonlyargs,
                                                             node.args.kw_defaults)]
    assert [a.arg for a in node.args.args] == [r[0] for r in rows(getattr(twin, name))
                                              if r[1] == inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert kwonly == [(r[0], r[2]) for r in rows(getattr(twin, name))
                      if r[1] == inspect.Parameter.KEYWORD_ONLY]


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------

def _forward_case():
    return make_case(LSTM, BATCH_FIXED, OPTIONS, np.float64)


@pytest.mark.parametrize("change, error, match", [
    (lambda a, k: a.__setitem__(0, 3), ValueError, r"cell: expected an int in \[0, 3\)"),
    (lambda a, k: a.__setitem__(0, 1.0), TypeError, "cell: expected an int"),
    (lambda a, k: k.__setitem__("norm", 4), ValueError, r"norm: expected an int in \[0, 4\)"),
    (lambda a, k: a.__setitem__(1, a[1][:, :, :-1]), ValueError, r"P: expected shape \(6, 5, 12\)"),
    (lambda a, k: a.__setitem__(1, a[1][0]), ValueError, "P: expected 3 dimensions"),
    (lambda a, k: a.__setitem__(1, a[1].tolist()), TypeError, "P: expected a numpy.ndarray"),
    (lambda a, k: a.__setitem__(1, a[1].astype(np.int64)), TypeError, "P: expected dtype float"),
    (lambda a, k: a.__setitem__(2, a[2].astype(np.float32)), TypeError,
     "h0: expected dtype float64"),
    (lambda a, k: a.__setitem__(2, a[2][:-1]), ValueError, r"h0: expected shape \(5, 3\)"),
    (lambda a, k: a.__setitem__(3, None), TypeError, "c0: expected a numpy.ndarray"),
    (lambda a, k: a.__setitem__(4, a[4].T), ValueError, r"Whh: expected shape \(12, 3\)"),
    (lambda a, k: k.__setitem__("gh", k["gh"][:-1]), ValueError, r"gh: expected shape \(12,\)"),
    (lambda a, k: k.__setitem__("gc", None), TypeError, "gc: expected a numpy.ndarray"),
    (lambda a, k: k.__setitem__("stats", k["stats"][:2]), ValueError, "stats: expected"),
    (lambda a, k: k.__setitem__("stats", (k["stats"][0][1:],) + k["stats"][1:]), ValueError,
     r"stats\[0\] \(mean_h\): expected shape \(6, 12\)"),
    (lambda a, k: k.__setitem__("rmask", k["rmask"][:, :1]), ValueError, r"rmask: expected shape"),
    (lambda a, k: k.__setitem__("zh", k["zh"][1:]), ValueError, r"zh: expected shape \(6, 5, 3\)"),
    (lambda a, k: k.__setitem__("zc", k["zc"].astype(np.float32)), TypeError, "zc: expected dtype"),
    (lambda a, k: k.__setitem__("lengths", np.array([7, 1, 1, 1, 1])), ValueError,
     r"lengths: expected values in \[0, 6\]"),
    (lambda a, k: k.__setitem__("lengths", np.ones(4, int)), ValueError,
     r"lengths: expected shape \(5,\)"),
    (lambda a, k: k.__setitem__("lengths", np.ones(5)), TypeError, "lengths: expected integers"),
    (lambda a, k: k.__setitem__("act", 0), TypeError, "act: expected a pair"),
    (lambda a, k: k.__setitem__("act", (5, 0.0)), ValueError, r"act\[0\]: expected an int"),
    (lambda a, k: k.__setitem__("act", (3, -1.0)), ValueError, "negative_slope"),
])
def test_bad_forward_arguments_raise(change, error, match):
    args, fwd, _, _ = _forward_case()
    args = list(args)
    change(args, fwd)
    with pytest.raises(error, match=match):
        compiled.recurrence_forward(*args, **fwd)


@pytest.mark.parametrize("change, error, match", [
    (lambda r, a, k: r.pop("chat"), ValueError, "rec: missing 'chat'"),
    (lambda r, a, k: r.__setitem__("cs", r["cs"][1:]), ValueError,
     r"rec\['cs'\]: expected shape \(7, 5, 3\)"),
    (lambda r, a, k: r.__setitem__("rstd_h", r["rstd_h"][:, :, 0]), ValueError,
     r"rec\['rstd_h'\]: expected 3 dimensions"),
    (lambda r, a, k: r.__setitem__("gates", r["gates"].astype(np.float32)), TypeError,
     r"rec\['gates'\]: expected dtype float64"),
    (lambda r, a, k: a.__setitem__(0, a[0][:, :, :-1]), ValueError,
     r"Whh: expected shape \(8, 2\)"),
    (lambda r, a, k: a.__setitem__(0, a[0][:, :-1]), ValueError,
     r"rmask: expected shape \(4, 3\)"),
    (lambda r, a, k: a.__setitem__(1, a[1][:-1]), ValueError, r"Whh: expected shape \(12, 3\)"),
    (lambda r, a, k: k.__setitem__("carry", np.ones(5)), ValueError,
     r"carry: expected shape \(6,\)"),
    (lambda r, a, k: k.__setitem__("carry", np.array([np.inf] * 6)), ValueError,
     "carry: expected finite"),
    (lambda r, a, k: k.__setitem__("norm", "layer"), TypeError, "norm: expected an int"),
])
def test_bad_backward_arguments_raise(change, error, match):
    args, fwd, bwd, dh = make_case(LSTM, LAYER, OPTIONS, np.float64)
    rec = dict(twin.recurrence_forward(*args, **fwd))
    rest = [dh, args[4]]
    change(rec, rest, bwd)
    with pytest.raises(error, match=match):
        compiled.recurrence_backward(LSTM, rec, *rest, **bwd)


def test_backward_needs_a_dict_record():
    args, fwd, bwd, dh = make_case(ELMAN, NONE, (), np.float64)
    with pytest.raises(TypeError, match="rec: expected the dict"):
        compiled.recurrence_backward(ELMAN, [1, 2], dh, args[4], **bwd)


# ---------------------------------------------------------------------------------------------
# the models that run these kernels: both backends agree
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", [dict(norm="layer"), dict(norm="batch"),
                                     dict(zoneout=0.2, recurrent_dropout=0.3),
                                     dict(norm="batch", zoneout=0.3, weight_drop=0.2,
                                          num_layers=2, bidirectional=True)],
                         ids=["layer", "batch", "zoneout+dropout", "all"])
@pytest.mark.parametrize("cls", [cyrnn.RNN, cyrnn.LSTM, cyrnn.GRU], ids=lambda c: c.__name__)
def test_models_agree_across_backends(cls, options, dtype):
    rng = np.random.default_rng(0)
    T, B, I, H, O = 6, 4, 5, 7, 3
    x = rng.standard_normal((T, B, I)).astype(dtype)
    y = rng.standard_normal((T, B, O)).astype(dtype)
    results = []
    for backend in ("numpy", "cython"):
        model = cls(I, H, O, dtype=dtype, seed=0, backend=backend, **options)
        loss, grads, _ = model.loss_and_grad(x, y, lengths=[6, 3, 1, 5], dropout_seed=1)
        results.append((loss, grads, model.forward(x)[0]))
    (l1, g1, o1), (l2, g2, o2) = results
    tol = TOL[np.dtype(dtype).type]
    assert abs(l1 - l2) <= tol * max(1, abs(l1))
    assert g1.keys() == g2.keys()
    for key in g1:
        assert_close(g2[key], g1[key], np.dtype(dtype).type, key)
    assert_close(o2, o1, np.dtype(dtype).type, "forward")


# ---------------------------------------------------------------------------------------------
# layer normalization of whole-sequence rows (the input term of a layer-normed recurrence)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("rows, width", [(1, 1), (7, 3), (40, 37), (3, 130)])
def test_layer_norm_rows_matches_the_twin(dtype, rtol, rows, width):
    rng = np.random.default_rng(rows * width)
    x = (rng.standard_normal((rows, width)) * 3 + 1).astype(dtype)
    gain = rng.standard_normal(width).astype(dtype)
    dy = rng.standard_normal((rows, width)).astype(dtype)
    before = x.copy(), gain.copy(), dy.copy()
    found = compiled.layer_norm_rows(x, gain)
    expected = twin.layer_norm_rows(x, gain)
    for a, b in zip(found, expected):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    back = compiled.layer_norm_rows_backward(dy, found[1], found[2], gain)
    want = twin.layer_norm_rows_backward(dy, expected[1], expected[2], gain)
    for a, b in zip(back, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol * 10, atol=rtol * 10)
    for a, b in zip((x, gain, dy), before):
        np.testing.assert_array_equal(a, b)  # inputs unchanged


@pytest.mark.parametrize("args, error, match", [
    ((np.zeros((2, 3)), np.ones(4)), ValueError, "gain"),
    ((np.zeros((2, 3)), np.ones(3, np.float32)), TypeError, "gain"),
    ((np.zeros(3), np.ones(3)), ValueError, "x"),
    (([[0.0, 1.0]], np.ones(2)), TypeError, "x"),
    ((np.zeros((2, 3), np.int64), np.ones(3)), TypeError, "x"),
])
def test_layer_norm_rows_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        compiled.layer_norm_rows(*args)
