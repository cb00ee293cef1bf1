"""PyTorch as the oracle: cyrnn's outputs, losses and every BPTT gradient against torch autograd.

Each case builds a ``cyrnn.RNN``, copies its weights into ``torch.nn.RNN`` + ``torch.nn.Linear``
(in the model's dtype; the global torch default dtype is never changed), runs the same batch
through both, and compares ``y``, ``h_last``, the loss and every gradient cyrnn returns (``Wxh,
Whh, bh, Why, by, h0`` and ``x`` for dense inputs).

torch.nn.RNN only knows tanh and relu; for the other nonlinearities, for truncated BPTT and for
embedding-style token inputs the oracle is the recurrence written out in torch ops (a Python loop
over t, differentiated by autograd) on the same torch parameters. ``test_hand_loop_is_nn_rnn``
checks that hand loop against ``torch.nn.RNN`` itself.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cyrnn  # noqa: E402
from cyrnn import losses  # noqa: E402

F = torch.nn.functional
pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = torch.nn.utils.rnn.pad_packed_sequence

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# relative tolerance, and absolute tolerance relative to the largest entry of the reference
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}

NATIVE = ("tanh", "relu")  # the nonlinearities torch.nn.RNN has
# (output, loss) pairs: the defaults, and the other combinations cyrnn accepts
DEFAULT_PAIRS = [("linear", "mse"), ("softmax", "cross_entropy"), ("sigmoid", "bce")]
OTHER_PAIRS = [("linear", "cross_entropy"), ("linear", "bce"), ("sigmoid", "mse")]
PAIR_IDS = [f"{o}-{loss}" for o, loss in DEFAULT_PAIRS]
SIZES = {"T7-B3-I5-H6-O4": (7, 3, 5, 6, 4), "B1": (7, 1, 5, 6, 4), "T1": (1, 3, 5, 6, 4)}
# every nonlinearity cyrnn has, with the leaky slope (used only by leaky_relu)
NONLINEARITIES = [
    ("tanh", 0.01),
    ("relu", 0.01),
    ("sigmoid", 0.01),
    ("leaky_relu", 0.01),
    ("leaky_relu", 0.3),
    ("identity", 0.01),
]
NL_IDS = ["tanh", "relu", "sigmoid", "leaky_relu", "leaky_relu-0.3", "identity"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def assert_close(name, got, want, dtype, context=""):
    """``got`` (cyrnn) equals ``want`` (torch) up to the dtype's tolerance, scaled by ``want``."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: cyrnn shape {got.shape}, torch shape {want.shape} {context}"
    tol = TOL[np.dtype(dtype)]
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    np.testing.assert_allclose(
        got, want, rtol=tol, atol=tol * scale, err_msg=f"{name} differs from torch {context}"
    )


def compare_grads(got, want, dtype, context=""):
    """Every gradient cyrnn returns, and no other, matches torch's (dtype and values)."""
    assert sorted(got) == sorted(want), f"gradient keys: cyrnn {sorted(got)}, torch {sorted(want)}"
    for name in want:
        assert got[name].dtype == np.dtype(dtype), f"grad {name}: dtype {got[name].dtype} {context}"
        assert_close(f"grad {name}", got[name], want[name], dtype, context)


def leaf(a, tdtype):
    """A fresh torch leaf tensor (copy of ``a``) that collects a gradient."""
    return torch.tensor(np.asarray(a), dtype=tdtype, requires_grad=True)


def numpy(t):
    return None if t is None else t.detach().numpy()


def grad_of(t):
    """``t.grad`` as NumPy; zeros when the loss does not reach ``t`` (autograd leaves None)."""
    return np.zeros(tuple(t.shape), dtype=numpy(t).dtype) if t.grad is None else numpy(t.grad)


def make_target(rng, loss, shape, O, dtype):
    """Class ids ``shape`` for cross-entropy, values ``shape + (O,)`` for mse (any) / bce ([0, 1])."""
    if loss == "cross_entropy":
        return rng.integers(0, O, size=shape)
    if loss == "bce":
        return rng.uniform(0.0, 1.0, size=shape + (O,)).astype(dtype)
    return rng.standard_normal(shape + (O,)).astype(dtype)


def torch_output(output, z):
    """The output function g of ``y = g(z)`` in torch."""
    if output == "softmax":
        return torch.softmax(z, dim=-1)
    if output == "sigmoid":
        return torch.sigmoid(z)
    return z


