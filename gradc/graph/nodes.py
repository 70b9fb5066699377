"""graph stage: the small typed nodes that the spec is lowered into.

::

    Node                      shape (rows, cols) of ONE sample; batched = depends on data
    ├── Leaf                  param / input / target / const / seed (δ of the loss, 1/n)
    ├── Map                   elementwise SymPy Lambda over same-shaped (or scalar) args
    ├── MatMul                A·B per sample, or Σₙ Aₙ·Bₙ over the batch (contract=True)
    ├── Transpose             a view: no storage of its own
    ├── SumAll                Σ of the entries of one sample → scalar
    ├── LogSumExp             log Σ exp of the entries of one sample → scalar (stable)
    ├── BatchSum              Σ over the samples of a batch → unbatched
    └── EntrySum              naive strategy: one scalar expression per gradient entry

Derivation builds its adjoint (δ) nodes from the same classes, so the kernel
printers and the operation counter treat forward and backward alike.
A batched node must be a column or row vector (or a scalar) per sample.
"""

from __future__ import annotations

import itertools

import sympy as sp

__all__ = [
    "BatchSum",
    "EntrySum",
    "Leaf",
    "LogSumExp",
    "Map",
    "MatMul",
    "Node",
    "SumAll",
    "Transpose",
]

_ids = itertools.count()


class Node:
    __slots__ = ("args", "batched", "id", "label", "shape")

    def __init__(self, args: tuple[Node, ...], shape: tuple[int, int], batched: bool, label=""):
        self.id = next(_ids)
        self.args = tuple(args)
        self.shape = (int(shape[0]), int(shape[1]))
        self.batched = bool(batched)
        self.label = label

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def is_scalar(self) -> bool:
        return self.shape == (1, 1)

    def formula(self, name) -> str:  # one-line equation in terms of the args' names
        return f"{type(self).__name__}({', '.join(name(a) for a in self.args)})"

    def __repr__(self) -> str:
        dims = f"{self.shape[0]}×{self.shape[1]}" + (", batched" if self.batched else "")
        return f"{self.label or f'n{self.id}'} = {self.formula(lambda a: a.label or f'n{a.id}')} ({dims})"


class Leaf(Node):
    """A value the kernels receive: a parameter, an input, a target, a constant or the seed."""

    __slots__ = ("index", "role", "symbol", "value")

    def __init__(
        self, role: str, shape, batched: bool, *, symbol=None, index=0, value=None, label=""
    ):
        super().__init__((), shape, batched, label)
        self.role = role  # "param" | "input" | "target" | "const" | "seed"
        self.symbol = symbol
        self.index = index
        self.value = value  # numpy array for constants

    def formula(self, name) -> str:
        return self.role


class Map(Node):
    """out = f(a₀, a₁, …) entry by entry; scalar args broadcast."""

    __slots__ = ("elementwise", "fn")

    def __init__(self, fn: sp.Lambda, args, shape=None, *, elementwise=None, label=""):
        args = tuple(args)
        if shape is None:
            shape = next((a.shape for a in args if not a.is_scalar), (1, 1))
        super().__init__(args, shape, any(a.batched for a in args), label)
        self.fn = fn
        self.elementwise = elementwise  # the table row, for one-argument registered functions

    def formula(self, name) -> str:
        if self.elementwise is not None:
            return f"{self.elementwise.name}({name(self.args[0])})"
        body = self.fn.expr.xreplace(
            {v: sp.Symbol(name(a)) for v, a in zip(self.fn.variables, self.args)}
        )
        return sp.sstr(body)


class MatMul(Node):
    """A·B for each sample; with ``contract`` the products are summed over the batch."""

    __slots__ = ("contract",)

    def __init__(self, a: Node, b: Node, *, contract: bool = False, label=""):
        batched = (a.batched or b.batched) and not contract
        super().__init__((a, b), (a.shape[0], b.shape[1]), batched, label)
        self.contract = contract

    def formula(self, name) -> str:
        a, b = self.args
        core = f"{name(a)}·{name(b)}"
        return f"Σₙ {core}" if self.contract else core


class Transpose(Node):
    __slots__ = ()

    def __init__(self, a: Node, label=""):
        super().__init__((a,), (a.shape[1], a.shape[0]), a.batched, label)

    def formula(self, name) -> str:
        return f"{name(self.args[0])}ᵀ"


class SumAll(Node):
    __slots__ = ()

    def __init__(self, a: Node, label=""):
        super().__init__((a,), (1, 1), a.batched, label)

    def formula(self, name) -> str:
        return f"Σ {name(self.args[0])}"


class LogSumExp(Node):
    __slots__ = ()

    def __init__(self, a: Node, label=""):
        super().__init__((a,), (1, 1), a.batched, label)

    def formula(self, name) -> str:
        return f"logsumexp({name(self.args[0])})"


class BatchSum(Node):
    __slots__ = ()

    def __init__(self, a: Node, label=""):
        super().__init__((a,), a.shape, False, label)

    def formula(self, name) -> str:
        return f"Σₙ {name(self.args[0])}"


class EntrySum(Node):
    """Naive strategy only: entry (r, c) is Σₙ of its own scalar SymPy expression
    over entries of the leaves in ``args`` (``MatrixElement`` / ``Symbol`` atoms).
    Every entry is computed on its own: nothing is shared between entries."""

    __slots__ = ("atoms", "exprs")

    def __init__(self, exprs, args, shape, batched_input: bool, label=""):
        super().__init__(tuple(args), shape, False, label)
        self.exprs = exprs  # list of rows of sympy expressions
        self.atoms = batched_input  # whether the expressions read per-sample data

    def formula(self, name) -> str:
        return "Σₙ [one sympy.diff per entry]"
