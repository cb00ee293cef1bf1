"""cyrnn reproduces min-char-rnn: a character model trained by truncated BPTT with Adagrad.

The reference below is the algorithm of Karpathy's min-char-rnn, written here from its
description: one-hot inputs, tanh units, softmax outputs, the loss summed over a chunk of 25
characters, gradients clipped elementwise to [-5, 5], Adagrad with ``eps`` inside the square
root, and the hidden state carried from chunk to chunk (reset at the start of the text).

Training is chaotic: a rounding difference of 1e-16 grows to O(1) within ~50 iterations. So the
exact comparison runs in lock step (at every iteration both sides compute the loss and the
gradients from the reference's current weights and carried state, then each applies its own
update, which must agree, and cyrnn is reset to the reference's weights), and two independent
runs are compared statistically (smoothed loss after many iterations within a few percent).
"""
import numpy as np
import pytest

import cyrnn
from cyrnn.cli import zen_of_python

SEQ = 25
HIDDEN = 32
LR = 0.1


class Reference:
    """min-char-rnn's model and one training iteration, column-vector convention."""

    def __init__(self, vocab_size, hidden, rng):
        self.V = vocab_size
        self.Wxh = rng.standard_normal((hidden, vocab_size)) * 0.01
        self.Whh = rng.standard_normal((hidden, hidden)) * 0.01
        self.Why = rng.standard_normal((vocab_size, hidden)) * 0.01
        self.bh = np.zeros((hidden, 1))
        self.by = np.zeros((vocab_size, 1))
        self.memory = {name: np.zeros_like(p) for name, p in self.params().items()}

    def params(self):
        return {"Wxh": self.Wxh, "Whh": self.Whh, "bh": self.bh, "Why": self.Why, "by": self.by}

    def loss_and_grads(self, inputs, targets, hprev):
        xs, hs, ps = {}, {-1: hprev.copy()}, {}
        loss = 0.0
        for t, (i, j) in enumerate(zip(inputs, targets)):
            xs[t] = np.zeros((self.V, 1))
            xs[t][i] = 1
            hs[t] = np.tanh(self.Wxh @ xs[t] + self.Whh @ hs[t - 1] + self.bh)
            y = self.Why @ hs[t] + self.by
            e = np.exp(y - y.max())
            ps[t] = e / e.sum()
            loss -= np.log(ps[t][j, 0])
        grads = {name: np.zeros_like(p) for name, p in self.params().items()}
        dh_next = np.zeros_like(hprev)
        for t in reversed(range(len(inputs))):
            dy = ps[t].copy()
            dy[targets[t]] -= 1
            grads["Why"] += dy @ hs[t].T
            grads["by"] += dy
            dh = self.Why.T @ dy + dh_next
            dh_raw = (1 - hs[t] * hs[t]) * dh
            grads["bh"] += dh_raw
            grads["Wxh"] += dh_raw @ xs[t].T
            grads["Whh"] += dh_raw @ hs[t - 1].T
            dh_next = self.Whh.T @ dh_raw
        for g in grads.values():
            np.clip(g, -5, 5, out=g)
        return loss, grads, hs[len(inputs) - 1]

    def update(self, grads):
        for name, p in self.params().items():
            self.memory[name] += grads[name] * grads[name]
            p -= LR * grads[name] / np.sqrt(self.memory[name] + 1e-8)


def _chunks(data, n):
    """min-char-rnn's data pointer: chunks of SEQ, restarting (and resetting h) at the end."""
    p = 0
    for i in range(n):
        if i == 0 or p + SEQ + 1 >= len(data):
            p, reset = 0, True
        else:
            reset = False
        yield data[p:p + SEQ], data[p + 1:p + SEQ + 1], reset
        p += SEQ


@pytest.fixture(scope="module")
def corpus():
    text = zen_of_python()
    vocab = cyrnn.Vocabulary.from_text(text)
    return vocab, vocab.encode(text)


def _cyrnn_model(reference, backend):
    model = cyrnn.RNN(reference.V, HIDDEN, reference.V, output="softmax", dtype="float64",
                      backend=backend)
    model.set_params({name: p.reshape(model.params[name].shape)
                      for name, p in reference.params().items()})
    return model


def test_lock_step_with_the_reference(backend, corpus):
    vocab, data = corpus
    reference = Reference(len(vocab), HIDDEN, np.random.default_rng(0))
    model = _cyrnn_model(reference, backend)
    optimizer = cyrnn.optim.Adagrad(model.params, lr=LR, eps=1e-8)
    hprev = np.zeros((HIDDEN, 1))
    for inputs, targets, reset in _chunks(data, 120):  # more than a pass over the text
        if reset:
            hprev = np.zeros((HIDDEN, 1))
        ref_loss, ref_grads, ref_h = reference.loss_and_grads(inputs, targets, hprev)

        # cyrnn from the reference's weights and carried state
        model.set_params({name: p.reshape(model.params[name].shape)
                          for name, p in reference.params().items()})
        loss, grads, h = model.loss_and_grad(inputs, targets, h0=hprev[:, 0], reduction="sum")
        cyrnn.clip_grad_value(grads, 5.0)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        np.testing.assert_allclose(h, ref_h[:, 0], rtol=1e-12, atol=1e-14)
        for name, g in ref_grads.items():
            np.testing.assert_allclose(grads[name], g.reshape(grads[name].shape), rtol=1e-9,
                                       atol=1e-13, err_msg=name)

        # both update; the results agree to rounding
        optimizer.step(grads)
        reference.update(ref_grads)
        for name, p in reference.params().items():
            np.testing.assert_allclose(model.params[name], p.reshape(model.params[name].shape),
                                       rtol=1e-9, atol=1e-12, err_msg=name)
        hprev = ref_h


def test_independent_runs_agree_statistically(backend, corpus):
    """Same start, no resynchronisation: chaos separates the trajectories, not the statistics."""
    vocab, data = corpus
    iterations = 600
    reference = Reference(len(vocab), HIDDEN, np.random.default_rng(1))
    model = _cyrnn_model(reference, backend)
    optimizer = cyrnn.optim.Adagrad(model.params, lr=LR, eps=1e-8)
    smooth_ref = smooth = -np.log(1.0 / len(vocab)) * SEQ
    h_ref, h = np.zeros((HIDDEN, 1)), None
    for inputs, targets, reset in _chunks(data, iterations):
        if reset:
            h_ref, h = np.zeros((HIDDEN, 1)), None
        ref_loss, ref_grads, h_ref = reference.loss_and_grads(inputs, targets, h_ref)
        reference.update(ref_grads)
        loss, grads, h = model.loss_and_grad(inputs, targets, h0=h, reduction="sum")
        cyrnn.clip_grad_value(grads, 5.0)
        optimizer.step(grads)
        smooth_ref = 0.99 * smooth_ref + 0.01 * ref_loss
        smooth = 0.99 * smooth + 0.01 * loss
    start = -np.log(1.0 / len(vocab)) * SEQ
    assert smooth_ref < 0.6 * start and smooth < 0.6 * start  # both learned
    assert smooth == pytest.approx(smooth_ref, rel=0.05)
