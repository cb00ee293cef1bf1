# The compiled Elman kernels (pyx/cyrnn/_rnn.pyx): the same signatures as their NumPy twins in
# cyrnn.kernels.numpy_backend and numpy_fused, which document them.
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy.typing as npt

from cyrnn._typing import (ArrayDict, FloatArray, Nonlinearity, OutputName, Reduction,
                           StepLossName)

def rnn_forward(xw: FloatArray, h0: FloatArray, Whh: FloatArray,
                nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                lengths: Optional[npt.ArrayLike] = None,
                out: Optional[FloatArray] = None) -> FloatArray: ...
def rnn_backward(
    dh_out: FloatArray, hs: FloatArray, Whh: FloatArray, nonlinearity: Nonlinearity = "tanh", *,
    negative_slope: float = 0.01, dh_last: Optional[FloatArray] = None,
    carry: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def rnn_backward_window(
    dh_out: FloatArray, hs: FloatArray, Whh: FloatArray, window: Union[int, npt.ArrayLike],
    nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
    dh_last: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray]: ...
def embedding_grad(ids: npt.ArrayLike, grad: FloatArray, num_rows: int) -> FloatArray: ...
def elman_forward(inputs: npt.ArrayLike, h0: FloatArray, Wxh: FloatArray, Whh: FloatArray,
                  bh: FloatArray, Why: FloatArray, by: FloatArray,
                  nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                  output: OutputName = "linear",
                  threads: Optional[int] = None) -> tuple[FloatArray, FloatArray]: ...
def elman_loss_and_grad(
    inputs: npt.ArrayLike, targets: npt.ArrayLike, h0: FloatArray, Wxh: FloatArray,
    Whh: FloatArray, bh: FloatArray, Why: FloatArray, by: FloatArray,
    nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
    loss: StepLossName = "cross_entropy", reduction: Reduction = "mean",
    carry: Optional[npt.ArrayLike] = None, window: Union[int, npt.ArrayLike, None] = None,
    input_grad: bool = True, threads: Optional[int] = None,
) -> tuple[float, ArrayDict, FloatArray, Optional[FloatArray]]: ...
def shard_count(T: int, B: int, I: int, H: int, O: int, num_layers: int = 1,
                num_directions: int = 1, gate_width: int = 0) -> int: ...


# the private entry points, on arguments the model has checked. `cell`: 0 Elman, 1 LSTM (takes
# c0; h_last is the pair (h_last, c_last); grads has "c0"), 2 GRU (layers[j] = (Wxh, Whh, bh,
# bhn); grads["layers"][j] ends with dbhn); `gains` (layer norm) and `regular` (recurrent
# dropout and zoneout masks) per layer-direction, or None; see numpy_fused._stack_step
def _stack_step(
    inputs: npt.NDArray[Any], targets: npt.NDArray[Any], h0: FloatArray,
    layers: tuple[tuple[FloatArray, ...], ...], num_directions: int,
    Why: FloatArray, by: FloatArray, code: int, slope: float, carry: Optional[FloatArray],
    k: int, windows: Optional[npt.NDArray[Any]], cross_entropy: bool, sum_reduction: bool,
    input_grad: bool, masks: Optional[FloatArray], threads: Optional[int] = None,
    cell: int = 0, c0: Optional[FloatArray] = None,
    gains: Optional[Sequence[tuple[FloatArray, ...]]] = None,
    regular: Optional[Sequence[Optional[tuple[Optional[FloatArray], ...]]]] = None,
) -> tuple[float, dict[str, Any], Any, Optional[FloatArray]]: ...
def _stack_outputs(
    inputs: npt.NDArray[Any], h0: FloatArray,
    layers: tuple[tuple[FloatArray, ...], ...], num_directions: int,
    Why: FloatArray, by: FloatArray, code: int, slope: float, out_code: int,
    threads: Optional[int] = None, cell: int = 0, c0: Optional[FloatArray] = None,
    gains: Optional[Sequence[tuple[FloatArray, ...]]] = None,
    regular: Optional[Sequence[Optional[tuple[Optional[FloatArray], ...]]]] = None,
) -> tuple[FloatArray, Any]: ...

# the other private entry points and test hooks
def __getattr__(name: str) -> Any: ...
