"""Type aliases of the public signatures, for annotations only.

The string options are ``Literal`` types of the values the code checks against
(``tests/test_typing.py`` keeps the two in step). ``Optional`` and ``Union`` rather than ``X | Y``:
``typing.get_type_hints`` must evaluate the annotations on Python 3.9 too.
"""
import os
from typing import Any, Literal, Union

import numpy as np
import numpy.typing as npt

#: A float32 or float64 array.
FloatArray = npt.NDArray[np.floating[Any]]
#: An array of token ids or class ids.
IntArray = npt.NDArray[np.integer[Any]]
#: Parameters or gradients by name: ``Wxh``, ``Whh``, ``bh``, ``Why``, ``by`` (and ``h0``, ``x``).
ArrayDict = dict[str, FloatArray]
#: An int seed or a generator (``None``: fresh entropy).
Seed = Union[int, np.random.Generator, None]
#: A file name.
StrPath = Union[str, os.PathLike[str]]
#: Data for ``fit`` and ``evaluate``: a token stream (N,) of ids, or a dataset of sequences
#: ``(inputs, targets)`` / ``(inputs, targets, lengths)``.
Dataset = Union[
    IntArray,
    list[int],
    tuple[npt.ArrayLike, npt.ArrayLike],
    tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
]

Nonlinearity = Literal["tanh", "relu", "sigmoid", "leaky_relu", "identity"]
OutputName = Literal["linear", "softmax", "sigmoid"]
LossName = Literal["cross_entropy", "mse", "bce"]
StepLossName = Literal["cross_entropy", "mse"]
Reduction = Literal["mean", "sum"]
TargetSteps = Literal["all", "last"]
InitScheme = Literal["uniform", "xavier", "orthogonal", "identity", "normal"]
BackendName = Literal["cython", "numpy"]
NormName = Literal["layer", "batch"]
