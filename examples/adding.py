"""The adding problem: tanh RNN, IRNN, LSTM and GRU with the same training budget.

Hochreiter & Schmidhuber (1997), in the form of Le, Jaitly & Hinton (2015): each sequence has
T steps of two features, a value drawn from U(0, 1) and a marker that is 1 at two steps (one in
the first half, one in the second) and 0 elsewhere; the target, read at the last step
(``target_steps="last"``, many-to-one), is the sum of the two marked values, with a squared
error loss. Predicting the constant 1 (the mean of the sum) gives the variance of the sum of two
independent U(0, 1) values, 2 x 1/12 = 1/6 = 0.167: a model has learned something only when its
test MSE falls well below that.

Every model gets the same budget: the same training sequences, batches, updates, Adam learning
rate and gradient clipping. The script prints the test MSE after every epoch (the curves) and a
table of the final test MSE; ``--plot FILE`` also draws the curves (needs matplotlib).

    python examples/adding.py [--steps 200] [--epochs 10] [--plot adding.png] [--fast]

Measured with the defaults (hidden 64, batch 32, Adam lr 1e-2, clip_norm 1.0, 10 epochs of
6400 sequences = 2000 updates, 1000 test sequences, seed 0), T = 200:
``CYRNN_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python examples/adding.py``, 4.6 minutes on one
core of a 2-core machine shared with other jobs::

    test MSE per epoch (epoch 0: untrained)
    epoch  tanh RNN      IRNN      LSTM       GRU
        0    1.2097    1.1900    1.3347    1.4097
        1    0.1744    0.1706    0.1739    0.1819
        2    0.1758    0.1714    0.1703    0.0021
        3    0.1776    0.1710    0.1702    0.0011
        4    0.1716    0.1712    0.1707    0.0006
        5    0.1769    0.1711    0.1718    0.0005
        6    0.1732    0.1713    0.1741    0.0002
        7    0.2369    0.1714    0.1695    0.0002
        8    0.1716    0.1707    0.0030    0.0002
        9    0.1714    0.1714    0.0015    0.0002
       10    0.1867    0.1703    0.0009    0.0003

    model       params  test MSE  / baseline  seconds
    tanh RNN      4353    0.1867       1.120       55
    IRNN          4353    0.1703       1.022       57
    LSTM         17217    0.0009       0.005      121
    GRU          12993    0.0003       0.002       43

The tanh RNN and the IRNN never leave the baseline (they learn to predict the mean, 1); the
GRU finds the markers within the second epoch, the LSTM sits on the plateau for seven epochs
and then falls to 0.0009 (with lr 3e-3 it was still on the plateau after 1600 updates). The
IRNN of Le et al. was trained far longer with plain SGD; in this budget it does not escape.
With NumPy's BLAS left on two threads, the LSTM and GRU ended on the same test MSEs
(intermediate epochs differ in the last digits) but ran 3.5x and 8x slower on the busy
machine: the products ``fit`` composes in Python run on NumPy's BLAS, whose threads spin.
Since clipping leaves the LSTM's ``c0`` gradient out of the norm (it used to count it),
the LSTM's curve ends 0.0028, 0.0014, 0.0008 over epochs 8-10; the others are unchanged.
"""
import argparse
import math
import time

import numpy as np

import cyrnn

BASELINE = 1 / 6  # MSE of the constant prediction 1: Var(U1 + U2) = 2 / 12


