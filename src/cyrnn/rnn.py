"""The Elman RNN class: parameters, validation and the large matrix products.

The class checks and casts its inputs once, does every product that is not sequential with NumPy
(the input projection for all steps at once, or a row gather for token ids; the output layer; the
loss; the weight gradients) and hands the kernels only the recurrences::

    a_t = x_t Wxh^T + bh + h_{t-1} Whh^T        h_t = f(a_t)          (rnn_forward)
    z_t = h_t Why^T + by                         y_t = g(z_t)
    dh_t^out = dz_t Why
    da_t = (dh_t^out + da_{t+1} Whh) * f'(h_t)                         (rnn_backward)
    dWhh = sum_t da_t^T h_{t-1}   dWxh = sum_t da_t^T x_t   dbh = sum_t da_t
    dWhy = sum_t dz_t^T h_t       dby = sum_t dz_t          dx_t = da_t Wxh
"""
from __future__ import annotations

import inspect
import types
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from . import _checks, kernels, losses, truncation
from ._typing import (ArrayDict, BackendName, FloatArray, InitScheme, IntArray, LossName,
                      Nonlinearity, OutputName, Reduction, Seed, StrPath, TargetSteps)
from .data import Vocabulary
from .init import INITS, init_params
from .optim import Optimizer
from .truncation import Truncate

_RNNType = TypeVar("_RNNType", bound="RNN")

PARAM_NAMES = ("Wxh", "Whh", "bh", "Why", "by")
TARGET_STEPS = ("all", "last")

# key suffixes of torch.nn.RNN's single-layer state dict
_TORCH_RNN_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class _Batch:
    """Validated inputs of one call, time-major: ``x`` (T, B, I) floats or (T, B) token ids."""

    __slots__ = ("x", "tokens", "h0", "lengths", "T", "B", "batched")

    def __init__(self, x, tokens, h0, lengths, batched):
        self.x, self.tokens, self.h0, self.lengths, self.batched = x, tokens, h0, lengths, batched
        self.T, self.B = (tokens if tokens is not None else x).shape[:2]


class RNN:
    """Single-layer Elman RNN with an optional linear output layer, trained by BPTT.

    ``h_t = f(x_t Wxh^T + h_{t-1} Whh^T + bh)`` and ``y_t = g(h_t Why^T + by)``.

    Parameters
    ----------
    input_size : int
        Features per step ``I``, or the vocabulary size ``V`` when inputs are token ids.
    hidden_size : int
        Hidden units ``H``.
    output_size : int or None
        Outputs ``O``; ``None`` means no output layer (the hidden states are the output).
    nonlinearity : {"tanh", "relu", "sigmoid", "leaky_relu", "identity"}
    negative_slope : float
        Slope of ``leaky_relu`` for negative inputs.
    output : {"linear", "softmax", "sigmoid"}
        Output function ``g``; it also picks the default loss (mse, cross_entropy, bce).
    init : {"uniform", "xavier", "orthogonal", "identity", "normal"}
        Initialisation scheme, see ``cyrnn.init.init_params``.
    dtype : {"float32", "float64"}
    seed : int or None
        Seed of the initialisation.
    backend : {"cython", "numpy"} or None
        Kernel backend; ``None`` takes the process default (``cyrnn.backend_info()``).
    batch_first : bool
        Inputs and outputs are ``(B, T, ...)`` instead of ``(T, B, ...)``.
    threads : int or None
        Threads a call may use; ``None`` follows ``cyrnn.set_num_threads`` or the automatic
        choice (the CPUs available). Only the speed depends on it, never the results: see
        ``cyrnn.get_num_threads``. Settable later as ``model.threads``.

    Attributes
    ----------
    params : dict of ndarray
        ``Wxh (H, I), Whh (H, H), bh (H,)`` and, with an output layer, ``Why (O, H), by (O,)``,
        in the model dtype. Update them in place (optimizers do).
    """

    params: ArrayDict
    vocab: Optional[Vocabulary]
    input_size: int
    hidden_size: int
    output_size: Optional[int]
    nonlinearity: Nonlinearity
    negative_slope: float
    output: OutputName
    init: InitScheme
    dtype: np.dtype[Any]
    batch_first: bool
    backend: BackendName
    threads: Optional[int]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: Optional[int] = None,
        *,
        nonlinearity: Nonlinearity = "tanh",
        negative_slope: float = 0.01,
        output: OutputName = "linear",
        init: InitScheme = "uniform",
        dtype: npt.DTypeLike = "float32",
        seed: Seed = None,
        backend: Optional[BackendName] = None,
        batch_first: bool = False,
        threads: Optional[int] = None,
    ) -> None:
        self._configure(input_size, hidden_size, output_size, nonlinearity, negative_slope,
                        output, init, dtype, backend, batch_first, threads)
        rng = np.random.default_rng(seed)
        drawn = init_params(init, self.input_size, self.hidden_size, self.output_size, rng)
        self.params = {name: np.ascontiguousarray(p, dtype=self.dtype) for name, p in drawn.items()}
        self.vocab = None  # a cyrnn.data.Vocabulary for character models: text in and out

    def _configure(self, input_size, hidden_size, output_size, nonlinearity, negative_slope,
                   output, init, dtype, backend, batch_first, threads=None):
        """Check and set every attribute but the parameters."""
        self.threads = _checks.optional_positive_int("threads", threads)
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.output_size = (
            None if output_size is None else _checks.positive_int("output_size", output_size)
        )
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

    @classmethod
    def from_params(cls: type[_RNNType], params: Mapping[str, npt.ArrayLike],
                    **kwargs: Any) -> _RNNType:
        """A model with the given parameters and no random initialisation.

        Parameters
        ----------
        params : mapping of str to array-like
            ``Wxh (H, I)``, ``Whh (H, H)``, ``bh (H,)`` and optionally ``Why (O, H)``,
            ``by (O,)``; the sizes come from these arrays, which are copied (cast to ``dtype``)
            after every shape and value is checked.
        **kwargs
            The other ``RNN`` arguments (``nonlinearity``, ``output``, ``dtype``, ...), except
            the sizes and ``seed``.
        """
        for name in ("input_size", "hidden_size", "output_size", "seed"):
            if name in kwargs:
                raise TypeError(f"from_params: {name} comes from the arrays, not an argument")
        arrays = {str(name): np.asarray(value) for name, value in params.items()}
        for name in ("Wxh", "Why"):
            if name in arrays and arrays[name].ndim != 2:
                raise ValueError(f"{name}: expected 2 dimensions, got shape {arrays[name].shape}")
        if "Wxh" not in arrays:
            raise KeyError("params: missing ['Wxh']")
        H, I = arrays["Wxh"].shape
        O = arrays["Why"].shape[0] if "Why" in arrays else None
        # the keyword arguments of __init__ but the seed, with its defaults
        options = {name: p.default for name, p in inspect.signature(RNN.__init__).parameters.items()
                   if p.kind is p.KEYWORD_ONLY and name != "seed"}
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError(f"from_params: unexpected arguments {sorted(unknown)}")
        options.update(kwargs)
        model = cls.__new__(cls)
        model._configure(I, H, O, **options)
        shapes = model._param_shapes()
        model.params = {name: np.zeros(shape, dtype=model.dtype) for name, shape in shapes.items()}
        model.vocab = None
        model.set_params(arrays)
        return model

    def __repr__(self) -> str:
        return (
            f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, nonlinearity={self.nonlinearity!r}, "
            f"output={self.output!r}, dtype={self.dtype.name!r}, backend={self.backend!r})"
        )

    # -----------------------------------------------------------------------------------------
    # public API
    # -----------------------------------------------------------------------------------------

    def forward(self, x: npt.ArrayLike, h0: Optional[npt.ArrayLike] = None,
                lengths: Optional[npt.ArrayLike] = None) -> tuple[FloatArray, FloatArray]:
        """Run the network over a batch of sequences.

        Parameters
        ----------
        x : ndarray
            Dense inputs ``(T, B, I)`` (float) or token ids ``(T, B)`` (integer, ``0 <= id < I``);
            unbatched ``(T, I)`` / ``(T,)``; ``(B, T, ...)`` with ``batch_first``.
        h0 : ndarray (B, H) or (H,), optional
            Initial state; zeros by default.
        lengths : array of int (B,), optional
            Valid steps per sequence; later steps are padding (state frozen, outputs meaningless).

        Returns
        -------
        y : ndarray (T, B, O)
            ``g(z_t)`` for every step (the hidden states ``(T, B, H)`` without an output layer).
        h_last : ndarray (B, H)
            State after each sequence's last valid step.
        """
        weights = self._weights()
        batch = self._batch(x, h0, lengths)
        p, nonlinearity, slope = weights
        if self.output_size is not None and batch.lengths is None:
            # the common case in one kernel call
            y, h_last = self._kernels.elman_forward(
                batch.tokens if batch.tokens is not None else batch.x, batch.h0, p["Wxh"],
                p["Whh"], p["bh"], p["Why"], p["by"], nonlinearity,
                negative_slope=slope, output=self.output, threads=self.threads)
            return self._to_user_layout(y, batch), self._state_out(h_last, batch)
        hs = self._states(batch, weights)
        z = self._logits(hs, weights)
        y = losses.apply_output(self.output, z) if self.output_size is not None else z
        return self._to_user_layout(y, batch), self._state_out(hs[-1], batch)

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

        Returns
        -------
        loss : float
        grads : dict of ndarray
            Same keys and shapes as ``params``, plus ``h0`` and, for dense inputs, ``x``.
        h_last : ndarray (B, H)
        """
        result = self._evaluate(x, target, h0, lengths, loss, reduction, target_steps, truncate,
                                input_grad=input_grad)
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

    def _evaluate(self, x, target, h0, lengths, loss, reduction, target_steps, truncate=None,
                  need_grads=True, input_grad=True):
        """Forward, loss and (optionally) BPTT; a namespace with ``loss``, ``h_last``, ``grads``
        and ``grad_norms`` (per-step ``||dL/dh_t||`` (T,), full BPTT and carries only)."""
        loss = self._loss_name(loss)
        if reduction not in losses.REDUCTIONS:
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        if target_steps not in TARGET_STEPS:
            raise ValueError(f"target_steps: expected 'all' or 'last', got {target_steps!r}")
        weights = self._weights()
        batch = self._batch(x, h0, lengths)
        window, carry = truncation.resolve(truncate, batch.T)
        t_idx, b_idx = self._loss_positions(batch, target_steps)
        target = self._target(target, loss, batch, target_steps, t_idx, b_idx)

        if need_grads and self._fusable(loss, batch, t_idx):
            return self._fused(batch, weights, target, loss, reduction, window, carry, input_grad)
        return self._composed(batch, weights, target, loss, reduction, window, carry, t_idx,
                              b_idx, need_grads, input_grad)

    def _composed(self, batch, weights, target, loss, reduction, window, carry, t_idx, b_idx,
                  need_grads, input_grad):
        """``_evaluate`` from the separate kernels and NumPy's products (any case)."""
        hs = self._states(batch, weights)
        z = self._logits(hs, weights)
        # (N, O) logits of the positions that carry a loss -> loss and dL/dz there
        z_sel = z.reshape(-1, z.shape[-1]) if t_idx is None else z[t_idx, b_idx]
        value, dz_sel = losses.loss_and_dz(loss, self.output, z_sel, target, reduction)
        result = types.SimpleNamespace(loss=value, h_last=self._state_out(hs[-1], batch),
                                       grads=None, grad_norms=None)
        if need_grads:
            if t_idx is None:
                dz = dz_sel.reshape(z.shape)
            else:
                dz = np.zeros_like(z)
                dz[t_idx, b_idx] = dz_sel
            result.grads, result.grad_norms = self._backward(batch, weights, hs, dz, window,
                                                             carry, input_grad)
        return result

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
        h0 : ndarray (H,), optional
            State before the prime (zeros by default).

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
        weights = self._weights()
        p, nonlinearity, slope = weights
        batch = self._batch(ids, h0, None)  # unbatched: ids (T,), h0 (H,)
        state = batch.h0
        if ids.size > 1:
            # the prime but its last token, on the same snapshot of the weights
            prime_batch = _Batch(None, batch.tokens[:-1], state, None, True)
            state = self._states(prime_batch, weights)[-1]
        uniforms = np.random.default_rng(seed).random(n)
        out, _ = self._kernels.sample_tokens(
            np.ascontiguousarray(p["Wxh"].T), p["bh"], p["Whh"], p["Why"], p["by"], state[0],
            int(batch.tokens[-1, 0]), uniforms, nonlinearity,
            negative_slope=slope, temperature=temperature,
            top_k=0 if top_k is None else top_k,
        )
        return self.vocab.decode(out) if as_text else out

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
        y, h = self.forward(context, h0=h0)
        time_axis = 1 if (self.batch_first and y.ndim == 3) else 0
        last = np.take(y, [-1], axis=time_axis)
        predictions = []
        for _ in range(n):
            predictions.append(last)
            last, h = self.forward(last, h0=h)
        return np.concatenate(predictions, axis=time_axis)

    # -----------------------------------------------------------------------------------------
    # persistence and weight exchange
    # -----------------------------------------------------------------------------------------

    def save(self, path: StrPath, *, optimizer: Optional[Optimizer] = None,
             extra: Optional[dict[str, Any]] = None) -> None:
        """Write the model (and optimizer state) to a versioned ``.npz``; see ``cyrnn.io.save``."""
        from . import io

        io.save(self, path, optimizer=optimizer, extra=extra)

    @classmethod
    def from_torch(cls: type[_RNNType], state_dict: Mapping[str, npt.ArrayLike], *,
                   output_prefix: Optional[str] = None, **kwargs: Any) -> _RNNType:
        """Build a model from the weights of ``torch.nn.RNN`` (one layer) and ``nn.Linear``.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            Arrays (NumPy or anything ``np.asarray`` takes; torch is not needed) with keys
            ending in ``weight_ih_l0``, ``weight_hh_l0`` and optionally ``bias_ih_l0``,
            ``bias_hh_l0`` (their sum becomes ``bh``), plus optionally one output layer
            ``<prefix>weight`` / ``<prefix>bias``.
        output_prefix : str, optional
            Prefix of the output layer's keys (e.g. ``"fc."``), needed only when ambiguous.
        **kwargs
            Other ``RNN`` arguments (``nonlinearity``, ``output``, ``dtype``, ...). Sizes come
            from the arrays.
        """
        arrays = {str(k): np.asarray(v) for k, v in state_dict.items()}
        for key in arrays:
            if "_l1" in key or key.endswith("_reverse"):
                raise ValueError(f"state_dict: only single-layer unidirectional RNNs are supported ({key})")
        rnn = {}
        for suffix in _TORCH_RNN_KEYS:
            keys = [k for k in arrays if k.endswith(suffix)]
            if len(keys) > 1:
                raise ValueError(f"state_dict: several keys end in {suffix!r}: {keys}")
            if keys:
                rnn[suffix] = arrays.pop(keys[0])
            elif suffix.startswith("weight"):
                raise KeyError(f"state_dict: no key ending in {suffix!r}")
        Wxh = rnn["weight_ih_l0"]
        if Wxh.ndim != 2:
            raise ValueError(f"weight_ih_l0: expected 2 dimensions, got shape {Wxh.shape}")
        H, I = Wxh.shape
        for bias in ("bias_ih_l0", "bias_hh_l0"):
            if bias in rnn and rnn[bias].shape != (H,):
                raise ValueError(f"{bias}: expected shape ({H},), got {rnn[bias].shape}")
        params = {
            "Wxh": Wxh,
            "Whh": rnn["weight_hh_l0"],
            "bh": rnn.get("bias_ih_l0", np.zeros(H)) + rnn.get("bias_hh_l0", np.zeros(H)),
        }

        if output_prefix is None:
            weights = [k for k in arrays if k.endswith("weight")]
            if len(weights) > 1:
                raise ValueError(f"state_dict: several candidate output layers {weights}; pass output_prefix")
            output_prefix = weights[0][: -len("weight")] if weights else None
        elif output_prefix + "weight" not in arrays:
            raise KeyError(f"state_dict: no key {output_prefix + 'weight'!r}")
        O = None
        if output_prefix is not None:
            Why = arrays[output_prefix + "weight"]
            if Why.ndim != 2:
                raise ValueError(f"{output_prefix}weight: expected 2 dimensions, got shape {Why.shape}")
            O = Why.shape[0]
            params["Why"] = Why
            params["by"] = arrays.get(output_prefix + "bias", np.zeros(O))
        model = cls(I, H, O, **kwargs)
        model.set_params(params)  # checks the remaining shapes and finiteness
        return model

    def to_torch_state(self, rnn_prefix: str = "rnn.", output_prefix: str = "fc.") -> ArrayDict:
        """Weights as a ``torch.nn.RNN`` + ``nn.Linear`` state dict of NumPy arrays.

        ``bias_ih_l0`` carries ``bh`` and ``bias_hh_l0`` is zero (PyTorch adds the two). Wrap the
        values with ``torch.from_numpy`` to load them; torch is not needed here.
        """
        p = self.params
        state = {
            rnn_prefix + "weight_ih_l0": p["Wxh"].copy(),
            rnn_prefix + "weight_hh_l0": p["Whh"].copy(),
            rnn_prefix + "bias_ih_l0": p["bh"].copy(),
            rnn_prefix + "bias_hh_l0": np.zeros_like(p["bh"]),
        }
        if self.output_size is not None:
            state[output_prefix + "weight"] = p["Why"].copy()
            state[output_prefix + "bias"] = p["by"].copy()
        return state

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

    # -----------------------------------------------------------------------------------------
    # validation
    # -----------------------------------------------------------------------------------------

    def _batch(self, x, h0, lengths):
        """Check and cast ``x``, ``h0`` and ``lengths`` into a time-major ``_Batch``."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        I, H = self.input_size, self.hidden_size
        tokens = dense = None
        if x.dtype.kind in "iu":
            if x.ndim not in (1, 2):
                raise ValueError(f"x: token ids must have shape (T, B) or (T,), got {x.shape}")
            batched = x.ndim == 2
            ids = x if batched else x[:, None]
            if self.batch_first and batched:
                ids = ids.T
            _checks.id_range("x", ids, I, "token id")
            tokens = _checks.aligned_array(ids, dtype=np.intp)
        elif x.dtype.kind == "f":
            if x.ndim not in (2, 3) or x.shape[-1] != I:
                expected = "(B, T, {0}) or (T, {0})" if self.batch_first else "(T, B, {0}) or (T, {0})"
                # whole numbers in [0, I) without a feature axis: token ids cast to float
                if (x.ndim in (1, 2) and x.size and np.isfinite(x).all()
                        and (x == np.floor(x)).all() and x.min() >= 0 and x.max() < I):
                    raise TypeError(
                        f"x: token ids must be integers; got floats of shape {x.shape} (use "
                        f"x.astype(int)); dense inputs need shape {expected.format(I)}")
                raise ValueError(f"x: expected shape {expected.format(I)}, got {x.shape}")
            batched = x.ndim == 3
            values = x if batched else x[:, None, :]
            if self.batch_first and batched:
                values = values.transpose(1, 0, 2)
            dense = _checks.finite_array("x", values, self.dtype)
        else:
            raise TypeError(f"x: expected floats (dense inputs) or integers (token ids), got dtype {x.dtype}")
        T, B = (tokens if tokens is not None else dense).shape[:2]
        if T == 0:
            raise ValueError("x: expected at least one time step, got T = 0")
        if B == 0:
            raise ValueError("x: expected at least one sequence, got B = 0")

        if h0 is None:
            h0 = np.zeros((B, H), dtype=self.dtype)
        else:
            h0 = np.asarray(h0)
            shape = (B, H) if batched else (H,)
            if h0.shape != shape:
                raise ValueError(f"h0: expected shape {shape}, got {h0.shape}")
            h0 = _checks.finite_array("h0", h0.reshape(B, H), self.dtype)

        if lengths is not None:
            if not batched:
                lengths = np.asarray(lengths).reshape(-1)
            lengths = _checks.lengths_array(lengths, T, B)
            if (lengths == T).all():
                lengths = None  # nothing is padded
        return _Batch(dense, tokens, h0, lengths, batched)

    def _loss_name(self, loss):
        if loss is None:
            return losses.DEFAULT_LOSS[self.output]
        if loss not in losses.LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(losses.LOSSES)}, got {loss!r}")
        if self.output not in losses.COMPATIBLE_OUTPUTS[loss]:
            raise ValueError(f"loss: {loss!r} does not apply to output={self.output!r}")
        return loss

    @staticmethod
    def _loss_positions(batch, target_steps):
        """Time and batch indices of the positions with a loss, or (None, None) for all."""
        T, B, lengths = batch.T, batch.B, batch.lengths
        if target_steps == "last":
            last = np.full(B, T - 1) if lengths is None else lengths - 1
            if (last < 0).any():
                raise ValueError("lengths: target_steps='last' needs every sequence to have a step")
            return last, np.arange(B)
        if lengths is None:
            return None, None
        t_idx, b_idx = np.nonzero(np.arange(T)[:, None] < lengths[None, :])
        if t_idx.size == 0:
            raise ValueError("lengths: every sequence is empty, there is nothing to compute a loss on")
        return t_idx, b_idx

    def _target(self, target, loss, batch, target_steps, t_idx, b_idx):
        """The targets of the loss positions: (N,) class ids or (N, O) values."""
        target = np.asarray(target)
        O = self.output_size if self.output_size is not None else self.hidden_size
        T, B = batch.T, batch.B
        per_step = target_steps == "all"
        classes = loss == "cross_entropy"
        if per_step:
            shape = (T, B) if batch.batched else (T,)
            if self.batch_first and batch.batched:
                shape = (B, T)
        else:
            shape = (B,) if batch.batched else ()
        if not classes:
            shape = shape + (O,)
        if target.shape != shape:
            if classes and target.shape == shape + (O,):
                raise ValueError(
                    f"target: cross_entropy takes class ids of shape {shape}, not one-hot vectors "
                    f"(got shape {target.shape}); use target.argmax(-1)")
            if not classes and O > 1 and target.shape == shape[:-1] and target.dtype.kind in "iu":
                fix = " or loss='cross_entropy'" if self.output == "linear" else ""
                raise ValueError(
                    f"target: {loss} with output={self.output!r} expects values of shape {shape}, "
                    f"got integers of shape {target.shape}; class ids need output='softmax'{fix}")
            raise ValueError(f"target: expected shape {shape}, got {target.shape}")
        if classes and target.dtype.kind not in "iu":
            raise TypeError(f"target: cross_entropy needs integer class ids, got dtype {target.dtype}")
        if not classes and target.dtype.kind not in "fiu":
            raise TypeError(f"target: expected real numbers, got dtype {target.dtype}")
        # time-major with a batch axis
        if per_step:
            if not batch.batched:
                target = target[:, None]
            elif self.batch_first:
                target = np.swapaxes(target, 0, 1)
            selected = target.reshape((T * B,) + target.shape[2:]) if t_idx is None else target[t_idx, b_idx]
        else:
            selected = target.reshape((B,) + target.shape[(1 if batch.batched else 0):])
        if classes:
            _checks.id_range("target", selected, O, "class id")
            return _checks.aligned_array(selected, dtype=np.intp)
        selected = _checks.finite_array("target", selected, self.dtype)
        if loss == "bce" and (selected.min() < 0 or selected.max() > 1):
            raise ValueError("target: bce needs values in [0, 1]")
        return selected

    # -----------------------------------------------------------------------------------------
    # computation
    # -----------------------------------------------------------------------------------------

    def _fusable(self, loss, batch, t_idx):
        """Whether the whole step can run as one ``elman_loss_and_grad`` kernel call: an output
        layer, a loss on every step of every sequence, cross-entropy on logits or plain MSE."""
        if self.output_size is None or t_idx is not None or batch.lengths is not None:
            return False
        return (loss == "cross_entropy" and self.output in ("softmax", "linear")) or (
            loss == "mse" and self.output == "linear")

    def _fused(self, batch, weights, target, loss, reduction, window, carry, input_grad=True):
        """``_evaluate`` for the common case, in one kernel call (same results). The inputs and
        targets were checked by ``_batch`` and ``_target``, the parameters by ``_weights``, so
        the kernel's own checks (a tenth of the time of a char-LM step) are skipped."""
        (p, nonlinearity, slope), T, B = weights, batch.T, batch.B
        inputs = batch.tokens if batch.tokens is not None else batch.x
        target = target.reshape((T, B) + target.shape[1:])
        carry = _checks.carry_array(carry, T, self.dtype)
        longest, windows = (0, None) if window is None else _checks.window_sizes(window, T)
        value, grads, h_last, grad_norms = self._kernels._elman_step(
            inputs, target, batch.h0, p["Wxh"], p["Whh"], p["bh"], p["Why"], p["by"],
            _checks.NONLINEARITIES.index(nonlinearity), slope, carry,
            longest, windows, loss == "cross_entropy", reduction == "sum", input_grad,
            self.threads)
        if "x" in grads:
            grads["x"] = self._to_user_layout(grads["x"], batch)
        grads["h0"] = self._state_out(grads["h0"], batch)
        return types.SimpleNamespace(loss=value, h_last=self._state_out(h_last, batch),
                                     grads=grads, grad_norms=grad_norms)

    def _param_shapes(self):
        return param_shapes(self.input_size, self.hidden_size, self.output_size)

    def _weights(self):
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
        for name, shape in self._param_shapes().items():
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

    def _states(self, batch, weights=None):
        """hs (T + 1, B, H): the input projection for all steps, then the recurrence kernel."""
        p, nonlinearity, slope = self._weights() if weights is None else weights
        if batch.tokens is not None:
            # a row gather from Wxh^T is x_t Wxh^T for one-hot x_t
            xw = p["Wxh"].T.take(batch.tokens, axis=0)
        else:
            # (T*B, H) = (T*B, I) (I, H)
            xw = (batch.x.reshape(-1, self.input_size) @ p["Wxh"].T).reshape(batch.T, batch.B, -1)
        xw += p["bh"]
        return self._kernels.rnn_forward(
            xw,
            batch.h0,
            p["Whh"],
            nonlinearity,
            negative_slope=slope,
            lengths=batch.lengths,
        )

    def _logits(self, hs, weights=None):
        """z (T, B, O) = h_t Why^T + by for all steps, or the states when there is no output layer."""
        states, p = hs[1:], (self._weights() if weights is None else weights)[0]
        if self.output_size is None:
            return states
        T, B, H = states.shape
        z = states.reshape(-1, H) @ p["Why"].T
        z += p["by"]
        return z.reshape(T, B, -1)

    def _backward(self, batch, weights, hs, dz, window=None, carry=None, input_grad=True):
        """Gradients of every parameter (and h0, and dense x) from dL/dz (T, B, O), and the
        per-step gradient norms (None with a window); with a look-back ``window`` (int or (T,))
        or a ``carry`` scale (T,) for truncated BPTT."""
        (p, nonlinearity, slope), H = weights, self.hidden_size
        T, B = batch.T, batch.B
        grads = {}
        if self.output_size is None:
            dh_out = dz
        else:
            dz2 = dz.reshape(-1, dz.shape[-1])
            # dWhy (O, H) = dz^T (O, T*B) h (T*B, H);  dby = sum over steps and batch
            grads["Why"] = dz2.T @ hs[1:].reshape(-1, H)
            grads["by"] = dz2.sum(axis=0)
            # (T*B, H) = (T*B, O) (O, H)
            dh_out = (dz2 @ p["Why"]).reshape(T, B, H)
        k = self._kernels
        common = dict(negative_slope=slope, lengths=batch.lengths)
        if window is None:
            da, dh0, grad_norms = k.rnn_backward(dh_out, hs, p["Whh"], nonlinearity,
                                                 carry=carry, **common)
        else:
            da, dh0 = k.rnn_backward_window(dh_out, hs, p["Whh"], window, nonlinearity, **common)
            grad_norms = None
        da2 = da.reshape(-1, H)
        # dWhh (H, H) = da^T (H, T*B) h_{t-1} (T*B, H)
        grads["Whh"] = da2.T @ hs[:-1].reshape(-1, H)
        grads["bh"] = da2.sum(axis=0)
        if batch.tokens is not None:
            # the projection gathered row id of Wxh^T: scatter-add da's rows back there
            dWxhT = k.embedding_grad(batch.tokens.reshape(-1), da2, self.input_size)
            grads["Wxh"] = np.ascontiguousarray(dWxhT.T)
        else:
            # dWxh (H, I) = da^T (H, T*B) x (T*B, I);  dx (T*B, I) = da (T*B, H) Wxh (H, I)
            grads["Wxh"] = da2.T @ batch.x.reshape(-1, self.input_size)
            if input_grad:
                grads["x"] = self._to_user_layout((da2 @ p["Wxh"]).reshape(T, B, -1), batch)
        grads["h0"] = self._state_out(dh0, batch)
        ordered = {name: grads[name] for name in (*p, "h0", "x") if name in grads}
        return ordered, grad_norms

    def _to_user_layout(self, a, batch):
        """(T, B, ...) -> the caller's layout: (B, T, ...) with batch_first, (T, ...) unbatched."""
        if not batch.batched:
            return a[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(np.swapaxes(a, 0, 1))
        return a

    @staticmethod
    def _state_out(h, batch):
        """A (B, H) state as the caller passed states: (H,) when unbatched; always a copy."""
        return h[0].copy() if not batch.batched else h.copy()


def param_shapes(input_size: int, hidden_size: int,
                 output_size: Optional[int]) -> dict[str, tuple[int, ...]]:
    """Name and shape of each parameter of a model of these sizes, in ``params`` order."""
    H, I, O = hidden_size, input_size, output_size
    shapes = {"Wxh": (H, I), "Whh": (H, H), "bh": (H,)}
    if O is not None:
        shapes.update(Why=(O, H), by=(O,))
    return shapes


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
