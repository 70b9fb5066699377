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
from ..graph.nodes import Leaf, Node
from .program import Derivation
from .rules import VJP

__all__ = ["derive_shared"]


def _on_param_path(graph: Graph) -> set[int]:
    """Ids of nodes that depend on a parameter (only they need a δ)."""
    live: set[int] = set()
    for node in graph.order:
        if (isinstance(node, Leaf) and node.role == "param") or any(
            a.id in live for a in node.args
        ):
            live.add(node.id)
    return live


def derive_shared(graph: Graph) -> Derivation:
    """Reverse-mode derivation of ``graph.loss`` with respect to every parameter.

    >>> import sympy as sp, gradc as gc
    >>> from gradc.graph.lower import lower
    >>> w = sp.Symbol("w")
    >>> d = derive_shared(lower(gc.Spec(w**2, params=[w])))
    >>> len(d.grads)
    1
    """
    start = time.perf_counter()
    forward = topological_order([graph.loss] + ([graph.output] if graph.output else []))
    live = _on_param_path(graph)
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
    roots = [g for g in grads if g is not None]
    known = {n.id for n in forward}
    backward = [n for n in topological_order(roots) if n.id not in known and n is not seed]
    return Derivation(
        graph=graph,
        strategy="shared",
        forward=forward,
        backward=backward,
        seed=seed,
        grads=grads,
        delta_of={k: v for k, v in adjoint.items()},
        seconds=time.perf_counter() - start,
    )
