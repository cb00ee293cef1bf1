# The compiled normalized/regularized layer kernels (pyx/cyrnn/_recurrence.pyx): the same
# signatures as their NumPy twins in cyrnn.kernels.numpy_recurrence, which document them.
from typing import Any, Optional

import numpy.typing as npt

from cyrnn._typing import FloatArray

def recurrence_forward(
    cell: int, P: FloatArray, h0: FloatArray, c0: Optional[FloatArray], Whh: FloatArray,
    bhn: Optional[FloatArray], *, act: tuple = (0, 0.0), norm: int = 0,
    gh: Optional[FloatArray] = None, gc: Optional[FloatArray] = None,
    bc: Optional[FloatArray] = None, stats: Optional[tuple] = None,
    rmask: Optional[FloatArray] = None, zh: Optional[FloatArray] = None,
    zc: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None
) -> dict[str, Any]: ...
def recurrence_backward(
    cell: int, rec: dict[str, Any], dh_out: FloatArray, Whh: FloatArray, *,
    act: tuple = (0, 0.0), norm: int = 0, gh: Optional[FloatArray] = None,
    gc: Optional[FloatArray] = None, bc: Optional[FloatArray] = None,
    rmask: Optional[FloatArray] = None, zh: Optional[FloatArray] = None,
    zc: Optional[FloatArray] = None, lengths: Optional[npt.ArrayLike] = None,
    carry: Optional[npt.ArrayLike] = None
) -> tuple: ...
def layer_norm_rows(x: FloatArray, gain: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def layer_norm_rows_backward(dy: FloatArray, xhat: FloatArray, rstd: FloatArray,
                             gain: FloatArray) -> tuple[FloatArray, FloatArray]: ...
