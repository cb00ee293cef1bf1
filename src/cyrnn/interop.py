"""Weight exchange with PyTorch: the names and layout of ``torch.nn.RNN`` (+ ``nn.Linear``)
state dicts, as plain NumPy arrays (torch is not needed).

PyTorch's ``nn.RNN`` keeps, per layer ``l`` and direction, ``weight_ih_l{l}[_reverse]`` (H, in),
``weight_hh_l{l}[_reverse]`` (H, H) and the two biases ``bias_ih``/``bias_hh`` (H,), which it
adds; cyrnn keeps the same matrices in the same orientation and one bias, their sum. The
mapping is by name only (``cyrnn.layers`` names the parameters), so it serves any dict keyed like
``params``, gradients included. Used by ``RNN.from_torch`` and ``RNN.to_torch_state``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from .layers import Architecture

# torch's key of one layer-direction's parameter: weight_ih_l0, bias_hh_l2_reverse, ...
_TORCH_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_CELL_NAMES = {"weight_ih": "Wxh", "weight_hh": "Whh"}


def params_from_torch(state_dict: Mapping[str, npt.ArrayLike], *,
                      output_prefix: Optional[str] = None) -> dict[str, np.ndarray]:
    """cyrnn ``params`` (float64 copies) from a ``torch.nn.RNN`` (+ ``nn.Linear``) state dict.

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
        cell = found.setdefault((layer, int(reverse)), {})
        if kind in cell:
            raise ValueError(f"state_dict: several keys for {match.group(0)!r}")
        cell[kind] = arrays.pop(key)
    if not found:
        raise KeyError("state_dict: no key ending in 'weight_ih_l0'")
    if len(prefixes) > 1:
        raise ValueError(f"state_dict: recurrent weights under several prefixes {sorted(prefixes)}")
    num_layers = max(layer for layer, _ in found) + 1
    num_directions = 2 if any(d for _, d in found) else 1
    for layer in range(num_layers):
        for d in range(num_directions):
            name = f"l{layer}" + ("_reverse" if d else "")
            cell = found.get((layer, d), {})
            for kind in ("weight_ih", "weight_hh"):
                if kind not in cell:
                    what = "direction" if d and any(k[0] == layer for k in found) else "layer"
                    raise KeyError(f"state_dict: missing {kind}_{name} (a {what} of a "
                                   f"{num_layers}-layer, {num_directions}-direction RNN)")
    Wxh = found[(0, 0)]["weight_ih"]
    if Wxh.ndim != 2:
        raise ValueError(f"weight_ih_l0: expected 2 dimensions, got shape {Wxh.shape}")
    H = Wxh.shape[0]
    arch = Architecture(Wxh.shape[1], H, None, num_layers, num_directions)
    params: dict[str, np.ndarray] = {}
    for j, layer, d in arch.layer_directions():
        cell = found[(layer, d)]
        names = arch.cell_names(j)
        tail = f"_l{layer}" + ("_reverse" if d else "")
        for kind, shape in (("weight_ih", (H, arch.layer_input_size(layer))), ("weight_hh", (H, H))):
            if cell[kind].shape != shape:
                raise ValueError(f"{kind}{tail}: expected shape {shape}, got {cell[kind].shape}")
            params[names[0 if kind == "weight_ih" else 1]] = cell[kind]
        bias = np.zeros(H)
        for kind in ("bias_ih", "bias_hh"):
            if kind in cell:
                if cell[kind].shape != (H,):
                    raise ValueError(f"{kind}{tail}: expected shape ({H},), got {cell[kind].shape}")
                bias = bias + cell[kind]
        params[names[2]] = bias

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
    every other name to one key."""
    names: dict[str, tuple[str, ...]] = {}
    for j, layer, d in arch.layer_directions():
        tail = f"_l{layer}" + ("_reverse" if d else "")
        Wxh, Whh, bh = arch.cell_names(j)
        names[Wxh] = (f"{rnn_prefix}weight_ih{tail}",)
        names[Whh] = (f"{rnn_prefix}weight_hh{tail}",)
        names[bh] = (f"{rnn_prefix}bias_ih{tail}", f"{rnn_prefix}bias_hh{tail}")
    if arch.output_size is not None:
        names["Why"] = (output_prefix + "weight",)
        names["by"] = (output_prefix + "bias",)
    return names


def to_torch_state(arch: Architecture, arrays: Mapping[str, Any], *, rnn_prefix: str = "rnn.",
                   output_prefix: str = "fc.") -> dict[str, np.ndarray]:
    """``arrays`` keyed like ``params`` (the parameters, or their gradients) under torch's
    names, as copies. A merged bias ``bh`` goes to ``bias_ih`` and ``bias_hh`` is zero, so a
    torch-side comparison of gradients reads ``bias_ih``. Keys that are not parameters (a
    gradient dict's ``h0`` and ``x``) are left out."""
    names = torch_names(arch, rnn_prefix=rnn_prefix, output_prefix=output_prefix)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise KeyError(f"arrays: missing {missing}")
    state: dict[str, np.ndarray] = {}
    for name, keys in names.items():
        value = np.array(arrays[name], copy=True)
        state[keys[0]] = value
        if len(keys) == 2:
            state[keys[1]] = np.zeros_like(value)
    return state