def torch_loss(z, target, loss, output, reduction):
    """torch's loss of logits ``z`` (N, O) against ``target`` (N,) class ids or (N, O) values."""
    if loss == "cross_entropy":
        return torch.nn.CrossEntropyLoss(reduction=reduction)(z, target)
    if loss == "bce":
        return torch.nn.BCEWithLogitsLoss(reduction=reduction)(z, target)
    return torch.nn.MSELoss(reduction=reduction)(torch_output(output, z), target)


def time_major(a, batched, batch_first):
    """A user-layout array/tensor (T, B, ...), (B, T, ...) or unbatched (T, ...) as (T, B, ...)."""
    if not batched:
        return a[:, None]
    return a.swapaxes(0, 1) if batch_first else a


class TorchNet:
    """``torch.nn.RNN`` + ``torch.nn.Linear`` in a given dtype, and two ways to run them.

    ``run_module`` is the torch RNN itself (tanh/relu, packed sequences for ``lengths``);
    ``run_by_hand`` is the same recurrence as a Python loop of torch ops, for every nonlinearity
    and for truncated BPTT. The hand loop uses the module's parameters, so ``grads`` reads the same
    ``.grad`` fields either way.
    """

    def __init__(
        self, I, H, O, dtype, nonlinearity="tanh", negative_slope=0.01, batch_first=False, bias=True
    ):
        self.tdtype = TORCH_DTYPE[np.dtype(dtype)]
        self.nonlinearity, self.negative_slope = nonlinearity, negative_slope
        mode = nonlinearity if nonlinearity in NATIVE else "tanh"  # unused by the hand loop
        self.rnn = torch.nn.RNN(
            I, H, nonlinearity=mode, batch_first=batch_first, bias=bias, dtype=self.tdtype
        )
        self.fc = None if O is None else torch.nn.Linear(H, O, bias=bias, dtype=self.tdtype)

    @classmethod
    def like(cls, model, split_bias=False):
        """A torch twin of ``model``: ``bh`` goes to ``bias_ih_l0`` (``bias_hh_l0 = 0``), or split
        between the two when ``split_bias``."""
        net = cls(
            model.input_size,
            model.hidden_size,
            model.output_size,
            model.dtype,
            model.nonlinearity,
            model.negative_slope,
            batch_first=model.batch_first,
        )
        p = model.params
        part = np.linspace(-0.7, 0.4, model.hidden_size) if split_bias else np.zeros(model.hidden_size)
        values = {
            "weight_ih_l0": p["Wxh"],
            "weight_hh_l0": p["Whh"],
            "bias_ih_l0": p["bh"] - part,
            "bias_hh_l0": part,
        }
        with torch.no_grad():
            for name, value in values.items():
                getattr(net.rnn, name).copy_(torch.from_numpy(np.asarray(value)))
            if net.fc is not None:
                net.fc.weight.copy_(torch.from_numpy(p["Why"]))
                net.fc.bias.copy_(torch.from_numpy(p["by"]))
        return net

    def randomize(self, rng, scale=0.6):
        """Every parameter ~ U(-scale, scale), both RNN biases nonzero."""
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.from_numpy(rng.uniform(-scale, scale, size=tuple(p.shape))))
        return self

    def parameters(self):
        return list(self.rnn.parameters()) + ([] if self.fc is None else list(self.fc.parameters()))

    def state_dict(self):
        """The torch state dict of the pair as the docs of ``RNN.from_torch`` describe it."""
        state = {"rnn." + k: v for k, v in self.rnn.state_dict().items()}
        if self.fc is not None:
            state.update({"fc." + k: v for k, v in self.fc.state_dict().items()})
        return state

    def head(self, h):
        """Logits of states ``h`` (..., H); the states themselves without an output layer."""
        return h if self.fc is None else self.fc(h)

    def activate(self, a):
        nl = self.nonlinearity
        if nl == "tanh":
            return torch.tanh(a)
        if nl == "relu":
            return torch.relu(a)
        if nl == "sigmoid":
            return torch.sigmoid(a)
        if nl == "leaky_relu":
            return F.leaky_relu(a, self.negative_slope)
        assert nl == "identity"
        return a

    def run_module(self, x, h0, lengths=None):
        """torch.nn.RNN on ``x`` in the user layout; returns time-major states (T, B, H) (unbatched:
        (T, H)) and the last state ``h_n`` (B, H) (unbatched: (H,))."""
        assert self.nonlinearity in NATIVE
        bf = self.rnn.batch_first
        if lengths is None:
            out, h_n = self.rnn(x, h0.unsqueeze(0))
        else:
            T = x.shape[1] if bf else x.shape[0]
            packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=bf, enforce_sorted=False)
            out, h_n = self.rnn(packed, h0.unsqueeze(0))
            out, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
        if bf and x.dim() == 3:
            out = out.transpose(0, 1)
        return out, h_n[0]

    def run_by_hand(self, xproj, h0, lengths=None, truncate=None):
        """The Elman recurrence written out, time-major: ``xproj`` (T, B, H) is ``x_t Wxh^T`` (or
        embedding rows), ``h0`` (B, H). Steps ``t >= lengths[b]`` keep the state.

        Returns ``(states, h_last)``: ``states[t]`` is the state output ``t`` reads. With
        ``truncate=k`` it is recomputed for each ``t`` from the state before step ``t-k+1``,
        detached, so output ``t``'s error reaches the pre-activations of steps ``t-k+1 .. t``
        only, and ``h0`` only when ``t-k+1 < 0``. The values are those of full BPTT.
        """
        T = xproj.shape[0]
        bias = self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0 if self.rnn.bias else 0
        Whh = self.rnn.weight_hh_l0
        active = None
        if lengths is not None:
            active = (torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :])[..., None]

        def step(t, h):
            new = self.activate(xproj[t] + bias + h @ Whh.T)
            return new if active is None else torch.where(active[t], new, h)

        states = [h0]  # states[j]: before step j
        for t in range(T):
            states.append(step(t, states[-1]))
        if truncate is None:
            return torch.stack(states[1:]), states[-1]
        outs = []
        for t in range(T):
            first = t - truncate + 1  # earliest step output t backpropagates into
            h, start = (states[first].detach(), first) if first >= 0 else (h0, 0)
            for s in range(start, t + 1):
                h = step(s, h)
            outs.append(h)
        return torch.stack(outs), states[-1]

    def grads(self):
        """Gradients of the parameters under cyrnn's names (bh: the common grad of both biases)."""
        r = self.rnn
        ih, hh = numpy(r.bias_ih_l0.grad), numpy(r.bias_hh_l0.grad)
        assert_close("torch's bias_hh_l0 grad vs its bias_ih_l0 grad", hh, ih, ih.dtype)
        g = {"Wxh": r.weight_ih_l0.grad, "Whh": r.weight_hh_l0.grad, "bh": r.bias_ih_l0.grad}
        if self.fc is not None:
            g.update(Why=self.fc.weight.grad, by=self.fc.bias.grad)
        return g


