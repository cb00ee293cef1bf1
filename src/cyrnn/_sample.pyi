# The compiled sampling kernel (pyx/cyrnn/_sample.pyx): the same signature as its NumPy twin in
# cyrnn.kernels.numpy_sample, which documents it.
from typing import Any

import numpy.typing as npt

from cyrnn._typing import FloatArray, IntArray, Nonlinearity

def sample_tokens(WxhT: FloatArray, bh: FloatArray, Whh: FloatArray, Why: FloatArray,
                  by: FloatArray, h0: FloatArray, first_id: int, uniforms: npt.ArrayLike,
                  nonlinearity: Nonlinearity = "tanh", *, negative_slope: float = 0.01,
                  temperature: float = 1.0, top_k: int = 0) -> tuple[IntArray, FloatArray]: ...

# the private entry points
def __getattr__(name: str) -> Any: ...