def adding_problem(n, steps, rng):
    """``(x (T, n, 2) float32, y (n, 1))``: values and markers, and the sum of the marked values."""
    x = np.zeros((steps, n, 2), dtype=np.float32)
    x[:, :, 0] = rng.uniform(0.0, 1.0, (steps, n))
    seq = np.arange(n)
    first = rng.integers(0, steps // 2, n)
    second = rng.integers(steps // 2, steps, n)
    x[first, seq, 1] = 1.0
    x[second, seq, 1] = 1.0
    y = (x[first, seq, 0] + x[second, seq, 0])[:, None]
    return x, y


def models(hidden, seed):
    """The four contenders, one output unit each (linear output, so the loss is MSE)."""
    return {
        "tanh RNN": cyrnn.RNN(2, hidden, 1, nonlinearity="tanh", seed=seed),
        "IRNN": cyrnn.RNN(2, hidden, 1, nonlinearity="relu", init="identity", seed=seed),
        "LSTM": cyrnn.LSTM(2, hidden, 1, seed=seed),
        "GRU": cyrnn.GRU(2, hidden, 1, seed=seed),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="sequence length T (default 200)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--train", type=int, default=6400, help="training sequences (default 6400)")
    parser.add_argument("--test", type=int, default=1000, help="test sequences (default 1000)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of: tanh RNN,IRNN,LSTM,GRU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="save the curves here (needs matplotlib)")
    parser.add_argument("--fast", action="store_true", help="T=20, a few updates (for CI)")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.hidden, args.train, args.test, args.epochs = 20, 16, 640, 200, 4
        args.lr = 1e-2

    rng = np.random.default_rng(args.seed)
    train = adding_problem(args.train, args.steps, rng)
    test = adding_problem(args.test, args.steps, rng)
    contenders = models(args.hidden, args.seed)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        contenders = {name: contenders[name] for name in wanted}
    updates = args.epochs * math.ceil(args.train / args.batch_size)
    print(f"adding problem, T = {args.steps}: {args.train} training sequences, {args.test} test; "
          f"hidden {args.hidden}, batch {args.batch_size}, Adam lr {args.lr:g}, clip_norm "
          f"{args.clip_norm:g}, {args.epochs} epochs = {updates} updates")
    print(f"baseline (predict 1 always): MSE = 1/6 = {BASELINE:.4f}\n", flush=True)

    curves, results = {}, {}
    for name, model in contenders.items():
        started = time.perf_counter()
        initial = cyrnn.evaluate(model, test, batch_size=250, target_steps="last")
        history = cyrnn.fit(model, train, test, epochs=args.epochs, batch_size=args.batch_size,
                            optimizer="adam", lr=args.lr, clip_norm=args.clip_norm,
                            target_steps="last", seed=args.seed, on_nonfinite="skip")
        seconds = time.perf_counter() - started
        curves[name] = [initial] + history["val_loss"]
        skipped = sum(record["skipped"] for record in history.steps)
        results[name] = (curves[name][-1], seconds, skipped)
        print(f"{name:<9} test MSE per epoch: " + " ".join(f"{v:.4f}" for v in curves[name])
              + f"  ({seconds:.0f} s)", flush=True)

    print(f"\ntest MSE per epoch (epoch 0: untrained)")
    print(f"{'epoch':>5}" + "".join(f"{name:>10}" for name in curves))
    for epoch in range(args.epochs + 1):
        row = [c[epoch] if epoch < len(c) else math.nan for c in curves.values()]
        print(f"{epoch:>5}" + "".join(f"{v:>10.4f}" for v in row))

    print(f"\n{'model':<10}{'params':>8}{'test MSE':>10}{'/ baseline':>12}{'seconds':>9}")
    for name, (mse, seconds, skipped) in results.items():
        n_params = sum(p.size for p in contenders[name].params.values())
        note = f"  ({skipped} updates skipped: non-finite)" if skipped else ""
        print(f"{name:<10}{n_params:>8}{mse:>10.4f}{mse / BASELINE:>12.3f}{seconds:>9.0f}{note}")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return results
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, curve in curves.items():
            ax.semilogy(range(len(curve)), curve, label=name)
        ax.axhline(BASELINE, color="gray", linestyle="--", label="baseline 1/6")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test MSE")
        ax.set_title(f"adding problem, T = {args.steps}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return results


if __name__ == "__main__":
    main()
