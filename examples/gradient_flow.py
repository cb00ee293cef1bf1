"""Vanishing and exploding gradients, measured.

For a loss on the last of T states, prints ``||dL/dh_t||`` going back in time for several
recurrent set-ups (the diagnostic the backward kernel records as it runs), then shows what
global-norm clipping does to an exploding gradient. With matplotlib installed, ``--plot FILE``
saves the curves.

    python examples/gradient_flow.py [--steps T] [--plot gradient_flow.png] [--fast]
"""
import argparse

import numpy as np

import cyrnn
from cyrnn.diagnostics import gradient_decay


def setups(hidden, seed):
    """Name -> model: the classical cases of Bengio et al. (1994) and Le et al. (2015)."""
    tanh = cyrnn.RNN(8, hidden, nonlinearity="tanh", init="uniform", dtype="float64", seed=seed)
    tanh_orth = cyrnn.RNN(8, hidden, nonlinearity="tanh", init="orthogonal", dtype="float64",
                          seed=seed)
    irnn = cyrnn.RNN(8, hidden, nonlinearity="relu", init="identity", dtype="float64", seed=seed)
    linear = cyrnn.RNN(8, hidden, nonlinearity="identity", init="orthogonal", dtype="float64",
                       seed=seed)
    exploding = cyrnn.RNN(8, hidden, nonlinearity="identity", init="orthogonal", dtype="float64",
                          seed=seed)
    exploding.params["Whh"] *= 1.1  # spectral radius 1.1: errors grow 10% per step back
    return {
        "tanh, uniform init": tanh,
        "tanh, orthogonal init": tanh_orth,
        "relu, identity init (IRNN)": irnn,
        "linear, orthogonal": linear,
        "linear, 1.1 x orthogonal": exploding,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--plot", default=None, help="save a plot here (needs matplotlib)")
    parser.add_argument("--fast", action="store_true", help="short sequences (for CI)")
    args = parser.parse_args(argv)
    T = 30 if args.fast else args.steps

    curves = {name: gradient_decay(model, T, seed=0) for name, model in setups(args.hidden, 0).items()}
    back = [j for j in (0, 1, 5, 10, 20, 50, 100, 200) if j < T]
    print(f"||dL/dh_(T-j)|| for a unit error at step T = {T}")
    print(f"{'set-up':<28}" + "".join(f"{'j=' + str(j):>10}" for j in back))
    for name, norms in curves.items():
        print(f"{name:<28}" + "".join(f"{norms[T - 1 - j]:>10.3g}" for j in back))

    # clipping: an exploding model's total gradient before and after clip_grad_norm
    model = setups(args.hidden, 0)["linear, 1.1 x orthogonal"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, 4, 8))
    target = rng.standard_normal((T, 4, args.hidden))
    _, grads, _ = model.loss_and_grad(x, target, reduction="sum")
    before = cyrnn.clip_grad_norm(grads, 1.0)
    after = np.sqrt(sum(np.sum(g**2) for k, g in grads.items() if k not in ("h0", "x")))
    print(f"\nexploding set-up, total gradient norm {before:.3g}; after clip_grad_norm(1.0): "
          f"{after:.3g} (direction kept)")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return curves
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, norms in curves.items():
            ax.semilogy(np.arange(T)[::-1], norms, label=name)
        ax.set_xlabel("steps back from the loss, T - t")
        ax.set_ylabel("||dL/dh_t||")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return curves


if __name__ == "__main__":
    main()