def check_case(
    model,
    x,
    target,
    *,
    h0=None,
    lengths=None,
    reduction="mean",
    target_steps="all",
    truncate=None,
    loss=None,
    net=None,
    by_hand=None,
    embedding=False,
    context="",
):
    """Run cyrnn (``forward`` and ``loss_and_grad``) and the torch oracle on one batch, in the
    user's layout, and compare y, h_last, the loss and every gradient.

    ``net``: the torch twin (default ``TorchNet.like(model)``). ``by_hand``: use the hand loop
    (default: when torch.nn.RNN cannot do the case). ``embedding``: token ids go through
    ``nn.Embedding`` (weight ``Wxh^T``) instead of one-hot rows into ``weight_ih``.
    """
    dtype = model.dtype
    loss_name = loss or losses.DEFAULT_LOSS[model.output]
    tokens = np.asarray(x).dtype.kind in "iu"
    batched = np.ndim(x) == (2 if tokens else 3)
    bf = model.batch_first and batched
    net = TorchNet.like(model) if net is None else net
    for p in net.parameters():
        p.grad = None
    tdtype = net.tdtype
    if by_hand is None:
        by_hand = model.nonlinearity not in NATIVE or truncate is not None or embedding
    context = f"[{model!r} {context}]"

    # cyrnn
    y, h_last_fwd = model.forward(x, h0=h0, lengths=lengths)
    value, grads, h_last = model.loss_and_grad(
        x,
        target,
        h0=h0,
        lengths=lengths,
        loss=loss,
        reduction=reduction,
        target_steps=target_steps,
        truncate=truncate,
    )

    # torch, from leaves in the user layout
    I, H = model.input_size, model.hidden_size
    lengths_flat = None if lengths is None else np.reshape(lengths, -1)  # unbatched: (1,)
    if h0 is None:  # cyrnn's default: zeros, whose gradient cyrnn returns as well
        h0 = np.zeros((np.shape(x)[0 if bf else 1], H) if batched else (H,))
    h0_t = leaf(h0, tdtype)
    x_t = emb = None
    if tokens:
        ids = torch.as_tensor(np.asarray(x), dtype=torch.long)
        if embedding:
            weight = net.rnn.weight_ih_l0.detach().T.clone()
            emb = torch.nn.Embedding.from_pretrained(weight, freeze=False)
            inputs = emb(ids)
        else:
            inputs = F.one_hot(ids, I).to(tdtype)
    else:
        inputs = x_t = leaf(x, tdtype)

    if by_hand:
        xproj = inputs if embedding else F.linear(inputs, net.rnn.weight_ih_l0)
        xproj = time_major(xproj, batched, bf)
        states, hl = net.run_by_hand(xproj, h0_t.reshape(xproj.shape[1], H), lengths_flat, truncate)
    else:
        states, hl = net.run_module(inputs, h0_t, lengths)
        if not batched:
            states, hl = states[:, None], hl[None]
    T, B = states.shape[:2]
    z = net.head(states)

    target_t = torch.as_tensor(np.asarray(target))
    target_t = target_t.long() if loss_name == "cross_entropy" else target_t.to(tdtype)
    if target_steps == "last":
        last = np.full(B, T - 1) if lengths is None else lengths_flat - 1
        # many-to-one: torch's own last state h_n through the output layer (with truncation, the
        # truncated state at each sequence's last step)
        h_sel = hl if truncate is None else states[last, np.arange(B)]
        z_sel, t_sel = net.head(h_sel), target_t.reshape((B,) + target_t.shape[(1 if batched else 0):])
    else:
        target_t = time_major(target_t, batched, bf)
        if lengths is None:
            z_sel = z.reshape(T * B, -1)
            t_sel = target_t.reshape((T * B,) + target_t.shape[2:])
        else:
            valid = torch.arange(T)[:, None] < torch.as_tensor(lengths_flat)[None, :]
            z_sel, t_sel = z[valid], target_t[valid]
    value_t = torch_loss(z_sel, t_sel, loss_name, model.output, reduction)
    value_t.backward()

    want = net.grads()
    if embedding:
        want["Wxh"] = emb.weight.grad.T
    want = {k: numpy(v) for k, v in want.items()}
    want["h0"] = grad_of(h0_t)
    if x_t is not None:
        want["x"] = grad_of(x_t)

    # compare
    assert isinstance(value, float), f"loss: {type(value)}"
    assert_close("loss", value, value_t.item(), dtype, context)
    y_t = numpy(torch_output(model.output, z)) if model.output_size is not None else numpy(z)
    y_tm = time_major(y, batched, bf)
    if lengths is not None:  # outputs at padded steps are meaningless
        valid = np.arange(T)[:, None] < lengths_flat[None, :]
        y_tm, y_t = y_tm[valid], y_t[valid]
    assert y.dtype == dtype
    assert_close("y", y_tm, y_t, dtype, context)
    hl_user = numpy(hl) if batched else numpy(hl)[0]
    assert_close("h_last (forward)", h_last_fwd, hl_user, dtype, context)
    assert_close("h_last (loss_and_grad)", h_last, hl_user, dtype, context)
    compare_grads(grads, want, dtype, context)
    return value, grads


def make_model(backend, dtype, I, H, O, nonlinearity="tanh", output="linear", negative_slope=0.01, **kw):
    """A cyrnn model with PyTorch-style uniform initial weights (nonzero biases)."""
    kw.setdefault("seed", 0)
    return cyrnn.RNN(
        I, H, O, nonlinearity=nonlinearity, negative_slope=negative_slope, output=output,
        dtype=dtype, backend=backend, **kw,
    )


def dense(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# 1. torch.nn.RNN: tanh / relu, every output and loss, both reductions, odd sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_nn_rnn(backend, dtype, rng, nonlinearity, output, loss, reduction, sizes):
    T, B, I, H, O = sizes
    model = make_model(backend, dtype, I, H, O, nonlinearity, output)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    check_case(model, x, target, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output,loss", OTHER_PAIRS, ids=[f"{o}-{loss}" for o, loss in OTHER_PAIRS])
def test_nn_rnn_other_loss_pairings(backend, dtype, rng, output, loss, reduction):
    """cross_entropy / bce reading a linear output as logits; mse on a sigmoid output."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, "tanh", output)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    check_case(model, x, target, loss=loss, reduction=reduction)


@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_nn_rnn_split_bias(backend, dtype, rng, nonlinearity):
    """bh split between torch's two biases: both collect cyrnn's bh gradient."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, "softmax")
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "cross_entropy", (T, B), O, dtype)
    check_case(model, x, target, net=TorchNet.like(model, split_bias=True))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_no_output_layer(backend, dtype, rng, loss):
    """output_size=None: the hidden states are the output and the loss reads them directly."""
    T, B, I, H = 7, 3, 5, 6
    model = make_model(backend, dtype, I, H, None, "tanh")
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), H, dtype)
    check_case(model, x, target, loss=loss)


# ---------------------------------------------------------------------------------------------
# 2. sigmoid / leaky_relu / identity: the hand-written recurrence as the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_hand_loop_is_nn_rnn(rng, dtype, nonlinearity, with_lengths):
    """The hand loop (the oracle for everything torch.nn.RNN cannot do) is torch.nn.RNN itself."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    lengths = np.array([4, 7, 1]) if with_lengths else None
    net = TorchNet(I, H, O, dtype, nonlinearity).randomize(rng)
    x = dense(rng, (T, B, I), dtype)
    h0 = dense(rng, (B, H), dtype)
    target = make_target(rng, "mse", (T, B), O, dtype)
    results = []
    for by_hand in (False, True):
        for p in net.parameters():
            p.grad = None
        x_t, h0_t = leaf(x, net.tdtype), leaf(h0, net.tdtype)
        if by_hand:
            states, hl = net.run_by_hand(F.linear(x_t, net.rnn.weight_ih_l0), h0_t, lengths)
        else:
            states, hl = net.run_module(x_t, h0_t, lengths)
        mask = np.ones((T, B), bool) if lengths is None else np.arange(T)[:, None] < lengths
        mask = torch.as_tensor(mask)
        torch_loss(net.head(states)[mask], torch.as_tensor(target)[mask], "mse", "linear", "sum").backward()
        grads = {k: numpy(v) for k, v in net.grads().items()}
        results.append((numpy(states[mask]), numpy(hl), grads, numpy(x_t.grad), numpy(h0_t.grad)))
    (s1, hl1, g1, dx1, dh1), (s2, hl2, g2, dx2, dh2) = results
    assert_close("states", s2, s1, dtype)
    assert_close("h_last", hl2, hl1, dtype)
    g2.update(x=dx2, h0=dh2)
    g1.update(x=dx1, h0=dh1)
    compare_grads(g2, g1, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES[2:], ids=NL_IDS[2:])
def test_hand_loop_nonlinearities(backend, dtype, rng, nonlinearity, slope, output, loss, reduction):
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output, negative_slope=slope)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    check_case(model, x, target, reduction=reduction)


def test_leaky_relu_zero_slope_is_relu(backend, dtype, rng):
    """leaky_relu with negative_slope=0 against torch.nn.RNN(nonlinearity='relu')."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, "leaky_relu", "linear", negative_slope=0.0)
    relu = make_model(backend, dtype, I, H, O, "relu", "linear")
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], relu.params[name])
    net = TorchNet.like(relu)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "mse", (T, B), O, dtype)
    check_case(model, x, target, net=net, by_hand=False)


# ---------------------------------------------------------------------------------------------
# 3. token ids: one-hot rows through torch.nn.RNN, or nn.Embedding with weight Wxh^T
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("oracle", ["one_hot", "embedding"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])
def test_token_inputs(backend, dtype, rng, nonlinearity, oracle, layout):
    T, B, V, H, O = 7, 3, 5, 6, 4  # 21 tokens from 5 ids: repeated ids sum their rows' gradients
    model = make_model(backend, dtype, V, H, O, nonlinearity, "softmax", batch_first=layout == "batch_first")
    shape = {"time_major": (T, B), "batch_first": (B, T), "unbatched": (T,)}[layout]
    ids = rng.integers(0, V, size=shape)
    target = make_target(rng, "cross_entropy", shape, O, dtype)
    h0 = dense(rng, (H,) if layout == "unbatched" else (B, H), dtype)
    _, grads = check_case(model, ids, target, h0=h0, embedding=oracle == "embedding")
    assert "x" not in grads
    unused = np.setdiff1d(np.arange(V), ids)
    assert not grads["Wxh"][:, unused].any(), "tokens that never occur get a Wxh gradient"


def test_token_inputs_with_lengths(backend, dtype, rng):
    T, B, V, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, V, H, O, "tanh", "softmax")
    ids = rng.integers(0, V, size=(T, B))
    target = make_target(rng, "cross_entropy", (T, B), O, dtype)
    check_case(model, ids, target, lengths=np.array([3, 7, 5]))


