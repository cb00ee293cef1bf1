"""PyTorch as the oracle of stacked and bidirectional models.

1. ``torch.nn.RNN(num_layers, bidirectional)`` + ``nn.Linear``, with the weights sent torch-ward
   through ``model.to_torch_state()`` and loaded with ``load_state_dict(strict=True)``: the loss,
   every gradient (each layer and direction, ``h0``, ``x``; read back through
   ``model.to_torch_state(grads)``), ``h_last`` and ``forward()``'s outputs. The axes (layers,
   directions, nonlinearity, tokens/dense, lengths, target_steps, reduction, batch_first,
   output/loss, backend) are combined by an orthogonal array rather than a full product: every
   pair of values of the two-level axes meets, and every row runs on every (layers, directions)
   pair and both backends.

2. Truncated BPTT on stacks against torch autograd with ``detach()``: a hand-written stack
   (``hand_stack``) that implements the documented semantics. The reading tested (from
   ``cyrnn.stack``'s module docstring, ``rnn_backward_window`` and ``TBPTT``):

   - truncation applies *per layer and per direction*: each layer-direction receives the total
     error on its output states (from the output layer or from the layer above, already
     truncated there) and truncates it on its own, in its own processing order. For a look-back
     ``k_t`` this means: the error arriving at a layer-direction's state of processing step ``t``
     reaches that layer-direction's pre-activations of steps ``t - k_t + 1 .. t`` and its ``h0``
     only when ``t <= k_t - 2``; from each of those pre-activations it passes into the layer
     below's state at the same natural step (where it is windowed again). So a 2-layer stack with
     ``truncate=k`` reaches up to ``2k - 1`` steps back. The torch reference recomputes each
     windowed state from the detached state before its window, with inputs that are the
     *windowed* states of the layer below;
   - a carry scale (``TBPTT(k, k)``, ``RandomizedTruncation``) is one ``(T,)`` array, applied
     to every layer-direction in its processing order: the state entering processing step ``s``
     is ``h.detach() + c_s (h - h.detach())``; padded steps pass their gradient unscaled;
   - the reverse direction with ``lengths`` processes each sequence reversed within its own
     length (step ``t`` <-> ``len - 1 - t``), so its windows and carries are indexed by that
     processing step.

   The hand stack without truncation is itself checked against ``torch.nn.RNN``.

3. Weight exchange with real torch modules: ``from_torch(rnn.state_dict() + fc)`` equals torch's
   forward; ``to_torch_state`` loads with ``strict=True``.
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

T, B, I, H, O = 6, 3, 4, 3, 5
LENGTHS = np.array([6, 2, 4])  # unsorted: pack_padded_sequence(enforce_sorted=False)
ARCHS = [(1, False), (1, True), (2, False), (2, True), (3, False), (3, True)]
ARCH_IDS = [f"L{L}-{'bi' if bi else 'uni'}" for L, bi in ARCHS]
PAIRS = [("softmax", "cross_entropy"), ("linear", "mse"), ("sigmoid", "bce")]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def torch_twin(model):
    """``torch.nn.RNN`` + ``nn.Linear`` (or None) in float64 holding the model's weights, loaded
    from ``model.to_torch_state()`` with ``strict=True``."""
    D = 2 if model.bidirectional else 1
    rnn = torch.nn.RNN(model.input_size, model.hidden_size, num_layers=model.num_layers,
                       bidirectional=model.bidirectional, nonlinearity=model.nonlinearity,
                       batch_first=model.batch_first, dtype=torch.float64)
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
    y = torch.sigmoid(z) if output == "sigmoid" else (torch.softmax(z, -1) if output == "softmax"
                                                      else z)
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
    """The logits (N, O) carrying a loss, and their targets, from time-major z (T, B, O) and a
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
    """Torch's gradients under torch's state-dict names (with the ``rnn.``/``fc.`` prefixes)."""
    out = {"rnn." + n: np_grad(p) for n, p in rnn.named_parameters()}
    if fc is not None:
        out.update({"fc." + n: np_grad(p) for n, p in fc.named_parameters()})
    return out


