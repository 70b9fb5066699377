"""derivation stage: human names for nodes, shared by ``explain()`` and kernel comments.

Layers read as in the seeds: ``z1 = W1·x + b1``, ``a1 = σ(z1)``, δ of each
named node (``δz2``), gradients ``∂L/∂W1``. Nodes without a name are shown
inline where they are used once, and as ``t<k>`` otherwise.
"""

from __future__ import annotations

from ..graph.nodes import Leaf, Map, Node, Transpose
from .program import Derivation

__all__ = ["consumers", "display_names"]


def consumers(nodes: list[Node]) -> dict[int, int]:
    """How many nodes in ``nodes`` read each node."""
    count: dict[int, int] = {}
    for n in nodes:
        for a in n.args:
            count[a.id] = count.get(a.id, 0) + 1
    return count


def display_names(deriv: Derivation) -> dict[int, str | None]:
    """Node id → display name, or None for nodes best shown inline."""
    names: dict[int, str | None] = {}
    graph = deriv.graph
    layer = 0
    for node in deriv.forward:
        if isinstance(node, Leaf):
            names[node.id] = node.label or node.role
        elif isinstance(node, Map) and node.elementwise is not None:
            layer += 1
            names[node.id] = f"a{layer}"
            pre = node.args[0]
            if names.get(pre.id) is None:
                names[pre.id] = f"z{layer}"
        elif node.id not in names:
            names[node.id] = None
    names[graph.loss.id] = "L"
    if graph.output is not None and names.get(graph.output.id) is None:
        names[graph.output.id] = "ŷ"
    names[deriv.seed.id] = deriv.seed.label
    fwd = {n.id: n for n in deriv.forward}
    owner = {}
    for f_id, d in deriv.delta_of.items():
        if f_id in fwd and d.id not in owner and not isinstance(fwd[f_id], Transpose):
            owner[d.id] = f_id
    for node in deriv.backward:
        f_id = owner.get(node.id)
        if f_id is not None and names.get(f_id) and not isinstance(fwd[f_id], Leaf):
            names[node.id] = "δ" + names[f_id]
        elif node.id not in names:
            names[node.id] = None
    for k, g in enumerate(deriv.grads):
        if g is not None and not isinstance(g, Leaf):
            names[g.id] = f"∂L/∂{graph.params[k].label}"
    for k, g in enumerate(deriv.input_grads):
        if g is not None and names.get(g.id) is None:
            names[g.id] = f"δ{graph.inputs[k].label}"  # ∂L/∂x of each sample
    # unnamed nodes read more than once get a temporary name
    uses = consumers(deriv.forward + deriv.backward)
    k = 0
    for node in deriv.forward + deriv.backward:
        if names.get(node.id) is None and (uses.get(node.id, 0) > 1 or isinstance(node, Leaf)):
            k += 1
            names[node.id] = f"t{k}"
    return names
