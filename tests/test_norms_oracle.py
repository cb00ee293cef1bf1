"""Torch autograd as the oracle of normalized (and regularized) recurrences, float64, rtol 1e-9.

The reference (``ref_stack``) is written from the equations of ``cyrnn.norms`` as a per-step
Python loop over torch tensors, for every cell, layer and direction ``j`` (suffix ``s``)::

    P_t  = N_x(x_t Wxh^T) * gx + bh
    R_t  = (h_{t-1} * rmask) (Whh * wmask)^T,      Rn_t = N_h(R_t) * gh
    Elman  ~h = f(P_t + Rn_t)
    LSTM   [i f g o] = P_t + Rn_t,  ~c = s(f) c + s(i) tanh(g),  ~h = s(o) tanh(N_c(~c) gc + bc)
    GRU    r, z = s(P_rz + Rn_rz),  n = tanh(P_n + r (Rn_n + bhn)),  ~h = (1 - z) n + z h
    h_t  = zh h_{t-1} + (1 - zh) ~h                (LSTM: c_t likewise with zc)

``N`` is layer normalization (each row over its G or H values, biased variance, eps 1e-5 in the
root), batch normalization in training (each column over the active rows of the processing
step, biased variance) or, at inference, the running statistics of the processing step (the
last step's beyond the steps trained on; mean 0 and variance 1 before any). Padded steps keep
the states and carry no loss; the reverse direction runs each sequence reversed within its own
length, so its steps (and batch statistics) are processing steps.

1. Loss, every gradient (weights, gains, ``h0``, ``c0``, ``x``), the last states and
   ``forward``'s outputs for ``norm="layer"`` and ``"batch"``, every cell and every (layers,
   directions) pair; the other axes (tokens, lengths, target_steps, h0 given) follow an
   orthogonal array, not the full product.
2. Batch normalization's running statistics after one and two training calls (the second
   longer than the first) against one ``torch.nn.functional.batch_norm`` (momentum 0.1, no
   affine) per term and step, and ``forward`` / ``evaluate`` with them, beyond the trained
   length too.
3. The regularizers' masks, rebuilt from ``dropout_seed`` in the documented order, in the same
   reference: the documented order is what the library draws.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch_oracle import RTOL, assert_close, leaf, np_grad, one_torch_thread  # noqa: E402,F401

import cyrnn  # noqa: E402

F = torch.nn.functional

EPS = 1e-5
MOMENTUM = 0.1
T, B, I, H, O = 5, 4, 5, 3, 2
LENGTHS = np.array([5, 2, 4, 3])  # unsorted; the last step has one active sequence
CELLS = {"elman": cyrnn.RNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}
GATES = {"elman": 1, "lstm": 4, "gru": 3}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def suffix(layer, d):
    return ("" if layer == 0 else f"_l{layer}") + ("_reverse" if d else "")


def perturb_gains(model, rng):
    """Gains and the LSTM's ``bc`` away from their initial values (1 or 0.1, and 0), so that
    their gradients and their place in the equations are both seen."""
    for name, p in model.params.items():
        if name.startswith(("gx", "gh", "gc")):
            p[...] = rng.uniform(0.5, 1.5, size=p.shape)
        elif name.startswith("bc"):
            p[...] = rng.normal(scale=0.3, size=p.shape)


class RunningRef:
    """Running statistics per (term name, processing step): torch's ``batch_norm`` buffers,
    one pair per step, grown with mean 0 and variance 1."""

    def __init__(self):
        self.stats = {}  # "x_l1_reverse" -> list of (mean, var) tensors

    def update(self, key, t, rows):
        """One training step's values ``rows`` (n, N) of term ``key`` at step ``t``; steps
        with fewer than two sequences leave the statistics unchanged (torch refuses them) and
        are not added: the statistics grow to the last step two sequences reach."""
        steps = self.stats.setdefault(key, [])
        width = rows.shape[1]
        if rows.shape[0] < 2:
            return
        while len(steps) <= t:
            steps.append((torch.zeros(width, dtype=torch.float64),
                          torch.ones(width, dtype=torch.float64)))
        mean, var = steps[t]
        F.batch_norm(rows.detach(), mean, var, training=True, momentum=MOMENTUM, eps=EPS)

    def at(self, key, t, width):
        steps = self.stats.get(key, [])
        if not steps:
            return (torch.zeros(width, dtype=torch.float64),
                    torch.ones(width, dtype=torch.float64))
        return steps[min(t, len(steps) - 1)]

    def arrays(self, key):
        steps = self.stats[key]
        return (torch.stack([m for m, _ in steps]).numpy(),
                torch.stack([v for _, v in steps]).numpy())


def normalize(x, kind, active=None, stats=None):
    """N(x) for x (B, N): ``layer`` per row; ``batch`` per column over the ``active`` rows;
    ``fixed`` with ``stats = (mean, var)``. Always the biased variance, eps in the root."""
    if kind == "layer":
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
    elif kind == "batch":
        xa = x[active]
        mean = xa.mean(0)
        var = ((xa - mean) ** 2).mean(0)
    else:
        mean, var = stats
    return (x - mean) / torch.sqrt(var + EPS)


def activation(name, a):
    return {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[name](a)


def ref_stack(cell, P, X, h0, c0, L, D, lengths, norm, *, training, running=None,
              masks=None, zoneout=0.0, nonlinearity="tanh", carry=None):
    """``(top (T, B, D*H), h_last (L*D, B, H), c_last or None)`` of the equations above.

    ``P`` the parameters (torch leaves, cyrnn names), ``X`` (T, B, I) values, ``h0``, ``c0``
    (L*D, B, H). ``norm`` None, "layer" or "batch"; batch normalization uses the batch's
    statistics with ``training`` (and then feeds ``running``, a ``RunningRef``) or ``running``'s.
    ``masks`` (training): ``{"layers": (L-1, T, B, D*H) or None, j: {"rmask", "zh", "zc",
    "wmask"}}``; at inference zoneout is the rate ``zoneout`` everywhere. ``carry`` (T,): the
    states entering processing step t are ``h.detach() + carry[t] (h - h.detach())`` (and
    ``c``) for every use in the step; a padded step keeps the state itself."""
    Tn, Bn = X.shape[:2]
    Hn = h0.shape[-1]
    lens = np.full(Bn, Tn) if lengths is None else np.asarray(lengths)
    t_idx = np.arange(Tn)[:, None]
    steps = np.where(t_idx < lens[None, :], lens[None, :] - 1 - t_idx, t_idx)
    rows = np.arange(Bn)[None, :]
    active = torch.as_tensor(t_idx < lens[None, :])  # (T, B): also in processing order
    kind = None if norm is None else ("layer" if norm == "layer" else
                                      ("batch" if training else "fixed"))
    h_last, c_last = [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            j, s = layer * D + d, suffix(layer, d)
            m = {} if masks is None else masks.get(j, {})
            Xd = X[steps, rows] if d else X

            def N(term, x, t):
                if kind == "batch" and running is not None:
                    running.update(term + s, t, x[active[t]])
                stats = running.at(term + s, t, x.shape[-1]) if kind == "fixed" else None
                return normalize(x, kind, active[t], stats)

            A = Xd @ P["Wxh" + s].T  # (T, B, G)
            W = P["Whh" + s] if m.get("wmask") is None else P["Whh" + s] * m["wmask"]
            h = h0[j]
            c = c0[j] if cell == "lstm" else None
            hs = []
            for t in range(Tn):
                on = active[t][:, None]
                if not bool(on.any()):  # no sequence reaches this processing step
                    hs.append(h)
                    continue
                Pt = A[t] if kind is None else N("x", A[t], t) * P["gx" + s]
                Pt = Pt + P["bh" + s]
                hp, cp = h, c
                if carry is not None:
                    k = float(carry[t])
                    hp = h.detach() + k * (h - h.detach())
                    if cell == "lstm":
                        cp = c.detach() + k * (c - c.detach())
                hin = hp if m.get("rmask") is None else hp * m["rmask"]
                R = hin @ W.T
                Rn = R if kind is None else N("h", R, t) * P["gh" + s]
                c_new = None
                if cell == "elman":
                    h_new = activation(nonlinearity, Pt + Rn)
                elif cell == "lstm":
                    i, f, g, o = (Pt + Rn).chunk(4, -1)
                    c_new = torch.sigmoid(f) * cp + torch.sigmoid(i) * torch.tanh(g)
                    cn = c_new if kind is None else N("c", c_new, t) * P["gc" + s] + P["bc" + s]
                    h_new = torch.sigmoid(o) * torch.tanh(cn)
                else:
                    r = torch.sigmoid(Pt[:, :Hn] + Rn[:, :Hn])
                    z = torch.sigmoid(Pt[:, Hn:2 * Hn] + Rn[:, Hn:2 * Hn])
                    n = torch.tanh(Pt[:, 2 * Hn:] + r * (Rn[:, 2 * Hn:] + P["bhn" + s]))
                    h_new = (1 - z) * n + z * hp
                if training and m.get("zh") is not None:
                    zh = m["zh"][t]
                    zc = m["zc"][t] if cell == "lstm" else None
                elif not training and zoneout:
                    zh = zc = zoneout
                else:
                    zh = zc = None
                if zh is not None:
                    h_new = zh * hp + (1 - zh) * h_new
                    if cell == "lstm":
                        c_new = zc * cp + (1 - zc) * c_new
                h = torch.where(on, h_new, h)
                if cell == "lstm":
                    c = torch.where(on, c_new, c)
                hs.append(h)
            seq = torch.stack(hs)
            outs.append(seq[steps, rows] if d else seq)
            h_last.append(h)
            c_last.append(c)
        X = torch.cat(outs, -1)
        if masks is not None and masks.get("layers") is not None and layer < L - 1:
            X = X * masks["layers"][layer]
    return X, torch.stack(h_last), (torch.stack(c_last) if cell == "lstm" else None)


def select(z, target, target_steps, lengths, loss):
    """The outputs (N, O) carrying a loss and their targets, from time-major z (T, B, O)."""
    Tn, Bn = z.shape[:2]
    tgt = torch.as_tensor(np.asarray(target))
    tgt = tgt.long() if loss == "cross_entropy" else tgt.double()
    lens = np.full(Bn, Tn) if lengths is None else np.asarray(lengths)
    if target_steps == "last":
        return z[lens - 1, np.arange(Bn)], tgt
    valid = torch.as_tensor(np.arange(Tn)[:, None] < lens[None, :])
    return z[valid], tgt[valid]


def ref_loss(z_sel, t_sel, loss, reduction):
    if loss == "cross_entropy":
        return F.cross_entropy(z_sel, t_sel, reduction=reduction)
    return F.mse_loss(z_sel, t_sel, reduction=reduction)


def reference(model, x, h0, c0, target, *, lengths, target_steps, loss, reduction, training,
              running=None, masks=None, carry=None):
    """Loss, gradients (cyrnn names, ``h0``, ``c0`` for the LSTM, ``x`` for values), the last
    states and the outputs ``y`` (T, B, O or D*H) of the reference for ``model``."""
    cell = model._CELL
    D = 2 if model.bidirectional else 1
    P = {name: leaf(p) for name, p in model.params.items()}
    x_t = None
    if x.dtype.kind in "iu":
        X = F.one_hot(torch.as_tensor(x), model.input_size).double()
    else:
        X = x_t = leaf(x)
    h0_t, c0_t = leaf(h0), leaf(c0)
    top, h_last, c_last = ref_stack(cell, P, X, h0_t, c0_t, model.num_layers, D, lengths,
                                    model.norm, training=training, running=running,
                                    masks=masks, zoneout=model.zoneout,
                                    nonlinearity=model.nonlinearity, carry=carry)
    z = top if model.output_size is None else top @ P["Why"].T + P["by"]
    z_sel, t_sel = select(z, target, target_steps, lengths, loss)
    value = ref_loss(z_sel, t_sel, loss, reduction)
    value.backward()
    grads = {name: np_grad(p) for name, p in P.items()}
    grads["h0"] = np_grad(h0_t)
    if cell == "lstm":
        grads["c0"] = np_grad(c0_t)
    if x_t is not None:
        grads["x"] = np_grad(x_t)
    if model.output_size is None:
        y = z
    elif model.output == "softmax":
        y = torch.softmax(z, -1)
    else:
        y = z
    return (value.item(), grads, h_last.detach().numpy(),
            None if c_last is None else c_last.detach().numpy(), y.detach().numpy())


def compare_grads(got, want, S, context):
    assert set(got) == set(want), f"keys {sorted(got)} vs {sorted(want)}"
    for name in want:
        value = got[name]
        if name in ("h0", "c0"):
            value = value.reshape(S, B, H)
        assert_close(f"grad {name}", value, want[name], context)


def states(model, s_last, S):
    if isinstance(model, cyrnn.LSTM):
        return s_last[0].reshape(S, B, H), s_last[1].reshape(S, B, H)
    return s_last.reshape(S, B, H), None


def valid_steps(lengths, Tn=T):
    lens = np.full(B, Tn) if lengths is None else lengths
    return np.arange(Tn)[:, None] < lens[None, :]


# ---------------------------------------------------------------------------------------------
# 1. loss, gradients, last states and outputs
# ---------------------------------------------------------------------------------------------

# L8 orthogonal array over four two-level axes (tokens, lengths, target_steps "last", h0 given),
# columns 1, 2, 4, 7 of the standard L8: every pair of values meets twice
OA8 = [
    (0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0),
    (1, 0, 0, 1), (1, 0, 1, 0), (1, 1, 0, 0), (1, 1, 1, 1),
]
ARCHS = {"layer": [(1, False), (2, True), (3, False)], "batch": [(1, True), (2, False), (3, True)]}


def oracle_cases():
    """Every cell with both norms, each norm on three (layers, directions) pairs (the six pairs
    between the two norms), the two-level axes from consecutive OA8 rows."""
    cases, k = [], 0
    for cell in CELLS:
        for norm in ("layer", "batch"):
            for L, bi in ARCHS[norm]:
                tokens, use_len, last, given = OA8[k % 8]
                k += 1
                cases.append(dict(cell=cell, norm=norm, L=L, bi=bi, tokens=bool(tokens),
                                  lengths=bool(use_len), last=bool(last), h0=bool(given),
                                  head=k % 5 != 0, relu=cell == "elman" and k % 2 == 0))
    return cases


CASES = oracle_cases()
CASE_IDS = ["{}-{}-L{}-{}-{}-{}-{}-{}{}{}".format(
    c["cell"], c["norm"], c["L"], "bi" if c["bi"] else "uni", "tok" if c["tokens"] else "dense",
    "len" if c["lengths"] else "full", "last" if c["last"] else "all",
    "h0" if c["h0"] else "noh0", "" if c["head"] else "-nohead", "-relu" if c["relu"] else "")
    for c in CASES]


def test_cases_cover_every_pair_of_two_level_values():
    for i, j in itertools.combinations(range(4), 2):
        assert {(r[i], r[j]) for r in OA8} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    keys = ("tokens", "lengths", "last", "h0")
    for cell in CELLS:
        mine = [c for c in CASES if c["cell"] == cell]
        assert {(c["L"], c["bi"]) for c in mine} == {(L, bi) for L in (1, 2, 3)
                                                    for bi in (False, True)}
    for a, b in itertools.combinations(keys, 2):
        assert {(c[a], c[b]) for c in CASES} == {(False, False), (False, True), (True, False),
                                                (True, True)}


def build(case, backend, seed=0, **options):
    cell = case["cell"]
    kwargs = dict(num_layers=case["L"], bidirectional=case["bi"], dtype="float64", seed=seed,
                  backend=backend, norm=case["norm"], **options)
    if cell == "elman" and case.get("relu"):
        kwargs["nonlinearity"] = "relu"
    out = O if case.get("head", True) else None
    if out is not None and not case.get("mse"):
        kwargs["output"] = "softmax"
    model = CELLS[cell](I, H, out, **kwargs)
    perturb_gains(model, np.random.default_rng(seed + 100))
    return model


def inputs_of(case, rng, Tn=T):
    S = case["L"] * (2 if case["bi"] else 1)
    x = rng.integers(0, I, size=(Tn, B)) if case["tokens"] else rng.normal(size=(Tn, B, I))
    h0 = rng.normal(scale=0.5, size=(S, B, H))
    c0 = rng.normal(scale=0.5, size=(S, B, H))
    return x, h0, c0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_against_reference(backend, case):
    rng = np.random.default_rng(7)
    model = build(case, backend)
    cell, S = case["cell"], case["L"] * (2 if case["bi"] else 1)
    lstm = cell == "lstm"
    x, h0, c0 = inputs_of(case, rng)
    if not case["h0"]:
        h0, c0 = np.zeros_like(h0), np.zeros_like(c0)
    state = ((h0, c0) if lstm else h0) if case["h0"] else None
    lengths = LENGTHS.copy() if case["lengths"] else None
    ts = "last" if case["last"] else "all"
    if model.output_size is None:
        loss, width = "mse", (2 if case["bi"] else 1) * H
        target = rng.normal(size=((T, B) if ts == "all" else (B,)) + (width,))
    else:
        loss = "cross_entropy"
        target = rng.integers(0, O, size=(T, B) if ts == "all" else (B,))
    reduction = "sum" if case["tokens"] else "mean"
    context = f"[{model!r} {case}]"

    # inference before any training: batch normalization with mean 0, variance 1
    y, s_fwd = model.forward(x, state, lengths)
    _, _, h_want, c_want, y_want = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps=ts, loss=loss,
        reduction=reduction, training=False, running=RunningRef())
    valid = valid_steps(lengths)
    assert_close("y (forward)", y[valid], y_want[valid], context)
    h_got, c_got = states(model, s_fwd, S)
    assert_close("h_last (forward)", h_got, h_want, context)
    if lstm:
        assert_close("c_last (forward)", c_got, c_want, context)

    value, grads, s_last = model.loss_and_grad(x, target, state, lengths, loss=loss,
                                               reduction=reduction, target_steps=ts)
    want_value, want, h_want, c_want, _ = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps=ts, loss=loss,
        reduction=reduction, training=True)
    assert isinstance(value, float)
    assert_close("loss", value, want_value, context)
    h_got, c_got = states(model, s_last, S)
    assert_close("h_last", h_got, h_want, context)
    if lstm:
        assert_close("c_last", c_got, c_want, context)
    compare_grads(grads, want, S, context)
    # the gains matter: each has a gradient, but for the top reverse direction's ``gh`` when
    # only the last steps carry a loss and h0 = 0 (there it reads its first processing step,
    # where R = 0 is normalized to 0)
    top_reverse = "gh" + suffix(case["L"] - 1, 1)
    for name in model.params:
        if name.startswith(("gx", "gh", "gc", "bc")):
            if case["bi"] and case["last"] and not case["h0"] and name == top_reverse:
                np.testing.assert_array_equal(grads[name], 0.0)
            else:
                assert np.any(grads[name] != 0), f"{name}: zero gradient {context}"


def test_reference_layer_norm_is_torchs():
    x = torch.randn(4, 7, dtype=torch.float64)
    want = F.layer_norm(x, (7,), eps=EPS)
    np.testing.assert_allclose(normalize(x, "layer").numpy(), want.numpy(), rtol=1e-13,
                               atol=1e-13)
    active = torch.tensor([True, False, True, True])
    want = F.batch_norm(x[active], None, None, training=True, eps=EPS)
    np.testing.assert_allclose(normalize(x, "batch", active)[active].numpy(), want.numpy(),
                               rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# 2. batch normalization's running statistics and inference with them
# ---------------------------------------------------------------------------------------------

RUNNING_CASES = [
    dict(cell="elman", L=1, bi=True, tokens=False, lengths=True),
    dict(cell="lstm", L=2, bi=True, tokens=True, lengths=True),
    dict(cell="lstm", L=1, bi=False, tokens=False, lengths=False),
    dict(cell="gru", L=2, bi=False, tokens=False, lengths=True),
    dict(cell="gru", L=1, bi=True, tokens=True, lengths=False),
]
RUNNING_IDS = ["{cell}-L{L}-{d}-{x}-{ln}".format(
    d="bi" if c["bi"] else "uni", x="tok" if c["tokens"] else "dense",
    ln="len" if c["lengths"] else "full", **c) for c in RUNNING_CASES]


def running_keys(model):
    """cyrnn's running statistics' names -> the reference's term keys."""
    out = {}
    for name in model.running:
        if name.startswith("mean_"):
            term = name[len("mean_"):]
            out[term] = (name, "var_" + term)
    return out


