"""Plain regression tests for bugs the differential fuzzer (tests/test_fuzz.py) found.

Each test is the minimised reproducer of one finding (see tests/FUZZ.md) and
states what gradc should do. While a bug is open its test is marked
``xfail(strict=True)``: the suite stays green, and the test turns red (XPASS)
the moment the bug is fixed, so that the marker gets removed with the fix.
The ``# observed:`` comments record what the buggy revision did. Tests without
a marker are bugs already fixed (most of them in commit 286c4ef).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import sympy as sp

import gradc as gc


def _value_and_grad(prog, values, X=None, Y=None):
    params = prog.init(values)
    if X is None and Y is None:
        return prog.value_and_grad(params)
    return prog.value_and_grad(params, X, Y)


# ============================================================== wrong numbers


def test_adam_fit_matches_hand_written_adam_when_kernel_has_cse_temporaries():
    """fit's fused train kernel named a CSE temporary ``t0``, shadowing its step-offset
    argument ``t0``: Adam's bias correction used a data value instead of the step number."""
    w, x, y = sp.symbols("w x y")
    # exp(w*x) appears twice: the forward Map gets a CSE temporary named t0
    prog = gc.compile(gc.mse(sp.exp(w * x) + sp.exp(2 * w * x), y), params=[w], inputs=[x],
                      targets=[y])  # fmt: skip
    X, Y = np.array([0.5, 1.0]), np.array([1.0, 2.0])
    params = prog.init({w: 0.1})
    prog.fit(params, X, Y, optimizer=gc.Adam(lr=0.1), steps=3, shuffle=False)
    theta, m, v = 0.1, 0.0, 0.0
    for t in range(1, 4):  # torch.optim.Adam, by hand, on gradc's own gradients
        g = float(prog.grad({"w": theta}, X, Y)["w"])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta -= 0.1 * (m / (1 - 0.9**t)) / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
    # observed: -0.2504 instead of -0.1740
    assert float(params["w"]) == pytest.approx(theta, rel=1e-9)


@pytest.mark.parametrize("c", [1e-40, 0.50000001, 1.7320508])
def test_matrix_scalar_factor_is_not_rounded(c):
    """Scalar constants were folded through ``sympy.nsimplify``, which rounds |c| < ~1e-31
    to 0 and snaps c to nearby simple numbers (0.50000001 → 1/2, 1.7320508 → √3)."""
    x = sp.MatrixSymbol("x", 2, 1)
    W = sp.MatrixSymbol("W", 1, 2)
    prog = gc.compile(gc.sum(c * W * x), params=[W], inputs=[x])
    X = np.array([[1.0, 2.0]])
    loss, grads = prog.value_and_grad(prog.init({W: np.array([[1.0, 1.0]])}), X)
    # observed for c=1e-40: loss 0.0 and gradient [[0, 0]]; for 0.50000001: exactly 1/2
    assert loss == pytest.approx(3.0 * c, rel=1e-12)
    assert np.allclose(grads["W"], c * X, rtol=1e-12, atol=0)


def test_leaky_relu_keeps_tiny_slope():
    """``gc.leaky_relu(alpha)`` passed alpha through ``sympy.nsimplify``: 1e-40 became 0."""
    x, W = sp.MatrixSymbol("x", 1, 1), sp.MatrixSymbol("W", 1, 1)
    prog = gc.compile(gc.sum(gc.leaky_relu(1e-40)(W * x)), params=[W], inputs=[x])
    grads = prog.grad(prog.init({W: np.array([[1.0]])}), np.array([[-1.0]]))
    # d/dW leaky_relu(W*x) at W*x = -1 is alpha*x = -1e-40; observed 0.0
    assert float(grads["W"][0, 0]) == pytest.approx(-1e-40, rel=1e-9)


# ============================================================== crashes / non-GradcError


@pytest.mark.parametrize("name", ["w\\N", "w\\x", "w\\u"])
def test_backslash_in_symbol_name(name):
    """A backslash escape in a symbol name was written verbatim into the generated
    module's docstring: SyntaxError on the first call."""
    w = sp.Symbol(name)
    prog = gc.compile(w**2, params=[w])
    loss, grads = _value_and_grad(prog, {w: 1.5})  # observed: SyntaxError (unicode error)
    assert loss == pytest.approx(2.25)
    assert float(grads[name]) == pytest.approx(3.0)


def test_triple_quote_in_symbol_name():
    """A name containing three double quotes ended the generated docstring early: SyntaxError."""
    name = 'a"""b'
    w = sp.Symbol(name)
    prog = gc.compile(w**2, params=[w])
    loss, grads = _value_and_grad(prog, {w: 1.5})  # observed: SyntaxError
    assert loss == pytest.approx(2.25)
    assert float(grads[name]) == pytest.approx(3.0)


