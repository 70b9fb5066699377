"""Contract tests, forms (a) and (b) of API.md: scalar objectives and scalar data.

Every number is checked against a closed form or a hand formula, never
against gradc's own output.
"""

import math

import numpy as np
import pytest
import sympy as sp
from reference import finite_diff

import gradc as gc

# ======================================================================
# form (a): the bowl J = w1^2 + w2^2 + 2 w2 + 5
# ======================================================================

w1, w2 = sp.symbols("w1 w2")
BOWL = w1**2 + w2**2 + 2 * w2 + 5


def bowl_J(a, b):
    return a * a + b * b + 2 * b + 5


def bowl_grad(a, b):
    return 2 * a, 2 * b + 2


@pytest.fixture(scope="module")
def bowl():
    return gc.compile(BOWL, params=[w1, w2])


def test_init_keys_by_symbol(bowl):
    params = bowl.init({w1: -2.0, w2: 3.0})
    assert isinstance(params, dict)
    assert set(params) == {"w1", "w2"}
    for k in ("w1", "w2"):
        assert isinstance(params[k], np.ndarray)
        assert params[k].shape == ()  # scalar params are 0-d arrays
    assert float(params["w1"]) == -2.0
    assert float(params["w2"]) == 3.0


def test_init_keys_by_str(bowl):
    params = bowl.init({"w1": -2.0, "w2": 3.0})
    assert set(params) == {"w1", "w2"}
    assert params["w1"].shape == () and params["w2"].shape == ()
    assert float(params["w1"]) == -2.0
    assert float(params["w2"]) == 3.0


def test_init_seed_shapes(bowl):
    params = bowl.init(seed=0)
    assert set(params) == {"w1", "w2"}
    for v in params.values():
        assert isinstance(v, np.ndarray) and v.shape == ()
        assert np.isfinite(v)
    again = bowl.init(seed=0)
    for k in params:
        assert float(params[k]) == float(again[k])


def test_bowl_value_and_grad(bowl):
    params = bowl.init({w1: -2.0, w2: 3.0})
    loss, grads = bowl.value_and_grad(params)
    assert float(loss) == pytest.approx(bowl_J(-2.0, 3.0), rel=1e-14)
    g1, g2 = bowl_grad(-2.0, 3.0)
    assert set(grads) == {"w1", "w2"}
    assert np.shape(grads["w1"]) == () and np.shape(grads["w2"]) == ()
    assert float(grads["w1"]) == pytest.approx(g1, rel=1e-14)
    assert float(grads["w2"]) == pytest.approx(g2, rel=1e-14)
    assert float(bowl.loss(params)) == pytest.approx(24.0, rel=1e-14)
    g = bowl.grad(params)
    assert float(g["w1"]) == pytest.approx(-4.0, rel=1e-14)
    assert float(g["w2"]) == pytest.approx(8.0, rel=1e-14)


def test_bowl_loss_is_float(bowl):
    params = bowl.init({w1: 0.5, w2: -0.25})
    loss = bowl.loss(params)
    assert isinstance(loss, (float, np.floating))
    assert float(loss) == pytest.approx(bowl_J(0.5, -0.25), rel=1e-14)


def test_bowl_fit_path_closed_form(bowl):
    """20 SGD steps, lr 0.1, from (-2, 3).

    w1 <- w1 - 0.1 * 2 w1 = 0.8 w1          => w1_k = -2 * 0.8^k
    w2 + 1 <- (w2 + 1) - 0.1 * 2 (w2 + 1)   => w2_k = -1 + 4 * 0.8^k
    (the factor is 1 - 2*lr = 0.8 for this J.)
    """
    params = bowl.init({w1: -2.0, w2: 3.0})
    hist = bowl.fit(params, steps=20, optimizer=gc.SGD(lr=0.1), record_path=True)
    assert isinstance(hist, gc.History)
    loss = np.asarray(hist.loss)
    assert loss.ndim == 1 and loss.shape == (20,)
    assert len(hist.path) == 21  # starting point first, then one per step
    for k in range(21):
        a = -2.0 * 0.8**k
        b = -1.0 + 4.0 * 0.8**k
        pk = hist.path[k]
        assert float(pk["w1"]) == pytest.approx(a, rel=1e-12, abs=1e-15), k
        assert float(pk["w2"]) == pytest.approx(b, rel=1e-12, abs=1e-15), k
        if k < 20:  # loss before the step
            assert loss[k] == pytest.approx(bowl_J(a, b), rel=1e-12), k
    # params updated in place, equal to the final point
    assert float(params["w1"]) == pytest.approx(-2.0 * 0.8**20, rel=1e-12)
    assert float(params["w2"]) == pytest.approx(-1.0 + 4.0 * 0.8**20, rel=1e-12)
    # the starting point was copied, not aliased to the live params
    assert float(hist.path[0]["w1"]) == -2.0
    assert float(hist.path[0]["w2"]) == 3.0


