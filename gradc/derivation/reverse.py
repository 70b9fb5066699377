"""derivation stage: reverse mode with shared δ — where each δ is computed once.

Walk the graph from the loss back to the parameters; every node gets one
adjoint δ, the sum of its consumers' contributions, and every gradient that
needs it reads that same node. This is the seeds' δ recursion
δˡ = (Wˡ⁺¹)ᵀ δˡ⁺¹ ⊙ f′(zˡ), for any graph.
"""

from __future__ import annotations

import time

import sympy as sp

from ..errors import GradcError
from ..graph.lower import Graph, make_map, topological_order
from ..graph.nodes import Leaf, Map, Node, Transpose
from .program import Derivation
from .rules import VJP

__all__ = ["derive_shared"]


def _on_path_from(graph: Graph, roles: tuple[str, ...]) -> set[int]:
    """Ids of nodes that depend on a leaf of these roles (only they need a δ)."""
    live: set[int] = set()
    for node in graph.order:
        if (isinstance(node, Leaf) and node.role in roles) or any(a.id in live for a in node.args):
            live.add(node.id)
    return live


def _stored(delta: Node, leaf: Leaf) -> Node:
    """A δ the kernels can hand back as an array: a view (``Transpose``) or the
    seed itself becomes a copy of its own."""
    if isinstance(delta, (Leaf, Transpose)):
        d = sp.Dummy("d", real=True)
        return Map(sp.Lambda((d,), d), (delta,), leaf.shape)
    return delta


def derive_shared(graph: Graph, *, inputs: bool = False) -> Derivation:
    """Reverse-mode derivation of ``graph.loss`` with respect to every parameter,
    and with ``inputs=True`` also to every input: ∂L/∂x, the δ the seeds pass on
    to the data (the sweep that a program's own gradients leave out, since data
    needs none).

    >>> import sympy as sp, gradc as gc
    >>> from gradc.graph.lower import lower
    >>> w = sp.Symbol("w")
    >>> d = derive_shared(lower(gc.Spec(w**2, params=[w])))
    >>> len(d.grads)
    1
    """
    start = time.perf_counter()
    forward = topological_order([graph.loss] + ([graph.output] if graph.output else []))
    live = _on_path_from(graph, ("param", "input") if inputs else ("param",))
    seed = Leaf("seed", (1, 1), graph.loss.batched, label="1/n" if graph.loss.batched else "1")
    adjoint: dict[int, Node] = {graph.loss.id: seed}
    for node in reversed(topological_order([graph.loss])):
        delta = adjoint.get(node.id)
        if delta is None or not node.args:
            continue
        rule = VJP.get(type(node))
        if rule is None:
            raise GradcError(f"no derivative rule for node kind {type(node).__name__}")
        contributions = rule(node, delta, lambda a: a.id in live)
        for arg, c in zip(node.args, contributions):
            if c is None:
                continue
            prev = adjoint.get(arg.id)
            if prev is None:
                adjoint[arg.id] = c
            else:
                u, v = sp.Dummy("u", real=True), sp.Dummy("v", real=True)
                adjoint[arg.id] = make_map(sp.Lambda((u, v), u + v), (prev, c), arg.shape)
    grads = [adjoint.get(p.id) for p in graph.params]
    input_grads: list[Node | None] = []
    if inputs:
        input_grads = [
            None if x.id not in adjoint else _stored(adjoint[x.id], x) for x in graph.inputs
        ]
    roots = [g for g in grads + input_grads if g is not None]
    known = {n.id for n in forward}
    backward = [n for n in topological_order(roots) if n.id not in known and n is not seed]
    return Derivation(
        graph=graph,
        strategy="shared",
        forward=forward,
        backward=backward,
        seed=seed,
        grads=grads,
        input_grads=input_grads,
        delta_of={k: v for k, v in adjoint.items()},
        seconds=time.perf_counter() - start,
    )