def compare_torch_grads(model, grads, want, context):
    """cyrnn's gradients through ``to_torch_state`` against torch's: every weight and
    ``bias_ih``; ``bias_hh`` is zero on cyrnn's side (bh -> bias_ih) and equals ``bias_ih`` on
    torch's."""
    got = model.to_torch_state(grads)
    assert set(got) == set(want), f"keys: {sorted(got)} vs {sorted(want)}"
    for key, value in want.items():
        if "bias_hh" in key:
            np.testing.assert_array_equal(got[key], 0.0)
            assert_close(f"torch's own {key} vs bias_ih", value,
                         want[key.replace("bias_hh", "bias_ih")], context)
        else:
            assert_close(f"grad {key}", got[key], value, context)


# ---------------------------------------------------------------------------------------------
# 1. torch.nn.RNN oracle
# ---------------------------------------------------------------------------------------------

# L8 orthogonal array over seven two-level axes: nonlinearity, tokens, lengths, target_steps,
# reduction, batch_first, h0 given; the (output, loss) pair cycles over the rows
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
    dict(nonlinearity=("tanh", "relu")[a], tokens=bool(b), lengths=bool(c),
         target_steps=("all", "last")[d], reduction=("mean", "sum")[e], batch_first=bool(f),
         h0=bool(g), pair=PAIRS[i % 3])
    for i, (a, b, c, d, e, f, g) in enumerate(OA8)
]
ROW_IDS = [
    "{}-{}-{}-{}-{}-{}-{}-{}".format(
        r["nonlinearity"], "tok" if r["tokens"] else "dense", "len" if r["lengths"] else "full",
        r["target_steps"], r["reduction"], "bf" if r["batch_first"] else "tm",
        "h0" if r["h0"] else "noh0", r["pair"][0])
    for r in ROWS
]


def run_oracle_case(backend, L, bi, row, seed=0):
    rng = np.random.default_rng(seed)
    output, loss = row["pair"]
    bf = row["batch_first"]
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, nonlinearity=row["nonlinearity"],
                      output=output, dtype="float64", seed=seed, backend=backend,
                      batch_first=bf)
    tokens = row["tokens"]
    if tokens:
        x_tm = rng.integers(0, I, size=(T, B))
    else:
        x_tm = rng.normal(size=(T, B, I))
    x = np.swapaxes(x_tm, 0, 1).copy() if bf else x_tm
    h0 = rng.normal(scale=0.5, size=(S, B, H)) if row["h0"] else None
    lengths = LENGTHS.copy() if row["lengths"] else None
    ts = row["target_steps"]
    shape = ((B, T) if bf else (T, B)) if ts == "all" else (B,)
    target = make_target(rng, loss, shape, O)

    y, h_fwd = model.forward(x, h0=h0, lengths=lengths)
    value, grads, h_last = model.loss_and_grad(x, target, h0=h0, lengths=lengths, loss=loss,
                                               reduction=row["reduction"], target_steps=ts)

    # torch
    rnn, fc = torch_twin(model)
    if tokens:
        inputs = F.one_hot(torch.as_tensor(x), I).double()
        x_t = None
    else:
        inputs = x_t = leaf(x)
    h0_t = leaf(np.zeros((S, B, H)) if h0 is None else h0)
    if lengths is None:
        out, h_n = rnn(inputs, h0_t)
    else:
        packed = pack_padded_sequence(inputs, torch.as_tensor(lengths), batch_first=bf,
                                      enforce_sorted=False)
        out, h_n = rnn(packed, h0_t)
        out, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
    out_tm = out.transpose(0, 1) if bf else out
    z = fc(out_tm)
    z_sel, t_sel = select(z, target, ts, lengths, bf, loss)
    value_t = torch_loss(z_sel, t_sel, loss, output, row["reduction"])
    value_t.backward()

    context = f"[{model!r} {row}]"
    assert isinstance(value, float)
    assert_close("loss", value, value_t.item(), context)
    # forward outputs, at the valid steps
    y_tm = np.swapaxes(y, 0, 1) if bf else y
    assert y_tm.shape == (T, B, O)
    want_y = torch_output(output, z).detach().numpy()
    valid = np.arange(T)[:, None] < (np.full(B, T) if lengths is None else lengths)[None, :]
    assert_close("y", y_tm[valid], want_y[valid], context)
    # states: (S, B, H), or (B, H) for a single layer-direction called without h0
    state_shape = (B, H) if (S == 1 and h0 is None) else (S, B, H)
    for name, got in (("h_last (forward)", h_fwd), ("h_last (loss_and_grad)", h_last),
                      ("grads['h0']", grads["h0"])):
        assert got.shape == state_shape, f"{name}: shape {got.shape} {context}"
    assert_close("h_last (forward)", h_fwd.reshape(S, B, H), h_n.detach().numpy(), context)
    assert_close("h_last (loss_and_grad)", h_last.reshape(S, B, H), h_n.detach().numpy(), context)
    assert_close("grad h0", grads["h0"].reshape(S, B, H), np_grad(h0_t), context)
    if tokens:
        assert "x" not in grads
    else:
        assert_close("grad x", grads["x"], np_grad(x_t), context)
    expected_keys = set(model.params) | {"h0"} | (set() if tokens else {"x"})
    assert set(grads) == expected_keys
    compare_torch_grads(model, grads, torch_grads(rnn, fc), context)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("L, bi", ARCHS, ids=ARCH_IDS)
