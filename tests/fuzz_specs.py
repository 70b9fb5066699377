"""Hypothesis strategies that generate random gradc specs, with the domain kept valid.

Used by ``tests/test_fuzz.py``. Nothing here calls gradc's compiler: the
generators only *build* specs (SymPy expressions, symbol lists, NumPy data) and
the independent NumPy/mpmath references the tests compare gradc against.

Scalar specs
    Random expression trees over 1-3 parameters and 0-2 data symbols using
    + − × ÷, integer and real powers, exp, log, sqrt, sin, cos, tanh,
    gc.sigmoid, gc.softplus, Abs, Piecewise, Max and Min. Every node carries an
    interval that bounds its value over the sampling box (every parameter and
    data value is drawn from [-BOX, BOX]); a function whose domain is
    restricted only receives an argument whose interval lies in that domain
    (``log``/``sqrt``/real powers get positive arguments such as ``u**2 + 1``
    or ``exp(u)``, divisors are bounded away from 0, ``exp`` gets a bounded
    argument), and values are kept moderate (|v| ≲ 1e4) so that float64
    comparisons are meaningful.

Matrix networks
    Depth 1-4, widths 1-6, activations drawn from the built-ins and user
    ``gc.elementwise`` Lambdas, ``gc.mse`` or ``gc.softmax_cross_entropy``,
    float32 or float64, built either with MatrixSymbols (form c) or with
    ``gc.Sequential``/``gc.Dense`` (form d). ``NetSpec.reference_loss`` is an
    independent NumPy forward pass used for the loss oracle and for central
    finite differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from hypothesis import strategies as st

import gradc as gc

BOX = 1.5  # parameters and data are drawn uniformly from [-BOX, BOX]
BIG = 1e4  # larger intermediate bounds are squashed (tanh, sin, u/(1+u²))

# --------------------------------------------------------------------------- names

# Identifiers the generated kernels and their modules use (gradc/kernels/cpu.py),
# Python keywords and builtins, module names; user symbols with these names must
# not collide with anything.
TEMPORARY_NAMES = [
    "a0", "a1", "t0", "t1", "t", "v0", "d0", "p0", "p1", "g0", "x0", "y0", "C0", "X0", "Y0",
    "n", "inv_n", "i", "r", "c", "k", "j", "acc", "big", "av", "th", "gr", "hp", "hp0", "h0",
    "st0", "new_th", "loss", "check", "scale", "total", "sq", "step", "start", "stop", "lo",
    "row", "seed", "perm", "bs", "nrows", "nbatches", "clip", "losses", "gnorms", "x0buf",
    "shuffle", "u0", "_a0", "Dummy", "z", "y",
]  # fmt: skip
KEYWORD_NAMES = ["lambda", "def", "class", "if", "None", "True", "return", "import", "yield"]
BUILTIN_NAMES = ["abs", "max", "min", "range", "float", "print", "len", "sum", "exec", "eval"]
MODULE_NAMES = ["math", "np", "numba", "numpy", "F", "sp", "sympy", "gradc", "gc", "os", "sys"]
ODD_NAMES = [
    "w 1", "my param", " lead", "trail ", "w[0]", "W(1)", "{x}", "<y>", "w'", 'w"', "it's",
    "w,b", "w;b", "w#x", "w=1", "1w", "-w", "w.b", "w@b", "w*b", "w+b", "%w", "$w",
    "θ", "α₁", "權重", "σ²", "ñ", "e\u0301", "\u05d0\u05d1", "🙂", "x\u200b", "ﬁ", "ℌ",
]  # fmt: skip
# names that break generated code today (see tests/test_regressions.py)
ESCAPE_NAMES = ["w\\N", "w\\x", "w\\u", 'a"""b', "w\\", "'''", '"""', "w\\n", "x\n y", "tab\t"]

HOSTILE_NAMES = TEMPORARY_NAMES + KEYWORD_NAMES + BUILTIN_NAMES + MODULE_NAMES + ODD_NAMES


