"""derivation stage: one vector-Jacobian rule per node kind.

A rule receives the node, the δ of its output and a ``needs(arg)`` predicate,
and returns one contribution per argument (``None`` where the argument needs no
gradient). Contributions are new nodes of the graph's own kinds.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from ..errors import GradcError
from ..graph.lower import make_map
from ..graph.nodes import BatchSum, LogSumExp, Map, MatMul, Node, SumAll, Transpose

__all__ = ["VJP", "reduce_to"]

VJP: dict[type, Callable] = {}


def rule(kind: type):
    def register(fn):
        VJP[kind] = fn
        return fn

    return register


def reduce_to(contribution: Node, arg: Node) -> Node:
    """Sum a contribution down to the argument's shape and batchedness (undo broadcasting)."""
    if arg.is_scalar and not contribution.is_scalar:
        contribution = SumAll(contribution)
    if contribution.batched and not arg.batched:
        contribution = BatchSum(contribution)
    return contribution


_d = sp.Dummy("d", real=True)
_y = sp.Dummy("y", real=True)


@rule(Map)
def _map(node: Map, delta: Node, needs) -> list[Node | None]:
    """δ_argₖ = δ_out ⊙ ∂f/∂argₖ; σ′ and friends are read through the forward value."""
    out = []
    row = node.elementwise
    for var, arg in zip(node.fn.variables, node.args):
        if not needs(arg):
            out.append(None)
            continue
        if row is not None and row.deriv_via_out is not None:
            partial = row.deriv_via_out(_y)
            fn, args = sp.Lambda((_d, _y), _d * partial), (delta, node)
        else:
            partial = sp.diff(node.fn.expr, var)
            if partial.has(sp.Derivative, sp.Subs):
                shown = {
                    v: sp.Symbol(a.label or f"t{k}")
                    for k, (v, a) in enumerate(zip(node.fn.variables, node.args))
                }
                raise GradcError(
                    f"SymPy finds no derivative of {node.fn.expr.xreplace(shown)} "
                    f"with respect to {shown[var]}"
                )
            if partial == 0:
                out.append(None)
                continue
            if partial == 1:
                out.append(reduce_to(delta, arg))
                continue
            fn = sp.Lambda((_d, *node.fn.variables), _d * partial)
            args = (delta, *node.args)
        used = [(v, a) for v, a in zip(fn.variables, args) if v in fn.expr.free_symbols]
        contrib = make_map(
            sp.Lambda(tuple(v for v, _ in used), fn.expr), [a for _, a in used], node.shape
        )
        out.append(reduce_to(contrib, arg))
    return out


@rule(MatMul)
def _matmul(node: MatMul, delta: Node, needs) -> list[Node | None]:
    """Matmul is bilinear. For z = W·x:
    ∂L/∂W = δ·xᵀ, summed over the batch ("assign blame");
    ∂L/∂x = Wᵀ·δ ("pass the message on").
    """
    a, b = node.args
    da = db = None
    if node.contract:
        raise GradcError("second derivatives through a batch contraction are not supported")
    if needs(a):
        da = _product(delta, Transpose(b) if not b.is_scalar else b, a)
    if needs(b):
        db = _product(Transpose(a) if not a.is_scalar else a, delta, b)
    return [da, db]


def _product(left: Node, right: Node, target: Node) -> Node:
    """left·right as the δ of ``target``: a batch contraction when a parameter's δ
    is built from per-sample factors, a scaled copy when one factor is 1×1."""
    if left.batched and right.batched and not target.batched:
        return MatMul(left, right, contract=True)  # Σₙ δₙ·xₙᵀ
    if left.is_scalar or right.is_scalar:
        s, m = (left, right) if left.is_scalar else (right, left)
        u, c = sp.Dummy("u", real=True), sp.Dummy("c", real=True)
        return reduce_to(make_map(sp.Lambda((c, u), c * u), (s, m), target.shape), target)
    return reduce_to(MatMul(left, right), target)


@rule(Transpose)
def _transpose(node: Transpose, delta: Node, needs):
    return [Transpose(delta) if not delta.is_scalar else delta]


@rule(SumAll)
def _sum(node: SumAll, delta: Node, needs):
    (a,) = node.args
    return [make_map(sp.Lambda((_d,), _d), (delta,), a.shape) if not a.is_scalar else delta]


@rule(LogSumExp)
def _logsumexp(node: LogSumExp, delta: Node, needs):
    """δ_v = δ · softmax(v) = δ · exp(v − logsumexp(v)), reading the forward value."""
    (v,) = node.args
    d, x, m = sp.Dummy("d", real=True), sp.Dummy("v", real=True), sp.Dummy("l", real=True)
    return [make_map(sp.Lambda((d, x, m), d * sp.exp(x - m)), (delta, v, node), v.shape)]


@rule(BatchSum)
def _batchsum(node: BatchSum, delta: Node, needs):
    raise GradcError("second derivatives through a sum over the batch are not supported")
