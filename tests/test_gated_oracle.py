"""PyTorch as the oracle of ``cyrnn.LSTM`` and ``cyrnn.GRU`` (float64, rtol 1e-9).

1. ``torch.nn.LSTM`` / ``nn.GRU`` (+ ``nn.Linear``), loaded strictly from
   ``model.to_torch_state()``: the loss, every gradient (each layer and direction, ``h0``,
   ``c0``, ``x``; read back through ``model.to_torch_state(grads)``), the last states and
   ``forward()``'s outputs. The axes (no output layer, tokens/dense, lengths, target_steps,
   reduction, batch_first, initial state given) are combined by the L8 orthogonal array of
   ``test_stack_oracle``: every pair of values meets, and every row runs on every (layers,
   directions) pair, both cells and both backends.

2. Truncated BPTT on gated stacks against torch autograd with ``detach()``: a hand-written
   stack (``hand_stack``) with the semantics of ``test_stack_oracle`` (truncation per layer and
   direction, in each direction's processing order), the error cut through ``h`` and ``c``
   alike: a look-back window recomputes each output's states from the *detached* pair
   ``(h, c)`` before its window; a carry scale enters processing step ``s`` as
   ``s.detach() + c_s (s - s.detach())`` for ``h`` and ``c`` both. The hand stack untruncated is
   itself checked against ``nn.LSTM`` / ``nn.GRU``. ``RandomizedTruncation`` with a seed equals
   its carry formulation.

3. Weight exchange with real torch modules: ``from_torch(nn.LSTM(...).state_dict() + fc)``
   equals torch's forward; the ``uniform`` initialisation has torch's default bounds.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch_oracle import RTOL, assert_close, leaf, np_grad, one_torch_thread  # noqa: E402,F401

import cyrnn  # noqa: E402

F = torch.nn.functional
pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = torch.nn.utils.rnn.pad_packed_sequence

T, B, I, H, O = 5, 3, 4, 3, 4
LENGTHS = np.array([5, 2, 4])  # unsorted: pack_padded_sequence(enforce_sorted=False)
ARCHS = [(1, False), (1, True), (2, False), (2, True), (3, False), (3, True)]
ARCH_IDS = [f"L{L}-{'bi' if bi else 'uni'}" for L, bi in ARCHS]
CELLS = {"lstm": cyrnn.LSTM, "gru": cyrnn.GRU}
PAIRS = [("softmax", "cross_entropy"), ("linear", "mse"), ("sigmoid", "bce")]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def is_lstm(model):
    return isinstance(model, cyrnn.LSTM)


def torch_twin(model):
    """``nn.LSTM``/``nn.GRU`` + ``nn.Linear`` (or None) in float64, loaded strictly from
    ``model.to_torch_state()``."""
    D = 2 if model.bidirectional else 1
    cls = torch.nn.LSTM if is_lstm(model) else torch.nn.GRU
    rnn = cls(model.input_size, model.hidden_size, num_layers=model.num_layers,
              bidirectional=model.bidirectional, batch_first=model.batch_first,
              dtype=torch.float64)
    state = model.to_torch_state()
    rnn.load_state_dict({k[len("rnn."):]: torch.from_numpy(v) for k, v in state.items()
                         if k.startswith("rnn.")}, strict=True)
    fc = None
    if model.output_size is not None:
        fc = torch.nn.Linear(D * model.hidden_size, model.output_size, dtype=torch.float64)
        fc.load_state_dict({k[len("fc."):]: torch.from_numpy(v) for k, v in state.items()
                            if k.startswith("fc.")}, strict=True)
    assert set(state) == {"rnn." + k for k in rnn.state_dict()} | (
        set() if fc is None else {"fc." + k for k in fc.state_dict()})
    return rnn, fc


def torch_loss(z, target, loss, output, reduction):
    if loss == "cross_entropy":
        return F.cross_entropy(z, target, reduction=reduction)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(z, target, reduction=reduction)
    y = torch.sigmoid(z) if output == "sigmoid" else z
    return F.mse_loss(y, target, reduction=reduction)


def torch_output(output, z):
    if output == "softmax":
        return torch.softmax(z, -1)
    if output == "sigmoid":
        return torch.sigmoid(z)
    return z


def make_target(rng, loss, shape, width):
    if loss == "cross_entropy":
        return rng.integers(0, width, size=shape)
    if loss == "bce":
        return rng.uniform(0, 1, size=shape + (width,))
    return rng.normal(size=shape + (width,))


def select(z_tm, target, target_steps, lengths, batch_first, loss):
    """The outputs (N, O) carrying a loss, and their targets, from time-major z (T, B, O) and a
    user-layout target."""
    Tn, Bn = z_tm.shape[:2]
    tgt = torch.as_tensor(np.asarray(target))
    tgt = tgt.long() if loss == "cross_entropy" else tgt.double()
    lens = np.full(Bn, Tn) if lengths is None else np.asarray(lengths)
    if target_steps == "last":
        return z_tm[lens - 1, np.arange(Bn)], tgt
    if batch_first:
        tgt = tgt.transpose(0, 1)
    valid = torch.as_tensor(np.arange(Tn)[:, None] < lens[None, :])
    return z_tm[valid], tgt[valid]


def torch_grads(rnn, fc):
    out = {"rnn." + n: np_grad(p) for n, p in rnn.named_parameters()}
    if fc is not None:
        out.update({"fc." + n: np_grad(p) for n, p in fc.named_parameters()})
    return out


def compare_torch_grads(model, grads, want, context):
    """cyrnn's gradients through ``to_torch_state`` against torch's. ``bias_hh``: zero on
    cyrnn's side but for GRU's n-part (``bhn``'s gradient); torch's own equals ``bias_ih``'s
    where the two biases are summed (LSTM: all of it; GRU: the r and z parts)."""
    got = model.to_torch_state(grads)
    assert set(got) == set(want), f"keys: {sorted(got)} vs {sorted(want)}"
    Hn = model.hidden_size
    summed = slice(None) if is_lstm(model) else slice(0, 2 * Hn)
    for key, value in want.items():
        if "bias_hh" in key:
            ih = want[key.replace("bias_hh", "bias_ih")]
            np.testing.assert_array_equal(got[key][summed], 0.0)
            assert_close(f"torch's own {key} vs bias_ih", value[summed], ih[summed], context)
            if not is_lstm(model):
                assert_close(f"grad {key} n-part (bhn)", got[key][2 * Hn:], value[2 * Hn:],
                             context)
        else:
            assert_close(f"grad {key}", got[key], value, context)


def run_torch(rnn, inputs, state, lengths, batch_first, Tn):
    """Torch's (output (T, B, D*H) time-major, h_n, c_n or None)."""
    if lengths is not None:
        inputs = pack_padded_sequence(inputs, torch.as_tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
    out, last = rnn(inputs, state)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=Tn)
    if batch_first:
        out = out.transpose(0, 1)
    h_n, c_n = last if isinstance(last, tuple) else (last, None)
    return out, h_n, c_n


# ---------------------------------------------------------------------------------------------
# 1. nn.LSTM / nn.GRU oracle
# ---------------------------------------------------------------------------------------------

# L8 orthogonal array over seven two-level axes: no output layer, tokens, lengths,
# target_steps, reduction, batch_first, initial state given; the (output, loss) pair cycles
# over the rows that have an output layer
OA8 = [
    (0, 0, 0, 0, 0, 0, 0),
    (0, 0, 0, 1, 1, 1, 1),
    (0, 1, 1, 0, 0, 1, 1),
    (0, 1, 1, 1, 1, 0, 0),
    (1, 0, 1, 0, 1, 0, 1),
    (1, 0, 1, 1, 0, 1, 0),
    (1, 1, 0, 0, 1, 1, 0),
    (1, 1, 0, 1, 0, 0, 1),
]
ROWS = [
    dict(head=not a, tokens=bool(b), lengths=bool(c), target_steps=("all", "last")[d],
         reduction=("mean", "sum")[e], batch_first=bool(f), h0=bool(g),
         pair=PAIRS[i % 3] if not a else ("linear", "mse"))
    for i, (a, b, c, d, e, f, g) in enumerate(OA8)
]
ROW_IDS = [
    "{}-{}-{}-{}-{}-{}-{}".format(
        r["pair"][1] if r["head"] else "nohead", "tok" if r["tokens"] else "dense",
        "len" if r["lengths"] else "full", r["target_steps"], r["reduction"],
        "bf" if r["batch_first"] else "tm", "h0" if r["h0"] else "noh0")
    for r in ROWS
]


def test_oracle_rows_cover_every_pair_of_values():
    for i, j in itertools.combinations(range(7), 2):
        assert {(r[i], r[j]) for r in OA8} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def run_oracle_case(backend, cell, L, bi, row, seed=0):
    rng = np.random.default_rng(seed)
    output, loss = row["pair"]
    bf = row["batch_first"]
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    out_size = O if row["head"] else None
    model = CELLS[cell](I, H, out_size, num_layers=L, bidirectional=bi, output=output,
                        dtype="float64", seed=seed, backend=backend, batch_first=bf)
    lstm = cell == "lstm"
    tokens = row["tokens"]
    x_tm = rng.integers(0, I, size=(T, B)) if tokens else rng.normal(size=(T, B, I))
    x = np.swapaxes(x_tm, 0, 1).copy() if bf else x_tm
    h0 = rng.normal(scale=0.5, size=(S, B, H)) if row["h0"] else None
    c0 = rng.normal(scale=0.5, size=(S, B, H)) if row["h0"] else None
    state = (h0, c0) if (lstm and h0 is not None) else h0
    lengths = LENGTHS.copy() if row["lengths"] else None
    ts = row["target_steps"]
    width = O if row["head"] else D * H
    shape = ((B, T) if bf else (T, B)) if ts == "all" else (B,)
    target = make_target(rng, loss, shape, width)

    y, s_fwd = model.forward(x, state, lengths)
    value, grads, s_last = model.loss_and_grad(x, target, state, lengths, loss=loss,
                                               reduction=row["reduction"], target_steps=ts)

    rnn, fc = torch_twin(model)
    if tokens:
        inputs, x_t = F.one_hot(torch.as_tensor(x), I).double(), None
    else:
        inputs = x_t = leaf(x)
    h0_t = leaf(np.zeros((S, B, H)) if h0 is None else h0)
    c0_t = leaf(np.zeros((S, B, H)) if c0 is None else c0)
    out, h_n, c_n = run_torch(rnn, inputs, (h0_t, c0_t) if lstm else h0_t, lengths, bf, T)
    z = out if fc is None else fc(out)
    z_sel, t_sel = select(z, target, ts, lengths, bf, loss)
    value_t = torch_loss(z_sel, t_sel, loss, output, row["reduction"])
    value_t.backward()

    context = f"[{model!r} {row}]"
    assert isinstance(value, float)
    assert_close("loss", value, value_t.item(), context)
    y_tm = np.swapaxes(y, 0, 1) if bf else y
    assert y_tm.shape == (T, B, width)
    want_y = torch_output(output, z).detach().numpy()
    valid = np.arange(T)[:, None] < (np.full(B, T) if lengths is None else lengths)[None, :]
    assert_close("y", y_tm[valid], want_y[valid], context)
    state_shape = (B, H) if (S == 1 and h0 is None) else (S, B, H)
    if lstm:
        for name, pair in (("forward", s_fwd), ("loss_and_grad", s_last)):
            assert isinstance(pair, tuple) and len(pair) == 2, f"{name}: {type(pair)}"
            for what, got, want in (("h_last", pair[0], h_n), ("c_last", pair[1], c_n)):
                assert got.shape == state_shape, f"{what} ({name}) {got.shape} {context}"
                assert_close(f"{what} ({name})", got.reshape(S, B, H), want.detach().numpy(),
                             context)
        assert grads["c0"].shape == state_shape
        assert_close("grad c0", grads["c0"].reshape(S, B, H), np_grad(c0_t), context)
    else:
        for name, got in (("forward", s_fwd), ("loss_and_grad", s_last)):
            assert isinstance(got, np.ndarray) and got.shape == state_shape, name
            assert_close(f"h_last ({name})", got.reshape(S, B, H), h_n.detach().numpy(), context)
        assert "c0" not in grads
    assert grads["h0"].shape == state_shape
    assert_close("grad h0", grads["h0"].reshape(S, B, H), np_grad(h0_t), context)
    if tokens:
        assert "x" not in grads
    else:
        assert_close("grad x", grads["x"], np_grad(x_t), context)
    expected = set(model.params) | {"h0"} | ({"c0"} if lstm else set()) | (
        set() if tokens else {"x"})
    assert set(grads) == expected
    compare_torch_grads(model, grads, torch_grads(rnn, fc), context)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("L, bi", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_against_torch(backend, cell, L, bi, row):
    run_oracle_case(backend, cell, L, bi, row)


# ---------------------------------------------------------------------------------------------
# 2. the hand-written gated stack (torch autograd, detach) for truncation
# ---------------------------------------------------------------------------------------------


def gated_step(cell, p_t, h, c, Whh, bhn):
    """One step of PyTorch's LSTM / GRU from the input projection ``p_t`` (bias included)."""
    R = h @ Whh.T
    if cell == "lstm":
        i, f, g, o = (p_t + R).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    Hn = h.shape[-1]
    r = torch.sigmoid(p_t[..., :Hn] + R[..., :Hn])
    z = torch.sigmoid(p_t[..., Hn:2 * Hn] + R[..., Hn:2 * Hn])
    n = torch.tanh(p_t[..., 2 * Hn:] + r * (R[..., 2 * Hn:] + bhn))
    return (1 - z) * n + z * h, c


def hand_stack(cell, P, X, h0, c0, L, D, lengths=None, window=None, carry=None, keep=None):
    """The gated stack in torch ops, time-major; ``c0`` is ignored by GRU. ``window`` (int or
    (T,)) and ``carry`` (T,) act per layer-direction in its processing order, on h and c alike.
    ``keep``: a dict that receives each layer-direction's ``hs[1:]`` (processing order), with
    ``retain_grad``. Returns ``(top, h_last, c_last)``."""
    Tn, Bn = X.shape[:2]
    lens = np.full(Bn, Tn) if lengths is None else np.asarray(lengths)
    t_col = np.arange(Tn)[:, None]
    steps = np.where(t_col < lens[None, :], lens[None, :] - 1 - t_col, t_col)
    rows = np.arange(Bn)[None, :]
    active = torch.as_tensor(t_col < lens[None, :])[..., None]
    windows = None if window is None else np.broadcast_to(np.asarray(window), (Tn,))
    h_last, c_last = [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            j = layer * D + d
            s = ("" if layer == 0 else f"_l{layer}") + ("_reverse" if d else "")
            Wxh, Whh, bh = P["Wxh" + s], P["Whh" + s], P["bh" + s]
            bhn = P.get("bhn" + s)
            proj = X @ Wxh.T + bh
            if d:
                proj = proj[steps, rows]

            def step(t, h, c, h_in=None, c_in=None):
                hn, cn = gated_step(cell, proj[t], h if h_in is None else h_in,
                                    c if c_in is None else c_in, Whh, bhn)
                return torch.where(active[t], hn, h), torch.where(active[t], cn, c)

            hs, cs = [h0[j]], [c0[j]]
            for t in range(Tn):
                h, c = hs[-1], cs[-1]
                if carry is None:
                    h_in = c_in = None
                else:
                    k = float(carry[t])
                    h_in = h.detach() + k * (h - h.detach())
                    c_in = c.detach() + k * (c - c.detach())
                h, c = step(t, h, c, h_in, c_in)
                hs.append(h)
                cs.append(c)
            h_last.append(hs[-1])
            c_last.append(cs[-1])
            if keep is not None:
                for h in hs[1:]:
                    h.retain_grad()
                keep[j] = hs[1:]
            if windows is None:
                seq = torch.stack(hs[1:])
            else:
                recomputed = []
                for t in range(Tn):
                    first = t - int(windows[t]) + 1
                    if first >= 0:
                        h, c, start = hs[first].detach(), cs[first].detach(), first
                    else:
                        h, c, start = h0[j], c0[j], 0
                    for r in range(start, t + 1):
                        h, c = step(r, h, c)
                    recomputed.append(h)
                seq = torch.stack(recomputed)
            outs.append(seq[steps, rows] if d else seq)
        X = torch.cat(outs, -1)
    return X, torch.stack(h_last), torch.stack(c_last)


def hand_case(model, x_tm, h0, c0, target, *, lengths, target_steps, loss, reduction,
              window=None, carry=None, keep=None):
    """Loss, gradients (cyrnn names plus h0, c0 for LSTM, x), h_last, c_last of the hand stack."""
    cell = "lstm" if is_lstm(model) else "gru"
    D = 2 if model.bidirectional else 1
    P = {name: leaf(p) for name, p in model.params.items()}
    x_t = None
    if x_tm.dtype.kind in "iu":
        X = F.one_hot(torch.as_tensor(x_tm), model.input_size).double()
    else:
        X = x_t = leaf(x_tm)
    h0_t, c0_t = leaf(h0), leaf(c0)
    top, h_last, c_last = hand_stack(cell, P, X, h0_t, c0_t, model.num_layers, D, lengths,
                                     window, carry, keep)
    z = top if model.output_size is None else top @ P["Why"].T + P["by"]
    z_sel, t_sel = select(z, target, target_steps, lengths, False, loss)
    value = torch_loss(z_sel, t_sel, loss, model.output, reduction)
    value.backward()
    grads = {name: np_grad(p) for name, p in P.items()}
    grads["h0"] = np_grad(h0_t)
    if cell == "lstm":
        grads["c0"] = np_grad(c0_t)
    if x_t is not None:
        grads["x"] = np_grad(x_t)
    return value.item(), grads, h_last.detach().numpy(), c_last.detach().numpy()


def compare_dicts(got, want, context=""):
    assert set(got) == set(want), f"keys {sorted(got)} vs {sorted(want)}"
    for name in want:
        assert_close(f"grad {name}", got[name], want[name], context)


def states_of(model, s_last):
    return (s_last[0], s_last[1]) if is_lstm(model) else (s_last, None)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("L, bi, use_lengths", [(2, True, True), (3, False, False)],
                         ids=["L2-bi-len", "L3-uni"])
def test_hand_stack_is_torch(cell, L, bi, use_lengths):
    """The reference of the truncation tests, untruncated, is nn.LSTM / nn.GRU itself."""
    rng = np.random.default_rng(3)
    S = L * (2 if bi else 1)
    model = CELLS[cell](I, H, O, num_layers=L, bidirectional=bi, dtype="float64", seed=1,
                        backend="numpy", output="softmax")
    x = rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(size=(S, B, H)), rng.normal(size=(S, B, H))
    lengths = LENGTHS if use_lengths else None
    target = rng.integers(0, O, size=(T, B))
    value, grads, h_last, c_last = hand_case(model, x, h0, c0, target, lengths=lengths,
                                             target_steps="all", loss="cross_entropy",
                                             reduction="mean")
    rnn, fc = torch_twin(model)
    x_t, h0_t, c0_t = leaf(x), leaf(h0), leaf(c0)
    lstm = cell == "lstm"
    out, h_n, c_n = run_torch(rnn, x_t, (h0_t, c0_t) if lstm else h0_t, lengths, False, T)
    z_sel, t_sel = select(fc(out), target, "all", lengths, False, "cross_entropy")
    value_t = F.cross_entropy(z_sel, t_sel)
    value_t.backward()
    assert_close("loss", value, value_t.item())
    assert_close("h_last", h_last, h_n.detach().numpy())
    if lstm:
        assert_close("c_last", c_last, c_n.detach().numpy())
        assert_close("grad c0", grads["c0"], np_grad(c0_t))
    assert_close("grad h0", grads["h0"], np_grad(h0_t))
    assert_close("grad x", grads["x"], np_grad(x_t))
    mine = model.to_torch_state({k: v for k, v in grads.items() if k not in ("h0", "c0", "x")})
    for key, want in torch_grads(rnn, fc).items():
        if "bias_hh" not in key:
            assert_close(key, mine[key], want)


TRUNCATIONS = {
    "k2": 2,
    "k3": 3,
    "tbptt(2,3)": cyrnn.TBPTT(2, 3),
    "tbptt(2,2)": cyrnn.TBPTT(2, 2),
    "randomized(0.5)": "randomized",
}
# (cell, layers, bidirectional, tokens, lengths, target_steps, (output, loss))
TRUNC_CASES = [
    ("lstm", 2, True, False, True, "all", ("linear", "mse")),
    ("lstm", 2, False, True, False, "last", ("softmax", "cross_entropy")),
    ("lstm", 1, True, False, False, "all", ("sigmoid", "bce")),
    ("gru", 2, True, False, True, "all", ("softmax", "cross_entropy")),
    ("gru", 2, False, True, True, "last", ("sigmoid", "bce")),
    ("gru", 1, True, False, False, "all", ("linear", "mse")),
]
TRUNC_IDS = [f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}-{'tok' if c[3] else 'dense'}-"
             f"{'len' if c[4] else 'full'}-{c[5]}-{c[6][1]}" for c in TRUNC_CASES]


def truncation_args(name, Tn):
    """``(truncate for cyrnn, window, carry)`` of the hand stack."""
    spec = TRUNCATIONS[name]
    if spec == "randomized":
        # the same seed draws the same carries as the object loss_and_grad uses
        return (cyrnn.RandomizedTruncation(0.5, seed=7), None,
                cyrnn.RandomizedTruncation(0.5, seed=7).carry(Tn))
    if isinstance(spec, int):
        return spec, spec, None
    if spec.k1 == spec.k2:
        return spec, None, spec.carry(Tn)
    return spec, spec.windows(Tn), None


@pytest.mark.parametrize("trunc", TRUNCATIONS, ids=list(TRUNCATIONS))
@pytest.mark.parametrize("case", TRUNC_CASES, ids=TRUNC_IDS)
def test_truncation_against_detached_torch_stack(backend, case, trunc):
    cell, L, bi, tokens, use_lengths, ts, (output, loss) = case
    rng = np.random.default_rng(11)
    Tn = 6
    S = L * (2 if bi else 1)
    model = CELLS[cell](I, H, O, num_layers=L, bidirectional=bi, output=output, dtype="float64",
                        seed=4, backend=backend)
    for name in model.params:  # larger recurrent weights: truncation changes more
        if name.startswith("Whh"):
            model.params[name] *= 3.0
    x = rng.integers(0, I, size=(Tn, B)) if tokens else rng.normal(size=(Tn, B, I))
    h0, c0 = rng.normal(scale=0.5, size=(S, B, H)), rng.normal(scale=0.5, size=(S, B, H))
    state = (h0, c0) if cell == "lstm" else h0
    lengths = np.array([6, 3, 5]) if use_lengths else None
    target = make_target(rng, loss, (Tn, B) if ts == "all" else (B,), O)
    truncate, window, carry = truncation_args(trunc, Tn)
    value, grads, s_last = model.loss_and_grad(x, target, state, lengths, loss=loss,
                                               reduction="sum", target_steps=ts,
                                               truncate=truncate)
    want_value, want, want_h, want_c = hand_case(
        model, x, h0, c0, target, lengths=lengths, target_steps=ts, loss=loss, reduction="sum",
        window=window, carry=carry)
    context = f"[{model!r} truncate={trunc}]"
    assert_close("loss", value, want_value, context)
    h_last, c_last = states_of(model, s_last)
    assert_close("h_last", h_last, want_h, context)
    if c_last is not None:
        assert_close("c_last", c_last, want_c, context)
    compare_dicts(grads, want, context)
    # the truncation matters: the full gradient differs
    _, full, _ = model.loss_and_grad(x, target, state, lengths, loss=loss, reduction="sum",
                                     target_steps=ts)
    assert any(not np.allclose(full[n], grads[n], rtol=1e-6, atol=1e-9) for n in grads
               if n.startswith("Whh"))


@pytest.mark.parametrize("cell", list(CELLS))
def test_long_window_is_full_bptt(backend, cell):
    """``truncate >= T + 1`` is full BPTT; ``truncate = T`` cuts only the way to (h0, c0)."""
    rng = np.random.default_rng(2)
    model = CELLS[cell](I, H, O, num_layers=2, bidirectional=True, output="softmax",
                        dtype="float64", seed=4, backend=backend)
    x, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(4, B, H)), rng.normal(size=(4, B, H))
    state = (h0, c0) if cell == "lstm" else h0
    target = rng.integers(0, O, size=(T, B))
    _, full, _ = model.loss_and_grad(x, target, state, lengths=LENGTHS)
    _, long, _ = model.loss_and_grad(x, target, state, lengths=LENGTHS, truncate=T + 1)
    compare_dicts(long, full)
    _, short, _ = model.loss_and_grad(x, target, state, lengths=LENGTHS, truncate=T)
    _, want, _, _ = hand_case(model, x, h0, c0, target, lengths=LENGTHS, target_steps="all",
                              loss="cross_entropy", reduction="mean", window=T)
    compare_dicts(short, want)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("L, bi, use_lengths, trunc", [
    (2, True, False, None), (3, False, True, None), (2, False, True, "tbptt(2,2)"),
    (2, True, False, "randomized(0.5)"),
], ids=["L2-bi", "L3-len", "L2-len-tbptt(2,2)", "L2-bi-randomized"])
def test_grad_norms_against_torch(backend, cell, L, bi, use_lengths, trunc):
    """``backprop().grad_norms[t]``: the norm of dL/dh_t (the hidden states; not c) over every
    layer-direction at natural step t (torch: ``retain_grad`` on each state)."""
    rng = np.random.default_rng(4)
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = CELLS[cell](I, H, O, num_layers=L, bidirectional=bi, output="softmax",
                        dtype="float64", seed=5, backend=backend)
    x, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(S, B, H)), rng.normal(size=(S, B, H))
    target = rng.integers(0, O, size=(T, B))
    lengths = LENGTHS if use_lengths else None
    truncate, carry = None, None
    if trunc is not None:
        truncate, _, carry = truncation_args(trunc, T)
    result = model.backprop(x, target, (h0, c0) if cell == "lstm" else h0, lengths,
                            truncate=truncate)
    keep = {}
    hand_case(model, x, h0, c0, target, lengths=lengths, target_steps="all",
              loss="cross_entropy", reduction="mean", carry=carry, keep=keep)
    squares = np.zeros(T)
    for j, hs in keep.items():
        for t in range(T):
            g = np_grad(hs[T - 1 - t] if j % D else hs[t])
            squares[t] += np.sum(g ** 2)
    assert result.grad_norms is not None and result.grad_norms.shape == (T,)
    assert_close("grad_norms", result.grad_norms, np.sqrt(squares))


