"""Contract tests, forms (c) and (d) of API.md: matrix networks.

Gradients are checked against the hand-written NumPy delta recursion in
``reference.py`` and against central finite differences of the NumPy loss.
"""

import gc as gc_module
import math
import weakref

import numpy as np
import pytest
import sympy as sp
from reference import (
    RefAdam,
    RefSGD,
    assert_dicts_close,
    clip_grads,
    copy_params,
    finite_diff,
    layers_from_params,
    max_rel_err,
    mlp_grad_dict,
    mlp_loss_dict,
    mlp_predict,
)

import gradc as gc
from gradc.kernels.runtime import shuffle_rows

# ======================================================================
# the 3-4-2 sigmoid network, form (c)
# ======================================================================

x = sp.MatrixSymbol("x", 3, 1)
y = sp.MatrixSymbol("y", 2, 1)
W1 = sp.MatrixSymbol("W1", 4, 3)
b1 = sp.MatrixSymbol("b1", 4, 1)
W2 = sp.MatrixSymbol("W2", 2, 4)
b2 = sp.MatrixSymbol("b2", 2, 1)
NAMES_342 = [("W1", "b1"), ("W2", "b2")]
ACTS_342 = ["sigmoid", "sigmoid"]


def _yhat():
    return gc.sigmoid(W2 * gc.sigmoid(W1 * x + b1) + b2)


@pytest.fixture(scope="module")
def prog_c():
    yhat = _yhat()
    return gc.compile(
        gc.mse(yhat, y), params=[W1, b1, W2, b2], inputs=[x], targets=[y], output=yhat
    )


@pytest.fixture(scope="module")
def data_342():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((5, 3))
    Y = rng.uniform(0.0, 1.0, size=(5, 2))
    return X, Y


def _values_342(seed=7):
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0, 0.8, (4, 3)),
        "b1": rng.normal(0, 0.5, (4, 1)),
        "W2": rng.normal(0, 0.8, (2, 4)),
        "b2": rng.normal(0, 0.5, (2, 1)),
    }


@pytest.fixture()
def params_342(prog_c):
    v = _values_342()
    return prog_c.init({W1: v["W1"], b1: v["b1"], W2: v["W2"], b2: v["b2"]})


def test_form_c_init_shapes(prog_c):
    params = prog_c.init(seed=0)
    assert set(params) == {"W1", "b1", "W2", "b2"}
    shapes = {"W1": (4, 3), "b1": (4, 1), "W2": (2, 4), "b2": (2, 1)}
    for k, s in shapes.items():
        assert isinstance(params[k], np.ndarray)
        assert params[k].shape == s
        assert np.all(np.isfinite(params[k]))
    # a sensible init does not leave all weights equal (symmetry)
    assert np.ptp(params["W1"]) > 0


def test_form_c_init_keys_matrixsymbol_and_str(prog_c):
    v = _values_342()
    p1 = prog_c.init({W1: v["W1"], b1: v["b1"], W2: v["W2"], b2: v["b2"]})
    p2 = prog_c.init({k: v[k] for k in v})
    for k in v:
        np.testing.assert_array_equal(p1[k], v[k])
        np.testing.assert_array_equal(p2[k], v[k])


def test_form_c_value_and_grad_vs_delta_recursion(prog_c, params_342, data_342):
    X, Y = data_342
    loss, grads = prog_c.value_and_grad(params_342, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(params_342, NAMES_342, ACTS_342, X, Y, "mse")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-10, atol=1e-14, what="3-4-2 (c)")
    assert float(prog_c.loss(params_342, X, Y)) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(prog_c.grad(params_342, X, Y), ref_grads, rtol=1e-10, atol=1e-14)


def test_form_c_grad_vs_finite_differences(prog_c, params_342, data_342):
    X, Y = data_342
    fd = finite_diff(lambda p: mlp_loss_dict(p, NAMES_342, ACTS_342, X, Y, "mse"), params_342)
    grads = prog_c.grad(params_342, X, Y)
    assert_dicts_close(grads, fd, rtol=1e-6, atol=1e-9, what="3-4-2 vs FD")


def test_form_c_predict(prog_c, params_342, data_342):
    X, _ = data_342
    yhat = prog_c.predict(params_342, X)
    assert isinstance(yhat, np.ndarray) and yhat.shape == (5, 2)
    ref = mlp_predict(layers_from_params(params_342, NAMES_342, ACTS_342), X)
    np.testing.assert_allclose(yhat, ref, rtol=1e-13, atol=1e-15)


def test_form_c_batch_of_one(prog_c, params_342, data_342):
    X, Y = data_342
    X1, Y1 = X[2:3], Y[2:3]
    assert X1.shape == (1, 3)
    loss, grads = prog_c.value_and_grad(params_342, X1, Y1)
    ref_loss, ref_grads = mlp_grad_dict(params_342, NAMES_342, ACTS_342, X1, Y1, "mse")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-10, atol=1e-14, what="batch of 1")
    assert prog_c.predict(params_342, X1).shape == (1, 2)


def test_form_c_does_not_mutate_inputs(prog_c, params_342, data_342):
    X, Y = data_342
    Xc, Yc, pc = X.copy(), Y.copy(), copy_params(params_342)
    prog_c.value_and_grad(params_342, X, Y)
    prog_c.predict(params_342, X)
    np.testing.assert_array_equal(X, Xc)
    np.testing.assert_array_equal(Y, Yc)
    assert_dicts_close(params_342, pc, rtol=0, atol=0)