def test_against_nn_rnn(backend, L, bi, row):
    run_oracle_case(backend, L, bi, row)


def test_oracle_rows_cover_every_pair_of_values():
    """The orthogonal array really pairs every two values of every two axes (so each value
    meets stacks and bidirectional, which every row runs on)."""
    for i, j in itertools.combinations(range(7), 2):
        assert {(r[i], r[j]) for r in OA8} == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize("L, bi", [
    (2, True),
    (3, False),
], ids=["L2-bi", "L3-uni"])
def test_no_output_layer_against_nn_rnn(backend, L, bi):
    """``output_size=None``: the top states (T, B, D*H) are the output, mse on them."""
    rng = np.random.default_rng(5)
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, None, num_layers=L, bidirectional=bi, dtype="float64", seed=2,
                      backend=backend)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(S, B, H))
    target = rng.normal(size=(T, B, D * H))
    for lengths in (None, LENGTHS):
        y, h_fwd = model.forward(x, h0, lengths)
        value, grads, h_last = model.loss_and_grad(x, target, h0, lengths)
        rnn, fc = torch_twin(model)
        assert fc is None
        x_t, h0_t = leaf(x), leaf(h0)
        if lengths is None:
            out, h_n = rnn(x_t, h0_t)
        else:
            out, h_n = rnn(pack_padded_sequence(x_t, torch.as_tensor(lengths),
                                                enforce_sorted=False), h0_t)
            out, _ = pad_packed_sequence(out, total_length=T)
        z_sel, t_sel = select(out, target, "all", lengths, False, "mse")
        value_t = F.mse_loss(z_sel, t_sel)
        value_t.backward()
        lens = np.full(B, T) if lengths is None else lengths
        valid = np.arange(T)[:, None] < lens[None, :]
        assert y.shape == (T, B, D * H)
        assert_close("y", y[valid], out.detach().numpy()[valid])
        assert_close("loss", value, value_t.item())
        assert_close("h_last", h_fwd, h_n.detach().numpy())
        assert_close("h_last", h_last, h_n.detach().numpy())
        assert_close("grad h0", grads["h0"], np_grad(h0_t))
        assert_close("grad x", grads["x"], np_grad(x_t))
        compare_torch_grads(model, grads, torch_grads(rnn, None), "")


# ---------------------------------------------------------------------------------------------
# 2. the hand-written stack (torch autograd, detach) for truncation
# ---------------------------------------------------------------------------------------------


def activation(nonlinearity, slope=0.01):
    return {
        "tanh": torch.tanh,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "leaky_relu": lambda a: F.leaky_relu(a, slope),
        "identity": lambda a: a,
    }[nonlinearity]