def has_escape_trouble(name: str) -> bool:
    """Names that make gradc write an invalid module docstring (known bug)."""
    return "\\" in name or '"""' in name or name.endswith('"')


def hostile_names(allow_escapes: bool) -> st.SearchStrategy[str]:
    """A hostile symbol name: from the fixed lists, or random text."""
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
    random_text = st.text(alphabet, min_size=1, max_size=8)
    fixed = HOSTILE_NAMES + (ESCAPE_NAMES if allow_escapes else [])
    names = st.one_of(st.sampled_from(fixed), random_text)
    if not allow_escapes:
        names = names.filter(lambda s: not has_escape_trouble(s))
    return names


def distinct_names(k: int, allow_escapes: bool) -> st.SearchStrategy[list[str]]:
    return st.lists(hostile_names(allow_escapes), min_size=k, max_size=k, unique=True)


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class B:
    """A SymPy expression with bounds lo ≤ value ≤ hi over the sampling box."""

    expr: sp.Expr
    lo: float
    hi: float

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _const(value) -> B:
    v = sp.sympify(value)
    f = float(v)
    return B(v, f, f)


def _softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def _sigmoid(v: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * v))


def _mul_bounds(a: B, b: B) -> tuple[float, float]:
    prods = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
    return min(prods), max(prods)


def squash(draw, b: B, limit: float = BIG) -> B:
    """``b`` if its bound is within ``limit``, else a bounded function of it."""
    if b.mag <= limit:
        return b
    kind = draw(st.sampled_from(["tanh", "sin", "ratio"]))
    if kind == "tanh":
        return B(sp.tanh(b.expr), math.tanh(b.lo), math.tanh(b.hi))
    if kind == "sin":
        return B(sp.sin(b.expr), -1.0, 1.0)
    return B(b.expr / (1 + b.expr**2), -0.5, 0.5)


def positive(draw, b: B) -> B:
    """A positive expression (≥ 0.1 on the box) built from ``b``."""
    if b.lo >= 0.1 and b.hi <= BIG:
        return b
    b = squash(draw, b, 30.0)
    kind = draw(st.sampled_from(["square", "exp", "softplus", "abs", "sigmoid"]))
    if kind == "square":
        c = draw(st.sampled_from([sp.Integer(1), sp.Rational(1, 2), sp.Rational(1, 4)]))
        lo = 0.0 if b.lo <= 0 <= b.hi else min(b.lo**2, b.hi**2)
        return B(b.expr**2 + c, lo + float(c), b.mag**2 + float(c))
    if kind == "exp":
        b = squash(draw, b, 2.0)
        return B(sp.exp(b.expr), math.exp(b.lo), math.exp(b.hi))
    if kind == "softplus":
        return B(
            gc.softplus(b.expr) + sp.Rational(1, 10), _softplus(b.lo) + 0.1, _softplus(b.hi) + 0.1
        )
    if kind == "abs":
        lo = 0.0 if b.lo <= 0 <= b.hi else min(abs(b.lo), abs(b.hi))
        return B(sp.Abs(b.expr) + sp.Rational(1, 2), lo + 0.5, b.mag + 0.5)
    return B(gc.sigmoid(b.expr) + sp.Rational(1, 10), _sigmoid(b.lo) + 0.1, _sigmoid(b.hi) + 0.1)


def nonzero(draw, b: B) -> B:
    """An expression bounded away from zero built from ``b``."""
    if (b.lo >= 0.1 or b.hi <= -0.1) and b.mag <= BIG:
        return b
    p = positive(draw, b)
    if draw(st.booleans()):
        return B(-p.expr, -p.hi, -p.lo)
    return p


# --------------------------------------------------------------------------- scalar trees

UNARY = ["exp", "log", "sqrt", "sin", "cos", "tanh", "sigmoid", "softplus", "abs", "ipow", "rpow"]
BINARY = ["add", "sub", "mul", "div", "pow", "max", "min", "piecewise"]
CONSTANTS = [
    sp.Integer(1), sp.Integer(2), sp.Integer(-3), sp.Rational(1, 2), sp.Rational(-3, 2),
    sp.Float(0.37), sp.Float(-1.25), sp.pi, sp.E, sp.Rational(2, 7),
]  # fmt: skip


