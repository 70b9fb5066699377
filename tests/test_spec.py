"""spec stage: the elementwise table, losses and layers, against independent math."""

import math

import numpy as np
import pytest
import sympy as sp

import gradc as gc
from gradc.spec.elementwise import _REGISTRY, BUILTIN

Z = sp.Symbol("z")
POINTS = [-3.1, -0.8, -0.05, 0.05, 0.6, 2.7]


def _f(lam, z):
    return float(lam(sp.Float(z)).evalf())


def _rows():
    gc.leaky_relu(0.2)  # make sure a leaky row exists
    return list(_REGISTRY.values())


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r.name)
def test_derivative_and_via_out_match_finite_differences(row):
    h = 1e-6
    for z in POINTS:
        fd = (_f(row.body, z + h) - _f(row.body, z - h)) / (2 * h)
        d = _f(row.deriv, z)
        assert abs(d - fd) < 1e-6 * max(1, abs(fd)), (row.name, z)
        if row.deriv_via_out is not None:
            y = _f(row.body, z)
            assert abs(_f(row.deriv_via_out, y) - fd) < 1e-6 * max(1, abs(fd)), (row.name, z)


def test_relu_derivative_is_zero_at_the_kink_and_leaky_is_alpha():
    assert _f(gc.relu.deriv, 0.0) == 0.0
    assert _f(gc.leaky_relu(0.1).deriv, 0.0) == pytest.approx(0.1)


def test_softplus_is_overflow_free():
    # log(1 + e^z) overflows in floating point for z = 1000; the registered form does not
    f = sp.lambdify(Z, gc.softplus.body(Z), "math")
    assert f(1000.0) == pytest.approx(1000.0)
    assert f(-1000.0) == pytest.approx(0.0, abs=1e-300)


def test_elementwise_applies_to_scalars_and_matrices():
    t = sp.Symbol("t")
    assert gc.tanh(t) == sp.tanh(t)
    M = sp.MatrixSymbol("M", 3, 1)
    e = gc.sigmoid(M)
    assert isinstance(e, sp.MatrixExpr) and e.shape == (3, 1)
    explicit = e.as_explicit()
    assert explicit[1, 0] == 1 / (1 + sp.exp(-M[1, 0]))


def test_user_function_with_bad_hint_is_refused():
    with pytest.raises(gc.GradcError, match="hint"):
        gc.elementwise(sp.Lambda(Z, sp.exp(2 * Z)), name="e2", deriv_via_out=sp.Lambda(Z, Z))


def test_user_function_without_a_derivative_is_refused():
    f = sp.Function("mystery")
    with pytest.raises(gc.GradcError, match="mystery"):
        gc.elementwise(sp.Lambda(Z, f(Z)))


def test_losses_match_their_formulas():
    y = sp.MatrixSymbol("y", 3, 1)
    v = sp.MatrixSymbol("v", 3, 1)
    vals = {v: sp.Matrix([0.3, -1.2, 2.0]), y: sp.Matrix([0.0, 1.0, 0.0])}
    ce = gc.softmax_cross_entropy(v, y).subs(vals).doit()
    lv = np.array([0.3, -1.2, 2.0])
    expect = math.log(np.exp(lv).sum()) - (-1.2)
    assert float(ce) == pytest.approx(expect)
    mse = gc.mse(v, y).subs(vals).doit()
    assert float(mse) == pytest.approx(0.5 * ((lv - [0, 1, 0]) ** 2).sum())


def test_sequential_builds_sympy_expressions():
    net = gc.Sequential(gc.Dense(3, 4, gc.relu), gc.Dense(4, 2))
    assert isinstance(net.output, sp.MatrixExpr) and net.output.shape == (2, 1)
    assert [p.name for p in net.params] == ["W1", "b1", "W2", "b2"]
    assert all(isinstance(p, sp.MatrixSymbol) for p in net.params)


def test_optimizer_rules_are_sympy():
    rule = gc.Adam().update_rule
    assert [str(t) for t, _ in rule.assignments] == ["state_m", "state_v", "theta"]
    with pytest.raises(gc.GradcError, match="nope"):
        gc.SGD(nope=1.0)


@pytest.mark.parametrize("row", BUILTIN, ids=lambda r: r.name)
def test_builtin_derivatives_are_sympy_diff_and_match_their_hints(row):
    """The built-in rows carry their derivative (no diff at import): it must be
    sympy.diff of the body, and the y ↦ f'(z) hint must agree with it."""
    z = sp.Symbol("z", real=True)
    body, deriv = row.body(z), row.deriv(z)
    want = sp.diff(body, z)
    for p in (-3.0, -0.7, 0.4, 2.5):
        at = {z: sp.Float(p)}
        d = float(deriv.xreplace(at))
        assert d == pytest.approx(float(want.xreplace(at)), rel=1e-14, abs=1e-15)
        y = float(body.xreplace(at))
        assert float(row.deriv_via_out(sp.Float(y))) == pytest.approx(d, rel=1e-12, abs=1e-15)
