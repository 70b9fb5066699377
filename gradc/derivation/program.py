"""derivation stage: what a strategy hands on — the forward nodes, the adjoint
(δ) nodes in the order they are computed, and which node holds each gradient.

Both strategies (``reverse.py`` for shared δ, ``naive.py`` for one ``diff`` per
parameter entry) build this same object; counting, kernels and ``explain()``
do not know which made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph.lower import Graph
from ..graph.nodes import Leaf, Node

__all__ = ["Derivation"]


@dataclass
class Derivation:
    graph: Graph
    strategy: str
    forward: list[Node]  # in evaluation order (leaves included)
    backward: list[Node]  # adjoint nodes, in evaluation order
    seed: Leaf  # δ of the loss: 1/n per sample (or 1 with no data)
    grads: list[Node | None]  # per parameter: the node holding ∂L/∂θ, None = zero
    # per input, when derived with inputs=True: the node holding ∂L/∂x of each sample
    # (batched, 1/n included, so it is the gradient of the batch's mean loss)
    input_grads: list[Node | None] = field(default_factory=list)
    delta_of: dict[int, Node] = field(default_factory=dict)  # forward node id → its δ node
    seconds: float = 0.0

    @property
    def params(self) -> list[Leaf]:
        return self.graph.params
