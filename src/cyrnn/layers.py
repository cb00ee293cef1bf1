"""The description of a recurrent model: its sizes, layers and directions, and the names and
shapes of its parameters.

One ``Architecture`` drives everything that depends on the model's shape: the parameter layout
(here), the Python composition of the forward pass and BPTT (``cyrnn.stack``), the compiled
whole-stack step, the file format and the weight exchange with PyTorch. A *layer* runs one cell
over time in one direction; a *stack* feeds layer ``l``'s output states to layer ``l + 1``
(both directions' states side by side when bidirectional); an optional linear output layer reads
the last layer's states.

Parameter names: the first layer's forward direction keeps the names of a single-layer model
(``Wxh``, ``Whh``, ``bh``); layer ``l > 0`` adds ``_l{l}`` and the reverse direction
``_reverse``, as PyTorch's ``weight_ih_l1_reverse``: ``Wxh_l1_reverse``. The output layer is
``Why (O, D*H)``, ``by (O,)``.

A normalized recurrence (``norm="layer"`` or ``"batch"``, see ``cyrnn.norms``) adds per
layer-direction the gains ``gx (G,)`` of the input term and ``gh (G,)`` of the recurrent term
and, for the LSTM, the gain ``gc (H,)`` and bias ``bc (H,)`` of the cell state's normalization,
with the same suffixes (``gx_l1_reverse``), after that layer-direction's other parameters.
"""
from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import numpy.typing as npt

from . import cells
from .cells import Cell
from .init import init_gated, init_head, init_params

CELL_PARAMS = ("Wxh", "Whh", "bh")
NORM_PARAMS = ("gx", "gh")  # the LSTM adds NORM_CELL_PARAMS
NORM_CELL_PARAMS = ("gc", "bc")
NORMS = ("layer", "batch")
HEAD_PARAMS = ("Why", "by")