def test_bowl_fit_iterated_by_hand(bowl):
    """Same run, checked against an explicit iteration of the hand gradient."""
    params = bowl.init({"w1": -2.0, "w2": 3.0})
    hist = bowl.fit(params, steps=20, optimizer=gc.SGD(lr=0.1))
    a, b = -2.0, 3.0
    losses = []
    for _ in range(20):
        losses.append(bowl_J(a, b))
        ga, gb = bowl_grad(a, b)
        a, b = a - 0.1 * ga, b - 0.1 * gb
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-12)
    assert float(params["w1"]) == pytest.approx(a, rel=1e-12)
    assert float(params["w2"]) == pytest.approx(b, rel=1e-12)


def test_bowl_naive_strategy_same_gradients():
    prog = gc.compile(BOWL, params=[w1, w2], strategy="naive")
    params = prog.init({w1: 1.5, w2: -0.5})
    loss, grads = prog.value_and_grad(params)
    assert float(loss) == pytest.approx(bowl_J(1.5, -0.5), rel=1e-14)
    assert float(grads["w1"]) == pytest.approx(3.0, rel=1e-14)
    assert float(grads["w2"]) == pytest.approx(1.0, rel=1e-14)


def test_spec_object_accepted():
    spec = gc.Spec(BOWL, params=[w1, w2])
    prog = gc.compile(spec)
    params = prog.init({w1: -2.0, w2: 3.0})
    loss, grads = prog.value_and_grad(params)
    assert float(loss) == pytest.approx(24.0)
    assert float(grads["w1"]) == pytest.approx(-4.0)
    assert float(grads["w2"]) == pytest.approx(8.0)


def test_transcendental_scalar_objective():
    """Form (a) is 'any scalar objective': exp, sin, cos, log."""
    a, b = sp.symbols("a b")
    J = sp.exp(a / 2) + sp.sin(b) * a + sp.log(1 + b**2) + sp.cos(a * b)
    prog = gc.compile(J, params=[a, b])
    av, bv = 0.7, -1.3
    params = prog.init({a: av, b: bv})
    loss, grads = prog.value_and_grad(params)
    Jv = math.exp(av / 2) + math.sin(bv) * av + math.log(1 + bv**2) + math.cos(av * bv)
    ga = 0.5 * math.exp(av / 2) + math.sin(bv) - bv * math.sin(av * bv)
    gb = math.cos(bv) * av + 2 * bv / (1 + bv**2) - av * math.sin(av * bv)
    assert float(loss) == pytest.approx(Jv, rel=1e-13)
    assert float(grads["a"]) == pytest.approx(ga, rel=1e-12)
    assert float(grads["b"]) == pytest.approx(gb, rel=1e-12)


# ======================================================================
# form (b): linear regression over scalar data symbols
# ======================================================================

w, b, x, y = sp.symbols("w b x y")


@pytest.fixture(scope="module")
def linreg():
    return gc.compile(gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])


@pytest.fixture(scope="module")
def linreg_out():
    return gc.compile(
        gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y], output=w * x + b
    )


@pytest.fixture(scope="module")
def linreg_data():
    rng = np.random.default_rng(1)
    n = 20
    X = rng.uniform(-1.0, 1.0, size=n)
    Y = 3.0 * X - 0.5 + 0.1 * rng.standard_normal(n)
    return X, Y


def hand_linreg(wv, bv, X, Y):
    """L = 1/(2n) sum (w x + b - y)^2; dL/dw = mean(r x); dL/db = mean(r)."""
    r = wv * X + bv - Y
    return 0.5 * np.mean(r * r), np.mean(r * X), np.mean(r)


def test_mse_returns_scalar_expr():
    e = gc.mse(w * x + b, y)
    assert isinstance(e, sp.Expr) and not isinstance(e, sp.MatrixExpr)