# ---------------------------------------------------------------------------------------------
# 4. ragged lengths: pack_padded_sequence(enforce_sorted=False); loss over valid positions
# ---------------------------------------------------------------------------------------------

LENGTHS = {"unsorted": [3, 7, 5], "with-1": [1, 7, 2], "all-short": [4, 2, 6]}


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_lengths_packed(backend, dtype, rng, nonlinearity, output, loss, reduction, lengths):
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    h0 = dense(rng, (B, H), dtype)
    check_case(model, x, target, lengths=np.array(lengths), h0=h0, reduction=reduction)


@pytest.mark.parametrize("lengths", [[4, 0, 7], [2, 5, 3]], ids=["with-0", "short"])
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES, ids=NL_IDS)
def test_lengths_by_hand(backend, dtype, rng, nonlinearity, slope, lengths):
    """Every nonlinearity with lengths (a length-0 sequence keeps h0 and has no loss)."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, "linear", negative_slope=slope)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "mse", (T, B), O, dtype)
    h0 = dense(rng, (B, H), dtype)
    check_case(model, x, target, lengths=np.array(lengths), h0=h0, by_hand=True)


# ---------------------------------------------------------------------------------------------
# 5. many-to-one: target_steps="last" against torch's h_n through the Linear layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, [3, 7, 5], [7, 7, 7]], ids=["no-lengths", "ragged", "all-full"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_last_step(backend, dtype, rng, nonlinearity, output, loss, reduction, lengths):
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (B,), O, dtype)
    lengths = None if lengths is None else np.array(lengths)
    check_case(model, x, target, lengths=lengths, reduction=reduction, target_steps="last")


def test_last_step_is_output_at_length_minus_1(backend, dtype, rng):
    """torch's h_n (what the many-to-one oracle reads) is the padded output gathered at length-1,
    and cyrnn's y there."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    lengths = np.array([3, 7, 5])
    model = make_model(backend, dtype, I, H, O, "tanh", "linear")
    net = TorchNet.like(model)
    x = dense(rng, (T, B, I), dtype)
    with torch.no_grad():
        states, h_n = net.run_module(torch.from_numpy(x), torch.zeros(B, H, dtype=net.tdtype), lengths)
        z_last = net.fc(h_n).numpy()
        np.testing.assert_array_equal(states[lengths - 1, np.arange(B)].numpy(), h_n.numpy())
    y, h_last = model.forward(x, lengths=lengths)
    assert_close("y at length-1", y[lengths - 1, np.arange(B)], z_last, dtype)
    assert_close("h_last", h_last, h_n.numpy(), dtype)


@pytest.mark.parametrize("lengths", [None, [3, 7, 5]], ids=["no-lengths", "ragged"])
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES[2:], ids=NL_IDS[2:])
def test_last_step_by_hand(backend, dtype, rng, nonlinearity, slope, lengths):
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, "sigmoid", negative_slope=slope)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "bce", (B,), O, dtype)
    lengths = None if lengths is None else np.array(lengths)
    check_case(model, x, target, lengths=lengths, target_steps="last", h0=dense(rng, (B, H), dtype))


# ---------------------------------------------------------------------------------------------
# 6. user h0, batch_first, unbatched inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES, ids=NL_IDS)
def test_user_h0(backend, dtype, rng, nonlinearity, slope, output, loss):
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output, negative_slope=slope)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    _, grads = check_case(model, x, target, h0=dense(rng, (B, H), dtype))
    assert np.abs(grads["h0"]).max() > 0


@pytest.mark.parametrize("target_steps", ["all", "last"])
@pytest.mark.parametrize("lengths", [None, [3, 7, 5]], ids=["no-lengths", "ragged"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "leaky_relu"])
def test_batch_first(backend, dtype, rng, nonlinearity, output, loss, lengths, target_steps):
    """(B, T, ...) inputs, targets, outputs and x gradient; torch.nn.RNN(batch_first=True)."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output, batch_first=True)
    x = dense(rng, (B, T, I), dtype)
    target = make_target(rng, loss, (B, T) if target_steps == "all" else (B,), O, dtype)
    lengths = None if lengths is None else np.array(lengths)
    check_case(
        model, x, target, h0=dense(rng, (B, H), dtype), lengths=lengths, target_steps=target_steps
    )


@pytest.mark.parametrize("target_steps", ["all", "last"])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_unbatched(backend, dtype, rng, batch_first, nonlinearity, output, loss, target_steps):
    """(T, I) inputs, (H,) h0, (T,) / (T, O) targets ((), (O,) for 'last'); torch's unbatched RNN."""
    T, I, H, O = 7, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output, batch_first=batch_first)
    x = dense(rng, (T, I), dtype)
    target = make_target(rng, loss, (T,) if target_steps == "all" else (), O, dtype)
    for h0 in (None, dense(rng, (H,), dtype)):
        check_case(model, x, target, h0=h0, target_steps=target_steps)


