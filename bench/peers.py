"""Peer implementations of one Elman RNN training step, for bench/test_compare.py.

Every peer computes, in float32, for one configuration ``(B, T, I or V tokens, H, O)``:

- ``forward()``: the outputs of every step, ``y_t = g(h_t Why^T + by)`` with
  ``h_t = tanh(x_t Wxh^T + h_{t-1} Whh^T + bh)``, ``h_0 = 0`` and ``g`` the softmax for token
  configs, the identity for dense ones (what ``cyrnn.RNN.forward`` returns);
- ``forward_backward()``: the loss on every step (softmax cross-entropy averaged over the T*B
  positions for tokens, MSE averaged over the T*B*O elements for dense inputs) and its gradient
  with respect to every parameter (``Wxh, Whh, bh, Why, by``), which is what
  ``cyrnn.RNN.loss_and_grad(..., input_grad=False)`` returns (cyrnn also returns ``dL/dh0``;
  the gradient of dense inputs is switched off, as the peers compute parameter gradients only).

Gated cells (config names ``<config>_lstm`` / ``<config>_gru``, ``GATED_CONFIGS``): the same
problem with ``cyrnn.LSTM`` / ``cyrnn.GRU`` (PyTorch's equations, gate orders and layouts),
torch's ``nn.LSTM`` / ``nn.GRU`` and JAX ``lax.scan`` LSTM / GRU cells (GRU linear before reset:
``n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))``); parameters ``Wxh (G, I)``, ``Whh (G, H)``,
``bh (G,)`` (bias_ih + bias_hh; GRU: bias_ih alone for the n-part) and GRU's ``bhn (H,)``
(bias_hh's n-part), ``G = 4H`` or ``3H``. The naive loop is Elman only.

All peers start from the same weights: those of ``cyrnn.RNN(..., seed=0)`` (``cyrnn.LSTM`` /
``cyrnn.GRU`` for the gated configs).
``Peer.check_forward()`` and ``Peer.check_forward_backward()`` run the peer once (untimed) and
return its results as NumPy arrays keyed like cyrnn's, so the benchmark can compare them with
cyrnn's before timing anything.

The peers:

- ``cyrnn-cython`` / ``cyrnn-numpy``: the public API, ``model.forward(x)`` and
  ``model.loss_and_grad(x, target, input_grad=False)``, on the compiled backend and on its
  pure-NumPy twin;
- ``naive-numpy``: a Python loop over time in the style of min-char-rnn (column vectors, one-hot
  token inputs built per step, every product done step by step, forward and BPTT), batched;
- ``torch``: ``nn.Embedding`` + ``nn.RNN`` + ``nn.Linear``, ``F.cross_entropy`` / ``F.mse_loss``,
  ``loss.backward()``, no ``torch.compile``. For tokens the embedding is ``nn.Embedding(V, V)``
  frozen at the identity (a one-hot lookup), so ``weight_ih_l0`` is exactly cyrnn's ``Wxh``;
  ``bias_ih_l0`` carries ``bh`` and ``bias_hh_l0`` is zero (PyTorch adds the two);
- ``jax``: ``lax.scan`` over the recurrence under ``jax.jit``, the input projection and the
  output layer as whole-sequence products outside the scan, ``jax.value_and_grad`` for the
  gradients, ``block_until_ready`` on every result; compiled by a warm-up call in ``build``.
"""
import contextlib
import os
import re
import time
from collections import namedtuple

import numpy as np

Config = namedtuple("Config", "B T I H O tokens")

# name: (B, T, I or V, H, O, token inputs)
CONFIGS = {
    "charlm": Config(1, 25, 65, 100, 65, True),
    "charlm_batched": Config(32, 50, 65, 256, 65, True),
    "small": Config(8, 100, 16, 64, 16, False),
    "medium": Config(32, 100, 128, 256, 128, False),
    "large": Config(64, 50, 512, 1024, 512, False),
    "long": Config(16, 1000, 32, 128, 32, False),
}

PEERS = ("cyrnn-cython", "cyrnn-numpy", "naive-numpy", "torch", "jax")
OPS = ("forward", "forward+backward")
PARAM_NAMES = ("Wxh", "Whh", "bh", "Why", "by")

# stacked and bidirectional models of the sizes above: "<config>_l<layers>[_bi]" (see shape_of)
STACK_CONFIGS = ("medium_l2", "medium_bi", "medium_l2_bi", "charlm_batched_l2_bi")
STACK_PEERS = ("cyrnn-cython", "torch", "jax")
Stack = namedtuple("Stack", "base layers directions")
_STACK_NAME = re.compile(r"^(?P<base>.+?)(?:_l(?P<layers>[0-9]+))?(?P<bi>_bi)?$")

# gated cells: "<config>_lstm" / "<config>_gru" (and "<stack name>_lstm" ...), see cell_of
CELLS = ("lstm", "gru")
GATES = {"elman": 1, "lstm": 4, "gru": 3}
GATED_CONFIGS = tuple(f"{config}_{cell}" for config in CONFIGS for cell in CELLS)
GATED_PEERS = ("cyrnn-cython", "cyrnn-numpy", "torch", "jax")


def cell_of(config):
    """``(cell, name without the cell)``: ``"medium_lstm"`` is ``("lstm", "medium")``,
    ``"medium"`` is ``("elman", "medium")``."""
    for cell in CELLS:
        if config.endswith("_" + cell):
            return cell, config[:-len(cell) - 1]
    return "elman", config


def gate_size(config):
    """Rows of ``Whh``: ``H`` (Elman), ``4H`` (LSTM), ``3H`` (GRU)."""
    return GATES[cell_of(config)[0]] * shape_of(config).H


def stack_of(config):
    """``Stack(base config name, layers L, directions D)`` of a config name: ``"medium"`` is
    ``("medium", 1, 1)``, ``"medium_l2"`` two layers, ``"medium_bi"`` one bidirectional layer,
    ``"medium_l3_bi"`` three bidirectional layers. A cell suffix (``_lstm``, ``_gru``) is
    ignored here (``cell_of`` reads it)."""
    config = cell_of(config)[1]
    if config in CONFIGS:
        return Stack(config, 1, 1)
    m = _STACK_NAME.match(config)
    if not m or m["base"] not in CONFIGS or (m["layers"] is None and m["bi"] is None):
        raise KeyError(f"unknown config {config!r}")
    layers = int(m["layers"] or 1)
    if layers < 1:
        raise KeyError(f"unknown config {config!r}")
    return Stack(m["base"], layers, 2 if m["bi"] else 1)


def stack_name(base, layers, directions):
    """The inverse of ``stack_of``."""
    if layers == 1 and directions == 1:
        return base
    return base + ("" if layers == 1 else f"_l{layers}") + ("_bi" if directions == 2 else "")


def shape_of(config):
    """The ``Config`` (sizes) of any config name, stacked or not."""
    return CONFIGS[stack_of(config).base]


def layer_suffix(layer, direction):
    """cyrnn's parameter-name suffix of one layer and direction: ``""``, ``"_l1"``,
    ``"_reverse"``, ``"_l1_reverse"``."""
    return ("" if layer == 0 else f"_l{layer}") + ("_reverse" if direction else "")


def param_shapes(config):
    """cyrnn's parameter names and shapes for ``config`` (the stacked API's layout)."""
    c, (_, L, D) = shape_of(config), stack_of(config)
    cell, G = cell_of(config)[0], gate_size(config)
    shapes = {}
    for layer in range(L):
        for direction in range(D):
            sfx = layer_suffix(layer, direction)
            shapes["Wxh" + sfx] = (G, c.I if layer == 0 else D * c.H)
            shapes["Whh" + sfx] = (G, c.H)
            shapes["bh" + sfx] = (G,)
            if cell == "gru":
                shapes["bhn" + sfx] = (c.H,)
    shapes.update(Why=(c.O, D * c.H), by=(c.O,))
    return shapes


def param_names(config):
    return tuple(param_shapes(config))


def torch_names(config):
    """cyrnn parameter name -> ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` / ``nn.Linear`` parameter
    name (``rnn.``/``fc.`` prefixed); ``bh`` maps to ``bias_ih`` (``bias_hh`` is held at zero),
    GRU's ``bhn`` to ``bias_hh``, whose n-part (the last H entries) it is."""
    _, L, D = stack_of(config)
    cell = cell_of(config)[0]
    names = {}
    for layer in range(L):
        for direction in range(D):
            sfx, tsfx = layer_suffix(layer, direction), f"_l{layer}" + ("_reverse" if direction else "")
            names["Wxh" + sfx] = "rnn.weight_ih" + tsfx
            names["Whh" + sfx] = "rnn.weight_hh" + tsfx
            names["bh" + sfx] = "rnn.bias_ih" + tsfx
            if cell == "gru":
                names["bhn" + sfx] = "rnn.bias_hh" + tsfx
    names.update(Why="fc.weight", by="fc.bias")
    return names


def random_params(config, seed=0):
    """Parameters of ``config``'s layout drawn like cyrnn's uniform init (U(-1/sqrt(H), 1/sqrt(H))),
    for checking the peers against each other without cyrnn."""
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(shape_of(config).H)
    return {k: rng.uniform(-bound, bound, shape).astype(np.float32) for k, shape in param_shapes(config).items()}


# ---------------------------------------------------------------------------------------------
# problem, FLOPs
# ---------------------------------------------------------------------------------------------


def make_model(config, backend="cython"):
    import cyrnn  # here, so that the report can read CONFIGS without cyrnn built

    c, (_, L, D) = shape_of(config), stack_of(config)
    output = "softmax" if c.tokens else "linear"
    stack = {} if (L, D) == (1, 1) else {"num_layers": L, "bidirectional": D == 2}
    cls = {"elman": cyrnn.RNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}[cell_of(config)[0]]
    model = cls(c.I, c.H, c.O, output=output, dtype="float32", seed=0, backend=backend, **stack)
    expected = param_shapes(config)
    found = {k: v.shape for k, v in model.params.items()}
    if found != expected:
        raise AssertionError(f"{config}: cyrnn's parameters {found} differ from the layout the peers "
                             f"map ({expected})")
    return model


def make_data(config):
    """Inputs ``x`` (T, B) int64 token ids or (T, B, I) float32, and targets (T, B) int64 class
    ids or (T, B, O) float32, from a fixed seed (the same for every stack of one config)."""
    c = shape_of(config)
    rng = np.random.default_rng(0)
    if c.tokens:
        x = rng.integers(0, c.I, (c.T, c.B))
        target = rng.integers(0, c.O, (c.T, c.B))
    else:
        x = rng.standard_normal((c.T, c.B, c.I)).astype(np.float32)
        target = rng.standard_normal((c.T, c.B, c.O)).astype(np.float32)
    return x, target


def forward_flops(config):
    """Matrix-product FLOPs of the forward pass: ``2 T B (I H + H H + H O)``; token inputs are a
    row gather, so no ``I H`` term. A stack of ``L`` layers and ``D`` directions: each layer and
    direction ``2 T B (I_l H + H H)`` with ``I_0 = I`` (0 for tokens) and ``I_l = D H`` above,
    and the head ``2 T B D H O``. Gated cells: ``G = 4H`` (LSTM) or ``3H`` (GRU) rows in place of
    ``H`` in the recurrent layers, ``2 T B (I_l G + H G)`` per layer and direction (the gates'
    elementwise work is not counted)."""
    c, (_, L, D) = shape_of(config), stack_of(config)
    G = gate_size(config)
    total = 0
    for layer in range(L):
        ih = (0 if c.tokens else c.I * G) if layer == 0 else D * c.H * G
        total += D * (ih + c.H * G)
    return 2 * c.T * c.B * (total + D * c.H * c.O)


def flops(config, op):
    """FLOPs counted for ``op``: the forward's matrix products, and for forward+backward three
    times that less the input gradient: the backward carries the error back (``dz Why``,
    ``da Whh``) and forms the weight gradients (``dz^T h``, ``da^T h_{t-1}`` and, dense inputs
    only, ``da^T x``); no peer computes ``dx = da Wxh``, so its ``2 T B I H`` is not counted
    (in a stack: layer 0's, ``2 T B I H`` per direction; the layers above do pass their error
    down)."""
    f = forward_flops(config)
    if op == "forward":
        return f
    c, D = shape_of(config), stack_of(config).directions
    dx = 0 if c.tokens else 2 * c.T * c.B * c.I * gate_size(config) * D
    return 3 * f - dx


