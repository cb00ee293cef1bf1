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

All peers start from the same weights: those of ``cyrnn.RNN(..., seed=0)``.
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


# ---------------------------------------------------------------------------------------------
# problem, FLOPs
# ---------------------------------------------------------------------------------------------


def make_model(config, backend="cython"):
    import cyrnn  # here, so that the report can read CONFIGS without cyrnn built

    c = CONFIGS[config]
    output = "softmax" if c.tokens else "linear"
    return cyrnn.RNN(c.I, c.H, c.O, output=output, dtype="float32", seed=0, backend=backend)


def make_data(config):
    """Inputs ``x`` (T, B) int64 token ids or (T, B, I) float32, and targets (T, B) int64 class
    ids or (T, B, O) float32, from a fixed seed."""
    c = CONFIGS[config]
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
    row gather, so no ``I H`` term."""
    c = CONFIGS[config]
    ih = 0 if c.tokens else c.I * c.H
    return 2 * c.T * c.B * (ih + c.H * c.H + c.H * c.O)


def flops(config, op):
    """FLOPs counted for ``op``: the forward's matrix products, and for forward+backward three
    times that less the input gradient: the backward carries the error back (``dz Why``,
    ``da Whh``) and forms the weight gradients (``dz^T h``, ``da^T h_{t-1}`` and, dense inputs
    only, ``da^T x``); no peer computes ``dx = da Wxh``, so its ``2 T B I H`` is not counted."""
    f = forward_flops(config)
    if op == "forward":
        return f
    c = CONFIGS[config]
    dx = 0 if c.tokens else 2 * c.T * c.B * c.I * c.H
    return 3 * f - dx


def machine_limit_shape(config):
    """The (M, K) x (K, N) product of the machine-limit benchmark: (T*B, H) x (H, H)."""
    c = CONFIGS[config]
    return c.T * c.B, c.H, c.H


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
        return float(loss), {k: grads[k] for k in PARAM_NAMES}


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
    name = "torch"

    def __init__(self, config):
        import torch
        from torch import nn
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        c = self.c = CONFIGS[config]
        model = make_model(config)
        torch.manual_seed(0)
        self.embed = None
        if c.tokens:
            self.embed = nn.Embedding(c.I, c.I)
            with torch.no_grad():
                self.embed.weight.copy_(torch.eye(c.I))
            self.embed.weight.requires_grad_(False)
        self.rnn = nn.RNN(c.I, c.H, nonlinearity="tanh")  # time-major (T, B, I)
        self.fc = nn.Linear(c.H, c.O)
        state = model.to_torch_state()
        with torch.no_grad():
            for prefix, module in (("rnn.", self.rnn), ("fc.", self.fc)):
                for name, param in module.named_parameters():
                    param.copy_(torch.from_numpy(state[prefix + name]))
        x, target = make_data(config)
        self.x = torch.from_numpy(x)
        self.target = torch.from_numpy(target)
        if c.tokens:
            self.target_flat = self.target.reshape(-1)
        self.params = list(self.rnn.parameters()) + list(self.fc.parameters())

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
        grads = {
            "Wxh": self.rnn.weight_ih_l0.grad,
            "Whh": self.rnn.weight_hh_l0.grad,
            "bh": self.rnn.bias_ih_l0.grad,
            "Why": self.fc.weight.grad,
            "by": self.fc.bias.grad,
        }
        return float(loss.item()), {k: v.numpy().copy() for k, v in grads.items()}


class JaxPeer(Peer):
    name = "jax"

    def __init__(self, config):
        import jax
        import jax.numpy as jnp
        from jax import lax

        self.jax = jax
        c = self.c = CONFIGS[config]
        model = make_model(config)
        x, target = make_data(config)
        self.params = {k: jnp.asarray(v) for k, v in model.params.items()}
        self.x = jnp.asarray(x.astype(np.int32) if c.tokens else x)
        self.target = jnp.asarray(target.astype(np.int32) if c.tokens else target)

        def logits(p, x):
            if c.tokens:
                xw = jnp.take(p["Wxh"].T, x, axis=0) + p["bh"]  # (T, B, H)
            else:
                xw = x @ p["Wxh"].T + p["bh"]
            whh_t = p["Whh"].T

            def step(h, xw_t):
                h = jnp.tanh(xw_t + h @ whh_t)
                return h, h

            _, hs = lax.scan(step, jnp.zeros((c.B, c.H), jnp.float32), xw)
            return hs @ p["Why"].T + p["by"]

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
