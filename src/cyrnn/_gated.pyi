# The compiled gated-cell layer kernels (pyx/cyrnn/_gated.pyx): the same signatures as their
# NumPy twins in cyrnn.kernels.numpy_gated, which document them.
from typing import Any, Optional, Union

import numpy.typing as npt

from cyrnn._typing import FloatArray

def lstm_forward(xw: FloatArray, h0: FloatArray, c0: FloatArray, Whh: FloatArray, *,
                 lengths: Optional[npt.ArrayLike] = None
                 ) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def lstm_backward(
    dh_out: FloatArray, hs: FloatArray, cs: FloatArray, gates: FloatArray, Whh: FloatArray, *,
    dh_last: Optional[FloatArray] = None, dc_last: Optional[FloatArray] = None,
    carry: Optional[npt.ArrayLike] = None, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]: ...
def lstm_backward_window(
    dh_out: FloatArray, hs: FloatArray, cs: FloatArray, gates: FloatArray, Whh: FloatArray,
    window: Union[int, npt.ArrayLike], *, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def gru_forward(xw: FloatArray, h0: FloatArray, Whh: FloatArray, bhn: FloatArray, *,
                lengths: Optional[npt.ArrayLike] = None
                ) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def gru_backward(
    dh_out: FloatArray, hs: FloatArray, gates: FloatArray, hn: FloatArray, Whh: FloatArray, *,
    dh_last: Optional[FloatArray] = None, carry: Optional[npt.ArrayLike] = None,
    lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]: ...
def gru_backward_window(
    dh_out: FloatArray, hs: FloatArray, gates: FloatArray, hn: FloatArray, Whh: FloatArray,
    window: Union[int, npt.ArrayLike], *, lengths: Optional[npt.ArrayLike] = None
) -> tuple[FloatArray, FloatArray, FloatArray]: ...

# the private typed implementations
def __getattr__(name: str) -> Any: ...
