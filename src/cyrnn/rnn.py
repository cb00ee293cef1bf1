"""The recurrent model: parameters, validation, and one call per batch into the kernels.

The model owns its parameters (``params``), checks and casts every input once, and then hands the
computation to one of two paths that give the same results:

- the fused kernels of its backend (``_elman_step``/``_stack_step`` for a training step,
  ``elman_forward``/``_stack_outputs`` for a forward pass), a whole step in one call, used when
  every step carries a loss on a plain output (cross-entropy on logits or mse) and no sequence
  is padded, plain or with layer normalization and the regularizers (``cyrnn.norms``);
- the Python composition ``cyrnn.stack`` over the backend's layer kernels, for every other case
  (``lengths``, a loss on the last step only, bce, a sigmoid output, no output layer, batch
  normalization).

Its shape (sizes, layers, directions) is one ``cyrnn.layers.Architecture``.
"""
from __future__ import annotations

import inspect
import re
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from . import _checks, cells, interop, kernels, losses, norms, stack, truncation
from ._typing import (ArrayDict, BackendName, FloatArray, InitScheme, IntArray, LossName, NormName,
                      Nonlinearity, OutputName, Reduction, Seed, StrPath, TargetSteps)
from .data import Vocabulary
from .init import INITS
from .layers import NORMS, Architecture
from .optim import Optimizer
from .truncation import Truncate

_RNNType = TypeVar("_RNNType", bound="RNN")

TARGET_STEPS = ("all", "last")
# the layer of a parameter name: Wxh_l2, bh_l1_reverse
_LAYER_SUFFIX = re.compile(r"_l(\d+)(?:_reverse)?$")


def _no_norm_from(framework: str, kwargs: Mapping[str, Any]) -> None:
    """``from_torch`` and ``from_keras`` build the model their layers hold: those have no
    normalization gains, and a normalization would change what the weights compute."""
    norm = kwargs.get("norm")
    if norm is not None:
        raise ValueError(f"norm={norm!r}: {framework}'s recurrent layers have no normalization; "
                         "import the weights without norm (the regularizers recurrent_dropout, "
                         "zoneout and weight_drop can be set), or build a normalized model and "
                         "copy the weights into its params")