@pytest.mark.parametrize("xshape", ["flat", "column"])
@pytest.mark.parametrize("yshape", ["flat", "column"])
def test_linreg_value_and_grad_hand(linreg, linreg_data, xshape, yshape):
    X, Y = linreg_data
    Xa = X if xshape == "flat" else X.reshape(-1, 1)
    Ya = Y if yshape == "flat" else Y.reshape(-1, 1)
    params = linreg.init({w: 0.3, b: -0.2})
    loss, grads = linreg.value_and_grad(params, Xa, Ya)
    L, gw, gb = hand_linreg(0.3, -0.2, X, Y)
    assert float(loss) == pytest.approx(L, rel=1e-12)
    assert np.shape(grads["w"]) == () and np.shape(grads["b"]) == ()
    assert float(grads["w"]) == pytest.approx(gw, rel=1e-12)
    assert float(grads["b"]) == pytest.approx(gb, rel=1e-12)
    assert float(linreg.loss(params, Xa, Ya)) == pytest.approx(L, rel=1e-12)
    g = linreg.grad(params, Xa, Ya)
    assert float(g["w"]) == pytest.approx(gw, rel=1e-12)
    assert float(g["b"]) == pytest.approx(gb, rel=1e-12)


def test_linreg_grad_vs_finite_differences(linreg, linreg_data):
    X, Y = linreg_data
    params = linreg.init({"w": -1.1, "b": 0.4})
    fd = finite_diff(lambda p: hand_linreg(float(p["w"]), float(p["b"]), X, Y)[0], params)
    grads = linreg.grad(params, X, Y)
    for k in ("w", "b"):
        assert float(grads[k]) == pytest.approx(float(fd[k]), rel=1e-6, abs=1e-9)


def test_linreg_fit_matches_lstsq(linreg, linreg_data):
    X, Y = linreg_data
    A = np.column_stack([X, np.ones_like(X)])
    (w_ls, b_ls), *_ = np.linalg.lstsq(A, Y, rcond=None)
    params = linreg.init({w: 0.0, b: 0.0})
    epochs = 400
    hist = linreg.fit(params, X, Y, optimizer=gc.SGD(lr=0.5), epochs=epochs)
    assert float(params["w"]) == pytest.approx(w_ls, rel=1e-8, abs=1e-10)
    assert float(params["b"]) == pytest.approx(b_ls, rel=1e-8, abs=1e-10)
    # full batch: one update step per epoch
    assert np.asarray(hist.loss).shape == (epochs,)
    assert len(np.asarray(hist.epoch_loss)) == epochs
    L0, _, _ = hand_linreg(0.0, 0.0, X, Y)
    assert float(hist.loss[0]) == pytest.approx(L0, rel=1e-12)
    L_ls, _, _ = hand_linreg(w_ls, b_ls, X, Y)
    assert float(linreg.loss(params, X, Y)) == pytest.approx(L_ls, rel=1e-9)


def test_linreg_full_batch_steps_by_hand(linreg, linreg_data):
    """Three full-batch SGD steps, each checked against the hand gradient."""
    X, Y = linreg_data
    params = linreg.init({w: 0.25, b: 0.75})
    hist = linreg.fit(
        params,
        X.reshape(-1, 1),
        Y.reshape(-1, 1),
        optimizer=gc.SGD(lr=0.3),
        epochs=3,
        shuffle=False,
    )
    wv, bv = 0.25, 0.75
    losses = []
    for _ in range(3):
        L, gw, gb = hand_linreg(wv, bv, X, Y)
        losses.append(L)
        wv, bv = wv - 0.3 * gw, bv - 0.3 * gb
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=1e-12)
    assert float(params["w"]) == pytest.approx(wv, rel=1e-12)
    assert float(params["b"]) == pytest.approx(bv, rel=1e-12)


