"""The CUDA target gives the CPU target's numbers (on numba's CUDA simulator in CI).

conftest.py sets NUMBA_ENABLE_CUDASIM=1 before numba is imported, so these run
everywhere; on a machine with a GPU, run them with NUMBA_ENABLE_CUDASIM=0 to
use it. The simulator runs every CUDA thread as a Python thread (~2 ms each),
so the models are tiny: 2-3-2 networks, batches of 4.

CUDA vs CPU is compared to 1e-9 in float64 (tree reductions on the device sum
in another order); gradients are also checked against the hand-written NumPy
δ recursion and finite differences in ``reference.py``.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp
from reference import (
    copy_params,
    finite_diff,
    layers_from_params,
    max_rel_err,
    mlp_backprop,
    mlp_grad_dict,
    mlp_loss_dict,
)

import gradc as gc

pytest.importorskip("numba_cuda", reason="the CUDA target needs the 'cuda' extra (numba-cuda)")

TOL = 1e-9
NAMES = [("W1", "b1"), ("W2", "b2")]


def _net(act1, act2, n_out=2):
    x = sp.MatrixSymbol("x", 2, 1)
    y = sp.MatrixSymbol("y", n_out, 1)
    W1, b1 = sp.MatrixSymbol("W1", 3, 2), sp.MatrixSymbol("b1", 3, 1)
    W2, b2 = sp.MatrixSymbol("W2", n_out, 3), sp.MatrixSymbol("b2", n_out, 1)
    yhat = act2(W2 * act1(W1 * x + b1) + b2)
    return yhat, y, [W1, b1, W2, b2], x


def _pair(loss=gc.mse, act1=gc.sigmoid, act2=gc.sigmoid, n_out=2, **options):
    """(cpu, cuda) programs of the same 2-3-n_out network."""
    yhat, y, params, x = _net(act1, act2, n_out)
    spec = gc.Spec(loss(yhat, y), params=params, inputs=[x], targets=[y], output=yhat)
    return gc.compile(spec, **options), gc.compile(spec, target="cuda", **options)


@pytest.fixture(scope="module")
def mse_pair():
    return _pair()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((4, 2)), rng.uniform(0.0, 1.0, size=(4, 2))


@pytest.fixture()
def params():
    rng = np.random.default_rng(11)
    return {
        "W1": rng.normal(0, 0.9, (3, 2)),
        "b1": rng.normal(0, 0.5, (3, 1)),
        "W2": rng.normal(0, 0.9, (2, 3)),
        "b2": rng.normal(0, 0.5, (2, 1)),
    }


def _close(got: dict, want: dict, tol=TOL, what=""):
    for k in want:
        err = max_rel_err(got[k], want[k])
        assert err <= tol, f"{what} {k}: relative error {err:.3g}"


# -- loss, gradients, predictions -------------------------------------------------


def test_loss_and_gradient_match_cpu_and_references(mse_pair, data, params):
    cpu, gpu = mse_pair
    X, Y = data
    loss_c, grads_c = cpu.value_and_grad(params, X, Y)
    loss_g, grads_g = gpu.value_and_grad(params, X, Y)
    assert abs(loss_g - loss_c) <= TOL * abs(loss_c)
    assert abs(gpu.loss(params, X, Y) - loss_c) <= TOL * abs(loss_c)
    _close(grads_g, grads_c, what="cuda vs cpu")
    # independent references: the NumPy δ recursion, and finite differences of the NumPy loss
    ref_loss, ref_grads = mlp_grad_dict(params, NAMES, ["sigmoid", "sigmoid"], X, Y)
    assert abs(loss_g - ref_loss) <= TOL * abs(ref_loss)
    _close(grads_g, ref_grads, what="cuda vs δ recursion")
    fd = finite_diff(lambda q: mlp_loss_dict(q, NAMES, ["sigmoid", "sigmoid"], X, Y), params)
    _close(grads_g, fd, tol=1e-6, what="cuda vs finite differences")


def test_input_grad_of_a_cuda_program(mse_pair, data, params):
    """∂L/∂X is computed by CPU kernels for every target: a CUDA program gives it too."""
    _, gpu = mse_pair
    X, Y = data
    ref = layers_from_params(params, NAMES, ["sigmoid", "sigmoid"])
    assert max_rel_err(gpu.input_grad(params, X, Y), mlp_backprop(ref, X, Y)[2]) < 1e-10


def test_predict_matches_cpu(mse_pair, data, params):
    cpu, gpu = mse_pair
    X, _ = data
    got = gpu.predict(params, X)
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got, cpu.predict(params, X), rtol=TOL, atol=0)


def test_source_is_cuda_kernels(mse_pair):
    _, gpu = mse_pair
    src = gpu.source
    assert {"forward", "backward", "update"} <= set(src)
    assert "@cuda.jit" in src["forward"] and "cuda.syncthreads()" in src["forward"]
    assert "cuda.shared.array" in src["backward"]  # the tiled weight-gradient products
    assert "k_update" in src["update"]


# -- training ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: gc.SGD(lr=0.5), lambda: gc.Momentum(0.5, beta=0.9), lambda: gc.Adam(lr=0.05)]
)
def test_fit_matches_cpu(mse_pair, data, params, make):
    cpu, gpu = mse_pair
    X, Y = data
    p_cpu, p_gpu = copy_params(params), copy_params(params)
    h_cpu = cpu.fit(p_cpu, X, Y, optimizer=make(), steps=3, batch_size=2, seed=5)
    h_gpu = gpu.fit(p_gpu, X, Y, optimizer=make(), steps=3, batch_size=2, seed=5)
    np.testing.assert_allclose(h_gpu.loss, h_cpu.loss, rtol=TOL, atol=0)
    np.testing.assert_allclose(h_gpu.epoch_loss, h_cpu.epoch_loss, rtol=TOL, atol=0)
    _close(h_gpu.grad_norms, h_cpu.grad_norms, what="grad norms")
    assert h_gpu.weights == h_cpu.weights == ["W1", "W2"]
    _close(p_gpu, p_cpu, what="params after 3 steps")
    assert not all(np.array_equal(p_gpu[k], params[k]) for k in params)


def test_optimizer_state_carries_over_between_fits(mse_pair, data, params):
    cpu, gpu = mse_pair
    X, Y = data
    p_cpu, p_gpu = copy_params(params), copy_params(params)
    opt_cpu, opt_gpu = gc.Adam(lr=0.05), gc.Adam(lr=0.05)
    for _ in range(2):  # the second fit continues Adam's moments and step count
        cpu.fit(p_cpu, X, Y, optimizer=opt_cpu, steps=1)
        gpu.fit(p_gpu, X, Y, optimizer=opt_gpu, steps=1)
    _close(p_gpu, p_cpu, what="params after two fits")


def test_clip_norm_and_record_path_match_cpu(mse_pair, data, params):
    cpu, gpu = mse_pair
    X, Y = data
    p_cpu, p_gpu = copy_params(params), copy_params(params)
    kw = dict(steps=2, clip_norm=0.05, record_path=True, shuffle=False, batch_size=2)
    h_cpu = cpu.fit(p_cpu, X, Y, optimizer=gc.SGD(1.0), **kw)
    h_gpu = gpu.fit(p_gpu, X, Y, optimizer=gc.SGD(1.0), **kw)
    assert len(h_gpu.path) == 3
    for got, want in zip(h_gpu.path, h_cpu.path):
        _close(got, want, what="path")
    # the clipped step moved the parameters by exactly lr·clip_norm
    step = np.sqrt(sum(np.sum((h_gpu.path[1][k] - h_gpu.path[0][k]) ** 2) for k in params))
    assert abs(step - 0.05) < 1e-9


def test_float32(mse_pair, data, params):
    cpu64, _ = mse_pair  # float64 CPU results as the reference: no float32 CPU compile needed
    gpu = _pair(dtype="float32")[1]
    X, Y = data
    loss_c, grads_c = cpu64.value_and_grad(params, X, Y)
    loss_g, grads_g = gpu.value_and_grad(params, X, Y)
    assert abs(loss_g - loss_c) <= 1e-6 * abs(loss_c)
    for k in grads_c:
        assert grads_g[k].dtype == np.float32
    _close(grads_g, grads_c, tol=1e-5, what="float32")
    p_cpu, p_gpu = copy_params(params), gpu.init(params)
    h_cpu = cpu64.fit(p_cpu, X, Y, optimizer=gc.Momentum(0.5), steps=2, batch_size=2)
    h_gpu = gpu.fit(p_gpu, X, Y, optimizer=gc.Momentum(0.5), steps=2, batch_size=2)
    assert p_gpu["W1"].dtype == np.float32
    np.testing.assert_allclose(h_gpu.loss, h_cpu.loss, rtol=1e-5)
    _close(p_gpu, p_cpu, tol=1e-5, what="float32 fit")


def test_softmax_cross_entropy(params):
    cpu, gpu = _pair(loss=gc.softmax_cross_entropy, act1=gc.tanh, act2=gc.identity)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4, 2))
    Y = np.eye(2)[[0, 1, 1, 0]]
    # large logits: the max-shifted logsumexp keeps the loss finite
    params = {**params, "W2": 40 * params["W2"]}
    loss_c, grads_c = cpu.value_and_grad(params, X, Y)
    loss_g, grads_g = gpu.value_and_grad(params, X, Y)
    assert np.isfinite(loss_g)
    assert abs(loss_g - loss_c) <= TOL * abs(loss_c)
    _close(grads_g, grads_c, what="softmax-CE")
    ref_loss, ref_grads = mlp_grad_dict(
        params, NAMES, ["tanh", "identity"], X, Y, loss="softmax_cross_entropy"
    )
    assert abs(loss_g - ref_loss) <= 1e-9 * abs(ref_loss)
    _close(grads_g, ref_grads, what="softmax-CE vs δ recursion")


# -- other forms of spec ---------------------------------------------------------------

w1, w2 = sp.symbols("w1 w2")
BOWL = w1**2 + w2**2 + 2 * w2 + 5


def test_bowl_scalar_objective():
    prog = gc.compile(BOWL, params=[w1, w2], target="cuda")
    params = prog.init({w1: -2.0, w2: 3.0})
    assert prog.loss(params) == pytest.approx(24.0, abs=1e-12)
    grads = prog.grad(params)
    assert float(grads["w1"]) == pytest.approx(-4.0) and float(grads["w2"]) == pytest.approx(8.0)
    hist = prog.fit(params, steps=20, optimizer=gc.SGD(lr=0.1))
    assert hist.loss.shape == (20,) and hist.loss[0] == pytest.approx(24.0)
    # w ← 0.8 w per step: the seed's numbers
    assert float(params["w1"]) == pytest.approx(-2.0 * 0.8**20, abs=1e-12)
    assert float(params["w2"]) == pytest.approx(-1.0 + 4.0 * 0.8**20, abs=1e-12)


@pytest.mark.parametrize("strategy", ["shared", "naive"])
def test_linear_regression_both_strategies(strategy):
    # batched scalars: one-entry BatchSums over the batch (shared), EntrySum kernels (naive)
    w, b, x, y = sp.symbols("w b x y")
    spec = gc.Spec(gc.mse(w * x + b, y), params=[w, b], inputs=[x], targets=[y])
    prog = gc.compile(spec, strategy=strategy, target="cuda")
    X = np.array([0.0, 1.0, 2.0, 3.0])
    Y = 2.0 * X + 1.0 + np.array([0.1, -0.2, 0.05, 0.0])
    wv, bv = 0.5, -0.3
    loss, grads = prog.value_and_grad({"w": np.array(wv), "b": np.array(bv)}, X, Y)
    r = wv * X + bv - Y  # L = 1/(2n)·Σ r², ∂L/∂w = mean(r·x), ∂L/∂b = mean(r)
    assert loss == pytest.approx(0.5 * np.mean(r**2), rel=TOL)
    assert grads["w"].shape == ()
    assert float(grads["w"]) == pytest.approx(np.mean(r * X), rel=TOL)
    assert float(grads["b"]) == pytest.approx(np.mean(r), rel=TOL)
    params = {"w": np.array(wv), "b": np.array(bv)}
    prog.fit(params, X, Y, optimizer=gc.SGD(0.1), steps=2, batch_size=2, shuffle=False)
    for lo in (0, 2):  # the same two mini-batch steps in NumPy
        r = wv * X[lo : lo + 2] + bv - Y[lo : lo + 2]
        wv, bv = wv - 0.1 * np.mean(r * X[lo : lo + 2]), bv - 0.1 * np.mean(r)
    assert float(params["w"]) == pytest.approx(wv, rel=TOL)
    assert float(params["b"]) == pytest.approx(bv, rel=TOL)


def test_compiler_chosen_identifiers():
    lam, W = sp.Symbol("lambda"), sp.Symbol("x y")
    prog = gc.compile(lam**2 + 3 * W * lam, params=[lam, W], target="cuda")
    params = prog.init({lam: 1.5, W: -2.0})
    loss, grads = prog.value_and_grad(params)
    assert loss == pytest.approx(1.5**2 - 9.0)
    assert float(grads["lambda"]) == pytest.approx(2 * 1.5 - 6.0)
    assert float(grads["x y"]) == pytest.approx(4.5)


# -- divergence ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the simulator computes in NumPy
def test_non_finite_update_restores_params_like_cpu():
    # J = w: the gradient stays 1 while w walks to -inf; step 2 would overflow
    cpu = gc.compile(w1, params=[w1])
    gpu = gc.compile(w1, params=[w1], target="cuda")
    errors, results = [], []
    for prog in (cpu, gpu):
        params = prog.init({w1: -1.5e308})
        with pytest.raises(gc.GradcError, match="update step 3") as info:
            prog.fit(params, steps=5, optimizer=gc.SGD(lr=1e307))
        errors.append(str(info.value))
        results.append(float(params["w1"]))
    assert "parameter non-finite" in errors[1]
    assert errors[0] == errors[1]
    assert results[1] == results[0] == pytest.approx(-1.7e308)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_non_finite_loss_stops_before_any_update():
    gpu = gc.compile(BOWL, params=[w1, w2], target="cuda")
    params = gpu.init({w1: 1e200, w2: 0.0})
    with pytest.raises(gc.GradcError, match=r"update step 1 .*loss became non-finite"):
        gpu.fit(params, steps=3, optimizer=gc.SGD(lr=0.1))
    assert float(params["w1"]) == 1e200


# -- without a GPU -----------------------------------------------------------------------

_NO_GPU_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    from numba import cuda
    if cuda.is_available():
        print("HAS_GPU")
        sys.exit(0)
    import sympy as sp, gradc as gc
    w = sp.Symbol("w")
    gc.compile(w**2, params=[w])  # the CPU target is unaffected
    try:
        gc.compile(w**2, params=[w], target="cuda")
    except gc.GradcError as exc:
        print("GRADC_ERROR:", exc)
    """
)

_NO_NUMBA_CUDA_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["numba_cuda"] = None  # as if the 'cuda' extra were not installed
    import numpy as np, sympy as sp, gradc as gc
    w = sp.Symbol("w")
    prog = gc.compile(w**2, params=[w])
    assert prog.loss(prog.init({w: 3.0})) == 9.0
    try:
        gc.compile(w**2, params=[w], target="cuda")
    except gc.GradcError as exc:
        print("GRADC_ERROR:", exc)
    """
)


def _run(script: str, **env) -> str:
    full = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, "-c", script], env=full, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_gpu_raises_gradc_error():
    out = _run(_NO_GPU_SCRIPT, NUMBA_ENABLE_CUDASIM="0")
    if "HAS_GPU" in out:
        pytest.skip("a GPU is present")
    assert "GRADC_ERROR:" in out, out
    assert "GPU" in out and "NUMBA_ENABLE_CUDASIM=1" in out


def test_without_numba_cuda_cpu_still_works():
    out = _run(_NO_NUMBA_CUDA_SCRIPT)
    assert "GRADC_ERROR:" in out and "numba-cuda" in out, out