def test_piecewise_without_otherwise_branch():
    """A Piecewise without an otherwise branch printed as ``... else None``: TypeError
    (expected float64, got None) where no condition holds."""
    w = sp.Symbol("w")
    try:
        prog = gc.compile(sp.Piecewise((w**2, w > 0)), params=[w])
        prog.value_and_grad(prog.init({w: -1.0}))  # observed: TypeError
    except gc.GradcError as exc:
        assert "Piecewise" in str(exc)


def test_complex_constant_is_refused():
    """``sympy.I`` in the loss reached Numba: TypingError (complex128 into a float64 array)."""
    w = sp.Symbol("w")
    with pytest.raises(gc.GradcError, match=r"I|complex|real"):
        prog = gc.compile(w**2 + sp.I * w, params=[w])
        prog.value_and_grad(prog.init({w: 0.5}))  # observed: numba TypingError


@pytest.mark.parametrize("const", [sp.zoo, sp.oo])
def test_infinite_constant_in_expression_is_refused(const):
    """``w + zoo`` / ``w*oo`` compiled and returned NaN loss and gradient."""
    w = sp.Symbol("w")
    with pytest.raises(gc.GradcError):
        prog = gc.compile(w**2 + const * w, params=[w])
        prog.value_and_grad(prog.init({w: 0.5}))  # observed: (nan, {'w': nan}), no error


# ============================================================== non-finite results, silently


def test_scalar_sigmoid_gradient_for_large_negative_argument():
    """The scalar sigmoid's derivative was exp(-z)/(1+exp(-z))**2 = inf/inf = NaN for
    z < -709, where the true gradient is ~0."""
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(gc.sigmoid(w * x), y), params=[w], inputs=[x], targets=[y])
    loss, grads = _value_and_grad(prog, {w: 1.0}, np.array([-800.0]), np.array([1.0]))
    assert loss == pytest.approx(0.5)
    g = float(grads["w"])  # observed: nan
    assert math.isfinite(g) and abs(g) < 1e-300


def test_float32_program_refuses_data_beyond_float32_range():
    """A float32 program accepted float64 data beyond float32's range: the NaN/inf check
    ran before the cast and the kernels saw inf."""
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y], dtype="float32")
    with pytest.raises(gc.GradcError, match="x"):
        # observed: (inf, {'w': inf}) without an error
        _value_and_grad(prog, {w: 0.5}, np.array([1e300, 1.0]), np.array([0.0, 1.0]))


def test_overflowing_loss_is_reported():
    """value_and_grad returned an overflowed (inf) loss instead of raising GradcError."""
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    with pytest.raises(gc.GradcError):
        # exact loss 3.1e599 is not a float64; observed: (inf, {'w': inf})
        _value_and_grad(prog, {w: 0.5}, np.array([1e300, 1.0]), np.array([0.0, 1.0]))


# ============================================================== unhelpful messages


def test_naive_abs_of_plain_symbol():
    """strategy='naive' refused Abs of a plain Symbol with "function re has no kernel
    form" (SymPy's complex derivative of Abs) while 'shared' compiled it."""
    w = sp.Symbol("w")
    prog = gc.compile(sp.Abs(w) * 3, params=[w], strategy="naive")  # observed: GradcError 're'
    loss, grads = _value_and_grad(prog, {w: -1.5})
    assert loss == pytest.approx(4.5)
    assert float(grads["w"]) == pytest.approx(-3.0)


def test_refusal_message_names_user_symbol():
    """Refusal messages named gradc's internal dummy ``_a0`` instead of the user's symbol."""
    weight = sp.Symbol("weight")
    with pytest.raises(gc.GradcError) as exc:
        gc.compile(weight * sp.floor(weight), params=[weight])
    # observed: "SymPy finds no derivative of _a0*floor(_a0) in _a0"
    assert "weight" in str(exc.value) and "_a0" not in str(exc.value)


# ============================================================== open


@pytest.mark.xfail(
    strict=True,
    reason="Abs(f) where SymPy cannot prove f real (here Min(w, 1/x): 1/x may be zoo) is "
    "refused with 'function re has no kernel form in gradc' (SymPy's complex derivative "
    "of Abs); both strategies; since 286c4ef also hit by a scalar gc.sigmoid inside Abs",
)
@pytest.mark.parametrize("strategy", ["shared", "naive"])
def test_abs_of_expression_not_provably_real(strategy):
    w, x = sp.symbols("w x")
    prog = gc.compile(sp.Abs(sp.Min(w, 1 / x)), params=[w], inputs=[x], strategy=strategy)
    loss, grads = _value_and_grad(prog, {w: -0.5}, np.array([1.0, 4.0]))
    # |min(-0.5, 1)| = |min(-0.5, 0.25)| = 0.5; d/dw = sign(w) = -1 on both samples
    assert loss == pytest.approx(0.5)
    assert float(grads["w"]) == pytest.approx(-1.0)