class RNN:
    """Elman RNN, one layer or a stack, with an optional linear output layer, trained by BPTT.

    Layer ``l`` (direction ``d``) runs ``h_t = f(x_t Wxh^T + h_{t-1} Whh^T + bh)`` over its
    input sequence: the inputs for the first layer, the states of the layer below (both
    directions side by side) for the others. The output layer reads the last layer's states:
    ``y_t = g(h_t Why^T + by)``.

    Parameters
    ----------
    input_size : int
        Features per step ``I``, or the vocabulary size ``V`` when inputs are token ids.
    hidden_size : int
        Hidden units ``H`` of every layer and direction.
    output_size : int or None
        Outputs ``O``; ``None`` means no output layer (the last layer's states are the output).
    num_layers : int >= 1
        Stacked layers ``L``: layer ``l``'s output sequence is layer ``l + 1``'s input.
    bidirectional : bool
        Every layer also runs backwards in time (``D = 2``); its states are concatenated with
        the forward direction's, ``(T, B, 2H)``, as ``torch.nn.RNN``. With ``lengths``, the
        reverse direction starts at each sequence's own last valid step.
    dropout : float in [0, 1)
        Dropout on the outputs of every layer but the last, in training (``loss_and_grad``
        and ``fit``) only, as ``torch.nn.RNN(dropout=p)``: each output is zeroed with
        probability ``p`` and the others scaled by ``1 / (1 - p)``. The masks come from
        ``model.generator`` (seeded by ``seed``) or from ``loss_and_grad(dropout_seed=...)``.
    nonlinearity : {"tanh", "relu", "sigmoid", "leaky_relu", "identity"}
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs.
    output : {"linear", "softmax", "sigmoid"}
        Output function ``g``; it also picks the default loss (mse, cross_entropy, bce).
    init : {"uniform", "xavier", "orthogonal", "identity", "normal"}
        Initialisation scheme, see ``cyrnn.init.init_params``.
    dtype : {"float32", "float64"}
    seed : int or None
        Seed of the initialisation and of the dropout masks.
    backend : {"cython", "numpy"} or None
        Kernel backend; ``None`` takes the process default (``cyrnn.backend_info()``).
    batch_first : bool
        Inputs and outputs are ``(B, T, ...)`` instead of ``(T, B, ...)``.
    threads : int or None
        Threads a call may use; ``None`` follows ``cyrnn.set_num_threads`` or the automatic
        choice (the CPUs available). Only the speed depends on it, never the results: see
        ``cyrnn.get_num_threads``. Settable later as ``model.threads``.
    norm : {None, "layer", "batch"}
        Normalize the input term and the recurrent term of every layer (and an LSTM's cell
        state) at every step, each with its own gain: layer normalization (Ba et al. 2016) or
        recurrent batch normalization with per-step statistics (Cooijmans et al. 2016). See
        ``cyrnn.norms`` for the equations; the gains are parameters (``gx``, ``gh``, ``gc``,
        ``bc``), batch normalization's running statistics are ``model.running``.
    recurrent_dropout : float in [0, 1)
        Variational dropout of ``h_{t-1}`` in the recurrent product (Gal & Ghahramani 2016): one
        mask per sequence, reused at every step; training only.
    zoneout : float in [0, 1)
        Each unit of the state keeps its previous value with this probability at each step in
        training (Krueger et al. 2016); the expectation at inference.
    weight_drop : float in [0, 1)
        DropConnect on ``Whh`` (Merity et al. 2017): one mask per call; training only.

    Attributes
    ----------
    params : dict of ndarray
        Per layer-direction ``Wxh (H, I or D*H), Whh (H, H), bh (H,)`` named as in
        ``cyrnn.layers`` (``Wxh``, ``Wxh_reverse``, ``Wxh_l1``, ...), then, with an output
        layer, ``Why (O, D*H), by (O,)``, in the model dtype. Update them in place (optimizers
        do).
    generator : numpy.random.Generator
        Source of the dropout masks (and of the regularizers' masks).
    running : dict of ndarray
        With ``norm="batch"``: the running statistics per layer-direction and step
        (``mean_x``, ``var_x`` (S, G), ``mean_h``, ``var_h`` (S, G), the LSTM's ``mean_c``,
        ``var_c`` (S, H), suffixed as the parameters), S the longest sequence trained on;
        updated by every training call, saved with the model, never seen by optimizers.

    Notes
    -----
    States (``h0``, ``h_last``, ``grads["h0"]``) follow ``torch.nn.RNN``: ``(L*D, B, H)``
    (unbatched ``(L*D, H)``). A single-layer unidirectional model also takes ``(B, H)``
    (``(H,)``) and uses that layout by default; states come back in the layout they went in.
    """

    _CELL = "elman"  # the cell every layer runs (cyrnn.cells)

    params: ArrayDict
    vocab: Optional[Vocabulary]
    input_size: int
    hidden_size: int
    output_size: Optional[int]
    num_layers: int
    bidirectional: bool
    dropout: float
    nonlinearity: Nonlinearity
    negative_slope: float
    output: OutputName
    init: InitScheme
    dtype: np.dtype[Any]
    batch_first: bool
    backend: BackendName
    threads: Optional[int]
    generator: np.random.Generator

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: Optional[int] = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: Nonlinearity = "tanh",
        negative_slope: float = 0.01,
        output: OutputName = "linear",
        init: InitScheme = "uniform",
        dtype: npt.DTypeLike = "float32",
        seed: Seed = None,
        backend: Optional[BackendName] = None,
        batch_first: bool = False,
        threads: Optional[int] = None,
        norm: Optional[NormName] = None,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        self._configure(input_size, hidden_size, output_size, num_layers=num_layers,
                        bidirectional=bidirectional, dropout=dropout, nonlinearity=nonlinearity,
                        negative_slope=negative_slope, output=output, init=init, dtype=dtype,
                        backend=backend, batch_first=batch_first, threads=threads, norm=norm,
                        recurrent_dropout=recurrent_dropout, zoneout=zoneout,
                        weight_drop=weight_drop)
        rng = np.random.default_rng(seed)
        drawn = self.architecture.init_params(init, rng)
        self.params = {name: np.ascontiguousarray(p, dtype=self.dtype) for name, p in drawn.items()}
        # the dropout masks: a stream of its own, so that dropout leaves the initialisation of a
        # seed unchanged
        self.generator = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])  # type: ignore[attr-defined]
        self.running = norms.init_running(self.architecture, self.dtype)
        self.vocab = None  # a cyrnn.data.Vocabulary for character models: text in and out

    def _configure(self, input_size, hidden_size, output_size, *, num_layers=1,
                   bidirectional=False, dropout=0.0, nonlinearity="tanh", negative_slope=0.01,
                   output="linear", init="uniform", dtype="float32", backend=None,
                   batch_first=False, threads=None, norm=None, recurrent_dropout=0.0,
                   zoneout=0.0, weight_drop=0.0):
        """Check and set every attribute but the parameters and the generator."""
        self.threads = _checks.optional_positive_int("threads", threads)
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.output_size = (
            None if output_size is None else _checks.positive_int("output_size", output_size)
        )
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional: expected True or False, got {bidirectional!r}")
        self.bidirectional = bool(bidirectional)
        self.dropout = _checks.probability("dropout", dropout)
        if self.dropout and self.num_layers == 1:
            warnings.warn("dropout acts between stacked layers; with num_layers=1 it does nothing",
                          UserWarning, stacklevel=3)
        _checks.nonlinearity_code(nonlinearity, negative_slope)
        self.nonlinearity = nonlinearity
        self.negative_slope = float(negative_slope)
        if output not in losses.OUTPUTS:
            raise ValueError(f"output: expected one of {', '.join(losses.OUTPUTS)}, got {output!r}")
        if self.output_size is None and output != "linear":
            raise ValueError(f"output: {output!r} needs an output layer; pass output_size")
        self.output = output
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.dtype = _float_dtype(dtype)
        self.batch_first = bool(batch_first)
        self._kernels = kernels.get_backend(backend)
        self.backend = self._kernels.name
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm: expected None, {', '.join(map(repr, NORMS))}, got {norm!r}")
        self.norm = norm
        self.recurrent_dropout = _checks.probability("recurrent_dropout", recurrent_dropout)
        self.zoneout = _checks.probability("zoneout", zoneout)
        self.weight_drop = _checks.probability("weight_drop", weight_drop)
        self._architecture = Architecture(self.input_size, self.hidden_size, self.output_size,
                                          self.num_layers, 2 if self.bidirectional else 1,
                                          self._CELL, norm, self.recurrent_dropout,
                                          self.zoneout, self.weight_drop)

    @property
    def architecture(self) -> Architecture:
        """Sizes, layers and directions (``cyrnn.layers.Architecture``): the parameter layout."""
        return self._architecture

    @property
    def kernels(self) -> Any:
        """The backend's kernels (``cyrnn.kernels.get_backend(model.backend)``)."""
        return self._kernels

    def config(self) -> dict[str, Any]:
        """The constructor arguments of this model but ``seed``: ``RNN(**model.config())``
        builds a model of the same shape and options (with fresh parameters)."""
        return {name: getattr(self, name) for name in _config_names(type(self))} | {
            "dtype": self.dtype.name}

    @classmethod
    def from_params(cls: type[_RNNType], params: Mapping[str, npt.ArrayLike],
                    **kwargs: Any) -> _RNNType:
        """A model with the given parameters and no random initialisation.

        Parameters
        ----------
        params : mapping of str to array-like
            Every parameter, named as ``model.params`` (``Wxh (H, I)``, ``Whh (H, H)``,
            ``bh (H,)``, ``Wxh_l1``, ``Wxh_reverse``, ..., and optionally ``Why``, ``by``); the
            sizes, the number of layers and the directions come from these names and arrays,
            which are copied (cast to ``dtype``) after every shape and value is checked.
        **kwargs
            The other ``RNN`` arguments (``nonlinearity``, ``output``, ``dtype``, ``dropout``,
            ...), except the sizes, ``num_layers``, ``bidirectional`` and ``seed``.
        """
        for name in ("input_size", "hidden_size", "output_size", "num_layers", "bidirectional",
                     "seed"):
            if name in kwargs:
                raise TypeError(f"from_params: {name} comes from the arrays, not an argument")
        arrays = {str(name): np.asarray(value) for name, value in params.items()}
        for name in ("Wxh", "Why"):
            if name in arrays and arrays[name].ndim != 2:
                raise ValueError(f"{name}: expected 2 dimensions, got shape {arrays[name].shape}")
        if "Wxh" not in arrays:
            raise KeyError("params: missing ['Wxh']")
        if "Whh" not in arrays:
            raise KeyError("params: missing ['Whh']")
        if arrays["Whh"].ndim != 2:
            raise ValueError(f"Whh: expected 2 dimensions, got shape {arrays['Whh'].shape}")
        H, I = arrays["Whh"].shape[1], arrays["Wxh"].shape[1]
        O = arrays["Why"].shape[0] if "Why" in arrays else None
        # the deepest layer any parameter names: a missing one in between is then named missing
        num_layers = 1 + max((int(m.group(1)) for m in map(_LAYER_SUFFIX.search, arrays) if m),
                             default=0)
        # the keyword arguments of __init__ but the seed and the shape, with their defaults
        options = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                   if p.kind is p.KEYWORD_ONLY and name not in ("seed", "num_layers", "bidirectional")}
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError(f"from_params: unexpected arguments {sorted(unknown)}")
        options.update(kwargs)
        model = cls.__new__(cls)
        model._configure(I, H, O, num_layers=num_layers, bidirectional="Wxh_reverse" in arrays,
                         **options)
        shapes = model.architecture.param_shapes()
        model.params = {name: np.zeros(shape, dtype=model.dtype) for name, shape in shapes.items()}
        model.generator = np.random.default_rng()
        model.running = norms.init_running(model.architecture, model.dtype)
        model.vocab = None
        model.set_params(arrays)
        return model

    def __repr__(self) -> str:
        shape = ""
        if self.num_layers > 1:
            shape += f", num_layers={self.num_layers}"
        if self.bidirectional:
            shape += ", bidirectional=True"
        if self.dropout:
            shape += f", dropout={self.dropout}"
        if self._CELL == "elman":
            shape += f", nonlinearity={self.nonlinearity!r}"
        if self.norm is not None:
            shape += f", norm={self.norm!r}"
        for name in ("recurrent_dropout", "zoneout", "weight_drop"):
            if getattr(self, name):
                shape += f", {name}={getattr(self, name)}"
        return (
            f"{type(self).__name__}(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}{shape}, output={self.output!r}, "
            f"dtype={self.dtype.name!r}, backend={self.backend!r})"
        )

    # -----------------------------------------------------------------------------------------
    # public API
    # -----------------------------------------------------------------------------------------

    def forward(self, x: npt.ArrayLike, h0: Optional[npt.ArrayLike] = None,
                lengths: Optional[npt.ArrayLike] = None) -> tuple[FloatArray, FloatArray]:
        """Run the network over a batch of sequences (inference: no dropout).

        Parameters
        ----------
        x : ndarray
            Dense inputs ``(T, B, I)`` (float) or token ids ``(T, B)`` (integer, ``0 <= id < I``);
            unbatched ``(T, I)`` / ``(T,)``; ``(B, T, ...)`` with ``batch_first``.
        h0 : ndarray (L*D, B, H), optional
            Initial states (zeros by default); ``(L*D, H)`` unbatched. A single-layer
            unidirectional model also takes ``(B, H)`` / ``(H,)``.
        lengths : array of int (B,), optional
            Valid steps per sequence; later steps are padding (state frozen, outputs meaningless).

        Returns
        -------
        y : ndarray (T, B, O)
            ``g(z_t)`` for every step (the last layer's states ``(T, B, D*H)`` without an
            output layer).
        h_last : ndarray
            Every layer-direction's state after each sequence's last valid step (the reverse
            direction's after step 0), in the layout of ``h0``.
        """
        return self._forward_at(x, h0, lengths, 0)

    def _forward_at(self, x, h0, lengths, start):
        """``forward`` of inputs that start at step ``start`` of their sequences (for the
        per-step statistics of batch normalization: ``forecast`` goes on a step at a time)."""
        weights = self.weights()
        batch = self._inputs(x, h0, lengths)
        regime = self._inference_regime(weights, batch.T, batch.B, start)
        if (self.output_size is not None and batch.lengths is None
                and (regime is None or norms.fusable(regime))):
            # the common case in one kernel call (an LSTM's last states: the pair (h, c))
            y, h_last = self._fused_outputs(batch, weights, regime)
            h_last, c_last = h_last if isinstance(h_last, tuple) else (h_last, None)
        else:
            y, h_last, c_last = stack.outputs(self._kernels, self.architecture, weights,
                                              batch.inputs, batch.h0, self.output, batch.lengths,
                                              batch.c0, regime)
        return self._to_user_layout(y, batch), self._states_out(h_last, c_last, batch)

    def loss_and_grad(
        self,
        x: npt.ArrayLike,
        target: npt.ArrayLike,
        h0: Optional[npt.ArrayLike] = None,
        lengths: Optional[npt.ArrayLike] = None,
        loss: Optional[LossName] = None,
        reduction: Reduction = "mean",
        target_steps: TargetSteps = "all",
        truncate: Truncate = None,
        input_grad: bool = True,
        dropout_seed: Seed = None,
    ) -> tuple[float, ArrayDict, FloatArray]:
        """Loss of one batch and its gradient with respect to every parameter, by BPTT.

        Parameters
        ----------
        x, h0, lengths : as in ``forward``.
        target : ndarray
            With ``target_steps="all"``: class ids ``(T, B)`` for cross-entropy, values
            ``(T, B, O)`` for mse/bce (unbatched ``(T,)`` / ``(T, O)``; batch axis first with
            ``batch_first``). With ``"last"``: ``(B,)`` / ``(B, O)`` (unbatched ``()`` / ``(O,)``).
            Entries at padded steps are ignored.
        loss : {"cross_entropy", "mse", "bce"} or None
            Default from ``output``: softmax -> cross_entropy, linear -> mse, sigmoid -> bce.
        reduction : {"mean", "sum"}
            ``"mean"`` is PyTorch's default for the loss (over valid positions for cross-entropy,
            over valid elements for mse/bce); ``"sum"`` sums over them.
        target_steps : {"all", "last"}
            ``"last"``: the loss sits on each sequence's last valid step only (many-to-one).
        truncate : None, int, ``cyrnn.TBPTT`` or ``cyrnn.RandomizedTruncation``
            ``None``: full BPTT. ``k``: each output's error flows back at most ``k`` steps: the
            error of the output at step ``t`` reaches the pre-activations of steps
            ``t - k + 1 .. t``, and ``h0`` only when ``t <= k - 2`` (``h0`` stands for the state
            made by step -1 of an earlier chunk). So ``truncate >= T + 1`` is full BPTT, while
            ``truncate = T`` stops output ``T - 1``'s error short of ``h0``.
            ``TBPTT(k1, k2)``: Williams & Peng's truncation, blocks of ``k1`` from step 0;
            ``RandomizedTruncation(p)``: unbiased random truncation (a fresh draw per call).
        input_grad : bool
            Also return ``grads["x"]`` for dense inputs (for composing cyrnn with layers below
            it). Training alone does not need it: ``False`` saves one product per call.
        dropout_seed : int or numpy.random.Generator, optional
            Source of this call's dropout masks (a model with ``dropout > 0`` and several
            layers); ``None`` draws them from ``model.generator``. The same seed gives the same
            masks, on both backends.

        Returns
        -------
        loss : float
        grads : dict of ndarray
            Same keys and shapes as ``params``, plus ``h0`` (the shape of the ``h0`` passed)
            and, for dense inputs, ``x``.
        h_last : ndarray
            As in ``forward``.
        """
        result = self.backprop(x, target, h0, lengths, loss, reduction, target_steps, truncate,
                               input_grad=input_grad, dropout_seed=dropout_seed)
        return result.loss, result.grads, result.h_last

    def evaluate(self, x: npt.ArrayLike, target: npt.ArrayLike,
                 h0: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None,
                 loss: Optional[LossName] = None, reduction: Reduction = "mean",
                 target_steps: TargetSteps = "all") -> tuple[float, FloatArray]:
        """The loss of one batch without gradients (validation).

        Arguments as in ``loss_and_grad``. Returns ``(loss, h_last)``.
        """
        result = self._evaluate(x, target, h0, lengths, loss, reduction, target_steps,
                                need_grads=False)
        return result.loss, result.h_last

    def backprop(self, x: npt.ArrayLike, target: npt.ArrayLike,
                 h0: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None,
                 loss: Optional[LossName] = None, reduction: Reduction = "mean",
                 target_steps: TargetSteps = "all", truncate: Truncate = None, *,
                 input_grad: bool = True, dropout_seed: Seed = None) -> types.SimpleNamespace:
        """``loss_and_grad`` with everything it computes, as a namespace: ``loss``, ``grads``,
        ``h_last`` and ``grad_norms`` (T,), the per-step norms ``||dL/dh_t||`` over every
        layer-direction's state at step t (None with a look-back window, or for a
        bidirectional model with ``lengths``)."""
        return self._evaluate(x, target, h0, lengths, loss, reduction, target_steps, truncate,
                              input_grad=input_grad, dropout_seed=dropout_seed)

    def resolve_loss(self, loss: Optional[LossName] = None) -> LossName:
        """The loss a call with ``loss`` computes: the output's default for None (softmax ->
        cross_entropy, linear -> mse, sigmoid -> bce); an error for a loss that does not fit
        the output."""
        return self._loss_name(loss)

    def _evaluate(self, x, target, h0, lengths, loss, reduction, target_steps, truncate=None,
                  need_grads=True, input_grad=True, dropout_seed=None):
        """Forward, loss and (optionally) BPTT; a namespace with ``loss``, ``h_last``, ``grads``
        and ``grad_norms``."""
        loss = self._loss_name(loss)
        if reduction not in losses.REDUCTIONS:
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        if target_steps not in TARGET_STEPS:
            raise ValueError(f"target_steps: expected 'all' or 'last', got {target_steps!r}")
        weights = self.weights()
        batch = self._inputs(x, h0, lengths)
        window, carry = truncation.resolve(truncate, batch.T)
        t_idx, b_idx = _checks.loss_positions(batch, target_steps)
        width = self.output_size if self.output_size is not None else self.architecture.top_size
        target = _checks.loss_targets(target, loss, self.output, width, batch, target_steps,
                                      (t_idx, b_idx), self.dtype, self.batch_first)
        arch = self.architecture
        rng = self.generator if dropout_seed is None else np.random.default_rng(dropout_seed)
        masks = self._dropout_masks(batch.T, batch.B, rng) if need_grads else None
        regime = None
        if not arch.plain:
            if window is not None:
                raise ValueError(
                    "truncate: a look-back window (an int k, or TBPTT(k1, k2) with k2 != k1) is "
                    "not available with norm, recurrent_dropout, zoneout or weight_drop; use "
                    "full BPTT, TBPTT(k) or RandomizedTruncation")
            if need_grads and arch.norm == "batch" and batch.B < 2:
                raise ValueError("norm='batch': training needs at least 2 sequences per batch "
                                 f"(batch statistics), got {batch.B}")
            regime = norms.regime(arch, weights[0], batch.T, batch.B, self.dtype, need_grads,
                                  rng, self.running)

        if need_grads and self._fusable(loss, batch, t_idx, regime):
            result = self._fused(batch, weights, target, loss, reduction, window, carry,
                                 input_grad, masks, regime)
        else:
            result = stack.loss_and_grad(
                self._kernels, arch, weights, batch.inputs, batch.h0, target,
                loss=loss, output=self.output, reduction=reduction, lengths=batch.lengths,
                positions=(t_idx, b_idx), window=window, carry=carry, masks=masks,
                need_grads=need_grads, input_grad=input_grad, c0=batch.c0, regime=regime,
                running=self.running if need_grads else None)
            if need_grads:  # in params order (BPTT found them from the top layer down)
                grads = result.grads
                result.grads = {name: grads[name] for name in (*weights[0], "h0", "c0", "x")
                                if name in grads}
        # states and input gradients in the caller's layout
        c_last = getattr(result, "c_last", None)
        result.h_last = self._states_out(result.h_last, c_last, batch)
        if result.grads is not None:
            grads = result.grads
            grads["h0"] = self._state_out(grads["h0"], batch)
            if "c0" in grads:
                grads["c0"] = self._state_out(grads["c0"], batch)
            if "x" in grads:
                grads["x"] = self._to_user_layout(grads["x"], batch)
        return result

    def dropout_masks(self, steps: int, batch_size: int,
                      seed: Seed = None) -> Optional[FloatArray]:
        """The dropout multipliers (L-1, T, B, D*H) that a training call on ``batch_size``
        sequences of ``steps`` steps applies, or None (no dropout, or a single layer): each
        layer output but the last's zeroed with probability ``dropout``, the rest scaled by
        ``1 / (1 - dropout)``, drawn from ``seed`` or else from ``self.generator``."""
        rng = self.generator if seed is None else np.random.default_rng(seed)
        return self._dropout_masks(steps, batch_size, rng)

    def _dropout_masks(self, steps, batch_size, rng):
        arch, p = self.architecture, self.dropout
        if p == 0 or arch.num_layers == 1:
            return None
        keep = rng.random((arch.num_layers - 1, steps, batch_size, arch.top_size)) >= p
        return keep.astype(self.dtype) * self.dtype.type(1 / (1 - p))

    # -----------------------------------------------------------------------------------------
    # generation
    # -----------------------------------------------------------------------------------------

    @overload
    def sample(self, prime: str, n: int, temperature: float = ..., top_k: Optional[int] = ...,
               seed: Seed = ..., h0: Optional[npt.ArrayLike] = ...) -> str: ...

    @overload
    def sample(self, prime: Union[Sequence[int], IntArray], n: int, temperature: float = ...,
               top_k: Optional[int] = ..., seed: Seed = ...,
               h0: Optional[npt.ArrayLike] = ...) -> IntArray: ...

    def _inference_regime(self, weights, T, B, start=0):
        """The recurrence options of an inference call (``cyrnn.norms.regime``), or None where
        it runs the plain cell (no normalization, no zoneout: recurrent dropout and weight drop
        act in training only)."""
        arch = self.architecture
        if arch.norm is None and not arch.zoneout:
            return None
        return norms.regime(arch, weights[0], T, B, self.dtype, False, None, self.running,
                            start)

    def sample(self, prime: Union[str, Sequence[int], IntArray], n: int,
               temperature: float = 1.0, top_k: Optional[int] = None, seed: Seed = None,
               h0: Optional[npt.ArrayLike] = None) -> Union[str, IntArray]:
        """Generate ``n`` tokens after ``prime``, feeding each draw back in.

        The per-step loop (recurrence, output layer, softmax, draw) is one kernel call; the draws
        come from uniforms generated beforehand from ``seed``. The same seed gives the same text
        on the same backend and build; across backends (or SIMD builds) the probabilities agree
        only up to rounding, so the texts agree up to the rare draw that falls within rounding of
        the boundary between two tokens, after which they diverge.

        Parameters
        ----------
        prime : str or sequence of int
            Text (encoded with ``self.vocab``) or token ids to start from; at least one token.
        n : int >= 1
            Tokens to generate.
        temperature : float >= 0
            Softmax temperature; 0 is greedy decoding (``greedy``).
        top_k : int, optional
            Draw from the ``top_k`` most likely tokens only.
        seed : int or numpy.random.Generator, optional
        h0 : ndarray (L, H), optional
            States before the prime (zeros by default); ``(H,)`` for a single layer.

        Returns
        -------
        str or ndarray of int (n,)
            The continuation only (text when ``prime`` is text).
        """
        if self.output_size != self.input_size:
            raise ValueError(
                f"sample: needs output_size == input_size (tokens in and out), got "
                f"{self.output_size} and {self.input_size}"
            )
        if self.output == "sigmoid":
            raise ValueError("sample: needs output='softmax' or 'linear' (logits)")
        as_text = isinstance(prime, str)
        if as_text:
            if self.vocab is None:
                raise ValueError("prime: text needs model.vocab; pass token ids instead")
            ids = self.vocab.encode(prime)
        else:
            ids = np.asarray(prime)
            if ids.size == 0:
                raise ValueError("prime: expected at least one token")
            if ids.dtype.kind not in "iu" or ids.ndim != 1:
                raise TypeError(f"prime: expected text or a 1-D sequence of token ids, got {prime!r}")
        if ids.size == 0:
            raise ValueError("prime: expected at least one token")
        n = _checks.positive_int("n", n)
        if self.bidirectional:
            raise ValueError("sample: a bidirectional model reads each sequence backwards too, "
                             "which generation cannot; use a unidirectional model")
        weights = self.weights()
        batch = self._inputs(ids, h0, None)  # unbatched: ids (T,), h0 (L, H) or (H,)
        state = (batch.h0, batch.c0)  # (L, 1, H) each; c None but for LSTM
        if ids.size > 1:
            # the prime but its last token, on the same snapshot of the weights
            fwd = stack.forward(self._kernels, self.architecture, weights, batch.tokens[:-1],
                                state[0], c0=state[1],
                                regime=self._inference_regime(weights, ids.size - 1, 1))
            state = (fwd.h_last, fwd.c_last)
        uniforms = np.random.default_rng(seed).random(n)
        plain = self._inference_regime(weights, 1, 1) is None
        if self.architecture.num_states == 1 and self._CELL == "elman" and plain:
            p, nonlinearity, slope = weights
            out, _ = self._kernels.sample_tokens(
                np.ascontiguousarray(p["Wxh"].T), p["bh"], p["Whh"], p["Why"], p["by"],
                state[0][0, 0], int(batch.tokens[-1, 0]), uniforms, nonlinearity,
                negative_slope=slope, temperature=temperature,
                top_k=0 if top_k is None else top_k,
            )
        else:
            out = self._sample_stack(weights, state, int(batch.tokens[-1, 0]), uniforms,
                                     temperature, top_k, ids.size - 1)
        return self.vocab.decode(out) if as_text else out

    def _sample_stack(self, weights, state, token, uniforms, temperature, top_k, start=0):
        """``sample`` for a stack: one forward step of the whole stack per token, the draw as
        ``sample_tokens`` makes it (``cyrnn.kernels.numpy_sample``); the first token is step
        ``start`` (for per-step statistics)."""
        from .kernels import numpy_sample

        V = self.input_size
        temperature = numpy_sample._temperature(temperature)
        top_k = numpy_sample._int_arg("top_k", 0 if top_k is None else top_k, 0, V, False)
        out = np.empty(uniforms.shape[0], dtype=np.intp)
        ids = np.empty((1, 1), dtype=np.intp)
        for i, u in enumerate(uniforms):
            ids[0, 0] = token
            fwd = stack.forward(self._kernels, self.architecture, weights, ids, state[0],
                                c0=state[1], regime=self._inference_regime(weights, 1, 1,
                                                                           start + i))
            z = stack.logits(self.architecture, weights, fwd.top)[0, 0]
            if not np.isfinite(z).all():
                raise numpy_sample._nonfinite_logits(i)
            token = out[i] = numpy_sample._choose(z, u, temperature, top_k)
            state = (fwd.h_last, fwd.c_last)
        return out

    @overload
    def greedy(self, prime: str, n: int, h0: Optional[npt.ArrayLike] = ...) -> str: ...

    @overload
    def greedy(self, prime: Union[Sequence[int], IntArray], n: int,
               h0: Optional[npt.ArrayLike] = ...) -> IntArray: ...

    def greedy(self, prime: Union[str, Sequence[int], IntArray], n: int,
               h0: Optional[npt.ArrayLike] = None) -> Union[str, IntArray]:
        """The ``n`` most likely tokens after ``prime``, one at a time (``sample`` at temperature 0)."""
        return self.sample(prime, n, temperature=0.0, h0=h0)

    def forecast(self, context: npt.ArrayLike, n: int,
                 h0: Optional[npt.ArrayLike] = None) -> FloatArray:
        """Autoregressive forecast of real values: run over ``context``, then feed each
        prediction back in as the next input.

        For models whose outputs are values of the same kind as their inputs: ``output="linear"``
        (regression), or ``"sigmoid"`` for values in [0, 1] (the outputs are fed back as they
        are, not thresholded or drawn). A softmax output gives probabilities over tokens, which
        are not inputs: generate tokens with ``sample`` or ``greedy``, which feed back a token
        drawn from them.

        Parameters
        ----------
        context : ndarray of float (T, I) or (T, B, I)
            Observed values (``(B, T, I)`` with ``batch_first``); needs ``output_size == input_size``.
            Token ids are refused (``TypeError``): use ``sample`` or ``greedy``.
        n : int >= 1
            Future steps.
        h0 : ndarray, optional

        Returns
        -------
        ndarray (n, I) or (n, B, I)
            The predictions ``y_{T+1} .. y_{T+n}`` (batch axis first with ``batch_first``).
        """
        if isinstance(context, str) or np.asarray(context).dtype.kind in "iu":
            raise TypeError(
                "forecast: context holds token ids (or text); forecast feeds real-valued outputs "
                "back as inputs. Generate tokens with sample (or greedy)")
        if self.output == "softmax":
            raise ValueError(
                "forecast: output='softmax' gives probabilities over tokens, which are not inputs "
                "to feed back; generate tokens from token ids with sample (or greedy)")
        if self.output_size != self.input_size:
            raise ValueError(
                f"forecast: needs output_size == input_size, got {self.output_size} and {self.input_size}"
            )
        n = _checks.positive_int("n", n)
        if self.bidirectional:
            raise ValueError("forecast: a bidirectional model reads each sequence backwards "
                             "too, which forecasting cannot; use a unidirectional model")
        y, h = self.forward(context, h0=h0)
        time_axis = 1 if (self.batch_first and y.ndim == 3) else 0
        last = np.take(y, [-1], axis=time_axis)
        predictions = []
        step = y.shape[time_axis]  # the step each prediction is fed in at
        for i in range(n):
            predictions.append(last)
            last, h = self._forward_at(last, h, None, step + i)
        return np.concatenate(predictions, axis=time_axis)

    # -----------------------------------------------------------------------------------------
    # persistence and weight exchange
    # -----------------------------------------------------------------------------------------

    def save(self, path: StrPath, *, optimizer: Optional[Optimizer] = None,
             extra: Optional[dict[str, Any]] = None) -> None:
        """Write the model (and optimizer state) to a versioned ``.npz``; see ``cyrnn.io.save``."""
        # the file format knows nothing of the model class (cyrnn.io, which builds models from
        # files, imports this module; this module never imports cyrnn.io)
        from . import _modelfile

        _modelfile.write(path, {**self.config(), "cell": self.architecture.cell}, self.params,
                         vocab=self.vocab,
                         optimizer_state=None if optimizer is None else optimizer.state_dict(),
                         extra=extra, running=self.running)

    @classmethod
    def from_torch(cls: type[_RNNType], state_dict: Mapping[str, npt.ArrayLike], *,
                   output_prefix: Optional[str] = None, **kwargs: Any) -> _RNNType:
        """A model with the weights of ``torch.nn.RNN`` and an optional ``nn.Linear`` head.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            Arrays (NumPy or anything ``np.asarray`` takes; torch is not needed) keyed as a
            torch state dict: ``<rnn prefix>weight_ih_l{l}[_reverse]``, ``weight_hh_...`` and
            optionally ``bias_ih_...``, ``bias_hh_...`` (their sum becomes ``bh``), plus
            optionally one output layer ``<prefix>weight`` / ``<prefix>bias``. The sizes, the
            number of layers and the directions come from the keys and shapes.
        output_prefix : str, optional
            Prefix of the output layer's keys (e.g. ``"fc."``), needed only when ambiguous.
        **kwargs
            Other ``RNN`` arguments (``nonlinearity``, ``output``, ``dtype``, ``dropout``, ...).
        """
        _no_norm_from("torch", kwargs)
        return cls.from_params(interop.params_from_torch(state_dict, output_prefix=output_prefix,
                                                         cell=cls._CELL),
                               **kwargs)

    def to_torch_state(self, arrays: Optional[Mapping[str, npt.ArrayLike]] = None,
                       rnn_prefix: str = "rnn.", output_prefix: str = "fc.") -> ArrayDict:
        """``params`` (or ``arrays``: any dict keyed like them, such as the gradients) as a
        ``torch.nn.RNN`` + ``nn.Linear`` state dict of NumPy copies.

        ``bias_ih_*`` carries ``bh`` and ``bias_hh_*`` is zero (PyTorch adds the two). Wrap the
        values with ``torch.from_numpy`` to load them; torch is not needed here.
        """
        return interop.to_torch_state(self.architecture, self.params if arrays is None else arrays,
                                      rnn_prefix=rnn_prefix, output_prefix=output_prefix)

    @classmethod
    def from_keras(cls: type[_RNNType], layers: Sequence[Any], dense: Optional[Sequence[Any]] = None,
                   **kwargs: Any) -> _RNNType:
        """A model with the weights of Keras 3 recurrent layers (``SimpleRNN`` for ``RNN``,
        ``LSTM``, ``GRU(reset_after=True)``; ``Bidirectional`` wrappers for a bidirectional
        model), as the arrays of their ``get_weights()``, one list per stacked layer, and an
        optional ``Dense`` head ``[kernel, bias]``; see ``cyrnn.interop.params_from_keras``.
        Keras is not needed. Other ``RNN`` arguments as in ``from_params``."""
        _no_norm_from("Keras", kwargs)
        return cls.from_params(interop.params_from_keras(layers, dense, cell=cls._CELL), **kwargs)

    def to_keras_weights(self) -> tuple[list[list[FloatArray]], Optional[list[FloatArray]]]:
        """``(layers, dense)``: the arrays of each stacked Keras layer's ``set_weights`` (six for a
        ``Bidirectional`` one; GRU with ``reset_after=True``) and of the ``Dense`` head (None
        without an output layer), as copies in Keras's gate orders and orientations."""
        return interop.keras_weights(self.architecture, self.params)

    def set_params(self, params: Mapping[str, npt.ArrayLike]) -> None:
        """Copy ``params`` (same keys and shapes as ``self.params``) into the model's arrays, cast
        to its dtype; checks everything first, so a failed call changes nothing. The arrays are
        updated in place: references held elsewhere (an optimizer's) stay valid."""
        live = dict(self.params)  # one reference to each array: checked and written alike
        expected = {name: p.shape for name, p in live.items()}
        missing = set(expected) - set(params)
        extra = set(params) - set(expected)
        if missing or extra:
            raise KeyError(f"params: missing {sorted(missing)}, unexpected {sorted(extra)}")
        new = {}
        for name, shape in expected.items():
            value = np.asarray(params[name])
            if value.shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {value.shape}")
            new[name] = _checks.finite_array(name, value, self.dtype)
        for name, value in new.items():
            np.copyto(live[name], value)

    def __getstate__(self) -> dict[str, Any]:
        """What pickle (and so joblib, Dask, ``copy.deepcopy``) stores: the constructor
        arguments (``config()``), the parameter arrays, the vocabulary and the dropout
        generator; never the backend object, which the receiving process looks up by name.

        The ``params`` dict itself is stored (not a copy), so an optimizer pickled alongside
        the model keeps updating the same arrays after unpickling. The ``.npz`` format
        (``save``/``cyrnn.load``) stays free of pickle; this is for shipping a live model
        between processes."""
        return {"config": self.config(), "params": self.params, "vocab": self.vocab,
                "generator": self.generator, "running": self.running}

    def __setstate__(self, state: dict[str, Any]) -> None:
        config = dict(state["config"])
        self._configure(config.pop("input_size"), config.pop("hidden_size"),
                        config.pop("output_size"), **config)
        params = self.params = state["params"]
        for name, a in params.items():  # a memory map or a read-only buffer becomes an array
            if type(a) is not np.ndarray or not (a.flags.writeable and a.flags.c_contiguous
                                                 and a.flags.aligned):
                params[name] = np.array(a, dtype=self.dtype, order="C")
        self.generator = state["generator"]
        self.running = state.get("running") or norms.init_running(self.architecture, self.dtype)
        self.vocab = state["vocab"]
        self.weights()  # every array of the expected shape, dtype and layout, or a clear error

    # -----------------------------------------------------------------------------------------
    # validation
    # -----------------------------------------------------------------------------------------

    def _inputs(self, x, h0, lengths):
        """Check and cast ``x``, ``h0`` and ``lengths`` into a time-major ``_checks.Batch``."""
        return _checks.batch(x, h0, lengths, self.architecture, self.dtype, self.batch_first)

    def _loss_name(self, loss):
        if loss is None:
            return losses.DEFAULT_LOSS[self.output]
        if loss not in losses.LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(losses.LOSSES)}, got {loss!r}")
        if self.output not in losses.COMPATIBLE_OUTPUTS[loss]:
            raise ValueError(f"loss: {loss!r} does not apply to output={self.output!r}")
        return loss

    # -----------------------------------------------------------------------------------------
    # computation
    # -----------------------------------------------------------------------------------------

    def _fusable(self, loss, batch, t_idx, regime=None):
        """Whether the whole step can run as one fused kernel call: any cell (Elman, LSTM,
        GRU), plain or with layer normalization and regularizers (``regime``:
        ``cyrnn.norms.regime``; not batch normalization), an output layer, a loss on every step
        of every sequence, cross-entropy on logits or plain MSE."""
        if self.output_size is None or t_idx is not None or batch.lengths is not None:
            return False
        if regime is not None and not norms.fusable(regime):
            return False
        return (loss == "cross_entropy" and self.output in ("softmax", "linear")) or (
            loss == "mse" and self.output == "linear")

    def _cells(self, weights):
        """Each layer-direction's ``(Wxh, Whh, bh)`` (GRU: ``(Wxh, Whh, bh, bhn)``), in ``h0``
        order."""
        p, arch = weights[0], self.architecture
        return tuple(tuple(p[name] for name in arch.cell_names(j)) for j in range(arch.num_states))

    def _regime_cells(self, weights, regime):
        """``(cells, gains, regular)``: each layer-direction's cell parameters (``_cells``,
        with ``Whh * wmask`` under weight drop), layer-norm gains and regularizers' masks as
        the fused kernels take them (``cyrnn.norms.kernel_options``; None, None for a plain
        call)."""
        cells_ = self._cells(weights)
        if regime is None:
            return cells_, None, None
        cells_ = tuple(c if lay.wmask is None else (c[0], c[1] * lay.wmask) + c[2:]
                       for c, lay in zip(cells_, regime))
        return (cells_,) + norms.kernel_options(regime)

    def _fused(self, batch, weights, target, loss, reduction, window, carry, input_grad, masks,
               regime=None):
        """The training step for the common case, in one kernel call (same results as the
        composition). The inputs and targets were checked by ``_checks.batch`` and
        ``loss_targets``, the parameters by ``weights``, so the kernel's own checks (a tenth of
        the time of a char-LM step) are skipped."""
        (p, nonlinearity, slope), T, B = weights, batch.T, batch.B
        code = _checks.NONLINEARITIES.index(nonlinearity)
        target = target.reshape((T, B) + target.shape[1:])
        carry = _checks.carry_array(carry, T, self.dtype)
        longest, windows = (0, None) if window is None else _checks.window_sizes(window, T)
        flags = (loss == "cross_entropy", reduction == "sum", input_grad)
        cell = cells.CELLS.index(self._CELL)  # the stack kernels' cell codes
        if cell == 0 and self.architecture.num_states == 1 and regime is None:
            value, grads, h_last, grad_norms = self._kernels._elman_step(
                batch.inputs, target, batch.h0[0], p["Wxh"], p["Whh"], p["bh"], p["Why"],
                p["by"], code, slope, carry, longest, windows, *flags, self.threads)
            grads["h0"], h_last = grads["h0"][None], h_last[None]
            return types.SimpleNamespace(loss=value, h_last=h_last, grads=grads,
                                         grad_norms=grad_norms)
        if cell:
            code, slope = 0, 0.0  # the gated cells' activations are their own
        layers, gains, regular = self._regime_cells(weights, regime)
        value, found, h_last, grad_norms = self._kernels._stack_step(
            batch.inputs, target, batch.h0, layers, self.architecture.num_directions, p["Why"],
            p["by"], code, slope, carry, longest, windows, *flags, masks, self.threads, cell,
            batch.c0, gains, regular)
        c_last = None
        if self._CELL == "lstm":
            h_last, c_last = h_last
        grads = {}
        arch = self.architecture
        for j, cell_grads in enumerate(found["layers"]):
            grads.update(zip(arch.cell_names(j) + arch.norm_names(j), cell_grads))
            if regime is not None and regime[j].wmask is not None:
                grads[arch.cell_names(j)[1]] *= regime[j].wmask  # through Whh * wmask
        for name in ("Why", "by", "h0", "c0", "x"):
            if name in found:
                grads[name] = found[name]
        return types.SimpleNamespace(loss=value, h_last=h_last, c_last=c_last, grads=grads,
                                     grad_norms=grad_norms)

    def _fused_outputs(self, batch, weights, regime=None):
        """``(y, h_last (L*D, B, H))`` of a model with an output layer, in one kernel call (an
        LSTM's ``h_last`` the pair ``(h_last, c_last)``); ``regime`` as ``_fused``."""
        p, nonlinearity, slope = weights
        cell = cells.CELLS.index(self._CELL)  # the stack kernels' cell codes
        layers, gains, regular = self._regime_cells(weights, regime)
        if cell:
            return self._kernels._stack_outputs(
                batch.inputs, batch.h0, layers, self.architecture.num_directions, p["Why"],
                p["by"], 0, 0.0, losses.OUTPUTS.index(self.output), self.threads, cell, batch.c0,
                gains, regular)
        if self.architecture.num_states == 1 and regime is None:
            y, h_last = self._kernels.elman_forward(
                batch.inputs, batch.h0[0], p["Wxh"], p["Whh"], p["bh"], p["Why"], p["by"],
                nonlinearity, negative_slope=slope, output=self.output, threads=self.threads)
            return y, h_last[None]
        return self._kernels._stack_outputs(
            batch.inputs, batch.h0, layers, self.architecture.num_directions, p["Why"], p["by"],
            _checks.NONLINEARITIES.index(nonlinearity), slope, losses.OUTPUTS.index(self.output),
            self.threads, 0, None, gains, regular)

    def weights(self) -> tuple[ArrayDict, Nonlinearity, float]:
        """One checked snapshot of what a computation reads from the model: ``(params,
        nonlinearity, negative_slope)``, where ``params`` is a new dict holding one reference to
        each parameter array.

        Every path (forward, loss and gradient, fused or composed, sampling) takes this snapshot
        once, checks it, and hands the same objects to the kernels, never reading ``self.params``
        again: an array replaced in the live dict (by another thread, or a dict whose lookups
        disagree) can then neither reach a kernel unchecked nor mix with the old one. The
        compiled kernels rely on each array's type, shape, dtype and memory layout.
        """
        live = self.params
        nonlinearity, slope = self.nonlinearity, self.negative_slope
        _checks.nonlinearity_code(nonlinearity, slope)
        snapshot = {}
        for name, shape in self.architecture.param_shapes().items():
            try:
                a = live[name]
            except (KeyError, TypeError):
                raise KeyError(f"params: parameter {name!r} is missing") from None
            if (type(a) is not np.ndarray or a.shape != shape or a.dtype != self.dtype
                    or not a.flags.c_contiguous or not a.flags.aligned):
                raise ValueError(
                    f"params[{name!r}]: expected a C-contiguous {self.dtype} array of shape "
                    f"{shape}, got {_describe(a)}; update parameters in place or with set_params")
            snapshot[name] = a
        return snapshot, nonlinearity, float(slope)

    def _to_user_layout(self, a, batch):
        """(T, B, ...) -> the caller's layout: (B, T, ...) with batch_first, (T, ...) unbatched."""
        if not batch.batched:
            return a[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(np.swapaxes(a, 0, 1))
        return a

    def _states_out(self, h, c, batch):
        """The last states in the caller's layout: the pair ``(h, c)`` for an LSTM."""
        h = self._state_out(h, batch)
        return h if c is None else (h, self._state_out(c, batch))

    @staticmethod
    def _state_out(h, batch):
        """States (L*D, B, H) in the caller's layout: without the leading axis unless the
        caller's states have it, without the batch axis when unbatched; always a copy."""
        if not batch.stacked:
            h = h[0]  # (B, H) of a single layer-direction
            return h[0].copy() if not batch.batched else h.copy()
        return h[:, 0].copy() if not batch.batched else h.copy()



class _GatedRNN(RNN):
    """What LSTM and GRU share: the constructor of ``RNN`` without an Elman nonlinearity (their
    gates' sigmoid and tanh are part of the cell)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: Optional[int] = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        output: OutputName = "linear",
        init: InitScheme = "uniform",
        dtype: npt.DTypeLike = "float32",
        seed: Seed = None,
        backend: Optional[BackendName] = None,
        batch_first: bool = False,
        threads: Optional[int] = None,
        norm: Optional[NormName] = None,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, num_layers=num_layers,
                         bidirectional=bidirectional, dropout=dropout, output=output, init=init,
                         dtype=dtype, seed=seed, backend=backend, batch_first=batch_first,
                         threads=threads, norm=norm, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, weight_drop=weight_drop)


class LSTM(_GatedRNN):
    """Long short-term memory network (Hochreiter & Schmidhuber), one layer or a stack, with an
    optional linear output layer, trained by BPTT; ``torch.nn.LSTM``'s equations and layout.

    Per layer and step, with the gates stacked in PyTorch's order ``i, f, g, o``::

        [a_i a_f a_g a_o] = x_t Wxh^T + bh + h_{t-1} Whh^T      Wxh (4H, in), Whh (4H, H), bh (4H,)
        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
        c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

    ``bh`` is PyTorch's ``bias_ih + bias_hh``. The arguments are ``RNN``'s but the
    nonlinearity; ``init="identity"`` (IRNN) is for Elman cells and is refused.

    The state is the pair ``(h, c)``: ``h0`` is ``(h0, c0)`` (each ``(L*D, B, H)``, or ``(B, H)``
    for one unidirectional layer, as ``RNN``'s), the last states come back as the pair
    ``(h_last, c_last)``, and ``grads`` holds ``h0`` and ``c0``. Truncated BPTT (``truncate``)
    cuts the gradient through ``h`` and ``c`` alike.
    """

    _CELL = "lstm"


class GRU(_GatedRNN):
    """Gated recurrent unit network (Cho et al.), one layer or a stack, with an optional linear
    output layer, trained by BPTT; ``torch.nn.GRU``'s equations and layout.

    Per layer and step, with the gates stacked in PyTorch's order ``r, z, n`` and one recurrent
    product (the reset gate scales its n-part, as PyTorch and cuDNN do)::

        R_t = h_{t-1} Whh^T                                       Wxh (3H, in), Whh (3H, H)
        r = sigmoid(x_t W_ir^T + b_r + R_r);  z = sigmoid(x_t W_iz^T + b_z + R_z)
        n = tanh(x_t W_in^T + b_in + r * (R_n + bhn));  h_t = (1 - z) * n + z * h_{t-1}

    ``bh (3H,)`` is PyTorch's ``bias_ih + bias_hh`` for r and z and ``bias_ih`` alone for n;
    ``bhn (H,)`` is the n-part of ``bias_hh``. The arguments are ``RNN``'s but the
    nonlinearity; ``init="identity"`` (IRNN) is for Elman cells and is refused.
    """

    _CELL = "gru"

def _config_names(cls):
    """The constructor's keyword arguments but ``seed``, and the sizes: what ``config()`` holds."""
    names = [name for name, p in inspect.signature(cls.__init__).parameters.items()
             if name not in ("self", "seed")]
    return names


def _describe(a):
    if isinstance(a, np.ndarray):
        layout = "C-contiguous" if a.flags.c_contiguous else "non-contiguous"
        if not a.flags.aligned:
            layout = "misaligned " + layout
        return f"a {layout} {a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _float_dtype(dtype):
    try:
        dt = None if dtype is None else np.dtype(dtype)  # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt
