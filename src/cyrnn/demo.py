"""A character-level language model trained on the Zen of Python, in a few seconds.

``python -m cyrnn`` runs it: no downloads, the text ships with every Python (the standard
library's ``this`` module keeps it ROT13-encoded). It prints the falling loss and a sample.
"""
import argparse
import codecs
import time

import numpy as np

from .rnn import RNN


def zen_of_python():
    """The Zen of Python, decoded from the standard library's ``this`` module (without
    importing it, which would print the text)."""
    import importlib.util

    spec = importlib.util.find_spec("this")
    source = spec.loader.get_source("this")
    encoded = source.split('s = """', 1)[1].split('"""', 1)[0]
    return codecs.decode(encoded, "rot13")


def sample(model, first_id, n, rng, h=None):
    """Draw ``n`` token ids, one step at a time, feeding each draw back in."""
    ids, token = [], first_id
    for _ in range(n):
        probs, h = model.forward(np.array([token]), h0=h)
        token = int(rng.choice(model.output_size, p=probs[-1] / probs[-1].sum()))
        ids.append(token)
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cyrnn", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    parser.add_argument("--seq", type=int, default=25, help="characters per step (default 25)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adagrad learning rate (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("cython", "numpy"), default=None)
    args = parser.parse_args(argv)

    text = zen_of_python()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text])
    V = len(chars)
    rng = np.random.default_rng(args.seed)
    model = RNN(V, args.hidden, V, output="softmax", init="normal", seed=args.seed,
                backend=args.backend)
    memory = {name: np.zeros_like(p) for name, p in model.params.items()}
    print(f"{model!r}: {len(text)} characters, vocabulary {V}")
    print(f"{'step':>6} {'loss':>8} {'bits/char':>9}")

    start, smooth = time.perf_counter(), np.log(V)
    for step in range(1, args.steps + 1):
        # a batch of random windows; the target is the next character
        offsets = rng.integers(0, len(data) - args.seq - 1, args.batch)
        window = offsets[None, :] + np.arange(args.seq + 1)[:, None]
        x, target = data[window[:-1]], data[window[1:]]
        loss, grads, _ = model.loss_and_grad(x, target)
        for name, p in model.params.items():
            g = np.clip(grads[name], -5, 5)
            memory[name] += g * g  # Adagrad, as in min-char-rnn
            p -= args.lr * g / np.sqrt(memory[name] + 1e-8)
        smooth = 0.98 * smooth + 0.02 * loss
        if step == 1 or step % (args.steps // 10 or 1) == 0:
            print(f"{step:>6} {smooth:>8.4f} {smooth / np.log(2):>9.3f}")
    elapsed = time.perf_counter() - start
    chars_per_s = args.steps * args.batch * args.seq / elapsed
    print(f"trained in {elapsed:.1f} s ({chars_per_s:,.0f} characters/s, backend {model.backend})")
    text_ids = sample(model, index["\n"], 200, rng)
    print("sample:\n" + "".join(chars[i] for i in text_ids))
    return 0