@pytest.mark.xfail(
    strict=True,
    reason="Abs of an expression holding a scalar gc.sigmoid (matched into its own node "
    "since 286c4ef, so SymPy no longer sees it is positive) is refused: 'function re'",
)
def test_abs_with_scalar_sigmoid_inside():
    w, x = sp.symbols("w x")
    expr = sp.Abs(w + sp.Min(x, x / (gc.sigmoid(x) + sp.Rational(1, 10))))
    prog = gc.compile(expr, params=[w], inputs=[x])
    loss, grads = _value_and_grad(prog, {w: 2.0}, np.array([1.0]))
    s = 1.0 / (1.0 + math.exp(-1.0))
    assert loss == pytest.approx(abs(2.0 + min(1.0, 1.0 / (s + 0.1))))
    assert float(grads["w"]) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [[[1.0, 2.0], [3.0]], ["a", "b"]], ids=["ragged", "text"])
def test_data_that_is_not_an_array_of_numbers_is_refused_by_name(bad):
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    with pytest.raises(gc.GradcError, match=r"input 'x': data is not an array of real numbers"):
        prog.loss(prog.init({w: 1.0}), bad, np.array([0.0, 1.0]))


def test_complex_data_is_refused():
    # was: cast to float with only a ComplexWarning, the imaginary part dropped
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    params = prog.init({w: 1.0})
    with pytest.raises(gc.GradcError, match=r"input 'x'.*complex"):
        prog.value_and_grad(params, np.array([1 + 2j, 3.0]), np.array([0.0, 1.0]))


@pytest.mark.xfail(
    strict=True,
    reason="predict returns an overflowed output (inf) silently, while loss/value_and_grad "
    "on the same data raise GradcError (since 286c4ef)",
)
def test_predict_overflow_is_reported():
    x, y, W = (sp.MatrixSymbol(s, 1, 1) for s in ("x", "y", "W"))
    z = sp.Symbol("z")
    square = gc.elementwise(sp.Lambda(z, z**2), name="square")
    out = square(W * x)
    prog = gc.compile(gc.mse(out, y), params=[W], inputs=[x], targets=[y], output=out)
    params = prog.init({W: np.array([[1.0]])})
    X = np.array([[1e300]])
    with pytest.raises(gc.GradcError):
        prog.loss(params, X, np.array([[0.0]]))
    with pytest.raises(gc.GradcError):
        prog.predict(params, X)  # observed: array([[inf]])


@pytest.mark.skipif(
    os.environ.get("GRADC_FUZZ", "") != "long",
    reason="compiling ~250 scalar parameters takes minutes; runs under GRADC_FUZZ=long",
)
@pytest.mark.xfail(
    strict=True,
    reason="fit with ~120-200+ scalar parameters: Numba's SSA pass overflows Python's "
    "recursion limit on the fused train kernel (RecursionError, not GradcError); "
    "value_and_grad on the same program works",
)
def test_fit_with_many_scalar_parameters():
    ps = sp.symbols("p0:250")
    x, y = sp.symbols("x y")
    objective = sum(((k + 1) * (p * x - y) ** 2 for k, p in enumerate(ps)), sp.Integer(0))
    prog = gc.compile(objective, params=list(ps), inputs=[x], targets=[y])
    params = prog.init({})
    try:
        prog.fit(params, np.ones(3), np.zeros(3), steps=1)  # observed: RecursionError
    except gc.GradcError:
        pass  # a clear refusal would be acceptable too


def test_fit_again_after_the_caller_swaps_arrays_or_data():
    """fit keeps the last call's parameter arrays, plan and kernel arguments and
    finds them again by identity: a call after the caller put a new array into
    the dict, or with more rows, must train the new array on the new data. The
    reference is plain SGD on w·x (one weight, batch 1), by hand."""
    wv, xv, yv = sp.symbols("wagain xagain yagain")
    prog = gc.compile(gc.mse(wv * xv, yv), params=[wv], inputs=[xv], targets=[yv])
    opt = gc.SGD(0.1)

    def by_hand(w, X, Y):
        for x, y in zip(X, Y):
            w -= 0.1 * (w * x - y) * x
        return w

    X, Y = np.array([1.0, 2.0, 0.5]), np.array([2.0, 4.0, 1.0])
    params = {"wagain": np.array([[0.25]])}
    prog.fit(params, X, Y, optimizer=opt, batch_size=1, shuffle=False)
    w1 = by_hand(0.25, X, Y)
    assert params["wagain"].item() == pytest.approx(w1, rel=1e-14)
    kept = params["wagain"]
    params["wagain"] = np.array([[-1.0]])  # a new array in the same dict
    prog.fit(params, X, Y, optimizer=opt, batch_size=1, shuffle=False)
    assert params["wagain"].item() == pytest.approx(by_hand(-1.0, X, Y), rel=1e-14)
    assert kept.item() == pytest.approx(w1, rel=1e-14)  # the old one untouched
    X2, Y2 = np.array([1.0, -1.0, 3.0, 0.5, 2.0]), np.array([1.0, -2.0, 6.0, 0.0, 4.0])
    w = params["wagain"].item()
    hist = prog.fit(params, X2, Y2, optimizer=opt, batch_size=1, shuffle=False)
    assert params["wagain"].item() == pytest.approx(by_hand(w, X2, Y2), rel=1e-14)
    assert hist.steps == 5 and hist.samples == 5
    losses = hist.loss
    assert hist.epoch_loss == pytest.approx([losses.mean()], rel=1e-14)
    opt.values["lr"] = 0.05  # a changed hyperparameter reaches the kernel
    w = params["wagain"].item()
    prog.fit(params, X2, Y2, optimizer=opt, batch_size=1, shuffle=False)
    for x, y in zip(X2, Y2):
        w -= 0.05 * (w * x - y) * x
    assert params["wagain"].item() == pytest.approx(w, rel=1e-14)


def test_a_parameter_reshaped_in_place_between_fit_calls_is_refused():
    """fit finds the last call's parameter arrays again by identity; one whose
    shape the caller changed in place since (same entries, other shape) must be
    refused by name, not indexed with the old shape."""
    W = sp.MatrixSymbol("Wreshape", 2, 3)
    x, y = sp.MatrixSymbol("xreshape", 3, 1), sp.MatrixSymbol("yreshape", 2, 1)
    prog = gc.compile(gc.mse(W * x, y), params=[W], inputs=[x], targets=[y])
    params = {"Wreshape": np.ones((2, 3))}
    X, Y = np.ones((4, 3)), np.zeros((4, 2))
    prog.fit(params, X, Y, optimizer=gc.SGD(0.01), batch_size=1)
    params["Wreshape"].shape = (3, 2)
    with pytest.raises(gc.GradcError, match="Wreshape"):
        prog.fit(params, X, Y, optimizer=gc.SGD(0.01), batch_size=1)


def test_value_and_grad_fast_and_general_paths_against_the_hand_gradient():
    """value_and_grad builds its kernel arguments from a recipe and, for a dict of
    the kernels' own arrays (what ``init`` returns), returns the gradient arrays
    as they are; other dicts (symbol keys, lists, other shapes) take the general
    path. Both give the hand-written gradient of ½‖W·x + b − y‖² (batch mean),
    fresh arrays at every call, and name a parameter holding NaN."""
    W = sp.MatrixSymbol("Wvag", 2, 3)
    b = sp.MatrixSymbol("bvag", 2, 1)
    x, y = sp.MatrixSymbol("xvag", 3, 1), sp.MatrixSymbol("yvag", 2, 1)
    prog = gc.compile(gc.mse(W * x + b, y), params=[W, b], inputs=[x], targets=[y])
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    params = prog.init(seed=3)
    Wv, bv = params["Wvag"].copy(), params["bvag"].reshape(2).copy()
    R = X @ Wv.T + bv - Y  # (5, 2) residuals
    want_loss = 0.5 * (R**2).sum(axis=1).mean()
    want_W, want_b = R.T @ X / 5, R.mean(axis=0)
    loss, g = prog.value_and_grad(params, X, Y)  # fast path
    loss2, g2 = prog.value_and_grad(params, X, Y)  # again: the memo by identity
    assert g["Wvag"] is not g2["Wvag"]
    general = {W: Wv.tolist(), b: bv.tolist()}  # symbol keys, lists, b as a flat list
    loss3, g3 = prog.value_and_grad(general, X, Y)
    for lo, grads in ((loss, g), (loss2, g2), (loss3, g3)):
        assert lo == pytest.approx(want_loss, rel=1e-13)
        np.testing.assert_allclose(np.reshape(grads["Wvag"], (2, 3)), want_W, rtol=1e-12)
        np.testing.assert_allclose(np.reshape(grads["bvag"], 2), want_b, rtol=1e-12)
    assert np.shape(g3["bvag"]) == (2,)  # shaped like the caller's value
    g["Wvag"][...] = 0.0  # the caller's copy: the next call is not affected
    _, g4 = prog.value_and_grad(params, X, Y)
    np.testing.assert_allclose(g4["Wvag"], want_W, rtol=1e-12)
    params["bvag"][1, 0] = np.nan
    with pytest.raises(gc.GradcError, match="bvag"):
        prog.value_and_grad(params, X, Y)