def test_check_grad_small(prog_c, params_342, data_342):
    X, Y = data_342
    err = gc.check_grad(prog_c, params_342, X, Y)
    assert isinstance(err, (float, np.floating))
    assert 0.0 <= float(err) < 1e-5


def test_source_report_explain(prog_c):
    src = prog_c.source
    assert isinstance(src, dict)
    for k in ("forward", "backward", "update"):
        assert k in src, k
        assert isinstance(src[k], str) and src[k].strip(), k
    rep = str(prog_c.report())
    assert isinstance(rep, str) and rep.strip()
    low = rep.lower()
    for word in ("forward", "backward", "update"):  # op counts of the three kernels
        assert word in low, word
    ex = prog_c.explain()
    assert isinstance(ex, str) and ex.strip()


def test_form_c_naive_strategy_same_gradients():
    """strategy="naive" gives the same gradients (a 2-2-1 net: naive compiles are costly)."""
    xn = sp.MatrixSymbol("xn", 2, 1)
    yn = sp.MatrixSymbol("yn", 1, 1)
    Wn1 = sp.MatrixSymbol("Wn1", 2, 2)
    bn1 = sp.MatrixSymbol("bn1", 2, 1)
    Wn2 = sp.MatrixSymbol("Wn2", 1, 2)
    bn2 = sp.MatrixSymbol("bn2", 1, 1)
    out = gc.sigmoid(Wn2 * gc.tanh(Wn1 * xn + bn1) + bn2)
    prog = gc.compile(
        gc.mse(out, yn),
        params=[Wn1, bn1, Wn2, bn2],
        inputs=[xn],
        targets=[yn],
        output=out,
        strategy="naive",
    )
    rng = np.random.default_rng(77)
    params = prog.init(
        {
            "Wn1": rng.normal(0, 0.8, (2, 2)),
            "bn1": rng.normal(0, 0.5, (2, 1)),
            "Wn2": rng.normal(0, 0.8, (1, 2)),
            "bn2": rng.normal(0, 0.5, (1, 1)),
        }
    )
    X, Y = rng.standard_normal((4, 2)), rng.uniform(size=(4, 1))
    names, acts = [("Wn1", "bn1"), ("Wn2", "bn2")], ["tanh", "sigmoid"]
    loss, grads = prog.value_and_grad(params, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(params, names, acts, X, Y, "mse")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-9, atol=1e-13, what="naive")


# ---------------------------------------------------------------- fit


def test_minibatch_fit_deterministic_and_decreasing(prog_c, data_342):
    X, Y = data_342
    v = _values_342(11)
    pa = prog_c.init(v)
    pb = prog_c.init(v)
    epochs, bs, n = 10, 2, X.shape[0]
    ha = prog_c.fit(pa, X, Y, optimizer=gc.SGD(lr=0.5), epochs=epochs, batch_size=bs, seed=3)
    hb = prog_c.fit(pb, X, Y, optimizer=gc.SGD(lr=0.5), epochs=epochs, batch_size=bs, seed=3)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    np.testing.assert_array_equal(np.asarray(ha.loss), np.asarray(hb.loss))
    steps = epochs * math.ceil(n / bs)
    assert np.asarray(ha.loss).shape == (steps,)
    assert len(np.asarray(ha.epoch_loss)) == epochs
    assert np.all(np.isfinite(np.asarray(ha.loss)))
    before = mlp_loss_dict(v, NAMES_342, ACTS_342, X, Y)
    after = mlp_loss_dict(pa, NAMES_342, ACTS_342, X, Y)
    assert after < before
    # params were really changed in place
    assert not np.array_equal(pa["W1"], v["W1"])


def test_sgd_batch_size_one_step_count(prog_c, data_342):
    X, Y = data_342
    p = prog_c.init(_values_342(12))
    h = prog_c.fit(p, X, Y, optimizer=gc.SGD(lr=0.1), epochs=2, batch_size=1, seed=0)
    assert np.asarray(h.loss).shape == (2 * X.shape[0],)
    assert len(np.asarray(h.epoch_loss)) == 2


def test_fit_record_path_with_data(prog_c, data_342):
    X, Y = data_342
    v = _values_342(13)
    p = prog_c.init(v)
    h = prog_c.fit(p, X, Y, optimizer=gc.SGD(lr=0.2), epochs=3, record_path=True)
    assert len(h.path) == 4  # start + 3 full-batch steps
    for k in v:
        np.testing.assert_array_equal(h.path[0][k], v[k])
        np.testing.assert_array_equal(h.path[-1][k], p[k])


# ======================================================================
# form (d): gc.Sequential / gc.Dense
# ======================================================================


@pytest.fixture(scope="module")
def net_d():
    return gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))


@pytest.fixture(scope="module")
def prog_d(net_d):
    return gc.compile(net_d, loss=gc.mse)


