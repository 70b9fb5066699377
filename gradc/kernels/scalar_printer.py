"""kernels stage: print one scalar SymPy expression as Numba-compatible Python.

SymPy's ``PythonCodePrinter`` already prints ``math.exp``, ``max``, ternaries for
``Piecewise``; we override what Numba needs: every number as a typed constant
(``F(0.5)`` where ``F`` is the kernel dtype, so float32 code stays float32),
small integer powers as products, and a clear error for functions with no
kernel form.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from ..errors import GradcError

__all__ = ["ScalarPrinter"]


class ScalarPrinter(PythonCodePrinter):
    """Prints scalars for a kernel whose float type is bound to the name ``F``.

    >>> import sympy as sp
    >>> x = sp.Symbol("x")
    >>> ScalarPrinter(float32=True).doprint(1 / (1 + sp.exp(-x)))
    'F(1.0)/(F(1.0) + math.exp(-x))'
    """

    printmethod = "_gradc_numba"

    def __init__(self, float32: bool = False, math_module: str = "math", exp: str | None = None):
        super().__init__({"fully_qualified_modules": True, "strict": True})
        self.float32 = float32
        self.math_module = math_module
        self.exp = exp or f"{math_module}.exp"  # the CPU kernels use runtime.vexp

    def _num(self, value: float) -> str:
        text = repr(float(value))
        if text in ("inf", "-inf", "nan"):
            text = f"float('{text}')"
        return f"F({text})" if self.float32 else text

    def _print_Integer(self, expr):
        return self._num(int(expr))

    _print_Zero = _print_Integer
    _print_One = _print_Integer
    _print_NegativeOne = _print_Integer

    def _print_Rational(self, expr):
        return self._num(float(expr))

    _print_Half = _print_Rational

    def _print_Float(self, expr):
        return self._num(float(expr))

    def _print_NumberSymbol(self, expr):
        return self._num(float(expr))

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, expr):
        return self._num(float("inf"))

    def _print_NegativeInfinity(self, expr):
        return self._num(float("-inf"))

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.as_base_exp()
        b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"])
        if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
            prod = "*".join([b] * abs(int(exp)))
            return f"({prod})" if exp > 0 else f"({self._num(1)}/({prod}))"
        if exp == sp.S.Half:
            return f"{self.math_module}.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"({self._num(1)}/{self.math_module}.sqrt({self._print(base)}))"
        e = self.parenthesize(exp, sp.printing.precedence.PRECEDENCE["Pow"])
        return f"{b}**{e}"

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        h0 = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        return (
            f"({self._num(1)} if {x} > 0 else ({self._num(0)} if {x} < 0 else {self._print(h0)}))"
        )

    def _print_sign(self, expr):
        x = self._print(expr.args[0])
        return f"({self._num(1)} if {x} > 0 else ({self._num(-1)} if {x} < 0 else {self._num(0)}))"

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_log(self, expr):
        return f"{self.math_module}.log({self._print(expr.args[0])})"

    def _print_exp(self, expr):
        return f"{self.exp}({self._print(expr.args[0])})"

    def _print_Max(self, expr):
        return self._fold("max", expr.args)

    def _print_Min(self, expr):
        return self._fold("min", expr.args)

    def _fold(self, name, args):
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{name}({out}, {self._print(a)})"
        return out

    def _print_Function(self, expr):
        raise GradcError(f"function {expr.func} has no kernel form in gradc")

    def _print_not_supported(self, expr):
        raise GradcError(f"{type(expr).__name__} ({expr}) has no kernel form in gradc")

    def doprint_expr(self, expr: sp.Expr) -> str:
        try:
            text = self.doprint(expr)
        except GradcError:
            raise
        except Exception as exc:  # SymPy's own "not supported" errors
            raise GradcError(f"cannot print {expr} for a kernel: {exc}") from None
        return text