def check_running(model, ref, context):
    keys = running_keys(model)
    terms = {"elman": "xh", "gru": "xh", "lstm": "xhc"}[model._CELL]
    D = 2 if model.bidirectional else 1
    expected = {t + suffix(layer, d) for t in terms for layer in range(model.num_layers)
                for d in range(D)}
    assert set(keys) == expected, f"running terms {sorted(keys)} vs {sorted(expected)}"
    for key, (m_name, v_name) in keys.items():
        mean, var = ref.arrays(key)
        assert_close(m_name, model.running[m_name], mean, context)
        assert_close(v_name, model.running[v_name], var, context)


@pytest.mark.parametrize("case", RUNNING_CASES, ids=RUNNING_IDS)
def test_running_statistics_and_inference(backend, case):
    case = dict(case, norm="batch", head=True, mse=True)
    rng = np.random.default_rng(21)
    model = build(case, backend, seed=3)
    lstm = case["cell"] == "lstm"
    S = case["L"] * (2 if case["bi"] else 1)
    running = RunningRef()
    # two training calls: T - 1 steps, then T steps (the statistics grow by one step)
    for k, (Tn, lengths) in enumerate([(T - 1, np.array([4, 2, 3, 4])), (T, LENGTHS)]):
        if not case["lengths"]:
            lengths = None
        x, h0, c0 = inputs_of(case, rng, Tn)
        target = rng.normal(size=(Tn, B, O))
        state = (h0, c0) if lstm else h0
        value, grads, _ = model.loss_and_grad(x, target, state, lengths, loss="mse")
        want_value, want, _, _, _ = reference(
            model, x, h0, c0, target, lengths=lengths, target_steps="all", loss="mse",
            reduction="mean", training=True, running=running)
        context = f"[{model!r} call {k + 1}]"
        assert_close("loss", value, want_value, context)
        compare_grads(grads, want, S, context)
        check_running(model, running, context)
        # the statistics reach the last step that two sequences of some call reached
        if lengths is None:
            reached = Tn
        else:
            active = (lengths[:, None] > np.arange(Tn)).sum(axis=0)  # sequences at each step
            reached = int((active >= 2).sum())
        for name, stat in model.running.items():
            assert stat.shape[0] >= reached, f"{name}: {stat.shape}, {reached} steps reached"
            assert stat.shape[0] <= Tn, f"{name}: {stat.shape} after a call of {Tn} steps"

    # inference with the running statistics, two steps beyond the trained length
    Tn = T + 2
    x, h0, c0 = inputs_of(case, rng, Tn)
    lengths = np.array([7, 3, 6, 5]) if case["lengths"] else None
    state = (h0, c0) if lstm else h0
    target = rng.normal(size=(Tn, B, O))
    before = {k: v.copy() for k, v in model.running.items()}
    y, s_fwd = model.forward(x, state, lengths)
    value, s_eval = model.evaluate(x, target, state, lengths, loss="mse")
    want_value, _, h_want, c_want, y_want = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps="all", loss="mse",
        reduction="mean", training=False, running=running)
    context = f"[{model!r} inference]"
    valid = np.arange(Tn)[:, None] < (np.full(B, Tn) if lengths is None else lengths)[None, :]
    assert_close("y (forward)", y[valid], y_want[valid], context)
    assert_close("loss (evaluate)", value, want_value, context)
    for name, s in (("forward", s_fwd), ("evaluate", s_eval)):
        h_got, c_got = states(model, s, S)
        assert_close(f"h_last ({name})", h_got, h_want, context)
        if lstm:
            assert_close(f"c_last ({name})", c_got, c_want, context)
    for name, stat in model.running.items():
        np.testing.assert_array_equal(stat, before[name], err_msg=f"{name} changed by inference")
    # the statistics matter: the batch's own ones give other outputs
    _, _, _, _, y_batch = reference(model, x, h0, c0, target, lengths=lengths,
                                    target_steps="all", loss="mse", reduction="mean",
                                    training=True)
    assert not np.allclose(y_batch[valid], y_want[valid], rtol=1e-6, atol=1e-9)