def hand_stack(P, X, h0, L, D, act, lengths=None, window=None, carry=None, masks=None,
               keep=None):
    """The stack written out in torch ops, time-major.

    ``P``: cyrnn parameter name -> torch leaf; ``X`` (T, B, I) inputs (one-hot rows for tokens);
    ``h0`` (L*D, B, H). ``window``: int or (T,) look-backs; ``carry``: (T,) carry scales; both
    per layer-direction in its processing order (see the module docstring). ``masks``: dropout
    multipliers (L-1, T, B, D*H). ``keep``: a dict that receives each layer-direction's states
    ``hs[1:]`` (processing order), with ``retain_grad``. Returns
    ``(top (T, B, D*H), h_last (L*D, B, H))``; the values
    never depend on the truncation, only the gradients do.
    """
    Tn, Bn = X.shape[:2]
    lens = np.full(Bn, Tn) if lengths is None else np.asarray(lengths)
    t_col = np.arange(Tn)[:, None]
    steps = np.where(t_col < lens[None, :], lens[None, :] - 1 - t_col, t_col)  # own inverse
    rows = np.arange(Bn)[None, :]
    active = torch.as_tensor(t_col < lens[None, :])[..., None]
    windows = None if window is None else np.broadcast_to(np.asarray(window), (Tn,))
    h_last = []
    for layer in range(L):
        outs = []
        for d in range(D):
            j = layer * D + d
            s = ("" if layer == 0 else f"_l{layer}") + ("_reverse" if d else "")
            Wxh, Whh, bh = P["Wxh" + s], P["Whh" + s], P["bh" + s]
            proj = X @ Wxh.T + bh
            if d:
                proj = proj[steps, rows]  # processing order

            def step(t, h, h_in=None):
                new = act(proj[t] + (h if h_in is None else h_in) @ Whh.T)
                return torch.where(active[t], new, h)

            hs = [h0[j]]  # hs[t]: the state entering processing step t
            for t in range(Tn):
                h = hs[-1]
                h_in = None if carry is None else h.detach() + float(carry[t]) * (h - h.detach())
                hs.append(step(t, h, h_in))
            h_last.append(hs[-1])
            if keep is not None:
                for h in hs[1:]:
                    h.retain_grad()
                keep[j] = hs[1:]
            if windows is None:
                seq = torch.stack(hs[1:])
            else:
                recomputed = []
                for t in range(Tn):
                    first = t - int(windows[t]) + 1  # earliest pre-activation reached
                    h, start = (hs[first].detach(), first) if first >= 0 else (h0[j], 0)
                    for r in range(start, t + 1):
                        h = step(r, h)
                    recomputed.append(h)
                seq = torch.stack(recomputed)
            outs.append(seq[steps, rows] if d else seq)
        X = torch.cat(outs, -1)
        if masks is not None and layer < L - 1:
            X = X * torch.as_tensor(masks[layer])
    return X, torch.stack(h_last)


def hand_case(model, x_tm, h0, target, *, lengths, target_steps, loss, reduction,
              window=None, carry=None, masks=None, keep=None):
    """Loss and gradients (cyrnn names, plus h0 and x) of the hand stack on the model's weights."""
    D = 2 if model.bidirectional else 1
    P = {name: leaf(p) for name, p in model.params.items()}
    tokens = x_tm.dtype.kind in "iu"
    x_t = None
    if tokens:
        X = F.one_hot(torch.as_tensor(x_tm), model.input_size).double()
    else:
        X = x_t = leaf(x_tm)
    h0_t = leaf(h0)
    top, h_last = hand_stack(P, X, h0_t, model.num_layers, D,
                             activation(model.nonlinearity, model.negative_slope),
                             lengths, window, carry, masks, keep)
    z = top if model.output_size is None else top @ P["Why"].T + P["by"]
    z_sel, t_sel = select(z, target, target_steps, lengths, False, loss)
    value = torch_loss(z_sel, t_sel, loss, model.output, reduction)
    value.backward()
    grads = {name: np_grad(p) for name, p in P.items()}
    grads["h0"] = np_grad(h0_t)
    if x_t is not None:
        grads["x"] = np_grad(x_t)
    return value.item(), grads, h_last.detach().numpy(), top.detach().numpy()


def compare_dicts(got, want, context=""):
    assert set(got) == set(want), f"keys {sorted(got)} vs {sorted(want)}"
    for name in want:
        assert_close(f"grad {name}", got[name], want[name], context)


