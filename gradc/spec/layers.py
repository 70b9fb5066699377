"""spec stage: layer sugar that only builds SymPy matrix expressions (API form d)."""

from __future__ import annotations

import sympy as sp

from ..errors import GradcError
from .elementwise import Elementwise, identity

__all__ = ["Dense", "Sequential"]


class Dense:
    """A dense layer ``a = f(W·x + b)`` with W of shape (n_out, n_in), b (n_out, 1).

    Its symbols are created when a :class:`Sequential` places it (``W1``, ``b1``…,
    or ``W_<name>``, ``b_<name>`` when ``name`` is given).

    >>> import gradc as gc
    >>> gc.Dense(3, 4, gc.sigmoid)
    Dense(3 → 4, sigmoid)
    """

    def __init__(self, n_in: int, n_out: int, activation: Elementwise = identity, name=None):
        if int(n_in) < 1 or int(n_out) < 1:
            raise GradcError(f"Dense({n_in}, {n_out}): sizes must be positive integers")
        if not isinstance(activation, Elementwise):
            raise GradcError(
                f"Dense activation must be a gradc elementwise function (gc.sigmoid, "
                f"gc.elementwise(...)), got {activation!r}"
            )
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation = activation
        self.name = name
        self.W: sp.MatrixSymbol | None = None
        self.b: sp.MatrixSymbol | None = None

    def build(self, x: sp.MatrixExpr, index: int) -> sp.MatrixExpr:
        """Create W and b for position ``index`` (1-based) and return f(W·x + b)."""
        if x.shape != (self.n_in, 1):
            raise GradcError(
                f"layer {index} ({self!r}) expects an input of shape ({self.n_in}, 1), "
                f"got {x.shape}"
            )
        tag = str(index) if self.name is None else f"_{self.name}"
        self.W = sp.MatrixSymbol(f"W{tag}", self.n_out, self.n_in)
        self.b = sp.MatrixSymbol(f"b{tag}", self.n_out, 1)
        return self.activation(self.W * x + self.b)

    def __repr__(self) -> str:
        return f"Dense({self.n_in} → {self.n_out}, {self.activation.name})"


class Sequential:
    """Layers applied one after another to the input ``x`` (a column vector).

    Attributes: ``input`` (x), ``target`` (y), ``output`` (the SymPy matrix
    expression of the network), ``params`` (W1, b1, W2, b2, …).

    >>> import gradc as gc
    >>> net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    >>> [p.name for p in net.params]
    ['W1', 'b1', 'W2', 'b2']
    """

    def __init__(self, *layers: Dense, input_name: str = "x", target_name: str = "y"):
        if not layers:
            raise GradcError("Sequential needs at least one layer")
        self.layers = tuple(layers)
        self.input = sp.MatrixSymbol(input_name, layers[0].n_in, 1)
        self.target = sp.MatrixSymbol(target_name, layers[-1].n_out, 1)
        h: sp.MatrixExpr = self.input
        for i, layer in enumerate(self.layers, start=1):
            if not isinstance(layer, Dense):
                raise GradcError(f"Sequential: item {i} is not a gc.Dense layer: {layer!r}")
            h = layer.build(h, i)
        self.output = h
        self.params = [s for layer in self.layers for s in (layer.W, layer.b)]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0].n_in, *(layer.n_out for layer in self.layers))

    def __repr__(self) -> str:
        acts = ", ".join(layer.activation.name for layer in self.layers)
        return f"Sequential({'-'.join(map(str, self.sizes))}; {acts})"
