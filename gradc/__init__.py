"""gradc: SymPy spec → shared-δ backpropagation → Numba kernels.

>>> import sympy as sp, gradc as gc
>>> w1, w2 = sp.symbols("w1 w2")
>>> prog = gc.compile(w1**2 + w2**2 + 2*w2 + 5, params=[w1, w2])
>>> params = prog.init({w1: -2.0, w2: 3.0})
>>> hist = prog.fit(params, steps=20, optimizer=gc.SGD(lr=0.1))
>>> round(float(params["w1"]), 4), round(float(params["w2"]), 4)
(-0.0231, -0.9539)
"""

from .errors import GradcError
from .program.check import check_grad
from .program.compile import compile
from .program.history import History
from .program.program import Program
from .spec.elementwise import (
    Elementwise,
    elementwise,
    identity,
    leaky_relu,
    relu,
    sigmoid,
    softplus,
    tanh,
)
from .spec.layers import Dense, Sequential
from .spec.losses import binary_cross_entropy, mse, softmax_cross_entropy
from .spec.model import Spec
from .spec.optimizers import SGD, Adam, Momentum, Optimizer
from .spec.reductions import logsumexp, sum

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "Dense",
    "Elementwise",
    "GradcError",
    "History",
    "Momentum",
    "Optimizer",
    "Program",
    "Sequential",
    "Spec",
    "binary_cross_entropy",
    "check_grad",
    "compile",
    "elementwise",
    "identity",
    "leaky_relu",
    "logsumexp",
    "mse",
    "relu",
    "sigmoid",
    "softmax_cross_entropy",
    "softplus",
    "sum",
    "tanh",
]