def test_running_statistics_match_batchnorm1d_per_step():
    """``RunningRef`` is one ``torch.nn.BatchNorm1d(momentum=0.1, affine=False)`` per step."""
    g = torch.Generator().manual_seed(0)
    ref = RunningRef()
    mods = [torch.nn.BatchNorm1d(3, momentum=0.1, affine=False, dtype=torch.float64)
            for _ in range(2)]
    for _ in range(2):
        for t in range(2):
            rows = torch.randn(4, 3, generator=g, dtype=torch.float64)
            ref.update("x", t, rows)
            mods[t].train()(rows)
    mean, var = ref.arrays("x")
    for t in range(2):
        np.testing.assert_allclose(mean[t], mods[t].running_mean.numpy(), rtol=1e-14)
        np.testing.assert_allclose(var[t], mods[t].running_var.numpy(), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# 3. the regularizers' masks in the documented order, in the reference
# ---------------------------------------------------------------------------------------------


def documented_masks(model, seed, Tn):
    """The masks of a training call with ``dropout_seed=seed``: the dropout between layers,
    then per layer-direction in ``h0`` order recurrent dropout (B, H), zoneout of h then c
    (T, B, H), weight drop (G, H)."""
    rng = np.random.default_rng(seed)
    L, D = model.num_layers, (2 if model.bidirectional else 1)
    G = GATES[model._CELL] * H
    masks = {"layers": None}
    if model.dropout and L > 1:
        keep = rng.random((L - 1, Tn, B, D * H)) >= model.dropout
        masks["layers"] = torch.as_tensor(keep / (1 - model.dropout))
    for j in range(L * D):
        m = {}
        if model.recurrent_dropout:
            p = model.recurrent_dropout
            m["rmask"] = torch.as_tensor((rng.random((B, H)) >= p) / (1 - p))
        if model.zoneout:
            p = model.zoneout
            m["zh"] = torch.as_tensor((rng.random((Tn, B, H)) < p).astype(float))
            if model._CELL == "lstm":
                m["zc"] = torch.as_tensor((rng.random((Tn, B, H)) < p).astype(float))
        if model.weight_drop:
            p = model.weight_drop
            m["wmask"] = torch.as_tensor((rng.random((G, H)) >= p) / (1 - p))
        masks[j] = m
    return masks


MASK_CASES = [
    dict(cell="elman", norm=None, L=2, bi=True, tokens=False, lengths=True),
    dict(cell="lstm", norm="layer", L=2, bi=True, tokens=False, lengths=True),
    dict(cell="lstm", norm="batch", L=1, bi=False, tokens=True, lengths=False),
    dict(cell="gru", norm="batch", L=2, bi=True, tokens=False, lengths=True),
    dict(cell="gru", norm=None, L=1, bi=True, tokens=True, lengths=True),
]
MASK_IDS = ["{cell}-{norm}-L{L}-{d}".format(d="bi" if c["bi"] else "uni", **c)
            for c in MASK_CASES]


@pytest.mark.parametrize("case", MASK_CASES, ids=MASK_IDS)
def test_regularizers_against_reference(backend, case):
    """recurrent_dropout, zoneout, weight_drop and dropout between layers together; then
    zoneout's expectation at inference (and recurrent dropout, weight drop gone)."""
    rng = np.random.default_rng(5)
    case = dict(case, head=True, mse=True)
    model = build(case, backend, seed=9, recurrent_dropout=0.3, zoneout=0.4, weight_drop=0.25,
                  dropout=0.2 if case["L"] > 1 else 0.0)
    lstm = case["cell"] == "lstm"
    S = case["L"] * (2 if case["bi"] else 1)
    x, h0, c0 = inputs_of(case, rng)
    state = (h0, c0) if lstm else h0
    lengths = LENGTHS if case["lengths"] else None
    target = rng.normal(size=(T, B, O))
    value, grads, s_last = model.loss_and_grad(x, target, state, lengths, loss="mse",
                                               dropout_seed=123)
    want_value, want, h_want, c_want, _ = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps="all", loss="mse",
        reduction="mean", training=True, masks=documented_masks(model, 123, T))
    context = f"[{model!r}]"
    assert_close("loss", value, want_value, context)
    h_got, c_got = states(model, s_last, S)
    assert_close("h_last", h_got, h_want, context)
    if lstm:
        assert_close("c_last", c_got, c_want, context)
    compare_grads(grads, want, S, context)

    running = RunningRef()
    if model.norm == "batch":  # the model's statistics, for the reference
        for name in model.running:
            if name.startswith("mean_"):
                term = name[len("mean_"):]
                running.stats[term] = [
                    (torch.as_tensor(m), torch.as_tensor(v))
                    for m, v in zip(model.running[name], model.running["var_" + term])]
    y, s_fwd = model.forward(x, state, lengths)
    _, _, h_want, c_want, y_want = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps="all", loss="mse",
        reduction="mean", training=False, running=running)
    valid = valid_steps(lengths)
    assert_close("y (forward)", y[valid], y_want[valid], context)
    h_got, c_got = states(model, s_fwd, S)
    assert_close("h_last (forward)", h_got, h_want, context)
    if lstm:
        assert_close("c_last (forward)", c_got, c_want, context)