def leaf(draw, symbols: list[sp.Symbol]) -> B:
    if symbols and draw(st.integers(0, 4)) > 0:
        return B(draw(st.sampled_from(symbols)), -BOX, BOX)
    return _const(draw(st.sampled_from(CONSTANTS)))


def tree(draw, symbols: list[sp.Symbol], depth: int, root: bool = False) -> B:
    """A random scalar expression with valid-domain bounds (the root is never a leaf)."""
    if depth <= 0 or (not root and draw(st.integers(0, 5)) == 0):
        return leaf(draw, symbols)
    if draw(st.integers(0, 2)) == 0:
        return unary(draw, draw(st.sampled_from(UNARY)), tree(draw, symbols, depth - 1))
    op = draw(st.sampled_from(BINARY))
    a = tree(draw, symbols, depth - 1)
    b = tree(draw, symbols, depth - 1)
    return binary(draw, op, a, b, symbols, depth)


def unary(draw, op: str, a: B) -> B:
    e = a.expr
    if op == "exp":
        a = squash(draw, a, 8.0)
        return B(sp.exp(a.expr), math.exp(a.lo), math.exp(a.hi))
    if op == "log":
        p = positive(draw, a)
        return B(sp.log(p.expr), math.log(p.lo), math.log(p.hi))
    if op == "sqrt":
        p = positive(draw, a)
        return B(sp.sqrt(p.expr), math.sqrt(p.lo), math.sqrt(p.hi))
    if op == "sin":
        return B(sp.sin(squash(draw, a, 50.0).expr), -1.0, 1.0)
    if op == "cos":
        return B(sp.cos(squash(draw, a, 50.0).expr), -1.0, 1.0)
    if op == "tanh":
        return B(sp.tanh(e), math.tanh(a.lo), math.tanh(a.hi))
    if op == "sigmoid":
        a = squash(draw, a, 30.0)
        return B(gc.sigmoid(a.expr), _sigmoid(a.lo), _sigmoid(a.hi))
    if op == "softplus":
        a = squash(draw, a, 30.0)
        return B(gc.softplus(a.expr), _softplus(a.lo), _softplus(a.hi))
    if op == "abs":
        lo = 0.0 if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi))
        return B(sp.Abs(e), lo, a.mag)
    if op == "ipow":
        k = draw(st.sampled_from([2, 3, 4, 5, 6, -1, -2, -3, -5]))
        if k < 0:
            a = nonzero(draw, squash(draw, a, 5.0))
            vals = [a.lo**k, a.hi**k]  # a does not change sign
            return B(a.expr**k, min(vals), max(vals))
        a = squash(draw, a, 5.0)
        ends = [a.lo**k, a.hi**k]
        lo = 0.0 if (k % 2 == 0 and a.lo <= 0 <= a.hi) else min(ends)
        if k % 2 == 0:
            lo = max(lo, 0.0)
        return B(a.expr**k, lo, max(ends))
    if op == "rpow":
        r = draw(
            st.sampled_from(
                [sp.Rational(1, 2), sp.Rational(3, 2), sp.Rational(-1, 2), sp.Rational(1, 3),
                 sp.Float(2.5), sp.Float(0.7), sp.Float(-1.3)]
            )
        )  # fmt: skip
        p = positive(draw, squash(draw, a, 20.0))
        ends = [p.lo ** float(r), p.hi ** float(r)]
        return B(p.expr**r, min(ends), max(ends))
    raise AssertionError(op)


def condition(draw, c: B):
    """A relational on ``c`` whose threshold lies inside its range."""
    lo, hi = max(c.lo, -BIG), min(c.hi, BIG)
    k = sp.Rational(draw(st.integers(0, 8)), 8) * (sp.Float(hi) - sp.Float(lo)) + sp.Float(lo)
    k = sp.nsimplify(round(float(k), 3))
    return draw(st.sampled_from([c.expr > k, c.expr < k, c.expr >= k]))


