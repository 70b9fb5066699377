"""spec stage: reductions of a matrix expression to a scalar SymPy expression.

``MatrixSum`` and ``LogSumExp`` are small ``sp.Expr`` classes holding a
``MatrixExpr``; the graph stage lowers them to reduction nodes, and ``doit()``
expands them entry by entry (what the naive strategy and SymPy's own ``diff``
work on).
"""

from __future__ import annotations

import sympy as sp

__all__ = ["LogSumExp", "MatrixSum", "logsumexp", "sum"]


class _MatrixReduction(sp.Expr):
    is_commutative = True
    is_real = True
    _name = ""

    def __new__(cls, arg):
        arg = sp.sympify(arg)
        return sp.Expr.__new__(cls, arg)

    @property
    def arg(self) -> sp.MatrixExpr:
        return self.args[0]

    def _entries(self):
        return list(sp.Matrix(self.arg.as_explicit()))

    def _eval_derivative(self, s):
        return self.doit().diff(s)

    def _sympystr(self, printer):
        return f"{self._name}({printer._print(self.arg)})"

    def _latex(self, printer):
        return rf"\operatorname{{{self._name}}}\left({printer._print(self.arg)}\right)"


class MatrixSum(_MatrixReduction):
    """Σ of all entries of a matrix expression.

    >>> import sympy as sp
    >>> M = sp.MatrixSymbol("M", 2, 1)
    >>> MatrixSum(M).doit()
    M[0, 0] + M[1, 0]
    """

    _name = "sum"

    def doit(self, **hints):
        return sp.Add(*self._entries())


class LogSumExp(_MatrixReduction):
    """log Σ exp of the entries of a matrix expression (evaluated stably in kernels).

    >>> import sympy as sp
    >>> v = sp.MatrixSymbol("v", 2, 1)
    >>> LogSumExp(v).doit()
    log(exp(v[0, 0]) + exp(v[1, 0]))
    """

    _name = "logsumexp"

    def doit(self, **hints):
        return sp.log(sp.Add(*[sp.exp(e) for e in self._entries()]))


def sum(m):
    """Sum of all entries of ``m`` (a matrix expression); a scalar is returned as is.

    >>> import sympy as sp, gradc as gc
    >>> gc.sum(sp.MatrixSymbol("a", 3, 1))
    sum(a)
    """
    m = sp.sympify(m)
    if isinstance(m, sp.MatrixBase):
        return sp.Add(*list(m))
    if isinstance(m, sp.MatrixExpr):
        return MatrixSum(m)
    return m


def logsumexp(v):
    """log Σᵢ exp(vᵢ) of a matrix expression; a scalar is returned as is.

    >>> import sympy as sp, gradc as gc
    >>> gc.logsumexp(sp.MatrixSymbol("v", 3, 1))
    logsumexp(v)
    """
    v = sp.sympify(v)
    if isinstance(v, sp.MatrixBase):
        return sp.log(sp.Add(*[sp.exp(e) for e in v]))
    if isinstance(v, sp.MatrixExpr):
        return LogSumExp(v)
    return v