@pytest.mark.parametrize("L, bi", [(2, True), (3, False), (1, True)], ids=["L2-bi", "L3", "L1-bi"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
def test_hand_stack_is_nn_rnn(L, bi, use_lengths):
    """The reference of the truncation tests, untruncated, is torch.nn.RNN itself."""
    rng = np.random.default_rng(3)
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, dtype="float64", seed=1,
                      backend="numpy")
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(S, B, H))
    lengths = LENGTHS if use_lengths else None
    target = rng.integers(0, O, size=(T, B))
    value, grads, h_last, _ = hand_case(model, x, h0, target, lengths=lengths,
                                        target_steps="all", loss="cross_entropy",
                                        reduction="mean")
    rnn, fc = torch_twin(model)
    x_t, h0_t = leaf(x), leaf(h0)
    if lengths is None:
        out, h_n = rnn(x_t, h0_t)
    else:
        out, h_n = rnn(pack_padded_sequence(x_t, torch.as_tensor(lengths), enforce_sorted=False),
                       h0_t)
        out, _ = pad_packed_sequence(out, total_length=T)
    z_sel, t_sel = select(fc(out), target, "all", lengths, False, "cross_entropy")
    value_t = F.cross_entropy(z_sel, t_sel)
    value_t.backward()
    assert_close("loss", value, value_t.item())
    assert_close("h_last", h_last, h_n.detach().numpy())
    assert_close("grad h0", grads["h0"], np_grad(h0_t))
    assert_close("grad x", grads["x"], np_grad(x_t))
    want = torch_grads(rnn, fc)
    mine = model.to_torch_state({k: v for k, v in grads.items() if k not in ("h0", "x")})
    for key, value in want.items():
        if "bias_hh" not in key:
            assert_close(key, mine[key], value)


TRUNCATIONS = {
    "k2": 2,
    "k3": 3,
    "tbptt(2,3)": cyrnn.TBPTT(2, 3),
    "tbptt(1,2)": cyrnn.TBPTT(1, 2),
    "tbptt(2,2)": cyrnn.TBPTT(2, 2),
    "tbptt(3,3)": cyrnn.TBPTT(3),
    "randomized(0.5)": "randomized",
}
# (layers, bidirectional, tokens, lengths, target_steps, (output, loss)): fused (no lengths, every
# step, cross-entropy/mse) and composed paths both
TRUNC_CASES = [
    (2, False, False, False, "all", ("softmax", "cross_entropy")),
    (2, True, False, True, "all", ("linear", "mse")),
    (2, True, True, False, "last", ("softmax", "cross_entropy")),
    (3, True, False, False, "all", ("linear", "mse")),
    (3, False, True, True, "last", ("sigmoid", "bce")),
    (2, True, False, True, "last", ("sigmoid", "bce")),
]
TRUNC_IDS = [f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'tok' if c[2] else 'dense'}-"
             f"{'len' if c[3] else 'full'}-{c[4]}-{c[5][1]}" for c in TRUNC_CASES]


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
    L, bi, tokens, use_lengths, ts, (output, loss) = case
    rng = np.random.default_rng(11)
    Tn = 7
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, output=output, dtype="float64",
                      seed=4, backend=backend, nonlinearity="tanh")
    # larger recurrent weights so that truncation changes every gradient noticeably
    for name in model.params:
        if name.startswith("Whh"):
            model.params[name] *= 2.5
    x = rng.integers(0, I, size=(Tn, B)) if tokens else rng.normal(size=(Tn, B, I))
    h0 = rng.normal(scale=0.5, size=(S, B, H))
    lengths = np.array([7, 3, 5]) if use_lengths else None
    target = make_target(rng, loss, (Tn, B) if ts == "all" else (B,), O)
    truncate, window, carry = truncation_args(trunc, Tn)
    value, grads, h_last = model.loss_and_grad(x, target, h0, lengths, loss=loss,
                                               reduction="sum", target_steps=ts,
                                               truncate=truncate)
    want_value, want, want_h_last, _ = hand_case(
        model, x, h0, target, lengths=lengths, target_steps=ts, loss=loss, reduction="sum",
        window=window, carry=carry)
    context = f"[{model!r} truncate={trunc}]"
    assert_close("loss", value, want_value, context)
    assert_close("h_last", h_last, want_h_last, context)
    compare_dicts(grads, want, context)
    # the truncation matters: the full gradient is different
    _, full, _ = model.loss_and_grad(x, target, h0, lengths, loss=loss, reduction="sum",
                                     target_steps=ts)
    assert any(not np.allclose(full[n], grads[n], rtol=1e-6, atol=1e-9) for n in grads
               if n.startswith("Whh"))


