"""derivation stage: the naive strategy — the seeds' "traditional way".

Expand the per-sample loss to scalars (``as_explicit``) and take one independent
``sympy.diff`` per scalar parameter entry, following every path from that
weight to the loss. Nothing is shared between entries: the same partial
products are derived, stored and evaluated again and again. This is the cost
that reverse mode's shared δ avoids; gradc builds it to measure it.
"""

from __future__ import annotations

import time

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from ..errors import GradcError
from ..graph.lower import Graph, topological_order
from ..graph.nodes import EntrySum, Leaf
from ..spec.reductions import LogSumExp, MatrixSum
from .program import Derivation

__all__ = ["DEFAULT_LIMIT", "derive_naive", "expand_loss", "naive_gradients"]

# refuse above this many (parameter entries × operations of the expanded loss)
DEFAULT_LIMIT = 2_000_000


def _expand(expr):
    """Replace matrix reductions by explicit sums over entries, recursively."""
    return expr.replace(lambda e: isinstance(e, (MatrixSum, LogSumExp)), lambda e: e.doit())


def expand_loss(graph: Graph) -> sp.Expr:
    """The per-sample loss written out entry by entry."""
    expr = _expand(graph.spec.objective)
    return expr.doit() if expr.has(sp.MatrixExpr) else expr


def param_entries(leaf: Leaf) -> list[list[sp.Expr]]:
    s = leaf.symbol
    if isinstance(s, sp.MatrixSymbol):
        return [[s[i, j] for j in range(s.shape[1])] for i in range(s.shape[0])]
    return [[s]]


def naive_gradients(graph: Graph, limit: int | None = None):
    """Per parameter, the rows of independent derivatives; plus the expanded loss."""
    limit = DEFAULT_LIMIT if limit is None else int(limit)
    loss = expand_loss(graph)
    entries = sum(p.size for p in graph.params)
    size = sp.count_ops(loss)
    if entries * size > limit:
        raise GradcError(
            f"the naive strategy would differentiate a {size:,}-operation expansion "
            f"{entries:,} times ({entries * size:,} > naive_limit={limit:,}); "
            "use strategy='shared' or raise naive_limit"
        )
    # differentiate with respect to real stand-ins: for a symbol of unknown realness
    # SymPy's derivative of Abs or sign brings in re() and im()
    real = {}
    for leaf in graph.params + graph.inputs + graph.targets:
        for row in param_entries(leaf):
            for e in row:
                real[e] = sp.Dummy(str(e), real=True)
    back = {v: k for k, v in real.items()}
    real_loss = loss.xreplace(real)
    grads = []
    for leaf in graph.params:
        grads.append(
            [
                [sp.diff(real_loss, real[e]).xreplace(back) for e in row]
                for row in param_entries(leaf)
            ]
        )
    return grads, loss


def derive_naive(graph: Graph, limit: int | None = None) -> Derivation:
    """One ``sympy.diff`` per parameter entry, each printed on its own.

    >>> import sympy as sp, gradc as gc
    >>> from gradc.graph.lower import lower
    >>> w = sp.Symbol("w")
    >>> derive_naive(lower(gc.Spec(w**3, params=[w]))).grads[0].exprs
    [[3*w**2]]
    """
    start = time.perf_counter()
    grads_exprs, _ = naive_gradients(graph, limit)
    leaves = graph.params + graph.inputs + graph.targets
    by_symbol = {leaf.symbol: leaf for leaf in leaves}
    batched = bool(graph.inputs or graph.targets) and graph.loss.batched
    grads = []
    for leaf, rows in zip(graph.params, grads_exprs):
        used = set()
        for row in rows:
            for e in row:
                for a in e.free_symbols:
                    base = a.parent if isinstance(a, MatrixElement) else a
                    used.add(base)
                for m in e.atoms(MatrixElement):
                    used.add(m.parent)
        args = [by_symbol[s] for s in used if s in by_symbol]
        args.sort(key=lambda n: leaves.index(n))
        grads.append(EntrySum(rows, args, leaf.shape, batched, label=f"∂L/∂{leaf.label}"))
    forward = topological_order([graph.loss] + ([graph.output] if graph.output else []))
    seed = Leaf("seed", (1, 1), graph.loss.batched, label="1/n" if graph.loss.batched else "1")
    return Derivation(
        graph=graph,
        strategy="naive",
        forward=forward,
        backward=list(grads),
        seed=seed,
        grads=list(grads),
        delta_of={},
        seconds=time.perf_counter() - start,
    )