@dataclass(frozen=True)
class Architecture:
    """Sizes, depth and directions of a model (checked by the model before it builds one).

    Layer-directions are numbered ``j = l * num_directions + d`` (PyTorch's order of ``h0``):
    ``d = 0`` runs forward in time, ``d = 1`` backward.
    """

    input_size: int
    hidden_size: int
    output_size: Optional[int] = None
    num_layers: int = 1
    num_directions: int = 1
    cell: str = "elman"
    norm: Optional[str] = None
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0

    @property
    def plain(self) -> bool:
        """No normalization and no regularization inside the recurrence: the plain cell."""
        return self.norm is None and not (self.recurrent_dropout or self.zoneout
                                          or self.weight_drop)

    @property
    def cell_type(self) -> Cell:
        """The cell (``cyrnn.cells``): its gates, states and extra parameters."""
        return cells.get(self.cell)

    @property
    def gate_size(self) -> int:
        """Rows of ``Wxh``, ``Whh`` and ``bh``: ``G`` = H (Elman), 4H (LSTM) or 3H (GRU)."""
        return self.cell_type.gates * self.hidden_size

    @property
    def num_states(self) -> int:
        """Number of layer-directions, each with its own state: ``num_layers * num_directions``."""
        return self.num_layers * self.num_directions

    @property
    def top_size(self) -> int:
        """Width of the last layer's output: ``num_directions * hidden_size``."""
        return self.num_directions * self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        """Features entering layer ``layer``: the inputs, or the layer below's output states."""
        return self.input_size if layer == 0 else self.top_size

    @staticmethod
    def suffix(layer: int, direction: int) -> str:
        """The name suffix of a layer-direction's parameters: ``""``, ``"_l1"``, ``"_reverse"``,
        ``"_l1_reverse"``, ..."""
        return ("" if layer == 0 else f"_l{layer}") + ("_reverse" if direction else "")

    def layer_directions(self) -> list[tuple[int, int, int]]:
        """``(j, layer, direction)`` for every layer-direction, in ``h0`` order."""
        D = self.num_directions
        return [(l * D + d, l, d) for l in range(self.num_layers) for d in range(D)]

    def cell_names(self, j: int) -> tuple[str, ...]:
        """Names of layer-direction ``j``'s ``(Wxh, Whh, bh)`` and the cell's extra parameters
        (GRU: ``bhn``)."""
        s = self.suffix(j // self.num_directions, j % self.num_directions)
        return tuple(name + s for name in CELL_PARAMS + self.cell_type.extra_params)

    def norm_names(self, j: int) -> tuple[str, ...]:
        """Names of layer-direction ``j``'s normalization parameters: ``(gx, gh)`` and, for the
        LSTM, ``(gc, bc)``; empty without a normalization."""
        if self.norm is None:
            return ()
        s = self.suffix(j // self.num_directions, j % self.num_directions)
        names = NORM_PARAMS + (NORM_CELL_PARAMS if self.cell == "lstm" else ())
        return tuple(name + s for name in names)

    def param_shapes(self) -> Mapping[str, tuple[int, ...]]:
        """Name and shape of every parameter, in ``params`` order: each layer-direction's
        ``Wxh (H, in), Whh (H, H), bh (H,)``, then the output layer ``Why (O, D*H), by (O,)``
        (a read-only mapping)."""
        return types.MappingProxyType(self._shapes)

    @functools.cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        # worked out once per architecture (every call of the model checks its parameters)
        H, G = self.hidden_size, self.gate_size
        extra = self.cell_type.extra_shapes(H)
        shapes: dict[str, tuple[int, ...]] = {}
        for j, layer, _ in self.layer_directions():
            Wxh, Whh, bh, *more = self.cell_names(j)
            shapes[Wxh] = (G, self.layer_input_size(layer))
            shapes[Whh] = (G, H)
            shapes[bh] = (G,)
            for name, shape in zip(more, extra.values()):
                shapes[name] = shape
            for name in self.norm_names(j):
                shapes[name] = (G,) if name.startswith(NORM_PARAMS) else (H,)
        if self.output_size is not None:
            shapes["Why"] = (self.output_size, self.top_size)
            shapes["by"] = (self.output_size,)
        return shapes

    def norm_init(self, j: int) -> dict[str, npt.NDArray[np.float64]]:
        """Layer-direction ``j``'s normalization parameters as initialised (no random draw):
        gains 1 for layer normalization (Ba et al.), 0.1 for batch normalization (Cooijmans et
        al.), the cell-state bias ``bc`` 0."""
        H, G = self.hidden_size, self.gate_size
        gain = 1.0 if self.norm == "layer" else 0.1
        sizes = {"gx": G, "gh": G, "gc": H, "bc": H}
        return {name: np.full(sizes[name[:2]], 0.0 if name.startswith("bc") else gain)
                for name in self.norm_names(j)}

    def init_params(self, scheme: str, rng: np.random.Generator) -> dict[str, npt.NDArray[np.float64]]:
        """Freshly drawn float64 parameters (``cyrnn.init.init_params`` per layer-direction).

        A single-layer unidirectional model draws exactly what ``init_params(scheme, I, H, O)``
        draws, so seeds keep their meaning from cyrnn 0.1; a deeper or bidirectional model
        draws each layer-direction in ``h0`` order, then the output layer (fan-in ``D*H``).
        """
        I, H, O = self.input_size, self.hidden_size, self.output_size
        if self.num_states == 1 and self.cell == "elman":
            params = init_params(scheme, I, H, O, rng)  # type: ignore[arg-type]
            if self.norm is None:
                return params
            head = {name: params.pop(name) for name in HEAD_PARAMS if name in params}
            return params | self.norm_init(0) | head
        params: dict[str, npt.NDArray[np.float64]] = {}
        for j, layer, _ in self.layer_directions():
            n_in = self.layer_input_size(layer)
            if self.cell == "elman":
                drawn = init_params(scheme, n_in, H, None, rng)  # type: ignore[arg-type]
            else:
                drawn = init_gated(scheme, self.cell, n_in, H, rng)  # type: ignore[arg-type]
            for name, key in zip(self.cell_names(j), CELL_PARAMS + self.cell_type.extra_params):
                params[name] = drawn[key]
            params.update(self.norm_init(j))
        if O is not None:
            params["Why"], params["by"] = init_head(scheme, self.top_size, O, rng)  # type: ignore[arg-type]
        return params