@pytest.mark.parametrize("L, bi", [(2, True), (3, False)], ids=["L2-bi", "L3-uni"])
def test_long_window_is_full_bptt(backend, L, bi):
    """``truncate >= T + 1`` is full BPTT; ``truncate = T`` differs only through h0 at the
    first layer-direction states (checked against the hand stack)."""
    rng = np.random.default_rng(2)
    S = L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, output="softmax", dtype="float64",
                      seed=4, backend=backend)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(S, B, H))
    target = rng.integers(0, O, size=(T, B))
    _, full, _ = model.loss_and_grad(x, target, h0, lengths=LENGTHS)
    _, long, _ = model.loss_and_grad(x, target, h0, lengths=LENGTHS, truncate=T + 1)
    compare_dicts(long, full)
    _, short, _ = model.loss_and_grad(x, target, h0, lengths=LENGTHS, truncate=T)
    _, want, _, _ = hand_case(model, x, h0, target, lengths=LENGTHS, target_steps="all",
                              loss="cross_entropy", reduction="mean", window=T)
    compare_dicts(short, want)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "leaky_relu", "identity"])
def test_other_nonlinearities_on_a_bidirectional_stack(backend, nonlinearity):
    """Nonlinearities torch.nn.RNN lacks, on a 2-layer bidirectional stack with lengths."""
    rng = np.random.default_rng(9)
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, nonlinearity=nonlinearity,
                      negative_slope=0.2, output="softmax", dtype="float64", seed=3,
                      backend=backend)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(4, B, H))
    target = rng.integers(0, O, size=(T, B))
    value, grads, h_last = model.loss_and_grad(x, target, h0, LENGTHS)
    want_value, want, want_h_last, top = hand_case(model, x, h0, target, lengths=LENGTHS,
                                                   target_steps="all", loss="cross_entropy",
                                                   reduction="mean")
    assert_close("loss", value, want_value)
    assert_close("h_last", h_last, want_h_last)
    compare_dicts(grads, want)


@pytest.mark.parametrize("L, bi, use_lengths, trunc", [
    (2, True, False, None), (3, False, True, None), (2, False, True, "tbptt(2,2)"),
    (2, True, False, "randomized(0.5)"),
], ids=["L2-bi", "L3-len", "L2-len-tbptt(2,2)", "L2-bi-randomized"])
def test_grad_norms_against_torch(backend, L, bi, use_lengths, trunc):
    """``backprop().grad_norms[t]``: the norm of dL/dh_t over every layer-direction's state at
    natural step t (torch: ``retain_grad`` on each state), for full BPTT and carries."""
    rng = np.random.default_rng(4)
    D, S = (2 if bi else 1), L * (2 if bi else 1)
    model = cyrnn.RNN(I, H, O, num_layers=L, bidirectional=bi, output="softmax", dtype="float64",
                      seed=5, backend=backend)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(S, B, H))
    target = rng.integers(0, O, size=(T, B))
    lengths = LENGTHS if use_lengths else None
    truncate, carry = None, None
    if trunc is not None:
        truncate, _, carry = truncation_args(trunc, T)
    result = model.backprop(x, target, h0, lengths, truncate=truncate)
    keep = {}
    hand_case(model, x, h0, target, lengths=lengths, target_steps="all", loss="cross_entropy",
              reduction="mean", carry=carry, keep=keep)
    squares = np.zeros(T)
    for j, hs in keep.items():
        for t in range(T):
            # natural step t of the reverse direction is its processing step T - 1 - t
            g = np_grad(hs[T - 1 - t] if j % D else hs[t])
            squares[t] += np.sum(g ** 2)
    assert result.grad_norms is not None and result.grad_norms.shape == (T,)
    assert_close("grad_norms", result.grad_norms, np.sqrt(squares))


