"""graph stage: lower a :class:`~gradc.spec.model.Spec` into a :class:`Graph`.

One function per SymPy class, memoised by expression, so a subexpression that
appears twice becomes one node (what later lets its δ be shared). Shapes and
the role of every symbol are checked here, once; later stages trust the graph.
Scalar arithmetic between leaves is gathered into one ``Map`` whose Lambda is
the SymPy expression itself.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from ..errors import GradcError
from ..spec.elementwise import lookup, registered
from ..spec.model import Spec
from ..spec.reductions import LogSumExp as SpLogSumExp
from ..spec.reductions import MatrixSum
from .nodes import Leaf, LogSumExp, Map, MatMul, Node, SumAll, Transpose

__all__ = ["Graph", "lower", "make_map", "exact_number"]


class Graph:
    """The lowered spec: leaves by role, the loss node, the output node, topological order."""

    def __init__(self, spec: Spec, params, inputs, targets, loss: Node, output: Node | None):
        self.spec = spec
        self.params: list[Leaf] = params
        self.inputs: list[Leaf] = inputs
        self.targets: list[Leaf] = targets
        self.loss = loss
        self.output = output
        roots = [loss] + ([output] if output is not None else [])
        self.order: list[Node] = topological_order(roots)

    @property
    def data(self) -> list[Leaf]:
        return self.inputs + self.targets

    def __repr__(self) -> str:
        return "\n".join(repr(n) for n in self.order)


def topological_order(roots) -> list[Node]:
    """Nodes reachable from ``roots``, each after its arguments (iterative, no recursion)."""
    order, seen = [], set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node.id in seen:
                continue
            if expanded:
                seen.add(node.id)
                order.append(node)
                continue
            stack.append((node, True))
            for a in reversed(node.args):
                if a.id not in seen:
                    stack.append((a, False))
    return order


class _Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.memo: dict[sp.Basic, Node] = {}
        self.leaves: dict[sp.Basic, Leaf] = {}
        self.params, self.inputs, self.targets = [], [], []
        for role, symbols, bucket in (
            ("param", spec.params, self.params),
            ("input", spec.inputs, self.inputs),
            ("target", spec.targets, self.targets),
        ):
            for k, s in enumerate(symbols):
                shape = s.shape if isinstance(s, sp.MatrixSymbol) else (1, 1)
                if not all(isinstance(d, (int, sp.Integer)) for d in shape):
                    raise GradcError(f"symbol {s.name!r} has a symbolic shape {shape}")
                batched = role != "param"
                if batched and 1 not in tuple(shape):
                    raise GradcError(
                        f"{role} {s.name!r} has shape {tuple(shape)}: one sample must be a "
                        "column vector (k, 1), a row vector (1, k) or a scalar"
                    )
                leaf = Leaf(role, shape, batched, symbol=s, index=k, label=s.name)
                self.leaves[s] = leaf
                bucket.append(leaf)

    # -- entry points -------------------------------------------------------
    def scalar(self, expr) -> Node:
        expr = sp.sympify(expr)
        if isinstance(expr, sp.MatrixExpr):
            if expr.shape != (1, 1):
                raise GradcError(f"expected a scalar, got {expr} of shape {expr.shape}")
            return self.matrix(expr)
        if expr in self.memo:
            return self.memo[expr]
        node = self._scalar(expr)
        self.memo[expr] = node
        return node

    def matrix(self, expr) -> Node:
        if expr in self.memo:
            return self.memo[expr]
        if not isinstance(expr, sp.MatrixExpr):
            if isinstance(expr, sp.MatrixBase):
                node = self._explicit(expr)
            else:
                node = self.scalar(expr)
        else:
            method = getattr(self, f"_lower_{type(expr).__name__}", None)
            if method is None:
                raise GradcError(
                    f"gradc cannot compile the matrix operation {type(expr).__name__}: {expr}"
                )
            node = method(expr)
        self._check_batched(node, expr)
        self.memo[expr] = node
        return node

    @staticmethod
    def _check_batched(node: Node, expr) -> None:
        if node.batched and 1 not in node.shape:
            raise GradcError(
                f"{expr} has shape {node.shape} for each sample; gradc supports per-sample "
                "values that are vectors or scalars (matrices only as parameters)"
            )

    # -- scalars --------------------------------------------------------------
    def _scalar(self, expr: sp.Expr) -> Node:
        if isinstance(expr, (sp.Symbol, sp.MatrixSymbol)):
            return self._leaf(expr)
        if isinstance(expr, MatrixSum):
            return SumAll(self.matrix(expr.arg))
        if isinstance(expr, SpLogSumExp):
            return LogSumExp(self.matrix(expr.arg))
        if isinstance(expr, MatrixElement):
            raise GradcError(
                f"indexing a matrix ({expr}) is not supported; use gc.sum or matrix products"
            )
        if isinstance(expr, sp.Number):
            if not expr.is_finite or not expr.is_real:
                raise GradcError(f"the constant {expr} is not a finite real number")
            return self._const(np.full((1, 1), float(expr)))
        _check_scalar_formula(expr)
        found = match_elementwise(expr)
        if found is not None:
            row, arg = found
            return Map(row.body, (self.scalar(arg),), elementwise=row)
        # a scalar formula over atoms (leaves and reductions) → one Map
        atoms: list[sp.Basic] = []
        self._collect_atoms(expr, atoms)
        if not atoms:
            try:
                value = float(expr)
            except TypeError:
                raise GradcError(f"cannot evaluate the constant expression {expr}") from None
            return self._const(np.full((1, 1), value))
        args = [self.scalar(a) for a in atoms]
        dummies = [sp.Dummy(f"a{k}", real=True) for k in range(len(atoms))]
        body = expr.xreplace(dict(zip(atoms, dummies)))
        return make_map(sp.Lambda(tuple(dummies), body), args)

    def _collect_atoms(self, expr, out: list) -> None:
        stack = [expr]
        while stack:
            e = stack.pop()
            if e is not expr and match_elementwise(e) is not None:
                if e not in out:
                    out.append(e)  # a registered function: its own node, σ′ through σ
            elif isinstance(e, (sp.Symbol, MatrixSum, SpLogSumExp, MatrixElement, sp.MatrixSymbol)):
                if isinstance(e, sp.Dummy):
                    raise GradcError(f"bound or dummy symbol {e} in the objective")
                if e not in out:
                    out.append(e)
            elif isinstance(e, sp.MatrixExpr):
                raise GradcError(f"a matrix {e} appears where a scalar is needed")
            else:
                stack.extend(reversed(e.args))

    def _leaf(self, s) -> Leaf:
        leaf = self.leaves.get(s)
        if leaf is None:
            raise GradcError(f"symbol {s.name!r} is neither a parameter, an input nor a target")
        return leaf

    def _const(self, value: np.ndarray) -> Leaf:
        return Leaf("const", value.shape, False, value=value, label=_const_label(value))

    def _explicit(self, m: sp.MatrixBase) -> Node:
        try:
            value = np.array(m.tolist(), dtype=float)
        except TypeError:
            raise GradcError(
                f"explicit matrix {m} has symbolic entries; use MatrixSymbols instead"
            ) from None
        return self._const(value)

    # -- matrices -------------------------------------------------------------
    def _lower_MatrixSymbol(self, e):
        return self._leaf(e)

    def _lower_Transpose(self, e):
        a = self.matrix(e.arg)
        if a.is_scalar:
            return a
        return Transpose(a)

    def _lower_ZeroMatrix(self, e):
        return self._const(np.zeros(e.shape))

    def _lower_OneMatrix(self, e):
        return self._const(np.ones(e.shape))

    def _lower_Identity(self, e):
        return self._const(np.eye(e.shape[0]))

    def _lower_ImmutableDenseMatrix(self, e):
        return self._explicit(e)

    def _lower_MatAdd(self, e):
        return self._map_of(e.args, sp.Add)

    def _lower_HadamardProduct(self, e):
        return self._map_of(e.args, sp.Mul)

    def _lower_HadamardPower(self, e):
        base = self.matrix(e.base)
        exp = self.scalar(e.exp)
        u, p = sp.Dummy("u", real=True), sp.Dummy("p", real=True)
        return make_map(sp.Lambda((u, p), u**p), (base, exp), base.shape)

    def _lower_ElementwiseApplyFunction(self, e: ElementwiseApplyFunction):
        fn = e.function
        if not isinstance(fn, sp.Lambda):
            (v,) = sp.symbols("v", cls=sp.Dummy)
            fn = sp.Lambda(v, fn(v))
        if len(fn.variables) != 1:
            raise GradcError(f"elementwise function {fn} must take one argument")
        row = lookup(fn)
        if row is not None:
            fn = row.body
        arg = self.matrix(e.expr)
        bad = fn.expr.free_symbols - set(fn.variables)
        if bad:
            raise GradcError(
                f"elementwise function {fn} refers to the free symbol(s) {sorted(map(str, bad))}"
            )
        return Map(fn, (arg,), elementwise=row)

    def _lower_MatMul(self, e):
        coeff, mats = e.as_coeff_mmul()
        mats = list(mats.args) if isinstance(mats, sp.MatMul) else [mats]
        scalars = [m for m in mats if not isinstance(m, sp.MatrixExpr)]
        mats = [m for m in mats if isinstance(m, sp.MatrixExpr)]
        nodes = [self.matrix(m) for m in mats]
        product = self._chain(nodes, mats)
        factor = sp.Mul(coeff, *scalars)
        if factor == 1:
            return product
        u, c = sp.Dummy("u", real=True), sp.Dummy("c", real=True)
        return make_map(sp.Lambda((c, u), c * u), (self.scalar(factor), product), product.shape)

    def _chain(self, nodes: list[Node], exprs) -> Node:
        # multiply outward from the batched factor so that products stay matrix·vector
        if not nodes[-1].batched and nodes[0].batched:
            acc = nodes[0]
            for n, e in zip(nodes[1:], exprs[1:]):
                acc = self._matmul(acc, n, e)
            return acc
        acc = nodes[-1]
        for n, e in zip(reversed(nodes[:-1]), reversed(exprs[:-1])):
            acc = self._matmul(n, acc, e)
        return acc

    def _matmul(self, a: Node, b: Node, expr) -> Node:
        if a.shape[1] != b.shape[0]:
            raise GradcError(
                f"shape mismatch in product {a.label or a}·{expr}: {a.shape} · {b.shape}"
            )
        if a.is_scalar or b.is_scalar:
            u, c = sp.Dummy("u", real=True), sp.Dummy("c", real=True)
            s, m = (a, b) if a.is_scalar else (b, a)
            return make_map(sp.Lambda((c, u), c * u), (s, m), (a.shape[0], b.shape[1]))
        if a.batched and b.batched and not (a.shape[0] == 1 and b.shape[1] == 1):
            raise GradcError(
                f"the product {expr} multiplies two per-sample vectors into a matrix "
                f"({a.shape}·{b.shape}); gradc needs one factor to be a parameter"
            )
        if (b.batched and not a.batched and b.shape[1] != 1) or (
            a.batched and not b.batched and a.shape[0] != 1
        ):
            raise GradcError(f"the product {expr} has an unsupported per-sample layout")
        return MatMul(a, b)

    def _map_of(self, terms, op) -> Node:
        nodes = [self.matrix(t) if isinstance(t, sp.MatrixExpr) else self.scalar(t) for t in terms]
        shapes = {n.shape for n in nodes if not n.is_scalar}
        if len(shapes) > 1:
            raise GradcError(
                f"shape mismatch between {', '.join(map(str, terms))}: {sorted(shapes)}"
            )
        dummies = [sp.Dummy(f"u{k}", real=True) for k in range(len(nodes))]
        return make_map(sp.Lambda(tuple(dummies), op(*dummies)), nodes)


def exact_number(value: float) -> sp.Number:
    """A float as SymPy holds it exactly (an Integer when it is one): never rounded."""
    value = float(value)
    return (
        sp.Integer(int(value)) if value.is_integer() and abs(value) < 2**53 else sp.Float(value, 17)
    )


def make_map(fn: sp.Lambda, args, shape=None) -> Node:
    """A Map with scalar constant arguments folded into its Lambda."""
    keep, consts = [], {}
    for v, a in zip(fn.variables, args):
        if isinstance(a, Leaf) and a.role == "const" and a.is_scalar:
            consts[v] = exact_number(a.value[0, 0])
        else:
            keep.append((v, a))
    if shape is None:
        shape = next((a.shape for a in args if not a.is_scalar), (1, 1))
    body = fn.expr.xreplace(consts)
    if not keep:
        return Leaf("const", shape, False, value=np.full(shape, float(body)), label=str(body))
    return Map(sp.Lambda(tuple(v for v, _ in keep), body), [a for _, a in keep], shape)


_W = sp.Wild("W")
_PATTERNS: dict[int, tuple] = {}


def match_elementwise(expr: sp.Expr):
    """(row, argument) when ``expr`` is a registered function with a derivative through
    its output (a scalar ``gc.sigmoid(u)`` is ``1/(1 + exp(-u))`` to SymPy), else None."""
    if expr.is_Atom or not isinstance(expr, sp.Expr):
        return None
    for row in registered():
        if row.deriv_via_out is None or row.body.expr == row.body.variables[0]:
            continue
        key = id(row)
        if key not in _PATTERNS:
            _PATTERNS[key] = (row, row.body.expr.xreplace({row.body.variables[0]: _W}))
        _, pattern = _PATTERNS[key]
        if type(expr) is not type(pattern):
            continue
        m = expr.match(pattern)
        if m and _W in m and not m[_W].has(sp.Wild) and m[_W] != expr:
            if sp.simplify(pattern.xreplace({_W: m[_W]}) - expr) == 0:
                return row, m[_W]
    return None


def _check_scalar_formula(expr: sp.Expr) -> None:
    """Refuse what no real-valued kernel can compute, naming it."""
    for bad in (sp.zoo, sp.oo, -sp.oo, sp.nan):
        if expr.has(bad):
            raise GradcError(f"the expression {expr} contains the non-finite constant {bad}")
    if expr.has(sp.I) or any(n.is_real is False for n in expr.atoms(sp.Number)):
        raise GradcError(f"the expression {expr} has complex values (I); gradc computes with reals")
    for pw in expr.atoms(sp.Piecewise):
        if pw.args[-1].cond != sp.true:
            raise GradcError(f"{pw} has no otherwise branch: add (value, True) as its last piece")


def _const_label(value: np.ndarray) -> str:
    flat = np.unique(value)
    if flat.size == 1:
        return f"{flat[0]:g}"
    return "const"


def lower(spec: Spec) -> Graph:
    """Lower a spec to a graph, checking every symbol and shape.

    >>> import sympy as sp, gradc as gc
    >>> w1, w2 = sp.symbols("w1 w2")
    >>> g = lower(gc.Spec(w1**2 + w2, params=[w1, w2]))
    >>> len(g.params), g.loss.batched
    (2, False)
    """
    low = _Lowering(spec)
    loss = low.scalar(spec.objective)
    if not loss.is_scalar:
        raise GradcError(f"the loss must be a scalar, got shape {loss.shape}")
    output = None
    if spec.output is not None:
        out = spec.output
        output = (
            low.matrix(out) if isinstance(out, (sp.MatrixExpr, sp.MatrixBase)) else low.scalar(out)
        )
    return Graph(spec, low.params, low.inputs, low.targets, loss, output)
