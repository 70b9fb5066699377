"""kernels stage: small helpers every target's printer shares.

What is the same for the CPU and the CUDA printer lives here: the line
builder, comment sanitising, the inlined expression of a ``Map`` (with the
reads it needs), the scalar atoms of a naive ``EntrySum`` entry, and the
optimizer's update rule prepared for printing. Printing itself (loops, thread
indices, launches) stays in each target's module.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from ..graph.nodes import Leaf, Map, Node
from ..spec.optimizers import UpdateRule

__all__ = ["Lines", "UpdateForm", "comment_text", "entry_atoms", "is_seed", "map_expression"]


def is_seed(node: Node) -> bool:
    """The loss seed ∂L/∂L, printed as ``inv_n`` (the mean over the batch)."""
    return isinstance(node, Leaf) and node.role == "seed"


def comment_text(text: str) -> str:
    """User text made safe for a one-line comment."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))[:160]
    # also safe inside the module docstring: no escape sequences, no closing quotes
    return text.replace(BACKSLASH, BACKSLASH * 2).replace(QUOTES, "'" * 3)


BACKSLASH = chr(92)
QUOTES = chr(34) * 3


class Lines:
    """Source lines with an indentation depth; ``with out.indent():`` nests."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, text: str = "") -> None:
        self.lines.append(("    " * self.depth + text) if text else "")

    def indent(self):
        lines = self

        class _Block:
            def __enter__(self):
                lines.depth += 1

            def __exit__(self, *exc):
                lines.depth -= 1

        return _Block()

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def map_expression(
    node: Map, inlined: set[int]
) -> tuple[sp.Expr, list[tuple[sp.Symbol, Node, bool]]]:
    """The scalar body of ``node`` with inlined Maps substituted, and its reads.

    Each read is ``(symbol, arg, scalar)``: load ``arg``'s entry (its only entry
    when ``scalar``) into ``symbol`` before evaluating the body.
    """
    loads: dict[tuple[int, bool], sp.Symbol] = {}
    reads: list[tuple[sp.Symbol, Node, bool]] = []

    def load(arg: Node, scalar: bool) -> sp.Symbol:
        key = (arg.id, scalar)
        if key not in loads:
            loads[key] = sp.Symbol(f"a{len(loads)}")
            reads.append((loads[key], arg, scalar))
        return loads[key]

    def expr_of(n: Map, scalar: bool) -> sp.Expr:
        subs = {}
        for var, arg in zip(n.fn.variables, n.args):
            arg_scalar = scalar or arg.is_scalar
            if arg.id in inlined:
                subs[var] = expr_of(arg, arg_scalar)
            else:
                subs[var] = load(arg, arg_scalar)
        return n.fn.expr.xreplace(subs)

    return expr_of(node, node.is_scalar), reads


def entry_atoms(expr: sp.Expr, by_symbol: dict) -> list:
    """The leaf entries (``W[i, j]`` or scalar symbols) a naive gradient entry reads, sorted."""
    return sorted(expr.atoms(MatrixElement), key=str) + sorted(
        (s for s in expr.free_symbols if isinstance(s, sp.Symbol) and s in by_symbol),
        key=str,
    )


@dataclass
class UpdateForm:
    """An optimizer rule renamed for a kernel: ``th`` (θ), ``gr`` (g), ``st<j>``, ``hp<j>``.

    ``hoisted`` maps parts that depend only on hyperparameters and ``t``
    (Adam's 1 − β₁ᵗ) to names, so a kernel can compute them once per step;
    ``temps`` and ``values`` are the common subexpressions and the new value of
    each target, all in old values.
    """

    theta: sp.Symbol
    grad: sp.Symbol
    states: list[sp.Symbol]
    hypers: list[sp.Symbol]
    targets: list[sp.Symbol]
    hoisted: dict[sp.Expr, sp.Symbol]
    temps: list[tuple[sp.Symbol, sp.Expr]]
    values: list[sp.Expr]

    @classmethod
    def of(cls, rule: UpdateRule) -> UpdateForm:
        theta, g = sp.Symbol("th"), sp.Symbol("gr")
        states = [sp.Symbol(f"st{j}") for j in range(len(rule.state_names))]
        hypers = [sp.Symbol(f"hp{j}") for j in range(len(rule.hyper_names))]
        subs = {rule.theta: theta, rule.g: g, rule.t: sp.Symbol("t")}
        subs.update(dict(zip(rule.state_syms, states)))
        subs.update(dict(zip(rule.hyper_syms, hypers)))
        targets = [subs[tgt] for tgt, _ in rule.assignments]
        exprs = [e.xreplace(subs) for _, e in rule.assignments]
        per_entry = {theta, g, *states}
        hoisted: dict[sp.Expr, sp.Symbol] = {}

        def hoist(e: sp.Expr) -> sp.Expr:
            if not e.args or isinstance(e, sp.Symbol):
                return e
            if not (e.free_symbols & per_entry):
                if e not in hoisted:
                    hoisted[e] = sp.Symbol(f"h{len(hoisted)}")
                return hoisted[e]
            return e.func(*[hoist(a) for a in e.args])

        exprs = [hoist(e) for e in exprs]
        temps, values = sp.cse(exprs, symbols=sp.numbered_symbols("t_"), optimizations="basic")
        return cls(theta, g, states, hypers, targets, hoisted, temps, list(values))

    @property
    def descent_rate(self) -> sp.Expr | None:
        """η when the rule is plain gradient descent, θ ← θ − η·g with no state and
        η free of θ and g (in hyperparameters and hoisted names); else None."""
        if self.states:
            return None
        new = self.values[self.targets.index(self.theta)]
        for t_sym, e in reversed(self.temps):
            new = new.xreplace({t_sym: e})
        rate = -sp.diff(new, self.grad)
        if rate.free_symbols & {self.theta, self.grad}:
            return None
        if sp.expand(new - (self.theta - rate * self.grad)) != 0:
            return None
        return rate

    def new_values(self, doprint) -> list[str]:
        """The lines computing every target's new value (``new_th``, ``new_st0``…)
        from the old ones, ``doprint`` printing each expression."""
        lines = [f"{t_sym} = {doprint(e)}" for t_sym, e in self.temps]
        lines += [f"new_{tgt} = {doprint(e)}" for tgt, e in zip(self.targets, self.values)]
        return lines