def machine_limit_shape(config):
    """The (M, K) x (K, N) product of the machine-limit benchmark: (T*B, H) x (H, G), with
    ``G = H`` for Elman cells (the original (H, H)), ``4H`` for LSTM, ``3H`` for GRU (the GEMM
    limit of the gated rows)."""
    c = shape_of(config)
    return c.T * c.B, c.H, gate_size(config)


# ---------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------


def _current_cpu():
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat)."""
    try:
        with open("/proc/thread-self/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return min(os.sched_getaffinity(0))


def _set_process_affinity(cpus):
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


@contextlib.contextmanager
def one_cpu():
    """Pin every thread of the process to one CPU (and restore the mask afterwards).

    XLA's CPU client sizes its thread pool from the machine and ignores threadpoolctl, OMP/MKL
    variables and, in jax 0.10, ``--xla_cpu_multi_thread_eigen=false``; restricting the affinity
    of all its threads is what makes a one-core JAX measurement possible."""
    before = os.sched_getaffinity(0)
    _set_process_affinity({_current_cpu()})
    try:
        yield
    finally:
        _set_process_affinity(before)


def peer_threads_context(peer, threads):
    """What limits ``peer`` to ``threads``, besides threadpoolctl (set by the conftest fixture)
    and ``torch.set_num_threads`` (set by the torch peer)."""
    if peer == "jax" and threads == 1:
        return one_cpu()
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------


class Peer:
    """``forward`` and ``forward_backward`` are the timed zero-argument callables; the
    ``check_*`` methods return NumPy results for the correctness checks."""

    name = None
    threads_note = ""

    def set_threads(self, threads):
        pass

    def forward(self):
        raise NotImplementedError

    def forward_backward(self):
        raise NotImplementedError

    def check_forward(self):
        """y (T, B, O) as float32 NumPy."""
        raise NotImplementedError

    def check_forward_backward(self):
        """(loss as float, {param name: gradient as NumPy})."""
        raise NotImplementedError


class CyrnnPeer(Peer):
    def __init__(self, config, backend):
        self.name = f"cyrnn-{backend}"
        self.names = param_names(config)
        self.model = make_model(config, backend)
        self.x, self.target = make_data(config)
        self.threads_note = "its own choice (follows a threadpoolctl limit of 1)"

    def forward(self):
        return self.model.forward(self.x)

    def forward_backward(self):
        # the same work as the peers: parameter gradients, no gradient of the inputs
        return self.model.loss_and_grad(self.x, self.target, input_grad=False)

    def check_forward(self):
        return self.model.forward(self.x)[0]

    def check_forward_backward(self):
        loss, grads, _ = self.model.loss_and_grad(self.x, self.target, input_grad=False)
        return float(loss), {k: grads[k] for k in self.names}


class NaivePeer(Peer):
    """min-char-rnn's loops, batched: column layout ``h (H, B)``, ``W @ h`` products per step,
    the per-step output layer and softmax, and BPTT step by step with ``dhnext``."""

    name = "naive-numpy"
    threads_note = "BLAS via threadpoolctl"

    def __init__(self, config):
        self.c = CONFIGS[config]
        model = make_model(config, "numpy")
        self.p = {k: v.copy() for k, v in model.params.items()}
        self.x, self.target = make_data(config)

    def _input(self, t):
        c = self.c
        if c.tokens:  # one-hot column per sequence, as min-char-rnn builds xs[t]
            xs = np.zeros((c.I, c.B), dtype=np.float32)
            xs[self.x[t], np.arange(c.B)] = 1
            return xs
        return self.x[t].T

    def _output(self, h):
        y = self.p["Why"] @ h + self.p["by"][:, None]
        if self.c.tokens:
            e = np.exp(y - y.max(axis=0, keepdims=True))
            y = e / e.sum(axis=0, keepdims=True)
        return y

    def forward(self):
        c, p = self.c, self.p
        Wxh, Whh, bh = p["Wxh"], p["Whh"], p["bh"][:, None]
        h = np.zeros((c.H, c.B), dtype=np.float32)
        ys = np.empty((c.T, c.B, c.O), dtype=np.float32)
        for t in range(c.T):
            h = np.tanh(Wxh @ self._input(t) + Whh @ h + bh)
            ys[t] = self._output(h).T
        return ys

    def forward_backward(self):
        c, p = self.c, self.p
        Wxh, Whh, bh, Why = p["Wxh"], p["Whh"], p["bh"][:, None], p["Why"]
        xs, hs, ys = {}, {-1: np.zeros((c.H, c.B), dtype=np.float32)}, {}
        loss = 0.0
        cols = np.arange(c.B)
        scale = np.float32(1.0 / (c.T * c.B)) if c.tokens else np.float32(2.0 / (c.T * c.B * c.O))
        for t in range(c.T):
            xs[t] = self._input(t)
            hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
            ys[t] = self._output(hs[t])
            if c.tokens:
                loss -= np.sum(np.log(ys[t][self.target[t], cols]), dtype=np.float64)
            else:
                loss += np.sum(np.square(ys[t] - self.target[t].T), dtype=np.float64)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dWxh, dWhh, dbh, dWhy, dby = (grads[k] for k in PARAM_NAMES)
        dhnext = np.zeros((c.H, c.B), dtype=np.float32)
        for t in reversed(range(c.T)):
            if c.tokens:
                dy = ys[t].copy()
                dy[self.target[t], cols] -= 1
                dy *= scale
            else:
                dy = (ys[t] - self.target[t].T) * scale
            dWhy += dy @ hs[t].T
            dby += dy.sum(axis=1)
            dh = Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw.sum(axis=1)
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = Whh.T @ dhraw
        n = c.T * c.B if c.tokens else c.T * c.B * c.O
        return loss / n, grads

    def check_forward(self):
        return self.forward()

    def check_forward_backward(self):
        loss, grads = self.forward_backward()
        return float(loss), grads


class TorchPeer(Peer):
    """``nn.RNN`` (``num_layers`` and ``bidirectional`` from the config) + ``nn.Linear``;
    ``params`` (cyrnn's names) default to cyrnn's ``seed=0`` weights."""

    name = "torch"

    def __init__(self, config, params=None):
        import torch
        from torch import nn
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        c = self.c = shape_of(config)
        _, L, D = stack_of(config)
        if params is None:
            params = make_model(config).params
        torch.manual_seed(0)
        self.embed = None
        if c.tokens:
            self.embed = nn.Embedding(c.I, c.I)
            with torch.no_grad():
                self.embed.weight.copy_(torch.eye(c.I))
            self.embed.weight.requires_grad_(False)
        # time-major (T, B, I)
        self.cell = cell_of(config)[0]
        if self.cell == "elman":
            self.rnn = nn.RNN(c.I, c.H, num_layers=L, bidirectional=D == 2, nonlinearity="tanh",
                              batch_first=False)
        else:  # torch's CPU nn.LSTM / nn.GRU (oneDNN where torch uses it)
            kind = nn.LSTM if self.cell == "lstm" else nn.GRU
            self.rnn = kind(c.I, c.H, num_layers=L, bidirectional=D == 2, batch_first=False)
        self.fc = nn.Linear(D * c.H, c.O)
        self.names = torch_names(config)
        modules = {"rnn.": self.rnn, "fc.": self.fc}
        self.named = {prefix + n: p for prefix, m in modules.items() for n, p in m.named_parameters()}
        with torch.no_grad():
            for param in self.rnn.parameters():
                param.zero_()  # bias_hh_l*: PyTorch adds it to bias_ih, which carries bh
            for ours, theirs in self.names.items():
                self._view(ours, self.named[theirs]).copy_(
                    torch.from_numpy(np.asarray(params[ours], dtype=np.float32)))
        x, target = make_data(config)
        self.x = torch.from_numpy(x)
        self.target = torch.from_numpy(target)
        if c.tokens:
            self.target_flat = self.target.reshape(-1)
        self.params = list(self.rnn.parameters()) + list(self.fc.parameters())

    def _view(self, ours, tensor):
        """The part of torch's ``tensor`` that is cyrnn's ``ours``: all of it, but for GRU's
        ``bhn``, the n-part (last H entries) of ``bias_hh``."""
        return tensor[2 * self.c.H:] if ours.startswith("bhn") else tensor

    def set_threads(self, threads):
        if threads == "default":
            # torch's own default: one intra-op thread per CPU it may use
            default = len(os.sched_getaffinity(0))
            self.torch.set_num_threads(default)
            self.threads_note = f"torch's default ({default} threads)"
        else:
            self.torch.set_num_threads(threads)
            self.threads_note = f"torch.set_num_threads({threads})"

    def _logits(self):
        inputs = self.embed(self.x) if self.embed is not None else self.x
        out, _ = self.rnn(inputs)
        return self.fc(out)

    def forward(self):
        with self.torch.no_grad():
            z = self._logits()
            return self.torch.softmax(z, dim=-1) if self.c.tokens else z

    def forward_backward(self):
        for param in self.params:
            param.grad = None
        z = self._logits()
        if self.c.tokens:
            loss = self.F.cross_entropy(z.reshape(-1, self.c.O), self.target_flat)
        else:
            loss = self.F.mse_loss(z, self.target)
        loss.backward()
        return loss

    def check_forward(self):
        return self.forward().numpy()

    def check_forward_backward(self):
        loss = self.forward_backward()
        # bh = bias_ih + bias_hh, so dL/dbh is bias_ih's gradient; GRU's bhn: bias_hh's n-part
        return float(loss.item()), {ours: self._view(ours, self.named[theirs].grad).numpy().copy()
                                    for ours, theirs in self.names.items()}


class JaxPeer(Peer):
    """One ``lax.scan`` per layer and direction; ``params`` (cyrnn's names) default to cyrnn's
    ``seed=0`` weights."""

    name = "jax"

    def __init__(self, config, params=None):
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.jax = jax
        c = self.c = shape_of(config)
        _, L, D = stack_of(config)
        if params is None:
            params = make_model(config).params
        x, target = make_data(config)
        self.params = {k: jnp.asarray(np.asarray(params[k], dtype=np.float32)) for k in param_names(config)}
        self.x = jnp.asarray(x.astype(np.int32) if c.tokens else x)
        self.target = jnp.asarray(target.astype(np.int32) if c.tokens else target)

        cell = cell_of(config)[0]
        H = c.H

        def scan(p, sfx, xw, reverse):
            whh_t = p["Whh" + sfx].T
            h0 = jnp.zeros((c.B, H), jnp.float32)

            if cell == "lstm":  # PyTorch's nn.LSTM, gates i, f, g, o
                def step(carry, xw_t):
                    h, cc = carry
                    a = xw_t + h @ whh_t
                    i, f = jax.nn.sigmoid(a[:, :H]), jax.nn.sigmoid(a[:, H:2 * H])
                    g, o = jnp.tanh(a[:, 2 * H:3 * H]), jax.nn.sigmoid(a[:, 3 * H:])
                    cc = f * cc + i * g
                    h = o * jnp.tanh(cc)
                    return (h, cc), h
                init = (h0, h0)
            elif cell == "gru":  # PyTorch's nn.GRU, gates r, z, n, linear before reset
                bhn = p["bhn" + sfx]

                def step(h, xw_t):
                    a = h @ whh_t  # xw_t carries bias_ih (+ bias_hh for r, z)
                    r = jax.nn.sigmoid(xw_t[:, :H] + a[:, :H])
                    z = jax.nn.sigmoid(xw_t[:, H:2 * H] + a[:, H:2 * H])
                    n = jnp.tanh(xw_t[:, 2 * H:] + r * (a[:, 2 * H:] + bhn))
                    h = (1 - z) * n + z * h
                    return h, h
                init = h0
            else:
                def step(h, xw_t):
                    h = jnp.tanh(xw_t + h @ whh_t)
                    return h, h
                init = h0

            # reverse=True runs from the last step to the first and stores each state at its step
            _, hs = lax.scan(step, init, xw, reverse=reverse)
            return hs

        def logits(p, x):
            inputs = x
            for layer in range(L):
                outs = []
                for direction in range(D):
                    sfx = layer_suffix(layer, direction)
                    wxh, bh = p["Wxh" + sfx], p["bh" + sfx]
                    if layer == 0 and c.tokens:
                        xw = jnp.take(wxh.T, x, axis=0) + bh  # (T, B, H)
                    else:
                        xw = inputs @ wxh.T + bh
                    outs.append(scan(p, sfx, xw, reverse=direction == 1))
                inputs = outs[0] if D == 1 else jnp.concatenate(outs, axis=-1)
            return inputs @ p["Why"].T + p["by"]

        def outputs(p, x):
            z = logits(p, x)
            return jax.nn.softmax(z, axis=-1) if c.tokens else z

        def loss_fn(p, x, target):
            z = logits(p, x)
            if c.tokens:
                logp = jax.nn.log_softmax(z, axis=-1)
                return -jnp.mean(jnp.take_along_axis(logp, target[..., None], axis=-1))
            return jnp.mean(jnp.square(z - target))

        self._forward = jax.jit(outputs)
        self._value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
        # compile both outside any timed region
        self.forward()
        self.forward_backward()
        flags = os.environ.get("XLA_FLAGS", "")
        self.threads_note = f"XLA default thread pool (XLA_FLAGS={flags!r})"

    def set_threads(self, threads):
        flags = os.environ.get("XLA_FLAGS", "")
        if threads == 1:
            self.threads_note = f"process pinned to one CPU (XLA_FLAGS={flags!r})"
        else:
            self.threads_note = f"XLA default thread pool on {len(os.sched_getaffinity(0))} CPUs (XLA_FLAGS={flags!r})"

    def forward(self):
        return self._forward(self.params, self.x).block_until_ready()

    def forward_backward(self):
        return self.jax.block_until_ready(self._value_and_grad(self.params, self.x, self.target))

    def check_forward(self):
        return np.asarray(self.forward())

    def check_forward_backward(self):
        loss, grads = self.forward_backward()
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}


def build(peer, config):
    """A ``Peer`` for ``config``; raises ImportError when the peer's library is absent."""
    if peer == "cyrnn-cython":
        return CyrnnPeer(config, "cython")
    if peer == "cyrnn-numpy":
        return CyrnnPeer(config, "numpy")
    if peer == "naive-numpy":
        if cell_of(config)[0] != "elman":
            raise ValueError("the naive loop is an Elman RNN")
        return NaivePeer(config)
    if peer == "torch":
        return TorchPeer(config)
    if peer == "jax":
        return JaxPeer(config)
    raise ValueError(f"unknown peer {peer!r}")


def versions():
    """Versions of everything the comparison runs on (absent libraries are left out)."""
    import platform

    import scipy

    import cyrnn

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cyrnn": cyrnn.__version__ if hasattr(cyrnn, "__version__") else cyrnn.backend_info()["version"],
        "cyrnn_backend_info": {k: v for k, v in cyrnn.backend_info().items() if k != "available"},
        "cyrnn_build": build_fingerprint(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "cpu_count": os.cpu_count(),
    }
    for mod in ("torch", "jax", "jaxlib"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def build_fingerprint():
    """Which cyrnn was measured: the library is edited and rebuilt while benchmarks run, so record
    the git commit (+dirty), and hashes of the loaded extension and of the Python sources, with
    the extension's modification time."""
    import hashlib
    import subprocess

    import cyrnn
    from cyrnn import _rnn

    root = os.path.dirname(cyrnn.__file__)
    py = hashlib.sha1()
    for name in sorted(os.listdir(root)) + [os.path.join("kernels", n) for n in sorted(os.listdir(os.path.join(root, "kernels")))]:
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as fh:
                py.update(fh.read())
    with open(_rnn.__file__, "rb") as fh:
        ext = hashlib.sha1(fh.read()).hexdigest()[:12]
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(_rnn.__file__)))
    return {"git": commit, "_rnn_sha1": ext, "py_sha1": py.hexdigest()[:12], "_rnn_mtime": mtime}


def time_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
