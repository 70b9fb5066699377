"""program stage: initial parameter values.

A parameter multiplied into a product is a weight: He initialisation (normal,
std √(2/fan_in)) when the layer's activation is in the ReLU family, Glorot
(uniform, ±√(6/(fan_in+fan_out))) otherwise. Everything else (biases, scalar
parameters) starts at zero.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..graph.lower import Graph
from ..graph.nodes import Leaf, Map, MatMul, Node, Transpose

__all__ = ["initial_values"]

_RELU_FAMILY = ("relu", "leaky_relu")


def _consumers(graph: Graph) -> dict[int, list[Node]]:
    out: dict[int, list[Node]] = {}
    for node in graph.order:
        for a in node.args:
            out.setdefault(a.id, []).append(node)
    return out


def _activation_after(node: Node, consumers) -> str | None:
    """Name of the first elementwise function the product flows into (through adds)."""
    frontier, seen = [node], set()
    while frontier:
        n = frontier.pop()
        for c in consumers.get(n.id, []):
            if c.id in seen:
                continue
            seen.add(c.id)
            if isinstance(c, Map):
                if c.elementwise is not None:
                    return c.elementwise.name
                frontier.append(c)
    return None


def _weight_use(leaf: Leaf, consumers) -> tuple[int, int, str | None] | None:
    for user in consumers.get(leaf.id, []):
        target = user
        transposed = False
        if isinstance(user, Transpose):
            transposed = True
            nxt = [c for c in consumers.get(user.id, []) if isinstance(c, MatMul)]
            if not nxt:
                continue
            target = nxt[0]
        if isinstance(target, MatMul) and not leaf.is_scalar:
            rows, cols = leaf.shape
            if transposed:
                rows, cols = cols, rows
            left = target.args[0] is leaf or (transposed and target.args[0] is user)
            fan_in, fan_out = (cols, rows) if left else (rows, cols)
            return fan_in, fan_out, _activation_after(target, consumers)
    return None


def initial_values(graph: Graph, seed: int, dtype) -> dict[str, np.ndarray]:
    """Seeded initial values, keyed by parameter name (scalars are 0-d arrays)."""
    rng = np.random.default_rng(seed)
    consumers = _consumers(graph)
    values = {}
    for leaf in graph.params:
        use = _weight_use(leaf, consumers)
        if use is None:
            arr = np.zeros(leaf.shape)
        else:
            fan_in, fan_out, act = use
            if act is not None and act.startswith(_RELU_FAMILY):
                arr = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=leaf.shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                arr = rng.uniform(-limit, limit, size=leaf.shape)
        arr = arr.astype(dtype)
        values[leaf.label] = arr.reshape(()) if isinstance(leaf.symbol, sp.Symbol) else arr
    return values