def binary(draw, op: str, a: B, b: B, symbols, depth) -> B:
    if op == "add":
        return squash(draw, B(a.expr + b.expr, a.lo + b.lo, a.hi + b.hi))
    if op == "sub":
        return squash(draw, B(a.expr - b.expr, a.lo - b.hi, a.hi - b.lo))
    if op == "mul":
        a, b = squash(draw, a, 100.0), squash(draw, b, 100.0)
        return squash(draw, B(a.expr * b.expr, *_mul_bounds(a, b)))
    if op == "div":
        a, d = squash(draw, a, 100.0), nonzero(draw, b)
        inv = B(1 / d.expr, min(1 / d.lo, 1 / d.hi), max(1 / d.lo, 1 / d.hi))
        return squash(draw, B(a.expr / d.expr, *_mul_bounds(a, inv)))
    if op == "pow":  # a real power whose exponent is an expression
        base = positive(draw, squash(draw, a, 10.0))
        ex = squash(draw, b, 3.0)
        ends = [base.lo**ex.lo, base.lo**ex.hi, base.hi**ex.lo, base.hi**ex.hi]
        return squash(draw, B(base.expr**ex.expr, min(ends), max(ends)))
    if op in ("max", "min"):
        fn = sp.Max if op == "max" else sp.Min
        args = [a, b]
        if draw(st.booleans()):
            args.append(_const(draw(st.sampled_from(CONSTANTS[:6]))))
        lo = (max if op == "max" else min)(x.lo for x in args)
        hi = (max if op == "max" else min)(x.hi for x in args)
        return B(fn(*[x.expr for x in args]), lo, hi)
    if op == "piecewise":
        c = tree(draw, symbols, max(depth - 2, 0))
        cond = condition(draw, c)
        if draw(st.integers(0, 3)) == 0:  # three branches, one with a compound condition
            d = leaf(draw, symbols)
            e = _const(draw(st.sampled_from(CONSTANTS)))
            cond2 = condition(draw, d)
            pw = sp.Piecewise((a.expr, cond & cond2), (b.expr, cond), (e.expr, True))
            return B(pw, min(a.lo, b.lo, e.lo), max(a.hi, b.hi, e.hi))
        return B(sp.Piecewise((a.expr, cond), (b.expr, True)), min(a.lo, b.lo), max(a.hi, b.hi))
    raise AssertionError(op)


@dataclass
class ScalarSpec:
    """A generated scalar spec: the objective, its symbols and sampling box."""

    objective: sp.Expr
    params: list[sp.Symbol]
    inputs: list[sp.Symbol]
    targets: list[sp.Symbol]
    dtype: str = "float64"
    bounds: tuple[float, float] = (-BOX, BOX)

    @property
    def data(self) -> list[sp.Symbol]:
        return self.inputs + self.targets

    def kwargs(self) -> dict:
        return dict(params=self.params, inputs=self.inputs, targets=self.targets)

    def __repr__(self) -> str:
        return (
            f"ScalarSpec({self.objective}, params={self.params}, inputs={self.inputs}, "
            f"targets={self.targets}, dtype={self.dtype!r})"
        )


@st.composite
def scalar_specs(
    draw,
    max_depth: int = 4,
    names: st.SearchStrategy[list[str]] | None = None,
    dtypes=("float64",),
    real_symbols: bool | None = None,
    min_data: int = 0,
) -> ScalarSpec:
    """A random scalar spec over 1-3 parameters and 0-2 data symbols."""
    n_params = draw(st.integers(1, 3))
    n_data = draw(st.integers(min_data, 2))
    if names is None:
        labels = [f"w{k}" for k in range(n_params)] + [f"x{k}" for k in range(n_data)]
    else:
        labels = draw(names)[: n_params + n_data]
        n_params = min(n_params, len(labels))
        n_data = len(labels) - n_params
    real = draw(st.booleans()) if real_symbols is None else real_symbols
    syms = [sp.Symbol(s, real=True) if real else sp.Symbol(s) for s in labels]
    params, data = syms[:n_params], syms[n_params:]
    split = draw(st.integers(0, len(data)))
    inputs, targets = data[:split], data[split:]
    body = tree(draw, syms, draw(st.integers(min(2, max_depth), max_depth)), root=True)
    objective = body.expr
    if targets and draw(st.booleans()):
        objective = gc.mse(squash(draw, body, 100.0).expr, targets[0])
    dtype = draw(st.sampled_from(list(dtypes)))
    return ScalarSpec(objective, params, inputs, targets, dtype)


