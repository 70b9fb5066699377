"""spec stage: ``Spec`` bundles what ``gc.compile`` takes and checks its symbols."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

from ..errors import GradcError
from .layers import Sequential

__all__ = ["Spec"]

Leaf = sp.Symbol | sp.MatrixSymbol


def _as_tuple(name: str, items) -> tuple:
    if items is None:
        return ()
    if isinstance(items, (sp.Basic, str)):
        items = (items,)
    out = []
    for it in items:
        if isinstance(it, str):
            it = sp.Symbol(it)
        if not isinstance(it, (sp.Symbol, sp.MatrixSymbol)):
            raise GradcError(f"{name}: {it!r} is not a sympy Symbol or MatrixSymbol")
        out.append(it)
    return tuple(out)


class Spec:
    """What to compile: a per-sample loss, its parameters, inputs and targets.

    ``objective`` is a scalar SymPy expression (the loss of ONE sample), or,
    with ``loss=`` given, the model output to which the loss is applied, or a
    :class:`gradc.Sequential`.

    >>> import sympy as sp, gradc as gc
    >>> w, b, x, y = sp.symbols("w b x y")
    >>> spec = gc.Spec(gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])
    >>> [p.name for p in spec.params]
    ['w', 'b']
    """

    def __init__(
        self,
        objective,
        params: Sequence[Leaf] | None = None,
        inputs: Sequence[Leaf] = (),
        targets: Sequence[Leaf] = (),
        output=None,
        loss: Callable | None = None,
    ):
        self.network = None
        if isinstance(objective, Sequential):
            net = objective
            self.network = net
            params = net.params if params is None else params
            inputs = inputs or (net.input,)
            targets = targets or (net.target,)
            output = net.output if output is None else output
            objective = net.output
            if loss is None:
                raise GradcError("compiling a Sequential needs loss= (e.g. gc.mse)")
        objective = sp.sympify(objective)
        self.inputs = _as_tuple("inputs", inputs)
        self.targets = _as_tuple("targets", targets)
        if loss is not None:
            if output is None:
                output = objective
            if len(self.targets) != 1:
                raise GradcError(f"loss= needs exactly one target symbol, got {len(self.targets)}")
            objective = loss(objective, self.targets[0])
        if isinstance(objective, (sp.MatrixExpr, sp.MatrixBase)):
            if objective.shape != (1, 1):
                raise GradcError(
                    f"the objective must be a scalar, got a matrix of shape {objective.shape}; "
                    "wrap it in a loss (gc.mse, gc.sum, …)"
                )
            objective = objective[0, 0] if isinstance(objective, sp.MatrixBase) else objective
        self.objective = objective
        self.output = None if output is None else sp.sympify(output)
        self.loss_fn = loss

        data = set(self.inputs) | set(self.targets)
        if params is None:
            free = _free_leaves(objective) | (
                _free_leaves(self.output) if output is not None else set()
            )
            params = sorted((s for s in free if s not in data), key=lambda s: s.name)
        self.params = _as_tuple("params", params)
        seen: dict[str, Leaf] = {}
        for s in (*self.params, *self.inputs, *self.targets):
            if s.name in seen:
                raise GradcError(f"symbol name {s.name!r} is declared twice")
            seen[s.name] = s
        if not self.params:
            raise GradcError("the spec has no parameters to differentiate")
        declared = set(seen.values())
        for expr in (objective, self.output):
            if expr is None:
                continue
            for s in _free_leaves(expr):
                if s not in declared:
                    raise GradcError(
                        f"symbol {s.name!r} is neither a parameter, an input nor a target"
                    )

    def __repr__(self) -> str:
        def names(xs):
            return ", ".join(s.name for s in xs)

        return (
            f"Spec(params=[{names(self.params)}], inputs=[{names(self.inputs)}], "
            f"targets=[{names(self.targets)}])"
        )


def _free_leaves(expr) -> set:
    """Free Symbols and MatrixSymbols of an expression (not entries, not bound ones)."""
    out = set()
    for s in sp.sympify(expr).free_symbols:
        if isinstance(s, (sp.Symbol, sp.MatrixSymbol)) and not isinstance(s, sp.Dummy):
            out.add(s)
    return out