def _layer_names(net):
    ps = list(net.params)
    assert len(ps) % 2 == 0
    return [(ps[2 * i].name, ps[2 * i + 1].name) for i in range(len(ps) // 2)]


def test_form_d_net_attributes(net_d):
    out = net_d.output
    assert isinstance(out, sp.MatrixExpr)
    assert tuple(out.shape) == (2, 1)
    ps = list(net_d.params)
    assert len(ps) == 4
    assert all(isinstance(p, sp.MatrixSymbol) for p in ps)
    assert [tuple(p.shape) for p in ps] == [(4, 3), (4, 1), (2, 4), (2, 1)]
    assert len({p.name for p in ps}) == 4


def test_form_d_value_and_grad(prog_d, net_d, data_342):
    X, Y = data_342
    names = _layer_names(net_d)
    v = _values_342()
    params = prog_d.init({p: v[k] for p, k in zip(net_d.params, ["W1", "b1", "W2", "b2"])})
    assert set(params) == {p.name for p in net_d.params}
    loss, grads = prog_d.value_and_grad(params, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(params, names, ACTS_342, X, Y, "mse")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-10, atol=1e-14, what="3-4-2 (d)")
    fd = finite_diff(lambda p: mlp_loss_dict(p, names, ACTS_342, X, Y, "mse"), params)
    assert_dicts_close(grads, fd, rtol=1e-6, atol=1e-9, what="3-4-2 (d) vs FD")
    yhat = prog_d.predict(params, X)
    assert yhat.shape == (5, 2)
    np.testing.assert_allclose(
        yhat, mlp_predict(layers_from_params(params, names, ACTS_342), X), rtol=1e-13
    )


# ======================================================================
# elementwise vocabulary
# ======================================================================

z = sp.Symbol("z")


def swish():
    return gc.elementwise(sp.Lambda(z, z / (1 + sp.exp(-z))))


@pytest.mark.parametrize(
    "name", ["sigmoid", "tanh", "relu", "leaky", "softplus", "identity", "swish"]
)
def test_elementwise_kinds(name):
    f = _gc_act(("leaky_relu", 0.1) if name == "leaky" else name)
    t = sp.Symbol("t")
    s = f(2 * t + 1)
    assert isinstance(s, sp.Expr) and not isinstance(s, sp.MatrixExpr)
    M = sp.MatrixSymbol("M", 3, 2)
    m = f(M)
    assert isinstance(m, sp.MatrixExpr)
    assert tuple(m.shape) == (3, 2)


def test_reductions_return_scalars():
    M = sp.MatrixSymbol("M", 3, 1)
    Yv = sp.MatrixSymbol("Yv", 3, 1)
    for e in (gc.sum(M), gc.logsumexp(M), gc.mse(M, Yv), gc.softmax_cross_entropy(M, Yv)):
        assert isinstance(e, sp.Expr) and not isinstance(e, sp.MatrixExpr)


def _gc_act(a):
    if isinstance(a, tuple) and a[0] == "leaky_relu":
        return gc.leaky_relu(a[1])
    if a == "swish":
        return swish()
    return getattr(gc, a)  # sigmoid, tanh, relu, softplus, identity


def _net_and_params(widths, acts, seed, scale=0.8):
    layers = [gc.Dense(widths[i], widths[i + 1], _gc_act(acts[i])) for i in range(len(acts))]
    net = gc.Sequential(*layers)
    rng = np.random.default_rng(seed)
    values = {}
    for p in net.params:
        values[p.name] = rng.normal(0.0, scale, tuple(p.shape))
    return net, values


def _data(widths, loss, n, seed, onehot=True):
    rng = np.random.default_rng(seed + 1000)
    X = rng.standard_normal((n, widths[0]))
    k = widths[-1]
    if loss == "mse":
        Y = rng.standard_normal((n, k))
    elif onehot:
        Y = np.eye(k)[rng.integers(0, k, size=n)]
    else:
        Y = rng.dirichlet(np.ones(k), size=n)
    return X, Y


def test_swish_network_vs_finite_differences():
    widths, acts = [2, 3, 1], ["swish", "identity"]
    net, values = _net_and_params(widths, acts, seed=21)
    prog = gc.compile(net, loss=gc.mse)
    params = prog.init(values)
    X, Y = _data(widths, "mse", 6, 21)
    names = _layer_names(net)
    loss, grads = prog.value_and_grad(params, X, Y)
    fd = finite_diff(lambda p: mlp_loss_dict(p, names, acts, X, Y), params)
    assert_dicts_close(grads, fd, rtol=1e-6, atol=1e-9, what="swish vs FD")
    ref_loss, ref_grads = mlp_grad_dict(params, names, acts, X, Y)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-9, atol=1e-13, what="swish vs delta")


def test_leaky_relu_both_sides():
    """gc.leaky_relu(0.1): slope 1 for z > 0 and 0.1 for z < 0 (both visited)."""
    widths, acts = [3, 4, 2], [("leaky_relu", 0.1), "identity"]
    net, values = _net_and_params(widths, acts, seed=31, scale=1.0)
    prog = gc.compile(net, loss=gc.mse)
    params = prog.init(values)
    X, Y = _data(widths, "mse", 8, 31)
    names = _layer_names(net)
    Z = params[names[0][0]] @ X.T + params[names[0][1]]
    assert (Z > 0).any() and (Z < 0).any()
    loss, grads = prog.value_and_grad(params, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(params, names, acts, X, Y)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    assert_dicts_close(grads, ref_grads, rtol=1e-9, atol=1e-13, what="leaky_relu")


def test_custom_loss_with_gc_sum():
    """A per-sample loss written with gc.sum and gc.elementwise equals 2 * mse."""
    xi = sp.MatrixSymbol("xi", 3, 1)
    yo = sp.MatrixSymbol("yo", 2, 1)
    Wc = sp.MatrixSymbol("Wc", 2, 3)
    bc = sp.MatrixSymbol("bc", 2, 1)
    u = sp.Symbol("u")
    sq = gc.elementwise(sp.Lambda(u, u**2))
    out = gc.tanh(Wc * xi + bc)
    prog = gc.compile(gc.sum(sq(out - yo)), params=[Wc, bc], inputs=[xi], targets=[yo], output=out)
    rng = np.random.default_rng(8)
    params = prog.init({"Wc": rng.standard_normal((2, 3)), "bc": rng.standard_normal((2, 1))})
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    loss, grads = prog.value_and_grad(params, X, Y)
    ref_loss, ref_grads = mlp_grad_dict(params, [("Wc", "bc")], ["tanh"], X, Y, "mse")
    assert float(loss) == pytest.approx(2 * ref_loss, rel=1e-12)
    assert_dicts_close(
        grads, {k: 2 * g for k, g in ref_grads.items()}, rtol=1e-10, atol=1e-14, what="gc.sum loss"
    )


# ======================================================================
# random small networks
# ======================================================================

RANDOM_NETS = [
    # (widths, activations, loss, dtype, onehot)
    ([3, 5, 2], ["tanh", "identity"], "softmax_cross_entropy", "float64", True),
    ([4, 6, 3, 2], ["relu", "softplus", "sigmoid"], "mse", "float64", True),
    ([1, 1], ["identity"], "mse", "float64", True),
    (
        [2, 3, 4, 3],
        [("leaky_relu", 0.1), "tanh", "identity"],
        "softmax_cross_entropy",
        "float64",
        False,
    ),
    ([6, 1, 5], ["sigmoid", "relu"], "mse", "float64", True),
    ([5, 2, 1], ["sigmoid", "tanh"], "mse", "float32", True),
    ([3, 4, 3], ["softplus", "identity"], "softmax_cross_entropy", "float32", True),
]


@pytest.mark.parametrize("case", range(len(RANDOM_NETS)))
def test_random_networks(case):
    widths, acts, loss_name, dtype, onehot = RANDOM_NETS[case]
    net, values = _net_and_params(widths, acts, seed=100 + case)
    loss_fn = {"mse": gc.mse, "softmax_cross_entropy": gc.softmax_cross_entropy}[loss_name]
    prog = gc.compile(net, loss=loss_fn, dtype=dtype)
    params = prog.init(values)
    X, Y = _data(widths, loss_name, 7, 100 + case, onehot)
    if dtype == "float32":
        X, Y = X.astype(np.float32), Y.astype(np.float32)
    names = _layer_names(net)
    # the reference runs in float64 on exactly the values gradc holds
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ref_loss, ref_grads = mlp_grad_dict(
        p64, names, acts, X.astype(np.float64), Y.astype(np.float64), loss_name
    )
    loss, grads = prog.value_and_grad(params, X, Y)
    tol = 1e-9 if dtype == "float64" else 1e-4
    assert abs(float(loss) - ref_loss) <= tol * max(1.0, abs(ref_loss))
    for k, g in ref_grads.items():
        assert np.shape(grads[k]) == g.shape, k
        err = max_rel_err(grads[k], g, floor=1e-12)
        assert err < tol, f"{k}: scale-relative error {err:.3g} ({dtype})"
    if dtype == "float64":
        fd = finite_diff(lambda p: mlp_loss_dict(p, names, acts, X, Y, loss_name), p64)
        assert_dicts_close(grads, fd, rtol=1e-6, atol=1e-8, what=f"random net {case} vs FD")


@pytest.mark.parametrize(
    "acts, loss_name",
    [(["sigmoid", "tanh"], "mse"), (["tanh", "sigmoid"], "mse"), (["relu", "identity"], "ce")],
)
def test_blas_loop_and_fused_paths_against_the_delta_recursion(acts, loss_name):
    """A 24-48-3 network takes every kernel path: BLAS layer products and weight
    gradients (batch 16), printed loops (batch 5), and at batch 1 the sweep that
    forms W1's gradient δ·xᵀ inside the update (W1 has 1,152 entries). Its
    3-wide head takes its exps over the whole batch in one flat loop (sigmoid;
    softmax cross-entropy: log-sum-exp and δŷ); elementwise δ run as one loop over
    every sample's entries, and bias gradients sum four samples per pass (batch
    5: one left over). Gradients and SGD runs are replayed with the NumPy δ
    recursion."""
    widths = [24, 48, 3]
    net, values = _net_and_params(widths, acts, seed=41, scale=0.3)
    ce = loss_name == "ce"
    ref = "softmax_cross_entropy" if ce else "mse"
    prog = gc.compile(net, loss=gc.softmax_cross_entropy if ce else gc.mse)
    printed = "\n".join(prog.source.values())
    assert "every sample's entries in one loop" in printed
    assert "range(0, n - n % 4, 4)" in printed
    names = _layer_names(net)
    X, Y = _data(widths, ref, 16, 41)
    for n in (16, 5, 1):
        loss, grads = prog.value_and_grad(prog.init(values), X[:n], Y[:n])
        ref_loss, ref_grads = mlp_grad_dict(values, names, acts, X[:n], Y[:n], ref)
        assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
        assert_dicts_close(grads, ref_grads, rtol=1e-9, atol=1e-13, what=f"batch {n}")
    lr = 0.1
    for bs in (16, 5, 1):
        params = prog.init(values)
        hist = prog.fit(params, X, Y, optimizer=gc.SGD(lr), batch_size=bs, shuffle=False)
        want = {k: np.array(v, float) for k, v in values.items()}
        for s in range(0, 16, bs):
            _, g = mlp_grad_dict(want, names, acts, X[s : s + bs], Y[s : s + bs], ref)
            want = {k: want[k] - lr * g[k] for k in want}
        assert len(hist.loss) == -(-16 // bs)
        assert_dicts_close(params, want, rtol=1e-9, atol=1e-12, what=f"fit batch {bs}")
    # shuffled, batch of one, two epochs: each sweep over W1 also forms the next
    # sample's W1·x (the sample order is fit's documented seeded shuffle)
    params = prog.init(values)
    prog.fit(params, X, Y, optimizer=gc.SGD(lr), epochs=2, batch_size=1, seed=5)
    want = {k: np.array(v, float) for k, v in values.items()}
    for epoch in range(2):
        perm = np.arange(16)
        shuffle_rows(perm, 16, np.uint64((5 * 1_000_003 + epoch) % 2**63))
        for s in perm:
            _, g = mlp_grad_dict(want, names, acts, X[s : s + 1], Y[s : s + 1], ref)
            want = {k: want[k] - lr * g[k] for k in want}
    assert_dicts_close(params, want, rtol=1e-9, atol=1e-12, what="fit batch 1, shuffled")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sgd_folded_into_the_weight_gradient_product(dtype, monkeypatch):
    """Plain SGD at batch sizes 8…13 on a 24-130-3 network (FOLD_MIN_ENTRIES lowered
    so that its 130×24 W1 folds): the gradient product adds −lr·scale·Σₙ δₙxₙᵀ into
    W1 itself (gemm with β = 1) and the norm comes from Gram matrices (and in
    float32 the forward product x·W1ᵀ is taken as W1·xᵀ, blas._gemm_transposed,
    inside a kernel without reference counting). 21 rows in
    batches of 10, 10 and 1 (the batch-of-one sweep), two epochs, with clip_norm
    chosen to clip some steps: parameters, losses and every step's per-parameter
    gradient norms against the NumPy δ recursion."""
    from gradc.kernels import blas, cpu_train

    monkeypatch.setattr(cpu_train, "FOLD_MIN_ENTRIES", 1)
    widths, acts = [24, 130, 3], ["tanh", "sigmoid"]
    net, values = _net_and_params(widths, acts, seed=47, scale=0.3)
    prog = gc.compile(net, loss=gc.mse, dtype=dtype)
    train = prog.source["train"]
    folded = "the product adds into it" in train
    assert folded == blas.FOLDS  # (GRADC_BLAS=numba: no fold)
    assert "gram_sq(" in train or not blas.FOLDS
    names = _layer_names(net)
    X, Y = _data(widths, "mse", 21, 47)
    if dtype == "float32":
        X, Y = X.astype(np.float32), Y.astype(np.float32)
    lr, clip, bs = 0.2, 2.5, 10
    params = prog.init(values)
    start = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    hist = prog.fit(
        params, X, Y, optimizer=gc.SGD(lr), epochs=2, batch_size=bs, shuffle=False, clip_norm=clip
    )
    want, losses, norms, clipped = start, [], {k: [] for k in start}, 0
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    for _ in range(2):
        for s in range(0, 21, bs):
            loss, g = mlp_grad_dict(want, names, acts, X64[s : s + bs], Y64[s : s + bs], "mse")
            losses.append(loss)
            for k in g:
                norms[k].append(np.linalg.norm(g[k]))
            c = clip_grads(g, clip)
            clipped += c is not g
            want = {k: want[k] - lr * c[k] for k in want}
    assert 0 < clipped < 6  # both kinds of step were taken
    rtol = 1e-9 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=rtol)
    for k in norms:
        np.testing.assert_allclose(hist.grad_norms[k], norms[k], rtol=rtol, err_msg=k)
    if dtype == "float64":
        assert_dicts_close(params, want, rtol=1e-9, atol=1e-12, what="folded SGD")
    else:
        for k in want:
            assert np.abs(params[k] - want[k]).max() <= 1e-5, k
    # shuffled (the folded product reads the gathered batch), two epochs, no clip
    params = prog.init(values)
    prog.fit(params, X, Y, optimizer=gc.SGD(lr), epochs=2, batch_size=bs, seed=3)
    want = start
    for epoch in range(2):
        perm = np.arange(21)
        shuffle_rows(perm, 21, np.uint64((3 * 1_000_003 + epoch) % 2**63))
        for s in range(0, 21, bs):
            rows = perm[s : s + bs]
            _, g = mlp_grad_dict(want, names, acts, X64[rows], Y64[rows], "mse")
            want = {k: want[k] - lr * g[k] for k in want}
    for k in want:
        assert np.abs(params[k] - want[k]).max() <= (1e-12 if dtype == "float64" else 1e-5), k


def test_blas_kernels_in_float32_against_the_delta_recursion():
    """The large-batch forms in float32 (flat statements with ``F(...)`` constants,
    the sigmoid head's batch-wide exps, four-sample bias sums): a 24-48-3 sigmoid
    network's gradients at batches 16 and 5 and an SGD run in batches of 5 and 1,
    against the float64 NumPy δ recursion to float32 precision."""
    widths, acts = [24, 48, 3], ["sigmoid", "sigmoid"]
    net, values = _net_and_params(widths, acts, seed=43, scale=0.3)
    prog = gc.compile(net, loss=gc.mse, dtype="float32")
    assert "every sample's entries in one loop" in "\n".join(prog.source.values())
    names = _layer_names(net)
    X, Y = _data(widths, "mse", 16, 43)
    for n in (16, 5):
        _, grads = prog.value_and_grad(prog.init(values), X[:n].astype(np.float32), Y[:n])
        _, ref = mlp_grad_dict(values, names, acts, X[:n], Y[:n], "mse")
        for k in ref:
            assert grads[k].dtype == np.float32
            scale = np.abs(ref[k]).max()
            assert np.abs(grads[k] - ref[k]).max() <= 1e-5 * scale + 1e-7, (k, n)
    lr = 0.1
    for bs in (5, 1):
        params = prog.init(values)
        prog.fit(params, X, Y, optimizer=gc.SGD(lr), batch_size=bs, shuffle=False)
        want = {k: np.array(v, float) for k, v in values.items()}
        for s in range(0, 16, bs):
            _, g = mlp_grad_dict(want, names, acts, X[s : s + bs], Y[s : s + bs], "mse")
            want = {k: want[k] - lr * g[k] for k in want}
        for k in want:
            assert np.abs(params[k] - want[k]).max() <= 1e-5, (k, bs)


@pytest.mark.parametrize(
    "widths, acts, loss_name, dtype, optimizer",
    [
        ([3, 4, 2], ["sigmoid", "sigmoid"], "mse", "float64", "sgd"),
        ([3, 4, 2], ["relu", "identity"], "softmax_cross_entropy", "float64", "adam"),
        ([5, 9, 3], ["tanh", "identity"], "softmax_cross_entropy", "float64", "sgd"),
        ([6, 12, 2], ["tanh", "sigmoid"], "mse", "float32", "adam"),
    ],
)
def test_batch_innermost_kernel_against_the_delta_recursion(
    widths, acts, loss_name, dtype, optimizer
):
    """Narrow networks trained at a batch of 8 or more run the batch-innermost
    kernel (kernels/cpu_lanes.py): 21 rows in batches of 8, 8 and 5, two epochs,
    with clip_norm, replayed with the NumPy δ recursion and the reference rules;
    then one shuffled full-batch step (the gathered order does not change a
    full-batch gradient)."""
    net, values = _net_and_params(widths, acts, seed=17, scale=0.6)
    loss_fn = gc.mse if loss_name == "mse" else gc.softmax_cross_entropy
    prog = gc.compile(net, loss=loss_fn, dtype=dtype)
    assert "train_lanes" in prog.source
    names = _layer_names(net)
    X, Y = _data(widths, loss_name, 21, 17)
    X, Y = X.astype(dtype), Y.astype(dtype)
    make = {
        "sgd": (lambda: gc.SGD(0.2), lambda: RefSGD(0.2)),
        "adam": (lambda: gc.Adam(0.05), lambda: RefAdam(0.05)),
    }[optimizer]
    clip = 0.5
    params = prog.init(values)
    hist = prog.fit(
        params, X, Y, optimizer=make[0](), epochs=2, batch_size=8, shuffle=False, clip_norm=clip
    )
    assert "train_lanes" in prog.timings  # the kernel under test ran
    ref, want, losses = make[1](), {k: np.array(v, float) for k, v in values.items()}, []
    X64, Y64 = X.astype(float), Y.astype(float)
    for _ in range(2):
        for s in range(0, 21, 8):
            loss, g = mlp_grad_dict(want, names, acts, X64[s : s + 8], Y64[s : s + 8], loss_name)
            losses.append(loss)
            want = ref.step(want, clip_grads(g, clip))
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(hist.loss, losses, rtol=tol)
    assert_dicts_close(params, want, rtol=tol, atol=tol * 1e-3, what=f"lanes {widths} {dtype}")

    params = prog.init(values)
    prog.fit(params, X, Y, optimizer=gc.SGD(0.2), epochs=1, batch_size=21, shuffle=True, seed=3)
    _, g = mlp_grad_dict(values, names, acts, X64, Y64, loss_name)
    want = {k: np.array(values[k], float) - 0.2 * g[k] for k in values}
    assert_dicts_close(params, want, rtol=tol, atol=tol * 1e-3, what="lanes, shuffled full batch")


@pytest.mark.parametrize(
    "widths, batch",
    [
        ([3, 4, 2], 1),  # 26 entries: zeroed, normed and updated by printed loops
        ([12, 20, 12, 20, 12, 5], 3),  # 1,089 entries: one call over the tuple of them
    ],
)
def test_update_paths_with_adam_and_clipping_against_the_reference(widths, batch):
    """Tiny networks print their gradient zeroing, norms and update in the training
    kernel (kernels/cpu_train.py, INLINE_MAX_ENTRIES); larger ones call the shared step
    module. Both keep one sample's values and δ in rows on the kernel's stack
    (reused by each sample of a batch of 3). Both replayed with the NumPy δ
    recursion and the reference Adam, with clip_norm and per-step gradient norms."""
    acts = ["tanh"] * (len(widths) - 2) + ["sigmoid"]
    net, values = _net_and_params(widths, acts, seed=23, scale=0.5)
    prog = gc.compile(net, loss=gc.mse)
    names = _layer_names(net)
    X, Y = _data(widths, "mse", 7, 23)
    clip = 0.3
    params = prog.init(values)
    hist = prog.fit(
        params,
        X,
        Y,
        optimizer=gc.Adam(0.02),
        epochs=2,
        batch_size=batch,
        shuffle=False,
        clip_norm=clip,
    )
    ref, want, losses, norms = (
        RefAdam(0.02),
        {k: np.array(v, float) for k, v in values.items()},
        [],
        [],
    )
    for _ in range(2):
        for s in range(0, 7, batch):
            loss, g = mlp_grad_dict(want, names, acts, X[s : s + batch], Y[s : s + batch])
            losses.append(loss)
            norms.append({k: float(np.linalg.norm(v)) for k, v in g.items()})
            want = ref.step(want, clip_grads(g, clip))
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-10)
    for k in values:
        np.testing.assert_allclose(hist.grad_norms[k], [n[k] for n in norms], rtol=1e-10)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-13, what=f"Adam {widths}")
    assert ("step_each" in prog.source["train"]) == (batch == 3)
    assert "local_row(" in prog.source["train"]


