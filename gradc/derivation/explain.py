"""derivation stage: the derived equations as readable text (``Program.explain``)."""

from __future__ import annotations

import re

import sympy as sp

from ..graph.nodes import Leaf, Map, MatMul, Node, Transpose
from .names import display_names
from .program import Derivation

__all__ = ["explain"]

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _pretty(text: str) -> str:
    # Iverson brackets for step functions: Piecewise((1, a > 0), (0, True)) → [a > 0]
    text = re.sub(r"Piecewise\(\(1, ([^()]*)\), \(0, True\)\)", r"[\1]", text)
    text = re.sub(r"\*\*(\d+)", lambda m: m.group(1).translate(_SUPERSCRIPT), text)
    return text.replace("*", "·")


def _latexify(text: str) -> str:
    out = text.replace("δ", r"\delta ").replace("Σₙ", r"\sum_n").replace("·", r" \cdot ")
    out = out.replace("ᵀ", "^{\\top}").replace("∂", r"\partial ").replace("⊙", r"\odot")
    out = re.sub(r"\*\*(\d+)", r"^{\1}", out).replace("*", r" \cdot ")
    return out


def explain(deriv: Derivation, latex: bool = False) -> str:
    """Forward equations, then each δ in terms of the next and each gradient in terms of δ.

    >>> import sympy as sp, gradc as gc
    >>> w, x, y = sp.symbols("w x y")
    >>> prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    >>> "∂L/∂w" in prog.explain()
    True
    """
    names = display_names(deriv)
    seed = deriv.seed

    def symbolic(node: Node) -> sp.Expr:
        """Named nodes as symbols, unnamed Maps composed in, so SymPy tidies the algebra."""
        n = names.get(node.id)
        if node is seed:
            return 1 / sp.Symbol("n") if seed.batched else sp.Integer(1)
        if n is not None:
            return sp.Symbol(n)
        if isinstance(node, Map):
            return node.fn.expr.xreplace(
                {v: symbolic(a) for v, a in zip(node.fn.variables, node.args)}
            )
        return sp.Symbol(formula(node))

    def formula(node: Node) -> str:
        if isinstance(node, Map) and node.elementwise is None:
            return sp.sstr(symbolic_body(node))
        return node.formula(name)

    def symbolic_body(node: Map) -> sp.Expr:
        return node.fn.expr.xreplace({v: symbolic(a) for v, a in zip(node.fn.variables, node.args)})

    def name(node: Node) -> str:
        n = names.get(node.id)
        if n is not None:
            return n
        inner = formula(node)
        return inner if isinstance(node, (Transpose, MatMul, Map)) else f"({inner})"

    def shown(node: Node) -> bool:
        return names.get(node.id) is not None and not isinstance(node, (Leaf, Transpose))

    lines = []
    fmt = _latexify if latex else _pretty
    lines.append(f"Forward, one sample (strategy: {deriv.strategy}):")
    for node in deriv.forward:
        if shown(node):
            lines.append(_row(fmt(f"{names[node.id]} = {formula(node)}"), node, latex))
    if deriv.strategy == "naive":
        lines.append("Backward: one independent derivative per parameter entry (nothing shared):")
    else:
        lines.append(
            "Backward, shared δ — each computed once, reused by every gradient that needs it:"
        )
    if seed.batched:
        lines.append(fmt("  δL = 1/n   (the loss is averaged over the n samples of a batch)"))
    else:
        lines.append(fmt("  δL = 1"))
    for node in deriv.backward:
        if shown(node):
            lines.append(_row(fmt(f"{names[node.id]} = {formula(node)}"), node, latex, _why(node)))
    for k, g in enumerate(deriv.grads):
        p = deriv.graph.params[k]
        if g is None:
            lines.append(fmt(f"  ∂L/∂{p.label} = 0   (the loss does not depend on {p.label})"))
        elif not shown(g):
            lines.append(fmt(f"  ∂L/∂{p.label} = {name(g)}"))
    return "\n".join(lines)


def _why(node: Node) -> str:
    if isinstance(node, MatMul) and node.contract:
        return "outer product δ·xᵀ summed over the batch: assign blame"
    if isinstance(node, MatMul):
        return "Wᵀ·δ: pass the message on"
    if isinstance(node, Map) and len(node.args) >= 2 and node.args[1] is not None:
        return ""
    return ""


def _row(text: str, node: Node, latex: bool, why: str = "") -> str:
    dims = f"{node.shape[0]}×{node.shape[1]}" + (" per sample" if node.batched else "")
    if latex:
        return f"  {text} \\quad ({dims})"
    note = f"   [{why}]" if why else ""
    return f"  {text:<48} ({dims}){note}"