# --------------------------------------------------------------------------- networks

_zz = sp.Symbol("zz", real=True)
USER_LAMBDAS = {
    "swish": (
        sp.Lambda(_zz, _zz / (1 + sp.exp(-_zz))),
        lambda z: z / (1.0 + np.exp(-z)),
    ),
    "softsign": (sp.Lambda(_zz, _zz / (1 + sp.Abs(_zz))), lambda z: z / (1.0 + np.abs(z))),
    "sinact": (sp.Lambda(_zz, sp.sin(_zz) + _zz / 4), lambda z: np.sin(z) + z / 4.0),
    "square": (sp.Lambda(_zz, _zz**2 / 2), lambda z: z**2 / 2.0),
    "gauss": (sp.Lambda(_zz, sp.exp(-(_zz**2))), lambda z: np.exp(-(z**2))),
}


def _np_sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


NP_ACTS = {
    "sigmoid": _np_sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.1 * z),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "identity": lambda z: z,
}
NP_ACTS.update({k: v[1] for k, v in USER_LAMBDAS.items()})
ACT_NAMES = list(NP_ACTS)


def gc_activation(name: str):
    if name in USER_LAMBDAS:
        return gc.elementwise(USER_LAMBDAS[name][0], name=name)
    if name == "leaky_relu":
        return gc.leaky_relu(0.1)
    return getattr(gc, name)