def test_linreg_predict_shape(linreg_out, linreg_data):
    X, _ = linreg_data
    params = linreg_out.init({w: 2.0, b: -1.0})
    for Xa in (X, X.reshape(-1, 1)):
        yhat = linreg_out.predict(params, Xa)
        assert isinstance(yhat, np.ndarray)
        # API.md: predict returns (n, k); a scalar output has k = 1
        assert yhat.shape == (X.shape[0], 1)
        np.testing.assert_allclose(yhat[:, 0], 2.0 * X - 1.0, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- several inputs

x1, x2, wa, wb, c0, t = sp.symbols("x1 x2 wa wb c0 t")


@pytest.fixture(scope="module")
def two_inputs():
    return gc.compile(
        gc.mse(wa * x1 + wb * x2 + c0, t), params=[wa, wb, c0], inputs=[x1, x2], targets=[t]
    )


def test_several_inputs_tuple(two_inputs):
    rng = np.random.default_rng(5)
    n = 9
    X1, X2 = rng.standard_normal(n), rng.standard_normal(n)
    T = rng.standard_normal(n)
    params = two_inputs.init({wa: 0.5, wb: -1.5, c0: 0.25})
    loss, grads = two_inputs.value_and_grad(params, (X1, X2), T)
    r = 0.5 * X1 - 1.5 * X2 + 0.25 - T
    assert float(loss) == pytest.approx(0.5 * np.mean(r * r), rel=1e-12)
    assert float(grads["wa"]) == pytest.approx(np.mean(r * X1), rel=1e-12)
    assert float(grads["wb"]) == pytest.approx(np.mean(r * X2), rel=1e-12)
    assert float(grads["c0"]) == pytest.approx(np.mean(r), rel=1e-12)
    # the same with column-shaped arrays
    loss2, grads2 = two_inputs.value_and_grad(
        params, (X1.reshape(-1, 1), X2.reshape(-1, 1)), T.reshape(-1, 1)
    )
    assert float(loss2) == pytest.approx(0.5 * np.mean(r * r), rel=1e-12)
    assert float(grads2["wb"]) == pytest.approx(np.mean(r * X2), rel=1e-12)


# ---------------------------------------------------------------- logistic regression


def test_logistic_regression_bce():
    wl, bl, xl, yl = sp.symbols("wl bl xl yl")
    p = gc.sigmoid(wl * xl + bl)
    assert isinstance(p, sp.Expr) and not isinstance(p, sp.MatrixExpr)
    prog = gc.compile(gc.binary_cross_entropy(p, yl), params=[wl, bl], inputs=[xl], targets=[yl])
    rng = np.random.default_rng(3)
    n = 11
    X = rng.standard_normal(n)
    Y = (rng.uniform(size=n) < 0.5).astype(np.float64)
    params = prog.init({wl: 0.8, bl: -0.3})
    loss, grads = prog.value_and_grad(params, X, Y)
    z = 0.8 * X - 0.3
    pv = 1.0 / (1.0 + np.exp(-z))
    L = np.mean(-(Y * np.log(pv) + (1 - Y) * np.log(1 - pv)))
    assert float(loss) == pytest.approx(L, rel=1e-11)
    assert float(grads["wl"]) == pytest.approx(np.mean((pv - Y) * X), rel=1e-10)
    assert float(grads["bl"]) == pytest.approx(np.mean(pv - Y), rel=1e-10)


@pytest.mark.parametrize(
    "batch_size, epochs, steps",
    [(2, 3, None), (3, 2, None), (7, 2, None), (2, 1, 6), (1, 1, 5)],
)
def test_epoch_loss_is_each_epochs_mean_per_sample_loss(batch_size, epochs, steps):
    """With lr = 0 the parameters never move, so each epoch's loss is the mean of
    the closed-form per-sample loss ½(w·x − y)² over the samples it used (a short
    last batch weighs less; steps= may end an epoch early, after full batches)."""
    w, x, y = sp.symbols("w x y")
    prog = gc.compile(gc.mse(w * x, y), params=[w], inputs=[x], targets=[y])
    X = np.array([0.5, -1.0, 2.0, 3.0, -0.25, 1.5, 4.0])
    Y = np.array([1.0, 0.0, -2.0, 0.5, 2.0, -1.0, 3.0])
    per_sample = 0.5 * (0.7 * X - Y) ** 2
    hist = prog.fit(
        {"w": 0.7},
        X,
        Y,
        optimizer=gc.SGD(0.0),
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        shuffle=False,
    )
    nb = -(-7 // batch_size)
    total = steps if steps is not None else epochs * nb
    rows = [list(range(b * batch_size, min(7, (b + 1) * batch_size))) for b in range(nb)]
    want, used = [], 0
    for e in range(-(-total // nb)):
        batches = rows[: min(nb, total - e * nb)]
        idx = [i for r in batches for i in r]
        want.append(per_sample[idx].mean())
        used += len(idx)
    np.testing.assert_allclose(hist.epoch_loss, want, rtol=1e-14)
    assert hist.samples == used