def _mse_case(widths, acts, *, seed, rows):
    """A compiled MSE network with its layer names, initial values (scale 0.5) and
    ``rows`` samples of data, all from ``seed``."""
    net, values = _net_and_params(widths, acts, seed=seed, scale=0.5)
    X, Y = _data(widths, "mse", rows, seed)
    return gc.compile(net, loss=gc.mse), _layer_names(net), values, X, Y


def test_arrays_on_huge_pages_train_as_plain_ones(monkeypatch):
    """Large sets of a program's arrays (parameters from init, fit's buffers and
    workspace, Adam's state) share one mapping advised for huge pages
    (program/memory.py). With the threshold at 0 every set goes there: views
    that must not overlap, zeroed, and a shuffled Adam fit with a batch of 4
    replayed with the NumPy δ recursion, reference Adam and fit's seeded order."""
    from gradc.program import memory

    monkeypatch.setattr(memory, "HUGE_MIN_BYTES", 0)
    shapes = [(3, 5), (7,), (), (2, 2)]
    arrays = memory.zeroed_arrays(shapes, np.float32)
    assert [a.shape for a in arrays] == shapes and all(a.dtype == np.float32 for a in arrays)
    for k, a in enumerate(arrays):
        assert not a.any() and a.flags.c_contiguous and a.flags.writeable
        a[...] = k + 1
    assert [float(a.sum()) for a in arrays] == [15.0, 14.0, 3.0, 16.0]  # no overlap

    acts = ["tanh", "sigmoid"]
    prog, names, values, X, Y = _mse_case([4, 6, 3], acts, seed=41, rows=8)
    params = prog.init(values)
    assert all(isinstance(v.base, np.ndarray) for v in params.values())  # views: mapped
    prog.fit(params, X, Y, optimizer=gc.Adam(0.05), epochs=2, batch_size=4, seed=5)
    ref, want = RefAdam(0.05), {k: np.array(v, float) for k, v in values.items()}
    for epoch in range(2):
        order = np.arange(8)
        shuffle_rows(order, 8, np.uint64((5 * 1_000_003 + epoch) % 2**63))
        for s in range(0, 8, 4):
            rows = order[s : s + 4]
            _, g = mlp_grad_dict(want, names, acts, X[rows], Y[rows])
            want = ref.step(want, g)
    assert_dicts_close(params, want, rtol=1e-10, atol=1e-13, what="huge pages")