def test_unbatched_with_lengths(backend, dtype, rng):
    T, I, H, O = 7, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, "tanh", "linear")
    x = dense(rng, (T, I), dtype)
    target = make_target(rng, "mse", (T,), O, dtype)
    check_case(model, x, target, lengths=np.array([4]), h0=dense(rng, (H,), dtype), by_hand=True)


# ---------------------------------------------------------------------------------------------
# 7. truncated BPTT: output t's graph detached before step t-k+1
# ---------------------------------------------------------------------------------------------

TRUNCATE_T = 6


@pytest.mark.parametrize("k", [1, 2, 3, TRUNCATE_T, TRUNCATE_T + 1])
@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES, ids=NL_IDS)
def test_truncate(backend, dtype, rng, nonlinearity, slope, output, loss, k):
    T, B, I, H, O = TRUNCATE_T, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, nonlinearity, output, negative_slope=slope)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    check_case(model, x, target, h0=dense(rng, (B, H), dtype), truncate=k, reduction="sum")


@pytest.mark.parametrize(
    "target_steps,lengths",
    [("all", [2, 6, 1, 4]), ("all", [3, 0, 6, 5]), ("last", [2, 6, 1, 4])],
    ids=["all", "all-with-0", "last"],
)
@pytest.mark.parametrize("k", [1, 2, 3, TRUNCATE_T])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_truncate_with_lengths(backend, dtype, rng, nonlinearity, k, target_steps, lengths):
    T, B, I, H, O = TRUNCATE_T, 4, 5, 6, 4
    lengths = np.array(lengths)
    model = make_model(backend, dtype, I, H, O, nonlinearity, "softmax")
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "cross_entropy", (T, B) if target_steps == "all" else (B,), O, dtype)
    h0 = dense(rng, (B, H), dtype)
    check_case(model, x, target, h0=h0, lengths=lengths, truncate=k, target_steps=target_steps)


@pytest.mark.parametrize("k", [1, 3])
def test_truncate_tokens_batch_first(backend, dtype, rng, k):
    T, B, V, H, O = TRUNCATE_T, 3, 5, 6, 4
    model = make_model(backend, dtype, V, H, O, "tanh", "softmax", batch_first=True)
    ids = rng.integers(0, V, size=(B, T))
    target = make_target(rng, "cross_entropy", (B, T), O, dtype)
    check_case(model, ids, target, h0=dense(rng, (B, H), dtype), truncate=k)


def test_truncate_at_least_T_plus_1_is_full_bptt(backend, dtype, rng):
    """k >= T + 1 is full BPTT: the same numbers as torch.nn.RNN without truncation."""
    T, B, I, H, O = TRUNCATE_T, 3, 5, 6, 4
    model = make_model(backend, dtype, I, H, O, "tanh", "linear")
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "mse", (T, B), O, dtype)
    h0 = dense(rng, (B, H), dtype)
    _, full = check_case(model, x, target, h0=h0)
    for k in (T + 1, T + 5):
        _, window = model.loss_and_grad(x, target, h0=h0, truncate=k)[:2]
        compare_grads(window, full, dtype, f"truncate={k}")