# ---------------------------------------------------------------------------------------------
# 4. carry truncation (TBPTT(k, k), RandomizedTruncation) with normalization and regularizers
# ---------------------------------------------------------------------------------------------

CARRY_CASES = [
    dict(cell="lstm", norm="layer", L=2, bi=True, tokens=False, lengths=True, regs=False,
         trunc="tbptt"),
    dict(cell="lstm", norm="batch", L=1, bi=True, tokens=False, lengths=True, regs=True,
         trunc="randomized"),
    dict(cell="gru", norm="batch", L=2, bi=False, tokens=True, lengths=True, regs=False,
         trunc="randomized"),
    dict(cell="gru", norm=None, L=1, bi=True, tokens=False, lengths=True, regs=True,
         trunc="tbptt"),
    dict(cell="elman", norm="batch", L=2, bi=True, tokens=False, lengths=False, regs=True,
         trunc="tbptt"),
    dict(cell="elman", norm="layer", L=1, bi=False, tokens=False, lengths=True, regs=False,
         trunc="randomized"),
]
CARRY_IDS = ["{cell}-{norm}-L{L}-{d}-{r}-{trunc}".format(
    d="bi" if c["bi"] else "uni", r="regs" if c["regs"] else "noregs", **c)
    for c in CARRY_CASES]


