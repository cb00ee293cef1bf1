"""Normalized recurrences: what a layer-normed (or batch-normed) training step costs over the plain
one, and against the way PyTorch users get a layer-normed cell today (a per-step Python loop).

Rows, float32, training step (``loss_and_grad(..., input_grad=False)``) at the medium and
charlm-batch sizes of ``peers.CONFIGS``, for the Elman (tanh), LSTM and GRU cells:

- ``plain``: ``cyrnn.RNN`` / ``LSTM`` / ``GRU`` (compiled backend);
- ``layer``, ``batch``: the same model with ``norm="layer"`` / ``norm="batch"``;
- ``layer-reg``: ``norm="layer"`` with ``recurrent_dropout=0.25``, ``zoneout=0.1`` and
  ``weight_drop=0.2`` (masks drawn from the model's generator at each call);
- ``layer-numpy``: ``norm="layer"`` on the NumPy backend;
- ``torch-loop``: the same layer-normed model written as PyTorch users write it: the input
  projection and its ``F.layer_norm`` over all steps, then a Python loop over steps of
  ``h @ Whh^T``, ``F.layer_norm`` and the cell's gate arithmetic (for the LSTM also
  ``F.layer_norm`` of the cell state), the head, the loss and ``loss.backward()``. It starts
  from cyrnn's weights and is checked against cyrnn (loss 1e-4, gradients 1e-3 relative)
  before it is timed.
- ``torch-cell-loop``: the peer as the issue names it, ``torch.nn.LSTMCell`` (``RNNCell``,
  ``GRUCell`` for the other cells) and ``torch.nn.LayerNorm`` of its output in a Python loop over
  steps, ``h_t = LN(cell(x_t, h_{t-1}))`` (token ids as one-hot rows), then ``nn.Linear``, the
  loss and ``loss.backward()``. A different model from cyrnn's, at the same sizes: the cell is one
  fused C call that cannot normalize its inner terms, so only its output is normalized (one
  normalization a step rather than cyrnn's two or three). It is the cheaper of the two loops, and
  the way PyTorch users get a layer-normed recurrence without writing the cell themselves.
- ``gemm-limit``: one NumPy float32 product (T*B, H) x (H, G), the shape of the step's
  recurrent products; the report scales its rate (FLOP/s) to the step's matrix products
  (``step_flops``): an estimate of the fastest the step can run on this machine (cyrnn's own
  kernel beats NumPy's BLAS at some shapes).

Run (one thread and nothing pinned; report in bench/NORMS.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_norms.py \
        -p no:cacheprovider --benchmark-json=/tmp/norms.json
    python bench/norms_report.py /tmp/norms.json > bench/NORMS.md
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import peers  # noqa: E402
from test_compare import _ids, _measure, _rel, _versions_once  # noqa: E402

CONFIGS = ("charlm_batched", "medium")
CELLS = ("elman", "lstm", "gru")
VARIANTS = ("plain", "layer", "batch", "layer-reg", "layer-numpy", "torch-loop",
            "torch-cell-loop", "gemm-limit")
THREADS = (1, "default")

_cache = {}


def _model(config, cell, variant):
    import cyrnn

    c = peers.CONFIGS[config]
    cls = {"elman": cyrnn.RNN, "lstm": cyrnn.LSTM, "gru": cyrnn.GRU}[cell]
    norm = {"plain": None, "batch": "batch"}.get(variant, "layer")
    backend = "numpy" if variant == "layer-numpy" else "cython"
    regularizers = (dict(recurrent_dropout=0.25, zoneout=0.1, weight_drop=0.2)
                    if variant == "layer-reg" else {})
    return cls(c.I, c.H, c.O, output="softmax" if c.tokens else "linear", dtype="float32",
               seed=0, backend=backend, norm=norm, **regularizers)


class TorchLoop:
    """The layer-normed cell as a per-step PyTorch loop, from a cyrnn model's parameters."""

    def __init__(self, config, cell, model):
        import torch

        self.torch, self.cell, self.c = torch, cell, peers.CONFIGS[config]
        self.p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
        x, y = peers.make_data(config)
        self.x = torch.tensor(x)
        self.y = torch.tensor(y)

    def loss(self):
        torch, F, p, c = self.torch, self.torch.nn.functional, self.p, self.c
        H, G = c.H, p["Whh"].shape[0]
        T, B = self.x.shape[:2]
        if c.tokens:
            proj = p["Wxh"].t()[self.x]  # (T, B, G): a row gather of Wxh^T
        else:
            proj = self.x @ p["Wxh"].t()
        P = F.layer_norm(proj, (G,), weight=p["gx"], eps=1e-5) + p["bh"]
        h = torch.zeros(B, H)
        cs = torch.zeros(B, H)
        outs = []
        for t in range(T):
            R = F.layer_norm(h @ p["Whh"].t(), (G,), weight=p["gh"], eps=1e-5)
            if self.cell == "elman":
                h = torch.tanh(P[t] + R)
            elif self.cell == "lstm":
                a = P[t] + R
                i, f, g, o = a.chunk(4, dim=1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                cs = f * cs + i * g
                h = o * torch.tanh(F.layer_norm(cs, (H,), weight=p["gc"], bias=p["bc"], eps=1e-5))
            else:
                r = torch.sigmoid(P[t, :, :H] + R[:, :H])
                z = torch.sigmoid(P[t, :, H:2 * H] + R[:, H:2 * H])
                n = torch.tanh(P[t, :, 2 * H:] + r * (R[:, 2 * H:] + p["bhn"]))
                h = (1 - z) * n + z * h
            outs.append(h)
        z = torch.stack(outs) @ p["Why"].t() + p["by"]
        if c.tokens:
            return F.cross_entropy(z.reshape(T * B, -1), self.y.reshape(-1))
        return F.mse_loss(z, self.y)

    def step(self):
        for v in self.p.values():
            v.grad = None
        loss = self.loss()
        loss.backward()
        return float(loss)


class TorchCellLoop:
    """``torch.nn.LSTMCell`` (``RNNCell``, ``GRUCell``) with ``torch.nn.LayerNorm`` of its output,
    stepped in Python, then ``nn.Linear`` and the loss (its own weights, seed 0)."""

    def __init__(self, config, cell):
        import torch

        self.torch, self.c = torch, peers.CONFIGS[config]
        c, nn = self.c, torch.nn
        torch.manual_seed(0)
        self.cell = {"elman": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[cell](c.I, c.H)
        self.lstm = cell == "lstm"
        self.norm = nn.LayerNorm(c.H)
        self.head = nn.Linear(c.H, c.O)
        self.modules = (self.cell, self.norm, self.head)
        x, y = peers.make_data(config)
        if c.tokens:
            self.x = torch.nn.functional.one_hot(torch.tensor(x), c.I).float()
        else:
            self.x = torch.tensor(x)
        self.y = torch.tensor(y)

    def step(self):
        torch, c = self.torch, self.c
        for module in self.modules:
            module.zero_grad(set_to_none=True)
        T, B = self.x.shape[:2]
        h = torch.zeros(B, c.H)
        state = (h, torch.zeros(B, c.H)) if self.lstm else h
        outs = []
        for t in range(T):
            if self.lstm:
                h, cs = self.cell(self.x[t], state)
                h = self.norm(h)
                state = (h, cs)
            else:
                h = state = self.norm(self.cell(self.x[t], state))
            outs.append(h)
        z = self.head(torch.stack(outs))
        if c.tokens:
            loss = torch.nn.functional.cross_entropy(z.reshape(T * B, -1), self.y.reshape(-1))
        else:
            loss = torch.nn.functional.mse_loss(z, self.y)
        loss.backward()
        return float(loss)


def step_flops(config, cell):
    """Multiply-adds x 2 of one training step's matrix products (``input_grad=False``, one
    layer): forward the input projection (none for token ids, a row gather), the recurrent
    products and the head; backward dWhh, dL/dh_prev, dWxh, dWhy and the head's dL/dh."""
    c = peers.CONFIGS[config]
    G = c.H * {"elman": 1, "lstm": 4, "gru": 3}[cell]
    dense = 0 if c.tokens else c.I
    return 2 * c.T * c.B * (3 * G * c.H + 2 * G * dense + 3 * c.H * c.O)


def _gemm_shape(config, cell):
    c = peers.CONFIGS[config]
    return c.T * c.B, c.H, c.H * {"elman": 1, "lstm": 4, "gru": 3}[cell]


def _runner(config, cell, variant):
    key = (config, cell, variant)
    if key not in _cache:
        x, y = peers.make_data(config)
        if variant == "gemm-limit":
            M, K, N = _gemm_shape(config, cell)
            rng = np.random.default_rng(0)
            a = rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal((K, N)).astype(np.float32)
            out = np.empty((M, N), np.float32)
            _cache[key] = lambda: np.matmul(a, b, out=out)
        elif variant == "torch-loop":
            pytest.importorskip("torch")
            model = _model(config, cell, "layer")
            loop = TorchLoop(config, cell, model)
            loss, grads, _ = model.loss_and_grad(x, y, input_grad=False)
            found = loop.step()
            assert abs(found - loss) <= 1e-4 * abs(loss), (found, loss)
            for name, g in grads.items():
                if name in loop.p:
                    err = _rel(loop.p[name].grad.numpy(), g)
                    assert err <= 1e-3, (name, err)
            _cache[key] = loop.step
        elif variant == "torch-cell-loop":
            pytest.importorskip("torch")
            loop = TorchCellLoop(config, cell)
            assert np.isfinite(loop.step())
            _cache[key] = loop.step
        else:
            model = _model(config, cell, variant)
            _cache[key] = lambda: model.loss_and_grad(x, y, input_grad=False)
    return _cache[key]


@pytest.mark.parametrize("blas_threads", THREADS, indirect=True, ids=_ids(THREADS, "threads"))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", CONFIGS)
def test_norm_step(benchmark, blas_threads, config, cell, variant):
    threads = blas_threads
    fn = _runner(config, cell, variant)
    benchmark.group = f"{config} {cell} {threads} thread(s)"
    benchmark.extra_info.update(config=config, cell=cell, variant=variant, threads=threads,
                                versions=_versions_once(), step_flops=step_flops(config, cell))
    if variant == "gemm-limit":
        M, K, N = _gemm_shape(config, cell)
        benchmark.extra_info.update(flops=2 * M * K * N, shape=[M, K, N])
    if variant.startswith("torch"):
        import torch

        torch.set_num_threads(1 if threads == 1 else os.cpu_count() or 1)
    _measure(benchmark, fn)
