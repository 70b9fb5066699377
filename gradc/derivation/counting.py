"""derivation stage: one honest operation count for both strategies.

Counts come from the derived expressions the kernels are printed from:
multiplications (and divisions, integer powers), additions (and subtractions,
negations), function calls (exp, log, tanh, …). A matrix product counts its
scalar multiply-adds. Counts are per sample (a batch of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from ..graph.nodes import BatchSum, EntrySum, Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose
from .program import Derivation

__all__ = ["OpCount", "count_derivation", "count_expr", "count_nodes"]


@dataclass(frozen=True)
class OpCount:
    mul: int = 0
    add: int = 0
    func: int = 0

    @property
    def total(self) -> int:
        return self.mul + self.add + self.func

    def __add__(self, other: OpCount) -> OpCount:
        return OpCount(self.mul + other.mul, self.add + other.add, self.func + other.func)

    def __mul__(self, k: int) -> OpCount:
        return OpCount(self.mul * k, self.add * k, self.func * k)


_MUL = {"MUL", "DIV", "POW"}
_ADD = {"ADD", "SUB", "NEG"}
_FREE = {"GT", "LT", "GE", "LE", "EQ", "NE", "AND", "OR", "NOT", "PIECEWISE"}


@lru_cache(maxsize=4096)
def count_expr(expr: sp.Expr) -> OpCount:
    """Operations of one scalar expression (after nothing: as written)."""
    visual = sp.count_ops(expr, visual=True)
    mul = add = func = 0
    for term in sp.Add.make_args(visual):
        coeff, sym = term.as_coeff_Mul()
        if not isinstance(sym, sp.Symbol):
            continue
        k = int(coeff)
        if sym.name in _MUL:
            mul += k
        elif sym.name in _ADD:
            add += k
        elif sym.name not in _FREE:
            func += k
    return OpCount(mul, add, func)


def cse_count(expr: sp.Expr) -> OpCount:
    """Operations of an expression after its own common subexpressions are named once."""
    temps, (reduced,) = sp.cse(expr, optimizations="basic")
    total = count_expr(reduced)
    for _, e in temps:
        total = total + count_expr(e)
    return total


def count_node(node: Node) -> OpCount:
    """Operations for one sample (unbatched nodes: once per step)."""
    if isinstance(node, (Leaf, Transpose)):
        return OpCount()
    if isinstance(node, Map):
        return cse_count(node.fn.expr) * node.size
    if isinstance(node, MatMul):
        a, b = node.args
        macs = a.shape[0] * b.shape[1] if node.contract else a.shape[0] * a.shape[1] * b.shape[1]
        return OpCount(macs, macs, 0)
    if isinstance(node, SumAll):
        return OpCount(0, node.args[0].size, 0)
    if isinstance(node, BatchSum):
        return OpCount(0, node.size, 0)
    if isinstance(node, LogSumExp):
        k = node.args[0].size
        return OpCount(0, 3 * k, k + 1)
    if isinstance(node, EntrySum):
        # each entry is CSE'd on its own, as the kernel prints it (nothing shared across entries)
        total = OpCount()
        for row in node.exprs:
            for e in row:
                total = total + cse_count(e) + OpCount(1, 1, 0)
        return total
    return OpCount()


def count_nodes(nodes) -> OpCount:
    total = OpCount()
    for n in nodes:
        total = total + count_node(n)
    return total


def count_derivation(deriv: Derivation, update_rule=None) -> dict[str, OpCount]:
    """Forward, backward and (given an optimizer rule) update counts."""
    out = {"forward": count_nodes(deriv.forward), "backward": count_nodes(deriv.backward)}
    if update_rule is not None:
        exprs = [e for _, e in update_rule.assignments]
        temps, reduced = sp.cse(exprs, optimizations="basic")
        per_entry = OpCount()
        for e in list(reduced) + [e for _, e in temps]:
            per_entry = per_entry + count_expr(e)
        entries = sum(p.size for p in deriv.graph.params)
        out["update"] = per_entry * entries
    return out