@pytest.mark.parametrize("case", CARRY_CASES, ids=CARRY_IDS)
def test_carry_truncation_against_reference(backend, case):
    """A carry scale enters every layer-direction's processing step ``s`` as
    ``h.detach() + c_s (h - h.detach())`` (and ``c``): for the recurrent product, the GRU's
    ``z h`` and zoneout's ``h_{t-1}`` alike."""
    rng = np.random.default_rng(13)
    case = dict(case, head=True, mse=True)
    regs = dict(recurrent_dropout=0.3, zoneout=0.4, weight_drop=0.25) if case["regs"] else {}
    model = build(case, backend, seed=2, **regs)
    for name in model.params:  # larger recurrent weights: the truncation changes more
        if name.startswith("Whh"):
            model.params[name] *= 3.0
    lstm = case["cell"] == "lstm"
    S = case["L"] * (2 if case["bi"] else 1)
    x, h0, c0 = inputs_of(case, rng)
    state = (h0, c0) if lstm else h0
    lengths = LENGTHS if case["lengths"] else None
    target = rng.normal(size=(T, B, O))
    if case["trunc"] == "tbptt":
        truncate, carry = cyrnn.TBPTT(2, 2), cyrnn.TBPTT(2, 2).carry(T)
    else:
        truncate = cyrnn.RandomizedTruncation(0.5, seed=7)
        carry = cyrnn.RandomizedTruncation(0.5, seed=7).carry(T)
    value, grads, s_last = model.loss_and_grad(x, target, state, lengths, loss="mse",
                                               truncate=truncate, dropout_seed=31)
    masks = documented_masks(model, 31, T) if regs else None
    want_value, want, h_want, c_want, _ = reference(
        model, x, h0, c0, target, lengths=lengths, target_steps="all", loss="mse",
        reduction="mean", training=True, masks=masks, carry=carry)
    context = f"[{model!r} {case}]"
    assert_close("loss", value, want_value, context)
    h_got, c_got = states(model, s_last, S)
    assert_close("h_last", h_got, h_want, context)
    if lstm:
        assert_close("c_last", c_got, c_want, context)
    compare_grads(grads, want, S, context)
    # the truncation matters
    _, full, _ = model.loss_and_grad(x, target, state, lengths, loss="mse", dropout_seed=31)
    assert any(not np.allclose(full[n], grads[n], rtol=1e-6, atol=1e-9) for n in grads
               if n.startswith("Whh"))
