"""Sine-wave regression: predict the next value of a noisy sine at every step (MSE).

    python examples/sine_wave.py [--epochs N] [--fast]

Trains on sliding windows of the series, reports the validation MSE, then forecasts the
continuation autoregressively (each prediction fed back as the next input).
"""
import argparse

import numpy as np

import cyrnn


def make_data(n=2000, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.1
    return (np.sin(t) + noise * rng.standard_normal(n)).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--fast", action="store_true", help="a few epochs (for CI)")
    args = parser.parse_args(argv)
    epochs = 3 if args.fast else args.epochs

    series = make_data()
    train, val = cyrnn.data.train_val_split(series, 0.2)
    train_xy = cyrnn.data.sliding_windows(train, args.window, stride=5)   # (T, M, 1) each
    val_xy = cyrnn.data.sliding_windows(val, args.window, stride=5)
    model = cyrnn.RNN(1, args.hidden, 1, seed=0)   # linear output, MSE
    history = cyrnn.fit(model, train_xy, val_xy, epochs=epochs, batch_size=16,
                        optimizer="adam", lr=1e-2, clip_norm=1.0, seed=0)
    for record in history.epochs[:: max(1, epochs // 8)] + history.epochs[-1:]:
        print(f"epoch {record['epoch']:>3}  train mse {record['loss']:.5f}  "
              f"val mse {record['val_loss']:.5f}")
    context = val[: args.window].reshape(-1, 1)
    future = model.forecast(context, 20)[:, 0]
    truth = val[args.window: args.window + 20]
    print(f"20-step autoregressive forecast, mean abs error {np.mean(np.abs(future - truth)):.4f}")
    return history


if __name__ == "__main__":
    main()
