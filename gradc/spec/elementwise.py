"""spec stage: the table of elementwise functions.

Each row carries the function's SymPy body, its derivative (always derived by
``sympy.diff``, never typed in) and, where one exists, the derivative written
through the forward result ``y = f(z)`` (σ′ = y(1−y)), so that backward reuses
the forward value instead of recomputing it. A hint for that form is checked
numerically when the row is registered.

Built-in functions and user functions (``elementwise``) take the same path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..errors import GradcError

__all__ = [
    "apply_elementwise",
    "Elementwise",
    "elementwise",
    "identity",
    "leaky_relu",
    "lookup",
    "relu",
    "sigmoid",
    "softplus",
    "tanh",
]

_z = sp.Symbol("z", real=True)
_y = sp.Symbol("y", real=True)
_PROBES = (-2.3, -0.7, -0.1, 0.3, 0.9, 1.7, 3.1)


@dataclass(frozen=True, eq=False)
class Elementwise:
    """One row of the elementwise table; calling it applies the function.

    Applied to a scalar ``sp.Expr`` it returns the body with the argument
    substituted; applied to a ``sp.MatrixExpr`` it returns SymPy's
    ``ElementwiseApplyFunction`` (a real matrix expression).

    >>> import sympy as sp, gradc as gc
    >>> gc.sigmoid(sp.Symbol("t"))
    1/(1 + exp(-t))
    """

    name: str
    body: sp.Lambda
    deriv: sp.Lambda
    deriv_via_out: sp.Lambda | None = None

    def __call__(self, arg):
        arg = sp.sympify(arg)
        if isinstance(arg, sp.MatrixBase):
            return arg.applyfunc(self.body)
        if isinstance(arg, sp.MatrixExpr):
            if self.body.expr == self.body.variables[0]:
                return arg  # identity
            return apply_elementwise(self.body, arg)
        return self.body(arg)

    def __repr__(self) -> str:
        return f"Elementwise({self.name}: {self.body})"


def apply_elementwise(lam: sp.Lambda, arg: sp.MatrixExpr) -> sp.MatrixExpr:
    """``lam`` applied entry by entry to ``arg``, as SymPy's ElementwiseApplyFunction.

    Built without its constructor: for a 1×1 argument SymPy's ``__new__`` calls
    the function on the matrix itself, which fails for Piecewise and most bodies.
    """
    return sp.Basic.__new__(ElementwiseApplyFunction, lam, arg)


_REGISTRY: dict[sp.Expr, Elementwise] = {}


def _canonical(lam: sp.Lambda) -> sp.Expr:
    (var,) = lam.variables
    return lam.expr.xreplace({var: _z})


def registered() -> list[Elementwise]:
    """Every registered row, built-in and user-defined."""
    return list(_REGISTRY.values())


def lookup(lam: sp.Lambda) -> Elementwise | None:
    """The registered row whose body is ``lam`` (up to the variable's name)."""
    if len(lam.variables) != 1:
        return None
    return _REGISTRY.get(_canonical(lam))


def _numeric(expr: sp.Expr, var: sp.Symbol, value: float) -> float | None:
    try:
        v = complex(expr.xreplace({var: sp.Float(value)}).evalf())
    except (TypeError, ValueError):
        return None
    if abs(v.imag) > 1e-12 * max(1.0, abs(v.real)):
        return None
    return v.real


def _register(
    name: str,
    lam: sp.Lambda,
    via_out: sp.Lambda | None = None,
    *,
    check_hint: bool = True,
    deriv: sp.Expr | None = None,
) -> Elementwise:
    """The registry row for ``lam``: its derivative (``sympy.diff``, kept simplified
    where that is cheaper, unless ``deriv`` gives it), the hint checked against it."""
    if not isinstance(lam, sp.Lambda) or len(lam.variables) != 1:
        raise GradcError(f"elementwise function {name!r} must be a sympy.Lambda of one argument")
    body = _canonical(lam)
    bad = [f for f in body.atoms(sp.Function) if isinstance(f, sp.core.function.AppliedUndef)]
    if bad:
        raise GradcError(
            f"elementwise function {name!r} uses the undefined function {bad[0].func}: "
            "gradc cannot differentiate or print it"
        )
    found = _REGISTRY.get(body)
    if found is not None:
        return found
    if deriv is not None:  # built-in rows: tests/test_spec.py checks them against sympy.diff
        row = Elementwise(name, sp.Lambda(_z, body), sp.Lambda(_z, deriv), via_out)
        _REGISTRY[body] = row
        return row
    deriv = sp.diff(body, _z)
    if deriv.has(sp.Derivative, sp.Subs):
        raise GradcError(
            f"elementwise function {name!r}: SymPy finds no derivative of {body} (got {deriv})"
        )
    if not deriv.has(sp.Piecewise):
        # keep the simpler form only when it is cheaper: simplify() likes cosh, which
        # overflows where the plain derivative does not
        simpler = sp.simplify(deriv)
        if sp.count_ops(simpler) < sp.count_ops(deriv) and not simpler.has(sp.cosh, sp.sinh):
            deriv = simpler
    if via_out is not None and check_hint:
        for p in _PROBES:
            f_p = _numeric(body, _z, p)
            d_p = _numeric(deriv, _z, p)
            if f_p is None or d_p is None or not math.isfinite(f_p):
                continue
            h_p = _numeric(via_out(_y), _y, f_p)
            if h_p is None or abs(h_p - d_p) > 1e-9 * max(1.0, abs(d_p)):
                raise GradcError(
                    f"elementwise function {name!r}: the hint f'(z) = {via_out(_y)} "
                    f"(y = f(z)) disagrees with sympy.diff at z = {p}"
                )
    row = Elementwise(name, sp.Lambda(_z, body), sp.Lambda(_z, deriv), via_out)
    _REGISTRY[body] = row
    return row


def elementwise(lam: sp.Lambda, name: str | None = None, deriv_via_out=None) -> Elementwise:
    """Turn a one-argument ``sp.Lambda`` into an elementwise function.

    Parameters
    ----------
    lam : sympy.Lambda
        The function, e.g. ``sp.Lambda(z, z/(1 + sp.exp(-z)))`` (swish).
    name : str, optional
        A name for reports and error messages.
    deriv_via_out : sympy.Lambda, optional
        ``y ↦ f'(z)`` written through ``y = f(z)``; checked at random points.

    >>> import sympy as sp, gradc as gc
    >>> z = sp.Symbol("z")
    >>> swish = gc.elementwise(sp.Lambda(z, z / (1 + sp.exp(-z))), name="swish")
    >>> swish(sp.Symbol("t"))
    t/(1 + exp(-t))
    """
    if not isinstance(lam, sp.Lambda):
        raise GradcError(f"gc.elementwise expects a sympy.Lambda, got {type(lam).__name__}")
    return _register(name or str(lam), lam, deriv_via_out)


# The built-in rows give their derivative (as _register would find it): deriving
# and simplifying them here cost ~0.3 s of every `import gradc`.
sigmoid = _register(
    "sigmoid",
    sp.Lambda(_z, 1 / (1 + sp.exp(-_z))),
    sp.Lambda(_y, _y * (1 - _y)),
    deriv=sp.exp(-_z) / (1 + sp.exp(-_z)) ** 2,
)
tanh = _register(
    "tanh", sp.Lambda(_z, sp.tanh(_z)), sp.Lambda(_y, 1 - _y**2), deriv=1 - sp.tanh(_z) ** 2
)
# relu is a Piecewise so that its derivative at the kink is 0, as in PyTorch
# (sympy's Heaviside(0) would give 1/2).
relu = _register(
    "relu",
    sp.Lambda(_z, sp.Piecewise((_z, _z > 0), (0, True))),
    sp.Lambda(_y, sp.Piecewise((1, _y > 0), (0, True))),
    deriv=sp.Piecewise((1, _z > 0), (0, True)),
)
# softplus in its overflow-free form: log(1 + e^z) = z + log(1 + e^-z) for z > 0.
softplus = _register(
    "softplus",
    sp.Lambda(
        _z,
        sp.Piecewise((_z + sp.log(1 + sp.exp(-_z)), _z > 0), (sp.log(1 + sp.exp(_z)), True)),
    ),
    sp.Lambda(_y, 1 - sp.exp(-_y)),
    deriv=sp.Piecewise(
        (1 - sp.exp(-_z) / (1 + sp.exp(-_z)), _z > 0), (sp.exp(_z) / (sp.exp(_z) + 1), True)
    ),
)
identity = _register(
    "identity", sp.Lambda(_z, _z), sp.Lambda(_y, sp.Integer(1)), deriv=sp.Integer(1)
)
BUILTIN = (sigmoid, tanh, relu, softplus, identity)


def leaky_relu(alpha: float = 0.01) -> Elementwise:
    """Leaky ReLU with slope ``alpha`` below zero (derivative ``alpha`` at 0).

    >>> import gradc as gc
    >>> lrelu = gc.leaky_relu(0.1)
    >>> lrelu.name
    'leaky_relu(0.1)'
    """
    if isinstance(alpha, (int, float)):
        a = sp.Integer(alpha) if float(alpha).is_integer() else sp.Float(alpha, 17)
    else:
        a = sp.sympify(alpha)
    hint = None
    if a.is_positive:
        hint = sp.Lambda(_y, sp.Piecewise((1, _y > 0), (a, True)))
    return _register(
        f"leaky_relu({alpha})", sp.Lambda(_z, sp.Piecewise((_z, _z > 0), (a * _z, True))), hint
    )