# ---------------------------------------------------------------------------------------------
# 8. weight exchange: to_torch_state -> load_state_dict, and from_torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["linear", "softmax", "sigmoid", None])
@pytest.mark.parametrize("nonlinearity", NATIVE)
def test_to_torch_state_load_state_dict(backend, dtype, rng, nonlinearity, output):
    T, B, I, H, O = 7, 3, 5, 6, 4
    O = None if output is None else O
    model = make_model(backend, dtype, I, H, O, nonlinearity, output or "linear", seed=3)
    tdtype = TORCH_DTYPE[np.dtype(dtype)]
    modules = {"rnn": torch.nn.RNN(I, H, nonlinearity=nonlinearity, dtype=tdtype)}
    if O is not None:
        modules["fc"] = torch.nn.Linear(H, O, dtype=tdtype)
    container = torch.nn.ModuleDict(modules)
    state = model.to_torch_state()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.dtype(dtype) for v in state.values())
    container.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    np.testing.assert_array_equal(state["rnn.bias_hh_l0"], 0)

    x = dense(rng, (T, B, I), dtype)
    h0 = dense(rng, (B, H), dtype)
    lengths = np.array([3, 7, 5])
    for lens in (None, lengths):
        y, h_last = model.forward(x, h0=h0, lengths=lens)
        with torch.no_grad():
            x_t, h0_t = torch.from_numpy(x), torch.from_numpy(h0)[None]
            if lens is None:
                out, h_n = container["rnn"](x_t, h0_t)
            else:
                packed = pack_padded_sequence(x_t, torch.as_tensor(lens), enforce_sorted=False)
                out, h_n = container["rnn"](packed, h0_t)
                out = pad_packed_sequence(out, total_length=T)[0]
            y_t = out if O is None else torch_output(output, container["fc"](out))
        valid = np.ones((T, B), bool) if lens is None else np.arange(T)[:, None] < lens
        assert_close("y", y[valid], y_t.numpy()[valid], dtype)
        assert_close("h_last", h_last, h_n[0].numpy(), dtype)


def test_to_torch_state_prefixes(backend, dtype):
    model = make_model(backend, dtype, 5, 6, 4, "tanh", "linear", seed=3)
    state = model.to_torch_state(rnn_prefix="enc.", output_prefix="head.")
    rnn_keys = ["enc.weight_ih_l0", "enc.weight_hh_l0", "enc.bias_ih_l0", "enc.bias_hh_l0"]
    assert sorted(state) == sorted(rnn_keys + ["head.weight", "head.bias"])
    tdtype = TORCH_DTYPE[np.dtype(dtype)]
    container = torch.nn.ModuleDict(
        {"enc": torch.nn.RNN(5, 6, dtype=tdtype), "head": torch.nn.Linear(6, 4, dtype=tdtype)}
    )
    container.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    back = cyrnn.RNN.from_torch(
        {k: v.detach().numpy() for k, v in container.state_dict().items()}, dtype=dtype, backend=backend
    )
    for name in model.params:
        np.testing.assert_array_equal(back.params[name], model.params[name], err_msg=name)


@pytest.mark.parametrize("output,loss", DEFAULT_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("nonlinearity,slope", NONLINEARITIES, ids=NL_IDS)
def test_from_torch(backend, dtype, rng, nonlinearity, slope, output, loss):
    """A torch model with nonzero bias_ih and bias_hh -> from_torch -> the same numbers as torch."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    net = TorchNet(I, H, O, dtype, nonlinearity, slope).randomize(rng)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert np.abs(state["rnn.bias_hh_l0"]).min() > 0 and np.abs(state["rnn.bias_ih_l0"]).min() > 0
    model = cyrnn.RNN.from_torch(
        state, nonlinearity=nonlinearity, negative_slope=slope, output=output, dtype=dtype, backend=backend
    )
    assert (model.input_size, model.hidden_size, model.output_size) == (I, H, O)
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, loss, (T, B), O, dtype)
    check_case(model, x, target, net=net, h0=dense(rng, (B, H), dtype))
    check_case(model, x, target, net=net, lengths=np.array([5, 2, 7]), reduction="sum")


def test_from_torch_without_biases(backend, dtype, rng):
    """nn.RNN(bias=False) + nn.Linear(bias=False): cyrnn's biases are zero."""
    T, B, I, H, O = 7, 3, 5, 6, 4
    net = TorchNet(I, H, O, dtype, "tanh", bias=False).randomize(rng)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    model = cyrnn.RNN.from_torch(state, dtype=dtype, backend=backend)
    assert not model.params["bh"].any() and not model.params["by"].any()
    x = dense(rng, (T, B, I), dtype)
    y, h_last = model.forward(x)
    with torch.no_grad():
        states, h_n = net.run_module(torch.from_numpy(x), torch.zeros(B, H, dtype=net.tdtype))
        assert_close("y", y, net.fc(states).numpy(), dtype)
        assert_close("h_last", h_last, h_n.numpy(), dtype)


def test_from_torch_no_output_layer(backend, dtype, rng):
    T, B, I, H = 7, 3, 5, 6
    net = TorchNet(I, H, None, dtype, "relu").randomize(rng)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    model = cyrnn.RNN.from_torch(state, nonlinearity="relu", dtype=dtype, backend=backend)
    assert model.output_size is None
    x = dense(rng, (T, B, I), dtype)
    target = make_target(rng, "mse", (T, B), H, dtype)
    check_case(model, x, target, net=net)