@dataclass
class NetSpec:
    """A random dense network: widths [n_in, h1, …, n_out] and one activation per layer."""

    widths: list[int]
    acts: list[str]
    loss: str  # "mse" | "softmax_cross_entropy"
    dtype: str
    form: str  # "matrix" | "sequential"
    names: list[str] = field(default_factory=list)  # [x, y, W1, b1, W2, b2, …]

    @property
    def depth(self) -> int:
        return len(self.acts)

    def n_params(self) -> int:
        return sum(o * i + o for i, o in zip(self.widths[:-1], self.widths[1:]))

    def build(self):
        """(objective, kwargs for gc.compile, list of param names in order)."""
        acts = [gc_activation(a) for a in self.acts]
        loss_fn = getattr(gc, self.loss)
        if self.form == "sequential":
            layers = [
                gc.Dense(i, o, act) for i, o, act in zip(self.widths[:-1], self.widths[1:], acts)
            ]
            net = gc.Sequential(*layers)
            return net, dict(loss=loss_fn), [p.name for p in net.params]
        x = sp.MatrixSymbol(self.names[0], self.widths[0], 1)
        y = sp.MatrixSymbol(self.names[1], self.widths[-1], 1)
        params, a = [], x
        for k, (i, o, act) in enumerate(zip(self.widths[:-1], self.widths[1:], acts)):
            W = sp.MatrixSymbol(self.names[2 + 2 * k], o, i)
            b = sp.MatrixSymbol(self.names[3 + 2 * k], o, 1)
            params += [W, b]
            a = act(W * a + b)
        kwargs = dict(params=params, inputs=[x], targets=[y], output=a)
        return loss_fn(a, y), kwargs, [p.name for p in params]

    def reference_outputs(self, params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
        """Independent NumPy forward pass; X is (n, n_in); returns (n_out, n)."""
        a = np.asarray(X, dtype=np.float64).T
        for k, act in enumerate(self.acts):
            W, b = params[2 * k], params[2 * k + 1]
            a = NP_ACTS[act](W @ a + b.reshape(-1, 1))
        return a

    def reference_loss(self, params: list[np.ndarray], X: np.ndarray, Y: np.ndarray) -> float:
        A = self.reference_outputs(params, X)
        Yc = np.asarray(Y, dtype=np.float64).T
        if self.loss == "mse":
            per = 0.5 * ((A - Yc) ** 2).sum(axis=0)
        else:
            m = A.max(axis=0, keepdims=True)
            lse = (m + np.log(np.exp(A - m).sum(axis=0, keepdims=True)))[0]
            per = lse - (Yc * A).sum(axis=0)
        return float(per.mean())


@st.composite
def net_specs(
    draw,
    max_depth: int = 4,
    max_width: int = 6,
    names: st.SearchStrategy[list[str]] | None = None,
    dtypes=("float64", "float32"),
    forms=("matrix", "sequential"),
) -> NetSpec:
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    acts = [draw(st.sampled_from(ACT_NAMES)) for _ in range(depth)]
    loss = draw(st.sampled_from(["mse", "softmax_cross_entropy"]))
    dtype = draw(st.sampled_from(list(dtypes)))
    form = draw(st.sampled_from(list(forms))) if names is None else "matrix"
    if names is None:
        labels = ["x", "y"] + [f"{p}{k}" for k in range(1, depth + 1) for p in ("W", "b")]
    else:
        labels = draw(names)[: 2 + 2 * depth]
    return NetSpec(widths, acts, loss, dtype, form, labels)


def net_data(spec: NetSpec, rng: np.random.Generator, n: int):
    """Inputs (n, n_in) and targets (n, n_out): one-hot rows for softmax cross-entropy."""
    X = rng.uniform(-1.0, 1.0, size=(n, spec.widths[0]))
    k = spec.widths[-1]
    if spec.loss == "softmax_cross_entropy":
        Y = np.zeros((n, k))
        Y[np.arange(n), rng.integers(0, k, size=n)] = 1.0
        if rng.random() < 0.3:  # probability targets
            Y = rng.dirichlet(np.ones(k), size=n)
    else:
        Y = rng.uniform(-1.0, 1.0, size=(n, k))
    return X, Y


# --------------------------------------------------------------------------- matrix graphs


@dataclass
class MNode:
    """A matrix (or scalar) SymPy expression paired with a NumPy evaluator for one sample."""

    expr: object
    shape: tuple[int, int]
    fn: object  # fn(P, S, kinks) -> np.ndarray of ``shape``; P params, S one sample's data


@dataclass
class MatrixSpec:
    """A random DAG of matrix operations ending in a per-sample loss."""

    objective: sp.Expr
    params: list
    inputs: list
    targets: list
    loss_fn: object  # loss_fn(P, S, kinks) -> float for one sample
    shapes: dict  # symbol name -> shape
    dtype: str
    ops: list[str]

    def kwargs(self) -> dict:
        return dict(params=self.params, inputs=self.inputs, targets=self.targets)

    def reference_loss(self, P, samples, kinks=None) -> float:
        return float(np.mean([self.loss_fn(P, S, kinks) for S in samples]))

    def __repr__(self) -> str:
        return f"MatrixSpec({self.objective}, ops={self.ops}, dtype={self.dtype!r})"


def _act_node(name: str, v: MNode) -> MNode:
    f = NP_ACTS[name]
    kinked = name in ("relu", "leaky_relu", "softsign")

    def fn(P, S, kinks, _v=v.fn):
        z = _v(P, S, kinks)
        if kinked and kinks is not None:
            kinks.append(float(np.min(np.abs(z))))
        return f(z)

    return MNode(gc_activation(name)(v.expr), v.shape, fn)


@st.composite
def matrix_specs(draw, max_ops: int = 5, max_dim: int = 4, dtypes=("float64",)) -> MatrixSpec:
    """Random matrix programs: dense layers, transposed products, sums, Hadamard products
    and powers, scalar parameters and scalar data times vectors, skip connections, and
    losses mse / softmax cross-entropy / binary cross-entropy / sum / logsumexp, with
    optional L2 penalties on weights (unbatched terms in a batched loss)."""
    params, inputs, targets, shapes, ops = [], [], [], {}, []

    def new_param(prefix, shape):
        name = f"{prefix}{len(params)}"
        s = sp.Symbol(name) if prefix == "c" else sp.MatrixSymbol(name, *shape)
        params.append(s)
        shapes[name] = shape
        return s

    k = draw(st.integers(1, max_dim))
    x = sp.MatrixSymbol("x", k, 1)
    inputs.append(x)
    shapes["x"] = (k, 1)
    pool = [MNode(x, (k, 1), lambda P, S, kinks: S["x"])]
    if draw(st.booleans()):
        k2 = draw(st.integers(1, max_dim))
        x2 = sp.MatrixSymbol("u", k2, 1)
        inputs.append(x2)
        shapes["u"] = (k2, 1)
        pool.append(MNode(x2, (k2, 1), lambda P, S, kinks: S["u"]))
    sx = None
    if draw(st.integers(0, 3)) == 0:
        sx = sp.Symbol("s")
        inputs.append(sx)
        shapes["s"] = (1, 1)

    for step in range(draw(st.integers(1, max_ops))):
        v = pool[-1] if step == 0 else draw(st.sampled_from(pool))
        m = v.shape[0]
        same = [u for u in pool if u.shape == v.shape and u is not v]
        op = draw(
            st.sampled_from(
                ["dense", "dense", "act", "act", "add", "hadamard", "scale_param", "scale_const",
                 "power", "transposed_dense", "scale_data", "nobias"]
            )
        )  # fmt: skip
        if op in ("add", "hadamard") and not same:
            op = "dense"
        if op == "scale_data" and sx is None:
            op = "act"
        if step == 0:  # every program has at least one weight matrix
            op = draw(st.sampled_from(["dense", "nobias", "transposed_dense"]))
        if op in ("dense", "nobias", "transposed_dense"):
            m2 = draw(st.integers(1, max_dim))
            W = new_param("W", (m2, m))
            if op == "transposed_dense":  # (vᵀ·Wᵀ)ᵀ: row-vector products and transposes
                expr = (v.expr.T * W.T).T
            else:
                expr = W * v.expr
            fn = lambda P, S, kinks, _v=v.fn, _w=W.name: P[_w] @ _v(P, S, kinks)  # noqa: E731
            if op != "nobias":
                b = new_param("b", (m2, 1))
                bname = b.name
                expr = expr + b
                fn = lambda P, S, kinks, _f=fn, _b=bname: _f(P, S, kinks) + P[_b]  # noqa: E731
            node = MNode(expr, (m2, 1), fn)
        elif op == "act":
            node = _act_node(draw(st.sampled_from(ACT_NAMES)), v)
        elif op in ("add", "hadamard"):
            u = draw(st.sampled_from(same))
            if op == "add":
                expr = v.expr + u.expr
                fn = lambda P, S, kinks, a=v.fn, b=u.fn: a(P, S, kinks) + b(P, S, kinks)  # noqa: E731
            else:
                expr = sp.HadamardProduct(v.expr, u.expr)
                fn = lambda P, S, kinks, a=v.fn, b=u.fn: a(P, S, kinks) * b(P, S, kinks)  # noqa: E731
            node = MNode(expr, v.shape, fn)
        elif op == "scale_param":
            s = new_param("c", (1, 1))
            node = MNode(
                s * v.expr, v.shape, lambda P, S, kinks, _v=v.fn, _s=s.name: P[_s] * _v(P, S, kinks)
            )
        elif op == "scale_const":
            c = draw(st.sampled_from([0.5, -1.25, 3.0, 0.1, 1e-3]))
            node = MNode(
                c * v.expr, v.shape, lambda P, S, kinks, _v=v.fn, _c=c: _c * _v(P, S, kinks)
            )
        elif op == "scale_data":
            node = MNode(
                sx * v.expr, v.shape, lambda P, S, kinks, _v=v.fn: S["s"] * _v(P, S, kinks)
            )
        else:  # power
            p = draw(st.sampled_from([2, 3]))
            node = MNode(
                sp.HadamardPower(v.expr, p),
                v.shape,
                lambda P, S, kinks, _v=v.fn, _p=p: _v(P, S, kinks) ** _p,
            )
        ops.append(op)
        pool.append(node)

    out = pool[-1]
    m = out.shape[0]
    loss_kind = draw(st.sampled_from(["mse", "sce", "bce", "sum", "logsumexp"]))
    ops.append(loss_kind)
    if loss_kind in ("mse", "sce", "bce"):
        y = sp.MatrixSymbol("y", m, 1)
        targets.append(y)
        shapes["y"] = (m, 1)
    o = out.fn
    if loss_kind == "mse":
        objective = gc.mse(out.expr, y)

        def loss_fn(P, S, kinks):
            return 0.5 * float(np.sum((o(P, S, kinks) - S["y"]) ** 2))
    elif loss_kind == "sce":
        objective = gc.softmax_cross_entropy(out.expr, y)

        def loss_fn(P, S, kinks):
            z = o(P, S, kinks)
            top = np.max(z)
            return float(top + np.log(np.sum(np.exp(z - top))) - np.sum(S["y"] * z))
    elif loss_kind == "bce":
        objective = gc.binary_cross_entropy(gc.sigmoid(out.expr), y)

        def loss_fn(P, S, kinks):
            p = NP_ACTS["sigmoid"](o(P, S, kinks))
            return float(-np.sum(S["y"] * np.log(p) + (1 - S["y"]) * np.log(1 - p)))
    elif loss_kind == "sum":
        objective = gc.sum(out.expr)

        def loss_fn(P, S, kinks):
            return float(np.sum(o(P, S, kinks)))
    else:
        objective = gc.logsumexp(out.expr)

        def loss_fn(P, S, kinks):
            z = o(P, S, kinks)
            top = np.max(z)
            return float(top + np.log(np.sum(np.exp(z - top))))

    weights = [p for p in params if isinstance(p, sp.MatrixSymbol) and p.name.startswith("W")]
    if weights and draw(st.integers(0, 2)) == 0:  # an L2 penalty: unbatched term in the loss
        W = draw(st.sampled_from(weights))
        lam = draw(st.sampled_from([sp.Rational(1, 100), sp.Float(0.3)]))
        objective = objective + lam * gc.sum(sp.HadamardPower(W, 2))
        base = loss_fn
        ops.append(f"l2({W.name})")

        def loss_fn(P, S, kinks, _b=base, _w=W.name, _l=float(lam)):
            return _b(P, S, kinks) + _l * float(np.sum(P[_w] ** 2))

    dtype = draw(st.sampled_from(list(dtypes)))
    return MatrixSpec(objective, params, inputs, targets, loss_fn, shapes, dtype, ops)


def matrix_data(spec: MatrixSpec, rng: np.random.Generator, n: int):
    """(X, Y, samples): gradc's data arguments and the same data as per-sample dicts."""
    cols = {}
    for s in spec.inputs + spec.targets:
        r, _ = spec.shapes[s.name]
        if s.name == "y":
            cols[s.name] = rng.uniform(0.05, 0.95, size=(n, r))
        else:
            cols[s.name] = rng.uniform(-1.0, 1.0, size=(n, r))
    samples = [{k: v[i].reshape(-1, 1) for k, v in cols.items()} for i in range(n)]
    for S in samples:
        if "s" in S:
            S["s"] = float(S["s"][0, 0])

    def pack(symbols):
        arrs = [
            cols[s.name] if spec.shapes[s.name] != (1, 1) else cols[s.name][:, 0] for s in symbols
        ]
        if not arrs:
            return None
        return arrs[0] if len(arrs) == 1 else tuple(arrs)

    return pack(spec.inputs), pack(spec.targets), samples