def test_repeated_fits_see_new_arrays_and_changed_values():
    """fit keeps its prepared kernel call for the next call with the same arrays
    (by identity): a second call must still see data changed in place, new data
    arrays, a parameter array replaced in the dict, and NaN written into the data
    since the last call. Replayed with the NumPy δ recursion."""
    acts = ["sigmoid", "sigmoid"]
    prog, names, values, X, Y = _mse_case([3, 4, 2], acts, seed=31, rows=6)
    params = prog.init(values)
    want = {k: np.array(v, float) for k, v in values.items()}
    opt = gc.SGD(0.2)

    def replay(X, Y):
        nonlocal want
        for s in range(len(X)):
            _, g = mlp_grad_dict(want, names, acts, X[s : s + 1], Y[s : s + 1])
            want = {k: want[k] - 0.2 * g[k] for k in want}

    prog.fit(params, X, Y, optimizer=opt, batch_size=1, shuffle=False)
    replay(X, Y)
    X *= -0.5  # the same array, new values
    prog.fit(params, X, Y, optimizer=opt, batch_size=1, shuffle=False)
    replay(X, Y)
    X2, Y2 = X[::-1].copy(), Y[::-1].copy()  # new arrays
    prog.fit(params, X2, Y2, optimizer=opt, batch_size=1, shuffle=False)
    replay(X2, Y2)
    params[names[0][0]] = params[names[0][0]].copy()  # a new parameter array
    prog.fit(params, X2, Y2, optimizer=opt, batch_size=1, shuffle=False)
    replay(X2, Y2)
    assert_dicts_close(params, want, rtol=1e-12, atol=1e-14, what="four fits")
    X2[4, 1] = np.nan
    kept = {k: v.copy() for k, v in params.items()}
    with pytest.raises(gc.GradcError, match="row 4"):
        prog.fit(params, X2, Y2, optimizer=opt, batch_size=1, shuffle=False)
    assert_dicts_close(params, kept, rtol=0, atol=0, what="refused fit")
    # what fit keeps for its next call holds no data set alive
    big = np.random.default_rng(3).standard_normal((50, 3))
    prog.fit(params, big, np.zeros((50, 2)), optimizer=opt, batch_size=1)
    ref = weakref.ref(big)
    del big
    gc_module.collect()
    assert ref() is None


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_one_kernel_call_per_fit_matches_per_epoch_and_per_step_calls(batch_size):
    """fit runs every epoch in one kernel call (it reshuffles at each epoch's
    start); a progress bar splits the run per epoch and record_path per step.
    All three must give the same steps: the δ recursion replayed with fit's
    documented seeded shuffle, with steps= ending inside an epoch."""
    widths, acts = [3, 5, 2], ["tanh", "sigmoid"]
    net, values = _net_and_params(widths, acts, seed=29, scale=0.7)
    prog = gc.compile(net, loss=gc.mse)
    names = _layer_names(net)
    X, Y = _data(widths, "mse", 10, 29)
    nb = -(-10 // batch_size)
    steps = 2 * nb + 1  # two epochs and the first step of a third
    runs = {}
    for how in ("one call", "progress", "record_path"):
        params = prog.init(values)
        hist = prog.fit(
            params,
            X,
            Y,
            optimizer=gc.SGD(0.3),
            steps=steps,
            batch_size=batch_size,
            seed=11,
            progress=how == "progress",
            record_path=how == "record_path",
        )
        runs[how] = (params, hist)
    want = {k: np.array(v, float) for k, v in values.items()}
    losses = []
    for step in range(steps):
        epoch, b = divmod(step, nb)
        if b == 0:
            perm = np.arange(10)
            shuffle_rows(perm, 10, np.uint64((11 * 1_000_003 + epoch) % 2**63))
        rows = perm[b * batch_size : (b + 1) * batch_size]
        loss, g = mlp_grad_dict(want, names, acts, X[rows], Y[rows])
        losses.append(loss)
        want = {k: want[k] - 0.3 * g[k] for k in want}
    for how, (params, hist) in runs.items():
        np.testing.assert_allclose(hist.loss, losses, rtol=1e-12, err_msg=how)
        assert_dicts_close(params, want, rtol=1e-11, atol=1e-14, what=how)
    assert len(runs["record_path"][1].path) == steps + 1


def test_check_grad_float32_measures_the_gradient(data_342):
    """A float32 program: the differenced loss is a float64 twin's, so a right
    float32 gradient checks to float32 accuracy and a gradient 1 % off reads 1 %
    (with float32 losses, rounding over eps = 1e-6 alone gave errors near 1)."""
    X, Y = data_342
    net = gc.Sequential(gc.Dense(3, 4, gc.sigmoid), gc.Dense(4, 2, gc.sigmoid))
    prog = gc.compile(net, loss=gc.mse, dtype="float32")
    params = prog.init(seed=3)
    assert gc.check_grad(prog, params, X, Y) < 1e-4
    right = prog.grad
    prog.grad = lambda p, X=None, Y=None: {k: 1.01 * g for k, g in right(p, X, Y).items()}
    assert gc.check_grad(prog, params, X, Y) == pytest.approx(0.01 / 1.01, rel=1e-2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_training_kernel_with_short_last_batches(optimizer):
    """From ``batched_min`` samples on, fit calls ``train_batched`` (every product by
    BLAS, no loop fallbacks); an epoch's last batch may still be smaller (here 1 of
    9): SGD and Adam over 64-20-10 against the δ recursion and reference rules.
    At batch 1 it calls ``train_one`` (every branch on n resolved when printed)."""
    widths, acts = [64, 20, 10], ["tanh", "sigmoid"]
    net, values = _net_and_params(widths, acts, seed=51, scale=0.3)
    prog = gc.compile(net, loss=gc.mse)
    okern, _ = prog._optimizer_module(gc.SGD(0.1))
    assert okern.batched_min is not None and okern.batched_min <= 9
    names = _layer_names(net)
    for rows in (19, 21):  # batches of 9 (the last of 1 sample), then batches of one
        X, Y = _data(widths, "mse", rows, 51)
        params = prog.init(values)
        opt = gc.SGD(0.1) if optimizer == "sgd" else gc.Adam(0.01)
        ref = RefSGD(0.1) if optimizer == "sgd" else RefAdam(0.01)
        bs = 9 if rows == 19 else 1
        prog.fit(params, X, Y, optimizer=opt, epochs=2, batch_size=bs, shuffle=False)
        assert ("train_batched" if bs > 1 else "train_one") in prog.timings
        want = {k: v.copy() for k, v in values.items()}
        for _ in range(2):
            for s in range(0, rows, bs):
                _, g = mlp_grad_dict(want, names, acts, X[s : s + bs], Y[s : s + bs], "mse")
                want = ref.step(want, g)
        assert_dicts_close(params, want, rtol=1e-9, atol=1e-12, what=f"{optimizer}, {rows} rows")
