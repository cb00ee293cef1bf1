"""Weight exchange with PyTorch and Keras, as plain NumPy arrays (neither framework is needed).

PyTorch: the names and layout of ``torch.nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (+ ``nn.Linear``)
state dicts. Keras 3: the ``get_weights()`` lists of ``SimpleRNN`` / ``LSTM`` /
``GRU(reset_after=True)`` layers (+ ``Dense``), see ``params_from_keras``.

PyTorch's ``nn.RNN`` keeps, per layer ``l`` and direction, ``weight_ih_l{l}[_reverse]`` (H, in),
``weight_hh_l{l}[_reverse]`` (H, H) and the two biases ``bias_ih``/``bias_hh`` (H,), which it
adds; cyrnn keeps the same matrices in the same orientation and one bias, their sum. The
mapping is by name only (``cyrnn.layers`` names the parameters), so it serves any dict keyed like
``params``, gradients included. Used by ``RNN.from_torch`` and ``RNN.to_torch_state``.

Neither layout has a place for cyrnn's normalized or regularized recurrences (``norm``,
``recurrent_dropout``, ``zoneout``, ``weight_drop``, see ``cyrnn.norms``): exporting such a
model is refused with a ``ValueError`` naming the option, rather than writing weights that
describe a different network.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from . import cells
from .layers import Architecture

# torch's key of one layer-direction's parameter: weight_ih_l0, bias_hh_l2_reverse, ...
_TORCH_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_CELL_NAMES = {"weight_ih": "Wxh", "weight_hh": "Whh"}


def params_from_torch(state_dict: Mapping[str, npt.ArrayLike], *,
                      output_prefix: Optional[str] = None,
                      cell: str = "elman") -> dict[str, np.ndarray]:
    """cyrnn ``params`` from a ``torch.nn.RNN`` (``cell="elman"``), ``nn.LSTM`` (``"lstm"``) or
    ``nn.GRU`` (``"gru"``) state dict, with an optional ``nn.Linear`` head.

    The number of layers and directions comes from the keys (``..._l{l}`` and ``..._reverse``);
    every layer-direction must have its two weights (biases are optional and sum into ``bh``),
    with the same ``rnn`` prefix. The output layer is the one other ``<prefix>weight`` key
    (``<prefix>bias`` optional), or the one named by ``output_prefix``.
    """
    arrays = {str(k): np.asarray(v) for k, v in state_dict.items()}
    found: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    prefixes = set()
    for key in list(arrays):
        match = _TORCH_KEY.search(key)
        if match is None:
            continue
        kind, layer, reverse = match.group(1), int(match.group(2)), match.group(3) is not None
        prefixes.add(key[:match.start()])
        entry = found.setdefault((layer, int(reverse)), {})
        if kind in entry:
            raise ValueError(f"state_dict: several keys for {match.group(0)!r}")
        entry[kind] = arrays.pop(key)
    if not found:
        raise KeyError("state_dict: no key ending in 'weight_ih_l0'")
    if len(prefixes) > 1:
        raise ValueError(f"state_dict: recurrent weights under several prefixes {sorted(prefixes)}")
    num_layers = max(layer for layer, _ in found) + 1
    num_directions = 2 if any(d for _, d in found) else 1
    for layer in range(num_layers):
        for d in range(num_directions):
            name = f"l{layer}" + ("_reverse" if d else "")
            entry = found.get((layer, d), {})
            for kind in ("weight_ih", "weight_hh"):
                if kind not in entry:
                    what = "direction" if d and any(k[0] == layer for k in found) else "layer"
                    raise KeyError(f"state_dict: missing {kind}_{name} (a {what} of a "
                                   f"{num_layers}-layer, {num_directions}-direction RNN)")
    Wxh, Whh = found[(0, 0)]["weight_ih"], found[(0, 0)]["weight_hh"]
    for name, a in (("weight_ih_l0", Wxh), ("weight_hh_l0", Whh)):
        if a.ndim != 2:
            raise ValueError(f"{name}: expected 2 dimensions, got shape {a.shape}")
    gates = cells.get(cell).gates
    if Whh.shape[0] % gates:
        raise ValueError(f"weight_hh_l0: a {cell} layer has {gates} gates, so rows a multiple of "
                         f"{gates}; got shape {Whh.shape}")
    H = Whh.shape[0] // gates
    arch = Architecture(Wxh.shape[1], H, None, num_layers, num_directions, cell)
    G = arch.gate_size
    params: dict[str, np.ndarray] = {}
    for j, layer, d in arch.layer_directions():
        arrays_j = found[(layer, d)]
        names = arch.cell_names(j)
        tail = f"_l{layer}" + ("_reverse" if d else "")
        for kind, shape in (("weight_ih", (G, arch.layer_input_size(layer))), ("weight_hh", (G, H))):
            if arrays_j[kind].shape != shape:
                raise ValueError(f"{kind}{tail}: expected shape {shape}, got {arrays_j[kind].shape}")
            params[names[0 if kind == "weight_ih" else 1]] = arrays_j[kind]
        biases = {}
        for kind in ("bias_ih", "bias_hh"):
            biases[kind] = np.asarray(arrays_j.get(kind, np.zeros(G)), dtype=np.float64)
            if biases[kind].shape != (G,):
                raise ValueError(f"{kind}{tail}: expected shape ({G},), got {biases[kind].shape}")
        params[names[2]] = biases["bias_ih"] + biases["bias_hh"]
        if cell == "gru":
            # the n-gate's bias_hh sits inside the reset product: a parameter of its own
            params[names[2]][2 * H:] = biases["bias_ih"][2 * H:]
            params[names[3]] = biases["bias_hh"][2 * H:].copy()

    if output_prefix is None:
        weights = [k for k in arrays if k.endswith("weight")]
        if len(weights) > 1:
            raise ValueError(f"state_dict: several candidate output layers {weights}; pass "
                             "output_prefix")
        output_prefix = weights[0][: -len("weight")] if weights else None
    elif output_prefix + "weight" not in arrays:
        raise KeyError(f"state_dict: no key {output_prefix + 'weight'!r}")
    if output_prefix is not None:
        Why = arrays[output_prefix + "weight"]
        if Why.ndim != 2:
            raise ValueError(f"{output_prefix}weight: expected 2 dimensions, got shape {Why.shape}")
        params["Why"] = Why
        params["by"] = arrays.get(output_prefix + "bias", np.zeros(Why.shape[0]))
    return params


def torch_names(arch: Architecture, *, rnn_prefix: str = "rnn.",
                output_prefix: str = "fc.") -> dict[str, tuple[str, ...]]:
    """For each cyrnn parameter name, its torch key(s): ``bh`` maps to ``(bias_ih, bias_hh)``,
    every other name to one key (GRU's ``bhn`` to the ``bias_hh`` whose n-part it is)."""
    names: dict[str, tuple[str, ...]] = {}
    for j, layer, d in arch.layer_directions():
        tail = f"_l{layer}" + ("_reverse" if d else "")
        Wxh, Whh, bh, *extra = arch.cell_names(j)
        names[Wxh] = (f"{rnn_prefix}weight_ih{tail}",)
        names[Whh] = (f"{rnn_prefix}weight_hh{tail}",)
        names[bh] = (f"{rnn_prefix}bias_ih{tail}", f"{rnn_prefix}bias_hh{tail}")
        for name in extra:  # GRU's bhn: the n-part of bias_hh
            names[name] = (f"{rnn_prefix}bias_hh{tail}",)
    if arch.output_size is not None:
        names["Why"] = (output_prefix + "weight",)
        names["by"] = (output_prefix + "bias",)
    return names


#: Why each recurrence option has no counterpart in ``torch.nn.RNN``/``LSTM``/``GRU`` or Keras's
#: recurrent layers.
_UNEXPORTABLE = {
    "norm": "normalizes the input and recurrent terms (and an LSTM's cell state) inside every "
            "step, with gains of its own{stats}, which these layers do not compute",
    "zoneout": "mixes each new state with the previous one (at random in training, in "
               "expectation at inference), which these layers do not do",
    "recurrent_dropout": "drops units of the state in the recurrent product in training, which "
                         "these layers cannot express",
    "weight_drop": "drops weights of the recurrent matrix in training, which these layers "
                   "cannot express",
}


def check_exportable(arch: Architecture, layout: str) -> None:
    """Refuse (``ValueError``) to export a model whose recurrence ``layout`` (e.g. ``"torch"``)
    cannot represent: a normalization or a regularizer inside the recurrence."""
    if arch.plain:
        return
    problems, training_only = [], []
    for key in ("norm", "zoneout", "recurrent_dropout", "weight_drop"):
        value = getattr(arch, key)
        if value is None or value == 0:
            continue
        stats = " and running statistics" if value == "batch" else ""
        problems.append(f"{key}={value!r} {_UNEXPORTABLE[key].format(stats=stats)}")
        if key in ("recurrent_dropout", "weight_drop"):
            training_only.append(key)
    message = f"cannot export to the {layout} layout: {'; '.join(problems)}"
    if len(training_only) < len(problems):
        message += "; the weights alone would describe a different network"
    else:
        # inference is the plain cell's: the weights are the same, the option is training only
        message += (f"; a model loaded with these weights computes the same at inference but "
                    f"would train without {' and '.join(training_only)}. To export the trained "
                    f"weights for inference, build a model without "
                    f"{'them' if len(training_only) > 1 else 'it'} from the same parameters: "
                    f"type(model).from_params(model.params, output=model.output, ...)")
    raise ValueError(message)


def to_torch_state(arch: Architecture, arrays: Mapping[str, Any], *, rnn_prefix: str = "rnn.",
                   output_prefix: str = "fc.") -> dict[str, np.ndarray]:
    """``arrays`` keyed like ``params`` (the parameters, or their gradients) under torch's
    names, as copies. A merged bias ``bh`` goes to ``bias_ih`` and ``bias_hh`` is zero (GRU: but
    its n-part, ``bhn``), so a torch-side comparison of gradients reads ``bias_ih`` (and GRU's
    n-part of ``bias_hh``). Keys that are not parameters (a gradient dict's ``h0``, ``c0`` and
    ``x``) are left out. A normalized or regularized recurrence is refused
    (``check_exportable``)."""
    check_exportable(arch, "torch.nn.RNN/LSTM/GRU")
    names = torch_names(arch, rnn_prefix=rnn_prefix, output_prefix=output_prefix)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise KeyError(f"arrays: missing {missing}")
    state: dict[str, np.ndarray] = {}
    for name, keys in names.items():
        if keys[0] in state:
            continue  # GRU's bhn, written with its bh
        value = np.array(arrays[name], copy=True)
        state[keys[0]] = value
        if len(keys) == 2:
            # bias_hh: zero, but for GRU's n-part, bhn
            hh = state[keys[1]] = np.zeros_like(value)
            if arch.cell == "gru":
                H = arch.hidden_size
                hh[2 * H:] = arrays[name[:2] + "n" + name[2:]]
    return state


# ---------------------------------------------------------------------------------------------
# Keras 3 (as plain arrays: keras is not needed)
# ---------------------------------------------------------------------------------------------

# where each of cyrnn's (PyTorch's) gate blocks sits in Keras's kernels: LSTM i, f, c, o is
# PyTorch's i, f, g, o; GRU z, r, h against PyTorch's r, z, n
_KERAS_GATES = {"elman": (0,), "lstm": (0, 1, 2, 3), "gru": (1, 0, 2)}


def params_from_keras(layers: Any, dense: Any = None, *, cell: str = "elman") -> dict[str, np.ndarray]:
    """cyrnn ``params`` from Keras 3 weights: ``layers`` holds, per stacked layer, the arrays of
    ``SimpleRNN`` / ``LSTM`` / ``GRU(reset_after=True)`` ``.get_weights()`` (``kernel (in, G)``,
    ``recurrent_kernel (H, G)``, ``bias``), or the six of a ``Bidirectional`` wrapper (forward
    layer, then backward); ``dense`` the optional ``Dense`` head's ``[kernel (D*H, O), bias]``.

    Keras keeps the LSTM gates as ``i, f, c, o`` (PyTorch's ``i, f, g, o``) and the GRU gates as
    ``z, r, h`` with a bias ``(2, 3H)`` (input, recurrent); a GRU with ``reset_after=False``
    (bias ``(3H,)``) resets before the product, which neither cyrnn nor PyTorch computes, and is
    refused.
    """
    gates = _KERAS_GATES[cells.get(cell).name]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError("layers: expected a list with the weights of each layer")
    if all(isinstance(a, np.ndarray) for a in layers) and len(layers) in (3, 6):
        layers = [layers]  # the weights of one layer
    widths = {len(w) for w in layers}
    if widths - {3, 6} or len(widths) != 1:
        raise ValueError(f"layers: expected 3 arrays per layer (6 for a Bidirectional one), got "
                         f"{[len(w) for w in layers]}")
    D = 2 if widths == {6} else 1
    params: dict[str, np.ndarray] = {}
    arch = None
    for layer, arrays in enumerate(layers):
        for d in range(D):
            kernel, recurrent, bias = (np.asarray(a, dtype=np.float64) for a in arrays[3 * d:3 * d + 3])
            where = f"layers[{layer}]" + ("[backward]" if d else "")
            if recurrent.ndim != 2 or kernel.ndim != 2:
                raise ValueError(f"{where}: expected 2-D kernel and recurrent_kernel, got shapes "
                                 f"{kernel.shape} and {recurrent.shape}")
            H = recurrent.shape[0]
            G = len(gates) * H
            if recurrent.shape[0] == len(gates) * recurrent.shape[1] != recurrent.shape[1]:
                raise ValueError(f"{where}: recurrent_kernel expected shape (hidden_size, "
                                 f"{len(gates)} * hidden_size), got {recurrent.shape}: "
                                 f"transposed? (the gates side by side in columns)")
            if kernel.shape[1] != G:
                rows = "inputs" if kernel.shape[0] == G else kernel.shape[0]
                raise ValueError(f"{where}: kernel expected shape ({rows}, {G}), got "
                                 f"{kernel.shape} (the {len(gates)} gates of {H} units side by "
                                 f"side in columns)")
            if arch is None:
                arch = Architecture(kernel.shape[0], H, None, len(layers), D, cell)
            n_in = arch.layer_input_size(layer)
            for name, a, shape in (("kernel", kernel, (n_in, G)), ("recurrent_kernel", recurrent, (H, G))):
                if a.shape != shape:
                    raise ValueError(f"{where}: {name} expected shape {shape}, got {a.shape}")
            if cell == "gru":
                if bias.shape == (G,):
                    raise ValueError(f"{where}: a GRU with reset_after=False (bias of shape {bias.shape}) "
                                     "resets before the recurrent product, which PyTorch's and "
                                     "cyrnn's GRU cannot represent; use reset_after=True")
                if bias.shape != (2, G):
                    raise ValueError(f"{where}: bias expected shape {(2, G)}, got {bias.shape}")
            elif bias.shape != (G,):
                raise ValueError(f"{where}: bias expected shape {(G,)}, got {bias.shape}")

            def blocks(a):  # Keras's gate blocks along the last axis, in PyTorch's order
                return np.concatenate([a[..., g * H:(g + 1) * H] for g in gates], axis=-1)

            names = arch.cell_names(layer * D + d)
            params[names[0]] = blocks(kernel).T.copy()
            params[names[1]] = blocks(recurrent).T.copy()
            if cell == "gru":
                b_in, b_rec = blocks(bias[0]), blocks(bias[1])
                bh = b_in + b_rec
                bh[2 * H:] = b_in[2 * H:]
                params[names[2]], params[names[3]] = bh, b_rec[2 * H:].copy()
            else:
                params[names[2]] = blocks(bias).copy()
    if dense is not None:
        if not isinstance(dense, (list, tuple)) or len(dense) != 2:
            raise ValueError("dense: expected [kernel, bias] of a Dense layer")
        kernel, bias = (np.asarray(a, dtype=np.float64) for a in dense)
        if kernel.ndim != 2:
            raise ValueError(f"dense: kernel expected 2 dimensions, got shape {kernel.shape}")
        params["Why"], params["by"] = kernel.T.copy(), bias
    return params


def keras_weights(arch: Architecture, params: Mapping[str, Any]) -> tuple[list, Optional[list]]:
    """``(layers, dense)``: the inverse of ``params_from_keras``, as lists of new arrays
    (``Bidirectional`` layers' six arrays for a bidirectional model; GRU with
    ``reset_after=True``). A normalized or regularized recurrence is refused
    (``check_exportable``)."""
    check_exportable(arch, "Keras SimpleRNN/LSTM/GRU")
    gates = _KERAS_GATES[arch.cell]
    H = arch.hidden_size
    inverse = np.argsort(gates)

    def blocks(a):  # PyTorch's gate blocks along the last axis, in Keras's order
        return np.concatenate([a[..., g * H:(g + 1) * H] for g in inverse], axis=-1)

    layers = []
    for layer in range(arch.num_layers):
        arrays: list = []
        for d in range(arch.num_directions):
            names = arch.cell_names(layer * arch.num_directions + d)
            Wxh, Whh, bh = (np.asarray(params[n]) for n in names[:3])
            arrays += [blocks(Wxh.T).copy(), blocks(Whh.T).copy()]
            if arch.cell == "gru":
                b_in, b_rec = bh.copy(), np.zeros_like(bh)
                b_rec[2 * H:] = params[names[3]]
                arrays.append(np.stack([blocks(b_in), blocks(b_rec)]))
            else:
                arrays.append(blocks(bh).copy())
        layers.append(arrays)
    dense = None
    if arch.output_size is not None:
        dense = [np.asarray(params["Why"]).T.copy(), np.array(params["by"], copy=True)]
    return layers, dense
