"""spec stage: optimizers as update rules written in SymPy.

An optimizer is a class with default hyperparameters ``hyper``, the names of
its per-parameter state arrays ``state`` (zero at the start), and a method
``rule(theta, g, s, h, t)`` returning ``{symbol: new value}`` for θ and each
state. Every right-hand side is written in the OLD values; ``s`` and ``h`` are
namespaces of SymPy symbols (``s.m``, ``h.lr``), ``t`` the 1-based step count.
The kernels stage compiles the rule into the update kernel; hyperparameters are
run-time arguments, so changing the learning rate recompiles nothing.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import ClassVar

import sympy as sp

from ..errors import GradcError

__all__ = ["SGD", "Adam", "Momentum", "Optimizer", "UpdateRule"]


class UpdateRule:
    """The symbolic form of an optimizer: symbols, and assignments in old values."""

    def __init__(self, opt: Optimizer):
        self.theta = sp.Symbol("theta", real=True)
        self.g = sp.Symbol("g", real=True)
        self.t = sp.Symbol("t", positive=True)
        self.state_names = tuple(opt.state)
        self.hyper_names = tuple(opt.hyper)
        self.state_syms = tuple(sp.Symbol(f"state_{k}", real=True) for k in self.state_names)
        self.hyper_syms = tuple(sp.Symbol(f"hyper_{k}", real=True) for k in self.hyper_names)
        s = SimpleNamespace(**dict(zip(self.state_names, self.state_syms)))
        h = SimpleNamespace(**dict(zip(self.hyper_names, self.hyper_syms)))
        out = opt.rule(self.theta, self.g, s, h, self.t)
        if not isinstance(out, dict) or self.theta not in out:
            raise GradcError(
                f"{type(opt).__name__}.rule must return a dict with an entry for theta"
            )
        allowed = {self.theta, self.g, self.t, *self.state_syms, *self.hyper_syms}
        self.assignments: list[tuple[sp.Symbol, sp.Expr]] = []
        for target, expr in out.items():
            if target != self.theta and target not in self.state_syms:
                raise GradcError(f"{type(opt).__name__}.rule assigns to unknown symbol {target}")
            expr = sp.sympify(expr)
            extra = expr.free_symbols - allowed
            if extra:
                raise GradcError(
                    f"{type(opt).__name__}.rule uses unknown symbol(s) {sorted(map(str, extra))}"
                )
            self.assignments.append((target, expr))
        # nothing to keep between fit calls: no state, and the step count t unread
        self.stateless = not self.state_syms and all(
            self.t not in expr.free_symbols for _, expr in self.assignments
        )


_RULES: dict[type, UpdateRule] = {}
_KEYS: dict[type, tuple] = {}


class Optimizer:
    """Base class of update rules; subclass it to write your own.

    Every hyperparameter must be a finite number; ``ranges`` narrows some of them
    to lo ≤ value < hi (``lr`` ≥ 0 for all; a subclass adds its own, e.g.
    ``ranges = {**gc.Optimizer.ranges, "rho": (0.0, 1.0)}``), and a value outside
    raises ``GradcError`` when the optimizer is made.

    >>> import sympy as sp, gradc as gc
    >>> class RMSProp(gc.Optimizer):
    ...     hyper = {"lr": 0.01, "rho": 0.9, "eps": 1e-8}
    ...     state = ("s",)
    ...     def rule(self, theta, g, s, h, t):
    ...         s_new = h.rho * s.s + (1 - h.rho) * g**2
    ...         return {s.s: s_new, theta: theta - h.lr * g / (sp.sqrt(s_new) + h.eps)}
    >>> RMSProp(lr=0.001).values["lr"]
    0.001
    """

    hyper: ClassVar[dict[str, float]] = {"lr": 0.01}
    state: ClassVar[tuple[str, ...]] = ()
    # lo ≤ value < hi for the named hyperparameters (others: any finite number)
    ranges: ClassVar[dict[str, tuple[float, float]]] = {"lr": (0.0, math.inf)}

    def __init__(self, *args, **kwargs):
        names = list(self.hyper)
        if len(args) > len(names):
            raise GradcError(f"{type(self).__name__} takes at most {len(names)} positional values")
        values = dict(self.hyper)
        for k, v in zip(names, args):
            values[k] = v
        for k, v in kwargs.items():
            if k not in values:
                raise GradcError(
                    f"{type(self).__name__} has no hyperparameter {k!r} (it has {names})"
                )
            values[k] = v
        for k, v in values.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                raise GradcError(
                    f"{type(self).__name__}: {k} must be a number, got {v!r}"
                ) from None
            lo, hi = self.ranges.get(k, (-math.inf, math.inf))
            if not (math.isfinite(values[k]) and lo <= values[k] < hi):
                where = f"in [{lo:g}, {hi:g})" if k in self.ranges else "finite"
                raise GradcError(f"{type(self).__name__}: {k} must be {where}, got {v!r}")
        self.values = values
        self._rule: UpdateRule | None = None

    def rule(self, theta, g, s, h, t) -> dict:
        raise NotImplementedError

    @property
    def update_rule(self) -> UpdateRule:
        """The rule in SymPy; built once per optimizer class (it does not depend on values)."""
        if self._rule is None:
            cls = type(self)
            if cls not in _RULES:
                _RULES[cls] = UpdateRule(self)
            self._rule = _RULES[cls]
        return self._rule

    def key(self) -> tuple:
        """What the compiled update kernel depends on (not the hyperparameter values)."""
        cls = type(self)
        if cls not in _KEYS:
            r = self.update_rule
            _KEYS[cls] = (
                cls.__qualname__,
                r.state_names,
                r.hyper_names,
                tuple(map(str, r.assignments)),
            )
        return _KEYS[cls]

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={v:g}" for k, v in self.values.items())
        return f"{type(self).__name__}({vals})"


class SGD(Optimizer):
    """θ ← θ − η·g.

    >>> import gradc as gc
    >>> gc.SGD(lr=0.1)
    SGD(lr=0.1)
    """

    hyper: ClassVar[dict[str, float]] = {"lr": 0.01}

    def rule(self, theta, g, s, h, t):
        return {theta: theta - h.lr * g}


class Momentum(Optimizer):
    """The seed's momentum: v ← βv + (1−β)g, θ ← θ − ηv.

    >>> import gradc as gc
    >>> gc.Momentum(0.1, beta=0.9)
    Momentum(lr=0.1, beta=0.9)
    """

    hyper: ClassVar[dict[str, float]] = {"lr": 0.01, "beta": 0.9}
    ranges: ClassVar[dict[str, tuple[float, float]]] = {**Optimizer.ranges, "beta": (0.0, 1.0)}
    state = ("v",)

    def rule(self, theta, g, s, h, t):
        v_new = h.beta * s.v + (1 - h.beta) * g
        return {s.v: v_new, theta: theta - h.lr * v_new}


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam``.

    >>> import gradc as gc
    >>> gc.Adam()
    Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08)
    """

    hyper: ClassVar[dict[str, float]] = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        **Optimizer.ranges,
        "beta1": (0.0, 1.0),
        "beta2": (0.0, 1.0),
        "eps": (0.0, math.inf),
    }
    state = ("m", "v")

    def rule(self, theta, g, s, h, t):
        m_new = h.beta1 * s.m + (1 - h.beta1) * g
        v_new = h.beta2 * s.v + (1 - h.beta2) * g**2
        m_hat = m_new / (1 - h.beta1**t)
        v_hat = v_new / (1 - h.beta2**t)
        return {s.m: m_new, s.v: v_new, theta: theta - h.lr * m_hat / (sp.sqrt(v_hat) + h.eps)}