# ---------------------------------------------------------------------------------------------
# 3. weight exchange with real torch modules; the uniform initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("L, bi", [(2, True), (1, False), (3, False)], ids=["L2-bi", "L1", "L3"])
def test_from_torch_equals_torch_forward(backend, cell, L, bi):
    torch.manual_seed(0)
    D = 2 if bi else 1
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    rnn = cls(I, H, num_layers=L, bidirectional=bi, dtype=torch.float64)
    fc = torch.nn.Linear(D * H, O, dtype=torch.float64)
    state = {"rnn." + k: v for k, v in rnn.state_dict().items()}
    state.update({"fc." + k: v for k, v in fc.state_dict().items()})
    model = CELLS[cell].from_torch(state, dtype="float64", backend=backend)
    assert type(model) is CELLS[cell]
    assert (model.num_layers, model.bidirectional, model.hidden_size) == (L, bi, H)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, B, I))
    h0, c0 = rng.normal(size=(L * D, B, H)), rng.normal(size=(L * D, B, H))
    lstm = cell == "lstm"
    for lengths in (None, LENGTHS):
        y, s_last = model.forward(x, (h0, c0) if lstm else h0, lengths)
        with torch.no_grad():
            init = (torch.from_numpy(h0), torch.from_numpy(c0)) if lstm else torch.from_numpy(h0)
            out, h_n, c_n = run_torch(rnn, torch.from_numpy(x), init, lengths, False, T)
            z = fc(out).numpy()
        lens = np.full(B, T) if lengths is None else lengths
        valid = np.arange(T)[:, None] < lens[None, :]
        assert_close("y", y[valid], z[valid])
        h_last, c_last = states_of(model, s_last)
        assert_close("h_last", h_last, h_n.numpy())
        if lstm:
            assert_close("c_last", c_last, c_n.numpy())
    # and back: to_torch_state loads strictly into fresh modules that compute the same
    rnn2, fc2 = torch_twin(model)
    for k, v in rnn.state_dict().items():
        if "weight" in k:
            np.testing.assert_array_equal(rnn2.state_dict()[k].numpy(), v.numpy())
    with torch.no_grad():
        init = (torch.from_numpy(h0), torch.from_numpy(c0)) if lstm else torch.from_numpy(h0)
        a = fc(rnn(torch.from_numpy(x), init)[0]).numpy()
        b = fc2(rnn2(torch.from_numpy(x), init)[0]).numpy()
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", list(CELLS))
def test_uniform_init_matches_torch_default_bounds(cell):
    """``init="uniform"`` is torch's default: every weight U(-k, k), k = 1/sqrt(H); ``bh`` the
    sum of two such biases (GRU's n-part one, ``bhn`` the other)."""
    Hn, In = 64, 40
    k = 1 / np.sqrt(Hn)
    torch.manual_seed(0)
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(In, Hn, dtype=torch.float64)
    ref = {n: p.detach().numpy() for n, p in mod.named_parameters()}
    model = CELLS[cell](In, Hn, None, dtype="float64", seed=0)
    p = model.params
    for ours, theirs in (("Wxh", "weight_ih_l0"), ("Whh", "weight_hh_l0")):
        assert p[ours].shape == ref[theirs].shape
        for a in (p[ours], ref[theirs]):
            assert np.abs(a).max() <= k and np.abs(a).max() > 0.99 * k
            assert abs(a.std() - k / np.sqrt(3)) < 0.03 * k
            assert abs(a.mean()) < 0.02 * k
    summed = ref["bias_ih_l0"] + ref["bias_hh_l0"]
    G = p["bh"].shape[0]
    sum_part = slice(0, G) if cell == "lstm" else slice(0, 2 * Hn)
    assert np.abs(p["bh"][sum_part]).max() <= 2 * k
    assert np.abs(p["bh"][sum_part]).max() > k  # a sum of two, not one uniform
    assert np.abs(summed[sum_part]).max() <= 2 * k
    # std of a sum of two U(-k, k): k sqrt(2/3)
    assert abs(p["bh"][sum_part].std() - k * np.sqrt(2 / 3)) < 0.2 * k
    if cell == "gru":
        assert np.abs(p["bh"][2 * Hn:]).max() <= k and np.abs(p["bhn"]).max() <= k
        assert p["bhn"].shape == (Hn,)
