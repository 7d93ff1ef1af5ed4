"""Type aliases of fastnn's public signatures (for annotations only: every alias is
a plain typing expression, nothing here changes behaviour)."""

from typing import TYPE_CHECKING, Any, Dict, Literal, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .backends.reference import NumpyBackend

__all__ = ["Array", "ArrayLike", "Backend", "BackendName", "Config", "DTypeLike", "EstimatorInit",
           "HiddenActivation", "IntPair", "Logs", "Padding", "RandomState", "Shape", "StateSpec",
           "TensorSpec", "Workspace"]

# a float32 or float64 array (int64 for token inputs): the arrays kernels and layers take
Array = NDArray[Any]
# every backend is a NumpyBackend (the reference) or a subclass overriding some kernels; its
# kernels are attached from their declarations (fastnn.backends.spec), so a checker sees them as Any
if TYPE_CHECKING:
    class Backend(NumpyBackend):
        fast: Any

        def __getattr__(self, name: str) -> Any: ...
else:
    Backend = NumpyBackend
# a per-sample shape without the batch axis: (784,), (28, 28, 1), (T, F)
Shape = Tuple[int, ...]
# a layer's buffers for one batch size, by name (arrays, and the flags and caches a backward pass reads)
Workspace = Dict[str, Any]
# an object's options as saved and rebuilt (a layer's config(), an optimizer's, a loss's)
Config = Dict[str, Any]
# the values a callback hook receives: 'loss', 'val_loss', metrics, 'lr'
Logs = Dict[str, Any]
# (name, shape, role) of a trained tensor, role one of fastnn.nn.layers.ROLES
TensorSpec = Tuple[str, Tuple[int, ...], str]
# (name, shape, initial value) of a non-trained state tensor
StateSpec = Tuple[str, Tuple[int, ...], float]
# the random generators initialisers and searches draw from
RandomState = Union[np.random.Generator, np.random.RandomState]
# a size given once for both spatial axes or as (height, width): kernel_size, strides, pool_size
IntPair = Union[int, Tuple[int, int]]
# a convolution's or pooling's padding: by name, or zeros added on each side (once, or (height, width))
Padding = Union[Literal["valid", "same"], int, Tuple[int, int]]
# the names of fixed option sets
BackendName = Literal["numpy", "numba", "c"]
# an estimator's hidden activation (fastnn.estimators.HIDDEN_ACTIVATIONS), solver and initialiser
HiddenActivation = Literal["identity", "logistic", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu"]
Solver = Literal["lbfgs", "sgd", "adam", "rmsprop", "adagrad", "adamw"]
EstimatorInit = Literal["sklearn", "he", "lecun", "glorot"]