def test_grad_norms_are_none_where_documented():
    rng = np.random.default_rng(0)
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=True, output="softmax", seed=0)
    x, target = rng.normal(size=(T, B, I)).astype(np.float32), rng.integers(0, O, size=(T, B))
    assert model.backprop(x, target, truncate=2).grad_norms is None  # a look-back window
    assert model.backprop(x, target, lengths=LENGTHS).grad_norms is None  # reverse + lengths
    assert model.backprop(x, target, lengths=np.full(B, T)).grad_norms is not None  # no padding


# ---------------------------------------------------------------------------------------------
# 3. weight exchange with real torch modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L, bi", [(2, True), (3, True), (2, False)], ids=["L2-bi", "L3-bi", "L2"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_from_torch_equals_torch_forward(backend, L, bi, nonlinearity):
    torch.manual_seed(0)
    D = 2 if bi else 1
    rnn = torch.nn.RNN(I, H, num_layers=L, bidirectional=bi, nonlinearity=nonlinearity,
                       dtype=torch.float64)
    fc = torch.nn.Linear(D * H, O, dtype=torch.float64)
    state = {"rnn." + k: v for k, v in rnn.state_dict().items()}
    state.update({"fc." + k: v for k, v in fc.state_dict().items()})
    # the torch state dict itself (tensors; np.asarray reads them)
    model = cyrnn.RNN.from_torch(state, dtype="float64", nonlinearity=nonlinearity,
                                 backend=backend)
    assert (model.num_layers, model.bidirectional) == (L, bi)
    assert model.params["Why"].shape == (O, D * H)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(L * D, B, H))
    for lengths in (None, LENGTHS):
        y, h_last = model.forward(x, h0, lengths)
        with torch.no_grad():
            if lengths is None:
                out, h_n = rnn(torch.from_numpy(x), torch.from_numpy(h0))
            else:
                out, h_n = rnn(pack_padded_sequence(torch.from_numpy(x), torch.as_tensor(lengths),
                                                    enforce_sorted=False), torch.from_numpy(h0))
                out, _ = pad_packed_sequence(out, total_length=T)
            z = fc(out).numpy()
        lens = np.full(B, T) if lengths is None else lengths
        valid = np.arange(T)[:, None] < lens[None, :]
        assert_close("y", y[valid], z[valid])
        assert_close("h_last", h_last, h_n.numpy())
    # and back: to_torch_state loads strictly into a fresh pair and reproduces the weights
    rnn2, fc2 = torch_twin(model)
    for k, v in rnn.state_dict().items():
        if "bias" not in k:
            np.testing.assert_array_equal(rnn2.state_dict()[k].numpy(), v.numpy())
    for k in [k for k in rnn.state_dict() if k.startswith("bias_ih")]:
        kk = k.replace("bias_ih", "bias_hh")
        np.testing.assert_allclose(rnn2.state_dict()[k].numpy(),
                                   (rnn.state_dict()[k] + rnn.state_dict()[kk]).numpy(), rtol=1e-15)
    np.testing.assert_array_equal(fc2.weight.detach().numpy(), fc.weight.detach().numpy())


def test_to_torch_state_loads_strictly_with_custom_prefixes():
    model = cyrnn.RNN(I, H, O, num_layers=3, bidirectional=True, dtype="float64", seed=0)
    state = model.to_torch_state(rnn_prefix="", output_prefix="head.")
    rnn = torch.nn.RNN(I, H, num_layers=3, bidirectional=True, dtype=torch.float64)
    head = torch.nn.Linear(2 * H, O, dtype=torch.float64)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()
                         if not k.startswith("head.")}, strict=True)
    head.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in state.items()
                          if k.startswith("head.")}, strict=True)
    # bh -> bias_ih, bias_hh zero
    np.testing.assert_array_equal(state["bias_ih_l2_reverse"], model.params["bh_l2_reverse"])
    np.testing.assert_array_equal(state["bias_hh_l2_reverse"], 0.0)
    # copies, not views
    state["weight_hh_l0"][...] = 0
    assert np.any(model.params["Whh"] != 0)
