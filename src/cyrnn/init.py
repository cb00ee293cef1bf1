"""Parameter initialisation schemes.

Each scheme returns a dict ``Wxh (H, I), Whh (H, H), bh (H,), Why (O, H), by (O,)`` (the last two
only when there is an output layer), drawn from a ``numpy.random.Generator``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ._typing import InitScheme

INITS = ("uniform", "xavier", "orthogonal", "identity", "normal")


def _xavier(rng, fan_out, fan_in):
    """Glorot & Bengio (2010): U(-b, b) with b = sqrt(6 / (fan_in + fan_out))."""
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_out, fan_in))


def _orthogonal(rng, n):
    """A random orthogonal matrix: Q of the QR decomposition of a Gaussian matrix, with the signs
    of R's diagonal folded in so that Q is uniformly (Haar) distributed."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def init_params(scheme: InitScheme, input_size: int, hidden_size: int, output_size: Optional[int],
                rng: np.random.Generator) -> dict[str, npt.NDArray[np.float64]]:
    """Return freshly drawn float64 parameters for ``scheme``.

    - ``uniform``: PyTorch's default, every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)) for the
      recurrent layer (``bh`` is the sum of PyTorch's two biases, so it is drawn as such a sum)
      and U(-1/sqrt(H), 1/sqrt(H)) for the output layer (``nn.Linear``, fan-in H).
    - ``xavier``: Glorot-uniform weights, zero biases.
    - ``orthogonal``: orthogonal ``Whh``, Glorot-uniform other weights, zero biases.
    - ``identity``: IRNN (Le, Jaitly & Hinton 2015): ``Whh = I``, other weights ~ N(0, 0.001^2),
      zero biases; pairs with ``nonlinearity="relu"``.
    - ``normal``: every weight ~ N(0, 0.01^2), zero biases (min-char-rnn).
    """
    H, I, O = hidden_size, input_size, output_size
    if scheme not in INITS:
        raise ValueError(f"init: expected one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == "uniform":
        k = 1.0 / np.sqrt(H)
        p = {
            "Wxh": rng.uniform(-k, k, (H, I)),
            "Whh": rng.uniform(-k, k, (H, H)),
            "bh": rng.uniform(-k, k, H) + rng.uniform(-k, k, H),
        }
        if O is not None:
            p["Why"] = rng.uniform(-k, k, (O, H))
            p["by"] = rng.uniform(-k, k, O)
        return p
    if scheme in ("xavier", "orthogonal"):
        p = {
            "Wxh": _xavier(rng, H, I),
            "Whh": _orthogonal(rng, H) if scheme == "orthogonal" else _xavier(rng, H, H),
        }
        out = None if O is None else _xavier(rng, O, H)
    else:
        std = 0.001 if scheme == "identity" else 0.01
        p = {
            "Wxh": rng.normal(0.0, std, (H, I)),
            "Whh": np.eye(H) if scheme == "identity" else rng.normal(0.0, std, (H, H)),
        }
        out = None if O is None else rng.normal(0.0, std, (O, H))
    p["bh"] = np.zeros(H)
    if O is not None:
        p["Why"] = out
        p["by"] = np.zeros(O)
    return p


def init_head(scheme: InitScheme, fan_in: int, output_size: int,
              rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A freshly drawn output layer ``Why (O, fan_in), by (O,)`` for ``scheme``, as
    ``init_params`` draws it for a single layer (there ``fan_in = H``): ``uniform`` is
    ``nn.Linear``'s U(-1/sqrt(fan_in), 1/sqrt(fan_in)), ``xavier``/``orthogonal`` Glorot-uniform
    with a zero bias, ``identity`` N(0, 0.001^2) and ``normal`` N(0, 0.01^2) with a zero bias."""
    O = output_size
    if scheme not in INITS:
        raise ValueError(f"init: expected one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == "uniform":
        k = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-k, k, (O, fan_in)), rng.uniform(-k, k, O)
    if scheme in ("xavier", "orthogonal"):
        return _xavier(rng, O, fan_in), np.zeros(O)
    std = 0.001 if scheme == "identity" else 0.01
    return rng.normal(0.0, std, (O, fan_in)), np.zeros(O)


def init_gated(scheme: InitScheme, cell: str, input_size: int, hidden_size: int,
               rng: np.random.Generator) -> dict[str, npt.NDArray[np.float64]]:
    """Freshly drawn float64 parameters of one gated layer-direction (``cell`` "lstm", G = 4H,
    or "gru", G = 3H): ``Wxh (G, I), Whh (G, H), bh (G,)`` and, for GRU, ``bhn (H,)``.

    - ``uniform``: PyTorch's default, every weight and both biases ~ U(-1/sqrt(H), 1/sqrt(H));
      ``bh`` is their sum (for GRU's n-gate, ``bias_ih`` alone, ``bhn`` being ``bias_hh``'s).
    - ``xavier``: Glorot-uniform weights gate by gate, zero biases.
    - ``orthogonal``: ``Whh`` orthogonal gate by gate, Glorot-uniform ``Wxh``, zero biases.
    - ``normal``: every weight ~ N(0, 0.01^2), zero biases.
    ``identity`` (IRNN) is an Elman initialisation and is refused.
    """
    if scheme not in INITS:
        raise ValueError(f"init: expected one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == "identity":
        raise ValueError(f"init: 'identity' (IRNN) is for Elman cells, not {cell}")
    H, I = hidden_size, input_size
    gates = {"lstm": 4, "gru": 3}[cell]
    G = gates * H
    if scheme == "uniform":
        k = 1.0 / np.sqrt(H)
        Wxh, Whh = rng.uniform(-k, k, (G, I)), rng.uniform(-k, k, (G, H))
        bias_ih, bias_hh = rng.uniform(-k, k, G), rng.uniform(-k, k, G)
        bh = bias_ih + bias_hh
        p = {"Wxh": Wxh, "Whh": Whh, "bh": bh}
        if cell == "gru":
            bh[2 * H:] = bias_ih[2 * H:]
            p["bhn"] = bias_hh[2 * H:].copy()
        return p
    if scheme in ("xavier", "orthogonal"):
        Wxh = np.concatenate([_xavier(rng, H, I) for _ in range(gates)])
        Whh = np.concatenate([_orthogonal(rng, H) if scheme == "orthogonal" else _xavier(rng, H, H)
                              for _ in range(gates)])
    else:
        Wxh, Whh = rng.normal(0.0, 0.01, (G, I)), rng.normal(0.0, 0.01, (G, H))
    p = {"Wxh": Wxh, "Whh": Whh, "bh": np.zeros(G)}
    if cell == "gru":
        p["bhn"] = np.zeros(H)
    return p
