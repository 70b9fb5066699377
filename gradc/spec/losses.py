"""spec stage: per-sample losses written in SymPy (gradc averages over a batch)."""

from __future__ import annotations

import sympy as sp

from ..errors import GradcError
from .elementwise import apply_elementwise
from .reductions import LogSumExp, MatrixSum

__all__ = ["binary_cross_entropy", "mse", "softmax_cross_entropy"]

_t = sp.Symbol("t", real=True)


def _pair(name: str, a, b):
    a, b = sp.sympify(a), sp.sympify(b)
    a_mat, b_mat = isinstance(a, sp.MatrixExpr), isinstance(b, sp.MatrixExpr)
    if a_mat != b_mat or (a_mat and a.shape != b.shape):
        sa = a.shape if a_mat else "scalar"
        sb = b.shape if b_mat else "scalar"
        raise GradcError(f"{name}: prediction {a} has shape {sa} but target {b} has shape {sb}")
    return a, b, a_mat


def mse(yhat, y):
    """½·Σ(ŷ − y)² for one sample.

    >>> import sympy as sp, gradc as gc
    >>> w, x, y = sp.symbols("w x y")
    >>> gc.mse(w * x, y)
    (w*x - y)**2/2
    """
    yhat, y, is_mat = _pair("mse", yhat, y)
    if is_mat:
        return MatrixSum(sp.HadamardPower(yhat - y, 2)) / 2
    return (yhat - y) ** 2 / 2


def softmax_cross_entropy(logits, y):
    """logsumexp(logits) − Σ y·logits (y one-hot or probabilities), evaluated stably.

    >>> import sympy as sp, gradc as gc
    >>> v, y = sp.MatrixSymbol("v", 3, 1), sp.MatrixSymbol("y", 3, 1)
    >>> gc.softmax_cross_entropy(v, y)
    logsumexp(v) - sum(y.*v)
    """
    logits, y, is_mat = _pair("softmax_cross_entropy", logits, y)
    if not is_mat:
        raise GradcError(f"softmax_cross_entropy needs a vector of logits, got the scalar {logits}")
    return LogSumExp(logits) - MatrixSum(sp.HadamardProduct(y, logits))


def binary_cross_entropy(p, y):
    """−Σ[y·log p + (1−y)·log(1−p)] for probabilities p in (0, 1).

    >>> import sympy as sp, gradc as gc
    >>> p, y = sp.symbols("p y")
    >>> gc.binary_cross_entropy(p, y)
    -y*log(p) - (1 - y)*log(1 - p)
    """
    p, y, is_mat = _pair("binary_cross_entropy", p, y)
    if not is_mat:
        return -y * sp.log(p) - (1 - y) * sp.log(1 - p)
    log_p = apply_elementwise(sp.Lambda(_t, sp.log(_t)), p)
    log_1mp = apply_elementwise(sp.Lambda(_t, sp.log(1 - _t)), p)
    ones = sp.OneMatrix(*p.shape)
    return -MatrixSum(sp.HadamardProduct(y, log_p) + sp.HadamardProduct(ones - y, log_1mp))
