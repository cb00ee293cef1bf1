"""min-char-rnn, with cyrnn doing the work.

Karpathy's classic: a character model trained on a text with Adagrad, one chunk of 25
characters at a time, gradients clipped to [-5, 5] and the hidden state carried from chunk to
chunk, reset at the start of the text. Here the forward pass and BPTT are ``loss_and_grad``.

    python examples/min_char_rnn.py [TEXT_FILE] [--iterations N] [--fast]
    python examples/min_char_rnn.py --num-layers 2 --dropout 0.1    # a stack of two layers

Without a file it learns the Zen of Python. With ``--num-layers L`` the carried state is the
``(L, H)`` states of every layer (``torch.nn.RNN``'s layout, unbatched), and ``--dropout``
drops the outputs of every layer but the last in training.
"""
import argparse

import numpy as np

import cyrnn
from cyrnn.cli import zen_of_python


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_file", nargs="?", help="text to learn (default: the Zen of Python)")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--num-layers", type=int, default=1, help="stacked layers")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout between layers")
    parser.add_argument("--seq-len", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--fast", action="store_true", help="a few iterations (for CI)")
    args = parser.parse_args(argv)
    iterations = 200 if args.fast else args.iterations

    if args.text_file:
        with open(args.text_file, encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = zen_of_python()
    vocab = cyrnn.Vocabulary.from_text(text)
    data = vocab.encode(text)
    V, S = len(vocab), args.seq_len
    model = cyrnn.RNN(V, args.hidden, V, num_layers=args.num_layers, dropout=args.dropout,
                      output="softmax", init="normal", seed=0)
    model.vocab = vocab
    optimizer = cyrnn.optim.Adagrad(model.params, lr=args.lr, eps=1e-8)

    smooth_loss = -np.log(1.0 / V) * S  # the loss at iteration 0
    p, h = 0, None
    for n in range(iterations):
        if p + S + 1 >= len(data) or n == 0:
            p, h = 0, None  # back to the start of the text, with a fresh memory
        inputs, targets = data[p:p + S], data[p + 1:p + S + 1]
        loss, grads, h = model.loss_and_grad(inputs, targets, h0=h, reduction="sum")
        cyrnn.clip_grad_value(grads, 5.0)  # against exploding gradients
        optimizer.step(grads)
        smooth_loss = smooth_loss * 0.999 + loss * 0.001
        if n % (iterations // 10) == 0:
            print(f"iter {n:>6}, smoothed loss {smooth_loss:.3f}")
        p += S
    print("----\n" + model.sample(text[0], 200, seed=0) + "\n----")


if __name__ == "__main__":
    main()
